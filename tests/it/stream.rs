//! A running `replicate`: the time bound, graceful stop, a source that dies and comes back,
//! and `status` reading the checkpoint from the target.

use std::time::Duration;

use crate::harness::*;

/// One row and a huge batch size: the row must still reach the lake while binlake runs, because
/// a partial buffer is committed after `max_latency`, not when it is full. SIGTERM then commits
/// and exits 0.
#[test]
fn partial_buffer_is_committed_by_the_time_bound_and_sigterm_is_graceful() {
    let dir = TestDir::new("latency");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql("CREATE DATABASE l; CREATE TABLE l.t (id INT PRIMARY KEY, v VARCHAR(10));");
    let target = dir.path("lake");
    let child = spawn_replicate(
        &m,
        &target,
        "l.*",
        &[
            "--max-latency",
            "300ms",
            "--max-batch-rows",
            "1000000",
            "--max-batch-bytes",
            "1GiB",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    m.sql("INSERT INTO l.t VALUES (1, 'one');");
    let waited = wait_until_equal(&m, &target, "l.t", Duration::from_secs(20))
        .expect("the single row never reached the lake while binlake ran");
    eprintln!("one row visible after {waited:?} (max_latency 300ms)");
    // A change committed right before SIGTERM is in the lake after the graceful exit.
    m.sql("INSERT INTO l.t VALUES (2, 'two'); UPDATE l.t SET v = 'uno' WHERE id = 1;");
    std::thread::sleep(Duration::from_millis(100));
    let out = terminate(child, Duration::from_secs(20));
    assert_eq!(
        out.status.code(),
        Some(0),
        "SIGTERM must exit 0:\n{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("stop requested"), "{}", stderr(&out));
    // whatever the timing, the restart picks up anything the stop did not include
    catch_up(&m, &target, "l.*", &[]);
    assert_replica_equal(&m, &target, "l.t", &[]);

    let st = binlake(&["status", "--target", &target], Duration::from_secs(20));
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(
        st.status.success() && text.contains("position: mariadb-gtid:0-1-") && text.contains("l.t"),
        "{text}"
    );
}

/// The source server is killed (-9) in the middle of a workload and restarted on the same port:
/// binlake reconnects with backoff and resumes after the last transaction it received, losing
/// and doubling nothing.
#[test]
fn source_crash_reconnects_and_resumes_without_loss() {
    let dir = TestDir::new("srcrestart");
    let dbdir = dir.0.join("db");
    let m = Maria::start(&dbdir, 1, &[]);
    m.sql("CREATE DATABASE r; CREATE TABLE r.t (id INT PRIMARY KEY, n INT NOT NULL);");
    let target = dir.path("lake");
    let child = spawn_replicate(
        &m,
        &target,
        "r.*",
        &["--max-latency", "200ms", "--heartbeat", "500ms"],
    );
    for i in 0..20 {
        m.sql(&format!(
            "INSERT INTO r.t VALUES ({i}, {i}); UPDATE r.t SET n = n + 1 WHERE id = {};",
            i / 2
        ));
    }
    m.kill();
    std::thread::sleep(Duration::from_secs(2));
    let port = m.port;
    let m2 = Maria::start_on(&dbdir, 1, Some(port), &[]);
    for i in 20..40 {
        m2.sql(&format!(
            "INSERT INTO r.t VALUES ({i}, {i}); DELETE FROM r.t WHERE id = {};",
            i - 15
        ));
    }
    let waited = wait_until_equal(&m2, &target, "r.t", Duration::from_secs(90));
    let out = terminate(child, Duration::from_secs(20));
    let err = stderr(&out);
    waited.unwrap_or_else(|last| {
        panic!("replica never caught up after the source restart:\n{last}\nbinlake:\n{err}")
    });
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("reconnecting"),
        "expected a reconnect in the log:\n{err}"
    );
    let dup = duck(&format!("SELECT count(*) FROM (SELECT id, _binlake_version FROM read_parquet('{target}/r/t/*.parquet') GROUP BY ALL HAVING count(*) > 1)"));
    assert_eq!(dup, "0");
    std::mem::forget(m); // m2 owns the same datadir; stop it once
}

/// Two processes of one pipeline must not share a target: the second fails at once with an error
/// naming the holder, and the first goes on unharmed. Other pipelines may share the target.
#[test]
fn a_second_writer_is_refused_and_other_pipelines_coexist() {
    let dir = TestDir::new("twowriters");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql("CREATE DATABASE w; CREATE TABLE w.t (id INT PRIMARY KEY, v INT); CREATE TABLE w.u (id INT PRIMARY KEY); INSERT INTO w.t VALUES (1, 1); INSERT INTO w.u VALUES (1);");
    let target = dir.path("lake");
    let url = m.url();
    let first = spawn_replicate(&m, &target, "w.t", &["--max-latency", "200ms"]);
    wait_until_equal(&m, &target, "w.t", Duration::from_secs(30)).expect("first writer works");
    let second = binlake(
        &[
            "replicate",
            "--source",
            &url,
            "--tables",
            "w.t",
            "--target",
            &target,
            "--exit-when-caught-up",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("is held by"),
        "{}",
        stderr(&second)
    );
    // another pipeline in the same target: its own commit log, files and lease
    catch_up(&m, &target, "w.u", &["--pipeline", "other"]);
    assert_replica_equal(&m, &target, "w.u", &[]);
    m.sql("UPDATE w.t SET v = 2 WHERE id = 1; INSERT INTO w.t VALUES (2, 2);");
    wait_until_equal(&m, &target, "w.t", Duration::from_secs(30)).expect("first writer unharmed");
    let out = terminate(first, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
