//! The `binlake` command line. `anyhow` lives here only; the library's errors are typed.

use std::process::ExitCode;

use anyhow::Context;
use binlake::config::{FileConfig, Patterns, Settings, Size, SourceEntry, Sources};
use binlake::pipeline;
use binlake::source;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "binlake",
    version,
    about = "Replicate MySQL/MariaDB tables into an analytics lake from the binlog"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check that the source is set up for binlake (settings, GTIDs, grants).
    Check(Common),
    /// Stream changes into the target until stopped (SIGINT/SIGTERM) or caught up.
    Replicate(Common),
    /// Maintain a Delta target: compaction, log checkpoints, tombstone purge, vacuum.
    Maintain(MaintainArgs),
    /// Print the checkpoint a target holds (position, tables, lag) without a running process.
    Status(Common),
    /// Decode a binlog file and print its events and rows (for debugging).
    Decode {
        file: std::path::PathBuf,
        /// Print at most this many rows.
        #[arg(long, default_value_t = 50)]
        rows: usize,
    },
    /// Print the MySQL -> Arrow type map as a Markdown table.
    Types,
    /// Compare source and target chunk by chunk (counts and row checksums); exit 0 only when
    /// everything matches. `--repair` backfills the differing key ranges in a running replicate.
    Validate(ValidateArgs),
    /// dbt: generate sources (and, for lakes, current-state staging models) for the tables
    /// binlake keeps.
    Dbt {
        #[command(subcommand)]
        cmd: DbtCmd,
    },
    /// Re-snapshot tables (or a key range) in a running `replicate`, which does the work (one
    /// writer per target): it must run with `control_addr`.
    Backfill {
        /// Tables: globs over db.table, within the pipeline's tables.
        #[arg(long)]
        tables: String,
        /// Only rows matching this SQL predicate (e.g. "id BETWEEN 1 AND 1000").
        #[arg(long = "where")]
        filter: Option<String>,
        /// The running replicate's control_addr.
        #[arg(long, default_value = "127.0.0.1:7219")]
        control: String,
    },
}

#[derive(Subcommand)]
enum DbtCmd {
    /// Write models/binlake/_binlake__sources.yml (one source per database: tables, columns with
    /// their MySQL type and comment, the metadata columns, freshness), and for Parquet and Delta
    /// the current-state models stg_<db>__<table> with unique/not_null key tests, plus
    /// macros/binlake.sql. Reads the source's catalogue; the same flags as `replicate`.
    Sources(DbtArgs),
}

#[derive(Args)]
struct DbtArgs {
    #[command(flatten)]
    common: Common,
    /// The dbt project directory to write into.
    #[arg(long, default_value = ".")]
    project_dir: std::path::PathBuf,
}

#[derive(Args)]
struct ValidateArgs {
    #[command(flatten)]
    common: Common,
    /// Backfill the differing key ranges through the running replicate's control_addr, wait
    /// for them, and validate those tables again.
    #[arg(long)]
    repair: bool,
    /// The running replicate's control_addr (for --repair).
    #[arg(long, default_value = "127.0.0.1:7219")]
    control: String,
    /// Rows per compared chunk.
    #[arg(long, default_value_t = 10_000)]
    chunk: usize,
}

#[derive(Args)]
struct MaintainArgs {
    #[command(flatten)]
    common: Common,
}

