//! Fan-in: two independent MariaDB servers with the same schema, replicated by one binlake
//! process (`[[pipelines]]`) into one target, each `shop.big` mapped to its own table. Both
//! sources change under concurrent workloads; binlake is killed with SIGKILL, then one source is
//! killed while the other goes on. Each target table must end equal to its source, value by
//! value, each pipeline resuming from its own checkpoint.

use std::time::Duration;

use crate::harness::*;
use crate::observe::{free_port, scrape};
use crate::snapshot::{start_workload_keys, stop_workload};

/// A source with `shop.big` (`rows` rows whose text names the server).
fn shard(dir: &TestDir, name: &str, server_id: u32, rows: u32) -> Maria {
    let m = Maria::start(&dir.0.join(name), server_id, &[]);
    m.sql(&format!(
        "CREATE DATABASE shop; USE shop;
         CREATE TABLE shop.big (id BIGINT PRIMARY KEY, k INT NOT NULL, c VARCHAR(120) NOT NULL,
           pad CHAR(60) NOT NULL DEFAULT 'pad');
         INSERT INTO shop.big (id, k, c) SELECT seq, seq % 1000, CONCAT('{name}-', seq)
           FROM seq_1_to_{rows};"
    ));
    m
}

fn compare_mapped(m: &Maria, target: &str, to: &str) -> (bool, String) {
    compare(m, target, "shop.big", &["--target-table", to])
}

fn wait_mapped_equal(m: &Maria, target: &str, to: &str, timeout: Duration) {
    let start = std::time::Instant::now();
    loop {
        let (equal, text) = compare_mapped(m, target, to);
        if equal {
            eprintln!("{}", text.trim());
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{to} did not converge in {timeout:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn two_sources_into_one_target() {
    let dir = TestDir::new("fanin");
    let eu = shard(&dir, "eu", 21, 3000);
    let us = shard(&dir, "us", 22, 2000);
    let target = dir.path("lake");
    let metrics = format!("127.0.0.1:{}", free_port());
    let config = dir.path("binlake.toml");
    std::fs::write(
        &config,
        format!(
            r#"target = "{target}"
metrics_addr = "{metrics}"
max_latency = "300ms"
tables = "shop.big"

[[pipelines]]
name = "eu"
source = "{eu_url}"
map = {{ "shop.*" = "shop_eu.{{table}}" }}

[[pipelines]]
name = "us"
source = "{us_url}"
map = {{ "shop.*" = "shop_us.{{table}}" }}
"#,
            eu_url = eu.url(),
            us_url = us.url(),
        ),
    )
    .unwrap();
    let run = || spawn_binlake(&["replicate", "--config", &config]);

    // both sources change while binlake reads them, and binlake is killed mid-stream
    let (stop_eu, stop_us) = (dir.path("stop-eu"), dir.path("stop-us"));
    let w_eu = start_workload_keys(&eu, &stop_eu, 60, 1, 4000);
    let w_us = start_workload_keys(&us, &stop_us, 60, 2, 3000);
    let mut b = run();
    std::thread::sleep(Duration::from_secs(4));
    let text = scrape(&metrics);
    for p in ["eu", "us"] {
        assert!(
            text.contains(&format!("binlake_commits_total{{pipeline=\"{p}\"}}")),
            "no metrics of pipeline {p}:\n{text}"
        );
    }
    b.kill().unwrap();
    let _ = b.wait_with_output();

    // one source dies: the other pipeline goes on
    let _ = stop_workload(w_eu, &stop_eu);
    eu.kill();
    let b = run();
    std::thread::sleep(Duration::from_secs(2));
    let n = stop_workload(w_us, &stop_us);
    eprintln!("us workload: {n} transactions");
    wait_mapped_equal(&us, &target, "shop_us.big", Duration::from_secs(90));
    let st = binlake(&["status", "--config", &config], Duration::from_secs(60));
    let st = String::from_utf8_lossy(&st.stdout).into_owned();
    assert!(
        st.contains("pipeline: eu") && st.contains("pipeline: us"),
        "{st}"
    );
    assert!(st.contains("shop.big -> shop_us.big"), "{st}");

    // it comes back: its pipeline resumes from its own checkpoint
    let eu = Maria::start_on(&dir.0.join("eu"), 21, Some(eu.port), &[]);
    eu.sql("UPDATE shop.big SET c = 'after-restart' WHERE id = 7");
    wait_mapped_equal(&eu, &target, "shop_eu.big", Duration::from_secs(90));
    wait_mapped_equal(&us, &target, "shop_us.big", Duration::from_secs(30));
    let out = terminate(b, Duration::from_secs(30));
    assert!(out.status.success(), "replicate: {}", stderr(&out));

    // no table under the source's own name: every row went to its mapped table
    assert!(!std::path::Path::new(&format!("{target}/shop/big")).exists());

    // a restart whose map sends a table elsewhere is refused, naming it
    let moved = std::fs::read_to_string(&config)
        .unwrap()
        .replace("shop_eu.{table}", "eu2.{table}");
    std::fs::write(&config, moved).unwrap();
    let out = binlake(
        &[
            "replicate",
            "--config",
            &config,
            "--pipeline",
            "eu",
            "--exit-when-caught-up",
        ],
        Duration::from_secs(60),
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("shop_eu.big") && err.contains("eu2.big") && err.contains("map"),
        "{err}"
    );
}
