//! The same replication with the target on S3 (moto, an S3-compatible server with conditional
//! put), resumed from the checkpoint stored in the bucket.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

#[test]
fn s3_target_replicates_and_resumes() {
    let dir = TestDir::new("s3");
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    let moto = Moto::start(&dir.0.join("moto"), "lake");
    let env = moto.env();
    m.sql("CREATE DATABASE s; CREATE TABLE s.t (id INT PRIMARY KEY, v VARCHAR(20), d DECIMAL(12,3)); INSERT INTO s.t VALUES (1,'a',1.5),(2,'b',-2.25),(3,'c',NULL);");
    let run = || catch_up_env(&m, "s3://lake/prefix", "s.*", &[], &env);
    run();
    m.sql("UPDATE s.t SET v = 'bb' WHERE id = 2; DELETE FROM s.t WHERE id = 1; INSERT INTO s.t VALUES (4, 'd', 4.000);");
    run();
    // read the bucket back with boto3, then compare with the independent reader
    let local = dir.path("download");
    moto.download("lake", "prefix", &local);
    assert_replica_equal(&m, &local, "s.t", &[]);
    // the second run resumed: two commits with data, and the first file was not written again
    let commits = std::fs::read_dir(format!("{local}/_binlake/default/log"))
        .unwrap()
        .count();
    assert!(
        commits >= 2,
        "expected at least two commits, found {commits}"
    );
    let versions = duck(&format!(
        "SELECT count(*) FROM read_parquet('{local}/s/t/*.parquet')"
    ));
    assert_eq!(
        versions, "6",
        "3 inserts + update + delete + insert, each once"
    );
    let _ = Duration::from_secs(0);
}

/// An S3 endpoint whose certificate a private CA signed: trusted through `AWS_CA_BUNDLE` (as the
/// AWS CLI and SDKs do), refused with one clear error without it.
#[test]
fn s3_endpoint_with_a_private_ca() {
    let dir = TestDir::new("s3_tls");
    let certs = tls_certs(&dir.path("certs"));
    let m = Maria::start(&dir.0.join("db"), 1, &[]);
    let moto = Moto::start_with(&dir.0.join("moto"), "lake", Some(&certs));
    assert!(moto.endpoint.starts_with("https://"), "{}", moto.endpoint);
    let ca = format!("{certs}/ca.pem");
    let mut env: Vec<(&str, &str)> = moto.env().to_vec();
    m.sql("CREATE DATABASE s; CREATE TABLE s.t (id INT PRIMARY KEY, v VARCHAR(20)); INSERT INTO s.t VALUES (1,'a'),(2,'b');");
    // without the CA: the endpoint's certificate is not trusted, and that is said once
    let url = m.url();
    let args = [
        "replicate",
        "--source",
        &url,
        "--tables",
        "s.*",
        "--target",
        "s3://lake/tls",
        "--exit-when-caught-up",
    ];
    let out = binlake_env(&args, &env, Duration::from_secs(120));
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("AWS_CA_BUNDLE") && err.contains("certificate"),
        "{err}"
    );
    env.push(("AWS_CA_BUNDLE", &ca));
    catch_up_env(&m, "s3://lake/tls", "s.*", &[], &env);
    m.sql("UPDATE s.t SET v = 'bb' WHERE id = 2; INSERT INTO s.t VALUES (3, 'c');");
    catch_up_env(&m, "s3://lake/tls", "s.*", &[], &env);
    let local = dir.path("download");
    let out = Command::new("python3")
        .args(["-c", &format!(
            "import boto3, os\ns3 = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL'])\nfor o in s3.list_objects_v2(Bucket='lake', Prefix='tls/')['Contents']:\n    p = os.path.join('{local}', o['Key'][len('tls/'):])\n    os.makedirs(os.path.dirname(p), exist_ok=True)\n    s3.download_file('lake', o['Key'], p)\n"
        )])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_replica_equal(&m, &local, "s.t", &[]);
}
