//! The sink a configuration selects and each sink's own settings, typed.
//!
//! Invariants: a [`SinkSettings`] names a sink of this build ([`SINKS`]) and every setting in it
//! was checked without I/O; the sink crates map these enums onto their own config types (the core
//! crate does not depend on them, so the CLI does the mapping in `cli/sinks.rs`). Defaults live
//! here once: `parquet`, zstd level 1, soft deletes, `auto` compression, no database prefix.

use std::fmt;
use std::str::FromStr;

use super::{choice, key_err, parse_size, ConfigError, FileConfig, Size};

/// The sinks this build has (cargo features).
pub const SINKS: &[&str] = &[
    #[cfg(feature = "parquet")]
    "parquet",
    #[cfg(feature = "delta")]
    "delta",
    #[cfg(feature = "clickhouse")]
    "clickhouse",
];

/// A bad value for one of the enums below: what was given and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{given}`: expected {expected}")]
pub struct BadChoice {
    given: String,
    expected: &'static str,
}

macro_rules! choice_enum {
    ($(#[$m:meta])* $name:ident, $expected:literal { $($(#[$vm:meta])* $variant:ident = $text:literal $(| $alias:literal)*),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vm])* $variant),*
        }

        impl $name {
            /// The name used in the file and on the command line.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = BadChoice;
            fn from_str(s: &str) -> Result<Self, BadChoice> {
                match s {
                    $($text $(| $alias)* => Ok($name::$variant),)*
                    _ => Err(BadChoice { given: s.to_string(), expected: $expected }),
                }
            }
        }
    };
}

choice_enum!(
    /// Which sink.
    SinkKind, "parquet, delta or clickhouse" {
        Parquet = "parquet",
        Delta = "delta",
        ClickHouse = "clickhouse",
    }
);

choice_enum!(
    /// Delta: what a source DELETE does to the target row.
    Deletes, "soft or hard" {
        /// The row stays, marked deleted (`_binlake_deleted`).
        Soft = "soft",
        /// The row is removed.
        Hard = "hard",
    }
);

choice_enum!(
    /// ClickHouse: how inserts are compressed.
    InsertCompression, "auto, lz4 or none" {
        /// LZ4, except to a loopback server (none).
        Auto = "auto",
        Lz4 = "lz4",
        None = "none",
    }
);

/// Parquet's own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ParquetSettings {
    /// zstd level of data files, 1..=22.
    pub zstd_level: i32,
}

/// Delta's own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaSettings {
    pub deletes: Deletes,
    /// Bytes per second commits may rewrite; `None`: no limit.
    pub rewrite_budget: Option<u64>,
    /// `[[layout]]` `partition_by` per table pattern: the partition columns of new tables.
    pub partitions: Vec<(String, Vec<String>)>,
}

/// ClickHouse's own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ClickHouseSettings {
    pub compression: InsertCompression,
    /// Prefix of the target database names (letters, digits and `_`).
    pub database_prefix: String,
    /// A CA bundle (PEM) for an https:// target.
    pub tls_ca: Option<String>,
    /// `[[layout]]` entries, patterns checked.
    pub layouts: Vec<super::LayoutEntry>,
}

/// The selected sink and every sink's settings (those of the other sinks are their defaults or
/// what the file gave; only the selected sink reads its own).
#[derive(Debug, Clone, PartialEq)]
pub struct SinkSettings {
    pub kind: SinkKind,
    pub parquet: ParquetSettings,
    pub delta: DeltaSettings,
    pub clickhouse: ClickHouseSettings,
}

