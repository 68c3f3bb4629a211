//! Collation ids (as the table map carries them) to text decoders.
//!
//! MySQL's `latin1` is Windows-1252, not ISO-8859-1; `utf8`/`utf8mb3`/`utf8mb4` are UTF-8 and are
//! validated, never assumed. A charset with no decoder here makes the column Binary (raw bytes),
//! logged once per table map, so a value is never silently mangled.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use encoding_rs::Encoding;

/// How the bytes of a character column become text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// UTF-8 (utf8mb3, utf8mb4, ascii): validated, zero-copy when valid.
    Utf8,
    /// A single- or multi-byte legacy charset decoded by encoding_rs.
    Legacy(&'static Encoding),
    /// UTF-32 big-endian (MySQL `utf32`).
    Utf32,
    /// The `binary` pseudo-charset: the column is bytes, not text.
    Binary,
    /// A charset we cannot decode: kept as bytes.
    Unsupported,
}

/// Charset name -> decoder.
pub fn charset_by_name(name: &str) -> Charset {
    let e = |label: &str| {
        Encoding::for_label(label.as_bytes())
            .map(Charset::Legacy)
            .unwrap_or(Charset::Unsupported)
    };
    match name {
        "utf8" | "utf8mb3" | "utf8mb4" | "ascii" => Charset::Utf8,
        "binary" => Charset::Binary,
        "latin1" => e("windows-1252"),
        "latin2" => e("iso-8859-2"),
        "latin5" => e("windows-1254"),
        "latin7" => e("iso-8859-13"),
        "greek" => e("iso-8859-7"),
        "hebrew" => e("iso-8859-8"),
        "cp1250" => e("windows-1250"),
        "cp1251" => e("windows-1251"),
        "cp1256" => e("windows-1256"),
        "cp1257" => e("windows-1257"),
        "cp866" => e("ibm866"),
        "koi8r" => e("koi8-r"),
        "koi8u" => e("koi8-u"),
        "macroman" => e("macintosh"),
        "tis620" => e("windows-874"),
        "sjis" | "cp932" => e("shift_jis"),
        "ujis" | "eucjpms" => e("euc-jp"),
        "euckr" => e("euc-kr"),
        "gbk" | "gb2312" => e("gbk"),
        "gb18030" => e("gb18030"),
        "big5" => e("big5"),
        "ucs2" | "utf16" => e("utf-16be"),
        "utf16le" => e("utf-16le"),
        "utf32" => Charset::Utf32,
        _ => Charset::Unsupported,
    }
}

/// Built-in collation id -> charset name, for the ids MySQL 5.7/8/9 and MariaDB 10/11 share, plus
/// the ranges each adds. A live source adds the server's own table (see [`register_collations`]).
fn builtin_charset_name(id: u32) -> Option<&'static str> {
    Some(match id {
        1 | 84 => "big5",
        5 | 8 | 15 | 31 | 47 | 48 | 49 | 94 => "latin1",
        9 | 21 | 27 | 77 => "latin2",
        11 | 65 => "ascii",
        12 | 91 => "ujis",
        13 | 88 => "sjis",
        14 | 23 | 50 | 51 | 52 => "cp1251",
        16 | 71 => "hebrew",
        18 | 89 => "tis620",
        19 | 85 => "euckr",
        20 | 41 | 42 | 79 => "latin7",
        22 | 75 => "koi8u",
        7 | 74 => "koi8r",
        24 | 86 => "gb2312",
        25 | 70 => "greek",
        26 | 34 | 44 | 66 | 99 => "cp1250",
        28 | 87 => "gbk",
        29 | 58 | 59 => "cp1257",
        30 | 78 => "latin5",
        33 | 76 | 83 | 192..=215 | 223 => "utf8mb3",
        35 | 90 | 128..=151 | 159 => "ucs2",
        36 | 68 => "cp866",
        39 | 53 => "macroman",
        45 | 46 | 224..=247 | 255..=323 => "utf8mb4",
        54 | 55 | 101..=124 => "utf16",
        56 | 62 => "utf16le",
        57 | 67 => "cp1256",
        60 | 61 | 160..=183 => "utf32",
        63 => "binary",
        95 | 96 => "cp932",
        97 | 98 => "eucjpms",
        248..=250 => "gb18030",
        // MariaDB NOPAD variants (id = 1024 + base for most)
        1024..=1279 => return builtin_charset_name(id - 1024),
        // MariaDB 10.10+ uca1400 collations
        2048..=2303 => "utf8mb3",
        2304..=2559 => "utf8mb4",
        2560..=2815 => "ucs2",
        2816..=3071 => "utf16",
        3072..=3327 => "utf32",
        _ => return None,
    })
}

fn registry() -> &'static RwLock<HashMap<u32, String>> {
    static R: OnceLock<RwLock<HashMap<u32, String>>> = OnceLock::new();
    R.get_or_init(|| RwLock::new(HashMap::new()))
}

/// Adds a server's own collation table (`information_schema`), which wins over the built-in one.
pub fn register_collations(pairs: impl IntoIterator<Item = (u32, String)>) {
    if let Ok(mut m) = registry().write() {
        m.extend(pairs);
    }
}

/// Collation id -> decoder; `None` when the id is unknown.
pub fn charset_for_collation(id: u32) -> Option<(Charset, String)> {
    if let Some(name) = registry().read().ok().and_then(|m| m.get(&id).cloned()) {
        return Some((charset_by_name(&name), name));
    }
    builtin_charset_name(id).map(|n| (charset_by_name(n), n.to_string()))
}

/// Decodes `bytes` in charset `cs`. `Err` carries why the bytes are not valid text.
pub fn decode_text(cs: Charset, bytes: &[u8]) -> Result<String, &'static str> {
    match cs {
        Charset::Utf8 => std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| "invalid UTF-8"),
        Charset::Legacy(enc) => {
            let (s, had_errors) = enc.decode_without_bom_handling(bytes);
            if had_errors {
                Err("bytes not valid in the column's charset")
            } else {
                Ok(s.into_owned())
            }
        }
        Charset::Utf32 => {
            if bytes.len() % 4 != 0 {
                return Err("utf32 length not a multiple of 4");
            }
            bytes
                .chunks_exact(4)
                .map(|c| {
                    char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                        .ok_or("invalid utf32 code point")
                })
                .collect()
        }
        Charset::Binary | Charset::Unsupported => Err("not a text charset"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_is_cp1252_and_utf8_is_validated() {
        let (cs, name) = charset_for_collation(8).unwrap();
        assert_eq!(name, "latin1");
        assert_eq!(decode_text(cs, &[0x80, b'a', 0xE9]).unwrap(), "€aé");
        let (u, _) = charset_for_collation(45).unwrap();
        assert_eq!(decode_text(u, "😀".as_bytes()).unwrap(), "😀");
        assert!(decode_text(u, &[0xff]).is_err());
        assert_eq!(charset_for_collation(63).unwrap().0, Charset::Binary);
        assert_eq!(charset_for_collation(2304 + 5).unwrap().1, "utf8mb4");
    }
}
