//! Per-table layout of the tables binlake creates in ClickHouse (`[[layout]]` in the config):
//! ORDER BY, PARTITION BY, TTL, table SETTINGS and column type overrides.
//!
//! Invariants:
//! - A keyed table is a `ReplacingMergeTree`, which keeps one row per ORDER BY key and only
//!   within a partition. Its ORDER BY therefore names every primary-key column as one of its
//!   elements (one row per source key), and every other column that ORDER BY or PARTITION BY
//!   reads is a primary-key column: a column an UPDATE can change would put the new row under
//!   another sort key or partition and leave the old one visible under `FINAL` (binlake writes
//!   the new row only). A keyless table is an append-only changelog (`MergeTree`): any columns.
//! - A column type override only wraps binlake's own type in `LowCardinality(...)`, which keeps
//!   every value.
//! - Checked when binlake creates the table (or a re-snapshot's shadow of it); a layout that
//!   breaks a rule stops that table with an error naming the key, the other tables go on. A
//!   table that already exists keeps its layout, and is checked by the same rules (and its
//!   engine) the first time binlake writes to it in a run ([`check_existing`]).
//! - The first `[[layout]]` entry whose pattern matches a table applies.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Decides whether a `[[layout]]` entry applies to `db`.`table`.
pub type Matcher = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// One `[[layout]]` entry.
#[derive(Clone, Default)]
pub struct Layout {
    /// The entry's table patterns, for error messages.
    pub pattern: String,
    pub matches: Option<Matcher>,
    pub order_by: Option<String>,
    pub partition_by: Option<String>,
    pub ttl: Option<String>,
    pub settings: Option<String>,
    /// Column -> ClickHouse type (`LowCardinality(<binlake's type>)`).
    pub column_types: BTreeMap<String, String>,
}

impl std::fmt::Debug for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layout")
            .field("pattern", &self.pattern)
            .field("order_by", &self.order_by)
            .field("partition_by", &self.partition_by)
            .field("ttl", &self.ttl)
            .field("settings", &self.settings)
            .field("column_types", &self.column_types)
            .finish()
    }
}

impl Layout {
    /// Checks what can be checked without the table: each clause is non-empty with balanced
    /// parentheses and quotes, each type override is a `LowCardinality(...)`.
    pub fn validate(&self) -> Result<(), String> {
        let named = |key: &str, m: String| format!("layout for `{}`: {key}: {m}", self.pattern);
        for (key, v) in [
            ("order_by", &self.order_by),
            ("partition_by", &self.partition_by),
            ("ttl", &self.ttl),
            ("settings", &self.settings),
        ] {
            if let Some(v) = v {
                balanced(v).map_err(|m| named(key, m))?;
            }
        }
        for (col, ty) in &self.column_types {
            if lc_inner(ty).is_none() {
                return Err(named(
                    &format!("column_types.{col}"),
                    format!("`{ty}`: only LowCardinality(<the type binlake writes>) is supported (it keeps every value)"),
                ));
            }
        }
        Ok(())
    }

    /// The type of column `col` that binlake writes as `ty`.
    pub fn column_type(&self, col: &str, ty: &str) -> Result<String, String> {
        let Some(want) = self.column_types.get(col) else {
            return Ok(ty.to_string());
        };
        match lc_inner(want) {
            Some(inner) if squash(inner) == squash(ty) => Ok(want.clone()),
            _ => Err(format!(
                "layout for `{}`: column_types.{col}: `{want}` does not hold binlake's type `{ty}` (use LowCardinality({ty}))",
                self.pattern
            )),
        }
    }

