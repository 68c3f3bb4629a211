//! The sink conformance suite: the same cases, against every sink (Parquet, Delta, ClickHouse),
//! each on its real target. A new sink gets a [`Kind`] and runs them all.
//!
//! - **type zoo**: every MariaDB column type at its edges, NULLs, inserts, updates and deletes;
//!   the replica equals the source value by value (`compare.py` with the sink's reader).
//! - **replay of a committed batch**: through the sink API alone, one commit given twice (what a
//!   restart from an older checkpoint does): the table's current state (the highest version per
//!   key, tombstones dropped) is the batch's, once, and the checkpoint reads back.
//! - **DDL**: TRUNCATE, then DROP COLUMN, at the source between changes: the replica equals the
//!   source in every sink, and no table is stopped (the rest of the table lifecycle is in
//!   [`crate::lifecycle`]).
//! - **crash after data**: the `after-data` failpoint aborts binlake between a commit's data and
//!   its checkpoint, in the commit that adds a column to the target; the restart replays the
//!   commit, and the replica (a keyed table and a keyless changelog) equals the source: nothing
//!   lost, nothing doubled, nothing stopped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use binlake_sink::{Checkpoint, Commit, Sink, TableBatch, TableId};

use crate::harness::*;
use crate::replicate::{ZOO_DDL, ZOO_ROWS};

#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Kind {
    Parquet,
    #[cfg(feature = "delta")]
    Delta,
    #[cfg(feature = "clickhouse")]
    ClickHouse,
}

/// A sink's target for one test: where it is, the flags that select it, the reader that reads it.
pub(crate) struct Target {
    pub(crate) kind: Kind,
    /// The `--target` value.
    pub(crate) target: String,
    #[cfg(feature = "clickhouse")]
    pub(crate) ch: Option<ClickHouse>,
}

impl Target {
    pub(crate) fn new(kind: Kind, dir: &TestDir, test: &str) -> Target {
        #[cfg(feature = "clickhouse")]
        if kind == Kind::ClickHouse {
            let ch = ClickHouse::start(&dir.0.join("ch"), test);
            return Target {
                kind,
                target: ch.url.clone(),
                ch: Some(ch),
            };
        }
        let _ = test;
        Target {
            kind,
            target: dir.path("lake"),
            #[cfg(feature = "clickhouse")]
            ch: None,
        }
    }

    /// `rows sum(n)` of the keyless table `cf.log` in the target (compare.py compares keyed
    /// tables only).
    pub(crate) fn log(&self) -> String {
        self.keyless("cf", "log", "n")
    }

    /// `rows sum(col)` of keyless table `db.table` as its changelog counts it: each row once,
    /// minus its delete rows (a DELETE of a keyless row is a row with `_binlake_deleted`).
    pub(crate) fn keyless(&self, db: &str, table: &str, col: &str) -> String {
        let target = &self.target;
        let sign = "CASE WHEN _binlake_deleted THEN -1 ELSE 1 END";
        let sql = |from: &str| {
            format!("SELECT coalesce(sum({sign}), 0)::VARCHAR || ' ' || coalesce(sum({sign} * {col}), 0)::VARCHAR FROM {from}")
        };
        match self.kind {
            Kind::Parquet => duck(&sql(&format!(
                "read_parquet('{target}/{db}/{table}/*.parquet', union_by_name = true)"
            ))),
            #[cfg(feature = "delta")]
            Kind::Delta => delta_q(&format!("{target}/{db}/{table}"), &sql("t")),
            #[cfg(feature = "clickhouse")]
            Kind::ClickHouse => {
                let ch = self.ch.as_ref().expect("started");
                ch.q(&format!(
                    "SELECT sum({sign}), sum({sign} * {col}) FROM {}{db}.{table}_current",
                    ch.prefix
                ))
                .replace('\t', " ")
            }
        }
    }

    /// The replicate flags after `--target` (the sink and its settings).
    pub(crate) fn sink_args(&self) -> Vec<&str> {
        match self.kind {
            Kind::Parquet => vec![],
            #[cfg(feature = "delta")]
            Kind::Delta => vec!["--sink", "delta"],
            #[cfg(feature = "clickhouse")]
            Kind::ClickHouse => {
                let ch = self.ch.as_ref().expect("started");
                vec!["--sink", "clickhouse", "--database-prefix", &ch.prefix]
            }
        }
    }

