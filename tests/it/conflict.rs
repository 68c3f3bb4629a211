//! Concurrent updates from several sources (`conflict = "last_writer_wins"`): two independent
//! MariaDB servers write overlapping keys of `shop.acct`, each statement with a commit time set
//! by the test (`SET timestamp`: mostly rising, with steps back and same-second ties across
//! servers), and both are mapped into one table. The target must equal an independent
//! computation of last-writer-wins over the two servers' writes: per server, commit times never
//! go back (a step back takes the last time); per key, the greatest (time, server name, order on
//! the server) wins, a DELETE included. Checked with each read order (one pipeline caught up,
//! then the other, both ways), then live with both pipelines and a kill -9 of binlake.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::harness::*;

/// A row's `(v, who)`.
type Row = (String, String);

/// A write the test made: on `server`, its `idx`-th, at `ts`; `row` is the row after it (None:
/// deleted).
struct Write {
    server: &'static str,
    idx: usize,
    ts: i64,
    key: i64,
    row: Option<(String, String)>,
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One server's side of the test: its keys, its clock, the script of its next writes.
struct Side {
    name: &'static str,
    keys: BTreeSet<i64>,
    idx: usize,
}

/// Commit times start a day ahead, above the setup statements' (the binlog is read from its
/// start), and rise about one second every four writes, give or take three.
const BASE: i64 = 1_900_000_000;

impl Side {
    /// `n` writes: their SQL (one statement each, autocommitted) and what they did.
    fn writes(&mut self, rng: &mut Rng, n: usize, out: &mut Vec<Write>) -> String {
        let mut sql = String::from("USE shop;\n");
        for _ in 0..n {
            self.idx += 1;
            let ts = BASE + (self.idx as i64) / 4 + rng.next(7) as i64 - 3;
            let key = 1 + rng.next(80) as i64;
            let v = format!("{}-{}", self.name, self.idx);
            let row = Some((v.clone(), self.name.to_string()));
            let (stmt, row) = match (self.keys.contains(&key), rng.next(100)) {
                (true, p) if p < 60 => (
                    format!(
                        "UPDATE acct SET v = '{v}', who = '{}' WHERE id = {key}",
                        self.name
                    ),
                    row,
                ),
                (true, p) if p < 85 => {
                    self.keys.remove(&key);
                    (format!("DELETE FROM acct WHERE id = {key}"), None)
                }
                _ => {
                    self.keys.insert(key);
                    (
                        format!(
                            "INSERT INTO acct VALUES ({key}, '{v}', '{0}') ON DUPLICATE KEY UPDATE v = '{v}', who = '{0}'",
                            self.name
                        ),
                        row,
                    )
                }
            };
            sql.push_str(&format!("SET timestamp = {ts}; {stmt};\n"));
            out.push(Write {
                server: self.name,
                idx: self.idx,
                ts,
                key,
                row,
            });
        }
        sql
    }
}

/// Last writer wins, computed from the writes alone: per server, a commit time never goes back;
/// per key, the greatest (time, server name, order on the server). Keys no write touched keep
/// their first row.
fn expected(
    writes: &[Write],
    first: &BTreeMap<i64, (String, String)>,
) -> BTreeMap<i64, (String, String)> {
    let mut clock: BTreeMap<&str, i64> = BTreeMap::new();
    // per key: the winning write's order (time, server, order on the server), and its row
    type Order<'a> = (i64, &'a str, usize);
    let mut best: BTreeMap<i64, (Order, &Option<Row>)> = BTreeMap::new();
    for w in writes {
        let t = clock.entry(w.server).or_insert(i64::MIN);
        *t = (*t).max(w.ts);
        let order = (*t, w.server, w.idx);
        match best.get(&w.key) {
            Some((o, _)) if *o > order => {}
            _ => {
                best.insert(w.key, (order, &w.row));
            }
        }
    }
    let mut out = first.clone();
    for (k, (_, row)) in best {
        match row {
            Some(r) => {
                out.insert(k, r.clone());
            }
            None => {
                out.remove(&k);
            }
        }
    }
    out
}

/// `server`'s table after its writes.
fn state_of(writes: &[Write], server: &str, first: &BTreeMap<i64, Row>) -> BTreeMap<i64, Row> {
    let mut out = first.clone();
    for w in writes.iter().filter(|w| w.server == server) {
        match &w.row {
            Some(r) => {
                out.insert(w.key, r.clone());
            }
            None => {
                out.remove(&w.key);
            }
        }
    }
    out
}

