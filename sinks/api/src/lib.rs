//! The contract between binlake's pipeline and its sinks.
//!
//! Invariants every sink upholds (the compliance tests check them against each sink):
//! - **Checkpoint with the data.** [`Sink::commit`] makes the batches and the [`Checkpoint`]
//!   durable together; [`Sink::open`] reads back the checkpoint of the last complete commit, so the
//!   local machine holds no state that matters.
//! - **Idempotent.** Committing a batch whose versions are already applied changes nothing a reader
//!   of the current state sees.
//! - **Whole transactions.** A [`TableBatch`] holds whole source transactions for its table; a sink
//!   never splits one batch across two visible commits.
//! - **Metadata columns.** Every batch carries the columns of [`metadata_fields`], with these names,
//!   in every sink.

pub mod encoding;
pub mod position;
pub mod store;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, TimeUnit};
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use position::{BinlogPos, Position};

pub const COL_VERSION: &str = "_binlake_version";
pub const COL_DELETED: &str = "_binlake_deleted";
pub const COL_OP: &str = "_binlake_op";
pub const COL_COMMIT_TS: &str = "_binlake_commit_ts";
pub const COL_SYNCED_AT: &str = "_binlake_synced_at";
pub const COL_SOURCE: &str = "_binlake_source";

/// Name of the dead-letter table (rows whose values the target cannot hold, under
/// `invalid_values = "dead_letter"`).
pub const REJECTS_TABLE: &str = "_binlake_rejects";

/// Name of the watermarks table: per table, the last applied GTID and its source commit time.
pub const WATERMARKS_TABLE: &str = "_binlake_watermarks";

/// The schema of the watermarks table. One row per table a commit changed (`table` = `db.tbl`),
/// plus one row with `table` = `*` for the pipeline as a whole; the latest row per
/// (`pipeline`, `table`) (highest `applied_at`) is the current watermark. `position` is the
/// pipeline's checkpoint position of that commit: every table is consistent up to it.
pub fn watermark_fields() -> Vec<Field> {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    vec![
        Field::new("pipeline", DataType::Utf8, false),
        Field::new("table", DataType::Utf8, false),
        Field::new("gtid", DataType::Utf8, true),
        Field::new("position", DataType::Utf8, false),
        Field::new(COL_VERSION, DataType::UInt64, false),
        Field::new("source_commit_ts", ts(), false),
        Field::new("applied_at", ts(), false),
    ]
}