    /// The engine clauses after `ENGINE = <engine>` for a table with these columns and primary
    /// key (empty: keyless), or why this layout cannot be used for it.
    pub fn clauses(&self, columns: &[String], pk: &[String]) -> Result<String, String> {
        let named = |key: &str, m: String| format!("layout for `{}`: {key}: {m}", self.pattern);
        for col in self.column_types.keys() {
            if !columns.iter().any(|c| c == col) {
                return Err(named(
                    &format!("column_types.{col}"),
                    "the table has no such column".into(),
                ));
            }
        }
        let quoted = |cols: &[String]| {
            cols.iter()
                .map(|c| crate::sink::ident(c))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !pk.is_empty() {
            check_keys(
                self.order_by.as_deref(),
                self.partition_by.as_deref(),
                columns,
                pk,
            )
            .map_err(|(key, m)| named(key, m))?;
        }
        let order = match &self.order_by {
            Some(o) => {
                let o = o.trim();
                if o.starts_with('(') && closes_at_end(o) {
                    o.to_string()
                } else {
                    format!("({o})")
                }
            }
            None if pk.is_empty() => "tuple()".to_string(),
            None => format!("({})", quoted(pk)),
        };
        let mut out = format!(" ORDER BY {order}");
        if let Some(p) = &self.partition_by {
            out.push_str(&format!(" PARTITION BY {p}"));
        }
        if let Some(t) = &self.ttl {
            out.push_str(&format!(" TTL {t}"));
        }
        if let Some(s) = &self.settings {
            out.push_str(&format!(" SETTINGS {s}"));
        }
        Ok(out)
    }
}

/// A keyed table's sorting and partition keys keep one row per source key visible under
/// `FINAL` (see the module doc). Err: (`order_by` or `partition_by`, why).
pub fn check_keys(
    order_by: Option<&str>,
    partition_by: Option<&str>,
    columns: &[String],
    pk: &[String],
) -> Result<(), (&'static str, String)> {
    if let Some(o) = order_by {
        let elems: Vec<String> = elements(o).iter().map(|e| unquote(e)).collect();
        if let Some(k) = pk.iter().find(|k| !elems.contains(k)) {
            return Err(("order_by", format!("`{o}` must name every primary-key column as one of its elements (`{k}` is missing): a ReplacingMergeTree keeps one row per ORDER BY key")));
        }
        reads_only_key(o, columns, pk).map_err(|c| ("order_by", format!("`{o}` reads `{c}`, which is not a primary-key column: an UPDATE of it would leave the old row visible")))?;
    }
    if let Some(p) = partition_by.filter(|p| !p.trim().is_empty()) {
        reads_only_key(p, columns, pk).map_err(|c| ("partition_by", format!("`{p}` reads `{c}`, which is not a primary-key column: an UPDATE of it would move the row to another partition and leave the old one visible (a ReplacingMergeTree deduplicates within a partition)")))?;
    }
    Ok(())
}

/// A table that exists (made by hand, another tool, or an older binlake) can hold this
/// table's rows the way binlake writes them: for a keyed table a ReplacingMergeTree whose version
/// is `_binlake_version`, with keys that pass [`check_keys`]; for a keyless changelog a MergeTree
/// that merges nothing away. Err: why not.
pub fn check_existing(
    engine_full: &str,
    sorting_key: &str,
    partition_key: &str,
    columns: &[String],
    pk: &[String],
) -> Result<(), Existing> {
    let engine = engine_full
        .split(|c: char| c == '(' || c.is_whitespace())
        .next()
        .unwrap_or("");
    if pk.is_empty() {
        let merges_away = [
            "Replacing",
            "Collapsing",
            "Summing",
            "Aggregating",
            "Graphite",
        ]
        .iter()
        .any(|k| engine.contains(k));
        if !engine.ends_with("MergeTree") || merges_away {
            return Err(Existing::Engine(format!("the table exists with engine {engine}; a keyless table is a changelog in which every row counts, so binlake needs a plain MergeTree")));
        }
        return Ok(());
    }
    if !engine.ends_with("ReplacingMergeTree") {
        return Err(Existing::Engine(format!("the table exists with engine {engine}; binlake keeps one row per key in a ReplacingMergeTree(_binlake_version, _binlake_deleted)")));
    }
    let args = engine_full
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(a, _)| a)
        .unwrap_or("");
    if !identifiers(args)
        .iter()
        .any(|a| a == binlake_sink::COL_VERSION)
    {
        return Err(Existing::Engine(format!("the table exists as {engine}({args}); its version column must be {} (the highest version per key wins)", binlake_sink::COL_VERSION)));
    }
    check_keys(Some(sorting_key), Some(partition_key), columns, pk).map_err(|(key, m)| {
        let what = if key == "order_by" {
            "sorting key"
        } else {
            "partition key"
        };
        Existing::Keys(format!(
            "the table exists with a {what} that does not fit the source's primary key: {m}"
        ))
    })
}

