//! `[[pipelines]]`: several independent pipelines in one process (fan-in). Each entry is a
//! `name` and the keys that differ per source ([`PIPELINE_KEYS`]) over the top level's; the
//! target, sink, batching, logs and metrics are the process's.
//!
//! Invariants: an entry's error names the entry and the key; names are unique; nothing two
//! pipelines would share by accident (a top-level `server_id` or `control_addr`, one
//! `control_addr` in two entries) is accepted.

use serde::Deserialize;

use super::{key_err, keys, ConfigError, FileConfig, Settings};

/// The keys a `[[pipelines]]` entry may set besides `name`: what differs per source. The
/// others (target, sink, batching, logs, metrics) are the process's.
const PIPELINE_KEYS: [&str; 18] = [
    "source",
    "mode",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "server_id",
    "exclude_server_ids",
    "exclude_gtid_domains",
    "exclude_columns",
    "mask",
    "mask_salt",
    "start_at",
    "tables",
    "map",
    "origin_in_key",
    "outbox",
    "backfill",
    "control_addr",
];

impl FileConfig {
    /// Each `[[pipelines]]` entry's name and its keys over the top level's (`pipeline` set to
    /// the name); the entries' own errors name the entry and the key.
    pub fn pipeline_configs(&self) -> Result<Vec<(String, FileConfig)>, ConfigError> {
        let Some(entries) = self.pipelines.as_ref() else {
            return Ok(Vec::new());
        };
        if entries.is_empty() {
            return Err(key_err(
                "pipelines",
                "is empty: give at least one [[pipelines]] entry with a `name`, or leave it out",
            ));
        }
        let mut out: Vec<(String, FileConfig)> = Vec::new();
        for e in entries {
            let name = match e.get("name") {
                Some(toml::Value::String(n)) => n.clone(),
                _ => return Err(key_err(
                    "pipelines.name",
                    "required in every [[pipelines]] entry: a string (letters, digits, - and _)",
                )),
            };
            if out.iter().any(|(n, _)| *n == name) {
                return Err(key_err("pipelines.name", format!("`{name}` is used by two entries; each pipeline needs its own name (its checkpoint in the target)")));
            }
            let in_entry = |message: String| ConfigError::Pipeline {
                name: name.clone(),
                source: Box::new(ConfigError::Parse {
                    path: "[[pipelines]]".into(),
                    message,
                }),
            };
            let mut own = e.clone();
            own.remove("name");
            if let Some(k) = own.keys().find(|k| !PIPELINE_KEYS.contains(&k.as_str())) {
                return Err(in_entry(if keys::keys().iter().any(|d| d.name == k) {
                    format!("`{k}` is shared by every pipeline: set it at the top level. An entry takes: {}", PIPELINE_KEYS.join(", "))
                } else {
                    format!(
                        "unknown key `{k}`; an entry takes: name, {}",
                        PIPELINE_KEYS.join(", ")
                    )
                }));
            }
            let own = FileConfig::deserialize(toml::Value::Table(own))
                .map_err(|e| in_entry(e.to_string()))?;
            let mut merged = self.clone().overlay(own);
            merged.pipelines = None;
            merged.pipeline = Some(name.clone());
            out.push((name, merged));
        }
        Ok(out)
    }
}