/// The metadata columns appended to every replicated table, in this order.
pub fn metadata_fields() -> Vec<Field> {
    vec![
        Field::new(COL_VERSION, DataType::UInt64, false),
        Field::new(COL_DELETED, DataType::Boolean, false),
        Field::new(COL_OP, DataType::Utf8, false),
        Field::new(
            COL_COMMIT_TS,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new(
            COL_SYNCED_AT,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new(COL_SOURCE, DataType::Utf8, false),
    ]
}

/// The schema of the dead-letter table.
pub fn rejects_fields() -> Vec<Field> {
    vec![
        Field::new("table", DataType::Utf8, false),
        Field::new("position", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("row_json", DataType::Utf8, false),
        Field::new(COL_VERSION, DataType::UInt64, false),
        Field::new(
            "rejected_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]
}

/// A source table. Its text form, `db.table`, is what logs, checkpoints and table patterns
/// show; a part holding a dot or a backtick (legal in MySQL names) is backtick-quoted, with
/// backticks doubled (`` `d.x`.`t.y` ``), so the text always reads back to the same table.
/// Serialised as that text (map keys in JSON included).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId {
    pub db: String,
    pub table: String,
}

impl TableId {
    pub fn new(db: impl Into<String>, table: impl Into<String>) -> Self {
        TableId {
            db: db.into(),
            table: table.into(),
        }
    }
}

/// One part of a table's text form: as is, or backtick-quoted when it would not read back.
fn write_name_part(f: &mut fmt::Formatter<'_>, part: &str) -> fmt::Result {
    if part.is_empty() || part.contains(['.', '`']) {
        write!(f, "`{}`", part.replace('`', "``"))
    } else {
        f.write_str(part)
    }
}

/// Splits `text` into its first name part (backtick-quoted or up to `.` / the end) and the rest
/// after it. Used by [`TableId`]'s `FromStr` and by table patterns.
pub fn split_name_part(text: &str) -> Result<(String, &str), TableIdParseError> {
    let err = |reason| TableIdParseError {
        text: text.to_string(),
        reason,
    };
    let Some(body) = text.strip_prefix('`') else {
        return Ok(match text.split_once('.') {
            Some((a, rest)) => (a.to_string(), rest),
            None => (text.to_string(), ""),
        });
    };
    let mut part = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '`' {
            part.push(c);
            continue;
        }
        if body[i + 1..].starts_with('`') {
            part.push('`');
            chars.next();
            continue;
        }
        let rest = &body[i + 1..];
        return match rest.strip_prefix('.') {
            Some(r) => Ok((part, r)),
            None if rest.is_empty() => Ok((part, "")),
            None => Err(err("expected `.` after a quoted name")),
        };
    }
    Err(err("unclosed backtick"))
}

/// A table's text that does not read back (see [`TableId`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid table name `{text}`: {reason}")]
pub struct TableIdParseError {
    pub text: String,
    pub reason: &'static str,
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.width().is_some() {
            // `{t:<40}`: pad the whole name
            return f.pad(&format!("{}", Unpadded(self)));
        }
        Unpadded(self).fmt(f)
    }
}

/// A table's text without padding (the padded form is built from it).
struct Unpadded<'a>(&'a TableId);

impl fmt::Display for Unpadded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_name_part(f, &self.0.db)?;
        f.write_str(".")?;
        write_name_part(f, &self.0.table)
    }
}

impl std::str::FromStr for TableId {
    type Err = TableIdParseError;
    /// `db.table`, either part backtick-quoted. Unquoted, the first dot separates the parts (as
    /// checkpoints written before quoting existed have it).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (db, rest) = split_name_part(s)?;
        if rest.is_empty() && !s.ends_with('.') {
            return Err(TableIdParseError {
                text: s.to_string(),
                reason: "expected db.table",
            });
        }
        let table = if rest.starts_with('`') {
            let (t, tail) = split_name_part(rest)?;
            if !tail.is_empty() || rest.ends_with('.') {
                return Err(TableIdParseError {
                    text: s.to_string(),
                    reason: "text after the table name",
                });
            }
            t
        } else {
            rest.to_string()
        };
        Ok(TableId { db, table })
    }
}

