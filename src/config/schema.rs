//! The JSON schema of the config file and the key reference, both generated from the key
//! declarations ([`super::keys`]): `schemas/config.schema.json` (for editors and CI; `binlake
//! schema` prints it) and `docs/configuration.md`. The tests below fail when either checked-in
//! file is stale, and check `examples/binlake.toml` against the schema.
//!
//! [`validate`] checks a value against the subset of JSON Schema the generated schema uses
//! (`type`, `properties`, `additionalProperties: false`, `required`, `items`, `anyOf`, `enum`,
//! `minimum`, `maximum`, `pattern` anchored regexes are not checked, `minProperties`,
//! `maxProperties`): enough to catch a misspelt key or a wrong type, without a validator crate.

use serde_json::{json, Map, Value};

use super::keys::{keys, SINK_GROUPS};

/// The schema of the config file.
pub fn schema() -> Value {
    let all = keys();
    let mut props = Map::new();
    for k in &all {
        let mut s = k.schema.clone();
        s["description"] = Value::String(k.doc.clone());
        props.insert(k.name.to_string(), s);
    }
    // `sink` is a name, or the `[sink.<name>]` table holding that sink's keys
    let mut tables = Map::new();
    for (name, group) in SINK_GROUPS {
        let own: Map<String, Value> = all
            .iter()
            .filter(|k| k.group == group)
            .map(|k| (k.name.to_string(), props[k.name].clone()))
            .collect();
        tables.insert(
            name.to_string(),
            json!({ "type": "object", "additionalProperties": false, "properties": own }),
        );
    }
    let names: Vec<&str> = SINK_GROUPS.iter().map(|(n, _)| *n).collect();
    let doc = props["sink"]["description"].clone();
    props.insert(
        "sink".into(),
        json!({
            "description": doc,
            "anyOf": [
                { "type": "string", "enum": names },
                { "type": "object", "additionalProperties": false,
                  "minProperties": 1, "maxProperties": 1, "properties": tables }
            ]
        }),
    );
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/binlake/binlake/schemas/config.schema.json",
        "title": "binlake configuration (TOML)",
        "description": "Generated from src/config/keys.rs by `binlake schema`; do not edit.",
        "type": "object",
        "additionalProperties": false,
        "properties": props
    })
}

/// The schema as the checked-in file holds it.
pub fn schema_text() -> String {
    serde_json::to_string_pretty(&schema()).expect("a schema serialises") + "\n"
}

/// The key reference (`docs/configuration.md`).
pub fn reference() -> String {
    let mut o = String::from(
        "# Configuration keys\n\n\
         Generated from `src/config/keys.rs` (`binlake schema --reference`); do not edit.\n\n\
         Every key can be set in the TOML file given with `--config`, and (except the file-only\n\
         ones) with the flag of the same name, which wins: `max_batch_rows` is\n\
         `--max-batch-rows`. `${NAME}` in a string value is the environment variable NAME.\n\
         A sink's keys may also go in its table: `[sink.delta]` with `deletes = \"hard\"` is\n\
         `sink = \"delta\"` with `deletes = \"hard\"`. Editors can check a file against\n\
         `schemas/config.schema.json`.\n",
    );
    let mut group = "";
    for k in keys() {
        if k.group != group {
            group = k.group;
            let title = match group {
                "SourceFlags" => "Source",
                "TablesFlags" => "Tables",
                "TargetFlags" => "Target",
                "ParquetFlags" => "Parquet sink (`[sink.parquet]`)",
                "DeltaFlags" => "Delta sink (`[sink.delta]`)",
                "ClickHouseFlags" => "ClickHouse sink (`[sink.clickhouse]`)",
                "PipelineFlags" => "Pipeline (`replicate`)",
                "LogFlags" => "Logging",
                _ => "File only (no flag)",
            };
            o.push_str(&format!(
                "\n## {title}\n\n| key | flag | |\n| --- | --- | --- |\n"
            ));
        }
        let flag = if k.group == "file" {
            "-".to_string()
        } else {
            format!("`--{}`", k.name.replace('_', "-"))
        };
        o.push_str(&format!(
            "| `{}` | {flag} | {} |\n",
            k.name,
            k.doc.replace('\n', " ").replace('|', "\\|")
        ));
    }
    o
}

