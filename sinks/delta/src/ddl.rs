//! Source DDL and schema evolution in Delta tables: a batch's new shape (added columns, widened
//! types, and the new shape of a table being read again) before its MERGE; TRUNCATE and DROP TABLE (every older row becomes a
//! tombstone, or is deleted with `deletes = "hard"`; a finished re-snapshot does the same for the
//! rows below its start), DROP COLUMN and RENAME COLUMN (the table
//! rewritten in one commit).
//!
//! A keyed table's re-snapshot ([`TableBatch::generation`]) fills a shadow Delta table in the
//! table's directory (`_binlake_g<generation>/`, its own log and files; delta-rs's vacuum skips
//! `_` directories, so it is never vacuumed while being filled), stream changes included. Its last
//! batch swaps it in with one commit of the table: Remove of every file, Add of every shadow file
//! (paths under the shadow's directory), the shadow's schema, and a `txn` whose version is the
//! generation, which a batch repeated after a crash finds (it then writes to the table). The
//! shadow's log is deleted after the swap; maintenance deletes the shadow files the table stops
//! using. DDL statements apply to a shadow being filled too.
//!
//! A table with the column `_binlake_origin` is shared by several pipelines (`origin_in_key`):
//! TRUNCATE, DROP TABLE, the end of a re-snapshot and a keyless table's read touch only the rows
//! of this pipeline's origin (a predicate on the column), and DROP / RENAME COLUMN, which would
//! change every origin's rows, stop the table instead.
//!
//! Invariants: each statement is one Delta commit per table, taken under the table's lock (no
//! MERGE of the same table interleaves); replaying it after a crash changes nothing (rows are
//! already at `version`, the column already gone or renamed); RENAME TABLE is refused (the table
//! stops) rather than leaving a partial replica under the new name.

use std::collections::HashMap;
use std::ops::Not;
use std::sync::Arc;

use arrow_array::RecordBatch;
use binlake_sink::{SinkError, TableBatch, TableId, COL_DELETED, COL_VERSION};
use deltalake::datafusion::common::Column;
use deltalake::datafusion::logical_expr::{col, Expr};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::Transaction;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use deltalake::DeltaTable;
use tracing::{debug, info};

use crate::config::Deletes;

