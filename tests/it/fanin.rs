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

/// Polls the comparison of `shop.big` with `args` until equal (panics after `timeout`).
fn wait_compare(m: &Maria, target: &str, args: &[&str], what: &str, timeout: Duration) {
    let start = std::time::Instant::now();
    loop {
        let (equal, text) = compare(m, target, "shop.big", args);
        if equal {
            eprintln!("{what}: {}", text.trim());
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{what} did not converge in {timeout:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn wait_mapped_equal(m: &Maria, target: &str, to: &str, timeout: Duration) {
    wait_compare(m, target, &["--target-table", to], to, timeout);
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

fn wait_origin_equal(m: &Maria, target: &str, reader: &[String], origin: &str, timeout: Duration) {
    let mut args = vec!["--target-table", "warehouse.big", "--origin", origin];
    args.extend(reader.iter().map(String::as_str));
    wait_compare(m, target, &args, &format!("origin {origin}"), timeout);
}

/// Shards whose keys collide (both hold ids 1..N) into one table with `origin_in_key`: the
/// table is the union of the shards, each row keyed by its id and origin; binlake is killed
/// mid-stream; a re-snapshot (a table renamed into the name) and a TRUNCATE on one shard remove
/// only that shard's rows; `validate` compares each shard with its own rows of the shared table.
#[test]
fn shards_share_one_table_with_origin_in_key() {
    shards("parquet");
}

#[cfg(feature = "delta")]
#[test]
fn shards_share_one_delta_table_with_origin_in_key() {
    shards("delta");
}

#[cfg(feature = "clickhouse")]
#[test]
fn shards_share_one_clickhouse_table_with_origin_in_key() {
    shards("clickhouse");
}

fn shards(sink: &str) {
    let dir = TestDir::new(&format!("shards-{sink}"));
    #[cfg(feature = "clickhouse")]
    let ch = (sink == "clickhouse").then(|| ClickHouse::start(&dir.0.join("ch"), "shards"));
    let (target, extra, reader): (String, String, Vec<String>) = match sink {
        #[cfg(feature = "clickhouse")]
        "clickhouse" => {
            let ch = ch.as_ref().expect("started");
            (
                ch.url.clone(),
                format!("database_prefix = \"{}\"\n", ch.prefix),
                ch.reader().iter().map(|s| s.to_string()).collect(),
            )
        }
        "delta" => (
            dir.path("lake"),
            String::new(),
            vec!["--reader".into(), "delta".into()],
        ),
        _ => (dir.path("lake"), String::new(), vec![]),
    };
    let eu = shard(&dir, "eu", 31, 2500);
    let us = shard(&dir, "us", 32, 2500);
    let config = dir.path("binlake.toml");
    let text = format!(
        r#"target = "{target}"
{extra}sink = "{sink}"
max_latency = "300ms"
tables = "shop.big"
origin_in_key = true
map = {{ "shop.*" = "warehouse.{{table}}" }}

[[pipelines]]
name = "eu"
source = "{eu_url}"

[[pipelines]]
name = "us"
source = "{us_url}"
"#,
        eu_url = eu.url(),
        us_url = us.url(),
    );
    std::fs::write(&config, &text).unwrap();
    let run = || spawn_binlake(&["replicate", "--config", &config]);

    let (stop_eu, stop_us) = (dir.path("stop-eu"), dir.path("stop-us"));
    let w_eu = start_workload_keys(&eu, &stop_eu, 60, 3, 3000);
    let w_us = start_workload_keys(&us, &stop_us, 60, 4, 3000);
    let mut b = run();
    std::thread::sleep(Duration::from_secs(4));
    b.kill().unwrap();
    let _ = b.wait_with_output();
    let b = run();
    std::thread::sleep(Duration::from_secs(2));
    stop_workload(w_eu, &stop_eu);
    stop_workload(w_us, &stop_us);
    wait_origin_equal(&eu, &target, &reader, "eu", Duration::from_secs(90));
    wait_origin_equal(&us, &target, &reader, "us", Duration::from_secs(90));

    // a table renamed into the name on one shard is read again (a re-snapshot, whose end removes
    // the rows it did not find): only that shard's rows are removed
    eu.sql(
        "CREATE TABLE shop.big2 LIKE shop.big;
         INSERT INTO shop.big2 SELECT * FROM shop.big WHERE id % 2 = 0;
         RENAME TABLE shop.big TO shop.big_old, shop.big2 TO shop.big;",
    );
    wait_origin_equal(&eu, &target, &reader, "eu", Duration::from_secs(90));
    wait_origin_equal(&us, &target, &reader, "us", Duration::from_secs(10));
    // TRUNCATE on one shard empties only its rows
    us.sql("TRUNCATE shop.big; INSERT INTO shop.big (id, k, c) VALUES (1, 1, 'us-new')");
    wait_origin_equal(&us, &target, &reader, "us", Duration::from_secs(60));
    wait_origin_equal(&eu, &target, &reader, "eu", Duration::from_secs(10));
    // the union, counted by the documented current-state query keyed by (id, origin)
    let eu_rows: u64 = eu
        .sql("SELECT count(*) FROM shop.big")
        .trim()
        .parse()
        .unwrap();
    let current = match sink {
        #[cfg(feature = "clickhouse")]
        "clickhouse" => {
            let ch = ch.as_ref().expect("started");
            ch.q(&format!(
                "SELECT count() FROM `{}warehouse`.`big_current`",
                ch.prefix
            ))
        }
        #[cfg(feature = "delta")]
        "delta" => delta_q(
            &format!("{target}/warehouse/big"),
            "SELECT count(*) FROM t WHERE NOT _binlake_deleted",
        ),
        _ => duck(&format!(
            "SELECT count(*) FROM (SELECT *, row_number() OVER (PARTITION BY id, _binlake_origin ORDER BY _binlake_version DESC) AS rn FROM read_parquet('{target}/warehouse/big/*.parquet', union_by_name = true)) WHERE rn = 1 AND NOT _binlake_deleted"
        )),
    };
    assert_eq!(current, (eu_rows + 1).to_string());
    let out = terminate(b, Duration::from_secs(30));
    assert!(out.status.success(), "replicate: {}", stderr(&out));

    // validate compares each shard with its own rows
    let out = binlake(&["validate", "--config", &config], Duration::from_secs(120));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}\n{}", stderr(&out));
    assert!(
        report.contains("== pipeline eu") && report.contains("== pipeline us"),
        "{report}"
    );
    {
        assert!(
            report.contains("warehouse.big: the union of its sources (eu, us)"),
            "{report}"
        );
        // ... and that the shared table holds nothing but the union of the shards: without the us
        // pipeline in the config, its rows are rows of an origin no pipeline replicates
        let only_eu = dir.path("only-eu.toml");
        let cut = text
            .find("\n[[pipelines]]\nname = \"us\"")
            .expect("us entry");
        std::fs::write(&only_eu, &text[..cut]).unwrap();
        let out = binlake(
            &["validate", "--config", &only_eu],
            Duration::from_secs(120),
        );
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{report}");
        assert!(
            report
                .contains("holds rows of origins no pipeline of this config replicates: 1 of `us`"),
            "{report}"
        );
    }
    // turning origin_in_key off for one pipeline is refused (every key it wrote would change)
    std::fs::write(
        &config,
        text.replace("origin_in_key = true\n", "")
            .replace("source = \"", "origin_in_key = true\nsource = \"")
            .replacen("origin_in_key = true\n", "", 1),
    )
    .unwrap();
    let out = binlake(
        &["replicate", "--config", &config, "--exit-when-caught-up"],
        Duration::from_secs(120),
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("origin_in_key"), "{err}");
}
