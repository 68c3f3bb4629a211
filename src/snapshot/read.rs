//! Reading key ranges chunk by chunk: the keyset queries, the bounds of each read, and the rows
//! as values or (the fast path) straight into Arrow columns.
//!
//! Invariants:
//! - A chunk leaves the reader only whole: rows of a chunk whose read failed halfway are
//!   dropped and the chunk is read again (on mysql_async when the wire client gave up).
//! - Each chunk is read in its own consistent snapshot, with its [`Window`] read around it on
//!   the same connection (see the parent module's handoff argument).
//! - Values that are invalid or absent keep a chunk on the row path: the pipeline's
//!   invalid-value policy sees them, as it sees the stream's.

use super::*;

/// What a reader reads: a table, and the position its snapshot's reads must start after.
#[derive(Clone, Copy)]
pub(super) struct Reading<'a> {
    pub table: &'a SnapTable,
    pub id: &'a TableId,
    pub floor: &'a BinlogPos,
    /// The plan the work belongs to (see [`super::Chunk::plan`]).
    pub plan: i64,
}

/// Reads one key range chunk by chunk until it is done.
pub(super) async fn read_range(
    conn: &mut ChunkConn<'_>,
    tx: &mpsc::Sender<SnapshotMsg>,
    r: Reading<'_>,
    range: usize,
    mut progress: RangeProgress,
    filter: Option<String>,
    cfg: &SnapshotConfig,
) -> Result<(), Failure> {
    let (table, id) = (r.table, r.id);
    let key_idx = table.map.primary_key.clone();
    let columnar = cfg.columnar.filter(|_| columnar_key(&table.map));
    loop {
        let mut bounds = Vec::new();
        match (&progress.after, &progress.lo) {
            (Some(a), _) => bounds.push((">", a)),
            (None, Some(lo)) => bounds.push((">=", lo)),
            (None, None) => {}
        }
        if let Some(hi) = &progress.hi {
            bounds.push(("<", hi));
        }
        let (sql, params) = table
            .chunk_query(id, &bounds, filter.as_deref(), Some(cfg.chunk_rows))
            .ok_or_else(|| {
                Failure::Source(SourceError::Definite(format!(
                    "snapshot of {id}: a key in the checkpoint cannot be read back"
                )))
            })?;
        let started = Instant::now();
        let window = begin_read(conn, r.floor, Some(tx)).await?;
        let (rows, last_key) = match conn {
            ChunkConn::My(c) => chunk_rows(c, &sql, params, table, &key_idx, columnar).await?,
            ChunkConn::Wire(w) => {
                chunk_rows_wire(w, &sql, params, table, &key_idx, columnar).await?
            }
        };
        conn.query_drop("COMMIT").await?;
        let n = rows.len();
        let done = n < cfg.chunk_rows;
        if let Some(k) = last_key {
            progress.after = Some(k);
        }
        debug!(table = %id, range, rows = n, ms = started.elapsed().as_millis() as u64, window = %window, "snapshot chunk");
        progress.done = done;
        tx.send(SnapshotMsg::Chunk(Chunk {
            table: id.clone(),
            range,
            map: table.map.clone(),
            rows,
            after: progress.after.clone(),
            done,
            window,
            read_at_us: crate::clock::now_us(),
            tombstones: false,
            plan: r.plan,
        }))
        .await
        .map_err(|_| Failure::Closed)?;
        if done {
            return Ok(());
        }
    }
}

/// The rows and last key of one chunk query.
pub(crate) type ChunkRead = (Vec<Vec<Value>>, Option<serde_json::Value>);

/// One chunk in one consistent snapshot (validate's reads: no bounds needed).
pub(crate) async fn read_chunk(
    conn: &mut mysql_async::Conn,
    sql: &str,
    params: Vec<My>,
    table: &SnapTable,
    key_idx: &[usize],
) -> Result<ChunkRead, SourceError> {
    let q = |e| SourceError::from_mysql(e, "reading a snapshot chunk");
    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .await
        .map_err(q)?;
    let (rows, last) = chunk_rows(conn, sql, params, table, key_idx, None).await?;
    conn.query_drop("COMMIT").await.map_err(q)?;
    match rows {
        ChunkRows::Rows(r) => Ok((r, last)),
        ChunkRows::Columns(_) => unreachable!("rows were asked for"),
    }
}

