//! The `binlake` command line. `anyhow` lives here only; the library's errors are typed.

use std::process::ExitCode;

use anyhow::Context;
use binlake::config::{
    ClickHouseFlags, DeltaFlags, FileConfig, LogFlags, ParquetFlags, PipelineFlags, Settings,
    SourceFlags, TablesFlags, TargetFlags,
};
use binlake::pipeline;
use binlake::source;
use clap::{Args, Parser, Subcommand};

mod cli {
    pub mod dbt;
    pub mod maintain;
    pub mod sinks;
    pub mod validate;
}

use cli::dbt::dbt_sources;
use cli::maintain::maintain;
use cli::sinks::{build_sink, settings_sink, SinkOpts};
use cli::validate::validate;

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
    /// Check that the source is set up for binlake (settings, GTIDs, grants), and, with a
    /// target, that the target is reachable and where the pipeline would resume.
    Check(CheckArgs),
    /// Stream changes into the target until stopped (SIGINT/SIGTERM) or caught up.
    Replicate(AllFlags),
    /// Maintain a Delta target: compaction, log checkpoints, tombstone purge, vacuum.
    Maintain(MaintainArgs),
    /// Print the checkpoint a target holds (position, tables, lag) without a running process.
    Status(StatusArgs),
    /// Decode a binlog file and print its events and rows (for debugging).
    Decode {
        file: std::path::PathBuf,
        /// Print at most this many rows.
        #[arg(long, default_value_t = 50)]
        rows: usize,
    },
    /// Print the MySQL -> Arrow type map as a Markdown table.
    Types,
    /// Print the JSON schema of the config file (or, with --reference, the key reference).
    Schema {
        /// The Markdown key reference (docs/configuration.md) instead.
        #[arg(long)]
        reference: bool,
    },
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
    common: AllFlags,
    /// The dbt project directory to write into.
    #[arg(long, default_value = ".")]
    project_dir: std::path::PathBuf,
}

#[derive(Args)]
struct ValidateArgs {
    #[command(flatten)]
    config: ConfigFile,
    #[command(flatten)]
    source: SourceFlags,
    #[command(flatten)]
    tables: TablesFlags,
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    log: LogFlags,
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
    config: ConfigFile,
    #[command(flatten)]
    target: TargetFlags,
    #[command(flatten)]
    tables: TablesFlags,
    #[command(flatten)]
    delta: DeltaFlags,
    #[command(flatten)]
    log: LogFlags,
}

/// `--config`, for every command that reads configuration.
#[derive(Args, Default)]
struct ConfigFile {
    /// TOML config file; flags override its keys (docs/configuration.md lists them).
    #[arg(long)]
    config: Option<String>,
}

impl ConfigFile {
    /// The file's keys (none without `--config`), then the flags of `groups` over them.
    fn load(&self, groups: &[&dyn Flags]) -> Result<FileConfig, binlake::config::ConfigError> {
        let mut fc = match &self.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        for g in groups {
            g.apply_to(&mut fc);
        }
        Ok(fc)
    }
}

/// A group of flags (see `binlake::config::keys`) that sets its keys.
trait Flags {
    fn apply_to(&self, fc: &mut FileConfig);
}

macro_rules! flag_groups {
    ($($g:ty),*) => {
        $(impl Flags for $g {
            fn apply_to(&self, fc: &mut FileConfig) {
                self.apply(fc)
            }
        })*
    };
}

flag_groups!(
    SourceFlags,
    TablesFlags,
    TargetFlags,
    ParquetFlags,
    DeltaFlags,
    ClickHouseFlags,
    PipelineFlags,
    LogFlags
);

/// The target and every sink's keys: what a command that opens the target needs.
#[derive(Args, Default)]
struct TargetArgs {
    #[command(flatten)]
    target: TargetFlags,
    #[command(flatten)]
    parquet: ParquetFlags,
    #[command(flatten)]
    delta: DeltaFlags,
    #[command(flatten)]
    clickhouse: ClickHouseFlags,
}

impl Flags for TargetArgs {
    fn apply_to(&self, fc: &mut FileConfig) {
        self.target.apply(fc);
        self.parquet.apply(fc);
        self.delta.apply(fc);
        self.clickhouse.apply(fc);
    }
}

/// Every flag: `replicate`, `dbt sources`.
#[derive(Args, Default)]
struct AllFlags {
    #[command(flatten)]
    config: ConfigFile,
    #[command(flatten)]
    source: SourceFlags,
    #[command(flatten)]
    tables: TablesFlags,
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    pipeline: PipelineFlags,
    #[command(flatten)]
    log: LogFlags,
}

impl AllFlags {
    fn file_config(&self) -> Result<FileConfig, binlake::config::ConfigError> {
        self.config.load(&[
            &self.source,
            &self.tables,
            &self.target,
            &self.pipeline,
            &self.log,
        ])
    }
}

/// `check`: the source, and the target when one is given.
#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigFile,
    #[command(flatten)]
    source: SourceFlags,
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    log: LogFlags,
}

