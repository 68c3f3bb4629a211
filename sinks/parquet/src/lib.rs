//! Parquet sink: one folder of Parquet files per source table, on local disk or object storage.
//!
//! Layout under the target:
//! ```text
//! <db>/<table>/part-<seq>-<n>-<pipeline>.parquet   data + metadata columns, ZSTD
//! _binlake_rejects/part-<seq>-0-<pipeline>.parquet dead-letter rows
//! _binlake_watermarks/part-<seq>-0-<pipeline>.parquet per table: last applied GTID, commit time
//! _binlake/<pipeline>/log/<seq>.json               the commit log: one entry per commit = the checkpoint
//!                                                  (from the newest compaction on: see `compact`)
//! _binlake/<pipeline>/owner.json                   the owner lease (one writer per pipeline)
//! _binlake/<pipeline>/shadow/<db>/<table>/part-*   a re-snapshot's rows until it is swapped in
//!                                                  (see `swap`)
//! ```
//!
//! Invariants (why kill -9 loses and doubles nothing):
//! - A data file is written whole or not at all (object stores put atomically; the local store
//!   writes a temporary file and renames it), so no reader ever sees a partial file.
//! - A commit is durable when its log entry exists. Data files are written first, the log entry
//!   last, with a create-if-absent put, so two writers of one pipeline cannot both commit `seq`.
//! - One writer per pipeline: [`ParquetSink::open`] takes an owner lease (renewed every 10 s,
//!   expiring after 60 s) before it deletes anything, so a second process fails with a clear
//!   error instead of deleting the first one's in-flight files.
//! - Data files carry their commit's `seq` and their pipeline in their name. At start, [`ParquetSink::open`] deletes
//!   every `part-<seq>` newer than the last log entry: the leftovers of a commit that did not
//!   finish. The source then replays from the checkpoint and writes those rows again, once.
//!   Between a crash and the restart such leftovers hold only committed source data, never half
//!   a transaction.

mod compact;
mod config;
mod ddl;
mod manifest;
mod sink;
mod swap;
mod types;

pub use compact::{CompactOptions, CompactReport, CompactSummary};
pub use config::{ParquetConfig, ParquetConfigError};
pub use sink::ParquetSink;
