//! TLS to the source. A throwaway CA (`tests/scripts/tls_certs.sh`) signs the certificate of a
//! MariaDB that refuses plain connections (`require_secure_transport=ON`). Over verified TLS:
//! snapshot, stream, kill -9 and restart into every sink, the replica equal to the source. A
//! wrong CA, a missing CA file, a plain connection and a missing client certificate each fail
//! with a clear error and the documented exit code, never a panic.

use std::time::Duration;

use crate::harness::*;
use crate::snapshot::wait_equal;

/// A server with TLS required, and the directory of its certificates.
fn tls_source(dir: &TestDir) -> (Maria, String) {
    let certs = tls_certs(&dir.path("certs"));
    let m = Maria::start(
        &dir.0.join("db"),
        1,
        &[
            &format!("--ssl-ca={certs}/ca.pem"),
            &format!("--ssl-cert={certs}/server.pem"),
            &format!("--ssl-key={certs}/server-key.pem"),
            "--require-secure-transport=ON",
        ],
    );
    m.sql(
        "CREATE DATABASE shop; USE shop;
         CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(40));
         INSERT INTO shop.t SELECT seq, CONCAT('snap-', seq) FROM seq_1_to_5000;",
    );
    (m, certs)
}

/// Snapshot, stream, kill -9 and restart over TLS into one sink.
fn over_tls(name: &str, sink_args: &[&str], target: &str, reader: &[&str]) {
    let dir = TestDir::new(name);
    let (m, certs) = tls_source(&dir);
    let url = format!("{}?require_ssl=true", m.url());
    let ca = format!("{certs}/ca.pem");
    let mut args = vec![
        "replicate",
        "--source",
        &url,
        "--tls-ca",
        &ca,
        "--tables",
        "shop.*",
        "--max-latency",
        "200ms",
    ];
    args.extend_from_slice(sink_args);
    let mut r = spawn_binlake(&args);
    wait_equal(&m, target, "shop.t", reader, Duration::from_secs(120));
    m.sql(
        "UPDATE shop.t SET v = 'streamed' WHERE id <= 100; DELETE FROM shop.t WHERE id > 4900;
         INSERT INTO shop.t VALUES (9001, 'new');",
    );
    std::thread::sleep(Duration::from_millis(300));
    r.kill().unwrap(); // kill -9, whatever it was doing
    let killed = r.wait_with_output().unwrap();
    m.sql("UPDATE shop.t SET v = 'after the restart' WHERE id BETWEEN 200 AND 300;");
    let r = spawn_binlake(&args);
    wait_equal(&m, target, "shop.t", reader, Duration::from_secs(120));
    let out = terminate(r, Duration::from_secs(60));
    let log = format!("{}{}", stderr(&killed), stderr(&out));
    assert!(out.status.success(), "{log}");
    // chunks were read over TLS (through mysql_async: the snapshot client speaks plain TCP only)
    assert!(
        log.contains("snapshot chunks are read through mysql_async"),
        "{log}"
    );
}

#[test]
fn snapshot_stream_and_kill_9_over_tls_parquet() {
    let dir = TestDir::new("tls_pq_target");
    let target = dir.path("lake");
    over_tls("tls_pq", &["--target", &target], &target, &[]);
}

#[cfg(feature = "delta")]
#[test]
fn snapshot_stream_and_kill_9_over_tls_delta() {
    let dir = TestDir::new("tls_delta_target");
    let target = dir.path("lake");
    over_tls(
        "tls_delta",
        &["--sink", "delta", "--target", &target],
        &target,
        &["--reader", "delta"],
    );
}

#[cfg(feature = "clickhouse")]
#[test]
fn snapshot_stream_and_kill_9_over_tls_clickhouse() {
    let dir = TestDir::new("tls_ch_server");
    let ch = ClickHouse::start(&dir.0.join("ch"), "tls");
    over_tls("tls_ch", &ch.args(), &ch.url, &ch.reader());
}

