//! https to ClickHouse with a private CA (`clickhouse_tls_ca`). The clickhouse crate's own client
//! trusts the public CAs only (webpki roots); a server whose certificate a company CA signed
//! gets a hyper client built the same way (HTTP/1, keepalive 60 s, pool idle 2 s) whose rustls
//! configuration trusts that bundle as well. Verification of the certificate and host name
//! stays on: there is no switch to turn it off.

use std::sync::Arc;
use std::time::Duration;

use binlake_sink::SinkError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// A rustls client configuration trusting the public CAs and the PEM bundle at `ca`.
fn config(ca: &str) -> Result<rustls::ClientConfig, SinkError> {
    let bad = |m: String| SinkError::Definite(format!("clickhouse_tls_ca: {m}"));
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let pem = std::fs::read(ca).map_err(|e| bad(format!("cannot read {ca}: {e}")))?;
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("{ca}: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("{ca}: a certificate rustls refuses: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(bad(format!("{ca} holds no PEM certificate")));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A clickhouse client over a hyper client that trusts `ca` too.
pub fn client(ca: &str) -> Result<clickhouse::Client, SinkError> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config(ca)?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let hc = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(2))
        .build(https);
    Ok(clickhouse::Client::with_http_client(hc))
}

/// Whether a failed request failed on the server's certificate (a definite error: retrying
/// cannot help, the CA bundle or the URL must change).
pub fn certificate_error(e: &clickhouse::error::Error) -> bool {
    let text = format!("{e:?}");
    text.contains("InvalidCertificate") || text.contains("invalid peer certificate")
}