    /// The `compare.py` flags that read this sink's current state.
    pub(crate) fn reader(&self) -> Vec<&str> {
        match self.kind {
            Kind::Parquet => vec![],
            #[cfg(feature = "delta")]
            Kind::Delta => vec!["--reader", "delta"],
            #[cfg(feature = "clickhouse")]
            Kind::ClickHouse => self.ch.as_ref().expect("started").reader(),
        }
    }

    pub(crate) fn catch_up(
        &self,
        m: &Maria,
        tables: &str,
        env: &[(&str, &str)],
    ) -> std::process::Output {
        catch_up_env(m, &self.target, tables, &self.sink_args(), env)
    }

    pub(crate) fn assert_equal(&self, m: &Maria, table: &str) {
        let (equal, text) = compare(m, &self.target, table, &self.reader());
        assert!(
            equal,
            "{:?}: replica of {table} differs from the source:\n{text}",
            self.kind
        );
    }

    /// `binlake status` lists no stopped table.
    pub(crate) fn assert_nothing_stopped(&self) {
        let mut args = vec!["status", "--target", &self.target];
        args.extend(self.sink_args());
        let out = binlake(&args, Duration::from_secs(60));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !text.contains("STOPPED"),
            "{:?}: a table is stopped:\n{text}",
            self.kind
        );
    }

    /// The sink itself, as the pipeline builds it (for the cases that speak the sink API).
    fn sink(&self, pipeline: &str) -> Box<dyn Sink> {
        match self.kind {
            Kind::Parquet => Box::new(
                binlake_sink_parquet::ParquetSink::new(binlake_sink_parquet::ParquetConfig::new(
                    &self.target,
                    pipeline,
                ))
                .expect("parquet sink"),
            ),
            #[cfg(feature = "delta")]
            Kind::Delta => Box::new(
                binlake_sink_delta::DeltaSink::new(binlake_sink_delta::DeltaConfig::new(
                    &self.target,
                    pipeline,
                ))
                .expect("delta sink"),
            ),
            #[cfg(feature = "clickhouse")]
            Kind::ClickHouse => {
                let mut cfg =
                    binlake_sink_clickhouse::ClickHouseConfig::new(&self.target, pipeline)
                        .expect("clickhouse config");
                cfg.database_prefix = self.ch.as_ref().expect("started").prefix.clone();
                Box::new(binlake_sink_clickhouse::ClickHouseSink::new(cfg).expect("clickhouse"))
            }
        }
    }
}

fn type_zoo(kind: Kind) {
    let dir = TestDir::new("cf_zoo");
    let t = Target::new(kind, &dir, "cfzoo");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql(ZOO_DDL);
    m.sql(ZOO_ROWS);
    t.catch_up(&m, "zoo.*", &[]);
    t.assert_equal(&m, "zoo.t");
}

/// `n` rows `(id, v)` versioned `version`, with the metadata columns (one tombstone: id 0).
fn batch(version: u64, n: i64) -> RecordBatch {
    let mut fields = vec![
        Field::new("id", DataType::Int64, false),
        Field::new("v", DataType::Utf8, true),
    ];
    fields.extend(binlake_sink::metadata_fields());
    let rows = n as usize;
    let ts = |us: i64| -> ArrayRef {
        Arc::new(arrow_array::TimestampMicrosecondArray::from(vec![us; rows]).with_timezone("UTC"))
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from((0..n).collect::<Vec<_>>())),
        Arc::new(StringArray::from(
            (0..n)
                .map(|i| Some(format!("v{i}@{version}")))
                .collect::<Vec<_>>(),
        )),
        Arc::new(UInt64Array::from(vec![version; rows])),
        Arc::new(BooleanArray::from(
            (0..n).map(|i| i == 0).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            (0..n)
                .map(|i| if i == 0 { "delete" } else { "insert" })
                .collect::<Vec<_>>(),
        )),
        ts(1_700_000_000_000_000),
        ts(1_700_000_001_000_000),
        Arc::new(StringArray::from(vec!["test"; rows])),
    ];
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).expect("batch")
}

