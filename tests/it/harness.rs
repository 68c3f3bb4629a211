//! Test harness: real servers started by the project's own scripts, binlake run as a user runs
//! it, and replicas checked with independent readers (`tests/scripts/compare.py`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn binlake_bin() -> &'static str {
    env!("CARGO_BIN_EXE_binlake")
}

/// A fresh directory for one test, removed on drop unless BINLAKE_KEEP_TEST_DIRS is set.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "binlake-it-{}-{}-{}",
            name,
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TestDir(p)
    }
    pub fn path(&self, rel: &str) -> String {
        self.0.join(rel).display().to_string()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("BINLAKE_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A throwaway CA and certificates (`tests/scripts/tls_certs.sh`) in `dir`, which it returns.
pub fn tls_certs(dir: &str) -> String {
    let out = Command::new("bash")
        .arg(repo().join("tests/scripts/tls_certs.sh"))
        .arg(dir)
        .output()
        .expect("tls_certs.sh");
    assert!(
        out.status.success(),
        "tls_certs.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.to_string()
}

/// A throwaway mariadbd with its own datadir and port.
pub struct Maria {
    pub dir: PathBuf,
    pub port: u16,
    /// The server refuses plain TCP (require_secure_transport): the tests' own root sessions
    /// go through its Unix socket.
    pub tls: bool,
}

impl Maria {
    pub fn start(dir: &Path, server_id: u32, extra: &[&str]) -> Maria {
        Self::start_on(dir, server_id, None, extra)
    }

    /// Starts (or restarts, keeping the datadir) on a given port.
    pub fn start_on(dir: &Path, server_id: u32, port: Option<u16>, extra: &[&str]) -> Maria {
        let mut cmd = Command::new("bash");
        if let Some(p) = port {
            cmd.env("PORT", p.to_string());
        }
        let out = cmd
            .arg(repo().join("tests/scripts/mariadb.sh"))
            .arg("start")
            .arg(dir)
            .arg(server_id.to_string())
            .args(extra)
            .stderr(Stdio::inherit())
            .output()
            .expect("run mariadb.sh");
        assert!(out.status.success(), "mariadb.sh start failed");
        let port = String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap()
            .parse()
            .unwrap();
        Maria {
            dir: dir.to_path_buf(),
            port,
            tls: extra
                .iter()
                .any(|o| o.starts_with("--require-secure-transport")),
        }
    }

    pub fn url(&self) -> String {
        format!("mysql://binlake:binlake@127.0.0.1:{}", self.port)
    }

    /// Runs SQL as root through the mariadb client; panics with the error on failure.
    pub fn sql(&self, sql: &str) -> String {
        let out = self.try_sql(sql);
        match out {
            Ok(s) => s,
            Err(e) => panic!("SQL failed: {e}\n{sql}"),
        }
    }

    pub fn try_sql(&self, sql: &str) -> Result<String, Failed> {
        let out = Command::new("mariadb")
            .args([
                "--no-defaults",
                "--default-character-set=utf8mb4",
                if self.tls {
                    "-hlocalhost"
                } else {
                    "-h127.0.0.1"
                },
                "-uroot",
                "-N",
                "-B",
            ])
            .arg(if self.tls {
                format!("--socket={}", self.dir.join("sock").display())
            } else {
                format!("-P{}", self.port)
            })
            .arg("-e")
            .arg(sql)
            .output()
            .expect("run mariadb client");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(Failed(String::from_utf8_lossy(&out.stderr).into_owned()))
        }
    }

    /// SIGKILL the server (a crash, not a shutdown).
    pub fn kill(&self) {
        let _ = Command::new("bash")
            .arg(repo().join("tests/scripts/mariadb.sh"))
            .arg("kill")
            .arg(&self.dir)
            .status();
    }

    pub fn stop(&self) {
        let _ = Command::new("bash")
            .arg(repo().join("tests/scripts/mariadb.sh"))
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

impl Drop for Maria {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits (at most 60 s) until the `snapshot-race` failpoint holds a read open (`<gate>.ready`).
pub fn wait_for_failpoint(gate: &str) {
    let start = Instant::now();
    while !std::path::Path::new(&format!("{gate}.ready")).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the failpoint did not fire"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `binlake ARGS`, waiting at most `timeout`.
pub fn binlake(args: &[&str], timeout: Duration) -> Output {
    binlake_env(args, &[], timeout)
}

/// [`binlake`] with extra environment variables.
pub fn binlake_env(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Output {
    let mut child = spawn_binlake_env(args, env);
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "binlake {args:?} did not finish in {timeout:?}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running binlake whose stdout and stderr are drained as it runs: a child that logs more than
/// a pipe holds (64 KiB) must never block on a write the test is not reading yet.
pub struct Running {
    child: Child,
    out: Vec<std::thread::JoinHandle<Vec<u8>>>,
}

impl Running {
    pub fn id(&self) -> u32 {
        self.child.id()
    }
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }
    /// SIGKILL.
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill()
    }
    pub fn wait_with_output(mut self) -> std::io::Result<Output> {
        let status = self.child.wait()?;
        let mut bufs = self.out.drain(..).map(|h| h.join().unwrap_or_default());
        Ok(Output {
            status,
            stdout: bufs.next().unwrap_or_default(),
            stderr: bufs.next().unwrap_or_default(),
        })
    }
}

pub fn spawn_binlake(args: &[&str]) -> Running {
    spawn_binlake_env(args, &[])
}

/// [`spawn_binlake`] with extra environment variables.
pub fn spawn_binlake_env(args: &[&str], env: &[(&str, &str)]) -> Running {
    // binlake's default log filter (its own info lines) unless the test run sets RUST_LOG
    let mut child = Command::new(binlake_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn binlake");
    fn drain(mut r: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    }
    let out = vec![
        drain(child.stdout.take().expect("piped")),
        drain(child.stderr.take().expect("piped")),
    ];
    Running { child, out }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `replicate --source <m> --tables <tables> --target <target> --start-at earliest`, then `extra`.
pub fn replicate_args<'a>(
    url: &'a str,
    target: &'a str,
    tables: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "replicate",
        "--source",
        url,
        "--tables",
        tables,
        "--target",
        target,
        "--start-at",
        "earliest",
    ];
    args.extend_from_slice(extra);
    args
}

/// Starts a `replicate` that runs until stopped (see [`replicate_args`]).
pub fn spawn_replicate(m: &Maria, target: &str, tables: &str, extra: &[&str]) -> Running {
    let url = m.url();
    spawn_binlake(&replicate_args(&url, target, tables, extra))
}

/// Replicates everything the server has into `target`, then exits (asserting success).
pub fn catch_up(m: &Maria, target: &str, tables: &str, extra: &[&str]) -> Output {
    catch_up_env(m, target, tables, extra, &[])
}

/// [`catch_up`] with extra environment variables (an S3 endpoint, a failpoint).
pub fn catch_up_env(
    m: &Maria,
    target: &str,
    tables: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let url = m.url();
    let mut args = replicate_args(&url, target, tables, &["--exit-when-caught-up"]);
    args.extend_from_slice(extra);
    let out = binlake_env(&args, env, Duration::from_secs(300));
    assert!(
        out.status.success(),
        "binlake replicate failed:\n{}",
        stderr(&out)
    );
    out
}

/// Runs the independent comparison: (equal, report).
pub fn compare(m: &Maria, target: &str, table: &str, extra: &[&str]) -> (bool, String) {
    compare_env(m, target, table, extra, &[])
}

/// [`compare`] with extra environment (the AWS_* of an S3 target).
pub fn compare_env(
    m: &Maria,
    target: &str,
    table: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (bool, String) {
    let out = Command::new("python3")
        .arg(repo().join("tests/scripts/compare.py"))
        .args([
            "--port",
            &m.port.to_string(),
            "--target",
            target,
            "--table",
            table,
        ])
        .args(extra)
        .envs(env.iter().copied())
        .envs(
            m.tls
                .then(|| ("BINLAKE_TEST_SOURCE_SOCKET", m.dir.join("sock"))),
        )
        .output()
        .expect("run compare.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The independent comparison; panics with its report when the replica differs.
pub fn assert_replica_equal(m: &Maria, target: &str, table: &str, extra: &[&str]) {
    let (equal, text) = compare(m, target, table, extra);
    assert!(equal, "replica differs from the source:\n{text}");
    eprintln!("{}", text.trim());
}

/// Runs a DuckDB query (the SQL passed as an argument, no quoting games) and returns the first
/// column of the first row as text ("None" for NULL).
pub fn duck(sql: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", "import duckdb, sys; r = duckdb.sql(sys.argv[1]).fetchall(); print(r[0][0] if r else None)", sql])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "duckdb failed: {}\n{sql}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim_end_matches('\n')
        .to_string()
}

/// Polls a DuckDB query until its first value is `want` (a query that fails, say because no file
/// exists yet, is tried again); panics with the last value after `timeout`.
pub fn wait_duck(sql: &str, want: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        let got = Command::new("python3")
            .args([
                "-c",
                "import duckdb, sys; print(duckdb.sql(sys.argv[1]).fetchall()[0][0])",
                sql,
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "after {timeout:?}: {got:?}, expected {want:?} from\n{sql}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A helper's failure: what the failed step printed (a client's stderr, the last comparison).
#[derive(Debug)]
pub struct Failed(pub String);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Polls the independent comparison until the replica equals the source (or `timeout`).
pub fn wait_until_equal(
    m: &Maria,
    target: &str,
    table: &str,
    timeout: Duration,
) -> Result<Duration, Failed> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        let (equal, text) = compare(m, target, table, &[]);
        if equal {
            return Ok(start.elapsed());
        }
        last = text;
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(Failed(last))
}

/// Sends SIGTERM and waits for the exit.
pub fn terminate(child: Running, timeout: Duration) -> Output {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let start = Instant::now();
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > timeout {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Polls the comparison with a given reader until equal or `timeout`: (equal, last report).
#[cfg(feature = "delta")]
pub fn wait_equal_reader(
    m: &Maria,
    target: &str,
    table: &str,
    reader: &str,
    timeout: Duration,
) -> (bool, String) {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        let (equal, text) = compare(m, target, table, &["--reader", reader]);
        if equal {
            return (true, text);
        }
        last = text;
        std::thread::sleep(Duration::from_millis(300));
    }
    (false, last)
}

/// Runs DuckDB SQL over a Delta table loaded by the Python `deltalake` reader, visible to the
/// query as `t` (DuckDB's own delta extension would have to be downloaded).
#[cfg(feature = "delta")]
pub fn delta_q(table_path: &str, sql: &str) -> String {
    let code = "import duckdb, os, sys\nfrom deltalake import DeltaTable\nt = DeltaTable(sys.argv[1]).to_pyarrow_table()\nr = duckdb.sql(sys.argv[2]).fetchall()\nprint(r[0][0] if r else None, flush=True)\nos._exit(0)";
    let out = Command::new("python3")
        .args(["-c", code, table_path, sql])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "delta query failed: {}\n{sql}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim_end_matches('\n')
        .to_string()
}

/// An S3-compatible server (moto) on loopback, stopped on drop, with one bucket.
pub struct Moto {
    dir: PathBuf,
    pub endpoint: String,
}

impl Moto {
    pub fn start(dir: &Path, bucket: &str) -> Moto {
        Self::start_with(dir, bucket, None)
    }

    /// Serves https with the certificates of `tests/scripts/tls_certs.sh` in `certs` (clients
    /// need `AWS_CA_BUNDLE={certs}/ca.pem`).
    pub fn start_with(dir: &Path, bucket: &str, certs: Option<&str>) -> Moto {
        let mut cmd = Command::new("bash");
        if let Some(c) = certs {
            cmd.env("MOTO_TLS_CERT", format!("{c}/server.pem"))
                .env("MOTO_TLS_KEY", format!("{c}/server-key.pem"));
        }
        let out = cmd
            .arg(repo().join("tests/scripts/moto.sh"))
            .arg("start")
            .arg(dir)
            .output()
            .expect("moto.sh");
        assert!(out.status.success(), "moto did not start");
        let moto = Moto {
            dir: dir.to_path_buf(),
            endpoint: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        };
        let code = format!("import boto3, os; boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL']).create_bucket(Bucket='{bucket}')");
        let py = Command::new("python3")
            .args(["-c", &code])
            .envs(moto.env())
            .envs(certs.map(|c| ("AWS_CA_BUNDLE", format!("{c}/ca.pem"))))
            .output()
            .unwrap();
        assert!(
            py.status.success(),
            "{}",
            String::from_utf8_lossy(&py.stderr)
        );
        moto
    }

    /// Copies every object of `bucket` under `prefix/` into the directory `local` (emptied
    /// first), keeping the paths below the prefix.
    pub fn download(&self, bucket: &str, prefix: &str, local: &str) {
        let _ = std::fs::remove_dir_all(local);
        let code = format!(
            "import boto3, os\ns3 = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL'])\nfor page in s3.get_paginator('list_objects_v2').paginate(Bucket='{bucket}', Prefix='{prefix}/'):\n    for o in page.get('Contents', []):\n        p = os.path.join('{local}', o['Key'][len('{prefix}/'):])\n        os.makedirs(os.path.dirname(p), exist_ok=True)\n        s3.download_file('{bucket}', o['Key'], p)\n"
        );
        let out = Command::new("python3")
            .args(["-c", &code])
            .envs(self.env())
            .output()
            .expect("python3");
        assert!(out.status.success(), "{}", stderr(&out));
    }

    /// The AWS_* environment that points a client at this server.
    pub fn env(&self) -> [(&'static str, &str); 4] {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("tests/scripts/moto.sh"))
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// A ClickHouse endpoint: the chdb front started by `tests/scripts/clickhouse.sh`, or the real
/// server `CLICKHOUSE_URL` names. Each test uses its own database prefix, so tests can share a
/// real server.
#[cfg(feature = "clickhouse")]
pub struct ClickHouse {
    dir: PathBuf,
    pub url: String,
    pub prefix: String,
    /// The CA of an https front (see [`ClickHouse::start_tls`]).
    pub ca: Option<String>,
}

#[cfg(feature = "clickhouse")]
impl ClickHouse {
    pub fn start(dir: &Path, test: &str) -> ClickHouse {
        let url = Self::run("start", dir, None, None);
        ClickHouse {
            dir: dir.to_path_buf(),
            url,
            prefix: format!("t{}_{test}_", std::process::id()),
            ca: None,
        }
    }

    /// An https front with the certificates of `tests/scripts/tls_certs.sh` in `certs`.
    pub fn start_tls(dir: &Path, test: &str, certs: &str) -> ClickHouse {
        let url = Self::run("start", dir, None, Some(certs));
        ClickHouse {
            dir: dir.to_path_buf(),
            url,
            prefix: format!("t{}_{test}_", std::process::id()),
            ca: Some(format!("{certs}/ca.pem")),
        }
    }

    fn run(cmd: &str, dir: &Path, port: Option<&str>, certs: Option<&str>) -> String {
        let mut c = Command::new("bash");
        c.arg(repo().join("tests/scripts/clickhouse.sh"))
            .arg(cmd)
            .arg(dir);
        if let Some(certs) = certs {
            c.env("CLICKHOUSE_TLS_CERT", format!("{certs}/server.pem"))
                .env("CLICKHOUSE_TLS_KEY", format!("{certs}/server-key.pem"));
        }
        if let Some(p) = port {
            c.env("PORT", p);
        }
        let out = c.output().expect("clickhouse.sh");
        assert!(
            out.status.success(),
            "clickhouse.sh {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn stop(&self) {
        Self::run("stop", &self.dir, None, None);
    }

    /// Starts the stopped server again on the same port and data.
    pub fn restart(&self) {
        let port = std::fs::read_to_string(self.dir.join("port")).unwrap_or_default();
        Self::run("start", &self.dir, Some(port.trim()), None);
    }

    /// The replicate flags that point binlake at this server.
    pub fn args(&self) -> Vec<&str> {
        vec![
            "--sink",
            "clickhouse",
            "--target",
            &self.url,
            "--database-prefix",
            &self.prefix,
        ]
    }

    /// The compare.py flags that read the `_current` views.
    pub fn reader(&self) -> Vec<&str> {
        let mut r = vec!["--reader", "clickhouse", "--database-prefix", &self.prefix];
        if let Some(ca) = &self.ca {
            r.extend(["--ca-file", ca.as_str()]);
        }
        r
    }

    /// One value from a query (TabSeparated).
    pub fn q(&self, sql: &str) -> String {
        let code = "import sys, urllib.request, urllib.parse\nu = sys.argv[1].rstrip('/') + '/?' + urllib.parse.urlencode({'query': sys.argv[2]})\nprint(urllib.request.urlopen(urllib.request.Request(u, data=b'', method='POST')).read().decode().strip())";
        let out = Command::new("python3")
            .args(["-c", code, &self.url, sql])
            .envs(self.ca.as_ref().map(|ca| ("SSL_CERT_FILE", ca)))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

#[cfg(feature = "clickhouse")]
impl Drop for ClickHouse {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("tests/scripts/clickhouse.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

/// Writes to `table` (`id` AUTO_INCREMENT key, `name` text) until `stop`: an insert, an update
/// and a delete per transaction, one short transaction at a time through the mariadb client, so
/// that tools and binlake run between them; returns how many transactions ran.
pub fn writer(
    port: u16,
    table: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut n = 0u64;
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let sql = format!(
                "INSERT INTO {table} (name) VALUES ('w{i}'); UPDATE {table} SET name = CONCAT(name, '+') WHERE id = {}; DELETE FROM {table} WHERE id = {};",
                1 + (i * 37) % 1500,
                1 + (i * 53) % 1500
            );
            let ok = Command::new("mariadb")
                .args(["--no-defaults", "-h127.0.0.1", "-uroot"])
                .arg(format!("-P{port}"))
                .args(["-e", &sql])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            n += u64::from(ok);
            std::thread::sleep(Duration::from_millis(5));
        }
        n
    })
}
