//! `binlake dbt sources`: a dbt `sources.yml` (plus, for lakes, current-state staging models and
//! their macros) describing the tables binlake keeps, from the source's catalogue.
//!
//! Invariants:
//! - The current-state relation has one stable name per sink, and it is where the key tests go:
//!   ClickHouse: the `<table>_current` view binlake maintains (source `<db>`, table
//!   `<table>_current`). Parquet and Delta: the generated model `stg_<db>__<table>`, which keeps
//!   the highest `_binlake_version` per key and drops tombstones (macro `binlake_current`).
//! - Columns are those the target holds: `exclude_columns` are left out and `mask`ed columns say
//!   so; every table lists the `_binlake_*` metadata columns with their meaning.
//! - Nothing generated reaches the network: Parquet is read with DuckDB's built-in
//!   `read_parquet`, Delta through dbt-duckdb's `delta` plugin (the `deltalake` Python package).
//! - Freshness uses `_binlake_synced_at`; thresholds are derived from `max_latency` (see
//!   [`freshness`]). Keyless tables get a source but no staging model or key tests (their current
//!   state is a multiset, not a row per key).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use binlake_sink::TableId;
use mysql_async::prelude::Queryable;
use thiserror::Error;

use crate::columns::ColumnRules;
use crate::source::{self, SourceError};

#[derive(Debug, Error)]
pub enum DbtError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
    #[error("dbt sources: {0}")]
    Definite(String),
}

/// Which target the generated project reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbtTarget {
    /// A local Parquet lake directory (absolute path).
    Parquet(String),
    /// A local Delta lake directory (absolute path).
    Delta(String),
    /// ClickHouse: the database prefix binlake uses.
    ClickHouse { prefix: String },
}

/// One source column as the target holds it.
#[derive(Debug, Clone)]
pub struct DbtColumn {
    pub name: String,
    pub description: String,
}

#[derive(Debug, Clone)]
pub struct DbtTable {
    pub id: TableId,
    pub description: String,
    pub columns: Vec<DbtColumn>,
    pub key: Vec<String>,
}

/// The metadata columns every replicated table has, and what they mean.
pub const METADATA_COLUMNS: [(&str, &str); 6] = [
    ("_binlake_version", "Orders changes to one row: strictly increases with source commit order, the same for the same transaction after a restart or from another replica. Use it as an incremental cursor."),
    ("_binlake_deleted", "True: the row was deleted at the source (a tombstone)."),
    ("_binlake_op", "insert, update, delete or snapshot (initial load or backfill)."),
    ("_binlake_commit_ts", "Commit time of the change at the source (UTC)."),
    ("_binlake_synced_at", "When binlake wrote the row to the target (UTC): the freshness field."),
    ("_binlake_source", "Provenance: origin server id, GTID, the server read from, binlog file and position."),
];

/// Freshness thresholds in minutes: warn after 60x `max_latency` (at least 60 minutes), error
/// after 24x that. The newest `_binlake_synced_at` of a table is its newest change: a quiet table
/// looks stale however healthy the pipeline, so the thresholds are loose; the pipeline's own
/// liveness is in `_binlake_watermarks` (the `*` row), which gets a tighter threshold.
pub fn freshness(max_latency: Duration) -> (u64, u64) {
    let warn = (max_latency.as_secs_f64().ceil() as u64 * 60).max(60);
    (warn, warn * 24)
}