/// The column of a table shared by several pipelines (`origin_in_key`): each row's pipeline.
pub(crate) const ORIGIN: &str = "_binlake_origin";
use crate::sink::{delta_err, frame, narrower_than_table, table_id, widens, DeltaSink};
use crate::types::to_delta;

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
        let schema = schema_of(&table, name)?;
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

    /// A keyless table's whole content (its read): one overwrite commit holds the batch's rows
    /// and, with `purge_below`, the rows the table holds at or above it (the stream's changes
    /// after the read). Readers see the old content or the new; a read repeated after a crash
    /// before its checkpoint replaces this one the same way.
    pub(crate) async fn replace_content(
        &self,
        tb: &TableBatch,
        table: DeltaTable,
        app_id: &str,
        applied: Option<i64>,
    ) -> Result<(), SinkError> {
        let name = tb.table.to_string();
        let batch = to_delta(&tb.batch).map_err(|e| SinkError::Table {
            table: tb.table.clone(),
            message: format!("converting to Delta types: {e}"),
        })?;
        let mut batches = Vec::new();
        if let (Some(below), Some(_)) = (tb.purge_below, table.version()) {
            let kept = self.rows_from(&table, &name, below).await?;
            let schema = batch.schema();
            for k in kept.iter().filter(|k| k.num_rows() > 0) {
                batches.push(conform(k, &schema).map_err(|e| SinkError::Table {
                    table: tb.table.clone(),
                    message: format!("keeping the rows after a keyless read: {e}"),
                })?);
            }
        }
        let kept: usize = batches.iter().map(RecordBatch::num_rows).sum();
        batches.insert(0, batch);
        let version = (tb.stream_max_version as i64).max(applied.unwrap_or(0));
        let own = table.version().and_then(|_| self.own_origin(&table));
        let parts = match table.version() {
            None => self.partitions_for(&tb.table, &batches[0].schema())?,
            Some(_) => Vec::new(),
        };
        let mut write = table.write(batches).with_save_mode(SaveMode::Overwrite);
        if !parts.is_empty() {
            write = write.with_partition_columns(parts);
        }
        // a shared table: only this origin's rows are replaced
        let write = match own {
            Some(own) => write.with_replace_where(own),
            None => write.with_schema_mode(SchemaMode::Overwrite),
        };
        write
            .with_description(crate::sink::description(tb))
            .with_commit_properties(
                CommitProperties::default()
                    .with_application_transaction(Transaction::new(app_id, version)),
            )
            .await
            .map_err(|e| delta_err(&name, "overwrite", e))?;
        info!(table = %name, rows = tb.batch.num_rows(), kept, "keyless table content replaced");
        Ok(())
    }

    /// The table's rows at or above `version` (of this pipeline's origin, in a shared table).
    async fn rows_from(
        &self,
        table: &DeltaTable,
        name: &str,
        version: u64,
    ) -> Result<Vec<RecordBatch>, SinkError> {
        use deltalake::datafusion::logical_expr::lit;
        let df_err = |e: deltalake::datafusion::error::DataFusionError| SinkError::Table {
            table: table_id(name),
            message: format!("reading the rows after a keyless read: {e}"),
        };
        let mut at = col(Column::new_unqualified(COL_VERSION)).gt_eq(lit(version as i64));
        if let Some(own) = self.own_origin(table) {
            at = at.and(own);
        }
        frame(table, name, "reading", df_err)
            .await?
            .filter(at)
            .map_err(df_err)?
            .collect()
            .await
            .map_err(df_err)
    }

    /// In a table shared by several pipelines (it has `_binlake_origin`): the predicate that
    /// selects this pipeline's rows.
    pub(crate) fn own_origin(&self, table: &DeltaTable) -> Option<Expr> {
        use deltalake::datafusion::logical_expr::lit;
        let schema = table.snapshot().ok()?.schema();
        schema.field(ORIGIN)?;
        Some(col(Column::new_unqualified(ORIGIN)).eq(lit(self.config.pipeline.clone())))
    }

    /// Writes a batch of re-snapshot `g` to its shadow (or to the table, once swapped in), and
    /// swaps the shadow in after the generation's last batch.
    pub(crate) async fn write_generation(
        &self,
        tb: &TableBatch,
        g: i64,
        token: i64,
    ) -> Result<(), SinkError> {
        let live = &tb.table;
        let name = live.to_string();
        let table = self.load(&live.db, &live.table).await?;
        let swapped = Self::applied(&table, &self.generation_app_id(live), &name)
            .await?
            .is_some_and(|v| v >= g);
        if swapped {
            // repeated after a crash that came between the swap and the shadow log's deletion
            self.drop_shadow_log(&table, g).await?;
        }
        let into = TableBatch {
            table: if swapped {
                live.clone()
            } else {
                shadow_id(live, g)
            },
            // the shadow takes the rows' shape as it is; it holds only this generation's rows
            reshape: true,
            purge_below: None,
            generation: None,
            ..tb.clone()
        };
        if into.batch.num_rows() > 0 || into.replace {
            self.apply(&into, token).await?;
        } else {
            self.ensure_exists(&into).await?;
        }
        if tb.purge_below.is_some() && !swapped {
            self.swap_in(tb, g).await?;
        }
        Ok(())
    }

    /// The re-snapshots of `table` whose shadow is being filled (it still has its own log).
    async fn shadows_in_progress(&self, table: &TableId) -> Result<Vec<i64>, SinkError> {
        use futures::TryStreamExt;
        let t = self.load(&table.db, &table.table).await?;
        let store = t.log_store().object_store(None);
        let dirs = store
            .list_with_delimiter(None)
            .await
            .map_err(binlake_sink::store::classify)?;
        let mut out = Vec::new();
        for dir in dirs.common_prefixes {
            let Some(g) = dir
                .as_ref()
                .strip_prefix(SHADOW_PREFIX)
                .and_then(|g| g.parse::<i64>().ok())
            else {
                continue;
            };
            let log = object_store::path::Path::from(format!("{}/_delta_log", dir.as_ref()));
            let first: Option<object_store::ObjectMeta> = store
                .list(Some(&log))
                .try_next()
                .await
                .map_err(binlake_sink::store::classify)?;
            if first.is_some() {
                out.push(g);
            }
        }
        Ok(out)
    }

    /// The `txn` app id whose version is the last generation swapped into `table`.
    fn generation_app_id(&self, table: &TableId) -> String {
        self.app_id(&format!("{table}#generation"))
    }

    /// One commit of the table: every file it holds removed, every file of shadow `g` added
    /// (its schema, and its protocol when that is newer), the generation marked in a `txn`.
    async fn swap_in(&self, tb: &TableBatch, g: i64) -> Result<(), SinkError> {
        use deltalake::kernel::transaction::CommitBuilder;
        use deltalake::kernel::{Action, MetadataExt};
        use deltalake::protocol::DeltaOperation;
        let live = &tb.table;
        let name = live.to_string();
        let shadow_id = shadow_id(live, g);
        if self.load(&live.db, &live.table).await?.version().is_none() {
            // a name the target did not hold: created empty, then swapped like any
            let empty = TableBatch {
                batch: RecordBatch::new_empty(tb.batch.schema()),
                generation: None,
                purge_below: None,
                ..tb.clone()
            };
            self.ensure_exists(&empty).await?;
        }
        let lock = self.locks.get(&name);
        let _held = lock.lock().await;
        let table = self.load(&live.db, &live.table).await?;
        let shadow = self.load(&shadow_id.db, &shadow_id.table).await?;
        let err = |e| delta_err(&name, "swapping a re-snapshot in", e);
        let (ls, ss) = (
            table.snapshot().map_err(err)?,
            shadow.snapshot().map_err(err)?,
        );
        let dir = shadow_dir(g);
        let mut actions = Vec::new();
        // the shadow's protocol when it needs more (a new column type); never a downgrade
        let (sp, lp) = (ss.protocol(), ls.protocol());
        if sp != lp
            && sp.min_reader_version() >= lp.min_reader_version()
            && sp.min_writer_version() >= lp.min_writer_version()
        {
            actions.push(Action::Protocol(sp.clone()));
        }
        let metadata = ls
            .metadata()
            .clone()
            .with_schema(&ss.schema())
            .map_err(|e| SinkError::Definite(format!("{name}: the re-snapshot's schema: {e}")))?;
        actions.push(Action::Metadata(metadata));
        actions.extend(
            ls.log_data()
                .iter()
                .map(|f| Action::Remove(f.remove_action(true))),
        );
        // (`add_action` is deprecated in favour of Arrow arrays; an Add is what a commit takes)
        #[allow(deprecated)]
        actions.extend(ss.log_data().iter().map(|f| {
            let mut add = f.add_action();
            add.path = format!("{dir}/{}", add.path);
            Action::Add(add)
        }));
        let live_app = self.app_id(&name);
        let shadow_app = self.app_id(&shadow_id.to_string());
        let version = Self::applied(&table, &live_app, &name)
            .await?
            .max(Self::applied(&shadow, &shadow_app, &name).await?)
            .unwrap_or(0);
        let props = CommitProperties::default()
            .with_application_transaction(Transaction::new(self.generation_app_id(live), g))
            .with_application_transaction(Transaction::new(&live_app, version));
        let files = ss.log_data().num_files();
        CommitBuilder::from(props)
            .with_actions(actions)
            .build(
                Some(ls),
                table.log_store(),
                DeltaOperation::Write {
                    mode: SaveMode::Overwrite,
                    partition_by: None,
                    predicate: None,
                },
            )
            .await
            .map_err(err)?;
        info!(table = %name, generation = g, files, "re-snapshot swapped in (one Delta commit)");
        self.drop_shadow_log(&table, g).await
    }

    /// Deletes shadow `g`'s own log once its files are the table's: without it the directory
    /// is no longer a table, and maintenance may delete the files the table stops using.
    async fn drop_shadow_log(&self, table: &DeltaTable, g: i64) -> Result<(), SinkError> {
        use futures::TryStreamExt;
        use object_store::ObjectStoreExt;
        let store = table.log_store().object_store(None);
        let log = object_store::path::Path::from(format!("{}/_delta_log", shadow_dir(g)));
        let files: Vec<object_store::ObjectMeta> = store
            .list(Some(&log))
            .try_collect()
            .await
            .map_err(binlake_sink::store::classify)?;
        for f in files {
            store
                .delete(&f.location)
                .await
                .map_err(binlake_sink::store::classify)?;
        }
        Ok(())
    }

    /// Rows that are not tombstones.
    pub(crate) async fn live_rows(
        &self,
        table: &DeltaTable,
        name: &str,
    ) -> Result<usize, SinkError> {
        let df_err = |e: deltalake::datafusion::error::DataFusionError| SinkError::Table {
            table: table_id(name),
            message: format!("counting live rows: {e}"),
        };
        frame(table, name, "counting live rows", df_err)
            .await?
            .filter(col(Column::new_unqualified(COL_DELETED)).not())
            .map_err(df_err)?
            .count()
            .await
            .map_err(df_err)
    }

    /// DROP COLUMN: the table is rewritten without it. Idempotent: a column already gone is
    /// nothing to do.
    async fn drop_column(&self, t: DeltaTable, name: &str, column: &str) -> Result<(), SinkError> {
        let schema = schema_of(&t, name)?;
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
        let schema = schema_of(&t, name)?;
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

    /// Brings the table's schema to the batch's before a MERGE: replayed rows from before a
    /// widening are cast up, a widening MODIFY COLUMN rewrites the stored values exactly into the
    /// new type, changed source-type metadata is updated, and anything else that is not an
    /// allowed evolution stops the table.
    pub(crate) async fn evolve_schema(
        &self,
        tb: &TableBatch,
        table: DeltaTable,
        batch: RecordBatch,
    ) -> Result<(DeltaTable, RecordBatch), SinkError> {
        let name = tb.table.to_string();
        let mut table = table;
        let mut existing = schema_of(&table, &name)?;
        // Rows from before a widening, replayed after a crash: cast up to the table's type
        // (exact, by the same rule).
        let batch = match narrower_than_table(&batch, &existing) {
            Some(b) => b.map_err(|e| SinkError::Table {
                table: tb.table.clone(),
                message: format!("casting replayed rows to the widened type: {e}"),
            })?,
            None => batch,
        };
        // A table being read again (re-snapshot), or one that holds no live rows (dropped and
        // created again at the source), takes the new shape as it is: columns that no longer
        // arrive are dropped, a type that is not a widening is replaced (NULL until re-read).
        let incoming = batch.schema();
        let gone = |f: &arrow_schema::Field| {
            !f.name().starts_with("_binlake_") && incoming.field_with_name(f.name()).is_err()
        };
        let retyped = |f: &arrow_schema::Field| {
            incoming.field_with_name(f.name()).ok().filter(|n| {
                !same_kind(f.data_type(), n.data_type()) && !widens(f.data_type(), n.data_type())
            })
        };
        let conflict = existing
            .fields()
            .iter()
            .any(|f| gone(f) || retyped(f).is_some());
        if conflict && (tb.reshape || self.live_rows(&table, &name).await? == 0) {
            info!(table = %name, "the table takes the source's new shape (re-read, or emptied)");
            table = self
                .rewrite(table, &name, "take the new shape", |f| {
                    let c = Expr::Column(Column::new_unqualified(f.name()));
                    if gone(f) {
                        return None;
                    }
                    Some(match retyped(f) {
                        Some(n) => {
                            let null =
                                deltalake::datafusion::scalar::ScalarValue::try_from(n.data_type())
                                    .ok()?;
                            deltalake::datafusion::logical_expr::lit(null).alias(f.name())
                        }
                        None => c,
                    })
                })
                .await?;
            existing = schema_of(&table, &name)?;
        }
        // A widening MODIFY COLUMN (INT to BIGINT, DECIMAL(10,2) to DECIMAL(20,4), ...): the
        // stored values are rewritten exactly into the new type first, in a commit of their own
        // (a replay finds the table already widened).
        let widen: Vec<(String, arrow_schema::DataType)> = batch
            .schema()
            .fields()
            .iter()
            .filter_map(|f| {
                let old = existing.field_with_name(f.name()).ok()?;
                (!same_kind(old.data_type(), f.data_type())
                    && widens(old.data_type(), f.data_type()))
                .then(|| (f.name().clone(), f.data_type().clone()))
            })
            .collect();
        if !widen.is_empty() {
            info!(table = %name, columns = ?widen, "widening columns (MODIFY COLUMN at the source): rewriting the table");
            table = self
                .rewrite(table, &name, "widen columns", |f| {
                    let c = Expr::Column(Column::new_unqualified(f.name()));
                    Some(match widen.iter().find(|(n, _)| n == f.name()) {
                        Some((n, t)) => {
                            deltalake::datafusion::logical_expr::cast(c, t.clone()).alias(n)
                        }
                        None => c,
                    })
                })
                .await?;
            existing = schema_of(&table, &name)?;
        }
        // The source type in the column metadata changes with a MODIFY (VARCHAR(10) to
        // VARCHAR(200) keeps the Delta type): a metadata-only commit keeps it true, and MERGE,
        // which refuses to merge differing metadata, goes on.
        for f in batch.schema().fields() {
            let Ok(old) = existing.field_with_name(f.name()) else {
                continue;
            };
            if old.metadata() == f.metadata() || !same_kind(old.data_type(), f.data_type()) {
                continue;
            }
            let update: HashMap<String, deltalake::kernel::MetadataValue> = f
                .metadata()
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        deltalake::kernel::MetadataValue::String(v.clone()),
                    )
                })
                .collect();
            table = table
                .update_field_metadata()
                .with_field_name(f.name())
                .with_metadata(update)
                .await
                .map_err(|e| delta_err(&name, "update column metadata", e))?;
            debug!(table = %name, column = %f.name(), "column metadata updated");
        }
        check_evolution(tb, &existing, &batch.schema())?;
        Ok((table, batch))
    }

    /// TRUNCATE and DROP TABLE empty the table ([`DeltaSink::purge`]); DROP and RENAME
    /// COLUMN rewrite it.
    pub(crate) async fn apply_ddl(
        &mut self,
        table: &TableId,
        kind: binlake_sink::DdlKind,
        version: u64,
    ) -> Result<(), SinkError> {
        use binlake_sink::DdlKind;
        let name = table.to_string();
        if let DdlKind::RenameTable { to } = &kind {
            return Err(binlake_sink::rename_table_unsupported("delta", table, to));
        }
        // a re-snapshot's shadow being filled follows the table
        if !table.table.contains('/') {
            for g in self.shadows_in_progress(table).await? {
                Box::pin(self.apply_ddl(&shadow_id(table, g), kind.clone(), version)).await?;
            }
        }
        match &kind {
            DdlKind::RenameTable { .. } => unreachable!("handled above"),
            DdlKind::Truncate | DdlKind::DropTable => {
                self.purge(table, version).await?;
                info!(table = %name, ?kind, version, "table emptied in Delta");
                return Ok(());
            }
            DdlKind::DropColumn(_) | DdlKind::RenameColumn { .. } => {}
        }
        let lock = self.locks.get(&name);
        let _held = lock.lock().await;
        let t = self.load(&table.db, &table.table).await?;
        if t.version().is_none() {
            return Ok(()); // nothing replicated yet
        }
        if self.own_origin(&t).is_some() {
            return Err(SinkError::Table {
                table: table.clone(),
                message: format!("{kind:?} at the source of pipeline `{}`: the table is shared by several pipelines (origin_in_key), and the statement would change every origin's rows. This origin's table is stopped; make the same change on every source, then rebuild the table", self.config.pipeline),
            });
        }
        match &kind {
            DdlKind::DropColumn(c) => self.drop_column(t, &name, c).await,
            DdlKind::RenameColumn { from, to } => self.rename_column(t, &name, from, to).await,
            _ => unreachable!("handled above"),
        }
    }

    /// Every row older than `version` becomes a tombstone at `version` (or, with hard deletes
    /// or in a keyless table, is removed), in one Delta commit: a TRUNCATE, or the end of a re-snapshot (the keys it
    /// did not read again are gone at the source). Idempotent: a replay finds those rows
    /// already at `version`.
    pub(crate) async fn purge(&self, table: &TableId, version: u64) -> Result<(), SinkError> {
        use deltalake::datafusion::logical_expr::lit;
        use deltalake::datafusion::scalar::ScalarValue;
        let name = table.to_string();
        let lock = self.locks.get(&name);
        let _held = lock.lock().await;
        let t = self.load(&table.db, &table.table).await?;
        if t.version().is_none() {
            return Ok(()); // nothing replicated yet
        }
        let mut older = col(Column::new_unqualified(COL_VERSION)).lt(lit(version as i64));
        // a shared table: this origin's rows only (their versions are this pipeline's)
        if let Some(own) = self.own_origin(&t) {
            older = older.and(own);
        }
        // a keyless changelog counts its rows: the older ones go (see `sink::description`)
        let keyless = t
            .snapshot()
            .map_err(|e| delta_err(&name, "purge", e))?
            .metadata()
            .description()
            .is_some_and(|d| d.contains(crate::sink::KEYLESS));
        if self.config.deletes == Deletes::Hard || keyless {
            t.delete()
                .with_predicate(older)
                .await
                .map_err(|e| delta_err(&name, "purge", e))?;
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
                .map_err(|e| delta_err(&name, "purge", e))?;
        }
        debug!(table = %name, version, "rows below the version removed");
        Ok(())
    }
}

