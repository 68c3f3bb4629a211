//! Source DDL applied to Delta tables: TRUNCATE and DROP TABLE (every older row becomes a
//! tombstone, or is deleted with `deletes = "hard"`), DROP COLUMN and RENAME COLUMN (the table
//! rewritten in one commit).
//!
//! Invariants: each statement is one Delta commit per table, taken under the table's lock (no
//! MERGE of the same table interleaves); replaying it after a crash changes nothing (rows are
//! already at `version`, the column already gone or renamed); RENAME TABLE is refused (the table
//! stops) rather than leaving a partial replica under the new name.

use std::ops::Not;
use std::sync::Arc;

use arrow_array::RecordBatch;
use binlake_sink::{SinkError, TableId, COL_DELETED, COL_VERSION};
use deltalake::datafusion::common::Column;
use deltalake::datafusion::logical_expr::{col, Expr};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use deltalake::DeltaTable;
use tracing::{debug, info};

use crate::config::Deletes;
use crate::sink::{delta_err, table_id, DeltaSink};

impl DeltaSink {
    /// Rewrites the whole table in one commit (an overwrite with the new schema): `column` maps
    /// each stored field to its expression in the new table (`None` drops it). Readers see the
    /// old table or the new one, never a mix; the `txn` versions are kept.
    pub(crate) async fn rewrite(
        &self,
        table: DeltaTable,
        name: &str,
        what: &str,
        column: impl Fn(&arrow_schema::Field) -> Option<Expr>,
    ) -> Result<DeltaTable, SinkError> {
        let df_err = |e: deltalake::datafusion::error::DataFusionError| SinkError::Table {
            table: table_id(name),
            message: format!("{what}: {e}"),
        };
        let schema = table
            .snapshot()
            .map_err(|e| delta_err(name, "snapshot", e))?
            .snapshot()
            .arrow_schema();
        let exprs: Vec<Expr> = schema.fields().iter().filter_map(|f| column(f)).collect();
        // deltalake's session: its planner executes the write's own plan nodes
        let ctx = deltalake::delta_datafusion::create_session().into_inner();
        table
            .update_datafusion_session(&ctx.state())
            .map_err(|e| delta_err(name, what, e))?;
        let provider = table.table_provider().await.map_err(df_err)?;
        let plan = ctx
            .read_table(provider)
            .and_then(|df| df.select(exprs))
            .map_err(df_err)?
            .into_unoptimized_plan();
        let started = std::time::Instant::now();
        let table = table
            .write(Vec::<RecordBatch>::new())
            .with_input_plan(plan)
            .with_save_mode(SaveMode::Overwrite)
            .with_schema_mode(SchemaMode::Overwrite)
            .with_session_state(Arc::new(ctx.state()))
            .await
            .map_err(|e| delta_err(name, what, e))?;
        info!(table = %name, what, seconds = started.elapsed().as_secs_f64(), version = ?table.version(), "table rewritten");
        Ok(table)
    }

    /// DROP COLUMN: the table is rewritten without it. Idempotent: a column already gone is
    /// nothing to do.
    async fn drop_column(&self, t: DeltaTable, name: &str, column: &str) -> Result<(), SinkError> {
        let schema = t
            .snapshot()
            .map_err(|e| delta_err(name, "snapshot", e))?
            .snapshot()
            .arrow_schema();
        let Some(stored) = find_column(&schema, column) else {
            debug!(table = %name, column, "DROP COLUMN: not in the Delta table (already applied)");
            return Ok(());
        };
        self.rewrite(t, name, "drop column", |f| {
            (f.name() != &stored).then(|| Expr::Column(Column::new_unqualified(f.name())))
        })
        .await?;
        info!(table = %name, column = %stored, "column dropped (DROP COLUMN at the source)");
        Ok(())
    }

