//! Tables without a primary key read again while the stream runs, in every sink: a keyless table
//! renamed into the filter, then backfilled whole while rows keep coming, backfilled again and
//! killed with -9 right after, then (Parquet and ClickHouse) truncated. Each read replaces what the target held below the read's point and
//! keeps the stream's later changes: the changelog counts exactly the source's rows (a row twice,
//! or a row missing, fails; an UPDATE is the old row deleted and the new one), and nothing is
//! stopped.

use std::time::{Duration, Instant};

use crate::conformance::{Kind, Target};
use crate::harness::*;

/// Waits until the target's changelog of `cf.k` counts what the source holds; on a timeout,
/// stops `r` and fails with its log.
fn wait_keyless(t: &Target, m: &Maria, what: &str, r: Running) -> Running {
    let want = m
        .sql("SELECT COUNT(*), COALESCE(SUM(v), 0) FROM cf.k")
        .trim()
        .replace('\t', " ");
    let start = Instant::now();
    loop {
        let got = t.keyless("cf", "k", "v");
        if got == want {
            return r;
        }
        if start.elapsed() > Duration::from_secs(90) {
            let out = terminate(r, Duration::from_secs(60));
            panic!(
                "{:?}: {what}: the keyless table counts {got} in the target, {want} at the source; binlake's log:\n{}",
                t.kind,
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn keyless_read_again(kind: Kind) {
    let dir = TestDir::new(&format!("kl_{kind:?}").to_lowercase());
    let t = Target::new(kind, &dir, "klagain");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql("CREATE DATABASE cf; CREATE DATABASE other; CREATE TABLE cf.a (id INT PRIMARY KEY); INSERT INTO cf.a VALUES (1);");
    m.sql("CREATE TABLE other.k (id INT NOT NULL, v INT); INSERT INTO other.k VALUES (1, 10), (2, 20), (2, 20);");
    let control = format!("127.0.0.1:{}", crate::observe::free_port());
    let url = m.url();
    let mut args = replicate_args(
        &url,
        &t.target,
        "cf.*",
        &["--control-addr", &control, "--max-latency", "100ms"],
    );
    args.extend(t.sink_args());
    let r = spawn_binlake(&args);
    crate::snapshot::wait_equal(&m, &t.target, "cf.a", &t.reader(), Duration::from_secs(60));
    // renamed into the filter, with changes right behind: read whole, placed among them
    m.sql("RENAME TABLE other.k TO cf.k; INSERT INTO cf.k VALUES (3, 30); DELETE FROM cf.k WHERE id = 1;");
    let r = wait_keyless(&t, &m, "after RENAME into the filter", r);
    // a backfill reads it again whole while rows keep coming: it replaces, never doubles
    m.sql("INSERT INTO cf.k VALUES (4, 40);");
    let out = binlake(
        &["backfill", "--control", &control, "--tables", "cf.k"],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    m.sql("INSERT INTO cf.k VALUES (5, 50), (2, 20); DELETE FROM cf.k WHERE id = 3; UPDATE cf.k SET v = 55 WHERE id = 5;");
    let r = wait_keyless(&t, &m, "after a backfill", r);
    // killed with -9 right after a backfill is queued (the read may be in flight, or its rows
    // written and not checkpointed): the restart reads it again, and that read replaces it
    let out = binlake(
        &["backfill", "--control", &control, "--tables", "cf.k"],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    m.sql("INSERT INTO cf.k VALUES (7, 70);");
    let mut r = r;
    r.kill().expect("kill -9");
    let _ = r.wait_with_output();
    m.sql("INSERT INTO cf.k VALUES (8, 80);");
    let r = spawn_binlake(&args);
    let r = wait_keyless(&t, &m, "after kill -9 during a backfill", r);
    // TRUNCATE: the changelog counts nothing before it (Delta removes the older rows of a
    // table it created keyless; marking them deleted would subtract them)
    m.sql("TRUNCATE TABLE cf.k; INSERT INTO cf.k VALUES (6, 60);");
    let r = wait_keyless(&t, &m, "after TRUNCATE", r);
    let out = terminate(r, Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    t.assert_nothing_stopped();
}

#[test]
fn parquet_keyless_read_again() {
    keyless_read_again(Kind::Parquet);
}

#[cfg(feature = "delta")]
#[test]
fn delta_keyless_read_again() {
    keyless_read_again(Kind::Delta);
}

#[cfg(feature = "clickhouse")]
#[test]
fn clickhouse_keyless_read_again() {
    keyless_read_again(Kind::ClickHouse);
}
