//! Parquet lake compaction: inside `replicate` (`maintain_every`) beside a stream of inserts,
//! updates and deletes, the process aborted in the middle of a compaction (after its merged
//! files, then after its log entry) and restarted; `binlake maintain --sink parquet` on the
//! stopped lake, and refused while a `replicate` holds it. On local disk and on S3 (moto). Each
//! ends with the replica equal to the source (pyarrow, and the documented DuckDB current-state
//! query), a few files and a short commit log after many commits, and no (key, version) twice
//! once the replaced files are deleted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;

/// Waits for a process that a failpoint aborts; returns its stderr.
fn wait_abort(mut child: Running, within: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let log = stderr(&out);
            assert!(!status.success(), "expected an abort:\n{log}");
            return log;
        }
        if start.elapsed() > within {
            child.kill().ok();
            let out = child.wait_with_output().unwrap();
            panic!("the failpoint was not reached:\n{}", stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The whole scenario against `target` (with `env`); `local` gives a local copy of the lake to
/// read (the target itself, or a download of the bucket).
fn compaction_beside_a_stream(
    m: &Maria,
    target: &str,
    env: &[(&str, &str)],
    local: &dyn Fn() -> String,
) {
    m.sql("CREATE DATABASE cf; CREATE TABLE cf.t (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(40) NOT NULL);");
    m.sql("INSERT INTO cf.t (name) SELECT CONCAT('u', seq) FROM cf.seq_1_to_1500;");
    let url = m.url();
    let args = replicate_args(
        &url,
        target,
        "cf.*",
        &[
            "--max-latency",
            "50ms",
            "--maintain-every",
            "1s",
            "--target-file-size",
            "1MiB",
            "--vacuum-retention",
            "0s",
            "--version-retention",
            "0s",
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(m.port, "cf.t", stop.clone());
    // killed after the second compaction wrote its merged files, before its log entry
    let mut e: Vec<(&str, &str)> = env.to_vec();
    e.extend([
        ("BINLAKE_FAILPOINT", "compact-after-files"),
        ("BINLAKE_FAILPOINT_AT", "2"),
    ]);
    let log = wait_abort(spawn_binlake_env(&args, &e), Duration::from_secs(60));
    assert!(log.contains("failpoint compact-after-files"), "{log}");
    // ... then after a log entry, before the replaced files are deleted
    let mut e: Vec<(&str, &str)> = env.to_vec();
    e.push(("BINLAKE_FAILPOINT", "compact-after-log"));
    let log = wait_abort(spawn_binlake_env(&args, &e), Duration::from_secs(60));
    assert!(log.contains("failpoint compact-after-log"), "{log}");
    // then a run that compacts as it goes
    let r = spawn_binlake_env(&args, env);
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let writes = w.join().unwrap();
    assert!(writes > 20, "the writer ran {writes} transactions");
    std::thread::sleep(Duration::from_secs(3));
    let out = terminate(r, Duration::from_secs(60));
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("parquet files compacted"), "{log}");
    let commits: u64 = log
        .rsplit_once(" commits=")
        .and_then(|(_, r)| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    // `maintain` refuses while a replicate holds the lake, then compacts the stopped lake
    let holder = spawn_binlake_env(&args, env);
    std::thread::sleep(Duration::from_secs(2));
    let maintain = |extra: &[&str]| {
        let mut a = vec![
            "maintain",
            "--sink",
            "parquet",
            "--target",
            target,
            "--target-file-size",
            "1MiB",
            "--vacuum-retention",
            "0s",
        ];
        a.extend_from_slice(extra);
        binlake_env(&a, env, Duration::from_secs(120))
    };
    let refused = maintain(&[]);
    assert!(
        !refused.status.success() && stderr(&refused).contains("one writer"),
        "{}",
        stderr(&refused)
    );
    let out = terminate(holder, Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    let done = maintain(&["--tables", "cf.*"]);
    assert!(done.status.success(), "{}", stderr(&done));
    let text = String::from_utf8_lossy(&done.stdout).to_string();
    assert!(text.contains("table(s) compacted"), "{text}");

    let lake = local();
    assert_replica_equal(m, &lake, "cf.t", &[]);
    assert_replica_equal(m, &lake, "cf.t", &["--reader", "duckdb"]);
    let files = std::fs::read_dir(format!("{lake}/cf/t")).unwrap().count();
    let entries = std::fs::read_dir(format!("{lake}/_binlake/default/log"))
        .unwrap()
        .count();
    eprintln!("{files} data files of cf.t and {entries} log entries after {commits} commits of the last run");
    assert!(
        commits > 20 && files <= 3,
        "{files} data files after {commits} commits: not compacted"
    );
    // the entries before the newest compaction are gone: the log stays short
    assert!(entries < commits as usize, "{entries} log entries");
    let twice = duck(&format!(
        "SELECT count(*) - count(DISTINCT (id, _binlake_version)) FROM read_parquet('{lake}/cf/t/*.parquet')"
    ));
    assert_eq!(twice, "0", "a (key, version) appears twice");
}

#[test]
fn parquet_compaction_beside_a_stream() {
    let dir = TestDir::new("compact");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    let target = dir.path("lake");
    let t = target.clone();
    compaction_beside_a_stream(&m, &target, &[], &move || t.clone());
}

#[test]
fn parquet_compaction_on_s3() {
    let dir = TestDir::new("compact_s3");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    let moto = Moto::start(&dir.0.join("moto"), "lake");
    let env = moto.env();
    let local = dir.path("download");
    let download = || {
        moto.download("lake", "prefix", &local);
        local.clone()
    };
    compaction_beside_a_stream(&m, "s3://lake/prefix", &env, &download);
}
