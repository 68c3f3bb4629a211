//! Every configuration key, declared once: its name, its doc, its type in the file and its flag.
//! From that one declaration come the [`FileConfig`] field (the TOML key), the command-line flag
//! (its `--help` is the doc), the overlay of flags over the file, the JSON schema
//! (`schemas/config.schema.json`, see [`super::schema`]) and the key reference
//! (`docs/configuration.md`). Tests fail when the checked-in schema or reference is stale.
//!
//! Keys come in groups, and each subcommand takes only the groups it uses (`status` has no
//! source flags, `maintain` only the target and Delta's). A sink's own keys are its group; in the
//! file they go in its table (`[sink.delta]`), or at the top level as before.

use super::{
    BackfillEntry, LayoutEntry, OutboxEntry, Patterns, PipelineEntry, Size, SourceEntry, Sources,
    TableMapKey,
};

/// What one key is, for the schema and the reference.
#[derive(Debug, Clone)]
pub struct KeyDoc {
    pub name: &'static str,
    /// The flag group (`SourceFlags`, ...), or `file` for keys without a flag.
    pub group: &'static str,
    pub doc: String,
    pub schema: serde_json::Value,
}

/// A flag's value as the file key's value (`None`: the flag was not given).
pub trait IntoKey<T> {
    fn into_key(self) -> Option<T>;
}

impl<T> IntoKey<T> for Option<T> {
    fn into_key(self) -> Option<T> {
        self
    }
}

impl IntoKey<bool> for bool {
    fn into_key(self) -> Option<bool> {
        self.then_some(true)
    }
}

impl IntoKey<Vec<u32>> for Vec<u32> {
    fn into_key(self) -> Option<Vec<u32>> {
        (!self.is_empty()).then_some(self)
    }
}

impl IntoKey<Patterns> for Vec<String> {
    fn into_key(self) -> Option<Patterns> {
        (!self.is_empty()).then_some(Patterns::Many(self))
    }
}

impl IntoKey<Vec<OutboxEntry>> for Vec<String> {
    fn into_key(self) -> Option<Vec<OutboxEntry>> {
        (!self.is_empty()).then(|| self.into_iter().map(OutboxEntry::Name).collect())
    }
}

impl IntoKey<Size> for Option<String> {
    fn into_key(self) -> Option<Size> {
        self.map(Size::Text)
    }
}

impl IntoKey<Sources> for Vec<String> {
    fn into_key(self) -> Option<Sources> {
        match self.as_slice() {
            [] => None,
            [one] => Some(Sources::One(one.clone())),
            many => Some(Sources::Many(
                many.iter().cloned().map(SourceEntry::Url).collect(),
            )),
        }
    }
}

/// The JSON schema of a key's type in the file.
pub trait SchemaType {
    fn schema() -> serde_json::Value;
}

macro_rules! schema_type {
    ($($t:ty => $json:tt),* $(,)?) => {
        $(impl SchemaType for $t {
            fn schema() -> serde_json::Value {
                serde_json::json!($json)
            }
        })*
    };
}

