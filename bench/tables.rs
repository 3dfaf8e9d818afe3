//! One channel's load, in this fresh process: `cargo bench --bench tables -- DIR FORMAT`, where
//! FORMAT is a channel ContentType (`csv`, `parquet`, `idx`, `image`, …). Prints one JSON line:
//! wall seconds, rows and features, and the process's resident memory before the load and at
//! its peak (what `make bench-tables` compares with pandas and pyarrow, and `make
//! bench-pictures` with Keras and PIL).

use std::path::Path;
use std::time::Instant;

use smtrain::data::{load_channel, Format};

/// Peak and current resident set, in bytes, from /proc/self/status.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let [dir, format] = &args[..] else {
        eprintln!("usage: cargo bench --bench tables -- DIR FORMAT");
        std::process::exit(2);
    };
    let format = Format::parse(Some(format)).unwrap();
    let (_, before) = rss();
    let start = Instant::now();
    let ds = load_channel("train", Path::new(dir), format).unwrap();
    let seconds = start.elapsed().as_secs_f64();
    let (peak, _) = rss();
    println!(
        "{{\"seconds\": {seconds:.4}, \"rows\": {}, \"features\": {}, \"rss_before\": {before}, \
         \"rss_peak\": {peak}}}",
        ds.len(),
        ds.features()
    );
}