impl SinkSettings {
    /// The sink keys of `c`, validated without I/O; errors name the key.
    pub fn resolve(c: &FileConfig) -> Result<SinkSettings, ConfigError> {
        let kind: SinkKind = choice("sink", c.sink.as_deref(), "parquet")?;
        if !SINKS.contains(&kind.as_str()) {
            return Err(key_err(
                "sink",
                format!(
                    "`{kind}` is not available in this build; expected one of: {}",
                    SINKS.join(", ")
                ),
            ));
        }
        let zstd_level = c.zstd_level.unwrap_or(1);
        if !(1..=22).contains(&zstd_level) {
            return Err(key_err(
                "zstd_level",
                format!("expected 1..=22, got {zstd_level}"),
            ));
        }
        let layouts = c.layout.clone().unwrap_or_default();
        for l in &layouts {
            crate::filter::TableFilter::parse(&[&l.tables])
                .map_err(|e| key_err("layout", e.to_string()))?;
        }
        let mut partitions = Vec::new();
        match kind {
            SinkKind::ClickHouse => {}
            SinkKind::Delta => {
                // Delta: partition columns only
                for l in &layouts {
                    let other = [
                        ("order_by", l.order_by.is_some()),
                        ("ttl", l.ttl.is_some()),
                        ("settings", l.settings.is_some()),
                        ("column_types", !l.column_types.is_empty()),
                    ];
                    if let Some((k, _)) = other.iter().find(|(_, set)| *set) {
                        return Err(key_err(
                            "layout",
                            format!("`{k}` (in the entry for `{}`) applies to the ClickHouse sink; a Delta layout takes `partition_by` (column names)", l.tables),
                        ));
                    }
                    let Some(p) = &l.partition_by else {
                        continue;
                    };
                    let cols: Vec<String> = p
                        .split(',')
                        .map(|c| c.trim().trim_matches('`').to_string())
                        .collect();
                    if cols
                        .iter()
                        .any(|c| c.is_empty() || c.contains(['(', ')', ' ', '\'', '"']))
                    {
                        return Err(key_err(
                            "layout",
                            format!("partition_by `{p}` (in the entry for `{}`): a Delta table is partitioned by columns: names separated by commas, no expressions", l.tables),
                        ));
                    }
                    partitions.push((l.tables.clone(), cols));
                }
            }
            _ if !layouts.is_empty() => {
                return Err(key_err(
                    "layout",
                    format!("table layouts apply to the ClickHouse and Delta sinks; the {kind} sink has none (remove `[[layout]]`)"),
                ));
            }
            _ => {}
        }
        let database_prefix = c.database_prefix.clone().unwrap_or_default();
        if !database_prefix
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        {
            return Err(key_err(
                "database_prefix",
                format!("`{database_prefix}`: use letters, digits and _"),
            ));
        }
        Ok(SinkSettings {
            kind,
            parquet: ParquetSettings { zstd_level },
            delta: DeltaSettings {
                deletes: choice("deletes", c.deletes.as_deref(), "soft")?,
                rewrite_budget: match &c.rewrite_budget {
                    None => Some(32 << 20),
                    Some(Size::Text(t)) if t.trim() == "off" => None,
                    Some(s) => match parse_size("rewrite_budget", s)? {
                        0 => None,
                        n => Some(n as u64),
                    },
                },
                partitions,
            },
            clickhouse: ClickHouseSettings {
                compression: choice("compression", c.compression.as_deref(), "auto")?,
                database_prefix,
                tls_ca: c.clickhouse_tls_ca.clone(),
                layouts: if kind == SinkKind::ClickHouse {
                    layouts
                } else {
                    Vec::new()
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(toml: &str) -> Result<SinkSettings, ConfigError> {
        SinkSettings::resolve(&FileConfig::parse("t", toml).unwrap())
    }

    #[test]
    fn defaults_and_enums() {
        let s = resolve("").unwrap();
        assert_eq!(s.kind, SinkKind::Parquet);
        assert_eq!(s.parquet.zstd_level, 1);
        assert_eq!(s.delta.deletes, Deletes::Soft);
        assert_eq!(s.clickhouse.compression, InsertCompression::Auto);
        let s = resolve("deletes = \"hard\"\ncompression = \"none\"\n").unwrap();
        assert_eq!(s.delta.deletes, Deletes::Hard);
        assert_eq!(s.clickhouse.compression, InsertCompression::None);
        assert_eq!(resolve("").unwrap().delta.rewrite_budget, Some(32 << 20));
        for (toml, want) in [
            ("rewrite_budget = \"8MiB\"", Some(8 << 20)),
            ("rewrite_budget = \"off\"", None),
            ("rewrite_budget = 0", None),
            ("rewrite_budget = 1000", Some(1000)),
        ] {
            assert_eq!(resolve(toml).unwrap().delta.rewrite_budget, want, "{toml}");
        }
        for (t, s) in [
            (SinkKind::Parquet, "parquet"),
            (SinkKind::Delta, "delta"),
            (SinkKind::ClickHouse, "clickhouse"),
        ] {
            assert_eq!(s.parse::<SinkKind>().unwrap(), t);
            assert_eq!(t.to_string(), s);
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        for (toml, key, want) in [
            ("deletes = \"gone\"", "deletes", "soft or hard"),
            ("compression = \"gzip\"", "compression", "auto, lz4 or none"),
            ("zstd_level = 30", "zstd_level", "1..=22"),
            (
                "rewrite_budget = \"fast\"",
                "rewrite_budget",
                "size like 64MiB",
            ),
            ("database_prefix = \"a-b\"", "database_prefix", "letters"),
            ("sink = \"kafka\"", "sink", "parquet, delta or clickhouse"),
            (
                "[[layout]]\ntables = \"a.b\"\n",
                "layout",
                "apply to the ClickHouse and Delta sinks",
            ),
            (
                "sink = \"delta\"\n[[layout]]\ntables = \"a.b\"\norder_by = \"id\"\n",
                "layout",
                "`order_by`",
            ),
            (
                "sink = \"delta\"\n[[layout]]\ntables = \"a.b\"\npartition_by = \"toDate(ts)\"\n",
                "layout",
                "no expressions",
            ),
            (
                "sink = \"clickhouse\"\n[[layout]]\ntables = \"!\"\n",
                "layout",
                "table pattern",
            ),
        ] {
            let e = resolve(toml).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")) && e.contains(want), "{e}");
        }
    }
}
