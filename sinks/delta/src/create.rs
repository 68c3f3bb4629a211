//! What the Delta tables binlake creates look like: their description (which says whether a
//! table is keyless, what TRUNCATE then does) and their partition columns (`[[layout]]`
//! `partition_by`), set once when a table is created; a table that exists keeps its own.

use binlake_sink::{SinkError, TableBatch};
use deltalake::protocol::SaveMode;
use tracing::info;

use crate::sink::{delta_err, DeltaSink};
use crate::types::to_delta;

/// The description a table gets when binlake creates it. A keyless table's says so: TRUNCATE
/// and DROP TABLE then remove its older rows (a changelog counts rows, so marking an insert
/// deleted would subtract it) where a keyed table's become tombstones.
pub(crate) fn description(tb: &TableBatch) -> String {
    if tb.primary_key.is_empty() {
        format!(
            "{}: {KEYLESS}, an append-only changelog replicated by binlake",
            tb.table
        )
    } else {
        format!(
            "{}: primary key ({}), replicated by binlake",
            tb.table,
            tb.primary_key.join(", ")
        )
    }
}

/// What marks a keyless table's description (see [`description`]).
pub(crate) const KEYLESS: &str = "no primary key";

impl DeltaSink {
    /// The partition columns a table binlake creates gets (`[[layout]]` `partition_by`, the first
    /// entry whose pattern matches; a re-snapshot's shadow takes its table's), as the table's
    /// columns are spelled; a column the table lacks stops the table, naming the entry.
    pub(crate) fn partitions_for(
        &self,
        table: &binlake_sink::TableId,
        schema: &arrow_schema::Schema,
    ) -> Result<Vec<String>, SinkError> {
        let base = table.table.split('/').next().unwrap_or(&table.table);
        let Some(p) = self
            .config
            .partitions
            .iter()
            .find(|p| (p.matches)(&table.db, base))
        else {
            return Ok(Vec::new());
        };
        p.columns
            .iter()
            .map(|c| {
                let f = schema.fields();
                f.iter()
                    .find(|f| f.name() == c)
                    .or_else(|| f.iter().find(|f| f.name().eq_ignore_ascii_case(c)))
                    .map(|f| f.name().clone())
                    .ok_or_else(|| SinkError::Table {
                        table: table.clone(),
                        message: format!("[[layout]] `{}`: partition_by names `{c}`, which the table does not have", p.pattern),
                    })
            })
            .collect()
    }

    /// Creates the table (no rows, the batch's columns) if it does not exist: a snapshot of an
    /// empty source table, so that readers and dbt find it.
    pub(crate) async fn ensure_exists(&self, tb: &TableBatch) -> Result<(), SinkError> {
        let name = tb.table.to_string();
        let lock = self.locks.get(&name);
        let _held = lock.lock().await;
        let table = self.load(&tb.table.db, &tb.table.table).await?;
        if table.version().is_some() {
            return Ok(());
        }
        let batch = to_delta(&tb.batch).map_err(|e| SinkError::Table {
            table: tb.table.clone(),
            message: format!("converting to Delta types: {e}"),
        })?;
        let parts = self.partitions_for(&tb.table, &batch.schema())?;
        let mut write = table
            .write(vec![batch])
            .with_save_mode(SaveMode::Append)
            .with_description(description(tb));
        if !parts.is_empty() {
            write = write.with_partition_columns(parts);
        }
        write.await.map_err(|e| delta_err(&name, "create", e))?;
        info!(table = %name, "empty table created");
        Ok(())
    }
}
