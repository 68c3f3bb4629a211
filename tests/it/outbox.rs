//! The outbox, in every sink: an app-like workload (each transaction updates an order and
//! inserts an outbox event; some delete the event in the same transaction, some update it, some
//! roll back) across 20 aggregates, with binlake killed with -9 in the middle, writes while it
//! is down, and a restart that dies between a commit's data and its checkpoint. The event table holds every committed event exactly once and no rolled-back one,
//! `_binlake_seq` numbers each aggregate's events 1, 2, 3, ... in commit order (after the
//! restart too), rows in the outbox before binlake started are not events, and the outbox table
//! itself is not replicated (only `shop.orders` is selected). The same in active-active over a
//! primary and two replicas; and delivery to a flaky HTTP receiver (at least once, per aggregate
//! in order).

use std::time::{Duration, Instant};

use crate::conformance::{Kind, Target};
use crate::harness::*;

/// One round of the workload: its SQL, and the events it commits as `(id, aggregate)` in commit
/// order.
fn round(r: usize) -> (String, Vec<(String, String)>) {
    let mut sql = String::new();
    let mut events = Vec::new();
    for i in 0..120 {
        let agg = (i * 7 + r) % 20 + 1;
        let id = format!("r{r}-e{i:04}");
        sql += &format!("BEGIN; UPDATE shop.orders SET n = n + 1, status = 'v{i}' WHERE id = {agg}; INSERT INTO shop.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ('{id}', 'order', '{agg}', 'OrderUpdated', '{{\"i\": {i}}}');");
        match i % 10 {
            6 | 7 => sql += &format!(" DELETE FROM shop.outbox WHERE id = '{id}';"),
            9 => sql += &format!(" UPDATE shop.outbox SET type = 'Changed' WHERE id = '{id}';"),
            _ => {}
        }
        if i % 10 == 8 {
            sql += " ROLLBACK;\n";
        } else {
            sql += " COMMIT;\n";
            events.push((id, agg.to_string()));
        }
    }
    (sql, events)
}

/// `id:aggregate:seq` of every event the target's event table holds, sorted by id.
fn events_in(t: &Target) -> String {
    let row = "id || ':' || aggregateid || ':' || CAST(_binlake_seq AS VARCHAR)";
    let agg = format!("coalesce(string_agg({row}, ',' ORDER BY id), '')");
    match t.kind {
        Kind::Parquet => duck(&format!(
            "SELECT {agg} FROM (SELECT *, row_number() OVER (PARTITION BY id ORDER BY _binlake_version DESC) AS rn FROM read_parquet('{}/shop/outbox_events/*.parquet', union_by_name = true)) WHERE rn = 1 AND NOT _binlake_deleted",
            t.target
        )),
        #[cfg(feature = "delta")]
        Kind::Delta => delta_q(
            &format!("{}/shop/outbox_events", t.target),
            &format!("SELECT {agg} FROM t WHERE NOT _binlake_deleted"),
        ),
        #[cfg(feature = "clickhouse")]
        Kind::ClickHouse => {
            let ch = t.ch.as_ref().expect("started");
            ch.q(&format!(
                "SELECT arrayStringConcat(arraySort(groupArray(concat(id, ':', aggregateid, ':', toString(_binlake_seq)))), ',') FROM {}shop.outbox_events_current",
                ch.prefix
            ))
        }
    }
}

const OUTBOX_DDL: &str = "CREATE TABLE shop.orders (id INT PRIMARY KEY, status VARCHAR(20), n INT); CREATE TABLE shop.outbox (id VARCHAR(36) PRIMARY KEY, aggregatetype VARCHAR(255) NOT NULL, aggregateid VARCHAR(255) NOT NULL, type VARCHAR(255) NOT NULL, payload LONGTEXT, created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)); INSERT INTO shop.orders SELECT seq, 'new', 0 FROM shop.seq_1_to_20;";

/// `id:aggregate:seq` of `events` (in commit order) numbered per aggregate, sorted by id.
fn numbered(events: &[(String, String)]) -> String {
    let mut seq = std::collections::HashMap::new();
    let mut want: Vec<String> = events
        .iter()
        .map(|(id, agg)| {
            let s = seq.entry(agg.clone()).or_insert(0);
            *s += 1;
            format!("{id}:{agg}:{s}")
        })
        .collect();
    want.sort();
    want.join(",")
}

