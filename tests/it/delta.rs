//! The Delta Lake sink against real MariaDB, read back with the Python `deltalake` reader
//! (an independent implementation) by `tests/scripts/compare.py --reader delta`.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;
use crate::replicate::{ZOO_DDL, ZOO_ROWS};

const DELTA: [&str; 2] = ["--sink", "delta"];

#[test]
fn delta_type_zoo_replicates_exactly() {
    let dir = TestDir::new("dzoo");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql(ZOO_DDL);
    m.sql(ZOO_ROWS);
    let target = dir.path("lake");
    catch_up(&m, &target, "zoo.*", &DELTA);
    assert_replica_equal(&m, &target, "zoo.t", &["--reader", "delta"]);
    // UNSIGNED and DECIMAL(65,30) are widened, not altered: check two values in Delta's types
    let t = delta_q(
        &format!("{target}/zoo/t"),
        "SELECT biu::VARCHAR || '|' || d65 FROM t WHERE id = 2",
    );
    assert_eq!(
        t,
        "18446744073709551615|99999999999999999999999999999999999.999999999999999999999999999999"
    );
}

/// The type zoo into a Delta target on S3 (moto).
#[test]
fn delta_type_zoo_on_s3() {
    let dir = TestDir::new("dzoos3");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    let moto = Moto::start(&dir.0.join("moto"), "lake");
    let env = moto.env();
    m.sql(ZOO_DDL);
    m.sql(ZOO_ROWS);
    catch_up_env(&m, "s3://lake/zoo", "zoo.*", &DELTA, &env);
    let (equal, report) = compare_env(&m, "s3://lake/zoo", "zoo.t", &["--reader", "delta"], &env);
    assert!(equal, "{report}");
}

/// Inserts, updates and deletes of the same keys inside one transaction and across
/// transactions; soft deletes keep tombstones, hard deletes remove rows; keyless tables append.
#[test]
fn delta_same_keys_soft_and_hard_deletes_and_keyless() {
    let dir = TestDir::new("dkeys");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql("CREATE DATABASE k; CREATE TABLE k.t (id INT PRIMARY KEY, v VARCHAR(20)); CREATE TABLE k.log (msg VARCHAR(20));");
    m.sql("BEGIN; INSERT INTO k.t VALUES (1,'a'),(2,'b'),(3,'c'); UPDATE k.t SET v='a2' WHERE id=1; DELETE FROM k.t WHERE id=2; INSERT INTO k.t VALUES (2,'b2'); COMMIT;");
    m.sql("INSERT INTO k.log VALUES ('x'),('x'); INSERT INTO k.log VALUES ('y');");
    let soft = dir.path("soft");
    let hard = dir.path("hard");
    catch_up(&m, &soft, "k.*", &DELTA);
    catch_up(&m, &hard, "k.*", &["--sink", "delta", "--deletes", "hard"]);
    for round in 0..2 {
        m.sql(&format!("UPDATE k.t SET v = CONCAT(v, '{round}') WHERE id = 1; DELETE FROM k.t WHERE id = 3; INSERT INTO k.t VALUES ({}, 'n'); UPDATE k.t SET id = 10{round} WHERE id = 2;", 20 + round));
        m.sql("INSERT INTO k.log VALUES ('z');");
        catch_up(&m, &soft, "k.*", &DELTA);
        catch_up(&m, &hard, "k.*", &["--sink", "delta", "--deletes", "hard"]);
        assert_replica_equal(&m, &soft, "k.t", &["--reader", "delta"]);
        assert_replica_equal(&m, &hard, "k.t", &["--reader", "delta"]);
    }
    // soft: the deleted keys are tombstones; hard: they are gone
    assert_eq!(
        delta_q(
            &format!("{soft}/k/t"),
            "SELECT count(*) FROM t WHERE _binlake_deleted"
        ),
        "2"
    );
    assert_eq!(
        delta_q(
            &format!("{hard}/k/t"),
            "SELECT count(*) FROM t WHERE _binlake_deleted"
        ),
        "0"
    );
    // keyless: every change a row, each once
    assert_eq!(
        delta_q(
            &format!("{soft}/k/log"),
            "SELECT string_agg(msg, '' ORDER BY _binlake_version, msg) FROM t"
        ),
        "xxyzz"
    );
}

