//! Parquet sink: one folder of Parquet files per source table, on local disk or object storage.
//!
//! Layout under the target:
//! ```text
//! <db>/<table>/part-<seq>-<n>.parquet     data + metadata columns, ZSTD
//! _binlake_rejects/part-<seq>-0.parquet   dead-letter rows
//! _binlake/<pipeline>/log/<seq>.json      the commit log: one entry per commit = the checkpoint
//! ```
//!
//! Invariants (why kill -9 loses and doubles nothing):
//! - A data file is written whole or not at all (object stores put atomically; the local store
//!   writes a temporary file and renames it), so no reader ever sees a partial file.
//! - A commit is durable when its log entry exists. Data files are written first, the log entry
//!   last, with a create-if-absent put, so two writers of one pipeline cannot both commit `seq`.
//! - Data files carry their commit's `seq` in their name. At start, [`ParquetSink::open`] deletes
//!   every `part-<seq>` newer than the last log entry: the leftovers of a commit that did not
//!   finish. The source then replays from the checkpoint and writes those rows again, once.
//!   Between a crash and the restart such leftovers hold only committed source data, never half
//!   a transaction.

mod config;
mod manifest;
mod sink;

pub use config::{ParquetConfig, ParquetConfigError};
pub use sink::ParquetSink;