impl Serialize for TableId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TableId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Changes to one table: whole transactions, deduplicated per key (the highest version of each key
/// within the batch), data columns followed by the metadata columns.
#[derive(Debug, Clone)]
pub struct TableBatch {
    pub table: TableId,
    pub batch: RecordBatch,
    /// Primary-key column names; empty for keyless tables (append-only changelog).
    pub primary_key: Vec<String>,
    pub min_version: u64,
    pub max_version: u64,
    /// The highest version of a binlog change in the batch (0: snapshot rows only). Snapshot
    /// rows carry the version of their read, which can be above binlog changes of other keys
    /// still to be committed: a sink that remembers "applied up to version v" per table must
    /// advance it to this, never to `max_version`.
    pub stream_max_version: u64,
    /// Every row is a key the target has never held (rows of an initial snapshot, read in this
    /// run, whose keys no binlog change has touched): a sink may append instead of merging.
    /// Never set for rows that a restart could bring again.
    pub insert_only: bool,
    /// The rows are the table's whole content (a keyless table's read, which has no key to
    /// merge on): the sink replaces what it holds of the table, in one step readers see whole
    /// where it can. With `purge_below`, only what it holds below that version is replaced (the
    /// read is versioned there; rows at or above it are the stream's later changes, some
    /// already committed, and stay). A read repeated after a crash between its data and its
    /// checkpoint then replaces the first attempt's rows instead of doubling them.
    pub replace: bool,
    /// Some rows are snapshot rows (`_binlake_op = 'snapshot'`, versioned at their read rather
    /// than at a transaction): a sink that treats them apart need not scan the column.
    pub snapshot_rows: bool,
    /// After the rows are written, every row of the table whose key's current version is below
    /// this is removed (a tombstone, or deleted): the end of a re-snapshot that started at this
    /// version (after RENAME TABLE into the name, an ADD COLUMN with a default...). Every key
    /// the source still holds was read again or changed since, with a higher version; the keys
    /// left below it are gone at the source. Idempotent (a replay finds nothing left below it).
    /// For a `replace` batch, the bound of what it replaces (see there).
    pub purge_below: Option<u64>,
    /// A re-snapshot replaces this table's content (it was renamed into place, or altered in a
    /// way no row event shows): the target takes the batch's shape as it is. Columns the rows
    /// no longer have are dropped and a type that is not a widening is replaced (the rows not
    /// yet read again show NULL there until they are), instead of stopping the table.
    pub reshape: bool,
    /// The rows belong to a re-snapshot that replaces this keyed table (its plan's id): every
    /// batch of the table from the re-snapshot's start to its end (the batch with `purge_below`)
    /// carries it, stream changes included. A sink that can swap a table atomically writes them
    /// to a shadow of the table for this generation and swaps it in with the last batch, so
    /// readers see the old table until then and the new one after (a repeat after a crash, of
    /// any of them, must find the swap done and write to the table). A sink that cannot applies
    /// them in place (the replica converges the same; readers see the mix meanwhile).
    pub generation: Option<i64>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Progress, stored in the target with the data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The pipeline's name: several pipelines may share a target.
    pub pipeline: String,
    /// Where the stream resumes (stored as its text, e.g. `mariadb-gtid:0-1-42`).
    pub position: Position,
    /// Highest applied `_binlake_version` per table.
    pub tables: BTreeMap<TableId, u64>,
    /// Source commit time (µs) of the last applied transaction, for lag and freshness.
    pub source_commit_us: i64,
    /// Wall-clock time (µs) of the commit.
    pub committed_at_us: i64,
    /// Sequence number of the commit in the target (assigned by the sink).
    #[serde(default)]
    pub seq: u64,
    /// Tables stopped by an error that retrying cannot fix (`db.table` -> the reason). Their
    /// changes are skipped until the table is rebuilt; the other tables go on.
    #[serde(default)]
    pub quarantined: BTreeMap<TableId, String>,
    /// Snapshots (initial loads and backfills) in progress, per table: how far each
    /// key range has been read. Written with the rows it describes, so a restart continues
    /// after the last chunk the target holds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub snapshots: BTreeMap<TableId, SnapshotProgress>,
    /// Tables whose last snapshot finished, with the wall-clock time (µs) it finished.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub loaded: BTreeMap<TableId, i64>,
    /// Per table: source commit time (µs) of the last change applied, for per-table lag in
    /// `binlake status`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub table_commit_us: BTreeMap<TableId, i64>,
    /// The highest `_binlake_version` given to snapshot rows: later reads at the same binlog
    /// point get higher versions (a backfill must win over the rows it repairs), across restarts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub snapshot_version: u64,
    /// The last error the pipeline retried or failed over from (wall-clock µs, message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<(i64, String)>,
    /// Tables created in the stream (CREATE TABLE, at this version) that no row has reached
    /// yet: read once when the source is next drained, so that they exist in the target.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub created: BTreeMap<TableId, u64>,
    /// Outbox delivery progress per event table: what a restart need not send again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outbox_delivered: BTreeMap<TableId, DeliveryMark>,
    /// The target table of each source table that `map` writes under another name (a restart
    /// whose `map` sends one elsewhere is refused: the new table would miss its rows).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub targets: BTreeMap<TableId, TableId>,
    /// Rows carry `_binlake_origin` in their key (`origin_in_key`); a restart that changes it
    /// is refused (the key of every row written would change).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub origin_in_key: bool,
    /// Versions are last-writer-wins versions (`conflict`), and the clock after the last
    /// transaction this checkpoint includes: `(seconds since 2020, ordinal in that second)`.
    /// A restart that changes `conflict` is refused (every version written would change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lww_clock: Option<(u64, u64)>,
}

/// How far an outbox's events are delivered: every event at or below `upto` (a binlake
/// version) is acknowledged, and so are the `(version, id)` listed above it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryMark {
    pub upto: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acked: Vec<(u64, String)>,
}

