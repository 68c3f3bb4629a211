//! Source DDL applied to ClickHouse tables: TRUNCATE and DROP TABLE (`TRUNCATE TABLE`: the
//! pipeline has committed everything before the statement, so exactly the older rows go), DROP
//! COLUMN and RENAME COLUMN (`ALTER TABLE`, then the `_current` view is rebuilt).
//!
//! A keyless table's content is replaced (its whole read: at startup, after a RENAME into the
//! name, a lost position or a backfill) in a shadow table swapped in with `EXCHANGE TABLES`,
//! atomic in ClickHouse's Atomic databases (the default): readers see the old content or the
//! new, never a mix or an empty table.
//!
//! Invariants: every statement is idempotent (`IF EXISTS`, and a column already gone or renamed
//! is a no-op), so a replay after a crash changes nothing; a table whose columns cannot be read
//! is retried, never assumed absent; RENAME TABLE stops the table instead of a partial replica.

use binlake_sink::{DdlKind, SinkError, TableBatch, TableId, COL_VERSION};
use tracing::info;

use crate::sink::{classify, ident, lit, ClickHouseSink};

impl ClickHouseSink {
    /// Replaces keyless table `name` (created already) with the batch's rows and the rows it
    /// holds at or above the batch's `purge_below` (the stream's changes after the read; all of
    /// them go without it): both are written to a shadow table, which `EXCHANGE TABLES` swaps in.
    /// A shadow left by a crash is dropped first.
    pub(crate) async fn replace_keyless(
        &self,
        tb: &TableBatch,
        name: &str,
    ) -> Result<(), SinkError> {
        let shadow = format!(
            "{}.{}",
            ident(&self.config.database(&tb.table.db)),
            ident(&format!("{}__binlake_replace", tb.table.table))
        );
        let step = |what: &'static str| {
            let table = tb.table.clone();
            move |e| classify(e, what, Some(&table))
        };
        self.exec(&format!("DROP TABLE IF EXISTS {shadow}"))
            .await
            .map_err(step("dropping a shadow table"))?;
        self.exec(&format!("CREATE TABLE {shadow} AS {name}"))
            .await
            .map_err(step("creating a shadow table"))?;
        if let Some(below) = tb.purge_below {
            self.exec(&format!(
                "INSERT INTO {shadow} SELECT * FROM {name} WHERE {} >= {below}",
                ident(COL_VERSION)
            ))
            .await
            .map_err(step("copying the rows a keyless read keeps"))?;
        }
        if tb.batch.num_rows() > 0 {
            self.insert(&tb.table, &shadow, &tb.batch).await?;
        }
        self.exec(&format!("EXCHANGE TABLES {name} AND {shadow}"))
            .await
            .map_err(step("swapping a keyless table's new content in"))?;
        self.exec(&format!("DROP TABLE IF EXISTS {shadow}"))
            .await
            .map_err(step("dropping a shadow table"))?;
        info!(table = %tb.table, rows = tb.batch.num_rows(), below = ?tb.purge_below, "keyless table content replaced (EXCHANGE TABLES)");
        Ok(())
    }

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
