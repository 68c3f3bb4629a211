//! Writing Parquet files and the commit log (see the crate doc for the invariants).

use arrow_array::RecordBatch;
use binlake_sink::store::TargetLog;
use binlake_sink::{Checkpoint, DdlKind, MetaTable, Sink, SinkError, TableBatch, TableId};

use crate::types::encode;
use object_store::{ObjectStoreExt, PutMode};
use tracing::{debug, info, warn};

use crate::config::ParquetConfig;
use crate::manifest::{data_file_name, data_file_seq, FileEntry, LogEntry};

pub struct ParquetSink {
    pub(crate) config: ParquetConfig,
    pub(crate) log: TargetLog,
    /// Files written by the commit in progress, for its log entry.
    pub(crate) staged: Vec<FileEntry>,
    /// When the last compaction ran (`maintain_every`).
    last_compaction: std::time::Instant,
}

/// One file of a commit, before encoding.
pub(crate) struct FileJob {
    pub(crate) rel: String,
    pub(crate) table: String,
    pub(crate) batch: RecordBatch,
    pub(crate) min_version: u64,
    pub(crate) max_version: u64,
    /// A column whose values are all distinct (no dictionary).
    pub(crate) unique: Option<String>,
    /// The table's primary key (recorded in the log entry).
    pub(crate) key: Vec<String>,
}

impl ParquetSink {
    pub fn new(config: ParquetConfig) -> Result<Self, SinkError> {
        let (store, root) = config
            .store()
            .map_err(|e| SinkError::Definite(e.to_string()))?;
        let log = TargetLog::new(store, root, &config.pipeline, &config.target);
        Ok(ParquetSink {
            config,
            log,
            staged: Vec::new(),
            last_compaction: std::time::Instant::now(),
        })
    }

    /// Encodes the files (CPU work: one blocking task per file, in parallel, off the async
    /// workers), writes them (in parallel), and stages their entries for the commit's log entry.
    pub(crate) async fn write_files(&mut self, jobs: Vec<FileJob>) -> Result<(), SinkError> {
        let (level, rg) = (self.config.zstd_level, self.config.row_group_rows);
        let encoded = futures::future::try_join_all(jobs.into_iter().map(|j| async move {
            let rows = j.batch.num_rows();
            let batch = j.batch;
            let key = j.unique;
            let bytes =
                tokio::task::spawn_blocking(move || encode(&batch, level, rg, key.as_deref()))
                    .await
                    .map_err(|e| SinkError::Definite(format!("encoder task failed: {e}")))??;
            Ok::<_, SinkError>((
                FileEntry {
                    path: j.rel,
                    table: j.table,
                    rows,
                    bytes: bytes.len(),
                    min_version: j.min_version,
                    max_version: j.max_version,
                    key: j.key,
                },
                bytes,
            ))
        }))
        .await?;
        let log = &self.log;
        let mut files = Vec::with_capacity(encoded.len());
        let mut puts = Vec::with_capacity(encoded.len());
        for (f, bytes) in encoded {
            let path = log.path(&f.path);
            puts.push(async move { log.put(&path, bytes, PutMode::Overwrite).await });
            files.push(f);
        }
        futures::future::try_join_all(puts).await?;
        self.staged.extend(files);
        Ok(())
    }

    /// The files this pipeline committed and no compaction replaced, from its log, in commit
    /// order (for tests and maintenance).
    pub async fn committed_files(&self) -> Result<Vec<FileEntry>, SinkError> {
        Ok(crate::manifest::live_files(&self.log).await?.files)
    }
}

