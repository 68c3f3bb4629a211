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
//! - With `deliver_url`, events go to [`deliver`] once the commit that holds them is durable
//!   (never before the event table has them); its progress rides in each checkpoint, and a run's
//!   start reads back from the event table the events that progress does not cover.
//!
//! Cost: the counters hold one entry per aggregate id, and a run's start reads the event table
//! once (all of it) to rebuild them.

pub mod deliver;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch};
use binlake_sink::{DeliveryMark, Sink, SinkError, TableId, COL_VERSION};
use tracing::{info, warn};

use deliver::Outgoing;

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
    /// POST each event here (see [`deliver`]).
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
    #[error("outbox {table}: deliver_url {why}")]
    Url { table: TableId, why: String },
}

/// The per-aggregate counters of every outbox (see the module doc).
#[derive(Default)]
pub struct Seqs {
    next: HashMap<TableId, HashMap<String, i64>>,
    /// The event table's shape for the last outbox table map seen (by pointer).
    maps: HashMap<TableId, (Arc<TableMap>, Arc<TableMap>)>,
    /// Events to deliver whose commit is not durable yet, per outbox table, in version order.
    pending: HashMap<TableId, Vec<Outgoing>>,
    /// The running deliverers, per outbox table.
    deliverers: HashMap<TableId, deliver::Deliverer>,
    /// Events of earlier runs not acknowledged, per outbox table (handed to its deliverer when
    /// it starts).
    pub resend: HashMap<TableId, Vec<Outgoing>>,
    /// Each deliverer's acknowledgement count when the last checkpoint was built.
    checkpointed: HashMap<TableId, u64>,
}

/// Where and when an event's transaction committed (for its JSON).
pub struct EventMeta<'a> {
    pub version: u64,
    pub commit_us: i64,
    pub source: &'a str,
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
    /// images), numbered in order; with delivery, queued until their commit is durable.
    pub fn number(
        &mut self,
        spec: &OutboxSpec,
        events_map: &TableMap,
        inserted: Vec<Vec<Value>>,
        meta: &EventMeta<'_>,
    ) -> Vec<Event> {
        let col = |name: &str| events_map.columns.iter().position(|c| c.name == name);
        let agg = col(&spec.aggregate_id_column).expect("checked by events_map");
        let next = self.next.entry(spec.table.clone()).or_default();
        let events: Vec<Event> = inserted
            .into_iter()
            .map(|mut values| {
                let seq = next.entry(value_text(&values[agg])).or_insert(0);
                *seq += 1;
                values.push(Value::Int(*seq));
                Event { values }
            })
            .collect();
        if spec.deliver_url.is_some() {
            let text = |values: &[Value], name: &str| col(name).map(|i| value_text(&values[i]));
            let pending = self.pending.entry(spec.table.clone()).or_default();
            for e in &events {
                let v = &e.values;
                let seq = match v.last() {
                    Some(Value::Int(s)) => *s,
                    _ => 0,
                };
                pending.push(outgoing(
                    spec,
                    meta.version,
                    [
                        text(v, &spec.id_column),
                        text(v, &spec.aggregate_type_column),
                        text(v, &spec.aggregate_id_column),
                        text(v, &spec.type_column),
                        text(v, &spec.payload_column),
                    ],
                    seq,
                    meta.commit_us,
                    meta.source,
                ));
            }
        }
        events
    }

    /// Starts the deliverer of every outbox with a `deliver_url` (tasks into `tasks`), from
    /// the checkpoint's marks.
    pub fn start_delivery(
        &mut self,
        specs: &[OutboxSpec],
        marks: &BTreeMap<TableId, DeliveryMark>,
        tasks: &mut tokio::task::JoinSet<()>,
        metrics: &'static crate::metrics::Metrics,
    ) -> Result<(), OutboxError> {
        for spec in specs {
            let Some(url) = &spec.deliver_url else {
                continue;
            };
            let mark = marks.get(&spec.events);
            let progress = deliver::Progress::from_mark(mark);
            let resend = self.resend.remove(&spec.table).unwrap_or_default();
            let (d, task) = deliver::start(
                spec.table.to_string(),
                url,
                spec.deliver_max_attempts,
                progress,
                resend,
                metrics,
            )
            .map_err(|why| OutboxError::Url {
                table: spec.table.clone(),
                why,
            })?;
            tasks.spawn(task);
            self.deliverers.insert(spec.table.clone(), d);
        }
        Ok(())
    }

    /// A commit up to `version` is durable: its events go to their deliverers.
    pub fn release(&mut self, version: u64) {
        for (table, pending) in self.pending.iter_mut() {
            let n = pending.partition_point(|e| e.version <= version);
            if n == 0 {
                continue;
            }
            let ready: Vec<Outgoing> = pending.drain(..n).collect();
            if let Some(d) = self.deliverers.get(table) {
                for e in ready {
                    let _ = d.tx.send(e);
                }
            }
        }
    }

    /// Delivery marks for the next checkpoint, per event table.
    pub fn marks(&mut self, specs: &[OutboxSpec]) -> BTreeMap<TableId, DeliveryMark> {
        let mut out = BTreeMap::new();
        for spec in specs {
            if let Some(d) = self.deliverers.get(&spec.table) {
                let p = d.progress.lock().expect("progress");
                out.insert(spec.events.clone(), p.mark());
                self.checkpointed.insert(spec.table.clone(), p.changes);
            }
        }
        out
    }

    /// The events given up on since the last call, per event table.
    pub fn take_gave_up(&self, specs: &[OutboxSpec]) -> Vec<(TableId, deliver::GaveUp)> {
        let mut out = Vec::new();
        for spec in specs {
            if let Some(d) = self.deliverers.get(&spec.table) {
                let mut g = d.gave_up.lock().expect("gave up");
                out.extend(g.drain(..).map(|g| (spec.events.clone(), g)));
            }
        }
        out
    }

    /// Delivery progressed since the last checkpoint (a position-only commit records it).
    pub fn delivery_moved(&self) -> bool {
        self.deliverers.iter().any(|(t, d)| {
            d.progress.lock().expect("progress").changes
                != self.checkpointed.get(t).copied().unwrap_or(0)
        })
    }
}

