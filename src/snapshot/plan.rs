//! Planning a table's snapshot: its description, its key ranges (split points for parallel
//! reading, or the ranges of a snapshot in progress), and the queue of ranges still to read.
//!
//! Invariants: the ranges cover the key space exactly once (each `[lo, hi)`, the first without
//! `lo`, the last without `hi`); a resumed snapshot keeps the ranges it was planned with, so a
//! range's `after` key still means the same thing; ranges already done are not queued again.

use super::*;

/// Describes the table, splits it into key ranges (or takes the ranges of the progress), and
/// queues the ranges not done.
#[allow(clippy::too_many_arguments)]
pub(super) async fn plan(
    conn: &mut mysql_async::Conn,
    queue: &Mutex<VecDeque<Work>>,
    notify: &Notify,
    tx: &mpsc::Sender<SnapshotMsg>,
    id: TableId,
    mut progress: SnapshotProgress,
    floor: BinlogPos,
    cfg: &SnapshotConfig,
) -> Result<(), Failure> {
    let Some(table) = values::describe(conn, &id.db, &id.table).await? else {
        // (as the server says it: the stream's DROP or RENAME decides what follows)
        return Err(SourceError::Server {
            code: 1146,
            message: format!("table {id} does not exist at the source"),
            context: "planning a snapshot".into(),
        }
        .into());
    };
    if let Some(c) = table
        .map
        .columns
        .iter()
        .find(|c| matches!(c.ty, ColType::Unsupported { .. }))
    {
        return Err(SourceError::Definite(format!(
            "column `{}` of {id} has a type the snapshot cannot read",
            c.name
        ))
        .into());
    }
    if table.keyless() {
        // no key to split on or to continue after: read whole in one chunk, again from the
        // start if interrupted (the chunk replaces what the target holds below its version)
        if progress.filter.is_some() {
            return Err(SourceError::Definite(format!(
                "{id} has no primary key: it is read whole (a backfill cannot select part of it with --where)"
            ))
            .into());
        }
        progress.ranges = vec![RangeProgress::default()];
        progress.estimate = table.estimate;
        info!(table = %id, estimate = table.estimate, reason = %progress.reason, "keyless table planned: read whole in one consistent snapshot");
        tx.send(SnapshotMsg::Planned {
            table: id.clone(),
            progress: progress.clone(),
        })
        .await
        .map_err(|_| Failure::Closed)?;
        queue.lock().expect("queue").push_back(Work::Whole {
            table: Arc::new(table),
            id,
            floor,
            plan: progress.started_at_us,
        });
        notify.notify_waiters();
        return Ok(());
    }
    if progress.ranges.is_empty() {
        let splits = split_points(conn, &table, &id, cfg, progress.filter.is_some()).await?;
        let mut bounds: Vec<Option<serde_json::Value>> = vec![None];
        bounds.extend(splits.into_iter().map(Some));
        bounds.push(None);
        progress.ranges = bounds
            .windows(2)
            .map(|w| RangeProgress {
                lo: w[0].clone(),
                hi: w[1].clone(),
                after: None,
                done: false,
            })
            .collect();
        progress.estimate = table.estimate;
        info!(table = %id, ranges = progress.ranges.len(), estimate = table.estimate, reason = %progress.reason, filter = ?progress.filter, "snapshot planned");
    } else {
        info!(table = %id, ranges = progress.ranges.iter().filter(|r| !r.done).count(), rows = progress.rows, "snapshot resumes after its last committed chunk");
    }
    let table = Arc::new(table);
    // The plan reaches the pipeline before any chunk of it (same channel, sent first).
    tx.send(SnapshotMsg::Planned {
        table: id.clone(),
        progress: progress.clone(),
    })
    .await
    .map_err(|_| Failure::Closed)?;
    {
        let mut q = queue.lock().expect("queue");
        for (i, r) in progress.ranges.iter().enumerate() {
            if !r.done {
                q.push_back(Work::Range {
                    table: table.clone(),
                    id: id.clone(),
                    range: i,
                    progress: r.clone(),
                    filter: progress.filter.clone(),
                    floor: floor.clone(),
                    plan: progress.started_at_us,
                });
            }
        }
        if !progress.absent.is_empty() {
            q.push_back(Work::Absent {
                table: table.clone(),
                id: id.clone(),
                keys: progress.absent.clone(),
                floor: floor.clone(),
                plan: progress.started_at_us,
            });
        }
    }
    notify.notify_waiters();
    Ok(())
}

/// Keys per query of [`read_absent`].
/// Keys that split the table into `parallelism` ranges of about equal size (none for a small
/// table). A single integer key is split arithmetically; other keys by reading the key at
/// evenly spaced offsets of the primary key.
async fn split_points(
    conn: &mut mysql_async::Conn,
    table: &SnapTable,
    id: &TableId,
    cfg: &SnapshotConfig,
    filtered: bool,
) -> Result<Vec<serde_json::Value>, Failure> {
    let n = cfg.parallelism.max(1) as u64;
    if n < 2 || table.estimate < 2 * cfg.chunk_rows as u64 || filtered {
        return Ok(vec![]);
    }
    let from = format!("{}.{}", ident(&id.db), ident(&id.table));
    let keys: Vec<_> = table.key_columns().collect();
    let q = |e| SourceError::from_mysql(e, "planning a snapshot");
    let k0 = &table.map.columns[table.map.primary_key[0]];
    if keys.len() == 1 && matches!(k0.ty, ColType::Int { .. }) {
        let k = ident(&keys[0].name);
        let row: Option<(Option<i128>, Option<i128>)> = conn
            .query_first(format!(
                "SELECT CAST(MIN({k}) AS DECIMAL(20,0)), CAST(MAX({k}) AS DECIMAL(20,0)) FROM {from}"
            ))
            .await
            .map_err(q)?;
        let Some((Some(lo), Some(hi))) = row else {
            return Ok(vec![]);
        };
        let unsigned = matches!(k0.ty, ColType::Int { unsigned: true, .. });
        let mut out = Vec::new();
        for i in 1..n as i128 {
            let s = lo + (hi - lo) * i / n as i128;
            if s > lo {
                let cell = if unsigned {
                    My::UInt(s as u64)
                } else {
                    My::Int(s as i64)
                };
                out.push(key_json(&[cell]));
            }
        }
        out.dedup();
        return Ok(out);
    }
    let cols = keys
        .iter()
        .map(|c| ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = Vec::new();
    for i in 1..n {
        let offset = table.estimate * i / n;
        let row: Option<mysql_async::Row> = conn
            .query_first(format!(
                "SELECT {cols} FROM {from} ORDER BY {cols} LIMIT 1 OFFSET {offset}"
            ))
            .await
            .map_err(q)?;
        if let Some(r) = row {
            out.push(key_json(&r.unwrap()));
        }
    }
    out.dedup();
    Ok(out)
}
