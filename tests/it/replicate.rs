//! `binlake replicate` against a real MariaDB, read back with independent readers.

use std::time::Duration;

use crate::harness::*;

pub const ZOO_DDL: &str = "
CREATE DATABASE zoo;
CREATE TABLE zoo.t (
  id INT PRIMARY KEY,
  ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
  mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
  d10 DECIMAL(10,2), d65 DECIMAL(65,30), d38 DECIMAL(38,10), dfrac DECIMAL(5,5),
  f FLOAT, dbl DOUBLE,
  b1 BIT(1), b64 BIT(64), b10 BIT(10),
  y YEAR,
  dt DATE, dtm DATETIME(6), dtm0 DATETIME, ts TIMESTAMP(6) NULL, ts0 TIMESTAMP NULL,
  tm TIME(6), tm0 TIME, tm3 TIME(3),
  ch CHAR(10), vc VARCHAR(100), tx TEXT, lt LONGTEXT,
  l1 VARCHAR(50) CHARACTER SET latin1, u3 VARCHAR(50) CHARACTER SET utf8mb3,
  bn BINARY(4), vb VARBINARY(10), bl BLOB,
  js JSON,
  en ENUM('a','b','c'), st SET('x','y','z'),
  pt POINT, geo GEOMETRY
);";

pub const ZOO_ROWS: &str = "
SET time_zone = '+05:30';
INSERT INTO zoo.t VALUES (1,
  -128, 0, -32768, 0, -8388608, 0, -2147483648, 0, -9223372036854775808, 0,
  -99999999.99, -99999999999999999999999999999999999.999999999999999999999999999999, -9999999999999999999999999999.9999999999, -0.99999,
  -3.40282e38, -1.7976931348623157e308,
  b'0', b'0', b'0000000000',
  1901,
  '1000-01-01', '1000-01-01 00:00:00.000000', '1000-01-01 00:00:00', '1970-01-01 05:30:01.000000', '1970-01-01 05:30:01',
  '-838:59:59.000000', '-838:59:59', '-00:00:01.500',
  '', '', '', '', 'caf\\xc3\\xa9 \\xe2\\x82\\xac', 'na\\xc3\\xafve',
  'ab', '', '',
  '{\"a\": [1, 2, {\"b\": null}], \"u\": \"\\xc3\\xbc\\xf0\\x9f\\x98\\x80\"}',
  'a', '',
  ST_GeomFromText('POINT(0 0)'), ST_GeomFromText('LINESTRING(0 0,1 1,2 5)'));
INSERT INTO zoo.t VALUES (2,
  127, 255, 32767, 65535, 8388607, 16777215, 2147483647, 4294967295, 9223372036854775807, 18446744073709551615,
  99999999.99, 99999999999999999999999999999999999.999999999999999999999999999999, 9999999999999999999999999999.9999999999, 0.99999,
  3.40282e38, 1.7976931348623157e308,
  b'1', b'1111111111111111111111111111111111111111111111111111111111111111', b'1000000001',
  2155,
  '9999-12-31', '9999-12-31 23:59:59.999999', '9999-12-31 23:59:59', '2038-01-19 08:44:07.999999', '2038-01-19 08:44:07',
  '838:59:59.000000', '838:59:59', '12:34:56.789',
  'abcdefghij', 'emoji \\xf0\\x9f\\x98\\x80 and CJK \\xe4\\xb8\\xad\\xe6\\x96\\x87', REPEAT('long text ', 1000), REPEAT('x', 70000),
  '\\xc3\\xbf\\xc3\\xa0', '\\xe2\\x82\\xac',
  X'00010000', X'00FF00', X'000102FEFF',
  '{\"nested\": {\"deep\": [[1], [2, [3, {\"k\": \"v\"}]]]}, \"n\": -1.5e10, \"t\": true}',
  'c', 'x,y,z',
  ST_GeomFromText('POINT(-122.4194 37.7749)'), ST_GeomFromText('POLYGON((0 0,4 0,4 4,0 4,0 0))'));
INSERT INTO zoo.t (id) VALUES (3);
INSERT INTO zoo.t (id, i, vc, dtm, ts, tm, dbl, d10) VALUES (4, 0, 'plain', '2024-02-29 12:00:00.5', '2024-02-29 12:00:00.25', '00:00:00', 0.1, 0.00);
BEGIN;
UPDATE zoo.t SET vc = 'updated', i = i + 1, ts = '2001-02-03 04:05:06.070809', js = '[]' WHERE id = 4;
UPDATE zoo.t SET tiu = 254, en = 'b', st = 'x,z' WHERE id = 2;
COMMIT;
DELETE FROM zoo.t WHERE id = 1;
INSERT INTO zoo.t (id, ti, vc) VALUES (1, 5, 'reinserted');
";