/// Reads the catalogue of `tables` (after the column rules).
pub async fn describe(
    opts: &mysql_async::Opts,
    tables: &[TableId],
    rules: &ColumnRules,
) -> Result<Vec<DbtTable>, DbtError> {
    let mut conn = source::connect(opts).await?;
    let q = |e| SourceError::from_mysql(e, "reading information_schema");
    let mut out = Vec::new();
    for id in tables {
        let comment: Option<String> = conn
            .exec_first(
                "SELECT TABLE_COMMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&id.db, &id.table),
            )
            .await
            .map_err(q)?;
        let cols: Vec<(String, String, String)> = conn
            .exec(
                "SELECT COLUMN_NAME, COLUMN_TYPE, COLUMN_COMMENT FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (&id.db, &id.table),
            )
            .await
            .map_err(q)?;
        let key: Vec<String> = conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = ? \
                 AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
                (&id.db, &id.table),
            )
            .await
            .map_err(q)?;
        let mut columns = Vec::new();
        for (name, ty, comment) in cols {
            match rules.column_rule(&id.db, &id.table, &name) {
                crate::columns::Rule::Excluded => {
                    if key.contains(&name) {
                        return Err(DbtError::Definite(format!(
                            "exclude_columns: `{name}` is part of the primary key of {id}"
                        )));
                    }
                    continue;
                }
                crate::columns::Rule::Masked => columns.push(DbtColumn {
                    description: join(
                        &format!("Masked: SHA-256 (hex) of the salted value (source type {ty})."),
                        &comment,
                    ),
                    name,
                }),
                crate::columns::Rule::Kept => columns.push(DbtColumn {
                    description: join(&format!("Source type: {ty}."), &comment),
                    name,
                }),
            }
        }
        let what = if key.is_empty() {
            format!("Replicated by binlake from {id} (no primary key: an append-only change log).")
        } else {
            format!(
                "Replicated by binlake from {id}: every change, one row per version (primary key: {}).",
                key.join(", ")
            )
        };
        out.push(DbtTable {
            id: id.clone(),
            description: join(&what, comment.as_deref().unwrap_or("")),
            columns,
            key,
        });
    }
    Ok(out)
}

fn join(a: &str, comment: &str) -> String {
    if comment.trim().is_empty() {
        a.to_string()
    } else {
        format!("{a} {}", comment.trim())
    }
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Model name of a table's current state in a lake: `stg_<db>__<table>`.
pub fn model_name(id: &TableId) -> String {
    format!("stg_{}__{}", id.db, id.table)
}

fn columns_yaml(o: &mut String, indent: &str, t: &DbtTable, key_tests: bool) {
    let _ = writeln!(o, "{indent}columns:");
    for c in &t.columns {
        let _ = writeln!(o, "{indent}  - name: {}", q(&c.name));
        let _ = writeln!(o, "{indent}    description: {}", q(&c.description));
        if key_tests && t.key.len() == 1 && t.key[0] == c.name {
            let _ = writeln!(o, "{indent}    data_tests: [unique, not_null]");
        } else if key_tests && t.key.contains(&c.name) {
            let _ = writeln!(o, "{indent}    data_tests: [not_null]");
        }
    }
    for (name, what) in METADATA_COLUMNS {
        let _ = writeln!(o, "{indent}  - name: {name}");
        let _ = writeln!(o, "{indent}    description: {}", q(what));
    }
}

fn key_combination_test(o: &mut String, indent: &str, t: &DbtTable) {
    if t.key.len() > 1 {
        let cols = t.key.iter().map(|k| q(k)).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            o,
            "{indent}data_tests:\n{indent}  - binlake_unique_key:\n{indent}      arguments:\n{indent}        columns: [{cols}]"
        );
    }
}

