//! Giving memory back after a phase: a program builds a large structure, drops it, and calls
//! `pymalloc::trim()` so that its resident memory falls back before the next phase:
//! `cargo run --release --example trim_after_phase`.
//!
//! Without `trim()`, pymalloc keeps some freed memory committed for reuse (up to the dirty
//! floor, `PYMALLOC_DIRTY_FLOOR`, and a few empty arenas, `PYMALLOC_EMPTY_ARENAS`), which a
//! program that allocates again soon wants; `trim()` is for one that will not.

#[global_allocator]
static GLOBAL: pymalloc::PyMalloc = pymalloc::PyMalloc;

/// Resident memory in MiB, from `/proc/self/statm` (Linux; 0 elsewhere).
fn resident_mib() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as usize;
    (pages * page) >> 20
}

fn main() {
    let phase: Vec<Vec<u64>> = (0..400_000).map(|i| vec![i; 16]).collect();
    let sum: u64 = phase.iter().map(|v| v[0]).sum();
    println!(
        "phase done (checksum {sum}): {} MiB resident",
        resident_mib()
    );
    drop(phase);
    let before = pymalloc::stats().bytes_mapped;
    println!("dropped: {} MiB resident", resident_mib());
    pymalloc::trim();
    let after = pymalloc::stats().bytes_mapped;
    println!(
        "trimmed: {} MiB resident; mapped {} -> {} MiB",
        resident_mib(),
        before >> 20,
        after >> 20
    );
}
