//! The table lifecycle, in every sink: online schema change tools (a real
//! `pt-online-schema-change` under concurrent writes while binlake streams, killed with -9 right
//! after the cut-over; then a gh-ost cut-over by SQL), ADD COLUMN with a default on a table with
//! rows, RENAME TABLE into and out of the filter, TRUNCATE, DROP TABLE then CREATE with another
//! shape, a table created mid-stream (with rows, and empty), DROP DATABASE, and an ALTER while the table's snapshot holds a read open.
//! Each ends with the replica equal to the source, value by value, and no table stopped. A table
//! that stops (its user lost SELECT and it must be read again) is named by `status` and cleared by
//! `backfill --tables`.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::conformance::{Kind, Target};
use crate::harness::*;

/// A fresh source and target for one case.
fn setup(kind: Kind, name: &str) -> (TestDir, Target, Maria) {
    let dir = TestDir::new(name);
    let t = Target::new(kind, &dir, &name.replace('_', ""));
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    (dir, t, m)
}

/// `replicate` of `cf.*` into `t` from a snapshot (`--start-at snapshot`), then `extra`.
fn from_snapshot<'a>(url: &'a str, t: &'a Target, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "replicate",
        "--source",
        url,
        "--tables",
        "cf.*",
        "--target",
        &t.target,
        "--start-at",
        "snapshot",
    ];
    args.extend_from_slice(extra);
    args.extend(t.sink_args());
    args
}

