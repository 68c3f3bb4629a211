//! Scheduled maintenance of ClickHouse tables: `OPTIMIZE TABLE ... FINAL` where a table has
//! parts to merge, so that `FINAL` reads and the `_current` views stay cheap; with a zero
//! tombstone retention, `FINAL CLEANUP` removes tombstones for good where the server allows it.
//!
//! Invariants: maintenance runs beside the commits on its own client, never inside one; a
//! failure is logged and retried at the next pass, never fatal to replication; dropping the
//! sink stops a pass midway, which loses nothing (a merge is atomic in ClickHouse).

use std::collections::HashMap;

use binlake_sink::{SinkError, TableId};
use tracing::{debug, info};

use crate::sink::{classify, json_u64, lit, ClickHouseSink};

impl ClickHouseSink {
    /// Starts a maintenance pass in the background when one is due and none is running:
    /// `OPTIMIZE TABLE ... FINAL` on each table of this pipeline that has more than one active
    /// part (the threshold: something to merge), so `FINAL` reads stay cheap. With a zero
    /// tombstone retention it adds `CLEANUP` (tombstones removed for good) where the server
    /// allows it. Failures are logged and retried at the next pass, never fatal.
    pub(crate) fn schedule_maintenance(&mut self, tables: Vec<TableId>) {
        let Some((every, tombstones)) = self.config.maintenance else {
            return;
        };
        if self.maintenance.as_ref().is_some_and(|h| !h.is_finished())
            || self.last_maintenance.elapsed() < every
        {
            return;
        }
        self.last_maintenance = std::time::Instant::now();
        let this = ClickHouseSink {
            config: self.config.clone(),
            client: self.client.clone(),
            tables: HashMap::new(),
            keys: HashMap::new(),
            applied: HashMap::new(),
            last_seq: 0,
            maintenance: None,
            last_maintenance: self.last_maintenance,
            watermarks_ready: Default::default(),
        };
        self.maintenance = Some(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut optimized = 0;
            for t in &tables {
                match this.maintain_table(t, tombstones.is_zero()).await {
                    Ok(true) => optimized += 1,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(table = %t, error = %e, "scheduled maintenance failed; will retry at the next pass")
                    }
                }
            }
            info!(
                tables = tables.len(),
                optimized,
                seconds = started.elapsed().as_secs_f64(),
                "scheduled maintenance done"
            );
        }));
    }

    /// One table's maintenance; true when it was optimized.
    pub async fn maintain_table(&self, t: &TableId, cleanup: bool) -> Result<bool, SinkError> {
        let rows = self
            .rows(&format!(
                "SELECT count() AS parts FROM system.parts WHERE active AND database = {} AND table = {}",
                lit(&self.config.database(&t.db)),
                lit(&t.table)
            ))
            .await
            .map_err(|e| classify(e, "reading the table's parts", Some(t)))?;
        let parts = rows
            .first()
            .and_then(|r| json_u64(r.get("parts")?))
            .unwrap_or(0);
        if parts < 2 {
            return Ok(false);
        }
        let full = self.table_name(t);
        if cleanup && self.is_replacing(t).await? {
            let r = self
                .exec(&format!(
                    "ALTER TABLE {full} MODIFY SETTING allow_experimental_replacing_merge_with_cleanup = 1"
                ))
                .await;
            if r.is_ok()
                && self
                    .exec(&format!("OPTIMIZE TABLE {full} FINAL CLEANUP"))
                    .await
                    .is_ok()
            {
                info!(table = %t, parts, "optimized (FINAL CLEANUP: tombstones removed)");
                return Ok(true);
            }
            debug!(table = %t, "CLEANUP not allowed by this server; plain FINAL");
        }
        self.exec(&format!("OPTIMIZE TABLE {full} FINAL"))
            .await
            .map_err(|e| classify(e, "OPTIMIZE TABLE ... FINAL", Some(t)))?;
        info!(table = %t, parts, "optimized (FINAL)");
        Ok(true)
    }
}

impl Drop for ClickHouseSink {
    fn drop(&mut self) {
        if let Some(h) = self.maintenance.take() {
            h.abort();
        }
    }
}
