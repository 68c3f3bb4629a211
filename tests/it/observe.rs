//! What a user watches: changes visible within `max_latency` + 1 s at a trickle, the
//! `_binlake_watermarks` table in every sink, the Prometheus endpoint, and `binlake status`
//! (positions, per-table lag, the last error) read from the target alone.

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The value of one metric line (`name{labels}` exactly), if present.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Inserts one row and polls the Parquet target (DuckDB, in one process) until it is visible:
/// milliseconds from COMMIT to visible.
fn commit_to_visible_ms(m: &Maria, target: &str, id: i64) -> f64 {
    let code = r#"
import sys, time, duckdb, pymysql
port, target, id_ = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
con = pymysql.connect(host="127.0.0.1", port=port, user="root", autocommit=False)
cur = con.cursor()
cur.execute("INSERT INTO shop.t VALUES (%s, 'probe')", (id_,))
con.commit()
t0 = time.time()
q = f"SELECT count(*) FROM read_parquet('{target}/shop/t/**/*.parquet') WHERE id = {id_}"
while time.time() - t0 < 30:
    try:
        seen = duckdb.sql(q).fetchall()[0][0] > 0
    except duckdb.IOException:  # no file yet
        seen = False
    if seen:
        print((time.time() - t0) * 1000)
        sys.exit(0)
    time.sleep(0.02)
print("timeout")
sys.exit(1)
"#;
    let out = Command::new("python3")
        .args(["-c", code, &m.port.to_string(), target, &id.to_string()])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{s}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.trim().parse().unwrap()
}