/// Why a table that exists cannot take the replica as it is.
#[derive(Debug)]
pub enum Existing {
    /// Its engine would merge rows away or keep the wrong version: it is stopped.
    Engine(String),
    /// Its sorting or partition key does not fit the source's key (the key changed at the
    /// source): the table is created again in the new shape and read again.
    Keys(String),
}

impl std::fmt::Display for Existing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Existing::Engine(m) | Existing::Keys(m) => f.write_str(m),
        }
    }
}

/// Columns as (name, ClickHouse type), in order.
pub(crate) type Columns = Vec<(String, String)>;

/// The columns (name, ClickHouse type) of `tb` under `layout`, and the first type override that
/// does not fit its column (refused when the table is first created, left out when the column's
/// type changed at the source: it then takes binlake's type, as a schema change).
pub(crate) fn wanted_columns(
    tb: &binlake_sink::TableBatch,
    layout: &Layout,
) -> Result<(Columns, Option<String>), binlake_sink::SinkError> {
    let mut unfit = None;
    let want = tb
        .batch
        .schema()
        .fields()
        .iter()
        .map(|f| {
            let ty = crate::types::column_type(f).map_err(|m| binlake_sink::SinkError::Table {
                table: tb.table.clone(),
                message: format!("column `{}`: {m}", f.name()),
            })?;
            let ty = layout.column_type(f.name(), &ty).unwrap_or_else(|m| {
                unfit.get_or_insert(m);
                ty
            });
            Ok((f.name().clone(), ty))
        })
        .collect::<Result<_, binlake_sink::SinkError>>()?;
    Ok((want, unfit))
}

impl crate::sink::ClickHouseSink {
    /// The layout of table `t` (of the table a re-snapshot's shadow stands in for).
    pub(crate) fn layout_of(&self, t: &binlake_sink::TableId) -> Layout {
        find(&self.config.layouts, &t.db, crate::ddl::base_name(&t.table))
            .cloned()
            .unwrap_or_default()
    }

    /// [`check_existing`] for table `t` as the server has it. A table whose engine cannot hold
    /// the replica is stopped (Err); `Ok(Err(why))`: binlake's engine, but its sorting or
    /// partition key does not fit the key the source has now.
    pub(crate) async fn check_existing_table(
        &self,
        t: &binlake_sink::TableId,
        columns: &[String],
        pk: &[String],
    ) -> Result<Result<(), String>, binlake_sink::SinkError> {
        use crate::sink::{classify, lit};
        let info = self
            .rows(&format!(
                "SELECT engine_full, sorting_key, partition_key FROM system.tables WHERE database = {} AND name = {}",
                lit(&self.config.database(&t.db)),
                lit(&t.table)
            ))
            .await
            .map_err(|e| classify(e, "reading the table's engine", Some(t)))?;
        let field = |k: &str| {
            info.first()
                .and_then(|r| r.get(k))
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        match check_existing(
            &field("engine_full"),
            &field("sorting_key"),
            &field("partition_key"),
            columns,
            pk,
        ) {
            Ok(()) => Ok(Ok(())),
            Err(Existing::Keys(m)) => Ok(Err(m)),
            Err(Existing::Engine(m)) => Err(binlake_sink::SinkError::Table {
                table: t.clone(),
                message: format!(
                    "{}: {m} (drop it, or replicate into another database_prefix)",
                    self.table_name(t)
                ),
            }),
        }
    }
}

/// The layout that applies to `db`.`table`: the first entry that matches (the default layout
/// when none does).
pub fn find<'a>(layouts: &'a [Layout], db: &str, table: &str) -> Option<&'a Layout> {
    layouts
        .iter()
        .find(|l| l.matches.as_ref().is_some_and(|m| m(db, table)))
}