/// An event's JSON: `[id, aggregatetype, aggregateid, type, payload]` as text (the payload as
/// JSON when it is JSON), its seq, commit time and provenance.
fn outgoing(
    spec: &OutboxSpec,
    version: u64,
    cols: [Option<String>; 5],
    seq: i64,
    commit_us: i64,
    source: &str,
) -> Outgoing {
    let [id, agg_type, agg, ty, payload] = cols;
    let payload = payload.map(|p| {
        serde_json::from_str::<serde_json::Value>(&p).unwrap_or(serde_json::Value::String(p))
    });
    let json = serde_json::json!({
        "id": id,
        "aggregatetype": agg_type,
        "aggregateid": agg,
        "type": ty,
        "payload": payload,
        "seq": seq,
        "commit_ts": crate::clock::format_us(commit_us),
        "source": source,
        "outbox": spec.table.to_string(),
    });
    Outgoing {
        version,
        id: id.clone().unwrap_or_default(),
        aggregate: agg.unwrap_or_default(),
        json: json.to_string(),
        commit_us,
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
    marks: &BTreeMap<TableId, DeliveryMark>,
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
        if spec.deliver_url.is_some() {
            let done = deliver::Progress::from_mark(marks.get(&spec.events));
            let mut resend = Vec::new();
            for b in &batches {
                resend.extend(unacknowledged(b, spec, upto, &done)?);
            }
            // commit order, and within a transaction the aggregate's order
            resend.sort_by_key(|(e, seq)| (e.version, *seq));
            seqs.resend.insert(
                spec.table.clone(),
                resend.into_iter().map(|(e, _)| e).collect(),
            );
        }
    }
    Ok(seqs)
}