/// The generated files: (path relative to the dbt project, contents).
pub fn render(
    tables: &[DbtTable],
    target: &DbtTarget,
    max_latency: Duration,
) -> Vec<(PathBuf, String)> {
    let (warn, error) = freshness(max_latency);
    let mut dbs: Vec<&str> = tables.iter().map(|t| t.id.db.as_str()).collect();
    dbs.dedup();
    let mut src = String::from(
        "# Generated by `binlake dbt sources`; regenerate it after schema changes.\nversion: 2\n\nsources:\n",
    );
    let fresh = format!(
        "    loaded_at_field: _binlake_synced_at\n    freshness:\n      warn_after: {{count: {warn}, period: minute}}\n      error_after: {{count: {error}, period: minute}}\n"
    );
    for db in &dbs {
        let _ = writeln!(src, "  - name: {}", q(db));
        let _ = writeln!(
            src,
            "    description: {}",
            q(&format!(
                "Tables of the MySQL/MariaDB database `{db}`, replicated by binlake."
            ))
        );
        match target {
            DbtTarget::Parquet(lake) => {
                let _ = writeln!(src, "    meta:");
                let _ = writeln!(src, "      binlake_target: {}", q(lake));
                let _ = writeln!(
                    src,
                    "      external_location: {}",
                    q(&format!(
                        "read_parquet('{{binlake_target}}/{db}/{{name}}/**/*.parquet', union_by_name = true)"
                    ))
                );
            }
            DbtTarget::Delta(_) => {
                let _ = writeln!(src, "    meta:\n      plugin: delta");
            }
            DbtTarget::ClickHouse { prefix } => {
                let _ = writeln!(src, "    schema: {}", q(&format!("{prefix}{db}")));
            }
        }
        src.push_str(&fresh);
        let _ = writeln!(src, "    tables:");
        for t in tables.iter().filter(|t| t.id.db == *db) {
            let _ = writeln!(src, "      - name: {}", q(&t.id.table));
            let _ = writeln!(src, "        description: {}", q(&t.description));
            if let DbtTarget::Delta(lake) = target {
                let _ = writeln!(
                    src,
                    "        meta:\n          delta_table_path: {}",
                    q(&format!("{lake}/{}/{}", t.id.db, t.id.table))
                );
            }
            columns_yaml(&mut src, "        ", t, false);
            if matches!(target, DbtTarget::ClickHouse { .. }) && !t.key.is_empty() {
                // the current-state view: one row per key, tombstones dropped
                let _ = writeln!(
                    src,
                    "      - name: {}",
                    q(&format!("{}_current", t.id.table))
                );
                let _ = writeln!(
                    src,
                    "        description: {}",
                    q(&format!(
                        "Current state of {} (highest _binlake_version per key, no tombstones): the source table.",
                        t.id
                    ))
                );
                columns_yaml(&mut src, "        ", t, true);
                key_combination_test(&mut src, "        ", t);
            }
        }
    }
    // the pipeline's own liveness
    let wm_db = match target {
        DbtTarget::ClickHouse { prefix } => Some(format!("{prefix}binlake")),
        _ => None,
    };
    src.push_str("  - name: binlake\n    description: \"binlake's own tables.\"\n");
    match (target, &wm_db) {
        (DbtTarget::Parquet(lake), _) => {
            let _ = writeln!(
                src,
                "    meta:\n      external_location: {}",
                q(&format!("read_parquet('{lake}/{{name}}/*.parquet')"))
            );
        }
        (DbtTarget::Delta(_), _) => src.push_str("    meta:\n      plugin: delta\n"),
        (_, Some(db)) => {
            let _ = writeln!(src, "    schema: {}", q(db));
        }
        _ => {}
    }
    let _ = writeln!(
        src,
        "    tables:\n      - name: _binlake_watermarks\n        description: \"Per table (and `*` for the pipeline): the last applied GTID, its source commit time, and when it was applied. The latest row per (pipeline, table) is the watermark.\"\n        loaded_at_field: applied_at\n        freshness:\n          warn_after: {{count: {}, period: minute}}\n          error_after: {{count: {}, period: minute}}",
        (warn / 6).max(10),
        warn
    );
    if let DbtTarget::Delta(lake) = target {
        let _ = writeln!(
            src,
            "        meta:\n          delta_table_path: {}",
            q(&format!("{lake}/_binlake_watermarks"))
        );
    }
    let mut files = vec![(PathBuf::from("models/binlake/_binlake__sources.yml"), src)];
    if matches!(target, DbtTarget::ClickHouse { .. }) {
        files.push((PathBuf::from("macros/binlake.sql"), MACROS.to_string()));
        return files;
    }
    // lakes: a current-state model per keyed table, tested on its key
    let materialized = match target {
        // the delta plugin registers the table in the dbt process only: persist the state
        DbtTarget::Delta(_) => "table",
        _ => "view",
    };
    let mut models = String::from("# Generated by `binlake dbt sources`.\nversion: 2\n\nmodels:\n");
    for t in tables.iter().filter(|t| !t.key.is_empty()) {
        let name = model_name(&t.id);
        let keys = t.key.iter().map(|k| q(k)).collect::<Vec<_>>().join(", ");
        files.push((
            PathBuf::from(format!("models/binlake/{name}.sql")),
            format!(
                "-- Generated by `binlake dbt sources`: the current state of {id}.\n{{{{ config(materialized='{materialized}') }}}}\n{{{{ binlake_current(source({db}, {tbl}), [{keys}]) }}}}\n",
                id = t.id,
                db = q(&t.id.db).replace('"', "'"),
                tbl = q(&t.id.table).replace('"', "'"),
                keys = keys.replace('"', "'"),
            ),
        ));
        let _ = writeln!(models, "  - name: {name}");
        let _ = writeln!(
            models,
            "    description: {}",
            q(&format!(
                "Current state of {} (highest _binlake_version per key, no tombstones): the source table.",
                t.id
            ))
        );
        columns_yaml(&mut models, "    ", t, true);
        key_combination_test(&mut models, "    ", t);
    }
    files.push((PathBuf::from("models/binlake/_binlake__models.yml"), models));
    files.push((PathBuf::from("macros/binlake.sql"), MACROS.to_string()));
    files
}

