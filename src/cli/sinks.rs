//! Building the sink a configuration names (each build has the sinks of its cargo features).

use binlake::config::Settings;

#[cfg(feature = "delta")]
use crate::cli::maintain::maintain_options;

/// What the sinks are built from (each build reads the fields of the sinks it has).
#[allow(dead_code)]
pub(crate) struct SinkOpts<'a> {
    pub(crate) kind: &'a str,
    pub(crate) target: &'a str,
    pub(crate) pipeline: &'a str,
    pub(crate) zstd_level: i32,
    pub(crate) hard_deletes: bool,
    pub(crate) maintenance: &'a binlake::config::Maintenance,
    pub(crate) lz4: Option<bool>,
    pub(crate) database_prefix: &'a str,
    pub(crate) clickhouse_tls_ca: Option<&'a str>,
}

/// The sink a resolved configuration names.
pub(crate) fn settings_sink(settings: &Settings) -> anyhow::Result<Box<dyn binlake_sink::Sink>> {
    build_sink(&SinkOpts {
        kind: &settings.sink,
        target: &settings.target,
        pipeline: &settings.pipeline.name,
        zstd_level: settings.zstd_level,
        hard_deletes: settings.hard_deletes,
        maintenance: &settings.maintenance,
        lz4: settings.lz4,
        database_prefix: &settings.database_prefix,
        clickhouse_tls_ca: settings.clickhouse_tls_ca.as_deref(),
    })
}

pub(crate) fn build_sink(o: &SinkOpts) -> anyhow::Result<Box<dyn binlake_sink::Sink>> {
    let (target, pipeline) = (o.target, o.pipeline);
    match o.kind {
        #[cfg(feature = "parquet")]
        "parquet" => {
            let mut cfg = binlake_sink_parquet::ParquetConfig::new(target, pipeline);
            cfg.zstd_level = o.zstd_level;
            cfg.maintenance = o
                .maintenance
                .every
                .map(|every| (every, compact_options(o.maintenance)));
            cfg.validate()?;
            Ok(Box::new(binlake_sink_parquet::ParquetSink::new(cfg)?))
        }
        #[cfg(feature = "delta")]
        "delta" => {
            let mut cfg = binlake_sink_delta::DeltaConfig::new(target, pipeline);
            if o.hard_deletes {
                cfg.deletes = binlake_sink_delta::Deletes::Hard;
            }
            cfg.maintenance = o
                .maintenance
                .every
                .map(|every| (every, maintain_options(o.maintenance)));
            cfg.validate()?;
            Ok(Box::new(binlake_sink_delta::DeltaSink::new(cfg)?))
        }
        #[cfg(feature = "clickhouse")]
        "clickhouse" => {
            let mut cfg = binlake_sink_clickhouse::ClickHouseConfig::new(target, pipeline)?;
            cfg.database_prefix = o.database_prefix.to_string();
            cfg.tls_ca = o.clickhouse_tls_ca.map(str::to_string);
            match o.lz4 {
                Some(true) => cfg.compression = binlake_sink_clickhouse::Compression::Lz4,
                Some(false) => cfg.compression = binlake_sink_clickhouse::Compression::None,
                None => {} // the sink's default: LZ4, none to a loopback server
            }
            cfg.maintenance = o
                .maintenance
                .every
                .map(|every| (every, o.maintenance.tombstone_retention));
            cfg.validate()?;
            Ok(Box::new(binlake_sink_clickhouse::ClickHouseSink::new(cfg)?))
        }
        other => anyhow::bail!("sink `{other}` is not available in this build"),
    }
}

/// Parquet compaction's options from the maintenance settings.
#[cfg(feature = "parquet")]
pub(crate) fn compact_options(
    m: &binlake::config::Maintenance,
) -> binlake_sink_parquet::CompactOptions {
    binlake_sink_parquet::CompactOptions {
        target_file_size: m.target_file_size,
        version_retention: m.version_retention,
        grace: m.replaced_grace,
    }
}