/// Polls the event table until it reads `want` (or 90 s pass); what it read last.
fn wait_events(t: &Target, want: &str) -> String {
    let start = Instant::now();
    loop {
        let got = events_in(t);
        if got == want || start.elapsed() > Duration::from_secs(90) {
            return got;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Panics with the events missing and unexpected.
fn assert_events(what: &str, got: &str, want: &str, log: &str) {
    if got != want {
        let g: std::collections::BTreeSet<&str> = got.split(',').collect();
        let w: std::collections::BTreeSet<&str> = want.split(',').collect();
        panic!(
            "{what}: the event table differs: {} expected events, {} read\nmissing or other: {:?}\nunexpected: {:?}\n{log}",
            w.len(),
            g.len(),
            w.difference(&g).take(10).collect::<Vec<_>>(),
            g.difference(&w).take(10).collect::<Vec<_>>(),
        );
    }
}

/// `replicate` of `shop.orders` from a snapshot (the default: rows already in the outbox are not
/// new messages) with the outbox `shop.outbox`, then `extra`.
fn outbox_args<'a>(url: &'a str, target: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "replicate",
        "--source",
        url,
        "--tables",
        "shop.orders",
        "--target",
        target,
        "--outbox",
        "shop.outbox",
        "--max-latency",
        "100ms",
    ];
    args.extend_from_slice(extra);
    args
}

fn outbox_events(kind: Kind) {
    let dir = TestDir::new(&format!("outbox_{kind:?}").to_lowercase());
    let t = Target::new(kind, &dir, "outbox");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql(&format!("CREATE DATABASE shop; {OUTBOX_DDL}"));
    m.sql("INSERT INTO shop.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ('before', 'order', '1', 'Old', '{}');");
    let url = m.url();
    let mut args = outbox_args(&url, &t.target, &[]);
    args.extend(t.sink_args());
    let mut expected: Vec<(String, String)> = Vec::new();
    let r = spawn_binlake(&args);
    crate::snapshot::wait_equal(
        &m,
        &t.target,
        "shop.orders",
        &t.reader(),
        Duration::from_secs(60),
    );
    let (sql, ev) = round(0);
    m.sql(&sql);
    expected.extend(ev);
    std::thread::sleep(Duration::from_millis(150));
    let mut r = r;
    r.kill().expect("kill -9");
    let _ = r.wait_with_output();
    let (sql, ev) = round(1);
    m.sql(&sql);
    expected.extend(ev);
    // the restart's first commit dies between its data and its checkpoint: the target may hold
    // events past the checkpoint, which the next run replays with the same numbers
    let crashed = binlake_env(
        &args,
        &[("BINLAKE_FAILPOINT", "after-data")],
        Duration::from_secs(120),
    );
    assert!(
        !crashed.status.success() && stderr(&crashed).contains("failpoint after-data"),
        "{kind:?}: the failpoint did not fire:\n{}",
        stderr(&crashed)
    );
    let r = spawn_binlake(&args);
    let (sql, ev) = round(2);
    m.sql(&sql);
    expected.extend(ev);
    let want = numbered(&expected);
    let got = wait_events(&t, &want);
    let out = terminate(r, Duration::from_secs(60));
    assert_events(&format!("{kind:?}"), &got, &want, &stderr(&out));
    t.assert_equal(&m, "shop.orders");
    if kind == Kind::Parquet {
        assert!(
            !std::path::Path::new(&format!("{}/shop/outbox", t.target)).exists(),
            "the outbox table was replicated though `tables` does not select it"
        );
    }
    assert!(
        stderr(&out).contains("updates of outbox rows emit no event"),
        "{kind:?}: the updates of outbox rows were not logged"
    );
}

#[test]
fn parquet_outbox_events() {
    outbox_events(Kind::Parquet);
}

#[cfg(feature = "delta")]
#[test]
fn delta_outbox_events() {
    outbox_events(Kind::Delta);
}

#[cfg(feature = "clickhouse")]
#[test]
fn clickhouse_outbox_events() {
    outbox_events(Kind::ClickHouse);
}

/// Active-active over a primary and two replicas (every transaction arrives two or three times),
/// the replica binlake reads killed with SIGKILL, then binlake itself: each committed event once,
/// numbered as the primary committed them, and delivered (to a receiver failing 20%) at least
/// once, per aggregate in order.
#[test]
fn outbox_events_in_active_active_once_each() {
    let dir = TestDir::new("outbox_aa");
    let topo = crate::ha::topology(&dir);
    topo.primary.sql(OUTBOX_DDL);
    topo.wait_replicas(&[&topo.r1, &topo.r2]);
    let t = Target::new(Kind::Parquet, &dir, "outboxaa");
    let urls = [topo.r1.url(), topo.r2.url(), topo.primary.url()];
    let port = crate::observe::free_port();
    let deliveries = dir.path("deliveries.log");
    let mut rx = receiver(port, &deliveries, "0.2", "-");
    let endpoint = format!("http://127.0.0.1:{port}/events");
    let args = [
        "replicate",
        "--outbox-deliver-url",
        &endpoint,
        "--source",
        &urls[0],
        "--source",
        &urls[1],
        "--source",
        &urls[2],
        "--mode",
        "active-active",
        "--tables",
        "shop.orders",
        "--outbox",
        "shop.outbox",
        "--target",
        &t.target,
        "--max-latency",
        "200ms",
        "--heartbeat",
        "200ms",
    ];
    let mut expected = Vec::new();
    let r = spawn_binlake(&args);
    crate::snapshot::wait_equal(
        &topo.primary,
        &t.target,
        "shop.orders",
        &[],
        Duration::from_secs(90),
    );
    let (sql, ev) = round(0);
    topo.primary.sql(&sql);
    expected.extend(ev);
    assert_events(
        "after round 0",
        &wait_events(&t, &numbered(&expected)),
        &numbered(&expected),
        "",
    );
    topo.r1.kill();
    let (sql, ev) = round(1);
    topo.primary.sql(&sql);
    expected.extend(ev);
    std::thread::sleep(Duration::from_millis(500));
    let mut r = r;
    r.kill().expect("kill -9");
    let mut log = stderr(&r.wait_with_output().expect("binlake"));
    let (sql, ev) = round(2);
    topo.primary.sql(&sql);
    expected.extend(ev);
    let r = spawn_binlake(&args);
    let want = numbered(&expected);
    let got = wait_events(&t, &want);
    let out = terminate(r, Duration::from_secs(60));
    log += &stderr(&out);
    assert_events("active-active", &got, &want, &log);
    // every event delivered too, per aggregate in order (the restart resends what the killed
    // run had not seen acknowledged)
    let r = spawn_binlake(&args);
    let lines = wait_deliveries(&deliveries, &expected);
    let out = terminate(r, Duration::from_secs(60));
    let _ = rx.kill();
    let _ = rx.wait();
    log += &stderr(&out);
    assert_deliveries(&lines, &expected, &log);
}

/// A flaky receiver (tests/scripts/outbox_receiver.py), started on `port`, logging to `log`,
/// failing `fail` of the requests and every one of aggregate `refused`.
fn receiver(port: u16, log: &str, fail: &str, refused: &str) -> std::process::Child {
    let child = std::process::Command::new("python3")
        .arg(repo().join("tests/scripts/outbox_receiver.py"))
        .args([&port.to_string(), log, fail, "0.05", refused])
        .spawn()
        .expect("python3");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "receiver did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Waits until the receiver's log acknowledges every event of `expected` (or 120 s pass); the
/// log.
fn wait_deliveries(log: &str, expected: &[(String, String)]) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let got: std::collections::HashSet<&str> =
            text.lines().filter_map(|l| l.split(' ').next()).collect();
        if expected.iter().all(|(id, _)| got.contains(id.as_str()))
            || start.elapsed() > Duration::from_secs(120)
        {
            return text;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The receiver's log `lines` acknowledges every event of `expected` (commit order) and no
/// other, each well formed, and per aggregate the first acknowledgements follow the commit
/// order's numbering.
fn assert_deliveries(lines: &str, expected: &[(String, String)], binlake_log: &str) {
    let mut seq = std::collections::HashMap::new();
    let want: std::collections::HashMap<String, (String, usize)> = expected
        .iter()
        .map(|(id, agg)| {
            let s = seq.entry(agg.clone()).or_insert(0);
            *s += 1;
            (id.clone(), (agg.clone(), *s))
        })
        .collect();
    let bad: Vec<&str> = lines.lines().filter(|l| l.starts_with("BAD")).collect();
    assert!(bad.is_empty(), "malformed deliveries: {bad:?}");
    // first acknowledgement of each event, in the receiver's order
    let mut first: Vec<(String, String, usize)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for l in lines.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        if seen.insert(f[0].to_string()) {
            first.push((f[0].into(), f[1].into(), f[2].parse().expect("seq")));
        }
    }
    let missing: Vec<&String> = want.keys().filter(|k| !seen.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} committed events never delivered, e.g. {:?}\n{}",
        missing.len(),
        want.len(),
        &missing[..missing.len().min(5)],
        binlake_log
            .lines()
            .filter(|l| !l.contains("emit no event"))
            .take(60)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let extra: Vec<&String> = seen.iter().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        extra.is_empty(),
        "events no committed transaction holds: {extra:?}"
    );
    let mut last: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (id, agg, seq) in &first {
        assert_eq!(
            want[id],
            (agg.clone(), *seq),
            "event {id}: aggregate and seq differ from the commit order"
        );
        let prev = last.insert(agg.clone(), *seq).unwrap_or(0);
        assert_eq!(
            *seq,
            prev + 1,
            "aggregate {agg}: event {id} (seq {seq}) was first acknowledged after seq {prev}"
        );
    }
}

/// Delivery to an HTTP endpoint that fails 30% of requests, answers some slowly and is
/// restarted, with binlake killed with -9 while events are in flight: every committed event is
/// delivered at least once (none of a rolled-back transaction), each with its id as the
/// Idempotency-Key, and per aggregate the first acknowledgements follow `_binlake_seq`.
#[test]
fn outbox_delivery_in_order_at_least_once() {
    let dir = TestDir::new("outbox_deliver");
    let t = Target::new(Kind::Parquet, &dir, "outboxdeliver");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql(&format!("CREATE DATABASE shop; {OUTBOX_DDL}"));
    let port = crate::observe::free_port();
    let log = dir.path("deliveries.log");
    let mut rx = receiver(port, &log, "0.3", "-");
    let url = m.url();
    let endpoint = format!("http://127.0.0.1:{port}/events");
    let args = outbox_args(
        &url,
        &t.target,
        &[
            "--outbox-deliver-url",
            &endpoint,
            "--checkpoint-interval",
            "1s",
        ],
    );
    let mut expected = Vec::new();
    let r = spawn_binlake(&args);
    crate::snapshot::wait_equal(&m, &t.target, "shop.orders", &[], Duration::from_secs(60));
    let (sql, ev) = round(0);
    m.sql(&sql);
    expected.extend(ev);
    // the receiver goes away and comes back
    std::thread::sleep(Duration::from_millis(300));
    let _ = rx.kill();
    let _ = rx.wait();
    std::thread::sleep(Duration::from_millis(700));
    rx = receiver(port, &log, "0.3", "-");
    let (sql, ev) = round(1);
    m.sql(&sql);
    expected.extend(ev);
    std::thread::sleep(Duration::from_millis(400));
    let mut r = r;
    r.kill().expect("kill -9");
    let mut binlake_log = stderr(&r.wait_with_output().expect("binlake"));
    let (sql, ev) = round(2);
    m.sql(&sql);
    expected.extend(ev);
    let r = spawn_binlake(&args);
    let lines = wait_deliveries(&log, &expected);
    let out = terminate(r, Duration::from_secs(60));
    let _ = rx.kill();
    binlake_log += &stderr(&out);
    eprintln!(
        "{} acknowledgements of {} events; {} retries logged; resent after the restart: {}",
        lines.lines().count(),
        expected.len(),
        binlake_log.matches("event not delivered; retrying").count(),
        binlake_log.contains("sending again what was not acknowledged")
    );
    assert_deliveries(&lines, &expected, &binlake_log);
    assert!(
        binlake_log.contains("event not delivered; retrying"),
        "the receiver's failures were not retried?"
    );
}

/// `deliver_max_attempts` (from a config file's `[[outbox]]`): the events of an aggregate the
/// endpoint always refuses go to `_binlake_rejects` after that many attempts, with the last
/// answer, and the other aggregates' events are all delivered.
#[test]
fn outbox_delivery_gives_up_after_max_attempts() {
    let dir = TestDir::new("outbox_giveup");
    let t = Target::new(Kind::Parquet, &dir, "outboxgiveup");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql(&format!("CREATE DATABASE shop; {OUTBOX_DDL}"));
    let port = crate::observe::free_port();
    let log = dir.path("deliveries.log");
    let mut rx = receiver(port, &log, "0", "3");
    let cfg = dir.path("binlake.toml");
    std::fs::write(
        &cfg,
        format!(
            "source = \"{}\"\ntables = \"shop.orders\"\ntarget = \"{}\"\nmax_latency = \"100ms\"\n\n[[outbox]]\ntable = \"shop.outbox\"\ndeliver_url = \"http://127.0.0.1:{port}/events\"\ndeliver_max_attempts = 2\n",
            m.url(),
            t.target
        ),
    )
    .expect("config");
    let r = spawn_binlake(&["replicate", "--config", &cfg]);
    crate::snapshot::wait_equal(&m, &t.target, "shop.orders", &[], Duration::from_secs(60));
    let (sql, events) = round(0);
    m.sql(&sql);
    let refused: Vec<&String> = events
        .iter()
        .filter(|(_, agg)| agg == "3")
        .map(|(id, _)| id)
        .collect();
    assert!(refused.len() > 2, "the workload gives aggregate 3 events");
    let rejects = || {
        duck(&format!(
            "SELECT count(*) FROM read_parquet('{}/_binlake_rejects/*.parquet') WHERE \"table\" = 'shop.outbox_events' AND reason LIKE '%gave up after 2 attempts%HTTP 500%'",
            t.target
        ))
    };
    let start = Instant::now();
    let delivered = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let got: std::collections::HashSet<String> = text
            .lines()
            .filter_map(|l| l.split(' ').next().map(str::to_string))
            .collect();
        let others = events
            .iter()
            .filter(|(_, agg)| agg != "3")
            .all(|(id, _)| got.contains(id));
        let done = others
            && std::path::Path::new(&format!("{}/_binlake_rejects", t.target)).exists()
            && rejects() == refused.len().to_string();
        if done || start.elapsed() > Duration::from_secs(90) {
            break got;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let out = terminate(r, Duration::from_secs(60));
    let _ = rx.kill();
    let _ = rx.wait();
    for (id, agg) in &events {
        assert_eq!(
            delivered.contains(id),
            agg != "3",
            "event {id} of aggregate {agg}\n{}",
            stderr(&out)
        );
    }
    assert_eq!(
        rejects(),
        refused.len().to_string(),
        "the refused events in _binlake_rejects\n{}",
        stderr(&out)
    );
}

/// An outbox table that `tables` also selects is replicated as a table too (its rows as the
/// source holds them: deleted messages gone), besides its events.
#[test]
fn an_outbox_listed_in_tables_is_also_replicated() {
    let dir = TestDir::new("outbox_listed");
    let t = Target::new(Kind::Parquet, &dir, "outboxlisted");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql(&format!("CREATE DATABASE shop; {OUTBOX_DDL}"));
    let url = m.url();
    let mut args = outbox_args(&url, &t.target, &[]);
    args[4] = "shop.*";
    let r = spawn_binlake(&args);
    crate::snapshot::wait_equal(&m, &t.target, "shop.orders", &[], Duration::from_secs(60));
    let (sql, expected) = round(0);
    m.sql(&sql);
    let want = numbered(&expected);
    let got = wait_events(&t, &want);
    crate::snapshot::wait_equal(&m, &t.target, "shop.outbox", &[], Duration::from_secs(60));
    let out = terminate(r, Duration::from_secs(60));
    assert_events("listed", &got, &want, &stderr(&out));
    let rows = m.sql("SELECT COUNT(*) FROM shop.outbox").trim().to_string();
    assert_ne!(rows, "0", "the workload leaves messages in the outbox");
}