#[async_trait::async_trait]
impl Sink for ParquetSink {
    fn kind(&self) -> &'static str {
        "parquet"
    }

    async fn apply_table_ddl(
        &mut self,
        table: &TableId,
        kind: DdlKind,
        version: u64,
    ) -> Result<(), SinkError> {
        self.apply_ddl(table, kind, version).await
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

    /// Compaction every `maintain_every`, between two commits (see `crate::compact`).
    async fn maintain(&mut self) -> Result<(), SinkError> {
        let Some((every, opts)) = self.config.maintenance.clone() else {
            return Ok(());
        };
        if self.last_compaction.elapsed() < every {
            return Ok(());
        }
        self.last_compaction = std::time::Instant::now();
        self.log.keepalive().await?;
        let s = self.compact(&opts, &|_| true).await?;
        debug!(tables = s.tables.len(), deleted = s.deleted, seq = ?s.seq, "parquet maintenance");
        Ok(())
    }

    async fn begin_commit(&mut self) -> Result<u64, SinkError> {
        self.log.keepalive().await?;
        self.staged.clear();
        Ok(self.log.last_seq + 1)
    }

    async fn write_tables(&mut self, seq: u64, batches: &[TableBatch]) -> Result<(), SinkError> {
        let mut jobs = Vec::with_capacity(batches.len());
        let empty = |b: &&TableBatch| b.batch.num_rows() == 0 && !b.replace;
        // The tables the log has files of, when a batch needs to know.
        let committed: std::collections::HashSet<String> =
            if batches.iter().any(|b| b.replace || empty(&b)) {
                self.committed_files()
                    .await?
                    .into_iter()
                    .map(|f| f.table)
                    .collect()
            } else {
                Default::default()
            };
        // A keyless table's whole content (`replace`) over rows already committed: the rows
        // below its bound are cancelled by delete rows (see `ddl::reset_rows`), in the same file
        // as the read where the shapes agree (one file: readers see both or neither).
        let mut resets: std::collections::HashMap<usize, FileJob> = Default::default();
        for (n, tb) in batches.iter().enumerate() {
            if tb.replace && committed.contains(&tb.table.to_string()) {
                let at = tb.purge_below.unwrap_or(tb.min_version);
                if let Some(job) = self
                    .reset_job(&tb.table, tb.purge_below, at, seq, batches.len() + n)
                    .await?
                {
                    resets.insert(n, job);
                }
            }
        }
        // an empty table still gets a file (no rows, its columns), so that readers find it
        let missing: std::collections::HashSet<String> = batches
            .iter()
            .filter(empty)
            .map(|b| b.table.to_string())
            .filter(|t| !committed.contains(t))
            .collect();
        for (n, tb) in batches.iter().enumerate() {
            let mut batch = tb.batch.clone();
            let (mut min_version, mut max_version) = (tb.min_version, tb.max_version);
            if let Some(reset) = resets.remove(&n) {
                match crate::ddl::append_rows(&reset.batch, &batch) {
                    Some(both) => {
                        batch = both;
                        min_version = min_version.min(reset.min_version);
                        max_version = max_version.max(reset.max_version);
                    }
                    None => jobs.push(reset),
                }
            }
            if batch.num_rows() > 0 || missing.contains(&tb.table.to_string()) {
                let rel = format!(
                    "{}/{}/{}",
                    tb.table.db,
                    tb.table.table,
                    data_file_name(seq, n, &self.config.pipeline)
                );
                jobs.push(FileJob {
                    rel,
                    table: tb.table.to_string(),
                    batch,
                    min_version,
                    max_version,
                    // a one-column key is distinct within a batch (deduplicated per key)
                    unique: (tb.primary_key.len() == 1).then(|| tb.primary_key[0].clone()),
                    key: tb.primary_key.clone(),
                });
            }
        }
        // Re-snapshots that finished: tombstones for the keys they did not read again (the
        // committed files only; this commit's rows are all above the bound).
        let mut n = batches.len();
        for tb in batches {
            let Some(below) = tb.purge_below else {
                continue;
            };
            if let Some(job) = self
                .purge_job(&tb.table, &tb.primary_key, below, seq, n)
                .await?
            {
                jobs.push(job);
                n += 1;
            }
        }
        self.write_files(jobs).await
    }

    async fn write_meta(
        &mut self,
        seq: u64,
        table: MetaTable,
        rows: &RecordBatch,
    ) -> Result<(), SinkError> {
        // in the same log entry as the data they describe
        let rel = format!(
            "{}/{}",
            table.name(),
            data_file_name(seq, 0, &self.config.pipeline)
        );
        self.write_files(vec![FileJob {
            rel,
            table: table.name().into(),
            batch: rows.clone(),
            min_version: 0,
            max_version: 0,
            unique: None,
            key: vec![],
        }])
        .await
    }

    async fn write_checkpoint(
        &mut self,
        seq: u64,
        checkpoint: &Checkpoint,
    ) -> Result<(), SinkError> {
        let files = std::mem::take(&mut self.staged);
        let nfiles = files.len();
        self.log
            .append(
                seq,
                &LogEntry {
                    checkpoint: checkpoint.clone(),
                    files,
                    base: false,
                    removed: Vec::new(),
                },
            )
            .await?;
        debug!(seq, files = nfiles, "parquet commit");
        Ok(())
    }
}