/// `binlake_current`: the current-state rule; `binlake_unique_key`: a composite-key test.
const MACROS: &str = r#"{# Generated by `binlake dbt sources`. #}

{# The current state of a binlake table: per key, the row with the highest _binlake_version,
   unless that row is a tombstone (_binlake_deleted). #}
{% macro binlake_current(relation, key_columns) %}
select * exclude (_binlake_rn)
from (
    select *, row_number() over (
        partition by {{ key_columns | join(', ') }}
        order by _binlake_version desc
    ) as _binlake_rn
    from {{ relation }}
) as versions
where _binlake_rn = 1 and not _binlake_deleted
{% endmacro %}

{# Fails for every key (combination of columns) that appears more than once. #}
{% test binlake_unique_key(model, columns) %}
select {{ columns | join(', ') }}, count(*) as n
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}
"#;

/// Writes the generated files under the dbt project directory.
pub fn write(project: &Path, files: &[(PathBuf, String)]) -> Result<Vec<PathBuf>, DbtError> {
    let mut written = Vec::new();
    for (rel, text) in files {
        let path = project.join(rel);
        let err = |e: std::io::Error| DbtError::Write {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        std::fs::write(&path, text).map_err(err)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(db: &str, name: &str, key: &[&str]) -> DbtTable {
        DbtTable {
            id: TableId::new(db, name),
            description: "d".into(),
            columns: ["id", "a", "b"]
                .iter()
                .map(|c| DbtColumn {
                    name: c.to_string(),
                    description: format!("col {c} with \"quotes\""),
                })
                .collect(),
            key: key.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn lake_models_and_tests() {
        let tables = [
            t("shop", "orders", &["id"]),
            t("shop", "pairs", &["a", "b"]),
            t("shop", "log", &[]),
        ];
        let files = render(
            &tables,
            &DbtTarget::Parquet("/lake".into()),
            Duration::from_secs(1),
        );
        let names: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
        assert!(names.contains(&"models/binlake/stg_shop__orders.sql".to_string()));
        assert!(names.contains(&"models/binlake/stg_shop__pairs.sql".to_string()));
        assert!(
            !names.iter().any(|n| n.contains("stg_shop__log")),
            "keyless: no model"
        );
        let models = &files
            .iter()
            .find(|(p, _)| p.ends_with("_binlake__models.yml"))
            .unwrap()
            .1;
        assert!(models.contains("data_tests: [unique, not_null]"));
        assert!(models.contains("binlake_unique_key"));
        let src = &files[0].1;
        assert!(src.contains("loaded_at_field: _binlake_synced_at"));
        assert!(src.contains("warn_after: {count: 60, period: minute}"));
        assert!(src.contains("\\\"quotes\\\""));
        let orders = &files
            .iter()
            .find(|(p, _)| p.ends_with("stg_shop__orders.sql"))
            .unwrap()
            .1;
        assert!(
            orders.contains("binlake_current(source('shop', 'orders'), ['id'])"),
            "{orders}"
        );
        assert!(orders.contains("materialized='view'"));
    }

    #[test]
    fn clickhouse_tests_the_current_view() {
        let files = render(
            &[t("shop", "orders", &["id"])],
            &DbtTarget::ClickHouse {
                prefix: "raw_".into(),
            },
            Duration::from_secs(1),
        );
        let src = &files[0].1;
        assert!(src.contains("schema: \"raw_shop\""));
        assert!(src.contains("name: \"orders_current\""));
        assert!(src.contains("data_tests: [unique, not_null]"));
        assert_eq!(freshness(Duration::from_secs(5)), (300, 7200));
    }
}