/// A table's snapshot in progress (see `binlake::snapshot`). Keys are opaque JSON to sinks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotProgress {
    /// Why: `initial`, `backfill`, `schedule` or `repair`.
    pub reason: String,
    /// An extra predicate that limits the rows read (a backfill's `--where`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Key ranges read in parallel, in key order.
    pub ranges: Vec<RangeProgress>,
    /// Rows read so far, and the table's estimated row count when planned.
    pub rows: u64,
    pub estimate: u64,
    pub started_at_us: i64,
    /// Keys the target holds that the source may have deleted (a repair of missed deletes):
    /// each gets a tombstone unless one consistent read finds it at the source. Emptied when
    /// that read is taken.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent: Vec<serde_json::Value>,
    /// A keyless table read whole at startup (reason `keyless`): the binlog point its read holds
    /// everything up to. The stream skips the table's changes up to it, and the entry stays
    /// until the stream has passed it. (Checkpoints before this field kept it in the first
    /// range's `after` as `{"cut": ...}`: see [`SnapshotProgress::keyless_cut`].)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<BinlogPos>,
    /// A re-snapshot that replaces the table's content (reason `resnapshot`): the version it
    /// started at. When its last range is read, the rows still below it are removed (see
    /// [`TableBatch::purge_below`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_below: Option<u64>,
}

impl SnapshotProgress {
    /// The keyless cut (see [`SnapshotProgress::cut`]), from either place it has been stored.
    pub fn keyless_cut(&self) -> Option<BinlogPos> {
        self.cut.clone().or_else(|| {
            self.ranges
                .first()
                .and_then(|r| r.after.as_ref())
                .and_then(|a| a.get("cut"))
                .and_then(|c| c.as_str())
                .and_then(|c| c.parse().ok())
        })
    }
}

/// One key range of a snapshot: keys `>= lo` (or from the start) and `< hi` (or to the end).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeProgress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lo: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hi: Option<serde_json::Value>,
    /// The last key read and committed: the range resumes after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<serde_json::Value>,
    pub done: bool,
}

/// What one commit carries.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    pub batches: Vec<TableBatch>,
    /// Dead-letter rows (schema [`rejects_fields`]).
    pub rejects: Option<RecordBatch>,
    /// Watermark rows (schema [`watermark_fields`]), written with the data.
    pub watermarks: Option<RecordBatch>,
    pub checkpoint: Checkpoint,
}

impl Commit {
    pub fn rows(&self) -> usize {
        self.batches
            .iter()
            .map(|b| b.batch.num_rows())
            .sum::<usize>()
            + self.rejects.as_ref().map_or(0, |r| r.num_rows())
    }
}

/// binlake's own tables in the target, written with the data of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaTable {
    /// [`REJECTS_TABLE`]: schema [`rejects_fields`].
    Rejects,
    /// [`WATERMARKS_TABLE`]: schema [`watermark_fields`].
    Watermarks,
}

impl MetaTable {
    pub fn name(self) -> &'static str {
        match self {
            MetaTable::Rejects => REJECTS_TABLE,
            MetaTable::Watermarks => WATERMARKS_TABLE,
        }
    }
}

