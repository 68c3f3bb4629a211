//! The MySQL -> Arrow type map (data in `schemas/type_map.json`, which the tests hold this code to)
//! and the Arrow schema of a replicated table: its columns, then the metadata columns.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use binlake_sink::metadata_fields;

use crate::decode::{ColType, TableMap};

/// The type map as data, for `binlake types` and the README.
pub const TYPE_MAP_JSON: &str = include_str!("../schemas/type_map.json");

pub fn arrow_type(ty: &ColType) -> DataType {
    match ty {
        ColType::Int { bytes, unsigned } => match (bytes, unsigned) {
            (1, false) => DataType::Int8,
            (1, true) => DataType::UInt8,
            (2, false) => DataType::Int16,
            (2, true) => DataType::UInt16,
            (3 | 4, false) => DataType::Int32,
            (3 | 4, true) => DataType::UInt32,
            (_, false) => DataType::Int64,
            (_, true) => DataType::UInt64,
        },
        ColType::Float => DataType::Float32,
        ColType::Double => DataType::Float64,
        ColType::Decimal { precision, scale } if *precision <= 38 => {
            DataType::Decimal128((*precision).max(1), *scale as i8)
        }
        ColType::Decimal { precision, scale } => DataType::Decimal256(*precision, *scale as i8),
        ColType::Year => DataType::UInt16,
        ColType::Date => DataType::Date32,
        ColType::TimeV1 | ColType::Time { .. } => DataType::Int64,
        ColType::DateTimeV1 | ColType::DateTime { .. } => {
            DataType::Timestamp(TimeUnit::Microsecond, None)
        }
        ColType::TimestampV1 | ColType::Timestamp { .. } => {
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        }
        ColType::Bit { .. } => DataType::UInt64,
        ColType::Text { .. }
        | ColType::Json { .. }
        | ColType::Enum { .. }
        | ColType::Set { .. } => DataType::Utf8,
        ColType::Binary { .. }
        | ColType::Geometry { .. }
        | ColType::Vector { .. }
        | ColType::Unsupported { .. } => DataType::Binary,
    }
}

/// Column comment kept in the Arrow field metadata, so readers know what an Int64 TIME means.
fn field_metadata(ty: &ColType, mysql_type: &str) -> std::collections::HashMap<String, String> {
    let mut m = std::collections::HashMap::new();
    m.insert("binlake.mysql_type".to_string(), mysql_type.to_string());
    if matches!(ty, ColType::Time { .. } | ColType::TimeV1) {
        m.insert("binlake.unit".into(), "microseconds".into());
    }
    m
}

/// A short MySQL-ish type name for metadata and docs.
pub fn mysql_type_name(ty: &ColType) -> String {
    match ty {
        ColType::Int { bytes, unsigned } => {
            let n = match bytes {
                1 => "TINYINT",
                2 => "SMALLINT",
                3 => "MEDIUMINT",
                4 => "INT",
                _ => "BIGINT",
            };
            if *unsigned {
                format!("{n} UNSIGNED")
            } else {
                n.to_string()
            }
        }
        ColType::Float => "FLOAT".into(),
        ColType::Double => "DOUBLE".into(),
        ColType::Decimal { precision, scale } => format!("DECIMAL({precision},{scale})"),
        ColType::Year => "YEAR".into(),
        ColType::Date => "DATE".into(),
        ColType::TimeV1 => "TIME".into(),
        ColType::Time { fsp } => format!("TIME({fsp})"),
        ColType::DateTimeV1 => "DATETIME".into(),
        ColType::DateTime { fsp } => format!("DATETIME({fsp})"),
        ColType::TimestampV1 => "TIMESTAMP".into(),
        ColType::Timestamp { fsp } => format!("TIMESTAMP({fsp})"),
        ColType::Bit { bits } => format!("BIT({bits})"),
        ColType::Text { .. } => "TEXT".into(),
        ColType::Binary {
            pad_to: Some(n), ..
        } => format!("BINARY({n})"),
        ColType::Binary { .. } => "BLOB".into(),
        ColType::Json { .. } => "JSON".into(),
        ColType::Enum { .. } => "ENUM".into(),
        ColType::Set { .. } => "SET".into(),
        ColType::Geometry { .. } => "GEOMETRY".into(),
        ColType::Vector { .. } => "VECTOR".into(),
        ColType::Unsupported { type_code } => format!("UNSUPPORTED({type_code})"),
    }
}

