//! High availability against a real topology: a MariaDB primary and two GTID replicas (three
//! local `mariadbd`, `log_slave_updates`, strict GTID mode). binlake reads the replicas while a
//! workload writes to the primary; the server binlake reads is killed with SIGKILL, binlake
//! itself is killed, a replica is left lagging behind; the replica must end equal to the primary
//! with no change lost, and no change applied twice (no two rows with the same key and version in
//! the Parquet files, which keep every change).

use std::time::{Duration, Instant};

use crate::harness::*;
use crate::snapshot::{start_workload_keys, stop_workload};

const HA_FLAGS: &[&str] = &["--log-slave-updates", "--gtid-strict-mode=1"];

pub struct Topology {
    pub primary: Maria,
    pub r1: Maria,
    pub r2: Maria,
}

/// Starts a primary and two replicas of it, and `shop.big` (20,000 rows) on the primary.
pub fn topology(dir: &TestDir) -> Topology {
    let primary = Maria::start(&dir.0.join("p"), 1, HA_FLAGS);
    let r1 = Maria::start(&dir.0.join("r1"), 2, HA_FLAGS);
    let r2 = Maria::start(&dir.0.join("r2"), 3, HA_FLAGS);
    for r in [&r1, &r2] {
        replicate_from(r, &primary);
    }
    primary.sql(
        "CREATE DATABASE shop; USE shop;
         CREATE TABLE shop.big (id BIGINT PRIMARY KEY, k INT NOT NULL, c VARCHAR(120) NOT NULL,
           pad CHAR(60) NOT NULL DEFAULT 'pad');
         INSERT INTO shop.big (id, k, c) SELECT seq, seq % 1000, CONCAT('row-', seq)
           FROM seq_1_to_20000;",
    );
    let t = Topology { primary, r1, r2 };
    t.wait_replicas(&[&t.r1, &t.r2]);
    t
}

/// Makes `r` a GTID replica of `primary`, from its start.
fn replicate_from(r: &Maria, primary: &Maria) {
    // the replica's own setup statements would collide with the primary's GTIDs
    r.sql(&format!(
        "RESET MASTER; SET GLOBAL gtid_slave_pos = '';
         CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, MASTER_USER = 'root',
           MASTER_USE_GTID = slave_pos;
         START SLAVE;",
        primary.port
    ));
}

impl Topology {
    /// Waits until the replicas have applied everything the primary has.
    pub fn wait_replicas(&self, replicas: &[&Maria]) {
        for r in replicas {
            wait_caught_up(&self.primary, r);
        }
    }
}

/// Waits until `replica` has applied everything `primary` has.
fn wait_caught_up(primary: &Maria, replica: &Maria) {
    let want = primary.sql("SELECT @@gtid_binlog_pos").trim().to_string();
    let start = Instant::now();
    loop {
        let have = replica.sql("SELECT @@gtid_binlog_pos").trim().to_string();
        if have == want {
            return;
        }
        let status = replica.sql("SHOW SLAVE STATUS\\G");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "replica at {have}, primary at {want}:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// No key has two rows with the same version: no change was applied twice.
fn assert_no_change_twice(target: &str) {
    let dup = duck(&format!(
        "SELECT count(*) FROM (SELECT id, _binlake_version FROM read_parquet('{target}/shop/big/**/*.parquet') GROUP BY ALL HAVING count(*) > 1)"
    ));
    assert_eq!(dup, "0", "changes applied twice");
}

fn ha_args<'a>(t: &'a [String; 3], mode: &'a str, target: &'a str) -> Vec<&'a str> {
    vec![
        "replicate",
        "--source",
        &t[0],
        "--source",
        &t[1],
        "--source",
        &t[2],
        "--mode",
        mode,
        "--tables",
        "shop.*",
        "--target",
        target,
        "--max-latency",
        "300ms",
        "--heartbeat",
        "200ms",
    ]
}

/// Waits until the Parquet replica holds the change (id, k) made on the primary.
fn wait_marker(target: &str, id: i64, k: i64, timeout: Duration) {
    wait_duck(
        &format!(
            "SELECT max(k) FROM read_parquet('{target}/shop/big/**/*.parquet') WHERE id = {id}"
        ),
        &k.to_string(),
        timeout,
    );
}

