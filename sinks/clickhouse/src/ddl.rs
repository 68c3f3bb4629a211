//! Source DDL applied to ClickHouse tables: TRUNCATE and DROP TABLE (`TRUNCATE TABLE`: the
//! pipeline has committed everything before the statement, so exactly the older rows go), DROP
//! COLUMN and RENAME COLUMN (`ALTER TABLE`, then the `_current` view is rebuilt).
//!
//! Invariants: every statement is idempotent (`IF EXISTS`, and a column already gone or renamed
//! is a no-op), so a replay after a crash changes nothing; a table whose columns cannot be read
//! is retried, never assumed absent; RENAME TABLE stops the table instead of a partial replica.

use binlake_sink::{DdlKind, SinkError, TableId};
use tracing::info;

use crate::sink::{classify, ident, lit, ClickHouseSink};

impl ClickHouseSink {
    pub(crate) async fn apply_ddl(
        &mut self,
        table: &TableId,
        kind: DdlKind,
        version: u64,
    ) -> Result<(), SinkError> {
        let _ = version;
        let name = table.to_string();
        self.tables.remove(&name);
        self.applied.remove(&name);
        if let DdlKind::RenameTable { to } = &kind {
            return Err(binlake_sink::rename_table_unsupported(
                "clickhouse",
                table,
                to,
            ));
        }
        let columns = self.server_columns(table).await?;
        if columns.is_empty() {
            // Nothing replicated yet, if the table really is not there: a DDL skipped while the
            // table exists would leave it with the old columns, so an empty column list next to
            // an existing table is read again (retried) rather than believed.
            let exists = self
                .rows(&format!(
                    "SELECT count() AS n FROM system.tables WHERE database = {} AND name = {}",
                    lit(&self.config.database(&table.db)),
                    lit(&table.table)
                ))
                .await
                .map_err(|e| classify(e, "checking that the table exists", Some(table)))?
                .first()
                .and_then(|r| {
                    r.get("n")
                        .and_then(|n| n.as_u64().or_else(|| n.as_str()?.parse().ok()))
                })
                .unwrap_or(0)
                > 0;
            if exists {
                return Err(SinkError::Transient(format!(
                    "{name}: the ClickHouse table exists but its columns could not be read"
                )));
            }
            info!(table = %name, ?kind, "not in ClickHouse yet: nothing to apply");
            return Ok(());
        }
        let full = self.table_name(table);
        // Everything before the statement is committed (the pipeline waits for it), so the
        // table holds only rows older than it: TRUNCATE and DROP remove exactly those.
        let sql = match &kind {
            DdlKind::Truncate => format!("TRUNCATE TABLE {full}"),
            DdlKind::DropTable => format!("TRUNCATE TABLE {full}"),
            DdlKind::DropColumn(c) => {
                let Some((stored, _)) = columns.iter().find(|(n, _)| n.eq_ignore_ascii_case(c))
                else {
                    info!(table = %name, ?kind, columns = ?columns.iter().map(|c| &c.0).collect::<Vec<_>>(), "already applied in ClickHouse (no such column)");
                    return Ok(());
                };
                format!("ALTER TABLE {full} DROP COLUMN IF EXISTS {}", ident(stored))
            }
            DdlKind::RenameColumn { from, to } => {
                let Some((stored, _)) = columns.iter().find(|(n, _)| n.eq_ignore_ascii_case(from))
                else {
                    info!(table = %name, ?kind, columns = ?columns.iter().map(|c| &c.0).collect::<Vec<_>>(), "already applied in ClickHouse (no such column)");
                    return Ok(());
                };
                if columns.iter().any(|(n, _)| n == to) {
                    return Err(SinkError::Table {
                        table: table.clone(),
                        message: format!("RENAME COLUMN `{from}` TO `{to}`: the ClickHouse table has both columns. The table is stopped; the others go on. Drop one of them by hand and restart"),
                    });
                }
                format!(
                    "ALTER TABLE {full} RENAME COLUMN IF EXISTS {} TO {}",
                    ident(stored),
                    ident(to)
                )
            }
            DdlKind::RenameTable { .. } => unreachable!("handled above"),
        };
        self.exec(&sql)
            .await
            .map_err(|e| classify(e, "applying DDL", Some(table)))?;
        if matches!(kind, DdlKind::DropColumn(_) | DdlKind::RenameColumn { .. }) {
            let keyed = self.is_replacing(table).await?;
            self.replace_view(table, keyed).await?;
        }
        info!(table = %name, ?kind, "applied in ClickHouse");
        Ok(())
    }
}