/// The current state of a table read back: per key, the row with the highest version, unless it
/// is a tombstone; each row as `v|version`.
fn current(batches: &[RecordBatch]) -> BTreeMap<i64, String> {
    use arrow_array::cast::AsArray;
    let mut best: BTreeMap<i64, (u64, bool, String)> = BTreeMap::new();
    for b in batches {
        let col = |name: &str| {
            let c = b
                .column_by_name(name)
                .unwrap_or_else(|| panic!("no {name}"));
            arrow_cast::cast(c, &DataType::Utf8).expect("as text")
        };
        let (id, v, ver, del) = (
            col("id"),
            col("v"),
            col(binlake_sink::COL_VERSION),
            col(binlake_sink::COL_DELETED),
        );
        let text = |a: &ArrayRef, i: usize| a.as_string::<i32>().value(i).to_string();
        for i in 0..b.num_rows() {
            let version: u64 = text(&ver, i).parse().unwrap();
            let deleted = matches!(text(&del, i).as_str(), "true" | "1");
            let row = (version, deleted, format!("{}|{version}", text(&v, i)));
            let key: i64 = text(&id, i).parse().unwrap();
            if best.get(&key).is_none_or(|(v0, _, _)| *v0 < version) {
                best.insert(key, row);
            }
        }
    }
    best.into_iter()
        .filter(|(_, (_, deleted, _))| !deleted)
        .map(|(k, (_, _, row))| (k, row))
        .collect()
}

fn replay_of_a_committed_batch(kind: Kind) {
    let dir = TestDir::new("cf_replay");
    let t = Target::new(kind, &dir, "cfreplay");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut sink = t.sink("conformance");
        assert!(sink.open().await.expect("open").is_none(), "a fresh target");
        let table = TableId::new("cf", "t");
        let commit = |version: u64, rows: i64| {
            let mut checkpoint = Checkpoint {
                pipeline: "conformance".into(),
                ..Default::default()
            };
            checkpoint.tables.insert(table.clone(), version);
            Commit {
                batches: vec![TableBatch {
                    table: table.clone(),
                    batch: batch(version, rows),
                    primary_key: vec!["id".into()],
                    min_version: version,
                    max_version: version,
                    stream_max_version: version,
                    insert_only: false,
                    replace: false,
                    snapshot_rows: false,
                    purge_below: None,
                    reshape: false,
                    generation: None,
                }],
                checkpoint,
                ..Default::default()
            }
        };
        let want: BTreeMap<i64, String> = (1..50).map(|i| (i, format!("v{i}@7|7"))).collect();
        sink.commit(commit(7, 50)).await.expect("first commit");
        let once = current(&sink.read_table(&table).await.expect("read"));
        assert_eq!(once, want, "{kind:?}: after one commit");
        // the same batch again (a restart from before its checkpoint), then an older one (a
        // replay of what came before): neither changes what a reader sees
        sink.commit(commit(7, 50)).await.expect("replayed commit");
        sink.commit(commit(3, 50)).await.expect("older commit");
        let twice = current(&sink.read_table(&table).await.expect("read"));
        assert_eq!(twice, want, "{kind:?}: a replayed batch changed the table");
        let cp = sink
            .read_checkpoint()
            .await
            .expect("checkpoint")
            .expect("some");
        assert_eq!(cp.pipeline, "conformance");
        assert!(cp.seq >= 3, "{kind:?}: seq {}", cp.seq);
        // and another instance (`binlake status`) reads the same checkpoint back
        let mut reader = t.sink("conformance");
        let seen = reader
            .read_checkpoint()
            .await
            .expect("read back")
            .expect("a checkpoint");
        assert_eq!(seen, cp, "{kind:?}");
    });
}

