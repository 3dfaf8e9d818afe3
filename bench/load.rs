//! Loading Fashion-MNIST's gzipped IDX files, as `data_load_seconds` measures it.
//!
//! First, end to end: the train and test channels at once, each its images and labels at once,
//! as the job loads them, each time in a fresh process (a job loads once, into memory the
//! process has never touched; a loop in one process reuses memory and looks faster than a job
//! ever is), alternating `read_idx` as built with a copy of the streaming reader it replaced
//! (flate2's zlib-rs decoder straight from the file). Then, in this process, where the time of
//! the images files goes, step by step: reading the file, inflating it with flate2 and with
//! libdeflate into fresh or already-touched memory, BLAKE3, dropping the IDX header. Wall time,
//! medians (all runs printed).
//!
//! `cargo bench --bench load -- [reps] [dir]` (defaults 9 and the installed Fashion-MNIST).

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Result;
use smtrain::data::{load_pair, parse_header, read_idx, Dataset, IdxFile};
use smtrain::inflate::{gunzip_exact, gunzip_into};

const CHILD: &str = "SMTRAIN_BENCH_LOAD_CHILD";

fn time<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t = Instant::now();
    let v = f();
    (t.elapsed().as_secs_f64(), v)
}

fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn report(what: &str, secs: &[f64]) {
    let all: Vec<String> = secs.iter().map(|s| format!("{:.1}", s * 1e3)).collect();
    println!("{what:<46} median {:>6.1} ms  all [{}]", median(secs) * 1e3, all.join(" "));
}

/// The reader that `read_idx` replaced (src/data.rs before libdeflate), for the comparison:
/// flate2 streaming from a buffered file into a growing buffer, then BLAKE3.
fn streaming_read_idx(path: &Path) -> Result<IdxFile> {
    let mut file = BufReader::new(std::fs::File::open(path)?);
    let mut magic = [0u8; 2];
    file.read_exact(&mut magic)?;
    let head = std::io::Cursor::new(magic.to_vec()).chain(file);
    let mut r = flate2::read::MultiGzDecoder::new(head);
    let mut head = [0u8; 16];
    r.read_exact(&mut head[..4])?;
    let want = (4 + 4 * head[3] as usize).min(16);
    r.read_exact(&mut head[4..want])?;
    let (kind, _) = parse_header(&head[..want]).map_err(anyhow::Error::msg)?;
    let expected = match kind {
        smtrain::data::IdxKind::Images { count, rows, cols } => (count * rows * cols) as u64,
        smtrain::data::IdxKind::Labels { count } => count as u64,
    };
    let mut data = Vec::new();
    r.take(expected + 1).read_to_end(&mut data)?;
    anyhow::ensure!(data.len() as u64 == expected, "{}: wrong length", path.display());
    let digest = *blake3::hash(&data).as_bytes();
    Ok(IdxFile { path: path.to_path_buf(), kind, data, digest })
}

fn pair(dir: &Path, prefix: &str) -> (PathBuf, PathBuf) {
    let images = dir.join(format!("{prefix}-images-idx3-ubyte.gz"));
    (images, dir.join(format!("{prefix}-labels-idx1-ubyte.gz")))
}

