//! What a pipeline keeps in its target besides the tables, on any object store: the commit log
//! (the checkpoint) and the owner lease.
//!
//! ```text
//! <root>/_binlake/<pipeline>/log/<seq:020>.json   one entry per commit; the highest is the checkpoint
//! <root>/_binlake/<pipeline>/owner.json           which process writes this pipeline
//! ```
//!
//! Invariants:
//! - Log entries are immutable and written create-if-absent: two writers can never both commit
//!   the same `seq`, and the highest entry is the last complete commit.
//! - One writer per pipeline: [`TargetLog::claim`] takes the owner lease before a sink touches
//!   anything. Another process's lease blocks it until it is [`LEASE`] old, or at once when that
//!   process ran on this host and is gone (kill -9 and restart needs no waiting).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::SinkError;

/// A lease not renewed for this long belongs to a process that is gone.
pub const LEASE: Duration = Duration::from_secs(60);

/// Classifies object-store errors: retry (network, 5xx) or stop (permissions, no conditional put).
pub fn classify(e: object_store::Error) -> SinkError {
    use object_store::Error as E;
    match e {
        E::AlreadyExists { path, .. } | E::Precondition { path, .. } => SinkError::Conflict(format!("{path} already exists")),
        E::NotImplemented { operation, implementer } => {
            SinkError::Definite(format!("the object store ({implementer}) does not support {operation}; binlake needs conditional put"))
        }
        E::PermissionDenied { path, source } | E::Unauthenticated { path, source } => SinkError::Definite(format!("access to {path} denied: {source}")),
        // a certificate the client does not trust: no retry changes that
        other if format!("{other:?}").contains("InvalidCertificate") || format!("{other:?}").contains("invalid peer certificate") => SinkError::Definite(format!(
            "{other}: the object store's certificate was not accepted. Give the CA bundle that signed it with AWS_CA_BUNDLE"
        )),
        other => SinkError::Transient(other.to_string()),
    }
}

/// `AWS_CA_BUNDLE` names a file that is not a usable PEM bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("AWS_CA_BUNDLE: {0}")]
pub struct CaBundleError(String);

