//! Snapshots against real MariaDB: a 1,000,000-row table snapshotted (the default start) while
//! a workload changes it (inserts, updates, deletes, key changes), into every sink; kill -9
//! during a snapshot, three times, then the failpoint between a commit's data and checkpoint.
//! Each ends with the replica equal to the source, value by value.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// `shop.big` with `rows` rows (sysbench-like columns plus a decimal and a time), and a small
/// `shop.small` that only the stream fills.
pub fn big_table(m: &Maria, rows: u64) {
    m.sql(&format!(
        "CREATE DATABASE shop; USE shop;
         CREATE TABLE shop.big (id BIGINT PRIMARY KEY, k INT NOT NULL, c VARCHAR(120) NOT NULL,
           pad CHAR(60) NOT NULL DEFAULT 'pad', d DECIMAL(12,2), ts DATETIME(6));
         INSERT INTO shop.big (id, k, c, d, ts) SELECT seq, seq % 1000, CONCAT('row-', seq),
           seq / 100, '2024-01-01' + INTERVAL seq SECOND FROM seq_1_to_{rows};
         CREATE TABLE shop.small (id INT PRIMARY KEY, v VARCHAR(20));
         INSERT INTO shop.small VALUES (1, 'before');"
    ));
}

/// Starts `workload.py` on `shop.big` until `stop` exists (or `secs`).
pub fn start_workload(m: &Maria, stop: &str, secs: u64, seed: u64) -> Child {
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
pub fn snapshot_under_writes(name: &str, sink_args: &[&str], target: &str, reader: &[&str]) {
    let dir = TestDir::new(name);
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    big_table(&m, 1_000_000);
    let stop = dir.path("stop");
    let w = start_workload(&m, &stop, 900, 7);
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
    eprintln!("{name}: snapshot of 1,000,000 rows done in {took:?} while the workload committed {txns} transactions");
    assert!(txns > 20, "the workload barely ran ({txns} transactions)");
    m.sql("UPDATE shop.small SET v = 'after' WHERE id = 1;");
    wait_equal(&m, target, "shop.big", reader, Duration::from_secs(300));
    wait_equal(&m, target, "shop.small", reader, Duration::from_secs(60));
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
    let dir = TestDir::new("snap_pq_target");
    let target = dir.path("lake");
    snapshot_under_writes("snap_pq", &["--target", &target], &target, &[]);
}

#[cfg(feature = "delta")]
#[test]
fn snapshot_of_a_million_rows_under_writes_delta() {
    let dir = TestDir::new("snap_delta_target");
    let target = dir.path("lake");
    snapshot_under_writes(
        "snap_delta",
        &["--sink", "delta", "--target", &target],
        &target,
        &["--reader", "delta"],
    );
}

#[cfg(feature = "clickhouse")]
#[test]
fn snapshot_of_a_million_rows_under_writes_clickhouse() {
    let dir = TestDir::new("snap_ch_server");
    let ch = ClickHouse::start(&dir.0.join("ch"), "snap");
    snapshot_under_writes("snap_ch", &ch.args(), &ch.url, &ch.reader());
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
    let out = binlake_env(
        &args,
        &[
            ("BINLAKE_FAILPOINT", "after-data"),
            ("BINLAKE_FAILPOINT_AT", "2"),
        ],
        Duration::from_secs(120),
    );
    assert!(!out.status.success(), "the failpoint did not fire");
    let r = spawn_binlake(&args);
    wait_loaded(&["--target", &target], "shop.big", Duration::from_secs(300));
    let txns = stop_workload(w, &stop);
    assert!(txns > 20, "the workload barely ran ({txns} transactions)");
    wait_equal(&m, &target, "shop.big", &[], Duration::from_secs(120));
    wait_equal(&m, &target, "shop.small", &[], Duration::from_secs(60));
    let out = terminate(r, Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
}