/// A key whose current row `server` wrote.
fn want_now(writes: &[Write], first: &BTreeMap<i64, Row>, server: &str) -> i64 {
    *expected(writes, first)
        .iter()
        .find(|(_, (_, who))| who == server)
        .expect("a key the server won")
        .0
}

fn server(dir: &TestDir, name: &str, id: u32) -> Maria {
    let m = Maria::start(&dir.0.join(name), id, &[]);
    m.sql(
        "CREATE DATABASE shop; CREATE DATABASE expect; USE shop;
         CREATE TABLE shop.acct (id INT PRIMARY KEY, v VARCHAR(40) NOT NULL, who VARCHAR(10) NOT NULL);
         INSERT INTO shop.acct SELECT seq, 'init', 'init' FROM seq_1_to_60;",
    );
    m
}

/// Writes `rows` as `expect.acct` on `m` (not replicated: the config reads `shop.acct`).
fn store_expected(m: &Maria, rows: &BTreeMap<i64, (String, String)>) {
    let values: Vec<String> = rows
        .iter()
        .map(|(k, (v, w))| format!("({k}, '{v}', '{w}')"))
        .collect();
    m.sql(&format!(
        "DROP TABLE IF EXISTS expect.acct;
         CREATE TABLE expect.acct (id INT PRIMARY KEY, v VARCHAR(40) NOT NULL, who VARCHAR(10) NOT NULL);
         INSERT INTO expect.acct VALUES {};",
        values.join(", ")
    ));
}

