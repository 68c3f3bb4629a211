//! Column rules: columns left out of the target (`exclude_columns`) and columns masked
//! (`mask`: a salted SHA-256, as 64 hex characters, for PII).
//!
//! Invariants:
//! - Rules apply where rows enter the pipeline's buffers, so binlog changes, snapshot chunks,
//!   keyless reads and backfills are shaped the same way, and `validate` applies them to the
//!   source side before comparing.
//! - A masked value is `sha256(salt || value)`: equal values stay equal (joins and keys still
//!   work), and the salt keeps a dictionary of common values from reversing it. NULL stays NULL.
//! - A key column cannot be excluded (the target could not tell rows apart); mask it instead.
//!
//! Patterns are `db.table.column` or `table.column` (any database), with `*` and `?` wildcards.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::decode::charset::Charset;
use crate::decode::table_map::{mysql_type as t, ColType, ColumnMeta};
use crate::decode::{TableMap, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ColumnRuleError {
    #[error(
        "`{key}`: pattern `{pattern}`: expected [db.]table.column with optional * and ? wildcards"
    )]
    Pattern { key: &'static str, pattern: String },
    #[error("`mask` needs `mask_salt` (a secret; use ${{ENV}} in the config file)")]
    NoSalt,
    #[error("exclude_columns: `{column}` is part of the primary key of {table}; a key column cannot be left out (mask it instead)")]
    KeyExcluded { table: String, column: String },
}

type Pattern = (Option<String>, String, String);

/// What happens to one column of the target: copied from a source column, or masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    pub source: usize,
    pub masked: bool,
}

/// A table's target shape under the rules, and how to build its rows.
#[derive(Debug, Clone)]
pub struct Plan {
    pub table: Arc<TableMap>,
    pub kept: Arc<Vec<Kept>>,
}

/// The rule for one column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Kept,
    Excluded,
    Masked,
}

#[derive(Debug, Clone, Default)]
pub struct ColumnRules {
    exclude: Vec<Pattern>,
    mask: Vec<Pattern>,
    salt: Vec<u8>,
}

fn parse_patterns(key: &'static str, items: &[String]) -> Result<Vec<Pattern>, ColumnRuleError> {
    let mut out = Vec::new();
    for p in items
        .iter()
        .flat_map(|p| p.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let parts: Vec<&str> = p.split('.').collect();
        let bad = || ColumnRuleError::Pattern {
            key,
            pattern: p.to_string(),
        };
        let pat = match parts.as_slice() {
            [t, c] => (None, t.to_string(), c.to_string()),
            [d, t, c] => (Some(d.to_string()), t.to_string(), c.to_string()),
            _ => return Err(bad()),
        };
        if pat.1.is_empty() || pat.2.is_empty() || pat.0.as_deref() == Some("") {
            return Err(bad());
        }
        out.push(pat);
    }
    Ok(out)
}

fn hit(pats: &[Pattern], db: &str, table: &str, column: &str) -> bool {
    pats.iter().any(|(d, t, c)| {
        d.as_deref().is_none_or(|d| crate::filter::glob(d, db))
            && crate::filter::glob(t, table)
            && crate::filter::glob(c, column)
    })
}

impl ColumnRules {
    pub fn parse(
        exclude: &[String],
        mask: &[String],
        salt: Option<&str>,
    ) -> Result<ColumnRules, ColumnRuleError> {
        let rules = ColumnRules {
            exclude: parse_patterns("exclude_columns", exclude)?,
            mask: parse_patterns("mask", mask)?,
            salt: salt.unwrap_or_default().as_bytes().to_vec(),
        };
        if !rules.mask.is_empty() && rules.salt.is_empty() {
            return Err(ColumnRuleError::NoSalt);
        }
        Ok(rules)
    }

    pub fn is_empty(&self) -> bool {
        self.exclude.is_empty() && self.mask.is_empty()
    }

    /// What happens to one column.
    pub fn column_rule(&self, db: &str, table: &str, column: &str) -> Rule {
        if hit(&self.exclude, db, table, column) {
            Rule::Excluded
        } else if hit(&self.mask, db, table, column) {
            Rule::Masked
        } else {
            Rule::Kept
        }
    }

    /// The target shape of `tm`, or `None` when no rule touches it.
    pub fn plan(&self, tm: &TableMap) -> Result<Option<Plan>, ColumnRuleError> {
        if self.is_empty() {
            return Ok(None);
        }
        let mut kept = Vec::with_capacity(tm.columns.len());
        let mut columns = Vec::with_capacity(tm.columns.len());
        let mut new_index: HashMap<usize, usize> = HashMap::new();
        let mut touched = false;
        for (i, c) in tm.columns.iter().enumerate() {
            if hit(&self.exclude, &tm.db, &tm.table, &c.name) {
                if tm.primary_key.contains(&i) {
                    return Err(ColumnRuleError::KeyExcluded {
                        table: format!("{}.{}", tm.db, tm.table),
                        column: c.name.clone(),
                    });
                }
                touched = true;
                continue;
            }
            let masked = hit(&self.mask, &tm.db, &tm.table, &c.name);
            touched |= masked;
            new_index.insert(i, columns.len());
            kept.push(Kept { source: i, masked });
            columns.push(if masked { masked_column(c) } else { c.clone() });
        }
        if !touched {
            return Ok(None);
        }
        let table = TableMap {
            table_id: tm.table_id,
            db: tm.db.clone(),
            table: tm.table.clone(),
            primary_key: tm.primary_key.iter().map(|i| new_index[i]).collect(),
            columns,
            full_metadata: tm.full_metadata,
        };
        Ok(Some(Plan {
            table: Arc::new(table),
            kept: Arc::new(kept),
        }))
    }

