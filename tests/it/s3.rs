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
    let py = |code: &str| {
        let out = Command::new("python3")
            .args(["-c", code])
            .envs(env)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    m.sql("CREATE DATABASE s; CREATE TABLE s.t (id INT PRIMARY KEY, v VARCHAR(20), d DECIMAL(12,3)); INSERT INTO s.t VALUES (1,'a',1.5),(2,'b',-2.25),(3,'c',NULL);");
    let run = || catch_up_env(&m, "s3://lake/prefix", "s.*", &[], &env);
    run();
    m.sql("UPDATE s.t SET v = 'bb' WHERE id = 2; DELETE FROM s.t WHERE id = 1; INSERT INTO s.t VALUES (4, 'd', 4.000);");
    run();
    // read the bucket back with boto3, then compare with the independent reader
    let local = dir.path("download");
    py(&format!(
        "import boto3, os\ns3 = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL'])\nfor o in s3.list_objects_v2(Bucket='lake', Prefix='prefix/')['Contents']:\n    p = os.path.join('{local}', o['Key'][len('prefix/'):])\n    os.makedirs(os.path.dirname(p), exist_ok=True)\n    s3.download_file('lake', o['Key'], p)\n"
    ));
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
