//! Configuration: a TOML file (`--config`) and command-line flags, one key per flag (flags win).
//!
//! Parsed, then validated without I/O ([`Settings::resolve`]); every error names the key and what
//! it expected. `${NAME}` in a string value is replaced by the environment variable NAME, so
//! passwords stay out of files; an unset variable is an error naming it.

use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

pub mod keys;
mod pipelines;
pub mod schema;
pub mod sink;

pub use keys::{
    ClickHouseFlags, DeltaFlags, FileConfig, LogFlags, ParquetFlags, PipelineFlags, SourceFlags,
    TablesFlags, TargetFlags,
};

pub use sink::{
    ClickHouseSettings, Deletes, DeltaSettings, InsertCompression, ParquetSettings, SinkKind,
    SinkSettings, SINKS,
};

use crate::filter::TableFilter;
use crate::pipeline::{InvalidPolicy, PipelineConfig};
use crate::source::{with_tls_params, SourceConfig, StartAt};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {message}")]
    Read { path: String, message: String },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: &'static str, message: String },
    #[error("config key `{key}`: environment variable `{var}` is not set")]
    Env { key: String, var: String },
    /// An error in one `[[pipelines]]` entry.
    #[error("[[pipelines]] `{name}`: {source}")]
    Pipeline {
        name: String,
        source: Box<ConfigError>,
    },
}

fn key_err(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key,
        message: message.into(),
    }
}

/// Setting `key` (its value, or `default` when unset) parsed; a bad value is an error naming
/// the key.
fn choice<T>(key: &'static str, value: Option<&str>, default: &str) -> Result<T, ConfigError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    value
        .unwrap_or(default)
        .parse()
        .map_err(|e: T::Err| key_err(key, e.to_string()))
}

/// Tables: one pattern, a comma-separated list, or a TOML array.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Patterns {
    One(String),
    Many(Vec<String>),
}

/// Sources: one URL, a list of URLs, or `[[source]]` tables with a `url` key.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Sources {
    One(String),
    Many(Vec<SourceEntry>),
}

/// One entry of a source list: a URL, or a `[[source]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SourceEntry {
    Url(String),
    Table(SourceTable),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceTable {
    pub url: String,
    /// This server's TLS files (else the top-level keys').
    pub tls_ca: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
}

impl Sources {
    pub fn urls(&self) -> Vec<String> {
        match self {
            Sources::One(u) => vec![u.clone()],
            Sources::Many(v) => v
                .iter()
                .map(|e| match e {
                    SourceEntry::Url(u) => u.clone(),
                    SourceEntry::Table(t) => with_tls_params(
                        &t.url,
                        &[
                            ("tls_ca", t.tls_ca.as_deref()),
                            ("tls_cert", t.tls_cert.as_deref()),
                            ("tls_key", t.tls_key.as_deref()),
                        ],
                    ),
                })
                .collect(),
        }
    }
}

impl FileConfig {
    /// The source URLs, each with its TLS files (its `[[source]]` keys, else the top-level
    /// `tls_ca` / `tls_cert` / `tls_key`) as binlake's URL parameters.
    pub fn source_urls(&self) -> Vec<String> {
        let top = [
            ("tls_ca", self.tls_ca.as_deref()),
            ("tls_cert", self.tls_cert.as_deref()),
            ("tls_key", self.tls_key.as_deref()),
        ];
        self.source
            .as_ref()
            .map(Sources::urls)
            .unwrap_or_default()
            .iter()
            .map(|u| with_tls_params(u, &top))
            .collect()
    }
}

/// A byte size: an integer or text like `64MiB`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

/// One outbox: a table name (`--outbox`, or a string in the file's list), or an `[[outbox]]`
/// table.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OutboxEntry {
    Name(String),
    Table(OutboxTable),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxTable {
    pub table: String,
    pub id_column: Option<String>,
    pub aggregate_type_column: Option<String>,
    pub aggregate_id_column: Option<String>,
    pub type_column: Option<String>,
    pub payload_column: Option<String>,
    pub deliver_url: Option<String>,
    pub deliver_max_attempts: Option<u32>,
}