/// Client options trusting the PEM bundle of `AWS_CA_BUNDLE` (as the AWS CLI and SDKs read it)
/// besides the public CAs, for an S3 endpoint whose certificate a private CA signed; `None`
/// when the variable is not set. The error names the variable. The options replace a builder's
/// whole client set: apply them before `allow_http` and the other client keys.
pub fn ca_bundle_client_options() -> Result<Option<object_store::ClientOptions>, CaBundleError> {
    let Ok(bundle) = std::env::var("AWS_CA_BUNDLE") else {
        return Ok(None);
    };
    let pem =
        std::fs::read(&bundle).map_err(|e| CaBundleError(format!("cannot read {bundle}: {e}")))?;
    let certs = object_store::Certificate::from_pem_bundle(&pem)
        .map_err(|e| CaBundleError(format!("{bundle}: {e}")))?;
    if certs.is_empty() {
        return Err(CaBundleError(format!("{bundle} holds no PEM certificate")));
    }
    Ok(Some(
        certs
            .into_iter()
            .fold(object_store::ClientOptions::new(), |o, c| {
                o.with_root_certificate(c)
            }),
    ))
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Owner {
    owner: String,
    host: String,
    pid: u32,
    renewed_at_us: i64,
}

pub struct TargetLog {
    store: Arc<dyn ObjectStore>,
    root: Path,
    pipeline: String,
    /// For messages: the target as the user wrote it.
    target: String,
    me: String,
    host: String,
    lease_renewed: Option<Instant>,
    /// Sequence number of the last complete commit (0: none).
    pub last_seq: u64,
}

impl TargetLog {
    pub fn new(store: Arc<dyn ObjectStore>, root: Path, pipeline: &str, target: &str) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        let me = format!("{host}/pid {}/started {}", std::process::id(), now_us());
        TargetLog {
            store,
            root,
            pipeline: pipeline.into(),
            target: target.into(),
            me,
            host,
            lease_renewed: None,
            last_seq: 0,
        }
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// `rel` under the target's root.
    pub fn path(&self, rel: &str) -> Path {
        if self.root.as_ref().is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{}", self.root, rel))
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn log_dir(&self) -> Path {
        self.path(&format!("_binlake/{}/log", self.pipeline))
    }

    pub async fn put(&self, path: &Path, bytes: Vec<u8>, mode: PutMode) -> Result<(), SinkError> {
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        self.store
            .put_opts(path, PutPayload::from(bytes), opts)
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Whether anything exists under `prefix` (reads the first listing page only: a Delta
    /// log of a hundred thousand entries is not listed whole to learn that it exists).
    pub async fn any_under(&self, prefix: &Path) -> Result<bool, SinkError> {
        self.store
            .list(Some(prefix))
            .try_next()
            .await
            .map(|first| first.is_some())
            .map_err(classify)
    }

    pub async fn list(&self, prefix: &Path) -> Result<Vec<Path>, SinkError> {
        self.store
            .list(Some(prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(classify)
    }

    async fn read<T: DeserializeOwned>(&self, p: &Path) -> Result<T, SinkError> {
        let bytes = self
            .store
            .get(p)
            .await
            .map_err(classify)?
            .bytes()
            .await
            .map_err(classify)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| SinkError::Definite(format!("corrupt binlake record {p}: {e}")))
    }

    /// Takes or renews the owner lease (see the module doc).
    pub async fn claim(&mut self) -> Result<(), SinkError> {
        let path = self.path(&format!("_binlake/{}/owner.json", self.pipeline));
        match self.store.get(&path).await {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(classify)?;
                // an unreadable lease is taken over
                if let Ok(o) = serde_json::from_slice::<Owner>(&bytes) {
                    let age_s = (now_us() - o.renewed_at_us) as f64 / 1e6;
                    let dead_here = o.host == self.host
                        && !std::path::Path::new(&format!("/proc/{}", o.pid)).exists();
                    if o.owner != self.me && age_s < LEASE.as_secs_f64() && !dead_here {
                        return Err(SinkError::Conflict(format!(
                            "pipeline `{}` in {} is held by {} (renewed {age_s:.0} s ago). Stop that process, or wait {} s after it died, or use another --pipeline",
                            self.pipeline,
                            self.target,
                            o.owner,
                            LEASE.as_secs()
                        )));
                    }
                }
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(classify(e)),
        }
        let owner = Owner {
            owner: self.me.clone(),
            host: self.host.clone(),
            pid: std::process::id(),
            renewed_at_us: now_us(),
        };
        let body = serde_json::to_vec(&owner).map_err(|e| SinkError::Definite(e.to_string()))?;
        self.put(&path, body, PutMode::Overwrite).await?;
        self.lease_renewed = Some(Instant::now());
        Ok(())
    }

    /// Renews the lease when a sixth of it has passed.
    pub async fn keepalive(&mut self) -> Result<(), SinkError> {
        if self.lease_renewed.is_none_or(|t| t.elapsed() >= LEASE / 6) {
            self.claim().await?;
        }
        Ok(())
    }

    /// The last complete commit's entry; sets [`Self::last_seq`].
    pub async fn latest<T: DeserializeOwned>(&mut self) -> Result<Option<T>, SinkError> {
        let names = self.list(&self.log_dir()).await?;
        let last = names
            .iter()
            .filter_map(|p| p.filename().and_then(parse_log_name).map(|s| (s, p)))
            .max_by_key(|(s, _)| *s);
        match last {
            Some((seq, p)) => {
                self.last_seq = seq;
                Ok(Some(self.read(p).await?))
            }
            None => Ok(None),
        }
    }

    fn entry_path(&self, seq: u64) -> Path {
        self.path(&format!("_binlake/{}/log/{}", self.pipeline, log_name(seq)))
    }

    /// The sequence numbers of the log's entries, ascending.
    pub async fn seqs(&self) -> Result<Vec<u64>, SinkError> {
        let mut seqs: Vec<u64> = self
            .list(&self.log_dir())
            .await?
            .iter()
            .filter_map(|p| p.filename().and_then(parse_log_name))
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// Entry `seq`.
    pub async fn entry<T: DeserializeOwned>(&self, seq: u64) -> Result<T, SinkError> {
        self.read(&self.entry_path(seq)).await
    }

    /// Deletes entry `seq` (one a newer entry made unneeded; never the last).
    pub async fn remove_entry(&self, seq: u64) -> Result<(), SinkError> {
        match self.store.delete(&self.entry_path(seq)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(classify(e)),
        }
    }

    /// Every entry, in commit order.
    pub async fn entries<T: DeserializeOwned>(&self) -> Result<Vec<T>, SinkError> {
        let mut names = self.list(&self.log_dir()).await?;
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for p in names {
            out.push(self.read(&p).await?);
        }
        Ok(out)
    }

    /// Writes entry `seq` (create-if-absent) and makes it the last commit. An entry that already
    /// exists with the same content was written by this commit before a lost response: success.
    pub async fn append<T: Serialize>(&mut self, seq: u64, entry: &T) -> Result<(), SinkError> {
        let json =
            serde_json::to_vec_pretty(entry).map_err(|e| SinkError::Definite(e.to_string()))?;
        let path = self.path(&format!("_binlake/{}/log/{}", self.pipeline, log_name(seq)));
        match self.put(&path, json.clone(), PutMode::Create).await {
            Ok(()) => {}
            Err(SinkError::Conflict(_)) => {
                let existing = self
                    .store
                    .get(&path)
                    .await
                    .map_err(classify)?
                    .bytes()
                    .await
                    .map_err(classify)?;
                if existing.as_ref() != json.as_slice() {
                    return Err(SinkError::Conflict(format!(
                        "commit log entry {path} was written by another process"
                    )));
                }
            }
            Err(e) => return Err(e),
        }
        self.last_seq = seq;
        Ok(())
    }
}

pub fn log_name(seq: u64) -> String {
    format!("{seq:020}.json")
}

pub fn parse_log_name(name: &str) -> Option<u64> {
    name.strip_suffix(".json")?.parse().ok()
}