impl Settings {
    /// The settings of every pipeline: one, or one per `[[pipelines]]` entry (each its entry's
    /// keys over the top level's). With `[[pipelines]]`, a `pipeline` key (`--pipeline`)
    /// selects one entry by name.
    pub fn resolve_all(c: &FileConfig) -> Result<Vec<Settings>, ConfigError> {
        let Some(entries) = c.pipelines.as_ref() else {
            return Ok(vec![Settings::resolve(c)?]);
        };
        let mut out = Vec::new();
        for (name, merged) in c.pipeline_configs()? {
            let mut one = Settings::resolve(&merged).map_err(|source| ConfigError::Pipeline {
                name,
                source: Box::new(source),
            })?;
            // one source down must not stop the other pipelines
            // (a run that is to end when caught up stops that pipeline instead)
            one.pipeline.wait_for_source = !one.pipeline.exit_when_caught_up;
            out.push(one);
        }
        let names: Vec<String> = out.iter().map(|s| s.pipeline.name.clone()).collect();
        // last-writer-wins ties go to the greater name: the rank is the place in name order
        let mut ranked: Vec<&String> = names.iter().collect();
        ranked.sort();
        if ranked.len() > crate::lww::RANKS && c.conflict.is_some() {
            return Err(key_err(
                "conflict",
                format!(
                    "last_writer_wins orders at most {} pipelines; this config has {}",
                    crate::lww::RANKS,
                    ranked.len()
                ),
            ));
        }
        for s in out.iter_mut() {
            if s.conflict.is_some() {
                let rank = ranked
                    .iter()
                    .position(|n| **n == s.pipeline.name)
                    .unwrap_or(0);
                s.conflict = Some(rank as u8);
            }
        }
        if entries.len() > 1 {
            if c.server_id.is_some() {
                return Err(key_err("server_id", format!("set at the top level, every pipeline ({}) would register with the same replica id, and a server drops one of two replicas with the same id. Set it in each [[pipelines]] entry, or leave it out (each pipeline's default differs)", names.join(", "))));
            }
            if c.control_addr.is_some() {
                return Err(key_err("control_addr", "set at the top level, every pipeline would listen on it. Give each [[pipelines]] entry its own control_addr"));
            }
            let addrs: Vec<&String> = out
                .iter()
                .filter_map(|s| s.pipeline.control_addr.as_ref())
                .collect();
            if let Some(a) = addrs
                .iter()
                .find(|a| addrs.iter().filter(|b| b == a).count() > 1)
            {
                return Err(key_err(
                    "pipelines.control_addr",
                    format!("`{a}` is given to two pipelines; each needs its own"),
                ));
            }
        }
        if let Some(want) = &c.pipeline {
            out.retain(|s| &s.pipeline.name == want);
            if out.is_empty() {
                return Err(key_err(
                    "pipeline",
                    format!(
                        "`{want}`: no [[pipelines]] entry has this name; they are: {}",
                        names.join(", ")
                    ),
                ));
            }
        }
        Ok(out)
    }
}

