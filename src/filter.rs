//! Table filters: globs over `db.table`, `!` to exclude (`shop.*`, `!shop.audit_*`).
//!
//! A table is replicated when it matches at least one include pattern (or there are none) and no
//! exclude pattern. The server's own schemas (`mysql`, `sys`, `information_schema`,
//! `performance_schema`) are excluded unless an include pattern names the schema literally.
//!
//! A name that holds a dot (legal in MySQL) is written in backticks, as in SQL and in the text
//! of a table id: `` `d.x`.`t.y` ``, `` `d.x`.* ``. A backtick-quoted part matches literally
//! (`*` and `?` inside are characters); a doubled backtick inside stands for one. Commas
//! separate patterns only outside backticks.
//!
//! The shadow tables of online schema change tools are not selected by a wildcard: `_<t>_new`
//! and `_<t>_old` (pt-online-schema-change), `_<t>_gho`, `_<t>_ghc` and `_<t>_del` (gh-ost).
//! They hold a copy of a table being migrated, filled by the tool; binlake follows the migration
//! at its cut-over (`RENAME TABLE t TO _t_old, _t_new TO t`), where it reads `t` again, so
//! replicating the copies would only double the work and leave stray tables in the target. A
//! pattern that names one exactly (no wildcard in its table part) still selects it.

const SYSTEM_DBS: [&str; 4] = ["mysql", "sys", "information_schema", "performance_schema"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFilter {
    include: Vec<(Part, Part)>,
    exclude: Vec<(Part, Part)>,
}

/// One side of a pattern: a glob, or (backtick-quoted) an exact name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Glob(String),
    Exact(String),
}

impl Part {
    fn matches(&self, name: &str) -> bool {
        match self {
            Part::Glob(g) => glob(g, name),
            Part::Exact(e) => e == name,
        }
    }

    /// The pattern names `name` literally (no wildcard in the way).
    fn names(&self, name: &str) -> bool {
        match self {
            Part::Glob(g) | Part::Exact(g) => g == name,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("table pattern `{0}`: expected `db.table` with optional * and ? wildcards, an optional leading !, and backticks around a name that holds a dot (`d.x`.`t.y`)")]
pub struct FilterError(pub String);

/// Splits at commas outside backticks.
fn split_patterns(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut start) = (false, 0);
    for (i, c) in text.char_indices() {
        match c {
            '`' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

/// `db.table` of one pattern (without its `!`).
fn parse_pattern(body: &str) -> Option<(Part, Part)> {
    let (db, rest) = if body.starts_with('`') {
        let (db, rest) = binlake_sink::split_name_part(body).ok()?;
        (Part::Exact(db), rest)
    } else {
        let (db, rest) = body.split_once('.')?;
        (Part::Glob(db.to_string()), rest)
    };
    let table = if rest.starts_with('`') {
        match binlake_sink::split_name_part(rest).ok()? {
            (t, "") if !rest.ends_with('.') => Part::Exact(t),
            _ => return None,
        }
    } else if rest.contains(['.', '`']) {
        return None;
    } else {
        Part::Glob(rest.to_string())
    };
    let empty = |p: &Part| matches!(p, Part::Glob(g) | Part::Exact(g) if g.is_empty());
    (!empty(&db) && !empty(&table)).then_some((db, table))
}

impl TableFilter {
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, FilterError> {
        let mut f = TableFilter {
            include: vec![],
            exclude: vec![],
        };
        for p in patterns
            .iter()
            .flat_map(|p| split_patterns(p.as_ref()))
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (neg, body) = match p.strip_prefix('!') {
                Some(b) => (true, b),
                None => (false, p),
            };
            let pair = parse_pattern(body).ok_or_else(|| FilterError(p.to_string()))?;
            if neg {
                f.exclude.push(pair);
            } else {
                f.include.push(pair);
            }
        }
        Ok(f)
    }

    pub fn matches(&self, db: &str, table: &str) -> bool {
        if self
            .exclude
            .iter()
            .any(|(d, t)| d.matches(db) && t.matches(table))
        {
            return false;
        }
        if SYSTEM_DBS.contains(&db) && !self.include.iter().any(|(d, _)| d.names(db)) {
            return false;
        }
        if is_shadow_table(table) && !self.include.iter().any(|(_, t)| t.names(table)) {
            return false;
        }
        self.include.is_empty()
            || self
                .include
                .iter()
                .any(|(d, t)| d.matches(db) && t.matches(table))
    }
}

/// A shadow table of pt-online-schema-change or gh-ost (`_<t>_new`, `_<t>_old`, `_<t>_gho`,
/// `_<t>_ghc`, `_<t>_del`).
pub fn is_shadow_table(table: &str) -> bool {
    table.starts_with('_')
        && table.len() > 5
        && ["_new", "_old", "_gho", "_ghc", "_del"]
            .iter()
            .any(|s| table.ends_with(s))
}

/// `*` matches any run, `?` one character; everything else literally (case-sensitive, as table
/// names are on Linux servers).
pub fn glob(pattern: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut si, mut star, mut mark) = (0usize, 0usize, None::<usize>, 0usize);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_exclude_and_system_schemas() {
        let f = TableFilter::parse(&["shop.*", "!shop.audit_*"]).unwrap();
        assert!(f.matches("shop", "orders"));
        assert!(!f.matches("shop", "audit_log"));
        assert!(!f.matches("crm", "users"));
        let all = TableFilter::parse::<&str>(&[]).unwrap();
        assert!(all.matches("crm", "users"));
        assert!(!all.matches("mysql", "user"));
        assert!(TableFilter::parse(&["mysql.*"])
            .unwrap()
            .matches("mysql", "user"));
        assert!(TableFilter::parse(&["noschema"]).is_err());
        assert!(glob("a?c*", "abcdef") && !glob("a?c", "abcd"));
    }

    #[test]
    fn shadow_tables_of_online_schema_change_tools_are_not_selected_by_wildcards() {
        let f = TableFilter::parse(&["shop.*"]).unwrap();
        for t in [
            "_orders_new",
            "_orders_old",
            "_orders_gho",
            "_orders_ghc",
            "_orders_del",
        ] {
            assert!(!f.matches("shop", t), "{t}");
        }
        for t in ["orders_new", "_new", "_orders", "_orders_news"] {
            assert!(f.matches("shop", t), "{t}");
        }
        assert!(TableFilter::parse(&["shop._orders_new"])
            .unwrap()
            .matches("shop", "_orders_new"));
    }

    #[test]
    fn backticks_name_databases_and_tables_that_hold_dots() {
        let f = TableFilter::parse(&["`d.x`.`t.y`,`a.b`.*", "!`a.b`.`skip*`"]).unwrap();
        assert!(f.matches("d.x", "t.y"));
        assert!(!f.matches("d", "x.t.y"));
        assert!(!f.matches("d.x", "t.z"));
        assert!(f.matches("a.b", "anything"));
        assert!(f.matches("a.b", "skipper"), "quoted: `*` is literal");
        assert!(!f.matches("a.b", "skip*"));
        let q = TableFilter::parse(&["shop.`we``ird,name`"]).unwrap();
        assert!(q.matches("shop", "we`ird,name"));
        for bad in ["d.x.t", "`d.x.t", "`d`x.t", "`d.x`.", "shop.`t`x", "``.t"] {
            assert!(TableFilter::parse(&[bad]).is_err(), "{bad}");
        }
    }
}