/// A chunk query's rows in the open transaction, put straight into Arrow columns when
/// `columnar` is set. A chunk holding a value that only the row path handles (an invalid value:
/// the pipeline's policy decides) is read again as rows, in the same transaction (the same rows).
pub(super) async fn chunk_rows(
    conn: &mut mysql_async::Conn,
    sql: &str,
    params: Vec<My>,
    table: &SnapTable,
    key_idx: &[usize],
    columnar: Option<Columnar>,
) -> Result<(ChunkRows, Option<serde_json::Value>), SourceError> {
    let q = |e| SourceError::from_mysql(e, "reading a snapshot chunk");
    let cols = &table.map.columns;
    // the last row's key cells (one buffer, refilled per row)
    let mut last: Vec<My> = Vec::with_capacity(key_idx.len());
    let mut out = None;
    if let Some(c) = columnar {
        let mut b = ChunkBuilder::new(&table.map)?;
        let mut result = conn.exec_iter(sql, params.clone()).await.map_err(q)?;
        let mut complete = true;
        while let Some(row) = result.next().await.map_err(q)? {
            let cells = row.unwrap();
            last.clear();
            last.extend(key_idx.iter().map(|&i| cells[i].clone()));
            for (i, (v, col)) in cells.into_iter().zip(cols).enumerate() {
                let mut v = values::cell(v, &col.ty);
                if let Some((lo, hi)) = c.date_range {
                    crate::columnar::out_of_target_range(&mut v, lo, hi);
                }
                if matches!(v, Value::Invalid { .. } | Value::Absent) {
                    complete = false;
                    break;
                }
                b.append(i, &v)?;
            }
            if !complete {
                break;
            }
            b.end_row();
        }
        drop(result);
        if complete {
            out = Some(ChunkRows::Columns(b.finish()?));
        } else {
            last.clear();
        }
    }
    let rows = match out {
        Some(r) => r,
        None => {
            let mut result = conn.exec_iter(sql, params).await.map_err(q)?;
            let mut rows = Vec::new();
            while let Some(row) = result.next().await.map_err(q)? {
                let cells = row.unwrap();
                last.clear();
                last.extend(key_idx.iter().map(|&i| cells[i].clone()));
                let values = cells
                    .into_iter()
                    .zip(cols)
                    .map(|(v, c)| values::cell(v, &c.ty))
                    .collect();
                rows.push(values);
            }
            drop(result);
            ChunkRows::Rows(rows)
        }
    };
    let last = (!rows.is_empty()).then(|| key_json(&last));
    Ok((rows, last))
}

/// How a string-like cell can go into its column without becoming a [`Value`] first.
#[derive(Clone, Copy)]
enum Fast {
    /// UTF-8 text: validated, then appended (`values::cell` makes the same `Value::Str`).
    Utf8,
    /// Bytes as they are, when at least this long (BINARY(n) pads shorter ones).
    Bin(usize),
    No,
}

fn fast_kind(ty: &ColType) -> Fast {
    match ty {
        ColType::Text {
            charset: crate::decode::charset::Charset::Utf8,
            ..
        }
        | ColType::Json { .. } => Fast::Utf8,
        ColType::Binary { pad_to, .. } => Fast::Bin(pad_to.unwrap_or(0) as usize),
        _ => Fast::No,
    }
}

/// [`chunk_rows`] through the snapshot client: the same query, parameters and values, with
/// string cells appended from the read buffer.
async fn chunk_rows_wire(
    w: &mut Wire,
    sql: &str,
    params: Vec<My>,
    table: &SnapTable,
    key_idx: &[usize],
    columnar: Option<Columnar>,
) -> Result<(ChunkRows, Option<serde_json::Value>), WireError> {
    let cols = &table.map.columns;
    let ncols = cols.len();
    let shape =
        |n: usize| WireError::Protocol(format!("the result has {n} columns, the table {ncols}"));
    // where each key column's cell goes in `last`
    let slot: Vec<Option<usize>> = (0..ncols)
        .map(|i| key_idx.iter().position(|&k| k == i))
        .collect();
    let mut last: Vec<My> = vec![My::NULL; key_idx.len()];
    let mut any = false;
    let mut out = None;
    if let Some(c) = columnar {
        let mut b = ChunkBuilder::new(&table.map).map_err(SourceError::from)?;
        let fast: Vec<Fast> = cols.iter().map(|c| fast_kind(&c.ty)).collect();
        let mut complete = true;
        let mut failed = None;
        w.exec(sql, &params, |mut cells| {
            if cells.len() != ncols {
                return Err(shape(cells.len()));
            }
            for (i, col) in cols.iter().enumerate() {
                let cell = cells.next_cell()?;
                if let Some(k) = slot[i] {
                    cell.store(&mut last[k]);
                }
                let done = match (&cell, fast[i]) {
                    (Cell::Bytes(s), Fast::Utf8) => {
                        std::str::from_utf8(s).is_ok_and(|t| b.append_str(i, t))
                    }
                    (Cell::Bytes(s), Fast::Bin(min)) => s.len() >= min && b.append_bytes(i, s),
                    _ => false,
                };
                if done {
                    continue;
                }
                let mut v = values::cell(cell.into_my(), &col.ty);
                if let Some((lo, hi)) = c.date_range {
                    crate::columnar::out_of_target_range(&mut v, lo, hi);
                }
                if matches!(v, Value::Invalid { .. } | Value::Absent) {
                    complete = false;
                    return Ok(false);
                }
                if let Err(e) = b.append(i, &v) {
                    failed = Some(e);
                    return Ok(false);
                }
            }
            b.end_row();
            any = true;
            Ok(true)
        })
        .await?;
        if let Some(e) = failed {
            return Err(SourceError::Build(e).into());
        }
        if complete {
            out = Some(ChunkRows::Columns(b.finish().map_err(SourceError::from)?));
        }
    }
    let rows = match out {
        Some(r) => r,
        None => {
            // the row path: every cell as a `Value` (the pipeline's policy decides on invalid ones)
            let mut rows = Vec::new();
            any = false;
            w.exec(sql, &params, |mut cells| {
                if cells.len() != ncols {
                    return Err(shape(cells.len()));
                }
                let mut row = Vec::with_capacity(ncols);
                for (i, col) in cols.iter().enumerate() {
                    let cell = cells.next_cell()?;
                    if let Some(k) = slot[i] {
                        cell.store(&mut last[k]);
                    }
                    row.push(values::cell(cell.into_my(), &col.ty));
                }
                rows.push(row);
                any = true;
                Ok(true)
            })
            .await?;
            ChunkRows::Rows(rows)
        }
    };
    let last = any.then(|| key_json(&last));
    Ok((rows, last))
}