/// Errors are classified so that the pipeline knows whether to retry.
#[derive(Debug, Error)]
pub enum SinkError {
    /// Worth retrying with backoff: the network, a timeout, a 5xx, a throttled store.
    #[error("transient sink error: {0}")]
    Transient(String),
    /// Retrying will not help: bad configuration, permissions, a corrupt target.
    #[error("{0}")]
    Definite(String),
    /// Another writer holds the target (a conditional write lost a race).
    #[error("another binlake process is writing to this target: {0}")]
    Conflict(String),
    /// One table cannot be written (a type or schema the target rejects); others may go on.
    #[error("table {table}: {message}")]
    Table { table: TableId, message: String },
    /// One table changed at the source in a way its rows cannot follow in place (a column gone
    /// without a DROP statement, a type that is not a widening, a key column retyped): the
    /// pipeline reads the table again (a re-snapshot, whose batches carry
    /// [`TableBatch::reshape`]) instead of stopping it. A sink never returns it for a batch
    /// that already has `reshape` set.
    #[error("table {table} must be read again: {message}")]
    Reread { table: TableId, message: String },
}

impl SinkError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SinkError::Transient(_))
    }
}

/// A target that holds replicated tables.
#[async_trait::async_trait]
pub trait Sink: Send {
    /// Short name for logs (`parquet`, `delta`, `clickhouse`).
    fn kind(&self) -> &'static str;

    /// Connects, verifies the target is usable, cleans up what an interrupted commit left behind,
    /// and returns the checkpoint of the last complete commit of `pipeline`, if any.
    async fn open(&mut self) -> Result<Option<Checkpoint>, SinkError>;

    /// Reads the last checkpoint without taking the target (for `binlake status` while a
    /// pipeline runs).
    async fn read_checkpoint(&mut self) -> Result<Option<Checkpoint>, SinkError>;

    /// Makes the batches and the checkpoint durable in one atomic step. The order of a commit
    /// lives here, once, for every sink; sinks implement the steps and do not override this:
    ///
    /// 1. [`Sink::begin_commit`]: prove this process still owns the target; the commit's `seq`.
    /// 2. [`Sink::write_tables`]: the tables' rows (each table's part atomic on its own, and
    ///    idempotent: a replay after a crash changes nothing).
    /// 3. [`Sink::write_meta`]: the dead-letter rows, then the watermarks.
    /// 4. the `after-data` [`failpoint`] (the crash the tests inject between data and checkpoint).
    ///    A batch with [`TableBatch::purge_below`] removes the older rows in this step too.
    /// 5. [`Sink::write_checkpoint`]: the resume point, last. Until it is durable the commit is
    ///    not done: a crash before it replays steps 2-3, which their idempotence makes harmless.
    /// 6. [`Sink::after_commit`]: bookkeeping that needs the commit done (maintenance schedules).
    ///
    /// A failed step fails the commit; the pipeline retries the whole commit from step 1.
    async fn commit(&mut self, mut commit: Commit) -> Result<(), SinkError> {
        let seq = self.begin_commit().await?;
        commit.checkpoint.seq = seq;
        self.write_tables(seq, &commit.batches).await?;
        for (table, rows) in [
            (MetaTable::Rejects, &commit.rejects),
            (MetaTable::Watermarks, &commit.watermarks),
        ] {
            if let Some(rows) = rows.as_ref().filter(|r| r.num_rows() > 0) {
                self.write_meta(seq, table, rows).await?;
            }
        }
        failpoint("after-data");
        self.write_checkpoint(seq, &commit.checkpoint).await?;
        self.after_commit(&commit.checkpoint);
        Ok(())
    }

    /// Commit step 1: checks that this process is still the target's one writer and returns
    /// the sequence number of the commit about to be made (the last committed one + 1). Forgets
    /// whatever an earlier failed attempt staged.
    async fn begin_commit(&mut self) -> Result<u64, SinkError>;

    /// Commit step 2: writes the batches (empty ones included: a batch with `replace` set and no
    /// rows empties its table; any other empty batch asks that the table exist in the target,
    /// with the batch's columns, if it does not yet: a snapshot of an empty source table).
    async fn write_tables(&mut self, seq: u64, batches: &[TableBatch]) -> Result<(), SinkError>;

    /// Commit step 3: appends rows (never empty) to one of binlake's own tables.
    async fn write_meta(
        &mut self,
        seq: u64,
        table: MetaTable,
        rows: &RecordBatch,
    ) -> Result<(), SinkError>;

