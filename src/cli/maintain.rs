//! `binlake maintain`: for a Delta target, compaction, log checkpoints, tombstone purge and vacuum
//! (safe beside a running `replicate`; see `binlake_sink_delta::maintain`); for a Parquet lake,
//! compaction (it takes the pipeline's writer lease, so it refuses while a `replicate` of the
//! pipeline runs: use `maintain_every` there; see `binlake_sink_parquet`'s `compact`).

use std::process::ExitCode;

use crate::MaintainArgs;
use crate::{config_error, init_logs};
use binlake::config::{Patterns, SinkKind};

pub(crate) async fn maintain(m: MaintainArgs) -> anyhow::Result<ExitCode> {
    let fc = match m.config.load(&[&m.target, &m.tables, &m.delta, &m.log]) {
        Ok(f) => f,
        Err(e) => return config_error(e),
    };
    init_logs(fc.log_format.as_deref() == Some("json"));
    let Some(target) = fc.target.clone() else {
        return config_error(binlake::config::ConfigError::Key {
            key: "target",
            message: "required".into(),
        });
    };
    let maintenance = match binlake::config::Maintenance::resolve(&fc) {
        Ok(m) => m,
        Err(e) => return config_error(e),
    };
    let patterns: Vec<String> = match &fc.tables {
        None => vec![],
        Some(Patterns::One(s)) => vec![s.clone()],
        Some(Patterns::Many(v)) => v.clone(),
    };
    let filter = match binlake::filter::TableFilter::parse(&patterns) {
        Ok(f) => f,
        Err(e) => {
            return config_error(binlake::config::ConfigError::Key {
                key: "tables",
                message: e.to_string(),
            })
        }
    };
    let pipeline = fc.pipeline.clone().unwrap_or_else(|| "default".into());
    let sink = match binlake::config::SinkSettings::resolve(&fc) {
        Ok(s) => s,
        Err(e) => return config_error(e),
    };
    match sink.kind {
        SinkKind::Parquet => maintain_parquet(target, pipeline, &maintenance, &filter).await,
        SinkKind::Delta => maintain_delta(target, pipeline, &maintenance, &filter).await,
        other => {
            eprintln!("error: `maintain` works on Parquet and Delta targets (--sink parquet|delta), not `{other}` (ClickHouse merges by itself; `maintain_every` in replicate runs OPTIMIZE)");
            Ok(ExitCode::from(2))
        }
    }
}

/// Compacts a Parquet lake's small files, as the pipeline's one writer.
#[cfg(feature = "parquet")]
async fn maintain_parquet(
    target: String,
    pipeline: String,
    m: &binlake::config::Maintenance,
    filter: &binlake::filter::TableFilter,
) -> anyhow::Result<ExitCode> {
    use binlake_sink::Sink;
    let cfg = binlake_sink_parquet::ParquetConfig::new(target.clone(), pipeline.clone());
    let mut sink = binlake_sink_parquet::ParquetSink::new(cfg)?;
    if let Err(e) = sink.open().await {
        if matches!(e, binlake_sink::SinkError::Conflict(_)) {
            eprintln!("error: {e}\n(a running `replicate` of this pipeline is the lake's one writer: compact there with `maintain_every`, or stop it first)");
            return Ok(ExitCode::from(1));
        }
        return Err(e.into());
    }
    let opts = crate::cli::sinks::compact_options(m);
    let select = |t: &str| selected(filter, t);
    let s = sink.compact(&opts, &select).await?;
    for r in &s.tables {
        println!(
            "{:<40} compacted {} files into {}, {} rows into {}",
            r.table, r.files_in, r.files_out, r.rows_in, r.rows_out
        );
    }
    println!(
        "{} table(s) compacted; {} replaced file(s) deleted (files are deleted {} after the compaction that replaced them)",
        s.tables.len(),
        s.deleted,
        humantime_secs(m.replaced_grace)
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "parquet"))]
async fn maintain_parquet(
    _target: String,
    _pipeline: String,
    _m: &binlake::config::Maintenance,
    _filter: &binlake::filter::TableFilter,
) -> anyhow::Result<ExitCode> {
    eprintln!("error: this binary was built without the `parquet` feature");
    Ok(ExitCode::from(2))
}

/// `--tables` selects the target table named `t` (`db.table`; a name that does not read back
/// as one is kept).
fn selected(filter: &binlake::filter::TableFilter, t: &str) -> bool {
    t.parse::<binlake_sink::TableId>()
        .map(|id| filter.matches(&id.db, &id.table))
        .unwrap_or(true)
}

fn humantime_secs(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s % 3600 == 0 && s > 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 && s > 0 {
        format!("{}m", s / 60)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(feature = "delta")]
async fn maintain_delta(
    target: String,
    pipeline: String,
    m: &binlake::config::Maintenance,
    filter: &binlake::filter::TableFilter,
) -> anyhow::Result<ExitCode> {
    let opts = maintain_options(m);
    let cfg = binlake_sink_delta::DeltaConfig::new(target, pipeline);
    let mut failed = 0;
    for t in binlake_sink_delta::maintain::tables(&cfg).await? {
        if !selected(filter, &t) {
            continue;
        }
        match binlake_sink_delta::maintain::maintain_table(&cfg, &t, &opts).await {
            Ok(r) => println!(
                "{:<40} compacted {} files into {}, purged {} tombstones, vacuumed {} files, now at version {}",
                r.table, r.files_compacted, r.files_written, r.tombstones_purged, r.files_vacuumed, r.version
            ),
            Err(e) => {
                failed += 1;
                eprintln!("error: {t}: {e}");
            }
        }
    }
    match binlake_sink_delta::maintain::maintain_watermarks(&cfg, &opts).await {
        Ok(Some(r)) => println!(
            "{:<40} trimmed {} rows, compacted {} files into {}, now at version {}",
            r.table, r.tombstones_purged, r.files_compacted, r.files_written, r.version
        ),
        Ok(None) => {}
        Err(e) => {
            failed += 1;
            eprintln!("error: {}: {e}", binlake_sink::WATERMARKS_TABLE);
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(feature = "delta")]
pub(crate) fn maintain_options(
    m: &binlake::config::Maintenance,
) -> binlake_sink_delta::maintain::MaintainOptions {
    binlake_sink_delta::maintain::MaintainOptions {
        target_file_size: m.target_file_size,
        vacuum_retention: m.vacuum_retention,
        tombstone_retention: m.tombstone_retention,
        watermark_retention: m.version_retention.unwrap_or(
            binlake_sink_delta::maintain::MaintainOptions::default().watermark_retention,
        ),
    }
}

#[cfg(not(feature = "delta"))]
async fn maintain_delta(
    _target: String,
    _pipeline: String,
    _m: &binlake::config::Maintenance,
    _filter: &binlake::filter::TableFilter,
) -> anyhow::Result<ExitCode> {
    eprintln!(
        "error: this binary was built without the `delta` feature (cargo build --features delta)"
    );
    Ok(ExitCode::from(2))
}
