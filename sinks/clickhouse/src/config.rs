//! ClickHouse sink configuration: parsed and validated without I/O.

use binlake_sink::SinkError;
use url::Url;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// ClickHouse's LZ4 block compression for inserts (the default).
    Lz4,
    /// Plain bodies, for servers or proxies that cannot take compressed inserts, and for a
    /// server on the same machine (compressing for loopback only costs both sides CPU).
    None,
}

#[derive(Debug, Clone)]
pub struct ClickHouseConfig {
    /// `http(s)://[user[:password]@]host:port` (credentials are taken out of the URL).
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub pipeline: String,
    /// Prepended to every database name binlake creates (`<prefix><db>`, `<prefix>binlake`).
    pub database_prefix: String,
    pub compression: Compression,
    /// Background `OPTIMIZE TABLE ... FINAL` this often (`maintain_every`), with tombstones
    /// purged by CLEANUP when this retention is zero.
    pub maintenance: Option<(std::time::Duration, std::time::Duration)>,
    /// PEM bundle of a private CA for an https URL (`clickhouse_tls_ca`); the public CAs are
    /// trusted without it.
    pub tls_ca: Option<String>,
    /// Per-table layouts of the tables binlake creates (`[[layout]]`; see `crate::layout`).
    pub layouts: Vec<crate::layout::Layout>,
}

impl ClickHouseConfig {
    /// Parses `target`; errors name what is wrong with it.
    pub fn new(target: &str, pipeline: &str) -> Result<Self, SinkError> {
        let bad = |m: String| SinkError::Definite(format!("target `{}`: {m}", redact(target)));
        let mut u = Url::parse(target)
            .map_err(|e| bad(format!("{e} (expected http://user:password@host:8123)")))?;
        if u.scheme() != "http" && u.scheme() != "https" {
            return Err(bad(format!("scheme `{}`: the ClickHouse sink speaks HTTP (http:// or https://, port 8123 or 8443)", u.scheme())));
        }
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let loopback = match u.host() {
            Some(url::Host::Ipv4(a)) => a.is_loopback(),
            Some(url::Host::Ipv6(a)) => a.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        };
        let user = (!u.username().is_empty()).then(|| decode(u.username()));
        let password = u.password().map(decode);
        let _ = u.set_username("");
        let _ = u.set_password(None);
        u.set_query(None);
        Ok(ClickHouseConfig {
            url: u.as_str().trim_end_matches('/').to_string(),
            user,
            password,
            pipeline: pipeline.to_string(),
            database_prefix: String::new(),
            // LZ4 over a network; nothing to gain on loopback
            compression: if loopback {
                Compression::None
            } else {
                Compression::Lz4
            },
            maintenance: None,
            tls_ca: None,
            layouts: Vec::new(),
        })
    }

    /// Checks the settings without I/O (the URL was parsed by [`ClickHouseConfig::new`]); the
    /// error names what is wrong.
    pub fn validate(&self) -> Result<(), SinkError> {
        let bad = |m: String| Err(SinkError::Definite(m));
        if self.pipeline.is_empty() || self.pipeline.contains('/') {
            return bad("the pipeline name must be non-empty and contain no '/'".into());
        }
        if !self
            .database_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return bad(format!(
                "database_prefix `{}`: use letters, digits and _",
                self.database_prefix
            ));
        }
        if self.maintenance.is_some_and(|(every, _)| every.is_zero()) {
            return bad("maintain_every must be above zero".into());
        }
        if self.tls_ca.is_some() && !self.url.starts_with("https://") {
            return bad(format!(
                "clickhouse_tls_ca is set but the target {} is not https://",
                self.url
            ));
        }
        for l in &self.layouts {
            l.validate().map_err(SinkError::Definite)?;
        }
        Ok(())
    }

    /// The ClickHouse database of a source database.
    pub fn database(&self, db: &str) -> String {
        format!("{}{db}", self.database_prefix)
    }

    /// binlake's own database (checkpoints, dead letters).
    pub fn meta_database(&self) -> String {
        format!("{}binlake", self.database_prefix)
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_out_of_the_url() {
        let c = ClickHouseConfig::new("http://bob:p%40ss@127.0.0.1:8123/", "p").unwrap();
        assert_eq!(c.url, "http://127.0.0.1:8123");
        assert_eq!(c.user.as_deref(), Some("bob"));
        assert_eq!(c.password.as_deref(), Some("p@ss"));
        assert_eq!(c.compression, Compression::None, "loopback");
        let remote = ClickHouseConfig::new("http://ch.example:8123", "p").unwrap();
        assert_eq!(remote.compression, Compression::Lz4);
        assert!(ClickHouseConfig::new("tcp://h:9000", "p")
            .unwrap_err()
            .to_string()
            .contains("HTTP"));
    }
}