/// `conflict`, checked: `Some` when last-writer-wins applies to the pipeline.
pub(super) fn conflict_policy(c: &FileConfig) -> Result<Option<()>, ConfigError> {
    match c.conflict.as_deref().map(str::trim) {
        None => Ok(None),
        Some("last_writer_wins") if c.origin_in_key.unwrap_or(false) => Ok(None),
        Some("last_writer_wins") => {
            if c.deletes.as_deref().map(str::trim) == Some("hard") {
                return Err(key_err(
                    "conflict",
                    "last_writer_wins needs tombstones: with deletes = \"hard\" a row a source deletes is gone, and an older row of the same key that a lagging source brings later would come back. Use deletes = \"soft\"",
                ));
            }
            if c.outbox.as_ref().is_some_and(|o| !o.is_empty()) {
                return Err(key_err(
                    "conflict",
                    "the outbox's delivery marks count in the source's own versions, which last_writer_wins replaces: give the outbox a pipeline of its own without `conflict`",
                ));
            }
            Ok(Some(()))
        }
        Some(p @ ("first_writer_wins" | "merge_columns" | "reject")) => Err(key_err(
            "conflict",
            format!("`{p}` is not built yet; last_writer_wins is (or keep the sources' rows apart with origin_in_key = true)"),
        )),
        Some(other) => Err(key_err(
            "conflict",
            format!("`{other}`: expected last_writer_wins (first_writer_wins, merge_columns and reject are not built yet)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn pipelines_take_their_own_keys_over_the_top_level() {
        let text = "target='/t'\ntables='shop.*'\nmax_latency='2s'\n[[pipelines]]\nname='eu'\nsource='mysql://a@h:1'\nmap={ 'shop.*' = 'eu.{table}' }\n[[pipelines]]\nname='us'\nsource='mysql://b@h:2'\ntables='crm.*'\n";
        let c = FileConfig::parse("x.toml", text).unwrap();
        let all = Settings::resolve_all(&c).unwrap();
        assert_eq!(all.len(), 2);
        let (eu, us) = (&all[0], &all[1]);
        assert_eq!(
            (eu.pipeline.name.as_str(), us.pipeline.name.as_str()),
            ("eu", "us")
        );
        assert_eq!(eu.source.url, "mysql://a@h:1");
        assert!(eu.source.filter.matches("shop", "x") && !us.source.filter.matches("shop", "x"));
        assert_eq!(us.pipeline.max_latency, Duration::from_secs(2));
        assert_ne!(eu.source.replica_server_id, us.source.replica_server_id);
        assert!(eu.pipeline.wait_for_source);
        let t = |s: &str| s.parse::<binlake_sink::TableId>().unwrap();
        assert_eq!(eu.map.target(&t("shop.a")).unwrap(), t("eu.a"));
        assert_eq!(us.map.target(&t("shop.a")).unwrap(), t("shop.a"));
        // --pipeline selects one
        let mut one = c.clone();
        one.pipeline = Some("us".into());
        let sel = Settings::resolve_all(&one).unwrap();
        assert_eq!(sel.len(), 1);
        assert_eq!(sel[0].pipeline.name, "us");
        one.pipeline = Some("asia".into());
        let e = Settings::resolve_all(&one).unwrap_err().to_string();
        assert!(e.contains("asia") && e.contains("eu, us"), "{e}");
    }

    /// `conflict`: ranks follow the names (ties go to the greater), shards keep their own
    /// versions, and the policies not built, hard deletes and an outbox are refused by name.
    #[test]
    fn conflict_ranks_pipelines_by_name() {
        let text = "target='/t'\nconflict='last_writer_wins'\n[[pipelines]]\nname='us'\nsource='mysql://a@h:1'\n[[pipelines]]\nname='eu'\nsource='mysql://b@h:2'\n[[pipelines]]\nname='shard'\nsource='mysql://c@h:3'\norigin_in_key=true\n";
        let all = Settings::resolve_all(&FileConfig::parse("x.toml", text).unwrap()).unwrap();
        let rank: Vec<Option<u8>> = all.iter().map(|s| s.conflict).collect();
        assert_eq!(rank, vec![Some(2), Some(0), None]);
        assert!(all[0].pipeline.lww.is_some() && all[2].pipeline.lww.is_none());
        let base = "target='/t'\nsource='mysql://a@h:1'\n";
        for (extra, want) in [
            ("conflict='reject'\n", "`reject` is not built yet"),
            ("conflict='newest'\n", "expected last_writer_wins"),
            (
                "conflict='last_writer_wins'\nsink='delta'\ndeletes='hard'\n",
                "tombstones",
            ),
        ] {
            let c = FileConfig::parse("x.toml", &format!("{base}{extra}")).unwrap();
            let e = Settings::resolve_all(&c).unwrap_err().to_string();
            assert!(e.contains("conflict") && e.contains(want), "{extra}: {e}");
        }
    }

    #[test]
    fn bad_pipelines_entries_are_named() {
        let base = "target='/t'\nsource='mysql://a@h:1'\n";
        for (extra, want) in [
            ("[[pipelines]]\nsource='mysql://b@h:2'\n", "pipelines.name"),
            ("[[pipelines]]\nname='a'\n[[pipelines]]\nname='a'\n", "used by two entries"),
            ("[[pipelines]]\nname='a'\nmax_latency='1s'\n", "`max_latency` is shared"),
            ("[[pipelines]]\nname='a'\nsorce='x'\n", "unknown key `sorce`"),
            ("[[pipelines]]\nname='a b'\n", "`a b`"),
            ("[[pipelines]]\nname='a'\nmap={ 'shop.*' = 'w' }\n", "[[pipelines]] `a`: config key `map`"),
            ("server_id=5\n[[pipelines]]\nname='a'\n[[pipelines]]\nname='b'\n", "`server_id`"),
            ("control_addr='7000'\n[[pipelines]]\nname='a'\n[[pipelines]]\nname='b'\n", "`control_addr`"),
            ("[[pipelines]]\nname='a'\ncontrol_addr='7000'\n[[pipelines]]\nname='b'\ncontrol_addr='7000'\n", "two pipelines"),
        ] {
            let text = format!("{base}{extra}");
            let e = FileConfig::parse("x.toml", &text)
                .and_then(|c| Settings::resolve_all(&c))
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{extra}: {e}");
        }
    }
}
