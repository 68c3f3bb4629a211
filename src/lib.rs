//! binlake: a near-real-time analytics replica of MySQL/MariaDB tables, read from the binlog.
//!
//! The flow (see `../shared/DESIGN.md` and the README): [`source`] reads the binlog as a replica,
//! [`decode`] turns events into typed row changes, [`pipeline`] assembles transactions, batches them
//! per table with size and time bounds, deduplicates per key and builds Arrow batches with the
//! metadata columns, and a sink (crate `binlake-sink-*`) writes them with the checkpoint.

pub mod clock;
pub mod columnar;
pub mod columns;
pub mod config;
pub mod control;
pub mod dbt;
pub mod decode;
pub mod filter;
pub mod lww;
pub mod mapping;
pub mod metrics;
pub mod outbox;
pub mod pipeline;
pub mod progress;
/// Typed source positions (defined with the checkpoint that stores them, in `binlake-sink`).
pub use binlake_sink::position;
pub mod schema;
pub mod snapshot;
pub mod source;
pub mod validate;
