//! Arrow to ClickHouse column types (`schemas/clickhouse_type_map.json` is the same map as data),
//! and the few conversions an insert needs.
//!
//! Invariants:
//! - Every Arrow type binlake produces has exactly one ClickHouse type, and every value of it is
//!   held exactly, except dates and times outside ClickHouse's 1900-2299 range: those are refused
//!   with an error naming the column and the value, never clamped.
//! - A type change is applied to an existing column only when it is a widening (every stored value
//!   survives exactly); anything else is reported, not converted.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, TimestampMicrosecondType};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};

/// A value or type ClickHouse cannot hold, with what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unrepresentable(String);

/// The ClickHouse type of an Arrow field (`Nullable(...)` when the field is nullable).
pub fn column_type(field: &Field) -> Result<String, Unrepresentable> {
    let base = base_type(field.data_type())?;
    Ok(if field.is_nullable() {
        format!("Nullable({base})")
    } else {
        base
    })
}

pub fn base_type(t: &DataType) -> Result<String, Unrepresentable> {
    use DataType as D;
    Ok(match t {
        D::Int8 => "Int8".into(),
        D::Int16 => "Int16".into(),
        D::Int32 => "Int32".into(),
        D::Int64 => "Int64".into(),
        D::UInt8 => "UInt8".into(),
        D::UInt16 => "UInt16".into(),
        D::UInt32 => "UInt32".into(),
        D::UInt64 => "UInt64".into(),
        D::Float32 => "Float32".into(),
        D::Float64 => "Float64".into(),
        D::Decimal128(p, s) | D::Decimal256(p, s) => format!("Decimal({p}, {s})"),
        D::Boolean => "UInt8".into(),
        D::Date32 => "Date32".into(),
        D::Timestamp(TimeUnit::Microsecond, None) => "DateTime64(6)".into(),
        D::Timestamp(TimeUnit::Microsecond, Some(_)) => "DateTime64(6, 'UTC')".into(),
        D::Utf8 | D::LargeUtf8 | D::Binary | D::LargeBinary => "String".into(),
        other => {
            return Err(Unrepresentable(format!(
                "no ClickHouse type for Arrow {other}"
            )))
        }
    })
}

/// ClickHouse's Date32 and DateTime64 range: 1900-01-01 to 2299-12-31.
const MIN_DAY: i32 = -25567; // 1900-01-01
const MAX_DAY: i32 = 120529; // 2299-12-31
/// The range as the pipeline's invalid-value check takes it.
pub const DATE_RANGE_DAYS: (i32, i32) = (MIN_DAY, MAX_DAY);
const US_PER_DAY: i64 = 86_400_000_000;

/// The batch as ClickHouse takes it: booleans as UInt8. Errors name the first column holding a
/// value ClickHouse cannot store.
pub fn to_insert(batch: &RecordBatch) -> Result<RecordBatch, Unrepresentable> {
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        match f.data_type() {
            DataType::Boolean => {
                let c = arrow_cast::cast(c, &DataType::UInt8)
                    .map_err(|e| Unrepresentable(e.to_string()))?;
                fields.push(Field::new(f.name(), DataType::UInt8, f.is_nullable()));
                cols.push(c);
                continue;
            }
            DataType::Date32 => {
                if let Some(d) = c
                    .as_primitive::<Date32Type>()
                    .iter()
                    .flatten()
                    .find(|d| !(MIN_DAY..=MAX_DAY).contains(d))
                {
                    return Err(Unrepresentable(format!("column `{}`: date {} (day {d} since 1970) is outside ClickHouse's Date32 range 1900-01-01..2299-12-31", f.name(), civil(d))));
                }
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                let lo = MIN_DAY as i64 * US_PER_DAY;
                let hi = (MAX_DAY as i64 + 1) * US_PER_DAY;
                if let Some(t) = c
                    .as_primitive::<TimestampMicrosecondType>()
                    .iter()
                    .flatten()
                    .find(|t| !(lo..hi).contains(t))
                {
                    return Err(Unrepresentable(format!("column `{}`: time {} is outside ClickHouse's DateTime64 range 1900-01-01..2299-12-31", f.name(), civil(t.div_euclid(US_PER_DAY) as i32))));
                }
            }
            _ => {}
        }
        fields.push(f.as_ref().clone());
        cols.push(c.clone());
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
        .map_err(|e| Unrepresentable(e.to_string()))
}

