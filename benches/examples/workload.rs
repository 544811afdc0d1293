//! The benchmark suite's real workloads on pymalloc alone: each phase's time and RSS, then
//! pymalloc's statistics table (what `sys._debugmallocstats()` shows for CPython).
//!
//! `cargo run --release -p pymalloc-bench --example workload`

use std::time::Instant;

use pymalloc_bench::{Scale, WORKLOADS, rss_bytes};

#[global_allocator]
static GLOBAL: pymalloc::PyMalloc = pymalloc::PyMalloc;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn main() {
    let start = rss_bytes();
    let mut peak = start;
    println!(
        "pymalloc on the benchmark workloads (RSS at start: {:.1} MiB)",
        mib(start)
    );
    println!(
        "{:<20} {:>10} {:>18}",
        "workload", "time (ms)", "RSS after (MiB)"
    );
    for w in WORKLOADS {
        let t = Instant::now();
        std::hint::black_box((w.run)(Scale::Quick));
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let rss = rss_bytes();
        peak = peak.max(rss);
        println!("{:<20} {ms:>10.1} {:>18.1}", w.name, mib(rss));
    }
    println!(
        "RSS: start {:.1} MiB, highest after a workload {:.1} MiB",
        mib(start),
        mib(peak)
    );
    println!("\n{}", pymalloc::stats());
}