/// The outbox specs of `outbox` (and `outbox_deliver_url`), validated.
fn outbox_specs(
    c: &FileConfig,
    filter: &TableFilter,
) -> Result<Vec<crate::outbox::OutboxSpec>, ConfigError> {
    let entries = c.outbox.clone().unwrap_or_default();
    if c.outbox_deliver_url.is_some() && entries.len() != 1 {
        return Err(key_err(
            "outbox_deliver_url",
            "is for exactly one outbox; with several, give each its `deliver_url` in its [[outbox]] entry",
        ));
    }
    let mut out: Vec<crate::outbox::OutboxSpec> = Vec::new();
    for e in entries {
        let t = match e {
            OutboxEntry::Name(table) => OutboxTable {
                table,
                ..Default::default()
            },
            OutboxEntry::Table(t) => t,
        };
        let id: binlake_sink::TableId = t.table.parse().map_err(|_| {
            key_err(
                "outbox.table",
                format!("`{}`: expected `db.table`", t.table),
            )
        })?;
        if out.iter().any(|o| o.table == id) {
            return Err(key_err("outbox.table", format!("`{id}` is listed twice")));
        }
        let mut spec = crate::outbox::OutboxSpec::new(id);
        let set = |field: &mut String, v: Option<String>, key: &'static str| match v {
            Some(v) if v.trim().is_empty() => Err(key_err(key, "must not be empty")),
            Some(v) => {
                *field = v;
                Ok(())
            }
            None => Ok(()),
        };
        set(&mut spec.id_column, t.id_column, "outbox.id_column")?;
        set(
            &mut spec.aggregate_type_column,
            t.aggregate_type_column,
            "outbox.aggregate_type_column",
        )?;
        set(
            &mut spec.aggregate_id_column,
            t.aggregate_id_column,
            "outbox.aggregate_id_column",
        )?;
        set(&mut spec.type_column, t.type_column, "outbox.type_column")?;
        set(
            &mut spec.payload_column,
            t.payload_column,
            "outbox.payload_column",
        )?;
        spec.deliver_url = t.deliver_url.or(c.outbox_deliver_url.clone());
        spec.deliver_max_attempts = t.deliver_max_attempts;
        let url_key = if c.outbox_deliver_url.is_some() {
            "outbox_deliver_url"
        } else {
            "outbox.deliver_url"
        };
        if let Some(u) = &spec.deliver_url {
            match url::Url::parse(u) {
                Ok(p) if p.scheme() == "http" && p.host_str().is_some() => {}
                Ok(_) => {
                    return Err(key_err(
                        url_key,
                        format!("`{u}`: only http://host[:port]/path endpoints in this build (put a TLS proxy in front for https)"),
                    ))
                }
                Err(e) => return Err(key_err(url_key, format!("`{u}`: {e}"))),
            }
        }
        if spec.deliver_max_attempts == Some(0) {
            return Err(key_err(
                "outbox.deliver_max_attempts",
                "must be at least 1 (leave it out to retry without limit)",
            ));
        }
        spec.replicated = filter.matches(&spec.table.db, &spec.table.table);
        out.push(spec);
    }
    Ok(out)
}

/// One `[[layout]]` entry of the config file: how binlake creates the ClickHouse tables that
/// `tables` matches (checked by `binlake_sink_clickhouse::layout`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LayoutEntry {
    pub tables: String,
    pub order_by: Option<String>,
    pub partition_by: Option<String>,
    pub ttl: Option<String>,
    pub settings: Option<String>,
    #[serde(default)]
    pub column_types: std::collections::BTreeMap<String, String>,
}

/// The `map` key: source table pattern -> target `db.table` (see [`crate::mapping`]).
pub type TableMapKey = std::collections::BTreeMap<String, String>;

/// One `[[pipelines]]` entry, as written (its keys are checked by [`Settings::resolve_all`]).
pub type PipelineEntry = toml::Table;

/// One `[[backfill]]` entry of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillEntry {
    pub tables: String,
    pub schedule: String,
    #[serde(rename = "where")]
    pub filter: Option<String>,
}

impl FileConfig {
    pub fn load(path: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.into(),
            message: e.to_string(),
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &str, text: &str) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        for (k, v) in table.iter_mut() {
            expand_env(k, v)?;
        }
        hoist_sink_table(path, &mut table)?;
        FileConfig::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })
    }
}

