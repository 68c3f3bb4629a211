//! Building the sink a configuration names (each build has the sinks of its cargo features).

#[allow(unused_imports)] // each build uses the enums of its sinks
use binlake::config::{Deletes, InsertCompression, Settings, SinkKind};

#[cfg(feature = "delta")]
use crate::cli::maintain::maintain_options;

/// What a sink is built from: the target, the pipeline, the sinks' settings and maintenance.
pub(crate) struct SinkOpts<'a> {
    pub(crate) target: &'a str,
    pub(crate) pipeline: &'a str,
    pub(crate) sink: &'a binlake::config::SinkSettings,
    #[allow(dead_code)] // read by the sinks of this build that have maintenance
    pub(crate) maintenance: &'a binlake::config::Maintenance,
}

/// The sink a resolved configuration names.
/// The sink a resolved configuration names, writing each table to its `map` target.
pub(crate) fn settings_sink(settings: &Settings) -> anyhow::Result<Box<dyn binlake_sink::Sink>> {
    let sink = build_sink(&SinkOpts {
        target: &settings.target,
        pipeline: &settings.pipeline.name,
        sink: &settings.sink,
        maintenance: &settings.maintenance,
    })?;
    Ok(Box::new(binlake::mapping::MappedSink::new(
        sink,
        settings.map.clone(),
        &settings.pipeline.name,
        settings.origin_in_key,
        settings.conflict,
    )))
}

pub(crate) fn build_sink(o: &SinkOpts) -> anyhow::Result<Box<dyn binlake_sink::Sink>> {
    let (target, pipeline) = (o.target, o.pipeline);
    match o.sink.kind {
        #[cfg(feature = "parquet")]
        SinkKind::Parquet => {
            let mut cfg = binlake_sink_parquet::ParquetConfig::new(target, pipeline);
            cfg.zstd_level = o.sink.parquet.zstd_level;
            cfg.maintenance = o
                .maintenance
                .every
                .map(|every| (every, compact_options(o.maintenance)));
            cfg.validate()?;
            Ok(Box::new(binlake_sink_parquet::ParquetSink::new(cfg)?))
        }
        #[cfg(feature = "delta")]
        SinkKind::Delta => {
            let mut cfg = binlake_sink_delta::DeltaConfig::new(target, pipeline);
            cfg.deletes = match o.sink.delta.deletes {
                Deletes::Soft => binlake_sink_delta::Deletes::Soft,
                Deletes::Hard => binlake_sink_delta::Deletes::Hard,
            };
            cfg.rewrite_budget = o.sink.delta.rewrite_budget;
            for (pattern, columns) in &o.sink.delta.partitions {
                let filter = binlake::filter::TableFilter::parse(&[pattern])
                    .map_err(|e| anyhow::anyhow!("layout: {e}"))?;
                cfg.partitions.push(binlake_sink_delta::Partitioning {
                    pattern: pattern.clone(),
                    matches: std::sync::Arc::new(move |db: &str, t: &str| filter.matches(db, t)),
                    columns: columns.clone(),
                });
            }
            cfg.maintenance = o
                .maintenance
                .every
                .map(|every| (every, maintain_options(o.maintenance)));
            cfg.validate()?;
            Ok(Box::new(binlake_sink_delta::DeltaSink::new(cfg)?))
        }
        #[cfg(feature = "clickhouse")]
        SinkKind::ClickHouse => {
            use binlake_sink_clickhouse::Compression;
            let ch = &o.sink.clickhouse;
            let mut cfg = binlake_sink_clickhouse::ClickHouseConfig::new(target, pipeline)?;
            cfg.database_prefix = ch.database_prefix.clone();
            cfg.tls_ca = ch.tls_ca.clone();
            for l in &ch.layouts {
                let filter = binlake::filter::TableFilter::parse(&[&l.tables])
                    .map_err(|e| anyhow::anyhow!("layout: {e}"))?;
                cfg.layouts.push(binlake_sink_clickhouse::Layout {
                    pattern: l.tables.clone(),
                    matches: Some(std::sync::Arc::new(move |db: &str, t: &str| {
                        filter.matches(db, t)
                    })),
                    order_by: l.order_by.clone(),
                    partition_by: l.partition_by.clone(),
                    ttl: l.ttl.clone(),
                    settings: l.settings.clone(),
                    column_types: l.column_types.clone(),
                });
            }
            match ch.compression {
                InsertCompression::Lz4 => cfg.compression = Compression::Lz4,
                InsertCompression::None => cfg.compression = Compression::None,
                InsertCompression::Auto => {} // the sink's default: LZ4, none to a loopback server
            }
            cfg.maintenance = o
                .maintenance
                .every
                .map(|every| (every, o.maintenance.tombstone_retention));
            cfg.validate()?;
            Ok(Box::new(binlake_sink_clickhouse::ClickHouseSink::new(cfg)?))
        }
        #[allow(unreachable_patterns)] // every sink is in a full build
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