/// Flags shared by the commands; each has the config-file key of the same name.
#[derive(Args, Default)]
struct Common {
    /// TOML config file; flags override its keys.
    #[arg(long)]
    config: Option<String>,
    /// mysql://user:password@host:port; repeat for several servers of one topology.
    #[arg(long)]
    source: Vec<String>,
    /// Several sources: failover (default) or active-active.
    #[arg(long)]
    mode: Option<String>,
    /// PEM bundle of the CA(s) that signed the source's certificate (turns on verified TLS).
    #[arg(long)]
    tls_ca: Option<String>,
    /// Client certificate (PEM) for source users that REQUIRE X509 (with --tls-key).
    #[arg(long)]
    tls_cert: Option<String>,
    /// The client certificate's private key (PEM).
    #[arg(long)]
    tls_key: Option<String>,
    /// Drop changes written by these server ids (comma-separated; two-way setups).
    #[arg(long, value_delimiter = ',')]
    exclude_server_ids: Vec<u32>,
    /// Drop changes of these MariaDB GTID domains (comma-separated).
    #[arg(long, value_delimiter = ',')]
    exclude_gtid_domains: Vec<u32>,
    /// Columns left out of the target: [db.]table.column globs (repeat or comma-separate).
    #[arg(long)]
    exclude_columns: Vec<String>,
    /// Columns replaced by a salted SHA-256: [db.]table.column globs.
    #[arg(long)]
    mask: Vec<String>,
    /// Salt for --mask (prefer the config file with ${ENV}).
    #[arg(long)]
    mask_salt: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9187).
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Tables to replicate: globs over db.table, `!` excludes (repeat or comma-separate).
    #[arg(long)]
    tables: Vec<String>,
    /// Sink: parquet.
    #[arg(long)]
    sink: Option<String>,
    /// Target: a directory or s3://bucket/prefix.
    #[arg(long)]
    target: Option<String>,
    /// Without a checkpoint in the target: snapshot (the default: existing rows, then changes),
    /// earliest, current, a GTID, or file:position.
    #[arg(long)]
    start_at: Option<String>,
    /// Stop once everything the server had at start is applied.
    #[arg(long)]
    exit_when_caught_up: bool,
    /// Pipeline name (several pipelines may share a target).
    #[arg(long)]
    pipeline: Option<String>,
    /// null, fail or dead_letter.
    #[arg(long)]
    invalid_values: Option<String>,
    #[arg(long)]
    max_batch_rows: Option<usize>,
    /// e.g. 64MiB
    #[arg(long)]
    max_batch_bytes: Option<String>,
    /// e.g. 1s, 500ms
    #[arg(long)]
    max_latency: Option<String>,
    #[arg(long)]
    checkpoint_interval: Option<String>,
    #[arg(long)]
    heartbeat: Option<String>,
    /// Replica server id binlake registers with.
    #[arg(long)]
    server_id: Option<u32>,
    #[arg(long)]
    zstd_level: Option<i32>,
    /// text or json
    #[arg(long)]
    log_format: Option<String>,
    /// Delta: soft (tombstones) or hard.
    #[arg(long)]
    deletes: Option<String>,
    /// Delta: `replicate` runs maintenance this often, e.g. 6h (default: never).
    #[arg(long)]
    maintain_every: Option<String>,
    /// Delta maintenance: compaction's target file size [default: 128MiB].
    #[arg(long)]
    target_file_size: Option<String>,
    /// Delta maintenance: vacuum keeps files any version younger than this needs [default: 7d].
    #[arg(long)]
    vacuum_retention: Option<String>,
    /// Delta maintenance: tombstones (deleted rows) older than this are purged [default: 7d].
    #[arg(long)]
    tombstone_retention: Option<String>,
    /// ClickHouse inserts: auto (default: LZ4, none to a loopback server), lz4 or none.
    #[arg(long)]
    compression: Option<String>,
    /// ClickHouse: prefix for the database names binlake creates.
    #[arg(long)]
    database_prefix: Option<String>,
    /// ClickHouse over https: PEM bundle of the private CA that signed the server's certificate.
    #[arg(long)]
    clickhouse_tls_ca: Option<String>,
    /// Snapshots: key ranges read at once [default: 2].
    #[arg(long)]
    snapshot_parallelism: Option<usize>,
    /// Snapshots: rows per chunk [default: 20000].
    #[arg(long)]
    snapshot_chunk_rows: Option<usize>,
    /// Listen here for `binlake backfill` (e.g. 127.0.0.1:7219; off by default).
    #[arg(long)]
    control_addr: Option<String>,
}

