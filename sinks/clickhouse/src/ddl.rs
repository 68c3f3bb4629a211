//! Source DDL applied to ClickHouse tables: TRUNCATE and DROP TABLE (`TRUNCATE TABLE`: the
//! pipeline has committed everything before the statement, so exactly the older rows go), DROP
//! COLUMN and RENAME COLUMN (`ALTER TABLE`, then the `_current` view is rebuilt).
//!
//! A keyless table's content is replaced (its whole read: at startup, after a RENAME into the
//! name, a lost position or a backfill) in a shadow table swapped in with `EXCHANGE TABLES`,
//! atomic in ClickHouse's Atomic databases (the default): readers see the old content or the
//! new, never a mix or an empty table.
//!
//! A keyed table's re-snapshot ([`TableBatch::generation`]) is written to a shadow table
//! `<table>__binlake_g<generation>` (created with the comment `binlake generation <g>`, no
//! `_current` view), stream changes included, and swapped in with `EXCHANGE TABLES` (or renamed,
//! when the table does not exist) after its last batch; readers of the table and its view see
//! the old content until then and the new content after. The swapped-in table keeps the comment,
//! so a batch of that generation repeated after a crash (between the swap and the checkpoint)
//! finds the swap done and writes to the table. DDL statements apply to the shadows too.
//!
//! A table with the column `_binlake_origin` is shared by several pipelines (`origin_in_key`):
//! TRUNCATE, DROP TABLE, a re-snapshot's end and a keyless read remove or replace only the rows
//! of this pipeline's origin; DROP / RENAME COLUMN and a re-creation in a new shape, which would
//! change every origin's rows, stop the table instead.
//!
//! Invariants: every statement is idempotent (`IF EXISTS`, and a column already gone or renamed
//! is a no-op), so a replay after a crash changes nothing; a table whose columns cannot be read
//! is retried, never assumed absent; RENAME TABLE stops the table instead of a partial replica.

use binlake_sink::{DdlKind, SinkError, TableBatch, TableId, COL_VERSION};
use tracing::info;

use crate::sink::{classify, ident, lit, ClickHouseSink};

/// The column of a table shared by several pipelines (`origin_in_key`): each row's pipeline.
pub(crate) const ORIGIN: &str = "_binlake_origin";

impl ClickHouseSink {
    /// True when the table is shared by several pipelines (it has `_binlake_origin`, see
    /// `origin_in_key`): what one pipeline removes or replaces is its own origin's rows only.
    pub(crate) async fn shared(&self, t: &TableId) -> Result<bool, SinkError> {
        Ok(self
            .server_columns(t)
            .await?
            .iter()
            .any(|(n, _)| n == ORIGIN))
    }

    /// The predicate of this pipeline's rows in a shared table.
    pub(crate) fn own_origin(&self) -> String {
        format!("{} = {}", ident(ORIGIN), lit(&self.config.pipeline))
    }

