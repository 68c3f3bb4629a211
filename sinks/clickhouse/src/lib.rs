//! ClickHouse sink: one table per source table, database `<prefix><db>`, table `<table>`, holding
//! the current state as `ReplacingMergeTree(_binlake_version, _binlake_deleted)` ordered by the
//! primary key (or by a `[[layout]]` that keeps one row per key: `layout.rs`), and a view
//! `<table>_current` that reads it `FINAL` without tombstones.
//!
//! Invariants (why kill -9 loses and doubles nothing a reader of `_current` sees):
//! - Each commit inserts each table's batch in ONE insert (`FORMAT ArrowStream`), with the
//!   insert block size raised above the batch's row count, so ClickHouse applies it atomically:
//!   a table never shows half a source transaction.
//! - Inserts are idempotent by version: a replayed batch carries the same `(key,
//!   _binlake_version)` rows, and `FINAL` keeps one row per key, the highest version.
//! - The checkpoint (`<prefix>binlake.checkpoints`, a ReplacingMergeTree keyed by pipeline and
//!   table, newest `seq` wins) is written after the data and read back at start. A crash between
//!   the data and the checkpoint replays the batch, which the previous point makes harmless.
//! - Keyless tables are plain MergeTree changelogs: every change a row. A replay is filtered by
//!   the table's highest `_binlake_version` (inserts are atomic and hold whole transactions, so
//!   rows at or below it are already in).
//! - Errors are classified: network errors, timeouts, 5xx pages and the server's "busy" codes
//!   are transient (the pipeline retries until the server is back); schema and data errors name
//!   the table and stop only it; authentication errors stop the pipeline.
//! - There is no owner lease in ClickHouse: two processes of one pipeline are not refused, but
//!   version-idempotent inserts keep `_current` correct.

mod config;
mod ddl;
pub mod layout;
mod maintain;
mod sink;
mod tls;
pub mod types;

pub use config::{ClickHouseConfig, Compression};
pub use layout::Layout;
pub use sink::{ident, lit, ClickHouseSink};
