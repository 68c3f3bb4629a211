//! Writing Parquet files and the commit log (see the crate doc for the invariants).

use arrow_array::RecordBatch;
use binlake_sink::store::TargetLog;
use binlake_sink::{Checkpoint, Commit, Sink, SinkError, REJECTS_TABLE, WATERMARKS_TABLE};
use object_store::{ObjectStoreExt, PutMode};
use parquet::arrow::arrow_writer::compute_leaves;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use tracing::{debug, info, warn};

use crate::config::ParquetConfig;
use crate::manifest::{data_file_name, data_file_seq, FileEntry, LogEntry};

pub struct ParquetSink {
    config: ParquetConfig,
    log: TargetLog,
}

impl ParquetSink {
    pub fn new(config: ParquetConfig) -> Result<Self, SinkError> {
        let (store, root) = config
            .store()
            .map_err(|e| SinkError::Definite(e.to_string()))?;
        let log = TargetLog::new(store, root, &config.pipeline, &config.target);
        Ok(ParquetSink { config, log })
    }

    /// The files this pipeline committed, from its log (for tests and maintenance).
    pub async fn committed_files(&self) -> Result<Vec<FileEntry>, SinkError> {
        Ok(self
            .log
            .entries::<LogEntry>()
            .await?
            .into_iter()
            .flat_map(|e| e.files)
            .collect())
    }
}

/// One Parquet file from one batch: ZSTD, one row group per `row_group_rows`, binlake as the
/// writer, the Arrow schema embedded (so readers get the exact Arrow types back). Columns are
/// encoded in parallel, spread over the machine's cores by size.
fn encode(
    batch: &RecordBatch,
    zstd_level: i32,
    row_group_rows: usize,
    unique: Option<&str>,
) -> Result<Vec<u8>, SinkError> {
    let err = |what: &str, e: parquet::errors::ParquetError| {
        SinkError::Definite(format!("parquet {what}: {e}"))
    };
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(zstd_level).map_err(|e| err("zstd level", e))?,
        ))
        .set_max_row_group_row_count(Some(row_group_rows))
        .set_created_by(format!("binlake {}", env!("CARGO_PKG_VERSION")));
    // A column whose values are all distinct (a one-column primary key: batches hold one row per
    // key) gains nothing from a dictionary; building one costs a hash insert per value. Nor does
    // one that a sample shows to be mostly distinct values (binlake_sink::encoding).
    let plain = binlake_sink::encoding::dictionary_not_worth_it(
        batch,
        row_group_rows,
        parquet::file::properties::DEFAULT_DICTIONARY_PAGE_SIZE_LIMIT,
    );
    let mut props = props;
    for c in unique.into_iter().chain(plain.iter().map(|c| c.as_str())) {
        props = props.set_column_dictionary_enabled(ColumnPath::from(c), false);
    }
    let props = props.build();
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 4 + 1024);
    let writer = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))
        .map_err(|e| err("writer", e))?;
    let (mut file, factory) = writer
        .into_serialized_writer()
        .map_err(|e| err("writer", e))?;
    let schema = batch.schema();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let mut start = 0;
    let mut rg = 0;
    while start < batch.num_rows() {
        let len = row_group_rows.min(batch.num_rows() - start);
        let part = batch.slice(start, len);
        // (writer, leaf, size): one leaf column per writer, in schema order
        let writers = factory
            .create_column_writers(rg)
            .map_err(|e| err("column writers", e))?;
        let mut leaves = Vec::with_capacity(writers.len());
        for (field, col) in schema.fields().iter().zip(part.columns()) {
            for leaf in compute_leaves(field, col).map_err(|e| err("leaves", e))? {
                leaves.push(leaf);
            }
        }
        let sizes: Vec<usize> = part
            .columns()
            .iter()
            .map(|c| c.get_array_memory_size())
            .collect();
        // greedy: biggest columns first, each to the least loaded thread
        let mut order: Vec<usize> = (0..writers.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(sizes.get(i).copied().unwrap_or(0)));
        let mut groups: Vec<(usize, Vec<usize>)> =
            vec![(0, Vec::new()); threads.min(writers.len()).max(1)];
        for i in order {
            let g = groups
                .iter_mut()
                .min_by_key(|g| g.0)
                .expect("one group at least");
            g.0 += sizes.get(i).copied().unwrap_or(0);
            g.1.push(i);
        }
        let mut slots: Vec<
            Option<(
                parquet::arrow::arrow_writer::ArrowColumnWriter,
                parquet::arrow::arrow_writer::ArrowLeafColumn,
            )>,
        > = writers.into_iter().zip(leaves).map(Some).collect();
        let mut jobs: Vec<Vec<(usize, _, _)>> = groups
            .iter()
            .map(|(_, idx)| {
                idx.iter()
                    .map(|&i| {
                        let (w, l) = slots[i].take().expect("each column once");
                        (i, w, l)
                    })
                    .collect()
            })
            .collect();
        let mut chunks: Vec<Option<parquet::arrow::arrow_writer::ArrowColumnChunk>> =
            (0..slots.len()).map(|_| None).collect();
        let results: Vec<
            Result<Vec<(usize, parquet::arrow::arrow_writer::ArrowColumnChunk)>, SinkError>,
        > = std::thread::scope(|sc| {
            let handles: Vec<_> = jobs
                .drain(..)
                .map(|job| {
                    sc.spawn(move || {
                        job.into_iter()
                            .map(|(i, mut w, l)| {
                                w.write(&l).map_err(|e| err("encode", e))?;
                                Ok((i, w.close().map_err(|e| err("encode", e))?))
                            })
                            .collect::<Result<Vec<_>, SinkError>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(SinkError::Definite(
                            "parquet encoder thread panicked".into(),
                        ))
                    })
                })
                .collect()
        });
        for r in results {
            for (i, c) in r? {
                chunks[i] = Some(c);
            }
        }
        let mut rgw = file.next_row_group().map_err(|e| err("row group", e))?;
        for c in chunks {
            c.expect("every column encoded")
                .append_to_row_group(&mut rgw)
                .map_err(|e| err("row group", e))?;
        }
        rgw.close().map_err(|e| err("row group", e))?;
        start += len;
        rg += 1;
    }
    file.close().map_err(|e| err("close", e))?;
    Ok(buf)
}