fn ddl(kind: Kind) {
    let dir = TestDir::new("cf_ddl");
    let t = Target::new(kind, &dir, "cfddl");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql("CREATE DATABASE cf; CREATE TABLE cf.t (id INT PRIMARY KEY, a VARCHAR(20), b INT); INSERT INTO cf.t VALUES (1, 'one', 10), (2, 'two', 20);");
    t.catch_up(&m, "cf.*", &[]);
    t.assert_equal(&m, "cf.t");
    m.sql("TRUNCATE TABLE cf.t; INSERT INTO cf.t VALUES (3, 'three', 30);");
    t.catch_up(&m, "cf.*", &[]);
    t.assert_equal(&m, "cf.t");
    m.sql("ALTER TABLE cf.t DROP COLUMN b; INSERT INTO cf.t VALUES (4, 'four'); UPDATE cf.t SET a = 'THREE' WHERE id = 3;");
    t.catch_up(&m, "cf.*", &[]);
    t.assert_equal(&m, "cf.t");
    t.assert_nothing_stopped();
}

fn crash_after_data(kind: Kind) {
    let dir = TestDir::new("cf_crash");
    let t = Target::new(kind, &dir, "cfcrash");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql("CREATE DATABASE cf; CREATE TABLE cf.t (id INT PRIMARY KEY, v INT); CREATE TABLE cf.log (n INT);");
    m.sql("INSERT INTO cf.t VALUES (1, 1), (2, 2), (3, 3); INSERT INTO cf.log VALUES (1), (2);");
    t.catch_up(&m, "cf.*", &[]);
    m.sql("UPDATE cf.t SET v = v * 10; DELETE FROM cf.t WHERE id = 1; INSERT INTO cf.t VALUES (4, 4); INSERT INTO cf.log VALUES (3), (4), (5);");
    // A column added in the window: the rows before it are committed first, so the crash
    // lands in the commit that alters the target, and the replay brings only rows of the new
    // shape (a replay of older rows into the altered table stopped it in ClickHouse).
    m.sql("ALTER TABLE cf.t ADD COLUMN w INT; UPDATE cf.t SET w = id * 100; INSERT INTO cf.t VALUES (5, 5, 500); INSERT INTO cf.log VALUES (6);");
    let url = m.url();
    let mut args = replicate_args(&url, &t.target, "cf.*", &["--exit-when-caught-up"]);
    args.extend(t.sink_args());
    let out = binlake_env(
        &args,
        &[
            ("BINLAKE_FAILPOINT", "after-data"),
            ("BINLAKE_FAILPOINT_AT", "2"),
        ],
        Duration::from_secs(300),
    );
    assert!(
        !out.status.success() && stderr(&out).contains("failpoint after-data"),
        "{kind:?}: the failpoint did not fire:\n{}",
        stderr(&out)
    );
    t.catch_up(&m, "cf.*", &[]);
    t.assert_equal(&m, "cf.t");
    let src = m
        .sql("SELECT COUNT(*), SUM(n) FROM cf.log")
        .trim()
        .replace('\t', " ");
    assert_eq!(
        t.log(),
        src,
        "{kind:?}: the keyless changelog (rows, sum) differs"
    );
}

macro_rules! conformance {
    ($kind:expr, $zoo:ident, $replay:ident, $ddl:ident, $crash:ident) => {
        #[test]
        fn $zoo() {
            type_zoo($kind);
        }
        #[test]
        fn $replay() {
            replay_of_a_committed_batch($kind);
        }
        #[test]
        fn $ddl() {
            ddl($kind);
        }
        #[test]
        fn $crash() {
            crash_after_data($kind);
        }
    };
}

conformance!(
    Kind::Parquet,
    parquet_type_zoo,
    parquet_replay_of_a_committed_batch,
    parquet_ddl,
    parquet_crash_after_data
);
#[cfg(feature = "delta")]
conformance!(
    Kind::Delta,
    delta_type_zoo,
    delta_replay_of_a_committed_batch,
    delta_ddl,
    delta_crash_after_data
);
#[cfg(feature = "clickhouse")]
conformance!(
    Kind::ClickHouse,
    clickhouse_type_zoo,
    clickhouse_replay_of_a_committed_batch,
    clickhouse_ddl,
    clickhouse_crash_after_data
);