/// `status`: the target only (the sinks' keys say how to reach it).
#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    config: ConfigFile,
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    log: LogFlags,
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
        Cmd::Schema { reference } => {
            print!(
                "{}",
                if reference {
                    binlake::config::schema::reference()
                } else {
                    binlake::config::schema::schema_text()
                }
            );
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
            let fc = match c.config.load(&[&c.source, &c.target, &c.log]) {
                Ok(f) => f,
                Err(e) => return config_error(e),
            };
            init_logs(fc.log_format.as_deref() == Some("json"));
            // every pipeline's servers, with [[pipelines]]
            let urls = match fc.pipeline_configs() {
                Ok(p) if p.is_empty() => fc.source_urls(),
                Ok(p) => {
                    let mut urls: Vec<String> = Vec::new();
                    for u in p.iter().flat_map(|(_, c)| c.source_urls()) {
                        if !urls.contains(&u) {
                            urls.push(u);
                        }
                    }
                    urls
                }
                Err(e) => return config_error(e),
            };
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
                if fc.target.is_some() {
                    let pipelines = fc.pipeline_configs().unwrap_or_default();
                    if pipelines.is_empty() {
                        return check_target(&fc).await;
                    }
                    // where each pipeline resumes
                    for (_, one) in &pipelines {
                        let code = check_target(one).await?;
                        if code != ExitCode::SUCCESS {
                            return Ok(code);
                        }
                    }
                }
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
            let fc = match c.config.load(&[&c.target, &c.log]) {
                Ok(f) => f,
                Err(e) => return config_error(e),
            };
            let names: Vec<String> = match &fc.pipelines {
                Some(entries) => entries
                    .iter()
                    .filter_map(|e| e.get("name").and_then(|n| n.as_str()).map(String::from))
                    .filter(|n| fc.pipeline.as_ref().is_none_or(|p| p == n))
                    .collect(),
                None => vec![fc.pipeline.clone().unwrap_or_else(|| "default".into())],
            };
            for name in names {
                let mut one = fc.clone();
                one.pipeline = Some(name);
                status(&one).await?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Replicate(c) => {
            let mut all = match resolve(c.file_config()) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            if let Some(addr) = &all[0].metrics_addr {
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
            if all.len() > 1 {
                return replicate_all(all).await;
            }
            let settings = all.remove(0);
            let sink = settings_sink(&settings)?;
            tracing::info!(source = %source::redact(&settings.source.url), sink = %settings.sink.kind, target = %source::redact(&settings.target), pipeline = %settings.pipeline.name, "binlake replicate");
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

/// `status` of one pipeline: its checkpoint, per table.
async fn status(fc: &FileConfig) -> anyhow::Result<()> {
    let mut sink = reader_sink(fc)?;
    let pipeline_name = fc.pipeline.as_deref().unwrap_or("default");
    let target = fc.target.as_deref().unwrap_or_default();
    match sink.read_checkpoint().await? {
        None => println!("no checkpoint for pipeline `{pipeline_name}` in {target}"),
        Some(cp) => {
            let now = binlake::clock::now_us();
            println!(
                "pipeline: {}\ncommit:   {} at {} ({:.1} s ago)\nposition: {}",
                cp.pipeline,
                cp.seq,
                binlake::clock::format_us(cp.committed_at_us),
                (now - cp.committed_at_us) as f64 / 1e6,
                cp.position,
            );
            if cp.source_commit_us > 0 {
                let lag = (now - cp.source_commit_us) as f64 / 1e6;
                // the lag when the checkpoint was written: source commit to applied
                let lag_then = (cp.committed_at_us - cp.source_commit_us).max(0) as f64 / 1e6;
                println!(
                    "last source commit: {} ({lag:.1} s before now)\nlag at the last commit: {lag_then:.1} s",
                    binlake::clock::format_us(cp.source_commit_us)
                );
            } else {
                println!("last source commit: none applied yet (snapshot rows only)");
            }
            // a mapped table shows where it is written
            let shown = |id: &binlake_sink::TableId| match cp.targets.get(id) {
                Some(to) => format!("{id} -> {to}"),
                None => id.to_string(),
            };
            if let Some((t, n)) = cp.lww_clock {
                // (`conflict`: versions are last-writer-wins, see `binlake::lww`)
                println!(
                    "last-writer-wins clock: {} #{n}",
                    binlake::clock::format_us((t as i64 + binlake::lww::EPOCH_S) * 1_000_000)
                );
            }
            match &cp.last_error {
                Some((at, e)) => {
                    println!("last error: {} {e}", binlake::clock::format_us(*at))
                }
                None => println!("last error: none"),
            }
            for (t, m) in &cp.outbox_delivered {
                println!(
                    "  {t:<40} OUTBOX delivered: every event up to version {}, and {} above it",
                    m.upto,
                    m.acked.len()
                );
            }
            for (t, why) in &cp.quarantined {
                println!("  {t:<40} STOPPED (error): {why}");
                println!("  {:<40} to resume it: fix the cause, then `binlake backfill --control <replicate's control_addr> --tables '{t}'` (reads it again whole; the other tables go on)", "");
            }
            for (id, v) in &cp.tables {
                let t = &shown(id);
                match cp.table_commit_us.get(id) {
                    Some(&c) => println!(
                        "  {t:<40} version {v}, last change committed at the source {} ({:.1} s before now)",
                        binlake::clock::format_us(c),
                        (now - c) as f64 / 1e6
                    ),
                    None => println!("  {t:<40} version {v}"),
                }
            }
            for (id, p) in &cp.snapshots {
                let t = &shown(id);
                let ranges = p.ranges.iter().filter(|r| r.done).count();
                println!(
                    "  {t:<40} SNAPSHOT {} in progress: {} of ~{} rows, {ranges}/{} ranges done",
                    p.reason,
                    p.rows,
                    p.estimate,
                    p.ranges.len()
                );
            }
            for (id, at) in &cp.loaded {
                let t = &shown(id);
                println!(
                    "  {t:<40} loaded (snapshot finished {})",
                    binlake::clock::format_us(*at)
                );
            }
        }
    }
    Ok(())
}

/// `replicate` of several pipelines (`[[pipelines]]`), each in its own task, until every one
/// has ended: one that stops with an error is reported and the others go on. Exit code 1 when
/// any failed.
async fn replicate_all(all: Vec<Settings>) -> anyhow::Result<ExitCode> {
    use tracing::Instrument;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let mut set = tokio::task::JoinSet::new();
    for s in all {
        let sink = settings_sink(&s)?;
        let name = s.pipeline.name.clone();
        tracing::info!(pipeline = %name, source = %source::redact(&s.source.url), sink = %s.sink.kind, target = %source::redact(&s.target), "binlake replicate");
        let mut stop = stop_rx.clone();
        let span = tracing::info_span!("pipeline", name = %name);
        set.spawn(
            async move {
                let stopped = async move {
                    let _ = stop.wait_for(|v| *v).await;
                };
                let r = pipeline::run(s.pipeline.clone(), s.source.clone(), sink, stopped).await;
                (name, r)
            }
            .instrument(span),
        );
    }
    let mut failed = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((name, Ok(s))) => {
                tracing::info!(pipeline = %name, transactions = s.transactions, rows = s.rows, commits = s.commits, position = ?s.position.as_ref().map(ToString::to_string), caught_up = s.caught_up, "pipeline done")
            }
            Ok((name, Err(e))) => {
                tracing::error!(pipeline = %name, error = %e, "pipeline stopped; the other pipelines go on");
                eprintln!("error: pipeline `{name}`: {e}");
                failed.push(name);
            }
            Err(e) => {
                tracing::error!(error = %e, "a pipeline task failed");
                failed.push("?".into());
            }
        }
    }
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: {} pipeline(s) stopped with an error: {}",
            failed.len(),
            failed.join(", ")
        );
        Ok(ExitCode::from(1))
    }
}