/// Every way a TLS setup can be wrong ends in one clear error, not a panic or a retry loop.
#[test]
fn tls_misconfigurations_fail_clearly() {
    let dir = TestDir::new("tls_bad");
    let (m, certs) = tls_source(&dir);
    let tls_url = format!("{}?require_ssl=true", m.url());
    let plain_url = m.url();
    let ca = format!("{certs}/ca.pem");
    let other = format!("{certs}/other-ca.pem");
    let target = dir.path("lake");
    let t = Duration::from_secs(60);
    let run = |args: &[&str]| {
        let out = binlake(args, t);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert!(!text.contains("panicked"), "{text}");
        (out.status.code(), text)
    };

    // verified: check reports the encrypted connection
    let (code, text) = run(&["check", "--source", &tls_url, "--tls-ca", &ca]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("connection") && text.contains("TLSv1") && text.contains("encrypted"),
        "{text}"
    );

    // a CA that did not sign the server's certificate
    for cmd in ["check", "replicate"] {
        let (code, text) = run(&[
            cmd, "--source", &tls_url, "--tls-ca", &other, "--target", &target,
        ]);
        assert_eq!(code, Some(3), "{cmd}: {text}");
        assert!(
            text.contains("certificate") && text.contains("tls_ca"),
            "{cmd}: {text}"
        );
    }
    // no CA at all: the server's certificate is not signed by a public CA either
    let (code, text) = run(&["replicate", "--source", &tls_url, "--target", &target]);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("certificate"), "{text}");

    // a plain connection, refused by the server (which MariaDB reports as a wrong password)
    for cmd in ["check", "replicate"] {
        let (code, text) = run(&[cmd, "--source", &plain_url, "--target", &target]);
        assert_eq!(code, Some(3), "{cmd}: {text}");
        assert!(
            text.contains("require_ssl=true") && text.contains("refuses plain"),
            "{cmd}: {text}"
        );
    }

    // a CA file that is not there: a config error naming the key
    let (code, text) = run(&[
        "replicate",
        "--source",
        &tls_url,
        "--tls-ca",
        "/nonexistent/ca.pem",
        "--target",
        &target,
    ]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("tls_ca") && text.contains("/nonexistent/ca.pem"),
        "{text}"
    );

    // a user that REQUIRE X509: refused without a client certificate, served with one
    m.sql("ALTER USER 'binlake'@'%' REQUIRE X509;");
    let (code, text) = run(&["check", "--source", &tls_url, "--tls-ca", &ca]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("refused the login"), "{text}");
    let (cert, key) = (
        format!("{certs}/client.pem"),
        format!("{certs}/client-key.pem"),
    );
    let (code, text) = run(&[
        "check",
        "--source",
        &tls_url,
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = run(&[
        "check",
        "--source",
        &tls_url,
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
    ]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("tls_key"), "{text}");

    // nothing printed the password (`binlake`) in the clear, in the URL form it was given
    let (_, text) = run(&["check", "--source", &tls_url, "--tls-ca", &other]);
    assert!(!text.contains("binlake:binlake@"), "{text}");
}

/// The source password never leaves binlake's memory: not in logs (a run, a failing login, a
/// wrong port), `status`, `check`, the metrics, the checkpoint or any file of the target.
#[test]
fn the_source_password_appears_in_no_output() {
    let dir = TestDir::new("secrets");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    let pw = "Zx9-very-secret-Pw";
    m.sql(&format!(
        "CREATE USER 'secretive'@'%' IDENTIFIED BY '{pw}';
         GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'secretive'@'%';
         CREATE DATABASE shop; GRANT SELECT ON shop.* TO 'secretive'@'%';
         CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(20)); INSERT INTO shop.t VALUES (1, 'a');"
    ));
    let url = format!("mysql://secretive:{pw}@127.0.0.1:{}", m.port);
    let target = dir.path("lake");
    let addr = format!("127.0.0.1:{}", crate::observe::free_port());
    let mut seen = String::new();
    let r = spawn_binlake(&[
        "replicate",
        "--source",
        &url,
        "--tables",
        "shop.*",
        "--target",
        &target,
        "--metrics-addr",
        &addr,
        "--max-latency",
        "200ms",
    ]);
    wait_equal(&m, &target, "shop.t", &[], Duration::from_secs(60));
    m.sql("INSERT INTO shop.t VALUES (2, 'b');");
    wait_equal(&m, &target, "shop.t", &[], Duration::from_secs(60));
    seen += &crate::observe::scrape(&addr);
    let out = terminate(r, Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    seen += &format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    for args in [
        vec!["status", "--target", &target],
        vec!["check", "--source", &url],
    ] {
        let out = binlake(&args, Duration::from_secs(60));
        seen += &format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    }
    // failures print the URL they failed on
    let wrong_pw = format!("mysql://secretive:{pw}-wrong@127.0.0.1:{}", m.port);
    let closed = format!(
        "mysql://secretive:{pw}@127.0.0.1:{}",
        crate::observe::free_port()
    );
    for u in [&wrong_pw, &closed] {
        let out = binlake(&["check", "--source", u], Duration::from_secs(60));
        assert!(!out.status.success());
        seen += &format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    }
    assert!(
        seen.contains("secretive"),
        "the outputs were not collected:\n{seen}"
    );
    assert!(!seen.contains(pw), "the password was printed:\n{seen}");
    // nor written anywhere in the target (checkpoint, data, watermarks)
    let mut stack = vec![std::path::PathBuf::from(&target)];
    let mut files = 0;
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap().path();
            if e.is_dir() {
                stack.push(e);
            } else {
                files += 1;
                let bytes = std::fs::read(&e).unwrap();
                assert!(
                    !bytes.windows(pw.len()).any(|w| w == pw.as_bytes()),
                    "the password is in {}",
                    e.display()
                );
            }
        }
    }
    assert!(files > 2, "the target is empty");
}