/// `LowCardinality(T)` -> `T`.
fn lc_inner(ty: &str) -> Option<&str> {
    let t = ty.trim();
    let inner = t.strip_prefix("LowCardinality(")?.strip_suffix(')')?;
    balanced(inner).ok().map(|_| inner.trim())
}

fn squash(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Parentheses balance outside quotes, and quotes close.
fn balanced(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("empty".into());
    }
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in s.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '`' | '"' => quote = Some(c),
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("`{s}`: unbalanced parentheses"));
                }
            }
            ';' => return Err(format!("`{s}`: `;` is not allowed")),
            _ => {}
        }
    }
    if quote.is_some() {
        return Err(format!("`{s}`: an unclosed quote"));
    }
    if depth != 0 {
        return Err(format!("`{s}`: unbalanced parentheses"));
    }
    Ok(())
}

/// The top-level elements of an ORDER BY: `(a, f(b, c))` -> `a`, `f(b, c)`.
fn elements(expr: &str) -> Vec<String> {
    let mut e = expr.trim();
    // one pair of parentheses around the whole tuple
    if e.starts_with('(') && e.ends_with(')') && closes_at_end(e) {
        e = &e[1..e.len() - 1];
    }
    let mut out = Vec::new();
    let (mut depth, mut quote, mut cur) = (0i32, None::<char>, String::new());
    for c in e.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '`' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, ',') if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// The parenthesis that opens `e` closes at its end.
fn closes_at_end(e: &str) -> bool {
    let (mut depth, mut quote) = (0i32, None::<char>);
    for (i, c) in e.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '`' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => {
                depth -= 1;
                if depth == 0 {
                    return i == e.len() - 1;
                }
            }
            _ => {}
        }
    }
    false
}

fn unquote(e: &str) -> String {
    let e = e.trim();
    match e.strip_prefix('`').and_then(|x| x.strip_suffix('`')) {
        Some(inner) => inner.replace("``", "`"),
        None => e.to_string(),
    }
}