    /// Removes every row below `version` (a finished re-snapshot: the keys it did not read again
    /// are gone at the source; newer versions of the keys it read stay). A mutation, waited for,
    /// so the checkpoint after it is written only once it is done; idempotent.
    pub(crate) async fn purge(
        &self,
        t: &TableId,
        full: &str,
        version: u64,
    ) -> Result<(), SinkError> {
        // a shared table: this origin's rows only (their versions are this pipeline's)
        let own = match self.shared(t).await? {
            true => format!(" AND {}", self.own_origin()),
            false => String::new(),
        };
        self.client
            .query(&format!(
                "ALTER TABLE {full} DELETE WHERE {} < {version}{own}",
                ident(COL_VERSION)
            ))
            .with_setting("mutations_sync", "1")
            .execute()
            .await
            .map_err(|e| classify(e, "removing rows below a re-snapshot", Some(t)))?;
        info!(table = %t, below = version, "rows below the re-snapshot removed");
        Ok(())
    }

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
        // kept: the stream's changes after the read, and in a shared table the other
        // origins' rows
        let mut keep: Vec<String> = Vec::new();
        if let Some(below) = tb.purge_below {
            keep.push(format!("{} >= {below}", ident(COL_VERSION)));
        }
        if self.shared(&tb.table).await? {
            keep.push(format!("NOT ({})", self.own_origin()));
        }
        if !keep.is_empty() {
            self.exec(&format!(
                "INSERT INTO {shadow} SELECT * FROM {name} WHERE {}",
                keep.join(" OR ")
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

    /// Writes a batch of re-snapshot `g` to its shadow (or to the table, once swapped in), and
    /// swaps the shadow in after the generation's last batch.
    pub(crate) async fn write_generation(
        &mut self,
        tb: &TableBatch,
        g: i64,
    ) -> Result<(), SinkError> {
        let live = &tb.table;
        let shadow = TableId::new(&live.db, shadow_name(&live.table, g));
        let swapped = self.generation_of(live).await? == Some(g);
        if swapped {
            // repeated after a crash that came between the swap and the checkpoint: the old
            // content may still be under the shadow's name
            self.exec(&format!(
                "DROP TABLE IF EXISTS {}",
                self.table_name(&shadow)
            ))
            .await
            .map_err(|e| classify(e, "dropping a shadow table", Some(live)))?;
        }
        let into = TableBatch {
            table: if swapped {
                live.clone()
            } else {
                shadow.clone()
            },
            // the shadow takes the rows' shape as it is; it holds only this generation's rows
            reshape: true,
            purge_below: None,
            generation: None,
            ..tb.clone()
        };
        if let Err(e) = self.ensure_table(&into).await {
            self.tables.remove(&into.table.to_string());
            return Err(e);
        }
        if into.batch.num_rows() > 0 {
            let name = self.table_name(&into.table);
            self.insert(&into.table, &name, &into.batch).await?;
        }
        if tb.purge_below.is_some() && !swapped {
            self.swap_in(live, &shadow, g).await?;
        }
        Ok(())
    }

    /// Swaps shadow `g` in as `live` (atomic with `EXCHANGE TABLES`), drops the old content and
    /// any other generation's shadow, and makes the `_current` view again.
    async fn swap_in(&mut self, live: &TableId, shadow: &TableId, g: i64) -> Result<(), SinkError> {
        let (l, s) = (self.table_name(live), self.table_name(shadow));
        let step = |what: &'static str| move |e| classify(e, what, Some(live));
        if self.server_columns(live).await?.is_empty() {
            self.exec(&format!("RENAME TABLE {s} TO {l}"))
                .await
                .map_err(step("renaming a re-snapshot's table into place"))?;
        } else {
            self.exec(&format!("EXCHANGE TABLES {l} AND {s}"))
                .await
                .map_err(step("swapping a re-snapshot's table in"))?;
        }
        self.tables.remove(&live.to_string());
        self.tables.remove(&shadow.to_string());
        for old in self.shadows(live).await? {
            self.exec(&format!("DROP TABLE IF EXISTS {}", self.table_name(&old)))
                .await
                .map_err(step("dropping a shadow table"))?;
        }
        self.replace_view(live, true).await?;
        info!(table = %live, generation = g, "re-snapshot swapped in (EXCHANGE TABLES)");
        Ok(())
    }

    /// The generation the table was swapped in by (its comment), if any.
    async fn generation_of(&self, t: &TableId) -> Result<Option<i64>, SinkError> {
        let rows = self
            .rows(&format!(
                "SELECT comment FROM system.tables WHERE database = {} AND name = {}",
                lit(&self.config.database(&t.db)),
                lit(&t.table)
            ))
            .await
            .map_err(|e| classify(e, "reading the table's comment", Some(t)))?;
        Ok(rows.first().and_then(|r| {
            r.get("comment")?
                .as_str()?
                .strip_prefix(GENERATION_COMMENT)?
                .parse()
                .ok()
        }))
    }

    /// The shadow tables of `t` that exist.
    async fn shadows(&self, t: &TableId) -> Result<Vec<TableId>, SinkError> {
        let rows = self
            .rows(&format!(
                "SELECT name FROM system.tables WHERE database = {} AND startsWith(name, {})",
                lit(&self.config.database(&t.db)),
                lit(&format!("{}{SHADOW_INFIX}", t.table))
            ))
            .await
            .map_err(|e| classify(e, "listing shadow tables", Some(t)))?;
        Ok(rows
            .iter()
            .filter_map(|r| r.get("name")?.as_str())
            .filter(|n| shadow_generation(n).is_some())
            .map(|n| TableId::new(&t.db, n))
            .collect())
    }

    pub(crate) async fn apply_ddl(
        &mut self,
        table: &TableId,
        kind: DdlKind,
        version: u64,
    ) -> Result<(), SinkError> {
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
        // a re-snapshot's shadow follows the table
        if shadow_generation(&table.table).is_none() {
            for shadow in self.shadows(table).await? {
                if kind == DdlKind::DropTable {
                    self.exec(&format!(
                        "DROP TABLE IF EXISTS {}",
                        self.table_name(&shadow)
                    ))
                    .await
                    .map_err(|e| classify(e, "dropping a shadow table", Some(table)))?;
                } else {
                    Box::pin(self.apply_ddl(&shadow, kind.clone(), version)).await?;
                }
            }
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
        if columns.iter().any(|(n, _)| n == ORIGIN) {
            // shared by several pipelines (origin_in_key): this origin's rows only
            if !matches!(kind, DdlKind::Truncate | DdlKind::DropTable) {
                return Err(SinkError::Table {
                    table: table.clone(),
                    message: format!("{kind:?} at the source of pipeline `{}`: the table is shared by several pipelines (origin_in_key), and the statement would change every origin's rows. This origin's table is stopped; make the same change on every source, then rebuild the table", self.config.pipeline),
                });
            }
            self.client
                .query(&format!(
                    "ALTER TABLE {full} DELETE WHERE {}",
                    self.own_origin()
                ))
                .with_setting("mutations_sync", "1")
                .execute()
                .await
                .map_err(|e| classify(e, "applying DDL", Some(table)))?;
            info!(table = %name, ?kind, origin = %self.config.pipeline, "this origin's rows removed in ClickHouse");
            return Ok(());
        }
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

/// What separates a table's name from its generation in a shadow's name.
const SHADOW_INFIX: &str = "__binlake_g";
/// The comment of a generation's table: this, then the generation.
pub(crate) const GENERATION_COMMENT: &str = "binlake generation ";

/// The shadow of `table` for generation `g`.
fn shadow_name(table: &str, g: i64) -> String {
    format!("{table}{SHADOW_INFIX}{g}")
}

/// The table a shadow stands in for (`name` itself when it is not a shadow).
pub(crate) fn base_name(name: &str) -> &str {
    match name.rsplit_once(SHADOW_INFIX) {
        Some((base, _)) if shadow_generation(name).is_some() => base,
        _ => name,
    }
}

/// The generation of a shadow table's name (None: not a shadow).
pub(crate) fn shadow_generation(name: &str) -> Option<i64> {
    let (_, g) = name.rsplit_once(SHADOW_INFIX)?;
    g.parse().ok().filter(|_| !g.starts_with('+'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_names_read_back() {
        let n = shadow_name("orders", 1_765_000_000_123_456);
        assert_eq!(n, "orders__binlake_g1765000000123456");
        assert_eq!(shadow_generation(&n), Some(1_765_000_000_123_456));
        assert_eq!(shadow_generation("orders"), None);
        assert_eq!(shadow_generation("orders__binlake_replace"), None);
        assert_eq!(shadow_generation("a__binlake_gx"), None);
    }
}
