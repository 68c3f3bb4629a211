//! Exactly once under kill -9: a 100,000-row workload with updates and deletes streams while
//! binlake is killed at random moments and restarted; the replica ends equal to the source, no
//! (key, version) appears twice across the committed files, and no file outside the commit log
//! survives.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// A small deterministic generator (the seed is printed so a failure can be replayed).
pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// With `ddl`, the table's shape changes four times along the way (ADD COLUMN, CHANGE COLUMN to a
/// new name and a longer VARCHAR, a widening MODIFY, DROP COLUMN), so kills also land around
/// schema changes and their replays.
pub fn workload(rng: &mut Lcg, rows: u64, ddl: bool) -> String {
    let mut sql = String::from("SET autocommit = 1;\n");
    let mut next_id = 1u64;
    let mut c = "c";
    let mut step = 0;
    while next_id <= rows {
        if ddl && step < 4 && next_id > rows * (step + 1) / 5 {
            sql.push_str(match step {
                0 => "ALTER TABLE crash.t ADD COLUMN extra INT DEFAULT 7;\n",
                1 => "ALTER TABLE crash.t CHANGE c c2 VARCHAR(300) NOT NULL;\n",
                2 => "ALTER TABLE crash.t MODIFY k BIGINT NOT NULL;\n",
                _ => "ALTER TABLE crash.t DROP COLUMN extra;\n",
            });
            if step == 1 {
                c = "c2";
            }
            step += 1;
        }
        let n = 1 + rng.below(500).min(rows - next_id);
        sql.push_str(&format!("BEGIN;\nINSERT INTO crash.t (id, k, {c}) VALUES "));
        for i in 0..n {
            let id = next_id + i;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "({id},{},'row-{id}-{}')",
                rng.below(1000),
                rng.below(1 << 30)
            ));
        }
        sql.push_str(";\n");
        next_id += n;
        if next_id > 50 {
            let a = 1 + rng.below(next_id - 40);
            sql.push_str(&format!(
                "UPDATE crash.t SET k = k + 1, {c} = CONCAT({c}, '+') WHERE id BETWEEN {a} AND {};\n",
                a + rng.below(30)
            ));
            let d = 1 + rng.below(next_id - 1);
            sql.push_str(&format!(
                "DELETE FROM crash.t WHERE id IN ({d}, {});\n",
                d + 7
            ));
            // the same key changed twice in one transaction
            sql.push_str(&format!("UPDATE crash.t SET {c} = 'twice-1' WHERE id = {a}; UPDATE crash.t SET {c} = 'twice-2' WHERE id = {a};\n"));
        }
        // a keyless table: one row per transaction, so a replayed transaction would show
        sql.push_str(&format!("INSERT INTO crash.log VALUES ({next_id});\n"));
        sql.push_str("COMMIT;\n");
    }
    sql
}

#[test]
fn kill_9_during_stream_loses_and_doubles_nothing() {
    crash_test(&[], 100_000);
}

/// Kills binlake (SIGKILL) three times at random moments while a workload of `rows` inserts plus
/// updates and deletes streams into the sink `sink_args` selects, then checks the replica.
pub fn crash_test(sink_args: &[&str], rows: u64) {
    crash_test_on(sink_args, rows, Where::Local)
}

/// Where the crash test's target lives.
#[derive(PartialEq)]
pub enum Where {
    Local,
    /// A moto server.
    S3,
    /// A ClickHouse endpoint (`sink_args` select the clickhouse sink).
    #[cfg(feature = "clickhouse")]
    ClickHouse,
}

