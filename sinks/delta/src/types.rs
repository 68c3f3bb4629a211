//! Arrow (binlake's type map) to what Delta can hold, losslessly.
//!
//! | Arrow from binlake | Delta |
//! | --- | --- |
//! | UInt8 / UInt16 / UInt32 | short / integer / long (the next signed width) |
//! | UInt64 (data columns) | decimal(20,0) |
//! | UInt64 `_binlake_version` | long (versions stay below 2^63) |
//! | Decimal256(p,s), p > 38 | string holding the exact decimal text |
//! | Timestamp(µs) without zone (DATETIME) | timestamp_ntz |
//! | everything else | the same type |

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use binlake_sink::COL_VERSION;

/// The Delta-side type for a binlake Arrow type.
pub fn delta_type(name: &str, dt: &DataType) -> DataType {
    match dt {
        DataType::UInt8 => DataType::Int16,
        DataType::UInt16 => DataType::Int32,
        DataType::UInt32 => DataType::Int64,
        DataType::UInt64 if name == COL_VERSION => DataType::Int64,
        DataType::UInt64 => DataType::Decimal128(20, 0),
        DataType::Decimal256(_, _) => DataType::Utf8,
        other => other.clone(),
    }
}

pub fn delta_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                Field::new(
                    f.name(),
                    delta_type(f.name(), f.data_type()),
                    f.is_nullable(),
                )
                .with_metadata(f.metadata().clone())
            })
            .collect::<Vec<_>>(),
    ))
}

/// Casts a binlake batch to the Delta types (exact: widening casts and decimal text only).
pub fn to_delta(batch: &RecordBatch) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let schema = delta_schema(&batch.schema());
    let cols: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                arrow_cast::cast(c, f.data_type())
            }
        })
        .collect::<Result<_, _>>()?;
    RecordBatch::try_new(schema, cols)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::{Decimal256Array, UInt64Array};
    use arrow_buffer::i256;

    #[test]
    fn widening_is_exact() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("u", DataType::UInt64, true),
            Field::new(COL_VERSION, DataType::UInt64, false),
            Field::new("d", DataType::Decimal256(65, 30), true),
        ]));
        let d = Decimal256Array::from(vec![i256::from_string(
            "-123456789012345678901234567890123456789012345678901234567890",
        )
        .unwrap()])
        .with_precision_and_scale(65, 30)
        .unwrap();
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(UInt64Array::from(vec![u64::MAX])),
                Arc::new(UInt64Array::from(vec![7])),
                Arc::new(d),
            ],
        )
        .unwrap();
        let out = to_delta(&b).unwrap();
        assert_eq!(
            out.schema().field(0).data_type(),
            &DataType::Decimal128(20, 0)
        );
        assert_eq!(
            out.column(0)
                .as_primitive::<arrow_array::types::Decimal128Type>()
                .value(0),
            u64::MAX as i128
        );
        assert_eq!(out.schema().field(1).data_type(), &DataType::Int64);
        assert_eq!(
            out.column(2).as_string::<i32>().value(0),
            "-123456789012345678901234567890.123456789012345678901234567890"
        );
    }
}