/// Many small commits of updates, deletes, re-inserts and key changes spread over the table
/// (the upsert that rewrites only the files a batch touches, `sinks/delta/src/rewrite.rs`):
/// the replica equals the source after every commit, with soft and hard deletes and files
/// written before a column was added, and small files do not pile up.
#[test]
fn delta_small_commits_rewrite_few_files_exactly() {
    let dir = TestDir::new("dsmall");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql("CREATE DATABASE s; CREATE TABLE s.t (id INT PRIMARY KEY, grp INT, v VARCHAR(40));");
    m.sql("INSERT INTO s.t SELECT seq, seq % 7, CONCAT('v', seq) FROM s.seq_1_to_3000;");
    let soft = dir.path("soft");
    let hard = dir.path("hard");
    let hard_args = ["--sink", "delta", "--deletes", "hard"];
    catch_up(&m, &soft, "s.*", &DELTA);
    catch_up(&m, &hard, "s.*", &hard_args);
    m.sql("ALTER TABLE s.t ADD COLUMN extra INT;");
    for round in 0..30u32 {
        // keys spread over the whole range, a different few each round
        let a = 1 + (round * 997) % 3000;
        let b = 1 + (round * 1499 + 7) % 3000;
        m.sql(&format!(
            "BEGIN; UPDATE s.t SET v = CONCAT(v, '.{round}'), extra = {round} WHERE id IN ({a}, {b}, {a} + 1); \
             DELETE FROM s.t WHERE id = {b} + 2; \
             INSERT INTO s.t (id, grp, v) VALUES ({}, {round}, 'new'), (5000 + {round}, 0, 'mid') \
             ON DUPLICATE KEY UPDATE v = 'dup'; \
             UPDATE s.t SET id = id + 10000 WHERE id = {a} + 3; COMMIT;",
            (round * 331) % 3000 + 1
        ));
        m.sql(&format!(
            "INSERT IGNORE INTO s.t (id, grp, v) VALUES ({b} + 2, -1, 'back');"
        ));
        catch_up(&m, &soft, "s.*", &DELTA);
        catch_up(&m, &hard, "s.*", &hard_args);
        if round % 10 == 9 {
            assert_replica_equal(&m, &soft, "s.t", &["--reader", "delta"]);
            assert_replica_equal(&m, &hard, "s.t", &["--reader", "delta"]);
        }
    }
    // 30 commits that each touched keys across the table and added keys: the small files a
    // commit reads are rewritten with it instead of one more file per commit
    for t in [&soft, &hard] {
        let files = python_files(&format!("{t}/s/t"));
        assert!(files <= 3, "{t}: {files} data files after 30 small commits");
    }
}

/// `rewrite_budget`: after a commit that rewrote the whole table (an UPDATE of every row), the
/// next change waits until the rewritten bytes fit the budget (here about 15 s at 32 KiB/s)
/// instead of `max_latency` (1 s), then arrives, and the replica equals the source.
#[test]
fn delta_rewrite_budget_spaces_out_commits() {
    let dir = TestDir::new("dbudget");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql("CREATE DATABASE s; CREATE TABLE s.t (id INT PRIMARY KEY, v CHAR(32));");
    m.sql("INSERT INTO s.t SELECT seq, MD5(seq) FROM s.seq_1_to_20000;");
    let target = dir.path("lake");
    let run = spawn_replicate(
        &m,
        &target,
        "s.*",
        &["--sink", "delta", "--rewrite-budget", "32KiB"],
    );
    let (ok, report) = wait_equal_reader(&m, &target, "s.t", "delta", Duration::from_secs(120));
    assert!(ok, "inserts: {report}");
    // rewrites every file of the table: several hundred KB
    m.sql("UPDATE s.t SET v = MD5(CONCAT('x', id));");
    let (ok, report) = wait_equal_reader(&m, &target, "s.t", "delta", Duration::from_secs(120));
    assert!(ok, "update of every row: {report}");
    m.sql("UPDATE s.t SET v = 'probe' WHERE id = 7;");
    let start = std::time::Instant::now();
    let path = format!("{target}/s/t");
    while delta_q(&path, "SELECT v FROM t WHERE id = 7") != "probe" {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the change never arrived"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(5),
        "visible after {waited:?}: the rewrite budget did not space out the commit"
    );
    assert_replica_equal(&m, &target, "s.t", &["--reader", "delta"]);
    let out = terminate(run, Duration::from_secs(30));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("commits spaced out"),
        "the pause is not logged:\n{}",
        stderr(&out)
    );
}