    /// RENAME COLUMN (or CHANGE COLUMN with a new name): the stored values move to the new name.
    /// Idempotent: when the old name is gone and the new one exists, it was applied.
    async fn rename_column(
        &self,
        t: DeltaTable,
        name: &str,
        from: &str,
        to: &str,
    ) -> Result<(), SinkError> {
        let schema = t
            .snapshot()
            .map_err(|e| delta_err(name, "snapshot", e))?
            .snapshot()
            .arrow_schema();
        let old = find_column(&schema, from);
        let new = schema.field_with_name(to).ok().map(|f| f.name().clone());
        let Some(old) = old else {
            debug!(table = %name, from, to, "RENAME COLUMN: old name not in the Delta table (already applied)");
            return Ok(());
        };
        if new.is_some() && !old.eq_ignore_ascii_case(to) {
            return Err(SinkError::Table {
                table: table_id(name),
                message: format!("RENAME COLUMN `{from}` TO `{to}`: the Delta table has both columns, so binlake cannot tell which values are current. The table is stopped; the others go on. To resume it, drop one of the two columns from the Delta table by hand (or rebuild the table)"),
            });
        }
        self.rewrite(t, name, "rename column", |f| {
            let c = Expr::Column(Column::new_unqualified(f.name()));
            Some(if f.name() == &old { c.alias(to) } else { c })
        })
        .await?;
        info!(table = %name, from = %old, to, "column renamed (RENAME COLUMN at the source)");
        Ok(())
    }

    /// Every row older than `version` becomes a tombstone (or, with hard deletes, is removed).
    /// Idempotent: a replay finds those rows already at `version`.
    pub(crate) async fn apply_ddl(
        &mut self,
        table: &TableId,
        kind: binlake_sink::DdlKind,
        version: u64,
    ) -> Result<(), SinkError> {
        use deltalake::datafusion::logical_expr::lit;
        use deltalake::datafusion::scalar::ScalarValue;
        if let binlake_sink::DdlKind::RenameTable { to } = &kind {
            return Err(binlake_sink::rename_table_unsupported("delta", table, to));
        }
        let name = table.to_string();
        let lock = self.locks.get(&name);
        let _held = lock.lock().await;
        let t = self.load(&table.db, &table.table).await?;
        if t.version().is_none() {
            return Ok(()); // nothing replicated yet
        }
        match &kind {
            binlake_sink::DdlKind::DropColumn(c) => return self.drop_column(t, &name, c).await,
            binlake_sink::DdlKind::RenameColumn { from, to } => {
                return self.rename_column(t, &name, from, to).await
            }
            binlake_sink::DdlKind::RenameTable { .. } => unreachable!("handled above"),
            binlake_sink::DdlKind::Truncate | binlake_sink::DdlKind::DropTable => {}
        }
        let older = col(Column::new_unqualified(COL_VERSION)).lt(lit(version as i64));
        if self.config.deletes == Deletes::Hard {
            t.delete()
                .with_predicate(older)
                .await
                .map_err(|e| delta_err(&name, "truncate", e))?;
        } else {
            let now = binlake_sink::store::now_us();
            t.update()
                .with_predicate(older.and(col(Column::new_unqualified(COL_DELETED)).not()))
                .with_update(Column::new_unqualified(COL_DELETED), lit(true))
                .with_update(Column::new_unqualified(COL_VERSION), lit(version as i64))
                .with_update(Column::new_unqualified(binlake_sink::COL_OP), lit("delete"))
                .with_update(
                    Column::new_unqualified(binlake_sink::COL_SYNCED_AT),
                    lit(ScalarValue::TimestampMicrosecond(
                        Some(now),
                        Some("UTC".into()),
                    )),
                )
                .await
                .map_err(|e| delta_err(&name, "truncate", e))?;
        }
        info!(table = %name, ?kind, version, "table emptied in Delta");
        Ok(())
    }
}

/// The stored column a DDL statement names: exact, else the one that matches ignoring case
/// (MariaDB column names are case-insensitive).
fn find_column(schema: &arrow_schema::Schema, name: &str) -> Option<String> {
    let fields = schema.fields();
    fields
        .iter()
        .find(|f| f.name() == name)
        .or_else(|| fields.iter().find(|f| f.name().eq_ignore_ascii_case(name)))
        .map(|f| f.name().clone())
}
