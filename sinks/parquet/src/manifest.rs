//! The commit log: `_binlake/<pipeline>/log/<seq:020>.json`, one entry per commit.
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
}

pub fn log_name(seq: u64) -> String {
    format!("{seq:020}.json")
}

pub fn parse_log_name(name: &str) -> Option<u64> {
    name.strip_suffix(".json")?.parse().ok()
}

/// `part-<seq:020>-<n>.parquet` -> seq
pub fn data_file_seq(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    rest.split('-').next()?.parse().ok()
}

pub fn data_file_name(seq: u64, n: usize) -> String {
    format!("part-{seq:020}-{n:04}.parquet")
}