    /// Commit step 5: makes `checkpoint` (its `seq` set) the target's resume point; what steps
    /// 2-3 wrote is committed once this returns.
    async fn write_checkpoint(
        &mut self,
        seq: u64,
        checkpoint: &Checkpoint,
    ) -> Result<(), SinkError>;

    /// Commit step 6, after the checkpoint is durable (cannot fail the commit).
    fn after_commit(&mut self, checkpoint: &Checkpoint) {
        let _ = checkpoint;
    }

    /// Applies a DDL statement that the source committed at `version`. TRUNCATE and DROP TABLE:
    /// afterwards the table's current state is empty (rows written later, with higher versions,
    /// stay). DROP and RENAME COLUMN: the stored rows lose the column, or carry its values under
    /// the new name. Must be idempotent (a crash replays it). A sink that cannot do it returns
    /// [`SinkError::Table`], which stops that table (each sink's `ddl.rs` says what it does).
    async fn apply_table_ddl(
        &mut self,
        table: &TableId,
        kind: DdlKind,
        version: u64,
    ) -> Result<(), SinkError>;

    /// The days (since 1970-01-01) of the dates and times the target can hold, when it cannot
    /// hold every MySQL date. Values outside are invalid values: the `invalid_values` policy
    /// decides (NULL, stop, or dead-letter), never a silent clamp.
    fn date_range_days(&self) -> Option<(i32, i32)> {
        None
    }

    /// True when fewer, larger commits are much cheaper for this target (a MERGE rewrites
    /// files): the pipeline then keeps filling the next batch while a commit runs, up to four
    /// times the size bounds, instead of waiting at the bounds.
    fn prefers_large_commits(&self) -> bool {
        false
    }

