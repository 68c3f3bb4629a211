//! The DDL statements a sink must apply at their place in the stream: TRUNCATE, DROP TABLE, and
//! the column changes that TABLE_MAP metadata alone cannot tell apart (a RENAME COLUMN looks like a
//! DROP plus an ADD in the next table map).
//!
//! Invariants:
//! - Only what the statement says for sure is returned. A statement this parser does not
//!   understand returns nothing, and the sink then sees the new shape in the next table map: an
//!   added column evolves the table, a vanished or retyped column it cannot account for stops that
//!   one table. Nothing is guessed from column positions or types.
//! - Keywords are matched only outside quotes: a column named `` `index` `` is a column.
//! - Executable comments (`/*!50100 ... */`, `/*M!100100 ... */`) are part of the statement, as
//!   the server reads them; other comments are not.

use binlake_sink::{DdlKind, TableId};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// An unquoted word (keyword or name).
    Word(String),
    /// A backquoted identifier.
    Quoted(String),
    /// A string literal (its text is irrelevant here).
    Str,
    Punct(char),
}

impl Tok {
    fn is_kw(&self, kw: &str) -> bool {
        matches!(self, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }
    fn name(&self) -> Option<&str> {
        match self {
            Tok::Word(w) | Tok::Quoted(w) => Some(w),
            _ => None,
        }
    }
}

fn tokenize(sql: &str) -> Vec<Tok> {
    let b: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && b.get(i + 1) == Some(&'*') {
            let exec = matches!(b.get(i + 2), Some('!'))
                || (b.get(i + 2) == Some(&'M') && b.get(i + 3) == Some(&'!'));
            if exec {
                // executable comment: skip the marker and version, keep the content
                i += if b[i + 2] == 'M' { 4 } else { 3 };
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            } else {
                i += 2;
                while i + 1 < b.len() && !(b[i] == '*' && b[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
            }
        } else if c == '*' && b.get(i + 1) == Some(&'/') {
            i += 2; // end of an executable comment
        } else if c == '#' || (c == '-' && b.get(i + 1) == Some(&'-')) {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '`' {
            let mut s = String::new();
            i += 1;
            while i < b.len() {
                if b[i] == '`' {
                    if b.get(i + 1) == Some(&'`') {
                        s.push('`');
                        i += 2;
                        continue;
                    }
                    break;
                }
                s.push(b[i]);
                i += 1;
            }
            i += 1;
            out.push(Tok::Quoted(s));
        } else if c == '\'' || c == '"' {
            i += 1;
            while i < b.len() {
                if b[i] == '\\' {
                    i += 2;
                    continue;
                }
                if b[i] == c {
                    if b.get(i + 1) == Some(&c) {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
            out.push(Tok::Str);
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == '$') {
                i += 1;
            }
            out.push(Tok::Word(b[start..i].iter().collect()));
        } else {
            out.push(Tok::Punct(c));
            i += 1;
        }
    }
    out
}

/// A possibly qualified table name at `toks[*i]`; advances past it.
fn table_name(toks: &[Tok], i: &mut usize, default_db: &str) -> Option<TableId> {
    let first = toks.get(*i)?.name()?.to_string();
    *i += 1;
    if toks.get(*i) == Some(&Tok::Punct('.')) {
        let second = toks.get(*i + 1)?.name()?.to_string();
        *i += 2;
        return Some(TableId::new(first, second));
    }
    Some(TableId::new(default_db, first))
}

/// The tables and column changes statement `sql`, run in database `db`, applies, in statement
/// order. Called where Query events are decoded (the stream), so the pipeline gets them typed.
pub fn table_ddl(db: &str, sql: &str) -> Vec<(TableId, DdlKind)> {
    let toks = tokenize(sql);
    let mut i;
    let kw = |i: usize, k: &str| toks.get(i).is_some_and(|t| t.is_kw(k));
    if kw(0, "TRUNCATE") {
        i = if kw(1, "TABLE") { 2 } else { 1 };
        return table_name(&toks, &mut i, db)
            .map(|t| vec![(t, DdlKind::Truncate)])
            .unwrap_or_default();
    }
    if kw(0, "DROP") && kw(1, "TABLE") {
        i = 2;
        if kw(i, "IF") && kw(i + 1, "EXISTS") {
            i += 2;
        }
        let mut out = Vec::new();
        while let Some(t) = table_name(&toks, &mut i, db) {
            out.push((t, DdlKind::DropTable));
            if toks.get(i) != Some(&Tok::Punct(',')) {
                break;
            }
            i += 1;
        }
        return out;
    }
    if kw(0, "RENAME") && kw(1, "TABLE") {
        i = 2;
        let mut out = Vec::new();
        while let Some(from) = table_name(&toks, &mut i, db) {
            if !kw(i, "TO") {
                break;
            }
            i += 1;
            let Some(to) = table_name(&toks, &mut i, db) else {
                break;
            };
            out.push((from, DdlKind::RenameTable { to }));
            if toks.get(i) != Some(&Tok::Punct(',')) {
                break;
            }
            i += 1;
        }
        return out;
    }
    let Some((table, i)) = alter_table(&toks, db) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for c in clauses(&toks[i..]) {
        let k = |j: usize, w: &str| c.get(j).is_some_and(|t| t.is_kw(w));
        let mut j;
        if k(0, "DROP") {
            j = 1;
            let explicit = k(j, "COLUMN");
            if explicit {
                j += 1;
            } else if NOT_A_COLUMN.iter().any(|w| k(j, w)) {
                continue;
            }
            if k(j, "IF") && k(j + 1, "EXISTS") {
                j += 2;
            }
            if let Some(col) = c.get(j).and_then(Tok::name) {
                out.push((table.clone(), DdlKind::DropColumn(col.to_string())));
            }
        } else if k(0, "RENAME") && !k(1, "COLUMN") && !k(1, "INDEX") && !k(1, "KEY") {
            j = if k(1, "TO") || k(1, "AS") { 2 } else { 1 };
            if let Some(to) = table_name(c, &mut j, db) {
                out.push((table.clone(), DdlKind::RenameTable { to }));
            }
        } else if k(0, "RENAME") && k(1, "COLUMN") {
            j = 2;
            if k(j, "IF") && k(j + 1, "EXISTS") {
                j += 2;
            }
            if let (Some(from), true, Some(to)) = (
                c.get(j).and_then(Tok::name),
                k(j + 1, "TO"),
                c.get(j + 2).and_then(Tok::name),
            ) {
                out.push((
                    table.clone(),
                    DdlKind::RenameColumn {
                        from: from.to_string(),
                        to: to.to_string(),
                    },
                ));
            }
        } else if k(0, "CHANGE") {
            j = 1;
            if k(j, "COLUMN") {
                j += 1;
            }
            if k(j, "IF") && k(j + 1, "EXISTS") {
                j += 2;
            }
            if let (Some(from), Some(to)) = (
                c.get(j).and_then(Tok::name),
                c.get(j + 1).and_then(Tok::name),
            ) {
                if from != to {
                    out.push((
                        table.clone(),
                        DdlKind::RenameColumn {
                            from: from.to_string(),
                            to: to.to_string(),
                        },
                    ));
                }
            }
        }
    }
    out
}

/// `CREATE [OR REPLACE] TABLE [IF NOT EXISTS] name ...` (not a TEMPORARY table, which the
/// binlog does not carry rows of): the table, and whether it replaces one of that name (MariaDB's
/// `OR REPLACE`, a DROP TABLE and a CREATE in one statement).
pub fn created_table(db: &str, sql: &str) -> Option<(TableId, bool)> {
    let toks = tokenize(sql);
    let kw = |i: usize, k: &str| toks.get(i).is_some_and(|t| t.is_kw(k));
    if !kw(0, "CREATE") {
        return None;
    }
    let mut i = 1;
    let replaces = kw(i, "OR") && kw(i + 1, "REPLACE");
    if replaces {
        i += 2;
    }
    if !kw(i, "TABLE") {
        return None; // TEMPORARY TABLE, VIEW, INDEX, DATABASE...
    }
    i += 1;
    if kw(i, "IF") && kw(i + 1, "NOT") && kw(i + 2, "EXISTS") {
        i += 3;
    }
    table_name(&toks, &mut i, db).map(|t| (t, replaces))
}

/// `DROP {DATABASE|SCHEMA} [IF EXISTS] name`: the database.
pub fn dropped_database(sql: &str) -> Option<String> {
    let toks = tokenize(sql);
    let kw = |i: usize, k: &str| toks.get(i).is_some_and(|t| t.is_kw(k));
    if !(kw(0, "DROP") && (kw(1, "DATABASE") || kw(1, "SCHEMA"))) {
        return None;
    }
    let i = if kw(2, "IF") && kw(3, "EXISTS") { 4 } else { 2 };
    toks.get(i).and_then(Tok::name).map(str::to_string)
}

/// The tables statement `sql`, run in database `db`, changes without row events, so the
/// target must read them again (see the pipeline's re-snapshot): `ALTER TABLE ... ADD COLUMN`
/// whose existing rows get a value other than NULL (a `DEFAULT` other than NULL, `NOT NULL`,
/// `AUTO_INCREMENT`, or a generated column), with the reason.
pub fn reread_ddl(db: &str, sql: &str) -> Vec<(TableId, &'static str)> {
    let toks = tokenize(sql);
    let Some((table, i)) = alter_table(&toks, db) else {
        return Vec::new();
    };
    for c in clauses(&toks[i..]) {
        let k = |j: usize, w: &str| c.get(j).is_some_and(|t| t.is_kw(w));
        if !k(0, "ADD") {
            continue;
        }
        let mut j = 1;
        if k(j, "COLUMN") {
            j += 1;
        } else if NOT_A_COLUMN.iter().any(|w| k(j, w)) {
            continue;
        }
        if k(j, "IF") && k(j + 1, "NOT") && k(j + 2, "EXISTS") {
            j += 3;
        }
        // `ADD COLUMN (a INT, b INT)`: every definition inside the parentheses
        if fills_existing_rows(&c[j..]) {
            return vec![(table, "ADD COLUMN with a value for the existing rows")];
        }
    }
    Vec::new()
}

/// A column definition (or a parenthesised list of them) that gives existing rows a value
/// other than NULL. A TIMESTAMP column not declared NULL counts: with
/// `explicit_defaults_for_timestamp` off (MySQL 5.7, MariaDB before 10.10) it is implicitly
/// NOT NULL with a default (reading the table again is right either way).
fn fills_existing_rows(def: &[Tok]) -> bool {
    let kw = |j: usize, w: &str| def.get(j).is_some_and(|t| t.is_kw(w));
    let says_null = (0..def.len()).any(|j| kw(j, "NULL") && !(j > 0 && kw(j - 1, "NOT")));
    (0..def.len()).any(|j| {
        (kw(j, "TIMESTAMP") && !says_null)
            || (kw(j, "NOT") && kw(j + 1, "NULL"))
            || kw(j, "AUTO_INCREMENT")
            || kw(j, "GENERATED")
            || (kw(j, "AS") && def.get(j + 1) == Some(&Tok::Punct('(')))
            || (kw(j, "DEFAULT") && !kw(j + 1, "NULL"))
    })
}

/// The words after ADD or DROP that name something other than a column.
const NOT_A_COLUMN: [&str; 12] = [
    "PRIMARY",
    "INDEX",
    "KEY",
    "FOREIGN",
    "CONSTRAINT",
    "CHECK",
    "PARTITION",
    "PERIOD",
    "SYSTEM",
    "UNIQUE",
    "FULLTEXT",
    "SPATIAL",
];

/// `ALTER [ONLINE|OFFLINE|IGNORE] TABLE [IF EXISTS] name [WAIT n|NOWAIT]`: the table and where
/// its clauses start.
fn alter_table(toks: &[Tok], db: &str) -> Option<(TableId, usize)> {
    let kw = |i: usize, k: &str| toks.get(i).is_some_and(|t| t.is_kw(k));
    if !kw(0, "ALTER") {
        return None;
    }
    let mut i = 1;
    while kw(i, "ONLINE") || kw(i, "OFFLINE") || kw(i, "IGNORE") {
        i += 1;
    }
    if !kw(i, "TABLE") {
        return None;
    }
    i += 1;
    if kw(i, "IF") && kw(i + 1, "EXISTS") {
        i += 2;
    }
    let table = table_name(toks, &mut i, db)?;
    if kw(i, "WAIT") {
        i += 2;
    } else if kw(i, "NOWAIT") {
        i += 1;
    }
    Some((table, i))
}

/// The clauses of an ALTER TABLE after the table name, split at commas outside parentheses.
fn clauses(toks: &[Tok]) -> Vec<&[Tok]> {
    let mut out: Vec<&[Tok]> = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (j, t) in toks.iter().enumerate() {
        match t {
            Tok::Punct('(') => depth += 1,
            Tok::Punct(')') => depth = depth.saturating_sub(1),
            Tok::Punct(',') | Tok::Punct(';') if depth == 0 => {
                out.push(&toks[start..j]);
                start = j + 1;
            }
            _ => {}
        }
    }
    out.push(&toks[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_columns_that_fill_existing_rows() {
        let t = || {
            vec![(
                TableId::new("s", "t"),
                "ADD COLUMN with a value for the existing rows",
            )]
        };
        for sql in [
            "ALTER TABLE t ADD COLUMN theme VARCHAR(10) NOT NULL DEFAULT 'dark'",
            "ALTER TABLE t ADD theme VARCHAR(10) DEFAULT 'dark'",
            "ALTER TABLE `s`.`t` ADD COLUMN n INT NOT NULL",
            "alter table t add column (a INT, b INT DEFAULT 3)",
            "ALTER TABLE t ADD COLUMN c DATETIME DEFAULT CURRENT_TIMESTAMP",
            "ALTER TABLE t ADD COLUMN g INT AS (a + 1) STORED",
            "ALTER TABLE t ADD INDEX i (a), ADD COLUMN seq INT AUTO_INCREMENT UNIQUE",
            "ALTER TABLE t ADD COLUMN changed TIMESTAMP",
        ] {
            assert_eq!(reread_ddl("s", sql), t(), "{sql}");
        }
        for sql in [
            "ALTER TABLE t ADD COLUMN c INT",
            "ALTER TABLE t ADD COLUMN c INT NULL DEFAULT NULL",
            "ALTER TABLE t ADD COLUMN changed TIMESTAMP NULL",
            "ALTER TABLE t ADD INDEX i (a), ADD UNIQUE KEY u (b)",
            "ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0)",
            "ALTER TABLE t MODIFY c INT NOT NULL",
            "ALTER TABLE t COMMENT 'add column x int not null'",
            "CREATE TABLE t (a INT NOT NULL DEFAULT 1)",
        ] {
            assert!(reread_ddl("s", sql).is_empty(), "{sql}");
        }
    }

    #[test]
    fn created_tables_and_dropped_databases() {
        let t = |d: &str, n: &str| TableId::new(d, n);
        assert_eq!(
            created_table("s", "CREATE TABLE t (a INT PRIMARY KEY)"),
            Some((t("s", "t"), false))
        );
        assert_eq!(
            created_table("s", "create table if not exists `x`.`t 1` like s.u"),
            Some((t("x", "t 1"), false))
        );
        assert_eq!(
            created_table("s", "CREATE OR REPLACE TABLE t2 AS SELECT 1"),
            Some((t("s", "t2"), true))
        );
        for sql in [
            "CREATE TEMPORARY TABLE t (a INT)",
            "CREATE VIEW v AS SELECT 1",
            "CREATE INDEX i ON t (a)",
            "CREATE DATABASE d",
            "ALTER TABLE t ADD c INT",
        ] {
            assert_eq!(created_table("s", sql), None, "{sql}");
        }
        assert_eq!(dropped_database("DROP DATABASE shop"), Some("shop".into()));
        assert_eq!(
            dropped_database("drop schema if exists `a.b`"),
            Some("a.b".into())
        );
        assert_eq!(dropped_database("DROP TABLE shop"), None);
    }

    fn ddl(db: &str, sql: &str) -> Vec<(TableId, DdlKind)> {
        table_ddl(db, sql)
    }

    #[test]
    fn truncate_and_drop_table() {
        assert_eq!(
            ddl("shop", "TRUNCATE TABLE orders"),
            vec![(TableId::new("shop", "orders"), DdlKind::Truncate)]
        );
        assert_eq!(
            ddl("shop", "truncate `crm`.`users`;"),
            vec![(TableId::new("crm", "users"), DdlKind::Truncate)]
        );
        assert_eq!(
            ddl(
                "s",
                "DROP TABLE IF EXISTS `a`, s2.b /* generated by server */"
            ),
            vec![
                (TableId::new("s", "a"), DdlKind::DropTable),
                (TableId::new("s2", "b"), DdlKind::DropTable)
            ]
        );
        assert!(ddl("s", "ALTER TABLE t ADD c INT").is_empty());
        assert!(ddl("s", "DROP DATABASE s").is_empty());
    }

    #[test]
    fn column_drops_and_renames() {
        let t = TableId::new("s", "t");
        let drop = |c: &str| (t.clone(), DdlKind::DropColumn(c.into()));
        let ren = |a: &str, b: &str| {
            (
                t.clone(),
                DdlKind::RenameColumn {
                    from: a.into(),
                    to: b.into(),
                },
            )
        };
        assert_eq!(ddl("s", "ALTER TABLE t DROP COLUMN a"), vec![drop("a")]);
        assert_eq!(
            ddl(
                "x",
                "alter online table `s`.`t` drop `index`, drop index i1, DROP PRIMARY KEY, drop if exists b, ADD c INT DEFAULT 'x,y' AFTER d, DROP FOREIGN KEY fk"
            ),
            vec![drop("index"), drop("b")]
        );
        assert_eq!(
            ddl(
                "s",
                "ALTER TABLE t RENAME COLUMN a TO b, CHANGE COLUMN c d DECIMAL(10,2) NOT NULL, CHANGE e e BIGINT, MODIFY f INT"
            ),
            vec![ren("a", "b"), ren("c", "d")]
        );
        assert_eq!(
            ddl("s", "/* app */ ALTER TABLE t /*!50100 DROP COLUMN z */"),
            vec![drop("z")]
        );
        assert_eq!(
            ddl("s", "ALTER TABLE t RENAME TO u"),
            vec![(
                t.clone(),
                DdlKind::RenameTable {
                    to: TableId::new("s", "u")
                }
            )]
        );
        assert_eq!(
            ddl("s", "RENAME TABLE t TO s2.u, `x` TO `y`"),
            vec![
                (
                    t.clone(),
                    DdlKind::RenameTable {
                        to: TableId::new("s2", "u")
                    }
                ),
                (
                    TableId::new("s", "x"),
                    DdlKind::RenameTable {
                        to: TableId::new("s", "y")
                    }
                )
            ]
        );
        assert!(ddl("s", "ALTER TABLE t RENAME INDEX a TO b").is_empty());
        assert!(ddl("s", "ALTER TABLE t COMMENT 'drop column a'").is_empty());
    }
}
