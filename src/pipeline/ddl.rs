//! What the pipeline does for the DDL statements of a transaction, in statement order: sink
//! actions (TRUNCATE, DROP TABLE, DROP/RENAME COLUMN) applied at their place in the stream, and
//! tables read again (re-snapshot) where no row event shows what changed.
//!
//! Invariants:
//! - Only tables the filter selects are touched; online schema change tools' shadow tables are
//!   not selected (see [`crate::filter`]), so a migration is seen as its cut-over RENAME.
//! - RENAME TABLE is taken per statement, as one swap: a selected name that is renamed away and
//!   not renamed into is dropped (the source no longer has it); a selected name that is renamed
//!   into is read again, its new shape taken and the rows the new table lacks removed at the
//!   end. So `RENAME TABLE t TO _t_old, _t_new TO t` (pt-online-schema-change, gh-ost) re-reads
//!   `t` and never shows it empty.
//! - `ALTER TABLE ... ADD COLUMN` that gives existing rows a value (a default, NOT NULL) reads
//!   the table again: the binlog carries no row events for those values.
//! - `CREATE TABLE` of a selected name is remembered, in the checkpoint
//!   ([`DdlStep::Created`]): the table starts
//!   from its CREATE in the stream, and one that got no rows by the time the source is drained
//!   is read once, so that it exists in the target even while empty. `CREATE OR REPLACE` drops
//!   the old table first.
//! - `DROP DATABASE` drops every selected table of that database the pipeline knows of (the
//!   checkpoint's tables, snapshots and buffers).

use std::collections::{BTreeSet, HashSet};

use binlake_sink::{DdlKind, TableId};

use crate::filter::TableFilter;
use crate::source::Ddl;

/// One thing to do for a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum DdlStep {
    /// A sink action (after everything before the statement is committed).
    Apply(TableId, DdlKind),
    /// Read the table again from the source, replacing what the target holds (with the reason).
    Reread(TableId, &'static str),
    /// The table was created: it must exist in the target even if no rows follow.
    Created(TableId),
}

/// The steps for `ddl`, in statement order, for the tables `filter` selects; `known` are the
/// tables the pipeline knows of (what a DROP DATABASE drops).
pub(super) fn ddl_steps(
    ddl: &[Ddl],
    filter: &TableFilter,
    known: &BTreeSet<TableId>,
) -> Vec<DdlStep> {
    let selected = |t: &TableId| filter.matches(&t.db, &t.table);
    let mut out = Vec::new();
    for d in ddl {
        if let Some(db) = &d.dropped_db {
            out.extend(
                known
                    .iter()
                    .filter(|t| &t.db == db && selected(t))
                    .map(|t| DdlStep::Apply(t.clone(), DdlKind::DropTable)),
            );
        }
        let renamed_into: HashSet<&TableId> = d
            .actions
            .iter()
            .filter_map(|(_, k)| match k {
                DdlKind::RenameTable { to } => Some(to),
                _ => None,
            })
            .collect();
        for (t, k) in &d.actions {
            match k {
                DdlKind::RenameTable { to } => {
                    if selected(t) && !renamed_into.contains(t) {
                        out.push(DdlStep::Apply(t.clone(), DdlKind::DropTable));
                    }
                    if selected(to) {
                        out.push(DdlStep::Reread(to.clone(), "RENAME TABLE into the name"));
                    }
                }
                _ if selected(t) => out.push(DdlStep::Apply(t.clone(), k.clone())),
                _ => {}
            }
        }
        for (t, why) in &d.rereads {
            if selected(t) {
                out.push(DdlStep::Reread(t.clone(), why));
            }
        }
        if let Some(t) = d.created.as_ref().filter(|t| selected(t)) {
            out.push(DdlStep::Created(t.clone()));
        }
    }
    // one re-read per table is enough
    let mut seen = HashSet::new();
    out.retain(|s| match s {
        DdlStep::Reread(t, _) => seen.insert(t.clone()),
        DdlStep::Apply(..) | DdlStep::Created(..) => true,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(filter: &str, sql: &str) -> Vec<DdlStep> {
        let f = TableFilter::parse(&[filter]).unwrap();
        let known = [t("orders"), t("users"), TableId::new("crm", "users")].into();
        ddl_steps(&[Ddl::new("shop".into(), sql.into())], &f, &known)
    }

    fn t(name: &str) -> TableId {
        TableId::new("shop", name)
    }

    #[test]
    fn online_schema_change_cut_overs_read_the_table_again() {
        // pt-online-schema-change, then gh-ost: the shadow tables are not selected
        for sql in [
            "RENAME TABLE `shop`.`orders` TO `shop`.`_orders_old`, `shop`.`_orders_new` TO `shop`.`orders`",
            "RENAME TABLE orders TO _orders_del, _orders_gho TO orders",
        ] {
            assert_eq!(
                steps("shop.*", sql),
                vec![DdlStep::Reread(t("orders"), "RENAME TABLE into the name")],
                "{sql}"
            );
        }
    }

    #[test]
    fn renames_out_of_and_into_the_filter() {
        assert_eq!(
            steps("shop.orders", "RENAME TABLE orders TO archive"),
            vec![DdlStep::Apply(t("orders"), DdlKind::DropTable)]
        );
        assert_eq!(
            steps("shop.orders", "RENAME TABLE staging TO orders"),
            vec![DdlStep::Reread(t("orders"), "RENAME TABLE into the name")]
        );
        assert_eq!(
            steps("shop.*", "ALTER TABLE a RENAME TO b"),
            vec![
                DdlStep::Apply(t("a"), DdlKind::DropTable),
                DdlStep::Reread(t("b"), "RENAME TABLE into the name")
            ]
        );
        assert!(steps("shop.orders", "RENAME TABLE x TO y").is_empty());
    }

    #[test]
    fn created_tables_and_dropped_databases() {
        assert_eq!(
            steps("shop.*", "CREATE TABLE n (id INT PRIMARY KEY)"),
            vec![DdlStep::Created(t("n"))]
        );
        assert_eq!(
            steps(
                "shop.*",
                "CREATE OR REPLACE TABLE users (id INT PRIMARY KEY)"
            ),
            vec![
                DdlStep::Apply(t("users"), DdlKind::DropTable),
                DdlStep::Created(t("users"))
            ]
        );
        assert!(steps("shop.orders", "CREATE TABLE n (id INT)").is_empty());
        assert_eq!(
            steps("*.users", "DROP DATABASE shop"),
            vec![DdlStep::Apply(t("users"), DdlKind::DropTable)]
        );
    }

    #[test]
    fn an_added_column_with_a_default_reads_the_table_again() {
        assert_eq!(
            steps(
                "shop.*",
                "ALTER TABLE users ADD COLUMN theme VARCHAR(10) NOT NULL DEFAULT 'dark'"
            ),
            vec![DdlStep::Reread(
                t("users"),
                "ADD COLUMN with a value for the existing rows"
            )]
        );
        assert!(steps("shop.*", "ALTER TABLE users ADD COLUMN note TEXT").is_empty());
        assert_eq!(
            steps("shop.*", "TRUNCATE users"),
            vec![DdlStep::Apply(t("users"), DdlKind::Truncate)]
        );
    }
}