/// `[sink.<name>]`: selects the sink and holds its keys. Rewritten to the flat form (`sink =
/// "<name>"` and the keys at the top level) before the keys are read, so both forms mean the
/// same; a key that is not the sink's, or given in both places, is an error naming it.
fn hoist_sink_table(path: &str, table: &mut toml::Table) -> Result<(), ConfigError> {
    let Some(toml::Value::Table(sinks)) = table.get("sink").cloned() else {
        return Ok(());
    };
    let err = |message: String| ConfigError::Parse {
        path: path.into(),
        message,
    };
    let mut names = sinks.keys();
    let (Some(name), None) = (names.next(), names.next()) else {
        return Err(err(format!(
            "`[sink]` holds {} sink tables; name exactly one sink, e.g. [sink.delta]",
            sinks.len()
        )));
    };
    let Some((_, group)) = keys::SINK_GROUPS.iter().find(|(n, _)| n == name) else {
        return Err(err(format!(
            "`[sink.{name}]`: unknown sink; expected one of: {}",
            keys::SINK_GROUPS.map(|(n, _)| n).join(", ")
        )));
    };
    let Some(toml::Value::Table(own)) = sinks.get(name) else {
        return Err(err(format!("`sink.{name}` must be a table")));
    };
    let allowed: Vec<&str> = keys::keys()
        .into_iter()
        .filter(|k| k.group == *group)
        .map(|k| k.name)
        .collect();
    table.insert("sink".into(), toml::Value::String(name.clone()));
    for (k, v) in own {
        if !allowed.contains(&k.as_str()) {
            return Err(err(format!(
                "`sink.{name}.{k}` is not a key of the {name} sink; its keys: {}",
                allowed.join(", ")
            )));
        }
        if table.contains_key(k) {
            return Err(err(format!(
                "`{k}` is given both at the top level and in [sink.{name}]; keep one"
            )));
        }
        table.insert(k.clone(), v.clone());
    }
    Ok(())
}

/// A listen address and whether it is loopback only. A bare port (`7219` or `:7219`) listens on
/// 127.0.0.1: the endpoints are for this machine unless the user names another interface.
pub fn listen_addr(key: &'static str, a: &str) -> Result<(String, bool), ConfigError> {
    let a = a.trim();
    let full = match a.strip_prefix(':').unwrap_or(a).parse::<u16>() {
        Ok(port) => format!("127.0.0.1:{port}"),
        Err(_) => a.to_string(),
    };
    let host = match full.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h.trim_start_matches('[').trim_end_matches(']'),
        _ => {
            return Err(key_err(
                key,
                format!("`{a}`: expected HOST:PORT (or a port: loopback)"),
            ))
        }
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    Ok((full, loopback))
}

/// `control_token`, else the environment's `BINLAKE_CONTROL_TOKEN`; empty is none.
fn control_token(c: &FileConfig) -> Option<String> {
    c.control_token
        .clone()
        .or_else(|| std::env::var("BINLAKE_CONTROL_TOKEN").ok())
        .filter(|t| !t.trim().is_empty())
}

/// `control_addr`: on anything but loopback, `binlake backfill` must present the token of
/// `BINLAKE_CONTROL_TOKEN` (a backfill re-reads tables at the source: not for strangers).
fn control_addr(a: &str, token: Option<String>) -> Result<String, ConfigError> {
    let (addr, loopback) = listen_addr("control_addr", a)?;
    if !loopback && token.as_deref().is_none_or(|t| t.trim().is_empty()) {
        return Err(key_err(
            "control_addr",
            format!("`{addr}` is not a loopback address: set control_token (e.g. control_token = \"${{BINLAKE_CONTROL_TOKEN}}\") or BINLAKE_CONTROL_TOKEN in the environment of replicate, and BINLAKE_CONTROL_TOKEN for `binlake backfill` / `validate --repair`; or listen on 127.0.0.1"),
        ));
    }
    Ok(addr)
}

fn expand_env(key: &str, v: &mut toml::Value) -> Result<(), ConfigError> {
    match v {
        toml::Value::String(s) => *s = expand_str(key, s)?,
        toml::Value::Array(a) => {
            for x in a {
                expand_env(key, x)?;
            }
        }
        toml::Value::Table(t) => {
            for (k, x) in t.iter_mut() {
                expand_env(k, x)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Replaces `${NAME}` with the environment variable NAME. `$${` is a literal `${`.
pub fn expand_str(key: &str, s: &str) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[i..]);
            return Ok(out);
        };
        let var = &after[..end];
        let val = std::env::var(var).map_err(|_| ConfigError::Env {
            key: key.to_string(),
            var: var.to_string(),
        })?;
        out.push_str(&val);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

pub fn parse_duration(key: &'static str, s: &str) -> Result<Duration, ConfigError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        key_err(
            key,
            format!("expected a duration like 500ms, 2s or 1m, got `{s}`"),
        )
    })?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(key_err(
                key,
                format!("expected a duration like 500ms, 2s or 1m, got `{s}`"),
            ))
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(key_err(
            key,
            format!("expected a non-negative duration, got `{s}`"),
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn parse_size(key: &'static str, s: &Size) -> Result<usize, ConfigError> {
    let text = match s {
        Size::Bytes(b) => return Ok(*b as usize),
        Size::Text(t) => t.trim(),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| key_err(key, format!("expected a size like 64MiB, got `{text}`")))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(key_err(
                key,
                format!("expected a size like 64MiB, got `{text}`"),
            ))
        }
    };
    Ok((n * mult) as usize)
}

