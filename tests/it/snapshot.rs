//! Snapshots against real MariaDB: a 1,000,000-row table snapshotted (the default start) while
//! a workload changes it (inserts, updates, deletes, key changes), into every sink; kill -9
//! during a snapshot, three times, then the failpoint between a commit's data and checkpoint.
//! Each ends with the replica equal to the source, value by value.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// `shop.big` with `rows` rows (sysbench-like columns plus a decimal and a time), a small
/// `shop.small` that only the stream fills, `shop.comp` with a composite key whose first column
/// is latin1 text (paged in the column's collation), and a keyless `shop.nokey`.
pub fn big_table(m: &Maria, rows: u64) {
    m.sql(&format!(
        "CREATE DATABASE shop; USE shop;
         CREATE TABLE shop.big (id BIGINT PRIMARY KEY, k INT NOT NULL, c VARCHAR(120) NOT NULL,
           pad CHAR(60) NOT NULL DEFAULT 'pad', d DECIMAL(12,2), ts DATETIME(6));
         INSERT INTO shop.big (id, k, c, d, ts) SELECT seq, seq % 1000, CONCAT('row-', seq),
           seq / 100, '2024-01-01' + INTERVAL seq SECOND FROM seq_1_to_{rows};
         CREATE TABLE shop.small (id INT PRIMARY KEY, v VARCHAR(20));
         INSERT INTO shop.small VALUES (1, 'before');
         CREATE TABLE shop.comp (a VARCHAR(20) CHARACTER SET latin1 NOT NULL, b INT NOT NULL,
           v TEXT, PRIMARY KEY (a, b));
         INSERT INTO shop.comp SELECT CONCAT(ELT(1 + seq % 4, 'é', 'e', 'É', 'z'), seq % 97), seq,
           REPEAT('v', seq % 20) FROM seq_1_to_{comp};
         CREATE TABLE shop.nokey (x INT, y VARCHAR(10));
         INSERT INTO shop.nokey SELECT seq, 'n' FROM seq_1_to_1000;",
        comp = rows.min(50_000)
    ));
}

/// Starts `workload.py` on `shop.big` until `stop` exists (or `secs`).
pub fn start_workload(m: &Maria, stop: &str, secs: u64, seed: u64) -> Child {
    start_workload_keys(m, stop, secs, seed, 1_000_000)
}

