//! A million blocks of random medium sizes (513 B to 256 KiB) allocated and freed through
//! `PyMalloc` as the global allocator, every page of each block written: peak RSS stays within
//! 1.3× of the peak live bytes, and after freeing everything RSS falls back (the empty pools
//! and spans went back to the system).

mod common;

use std::alloc::{GlobalAlloc, Layout};

use common::{Rng, rss_bytes};

#[global_allocator]
static GLOBAL: pymalloc::PyMalloc = pymalloc::PyMalloc;

/// Writes one byte in every page of the block, and its last byte.
fn touch(p: *mut u8, size: usize) {
    for i in (0..size).step_by(4096).chain([size - 1]) {
        // SAFETY: i < size, inside a live block.
        unsafe { p.add(i).write(i as u8) };
    }
}

#[test]
fn a_million_medium_blocks_keep_peak_rss_near_live_bytes_and_give_it_back() {
    const SLOTS: usize = 6000;
    const OPS: usize = 1_000_000;
    let start = rss_bytes();
    let mut rng = Rng::new(99);
    let mut slots: Vec<Option<(*mut u8, Layout)>> = vec![None; SLOTS];
    let (mut live, mut peak_live, mut peak_rss) = (0usize, 0usize, 0usize);
    for op in 0..OPS {
        let i = rng.below(SLOTS as u64) as usize;
        if let Some((p, layout)) = slots[i].take() {
            // SAFETY: a live block of this layout.
            unsafe { GLOBAL.dealloc(p, layout) };
            live -= layout.size();
        }
        let layout = Layout::from_size_align(rng.log_uniform(513, 256 << 10), 8).unwrap();
        // SAFETY: a non-zero layout.
        let p = unsafe { GLOBAL.alloc(layout) };
        assert!(!p.is_null());
        touch(p, layout.size());
        live += layout.size();
        slots[i] = Some((p, layout));
        if op % 20_000 == 0 {
            peak_live = peak_live.max(live);
            peak_rss = peak_rss.max(rss_bytes() - start);
        }
    }
    let stats = pymalloc::stats();
    for (p, layout) in slots.into_iter().flatten() {
        // SAFETY: live blocks of these layouts.
        unsafe { GLOBAL.dealloc(p, layout) };
    }
    let end = rss_bytes();
    eprintln!(
        "peak live {} MiB, peak RSS above start {} MiB ({:.2}×), RSS start {} MiB, after freeing {} MiB\n{stats}",
        peak_live >> 20,
        peak_rss >> 20,
        peak_rss as f64 / peak_live as f64,
        start >> 20,
        end >> 20
    );
    assert_eq!(
        stats.large_blocks, 0,
        "every size here is served from pools"
    );
    assert!(
        peak_rss as f64 <= 1.3 * peak_live as f64,
        "peak RSS {peak_rss} vs live {peak_live}"
    );
    assert!(
        end <= start + (16 << 20),
        "RSS did not fall back: {} -> {} MiB",
        start >> 20,
        end >> 20
    );
    pymalloc::check().unwrap();
}