/// `YYYY-MM-DD` of a day number (for error messages).
fn civil(days: i32) -> String {
    // Howard Hinnant's days_from_civil inverse
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `Nullable(T)` -> (T, true).
fn unwrap_nullable(t: &str) -> (&str, bool) {
    match t
        .strip_prefix("Nullable(")
        .and_then(|r| r.strip_suffix(')'))
    {
        Some(inner) => (inner, true),
        None => (t, false),
    }
}

/// A change of a column from ClickHouse type `from` to `to` that keeps every stored value
/// exactly (what a widening MODIFY COLUMN does at the source).
pub fn widens(from: &str, to: &str) -> bool {
    let (f, f_null) = unwrap_nullable(from);
    let (t, t_null) = unwrap_nullable(to);
    if f_null && !t_null {
        return false;
    }
    if f == t {
        return true; // only nullability widened
    }
    let int = |s: &str| -> Option<(bool, u32)> {
        let (signed, bits) = match s.strip_prefix("UInt") {
            Some(b) => (false, b),
            None => (true, s.strip_prefix("Int")?),
        };
        Some((signed, bits.parse().ok()?))
    };
    let dec = |s: &str| -> Option<(u32, u32)> {
        let inner = s.strip_prefix("Decimal(")?.strip_suffix(')')?;
        let (p, sc) = inner.split_once(',')?;
        Some((p.trim().parse().ok()?, sc.trim().parse().ok()?))
    };
    let int_digits = |signed: bool, bits: u32| match (signed, bits) {
        (_, 8) => 3,
        (_, 16) => 5,
        (_, 32) => 10,
        (true, 64) => 19,
        _ => 20,
    };
    match (int(f), int(t), dec(f), dec(t)) {
        (Some((fs, fb)), Some((ts, tb)), _, _) => (fs == ts && tb > fb) || (!fs && ts && tb > fb),
        (Some((fs, fb)), None, _, Some((p, s))) => p - s >= int_digits(fs, fb),
        (None, None, Some((p1, s1)), Some((p2, s2))) => s2 >= s1 && p2 - s2 >= p1 - s1,
        _ => matches!((f, t), ("Float32", "Float64") | ("Date32", "DateTime64(6)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_matches_the_type_map_data() {
        let text = include_str!("../../../schemas/clickhouse_type_map.json");
        let doc: serde_json::Value = serde_json::from_str(text).unwrap();
        let samples: Vec<(&str, DataType)> = vec![
            ("Int8", DataType::Int8),
            ("Int16", DataType::Int16),
            ("Int32", DataType::Int32),
            ("Int64", DataType::Int64),
            ("UInt8", DataType::UInt8),
            ("UInt16", DataType::UInt16),
            ("UInt32", DataType::UInt32),
            ("UInt64", DataType::UInt64),
            ("Float32", DataType::Float32),
            ("Float64", DataType::Float64),
            ("Decimal128(p, s)", DataType::Decimal128(10, 2)),
            ("Decimal256(p, s)", DataType::Decimal256(65, 30)),
            ("Boolean", DataType::Boolean),
            ("Date32", DataType::Date32),
            (
                "Timestamp(µs)",
                DataType::Timestamp(TimeUnit::Microsecond, None),
            ),
            (
                "Timestamp(µs, \"UTC\")",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ),
            ("Utf8", DataType::Utf8),
            ("Binary", DataType::Binary),
        ];
        let entries = doc["types"].as_array().unwrap();
        assert_eq!(entries.len(), samples.len());
        for (e, (arrow, t)) in entries.iter().zip(&samples) {
            assert_eq!(e["arrow"].as_str().unwrap(), *arrow);
            let expect = e["clickhouse"].as_str().unwrap().replace(
                "(p, s)",
                match t {
                    DataType::Decimal128(..) => "(10, 2)",
                    _ => "(65, 30)",
                },
            );
            assert_eq!(base_type(t).unwrap(), expect, "{arrow}");
        }
    }

    #[test]
    fn widening() {
        assert!(widens("Int32", "Int64"));
        assert!(widens("Int32", "Nullable(Int64)"));
        assert!(!widens("Nullable(Int32)", "Int64"));
        assert!(widens("Decimal(10, 2)", "Decimal(20, 4)"));
        assert!(!widens("Decimal(10, 2)", "Decimal(11, 4)"));
        assert!(widens("Int32", "Decimal(12, 2)"));
        assert!(!widens("Int64", "Int32"));
        assert!(!widens("Int32", "String"));
        assert!(widens("UInt32", "Int64"));
        assert!(!widens("Int32", "UInt64"));
    }

    #[test]
    fn out_of_range_dates_are_named() {
        let schema = Arc::new(Schema::new(vec![Field::new("d", DataType::Date32, true)]));
        let b = RecordBatch::try_new(
            schema,
            vec![Arc::new(arrow_array::Date32Array::from(vec![
                Some(0),
                Some(-719_162),
            ]))],
        )
        .unwrap();
        let e = to_insert(&b).unwrap_err().to_string();
        assert!(e.contains("`d`") && e.contains("0001-01-01"), "{e}");
    }
}