#[async_trait::async_trait]
impl Sink for ParquetSink {
    fn kind(&self) -> &'static str {
        "parquet"
    }

    async fn open(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        // 0. Become the one writer of this pipeline before touching anything.
        self.log.claim().await?;
        // 1. The last complete commit.
        let checkpoint = self.log.latest::<LogEntry>().await?.map(|e| e.checkpoint);
        let last_seq = self.log.last_seq;
        // 2. Remove what an interrupted commit of this pipeline left: its data files newer than
        //    its last log entry (file names carry the pipeline, so other pipelines' are untouched).
        let mut removed = 0;
        for p in self.log.list(self.log.root()).await? {
            let s = p.as_ref();
            if s.contains("/_binlake/") || s.starts_with("_binlake/") {
                continue;
            }
            if p.filename()
                .and_then(|n| data_file_seq(n, &self.config.pipeline))
                .is_some_and(|seq| seq > last_seq)
            {
                self.log
                    .store()
                    .delete(&p)
                    .await
                    .map_err(binlake_sink::store::classify)?;
                removed += 1;
            }
        }
        if removed > 0 {
            warn!(removed, last_seq, "removed data files of an interrupted commit; they will be rewritten from the checkpoint");
        }
        info!(target = %self.config.target, last_seq, resume = ?checkpoint.as_ref().map(|c| &c.position), "parquet sink opened");
        Ok(checkpoint)
    }

    async fn read_table(
        &mut self,
        table: &binlake_sink::TableId,
    ) -> Result<Vec<RecordBatch>, SinkError> {
        let name = table.to_string();
        let mut out = Vec::new();
        for f in self.committed_files().await? {
            if f.table != name {
                continue;
            }
            let bytes = self
                .log
                .store()
                .get(&self.log.path(&f.path))
                .await
                .map_err(binlake_sink::store::classify)?
                .bytes()
                .await
                .map_err(binlake_sink::store::classify)?;
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .and_then(|b| b.build())
                    .map_err(|e| SinkError::Definite(format!("reading {}: {e}", f.path)))?;
            for b in reader {
                out.push(b.map_err(|e| SinkError::Definite(format!("reading {}: {e}", f.path)))?);
            }
        }
        Ok(out)
    }

    async fn read_checkpoint(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        Ok(self.log.latest::<LogEntry>().await?.map(|e| e.checkpoint))
    }

    async fn keepalive(&mut self) -> Result<(), SinkError> {
        self.log.keepalive().await
    }

    async fn commit(&mut self, mut commit: Commit) -> Result<(), SinkError> {
        self.log.keepalive().await?;
        let seq = self.log.last_seq + 1;
        commit.checkpoint.seq = seq;
        // (path, table, batch, min_version, max_version) for every file of this commit
        let mut jobs: Vec<(String, String, RecordBatch, u64, u64, Option<String>)> =
            Vec::with_capacity(commit.batches.len() + 1);
        for (n, tb) in commit.batches.iter().enumerate() {
            if tb.batch.num_rows() > 0 {
                let rel = format!(
                    "{}/{}/{}",
                    tb.table.db,
                    tb.table.table,
                    data_file_name(seq, n, &self.config.pipeline)
                );
                jobs.push((
                    rel,
                    tb.table.to_string(),
                    tb.batch.clone(),
                    tb.min_version,
                    tb.max_version,
                    // a one-column key is distinct within a batch (deduplicated per key)
                    (tb.primary_key.len() == 1).then(|| tb.primary_key[0].clone()),
                ));
            }
        }
        if let Some(rej) = commit.rejects.as_ref().filter(|r| r.num_rows() > 0) {
            let rel = format!(
                "{}/{}",
                REJECTS_TABLE,
                data_file_name(seq, 0, &self.config.pipeline)
            );
            jobs.push((rel, REJECTS_TABLE.into(), rej.clone(), 0, 0, None));
        }
        // the watermarks travel in the same manifest entry as the data they describe
        if let Some(wm) = commit.watermarks.as_ref().filter(|r| r.num_rows() > 0) {
            let rel = format!(
                "{}/{}",
                WATERMARKS_TABLE,
                data_file_name(seq, 0, &self.config.pipeline)
            );
            jobs.push((rel, WATERMARKS_TABLE.into(), wm.clone(), 0, 0, None));
        }
        // Encoding is CPU work: one blocking task per file, in parallel, off the async workers.
        let (level, rg) = (self.config.zstd_level, self.config.row_group_rows);
        let encoded = futures::future::try_join_all(jobs.into_iter().map(
            |(rel, table, batch, lo, hi, key)| async move {
                let rows = batch.num_rows();
                let bytes =
                    tokio::task::spawn_blocking(move || encode(&batch, level, rg, key.as_deref()))
                        .await
                        .map_err(|e| SinkError::Definite(format!("encoder task failed: {e}")))??;
                Ok::<_, SinkError>((
                    FileEntry {
                        path: rel,
                        table,
                        rows,
                        bytes: bytes.len(),
                        min_version: lo,
                        max_version: hi,
                    },
                    bytes,
                ))
            },
        ))
        .await?;
        // Data first (in parallel), then the log entry that makes them committed.
        let log = &self.log;
        let mut files = Vec::with_capacity(encoded.len());
        let mut puts = Vec::with_capacity(encoded.len());
        for (f, bytes) in encoded {
            let path = log.path(&f.path);
            puts.push(async move { log.put(&path, bytes, PutMode::Overwrite).await });
            files.push(f);
        }
        futures::future::try_join_all(puts).await?;
        binlake_sink::failpoint("after-data");
        let nfiles = files.len();
        self.log
            .append(
                seq,
                &LogEntry {
                    checkpoint: commit.checkpoint,
                    files,
                },
            )
            .await?;
        debug!(seq, files = nfiles, "parquet commit");
        Ok(())
    }
}