/// The Arrow schema for a table map: every column (nullable: an invalid-value policy of `null`
/// may null a NOT NULL column, and that must be representable), then the metadata columns.
pub fn table_schema(tm: &TableMap) -> SchemaRef {
    let mut fields: Vec<Field> = tm
        .columns
        .iter()
        .map(|c| {
            let pk = tm
                .primary_key
                .iter()
                .any(|&i| tm.columns.get(i).is_some_and(|k| k.name == c.name));
            Field::new(&c.name, arrow_type(&c.ty), !pk)
                .with_metadata(field_metadata(&c.ty, &mysql_type_name(&c.ty)))
        })
        .collect();
    fields.extend(metadata_fields());
    Arc::new(Schema::new(fields))
}

/// The type map as a Markdown table (`binlake types`; the README embeds this output).
pub fn type_map_markdown() -> String {
    let v: serde_json::Value = serde_json::from_str(TYPE_MAP_JSON).unwrap_or_default();
    let mut s = String::from("| MySQL / MariaDB | Arrow | notes |\n| --- | --- | --- |\n");
    for t in v["types"].as_array().into_iter().flatten() {
        let arrow = match t["unsigned"].as_str() {
            Some(u) => format!("{} / {} (UNSIGNED)", t["arrow"].as_str().unwrap_or(""), u),
            None => t["arrow"].as_str().unwrap_or("").to_string(),
        };
        s.push_str(&format!(
            "| {} | {} | {} |\n",
            t["mysql"].as_str().unwrap_or(""),
            arrow,
            t["note"].as_str().unwrap_or("")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_shows_the_type_map() {
        let readme = include_str!("../README.md");
        assert!(
            readme.contains(&type_map_markdown()),
            "README.md's type table differs from `binlake types`: paste its output"
        );
    }

    #[test]
    fn code_matches_the_type_map_data() {
        let v: serde_json::Value = serde_json::from_str(TYPE_MAP_JSON).unwrap();
        let types = v["types"].as_array().unwrap();
        let mut checked = 0;
        for t in types {
            let sample = &t["sample"];
            if let Some(b) = sample["type"].as_u64() {
                let s = arrow_type(&ColType::Int {
                    bytes: b as u8,
                    unsigned: false,
                });
                let u = arrow_type(&ColType::Int {
                    bytes: b as u8,
                    unsigned: true,
                });
                assert_eq!(format!("{s}"), t["arrow"].as_str().unwrap(), "{t}");
                assert_eq!(format!("{u}"), t["unsigned"].as_str().unwrap(), "{t}");
                checked += 1;
            }
            if let Some(d) = sample["decimal"].as_array() {
                let (p, s) = (d[0].as_u64().unwrap() as u8, d[1].as_u64().unwrap() as u8);
                let got = format!(
                    "{}",
                    arrow_type(&ColType::Decimal {
                        precision: p,
                        scale: s
                    })
                );
                let want = t["arrow"]
                    .as_str()
                    .unwrap()
                    .replace("(p, s)", &format!("({p}, {s})"));
                assert_eq!(got, want);
                checked += 1;
            }
        }
        assert_eq!(checked, 7);
        let simple = [
            ("FLOAT", ColType::Float),
            ("DOUBLE", ColType::Double),
            ("YEAR", ColType::Year),
            ("DATE", ColType::Date),
            ("TIME(fsp)", ColType::Time { fsp: 6 }),
            ("BIT(n)", ColType::Bit { bits: 64 }),
            ("JSON", ColType::Json { len_bytes: 4 }),
            (
                "BINARY(n)",
                ColType::Binary {
                    len_bytes: 1,
                    pad_to: Some(4),
                },
            ),
            ("DATETIME(fsp)", ColType::DateTime { fsp: 6 }),
            ("TIMESTAMP(fsp)", ColType::Timestamp { fsp: 6 }),
        ];
        for (name, ty) in simple {
            let row = types
                .iter()
                .find(|t| t["mysql"] == name)
                .unwrap_or_else(|| panic!("{name} missing from type_map.json"));
            let want = row["arrow"].as_str().unwrap();
            let got = match arrow_type(&ty) {
                DataType::Timestamp(TimeUnit::Microsecond, None) => "Timestamp(µs)".to_string(),
                DataType::Timestamp(TimeUnit::Microsecond, Some(z)) => {
                    format!("Timestamp(µs, \"{z}\")")
                }
                other => other.to_string(),
            };
            assert_eq!(got, want, "{name}");
        }
    }
}
