//! Delta Lake sink: one Delta table per source table at `<target>/<db>/<table>`, holding the
//! current state: upserted on the primary key, an incoming row applied only when its
//! `_binlake_version` is higher than the stored one. The upsert rewrites only the files a batch
//! touches ([`rewrite`]); DataFusion's MERGE runs where that path does not apply (partitioned
//! tables, column mapping, change data feed, a batch narrower than the table).
//!
//! Invariants (why kill -9 loses and doubles nothing):
//! - Every table commit carries a Delta `txn` action, app id `binlake:<pipeline>:<db>.<table>`,
//!   version = the highest `_binlake_version` it applies, in the same Delta commit as the data.
//!   Before applying a batch the sink reads that version back from the table and skips a batch
//!   that is already in: replays after a crash are no-ops, for keyless (append) tables too.
//! - A batch holds whole source transactions, and one batch is one Delta commit per table: a
//!   table never shows half a source transaction.
//! - The pipeline's resume position is written last, in binlake's commit log under
//!   `<target>/_binlake/<pipeline>/` (see `binlake_sink::store`), with the owner lease that keeps
//!   a second process of the same pipeline out. Delta's own optimistic concurrency (a log entry
//!   per version, written create-if-absent) protects each table from any other writer.
//! - Deletes are tombstones (`_binlake_deleted = true`) unless `deletes = "hard"`.
//! - Types Delta cannot hold are widened losslessly (see [`types`]); never silently altered.

mod config;
mod create;
mod ddl;
pub mod maintain;
mod rewrite;
mod sink;
pub mod types;

pub use config::{Deletes, DeltaConfig, Partitioning};
pub use sink::DeltaSink;
