//! Row images to [`Value`]s, one per column, exactly.
//!
//! Invariants:
//! - A value the source can hold but Arrow cannot represent truthfully (zero dates, `2024-02-30`
//!   under relaxed sql_mode, bytes invalid in the column's charset) becomes [`Value::Invalid`] with
//!   the reason and the source text; the pipeline's `invalid_values` policy decides what happens.
//! - A column absent from the row image (binlog_row_image other than FULL) is [`Value::Absent`],
//!   never a made-up NULL.
//! - Temporal encodings follow the server's packed formats (TIME2/DATETIME2/TIMESTAMP2 are
//!   big-endian with a sign bit offset; the pre-5.6 formats are decimal-packed integers).

use arrow_buffer::i256;

use super::charset::{decode_text, Charset};
use super::decimal;
use super::event::{RowsEvent, RowsKind};
use super::json;
use super::reader::{bit, Reader, Short};
use super::table_map::{ColType, TableMap};

/// One decoded cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Absent,
    Int(i64),
    UInt(u64),
    F32(f32),
    F64(f64),
    /// Unscaled DECIMAL with precision <= 38.
    Dec128(i128),
    /// Unscaled DECIMAL with precision > 38.
    Dec256(i256),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since 1970-01-01 00:00:00, wall clock as stored (DATETIME).
    DateTime(i64),
    /// Microseconds since the Unix epoch, UTC (TIMESTAMP).
    Timestamp(i64),
    /// Signed microseconds (TIME).
    Time(i64),
    Str(String),
    Bin(Vec<u8>),
    Invalid {
        reason: &'static str,
        text: String,
    },
}

/// One row change as the binlog states it.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    pub kind: RowsKind,
    pub before: Option<Vec<Value>>,
    pub after: Option<Vec<Value>>,
}

/// Decodes every row of a rows event with its table map.
pub fn decode_rows(ev: &RowsEvent<'_>, tm: &TableMap) -> Result<Vec<RowChange>, Short> {
    let mut r = Reader::new(ev.rows);
    let mut out = Vec::new();
    let ncols = ev.ncols.min(tm.columns.len());
    while !r.is_empty() {
        let (before, after) = match ev.kind {
            RowsKind::Write => (
                None,
                Some(decode_row(&mut r, tm, ncols, ev.present, false)?),
            ),
            RowsKind::Delete => (
                Some(decode_row(&mut r, tm, ncols, ev.present, false)?),
                None,
            ),
            RowsKind::Update => {
                let b = decode_row(&mut r, tm, ncols, ev.present, false)?;
                let a = decode_row(
                    &mut r,
                    tm,
                    ncols,
                    ev.present_after.unwrap_or(ev.present),
                    ev.partial_json,
                )?;
                (Some(b), Some(a))
            }
        };
        out.push(RowChange {
            kind: ev.kind,
            before,
            after,
        });
    }
    Ok(out)
}

fn decode_row(
    r: &mut Reader<'_>,
    tm: &TableMap,
    ncols: usize,
    present: &[u8],
    partial_json: bool,
) -> Result<Vec<Value>, Short> {
    if partial_json {
        // value_options (lenenc) then, if PARTIAL_JSON_UPDATES is set, a bitmap over JSON columns.
        let opts = r.lenenc()?;
        if opts & 1 != 0 {
            let njson = tm
                .columns
                .iter()
                .filter(|c| matches!(c.ty, ColType::Json { .. }))
                .count();
            r.skip(njson.div_ceil(8))?;
        }
    }
    let npresent = (0..ncols).filter(|&i| bit(present, i)).count();
    let nulls = r.take(npresent.div_ceil(8))?;
    let mut row = Vec::with_capacity(tm.columns.len());
    let mut k = 0usize;
    for (i, col) in tm.columns.iter().enumerate() {
        if i >= ncols || !bit(present, i) {
            row.push(Value::Absent);
            continue;
        }
        let is_null = bit(nulls, k);
        k += 1;
        if is_null {
            row.push(Value::Null);
            continue;
        }
        row.push(decode_value(r, &col.ty)?);
    }
    Ok(row)
}

