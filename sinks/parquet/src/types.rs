//! How Arrow batches are stored as Parquet: every Arrow type binlake produces is written as is
//! (the Arrow schema is embedded, so readers get the exact types back: decimals, unsigned
//! integers, microsecond UTC timestamps), and only the encodings are chosen here.
//!
//! Invariants: ZSTD at the configured level (Snappy for a file under [`SMALL_FILE`] of Arrow
//! data); one row group per `row_group_rows`; no dictionary
//! for a column that is distinct by construction (a one-column key) or that a sample shows to be
//! mostly distinct; the file's `created_by` names binlake and its version.

use arrow_array::RecordBatch;
use binlake_sink::SinkError;
use parquet::arrow::arrow_writer::compute_leaves;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

/// Below this many bytes of Arrow arrays, a row group's columns are encoded on one thread.
const SMALL_ROW_GROUP: usize = 1 << 20;

/// Below this many bytes of Arrow arrays, a file is compressed with Snappy instead of ZSTD:
/// parquet-rs sets up a ZSTD compressor and decompressor per column and file (measured: 12% of
/// the CPU of a commit of 1,000 small tables, plus the allocator churn), which costs more than
/// ZSTD saves on a few KB. Compaction rewrites such files with ZSTD.
pub const SMALL_FILE: usize = 256 << 10;

/// One Parquet file from one batch: ZSTD (Snappy for a small one, see [`SMALL_FILE`]), one row
/// group per `row_group_rows`, binlake as the writer, the Arrow schema embedded (so readers get
/// the exact Arrow types back). Columns are encoded in parallel, spread over the machine's cores
/// by size.
pub(crate) fn encode(
    batch: &RecordBatch,
    zstd_level: i32,
    row_group_rows: usize,
    unique: Option<&str>,
) -> Result<Vec<u8>, SinkError> {
    let err = |what: &str, e: parquet::errors::ParquetError| {
        SinkError::Definite(format!("parquet {what}: {e}"))
    };
    let compression = if batch.get_array_memory_size() < SMALL_FILE {
        Compression::SNAPPY
    } else {
        Compression::ZSTD(ZstdLevel::try_new(zstd_level).map_err(|e| err("zstd level", e))?)
    };
    let props = WriterProperties::builder()
        .set_compression(compression)
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
        // A small row group (a commit of many tables is many small files) is encoded on this
        // thread: spawning threads for it would cost more than the encoding.
        let threads = if sizes.iter().sum::<usize>() < SMALL_ROW_GROUP {
            1
        } else {
            threads
        };
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
        type Encoded = Vec<(usize, parquet::arrow::arrow_writer::ArrowColumnChunk)>;
        let run = |job: Vec<(usize, parquet::arrow::arrow_writer::ArrowColumnWriter, _)>| {
            job.into_iter()
                .map(|(i, mut w, l)| {
                    w.write(&l).map_err(|e| err("encode", e))?;
                    Ok((i, w.close().map_err(|e| err("encode", e))?))
                })
                .collect::<Result<Encoded, SinkError>>()
        };
        let results: Vec<Result<Encoded, SinkError>> = if jobs.len() == 1 {
            jobs.drain(..).map(run).collect()
        } else {
            std::thread::scope(|sc| {
                let handles: Vec<_> = jobs
                    .drain(..)
                    .map(|job| sc.spawn(move || run(job)))
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
            })
        };
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
