//! MySQL binary JSON (the JSON column's storage format) to JSON text, formatted as MySQL prints
//! it (`{"a": 1, "b": [true, null]}`). MariaDB's JSON is LONGTEXT and never comes here.
//!
//! Invariant: bounded recursion depth and bounds-checked reads: malformed input is an `Err`,
//! never a panic or a stack overflow.

use super::decimal;
use super::reader::Reader;

const MAX_DEPTH: usize = 150;

pub fn to_text(raw: &[u8]) -> Result<String, &'static str> {
    if raw.is_empty() {
        // An empty JSON value in the binlog is JSON null (written for some NULL-ish updates).
        return Ok("null".into());
    }
    let mut out = String::with_capacity(raw.len() * 2);
    value(raw[0], &raw[1..], &mut out, 0)?;
    Ok(out)
}

fn value(ty: u8, data: &[u8], out: &mut String, depth: usize) -> Result<(), &'static str> {
    if depth > MAX_DEPTH {
        return Err("JSON nested too deeply");
    }
    const E: &str = "truncated JSON value";
    let mut r = Reader::new(data);
    match ty {
        0x00 | 0x01 => container(data, ty == 0x01, true, out, depth)?,
        0x02 | 0x03 => container(data, ty == 0x03, false, out, depth)?,
        0x04 => out.push_str(match r.u8().map_err(|_| E)? {
            0 => "null",
            1 => "true",
            2 => "false",
            _ => return Err("bad JSON literal"),
        }),
        0x05 => out.push_str(&(r.u16().map_err(|_| E)? as i16).to_string()),
        0x06 => out.push_str(&r.u16().map_err(|_| E)?.to_string()),
        0x07 => out.push_str(&(r.u32().map_err(|_| E)? as i32).to_string()),
        0x08 => out.push_str(&r.u32().map_err(|_| E)?.to_string()),
        0x09 => out.push_str(&(r.u64().map_err(|_| E)? as i64).to_string()),
        0x0a => out.push_str(&r.u64().map_err(|_| E)?.to_string()),
        0x0b => {
            let d = f64::from_bits(r.u64().map_err(|_| E)?);
            out.push_str(&format_double(d));
        }
        0x0c => {
            let n = varlen(&mut r)?;
            let s = r.take(n).map_err(|_| E)?;
            quote(
                std::str::from_utf8(s).map_err(|_| "JSON string not UTF-8")?,
                out,
            );
        }
        0x0f => {
            let field_type = r.u8().map_err(|_| E)?;
            let n = varlen(&mut r)?;
            let d = r.take(n).map_err(|_| E)?;
            opaque(field_type, d, out)?;
        }
        _ => return Err("unknown JSON value type"),
    }
    Ok(())
}