fn sign_extend(v: u64, bytes: u8) -> i64 {
    let shift = 64 - 8 * bytes as u32;
    ((v << shift) as i64) >> shift
}

pub(crate) fn text_or_invalid(cs: Charset, bytes: &[u8]) -> Value {
    match decode_text(cs, bytes) {
        Ok(s) => Value::Str(s),
        Err(reason) => Value::Invalid {
            reason,
            text: format!("0x{}", hex(bytes)),
        },
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

pub fn decode_value(r: &mut Reader<'_>, ty: &ColType) -> Result<Value, Short> {
    Ok(match ty {
        ColType::Int { bytes, unsigned } => {
            let v = r.uint_le(*bytes as usize)?;
            if *unsigned {
                Value::UInt(v)
            } else {
                Value::Int(sign_extend(v, *bytes))
            }
        }
        ColType::Float => Value::F32(f32::from_bits(r.u32()?)),
        ColType::Double => Value::F64(f64::from_bits(r.u64()?)),
        ColType::Decimal { precision, scale } => {
            let n = decimal::binary_size(*precision, *scale);
            let raw = r.take(n)?;
            match decimal::decode(raw, *precision, *scale) {
                Some(d) if *precision <= 38 => match d.to_i128() {
                    Some(v) => Value::Dec128(v),
                    None => Value::Invalid {
                        reason: "decimal out of range",
                        text: d.to_string(),
                    },
                },
                Some(d) => match i256::from_string(&d.unscaled_digits()) {
                    Some(v) => Value::Dec256(v),
                    None => Value::Invalid {
                        reason: "decimal out of range",
                        text: d.to_string(),
                    },
                },
                None => Value::Invalid {
                    reason: "malformed decimal",
                    text: format!("0x{}", hex(raw)),
                },
            }
        }
        ColType::Year => {
            let v = r.u8()? as u64;
            Value::UInt(if v == 0 { 0 } else { 1900 + v })
        }
        ColType::Date => {
            let v = r.uint_le(3)? as u32;
            date_value((v >> 9) as i32, (v >> 5) & 0xf, v & 0x1f)
        }
        ColType::TimeV1 => {
            let v = sign_extend(r.uint_le(3)?, 3);
            let a = v.unsigned_abs();
            let us = ((a / 10000) * 3600 + (a / 100 % 100) * 60 + a % 100) as i64 * 1_000_000;
            Value::Time(if v < 0 { -us } else { us })
        }
        ColType::Time { fsp } => {
            let int = r.uint_be(3)? as i64 - 0x80_0000;
            let packed: i64 = match fsp {
                1 | 2 => {
                    let mut ip = int;
                    let mut frac = r.u8()? as i64;
                    if ip < 0 && frac != 0 {
                        ip += 1;
                        frac -= 0x100;
                    }
                    (ip << 24) + frac * 10000
                }
                3 | 4 => {
                    let mut ip = int;
                    let mut frac = r.uint_be(2)? as i64;
                    if ip < 0 && frac != 0 {
                        ip += 1;
                        frac -= 0x10000;
                    }
                    (ip << 24) + frac * 100
                }
                5 | 6 => {
                    let lo = r.uint_be(3)? as i64;
                    (int << 24) | lo // the 6-byte value minus 0x800000000000
                }
                _ => int << 24,
            };
            let neg = packed < 0;
            let a = packed.unsigned_abs();
            let hms = a >> 24;
            let frac = a & 0xFF_FFFF;
            let h = (hms >> 12) & 0x3FF;
            let m = (hms >> 6) & 0x3F;
            let s = hms & 0x3F;
            let us = ((h * 3600 + m * 60 + s) * 1_000_000 + frac) as i64;
            Value::Time(if neg { -us } else { us })
        }
        ColType::DateTimeV1 => {
            let v = r.u64()?;
            let (d, t) = (v / 1_000_000, v % 1_000_000);
            datetime_value(
                (d / 10000) as i32,
                (d / 100 % 100) as u32,
                (d % 100) as u32,
                (t / 10000) as u32,
                (t / 100 % 100) as u32,
                (t % 100) as u32,
                0,
            )
        }
        ColType::DateTime { fsp } => {
            let int = r.uint_be(5)? as i64 - 0x80_0000_0000;
            let frac = frac_us(r, *fsp)?;
            let ymd = int >> 17;
            let ym = ymd >> 5;
            let hms = int & 0x1FFFF;
            datetime_value(
                (ym / 13) as i32,
                (ym % 13) as u32,
                (ymd & 0x1f) as u32,
                (hms >> 12) as u32,
                ((hms >> 6) & 0x3f) as u32,
                (hms & 0x3f) as u32,
                frac,
            )
        }
        ColType::TimestampV1 => {
            let s = r.u32()? as i64;
            if s == 0 {
                Value::Invalid {
                    reason: "zero timestamp",
                    text: "0000-00-00 00:00:00".into(),
                }
            } else {
                Value::Timestamp(s * 1_000_000)
            }
        }
        ColType::Timestamp { fsp } => {
            let s = r.uint_be(4)? as i64;
            let frac = frac_us(r, *fsp)?;
            if s == 0 && frac == 0 {
                Value::Invalid {
                    reason: "zero timestamp",
                    text: "0000-00-00 00:00:00".into(),
                }
            } else {
                Value::Timestamp(s * 1_000_000 + frac)
            }
        }
        ColType::Bit { bits } => {
            let n = (*bits as usize).div_ceil(8);
            Value::UInt(r.uint_be(n.min(8))?)
        }
        ColType::Text { len_bytes, charset } => {
            let n = r.uint_le(*len_bytes as usize)? as usize;
            text_or_invalid(*charset, r.take(n)?)
        }
        ColType::Binary { len_bytes, pad_to } => {
            let n = r.uint_le(*len_bytes as usize)? as usize;
            let mut v = r.take(n)?.to_vec();
            if let Some(p) = pad_to {
                if v.len() < *p as usize {
                    v.resize(*p as usize, 0);
                }
            }
            Value::Bin(v)
        }
        ColType::Json { len_bytes } => {
            let n = r.uint_le(*len_bytes as usize)? as usize;
            let raw = r.take(n)?;
            match json::to_text(raw) {
                Ok(s) => Value::Str(s),
                Err(reason) => Value::Invalid {
                    reason,
                    text: format!("0x{}", hex(raw)),
                },
            }
        }
        ColType::Enum { pack, labels } => {
            let i = r.uint_le(*pack as usize)? as usize;
            if i == 0 {
                // the "error" value '' stored for an invalid ENUM under relaxed sql_mode
                Value::Str(String::new())
            } else {
                match labels.get(i - 1) {
                    Some(l) => Value::Str(l.clone()),
                    None if labels.is_empty() => Value::UInt(i as u64),
                    None => Value::Invalid {
                        reason: "enum index beyond the labels",
                        text: i.to_string(),
                    },
                }
            }
        }
        ColType::Set { pack, labels } => {
            let bits = r.uint_le(*pack as usize)?;
            if labels.is_empty() {
                Value::UInt(bits)
            } else {
                let mut s = String::new();
                for (i, l) in labels.iter().enumerate().take(64) {
                    if bits & (1u64 << i) != 0 {
                        if !s.is_empty() {
                            s.push(',');
                        }
                        s.push_str(l);
                    }
                }
                Value::Str(s)
            }
        }
        ColType::Geometry { len_bytes } => {
            let n = r.uint_le(*len_bytes as usize)? as usize;
            let raw = r.take(n)?;
            // 4-byte SRID, then WKB
            Value::Bin(raw.get(4..).unwrap_or(&[]).to_vec())
        }
        ColType::Vector { len_bytes } => {
            let n = r.uint_le(*len_bytes as usize)? as usize;
            Value::Bin(r.take(n)?.to_vec())
        }
        ColType::Unsupported { type_code } => {
            return Err(Short {
                wanted: *type_code as usize,
                at: usize::MAX,
            });
        }
    })
}

/// Fractional seconds of DATETIME2/TIMESTAMP2 (big-endian, `(fsp+1)/2` bytes) in microseconds.
fn frac_us(r: &mut Reader<'_>, fsp: u8) -> Result<i64, Short> {
    Ok(match fsp {
        1 | 2 => r.u8()? as i64 * 10000,
        3 | 4 => r.uint_be(2)? as i64 * 100,
        5 | 6 => r.uint_be(3)? as i64,
        _ => 0,
    })
}

/// Days from 1970-01-01 to a proleptic Gregorian date (valid input assumed).
pub fn days_from_civil(y: i32, m: u32, d: u32) -> i32 {
    let y = if m <= 2 { y - 1 } else { y } as i64;
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146097 + doe - 719468) as i32
}

/// (year, month, day) from days since 1970-01-01.
pub fn civil_from_days(z: i32) -> (i32, u32, u32) {
    let z = z as i64 + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    ((if m <= 2 { y + 1 } else { y }) as i32, m, d)
}

fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 0,
    }
}

