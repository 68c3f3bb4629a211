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

use std::collections::HashSet;

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
}

/// The steps for `ddl`, in statement order, for the tables `filter` selects.
pub(super) fn ddl_steps(ddl: &[Ddl], filter: &TableFilter) -> Vec<DdlStep> {
    let selected = |t: &TableId| filter.matches(&t.db, &t.table);
    let mut out = Vec::new();
    for d in ddl {
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
    }
    // one re-read per table is enough
    let mut seen = HashSet::new();
    out.retain(|s| match s {
        DdlStep::Reread(t, _) => seen.insert(t.clone()),
        DdlStep::Apply(..) => true,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(filter: &str, sql: &str) -> Vec<DdlStep> {
        let f = TableFilter::parse(&[filter]).unwrap();
        ddl_steps(&[Ddl::new("shop".into(), sql.into())], &f)
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