    /// One row of the source shape in the plan's shape.
    pub fn apply(&self, plan: &Plan, mut values: Vec<Value>) -> Vec<Value> {
        let mut out = Vec::with_capacity(plan.kept.len());
        for k in plan.kept.iter() {
            let v = std::mem::replace(
                values.get_mut(k.source).unwrap_or(&mut Value::Absent),
                Value::Null,
            );
            out.push(if k.masked { self.mask_value(v) } else { v });
        }
        out
    }

    fn mask_value(&self, v: Value) -> Value {
        let mut h = Sha256::new();
        h.update(&self.salt);
        match &v {
            Value::Null | Value::Absent | Value::Invalid { .. } => return v,
            Value::Str(s) => h.update(s.as_bytes()),
            Value::Bin(b) => h.update(b),
            Value::Int(i) => h.update(i.to_string().as_bytes()),
            Value::UInt(u) => h.update(u.to_string().as_bytes()),
            other => h.update(format!("{other:?}").as_bytes()),
        }
        let digest = h.finalize();
        let mut hex = String::with_capacity(64);
        for b in digest {
            hex.push_str(&format!("{b:02x}"));
        }
        Value::Str(hex)
    }
}

/// A masked column holds the hex digest: text, whatever the source type.
fn masked_column(c: &ColumnMeta) -> ColumnMeta {
    ColumnMeta {
        name: c.name.clone(),
        type_code: t::VARCHAR,
        real_type: t::VARCHAR,
        meta: 256,
        nullable: c.nullable,
        ty: ColType::Text {
            len_bytes: 2,
            charset: Charset::Utf8,
        },
        collation: Some(45),
        charset_name: Some("utf8mb4".into()),
        visible: c.visible,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tm() -> TableMap {
        let col = |name: &str| ColumnMeta {
            name: name.into(),
            type_code: t::LONG,
            real_type: t::LONG,
            meta: 0,
            nullable: true,
            ty: ColType::Int {
                bytes: 4,
                unsigned: false,
            },
            collation: None,
            charset_name: None,
            visible: true,
        };
        TableMap {
            table_id: 1,
            db: "shop".into(),
            table: "users".into(),
            columns: vec![col("id"), col("secret"), col("email"), col("n")],
            primary_key: vec![0],
            full_metadata: true,
        }
    }

    #[test]
    fn exclude_and_mask() {
        let r = ColumnRules::parse(
            &["shop.users.secret".into()],
            &["users.email".into()],
            Some("s"),
        )
        .unwrap();
        let p = r.plan(&tm()).unwrap().unwrap();
        let names: Vec<&str> = p.table.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "email", "n"]);
        assert_eq!(p.table.primary_key, vec![0]);
        let row = r.apply(
            &p,
            vec![Value::Int(1), Value::Int(2), Value::Int(3), Value::Null],
        );
        assert_eq!(row[0], Value::Int(1));
        assert_eq!(row[2], Value::Null);
        let Value::Str(h) = &row[1] else {
            panic!("{row:?}")
        };
        assert_eq!(h.len(), 64);
        // same value, same salt: same digest; another salt: another
        let again = r.apply(
            &p,
            vec![Value::Int(1), Value::Null, Value::Int(3), Value::Null],
        );
        assert_eq!(again[1], row[1]);
        let r2 = ColumnRules::parse(&[], &["users.email".into()], Some("t")).unwrap();
        let p2 = r2.plan(&tm()).unwrap().unwrap();
        let other = r2.apply(
            &p2,
            vec![Value::Int(1), Value::Null, Value::Int(3), Value::Null],
        );
        assert_ne!(other[2], row[1]);
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            ColumnRules::parse(&[], &["users.email".into()], None).unwrap_err(),
            ColumnRuleError::NoSalt
        );
        assert!(ColumnRules::parse(&["email".into()], &[], None).is_err());
        let r = ColumnRules::parse(&["shop.users.id".into()], &[], None).unwrap();
        let e = r.plan(&tm()).unwrap_err().to_string();
        assert!(e.contains("primary key") && e.contains("id"), "{e}");
        let none = ColumnRules::parse(&["other.t.c".into()], &[], None).unwrap();
        assert!(none.plan(&tm()).unwrap().is_none());
    }
}