/// Where `value` breaks `schema` (empty: it conforms), each as `path: what`.
pub fn validate(schema: &Value, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, value, "$", &mut errors);
    errors
}

fn check(s: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    if let Some(any) = s.get("anyOf").and_then(Value::as_array) {
        let fits = any.iter().any(|alt| validate(alt, v).is_empty());
        if !fits {
            errors.push(format!("{path}: matches none of the allowed forms"));
        }
        return;
    }
    if let Some(t) = s.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "boolean" => v.is_boolean(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            _ => true,
        };
        if !ok {
            errors.push(format!("{path}: expected {t}, found {v}"));
            return;
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            errors.push(format!(
                "{path}: {v} is not one of {}",
                Value::Array(e.clone())
            ));
        }
    }
    if let Some(n) = v.as_f64() {
        if s.get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n < m)
        {
            errors.push(format!("{path}: {n} is below the minimum"));
        }
        if s.get("maximum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n > m)
        {
            errors.push(format!("{path}: {n} is above the maximum"));
        }
    }
    if let Some(items) = s.get("items") {
        for (i, x) in v.as_array().into_iter().flatten().enumerate() {
            check(items, x, &format!("{path}[{i}]"), errors);
        }
    }
    if let Some(obj) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        for (k, x) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => check(ps, x, &format!("{path}.{k}"), errors),
                None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    errors.push(format!("{path}: unknown key `{k}`"))
                }
                None => {}
            }
        }
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(r) = r.as_str().filter(|r| !obj.contains_key(*r)) {
                errors.push(format!("{path}: `{r}` is required"));
            }
        }
        let n = obj.len() as u64;
        if s.get("minProperties")
            .and_then(Value::as_u64)
            .is_some_and(|m| n < m)
            || s.get("maxProperties")
                .and_then(Value::as_u64)
                .is_some_and(|m| n > m)
        {
            errors.push(format!("{path}: {n} keys is not allowed here"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_file(rel: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn every_key_has_a_doc() {
        for k in keys() {
            assert!(k.doc.len() > 10, "key `{}` has no doc", k.name);
        }
    }

    #[test]
    fn checked_in_schema_and_reference_are_current() {
        assert!(
            repo_file("schemas/config.schema.json") == schema_text(),
            "schemas/config.schema.json is stale: run `cargo run -- schema > schemas/config.schema.json`"
        );
        assert!(
            repo_file("docs/configuration.md") == reference(),
            "docs/configuration.md is stale: run `cargo run -- schema --reference > docs/configuration.md`"
        );
    }

    fn toml_json(text: &str) -> Value {
        serde_json::to_value(toml::from_str::<toml::Table>(text).unwrap()).unwrap()
    }

    #[test]
    fn the_example_config_validates_against_the_schema() {
        let text = repo_file("examples/binlake.toml");
        let errors = validate(&schema(), &toml_json(&text));
        assert!(errors.is_empty(), "examples/binlake.toml: {errors:?}");
    }

    #[test]
    fn the_schema_refuses_what_binlake_refuses() {
        let s = schema();
        for (bad, why) in [
            ("max_batch_rowz = 5", "unknown key"),
            ("max_batch_rows = \"many\"", "expected integer"),
            ("sink = \"orc\"", "none of the allowed"),
            ("[sink.delta]\ncompression = \"lz4\"", "none of the allowed"),
            ("[[backfill]]\ntables = \"a.*\"", "`schedule` is required"),
        ] {
            let errors = validate(&s, &toml_json(bad));
            assert!(errors.iter().any(|e| e.contains(why)), "{bad}: {errors:?}");
        }
        let good = "source = \"mysql://r@h/\"\n[sink.delta]\ndeletes = \"hard\"\n";
        assert_eq!(validate(&s, &toml_json(good)), Vec::<String>::new());
        let fc = crate::config::FileConfig::parse("t", good).unwrap();
        assert_eq!(fc.sink.as_deref(), Some("delta"));
        assert_eq!(fc.deletes.as_deref(), Some("hard"));
        let e = crate::config::FileConfig::parse("t", "[sink.delta]\ncompression = \"lz4\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sink.delta.compression"), "{e}");
    }
}
