//! `binlake maintain`: compaction, log checkpoints, tombstone purge and vacuum of a Delta
//! target (safe beside a running `replicate`; see `binlake_sink_delta::maintain`).

use std::process::ExitCode;

use crate::MaintainArgs;
#[cfg(feature = "delta")]
use crate::{config_error, init_logs};
#[cfg(feature = "delta")]
use binlake::config::Patterns;

#[cfg(feature = "delta")]
pub(crate) async fn maintain(m: MaintainArgs) -> anyhow::Result<ExitCode> {
    let fc = match m.config.load(&[&m.target, &m.tables, &m.delta, &m.log]) {
        Ok(f) => f,
        Err(e) => return config_error(e),
    };
    init_logs(fc.log_format.as_deref() == Some("json"));
    if fc.sink.as_deref().unwrap_or("delta") != "delta" {
        eprintln!("error: `maintain` works on Delta targets (--sink delta); Parquet compaction is not implemented yet");
        return Ok(ExitCode::from(2));
    }
    let Some(target) = fc.target.clone() else {
        return config_error(binlake::config::ConfigError::Key {
            key: "target",
            message: "required".into(),
        });
    };
    let opts = match binlake::config::Maintenance::resolve(&fc) {
        Ok(m) => maintain_options(&m),
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
    let cfg = binlake_sink_delta::DeltaConfig::new(
        target,
        fc.pipeline.clone().unwrap_or_else(|| "default".into()),
    );
    let mut failed = 0;
    for t in binlake_sink_delta::maintain::tables(&cfg).await? {
        let (db, name) = t.split_once('.').unwrap_or((&t, ""));
        if !filter.matches(db, name) {
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
    }
}

#[cfg(not(feature = "delta"))]
pub(crate) async fn maintain(_m: MaintainArgs) -> anyhow::Result<ExitCode> {
    eprintln!("error: `maintain` works on Delta targets; this binary was built without the `delta` feature");
    Ok(ExitCode::from(2))
}
