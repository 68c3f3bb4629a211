//! The Parquet sink's commit-log entries (see `binlake_sink::store` for the log itself) and its
//! data-file names.
//!
//! An entry is the checkpoint plus the files its commit added (and, for a compaction, the files
//! it replaced). Entries are immutable and written
//! create-if-absent, so the highest `seq` is the last complete commit.

use binlake_sink::{Checkpoint, SinkError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogEntry {
    pub checkpoint: Checkpoint,
    pub files: Vec<FileEntry>,
    /// A compaction's entry (a base): `files` is every live file of the pipeline after it, so
    /// the entries before it are no longer needed (see `crate::compact`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub base: bool,
    /// A base's files that compactions replaced and that may still exist (deleted once their
    /// grace has passed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<RemovedFile>,
    /// Tables (`db.table`) whose re-snapshot shadow files end with this entry: swapped in (the
    /// entry's file in the table's folder holds their rows) or abandoned for a newer one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub swapped: Vec<String>,
}

/// A file a compaction replaced, and when (µs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedFile {
    pub path: String,
    pub at_us: i64,
}

/// The pipeline's files as its log says: the newest base's and the commits' after it.
#[derive(Debug, Default)]
pub struct LiveFiles {
    /// In commit order.
    pub files: Vec<FileEntry>,
    /// Replaced files that may still exist (the newest base's `removed`).
    pub removed: Vec<RemovedFile>,
    /// The entries before this one are no longer needed (0: no base yet).
    pub base_seq: u64,
    /// The last entry's checkpoint.
    pub last: Option<LogEntry>,
}

/// Reads the log from its newest base on (newest first until the base, so the cost is the
/// commits since the last compaction).
pub async fn live_files(log: &binlake_sink::store::TargetLog) -> Result<LiveFiles, SinkError> {
    let seqs = log.seqs().await?;
    let mut since: Vec<LogEntry> = Vec::new();
    let mut out = LiveFiles::default();
    for &seq in seqs.iter().rev() {
        let e: LogEntry = log.entry(seq).await?;
        let base = e.base;
        if out.last.is_none() {
            out.last = Some(e.clone());
        }
        since.push(e);
        if base {
            out.base_seq = seq;
            break;
        }
    }
    for e in since.into_iter().rev() {
        if e.base {
            out.removed = e.removed;
        }
        if !e.swapped.is_empty() {
            out.files
                .retain(|f| f.generation.is_none() || !e.swapped.contains(&f.table));
        }
        out.files.extend(e.files);
    }
    Ok(out)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub table: String,
    pub rows: usize,
    pub bytes: usize,
    pub min_version: u64,
    pub max_version: u64,
    /// The table's primary-key columns when the file was written (empty: keyless, or a lake
    /// written before keys were recorded). TRUNCATE and DROP TABLE need them to write tombstones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<String>,
    /// A re-snapshot's shadow file (its generation, see `binlake_sink::TableBatch::generation`):
    /// outside the table's folder, not part of the table until the re-snapshot's last batch
    /// swaps its rows in (see `crate::swap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

/// `part-<seq:020>-<n:04>-<pipeline>.parquet` -> seq, for files of `pipeline` only.
pub fn data_file_seq(name: &str, pipeline: &str) -> Option<u64> {
    let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let mut it = rest.splitn(3, '-');
    let seq = it.next()?.parse().ok()?;
    let _n = it.next()?;
    (it.next()? == pipeline).then_some(seq)
}

/// Where a re-snapshot's shadow files of `table` (`db/table`) go: under the pipeline's own
/// folder, so no reader's glob of the table's folder finds them.
pub fn shadow_dir(pipeline: &str) -> String {
    format!("_binlake/{pipeline}/shadow")
}

pub fn data_file_name(seq: u64, n: usize, pipeline: &str) -> String {
    format!("part-{seq:020}-{n:04}-{pipeline}.parquet")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_file_names_belong_to_their_pipeline() {
        let n = data_file_name(42, 3, "orders-eu");
        assert_eq!(data_file_seq(&n, "orders-eu"), Some(42));
        assert_eq!(data_file_seq(&n, "orders"), None);
        assert_eq!(
            data_file_seq("part-00000000000000000042-0003-default.parquet", "default"),
            Some(42)
        );
        assert_eq!(data_file_seq("other.parquet", "default"), None);
    }
}