/// Every column type at its edges, NULL everywhere, inserted, updated and deleted; the replica
/// equals the source value by value, read by pyarrow and by DuckDB with the README's query.
#[test]
fn type_zoo_replicates_exactly() {
    let dir = TestDir::new("zoo");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql(ZOO_DDL);
    m.sql(ZOO_ROWS);
    let target = dir.path("lake");
    catch_up(&m, &target, "zoo.*", &[]);
    assert_replica_equal(&m, &target, "zoo.t", &[]);
    // DuckDB reads DECIMAL wider than 38 digits as DOUBLE, so it checks a copy without d65.
    m.sql("CREATE TABLE zoo.t2 LIKE zoo.t; ALTER TABLE zoo.t2 DROP COLUMN d65; INSERT INTO zoo.t2 SELECT id, ti, tiu, si, siu, mi, miu, i, iu, bi, biu, d10, d38, dfrac, f, dbl, b1, b64, b10, y, dt, dtm, dtm0, ts, ts0, tm, tm0, tm3, ch, vc, tx, lt, l1, u3, bn, vb, bl, js, en, st, pt, geo FROM zoo.t; UPDATE zoo.t2 SET vc = 'changed' WHERE id = 2;");
    let target2 = dir.path("lake2");
    catch_up(&m, &target2, "zoo.t2", &[]);
    assert_replica_equal(&m, &target2, "zoo.t2", &["--reader", "duckdb"]);
}

const INVALID_SETUP: &str = "
CREATE DATABASE inv;
CREATE TABLE inv.d (id INT PRIMARY KEY, d DATE, dt DATETIME, ok VARCHAR(10));
SET SESSION sql_mode = 'ALLOW_INVALID_DATES';
INSERT INTO inv.d VALUES (1, '2024-01-15', '2024-01-15 10:00:00', 'fine');
INSERT INTO inv.d VALUES (2, '2024-02-30', '2024-02-30 10:00:00', 'feb30');
SET SESSION sql_mode = '';
INSERT INTO inv.d VALUES (3, '0000-00-00', '0000-00-00 00:00:00', 'zero');
INSERT INTO inv.d VALUES (4, '2024-03-01', '2024-03-01 00:00:00', 'after');
";

/// Values the source holds but no calendar has: the policy decides, and nothing is silently
/// altered: `null` stores NULL and counts, `fail` stops naming table, column and position,
/// `dead_letter` moves the row to `_binlake_rejects`.
#[test]
fn invalid_values_follow_the_policy() {
    let dir = TestDir::new("invalid");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql(INVALID_SETUP);

    let t_null = dir.path("null");
    catch_up(&m, &t_null, "inv.*", &[]);
    assert_replica_equal(&m, &t_null, "inv.d", &["--invalid-as-null"]);

    let t_fail = dir.path("fail");
    let url = m.url();
    let out = binlake(
        &[
            "replicate",
            "--source",
            &url,
            "--tables",
            "inv.*",
            "--target",
            &t_fail,
            "--start-at",
            "earliest",
            "--exit-when-caught-up",
            "--invalid-values",
            "fail",
        ],
        Duration::from_secs(60),
    );
    assert!(!out.status.success(), "invalid_values=fail must stop");
    let err = stderr(&out);
    assert!(
        err.contains("inv.d.d") && err.contains("0-1-") && err.contains("2024-02-30"),
        "error must name table, column, position and value:\n{err}"
    );
    // Nothing after the bad transaction was applied, and everything before it was.
    let rows = duck(&format!(
        "SELECT string_agg(ok, ',' ORDER BY id) FROM read_parquet('{t_fail}/inv/d/*.parquet')"
    ));
    assert_eq!(rows.trim(), "fine");

    let t_dl = dir.path("dl");
    let out = binlake(
        &[
            "replicate",
            "--source",
            &url,
            "--tables",
            "inv.*",
            "--target",
            &t_dl,
            "--start-at",
            "earliest",
            "--exit-when-caught-up",
            "--invalid-values",
            "dead_letter",
        ],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let kept = duck(&format!(
        "SELECT string_agg(ok, ',' ORDER BY id) FROM read_parquet('{t_dl}/inv/d/*.parquet')"
    ));
    assert_eq!(kept.trim(), "fine,after");
    let rej = duck(&format!("SELECT string_agg(\"table\" || '|' || reason || '|' || row_json, chr(10) ORDER BY _binlake_version) FROM read_parquet('{t_dl}/_binlake_rejects/*.parquet')"));
    let lines: Vec<&str> = rej.trim().lines().collect();
    assert_eq!(lines.len(), 2, "{rej}");
    assert!(
        lines[0].starts_with("inv.d|column `d`: date does not exist in the calendar (2024-02-30)")
            && lines[0].contains("\"ok\":\"feb30\""),
        "{rej}"
    );
    assert!(
        lines[1].contains("zero date") && lines[1].contains("\"ok\":\"zero\""),
        "{rej}"
    );
}
