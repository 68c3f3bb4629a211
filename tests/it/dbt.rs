//! The dbt example end to end: the demo's data (examples/demo.sql plus live changes) replicated
//! into Parquet and Delta, `binlake dbt sources` into a copy of examples/dbt, then `dbt build`
//! with dbt-duckdb in a network namespace of its own (no network at all: no package hub, no
//! extension download). The mart must equal the same aggregate computed on MariaDB.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        let n = name.to_string_lossy();
        // what a developer's local dbt run may have left in the example
        if ["target", "logs", "binlake"].contains(&n.as_ref()) || n.ends_with(".duckdb") {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(&name));
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

const MART_SQL: &str = "SELECT c.country, count(*), sum(o.amount) FROM shop.orders o JOIN shop.customers c ON c.id = o.customer_id WHERE o.status <> 'cancelled' GROUP BY c.country ORDER BY c.country";

fn dbt_example(name: &str, sink: &str) {
    let dir = TestDir::new(name);
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql(&std::fs::read_to_string(repo().join("examples/demo.sql")).unwrap());
    // changes after the load, as in the demo: updates, deletes, inserts, a NULL
    m.sql(
        "UPDATE shop.orders SET status = 'shipped' WHERE status = 'paid' AND id % 50 = 1;
         DELETE FROM shop.orders WHERE status = 'cancelled' AND id % 100 = 2;
         INSERT INTO shop.orders (customer_id, amount, status) VALUES (3, 99.99, 'new'), (4, 12.50, 'paid');
         UPDATE shop.customers SET email = NULL, country = 'JP' WHERE id = 5;",
    );
    let lake = dir.path("lake");
    let url = m.url();
    let extra = ["--sink", sink];
    catch_up(&m, &lake, "shop.*", &extra);
    // more changes, streamed (a second run resumes from the checkpoint)
    m.sql("UPDATE shop.orders SET amount = amount + 1 WHERE id % 97 = 0; DELETE FROM shop.orders WHERE id % 89 = 0;");
    catch_up(&m, &lake, "shop.*", &extra);

    let project = dir.0.join("dbt");
    copy_dir(&repo().join("examples/dbt"), &project);
    let project_s = project.display().to_string();
    let out = binlake(
        &[
            "dbt",
            "sources",
            "--source",
            &url,
            "--tables",
            "shop.*",
            "--sink",
            sink,
            "--target",
            &lake,
            "--project-dir",
            &project_s,
        ],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "dbt sources: {}", stderr(&out));
    let db = project.join("demo.duckdb").display().to_string();
    let out = Command::new("unshare")
        .args([
            "-n",
            "dbt",
            "build",
            "--profiles-dir",
            &project_s,
            "--project-dir",
            &project_s,
        ])
        .env("DBT_DUCKDB_PATH", &db)
        .env("DO_NOT_TRACK", "1")
        .env("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        .output()
        .expect("run dbt (pip install dbt-duckdb; tests/scripts/install-deps.sh does)");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dbt build failed:\n{log}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("ERROR=0"), "{log}");
    let q = |sql: &str| {
        let out = Command::new("python3")
            .args([
                "-c",
                "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True); print('\\n'.join('\\t'.join(str(v) for v in r) for r in c.sql(sys.argv[2]).fetchall()))",
                &db,
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let mart = q("SELECT country, orders, revenue FROM revenue_by_country ORDER BY country");
    let source = m.sql(MART_SQL).trim().to_string();
    assert_eq!(
        mart, source,
        "the mart differs from the same aggregate on MariaDB"
    );
    // the incremental model holds every change once: as many rows as changes in the target
    let changes = q("SELECT count(*), count(DISTINCT (id, _binlake_version)) FROM order_changes");
    let (a, b) = changes.split_once('\t').unwrap();
    assert_eq!(a, b, "order_changes holds a change twice");
    assert!(a.parse::<u64>().unwrap() > 20_000, "{changes}");
}

#[test]
fn dbt_example_builds_on_parquet_and_equals_mariadb() {
    dbt_example("dbt_pq", "parquet");
}

#[cfg(feature = "delta")]
#[test]
fn dbt_example_builds_on_delta_and_equals_mariadb() {
    dbt_example("dbt_delta", "delta");
}