/// Same kind of Arrow type as far as Delta is concerned (readers may hand strings back as views).
pub(crate) fn same_kind(a: &arrow_schema::DataType, b: &arrow_schema::DataType) -> bool {
    use arrow_schema::DataType as D;
    let norm = |t: &D| match t {
        D::Utf8 | D::LargeUtf8 | D::Utf8View => D::Utf8,
        D::Binary | D::LargeBinary | D::BinaryView => D::Binary,
        D::Timestamp(u, Some(_)) => D::Timestamp(*u, Some("UTC".into())),
        other => other.clone(),
    };
    norm(a) == norm(b)
}

/// What is left after the DDL statements and widenings were applied: added columns (MERGE adds
/// them). A column that stopped arriving without a DROP or RENAME statement binlake understood,
/// or a type change that is not a widening, stops this table with an error saying so, rather
/// than leaving stale or misplaced values.
fn check_evolution(
    tb: &TableBatch,
    existing: &arrow_schema::Schema,
    incoming: &arrow_schema::Schema,
) -> Result<(), SinkError> {
    // read again in the new shape (see SinkError::Reread), unless this already is that read
    let stop = |message: String| {
        Err(if tb.reshape {
            SinkError::Table {
                table: tb.table.clone(),
                message,
            }
        } else {
            SinkError::Reread {
                table: tb.table.clone(),
                message,
            }
        })
    };
    let gone: Vec<&str> = existing
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|n| !n.starts_with("_binlake_") && incoming.field_with_name(n).is_err())
        .collect();
    if !gone.is_empty() {
        return stop(format!(
            "column(s) {gone:?} no longer arrive from the source (now {:?}), and no DROP or RENAME COLUMN statement in the binlog said what became of them, so binlake cannot tell a rename from a drop. The table is stopped; the others go on. To resume it, apply the change to the Delta table by hand (drop or rename the column) and restart, or rebuild the table",
            incoming.fields().iter().map(|f| f.name().as_str()).filter(|n| !n.starts_with("_binlake_")).collect::<Vec<_>>()
        ));
    }
    for f in incoming.fields() {
        if let Ok(old) = existing.field_with_name(f.name()) {
            if !same_kind(old.data_type(), f.data_type()) {
                return stop(format!(
                    "column `{}` changed type from {} to {} (MODIFY COLUMN), which is not a widening every stored value survives exactly. The table is stopped; the others go on. To resume it, rebuild the Delta table (or convert the column by hand and restart)",
                    f.name(),
                    old.data_type(),
                    f.data_type()
                ));
            }
        }
    }
    Ok(())
}

