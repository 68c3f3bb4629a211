//! A re-snapshot is swapped in whole in every sink (ClickHouse: `EXCHANGE TABLES`; Delta: one
//! commit that removes every file and adds the shadow's; Parquet: shadow files outside the
//! table's folder, then one file in it that holds them and the tombstones). A gh-ost style
//! cut-over replaces `cf.t` (every `v` = 1) with a table of the same keys (every `v` = 2) under
//! writes, and binlake is killed with -9 in the middle of the re-read. A reader polling the
//! table's current state sees the old table or the new one, never a mix (an in-place re-read
//! shows some keys with 1 and others with 2: 3 of 60 polls of Delta did before its swap), and
//! the replica ends equal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::conformance::{Kind, Target};
use crate::harness::*;

/// A Python loop printing `rows rows_with_v_1` of `cf.t`'s current state for `seconds`.
fn poller(t: &Target) -> (String, Vec<String>) {
    match t.kind {
        #[cfg(feature = "clickhouse")]
        Kind::ClickHouse => {
            let ch = t.ch.as_ref().expect("started");
            let code = "import sys, time, urllib.request, urllib.parse\nu = sys.argv[1].rstrip('/') + '/?' + urllib.parse.urlencode({'query': sys.argv[2]})\nend = time.time() + float(sys.argv[3])\nwhile time.time() < end:\n    print(urllib.request.urlopen(urllib.request.Request(u, data=b'', method='POST')).read().decode().strip().replace('\\t', ' '), flush=True)\n    time.sleep(0.02)";
            let sql = format!(
                "SELECT count(), countIf(v = 1) FROM {}cf.t_current",
                ch.prefix
            );
            (code.to_string(), vec![ch.url.clone(), sql])
        }
        #[cfg(feature = "delta")]
        Kind::Delta => {
            let code = "import sys, time\nfrom deltalake import DeltaTable\nend = time.time() + float(sys.argv[2])\nwhile time.time() < end:\n    try:\n        t = DeltaTable(sys.argv[1]).to_pyarrow_table(columns=['v', '_binlake_deleted']).to_pydict()\n    except Exception as e:\n        print('error', e, flush=True); time.sleep(0.05); continue\n    live = [v for v, d in zip(t['v'], t['_binlake_deleted']) if not d]\n    print(len(live), sum(1 for v in live if v == 1), flush=True)\n    time.sleep(0.02)";
            (code.to_string(), vec![format!("{}/cf/t", t.target)])
        }
        Kind::Parquet => {
            // the README's one-query current state, over the table's folder (a glob)
            let code = "import sys, time, duckdb\nsql = sys.argv[1]\nend = time.time() + float(sys.argv[2])\nwhile time.time() < end:\n    try:\n        r = duckdb.sql(sql).fetchone()\n    except Exception as e:\n        print('error', e, flush=True); time.sleep(0.05); continue\n    print(r[0], r[1], flush=True)\n    time.sleep(0.02)";
            let sql = format!(
                "SELECT count(*), count(*) FILTER (WHERE v = 1) FROM (SELECT *, row_number() OVER (PARTITION BY id ORDER BY _binlake_version DESC) AS rn FROM read_parquet('{}/cf/t/*.parquet', union_by_name = true)) WHERE rn = 1 AND NOT _binlake_deleted",
                t.target
            );
            (code.to_string(), vec![sql])
        }
    }
}

