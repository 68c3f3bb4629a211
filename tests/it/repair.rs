//! Backfills and repairs against real MariaDB: a backfill requested through the control endpoint
//! and one on a schedule while the stream runs, and `binlake validate` finding a row altered in
//! the source behind the binlog's back, then `--repair` fixing it, in every sink. Each ends with
//! the replica equal to the source, value by value.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;
use crate::snapshot::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A change the binlog never sees (`sql_log_bin = 0`): only a backfill can bring it over.
fn hidden_update(m: &Maria, set: &str, cond: &str) {
    m.sql(&format!(
        "SET SESSION sql_log_bin = 0; UPDATE shop.big SET {set} WHERE {cond}; SET SESSION sql_log_bin = 1;"
    ));
}

/// `binlake backfill --tables shop.big --where "id < 100"` through `control`.
fn backfill_ids_below_100(control: &str) -> std::process::Output {
    binlake(
        &[
            "backfill",
            "--control",
            control,
            "--tables",
            "shop.big",
            "--where",
            "id < 100",
        ],
        Duration::from_secs(60),
    )
}

/// `binlake backfill` reaches the running `replicate` (its control_addr), which re-reads only
/// the requested key range of one table while the other tables stream; a `[[backfill]]`
/// schedule in the config does the same by itself.
#[test]
fn backfill_on_demand_and_on_schedule_while_streaming() {
    let dir = TestDir::new("snap_backfill");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    big_table(&m, 50_000);
    let target = dir.path("lake");
    let control = format!("127.0.0.1:{}", free_port());
    let config = dir.path("binlake.toml");
    std::fs::write(
        &config,
        format!(
            "source = \"{}\"\ntables = \"shop.*\"\ntarget = \"{target}\"\nmax_latency = \"300ms\"\ncontrol_addr = \"{control}\"\n\n[[backfill]]\ntables = \"shop.big\"\nschedule = \"* * * * *\"\nwhere = \"id > 49000\"\n",
            m.url()
        ),
    )
    .unwrap();
    let r = spawn_binlake(&["replicate", "--config", &config]);
    wait_loaded(&["--target", &target], "shop.big", Duration::from_secs(120));
    wait_equal(&m, &target, "shop.big", &[], Duration::from_secs(60));

    // The binlog never carries this change: the replica differs until a backfill.
    hidden_update(&m, "c = 'hidden'", "id BETWEEN 10 AND 19");
    let (equal, _) = compare(&m, &target, "shop.big", &[]);
    assert!(!equal, "the hidden change should not be in the replica yet");
    // other tables keep streaming meanwhile
    m.sql("INSERT INTO shop.small VALUES (5, 'streamed');");
    let out = backfill_ids_below_100(&control);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("backfill queued: shop.big"),
        "{text}{}",
        stderr(&out)
    );
    wait_equal(&m, &target, "shop.big", &[], Duration::from_secs(60));
    wait_equal(&m, &target, "shop.small", &[], Duration::from_secs(60));
    // only the requested range was read again
    // (every id below 100 read twice, by the initial snapshot and the backfill; none above)
    let twice = |range: &str| {
        duck(&format!(
            "SELECT count(*) FROM (SELECT id FROM read_parquet('{target}/shop/big/**/*.parquet') WHERE _binlake_op = 'snapshot' AND {range} GROUP BY id HAVING count(*) = 2)"
        ))
    };
    assert_eq!(
        twice("id < 100"),
        "99",
        "the backfill should re-read ids 1..99"
    );
    assert_eq!(
        twice("id BETWEEN 100 AND 49000"),
        "0",
        "the backfill re-read ids it was not asked for"
    );

    // Hidden again, and backfilled again with no binlog change in between: both backfills read at
    // the same binlog point, and the later read must still win (it gets a higher sub-version).
    hidden_update(&m, "c = 'hidden twice'", "id BETWEEN 10 AND 19");
    let out = backfill_ids_below_100(&control);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_equal(&m, &target, "shop.big", &[], Duration::from_secs(60));
    let tie = duck(&format!(
        "SELECT count(*) FROM (SELECT id, _binlake_version FROM read_parquet('{target}/shop/big/**/*.parquet') WHERE id BETWEEN 10 AND 19 GROUP BY ALL HAVING count(*) > 1)"
    ));
    assert_eq!(tie, "0", "two reads of one key share a version");

    // a bad request gets a clear refusal and changes nothing
    let out = binlake(
        &["backfill", "--control", &control, "--tables", "shop.nope"],
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no replicated table matches"),
        "{}",
        stderr(&out)
    );

    // the schedule (every minute, ids above 49000) repairs a hidden change by itself
    hidden_update(&m, "k = -1", "id = 49500");
    wait_equal(&m, &target, "shop.big", &[], Duration::from_secs(150));
    let out = terminate(r, Duration::from_secs(60));
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("reason=\"schedule\"") || log.contains("reason=schedule"),
        "{log}"
    );
}

/// Runs `binlake validate` (`extra` adds --repair etc.): (exit ok, stdout).
fn validate(url: &str, sink_args: &[&str], extra: &[&str]) -> (bool, String) {
    let mut args = vec!["validate", "--source", url, "--tables", "shop.*"];
    args.extend_from_slice(sink_args);
    args.extend_from_slice(extra);
    let out = binlake(&args, Duration::from_secs(300));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    (out.status.success(), text)
}