fn valid_date(y: i32, m: u32, d: u32) -> Result<(), &'static str> {
    if y == 0 && m == 0 && d == 0 {
        return Err("zero date");
    }
    if m == 0 || d == 0 {
        return Err("zero month or day");
    }
    if m > 12 || d > days_in_month(y, m) {
        return Err("date does not exist in the calendar");
    }
    Ok(())
}

pub(crate) fn date_value(y: i32, m: u32, d: u32) -> Value {
    match valid_date(y, m, d) {
        Ok(()) => Value::Date(days_from_civil(y, m, d)),
        Err(reason) => Value::Invalid {
            reason,
            text: format!("{y:04}-{m:02}-{d:02}"),
        },
    }
}

pub(crate) fn datetime_value(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, frac: i64) -> Value {
    if let Err(reason) = valid_date(y, mo, d) {
        return Value::Invalid {
            reason,
            text: format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}"),
        };
    }
    if h > 23 || mi > 59 || s > 59 {
        return Value::Invalid {
            reason: "time of day out of range",
            text: format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}"),
        };
    }
    let days = days_from_civil(y, mo, d) as i64;
    Value::DateTime(((days * 86400) + (h * 3600 + mi * 60 + s) as i64) * 1_000_000 + frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        for (y, m, d) in [
            (1970, 1, 1),
            (1000, 1, 1),
            (9999, 12, 31),
            (2000, 2, 29),
            (1, 1, 1),
            (0, 3, 1),
        ] {
            let z = days_from_civil(y, m, d);
            assert_eq!(civil_from_days(z), (y, m, d));
        }
        assert_eq!(days_from_civil(1970, 1, 2), 1);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    #[test]
    fn invalid_dates_are_flagged() {
        assert!(matches!(date_value(2024, 2, 30), Value::Invalid { .. }));
        assert!(matches!(
            date_value(0, 0, 0),
            Value::Invalid {
                reason: "zero date",
                ..
            }
        ));
        assert!(matches!(date_value(2024, 2, 29), Value::Date(_)));
    }

    fn time2(bytes: &[u8], fsp: u8) -> Value {
        decode_value(&mut Reader::new(bytes), &ColType::Time { fsp }).unwrap()
    }

    #[test]
    fn time2_edges() {
        // 00:00:00
        assert_eq!(time2(&[0x80, 0, 0], 0), Value::Time(0));
        // 838:59:59 = 0x800000 + (838<<12 | 59<<6 | 59)
        let v = 0x80_0000u32 + ((838 << 12) | (59 << 6) | 59);
        assert_eq!(
            time2(&v.to_be_bytes()[1..], 0),
            Value::Time((838 * 3600 + 59 * 60 + 59) * 1_000_000)
        );
        // -00:00:01.5 with fsp=1: MySQL stores int part -2 and the fraction byte (char)-50 = 206.
        let int = (0x80_0000i64 - 2) as u32;
        let mut b = int.to_be_bytes()[1..].to_vec();
        b.push(206);
        assert_eq!(time2(&b, 1), Value::Time(-1_500_000));
    }
}