/// The scenario both modes share, under a workload on the primary: binlake reads [r1, r2,
/// primary]; `before_kill` runs, r1 is killed with SIGKILL, then binlake itself, and binlake is
/// started again. Each step is followed by a marker change that must arrive; at the end the replica
/// must equal the primary with no change applied twice. Returns the logs and the target.
fn kill_the_reader_then_binlake(
    dir: &TestDir,
    t: &Topology,
    mode: &str,
    seed: u64,
    before_kill: impl Fn(),
    after_kill: Duration,
) -> (String, String) {
    let urls = [t.r1.url(), t.r2.url(), t.primary.url()];
    let target = dir.path("lake");
    let stop = dir.path("stop");
    let w = start_workload_keys(&t.primary, &stop, 600, seed, 20_000);
    let args = ha_args(&urls, mode, &target);
    let marker = |k: i64| {
        t.primary.sql(&format!(
            "INSERT INTO shop.big (id, k, c) VALUES (-99999999, {k}, 'marker') ON DUPLICATE KEY UPDATE k = {k}"
        ));
        wait_marker(&target, -99999999, k, Duration::from_secs(60));
    };
    let mut logs = String::new();
    let mut r = spawn_binlake(&args);
    marker(1);
    before_kill();
    std::thread::sleep(Duration::from_secs(2));
    t.r1.kill();
    std::thread::sleep(after_kill);
    marker(2);
    r.kill().unwrap();
    logs.push_str(&stderr(&r.wait_with_output().unwrap()));
    let r = spawn_binlake(&args);
    marker(3);
    let txns = stop_workload(w, &stop);
    assert!(txns > 20, "the workload barely ran ({txns} transactions)");
    wait_equal_to(&t.primary, &target, Duration::from_secs(120));
    let out = terminate(r, Duration::from_secs(60));
    logs.push_str(&stderr(&out));
    assert!(out.status.success(), "binlake failed:\n{logs}");
    assert_no_change_twice(&target);
    (logs, target)
}

/// The server ids changes were read from (`via=` of `_binlake_source`), stream changes only.
fn read_from(target: &str) -> String {
    duck(&format!(
        "SELECT string_agg(DISTINCT v, ',' ORDER BY v) FROM (SELECT regexp_extract(_binlake_source, 'via=([0-9]+)', 1) AS v FROM read_parquet('{target}/shop/big/**/*.parquet') WHERE _binlake_op <> 'snapshot')"
    ))
}

#[test]
fn failover_skips_a_lagging_replica_and_loses_nothing() {
    let dir = TestDir::new("ha_failover");
    let t = topology(&dir);
    // r2 stops replicating before r1 dies: it falls behind and must not be chosen, neither at
    // the failover nor when binlake restarts
    let (logs, target) = kill_the_reader_then_binlake(
        &dir,
        &t,
        "failover",
        21,
        || {
            t.r2.sql("STOP SLAVE");
        },
        Duration::ZERO,
    );
    assert!(logs.contains("failing over"), "{logs}");
    assert!(
        logs.contains("behind") && logs.contains(&format!("127.0.0.1:{}", t.r2.port)),
        "the lagging replica was not reported as behind:\n{logs}"
    );
    // r1 (server 2) until it died, then the primary (server 1): never the lagging r2 (server 3)
    assert_eq!(read_from(&target), "1,2", "servers read from");
    t.r2.sql("START SLAVE");
}

#[test]
fn active_active_survives_a_dead_server_without_gaps_or_doubles() {
    let dir = TestDir::new("ha_aa");
    let t = topology(&dir);
    // after r1 dies, long enough for its reader to give up (two reconnects): the pipeline then
    // follows another server's positions
    let (logs, target) =
        kill_the_reader_then_binlake(&dir, &t, "active-active", 22, || {}, Duration::from_secs(6));
    assert!(logs.contains("source lost"), "{logs}");
    let servers = read_from(&target);
    assert!(
        servers.contains(','),
        "changes taken from one server only: {servers}"
    );
}

#[test]
fn several_sources_without_gtid_positions_are_refused() {
    let dir = TestDir::new("ha_nogtid");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    let target = dir.path("lake");
    let url = m.url();
    let out = binlake(
        &[
            "replicate",
            "--source",
            &url,
            "--source",
            &url,
            "--tables",
            "shop.*",
            "--target",
            &target,
            "--start-at",
            "binlog.000001:4",
            "--exit-when-caught-up",
        ],
        Duration::from_secs(60),
    );
    let e = stderr(&out);
    assert!(!out.status.success(), "{e}");
    assert!(e.contains("GTID"), "{e}");
}

