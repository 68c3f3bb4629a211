//! `binlake validate`: compares the target's current state with the source, table by table,
//! and with `--repair` queues backfills of the key ranges that differ.

use std::process::ExitCode;

use anyhow::Context;
use binlake::source;

use binlake::config::Settings;

use crate::cli::sinks::{build_sink, settings_sink, SinkOpts};
use crate::{resolve, ValidateArgs};

pub(crate) async fn validate(v: ValidateArgs) -> anyhow::Result<ExitCode> {
    let all = match resolve(v.config.load(&[&v.source, &v.tables, &v.target, &v.log])) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    if all.len() > 1 && v.repair {
        eprintln!("error: --repair with [[pipelines]]: name the pipeline to repair with --pipeline (its control_addr is the --control to give)");
        return Ok(ExitCode::from(2));
    }
    let several = all.len() > 1;
    let mut code = ExitCode::SUCCESS;
    for settings in &all {
        if several {
            println!("== pipeline {}", settings.pipeline.name);
        }
        if validate_one(&v, settings.clone()).await? != ExitCode::SUCCESS {
            code = ExitCode::from(1);
        }
    }
    // With every pipeline validated (no --pipeline), a table the shards share holds nothing
    // else: each shard was compared with its own rows above, and here no row of another origin
    // is left (a pipeline removed from the config, a name changed).
    if v.target.target.pipeline.is_none() && !union_of_shards(&all).await? {
        code = ExitCode::from(1);
    }
    Ok(code)
}

/// Checks that each table shared by several pipelines (`origin_in_key` or `conflict`) holds
/// live rows of this config's pipelines only; false when one holds rows of another origin.
async fn union_of_shards(all: &[Settings]) -> anyhow::Result<bool> {
    let shards: Vec<&Settings> = all
        .iter()
        .filter(|s| s.origin_in_key || s.conflict.is_some())
        .collect();
    let names: Vec<&str> = shards.iter().map(|s| s.pipeline.name.as_str()).collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut ok = true;
    for s in &shards {
        let opts = source::parse_url(&s.source.url).map_err(anyhow::Error::msg)?;
        for t in binlake::snapshot::list_tables(&opts, &s.source.filter).await? {
            let Ok(to) = s.map.target(&t) else { continue };
            if !seen.insert(to.clone()) {
                continue;
            }
            let Some(desc) = binlake::validate::describe_for_repair(&opts, &t).await? else {
                continue;
            };
            if desc.keyless() {
                continue;
            }
            let key: Vec<String> = desc.key_columns().map(|c| c.name.clone()).collect();
            // the whole table, every origin (not through the pipeline's mapping)
            let mut raw = build_sink(&SinkOpts {
                target: &s.target,
                pipeline: &s.pipeline.name,
                sink: &s.sink,
                maintenance: &s.maintenance,
            })?;
            let rows = binlake::validate::live_rows_by_origin(
                &raw.read_table_whole(&to).await?,
                &key,
                s.origin_in_key,
            )?;
            let foreign: Vec<String> = rows
                .iter()
                .filter(|(o, _)| !names.contains(&o.as_str()))
                .map(|(o, n)| format!("{n} of `{o}`"))
                .collect();
            if foreign.is_empty() {
                println!(
                    "{to}: the union of its sources ({}): {} live rows",
                    names.join(", "),
                    rows.values().sum::<u64>()
                );
            } else {
                ok = false;
                println!(
                    "{to}: holds rows of origins no pipeline of this config replicates: {}",
                    foreign.join(", ")
                );
            }
        }
    }
    Ok(ok)
}

