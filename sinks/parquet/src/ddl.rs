//! Source DDL in a Parquet target. The files follow each table map's shape, and readers union
//! the shapes by column name, so a dropped or renamed column needs nothing rewritten: older files
//! keep their columns, newer ones have the new shape.
//!
//! TRUNCATE, DROP TABLE and RENAME TABLE cannot be shown without rewriting or hiding files the
//! log has committed (append-only by design): the table is stopped with an error that says so,
//! and the other tables go on. A silently wrong replica is never the outcome.

use binlake_sink::{rename_table_unsupported, DdlKind, SinkError, TableId};

/// What the Parquet sink does for a DDL statement at `version` (idempotent: it writes nothing).
pub(crate) fn apply(table: &TableId, kind: DdlKind, version: u64) -> Result<(), SinkError> {
    let _ = version;
    match kind {
        DdlKind::DropColumn(_) | DdlKind::RenameColumn { .. } => Ok(()),
        DdlKind::RenameTable { to } => Err(rename_table_unsupported("parquet", table, &to)),
        DdlKind::Truncate | DdlKind::DropTable => Err(SinkError::Table {
            table: table.clone(),
            message: format!("{kind:?} at the source: the parquet sink does not apply it yet, so the replica would diverge. The table is stopped; rebuild it to resume"),
        }),
    }
}