impl Common {
    fn file_config(&self) -> Result<FileConfig, binlake::config::ConfigError> {
        let base = match &self.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let flags = FileConfig {
            source: (!self.source.is_empty()).then(|| match self.source.as_slice() {
                [one] => Sources::One(one.clone()),
                many => Sources::Many(many.iter().cloned().map(SourceEntry::Url).collect()),
            }),
            mode: self.mode.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            exclude_server_ids: (!self.exclude_server_ids.is_empty())
                .then(|| self.exclude_server_ids.clone()),
            exclude_gtid_domains: (!self.exclude_gtid_domains.is_empty())
                .then(|| self.exclude_gtid_domains.clone()),
            exclude_columns: (!self.exclude_columns.is_empty())
                .then(|| Patterns::Many(self.exclude_columns.clone())),
            mask: (!self.mask.is_empty()).then(|| Patterns::Many(self.mask.clone())),
            mask_salt: self.mask_salt.clone(),
            metrics_addr: self.metrics_addr.clone(),
            tables: (!self.tables.is_empty()).then(|| Patterns::Many(self.tables.clone())),
            sink: self.sink.clone(),
            target: self.target.clone(),
            start_at: self.start_at.clone(),
            exit_when_caught_up: self.exit_when_caught_up.then_some(true),
            pipeline: self.pipeline.clone(),
            invalid_values: self.invalid_values.clone(),
            max_batch_rows: self.max_batch_rows,
            max_batch_bytes: self.max_batch_bytes.clone().map(Size::Text),
            max_latency: self.max_latency.clone(),
            checkpoint_interval: self.checkpoint_interval.clone(),
            heartbeat: self.heartbeat.clone(),
            server_id: self.server_id,
            zstd_level: self.zstd_level,
            log_format: self.log_format.clone(),
            deletes: self.deletes.clone(),
            maintain_every: self.maintain_every.clone(),
            target_file_size: self.target_file_size.clone().map(Size::Text),
            vacuum_retention: self.vacuum_retention.clone(),
            tombstone_retention: self.tombstone_retention.clone(),
            compression: self.compression.clone(),
            database_prefix: self.database_prefix.clone(),
            clickhouse_tls_ca: self.clickhouse_tls_ca.clone(),
            snapshot_parallelism: self.snapshot_parallelism,
            snapshot_chunk_rows: self.snapshot_chunk_rows,
            control_addr: self.control_addr.clone(),
            control_token: None,
            backfill: None,
        };
        Ok(base.overlay(flags))
    }
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // deltalake's MERGE warns about a missing scan metric on every merge: noise, not news.
        tracing_subscriber::EnvFilter::new(
            "warn,binlake=info,binlake_sink=info,binlake_sink_parquet=info,binlake_sink_delta=info,deltalake_core::operations::merge=error",
        )
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

/// Exit codes: 0 done, 1 runtime failure, 2 bad configuration, 3 the source fails preflight.
/// glibc gives threads that allocate at once arenas of their own (up to 8 per core) and keeps
/// freed memory in each. Readers, the pipeline and encoder threads hand large buffers to each
/// other, so memory freed in one arena is not reused by the next batch built in another: a
/// 5M-row Delta snapshot peaked at 570 MiB RSS with the default and 360 MiB with 2 arenas, at
/// the same speed. One arena per core (`MALLOC_ARENA_MAX` still wins when set).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, cores.clamp(2, 64) as libc::c_int);
        }
    }
}

