//! Preflight: the server settings and grants binlake needs, each failure naming the setting, what
//! it is, and the statement or config line that fixes it.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::{Flavor, ServerInfo, SourceError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub value: String,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub server: ServerInfo,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.level == Level::Fail)
    }
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.level == Level::Fail)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "server: {} ({:?}), server_id {}",
            self.server.version, self.server.flavor, self.server.server_id
        )?;
        for c in &self.checks {
            let tag = match c.level {
                Level::Ok => "ok  ",
                Level::Warn => "WARN",
                Level::Fail => "FAIL",
            };
            writeln!(
                f,
                "  [{tag}] {:<24} = {:<12} {}",
                c.name, c.value, c.message
            )?;
        }
        Ok(())
    }
}

async fn var(conn: &mut Conn, name: &str) -> Result<Option<String>, SourceError> {
    match conn
        .query_first::<Option<String>, _>(format!("SELECT CAST(@@GLOBAL.{name} AS CHAR)"))
        .await
    {
        Ok(v) => Ok(v.flatten()),
        // 1193: unknown system variable (older server or other flavour)
        Err(mysql_async::Error::Server(e)) if e.code == 1193 => Ok(None),
        Err(e) => Err(SourceError::from_mysql(e, "reading server variables")),
    }
}

pub async fn run(conn: &mut Conn) -> Result<Report, SourceError> {
    let version: String = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(|e| SourceError::from_mysql(e, "SELECT VERSION()"))?
        .unwrap_or_default();
    let flavor = if version.contains("MariaDB") {
        Flavor::MariaDb
    } else {
        Flavor::Mysql
    };
    let server_id: u32 = var(conn, "server_id")
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut checks = Vec::new();
    let mut add = |name: &'static str, level: Level, value: Option<&str>, message: String| {
        checks.push(Check {
            name,
            level,
            value: value.unwrap_or("(unset)").to_string(),
            message,
        });
    };
    let cnf = "in the [mysqld] section of my.cnf";

    let log_bin = var(conn, "log_bin").await?;
    let on = |v: &Option<String>| matches!(v.as_deref(), Some("1" | "ON"));
    if on(&log_bin) {
        add("log_bin", Level::Ok, Some("ON"), String::new());
    } else {
        add("log_bin", Level::Fail, log_bin.as_deref(), format!("the binary log is off. Fix: add `log_bin = mysql-bin` {cnf} and restart the server (it cannot be turned on at runtime)."));
    }

    let fmt = var(conn, "binlog_format").await?;
    if fmt.as_deref() == Some("ROW") {
        add("binlog_format", Level::Ok, fmt.as_deref(), String::new());
    } else {
        add("binlog_format", Level::Fail, fmt.as_deref(), format!("binlake needs row events. Fix: SET GLOBAL binlog_format = 'ROW'; and `binlog_format = ROW` {cnf} (sessions already open keep their format until they reconnect)."));
    }

    let image = var(conn, "binlog_row_image").await?;
    if image.as_deref() == Some("FULL") {
        add(
            "binlog_row_image",
            Level::Ok,
            image.as_deref(),
            String::new(),
        );
    } else {
        add("binlog_row_image", Level::Fail, image.as_deref(), format!("binlake needs every column in every row event. Fix: SET GLOBAL binlog_row_image = 'FULL'; and `binlog_row_image = FULL` {cnf}."));
    }

    let meta = var(conn, "binlog_row_metadata").await?;
    match meta.as_deref() {
        Some("FULL") => add("binlog_row_metadata", Level::Ok, meta.as_deref(), String::new()),
        None => add("binlog_row_metadata", Level::Fail, None, "the server cannot log column names and types (MariaDB 10.5+ or MySQL 8.0.1+ needed). Fix: upgrade the server.".into()),
        _ => add("binlog_row_metadata", Level::Fail, meta.as_deref(), format!("binlake reads column names, signedness and charsets from the binlog. Fix: SET GLOBAL binlog_row_metadata = 'FULL'; and `binlog_row_metadata = FULL` {cnf}.")),
    }

    let mut gtid_enabled = true;
    match flavor {
        Flavor::MariaDb => {
            let pos = var(conn, "gtid_binlog_pos").await?;
            add(
                "gtid_binlog_pos",
                Level::Ok,
                pos.as_deref().or(Some("(empty)")),
                "MariaDB GTIDs: resume and failover by GTID".into(),
            );
            let compress = var(conn, "log_bin_compress").await?;
            if on(&compress) {
                add("log_bin_compress", Level::Fail, compress.as_deref(), format!("binlake does not decode compressed MariaDB events. Fix: SET GLOBAL log_bin_compress = OFF; and `log_bin_compress = OFF` {cnf}."));
            }
        }
        Flavor::Mysql => {
            let mode = var(conn, "gtid_mode").await?;
            gtid_enabled = mode.as_deref() == Some("ON");
            if gtid_enabled {
                add("gtid_mode", Level::Ok, mode.as_deref(), String::new());
            } else {
                add("gtid_mode", Level::Warn, mode.as_deref(), format!("without GTIDs binlake resumes by file position and cannot fail over between servers. Fix: `gtid_mode = ON` and `enforce_gtid_consistency = ON` {cnf}."));
            }
            let opts = var(conn, "binlog_row_value_options").await?;
            if opts.as_deref().is_some_and(|o| o.contains("PARTIAL_JSON")) {
                add("binlog_row_value_options", Level::Fail, opts.as_deref(), format!("partial JSON updates cannot be applied to a replica without the full document. Fix: SET GLOBAL binlog_row_value_options = ''; and remove it {cnf}."));
            }
        }
    }

    // Grants: replication (the binlog dump), and binlog monitoring (SHOW MASTER STATUS / BINARY LOGS).
    let grants: Vec<String> = conn
        .query("SHOW GRANTS")
        .await
        .map_err(|e| SourceError::from_mysql(e, "SHOW GRANTS"))?;
    let g = grants.join("\n").to_uppercase();
    let all = g.contains("ALL PRIVILEGES ON *.*");
    let user: Option<String> = conn
        .query_first("SELECT CURRENT_USER()")
        .await
        .ok()
        .flatten();
    let who = user.unwrap_or_else(|| "binlake's user".into());
    if all || g.contains("REPLICATION SLAVE") || g.contains("REPLICATION REPLICA") {
        add(
            "grant REPLICATION SLAVE",
            Level::Ok,
            Some("yes"),
            String::new(),
        );
    } else {
        add(
            "grant REPLICATION SLAVE",
            Level::Fail,
            Some("no"),
            format!("needed to read the binlog. Fix: GRANT REPLICATION SLAVE ON *.* TO {who};"),
        );
    }
    if all
        || g.contains("REPLICATION CLIENT")
        || g.contains("BINLOG MONITOR")
        || g.contains("SUPER")
    {
        add(
            "grant REPLICATION CLIENT",
            Level::Ok,
            Some("yes"),
            String::new(),
        );
    } else {
        let p = if flavor == Flavor::MariaDb {
            "BINLOG MONITOR"
        } else {
            "REPLICATION CLIENT"
        };
        add(
            "grant REPLICATION CLIENT",
            Level::Fail,
            Some("no"),
            format!("needed to read binlog positions. Fix: GRANT {p} ON *.* TO {who};"),
        );
    }
    if !(all || g.contains("GRANT SELECT") || g.contains(", SELECT") || g.contains("SELECT,")) {
        add(
            "grant SELECT",
            Level::Warn,
            Some("no"),
            format!(
                "snapshots and `validate` read the tables. Fix: GRANT SELECT ON <db>.* TO {who};"
            ),
        );
    }

    // The connection itself: encrypted or not (session status, this connection's own values).
    let status = |rows: Vec<(String, String)>, n: &str| {
        rows.into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v)
            .unwrap_or_default()
    };
    let ssl: Vec<(String, String)> = conn
        .query("SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')")
        .await
        .unwrap_or_default();
    let (proto, cipher) = (
        status(ssl.clone(), "Ssl_version"),
        status(ssl, "Ssl_cipher"),
    );
    let have_ssl = var(conn, "have_ssl").await?;
    if !proto.is_empty() {
        add(
            "connection",
            Level::Ok,
            Some(&proto),
            format!("encrypted ({cipher})"),
        );
    } else if have_ssl.as_deref() == Some("YES") {
        add(
            "connection",
            Level::Warn,
            Some("plain"),
            "the server offers TLS but this connection is not encrypted: the password hash and every row cross the network in clear. Fix: add `require_ssl=true` to the source URL (and `tls_ca` with the server's CA bundle).".into(),
        );
    } else {
        add(
            "connection",
            Level::Warn,
            Some("plain"),
            "not encrypted, and the server offers no TLS (have_ssl is not YES). Fix: give the server ssl_cert/ssl_key, then add `require_ssl=true` to the source URL.".into(),
        );
    }

    let server = ServerInfo {
        flavor,
        version,
        server_id,
        gtid_enabled,
    };
    Ok(Report { server, checks })
}