/// Polls the comparison against the primary until equal.
fn wait_equal_to(m: &Maria, target: &str, timeout: Duration) {
    if let Err(last) = wait_until_equal(m, target, "shop.big", timeout) {
        panic!("replica differs from the primary:\n{last}");
    }
}

/// Active-active with two GTID domains that a replica applies in another order than the
/// primary wrote them (parallel replication applies domains independently; a row lock held on
/// the replica holds domain 2 back). binlake takes domain 2's update from the primary first,
/// while the handoff follows the replica's binlog; a backfill queued then must not read the
/// row before the replica has that update, or its older value (versioned above the update)
/// would win for good: the lost update of issue 21's "known gap".
#[test]
fn active_active_backfill_waits_for_a_domain_the_snapshot_server_lacks() {
    let dir = TestDir::new("ha_domains");
    let primary = Maria::start(&dir.0.join("p"), 1, HA_FLAGS);
    let r = Maria::start(
        &dir.0.join("r"),
        2,
        &[
            "--log-slave-updates",
            "--gtid-strict-mode=1",
            "--slave-parallel-threads=4",
        ],
    );
    replicate_from(&r, &primary);
    primary.sql(
        "CREATE DATABASE shop; USE shop;
         CREATE TABLE shop.t1 (id INT PRIMARY KEY, v VARCHAR(20) NOT NULL);
         CREATE TABLE shop.t2 (id INT PRIMARY KEY, v VARCHAR(20) NOT NULL);
         INSERT INTO shop.t1 SELECT seq, 'old' FROM seq_1_to_100;
         INSERT INTO shop.t2 SELECT seq, 'old' FROM seq_1_to_100;",
    );
    wait_caught_up(&primary, &r);
    let target = dir.path("lake");
    let control = format!("127.0.0.1:{}", crate::observe::free_port());
    let (ru, pu) = (r.url(), primary.url());
    let args = [
        "replicate",
        "--source",
        &ru,
        "--source",
        &pu,
        "--mode",
        "active-active",
        "--tables",
        "shop.*",
        "--target",
        &target,
        "--max-latency",
        "300ms",
        "--heartbeat",
        "200ms",
        "--control-addr",
        &control,
    ];
    let run = spawn_binlake(&args);
    for table in ["shop.t1", "shop.t2"] {
        if let Err(last) = wait_until_equal(&primary, &target, table, Duration::from_secs(60)) {
            panic!("initial snapshot of {table}:\n{last}");
        }
    }
    // the replica's row lock holds domain 2's update of row 1 back for 10 s
    let lock = std::process::Command::new("mariadb")
        .args(["--no-defaults", "-h127.0.0.1", "-uroot", "-N", "-B"])
        .arg(format!("-P{}", r.port))
        .arg("-e")
        .arg("BEGIN; SELECT id FROM shop.t2 WHERE id = 1 FOR UPDATE; DO SLEEP(10); ROLLBACK;")
        .spawn()
        .expect("run mariadb client");
    std::thread::sleep(Duration::from_secs(1));
    primary.sql(
        "SET SESSION gtid_domain_id = 2; UPDATE shop.t2 SET v = 'new' WHERE id = 1;
         SET SESSION gtid_domain_id = 1; UPDATE shop.t1 SET v = 'new' WHERE id = 1;",
    );
    // the replica applies domain 1 and not domain 2; binlake takes both from the primary
    let start = Instant::now();
    loop {
        let pos = r.sql("SELECT @@gtid_binlog_pos");
        if pos.contains("1-1-") {
            assert!(!pos.contains("2-1-"), "domain 2 was not held back: {pos}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "replica at {pos}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_duck(
        &format!(
            "SELECT max(v) FROM read_parquet('{target}/shop/t2/**/*.parquet') WHERE id = 1 AND _binlake_op <> 'snapshot'"
        ),
        "new",
        Duration::from_secs(30),
    );
    let out = binlake(
        &["backfill", "--control", &control, "--tables", "shop.t2"],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut lock = lock;
    lock.wait().expect("the lock session");
    if let Err(last) = wait_until_equal(&primary, &target, "shop.t2", Duration::from_secs(60)) {
        let out = terminate(run, Duration::from_secs(30));
        panic!(
            "replica differs after the backfill:\n{last}\n{}",
            stderr(&out)
        );
    }
    let out = terminate(run, Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
}