/// Everything `replicate` needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub source: SourceConfig,
    pub pipeline: PipelineConfig,
    /// The selected sink and the sinks' own settings.
    pub sink: SinkSettings,
    pub target: String,
    pub log_json: bool,
    pub maintenance: Maintenance,
    /// Where to serve Prometheus metrics.
    pub metrics_addr: Option<String>,
    /// `map`: the target table of each source table.
    pub map: crate::mapping::TableMap,
    /// `origin_in_key`: rows carry `_binlake_origin` in their key (see [`crate::mapping`]).
    pub origin_in_key: bool,
    /// `conflict = "last_writer_wins"` applies to this pipeline (it has no `origin_in_key`):
    /// its rank among the config's pipeline names (see [`crate::lww`]).
    pub conflict: Option<u8>,
}

/// Table maintenance (Delta, Parquet compaction, ClickHouse OPTIMIZE): `binlake maintain`, or a
/// schedule inside `replicate`.
#[derive(Debug, Clone, PartialEq)]
pub struct Maintenance {
    /// How often `replicate` maintains its tables; `None`: never (run `binlake maintain`).
    pub every: Option<Duration>,
    pub target_file_size: u64,
    pub vacuum_retention: Duration,
    pub tombstone_retention: Duration,
    /// Parquet: superseded row versions older than this are dropped by compaction.
    pub version_retention: Option<Duration>,
    /// Parquet: replaced files are deleted this long after their compaction.
    pub replaced_grace: Duration,
}

impl Maintenance {
    pub fn resolve(c: &FileConfig) -> Result<Maintenance, ConfigError> {
        let every = match c.maintain_every.as_deref() {
            None | Some("") | Some("off") | Some("never") => None,
            Some(s) => {
                let d = parse_duration("maintain_every", s)?;
                if d < Duration::from_secs(1) {
                    return Err(key_err("maintain_every", "must be at least 1s (or `off`)"));
                }
                Some(d)
            }
        };
        let target_file_size = match &c.target_file_size {
            Some(s) => parse_size("target_file_size", s)? as u64,
            None => 128 << 20,
        };
        if target_file_size < 1 << 20 {
            return Err(key_err("target_file_size", "must be at least 1MiB"));
        }
        Ok(Maintenance {
            every,
            target_file_size,
            vacuum_retention: parse_duration(
                "vacuum_retention",
                c.vacuum_retention.as_deref().unwrap_or("7d"),
            )?,
            tombstone_retention: parse_duration(
                "tombstone_retention",
                c.tombstone_retention.as_deref().unwrap_or("7d"),
            )?,
            version_retention: c
                .version_retention
                .as_deref()
                .map(|v| parse_duration("version_retention", v))
                .transpose()?,
            replaced_grace: parse_duration(
                "vacuum_retention",
                c.vacuum_retention.as_deref().unwrap_or("1m"),
            )?,
        })
    }
}

