//! Table filters: globs over `db.table`, `!` to exclude (`shop.*`, `!shop.audit_*`).
//!
//! A table is replicated when it matches at least one include pattern (or there are none) and no
//! exclude pattern. The server's own schemas (`mysql`, `sys`, `information_schema`,
//! `performance_schema`) are excluded unless an include pattern names the schema literally.

const SYSTEM_DBS: [&str; 4] = ["mysql", "sys", "information_schema", "performance_schema"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFilter {
    include: Vec<(String, String)>,
    exclude: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("table pattern `{0}`: expected `db.table` with optional * and ? wildcards, and an optional leading !")]
pub struct FilterError(pub String);

impl TableFilter {
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, FilterError> {
        let mut f = TableFilter {
            include: vec![],
            exclude: vec![],
        };
        for p in patterns
            .iter()
            .flat_map(|p| p.as_ref().split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (neg, body) = match p.strip_prefix('!') {
                Some(b) => (true, b),
                None => (false, p),
            };
            let (db, t) = body
                .split_once('.')
                .ok_or_else(|| FilterError(p.to_string()))?;
            if db.is_empty() || t.is_empty() || t.contains('.') {
                return Err(FilterError(p.to_string()));
            }
            let pair = (db.to_string(), t.to_string());
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
            .any(|(d, t)| glob(d, db) && glob(t, table))
        {
            return false;
        }
        if SYSTEM_DBS.contains(&db) && !self.include.iter().any(|(d, _)| d == db) {
            return false;
        }
        self.include.is_empty()
            || self
                .include
                .iter()
                .any(|(d, t)| glob(d, db) && glob(t, table))
    }
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
}
