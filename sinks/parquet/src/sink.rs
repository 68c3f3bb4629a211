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
    /// Tables whose re-snapshot the commit in progress swaps in (see `crate::swap`).
    pub(crate) swapped: Vec<String>,
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
    /// A re-snapshot's shadow file (see `crate::swap`).
    pub(crate) generation: Option<i64>,
}

/// Files of one commit uploaded at once.
const PARALLEL_PUTS: usize = 16;

/// Small files are encoded in groups of up to this many bytes of Arrow data (and 64 files).
const ENCODE_GROUP_BYTES: usize = 4 << 20;

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
            swapped: Vec::new(),
            last_compaction: std::time::Instant::now(),
        })
    }

    /// Encodes the files (CPU work: one blocking task per file, in parallel, off the async
    /// workers), writes them (in parallel), and stages their entries for the commit's log entry.
    pub(crate) async fn write_files(&mut self, jobs: Vec<FileJob>) -> Result<(), SinkError> {
        let (level, rg) = (self.config.zstd_level, self.config.row_group_rows);
        use futures::{StreamExt, TryStreamExt};
        // as many encoders as cores (a commit of a thousand tables is a thousand small files:
        // not a thousand threads at once)
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Small files (a commit of many tables) are encoded a group at a time on one blocking
        // thread: a thread hand-off per file of a few KB costs more than its encoding.
        let mut groups: Vec<Vec<FileJob>> = Vec::new();
        let mut group_bytes = 0;
        for j in jobs {
            let size = j.batch.get_array_memory_size();
            let open = groups
                .last()
                .is_some_and(|g| g.len() < 64 && group_bytes + size <= ENCODE_GROUP_BYTES);
            if !open {
                groups.push(Vec::new());
                group_bytes = 0;
            }
            group_bytes += size;
            groups.last_mut().expect("a group").push(j);
        }
        let encoded: Vec<Vec<_>> =
            futures::stream::iter(groups.into_iter().map(|group| async move {
                tokio::task::spawn_blocking(move || {
                    group
                        .into_iter()
                        .map(|j| {
                            let bytes = encode(&j.batch, level, rg, j.unique.as_deref())?;
                            Ok::<_, SinkError>((
                                FileEntry {
                                    path: j.rel,
                                    table: j.table,
                                    rows: j.batch.num_rows(),
                                    bytes: bytes.len(),
                                    min_version: j.min_version,
                                    max_version: j.max_version,
                                    key: j.key,
                                    generation: j.generation,
                                },
                                bytes,
                            ))
                        })
                        .collect::<Result<Vec<_>, SinkError>>()
                })
                .await
                .map_err(|e| SinkError::Definite(format!("encoder task failed: {e}")))?
            }))
            .buffered(cores)
            .try_collect()
            .await?;
        let encoded: Vec<_> = encoded.into_iter().flatten().collect();
        let log = &self.log;
        let mut files = Vec::with_capacity(encoded.len());
        let mut puts = Vec::with_capacity(encoded.len());
        for (f, bytes) in encoded {
            let path = log.path(&f.path);
            puts.push(async move { log.put(&path, bytes, PutMode::Overwrite).await });
            files.push(f);
        }
        futures::stream::iter(puts)
            .buffer_unordered(PARALLEL_PUTS)
            .try_collect::<Vec<()>>()
            .await?;
        self.staged.extend(files);
        Ok(())
    }

    /// Deletes each of `paths` that `doomed` selects; how many.
    pub(crate) async fn delete_if(
        &self,
        paths: Vec<object_store::path::Path>,
        doomed: impl Fn(&object_store::path::Path) -> bool,
    ) -> Result<usize, SinkError> {
        let mut n = 0;
        for p in paths.into_iter().filter(|p| doomed(p)) {
            self.log
                .store()
                .delete(&p)
                .await
                .map_err(binlake_sink::store::classify)?;
            n += 1;
        }
        Ok(n)
    }

    /// The files this pipeline committed and no compaction replaced, from its log, in commit
    /// order (for tests and maintenance); not the shadow files of re-snapshots in progress.
    pub async fn committed_files(&self) -> Result<Vec<FileEntry>, SinkError> {
        let mut files = crate::manifest::live_files(&self.log).await?.files;
        files.retain(|f| f.generation.is_none());
        Ok(files)
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
        let present = self.log.list(self.log.root()).await?;
        let removed = self
            .delete_if(present, |p| {
                let s = p.as_ref();
                !(s.contains("/_binlake/") || s.starts_with("_binlake/"))
                    && p.filename()
                        .and_then(|n| data_file_seq(n, &self.config.pipeline))
                        .is_some_and(|seq| seq > last_seq)
            })
            .await?;
        if removed > 0 {
            warn!(removed, last_seq, "removed data files of an interrupted commit; they will be rewritten from the checkpoint");
        }
        self.remove_stray_shadow_files().await?;
        info!(target = %self.config.target, last_seq, resume = ?checkpoint.as_ref().map(|c| &c.position), "parquet sink opened");
        Ok(checkpoint)
    }

    async fn read_table(
        &mut self,
        table: &binlake_sink::TableId,
    ) -> Result<Vec<RecordBatch>, SinkError> {
        let name = table.to_string();
        let mut files = self.committed_files().await?;
        files.retain(|f| f.table == name);
        self.read_files(&files).await
    }

    /// The table's folder as a reader globbing it sees it: every pipeline's data files (and a
    /// file of an interrupted commit not cleaned up yet, which holds rows a replay writes again
    /// with the same versions, so the current state is the same).
    async fn read_table_whole(
        &mut self,
        table: &binlake_sink::TableId,
    ) -> Result<Vec<RecordBatch>, SinkError> {
        let dir = self.log.path(&format!("{}/{}", table.db, table.table));
        let root = self.log.root().to_string();
        let mut files: Vec<crate::manifest::FileEntry> = Vec::new();
        for p in self.log.list(&dir).await? {
            let s = p.as_ref();
            if !s.ends_with(".parquet") || s.contains("/_binlake/") {
                continue;
            }
            let rel = s
                .strip_prefix(&root)
                .map(|r| r.trim_start_matches('/'))
                .unwrap_or(s);
            files.push(crate::manifest::FileEntry {
                path: rel.to_string(),
                table: table.to_string(),
                ..Default::default()
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        self.read_files(&files).await
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
        self.swapped.clear();
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
            // a keyed table's re-snapshot: shadow files, then one file swapping them in
            if let Some(g) = tb.generation.filter(|_| !tb.primary_key.is_empty()) {
                match tb.purge_below {
                    Some(below) => jobs.push(self.swap_job(tb, g, below, seq, n).await?),
                    None if tb.batch.num_rows() > 0 => jobs.push(self.shadow_job(tb, g, seq, n)),
                    None => {}
                }
                continue;
            }
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
                    generation: None,
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
            if tb.generation.is_some() && !tb.primary_key.is_empty() {
                continue; // in its swap file
            }
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
            generation: None,
        }])
        .await
    }

    async fn write_checkpoint(
        &mut self,
        seq: u64,
        checkpoint: &Checkpoint,
    ) -> Result<(), SinkError> {
        let files = std::mem::take(&mut self.staged);
        let swapped = std::mem::take(&mut self.swapped);
        let nfiles = files.len();
        self.log
            .append(
                seq,
                &LogEntry {
                    checkpoint: checkpoint.clone(),
                    files,
                    base: false,
                    removed: Vec::new(),
                    swapped: swapped.clone(),
                },
            )
            .await?;
        if !swapped.is_empty() {
            self.delete_swapped_shadow_files().await;
        }
        debug!(seq, files = nfiles, "parquet commit");
        Ok(())
    }
}