/// `validate` passes on a fresh replica, finds one row altered in the target behind binlake's
/// back and two rows deleted at the source without the binlog (naming their keys), and
/// `--repair` backfills that key range and deletes those keys through the running replicate,
/// after which `validate` and the independent comparison pass.
fn validate_finds_and_repairs(
    name: &str,
    sink_args: &[&str],
    target: &str,
    reader: &[&str],
    tamper: &dyn Fn(),
) {
    let dir = TestDir::new(name);
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    big_table(&m, 30_000);
    let url = m.url();
    let control = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "replicate",
        "--source",
        &url,
        "--tables",
        "shop.*",
        "--max-latency",
        "300ms",
        "--control-addr",
        &control,
    ];
    args.extend_from_slice(sink_args);
    let r = spawn_binlake(&args);
    wait_loaded(sink_args, "shop.big", Duration::from_secs(120));
    m.sql("UPDATE shop.big SET k = 5 WHERE id = 3; INSERT INTO shop.small VALUES (9, 'x');");
    wait_equal(&m, target, "shop.big", reader, Duration::from_secs(60));
    let (ok, text) = validate(&url, sink_args, &[]);
    assert!(ok, "validate should pass on an equal replica:\n{text}");
    assert!(
        text.contains("shop.big: 3 chunks checked, 0 different"),
        "{text}"
    );
    // the keyless table is compared as a multiset of rows
    assert!(
        text.contains("shop.nokey: 1 chunks checked, 0 different"),
        "{text}"
    );

    tamper();
    // deletes the binlog never carried: the target keeps those rows (one with a latin1 key)
    m.sql(
        "SET SESSION sql_log_bin = 0; DELETE FROM shop.big WHERE id = 29000;
         DELETE FROM shop.comp WHERE b = 4; SET SESSION sql_log_bin = 1;",
    );
    let (ok, text) = validate(&url, sink_args, &[]);
    assert!(!ok, "validate should find the altered row:\n{text}");
    assert!(
        text.contains("shop.big: 3 chunks checked, 1 different")
            && text.contains("1 rows only in the target; first differing keys: (17) (29000)")
            && text.contains("1 rows only in the target; first differing keys: (é4,4)"),
        "{text}"
    );
    let (ok, text) = validate(&url, sink_args, &["--repair", "--control", &control]);
    assert!(ok, "validate --repair should fix the rows:\n{text}");
    assert!(
        text.contains(
            "shop.big: repair queued: 1 key range(s) backfilled, 1 key(s) only in the target"
        ) && text.contains(
            "shop.comp: repair queued: 0 key range(s) backfilled, 1 key(s) only in the target"
        ) && text.contains("after repair: shop.big")
            && text.contains("after repair: shop.comp"),
        "{text}"
    );
    wait_equal(&m, target, "shop.big", reader, Duration::from_secs(60));
    wait_equal(&m, target, "shop.comp", reader, Duration::from_secs(60));
    let (ok, text) = validate(&url, sink_args, &[]);
    assert!(ok, "{text}");
    let out = terminate(r, Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
}

fn python(code: &str, args: &[&str]) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn validate_finds_an_altered_row_and_repair_fixes_it_parquet() {
    let dir = TestDir::new("val_pq_target");
    let target = dir.path("lake");
    let t2 = target.clone();
    validate_finds_and_repairs("val_pq", &["--target", &target], &target, &[], &|| {
        // rewrite the Parquet file holding id 17, as a careless job might
        python(
            "import glob, sys, pyarrow as pa, pyarrow.parquet as pq\n\
             for f in glob.glob(sys.argv[1] + '/shop/big/*.parquet'):\n\
             \x20   t = pq.read_table(f)\n\
             \x20   ids = t.column('id').to_pylist()\n\
             \x20   if 17 in ids:\n\
             \x20       c = t.column('c').to_pylist(); c[ids.index(17)] = 'tampered'\n\
             \x20       i = t.schema.get_field_index('c')\n\
             \x20       t = t.set_column(i, t.schema.field(i), pa.array(c, t.schema.field(i).type))\n\
             \x20       pq.write_table(t, f)\n",
            &[&t2],
        );
    });
}

#[cfg(feature = "delta")]
#[test]
fn validate_finds_an_altered_row_and_repair_fixes_it_delta() {
    let dir = TestDir::new("val_delta_target");
    let target = dir.path("lake");
    let path = format!("{target}/shop/big");
    validate_finds_and_repairs(
        "val_delta",
        &["--sink", "delta", "--target", &target],
        &target,
        &["--reader", "delta"],
        &|| {
            python(
                "import os, sys\nfrom deltalake import DeltaTable\nDeltaTable(sys.argv[1]).update(predicate='id = 17', updates={'c': \"'tampered'\"})\nos._exit(0)",
                &[&path],
            )
        },
    );
}

#[cfg(feature = "clickhouse")]
#[test]
fn validate_finds_an_altered_row_and_repair_fixes_it_clickhouse() {
    let dir = TestDir::new("val_ch_server");
    let ch = ClickHouse::start(&dir.0.join("ch"), "val");
    let sql = format!(
        "ALTER TABLE `{}shop`.`big` UPDATE c = 'tampered' WHERE id = 17 SETTINGS mutations_sync = 2",
        ch.prefix
    );
    validate_finds_and_repairs("val_ch", &ch.args(), &ch.url, &ch.reader(), &|| {
        ch.q(&sql);
    });
}