/// ClickHouse over https, its certificate signed by a private CA (`clickhouse_tls_ca`): the
/// replica is written and read over verified TLS; without the CA, or with another one, binlake
/// stops with one clear error instead of retrying for ever.
#[cfg(feature = "clickhouse")]
#[test]
fn clickhouse_over_https_with_a_private_ca() {
    let dir = TestDir::new("tls_ch_https");
    let certs = tls_certs(&dir.path("certs"));
    let ch = ClickHouse::start_tls(&dir.0.join("ch"), "https", &certs);
    assert!(ch.url.starts_with("https://"), "{}", ch.url);
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql(
        "CREATE DATABASE shop; USE shop; CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(40));
         INSERT INTO shop.t SELECT seq, CONCAT('snap-', seq) FROM seq_1_to_1000;",
    );
    let url = m.url();
    let ca = format!("{certs}/ca.pem");
    let other = format!("{certs}/other-ca.pem");
    let mut args = vec![
        "replicate",
        "--source",
        &url,
        "--tables",
        "shop.*",
        "--max-latency",
        "200ms",
        "--clickhouse-tls-ca",
        &ca,
    ];
    args.extend(ch.args());
    let r = spawn_binlake(&args);
    wait_equal(
        &m,
        &ch.url,
        "shop.t",
        &ch.reader(),
        Duration::from_secs(120),
    );
    m.sql("UPDATE shop.t SET v = 'streamed' WHERE id <= 10; DELETE FROM shop.t WHERE id > 990;");
    wait_equal(&m, &ch.url, "shop.t", &ch.reader(), Duration::from_secs(60));
    let out = terminate(r, Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));

    // another CA, or none (only public CAs trusted): one clear error, no retry loop
    for extra in [vec!["--clickhouse-tls-ca", other.as_str()], vec![]] {
        let mut args = vec!["status"];
        args.extend(ch.args());
        args.extend(extra.iter().copied());
        let out = binlake(&args, Duration::from_secs(60));
        let err = stderr(&out);
        assert!(!out.status.success(), "{extra:?}: {err}");
        assert!(
            err.contains("certificate")
                && err.contains("clickhouse_tls_ca")
                && !err.contains("panicked"),
            "{extra:?}: {err}"
        );
    }
}

/// The control endpoint (backfills re-read tables at the source) on anything but loopback:
/// refused without `BINLAKE_CONTROL_TOKEN`, and then only requests carrying the token are served.
#[test]
fn control_endpoint_off_loopback_needs_a_token() {
    let dir = TestDir::new("control_token");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    m.sql("CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(20)); INSERT INTO shop.t VALUES (1, 'a');");
    let url = m.url();
    let target = dir.path("lake");
    let port = crate::observe::free_port();
    let any = format!("0.0.0.0:{port}");
    let args = [
        "replicate",
        "--source",
        &url,
        "--tables",
        "shop.*",
        "--target",
        &target,
        "--control-addr",
        &any,
        "--max-latency",
        "200ms",
    ];
    let out = binlake(&args, Duration::from_secs(60));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("control_addr") && err.contains("BINLAKE_CONTROL_TOKEN"),
        "{err}"
    );

    // the token from the config file, which takes it from the environment
    let token = "t0k-for-this-test";
    let config = dir.path("binlake.toml");
    std::fs::write(
        &config,
        "control_token = \"${CONTROL_TOKEN_OF_THIS_TEST}\"\n",
    )
    .unwrap();
    let mut with_config = args.to_vec();
    with_config.extend(["--config", &config]);
    let r = spawn_binlake_env(&with_config, &[("CONTROL_TOKEN_OF_THIS_TEST", token)]);
    wait_equal(&m, &target, "shop.t", &[], Duration::from_secs(60));
    let here = format!("127.0.0.1:{port}");
    let req = ["backfill", "--control", &here, "--tables", "shop.t"];
    for env in [vec![], vec![("BINLAKE_CONTROL_TOKEN", "not-the-token")]] {
        let out = binlake_env(&req, &env, Duration::from_secs(60));
        let err = stderr(&out);
        assert!(!out.status.success(), "{env:?}: {err}");
        assert!(err.contains("BINLAKE_CONTROL_TOKEN"), "{env:?}: {err}");
    }
    let out = binlake_env(
        &req,
        &[("BINLAKE_CONTROL_TOKEN", token)],
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("backfill queued: shop.t"),
        "{text}{}",
        stderr(&out)
    );
    let out = terminate(r, Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
}
