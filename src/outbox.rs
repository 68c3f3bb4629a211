//! The outbox: messages between services, taken from an outbox table's inserts.
//!
//! A service writes its message into an outbox table in the same transaction as its change (so
//! both commit or neither), and often deletes it again in that transaction. Every committed
//! INSERT into an outbox table (`[[outbox]]`, `--outbox`) becomes one row of the event table
//! `<db>.<table>_events` in the target: the outbox row's columns and `_binlake_seq`, the event's
//! place within its aggregate (1, 2, 3, ... per aggregate id, in commit order). The event table
//! is keyed by the event id.
//!
//! Invariants:
//! - The insert is the event: deletes of outbox rows emit nothing (a service that deletes its
//!   message in the same transaction still gets it sent), updates emit nothing and are logged.
//!   The event rows are taken before the outbox table's own rows meet the per-key dedup, so an
//!   insert and a delete of one id never cancel out. A rolled-back transaction is not in the
//!   binlog, so its events never appear.
//! - `_binlake_seq` follows commit order, and is the same after any restart: the counters are
//!   rebuilt at the start of a run from the event table in the target, counting only the rows
//!   at or below the event table's checkpointed version (a sink may hold rows of a commit whose
//!   checkpoint a crash lost; the replay gives those events the same numbers again). A
//!   transaction applied once (failover, active-active) is numbered once. Reading another
//!   server after a failover gives the same commit order (GTIDs), hence the same numbers.
//! - An event is replayed, never doubled: the event table is keyed by the event id, and a
//!   replay's versions are not above the checkpoint's (skipped like any table's).
//! - The outbox table itself is replicated only when `tables` selects it; it is never
//!   snapshotted for events (rows already in it at the start are not new messages).
//!
//! Cost: the counters hold one entry per aggregate id, and a run's start reads the event table
//! once (all of it) to rebuild them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch};
use binlake_sink::{Sink, SinkError, TableId, COL_VERSION};
use tracing::{info, warn};

use crate::decode::{ColType, ColumnMeta, TableMap, Value};

/// The column that numbers an aggregate's events.
pub const COL_SEQ: &str = "_binlake_seq";

/// One outbox table and its column names (Debezium's by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxSpec {
    pub table: TableId,
    /// `<db>.<table>_events`.
    pub events: TableId,
    pub id_column: String,
    pub aggregate_type_column: String,
    pub aggregate_id_column: String,
    pub type_column: String,
    pub payload_column: String,
    /// POST each event here (not implemented yet: see the README's "Outbox").
    pub deliver_url: Option<String>,
    pub deliver_max_attempts: Option<u32>,
    /// `tables` selects the outbox table too: it is also replicated as a table.
    pub replicated: bool,
}

impl OutboxSpec {
    /// The spec of `table` with Debezium's column names.
    pub fn new(table: TableId) -> OutboxSpec {
        OutboxSpec {
            events: events_table(&table),
            table,
            id_column: "id".into(),
            aggregate_type_column: "aggregatetype".into(),
            aggregate_id_column: "aggregateid".into(),
            type_column: "type".into(),
            payload_column: "payload".into(),
            deliver_url: None,
            deliver_max_attempts: None,
            replicated: false,
        }
    }
}