schema_type! {
    String => { "type": "string" },
    bool => { "type": "boolean" },
    usize => { "type": "integer", "minimum": 0 },
    u32 => { "type": "integer", "minimum": 0, "maximum": 4294967295u64 },
    i32 => { "type": "integer" },
    Vec<u32> => { "type": "array", "items": { "type": "integer", "minimum": 0 } },
    Patterns => { "anyOf": [
        { "type": "string" },
        { "type": "array", "items": { "type": "string" } }
    ] },
    Size => { "anyOf": [
        { "type": "integer", "minimum": 0 },
        { "type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*([KMGT]i?B|B)?\\s*$" }
    ] },
    Sources => { "anyOf": [
        { "type": "string" },
        { "type": "array", "items": { "anyOf": [
            { "type": "string" },
            { "type": "object", "additionalProperties": false, "required": ["url"], "properties": {
                "url": { "type": "string" },
                "tls_ca": { "type": "string" },
                "tls_cert": { "type": "string" },
                "tls_key": { "type": "string" }
            } }
        ] } }
    ] },
    Vec<OutboxEntry> => { "type": "array", "items": { "anyOf": [
        { "type": "string" },
        { "type": "object", "additionalProperties": false, "required": ["table"], "properties": {
            "table": { "type": "string", "description": "The outbox table, `db.table`." },
            "id_column": { "type": "string", "description": "The event id (default `id`)." },
            "aggregate_type_column": { "type": "string", "description": "Default `aggregatetype`." },
            "aggregate_id_column": { "type": "string", "description": "Events are numbered per value of this column (default `aggregateid`)." },
            "type_column": { "type": "string", "description": "Default `type`." },
            "payload_column": { "type": "string", "description": "Default `payload`." },
            "deliver_url": { "type": "string", "description": "POST each event to this http:// URL." },
            "deliver_max_attempts": { "type": "integer", "minimum": 1, "description": "Give an event up after this many failed attempts: it goes to _binlake_rejects and its aggregate moves on (default: retry without limit)." }
        } }
    ] } },
    Vec<LayoutEntry> => { "type": "array", "items": {
        "type": "object", "additionalProperties": false, "required": ["tables"],
        "properties": {
            "tables": { "type": "string", "description": "Table patterns this layout applies to." },
            "order_by": { "type": "string", "description": "ClickHouse ORDER BY: every primary-key column as an element, no other column (default: the primary key)." },
            "partition_by": { "type": "string", "description": "ClickHouse PARTITION BY, over primary-key columns only; Delta: partition column names, comma-separated." },
            "ttl": { "type": "string", "description": "ClickHouse TTL (rows it removes are no longer in the replica)." },
            "settings": { "type": "string", "description": "ClickHouse table SETTINGS, e.g. `index_granularity = 4096`." },
            "column_types": { "type": "object", "additionalProperties": { "type": "string" }, "description": "Column -> `LowCardinality(<the type binlake writes>)`." }
        }
    } },
    TableMapKey => { "type": "object", "additionalProperties": { "type": "string" } },
    Vec<PipelineEntry> => { "type": "array", "items": {
        "type": "object", "required": ["name"],
        "properties": {
            "name": { "type": "string", "pattern": "^[A-Za-z0-9_-]+$", "description": "The pipeline's name: its checkpoint in the target, its metrics label." }
        },
        "description": "Any of the source keys (source, mode, tls_*, server_id, exclude_*, mask, mask_salt, start_at), tables, map, outbox, backfill and control_addr; the rest are shared."
    } },
    Vec<BackfillEntry> => { "type": "array", "items": {
        "type": "object", "additionalProperties": false, "required": ["tables", "schedule"],
        "properties": {
            "tables": { "type": "string", "description": "Table patterns to backfill." },
            "schedule": { "type": "string", "description": "Five-field cron schedule, UTC." },
            "where": { "type": "string", "description": "A predicate limiting the rows read." }
        }
    } },
}

