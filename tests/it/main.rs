//! binlake's integration tests: one binary, real servers started by `tests/scripts/`.
mod bad_input;
#[cfg(feature = "clickhouse")]
mod clickhouse;
mod compaction;
mod conflict;
mod conformance;
mod crash;
mod dbt;
#[cfg(feature = "delta")]
mod delta;
mod fanin;
mod filters;
mod fixtures;
mod ha;
mod harness;
mod keyless;
mod lifecycle;
mod names;
mod observe;
mod outbox;
mod repair;
mod replicate;
mod s3;
mod snapshot;
mod stream;
mod swap;
mod tls;