/// The identifiers of an expression that are not function names (string literals skipped).
fn identifiers(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == '`' || c == '"' {
            let mut name = String::new();
            i += 1;
            while i < chars.len() && chars[i] != c {
                name.push(chars[i]);
                i += 1;
            }
            i += 1;
            out.push(name);
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            if chars.get(j) != Some(&'(') {
                out.push(name);
            }
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Every column `expr` reads is a key column (Err: the first that is not).
fn reads_only_key(expr: &str, columns: &[String], pk: &[String]) -> Result<(), String> {
    match identifiers(expr)
        .into_iter()
        .find(|id| columns.contains(id) && !pk.contains(id))
    {
        Some(c) => Err(c),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    fn layout(order: Option<&str>, part: Option<&str>) -> Layout {
        Layout {
            pattern: "s.t".into(),
            order_by: order.map(Into::into),
            partition_by: part.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn sort_and_partition_keys_read_only_key_columns() {
        let c = cols(&["id", "tenant", "status", "created"]);
        let pk = cols(&["id", "tenant"]);
        let ok = layout(Some("(tenant, `id`)"), Some("tenant % 4"));
        assert_eq!(
            ok.clauses(&c, &pk).unwrap(),
            " ORDER BY (tenant, `id`) PARTITION BY tenant % 4"
        );
        let ok = layout(
            Some("tenant, intHash32(id), id"),
            Some("toYear(toDate(tenant))"),
        );
        assert!(ok.clauses(&c, &pk).is_ok());
        // a primary-key column missing from the elements (only inside a function)
        let e = layout(Some("(tenant, intHash32(id))"), None)
            .clauses(&c, &pk)
            .unwrap_err();
        assert!(
            e.contains("order_by") && e.contains("`id` is missing"),
            "{e}"
        );
        // a column an UPDATE can change
        let e = layout(Some("(status, tenant, id)"), None)
            .clauses(&c, &pk)
            .unwrap_err();
        assert!(e.contains("order_by") && e.contains("`status`"), "{e}");
        let e = layout(None, Some("toYYYYMM(created)"))
            .clauses(&c, &pk)
            .unwrap_err();
        assert!(e.contains("partition_by") && e.contains("`created`"), "{e}");
        // a string literal or a function name that looks like a column is not one
        let ok = layout(None, Some("concat('status', toString(tenant))"));
        assert!(ok.clauses(&c, &pk).is_ok());
        // keyless: an append-only changelog takes any columns
        let ok = layout(Some("(status, created)"), Some("toYYYYMM(created)"));
        assert!(ok.clauses(&c, &[]).is_ok());
        // the default
        assert_eq!(
            Layout::default().clauses(&c, &pk).unwrap(),
            " ORDER BY (`id`, `tenant`)"
        );
        assert_eq!(
            Layout::default().clauses(&c, &[]).unwrap(),
            " ORDER BY tuple()"
        );
    }

    #[test]
    fn existing_tables_must_keep_one_row_per_key() {
        let c = cols(&["id", "tenant", "v", "_binlake_version", "_binlake_deleted"]);
        let pk = cols(&["id", "tenant"]);
        let ok = |e: &str, s: &str, p: &str, pk: &[String]| {
            check_existing(e, s, p, &c, pk).map_err(|e| e.to_string())
        };
        let rmt = "ReplacingMergeTree(_binlake_version, _binlake_deleted) ORDER BY (id, tenant) SETTINGS index_granularity = 8192";
        assert!(ok(rmt, "id, tenant", "", &pk).is_ok());
        assert!(ok("ReplicatedReplacingMergeTree('/t/{shard}', '{replica}', _binlake_version) ORDER BY (tenant, id)", "tenant, id", "tenant % 4", &pk).is_ok());
        let e = ok("MergeTree ORDER BY (id, tenant)", "id, tenant", "", &pk).unwrap_err();
        assert!(e.contains("engine MergeTree"), "{e}");
        let e = ok(
            "ReplacingMergeTree ORDER BY (id, tenant)",
            "id, tenant",
            "",
            &pk,
        )
        .unwrap_err();
        assert!(e.contains("_binlake_version"), "{e}");
        let e = ok(rmt, "id", "", &pk).unwrap_err();
        assert!(
            e.contains("sorting key") && e.contains("`tenant` is missing"),
            "{e}"
        );
        let e = ok(rmt, "id, tenant", "v", &pk).unwrap_err();
        assert!(e.contains("partition key") && e.contains("`v`"), "{e}");
        assert!(ok("MergeTree ORDER BY tuple()", "", "", &[]).is_ok());
        let e = ok(rmt, "id, tenant", "", &[]).unwrap_err();
        assert!(e.contains("plain MergeTree"), "{e}");
    }

    #[test]
    fn type_overrides_keep_every_value() {
        let mut l = Layout {
            pattern: "s.t".into(),
            ..Default::default()
        };
        l.column_types
            .insert("status".into(), "LowCardinality(Nullable(String))".into());
        assert!(l.validate().is_ok());
        assert_eq!(
            l.column_type("status", "Nullable(String)").unwrap(),
            "LowCardinality(Nullable(String))"
        );
        assert_eq!(l.column_type("other", "Int32").unwrap(), "Int32");
        let e = l.column_type("status", "String").unwrap_err();
        assert!(e.contains("column_types.status"), "{e}");
        l.column_types.insert("n".into(), "Int16".into());
        let e = l.validate().unwrap_err();
        assert!(
            e.contains("column_types.n") && e.contains("LowCardinality"),
            "{e}"
        );
    }

    #[test]
    fn clauses_are_checked_for_balance() {
        for bad in ["(a, b", "a)", "", "x; DROP TABLE y", "'open"] {
            let l = layout(Some(bad), None);
            assert!(l.validate().is_err(), "{bad}");
        }
        let l = Layout {
            pattern: "s.t".into(),
            ttl: Some("toDate(created) + INTERVAL 1 YEAR".into()),
            settings: Some("index_granularity = 1024".into()),
            ..Default::default()
        };
        assert!(l.validate().is_ok());
        assert_eq!(
            l.clauses(&cols(&["id", "created"]), &cols(&["id"])).unwrap(),
            " ORDER BY (`id`) TTL toDate(created) + INTERVAL 1 YEAR SETTINGS index_granularity = 1024"
        );
    }
}