    /// The shortest time between two commits made because the source is drained (a quiet
    /// source is committed at once, a steady trickle no more often than this): what one commit
    /// costs the target and its readers (files, log entries, merges).
    fn min_commit_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(100)
    }

    /// How long after the start of the last commit the next one should wait, unless the size
    /// bounds force it, because that commit was expensive for the target (Delta: the bytes of
    /// files it rewrote, over the sink's rewrite budget). It stretches both the floor and
    /// `max_latency`: a table updated all over is then rewritten at a bounded rate instead of
    /// once per commit. Read after each commit; zero (the default) adds nothing.
    fn commit_pause(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Every row the target holds for `table` (readers keep the highest `_binlake_version` per
    /// key and drop tombstones), for `binlake validate`. Read-only: safe while a pipeline
    /// writes. Empty when the table is not in the target.
    async fn read_table(&mut self, table: &TableId) -> Result<Vec<RecordBatch>, SinkError> {
        Err(SinkError::Definite(format!(
            "the {} sink cannot read {table} back for validation",
            self.kind()
        )))
    }

    /// Every row readers of the target see for `table`, whichever pipeline wrote it (a table
    /// several pipelines share: `origin_in_key`, `conflict`), for `binlake validate`. By
    /// default [`Sink::read_table`], for sinks whose tables are one store every pipeline writes
    /// to (Delta, ClickHouse); a Parquet lake reads the table's folder.
    async fn read_table_whole(&mut self, table: &TableId) -> Result<Vec<RecordBatch>, SinkError> {
        self.read_table(table).await
    }

    /// Called after each successful commit, in the commit's task (intake goes on meanwhile):
    /// maintenance that must not interleave with commits (a Parquet lake's compaction, by the
    /// one writer) runs here when it is due. An error is logged and the pipeline goes on; the
    /// next call tries again.
    async fn maintain(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Called about every 10 s while the pipeline runs, so a sink can renew what proves it is
    /// the target's one writer.
    async fn keepalive(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// A crash on purpose, for tests: when the environment variable `BINLAKE_FAILPOINT` names this
/// point (`after-data`: a sink has written a commit's data but not its checkpoint), the process
/// aborts the `BINLAKE_FAILPOINT_AT`-th time (default 1) it gets here, exactly as a kill -9 at
/// that instant would. Costs one environment lookup per commit otherwise.
pub fn failpoint(name: &str) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static HITS: AtomicU32 = AtomicU32::new(0);
    if std::env::var("BINLAKE_FAILPOINT").ok().as_deref() != Some(name) {
        return;
    }
    let at: u32 = std::env::var("BINLAKE_FAILPOINT_AT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 == at {
        eprintln!("failpoint {name}: aborting (test)");
        std::process::abort();
    }
}

/// The error of a sink that does not follow RENAME TABLE (it stops both names).
pub fn rename_table_unsupported(sink: &str, table: &TableId, to: &TableId) -> SinkError {
    SinkError::Table {
        table: table.clone(),
        message: format!("RENAME TABLE {table} TO {to} at the source: the {sink} sink does not follow table renames, and a table starting empty under the new name would be a partial replica. Both names are stopped; the other tables go on. To resume, rebuild the renamed table in the target"),
    }
}

/// A DDL statement the sinks apply at its place in the stream (after every change before it is
/// committed, before the position moves past it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DdlKind {
    Truncate,
    DropTable,
    /// `ALTER TABLE ... DROP COLUMN c`
    DropColumn(String),
    /// `RENAME COLUMN from TO to`, or `CHANGE COLUMN from to ...`
    RenameColumn {
        from: String,
        to: String,
    },
    /// `RENAME TABLE t TO to` or `ALTER TABLE t RENAME TO to`.
    RenameTable {
        to: TableId,
    },
}

/// Shared, cheap-to-clone text for the `_binlake_source` column.
pub type SourceText = Arc<str>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_with_dots_and_backticks_read_back() {
        for (db, t, text) in [
            ("shop", "orders", "shop.orders"),
            ("d.x", "t.y", "`d.x`.`t.y`"),
            ("shop", "a`b", "shop.`a``b`"),
            ("a.b", "c", "`a.b`.c"),
        ] {
            let id = TableId::new(db, t);
            assert_eq!(id.to_string(), text);
            assert_eq!(text.parse::<TableId>().unwrap(), id);
            let json = serde_json::to_string(&BTreeMap::from([(id.clone(), 1u64)])).unwrap();
            let back: BTreeMap<TableId, u64> = serde_json::from_str(&json).unwrap();
            assert_eq!(back.keys().next(), Some(&id), "{json}");
        }
        // unquoted: the first dot separates (checkpoints written before quoting)
        assert_eq!(
            "shop.t.y".parse::<TableId>().unwrap(),
            TableId::new("shop", "t.y")
        );
        assert!("shop".parse::<TableId>().is_err());
        assert!("`shop.t".parse::<TableId>().is_err());
        assert!("`a`x.t".parse::<TableId>().is_err());
    }

    #[test]
    fn a_default_checkpoint_reads_back() {
        // found by the conformance suite: the default position's text did not parse
        let cp = Checkpoint::default();
        let back: Checkpoint = serde_json::from_str(&serde_json::to_string(&cp).unwrap()).unwrap();
        assert_eq!(back, cp);
    }

    #[test]
    fn a_checkpoint_written_before_typed_fields_loads() {
        let old = r#"{"pipeline":"p","position":"mariadb-gtid:0-1-42","tables":{"shop.orders":7},
            "source_commit_us":1,"committed_at_us":2,"seq":3,
            "snapshots":{"shop.logs":{"reason":"keyless","ranges":[{"after":{"cut":"binlog.000002:99"},"done":true}],
            "rows":1,"estimate":1,"started_at_us":0}}}"#;
        let cp: Checkpoint = serde_json::from_str(old).unwrap();
        assert_eq!(cp.position.to_string(), "mariadb-gtid:0-1-42");
        assert_eq!(cp.tables[&TableId::new("shop", "orders")], 7);
        let p = &cp.snapshots[&TableId::new("shop", "logs")];
        assert_eq!(
            p.keyless_cut(),
            Some(BinlogPos {
                file: "binlog.000002".into(),
                pos: 99
            })
        );
        // and what is written now reads back the same
        let again: Checkpoint = serde_json::from_str(&serde_json::to_string(&cp).unwrap()).unwrap();
        assert_eq!(again, cp);
    }
}