fn online_schema_change(kind: Kind) {
    let (_dir, t, m) = setup(kind, "lc_osc");
    m.sql("CREATE DATABASE cf; CREATE TABLE cf.users (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(40) NOT NULL, n INT);");
    m.sql("INSERT INTO cf.users (name, n) SELECT CONCAT('u', seq), seq FROM cf.seq_1_to_2000;");
    let url = m.url();
    let mut args = replicate_args(&url, &t.target, "cf.*", &[]);
    args.extend(t.sink_args());
    let mut streaming = spawn_binlake(&args);
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(m.port, "cf.users", stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    // pt-online-schema-change: _users_new filled by chunks and triggers, then the swap
    let osc = Command::new("pt-online-schema-change")
        .args([
            "--alter",
            "ADD COLUMN theme VARCHAR(10) NOT NULL DEFAULT 'dark', DROP COLUMN n",
            "--execute",
            "--recursion-method=none",
            "--chunk-size=200",
            "--no-check-unique-key-change",
        ])
        .arg(format!("D=cf,t=users,h=127.0.0.1,P={},u=root", m.port))
        .output()
        .expect("run pt-online-schema-change (percona-toolkit; tests/scripts/install-deps.sh)");
    assert!(
        osc.status.success(),
        "pt-online-schema-change failed:\n{}\n{}",
        String::from_utf8_lossy(&osc.stdout),
        String::from_utf8_lossy(&osc.stderr)
    );
    // a crash right after the cut-over, while the table is read again
    streaming.kill().expect("kill -9");
    let _ = streaming.wait_with_output();
    let mut streaming = spawn_binlake(&args);
    std::thread::sleep(Duration::from_millis(1500));
    // gh-ost's cut-over, by SQL: a shadow table filled by row events, then the swap
    m.sql("CREATE TABLE cf._users_gho LIKE cf.users; ALTER TABLE cf._users_gho ADD COLUMN score INT NOT NULL DEFAULT 5, MODIFY name VARCHAR(80) NOT NULL;");
    m.sql("INSERT INTO cf._users_gho (id, name, theme) SELECT id, name, theme FROM cf.users;");
    m.sql("RENAME TABLE cf.users TO cf._users_del, cf._users_gho TO cf.users; DROP TABLE cf._users_del;");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let writes = w.join().expect("writer");
    assert!(writes > 10, "the writer ran {writes} statements");
    streaming.kill().expect("stop");
    let _ = streaming.wait_with_output();
    t.catch_up(&m, "cf.*", &[]);
    t.assert_equal(&m, "cf.users");
    t.assert_nothing_stopped();
}

fn table_lifecycle(kind: Kind) {
    let (_dir, t, m) = setup(kind, "lc_ddl");
    m.sql("CREATE DATABASE cf; CREATE DATABASE other; CREATE TABLE cf.t (id INT PRIMARY KEY, a VARCHAR(20)); INSERT INTO cf.t VALUES (1, 'one'), (2, 'two'), (3, 'three');");
    m.sql("CREATE TABLE other.staging (id INT PRIMARY KEY, v INT); INSERT INTO other.staging VALUES (1, 10), (2, 20);");
    t.catch_up(&m, "cf.*", &[]);
    t.assert_equal(&m, "cf.t");
    // existing rows get the default at the source without a row event
    m.sql("ALTER TABLE cf.t ADD COLUMN theme VARCHAR(10) NOT NULL DEFAULT 'dark'; INSERT INTO cf.t VALUES (4, 'four', 'light');");
    // an implicit TIMESTAMP default (explicit_defaults_for_timestamp off, as in MySQL 5.7)
    m.sql("SET SESSION explicit_defaults_for_timestamp = 0; ALTER TABLE cf.t ADD COLUMN changed TIMESTAMP;");
    t.catch_up(&m, "cf.*", &[]);
    t.assert_equal(&m, "cf.t");
    // a table renamed into the filter, then changed
    m.sql("RENAME TABLE other.staging TO cf.moved; UPDATE cf.moved SET v = v + 1 WHERE id = 2; INSERT INTO cf.moved VALUES (3, 30);");
    // TRUNCATE, then new rows
    m.sql("TRUNCATE TABLE cf.t; INSERT INTO cf.t (id, a, theme) VALUES (5, 'five', 'dark');");
    t.catch_up(&m, "cf.*", &[]);
    t.assert_equal(&m, "cf.moved");
    t.assert_equal(&m, "cf.t");
    // DROP TABLE, then CREATE with another shape; a table created mid-stream
    m.sql("DROP TABLE cf.t; CREATE TABLE cf.t (id BIGINT PRIMARY KEY, label TEXT, at DATE); INSERT INTO cf.t VALUES (7, 'seven', '2024-01-02'), (8, 'eight', NULL);");
    m.sql("CREATE TABLE cf.fresh (k VARCHAR(10) PRIMARY KEY, n INT); INSERT INTO cf.fresh VALUES ('a', 1), ('b', 2); DELETE FROM cf.fresh WHERE k = 'a';");
    // renamed out of the filter: the name is dropped (an empty table of that name at the
    // source then equals the replica only if the old rows are gone)
    m.sql("RENAME TABLE cf.moved TO other.archived; CREATE TABLE cf.moved (id INT PRIMARY KEY, v INT);");
    t.catch_up(&m, "cf.*", &[]);
    t.assert_equal(&m, "cf.t");
    t.assert_equal(&m, "cf.fresh");
    t.assert_equal(&m, "cf.moved");
    // DROP DATABASE takes its tables with it: the rows of a table created again under the
    // same name (rows follow, so nothing is read again) are the new ones only
    m.sql("CREATE DATABASE gone; CREATE TABLE gone.a (id INT PRIMARY KEY, v INT); INSERT INTO gone.a VALUES (1, 1), (2, 2);");
    t.catch_up(&m, "cf.*,gone.*", &[]);
    t.assert_equal(&m, "gone.a");
    m.sql("DROP DATABASE gone; CREATE DATABASE gone; CREATE TABLE gone.a (id INT PRIMARY KEY, v INT); INSERT INTO gone.a VALUES (3, 3);");
    // a table created mid-stream that gets no rows exists in the target, empty
    m.sql("CREATE TABLE cf.blank (id INT PRIMARY KEY, note TEXT);");
    let out = t.catch_up(&m, "cf.*,gone.*", &[]);
    t.assert_equal(&m, "gone.a");
    let mut reader = t.reader();
    if kind == Kind::Parquet {
        reader = vec!["--reader", "duckdb"]; // fails on a table without files
    }
    let (equal, text) = compare(&m, &t.target, "cf.blank", &reader);
    assert!(equal, "{kind:?}: cf.blank: {text}\n{}", stderr(&out));
    t.assert_nothing_stopped();
}

/// An ALTER that gives existing rows a value lands while a chunk of the table's initial snapshot
/// holds its consistent read open (the `snapshot-race` failpoint): the snapshot starts again in
/// the new shape, and the replica ends equal, nothing stopped.
fn ddl_during_a_snapshot(kind: Kind) {
    let (dir, t, m) = setup(kind, "lc_snap");
    m.sql("CREATE DATABASE cf; CREATE TABLE cf.big (id INT PRIMARY KEY, v INT NOT NULL);");
    m.sql("INSERT INTO cf.big SELECT seq, seq FROM cf.seq_1_to_5000;");
    let gate = dir.path("gate");
    let url = m.url();
    let args = from_snapshot(&url, &t, &[]);
    let r = spawn_binlake_env(
        &args,
        &[
            ("BINLAKE_FAILPOINT", "snapshot-race"),
            ("BINLAKE_FAILPOINT_FILE", &gate),
        ],
    );
    wait_for_failpoint(&gate);
    m.sql("ALTER TABLE cf.big ADD COLUMN theme VARCHAR(10) NOT NULL DEFAULT 'dark'; UPDATE cf.big SET v = -v, theme = 'light' WHERE id <= 10; DELETE FROM cf.big WHERE id BETWEEN 11 AND 20;");
    std::fs::write(&gate, "").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let out = terminate(r, Duration::from_secs(60));
    let log = stderr(&out);
    assert!(log.contains("failpoint snapshot-race"), "{log}");
    t.catch_up(&m, "cf.*", &[]);
    t.assert_equal(&m, "cf.big");
    t.assert_nothing_stopped();
}

/// Every table the initial snapshot covers exists in the target, an empty one too: the
/// documented reader (DuckDB's current-state query for Parquet, the Delta table, the ClickHouse
/// view) finds it and sees it empty.
fn empty_tables_exist(kind: Kind) {
    let (_dir, t, m) = setup(kind, "lc_empty");
    m.sql("CREATE DATABASE cf; CREATE TABLE cf.empty (id INT PRIMARY KEY, v VARCHAR(10)); CREATE TABLE cf.full (id INT PRIMARY KEY); INSERT INTO cf.full VALUES (1);");
    let url = m.url();
    let args = from_snapshot(&url, &t, &["--exit-when-caught-up"]);
    let out = binlake(&args, Duration::from_secs(120));
    assert!(out.status.success(), "{}", stderr(&out));
    let mut reader = t.reader();
    if kind == Kind::Parquet {
        reader = vec!["--reader", "duckdb"];
    }
    for table in ["cf.empty", "cf.full"] {
        let (equal, text) = compare(&m, &t.target, table, &reader);
        assert!(equal, "{kind:?}: {table}: {text}");
    }
}

/// The binlog the checkpoint needs is purged while binlake is stopped, after updates, deletes
/// and inserts it never saw: `on_position_lost = "fail"` stops with the recovery command, and the
/// default (`resnapshot`) streams from the current position and reads every table again, so the
/// replica ends equal (deleted keys gone, the keyless table replaced, not doubled: a Parquet
/// changelog gets delete rows for what it held).
fn lost_position_is_recovered(kind: Kind) {
    let (_dir, t, m) = setup(kind, "lc_lost");
    m.sql("CREATE DATABASE cf; CREATE TABLE cf.t (id INT PRIMARY KEY, v INT); CREATE TABLE cf.log (n INT);");
    m.sql("INSERT INTO cf.t SELECT seq, seq FROM cf.seq_1_to_300; INSERT INTO cf.log VALUES (1), (2);");
    t.catch_up(&m, "cf.*", &[]);
    t.assert_equal(&m, "cf.t");
    // unseen by binlake, and then purged from the binlog
    m.sql("UPDATE cf.t SET v = -v WHERE id <= 50; DELETE FROM cf.t WHERE id BETWEEN 100 AND 149; INSERT INTO cf.t VALUES (1000, 1000); INSERT INTO cf.log VALUES (3);");
    m.sql("FLUSH BINARY LOGS;");
    let status = m.sql("SHOW MASTER STATUS");
    let file = status
        .split('\t')
        .next()
        .expect("binlog file")
        .trim()
        .to_string();
    // a dump thread of the last run may still hold a file for a moment: purge until it is gone
    let start = std::time::Instant::now();
    loop {
        m.sql(&format!("PURGE BINARY LOGS TO '{file}';"));
        let first = m.sql("SHOW BINARY LOGS");
        if first.split('\t').next().map(str::trim) == Some(file.as_str()) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the binlog was not purged: {first}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    m.sql("UPDATE cf.t SET v = 7 WHERE id = 200; INSERT INTO cf.log VALUES (4);");
    let url = m.url();
    let mut args = replicate_args(
        &url,
        &t.target,
        "cf.*",
        &["--exit-when-caught-up", "--on-position-lost", "fail"],
    );
    args.extend(t.sink_args());
    let out = binlake(&args, Duration::from_secs(120));
    assert!(
        !out.status.success() && stderr(&out).contains("--on-position-lost resnapshot"),
        "{kind:?}: on_position_lost = fail must stop with the recovery command:\n{}",
        stderr(&out)
    );
    t.catch_up(&m, "cf.*", &[]);
    t.assert_equal(&m, "cf.t");
    let src = m
        .sql("SELECT COUNT(*), SUM(n) FROM cf.log")
        .trim()
        .replace('\t', " ");
    assert_eq!(t.log(), src, "{kind:?}: the keyless table (rows, sum)");
    t.assert_nothing_stopped();
}

/// A table stops only for what no automatic action can fix, and `binlake backfill` clears it:
/// here binlake's user loses SELECT on one table and an ALTER needs that table read again. The
/// table stops (`status` names it and why; the other table goes on), the grant comes back, and
/// `backfill --tables` reads it again whole: it resumes and ends equal, nothing stopped.
#[test]
fn a_stopped_table_is_cleared_by_backfill() {
    let (_dir, t, m) = setup(Kind::Parquet, "lc_stopped");
    m.sql("CREATE DATABASE cf; CREATE TABLE cf.a (id INT PRIMARY KEY, v INT); CREATE TABLE cf.b (id INT PRIMARY KEY, v INT);");
    m.sql("INSERT INTO cf.a SELECT seq, seq FROM cf.seq_1_to_100; INSERT INTO cf.b SELECT seq, seq FROM cf.seq_1_to_100;");
    m.sql("CREATE USER 'narrow'@'%' IDENTIFIED BY 'narrow'; GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'narrow'@'%'; GRANT SELECT ON cf.a TO 'narrow'@'%'; GRANT SELECT ON cf.b TO 'narrow'@'%';");
    let url = format!("mysql://narrow:narrow@127.0.0.1:{}", m.port);
    let control = format!("127.0.0.1:{}", crate::observe::free_port());
    let mut args = replicate_args(
        &url,
        &t.target,
        "cf.*",
        &["--control-addr", &control, "--max-latency", "100ms"],
    );
    args.extend(t.sink_args());
    let r = spawn_binlake(&args);
    crate::snapshot::wait_equal(&m, &t.target, "cf.b", &t.reader(), Duration::from_secs(60));
    m.sql("REVOKE SELECT ON cf.b FROM 'narrow'@'%'; ALTER TABLE cf.b ADD COLUMN w INT NOT NULL DEFAULT 7; UPDATE cf.b SET v = -v WHERE id <= 5;");
    m.sql("INSERT INTO cf.a VALUES (101, 101);");
    crate::snapshot::wait_equal(&m, &t.target, "cf.a", &t.reader(), Duration::from_secs(60));
    let start = std::time::Instant::now();
    let status = loop {
        let out = binlake(&["status", "--target", &t.target], Duration::from_secs(60));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("STOPPED") || start.elapsed() > Duration::from_secs(60) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    if !(status.contains("STOPPED") && status.contains("cf.b")) {
        let out = terminate(r, Duration::from_secs(60));
        panic!("cf.b was not reported stopped:\n{status}\n{}", stderr(&out));
    }
    assert!(
        status.contains("backfill"),
        "status does not say how to clear it:\n{status}"
    );
    m.sql("GRANT SELECT ON cf.b TO 'narrow'@'%'; UPDATE cf.b SET v = 1000 WHERE id = 50; DELETE FROM cf.b WHERE id = 60;");
    let out = binlake(
        &["backfill", "--control", &control, "--tables", "cf.b"],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    crate::snapshot::wait_equal(&m, &t.target, "cf.b", &t.reader(), Duration::from_secs(60));
    m.sql("UPDATE cf.b SET w = 8 WHERE id = 1; INSERT INTO cf.a VALUES (102, 102);");
    crate::snapshot::wait_equal(&m, &t.target, "cf.b", &t.reader(), Duration::from_secs(60));
    crate::snapshot::wait_equal(&m, &t.target, "cf.a", &t.reader(), Duration::from_secs(60));
    let out = terminate(r, Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    t.assert_nothing_stopped();
}

macro_rules! lifecycle {
    ($kind:expr, $osc:ident, $ddl:ident, $snap:ident, $empty:ident, $lost:ident) => {
        #[test]
        fn $lost() {
            lost_position_is_recovered($kind);
        }
        #[test]
        fn $empty() {
            empty_tables_exist($kind);
        }
        #[test]
        fn $snap() {
            ddl_during_a_snapshot($kind);
        }
        #[test]
        fn $osc() {
            online_schema_change($kind);
        }
        #[test]
        fn $ddl() {
            table_lifecycle($kind);
        }
    };
}

lifecycle!(
    Kind::Parquet,
    parquet_online_schema_change,
    parquet_table_lifecycle,
    parquet_ddl_during_a_snapshot,
    parquet_empty_tables_exist,
    parquet_lost_position_is_recovered
);
#[cfg(feature = "delta")]
lifecycle!(
    Kind::Delta,
    delta_online_schema_change,
    delta_table_lifecycle,
    delta_ddl_during_a_snapshot,
    delta_empty_tables_exist,
    delta_lost_position_is_recovered
);
#[cfg(feature = "clickhouse")]
lifecycle!(
    Kind::ClickHouse,
    clickhouse_online_schema_change,
    clickhouse_table_lifecycle,
    clickhouse_ddl_during_a_snapshot,
    clickhouse_empty_tables_exist,
    clickhouse_lost_position_is_recovered
);