macro_rules! config_keys {
    (
        $(
            $(#[doc = $gdoc:literal])*
            group $group:ident {
                $(
                    $(#[doc = $doc:literal])*
                    $key:ident : $fty:ty, flag $flagty:ty $(, [$($arg:tt)*])? ;
                )*
            }
        )*
        file_only {
            $(
                $(#[doc = $fdoc:literal])*
                $fkey:ident : $ffty:ty ;
            )*
        }
    ) => {
        /// Every key of the config file (see [`crate::config::keys`]; each has a flag of the same
        /// name, `max_batch_rows` = `--max-batch-rows`, except the file-only ones).
        #[derive(Debug, Clone, Default, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct FileConfig {
            $( $( $(#[doc = $doc])* pub $key: Option<$fty>, )* )*
            $( $(#[doc = $fdoc])* pub $fkey: Option<$ffty>, )*
        }

        impl FileConfig {
            /// `other` wins where it has a value.
            pub fn overlay(self, other: FileConfig) -> FileConfig {
                FileConfig {
                    $( $( $key: other.$key.or(self.$key), )* )*
                    $( $fkey: other.$fkey.or(self.$fkey), )*
                }
            }
        }

        $(
            $(#[doc = $gdoc])*
            #[derive(Debug, Clone, Default, clap::Args)]
            pub struct $group {
                $(
                    $(#[doc = $doc])*
                    #[arg(long $(, $($arg)*)?)]
                    pub $key: $flagty,
                )*
            }

            impl $group {
                /// Sets the keys whose flags were given.
                pub fn apply(&self, fc: &mut FileConfig) {
                    $(
                        if let Some(v) = IntoKey::into_key(self.$key.clone()) {
                            fc.$key = Some(v);
                        }
                    )*
                }
            }
        )*

        /// Every key, in declaration order.
        pub fn keys() -> Vec<KeyDoc> {
            vec![
                $( $(
                    KeyDoc {
                        name: stringify!($key),
                        group: stringify!($group),
                        doc: doc_text(&[$($doc),*]),
                        schema: <$fty as SchemaType>::schema(),
                    },
                )* )*
                $(
                    KeyDoc {
                        name: stringify!($fkey),
                        group: "file",
                        doc: doc_text(&[$($fdoc),*]),
                        schema: <$ffty as SchemaType>::schema(),
                    },
                )*
            ]
        }
    };
}

/// A doc comment's lines as one text (the leading space of `///` removed).
fn doc_text(lines: &[&str]) -> String {
    lines
        .iter()
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

/// The sink each sink group configures (its keys may go in `[sink.<name>]`).
pub const SINK_GROUPS: [(&str, &str); 3] = [
    ("parquet", "ParquetFlags"),
    ("delta", "DeltaFlags"),
    ("clickhouse", "ClickHouseFlags"),
];

config_keys! {
    /// Where changes come from: the servers, what to read of them, where to start.
    group SourceFlags {
        /// Required. Source servers of one replication topology: `mysql://user:password@host:port`
        /// (repeat the flag; in the file one URL, a list, or `[[source]]` tables with `url` and
        /// their own TLS files).
        source: Sources, flag Vec<String>;
        /// Several sources: `failover` (the default: one at a time, the next healthy one when it
        /// fails) or `active-active` (all at once, each transaction applied once).
        mode: String, flag Option<String>;
        /// PEM bundle of the CA(s) that signed the source's certificate (turns on verified TLS).
        tls_ca: String, flag Option<String>;
        /// Client certificate (PEM) for source users that `REQUIRE X509`; with `tls_key`.
        tls_cert: String, flag Option<String>;
        /// The client certificate's private key (PEM).
        tls_key: String, flag Option<String>;
        /// Replica server id binlake registers with (unique among the source's replicas).
        server_id: u32, flag Option<u32>;
        /// Changes written by these server ids are dropped (two-way setups; comma-separated).
        exclude_server_ids: Vec<u32>, flag Vec<u32>, [value_delimiter = ','];
        /// Changes of these MariaDB GTID domains are dropped (comma-separated).
        exclude_gtid_domains: Vec<u32>, flag Vec<u32>, [value_delimiter = ','];
        /// Columns left out of the target: `[db.]table.column` globs (repeat or comma-separate).
        exclude_columns: Patterns, flag Vec<String>;
        /// Columns replaced by a salted SHA-256 (hex): `[db.]table.column` globs.
        mask: Patterns, flag Vec<String>;
        /// The salt of `mask` (use `${ENV}` in the file); required with `mask`.
        mask_salt: String, flag Option<String>;
        /// Where to start without a checkpoint in the target: `snapshot` (the default: the
        /// existing rows, then the changes), `earliest`, `current`, a GTID, or `file:position`.
        start_at: String, flag Option<String>;
    }

    /// Which tables.
    group TablesFlags {
        /// Tables to replicate: globs over `db.table`, `!` excludes, a part with a dot
        /// backtick-quoted (`` `d.x`.`t` ``); repeat or comma-separate (default: every table but
        /// the server's own schemas).
        tables: Patterns, flag Vec<String>;
    }

    /// Where the replica is kept.
    group TargetFlags {
        /// The sink: `parquet` (the default), `delta` or `clickhouse` (those of this build). In
        /// the file, a `[sink.<name>]` table with the sink's keys selects it too.
        sink: String, flag Option<String>;
        /// Required. The target: a directory, `file:///dir` or `s3://bucket/prefix` (Parquet,
        /// Delta), or the ClickHouse HTTP URL `http://user:pw@host:8123`.
        target: String, flag Option<String>;
        /// The pipeline's name: several pipelines may share a target (letters, digits, - and _;
        /// default `default`).
        pipeline: String, flag Option<String>;
    }

    /// The Parquet sink.
    group ParquetFlags {
        /// ZSTD level of the data files (default 1).
        zstd_level: i32, flag Option<i32>;
    }

    /// The Delta sink.
    group DeltaFlags {
        /// `soft` (tombstones: `_binlake_deleted = true`, the default) or `hard` (deleted rows
        /// are removed).
        deletes: String, flag Option<String>;
        /// Delta: bytes per second of data files that commits may rewrite, e.g. `32MiB` (the
        /// default) or `off`. Updates spread over a large table rewrite much of it per commit
        /// (copy-on-write), and the replaced files stay until vacuum: after a commit that
        /// rewrote more than this allows, the next one waits (stretching `max_latency`; the size
        /// bounds still commit), so such a table is rewritten at a bounded rate.
        rewrite_budget: Size, flag Option<String>;
        /// `replicate` runs table maintenance this often, e.g. `6h` (default: never; run
        /// `binlake maintain`). Delta and ClickHouse maintain in the background; a Parquet lake
        /// is compacted between two commits.
        maintain_every: String, flag Option<String>;
        /// Maintenance: compaction's target file size, e.g. `128MiB` (the default).
        target_file_size: Size, flag Option<String>;
        /// Maintenance: vacuum keeps the files any version younger than this needs (default
        /// `7d`); in a Parquet lake, the files a compaction replaced are deleted this long after
        /// it (default `1m`, so queries running meanwhile still find them).
        vacuum_retention: String, flag Option<String>;
        /// Maintenance: tombstones older than this are purged (default `7d`).
        tombstone_retention: String, flag Option<String>;
        /// Maintenance of a Parquet lake: compaction drops row versions superseded by a newer
        /// version of their key and written longer ago than this, e.g. `7d` (default: every
        /// version is kept; watermark history is kept 7 days).
        version_retention: String, flag Option<String>;
    }

    /// The ClickHouse sink.
    group ClickHouseFlags {
        /// Insert compression: `auto` (the default: LZ4, none to a loopback server), `lz4` or
        /// `none`.
        compression: String, flag Option<String>;
        /// Prepended to the database names binlake creates.
        database_prefix: String, flag Option<String>;
        /// ClickHouse over https: PEM bundle of the private CA that signed the server's
        /// certificate.
        clickhouse_tls_ca: String, flag Option<String>;
    }

    /// How `replicate` batches, commits and reports.
    group PipelineFlags {
        /// Stop once everything the server had at the start is applied (and every snapshot is
        /// done).
        exit_when_caught_up: bool, flag bool;
        /// Values the target cannot hold: `null` (the default: stored as NULL, counted),
        /// `fail` (stop, naming table, column and position) or `dead_letter` (the row goes to
        /// `_binlake_rejects`).
        invalid_values: String, flag Option<String>;
        /// When the binlog the checkpoint needs is gone (purged during a long stop, or a
        /// failover to a server without it): `resnapshot` (the default: start from the current
        /// position and read every table again while the stream goes on, each table's rows
        /// replaced as it finishes, readers never seeing it empty) or `fail` (stop with the
        /// recovery command).
        on_position_lost: String, flag Option<String>;
        /// A commit is made at this many buffered rows (default 100000).
        max_batch_rows: usize, flag Option<usize>;
        /// ... or at this many buffered bytes, e.g. `64MiB` (the default).
        max_batch_bytes: Size, flag Option<String>;
        /// ... or when the oldest buffered change is this old, e.g. `1s` (the default), `500ms`.
        max_latency: String, flag Option<String>;
        /// When the source has nothing more to send (it is drained at a transaction boundary),
        /// what is buffered is committed at once, but never sooner than this after the last
        /// commit started (the floor that keeps a steady trickle from becoming one commit per
        /// transaction). Default per sink: `50ms` ClickHouse, `100ms` Parquet, `200ms` Delta.
        /// `max_latency` stays the bound under load.
        min_commit_interval: String, flag Option<String>;
        /// The checkpoint is committed at least this often while the source is idle (default
        /// `10s`).
        checkpoint_interval: String, flag Option<String>;
        /// The source's heartbeat period: how soon an idle source's silence is noticed
        /// (default `200ms`).
        heartbeat: String, flag Option<String>;
        /// Snapshots: key ranges read at once (default 2).
        snapshot_parallelism: usize, flag Option<usize>;
        /// Snapshots: rows per chunk (default 20000).
        snapshot_chunk_rows: usize, flag Option<usize>;
        /// Serve Prometheus metrics at `http://ADDR/metrics`, e.g. `127.0.0.1:9187` (a bare port:
        /// loopback).
        metrics_addr: String, flag Option<String>;
        /// Listen here for `binlake backfill` and `validate --repair`, e.g. `127.0.0.1:7219`
        /// (off by default; anything but loopback needs `control_token`).
        control_addr: String, flag Option<String>;
        /// Outbox tables: each committed INSERT into one becomes a row of `<db>.<table>_events`,
        /// keyed by the event id and numbered per aggregate (`_binlake_seq`); deletes and
        /// updates of outbox rows emit nothing. The flag names a table (repeat it); in the file,
        /// `[[outbox]]` tables with `table` and, to rename Debezium's columns, `id_column`,
        /// `aggregate_type_column`, `aggregate_id_column`, `type_column`, `payload_column`.
        outbox: Vec<OutboxEntry>, flag Vec<String>;
        /// With one outbox: POST each event to this `http://` URL (`deliver_url` of its
        /// `[[outbox]]` entry): JSON with an `Idempotency-Key` header, per aggregate in
        /// `_binlake_seq` order, retried with backoff until a 2xx, progress in the checkpoint.
        outbox_deliver_url: String, flag Option<String>;
    }

    /// Logging.
    group LogFlags {
        /// Log lines as `text` (the default) or `json`.
        log_format: String, flag Option<String>;
    }

    file_only {
        /// The token requests to `control_addr` must carry when it is not loopback (use
        /// `${ENV}`; default: the environment's `BINLAKE_CONTROL_TOKEN`). No flag: a token on the
        /// command line would show in the process list.
        control_token: String;
        /// Scheduled backfills: `[[backfill]]` tables with `tables`, `schedule` (cron, UTC) and
        /// an optional `where`.
        backfill: Vec<BackfillEntry>;
        /// Table layouts: `[[layout]]` tables with `tables` (patterns) and, for ClickHouse, any of
        /// `order_by`, `partition_by`, `ttl`, `settings` (ClickHouse SQL) and `column_types`
        /// (`{ status = "LowCardinality(String)" }`), applied when binlake creates a matching
        /// table (the first entry that matches). A keyed table's ORDER BY names every
        /// primary-key column, and its ORDER BY and PARTITION BY read no other column. For
        /// Delta, `partition_by` only: column names (`"region, day"`), the partition columns of
        /// the tables binlake creates.
        layout: Vec<LayoutEntry>;
        /// Table mapping: `{ "shop.*" = "warehouse.{table}" }`. A key is a table pattern, a
        /// value the target `db.table` (`{db}` and `{table}` are the source table's parts); an
        /// exact pattern wins over globs, and a table matching no entry keeps its name. One
        /// source table per target table (see `[[pipelines]]` for several sources).
        map: TableMapKey;
        /// Shards into shared tables: every row gets the column `_binlake_origin` (the
        /// pipeline's name), which joins each table's key, so pipelines that all set it may
        /// `map` their tables into one target table whatever their keys (their rows never
        /// collide; TRUNCATE and re-snapshots touch only their own). Cannot change once a pipeline has written.
        origin_in_key: bool;
        /// What decides between changes of the same key from several sources mapped into one
        /// table (pipelines without `origin_in_key`): `last_writer_wins`, the change with the
        /// latest source commit time (whole seconds, never going back within one source; ties
        /// go to the greater pipeline name). Every pipeline then writes last-writer-wins
        /// versions (see the README's "Many sources"). `first_writer_wins`, `merge_columns` and
        /// `reject` are not built yet. Cannot change once a pipeline has written.
        conflict: String;
        /// Several independent pipelines in one process (fan-in): `[[pipelines]]` tables, each
        /// with a `name` (its checkpoint, metrics label and log field) and its own `source`,
        /// `mode`, TLS files, `server_id`, `tables`, `start_at`, `exclude_*`, `mask`, `map`,
        /// `outbox`, `backfill` and `control_addr`; keys left out are taken from the top level,
        /// and the target, sink and batching keys are shared. One pipeline failing does not
        /// stop the others. `--pipeline NAME` runs (or shows) only that one.
        pipelines: Vec<PipelineEntry>;
    }
}