/// `validate` of one pipeline: its source's tables against their (mapped) target tables.
async fn validate_one(v: &ValidateArgs, settings: Settings) -> anyhow::Result<ExitCode> {
    let mut sink = settings_sink(&settings)?;
    let opts = source::parse_url(&settings.source.url).map_err(anyhow::Error::msg)?;
    let tables = binlake::snapshot::list_tables(&opts, &settings.source.filter).await?;
    let mut all_equal = true;
    // unequal tables that a backfill cannot repair (rows only in the target, skipped tables)
    let mut unrepairable = false;
    let mut to_repair = Vec::new();
    for t in &tables {
        let r = binlake::validate::validate_table(
            &opts,
            sink.as_mut(),
            t,
            v.chunk,
            &settings.pipeline.columns,
            settings.conflict.map(|_| settings.pipeline.name.as_str()),
        )
        .await?;
        println!("{r}");
        if !r.equal() {
            all_equal = false;
            if r.skipped.is_some() || r.keyless {
                unrepairable = true;
            }
            if r.keyless {
                println!("  {t}: a table without a primary key cannot be repaired by a backfill; rebuild it");
                continue;
            }
            let extra_unreadable =
                !r.only_in_target.is_empty() && r.only_in_target_cells.is_empty();
            if extra_unreadable {
                unrepairable = true;
                println!("  {t}: rows only in the target with a key type (or column rule) that a repair cannot read back; rebuild the table to drop them");
            }
            if !r.different.is_empty() || !r.only_in_target_cells.is_empty() {
                to_repair.push((t.clone(), r));
            }
        }
    }
    if !v.repair || to_repair.is_empty() {
        return Ok(if all_equal {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    // when each table was last loaded, before the request (a repair loads it again)
    let before = sink
        .read_checkpoint()
        .await?
        .map(|c| c.loaded)
        .unwrap_or_default();
    for (t, r) in &to_repair {
        let desc = binlake::validate::describe_for_repair(&opts, t)
            .await?
            .context("table vanished")?;
        let preds: Vec<String> = r
            .different
            .iter()
            .filter_map(|c| binlake::validate::range_predicate(&desc, &c.lo, &c.hi))
            .map(|p| format!("({p})"))
            .collect();
        let absent: Vec<serde_json::Value> = r
            .only_in_target_cells
            .iter()
            .take(binlake::control::MAX_ABSENT_KEYS)
            .cloned()
            .collect();
        if absent.len() < r.only_in_target_cells.len() {
            unrepairable = true;
            println!(
                "  {t}: {} rows only in the target; this repair checks the first {}, run validate --repair again for the rest",
                r.only_in_target_cells.len(),
                absent.len()
            );
        }
        let req = binlake::control::BackfillRequest {
            tables: t.to_string(),
            filter: (!preds.is_empty()).then(|| preds.join(" OR ")),
            absent,
        };
        match binlake::control::request_backfill(&v.control, &req).await {
            Ok(_) => println!(
                "{t}: repair queued: {} key range(s) backfilled, {} key(s) only in the target checked at the source",
                preds.len(),
                req.absent.len()
            ),
            Err(e) => {
                eprintln!("error: {t}: repair refused: {e}");
                return Ok(ExitCode::from(1));
            }
        }
    }
    // wait for the repairs (each table loaded again after the request), then check again
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let cp = sink.read_checkpoint().await?;
        let done = cp.as_ref().is_some_and(|c| {
            to_repair
                .iter()
                .all(|(t, _)| !c.snapshots.contains_key(t) && c.loaded.get(t) > before.get(t))
        });
        if done {
            break;
        }
        if started.elapsed() > std::time::Duration::from_secs(1800) {
            anyhow::bail!("the repair backfills did not finish within 30 minutes");
        }
    }
    let mut equal = !unrepairable;
    for (t, _) in &to_repair {
        let r = binlake::validate::validate_table(
            &opts,
            sink.as_mut(),
            t,
            v.chunk,
            &settings.pipeline.columns,
            settings.conflict.map(|_| settings.pipeline.name.as_str()),
        )
        .await?;
        println!("after repair: {r}");
        equal &= r.equal();
    }
    Ok(if equal {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
