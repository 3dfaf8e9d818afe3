//! `make bench-s3`: S3 channel download and artifact upload throughput of this program's S3
//! code, side by side with the AWS CLI (`aws s3 cp`) in the same run, against the same local
//! s3s-fs server on 127.0.0.1.
//!
//! Cases: many small objects down (`--recursive`), one large object down, one large object
//! up. Each is run `SMTRAIN_BENCH_ROUNDS` times (default 3), alternating the two tools, and
//! the median is reported. Both tools run with their default settings; the CLI's time
//! includes its Python start-up, which is reported on its own line.
//!
//! Inputs (environment): `SMTRAIN_S3S_FS` (server binary), `SMTRAIN_AWS_CLI` (the `aws`
//! program), optional `SMTRAIN_BENCH_SMALL_COUNT` (2000), `SMTRAIN_BENCH_SMALL_SIZE` (16KiB),
//! `SMTRAIN_BENCH_LARGE_SIZE` (256MiB), `SMTRAIN_BENCH_ROUNDS` (3).

#[path = "../tests/it/s3/server.rs"]
mod server;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use smtrain::s3::download::{download_channels, ChannelDownload};
use smtrain::s3::location::{human_bytes, parse_size};
use smtrain::s3::upload::upload_file;
use smtrain::s3::TransferOptions;

use server::Server;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Incompressible, reproducible bytes (xorshift).
fn fill_random(buf: &mut [u8], x: &mut u64) {
    for b in buf.iter_mut() {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *b = (*x >> 24) as u8;
    }
}

fn random_file(path: &Path, len: u64, seed: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        fill_random(&mut buf[..n], &mut x);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
}