#[test]
fn trickle_latency_watermarks_metrics_and_status() {
    let dir = TestDir::new("observe");
    let db = dir.0.join("db");
    let m = Maria::start(&db, 1, &[]);
    m.sql(
        "CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(20));
         INSERT INTO shop.t VALUES (1, 'a'), (2, 'b');",
    );
    let target = dir.path("lake");
    let addr = format!("127.0.0.1:{}", free_port());
    let url = m.url();
    // default settings: max_latency 1s
    let r = spawn_binlake(&[
        "replicate",
        "--source",
        &url,
        "--tables",
        "shop.*",
        "--target",
        &target,
        "--metrics-addr",
        &addr,
    ]);
    std::thread::sleep(Duration::from_secs(3));
    // a trickle: a change now and then, with idle time between (no buffer waits to be full)
    for i in 0..3 {
        let ms = commit_to_visible_ms(&m, &target, 100 + i);
        eprintln!("change {i}: visible after {ms:.0} ms");
        assert!(
            ms < 2000.0,
            "change {i} took {ms:.0} ms (max_latency 1s + 1s)"
        );
        std::thread::sleep(Duration::from_secs(3));
    }

    // watermarks: the last applied GTID and its commit time, per table and for the pipeline
    let gtid = m.sql("SELECT @@gtid_binlog_pos").trim().to_string();
    let wm = duck(&format!(
        "SELECT gtid || ' ' || (epoch_us(now()) - epoch_us(source_commit_ts) < 60000000)::VARCHAR FROM read_parquet('{target}/_binlake_watermarks/*.parquet') WHERE \"table\" = 'shop.t' ORDER BY applied_at DESC LIMIT 1"
    ));
    assert_eq!(wm, format!("{gtid} true"), "watermark of shop.t");
    let star = duck(&format!(
        "SELECT position FROM read_parquet('{target}/_binlake_watermarks/*.parquet') WHERE \"table\" = '*' ORDER BY applied_at DESC LIMIT 1"
    ));
    assert!(star.ends_with(&gtid), "pipeline watermark {star} vs {gtid}");

    // metrics
    let text = scrape(&addr);
    let rows = metric(
        &text,
        "binlake_rows_applied_total{pipeline=\"default\",table=\"shop.t\"}",
    )
    .unwrap_or(0.0);
    assert_eq!(rows, 5.0, "2 snapshot rows + 3 inserts:\n{text}");
    let txns = metric(
        &text,
        "binlake_table_transactions_applied_total{pipeline=\"default\",table=\"shop.t\"}",
    );
    assert_eq!(txns, Some(3.0), "{text}");
    // freshness histogram: one observation per commit holding changes of the table (the
    // three inserts, committed apart; snapshot rows are not changes)
    let observed = metric(
        &text,
        "binlake_table_commit_to_visible_seconds_count{pipeline=\"default\",table=\"shop.t\"}",
    );
    assert_eq!(observed, Some(3.0), "{text}");
    let lag = metric(
        &text,
        "binlake_table_lag_seconds{pipeline=\"default\",table=\"shop.t\"}",
    )
    .unwrap();
    // MariaDB's binlog stamps commits in whole seconds: up to 1 s more than the real latency
    assert!((0.0..3.0).contains(&lag), "{text}");
    assert_eq!(
        metric(&text, "binlake_lag_seconds{pipeline=\"default\"}"),
        Some(0.0),
        "idle: {text}"
    );
    assert!(
        text.contains("binlake_errors_total{class=\"transient\",pipeline=\"default\"} 0"),
        "{text}"
    );

    // the source dies and comes back: a reconnect, and the error is in the checkpoint
    m.kill();
    std::thread::sleep(Duration::from_secs(2));
    let _m2 = Maria::start_on(&db, 1, Some(m.port), &[]);
    std::mem::forget(m); // the same server, restarted: stopped once, by _m2
    let start = Instant::now();
    loop {
        let text = scrape(&addr);
        if metric(
            &text,
            "binlake_source_reconnects_total{pipeline=\"default\"}",
        )
        .unwrap_or(0.0)
            >= 1.0
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ms = commit_to_visible_ms(&_m2, &target, 200);
    eprintln!("after the reconnect: visible after {ms:.0} ms");
    let out = binlake(&["status", "--target", &target], Duration::from_secs(30));
    let st = String::from_utf8_lossy(&out.stdout);
    assert!(
        st.contains("last error: ") && st.contains("source:"),
        "{st}"
    );
    assert!(
        st.lines()
            .any(|l| l.contains("shop.t") && l.contains("last change committed at the source")),
        "{st}"
    );
    let out = terminate(r, Duration::from_secs(30));
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The watermarks table in Delta and ClickHouse: per table, the last applied GTID.
#[cfg(feature = "delta")]
#[test]
fn watermarks_in_delta() {
    let dir = TestDir::new("wm_delta");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql("CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY, v INT); INSERT INTO shop.t VALUES (1, 1); UPDATE shop.t SET v = 2;");
    let target = dir.path("lake");
    catch_up(&m, &target, "shop.*", &["--sink", "delta"]);
    let gtid = m.sql("SELECT @@gtid_binlog_pos").trim().to_string();
    let got = delta_q(
        &format!("{target}/_binlake_watermarks"),
        "SELECT gtid FROM t WHERE \"table\" = 'shop.t' ORDER BY applied_at DESC LIMIT 1",
    );
    assert_eq!(got, gtid);
}

#[cfg(feature = "clickhouse")]
#[test]
fn watermarks_in_clickhouse() {
    let dir = TestDir::new("wm_ch");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    let ch = ClickHouse::start(&dir.0.join("ch"), "wm");
    m.sql("CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY, v INT); INSERT INTO shop.t VALUES (1, 1); UPDATE shop.t SET v = 2;");
    let mut extra = ch.args()[4..].to_vec(); // --target is given: keep the prefix
    extra.extend_from_slice(&["--sink", "clickhouse"]);
    catch_up(&m, &ch.url, "shop.*", &extra);
    let gtid = m.sql("SELECT @@gtid_binlog_pos").trim().to_string();
    let got = ch.q(&format!(
        "SELECT gtid FROM `{}binlake`.`_binlake_watermarks` FINAL WHERE `table` = 'shop.t'",
        ch.prefix
    ));
    assert_eq!(got, gtid);
}

/// The issue's own case: a change per minute. After a quiet minute (heartbeats only), a change
/// is visible within `max_latency` (default 1 s) + 1 s: no buffer waits to be full, and nothing
/// went stale while the source was quiet.
#[test]
fn a_change_after_a_quiet_minute_is_visible_within_max_latency_plus_1s() {
    let dir = TestDir::new("observe_minute");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql("CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(20));");
    let target = dir.path("lake");
    let url = m.url();
    let r = spawn_binlake(&[
        "replicate",
        "--source",
        &url,
        "--tables",
        "shop.*",
        "--target",
        &target,
    ]);
    let ms = commit_to_visible_ms(&m, &target, 1);
    eprintln!("first change: visible after {ms:.0} ms");
    for i in 2..4 {
        std::thread::sleep(Duration::from_secs(61));
        let ms = commit_to_visible_ms(&m, &target, i);
        eprintln!("change after a quiet minute: visible after {ms:.0} ms");
        assert!(ms < 2000.0, "took {ms:.0} ms (max_latency 1s + 1s)");
    }
    let out = terminate(r, Duration::from_secs(30));
    assert!(out.status.success(), "{}", stderr(&out));
}