/// [`start_workload`] on a table whose keys go up to `max_id`.
pub fn start_workload_keys(m: &Maria, stop: &str, secs: u64, seed: u64, max_id: u64) -> Child {
    Command::new("python3")
        .arg(repo().join("tests/scripts/workload.py"))
        .args([
            "--port",
            &m.port.to_string(),
            "--table",
            "shop.big",
            "--seconds",
            &secs.to_string(),
            "--seed",
            &seed.to_string(),
            "--stop-file",
            stop,
            "--max-id",
            &max_id.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("workload.py")
}

/// Stops the workload and returns how many transactions it committed.
pub fn stop_workload(w: Child, stop: &str) -> u64 {
    std::fs::write(stop, "").unwrap();
    let out = w.wait_with_output().unwrap();
    assert!(out.status.success(), "workload failed");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// `binlake status` output for a target.
pub fn status(sink_args: &[&str]) -> String {
    let mut args = vec!["status"];
    args.extend_from_slice(sink_args);
    let out = binlake(&args, Duration::from_secs(60));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `binlake status` until `table` is loaded (its snapshot finished).
pub fn wait_loaded(sink_args: &[&str], table: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        let s = status(sink_args);
        if s.lines()
            .any(|l| l.contains(table) && l.contains("loaded (snapshot finished"))
        {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{table} not loaded after {timeout:?}:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Polls the comparison (with a reader's flags) until equal; panics with the last report.
pub fn wait_equal(m: &Maria, target: &str, table: &str, reader: &[&str], timeout: Duration) {
    let start = Instant::now();
    loop {
        let (equal, text) = compare(m, target, table, reader);
        if equal {
            eprintln!("{}", text.trim());
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "replica of {table} differs from the source:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The whole scenario for one sink: `sink_args` include `--target`; `target` and `reader` are
/// what compare.py needs.
///
/// Beside the workload, another session runs `SHOW GLOBAL STATUS` in a loop (a monitoring agent):
/// MariaDB answers `SHOW STATUS` through shared variables, and the handoff must not depend on
/// them. `BINLAKE_STRESS_ROUNDS=N` runs the scenario N times in a row (a new server, target and
/// workload seed each time), for hunting intermittent failures.
pub fn snapshot_under_writes(
    name: &str,
    sink_args: &[&str],
    target: &str,
    reader: &[&str],
    round: u64,
) {
    eprintln!("{name}: round {} of {}", round + 1, stress_rounds());
    snapshot_under_writes_once(name, sink_args, target, reader, 7 + round);
}

/// `BINLAKE_STRESS_ROUNDS` (default 1).
pub fn stress_rounds() -> u64 {
    std::env::var("BINLAKE_STRESS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

fn snapshot_under_writes_once(
    name: &str,
    sink_args: &[&str],
    target: &str,
    reader: &[&str],
    seed: u64,
) {
    let dir = TestDir::new(name);
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    big_table(&m, 1_000_000);
    let stop = dir.path("stop");
    let w = start_workload(&m, &stop, 900, seed);
    let monitor = Command::new("python3")
        .arg(repo().join("tests/scripts/status_loop.py"))
        .args([
            "--port",
            &m.port.to_string(),
            "--seconds",
            "900",
            "--stop-file",
            &stop,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("status_loop.py");
    let url = m.url();
    let mut args = vec![
        "replicate",
        "--source",
        &url,
        "--tables",
        "shop.*",
        "--max-latency",
        "500ms",
    ];
    args.extend_from_slice(sink_args);
    let started = Instant::now();
    let r = spawn_binlake(&args);
    std::thread::sleep(Duration::from_secs(2));
    m.sql("INSERT INTO shop.small VALUES (2, 'during');");
    wait_loaded(sink_args, "shop.big", Duration::from_secs(900));
    let took = started.elapsed();
    let txns = stop_workload(w, &stop);
    let polls = monitor.wait_with_output().expect("status_loop.py");
    let polls = String::from_utf8_lossy(&polls.stdout).trim().to_string();
    eprintln!("{name}: snapshot of 1,000,000 rows done in {took:?} while the workload committed {txns} transactions and another session ran SHOW GLOBAL STATUS {polls} times");
    assert!(txns > 20, "the workload barely ran ({txns} transactions)");
    assert!(
        polls.parse::<u64>().unwrap_or(0) > 20,
        "the status loop barely ran ({polls})"
    );
    m.sql("UPDATE shop.small SET v = 'after' WHERE id = 1;");
    wait_equal(&m, target, "shop.big", reader, Duration::from_secs(300));
    wait_equal(&m, target, "shop.small", reader, Duration::from_secs(60));
    wait_equal(&m, target, "shop.comp", reader, Duration::from_secs(60));
    let out = terminate(r, Duration::from_secs(60));
    let log = stderr(&out);
    assert!(out.status.success(), "binlake failed:\n{log}");
    assert!(
        log.contains("snapshot finished") && log.contains("shop.big"),
        "{log}"
    );
}

#[test]
fn snapshot_of_a_million_rows_under_writes_parquet() {
    for round in 0..stress_rounds() {
        let dir = TestDir::new(&format!("snap_pq_target{round}"));
        let target = dir.path("lake");
        snapshot_under_writes("snap_pq", &["--target", &target], &target, &[], round);
    }
}

#[cfg(feature = "delta")]
#[test]
fn snapshot_of_a_million_rows_under_writes_delta() {
    for round in 0..stress_rounds() {
        let dir = TestDir::new(&format!("snap_delta_target{round}"));
        let target = dir.path("lake");
        snapshot_under_writes(
            "snap_delta",
            &["--sink", "delta", "--target", &target],
            &target,
            &["--reader", "delta"],
            round,
        );
    }
}

#[cfg(feature = "clickhouse")]
#[test]
fn snapshot_of_a_million_rows_under_writes_clickhouse() {
    for round in 0..stress_rounds() {
        let dir = TestDir::new(&format!("snap_ch_server{round}"));
        let ch = ClickHouse::start(&dir.0.join("ch"), &format!("snap{round}"));
        snapshot_under_writes("snap_ch", &ch.args(), &ch.url, &ch.reader(), round);
    }
}

/// kill -9 three times during a snapshot under writes, then the after-data failpoint: each
/// restart continues after the last committed chunk (it does not start over), and the replica
/// ends equal to the source.
#[test]
fn kill_9_during_a_snapshot_resumes_from_the_last_chunk() {
    let dir = TestDir::new("snap_kill");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    big_table(&m, 300_000);
    let stop = dir.path("stop");
    let w = start_workload(&m, &stop, 900, 11);
    let target = dir.path("lake");
    let url = m.url();
    let args = [
        "replicate",
        "--source",
        &url,
        "--tables",
        "shop.*",
        "--target",
        &target,
        "--snapshot-chunk-rows",
        "1000",
        "--max-batch-rows",
        "4000",
        "--max-latency",
        "200ms",
    ];
    let snapshot_rows = |s: &str| -> Option<u64> {
        s.lines()
            .find(|l| l.contains("shop.big") && l.contains("SNAPSHOT"))
            .and_then(|l| l.split(": ").nth(1))
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    let mut rng = crate::crash::Lcg(0x5eed);
    let mut last_rows = 0u64;
    for round in 0..3 {
        let mut r = spawn_binlake(&args);
        // kill at a random point once this run has committed some chunks
        let goal = last_rows + 20_000 + rng.below(40_000);
        let t0 = Instant::now();
        while snapshot_rows(&status(&["--target", &target])).unwrap_or(0) < goal {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "no snapshot progress"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r.kill().unwrap();
        let out = r.wait_with_output().unwrap();
        let log = stderr(&out);
        if round > 0 {
            assert!(
                log.contains("snapshot resumes after its last committed chunk"),
                "round {round}: the snapshot did not resume from its progress:\n{log}"
            );
        }
        let s = status(&["--target", &target]);
        let rows = snapshot_rows(&s)
            .unwrap_or_else(|| panic!("round {round}: no snapshot in progress:\n{s}"));
        assert!(
            rows > last_rows,
            "round {round}: no progress ({rows} rows read, {last_rows} before)"
        );
        eprintln!("round {round}: killed with {rows} rows of the snapshot committed");
        last_rows = rows;
    }
    // a crash between a commit's data and its checkpoint
    crash_after_data(&args, 2);
    let r = spawn_binlake(&args);
    wait_loaded(&["--target", &target], "shop.big", Duration::from_secs(300));
    let txns = stop_workload(w, &stop);
    assert!(txns > 20, "the workload barely ran ({txns} transactions)");
    wait_equal(&m, &target, "shop.big", &[], Duration::from_secs(120));
    wait_equal(&m, &target, "shop.small", &[], Duration::from_secs(60));
    wait_equal(&m, &target, "shop.comp", &[], Duration::from_secs(60));
    // the keyless table was read once, at the first start: never again, never doubled
    let n = duck(&format!(
        "SELECT count(*) FROM read_parquet('{target}/shop/nokey/**/*.parquet')"
    ));
    assert_eq!(n, "1000", "keyless rows after four crashes");
    let out = terminate(r, Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Runs binlake until the `after-data` failpoint aborts it at its `at`-th commit (the data in
/// the target, its checkpoint not); asserts that it fired.
fn crash_after_data(args: &[&str], at: u32) -> std::process::Output {
    let at = at.to_string();
    let out = binlake_env(
        args,
        &[
            ("BINLAKE_FAILPOINT", "after-data"),
            ("BINLAKE_FAILPOINT_AT", &at),
        ],
        Duration::from_secs(120),
    );
    assert!(!out.status.success(), "the failpoint did not fire");
    out
}

/// A crash between a keyless table's snapshot (the first commit) and its checkpoint, in the
/// sinks whose commits are not atomic across tables: the restart reads the table again and its
/// rows replace the first attempt's, never adding to them. `rows` reads `count/sum(x)` of
/// `shop.nokey` from the target.
fn keyless_snapshot_survives_a_crash(name: &str, sink_args: &[&str], rows: &dyn Fn() -> String) {
    let dir = TestDir::new(name);
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql(
        "CREATE DATABASE shop; USE shop; CREATE TABLE shop.nokey (x INT, y VARCHAR(10));
         INSERT INTO shop.nokey SELECT seq, 'n' FROM seq_1_to_1000;
         CREATE TABLE shop.k (id INT PRIMARY KEY, v INT); INSERT INTO shop.k VALUES (1, 1);",
    );
    let url = m.url();
    let mut args = vec![
        "replicate",
        "--source",
        &url,
        "--tables",
        "shop.*",
        "--exit-when-caught-up",
    ];
    args.extend_from_slice(sink_args);
    let out = crash_after_data(&args, 1);
    // the window is real: the first attempt's rows are in the target, its checkpoint is not
    assert_eq!(
        rows(),
        "1000/500500",
        "after the crash:
{}",
        stderr(&out)
    );
    m.sql("INSERT INTO shop.nokey VALUES (1001, 'a'), (1002, 'b');");
    let out = binlake(&args, Duration::from_secs(120));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(rows(), "1002/502503", "a keyless snapshot read twice");
    // the stream goes on after the second read (and skips what the read already holds)
    m.sql("INSERT INTO shop.nokey VALUES (1003, 'c'); DELETE FROM shop.nokey WHERE x = 1;");
    let out = binlake(&args, Duration::from_secs(120));
    assert!(out.status.success(), "{}", stderr(&out));
    let want = m.sql("SELECT CONCAT(COUNT(*), '/', SUM(x)) FROM shop.nokey");
    let want = want.trim();
    assert_eq!(want, "1002/503505");
    // a keyless table is an append-only changelog: the DELETE is a tombstone row
    assert_eq!(rows(), "1004/503507", "keyless changelog after the stream");
}

#[cfg(feature = "delta")]
#[test]
fn keyless_snapshot_is_not_doubled_by_a_crash_delta() {
    let dir = TestDir::new("snap_keyless_delta_target");
    let target = dir.path("lake");
    let table = format!("{target}/shop/nokey");
    keyless_snapshot_survives_a_crash(
        "snap_keyless_delta",
        &["--sink", "delta", "--target", &target],
        &|| delta_q(&table, "SELECT count(*) || '/' || sum(x) FROM t"),
    );
}

#[cfg(feature = "clickhouse")]
#[test]
fn keyless_snapshot_is_not_doubled_by_a_crash_clickhouse() {
    let dir = TestDir::new("snap_keyless_ch");
    let ch = ClickHouse::start(&dir.0.join("ch"), "nokey");
    let table = format!("`{}shop`.nokey", ch.prefix);
    keyless_snapshot_survives_a_crash("snap_keyless_ch_src", &ch.args(), &|| {
        ch.q(&format!(
            "SELECT toString(count()) || '/' || toString(sum(x)) FROM {table}"
        ))
    });
}

/// `--exit-when-caught-up` on a fresh target waits for every queued snapshot: a table whose plan
/// is still queued behind a chunk the pipeline holds is not forgotten (it once exited after the
/// first table; Delta's slower start made the race likely).
fn exit_waits_for_every_snapshot(name: &str, sink: &str) {
    let dir = TestDir::new(name);
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    let mut sql = String::from("CREATE DATABASE many; USE many;");
    for t in 0..6 {
        sql.push_str(&format!(
            "CREATE TABLE many.t{t} (id INT PRIMARY KEY, v VARCHAR(20));
             INSERT INTO many.t{t} SELECT seq, 'x' FROM seq_1_to_{};",
            1000 * (t + 1)
        ));
    }
    m.sql(&sql);
    let target = dir.path("lake");
    let url = m.url();
    let out = binlake(
        &[
            "replicate",
            "--source",
            &url,
            "--tables",
            "many.*",
            "--sink",
            sink,
            "--target",
            &target,
            "--exit-when-caught-up",
        ],
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for t in 0..6 {
        let (equal, text) = compare(
            &m,
            &target,
            &format!("many.t{t}"),
            if sink == "delta" {
                &["--reader", "delta"]
            } else {
                &[]
            },
        );
        assert!(equal, "many.t{t}: {text}");
    }
}

#[test]
fn exit_when_caught_up_waits_for_every_snapshot_parquet() {
    exit_waits_for_every_snapshot("snap_exit_pq", "parquet");
}

#[cfg(feature = "delta")]
#[test]
fn exit_when_caught_up_waits_for_every_snapshot_delta() {
    exit_waits_for_every_snapshot("snap_exit_delta", "delta");
}

/// Every column type at its edges, loaded by a snapshot only (the rows are written with
/// `sql_log_bin = 0`), one row per chunk so that every chunk after the first is paged by key:
/// the replica equals the source value by value, read through the snapshot client and through
/// mysql_async (`BINLAKE_SNAPSHOT_CLIENT=mysql_async`). `zoo.s` pages a composite key of latin1
/// text and bytes.
#[test]
fn type_zoo_snapshot_reads_exactly_through_both_clients() {
    let dir = TestDir::new("snapzoo");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql(crate::replicate::ZOO_DDL);
    m.sql(&format!(
        "SET SESSION sql_log_bin = 0; {}
         CREATE TABLE zoo.s (a VARCHAR(10) CHARACTER SET latin1 NOT NULL, b VARBINARY(8) NOT NULL,
           v TEXT, PRIMARY KEY (a, b));
         INSERT INTO zoo.s VALUES ('é', X'00', 'one'), ('e', X'00FF', 'two'), ('É', X'', NULL),
           ('z', X'7F', 'four'), ('é', X'01', REPEAT('ü', 300)), ('', X'FF', 'six');",
        crate::replicate::ZOO_ROWS
    ));
    let url = m.url();
    for client in ["snapshot client", "mysql_async"] {
        let target = dir.path(&client.replace(' ', "_"));
        let env: &[(&str, &str)] = if client == "mysql_async" {
            &[
                ("BINLAKE_SNAPSHOT_CLIENT", "mysql_async"),
                ("RUST_LOG", "binlake=debug"),
            ]
        } else {
            &[("RUST_LOG", "binlake=debug")]
        };
        let out = binlake_env(
            &[
                "replicate",
                "--source",
                &url,
                "--tables",
                "zoo.*",
                "--target",
                &target,
                "--snapshot-chunk-rows",
                "1",
                "--exit-when-caught-up",
            ],
            env,
            Duration::from_secs(120),
        );
        let log = stderr(&out);
        assert!(out.status.success(), "{client}: {log}");
        assert_eq!(
            log.contains("read through the snapshot client"),
            client == "snapshot client",
            "{client}: {log}"
        );
        for t in ["zoo.t", "zoo.s"] {
            let (equal, text) = compare(&m, &target, t, &[]);
            assert!(equal, "{client}, {t}: {text}");
        }
    }
}

/// A small `shop.t` (keys 1..100) and a keyless `shop.nokey`.
fn small_tables(m: &Maria) {
    m.sql(
        "CREATE DATABASE shop; USE shop;
         CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(20) NOT NULL);
         INSERT INTO shop.t SELECT seq, 'old' FROM seq_1_to_100;
         CREATE TABLE shop.nokey (x INT, y VARCHAR(10));
         INSERT INTO shop.nokey SELECT seq, 'n' FROM seq_1_to_10;",
    );
}

/// `count/sum(x)` of `shop.nokey` in a Parquet lake (no row of it is deleted in these tests).
fn nokey_rows(target: &str) -> String {
    duck(&format!(
        "SELECT count(*) || '/' || sum(x) FROM read_parquet('{target}/shop/nokey/**/*.parquet')"
    ))
}

/// The race MariaDB's `SHOW STATUS` has (another session's value in the shared variable), made
/// deterministic: a chunk's consistent snapshot is held open by the `snapshot-race` failpoint
/// while a change it cannot see commits, so any position read after the snapshot started names
/// that change. The chunk's old row must not win over the change.
#[test]
fn a_change_committed_while_a_chunk_reads_is_not_lost() {
    let dir = TestDir::new("snap_race");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    small_tables(&m);
    let target = dir.path("lake");
    let gate = dir.path("gate");
    let url = m.url();
    let args = [
        "replicate",
        "--source",
        &url,
        "--tables",
        "shop.t",
        "--target",
        &target,
        "--max-latency",
        "200ms",
    ];
    let r = spawn_binlake_env(
        &args,
        &[
            ("BINLAKE_FAILPOINT", "snapshot-race"),
            ("BINLAKE_FAILPOINT_FILE", &gate),
        ],
    );
    wait_for_failpoint(&gate);
    m.sql("UPDATE shop.t SET v = 'new' WHERE id IN (5, 50); DELETE FROM shop.t WHERE id = 7;");
    std::fs::write(&gate, "").unwrap();
    wait_equal(&m, &target, "shop.t", &[], Duration::from_secs(60));
    let out = terminate(r, Duration::from_secs(60));
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("failpoint snapshot-race"), "{log}");
}

/// A transaction that is in the binlog but not yet committed in InnoDB (two-phase commit) when
/// binlake starts: semi-synchronous replication with no replica to acknowledge holds it there for
/// seconds (AFTER_SYNC: after the binlog write, before the engine commit). The stream's start
/// point (`@@gtid_binlog_pos`) already names it, so the stream never delivers it, and a snapshot
/// taken meanwhile cannot see it: the snapshots, of a keyed and of a keyless table, must still
/// end up holding it.
#[test]
fn a_transaction_binlogged_but_not_committed_at_start_is_not_lost() {
    let dir = TestDir::new("snap_2pc");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    small_tables(&m);
    let target = dir.path("lake");
    let before = m.sql("SELECT @@gtid_binlog_pos");
    let seq: u64 = before.trim().rsplit('-').next().unwrap().parse().unwrap();
    m.sql(
        "SET GLOBAL rpl_semi_sync_master_wait_point = 'AFTER_SYNC';
         SET GLOBAL rpl_semi_sync_master_timeout = 6000;
         SET GLOBAL rpl_semi_sync_master_enabled = ON;",
    );
    let port = m.port;
    let held = std::thread::spawn(move || {
        let t = Instant::now();
        let out = Command::new("mariadb")
            .args(["--no-defaults", "-h127.0.0.1", "-uroot", "-P", &port.to_string(), "-e"])
            .arg("BEGIN; UPDATE shop.t SET v = 'new' WHERE id = 50; INSERT INTO shop.nokey VALUES (11, 'late'); COMMIT;")
            .output()
            .expect("mariadb");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        t.elapsed()
    });
    // binlogged (the GTID is in gtid_binlog_pos), not visible
    let start = Instant::now();
    while m.sql("SELECT @@gtid_binlog_pos").trim() == before.trim() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the transaction was not binlogged"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(m.sql("SELECT v FROM shop.t WHERE id = 50").trim(), "old");
    let url = m.url();
    let r = spawn_binlake(&[
        "replicate",
        "--source",
        &url,
        "--tables",
        "shop.*",
        "--target",
        &target,
        "--max-latency",
        "200ms",
    ]);
    let took = held.join().unwrap();
    assert!(
        took >= Duration::from_secs(4),
        "the commit was not held ({took:?})"
    );
    m.sql("SET GLOBAL rpl_semi_sync_master_enabled = OFF;");
    wait_equal(&m, &target, "shop.t", &[], Duration::from_secs(60));
    let want = m.sql("SELECT CONCAT(COUNT(*), '/', SUM(x)) FROM shop.nokey");
    assert_eq!(want.trim(), "11/66");
    wait_duck_rows(&target, "11/66");
    let out = terminate(r, Duration::from_secs(60));
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    // the stream started past the held transaction: only the snapshots could bring it over
    assert!(
        log.contains(&format!("0-1-{}", seq + 1)) && log.contains("no checkpoint in the target"),
        "{log}"
    );
}

fn wait_duck_rows(target: &str, want: &str) {
    let start = Instant::now();
    loop {
        let got = std::panic::catch_unwind(|| nokey_rows(target)).unwrap_or_default();
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "shop.nokey in the target: {got}, at the source {want}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
