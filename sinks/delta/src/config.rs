//! Delta sink configuration: parsed and validated without I/O.

use std::collections::HashMap;

use binlake_sink::SinkError;
use url::Url;

/// What a source DELETE does to the Delta table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletes {
    /// Keep the row with `_binlake_deleted = true` (the default; a backfill cannot resurrect it).
    Soft,
    /// Remove the row.
    Hard,
}

/// `rewrite_budget`'s default: 32 MiB/s.
pub const DEFAULT_REWRITE_BUDGET: u64 = 32 << 20;

/// Decides whether a partitioning entry applies to `db`.`table`.
pub type Matcher = std::sync::Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// One `[[layout]]` entry for Delta: the partition columns of the tables it matches, set when
/// binlake creates such a table (a table that exists keeps its partitioning).
#[derive(Clone)]
pub struct Partitioning {
    /// The entry's table patterns, for messages.
    pub pattern: String,
    pub matches: Matcher,
    pub columns: Vec<String>,
}

impl std::fmt::Debug for Partitioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partitioning")
            .field("pattern", &self.pattern)
            .field("columns", &self.columns)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct DeltaConfig {
    /// A local directory, `file:///abs/dir`, or `s3://bucket/prefix`.
    pub target: String,
    pub pipeline: String,
    pub deletes: Deletes,
    /// Maintenance run by the sink itself, this often, in the background (`maintain_every`).
    pub maintenance: Option<(std::time::Duration, MaintainOptions)>,
    /// Bytes per second of data files that commits may rewrite (`rewrite_budget`); after a
    /// commit that rewrote more, the next one waits (see `Sink::commit_pause`). `None`: no
    /// limit.
    pub rewrite_budget: Option<u64>,
    /// Partition columns of the tables binlake creates (the first entry that matches).
    pub partitions: Vec<Partitioning>,
}

impl DeltaConfig {
    pub fn new(target: impl Into<String>, pipeline: impl Into<String>) -> Self {
        DeltaConfig {
            target: target.into(),
            pipeline: pipeline.into(),
            deletes: Deletes::Soft,
            maintenance: None,
            rewrite_budget: Some(DEFAULT_REWRITE_BUDGET),
            partitions: Vec::new(),
        }
    }

    /// Checks the settings without I/O; the error names what is wrong.
    pub fn validate(&self) -> Result<(), SinkError> {
        let bad = |m: &str| {
            Err(SinkError::Definite(format!(
                "target `{}`: {m}",
                self.target
            )))
        };
        if self.pipeline.is_empty() || self.pipeline.contains('/') {
            return bad("the pipeline name must be non-empty and contain no '/'");
        }
        if let Some((every, opts)) = &self.maintenance {
            if every.is_zero() {
                return bad("maintain_every must be above zero");
            }
            if opts.target_file_size < 1 << 20 {
                return bad("target_file_size must be at least 1MiB");
            }
        }
        self.base_url().map(|_| ())
    }

    /// The target as a URL (local paths made absolute against the working directory). No I/O:
    /// [`DeltaConfig::local_dir`] names the directory the sink creates.
    pub fn base_url(&self) -> Result<Url, SinkError> {
        let bad = |m: String| SinkError::Definite(format!("target `{}`: {m}", self.target));
        if self.target.starts_with("s3://") || self.target.starts_with("s3a://") {
            let mut u = Url::parse(&self.target.replacen("s3a://", "s3://", 1))
                .map_err(|e| bad(e.to_string()))?;
            if !u.path().ends_with('/') {
                let p = format!("{}/", u.path());
                u.set_path(&p);
            }
            return Ok(u);
        }
        if let Some((scheme, _)) = self.target.split_once("://") {
            if scheme != "file" {
                return Err(bad(format!(
                    "unsupported URL scheme `{scheme}` (expected a local path, file:// or s3://)"
                )));
            }
        }
        let dir = self.target.strip_prefix("file://").unwrap_or(&self.target);
        let abs = std::path::absolute(dir).map_err(|e| bad(e.to_string()))?;
        Url::from_directory_path(&abs).map_err(|_| bad("not an absolute directory".into()))
    }

    /// The local directory of a target on this machine's disk (`None` for object storage).
    pub fn local_dir(&self) -> Option<&str> {
        let t = self.target.as_str();
        if t.starts_with("s3://") || t.starts_with("s3a://") {
            return None;
        }
        Some(t.strip_prefix("file://").unwrap_or(t))
    }

    /// `<target>/<db>/<table>/`
    pub fn table_url(&self, db: &str, table: &str) -> Result<Url, SinkError> {
        self.base_url()?
            .join(&format!("{db}/{table}/"))
            .map_err(|e| SinkError::Definite(e.to_string()))
    }

    /// Storage options for S3 from the usual AWS_* environment (endpoint override for
    /// S3-compatible servers, plain HTTP allowed for a loopback endpoint).
    pub fn storage_options(&self) -> HashMap<String, String> {
        let mut o = HashMap::new();
        for k in [
            "AWS_ENDPOINT_URL",
            "AWS_REGION",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
        ] {
            if let Ok(v) = std::env::var(k) {
                o.insert(k.to_string(), v);
            }
        }
        if o.get("AWS_ENDPOINT_URL")
            .is_some_and(|e| e.starts_with("http://"))
        {
            o.insert("AWS_ALLOW_HTTP".into(), "true".into());
        }
        // a private CA for the endpoint: deltalake reads one PEM certificate from this option
        if let Ok(bundle) = std::env::var("AWS_CA_BUNDLE") {
            o.insert("certificate_path".into(), bundle);
        }
        o
    }
}

/// What scheduled maintenance does to each table (see `crate::maintain`).
#[derive(Debug, Clone)]
pub struct MaintainOptions {
    /// Compaction's target file size in bytes.
    pub target_file_size: u64,
    pub vacuum_retention: std::time::Duration,
    pub tombstone_retention: std::time::Duration,
    /// `_binlake_watermarks` keeps the newest row per (pipeline, table) and the rows younger
    /// than this.
    pub watermark_retention: std::time::Duration,
}

impl Default for MaintainOptions {
    fn default() -> Self {
        MaintainOptions {
            target_file_size: 128 << 20,
            vacuum_retention: std::time::Duration::from_secs(7 * 86400),
            tombstone_retention: std::time::Duration::from_secs(7 * 86400),
            watermark_retention: std::time::Duration::from_secs(7 * 86400),
        }
    }
}