/// A column added mid-stream (at the end and with AFTER) evolves the Delta schema.
#[test]
fn delta_add_column_mid_stream() {
    let dir = TestDir::new("dadd");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql("CREATE DATABASE a; CREATE TABLE a.t (id INT PRIMARY KEY, v INT); INSERT INTO a.t VALUES (1, 1), (2, 2);");
    let target = dir.path("lake");
    let child = spawn_replicate(
        &m,
        &target,
        "a.*",
        &["--sink", "delta", "--max-latency", "200ms"],
    );
    m.sql("ALTER TABLE a.t ADD COLUMN note VARCHAR(10); INSERT INTO a.t VALUES (3, 3, 'three'); UPDATE a.t SET note = 'one' WHERE id = 1;");
    m.sql("ALTER TABLE a.t ADD COLUMN early INT AFTER id; INSERT INTO a.t (id, early, v) VALUES (4, 44, 4); UPDATE a.t SET early = 11 WHERE id = 1;");
    let (equal, last) = wait_equal_reader(&m, &target, "a.t", "delta", Duration::from_secs(60));
    let out = terminate(child, Duration::from_secs(30));
    assert!(equal, "{last}\n{}", stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn delta_kill_9_during_stream() {
    crate::crash::crash_test(&DELTA, 20_000);
}

/// The same on S3 (moto): conditional puts for the Delta log and binlake's commit log, schema
/// changes rewritten through the object store.
#[test]
fn delta_kill_9_during_stream_on_s3() {
    crate::crash::crash_test_on(&DELTA, 10_000, crate::crash::Where::S3);
}

#[test]
fn delta_on_s3_resumes_from_the_table_txn() {
    let dir = TestDir::new("ds3");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    let moto = Moto::start(&dir.0.join("moto"), "lake");
    let env = moto.env();
    m.sql("CREATE DATABASE s; CREATE TABLE s.t (id INT PRIMARY KEY, v VARCHAR(20)); INSERT INTO s.t VALUES (1,'a'),(2,'b');");
    let run = || catch_up_env(&m, "s3://lake/d", "s.*", &DELTA, &env);
    run();
    m.sql("UPDATE s.t SET v='bb' WHERE id=2; DELETE FROM s.t WHERE id=1; INSERT INTO s.t VALUES (3,'c');");
    run();
    let (equal, report) = compare_env(&m, "s3://lake/d", "s.t", &["--reader", "delta"], &env);
    assert!(equal, "{report}");
}

/// Column changes mid-stream, each between writes to the same rows: DROP COLUMN, RENAME COLUMN,
/// CHANGE COLUMN (new name and wider type), and the widening MODIFYs (INT to BIGINT, VARCHAR(10)
/// to VARCHAR(200), DECIMAL(10,2) to DECIMAL(20,4)) are applied to the Delta table and it ends
/// equal to the source. A change that is not a widening (INT to VARCHAR) and a RENAME TABLE read
/// their table again in its new shape (a re-snapshot, logged with the change) while the others
/// go on; nothing stops.
#[test]
fn delta_column_changes_mid_stream() {
    let dir = TestDir::new("dcols");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql("CREATE DATABASE q; \
        CREATE TABLE q.c (id INT PRIMARY KEY, a INT, gone VARCHAR(5), n INT, s VARCHAR(10), d DECIMAL(10,2), old_name INT, tail INT); \
        CREATE TABLE q.bad (id INT PRIMARY KEY, x INT); \
        CREATE TABLE q.keep (id INT PRIMARY KEY, v INT); \
        INSERT INTO q.c VALUES (1, 1, 'g1', 2147483647, 'short', 12345678.99, 10, 100), (2, 2, 'g2', -5, 'b', -0.01, 20, 200); \
        CREATE TABLE q.mv (id INT PRIMARY KEY); \
        INSERT INTO q.bad VALUES (1, 1); INSERT INTO q.keep VALUES (1, 1); INSERT INTO q.mv VALUES (1);");
    let target = dir.path("lake");
    let child = spawn_replicate(
        &m,
        &target,
        "q.*",
        &["--sink", "delta", "--max-latency", "200ms"],
    );
    let (equal, last) = wait_equal_reader(&m, &target, "q.c", "delta", Duration::from_secs(60));
    assert!(equal, "{last}");
    m.sql("ALTER TABLE q.c DROP COLUMN gone; UPDATE q.c SET a = 11 WHERE id = 1; INSERT INTO q.c (id, a, n, s, d, old_name, tail) VALUES (3, 3, 3, 'c', 3.5, 30, 300);");
    m.sql("ALTER TABLE q.c RENAME COLUMN old_name TO new_name; UPDATE q.c SET new_name = 21 WHERE id = 2;");
    m.sql("ALTER TABLE q.c MODIFY n BIGINT, MODIFY s VARCHAR(200), MODIFY d DECIMAL(20,4); \
        INSERT INTO q.c (id, a, n, s, d, new_name, tail) VALUES (4, 4, 5000000000, REPEAT('x', 150), 1234567890123456.1234, 40, 400); \
        UPDATE q.c SET d = d + 0.0001 WHERE id = 3;");
    m.sql("ALTER TABLE q.c CHANGE tail last_col BIGINT; UPDATE q.c SET last_col = 9000000000 WHERE id = 4; DELETE FROM q.c WHERE id = 2;");
    m.sql("ALTER TABLE q.bad MODIFY x VARCHAR(20); INSERT INTO q.bad VALUES (2, 'two'); INSERT INTO q.keep VALUES (2, 2);");
    m.sql("RENAME TABLE q.mv TO q.moved; INSERT INTO q.moved VALUES (2);");
    m.sql("UPDATE q.keep SET v = 20 WHERE id = 2; INSERT INTO q.keep VALUES (3, 3);");
    let (c_equal, c_last) = wait_equal_reader(&m, &target, "q.c", "delta", Duration::from_secs(60));
    let (k_equal, k_last) =
        wait_equal_reader(&m, &target, "q.keep", "delta", Duration::from_secs(60));
    // A type change that is not a widening, and a RENAME TABLE, read the table again in its
    // new shape
    let reread: Vec<(bool, String)> = ["q.bad", "q.moved"]
        .iter()
        .map(|t| wait_equal_reader(&m, &target, t, "delta", Duration::from_secs(60)))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let st = binlake(
        &["status", "--target", &target, "--sink", "delta"],
        Duration::from_secs(30),
    );
    let status = String::from_utf8_lossy(&st.stdout).to_string();
    let out = terminate(child, Duration::from_secs(30));
    let err = stderr(&out);
    assert!(c_equal, "column changes: {c_last}\n{err}");
    assert!(k_equal, "the untouched table must go on: {k_last}\n{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
    // the Delta schema is the source's: no leftover column, new names, wider types
    let cols = delta_q(
        &format!("{target}/q/c"),
        "SELECT string_agg(column_name || ' ' || column_type, ', ' ORDER BY column_name) FROM (DESCRIBE t) WHERE NOT starts_with(column_name, '_binlake')",
    );
    assert_eq!(
        cols,
        "a INTEGER, d DECIMAL(20,4), id INTEGER, last_col BIGINT, n BIGINT, new_name INTEGER, s VARCHAR"
    );
    assert!(
        err.contains("q.bad") && err.contains("changed type"),
        "{err}"
    );
    assert!(!status.contains("STOPPED"), "{status}");
    for (t, (equal, last)) in ["q.bad", "q.moved"].iter().zip(reread) {
        assert!(equal, "{t}: {last}\n{err}");
    }
}

/// `binlake maintain`: after many small commits, compaction leaves fewer files, tombstones past
/// the retention are purged, a log checkpoint is written, the watermarks keep only their newest
/// row per table, and the table still equals the source.
#[test]
fn delta_maintain_compacts_purges_and_checkpoints() {
    let dir = TestDir::new("dmaint");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql("CREATE DATABASE mt; CREATE TABLE mt.t (id INT PRIMARY KEY, v INT);");
    let target = dir.path("lake");
    // each commit's keys above every stored one: the upsert reads no file and adds one, so
    // six commits leave six small files for compaction
    for i in 0..6 {
        m.sql(&format!(
            "INSERT INTO mt.t VALUES ({}, {i}), ({}, 0); DELETE FROM mt.t WHERE id = {};",
            10 * i,
            10 * i + 1,
            10 * i + 1
        ));
        catch_up(&m, &target, "mt.*", &DELTA);
    }
    let table = format!("{target}/mt/t");
    let files_before = delta_q(&table, "SELECT 1"); // table readable
    assert_eq!(files_before, "1");
    let count_files = |p: &str| python_files(p);
    let before = count_files(&table);
    assert_eq!(
        delta_q(&table, "SELECT count(*) FROM t WHERE _binlake_deleted"),
        "6"
    );
    let wm = format!("{target}/_binlake_watermarks");
    let wm_rows = || {
        delta_q(&wm, "SELECT count(*) FROM t")
            .parse::<u64>()
            .unwrap()
    };
    let pairs = || {
        delta_q(&wm, "SELECT count(DISTINCT (pipeline, \"table\")) FROM t")
            .parse::<u64>()
            .unwrap()
    };
    let last_gtid = m.sql("SELECT @@gtid_binlog_pos").trim().to_string();
    assert!(wm_rows() >= 12, "a watermark row per table and commit");
    let out = binlake(
        &[
            "maintain",
            "--target",
            &target,
            "--sink",
            "delta",
            "--tombstone-retention",
            "0s",
            "--vacuum-retention",
            "0s",
            "--version-retention",
            "0s",
        ],
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("mt.t") && report.contains("purged 6 tombstones"),
        "{report}"
    );
    let after = count_files(&table);
    assert!(
        after < before,
        "compaction: {before} files before, {after} after"
    );
    assert_eq!(
        delta_q(&table, "SELECT count(*) FROM t WHERE _binlake_deleted"),
        "0"
    );
    assert!(
        std::fs::read_dir(format!("{table}/_delta_log"))
            .unwrap()
            .any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("checkpoint")),
        "no log checkpoint"
    );
    assert_replica_equal(&m, &target, "mt.t", &["--reader", "delta"]);
    // the watermarks keep the newest row per (pipeline, table), history past the retention goes
    assert!(report.contains("_binlake_watermarks"), "{report}");
    assert_eq!(wm_rows(), pairs(), "{report}");
    assert_eq!(
        delta_q(
            &wm,
            "SELECT gtid FROM t WHERE \"table\" = 'mt.t' ORDER BY applied_at DESC LIMIT 1"
        ),
        last_gtid
    );
    // replication goes on after maintenance
    m.sql("UPDATE mt.t SET v = 42 WHERE id = 10; INSERT INTO mt.t VALUES (55, 55);");
    catch_up(&m, &target, "mt.*", &DELTA);
    assert_replica_equal(&m, &target, "mt.t", &["--reader", "delta"]);
}

/// `maintain_every` in `replicate`: maintenance runs in the background between commits while a
/// workload with updates and deletes streams; every change still arrives, in order, within the
/// latency bound, and the table ends compacted, checkpointed and equal to the source.
#[test]
fn delta_scheduled_maintenance_during_stream() {
    scheduled_maintenance(false);
}

/// The same with the target on S3 (moto): compaction, log checkpoint and vacuum through the
/// object store while MERGEs go on.
#[test]
fn delta_scheduled_maintenance_on_s3() {
    scheduled_maintenance(true);
}

fn scheduled_maintenance(s3: bool) {
    let dir = TestDir::new("dsched");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql("CREATE DATABASE ms; CREATE TABLE ms.t (id INT PRIMARY KEY, v INT, s VARCHAR(20)); CREATE TABLE ms.u (id INT PRIMARY KEY, v INT);");
    let moto = s3.then(|| Moto::start(&dir.0.join("moto"), "lake"));
    let env: Vec<(&str, &str)> = moto.as_ref().map(|m| m.env().to_vec()).unwrap_or_default();
    let target = if s3 {
        "s3://lake/sched".to_string()
    } else {
        dir.path("lake")
    };
    let url = m.url();
    let mut args = replicate_args(&url, &target, "ms.*", &[]);
    args.extend_from_slice(&[
        "--sink",
        "delta",
        "--max-latency",
        "200ms",
        "--maintain-every",
        "2s",
        "--tombstone-retention",
        "0s",
        "--vacuum-retention",
        "0s",
    ]);
    let child = spawn_binlake_env(&args, &env);
    for i in 0..60 {
        m.sql(&format!(
            "INSERT INTO ms.t VALUES ({i}, {i}, 'r{i}'), ({}, 0, 'gone'); UPDATE ms.t SET v = v + 1 WHERE id < {i} AND id % 3 = 0; DELETE FROM ms.t WHERE id = {}; INSERT INTO ms.u VALUES ({i}, {i}) ON DUPLICATE KEY UPDATE v = v + 1;",
            1000 + i,
            1000 + i
        ));
        std::thread::sleep(Duration::from_millis(100));
    }
    m.sql("UPDATE ms.u SET v = -1 WHERE id = 7; DELETE FROM ms.t WHERE id = 5;");
    let wait = |table: &str| {
        let start = std::time::Instant::now();
        loop {
            let (equal, text) = compare_env(&m, &target, table, &["--reader", "delta"], &env);
            if equal || start.elapsed() > Duration::from_secs(30) {
                return (equal, text);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    let (t_equal, t_last) = wait("ms.t");
    let (u_equal, u_last) = wait("ms.u");
    let out = terminate(child, Duration::from_secs(60));
    let log = stderr(&out);
    assert!(t_equal, "{t_last}\n{log}");
    assert!(u_equal, "{u_last}\n{log}");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("scheduled maintenance done"), "{log}");
    assert!(!log.contains("scheduled maintenance failed"), "{log}");
    if s3 {
        return; // the checks below read the local directory
    }
    let table = format!("{target}/ms/t");
    assert!(
        std::fs::read_dir(format!("{table}/_delta_log"))
            .unwrap()
            .any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("checkpoint")),
        "no log checkpoint"
    );
    // tombstones older than the (zero) retention were purged along the way
    let tombstones: usize = delta_q(&table, "SELECT count(*) FROM t WHERE _binlake_deleted")
        .parse()
        .unwrap();
    assert!(tombstones < 61, "{tombstones} tombstones left");
}

/// Number of data files in the Delta table's current version.
fn python_files(table: &str) -> usize {
    let out = Command::new("python3")
        .args(["-c", "import os, sys\nfrom deltalake import DeltaTable\nprint(len(DeltaTable(sys.argv[1]).file_uris()), flush=True)\nos._exit(0)", table])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Two binlake processes of one pipeline on the same S3 Delta target: the second fails with a
/// clear error naming the holder, the first goes on, and nothing is lost or doubled.
#[test]
fn delta_two_writers_on_s3() {
    let dir = TestDir::new("ds3two");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    let moto = Moto::start(&dir.0.join("moto"), "lake");
    m.sql("CREATE DATABASE w; CREATE TABLE w.t (id INT PRIMARY KEY, v INT); INSERT INTO w.t VALUES (1, 1), (2, 2);");
    let url = m.url();
    let args = [
        "replicate",
        "--source",
        &url,
        "--tables",
        "w.*",
        "--target",
        "s3://lake/two",
        "--start-at",
        "earliest",
        "--sink",
        "delta",
        "--max-latency",
        "200ms",
    ];
    let first = spawn_binlake_env(&args, &moto.env());
    let env = moto.env();
    let compare_s3 = || compare_env(&m, "s3://lake/two", "w.t", &["--reader", "delta"], &env).0;
    let wait_equal = || {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if compare_s3() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        false
    };
    assert!(wait_equal(), "first writer never caught up");
    let second = Command::new(binlake_bin())
        .args(args)
        .arg("--exit-when-caught-up")
        .envs(moto.env())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("is held by"),
        "{}",
        stderr(&second)
    );
    m.sql("UPDATE w.t SET v = 20 WHERE id = 2; INSERT INTO w.t VALUES (3, 3); DELETE FROM w.t WHERE id = 1;");
    assert!(
        wait_equal(),
        "first writer stopped after the second was refused"
    );
    let out = terminate(first, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// TRUNCATE and DROP TABLE empty the Delta table (tombstones, or rows removed with hard deletes);
/// rows written after a TRUNCATE stay. A Parquet lake gets a file of tombstones: its documented
/// current-state query shows the tables emptied, and nothing stops.
#[test]
fn delta_truncate_and_drop_table() {
    let dir = TestDir::new("dtrunc");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql("CREATE DATABASE tr; CREATE TABLE tr.a (id INT PRIMARY KEY, v INT); CREATE TABLE tr.b (id INT PRIMARY KEY); CREATE TABLE tr.c (id INT PRIMARY KEY); INSERT INTO tr.a VALUES (1,1),(2,2); INSERT INTO tr.b VALUES (1); INSERT INTO tr.c VALUES (1);");
    let soft = dir.path("soft");
    let hard = dir.path("hard");
    let pq = dir.path("parquet");
    catch_up(&m, &soft, "tr.*", &DELTA);
    catch_up(&m, &hard, "tr.*", &["--sink", "delta", "--deletes", "hard"]);
    catch_up(&m, &pq, "tr.*", &[]);
    m.sql("TRUNCATE TABLE tr.a; INSERT INTO tr.a VALUES (2, 20), (3, 30); DROP TABLE tr.b; INSERT INTO tr.c VALUES (2);");
    catch_up(&m, &soft, "tr.*", &DELTA);
    catch_up(&m, &hard, "tr.*", &["--sink", "delta", "--deletes", "hard"]);
    for t in [&soft, &hard] {
        assert_replica_equal(&m, t, "tr.a", &["--reader", "delta"]);
        assert_replica_equal(&m, t, "tr.c", &["--reader", "delta"]);
        assert_eq!(
            delta_q(
                &format!("{t}/tr/b"),
                "SELECT count(*) FROM t WHERE NOT _binlake_deleted"
            ),
            "0",
            "{t}"
        );
    }
    assert_eq!(
        delta_q(
            &format!("{soft}/tr/a"),
            "SELECT count(*) FROM t WHERE _binlake_deleted"
        ),
        "1"
    ); // key 1
    assert_eq!(
        delta_q(&format!("{hard}/tr/a"), "SELECT count(*) FROM t"),
        "2"
    );
    // Parquet: tombstones empty the truncated and dropped tables; nothing stops
    let url = m.url();
    let out = binlake(
        &[
            "replicate",
            "--source",
            &url,
            "--tables",
            "tr.*",
            "--target",
            &pq,
            "--exit-when-caught-up",
        ],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("table stopped"), "{}", stderr(&out));
    assert_replica_equal(&m, &pq, "tr.a", &[]);
    assert_replica_equal(&m, &pq, "tr.c", &[]);
    assert_replica_equal(&m, &pq, "tr.a", &["--reader", "duckdb"]);
    assert_eq!(
        duck(&format!(
            "SELECT count(*) FROM (SELECT *, row_number() OVER (PARTITION BY id ORDER BY _binlake_version DESC) AS rn FROM read_parquet('{pq}/tr/b/*.parquet', union_by_name = true)) WHERE rn = 1 AND NOT _binlake_deleted"
        )),
        "0",
        "the dropped table's current state is empty"
    );
    let st = String::from_utf8_lossy(
        &binlake(&["status", "--target", &pq], Duration::from_secs(30)).stdout,
    )
    .to_string();
    assert!(!st.contains("STOPPED"), "{st}");
}

/// Delta on an S3 endpoint whose certificate a private CA signed (`AWS_CA_BUNDLE`): the tables
/// and binlake's own records both trust the bundle.
#[test]
fn delta_on_s3_with_a_private_ca() {
    let dir = TestDir::new("ds3_tls");
    let certs = tls_certs(&dir.path("certs"));
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    let moto = Moto::start_with(&dir.0.join("moto"), "lake", Some(&certs));
    let ca = format!("{certs}/ca.pem");
    let mut env: Vec<(&str, &str)> = moto.env().to_vec();
    env.push(("AWS_CA_BUNDLE", &ca));
    m.sql("CREATE DATABASE s; CREATE TABLE s.t (id INT PRIMARY KEY, v VARCHAR(20)); INSERT INTO s.t VALUES (1,'a'),(2,'b');");
    catch_up_env(&m, "s3://lake/d", "s.*", &DELTA, &env);
    m.sql("UPDATE s.t SET v='bb' WHERE id=2; DELETE FROM s.t WHERE id=1; INSERT INTO s.t VALUES (3,'c');");
    catch_up_env(&m, "s3://lake/d", "s.*", &DELTA, &env);
    let (equal, report) = compare_env(&m, "s3://lake/d", "s.t", &["--reader", "delta"], &env);
    assert!(equal, "{report}");
}

/// `[[layout]]` `partition_by` for Delta: the tables binlake creates are partitioned by the
/// named columns (as the Python reader sees them), in the snapshot path and the stream path,
/// and updates that move a row to another partition, deletes and a TRUNCATE keep the replica
/// equal to the source.
#[test]
fn delta_partition_columns_from_layout() {
    let dir = TestDir::new("dparts");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql(
        "CREATE DATABASE p; USE p;
         CREATE TABLE p.ev (id BIGINT PRIMARY KEY, region VARCHAR(8) NOT NULL, v INT);
         INSERT INTO p.ev SELECT seq, ELT(1 + seq % 3, 'eu', 'us', 'ap'), seq FROM seq_1_to_3000;",
    );
    let target = dir.path("lake");
    let config = dir.path("binlake.toml");
    std::fs::write(
        &config,
        format!(
            "source = \"{}\"\ntarget = \"{target}\"\nsink = \"delta\"\ntables = \"p.*\"\n\n[[layout]]\ntables = \"p.*\"\npartition_by = \"Region\"\n",
            m.url()
        ),
    )
    .unwrap();
    let run = || {
        let out = binlake(
            &["replicate", "--config", &config, "--exit-when-caught-up"],
            Duration::from_secs(300),
        );
        assert!(out.status.success(), "{}", stderr(&out));
    };
    // the snapshot creates p.ev; p.later is created by the stream
    run();
    m.sql(
        "CREATE TABLE p.later (id INT PRIMARY KEY, region VARCHAR(8), note TEXT);
         INSERT INTO p.later VALUES (1, 'eu', 'a'), (2, NULL, 'b'), (3, 'us', 'c');
         UPDATE p.ev SET region = 'sa' WHERE id % 10 = 0;
         DELETE FROM p.ev WHERE id % 7 = 0;
         UPDATE p.ev SET v = -v WHERE region = 'ap';
         UPDATE p.later SET region = 'ap' WHERE id = 2;",
    );
    run();
    for t in ["p.ev", "p.later"] {
        assert_replica_equal(&m, &target, t, &["--reader", "delta"]);
        let path = format!("{target}/{}", t.replace('.', "/"));
        let out = Command::new("python3")
            .args([
                "-c",
                "import sys, os\nfrom deltalake import DeltaTable\nprint(DeltaTable(sys.argv[1]).metadata().partition_columns, flush=True)\nos._exit(0)",
                &path,
            ])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "['region']",
            "{t}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // one directory per region value in the table's folder
    assert!(std::path::Path::new(&format!("{target}/p/ev/region=sa")).is_dir());
    m.sql("TRUNCATE p.ev; INSERT INTO p.ev VALUES (1, 'eu', 1)");
    run();
    assert_replica_equal(&m, &target, "p.ev", &["--reader", "delta"]);
}