/// The 7-bits-per-byte length prefix of JSON strings and opaque values.
fn varlen(r: &mut Reader<'_>) -> Result<usize, &'static str> {
    let mut n = 0usize;
    for i in 0..5 {
        let b = r.u8().map_err(|_| "truncated JSON length")?;
        n |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err("JSON length too long")
}

fn container(
    data: &[u8],
    large: bool,
    object: bool,
    out: &mut String,
    depth: usize,
) -> Result<(), &'static str> {
    const E: &str = "truncated JSON container";
    let w = if large { 4 } else { 2 };
    let mut r = Reader::new(data);
    let count = r.uint_le(w).map_err(|_| E)? as usize;
    let _size = r.uint_le(w).map_err(|_| E)?;
    if count > data.len() {
        return Err("JSON element count beyond the value");
    }
    let mut keys = Vec::with_capacity(if object { count } else { 0 });
    if object {
        for _ in 0..count {
            let off = r.uint_le(w).map_err(|_| E)? as usize;
            let len = r.u16().map_err(|_| E)? as usize;
            let k = data.get(off..off + len).ok_or(E)?;
            keys.push(std::str::from_utf8(k).map_err(|_| "JSON key not UTF-8")?);
        }
    }
    out.push(if object { '{' } else { '[' });
    for i in 0..count {
        if i > 0 {
            out.push_str(", ");
        }
        if let Some(k) = keys.get(i) {
            quote(k, out);
            out.push_str(": ");
        }
        let ty = r.u8().map_err(|_| E)?;
        let inline = matches!(ty, 0x04..=0x06) || (large && matches!(ty, 0x07 | 0x08));
        if inline {
            let v = r.take(w).map_err(|_| E)?;
            value(ty, v, out, depth + 1)?;
        } else {
            let off = r.uint_le(w).map_err(|_| E)? as usize;
            let v = data.get(off..).ok_or(E)?;
            value(ty, v, out, depth + 1)?;
        }
    }
    out.push(if object { '}' } else { ']' });
    Ok(())
}

fn quote(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn format_double(d: f64) -> String {
    if d.is_finite() {
        let s = format!("{d:?}");
        s.replace("e", "e+").replace("e+-", "e-")
    } else {
        "null".into()
    }
}

fn opaque(field_type: u8, d: &[u8], out: &mut String) -> Result<(), &'static str> {
    use super::table_map::mysql_type as t;
    match field_type {
        t::NEWDECIMAL if d.len() >= 2 => {
            let (p, s) = (d[0], d[1]);
            let dec = decimal::decode(&d[2..], p, s).ok_or("bad JSON decimal")?;
            out.push_str(&dec.to_string());
        }
        t::DATE | t::NEWDATE | t::DATETIME | t::TIMESTAMP | t::DATETIME2 | t::TIMESTAMP2
            if d.len() >= 8 =>
        {
            let packed = i64::from_le_bytes(d[..8].try_into().map_err(|_| "bad JSON date")?);
            let frac = packed.unsigned_abs() & 0xFF_FFFF;
            let ymdhms = packed.unsigned_abs() >> 24;
            let ymd = ymdhms >> 17;
            let ym = ymd >> 5;
            let hms = ymdhms & 0x1FFFF;
            let (y, m, day) = (ym / 13, ym % 13, ymd & 0x1f);
            if field_type == t::DATE || field_type == t::NEWDATE {
                out.push_str(&format!("\"{y:04}-{m:02}-{day:02}\""));
            } else {
                out.push_str(&format!(
                    "\"{y:04}-{m:02}-{day:02} {:02}:{:02}:{:02}.{frac:06}\"",
                    hms >> 12,
                    (hms >> 6) & 0x3f,
                    hms & 0x3f
                ));
            }
        }
        t::TIME | t::TIME2 if d.len() >= 8 => {
            let packed = i64::from_le_bytes(d[..8].try_into().map_err(|_| "bad JSON time")?);
            let a = packed.unsigned_abs();
            let hms = a >> 24;
            let frac = a & 0xFF_FFFF;
            let sign = if packed < 0 { "-" } else { "" };
            out.push_str(&format!(
                "\"{sign}{:02}:{:02}:{:02}.{frac:06}\"",
                (hms >> 12) & 0x3ff,
                (hms >> 6) & 0x3f,
                hms & 0x3f
            ));
        }
        _ => {
            out.push_str(&format!("\"base64:type{field_type}:"));
            base64(d, out);
            out.push('"');
        }
    }
    Ok(())
}

fn base64(d: &[u8], out: &mut String) {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for c in d.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_object_with_nested_array() {
        // {"a": 1, "b": [true, "x"]} in MySQL's binary format.
        let mut arr = vec![];
        arr.extend_from_slice(&2u16.to_le_bytes()); // count
        arr.extend_from_slice(&14u16.to_le_bytes()); // size
        arr.push(0x04);
        arr.extend_from_slice(&1u16.to_le_bytes()); // true inline
        arr.push(0x0c);
        arr.extend_from_slice(&10u16.to_le_bytes()); // offset of the string
        arr.extend_from_slice(&[1, b'x']);
        let mut obj = vec![];
        obj.extend_from_slice(&2u16.to_le_bytes());
        let header = 4 + 2 * 4 + 2 * 3; // count,size + 2 key entries + 2 value entries
        let keys_at = header;
        let arr_at = keys_at + 2;
        obj.extend_from_slice(&((arr_at + arr.len()) as u16).to_le_bytes());
        obj.extend_from_slice(&(keys_at as u16).to_le_bytes());
        obj.extend_from_slice(&1u16.to_le_bytes());
        obj.extend_from_slice(&((keys_at + 1) as u16).to_le_bytes());
        obj.extend_from_slice(&1u16.to_le_bytes());
        obj.push(0x05);
        obj.extend_from_slice(&1u16.to_le_bytes());
        obj.push(0x02);
        obj.extend_from_slice(&(arr_at as u16).to_le_bytes());
        obj.extend_from_slice(b"ab");
        obj.extend_from_slice(&arr);
        let mut raw = vec![0x00];
        raw.extend_from_slice(&obj);
        assert_eq!(to_text(&raw).unwrap(), r#"{"a": 1, "b": [true, "x"]}"#);
        assert!(to_text(&raw[..10]).is_err());
    }
}
