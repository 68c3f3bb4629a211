//! Snapshot progress for a person watching: on a terminal, one indicatif bar per table being
//! read (rows done of the estimate, rows/s, ETA), redrawn at most four times a second; when
//! stderr is not a terminal (a service manager, CI, a pipe) or `BINLAKE_NO_PROGRESS` is set, a
//! structured `snapshot progress` log line per table every 10 s instead.
//!
//! Invariants: the view only reads what the pipeline hands it (never the pipeline's state), so
//! drawing cannot slow or change replication; a table's bar goes away when its snapshot ends.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::info;

/// One table's snapshot in progress, as the view shows it.
#[derive(Debug, Clone)]
pub struct TableProgress {
    pub table: String,
    pub rows: u64,
    pub estimate: u64,
    /// Rows per second read by this run.
    pub rate: f64,
}

/// The progress view (see the module doc).
pub struct ProgressView {
    bars: Option<Bars>,
    last_show: Instant,
}

struct Bars {
    multi: MultiProgress,
    style: ProgressStyle,
    by_table: BTreeMap<String, ProgressBar>,
}

impl Default for ProgressView {
    fn default() -> Self {
        Self::new()
    }
}

impl ProgressView {
    pub fn new() -> Self {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr())
            && std::env::var_os("BINLAKE_NO_PROGRESS").is_none();
        let bars = tty.then(|| Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)),
            style: ProgressStyle::with_template(
                "{prefix:32} [{bar:30}] {human_pos}/{human_len} rows  {per_sec}  ETA {eta}",
            )
            .expect("a valid progress template")
            .progress_chars("#>-"),
            by_table: BTreeMap::new(),
        });
        ProgressView {
            bars,
            last_show: Instant::now(),
        }
    }

    /// Whether [`ProgressView::show`] would draw or log now (callers skip building the rows).
    pub fn due(&self) -> bool {
        let every = if self.bars.is_some() {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(10)
        };
        self.last_show.elapsed() >= every
    }

    /// Bars are on screen (a finished snapshot's bar is cleared by the next [`ProgressView::show`]).
    pub fn active(&self) -> bool {
        self.bars.as_ref().is_some_and(|b| !b.by_table.is_empty())
    }

    /// Shows every table in progress; tables no longer in `tables` lose their bar.
    pub fn show(&mut self, tables: &[TableProgress]) {
        self.last_show = Instant::now();
        let Some(bars) = &mut self.bars else {
            for t in tables {
                let eta_s = if t.rate > 0.0 && t.estimate > t.rows {
                    ((t.estimate - t.rows) as f64 / t.rate) as u64
                } else {
                    0
                };
                info!(table = %t.table, rows = t.rows, estimate = t.estimate, rows_per_s = t.rate as u64, eta_s, "snapshot progress");
            }
            return;
        };
        bars.by_table.retain(|name, bar| {
            let keep = tables.iter().any(|t| &t.table == name);
            if !keep {
                bar.finish_and_clear();
                bars.multi.remove(bar);
            }
            keep
        });
        for t in tables {
            let bar = bars.by_table.entry(t.table.clone()).or_insert_with(|| {
                let bar = bars
                    .multi
                    .add(ProgressBar::new(t.estimate).with_style(bars.style.clone()));
                bar.set_prefix(t.table.clone());
                bar
            });
            bar.set_length(t.estimate.max(t.rows));
            bar.set_position(t.rows);
        }
    }
}

impl Drop for ProgressView {
    fn drop(&mut self) {
        if let Some(bars) = &self.bars {
            for bar in bars.by_table.values() {
                bar.finish_and_clear();
            }
        }
    }
}
