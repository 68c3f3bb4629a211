//! Bad input gets one clear error, a non-zero exit, and loses nothing.

use std::time::Duration;

use crate::harness::*;

#[test]
fn statement_format_server_fails_preflight_naming_the_setting() {
    let dir = TestDir::new("stmt");
    let m = Maria::start(
        &dir.0.join("db"),
        1,
        &["--binlog-format=STATEMENT", "--binlog-row-metadata=MINIMAL"],
    );
    let url = m.url();
    let out = binlake(&["check", "--source", &url], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("[FAIL] binlog_format") && text.contains("SET GLOBAL binlog_format = 'ROW'"),
        "{text}"
    );
    assert!(
        text.contains("[FAIL] binlog_row_metadata") && text.contains("binlog_row_metadata = FULL"),
        "{text}"
    );
    let target = dir.path("lake");
    let out = binlake(
        &[
            "replicate",
            "--source",
            &url,
            "--target",
            &target,
            "--exit-when-caught-up",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("binlog_format"), "{}", stderr(&out));
}

#[test]
fn wrong_password_is_one_clear_error() {
    let dir = TestDir::new("pw");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    let url = format!("mysql://binlake:wrong@127.0.0.1:{}", m.port);
    for cmd in ["check", "replicate"] {
        let target = dir.path("lake");
        let out = binlake(
            &[cmd, "--source", &url, "--target", &target],
            Duration::from_secs(30),
        );
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let err = stderr(&out);
        assert!(
            err.contains("refused the login") && err.contains("Access denied"),
            "{cmd}: {err}"
        );
        assert!(
            !err.contains("wrong@"),
            "the password must not be printed: {err}"
        );
        assert_eq!(
            err.matches("error:").count(),
            1,
            "one error, not a cascade: {err}"
        );
    }
}

#[test]
fn unknown_config_key_and_bad_value_are_named() {
    let dir = TestDir::new("cfg");
    let cfg = dir.path("binlake.toml");
    std::fs::write(
        &cfg,
        "source = 'mysql://u:p@127.0.0.1:1'\ntarget = '/tmp/x'\nmax_latncy = '1s'\n",
    )
    .unwrap();
    let out = binlake(&["replicate", "--config", &cfg], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("max_latncy") && err.contains(&cfg), "{err}");

    std::fs::write(
        &cfg,
        "source = 'mysql://u:p@127.0.0.1:1'\ntarget = '/tmp/x'\nmax_latency = 'soon'\n",
    )
    .unwrap();
    let err = stderr(&binlake(
        &["replicate", "--config", &cfg],
        Duration::from_secs(10),
    ));
    assert!(
        err.contains("`max_latency`") && err.contains("soon") && err.contains("500ms"),
        "{err}"
    );

    std::fs::write(
        &cfg,
        "source = 'mysql://u:${BINLAKE_IT_UNSET_VAR}@127.0.0.1:1'\n",
    )
    .unwrap();
    let err = stderr(&binlake(
        &["replicate", "--config", &cfg],
        Duration::from_secs(10),
    ));
    assert!(err.contains("BINLAKE_IT_UNSET_VAR"), "{err}");

    // a flag overrides the file, and its bad value is named too
    std::fs::write(
        &cfg,
        "source = 'mysql://u:p@127.0.0.1:1'\ntarget = '/tmp/x'\n",
    )
    .unwrap();
    let out = binlake(
        &["replicate", "--config", &cfg, "--invalid-values", "ignore"],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("`invalid_values`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unreachable_target_is_one_clear_error() {
    let dir = TestDir::new("unreach");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    let url = m.url();
    // an S3 endpoint where nothing listens
    let mut child = spawn_binlake_env(
        &[
            "replicate",
            "--source",
            &url,
            "--target",
            "s3://nobucket/lake",
            "--exit-when-caught-up",
        ],
        &[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("AWS_ACCESS_KEY_ID", "x"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "binlake kept waiting for an unreachable target"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("cannot open the target"), "{err}");
    // a local target that cannot be created
    let out = binlake(
        &[
            "replicate",
            "--source",
            &url,
            "--target",
            "/proc/binlake-cannot-write-here",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/proc/binlake-cannot-write-here"),
        "{}",
        stderr(&out)
    );
}