/// The events of `b` at or below `upto` that `done` does not hold, with their seq.
fn unacknowledged(
    b: &RecordBatch,
    spec: &OutboxSpec,
    upto: u64,
    done: &deliver::Progress,
) -> Result<Vec<(Outgoing, i64)>, SinkError> {
    let err = |e: String| event_table_error(spec, e);
    let col = |name: &str| b.schema().index_of(name).ok().map(|i| b.column(i).clone());
    let cast = |a: ArrayRef, t: arrow_schema::DataType| {
        arrow_cast::cast(&a, &t).map_err(|e| err(e.to_string()))
    };
    let (version, seq) = versions_and_seqs(b, spec)?;
    let commit = match col(binlake_sink::COL_COMMIT_TS) {
        Some(a) => Some(cast(
            cast(
                a,
                arrow_schema::DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, None),
            )?,
            arrow_schema::DataType::Int64,
        )?),
        None => None,
    };
    let source = col(binlake_sink::COL_SOURCE);
    let deleted = col(binlake_sink::COL_DELETED);
    let cols = [
        col(&spec.id_column),
        col(&spec.aggregate_type_column),
        col(&spec.aggregate_id_column),
        col(&spec.type_column),
        col(&spec.payload_column),
    ];
    let mut out = Vec::new();
    for i in 0..b.num_rows() {
        if !committed(&version, &seq, i, upto) {
            continue;
        }
        if deleted
            .as_ref()
            .is_some_and(|d| array_text(d, i).is_some_and(|t| t == "true" || t == "1"))
        {
            continue;
        }
        let text = |c: &Option<ArrayRef>| c.as_ref().and_then(|a| array_text(a, i));
        let id = text(&cols[0]).unwrap_or_default();
        if done.done(version.value(i), &id) {
            continue;
        }
        let commit_us = commit.as_ref().map_or(0, |c| {
            c.as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .map_or(0, |c| c.value(i))
        });
        let e = outgoing(
            spec,
            version.value(i),
            cols.clone().map(|c| text(&c)),
            seq.value(i),
            commit_us,
            &text(&source).unwrap_or_default(),
        );
        out.push((e, seq.value(i)));
    }
    Ok(out)
}

fn event_table_error(spec: &OutboxSpec, e: String) -> SinkError {
    SinkError::Definite(format!("outbox event table {}: {e}", spec.events))
}

/// The `_binlake_version` and `_binlake_seq` columns of event rows read back from the target
/// (whatever integer types the sink stores them as).
fn versions_and_seqs(
    b: &RecordBatch,
    spec: &OutboxSpec,
) -> Result<(arrow_array::UInt64Array, arrow_array::Int64Array), SinkError> {
    use arrow_array::cast::AsArray;
    let column = |name: &str, t: arrow_schema::DataType| {
        let i = b
            .schema()
            .index_of(name)
            .map_err(|_| event_table_error(spec, format!("no column `{name}` in the target")))?;
        arrow_cast::cast(b.column(i), &t).map_err(|e| event_table_error(spec, e.to_string()))
    };
    let version = column(COL_VERSION, arrow_schema::DataType::UInt64)?;
    let seq = column(COL_SEQ, arrow_schema::DataType::Int64)?;
    Ok((
        version
            .as_primitive::<arrow_array::types::UInt64Type>()
            .clone(),
        seq.as_primitive::<arrow_array::types::Int64Type>().clone(),
    ))
}

/// Row `i` is an event the checkpoint (at version `upto`) covers.
fn committed(
    version: &arrow_array::UInt64Array,
    seq: &arrow_array::Int64Array,
    i: usize,
    upto: u64,
) -> bool {
    !version.is_null(i) && version.value(i) <= upto && !seq.is_null(i)
}

fn count_batch(
    b: &RecordBatch,
    spec: &OutboxSpec,
    upto: u64,
    next: &mut HashMap<String, i64>,
) -> Result<usize, SinkError> {
    let (version, seq) = versions_and_seqs(b, spec)?;
    let agg = b
        .schema()
        .index_of(&spec.aggregate_id_column)
        .map(|i| b.column(i).clone())
        .map_err(|_| {
            event_table_error(
                spec,
                format!("no column `{}` in the target", spec.aggregate_id_column),
            )
        })?;
    let mut n = 0;
    for i in 0..b.num_rows() {
        if !committed(&version, &seq, i, upto) {
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
