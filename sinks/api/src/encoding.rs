//! Encoding choices shared by the sinks that write Parquet (the Parquet and Delta sinks).
//!
//! A Parquet writer dictionary-encodes every column by default and falls back to plain encoding
//! once a column chunk's dictionary outgrows its page limit, after hashing every value up to
//! that point for nothing. For columns of mostly distinct values (text of random content, wide
//! identifiers, measurements) the dictionary costs a hash insert per value and ends larger than
//! plain encoding; in the 5,000,000-row snapshot benchmark it was a sixth of binlake's CPU time.
//! [`dictionary_not_worth_it`] predicts, from a sample, which columns of a batch are like that,
//! so the writer leaves them plain; low-cardinality columns (a status, a country, the metadata
//! columns) keep their dictionary.
//!
//! Invariant: only the encoding changes, never a value; a wrong guess costs file size or time,
//! never correctness.

use std::collections::HashSet;

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;

/// The sample's set: a fast hash (SipHash's DoS resistance buys nothing for a count of distinct
/// values, and it was most of the sampling's cost on small files).
type Seen<T> = HashSet<T, foldhash::fast::RandomState>;

/// Values sampled per column (evenly spread over the batch: a snapshot chunk is sorted by key).
const SAMPLE: usize = 1024;

/// Top-level columns of `batch` whose dictionary would not pay in a column chunk of up to
/// `rows_per_group` rows: it would outgrow `dict_limit` bytes (the writer would fall back to
/// plain), or the dictionary plus its indices would be no smaller than the plain values.
pub fn dictionary_not_worth_it(
    batch: &RecordBatch,
    rows_per_group: usize,
    dict_limit: usize,
) -> Vec<String> {
    let schema = batch.schema();
    schema
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(_, a)| not_worth_it(a.as_ref(), rows_per_group, dict_limit))
        .map(|(f, _)| f.name().clone())
        .collect()
}

fn not_worth_it(a: &dyn Array, rows_per_group: usize, dict_limit: usize) -> bool {
    let n = a.len() - a.null_count();
    if n < 64 {
        return false;
    }
    let step = (a.len() / SAMPLE).max(1);
    let picks = (0..a.len()).step_by(step).filter(|&i| a.is_valid(i));
    // (distinct values in the sample, sample size, mean plain width in bytes)
    let (distinct, s, width) = match a.data_type() {
        DataType::Utf8 | DataType::Binary => {
            let v = |i: usize| -> &[u8] {
                match a.data_type() {
                    DataType::Utf8 => a.as_string::<i32>().value(i).as_bytes(),
                    _ => a.as_binary::<i32>().value(i),
                }
            };
            let mut seen = Seen::with_capacity_and_hasher(SAMPLE, Default::default());
            let mut s = 0;
            for i in picks {
                seen.insert(v(i));
                s += 1;
            }
            let offsets_len = match a.data_type() {
                DataType::Utf8 => a.as_string::<i32>().values().len(),
                _ => a.as_binary::<i32>().values().len(),
            };
            // 4 bytes of length per plain value
            (
                seen.len(),
                s,
                offsets_len as f64 / a.len().max(1) as f64 + 4.0,
            )
        }
        dt if dt.is_primitive() => {
            let Some(w) = dt.primitive_width() else {
                return false;
            };
            let data = a.to_data();
            let buf = data.buffers()[0].as_slice();
            let off = data.offset();
            let mut seen = Seen::with_capacity_and_hasher(SAMPLE, Default::default());
            let mut s = 0;
            for i in picks {
                seen.insert(&buf[(off + i) * w..(off + i + 1) * w]);
                s += 1;
            }
            (seen.len(), s, w as f64)
        }
        _ => return false,
    };
    let group = n.min(rows_per_group.max(1));
    let d = estimate_distinct(distinct, s, n).min(group as f64);
    let dict = d * width;
    let indices = group as f64 * (d.max(2.0).log2().ceil() / 8.0);
    dict > dict_limit as f64 || dict + indices >= group as f64 * width
}

/// Distinct values among `n` given `d` distinct in a uniform sample of `s`: the `D` for which
/// the expected distinct count of the sample, `D (1 - (1 - 1/D)^s)`, is `d` (bisection).
fn estimate_distinct(d: usize, s: usize, n: usize) -> f64 {
    if s == 0 || d >= s {
        return n as f64;
    }
    if s >= n {
        return d as f64; // the sample is every value: the count is exact
    }
    let expected = |big: f64| big * (1.0 - (1.0 - 1.0 / big).powf(s as f64));
    let (mut lo, mut hi) = (d as f64, (n as f64).max(d as f64));
    if expected(hi) <= d as f64 {
        return hi;
    }
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if expected(mid) < d as f64 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int32Array, Int64Array, StringArray};
    use std::sync::Arc;

    fn batch(cols: Vec<(&str, Arc<dyn Array>)>) -> RecordBatch {
        RecordBatch::try_from_iter(cols).unwrap()
    }

    #[test]
    fn distinct_estimates() {
        // every sampled value distinct: as many as there are rows
        assert_eq!(estimate_distinct(1024, 1024, 100_000), 100_000.0);
        // a handful of values, all seen
        assert!((estimate_distinct(5, 1024, 100_000) - 5.0).abs() < 0.5);
        // 10,000 values uniformly: a 1024 sample sees about 973 of them
        let e = estimate_distinct(973, 1024, 100_000);
        assert!((8_000.0..12_000.0).contains(&e), "{e}");
    }

    #[test]
    fn only_columns_of_mostly_distinct_values_lose_the_dictionary() {
        let n = 100_000;
        let text: StringArray = (0..n)
            .map(|i| {
                Some(format!(
                    "{:0>120}",
                    (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ))
            })
            .collect();
        let status: StringArray = (0..n)
            .map(|i| Some(["new", "paid", "shipped"][i % 3]))
            .collect();
        let k =
            Int32Array::from_iter_values((0..n as i32).map(|i| i.wrapping_mul(7919) % 1_000_000));
        let day = Int32Array::from_iter_values((0..n as i32).map(|i| i % 365));
        let version = Int64Array::from_iter_values(std::iter::repeat_n(42, n));
        let b = batch(vec![
            ("text", Arc::new(text)),
            ("status", Arc::new(status)),
            ("k", Arc::new(k)),
            ("day", Arc::new(day)),
            ("version", Arc::new(version)),
        ]);
        assert_eq!(dictionary_not_worth_it(&b, n, 1024 * 1024), ["text", "k"]);
        // a small batch is left to the writer
        assert!(dictionary_not_worth_it(&b.slice(0, 10), n, 1024 * 1024).is_empty());
    }
}