fn resnapshot_is_swapped_in_whole(kind: Kind) {
    let dir = TestDir::new(&format!("swap_{kind:?}").to_lowercase());
    let t = Target::new(kind, &dir, "swapwhole");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    let n = 30_000;
    m.sql(&format!("CREATE DATABASE cf; CREATE DATABASE other; CREATE TABLE cf.t (id INT PRIMARY KEY, v INT); INSERT INTO cf.t SELECT seq, 1 FROM cf.seq_1_to_{n};"));
    m.sql(&format!("CREATE TABLE other.t2 (id INT PRIMARY KEY, v INT); INSERT INTO other.t2 SELECT seq, 2 FROM other.seq_1_to_{n};"));
    let url = m.url();
    let mut args = replicate_args(
        &url,
        &t.target,
        "cf.*",
        &[
            "--max-latency",
            "200ms",
            "--snapshot-chunk-rows",
            "500",
            "--snapshot-parallelism",
            "1",
        ],
    );
    args.extend(t.sink_args());
    let r = spawn_binlake(&args);
    crate::snapshot::wait_equal(&m, &t.target, "cf.t", &t.reader(), Duration::from_secs(90));
    // a reader polls the current state through the cut-over, the kill and the restart
    let stop = Arc::new(AtomicBool::new(false));
    let poll = {
        let stop = stop.clone();
        let (code, mut pargs) = poller(&t);
        pargs.push("2".into());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let out = std::process::Command::new("python3")
                    .arg("-c")
                    .arg(&code)
                    .args(&pargs)
                    .output()
                    .expect("python3");
                seen.extend(
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .map(str::to_string),
                );
            }
            seen
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    m.sql(
        "RENAME TABLE cf.t TO other.old, other.t2 TO cf.t; UPDATE cf.t SET v = 3 WHERE id <= 10;",
    );
    std::thread::sleep(Duration::from_millis(700));
    let mut r = r;
    r.kill().expect("kill -9");
    let _ = r.wait_with_output();
    m.sql("UPDATE cf.t SET v = 4 WHERE id BETWEEN 100 AND 110; DELETE FROM cf.t WHERE id > 29990;");
    let r = spawn_binlake(&args);
    let start = std::time::Instant::now();
    let equal = loop {
        let (equal, text) = compare(&m, &t.target, "cf.t", &t.reader());
        if equal || start.elapsed() > Duration::from_secs(120) {
            break (equal, text);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    stop.store(true, Ordering::Relaxed);
    let seen = poll.join().expect("poller");
    let out = terminate(r, Duration::from_secs(60));
    assert!(equal.0, "{kind:?}: {}\n{}", equal.1, stderr(&out));
    let old = format!("{n} {n}");
    let mixed: Vec<&String> = seen
        .iter()
        .filter(|s| !s.starts_with("error") && **s != old && !s.ends_with(" 0"))
        .collect();
    assert!(
        mixed.is_empty(),
        "{kind:?}: a reader saw the table half re-read ({} of {} polls), e.g. {:?}",
        mixed.len(),
        seen.len(),
        &mixed[..mixed.len().min(5)]
    );
    assert!(
        seen.len() > 5,
        "{kind:?}: the poller read too little: {seen:?}"
    );
    t.assert_nothing_stopped();
    #[cfg(feature = "delta")]
    if kind == Kind::Delta {
        // the shadow's own log went with the swap; maintenance deletes the shadow files the
        // table stops using (MERGEs rewrote some) and none it uses
        let shadow_logs = std::fs::read_dir(format!("{}/cf/t", t.target))
            .expect("table dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("_binlake_g"))
            .filter(|e| {
                e.path()
                    .join("_delta_log")
                    .read_dir()
                    .is_ok_and(|mut d| d.next().is_some())
            })
            .count();
        assert_eq!(shadow_logs, 0, "a swapped-in shadow kept its log");
        let out = binlake(
            &[
                "maintain",
                "--sink",
                "delta",
                "--target",
                &t.target,
                "--vacuum-retention",
                "0s",
            ],
            Duration::from_secs(180),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        t.assert_equal(&m, "cf.t");
    }
    if kind == Kind::Parquet {
        // the shadow files went with the swap: the log lists none and none are left behind
        let left: Vec<_> = walk(&std::path::Path::new(&t.target).join("_binlake"))
            .into_iter()
            .filter(|p| p.components().any(|c| c.as_os_str() == "shadow"))
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        assert!(left.is_empty(), "shadow files left behind: {left:?}");
    }
    #[cfg(feature = "clickhouse")]
    if let Some(ch) = &t.ch {
        let shadows =
            ch.q("SELECT count() FROM system.tables WHERE name LIKE '%\\_\\_binlake\\_g%'");
        assert_eq!(shadows, "0", "shadow tables left behind");
    }
}

#[test]
fn parquet_a_resnapshot_is_swapped_in_whole() {
    resnapshot_is_swapped_in_whole(Kind::Parquet);
}

/// Every file under `dir` (none when it does not exist).
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[cfg(feature = "clickhouse")]
#[test]
fn clickhouse_a_resnapshot_is_swapped_in_whole() {
    resnapshot_is_swapped_in_whole(Kind::ClickHouse);
}

#[cfg(feature = "delta")]
#[test]
fn delta_a_resnapshot_is_swapped_in_whole() {
    resnapshot_is_swapped_in_whole(Kind::Delta);
}

/// The same cut-over with the lake on S3 (moto), killed with -9 during the re-read: the swap's
/// steps (shadow files or shadow table, the one commit, the shadow's cleanup) work on an object
/// store, and the replica ends equal with nothing of the shadow left behind.
fn resnapshot_on_s3(kind: Kind) {
    let dir = TestDir::new(&format!("swap_s3_{kind:?}").to_lowercase());
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    let moto = Moto::start(&dir.0.join("moto"), "lake");
    let env = moto.env();
    let n = 5_000;
    m.sql(&format!("CREATE DATABASE cf; CREATE DATABASE other; CREATE TABLE cf.t (id INT PRIMARY KEY, v INT); INSERT INTO cf.t SELECT seq, 1 FROM cf.seq_1_to_{n};"));
    m.sql(&format!("CREATE TABLE other.t2 (id INT PRIMARY KEY, v INT); INSERT INTO other.t2 SELECT seq, 2 FROM other.seq_1_to_{n};"));
    let sink: &[&str] = match kind {
        Kind::Parquet => &[],
        _ => &["--sink", "delta"],
    };
    let mut extra = vec![
        "--snapshot-chunk-rows",
        "200",
        "--snapshot-parallelism",
        "1",
    ];
    extra.extend_from_slice(sink);
    let target = "s3://lake/swap";
    catch_up_env(&m, target, "cf.*", &extra, &env);
    m.sql(
        "RENAME TABLE cf.t TO other.old, other.t2 TO cf.t; UPDATE cf.t SET v = 3 WHERE id <= 10;",
    );
    let url = m.url();
    let mut args = replicate_args(&url, target, "cf.*", &["--max-latency", "100ms"]);
    args.extend_from_slice(&extra);
    let mut r = spawn_binlake_env(&args, &env);
    std::thread::sleep(Duration::from_millis(1500));
    r.kill().expect("kill -9");
    let _ = r.wait_with_output();
    m.sql("UPDATE cf.t SET v = 4 WHERE id BETWEEN 100 AND 110; DELETE FROM cf.t WHERE id > 4990;");
    catch_up_env(&m, target, "cf.*", &extra, &env);
    let local = dir.path("download");
    moto.download("lake", "swap", &local);
    let reader: &[&str] = match kind {
        Kind::Parquet => &[],
        _ => &["--reader", "delta"],
    };
    assert_replica_equal(&m, &local, "cf.t", reader);
    let left: Vec<_> = walk(std::path::Path::new(&local))
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| match kind {
            Kind::Parquet => p.contains("/shadow/"),
            // a shadow's log goes with its swap (its data files wait for maintenance)
            _ => p.contains("/_binlake_g") && p.contains("/_delta_log/"),
        })
        .collect();
    assert!(left.is_empty(), "{kind:?}: shadow left behind: {left:?}");
}

#[test]
fn parquet_a_resnapshot_on_s3() {
    resnapshot_on_s3(Kind::Parquet);
}

#[cfg(feature = "delta")]
#[test]
fn delta_a_resnapshot_on_s3() {
    resnapshot_on_s3(Kind::Delta);
}