fn main() -> ExitCode {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    limit_malloc_arenas();
    let cli = Cli::parse();
    // One TLS crypto provider for every client (source, ClickHouse, object stores): with more
    // than one compiled in, rustls would otherwise refuse to pick.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Types => {
            print!("{}", binlake::schema::type_map_markdown());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Decode { file, rows } => {
            let (dump, err) = binlake::decode::file::dump_file(&file);
            println!(
                "server: {}  events: {}  rows: {}",
                dump.server_version,
                dump.events,
                dump.rows.len()
            );
            for g in &dump.gtids {
                println!("gtid {g}");
            }
            for (t, r) in dump.rows.iter().take(rows) {
                println!("{t} {:?} before={:?} after={:?}", r.kind, r.before, r.after);
            }
            match err {
                Some(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(1))
                }
                None => Ok(ExitCode::SUCCESS),
            }
        }
        Cmd::Check(c) => {
            let fc = match c.file_config() {
                Ok(f) => f,
                Err(e) => return config_error(e),
            };
            init_logs(fc.log_format.as_deref() == Some("json"));
            let urls = fc.source_urls();
            if urls.is_empty() {
                return config_error(binlake::config::ConfigError::Key {
                    key: "source",
                    message: "required: mysql://user:password@host:port".into(),
                });
            }
            let mut failed = 0;
            for url in &urls {
                let opts = match source::parse_url(url) {
                    Ok(o) => o,
                    Err(e) => {
                        return config_error(binlake::config::ConfigError::Key {
                            key: e.key(),
                            message: e.to_string(),
                        });
                    }
                };
                if urls.len() > 1 {
                    println!("== {}", source::redact(url));
                }
                let mut conn = match source::connect(&opts).await {
                    Ok(c) => c,
                    Err(e @ source::SourceError::Tls { .. }) => {
                        eprintln!("error: source {}: {e}", source::redact(url));
                        return Ok(ExitCode::from(3));
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("source {}", source::redact(url)))
                    }
                };
                let report = source::preflight::run(&mut conn).await?;
                print!("{report}");
                failed += report.failures().count();
            }
            if failed > 0 {
                eprintln!(
                    "error: {failed} check(s) failed; fix them and run `binlake check` again"
                );
                Ok(ExitCode::from(3))
            } else {
                println!("source is ready for binlake");
                Ok(ExitCode::SUCCESS)
            }
        }
        Cmd::Maintain(m) => maintain(m).await,
        Cmd::Dbt {
            cmd: DbtCmd::Sources(a),
        } => dbt_sources(a).await,
        Cmd::Validate(v) => validate(v).await,
        Cmd::Backfill {
            tables,
            filter,
            control,
        } => {
            let req = binlake::control::BackfillRequest {
                tables,
                filter,
                absent: vec![],
            };
            match binlake::control::request_backfill(&control, &req).await {
                Ok(queued) => {
                    for t in queued {
                        println!("backfill queued: {t}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Cmd::Status(c) => {
            let fc = match c.file_config() {
                Ok(f) => f,
                Err(e) => return config_error(e),
            };
            let target = fc.target.clone().context("--target is required")?;
            let pipeline_name = fc.pipeline.clone().unwrap_or_else(|| "default".into());
            let mut sink = build_sink(&SinkOpts {
                kind: fc.sink.as_deref().unwrap_or("parquet"),
                target: &target,
                pipeline: &pipeline_name,
                zstd_level: 1,
                hard_deletes: false,
                maintenance: &binlake::config::Maintenance::resolve(&fc)?,
                lz4: None,
                database_prefix: fc.database_prefix.as_deref().unwrap_or(""),
                clickhouse_tls_ca: fc.clickhouse_tls_ca.as_deref(),
            })?;
            match sink.read_checkpoint().await? {
                None => println!("no checkpoint for pipeline `{pipeline_name}` in {target}"),
                Some(cp) => {
                    let now = binlake::clock::now_us();
                    let lag = (now - cp.source_commit_us) as f64 / 1e6;
                    // the lag when the checkpoint was written: source commit to applied
                    let lag_then = (cp.committed_at_us - cp.source_commit_us).max(0) as f64 / 1e6;
                    println!(
                        "pipeline: {}\ncommit:   {} at {} ({:.1} s ago)\nposition: {}\nlast source commit: {} ({lag:.1} s before now)\nlag at the last commit: {lag_then:.1} s",
                        cp.pipeline,
                        cp.seq,
                        binlake::clock::format_us(cp.committed_at_us),
                        (now - cp.committed_at_us) as f64 / 1e6,
                        cp.position,
                        binlake::clock::format_us(cp.source_commit_us)
                    );
                    match &cp.last_error {
                        Some((at, e)) => {
                            println!("last error: {} {e}", binlake::clock::format_us(*at))
                        }
                        None => println!("last error: none"),
                    }
                    for (t, why) in &cp.quarantined {
                        println!("  {t:<40} STOPPED (error): {why}");
                    }
                    for (t, v) in &cp.tables {
                        match cp.table_commit_us.get(t) {
                            Some(&c) => println!(
                                "  {t:<40} version {v}, last change committed at the source {} ({:.1} s before now)",
                                binlake::clock::format_us(c),
                                (now - c) as f64 / 1e6
                            ),
                            None => println!("  {t:<40} version {v}"),
                        }
                    }
                    for (t, p) in &cp.snapshots {
                        let ranges = p.ranges.iter().filter(|r| r.done).count();
                        println!(
                            "  {t:<40} SNAPSHOT {} in progress: {} of ~{} rows, {ranges}/{} ranges done",
                            p.reason, p.rows, p.estimate, p.ranges.len()
                        );
                    }
                    for (t, at) in &cp.loaded {
                        println!(
                            "  {t:<40} loaded (snapshot finished {})",
                            binlake::clock::format_us(*at)
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Replicate(c) => {
            let settings = match resolve(&c) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let sink = settings_sink(&settings)?;
            if let Some(addr) = &settings.metrics_addr {
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => {
                        tokio::spawn(binlake::metrics::serve(l));
                    }
                    Err(e) => {
                        return config_error(binlake::config::ConfigError::Key {
                            key: "metrics_addr",
                            message: format!("`{addr}`: cannot listen: {e}"),
                        })
                    }
                }
            }
            tracing::info!(source = %source::redact(&settings.source.url), sink = %settings.sink, target = %source::redact(&settings.target), pipeline = %settings.pipeline.name, "binlake replicate");
            match pipeline::run(
                settings.pipeline.clone(),
                settings.source.clone(),
                sink,
                shutdown_signal(),
            )
            .await
            {
                Ok(s) => {
                    tracing::info!(transactions = s.transactions, rows = s.rows, commits = s.commits, invalid_nulled = s.invalid_nulled, rejected = s.rejected, position = ?s.position.as_ref().map(ToString::to_string), caught_up = s.caught_up, "done");
                    Ok(ExitCode::SUCCESS)
                }
                Err(pipeline::PipelineError::Source(source::SourceError::Preflight(r))) => {
                    eprintln!("error: the source is not ready for binlake:\n{r}");
                    Ok(ExitCode::from(3))
                }
                Err(pipeline::PipelineError::Source(e @ source::SourceError::Tls { .. })) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(3))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

#[cfg(feature = "delta")]
async fn maintain(m: MaintainArgs) -> anyhow::Result<ExitCode> {
    let fc = match m.common.file_config() {
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
fn maintain_options(
    m: &binlake::config::Maintenance,
) -> binlake_sink_delta::maintain::MaintainOptions {
    binlake_sink_delta::maintain::MaintainOptions {
        target_file_size: m.target_file_size,
        vacuum_retention: m.vacuum_retention,
        tombstone_retention: m.tombstone_retention,
    }
}

#[cfg(not(feature = "delta"))]
async fn maintain(_m: MaintainArgs) -> anyhow::Result<ExitCode> {
    eprintln!("error: `maintain` works on Delta targets; this binary was built without the `delta` feature");
    Ok(ExitCode::from(2))
}

/// The flags and config file resolved to settings, logs set up; a bad config is exit code 2.
fn resolve(c: &Common) -> Result<Settings, ExitCode> {
    let settings = c.file_config().and_then(|fc| Settings::resolve(&fc));
    match settings {
        Ok(s) => {
            init_logs(s.log_json);
            Ok(s)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(2))
        }
    }
}

async fn validate(v: ValidateArgs) -> anyhow::Result<ExitCode> {
    let settings = match resolve(&v.common) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let mut sink = settings_sink(&settings)?;
    let opts = source::parse_url(&settings.source.url).map_err(anyhow::Error::msg)?;
    let tables = binlake::snapshot::list_tables(&opts, &settings.source.filter).await?;
    let mut all_equal = true;
    // unequal tables that a backfill cannot repair (rows only in the target, skipped tables)
    let mut unrepairable = false;
    let mut to_repair = Vec::new();
    for t in &tables {
        let r = binlake::validate::validate_table(
            &opts,
            sink.as_mut(),
            t,
            v.chunk,
            &settings.pipeline.columns,
        )
        .await?;
        println!("{r}");
        if !r.equal() {
            all_equal = false;
            if r.skipped.is_some() || r.keyless {
                unrepairable = true;
            }
            if r.keyless {
                println!("  {t}: a table without a primary key cannot be repaired by a backfill; rebuild it");
                continue;
            }
            let extra_unreadable =
                !r.only_in_target.is_empty() && r.only_in_target_cells.is_empty();
            if extra_unreadable {
                unrepairable = true;
                println!("  {t}: rows only in the target with a key type (or column rule) that a repair cannot read back; rebuild the table to drop them");
            }
            if !r.different.is_empty() || !r.only_in_target_cells.is_empty() {
                to_repair.push((t.clone(), r));
            }
        }
    }
    if !v.repair || to_repair.is_empty() {
        return Ok(if all_equal {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    // when each table was last loaded, before the request (a repair loads it again)
    let before = sink
        .read_checkpoint()
        .await?
        .map(|c| c.loaded)
        .unwrap_or_default();
    for (t, r) in &to_repair {
        let desc = binlake::validate::describe_for_repair(&opts, t)
            .await?
            .context("table vanished")?;
        let preds: Vec<String> = r
            .different
            .iter()
            .filter_map(|c| binlake::validate::range_predicate(&desc, &c.lo, &c.hi))
            .map(|p| format!("({p})"))
            .collect();
        let absent: Vec<serde_json::Value> = r
            .only_in_target_cells
            .iter()
            .take(binlake::control::MAX_ABSENT_KEYS)
            .cloned()
            .collect();
        if absent.len() < r.only_in_target_cells.len() {
            unrepairable = true;
            println!(
                "  {t}: {} rows only in the target; this repair checks the first {}, run validate --repair again for the rest",
                r.only_in_target_cells.len(),
                absent.len()
            );
        }
        let req = binlake::control::BackfillRequest {
            tables: t.to_string(),
            filter: (!preds.is_empty()).then(|| preds.join(" OR ")),
            absent,
        };
        match binlake::control::request_backfill(&v.control, &req).await {
            Ok(_) => println!(
                "{t}: repair queued: {} key range(s) backfilled, {} key(s) only in the target checked at the source",
                preds.len(),
                req.absent.len()
            ),
            Err(e) => {
                eprintln!("error: {t}: repair refused: {e}");
                return Ok(ExitCode::from(1));
            }
        }
    }
    // wait for the repairs (each table loaded again after the request), then check again
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let cp = sink.read_checkpoint().await?;
        let done = cp.as_ref().is_some_and(|c| {
            to_repair
                .iter()
                .all(|(t, _)| !c.snapshots.contains_key(t) && c.loaded.get(t) > before.get(t))
        });
        if done {
            break;
        }
        if started.elapsed() > std::time::Duration::from_secs(1800) {
            anyhow::bail!("the repair backfills did not finish within 30 minutes");
        }
    }
    let mut equal = !unrepairable;
    for (t, _) in &to_repair {
        let r = binlake::validate::validate_table(
            &opts,
            sink.as_mut(),
            t,
            v.chunk,
            &settings.pipeline.columns,
        )
        .await?;
        println!("after repair: {r}");
        equal &= r.equal();
    }
    Ok(if equal {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn config_error(e: binlake::config::ConfigError) -> anyhow::Result<ExitCode> {
    eprintln!("error: {e}");
    Ok(ExitCode::from(2))
}

/// What the sinks are built from (each build reads the fields of the sinks it has).
#[allow(dead_code)]
struct SinkOpts<'a> {
    kind: &'a str,
    target: &'a str,
    pipeline: &'a str,
    zstd_level: i32,
    hard_deletes: bool,
    maintenance: &'a binlake::config::Maintenance,
    lz4: Option<bool>,
    database_prefix: &'a str,
    clickhouse_tls_ca: Option<&'a str>,
}

/// The sink a resolved configuration names.
fn settings_sink(settings: &Settings) -> anyhow::Result<Box<dyn binlake_sink::Sink>> {
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

fn build_sink(o: &SinkOpts) -> anyhow::Result<Box<dyn binlake_sink::Sink>> {
    let (target, pipeline) = (o.target, o.pipeline);
    match o.kind {
        #[cfg(feature = "parquet")]
        "parquet" => {
            let mut cfg = binlake_sink_parquet::ParquetConfig::new(target, pipeline);
            cfg.zstd_level = o.zstd_level;
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
            Ok(Box::new(binlake_sink_clickhouse::ClickHouseSink::new(cfg)?))
        }
        other => anyhow::bail!("sink `{other}` is not available in this build"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
}

/// `binlake dbt sources`: reads the source's catalogue and writes the dbt files.
async fn dbt_sources(a: DbtArgs) -> anyhow::Result<ExitCode> {
    let settings = match resolve(&a.common) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
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
    let target = match settings.sink.as_str() {
        "parquet" => binlake::dbt::DbtTarget::Parquet(lake(&settings.target)),
        "delta" => binlake::dbt::DbtTarget::Delta(lake(&settings.target)),
        _ => binlake::dbt::DbtTarget::ClickHouse {
            prefix: settings.database_prefix.clone(),
        },
    };
    let opts = source::parse_url(&settings.source.url).map_err(anyhow::Error::msg)?;
    let tables = binlake::snapshot::list_tables(&opts, &settings.source.filter).await?;
    if tables.is_empty() {
        eprintln!("error: no source table matches `tables`");
        return Ok(ExitCode::from(2));
    }
    let described = binlake::dbt::describe(&opts, &tables, &settings.pipeline.columns).await?;
    let files = binlake::dbt::render(&described, &target, settings.pipeline.max_latency);
    for p in binlake::dbt::write(&a.project_dir, &files)? {
        println!("wrote {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}