/// [`crash_test`] with the target `at`.
pub fn crash_test_on(sink_args: &[&str], rows: u64, at: Where) {
    let s3 = at == Where::S3;
    let seed = std::env::var("BINLAKE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test seed: {seed} (BINLAKE_CRASH_SEED={seed} replays it)");
    let mut rng = Lcg(seed);
    let dir = TestDir::new("crash");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql("CREATE DATABASE crash; CREATE TABLE crash.t (id BIGINT PRIMARY KEY, k INT NOT NULL, c VARCHAR(200) NOT NULL, KEY (k)); CREATE TABLE crash.log (n BIGINT);");
    let moto = s3.then(|| Moto::start(&dir.0.join("moto"), "lake"));
    let env: Vec<(&str, &str)> = moto.as_ref().map(|m| m.env().to_vec()).unwrap_or_default();
    #[cfg(feature = "clickhouse")]
    let ch = (at == Where::ClickHouse).then(|| ClickHouse::start(&dir.0.join("ch"), "crash"));
    #[cfg(not(feature = "clickhouse"))]
    let ch: Option<()> = None;
    let mut sink_args = sink_args.to_vec();
    let mut reader: Vec<&str> = if sink_args.contains(&"delta") {
        vec!["--reader", "delta"]
    } else {
        vec![]
    };
    let target = match &ch {
        #[cfg(feature = "clickhouse")]
        Some(ch) => {
            sink_args.extend_from_slice(&["--database-prefix", &ch.prefix]);
            reader = ch.reader();
            ch.url.clone()
        }
        _ if s3 => "s3://lake/crash".to_string(),
        _ => dir.path("lake"),
    };
    let sink_args = &sink_args[..];
    let url = m.url();
    let mut args = replicate_args(
        &url,
        &target,
        "crash.*",
        &["--max-batch-rows", "3000", "--max-latency", "200ms"],
    );
    args.extend_from_slice(sink_args);

    // The workload runs in the background through the mariadb client.
    // the Parquet lake keeps a file per shape (a renamed column stays under its old name there)
    let script = workload(&mut rng, rows, !reader.is_empty());
    let mut client = Command::new("mariadb")
        .args([
            "--no-defaults",
            "-h127.0.0.1",
            "-uroot",
            &format!("-P{}", m.port),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));

    let started = Instant::now();
    let mut kills = 0;
    let mut ddl_log: Vec<String> = Vec::new();
    while kills < 3 {
        let mut b = spawn_binlake_env(&args, &env);
        std::thread::sleep(Duration::from_millis(400 + rng.below(1600)));
        if let Some(status) = b.try_wait().unwrap() {
            let out = b.wait_with_output().unwrap();
            panic!("binlake exited early ({status}):\n{}", stderr(&out));
        }
        b.kill().unwrap(); // SIGKILL
                           // what each killed process did about schema changes, printed if the replica differs
        let log = stderr(&b.wait_with_output().unwrap());
        ddl_log.extend(
            log.lines()
                .filter(|l| {
                    ["applied", "column", "ClickHouse", "stopped", "resuming"]
                        .iter()
                        .any(|w| l.contains(w))
                })
                .map(|l| format!("#{}: {l}", kills + 1)),
        );
        kills += 1;
        eprintln!("killed binlake #{kills} at {:?}", started.elapsed());
    }
    writer.join().unwrap().unwrap();
    assert!(client.wait().unwrap().success(), "workload failed");
    // One more crash at the worst instant: after a commit's data, before its checkpoint. The
    // restart replays that commit, which must change nothing (keyed or keyless).
    m.sql("INSERT INTO crash.log VALUES (-1), (-2); UPDATE crash.t SET k = k + 1 WHERE id <= 10;");
    let mut failing = replicate_args(&url, &target, "crash.*", &["--exit-when-caught-up"]);
    failing.extend_from_slice(sink_args);
    let mut fenv = env.clone();
    fenv.push(("BINLAKE_FAILPOINT", "after-data"));
    let out = binlake_env(&failing, &fenv, Duration::from_secs(300));
    assert!(
        !out.status.success() && stderr(&out).contains("failpoint after-data"),
        "the failpoint did not fire:\n{}",
        stderr(&out)
    );
    let mut last = vec!["--max-batch-rows", "3000"];
    last.extend_from_slice(sink_args);
    let out = catch_up_env(&m, &target, "crash.*", &last, &env);

    let total = m.sql("SELECT COUNT(*) FROM crash.t");
    eprintln!("source rows: {}", total.trim());
    // The keyless changelog: every insert exactly once, none doubled by a replay.
    let log_src = m
        .sql("SELECT COUNT(*), SUM(n) FROM crash.log")
        .trim()
        .replace('\t', " ");
    let log_rep = match &ch {
        #[cfg(feature = "clickhouse")]
        Some(ch) => ch
            .q(&format!("SELECT count(), sum(n) FROM {}crash.log_current", ch.prefix))
            .replace('\t', " "),
        #[cfg(feature = "delta")]
        _ if sink_args.contains(&"delta") && !s3 => crate::harness::delta_q(
            &format!("{target}/crash/log"),
            "SELECT count(*)::VARCHAR || ' ' || sum(n)::VARCHAR FROM t",
        ),
        _ if sink_args.is_empty() => duck(&format!(
            "SELECT count(*)::VARCHAR || ' ' || sum(n)::VARCHAR FROM read_parquet('{target}/crash/log/*.parquet', union_by_name = true)"
        )),
        _ => log_src.clone(),
    };
    assert_eq!(
        log_rep, log_src,
        "keyless table: (rows, sum) in the replica vs the source"
    );
    if !reader.is_empty() {
        // the Delta and ClickHouse readers also fail if a key appears twice in the current state
        let (equal, report) = compare_env(&m, &target, "crash.t", &reader, &env);
        if !equal {
            let mut st = vec!["status", "--target", &target];
            st.extend_from_slice(sink_args);
            let status = binlake_env(&st, &env, Duration::from_secs(60));
            panic!(
                "{report}\nstatus:\n{}\nschema changes in the killed runs:\n{}\nfinal catch-up:\n{}",
                String::from_utf8_lossy(&status.stdout),
                ddl_log.join("\n"),
                stderr(&out)
            );
        }
        return;
    }
    assert_replica_equal(&m, &target, "crash.t", &[]);
    let dup = duck(&format!("SELECT count(*) FROM (SELECT id, _binlake_version FROM read_parquet('{target}/crash/t/*.parquet') GROUP BY ALL HAVING count(*) > 1)"));
    assert_eq!(
        dup, "0",
        "a (key, version) pair appears twice across committed files"
    );
    // Every data file on disk is named by the commit log (leftovers were cleaned at restart).
    let listed = duck(&format!(
        "SELECT count(*) FROM (SELECT unnest(files, recursive := true) FROM read_json('{target}/_binlake/default/log/*.json')) WHERE \"table\" = 'crash.t'"
    ));
    let on_disk = std::fs::read_dir(format!("{target}/crash/t"))
        .unwrap()
        .count();
    assert_eq!(
        listed,
        on_disk.to_string(),
        "files on disk vs files in the commit log"
    );
}
