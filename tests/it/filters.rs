//! Filters, snapshot and stream alike: tables included and excluded, a column left out, a column
//! masked with a salted SHA-256, and changes dropped by origin (server id, GTID domain) so that a
//! two-way setup does not loop. `validate` applies the same column rules.

use std::time::Duration;

use crate::harness::*;

/// The current state (highest version per key, no tombstones) of `shop.users` in the Parquet
/// target, as `id:email` pairs.
fn target_users(target: &str) -> String {
    duck(&format!(
        "SELECT string_agg(id || ':' || email, ',' ORDER BY id) FROM (SELECT *, row_number() OVER (PARTITION BY id ORDER BY _binlake_version DESC) rn FROM read_parquet('{target}/shop/users/**/*.parquet', union_by_name = true)) WHERE rn = 1 AND NOT _binlake_deleted"
    ))
}

/// The same from the source, with the email hashed as binlake must hash it.
fn source_users(m: &Maria) -> String {
    m.sql("SELECT GROUP_CONCAT(CONCAT(id, ':', SHA2(CONCAT('pepper', email), 256)) ORDER BY id SEPARATOR ',') FROM shop.users")
        .trim()
        .to_string()
}

#[test]
fn column_rules_and_origin_filters_apply_to_snapshot_and_stream() {
    let dir = TestDir::new("filters");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql(
        "CREATE DATABASE shop; USE shop;
         CREATE TABLE shop.users (id INT PRIMARY KEY, email VARCHAR(100), secret VARCHAR(50), name VARCHAR(50));
         INSERT INTO shop.users SELECT seq, CONCAT('user', seq, '@example.com'), CONCAT('pw', seq), 'n' FROM seq_1_to_500;
         CREATE TABLE shop.audit_log (id INT PRIMARY KEY, what VARCHAR(50));
         INSERT INTO shop.audit_log VALUES (1, 'login');",
    );
    let target = dir.path("lake");
    let url = m.url();
    let rules = [
        "--exclude-columns",
        "shop.users.secret",
        "--mask",
        "users.email",
        "--mask-salt",
        "pepper",
    ];
    let mut args = vec![
        "replicate",
        "--source",
        &url,
        "--tables",
        "shop.*,!shop.audit_*",
        "--target",
        &target,
        "--max-latency",
        "200ms",
        "--exclude-server-ids",
        "77",
        "--exclude-gtid-domains",
        "5",
    ];
    args.extend_from_slice(&rules);
    let r = spawn_binlake(&args);
    // stream changes after the snapshot: an update, a delete, an insert, a NULL email
    m.sql(
        "UPDATE shop.users SET email = 'changed@example.com', secret = 'x' WHERE id = 7;
         DELETE FROM shop.users WHERE id = 8;
         INSERT INTO shop.users VALUES (1000, 'new@example.com', 'pw', 'n'), (1001, NULL, NULL, 'null email');
         INSERT INTO shop.audit_log VALUES (2, 'logout');",
    );
    let want = source_users(&m);
    wait_duck(
        &format!(
            "SELECT count(*) FROM read_parquet('{target}/shop/users/**/*.parquet') WHERE id = 1000"
        ),
        "1",
        Duration::from_secs(60),
    );
    // masked: every email (snapshot and stream rows) is sha256(salt || email); NULL stays NULL
    // (string_agg skips the NULL-email row's pair, as GROUP_CONCAT does)
    assert_eq!(target_users(&target), want);
    let cols = duck(&format!(
        "SELECT string_agg(name, ',' ORDER BY name) FROM (DESCRIBE SELECT * FROM read_parquet('{target}/shop/users/**/*.parquet', union_by_name = true)) t(name, a, b, c, d, e) WHERE name NOT LIKE '\\_binlake%' ESCAPE '\\'"
    ));
    assert_eq!(
        cols, "email,id,name",
        "the excluded column is not in the target"
    );
    assert!(
        !std::path::Path::new(&format!("{target}/shop/audit_log")).exists(),
        "an excluded table was written"
    );
    // validate applies the same rules to the source side
    let mut vargs = vec![
        "validate",
        "--source",
        &url,
        "--tables",
        "shop.*,!shop.audit_*",
        "--target",
        &target,
    ];
    vargs.extend_from_slice(&rules);
    let out = binlake(&vargs, Duration::from_secs(120));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "validate:\n{text}");

    // origin filters: a change written as server 77, one in GTID domain 5; then a marker
    m.sql("SET SESSION server_id = 77; INSERT INTO shop.users VALUES (2000, 'loop@example.com', 'pw', 'n');");
    m.sql("SET SESSION gtid_domain_id = 5; INSERT INTO shop.users VALUES (2001, 'dom@example.com', 'pw', 'n');");
    m.sql("INSERT INTO shop.users VALUES (2002, 'marker@example.com', 'pw', 'n');");
    wait_duck(
        &format!(
            "SELECT count(*) FROM read_parquet('{target}/shop/users/**/*.parquet') WHERE id = 2002"
        ),
        "1",
        Duration::from_secs(60),
    );
    let dropped = duck(&format!(
        "SELECT count(*) FROM read_parquet('{target}/shop/users/**/*.parquet') WHERE id IN (2000, 2001)"
    ));
    assert_eq!(dropped, "0", "changes of an excluded origin were applied");
    let out = terminate(r, Duration::from_secs(60));
    assert!(out.status.success(), "binlake failed:\n{}", stderr(&out));
}
