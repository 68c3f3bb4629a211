//! Parquet sink configuration: parsed and validated without I/O; [`crate::ParquetSink::new`] does
//! the I/O.

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;
use thiserror::Error;

#[derive(Debug, Clone)]
pub struct ParquetConfig {
    /// A local directory, `file:///abs/dir`, or `s3://bucket/prefix`.
    pub target: String,
    /// Names this pipeline's commit log, so several pipelines may share a target.
    pub pipeline: String,
    /// ZSTD level (1-22).
    pub zstd_level: i32,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// Compaction between two commits, this often (`maintain_every`), with these options.
    pub maintenance: Option<(std::time::Duration, crate::CompactOptions)>,
}

#[derive(Debug, Error)]
pub enum ParquetConfigError {
    #[error("target `{0}`: unsupported URL scheme (expected a local path, file://, or s3://)")]
    Scheme(String),
    #[error("target `{target}`: {message}")]
    Invalid { target: String, message: String },
}

impl ParquetConfig {
    pub fn new(target: impl Into<String>, pipeline: impl Into<String>) -> Self {
        ParquetConfig {
            target: target.into(),
            pipeline: pipeline.into(),
            zstd_level: 1,
            row_group_rows: 1 << 20,
            maintenance: None,
        }
    }

    pub fn validate(&self) -> Result<(), ParquetConfigError> {
        if !(1..=22).contains(&self.zstd_level) {
            return Err(ParquetConfigError::Invalid {
                target: self.target.clone(),
                message: "zstd_level must be 1..=22".into(),
            });
        }
        if self.pipeline.is_empty() || self.pipeline.contains('/') {
            return Err(ParquetConfigError::Invalid {
                target: self.target.clone(),
                message: "pipeline name must be non-empty and contain no '/'".into(),
            });
        }
        match self.target.split_once("://") {
            None => Ok(()),
            Some(("file" | "s3" | "s3a", _)) => Ok(()),
            Some(_) => Err(ParquetConfigError::Scheme(self.target.clone())),
        }
    }

    /// Builds the object store and the prefix inside it. Creates a local directory if needed.
    pub fn store(&self) -> Result<(Arc<dyn ObjectStore>, Path), ParquetConfigError> {
        self.validate()?;
        let invalid = |m: String| ParquetConfigError::Invalid {
            target: self.target.clone(),
            message: m,
        };
        if let Some(rest) = self
            .target
            .strip_prefix("s3://")
            .or_else(|| self.target.strip_prefix("s3a://"))
        {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("no bucket in the URL".into()));
            }
            // Bounded client retries: binlake's pipeline retries whole commits itself, so a store
            // that is down surfaces within ~30 s instead of the client's default 3 minutes.
            let retry = object_store::RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: std::time::Duration::from_millis(200),
                    max_backoff: std::time::Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: 4,
                retry_timeout: std::time::Duration::from_secs(30),
            };
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry);
            // An endpoint whose certificate a private CA signed: AWS_CA_BUNDLE.
            if let Some(opts) = binlake_sink::store::ca_bundle_client_options()
                .map_err(|e| invalid(e.to_string()))?
            {
                b = b.with_client_options(opts);
                // the client keys of the environment again (the options replaced them all)
                for (k, v) in std::env::vars() {
                    if let Ok(key @ object_store::aws::AmazonS3ConfigKey::Client(_)) =
                        k.to_ascii_lowercase().parse()
                    {
                        b = b.with_config(key, v);
                    }
                }
            }
            if let Ok(ep) =
                std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT"))
            {
                let http = ep.starts_with("http://");
                b = b.with_endpoint(ep).with_allow_http(http);
            }
            let store = b.build().map_err(|e| invalid(e.to_string()))?;
            return Ok((Arc::new(store), Path::from(prefix.trim_matches('/'))));
        }
        let dir = self.target.strip_prefix("file://").unwrap_or(&self.target);
        std::fs::create_dir_all(dir)
            .map_err(|e| invalid(format!("cannot create directory: {e}")))?;
        let abs = std::fs::canonicalize(dir).map_err(|e| invalid(e.to_string()))?;
        let store = LocalFileSystem::new_with_prefix(abs).map_err(|e| invalid(e.to_string()))?;
        Ok((Arc::new(store), Path::from("")))
    }
}