/// One job's load, in this (fresh) process: prints wall and CPU seconds and the fingerprints.
fn child(variant: &str, dir: &Path) {
    let load = |(i, l): &(PathBuf, PathBuf)| -> Dataset {
        if variant == "new" {
            return load_pair(i, l).unwrap();
        }
        let (img, lab) = std::thread::scope(|s| {
            let img = s.spawn(|| streaming_read_idx(i));
            (img.join().unwrap(), streaming_read_idx(l))
        });
        Dataset::from_files(img.unwrap(), lab.unwrap()).unwrap()
    };
    let (train, test) = (pair(dir, "train"), pair(dir, "t10k"));
    let cpu = cpu_seconds();
    let (wall, (a, b)) = time(|| {
        std::thread::scope(|s| {
            let a = s.spawn(|| load(&train));
            let b = s.spawn(|| load(&test));
            (a.join().unwrap(), b.join().unwrap())
        })
    });
    println!("{wall} {} {} {}", cpu_seconds() - cpu, a.fingerprint, b.fingerprint);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let reps: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(9);
    let dir = PathBuf::from(args.get(1).map_or("/usr/share/datasets/fashion-mnist", |s| s));
    if let Ok(variant) = std::env::var(CHILD) {
        return child(&variant, &dir);
    }

    let exe = std::env::current_exe().unwrap();
    let (mut wall, mut cpu, mut prints) = ([vec![], vec![]], [vec![], vec![]], [vec![], vec![]]);
    for _ in 0..reps {
        for (i, variant) in ["old", "new"].iter().enumerate() {
            let mut child = Command::new(&exe);
            let out = child.arg(reps.to_string()).arg(&dir).env(CHILD, variant).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let line = String::from_utf8(out.stdout).unwrap();
            let f: Vec<&str> = line.split_whitespace().collect();
            wall[i].push(f[0].parse().unwrap());
            cpu[i].push(f[1].parse().unwrap());
            prints[i].push(format!("{} {}", f[2], f[3]));
        }
    }
    assert!(prints[0].iter().chain(&prints[1]).all(|p| *p == prints[0][0]), "fingerprints differ");
    println!("train + test channels at once, as the job loads them, one fresh process each:");
    report("  wall: streaming flate2 (before)", &wall[0]);
    report("  wall: read_idx as built", &wall[1]);
    report("  CPU, all threads: streaming flate2 (before)", &cpu[0]);
    report("  CPU, all threads: read_idx as built", &cpu[1]);
    println!("  fingerprints (both): {}", prints[0][0]);

    println!("\nstep by step, in one warm process:");
    for name in ["train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"] {
        let path = dir.join(name);
        let gz = std::fs::read(&path).unwrap();
        let len = u32::from_le_bytes(*gz.last_chunk::<4>().unwrap()) as usize;
        println!("{name}: {} bytes gzipped, {len} inflated", gz.len());
        let mut steps: [Vec<f64>; 8] = Default::default();
        let mut touched = vec![1u8; len];
        for _ in 0..reps {
            steps[0].push(time(|| std::fs::read(&path).unwrap()).0);
            let (t, streamed) = time(|| {
                let mut v = Vec::new();
                flate2::read::MultiGzDecoder::new(&gz[..]).read_to_end(&mut v).unwrap();
                v
            });
            steps[1].push(t);
            steps[2].push(time(|| libdeflate(&gz, &mut vec![0u8; len])).0);
            steps[3].push(time(|| libdeflate(&gz, &mut touched)).0);
            let (t, whole) = time(|| gunzip_exact(&gz, len).unwrap());
            steps[4].push(t);
            assert!(streamed == whole && touched == whole, "decoders disagree on {name}");
            steps[5].push(time(|| blake3::hash(&whole)).0);
            let mut moved = whole.clone();
            steps[6].push(time(|| moved.drain(..16).count()).0);
            steps[7].push(time(|| read_idx(&path).unwrap()).0);
        }
        let labels = [
            "  read the file",
            "  inflate: flate2 (zlib-rs), streaming",
            "  inflate: libdeflate, fresh 4 KiB pages",
            "  inflate: libdeflate, pages already touched",
            "  inflate: gunzip_exact (+ huge pages)",
            "  BLAKE3 of the inflated bytes",
            "  drop the 16-byte header (memmove)",
            "  read_idx as built",
        ];
        for (label, secs) in labels.iter().zip(&steps) {
            report(label, secs);
        }
    }
}

/// libdeflate's one-shot gzip decoder on a buffer of the caller's; checks it inflated all of it.
fn libdeflate(gz: &[u8], out: &mut [u8]) {
    assert!(gunzip_into(gz, out), "libdeflate did not inflate exactly {} bytes", out.len());
}