/// The Arrow schema of the table's current version.
fn schema_of(table: &DeltaTable, name: &str) -> Result<arrow_schema::SchemaRef, SinkError> {
    Ok(table
        .snapshot()
        .map_err(|e| delta_err(name, "snapshot", e))?
        .snapshot()
        .arrow_schema())
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

/// `batch` in `schema`'s columns, by name: cast where the stored type differs (a reader may hand
/// strings back as views), NULL where the stored rows lack a column.
fn conform(
    batch: &RecordBatch,
    schema: &arrow_schema::SchemaRef,
) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => arrow_cast::cast(c, f.data_type()),
            None => Ok(arrow_array::new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}

/// The directory of re-snapshot `g`'s shadow table, inside the table's own (its files become the
/// table's at the swap; delta-rs's vacuum leaves `_`-prefixed directories alone, so a shadow
/// being filled is never vacuumed).
fn shadow_dir(g: i64) -> String {
    format!("{SHADOW_PREFIX}{g}")
}

/// The start of a shadow directory's name.
pub(crate) const SHADOW_PREFIX: &str = "_binlake_g";

/// The shadow table of re-snapshot `g` of `table`.
fn shadow_id(table: &TableId, g: i64) -> TableId {
    TableId::new(&table.db, format!("{}/{}", table.table, shadow_dir(g)))
}
