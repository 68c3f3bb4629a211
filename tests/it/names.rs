//! Table and database names that hold dots (legal in MySQL): selected with backtick-quoted
//! patterns, replicated exactly into every sink, and kept apart from the names their dots
//! could be confused with.

use std::time::Duration;

use crate::harness::*;

const DOTTED: &str = "
CREATE DATABASE `d.x`;
CREATE TABLE `d.x`.`t.y` (id INT PRIMARY KEY, v VARCHAR(20), n DECIMAL(10,2));
CREATE TABLE `d.x`.plain (id INT PRIMARY KEY, v VARCHAR(20));
CREATE DATABASE d;
CREATE TABLE d.`x.t.y` (id INT PRIMARY KEY, v VARCHAR(20));
INSERT INTO `d.x`.`t.y` VALUES (1, 'one', 1.50), (2, 'two', 2.25), (3, 'three', NULL);
INSERT INTO `d.x`.plain VALUES (1, 'p1'), (2, 'p2');
INSERT INTO d.`x.t.y` VALUES (1, 'not me');";

const CHANGES: &str = "
UPDATE `d.x`.`t.y` SET v = 'TWO', n = 20.00 WHERE id = 2;
DELETE FROM `d.x`.`t.y` WHERE id = 3;
INSERT INTO `d.x`.`t.y` VALUES (4, 'four', 4.00);
UPDATE `d.x`.plain SET v = 'P2' WHERE id = 2;
INSERT INTO d.`x.t.y` VALUES (2, 'nor me');";

/// The pattern that selects both tables of `d.x` and nothing of `d`.
const TABLES: &str = "`d.x`.`t.y`,`d.x`.plain";

/// A fresh start from a snapshot, then changes through the stream: every sink holds exactly the
/// source's rows of both dotted tables, and nothing of `d`.`x.t.y`, whose text would read the
/// same without quoting.
#[test]
fn dotted_names_replicate_exactly_in_every_sink() {
    let dir = TestDir::new("dotted_names");
    let m = Maria::start(&dir.0, 1, &[]);
    m.sql(DOTTED);
    let lake = dir.path("lake");
    let delta = dir.path("delta");
    let ch = ClickHouse::start(&dir.0, "dotted");
    let url = m.url();
    let ch_args = ch.args();
    let prefix = ch_args[5];
    let sinks: Vec<(String, Vec<&str>, Vec<&str>)> = vec![
        (lake.clone(), vec![], vec![]),
        (
            delta.clone(),
            vec!["--sink", "delta"],
            vec!["--reader", "delta"],
        ),
        (
            ch.url.clone(),
            vec!["--sink", "clickhouse", "--database-prefix", prefix],
            ch.reader(),
        ),
    ];
    let run = |target: &str, extra: &[&str], start_at: &str| {
        let mut args = vec![
            "replicate",
            "--source",
            &url,
            "--tables",
            TABLES,
            "--target",
            target,
            "--start-at",
            start_at,
            "--exit-when-caught-up",
        ];
        args.extend_from_slice(extra);
        let out = binlake(&args, Duration::from_secs(300));
        assert!(out.status.success(), "replicate failed:\n{}", stderr(&out));
    };
    for (target, extra, _) in &sinks {
        run(target, extra, "snapshot");
    }
    m.sql(CHANGES);
    for (target, extra, reader) in &sinks {
        run(target, extra, "snapshot"); // resumes from the checkpoint: the stream
        for table in ["`d.x`.`t.y`", "`d.x`.plain"] {
            let (equal, report) = compare(&m, target, table, reader);
            assert!(equal, "{target}: {table} differs:\n{report}");
        }
    }
    // nothing of `d`.`x.t.y` anywhere
    assert!(
        !std::path::Path::new(&lake).join("d").exists(),
        "the lake holds a table of database `d`"
    );
    assert!(!std::path::Path::new(&delta).join("d").exists());
    let n = ch.q(&format!(
        "SELECT count() FROM system.tables WHERE database = '{prefix}d'"
    ));
    assert_eq!(n, "0", "ClickHouse holds a table of database `d`");
    // the dotted table's rows are exactly the source's, value by value
    let rows = duck(&format!(
        "SELECT string_agg(id || ':' || v || ':' || coalesce(n::VARCHAR, 'null'), ',' ORDER BY id) FROM (SELECT * EXCLUDE (rn) FROM (SELECT *, row_number() OVER (PARTITION BY id ORDER BY _binlake_version DESC) AS rn FROM read_parquet('{lake}/d.x/t.y/**/*.parquet', union_by_name = true)) WHERE rn = 1 AND NOT _binlake_deleted)"
    ));
    assert_eq!(rows, "1:one:1.50,2:TWO:20.00,4:four:4.00");
}