impl Settings {
    pub fn resolve(c: &FileConfig) -> Result<Settings, ConfigError> {
        let urls = c.source_urls();
        if urls.is_empty() {
            return Err(key_err(
                "source",
                "required: mysql://user:password@host:port",
            ));
        }
        for u in &urls {
            crate::source::parse_url(u).map_err(|e| key_err(e.key(), e.to_string()))?;
        }
        let url = urls[0].clone();
        let mode: crate::source::SourceMode = choice("mode", c.mode.as_deref(), "failover")?;
        let patterns: Vec<String> = match &c.tables {
            None => vec![],
            Some(Patterns::One(s)) => vec![s.clone()],
            Some(Patterns::Many(v)) => v.clone(),
        };
        let filter = TableFilter::parse(&patterns).map_err(|e| key_err("tables", e.to_string()))?;
        let outbox = outbox_specs(c, &filter)?;
        let sink = SinkSettings::resolve(c)?;
        let target = c
            .target
            .clone()
            .ok_or_else(|| key_err("target", "required: a directory or s3://bucket/prefix"))?;
        let start_at: StartAt = choice("start_at", c.start_at.as_deref(), "snapshot")?;
        let invalid_values: InvalidPolicy =
            choice("invalid_values", c.invalid_values.as_deref(), "null")?;
        let on_position_lost: crate::pipeline::OnPositionLost = choice(
            "on_position_lost",
            c.on_position_lost.as_deref(),
            "resnapshot",
        )?;
        let pipeline = c.pipeline.clone().unwrap_or_else(|| "default".into());
        if pipeline.is_empty()
            || !pipeline
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
        {
            return Err(key_err(
                "pipeline",
                format!("`{pipeline}`: use letters, digits, - and _"),
            ));
        }
        let max_batch_rows = c.max_batch_rows.unwrap_or(100_000);
        if max_batch_rows == 0 {
            return Err(key_err("max_batch_rows", "must be at least 1"));
        }
        let max_batch_bytes = match &c.max_batch_bytes {
            Some(s) => parse_size("max_batch_bytes", s)?,
            None => 64 << 20,
        };
        let max_latency = parse_duration("max_latency", c.max_latency.as_deref().unwrap_or("1s"))?;
        let min_commit_interval = c
            .min_commit_interval
            .as_deref()
            .map(|v| parse_duration("min_commit_interval", v))
            .transpose()?;
        let checkpoint_interval = parse_duration(
            "checkpoint_interval",
            c.checkpoint_interval.as_deref().unwrap_or("10s"),
        )?;
        let heartbeat = parse_duration("heartbeat", c.heartbeat.as_deref().unwrap_or("200ms"))?;
        if heartbeat < Duration::from_millis(100) {
            return Err(key_err("heartbeat", "must be at least 100ms"));
        }
        let log_json = match c.log_format.as_deref().unwrap_or("text") {
            "text" => false,
            "json" => true,
            other => {
                return Err(key_err(
                    "log_format",
                    format!("expected text or json, got `{other}`"),
                ))
            }
        };
        let maintenance = Maintenance::resolve(c)?;
        let replica_server_id = c.server_id.unwrap_or_else(|| default_server_id(&pipeline));
        if replica_server_id == 0 {
            return Err(key_err(
                "server_id",
                "must not be 0 (the server refuses replicas with id 0)",
            ));
        }
        Ok(Settings {
            source: SourceConfig {
                url,
                urls,
                mode,
                exclude_server_ids: c.exclude_server_ids.clone().unwrap_or_default(),
                exclude_gtid_domains: c.exclude_gtid_domains.clone().unwrap_or_default(),
                give_up_after: None,
                replica_server_id,
                heartbeat,
                filter,
                also_read: outbox.iter().map(|o| o.table.clone()).collect(),
            },
            pipeline: PipelineConfig {
                lww: pipelines::conflict_policy(c)?.map(|()| crate::lww::clock(&pipeline)),
                metrics: crate::metrics::for_pipeline(&pipeline),
                name: pipeline,
                max_batch_rows,
                max_batch_bytes,
                max_latency,
                min_commit_interval,
                checkpoint_interval,
                invalid_values,
                on_position_lost,
                exit_when_caught_up: c.exit_when_caught_up.unwrap_or(false),
                start_at,
                control_addr: c
                    .control_addr
                    .as_deref()
                    .map(|a| control_addr(a, control_token(c)))
                    .transpose()?,
                control_token: control_token(c),
                columns: {
                    let list = |p: &Option<Patterns>| match p {
                        None => vec![],
                        Some(Patterns::One(s)) => vec![s.clone()],
                        Some(Patterns::Many(v)) => v.clone(),
                    };
                    crate::columns::ColumnRules::parse(
                        &list(&c.exclude_columns),
                        &list(&c.mask),
                        c.mask_salt.as_deref(),
                    )
                    .map_err(|e| match &e {
                        crate::columns::ColumnRuleError::Pattern { key, .. } => {
                            key_err(key, e.to_string())
                        }
                        _ => key_err("mask_salt", e.to_string()),
                    })?
                },
                schedules: c
                    .backfill
                    .iter()
                    .flatten()
                    .map(|b| {
                        Ok(crate::control::Scheduled {
                            tables: b.tables.clone(),
                            filter: b.filter.clone(),
                            cron: b.schedule.parse().map_err(|m: crate::control::CronError| {
                                key_err("backfill.schedule", m.to_string())
                            })?,
                            schedule: b.schedule.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>, ConfigError>>()?,
                outbox,
                wait_for_source: false,
                snapshot: crate::snapshot::SnapshotConfig {
                    parallelism: match c.snapshot_parallelism.unwrap_or(2) {
                        0 => return Err(key_err("snapshot_parallelism", "must be at least 1")),
                        n => n,
                    },
                    chunk_rows: match c.snapshot_chunk_rows.unwrap_or(20_000) {
                        0 => return Err(key_err("snapshot_chunk_rows", "must be at least 1")),
                        n => n,
                    },
                    columnar: None,
                },
            },
            sink,
            target,
            log_json,
            maintenance,
            metrics_addr: c
                .metrics_addr
                .as_deref()
                .map(|a| listen_addr("metrics_addr", a).map(|(a, _)| a))
                .transpose()?,
            map: crate::mapping::TableMap::parse(&c.map.clone().unwrap_or_default())
                .map_err(|e| key_err("map", e.to_string()))?,
            origin_in_key: c.origin_in_key.unwrap_or(false),
            conflict: pipelines::conflict_policy(c)?.map(|()| 0),
        })
    }
}

/// A replica server id unlikely to clash with real replicas: 0x62_6C_xx_xx from the pipeline name.
fn default_server_id(pipeline: &str) -> u32 {
    let h = pipeline
        .bytes()
        .fold(2166136261u32, |a, b| (a ^ b as u32).wrapping_mul(16777619));
    0x626C_0000 | (h & 0xFFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_listen_on_loopback_unless_told_and_then_need_a_token() {
        assert_eq!(
            listen_addr("metrics_addr", "9187").unwrap(),
            ("127.0.0.1:9187".to_string(), true)
        );
        assert_eq!(
            listen_addr("metrics_addr", ":9187").unwrap(),
            ("127.0.0.1:9187".to_string(), true)
        );
        assert!(listen_addr("metrics_addr", "[::1]:9187").unwrap().1);
        assert!(!listen_addr("metrics_addr", "0.0.0.0:9187").unwrap().1);
        assert!(listen_addr("metrics_addr", "nope").is_err());
        let e = control_addr("0.0.0.0:7219", None).unwrap_err().to_string();
        assert!(
            e.contains("BINLAKE_CONTROL_TOKEN") && e.contains("control_addr"),
            "{e}"
        );
        assert_eq!(
            control_addr("0.0.0.0:7219", Some("t0k".into())).unwrap(),
            "0.0.0.0:7219"
        );
        assert_eq!(control_addr("7219", None).unwrap(), "127.0.0.1:7219");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = FileConfig::parse("x.toml", "sourcee = 'a'")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sourcee"), "{e}");
    }

    #[test]
    fn several_sources() {
        let c = FileConfig::parse(
            "x.toml",
            "target='/t'\nmode='active-active'\n[[source]]\nurl='mysql://a@h:1'\n[[source]]\nurl='mysql://b@h:2'",
        )
        .unwrap();
        let s = Settings::resolve(&c).unwrap();
        assert_eq!(s.source.urls, vec!["mysql://a@h:1", "mysql://b@h:2"]);
        assert_eq!(s.source.mode, crate::source::SourceMode::ActiveActive);
        let c = FileConfig::parse(
            "x.toml",
            "target='/t'\nsource=['mysql://a@h:1']\nmode='both'",
        )
        .unwrap();
        let e = Settings::resolve(&c).unwrap_err().to_string();
        assert!(e.contains("`mode`") && e.contains("active-active"), "{e}");
    }

    #[test]
    fn env_expansion_and_bad_values() {
        std::env::set_var("BINLAKE_TEST_PW", "s3cr\"et");
        let c = FileConfig::parse(
            "x.toml",
            "source = 'mysql://u:${BINLAKE_TEST_PW}@h:1'\ntarget='/tmp/x'\nmax_latency='fast'",
        )
        .unwrap();
        assert_eq!(
            c.source.as_ref().map(Sources::urls),
            Some(vec!["mysql://u:s3cr\"et@h:1".to_string()])
        );
        let e = Settings::resolve(&c).unwrap_err().to_string();
        assert!(e.contains("max_latency") && e.contains("fast"), "{e}");
        let e = FileConfig::parse("x.toml", "source = '${BINLAKE_NOPE_UNSET}'")
            .unwrap_err()
            .to_string();
        assert!(e.contains("BINLAKE_NOPE_UNSET"), "{e}");
        assert_eq!(
            parse_duration("k", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse_size("k", &Size::Text("64MiB".into())).unwrap(),
            64 << 20
        );
    }
}