/// Polls until the target's `warehouse.acct` equals `expect.acct` on `m`.
fn wait_expected(m: &Maria, target: &str, reader: &[&str], what: &str, timeout: Duration) {
    let start = std::time::Instant::now();
    let mut args = vec!["--target-table", "warehouse.acct", "--with-origin"];
    args.extend(reader);
    loop {
        let (equal, text) = compare(m, target, "expect.acct", &args);
        if equal {
            eprintln!("{what}: {}", text.trim());
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: the target is not last-writer-wins of the two sources:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// One target of the test: where, the config lines that name it, the compare.py reader flags.
struct Target {
    target: String,
    extra: String,
    reader: Vec<String>,
}

impl Target {
    fn reader(&self) -> Vec<&str> {
        self.reader.iter().map(String::as_str).collect()
    }
}

fn config(dir: &TestDir, file: &str, t: &Target, eu: &Maria, us: &Maria) -> String {
    let path = dir.path(file);
    std::fs::write(
        &path,
        format!(
            r#"target = "{}"
{}max_latency = "300ms"
tables = "shop.acct"
start_at = "earliest"
conflict = "last_writer_wins"
map = {{ "shop.*" = "warehouse.{{table}}" }}

[[pipelines]]
name = "eu"
source = "{}"

[[pipelines]]
name = "us"
source = "{}"
"#,
            t.target,
            t.extra,
            eu.url(),
            us.url()
        ),
    )
    .unwrap();
    path
}

/// Catches one pipeline of `config` up, alone.
fn catch_up(config: &str, pipeline: &str) {
    let out = binlake(
        &[
            "replicate",
            "--config",
            config,
            "--pipeline",
            pipeline,
            "--exit-when-caught-up",
        ],
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{pipeline}: {}", stderr(&out));
}

#[test]
fn last_writer_wins_whatever_the_read_order_and_after_kill_9() {
    last_writer_wins("parquet");
}

#[cfg(feature = "delta")]
#[test]
fn delta_last_writer_wins_whatever_the_read_order_and_after_kill_9() {
    last_writer_wins("delta");
}

#[cfg(feature = "clickhouse")]
#[test]
fn clickhouse_last_writer_wins_whatever_the_read_order_and_after_kill_9() {
    last_writer_wins("clickhouse");
}

fn last_writer_wins(sink: &str) {
    let dir = TestDir::new(&format!("conflict-{sink}"));
    #[cfg(feature = "clickhouse")]
    let ch = (sink == "clickhouse").then(|| ClickHouse::start(&dir.0.join("ch"), "lww"));
    let target = |name: &str| -> Target {
        match sink {
            #[cfg(feature = "clickhouse")]
            "clickhouse" => {
                let ch = ch.as_ref().expect("started");
                let prefix = format!("{}{name}_", ch.prefix);
                Target {
                    target: ch.url.clone(),
                    extra: format!("sink = \"clickhouse\"\ndatabase_prefix = \"{prefix}\"\n"),
                    reader: ["--reader", "clickhouse", "--database-prefix", &prefix]
                        .map(String::from)
                        .to_vec(),
                }
            }
            "delta" => Target {
                target: dir.path(name),
                extra: "sink = \"delta\"\n".into(),
                reader: ["--reader", "delta"].map(String::from).to_vec(),
            },
            _ => Target {
                target: dir.path(name),
                extra: String::new(),
                reader: vec![],
            },
        }
    };
    let eu = server(&dir, "eu", 41);
    let us = server(&dir, "us", 42);
    let first: BTreeMap<i64, (String, String)> = (1..=60)
        .map(|k| (k, ("init".to_string(), "init".to_string())))
        .collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut sides = [
        Side {
            name: "eu",
            keys: (1..=60).collect(),
            idx: 0,
        },
        Side {
            name: "us",
            keys: (1..=60).collect(),
            idx: 0,
        },
    ];
    let mut writes = Vec::new();
    for round in 0..4 {
        for (side, m) in sides.iter_mut().zip([&eu, &us]) {
            let sql = side.writes(&mut rng, 60 + round * 10, &mut writes);
            m.sql(&sql);
        }
    }
    let want = expected(&writes, &first);
    // the generator made the cases it is for
    let both: BTreeSet<i64> = writes
        .iter()
        .filter(|w| w.server == "eu")
        .map(|w| w.key)
        .filter(|k| writes.iter().any(|w| w.server == "us" && w.key == *k))
        .collect();
    assert!(
        both.len() > 40,
        "keys written on both servers: {}",
        both.len()
    );
    let won: BTreeSet<&str> = want.values().map(|(_, who)| who.as_str()).collect();
    assert!(won.contains("eu") && won.contains("us"), "{won:?}");
    store_expected(&eu, &want);

    // each read order gives the same table
    let (a, b) = (target("lake_a"), target("lake_b"));
    let cfg_a = config(&dir, "a.toml", &a, &eu, &us);
    let cfg_b = config(&dir, "b.toml", &b, &eu, &us);
    catch_up(&cfg_a, "eu");
    catch_up(&cfg_a, "us");
    let secs = Duration::from_secs(10);
    wait_expected(&eu, &a.target, &a.reader(), "eu, then us", secs);
    catch_up(&cfg_b, "us");
    catch_up(&cfg_b, "eu");
    wait_expected(&eu, &b.target, &b.reader(), "us, then eu", secs);

    // live: both pipelines while both servers write; binlake killed with -9 halfway
    let metrics = format!("127.0.0.1:{}", crate::observe::free_port());
    let text = std::fs::read_to_string(&cfg_a).unwrap();
    std::fs::write(&cfg_a, format!("metrics_addr = \"{metrics}\"\n{text}")).unwrap();
    let run = || spawn_binlake(&["replicate", "--config", &cfg_a]);
    let mut r = run();
    for round in 0..4 {
        for (side, m) in sides.iter_mut().zip([&eu, &us]) {
            let sql = side.writes(&mut rng, 50, &mut writes);
            m.sql(&sql);
        }
        std::thread::sleep(Duration::from_millis(700));
        if round == 1 {
            r.kill().expect("kill -9");
            let _ = r.wait_with_output();
            r = run();
        }
    }
    store_expected(&eu, &expected(&writes, &first));
    let live = Duration::from_secs(60);
    wait_expected(&eu, &a.target, &a.reader(), "live, after kill -9", live);
    // the writes' times step back now and then: stamped with the previous time, and counted
    let held: u64 = crate::observe::scrape(&metrics)
        .lines()
        .filter(|l| l.starts_with("binlake_lww_clock_held_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(held > 0, "binlake_lww_clock_held_total is 0");
    let out = terminate(r, Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    if sink == "parquet" {
        // the winner's origin is on its row
        let wrong = duck(&format!(
            "SELECT count(*) FROM (SELECT *, row_number() OVER (PARTITION BY id ORDER BY _binlake_version DESC) AS rn FROM read_parquet('{}/warehouse/acct/**/*.parquet', union_by_name = true)) WHERE rn = 1 AND NOT _binlake_deleted AND who <> 'init' AND who <> _binlake_origin",
            a.target
        ));
        assert_eq!(wrong, "0", "rows whose _binlake_origin is not their writer");
    }

    // started from snapshots of the two (diverged) sources: a snapshot row has no commit time,
    // so between sources the greater name (us) wins, and every change streamed afterwards, of
    // either source, wins over it
    let c = target("lake_c");
    let cfg_c = config(&dir, "c.toml", &c, &eu, &us);
    let text = std::fs::read_to_string(&cfg_c).unwrap();
    std::fs::write(&cfg_c, text.replace("start_at = \"earliest\"\n", "")).unwrap();
    let mut snap_first = state_of(&writes, "eu", &first);
    snap_first.extend(state_of(&writes, "us", &first));
    store_expected(&eu, &snap_first);
    let r = spawn_binlake(&["replicate", "--config", &cfg_c]);
    wait_expected(&eu, &c.target, &c.reader(), "snapshots", live);
    let mut later = Vec::new();
    for _ in 0..2 {
        for (side, m) in sides.iter_mut().zip([&eu, &us]) {
            let sql = side.writes(&mut rng, 40, &mut later);
            m.sql(&sql);
        }
    }
    store_expected(&eu, &expected(&later, &snap_first));
    wait_expected(&eu, &c.target, &c.reader(), "snapshots, then changes", live);
    let out = terminate(r, Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    writes.extend(later);
    // lake_a catches up with those changes too (and past the expected table's statements:
    // validate waits for the target to reach the source's position)
    store_expected(&eu, &expected(&writes, &first));
    let out = binlake(
        &["replicate", "--config", &cfg_a, "--exit-when-caught-up"],
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    wait_expected(&eu, &a.target, &a.reader(), "every change", live);

    // status shows the clock of each pipeline
    let out = binlake(
        &["status", "--config", &cfg_a, "--pipeline", "eu"],
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("last-writer-wins clock: 2030-"), "{text}");

    // validate compares each source with the keys it wrote last, and sees a row changed
    // behind binlake's back (not in the binlog)
    let out = binlake(&["validate", "--config", &cfg_a], Duration::from_secs(120));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("last written by other sources"), "{text}");
    assert!(
        text.contains("warehouse.acct: the union of its sources (eu, us)"),
        "{text}"
    );
    let eu_key = want_now(&writes, &first, "eu");
    eu.sql(&format!(
        "SET sql_log_bin = 0; UPDATE shop.acct SET v = 'behind' WHERE id = {eu_key}"
    ));
    let out = binlake(
        &["validate", "--config", &cfg_a, "--pipeline", "eu"],
        Duration::from_secs(120),
    );
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!("first differing keys: ({eu_key})")),
        "{text}"
    );

    if sink == "parquet" {
        dbt_builds_the_shared_table(&dir, &cfg_a, expected(&writes, &first).len());
    }

    // conflict cannot be switched off once written
    let text = std::fs::read_to_string(&cfg_a).unwrap();
    std::fs::write(
        &cfg_a,
        text.replace("conflict = \"last_writer_wins\"\n", ""),
    )
    .unwrap();
    let out = binlake(
        &["replicate", "--config", &cfg_a, "--exit-when-caught-up"],
        Duration::from_secs(60),
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("conflict"), "{err}");
}

/// `binlake dbt sources` over the config, then `dbt build` (dbt-duckdb, no network): the shared
/// table's current-state model passes its key test (one row per key, whichever source wrote it)
/// and holds `rows` rows.
fn dbt_builds_the_shared_table(dir: &TestDir, config: &str, rows: usize) {
    let project = dir.0.join("dbt");
    std::fs::create_dir_all(&project).unwrap();
    for f in ["dbt_project.yml", "profiles.yml"] {
        std::fs::copy(repo().join("examples/dbt").join(f), project.join(f)).unwrap();
    }
    let p = project.display().to_string();
    let out = binlake(
        &["dbt", "sources", "--config", config, "--project-dir", &p],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "dbt sources: {}", stderr(&out));
    let db = project.join("w.duckdb").display().to_string();
    let out = std::process::Command::new("unshare")
        .args([
            "-n",
            "dbt",
            "build",
            "--profiles-dir",
            &p,
            "--project-dir",
            &p,
        ])
        .env("DBT_DUCKDB_PATH", &db)
        .env("DO_NOT_TRACK", "1")
        .env("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        .output()
        .expect("run dbt (tests/scripts/install-deps.sh installs dbt-duckdb)");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && log.contains("ERROR=0"),
        "dbt build:\n{log}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True); print(c.sql('SELECT count(*), count(DISTINCT id), count(DISTINCT _binlake_origin) FROM stg_warehouse__acct').fetchall()[0])",
            &db,
        ])
        .output()
        .unwrap();
    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(got, format!("({rows}, {rows}, 2)"), "{}", stderr(&out));
}