struct Cli {
    bin: PathBuf,
    env: Vec<(&'static str, String)>,
    endpoint: String,
}

impl Cli {
    fn run(&self, args: &[&str]) -> f64 {
        let started = Instant::now();
        let out = Command::new(&self.bin)
            .args(args)
            .args(["--endpoint-url", &self.endpoint, "--only-show-errors"])
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent/smtrain-bench")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/smtrain-bench")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_CA_BUNDLE")
            .output()
            .unwrap();
        let secs = started.elapsed().as_secs_f64();
        assert!(out.status.success(), "aws {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        secs
    }
}

fn fresh(dir: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    dir.to_path_buf()
}

fn main() {
    let cli_bin = PathBuf::from(std::env::var("SMTRAIN_AWS_CLI").expect("SMTRAIN_AWS_CLI"));
    let count: usize = env_or("SMTRAIN_BENCH_SMALL_COUNT", "2000").parse().unwrap();
    let small = parse_size(&env_or("SMTRAIN_BENCH_SMALL_SIZE", "16KiB")).unwrap();
    let large = parse_size(&env_or("SMTRAIN_BENCH_LARGE_SIZE", "256MiB")).unwrap();
    let rounds: usize = env_or("SMTRAIN_BENCH_ROUNDS", "3").parse().unwrap();

    let s = Server::start();
    let work = tempfile::Builder::new().prefix("smtrain-bench-").tempdir().unwrap();
    let w = work.path();
    s.create_bucket("bench");
    let objects: Vec<(String, Vec<u8>)> = (0..count)
        .map(|i| {
            let mut bytes = vec![0u8; small as usize];
            fill_random(&mut bytes, &mut (i as u64 + 1));
            (format!("small/d{}/obj-{i:05}", i % 10), bytes)
        })
        .collect();
    s.put_many("bench", objects);
    let big = w.join("large.bin");
    random_file(&big, large, 99);
    s.put_file("bench", "large/blob.bin", &big);

    let cli = Cli { bin: cli_bin, env: s.env(), endpoint: s.endpoint() };
    let opts = TransferOptions::default();
    let ours = s.client(opts);
    let stop = AtomicBool::new(false);
    let cli_version = Command::new(&cli.bin).arg("--version").output().unwrap();
    let startup = median(
        (0..3)
            .map(|_| {
                let t = Instant::now();
                Command::new(&cli.bin).arg("--version").output().unwrap();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );

    let mut rows = Vec::new();
    // (case, bytes, objects, ours seconds, cli seconds)
    let mut bench = |case: &str,
                     bytes: u64,
                     objs: usize,
                     mut a: Box<dyn FnMut() -> f64 + '_>,
                     mut b: Box<dyn FnMut() -> f64 + '_>| {
        let (mut ta, mut tb) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            // Alternate which tool goes first, so neither always gets a warmer cache.
            if r % 2 == 0 {
                ta.push(a());
                tb.push(b());
            } else {
                tb.push(b());
                ta.push(a());
            }
        }
        rows.push((case.to_string(), bytes, objs, median(ta), median(tb)));
    };

    let small_total = small * count as u64;
    bench(
        &format!("download {count} x {} (recursive)", human_bytes(small)),
        small_total,
        count,
        Box::new(|| {
            let dir = fresh(&w.join("ours-small")).join("train");
            let ch = ChannelDownload {
                name: "train".into(),
                uri: "s3://bench/small/".parse().unwrap(),
                dir,
            };
            let t = Instant::now();
            s.block_on(download_channels(&ours, &[ch], &stop)).unwrap();
            t.elapsed().as_secs_f64()
        }),
        Box::new(|| {
            let dir = fresh(&w.join("cli-small"));
            cli.run(&["s3", "cp", "--recursive", "s3://bench/small/", dir.to_str().unwrap()])
        }),
    );
    bench(
        &format!("download 1 x {}", human_bytes(large)),
        large,
        1,
        Box::new(|| {
            let dir = fresh(&w.join("ours-large")).join("train");
            let ch = ChannelDownload {
                name: "train".into(),
                uri: "s3://bench/large/".parse().unwrap(),
                dir,
            };
            let t = Instant::now();
            s.block_on(download_channels(&ours, &[ch], &stop)).unwrap();
            t.elapsed().as_secs_f64()
        }),
        Box::new(|| {
            let dir = fresh(&w.join("cli-large"));
            cli.run(&[
                "s3",
                "cp",
                "s3://bench/large/blob.bin",
                dir.join("blob.bin").to_str().unwrap(),
            ])
        }),
    );
    bench(
        &format!("upload 1 x {}", human_bytes(large)),
        large,
        1,
        Box::new(|| {
            let dest = "s3://bench/up-ours/blob.bin".parse().unwrap();
            let t = Instant::now();
            s.block_on(upload_file(&ours, &big, &dest)).unwrap();
            t.elapsed().as_secs_f64()
        }),
        Box::new(|| cli.run(&["s3", "cp", big.to_str().unwrap(), "s3://bench/up-cli/blob.bin"])),
    );
    let uploaded = s.get("bench", "up-ours/blob.bin").expect("uploaded object");
    assert!(uploaded.len() as u64 == large && uploaded == std::fs::read(&big).unwrap());

    println!("S3 throughput against s3s-fs 0.14.1 on 127.0.0.1 (median of {rounds} rounds)");
    println!(
        "smtrain: concurrency {}, multipart threshold {}, part size {}",
        opts.concurrency,
        human_bytes(opts.multipart_threshold),
        human_bytes(opts.part_size)
    );
    println!(
        "AWS CLI: {} (defaults; start-up alone {startup:.2} s, included below)",
        String::from_utf8_lossy(&cli_version.stdout).trim()
    );
    println!();
    println!("| case | smtrain | AWS CLI | smtrain / AWS CLI |");
    println!("| --- | --- | --- | --- |");
    for (case, bytes, objs, a, b) in rows {
        let rate = |t: f64| {
            let mib = bytes as f64 / (1 << 20) as f64 / t;
            if objs > 1 {
                format!("{:.2} s, {mib:.1} MiB/s, {:.0} objects/s", t, objs as f64 / t)
            } else {
                format!("{:.2} s, {mib:.1} MiB/s", t)
            }
        };
        println!("| {case} | {} | {} | {:.2}x |", rate(a), rate(b), b / a);
    }
}