/// `<db>.<table>_events`.
pub fn events_table(t: &TableId) -> TableId {
    TableId::new(&t.db, format!("{}_events", t.table))
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {table}: it has no column `{column}` (`{key}`; the table's columns: {columns}). Name the column with `{key}` in its [[outbox]] entry")]
    Column {
        table: TableId,
        column: String,
        key: &'static str,
        columns: String,
    },
    #[error("outbox {table}: the aggregate id column `{column}` must be an integer, a string or a binary column")]
    AggregateType { table: TableId, column: String },
}

/// The per-aggregate counters of every outbox (see the module doc).
#[derive(Default)]
pub struct Seqs {
    next: HashMap<TableId, HashMap<String, i64>>,
    /// The event table's shape for the last outbox table map seen (by pointer).
    maps: HashMap<TableId, (Arc<TableMap>, Arc<TableMap>)>,
}

/// One event: the outbox row's values with its `_binlake_seq` last.
pub struct Event {
    pub values: Vec<Value>,
}

impl Seqs {
    /// The event table's shape for outbox rows of `tm`: its columns, `_binlake_seq`, keyed by
    /// the id column.
    pub fn events_map(
        &mut self,
        spec: &OutboxSpec,
        tm: &Arc<TableMap>,
    ) -> Result<Arc<TableMap>, OutboxError> {
        if let Some((src, ev)) = self.maps.get(&spec.table) {
            if Arc::ptr_eq(src, tm) || **src == **tm {
                return Ok(ev.clone());
            }
        }
        let id = column(spec, tm, &spec.id_column, "id_column")?;
        let agg = column(spec, tm, &spec.aggregate_id_column, "aggregate_id_column")?;
        if !matches!(
            tm.columns[agg].ty,
            ColType::Int { .. } | ColType::Text { .. } | ColType::Binary { .. }
        ) {
            return Err(OutboxError::AggregateType {
                table: spec.table.clone(),
                column: spec.aggregate_id_column.clone(),
            });
        }
        let mut m = (**tm).clone();
        m.table = spec.events.table.clone();
        m.primary_key = vec![id];
        m.columns.push(ColumnMeta {
            name: COL_SEQ.into(),
            type_code: crate::decode::table_map::mysql_type::LONGLONG,
            real_type: crate::decode::table_map::mysql_type::LONGLONG,
            meta: 0,
            nullable: false,
            ty: ColType::Int {
                bytes: 8,
                unsigned: false,
            },
            collation: None,
            charset_name: None,
            visible: true,
        });
        let m = Arc::new(m);
        self.maps
            .insert(spec.table.clone(), (tm.clone(), m.clone()));
        Ok(m)
    }

    /// The events of one statement's inserts into `spec`'s table (`inserted`: their row
    /// images), numbered in order.
    pub fn number(
        &mut self,
        spec: &OutboxSpec,
        events_map: &TableMap,
        inserted: Vec<Vec<Value>>,
    ) -> Vec<Event> {
        let agg = events_map
            .columns
            .iter()
            .position(|c| c.name == spec.aggregate_id_column)
            .expect("checked by events_map");
        let next = self.next.entry(spec.table.clone()).or_default();
        inserted
            .into_iter()
            .map(|mut values| {
                let seq = next.entry(value_text(&values[agg])).or_insert(0);
                *seq += 1;
                values.push(Value::Int(*seq));
                Event { values }
            })
            .collect()
    }
}

fn column(
    spec: &OutboxSpec,
    tm: &TableMap,
    name: &str,
    key: &'static str,
) -> Result<usize, OutboxError> {
    tm.columns
        .iter()
        .position(|c| c.name == name)
        .ok_or_else(|| OutboxError::Column {
            table: spec.table.clone(),
            column: name.to_string(),
            key,
            columns: tm
                .columns
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// An aggregate id as text, the same for a binlog value and for its Arrow value read back from
/// the target (integers in decimal, strings as they are, bytes in lowercase hex).
fn value_text(v: &Value) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Str(s) => s.clone(),
        Value::Bin(b) => hex(b),
        Value::Null => String::new(),
        other => format!("{other:?}"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// [`value_text`] of row `i` of an Arrow column.
fn array_text(a: &ArrayRef, i: usize) -> Option<String> {
    use arrow_array::cast::AsArray;
    use arrow_schema::DataType as D;
    if a.is_null(i) {
        return Some(String::new());
    }
    Some(match a.data_type() {
        D::Binary => hex(a.as_binary::<i32>().value(i)),
        D::LargeBinary => hex(a.as_binary::<i64>().value(i)),
        D::BinaryView => hex(a.as_binary_view().value(i)),
        D::FixedSizeBinary(_) => hex(a.as_fixed_size_binary().value(i)),
        _ => arrow_cast::display::array_value_to_string(a, i).ok()?,
    })
}

/// The counters of every outbox, from the event tables the target holds: the highest
/// `_binlake_seq` per aggregate among the rows at or below the event table's checkpointed
/// version (see the module doc).
pub async fn restore(
    sink: &mut dyn Sink,
    specs: &[OutboxSpec],
    versions: &BTreeMap<TableId, u64>,
) -> Result<Seqs, SinkError> {
    let mut seqs = Seqs::default();
    for spec in specs {
        let Some(&upto) = versions.get(&spec.events) else {
            continue; // no event committed yet
        };
        let batches = sink.read_table(&spec.events).await?;
        let next = seqs.next.entry(spec.table.clone()).or_default();
        let mut rows = 0;
        for b in &batches {
            rows += count_batch(b, spec, upto, next)?;
        }
        info!(outbox = %spec.table, events = rows, aggregates = next.len(), "outbox numbering resumed from the event table");
    }
    Ok(seqs)
}

fn count_batch(
    b: &RecordBatch,
    spec: &OutboxSpec,
    upto: u64,
    next: &mut HashMap<String, i64>,
) -> Result<usize, SinkError> {
    let col = |name: &str| -> Result<ArrayRef, SinkError> {
        let i = b.schema().index_of(name).map_err(|_| {
            SinkError::Definite(format!(
                "outbox event table {}: no column `{name}` in the target",
                spec.events
            ))
        })?;
        Ok(b.column(i).clone())
    };
    let cast = |a: ArrayRef, t: &arrow_schema::DataType| {
        arrow_cast::cast(&a, t)
            .map_err(|e| SinkError::Definite(format!("outbox event table {}: {e}", spec.events)))
    };
    let version = cast(col(COL_VERSION)?, &arrow_schema::DataType::UInt64)?;
    let version = version
        .as_any()
        .downcast_ref::<arrow_array::UInt64Array>()
        .expect("cast");
    let seq = cast(col(COL_SEQ)?, &arrow_schema::DataType::Int64)?;
    let seq = seq
        .as_any()
        .downcast_ref::<arrow_array::Int64Array>()
        .expect("cast");
    let agg = col(&spec.aggregate_id_column)?;
    let mut n = 0;
    for i in 0..b.num_rows() {
        if version.is_null(i) || version.value(i) > upto || seq.is_null(i) {
            continue;
        }
        let Some(key) = array_text(&agg, i) else {
            warn!(outbox = %spec.table, row = i, "an aggregate id read back from the target has no text form; its numbering restarts");
            continue;
        };
        let s = next.entry(key).or_insert(0);
        *s = (*s).max(seq.value(i));
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aggregate_id_reads_back_as_the_same_text() {
        let cases: Vec<(Value, ArrayRef)> = vec![
            (
                Value::Int(-42),
                Arc::new(arrow_array::Int64Array::from(vec![-42])),
            ),
            (
                Value::UInt(7),
                Arc::new(arrow_array::UInt32Array::from(vec![7])),
            ),
            (
                Value::Str("order-1".into()),
                Arc::new(arrow_array::StringArray::from(vec!["order-1"])),
            ),
            (
                Value::Bin(vec![0, 0xab]),
                Arc::new(arrow_array::BinaryArray::from(vec![&[0u8, 0xab][..]])),
            ),
        ];
        for (v, a) in cases {
            assert_eq!(Some(value_text(&v)), array_text(&a, 0), "{v:?}");
        }
    }
}
