//! The core issue's acceptance run: a program with `PyMalloc` as its global allocator runs
//! 4 threads × 10^6 random operations (sizes 1 B to 5 MiB, alignments up to 4 KiB, a tenth
//! of the blocks freed by another thread), sees no corruption, and after freeing everything
//! and `trim()` its RSS is back within 16 MiB of where it started. (Without `trim()`, the
//! large-block cache keeps what the program cycled through lately — at most as much as it
//! had in large blocks in use — for the next burst, as glibc keeps freed memory in
//! its heap; `src/large.rs`.)

mod common;

use std::alloc::System;

use common::{churn, large_anonymous_mappings, rss_bytes};

#[global_allocator]
static GLOBAL: pymalloc::PyMalloc = pymalloc::PyMalloc;

#[test]
fn four_threads_churning_a_million_ops_each_leave_rss_where_it_was() {
    let _ = System; // the comparison with the system allocator is `examples/churn_system.rs`
    let start = rss_bytes();
    let report = churn(&GLOBAL, 4, 1_000_000, 2000, 5 << 20, 4096);
    let before_trim = rss_bytes();
    pymalloc::trim();
    let end = rss_bytes();
    let stats = pymalloc::stats();
    eprintln!(
        "{report:?}\nRSS start {} MiB, before trim {} MiB, end {} MiB\n{stats}\nlarge \
         anonymous mappings:\n{}",
        start >> 20,
        before_trim >> 20,
        end >> 20,
        large_anonymous_mappings(256 << 10)
    );
    assert_eq!(report.corrupt, 0);
    assert_eq!(report.failed_allocs, 0);
    assert_eq!(report.ops, 4_000_000);
    assert!(report.remote_frees > 300_000, "{report:?}");
    pymalloc::check().unwrap();
    // On failure, say where the memory is: anonymous mappings holding 512 KiB or more.
    assert!(
        end <= start + (16 << 20),
        "RSS grew from {} to {} MiB; large anonymous mappings:\n{}",
        start >> 20,
        end >> 20,
        large_anonymous_mappings(512 << 10)
    );
}
