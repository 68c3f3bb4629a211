//! The Parquet sink's commit-log entries (see `binlake_sink::store` for the log itself) and its
//! data-file names.
//!
//! An entry is the checkpoint plus the files its commit added. Entries are immutable and written
//! create-if-absent, so the highest `seq` is the last complete commit.

use binlake_sink::Checkpoint;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogEntry {
    pub checkpoint: Checkpoint,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

/// `part-<seq:020>-<n:04>-<pipeline>.parquet` -> seq, for files of `pipeline` only.
pub fn data_file_seq(name: &str, pipeline: &str) -> Option<u64> {
    let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let mut it = rest.splitn(3, '-');
    let seq = it.next()?.parse().ok()?;
    let _n = it.next()?;
    (it.next()? == pipeline).then_some(seq)
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
