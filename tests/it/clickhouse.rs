//! The ClickHouse sink against real MariaDB and a real ClickHouse engine (chdb behind
//! `tests/scripts/chdb_server.py`, or the server `CLICKHOUSE_URL` names), read back through the
//! `<table>_current` views by `tests/scripts/compare.py --reader clickhouse`.

use std::time::{Duration, Instant};

use crate::harness::*;
use crate::replicate::{ZOO_DDL, ZOO_ROWS};

fn ch_catch_up(m: &Maria, ch: &ClickHouse, tables: &str) {
    let mut extra = ch.args()[4..].to_vec(); // --target is given: keep the prefix
    extra.extend_from_slice(&["--sink", "clickhouse"]);
    catch_up(m, &ch.url, tables, &extra);
}

fn ch_equal(m: &Maria, ch: &ClickHouse, table: &str, timeout: Duration) -> (bool, String) {
    let start = Instant::now();
    loop {
        let (equal, text) = compare(m, &ch.url, table, &ch.reader());
        if equal || start.elapsed() > timeout {
            return (equal, text);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn spawn_ch(m: &Maria, ch: &ClickHouse, tables: &str, more: &[&str]) -> Running {
    let mut extra = ch.args()[4..].to_vec();
    extra.extend_from_slice(&["--sink", "clickhouse", "--max-latency", "200ms"]);
    extra.extend_from_slice(more);
    spawn_replicate(m, &ch.url, tables, &extra)
}

#[test]
fn clickhouse_type_zoo_replicates_exactly() {
    let dir = TestDir::new("chzoo");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    let ch = ClickHouse::start(&dir.0.join("ch"), "zoo");
    m.sql(ZOO_DDL);
    m.sql(ZOO_ROWS);
    ch_catch_up(&m, &ch, "zoo.*");
    let (equal, report) = compare(&m, &ch.url, "zoo.t", &ch.reader());
    assert!(equal, "{report}");
    // the engine and the view the issue promises
    let engine = ch.q(&format!(
        "SELECT engine_full FROM system.tables WHERE database = '{}zoo' AND name = 't'",
        ch.prefix
    ));
    assert!(
        engine.starts_with("ReplacingMergeTree(_binlake_version, _binlake_deleted)"),
        "{engine}"
    );
}

/// Dates ClickHouse cannot hold follow `invalid_values = "dead_letter"`: the row goes to the
/// dead-letter table, exactly once even when binlake crashes after writing it and before its
/// checkpoint (the replay brings it again).
#[test]
fn clickhouse_out_of_range_dates_dead_letter_once() {
    let dir = TestDir::new("chdl");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    let ch = ClickHouse::start(&dir.0.join("ch"), "dl");
    m.sql("CREATE DATABASE dl; CREATE TABLE dl.t (id INT PRIMARY KEY, d DATE, ts DATETIME(6)); \
        INSERT INTO dl.t VALUES (1, '2020-01-01', '2020-01-01 10:00:00'), (2, '1850-06-01', '2020-01-01 10:00:00'), (3, '2020-01-01', '2400-01-01 00:00:00'), (4, '1900-01-01', '2299-12-31 23:59:59.999999');");
    let url = m.url();
    let mut args = replicate_args(&url, &ch.url, "dl.*", &["--exit-when-caught-up"]);
    args.extend(ch.args()[4..].iter().copied());
    args.extend_from_slice(&["--sink", "clickhouse", "--invalid-values", "dead_letter"]);
    let crashed = binlake_env(
        &args,
        &[("BINLAKE_FAILPOINT", "after-data")],
        Duration::from_secs(120),
    );
    assert!(
        stderr(&crashed).contains("failpoint after-data"),
        "{}",
        stderr(&crashed)
    );
    let out = binlake(&args, Duration::from_secs(120));
    assert!(out.status.success(), "{}", stderr(&out));
    let rejects = ch.q(&format!(
        "SELECT groupArray(reason) FROM (SELECT reason FROM {}binlake._binlake_rejects ORDER BY reason)",
        ch.prefix
    ));
    assert!(
        rejects.contains("1850-06-01") && rejects.contains("2400-01-01"),
        "{rejects}"
    );
    assert_eq!(
        ch.q(&format!(
            "SELECT count() FROM {}binlake._binlake_rejects",
            ch.prefix
        )),
        "2",
        "each rejected row once"
    );
    // the rows ClickHouse can hold, the edges of its range included
    assert_eq!(
        ch.q(&format!(
            "SELECT groupArray(toString(id) || ' ' || toString(d) || ' ' || toString(ts)) FROM (SELECT * FROM {}dl.t_current ORDER BY id)",
            ch.prefix
        )),
        "['1 2020-01-01 2020-01-01 10:00:00.000000','4 1900-01-01 2299-12-31 23:59:59.999999']"
    );
}

/// Inserts, updates and deletes of the same keys in one transaction and across transactions,
/// a keyless table, then column changes mid-stream (ADD, DROP, RENAME, widening MODIFY, and
/// INT to VARCHAR, which reads that table again in its new shape), TRUNCATE, and a table that
/// stays untouched.
#[test]
fn clickhouse_changes_and_schema_changes_mid_stream() {
    let dir = TestDir::new("chmix");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    let ch = ClickHouse::start(&dir.0.join("ch"), "mix");
    m.sql("CREATE DATABASE q; \
        CREATE TABLE q.c (id INT PRIMARY KEY, a INT, gone VARCHAR(5), n INT, s VARCHAR(10), d DECIMAL(10,2), old_name INT); \
        CREATE TABLE q.bad (id INT PRIMARY KEY, x INT); \
        CREATE TABLE q.keep (id INT PRIMARY KEY, v INT); \
        CREATE TABLE q.tr (id INT PRIMARY KEY, v INT); \
        CREATE TABLE q.log (v INT); \
        CREATE TABLE q.dropped (id INT PRIMARY KEY); INSERT INTO q.dropped VALUES (1), (2); \
        INSERT INTO q.c VALUES (1, 1, 'g1', 2147483647, 'short', 12345678.99, 10), (2, 2, 'g2', -5, 'b', -0.01, 20); \
        INSERT INTO q.bad VALUES (1, 1); INSERT INTO q.keep VALUES (1, 1); INSERT INTO q.tr VALUES (1, 1), (2, 2); \
        BEGIN; INSERT INTO q.keep VALUES (5, 5); UPDATE q.keep SET v = 6 WHERE id = 5; DELETE FROM q.keep WHERE id = 5; INSERT INTO q.keep VALUES (5, 7); COMMIT; \
        INSERT INTO q.log VALUES (1), (1);");
    // with scheduled maintenance (OPTIMIZE ... FINAL CLEANUP) running beside the stream
    let child = spawn_ch(
        &m,
        &ch,
        "q.*",
        // LZ4 inserts (the default picks none for a loopback server)
        &[
            "--maintain-every",
            "1s",
            "--tombstone-retention",
            "0s",
            "--compression",
            "lz4",
        ],
    );
    let (equal, last) = ch_equal(&m, &ch, "q.c", Duration::from_secs(60));
    assert!(equal, "{last}");
    m.sql("ALTER TABLE q.c ADD COLUMN added INT AFTER a; UPDATE q.c SET added = 5 WHERE id = 1;");
    m.sql("ALTER TABLE q.c DROP COLUMN gone; UPDATE q.c SET a = 11 WHERE id = 1; INSERT INTO q.c (id, a, n, s, d, old_name) VALUES (3, 3, 3, 'c', 3.5, 30);");
    m.sql("ALTER TABLE q.c RENAME COLUMN old_name TO new_name; UPDATE q.c SET new_name = 21 WHERE id = 2;");
    m.sql("ALTER TABLE q.c MODIFY n BIGINT, MODIFY s VARCHAR(200), MODIFY d DECIMAL(20,4); \
        INSERT INTO q.c (id, a, n, s, d, new_name) VALUES (4, 4, 5000000000, REPEAT('x', 150), 1234567890123456.1234, 40); \
        UPDATE q.c SET d = d + 0.0001 WHERE id = 3; DELETE FROM q.c WHERE id = 2;");
    m.sql("ALTER TABLE q.bad MODIFY x VARCHAR(20); INSERT INTO q.bad VALUES (2, 'two');");
    m.sql("TRUNCATE TABLE q.tr; INSERT INTO q.tr VALUES (2, 20), (3, 30);");
    m.sql("UPDATE q.keep SET v = 20 WHERE id = 1; INSERT INTO q.keep VALUES (3, 3); DELETE FROM q.keep WHERE id = 5; INSERT INTO q.log VALUES (2);");
    std::thread::sleep(Duration::from_millis(1500));
    m.sql("DROP TABLE q.dropped; UPDATE q.keep SET v = 21 WHERE id = 1;");
    for t in ["q.c", "q.keep", "q.tr", "q.bad"] {
        let (equal, last) = ch_equal(&m, &ch, t, Duration::from_secs(60));
        assert!(equal, "{t}: {last}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let out = terminate(child, Duration::from_secs(30));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("q.bad") && err.contains("changed type"),
        "{err}"
    );
    // read again in the new shape: the column is a string now, and nothing stopped
    let bad = ch.q(&format!(
        "SELECT groupArray(toTypeName(x) || ' ' || toString(id) || ':' || x) FROM (SELECT * FROM {}q.bad_current ORDER BY id)",
        ch.prefix
    ));
    assert_eq!(bad, "['Nullable(String) 1:1','Nullable(String) 2:two']");
    assert!(!err.contains("table stopped"), "{err}");
    // keyless: a changelog, every change a row
    let log = ch.q(&format!(
        "SELECT count(), sum(v) FROM {}q.log_current",
        ch.prefix
    ));
    assert_eq!(log, "3\t4");
}

/// `[[layout]]`: a table created with the configured ORDER BY, PARTITION BY, SETTINGS and a
/// LowCardinality column replicates exactly through updates, deletes and key changes that move
/// rows between partitions; a layout whose ORDER BY reads a column an UPDATE can change stops
/// that table only, with an error naming the key.
#[test]
fn clickhouse_table_layouts() {
    let dir = TestDir::new("chlayout");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    let ch = ClickHouse::start(&dir.0.join("ch"), "layout");
    m.sql(
        "CREATE DATABASE lo; \
         CREATE TABLE lo.o (id INT, tenant INT, status VARCHAR(20), note TEXT, PRIMARY KEY (id, tenant)); \
         CREATE TABLE lo.bad (id INT PRIMARY KEY, status VARCHAR(20)); \
         INSERT INTO lo.o SELECT seq, seq % 5, ELT(1 + seq % 3, 'new', 'paid', NULL), CONCAT('n', seq) FROM lo.seq_1_to_2000; \
         INSERT INTO lo.bad VALUES (1, 'a'), (2, 'b'); \
         CREATE TABLE lo.pre (id INT PRIMARY KEY, v VARCHAR(10)); \
         CREATE TABLE lo.plain (id INT PRIMARY KEY, v VARCHAR(10)); \
         INSERT INTO lo.pre VALUES (1, 'a'), (2, 'b'); INSERT INTO lo.plain VALUES (1, 'a'); \
         CREATE TABLE lo.pk (id INT PRIMARY KEY, tenant INT NOT NULL, v VARCHAR(10)); \
         INSERT INTO lo.pk VALUES (1, 1, 'a'), (2, 1, 'b');",
    );
    // tables made before binlake runs: one that can hold the replica (binlake adds the
    // columns it lacks), and one whose engine would keep every version of a row
    let db = format!("{}lo", ch.prefix);
    ch.q(&format!("CREATE DATABASE IF NOT EXISTS {db}"));
    ch.q(&format!("CREATE TABLE {db}.pre (id Int32, _binlake_version UInt64, _binlake_deleted UInt8) ENGINE = ReplacingMergeTree(_binlake_version, _binlake_deleted) ORDER BY id"));
    ch.q(&format!(
        "CREATE TABLE {db}.plain (id Int32) ENGINE = MergeTree ORDER BY id"
    ));
    let cfg = dir.path("binlake.toml");
    std::fs::write(
        &cfg,
        "[[layout]]\ntables = \"lo.o\"\norder_by = \"(tenant, id)\"\npartition_by = \"tenant % 2\"\n\
         settings = \"index_granularity = 256\"\ncolumn_types = { status = \"LowCardinality(Nullable(String))\" }\n\
         [[layout]]\ntables = \"lo.bad\"\norder_by = \"(status, id)\"\n",
    )
    .unwrap();
    let url = m.url();
    let mut args = replicate_args(
        &url,
        &ch.url,
        "lo.*",
        &["--exit-when-caught-up", "--config", &cfg],
    );
    args.extend(ch.args()[4..].iter().copied());
    args.extend_from_slice(&["--sink", "clickhouse"]);
    let out = binlake(&args, Duration::from_secs(120));
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("lo.bad") && err.contains("order_by") && err.contains("`status`"),
        "the bad layout is not named:\n{err}"
    );
    assert!(
        err.contains("lo.plain") && err.contains("engine MergeTree"),
        "the existing table that cannot hold the replica is not named:\n{err}"
    );
    let (equal, report) = compare(&m, &ch.url, "lo.pre", &ch.reader());
    assert!(equal, "{report}");
    let status_type = || {
        ch.q(&format!(
            "SELECT type FROM system.columns WHERE database = '{db}' AND table = 'o' AND name = 'status'"
        ))
    };
    assert_eq!(status_type(), "LowCardinality(Nullable(String))");
    m.sql(
        "UPDATE lo.o SET status = 'paid', note = 'u' WHERE id % 7 = 0; \
         DELETE FROM lo.o WHERE id % 11 = 0; \
         UPDATE lo.o SET id = id + 10000 WHERE id % 13 = 0; \
         UPDATE lo.o SET tenant = tenant + 1 WHERE id % 17 = 0; \
         INSERT INTO lo.o VALUES (5000, 1, NULL, 'x'), (5001, 2, 'new', NULL); \
         ALTER TABLE lo.pk DROP PRIMARY KEY, ADD PRIMARY KEY (id, tenant); \
         UPDATE lo.o SET status = '' WHERE status IS NULL; \
         ALTER TABLE lo.o MODIFY status VARCHAR(20) NOT NULL DEFAULT ''; \
         UPDATE lo.o SET status = 'late' WHERE id % 19 = 0; \
         INSERT INTO lo.pk VALUES (1, 2, 'second');",
    );
    let out = binlake(&args, Duration::from_secs(120));
    assert!(out.status.success(), "{}", stderr(&out));
    let (equal, report) = compare(&m, &ch.url, "lo.o", &ch.reader());
    assert!(equal, "{report}");
    // the source's key grew: the table is created again with it (the old sorting key would
    // keep one of the two rows of id 1)
    let (equal, report) = compare(&m, &ch.url, "lo.pk", &ch.reader());
    assert!(equal, "{report}");
    let table = |name: &str, what: &str| {
        ch.q(&format!(
            "SELECT {what} FROM system.tables WHERE database = '{db}' AND name = '{name}'"
        ))
    };
    assert_eq!(table("pk", "sorting_key"), "id, tenant");
    assert_eq!(
        table("o", "sorting_key, partition_key"),
        "tenant, id\ttenant % 2"
    );
    let engine = table("o", "engine_full");
    assert!(engine.contains("index_granularity = 256"), "{engine}");
    // the column became NOT NULL at the source: the wider column that exists keeps its type
    // (the override no longer fits the new type, and every value still fits the column)
    assert_eq!(status_type(), "LowCardinality(Nullable(String))");
    // the stopped table was not created with the layout that would lose updates
    assert_eq!(table("bad", "count()"), "0");
    // the same key change while binlake runs (its columns unchanged)
    m.sql(
        "CREATE TABLE lo.pk2 (id INT PRIMARY KEY, tenant INT NOT NULL, v VARCHAR(10)); \
         INSERT INTO lo.pk2 VALUES (1, 1, 'a'), (2, 1, 'b');",
    );
    let run = spawn_ch(&m, &ch, "lo.pk2", &[]);
    let (equal, report) = ch_equal(&m, &ch, "lo.pk2", Duration::from_secs(60));
    assert!(equal, "{report}");
    m.sql(
        "ALTER TABLE lo.pk2 DROP PRIMARY KEY, ADD PRIMARY KEY (id, tenant); \
         INSERT INTO lo.pk2 VALUES (1, 2, 'second');",
    );
    let (equal, report) = ch_equal(&m, &ch, "lo.pk2", Duration::from_secs(60));
    assert!(equal, "{report}");
    assert_eq!(table("pk2", "sorting_key"), "id, tenant");
    let out = terminate(run, Duration::from_secs(30));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn clickhouse_kill_9_during_stream() {
    crate::crash::crash_test_on(
        &["--sink", "clickhouse"],
        10_000,
        crate::crash::Where::ClickHouse,
    );
}

/// The server goes away for 30 s during a workload: binlake retries with backoff, loses
/// nothing, and the `_current` view ends equal to the source once the server is back.
#[test]
fn clickhouse_server_down_30s_then_back() {
    let dir = TestDir::new("chdown");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    let ch = ClickHouse::start(&dir.0.join("ch"), "down");
    if std::env::var("CLICKHOUSE_URL").is_ok() {
        eprintln!("CLICKHOUSE_URL is set: the test cannot stop that server; skipped");
        return;
    }
    m.sql("CREATE DATABASE w; CREATE TABLE w.t (id INT PRIMARY KEY, v INT);");
    let child = spawn_ch(&m, &ch, "w.*", &[]);
    for i in 0..20 {
        m.sql(&format!("INSERT INTO w.t VALUES ({i}, {i})"));
    }
    let (equal, last) = ch_equal(&m, &ch, "w.t", Duration::from_secs(30));
    assert!(equal, "{last}");
    ch.stop();
    for i in 20..60 {
        m.sql(&format!(
            "INSERT INTO w.t VALUES ({i}, {i}); UPDATE w.t SET v = v + 1 WHERE id = {}; DELETE FROM w.t WHERE id = {};",
            i / 2,
            i / 3
        ));
        std::thread::sleep(Duration::from_millis(750));
    }
    ch.restart();
    let (equal, last) = ch_equal(&m, &ch, "w.t", Duration::from_secs(90));
    let out = terminate(child, Duration::from_secs(30));
    let err = stderr(&out);
    assert!(equal, "{last}\n{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("retrying"), "no retry logged:\n{err}");
}