/// The sink of `fc`'s target, to read it (`status`, `check`): nothing is written.
fn reader_sink(fc: &FileConfig) -> anyhow::Result<Box<dyn binlake_sink::Sink>> {
    let target = fc.target.clone().context("--target is required")?;
    let pipeline_name = fc.pipeline.clone().unwrap_or_else(|| "default".into());
    build_sink(&SinkOpts {
        target: &target,
        pipeline: &pipeline_name,
        sink: &binlake::config::SinkSettings::resolve(fc)?,
        maintenance: &binlake::config::Maintenance::resolve(fc)?,
    })
}

/// `check` with a target: it is reachable with these settings, and where the pipeline resumes.
async fn check_target(fc: &FileConfig) -> anyhow::Result<ExitCode> {
    let pipeline = fc.pipeline.as_deref().unwrap_or("default");
    let mut sink = reader_sink(fc)?;
    match sink.read_checkpoint().await {
        Ok(Some(cp)) => println!(
            "target ({}) is reachable: pipeline `{pipeline}` resumes at {} (commit {})",
            sink.kind(),
            cp.position,
            cp.seq
        ),
        Ok(None) => println!(
            "target ({}) is reachable: no checkpoint of pipeline `{pipeline}` yet (replicate starts at start_at)",
            sink.kind()
        ),
        Err(e) => {
            eprintln!("error: target ({}): {e}", sink.kind());
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The flags and config file resolved to settings, logs set up; a bad config is exit code 2.
/// With `[[pipelines]]`, one settings per pipeline (`--pipeline` selects one).
fn resolve(
    fc: Result<FileConfig, binlake::config::ConfigError>,
) -> Result<Vec<Settings>, ExitCode> {
    let settings = fc.and_then(|fc| Settings::resolve_all(&fc));
    match settings {
        Ok(s) => {
            init_logs(s[0].log_json);
            Ok(s)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(2))
        }
    }
}

fn config_error(e: binlake::config::ConfigError) -> anyhow::Result<ExitCode> {
    eprintln!("error: {e}");
    Ok(ExitCode::from(2))
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
