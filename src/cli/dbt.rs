//! `binlake dbt sources`: the dbt sources and staging models of the replicated tables.

use std::process::ExitCode;

use binlake::config::SinkKind;
use binlake::source;

use crate::{resolve, DbtArgs};

/// `binlake dbt sources`: reads the source's catalogue and writes the dbt files.
pub(crate) async fn dbt_sources(a: DbtArgs) -> anyhow::Result<ExitCode> {
    let all = match resolve(a.common.file_config()) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let settings = &all[0];
    let lake = |t: &str| -> String {
        if t.contains("://") && !t.starts_with("file://") {
            return t.trim_end_matches('/').to_string();
        }
        let p = t.strip_prefix("file://").unwrap_or(t);
        std::path::absolute(p)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| p.to_string())
            .trim_end_matches('/')
            .to_string()
    };
    let target = match settings.sink.kind {
        SinkKind::Parquet => binlake::dbt::DbtTarget::Parquet(lake(&settings.target)),
        SinkKind::Delta => binlake::dbt::DbtTarget::Delta(lake(&settings.target)),
        SinkKind::ClickHouse => binlake::dbt::DbtTarget::ClickHouse {
            prefix: settings.sink.clickhouse.database_prefix.clone(),
        },
    };
    // every pipeline's tables, under their target names (one model per target table)
    let mut described: Vec<binlake::dbt::DbtTable> = Vec::new();
    for s in &all {
        let opts = source::parse_url(&s.source.url).map_err(anyhow::Error::msg)?;
        let tables = binlake::snapshot::list_tables(&opts, &s.source.filter).await?;
        for mut t in binlake::dbt::describe(&opts, &tables, &s.pipeline.columns).await? {
            t.id = match s.map.target(&t.id) {
                Ok(id) => id,
                Err(e) => {
                    eprintln!("error: config key `map`: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            if s.origin_in_key {
                // shards share the table: the origin is part of each row's key
                t.columns.push(binlake::dbt::DbtColumn {
                    name: binlake::mapping::COL_ORIGIN.into(),
                    description:
                        "The pipeline (source) the row came from (origin_in_key): part of the key."
                            .into(),
                });
                if !t.key.is_empty() {
                    t.key.push(binlake::mapping::COL_ORIGIN.into());
                }
            } else if s.conflict.is_some() && !described.iter().any(|d| d.id == t.id) {
                // sources share the table, one row per key: the last writer's
                t.columns.push(binlake::dbt::DbtColumn {
                    name: binlake::mapping::COL_ORIGIN.into(),
                    description: "The pipeline (source) whose change is the row's current state (conflict = last_writer_wins)."
                        .into(),
                });
            }
            if !described.iter().any(|d| d.id == t.id) {
                described.push(t);
            }
        }
    }
    if described.is_empty() {
        eprintln!("error: no source table matches `tables`");
        return Ok(ExitCode::from(2));
    }
    let files = binlake::dbt::render(&described, &target, settings.pipeline.max_latency);
    for p in binlake::dbt::write(&a.project_dir, &files)? {
        println!("wrote {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}
