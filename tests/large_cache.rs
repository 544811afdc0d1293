//! The large blocks' cache (`src/large.rs`) on an instance over the test platform: ranges
//! reused in place as a block regrows, shrunk blocks' tails cached and grown back into,
//! ranges split, merged and evicted, and the limit that grows only for blocks that cycle
//! through more than it keeps. Contents survive throughout.
// Of the default build's large blocks; the `secure` build adds a guard page to each and
// moves on every resize (`tests/secure.rs`).
#![cfg(not(feature = "secure"))]

mod common;

use std::alloc::Layout;

use common::{fill, holds, holds_prefix};
use pymalloc::Allocator;
use pymalloc_arena::TestPlatform;

/// The sizes the tests of the cache's limit are cut in: a quarter of the limit it starts
/// with (16 MiB; a unit of 4 MiB), so that they hold whatever that is.
const UNIT_OF_CACHE: usize = pymalloc::CACHE_BYTES / 4;

/// A large block freed and then grown again from small, as a `Vec` is, reuses its pages:
/// the next large request takes the front of the cached range, and each doubling takes the
/// cached pages right after it, in place, with no system call.
#[test]
fn a_large_block_regrows_in_place_into_the_range_it_freed() {
    const MIB: usize = 1 << 20;
    let a = Allocator::new(TestPlatform::new());
    let at = |size| Layout::from_size_align(size, 16).unwrap();
    let freed = a.alloc(at(4 * MIB));
    // SAFETY: live blocks of the layouts given, each the one the previous realloc returned.
    unsafe {
        a.dealloc(freed, at(4 * MIB));
        let reserves = a.platform().reserve_calls();
        let mut p = a.alloc(at(MIB / 2));
        assert_eq!(p, freed, "the front of the cached range");
        fill(p, MIB / 2, 3);
        let mut size = MIB / 2;
        while size < 4 * MIB {
            let q = a.realloc(p, at(size), 2 * size);
            assert_eq!(q, p, "{size} -> {}: in place", 2 * size);
            assert!(holds_prefix(q, size, size, 3));
            fill(q, 2 * size, 3);
            (p, size) = (q, 2 * size);
            let stats = a.stats();
            assert_eq!(stats.large_cached_bytes, 4 * MIB - size, "{stats}");
            a.check().unwrap();
        }
        assert_eq!(a.platform().reserve_calls(), reserves, "no system call");
        a.dealloc(p, at(size));
    }
    let stats = a.stats();
    assert_eq!(
        (stats.large_cached_blocks, stats.large_cached_bytes),
        (1, 4 * MIB),
        "{stats}"
    );
    a.check().unwrap();
}

/// A large block shrinks in place, its tail cached, and grows back into it in place: no
/// system call either way, and its contents survive.
#[test]
fn a_large_block_shrinks_into_the_cache_and_grows_back() {
    const MIB: usize = 1 << 20;
    let a = Allocator::new(TestPlatform::new());
    let at = |size| Layout::from_size_align(size, 16).unwrap();
    let p = a.alloc(at(4 * MIB));
    // SAFETY: live blocks of the layouts given, each the one the previous realloc returned.
    unsafe {
        fill(p, MIB, 4);
        let reserves = a.platform().reserve_calls();
        let q = a.realloc(p, at(4 * MIB), MIB);
        assert_eq!(q, p, "shrunk in place");
        let stats = a.stats();
        assert_eq!(
            (stats.large_bytes, stats.large_cached_bytes),
            (MIB, 3 * MIB),
            "{stats}"
        );
        let r = a.realloc(q, at(MIB), 4 * MIB);
        assert_eq!(r, p, "grown back in place");
        assert!(holds(r, MIB, 4));
        assert_eq!(a.stats().large_cached_bytes, 0);
        assert_eq!(a.platform().reserve_calls(), reserves, "no system call");
        a.dealloc(r, at(4 * MIB));
    }
    a.check().unwrap();
}

/// The cache splits, merges and evicts ranges: two blocks cut from one cached range, the
/// first from its front and the second from the middle of the run behind it, so that each
/// has room to grow in place; the second, grown past its room, moves by copy to fresh pages
/// (none cached holds it, and the test platform remaps whole reservations only); the ranges
/// they leave merge back into one, which is evicted, unmapped, when a newer one needs the
/// room. Contents survive throughout.
#[test]
fn the_large_cache_splits_merges_and_evicts_ranges() {
    const UNIT: usize = UNIT_OF_CACHE;
    let a = Allocator::new(TestPlatform::new());
    let at = |size| Layout::from_size_align(size, 16).unwrap();
    let x = a.alloc(at(4 * UNIT));
    // SAFETY: live blocks of the layouts given, each the one the previous realloc returned.
    unsafe {
        a.dealloc(x, at(4 * UNIT));
        let p = a.alloc(at(UNIT));
        let q = a.alloc(at(UNIT));
        assert_eq!(
            (p, q),
            (x, x.add(2 * UNIT)),
            "the front of the cached range, and the middle of the run behind p"
        );
        fill(p, UNIT, 1);
        fill(q, UNIT, 2);
        let p2 = a.realloc(p, at(UNIT), 2 * UNIT);
        assert_eq!(p2, p, "grown in place, up to q");
        assert!(holds(p2, UNIT, 1));
        let stats = a.stats();
        assert_eq!(
            (stats.large_cached_blocks, stats.large_cached_bytes),
            (1, UNIT),
            "the run behind q is cached: {stats}"
        );
        let q2 = a.realloc(q, at(UNIT), 3 * UNIT);
        assert!(
            !q2.is_null() && q2 != q,
            "no room after q, none cached that holds it"
        );
        assert!(holds(q2, UNIT, 2));
        let stats = a.stats();
        assert_eq!(
            (stats.large_cached_blocks, stats.large_cached_bytes),
            (1, 2 * UNIT),
            "q's old range merged with the run behind it: {stats}"
        );
        a.check().unwrap();
        a.dealloc(p2, at(2 * UNIT));
        let stats = a.stats();
        assert_eq!(
            (stats.large_cached_blocks, stats.large_cached_bytes),
            (1, 4 * UNIT),
            "merged back into the whole range: {stats}"
        );
        let live = a.platform().live_bytes();
        a.dealloc(q2, at(3 * UNIT));
        let stats = a.stats();
        assert_eq!(
            (stats.large_cached_blocks, stats.large_cached_bytes),
            (1, 3 * UNIT),
            "the older range evicted for the newer: {stats}"
        );
        assert_eq!(a.platform().live_bytes(), live - 4 * UNIT, "and unmapped");
    }
    a.check().unwrap();
}

/// The large cache's limit grows only for a program that cycles through more than it keeps,
/// and only to what the program had in use: six blocks of a unit allocated and freed
/// together (6 units, more than the 4 it starts with) miss a cache's worth after a cache's
/// worth was evicted, and the limit grows to the 6 units they took, no more, after which all
/// six are kept; two blocks of 4 units, more than that, have one evicted, allocating them
/// again misses it and doubles the limit to the 8 units they take, and from then on the
/// cycle is served from the cache with no system call.
#[test]
fn the_large_cache_grows_for_blocks_that_cycle_through_more_than_it_keeps() {
    const UNIT: usize = UNIT_OF_CACHE;
    let a = Allocator::new(TestPlatform::new());
    let cycle_of = |n, size| {
        let layout = Layout::from_size_align(size, 16).unwrap();
        let blocks: Vec<_> = (0..n).map(|_| a.alloc(layout)).collect();
        // SAFETY: live blocks of `layout`.
        unsafe {
            for (i, &p) in blocks.iter().enumerate() {
                assert!(!p.is_null());
                fill(p, size, i as u64);
            }
            for (i, &p) in blocks.iter().enumerate() {
                assert!(holds(p, size, i as u64));
                a.dealloc(p, layout);
            }
        }
        a.check().unwrap();
        a.stats()
    };
    let limits: Vec<_> = (0..3)
        .map(|_| cycle_of(6, UNIT).large_cached_limit)
        .collect();
    assert_eq!(
        limits,
        [pymalloc::CACHE_BYTES, pymalloc::CACHE_BYTES, 6 * UNIT],
        "grown once a cache's worth missed after a cache's worth evicted, to what was in use"
    );
    let stats = cycle_of(6, UNIT);
    assert_eq!(
        (stats.large_cached_limit, stats.large_cached_bytes),
        (6 * UNIT, 6 * UNIT),
        "all six kept, the limit no higher: {stats}"
    );
    a.trim();
    let cycle = || cycle_of(2, 4 * UNIT);
    let stats = cycle();
    assert_eq!(stats.large_cached_limit, 6 * UNIT, "{stats}");
    assert_eq!(stats.large_cached_bytes, 4 * UNIT, "one evicted: {stats}");
    let stats = cycle();
    assert_eq!(
        stats.large_cached_limit,
        2 * pymalloc::CACHE_BYTES,
        "{stats}"
    );
    assert_eq!(stats.large_cached_bytes, 8 * UNIT, "both kept: {stats}");
    let reserves = a.platform().reserve_calls();
    let stats = cycle();
    assert_eq!(
        a.platform().reserve_calls(),
        reserves,
        "served from the cache"
    );
    assert_eq!(
        stats.large_cached_limit,
        2 * pymalloc::CACHE_BYTES,
        "{stats}"
    );
    a.trim();
    let stats = a.stats();
    assert_eq!(stats.large_cached_bytes, 0, "{stats}");
    let stats = cycle();
    assert_eq!(
        stats.large_cached_limit,
        2 * pymalloc::CACHE_BYTES,
        "what trim unmapped does not count as evicted: {stats}"
    );
    assert!(pymalloc::MAX_CACHE_BYTES >= stats.large_cached_limit);
}

/// A block too big for the large cache is freed into it but for its tail (its front is kept,
/// faulted in, for the next request to start from), and a program that keeps allocating it
/// again grows the cache to hold it whole (to the most it had in use, no more), as glibc's
/// mmap threshold rises to the largest block freed.
#[test]
fn the_large_cache_grows_to_hold_a_block_freed_and_allocated_again() {
    const UNIT: usize = UNIT_OF_CACHE;
    let a = Allocator::new(TestPlatform::new());
    let layout = Layout::from_size_align(6 * UNIT, 16).unwrap();
    let round = || {
        let p = a.alloc(layout);
        assert!(!p.is_null());
        // SAFETY: a live block of `layout`.
        unsafe { a.dealloc(p, layout) };
        a.stats()
    };
    let stats = round();
    assert_eq!(
        stats.large_cached_bytes,
        pymalloc::CACHE_BYTES,
        "the front kept: {stats}"
    );
    let stats = round();
    assert_eq!(stats.large_cached_limit, 6 * UNIT, "{stats}");
    assert_eq!(stats.large_cached_bytes, 6 * UNIT, "{stats}");
    let reserves = a.platform().reserve_calls();
    round();
    assert_eq!(
        a.platform().reserve_calls(),
        reserves,
        "served from the cache"
    );
    a.check().unwrap();
}

/// A block of one size allocated and freed in a loop is mapped a few times while the cache's
/// limit grows to it, then never again, up to sizes far beyond where the limit starts.
#[test]
fn a_loop_of_one_size_stops_calling_the_system() {
    for size in [2, 5, 25].map(|n| n * pymalloc::CACHE_BYTES) {
        let a = Allocator::new(TestPlatform::new());
        let layout = Layout::from_size_align(size, 16).unwrap();
        let mut reserves = Vec::new();
        for _ in 0..12 {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            // SAFETY: a live block of `layout`, freed once.
            unsafe {
                fill(p, 4096, 1);
                a.dealloc(p, layout);
            }
            reserves.push(a.platform().reserve_calls());
        }
        // The limit doubles from where it starts to the size: log2(size / start) rounds, then
        // none.
        let growth = (size / pymalloc::CACHE_BYTES).ilog2() as usize + 2;
        assert!(
            reserves.windows(2).skip(growth).all(|w| w[0] == w[1]),
            "{size}: reservations after each round {reserves:?}"
        );
        a.check().unwrap();
    }
}

/// What the cache keeps follows what the program has in use lately: a hundred blocks of a
/// unit that churn are kept; once the program frees them and goes on with a few small large
/// blocks, the cache gives the rest back as it frees, and `trim` gives back all.
#[test]
fn the_cache_gives_back_what_the_program_no_longer_uses() {
    const UNIT: usize = UNIT_OF_CACHE;
    let a = Allocator::new(TestPlatform::new());
    let big = Layout::from_size_align(UNIT, 16).unwrap();
    for _ in 0..8 {
        let blocks: Vec<_> = (0..100).map(|_| a.alloc(big)).collect();
        for p in blocks {
            assert!(!p.is_null());
            // SAFETY: a live block of `big`.
            unsafe { a.dealloc(p, big) };
        }
    }
    let churning = a.stats();
    assert!(
        churning.large_cached_bytes >= 60 * UNIT,
        "the churning blocks are kept: {churning}"
    );
    let small = Layout::from_size_align(300 << 10, 16).unwrap();
    for _ in 0..300 {
        let p = a.alloc(small);
        assert!(!p.is_null());
        // SAFETY: a live block of `small`.
        unsafe { a.dealloc(p, small) };
    }
    let after = a.stats();
    assert!(
        after.large_cached_bytes <= 4 * UNIT,
        "given back as the program moved on: {after}"
    );
    a.trim();
    assert_eq!(a.stats().large_cached_bytes, 0);
    a.check().unwrap();
}

/// Minor page faults of the calling thread so far.
fn thread_faults() -> u64 {
    // SAFETY: an all-zero `rusage` is valid; getrusage writes it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid `rusage` to write; RUSAGE_THREAD is Linux's.
    let status = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    assert_eq!(status, 0);
    usage.ru_minflt as u64
}

/// Blocks of random sizes from 1 to 32 MiB allocated, written a byte a page and freed in a
/// loop, one at a time (the `large-loop` workload), on the system's pages: once the cache's
/// limit has grown to them, the pages of the largest are faulted in about once, not again
/// each time a new largest block comes and goes (the cache once unmapped a freed block
/// longer than its room whole: 4 to 5 times the pages of the largest).
#[test]
fn a_loop_of_random_sizes_faults_its_largest_block_in_once() {
    const MIB: usize = 1 << 20;
    const PAGE: usize = 4096;
    let a = Allocator::new(pymalloc_arena::OsPlatform);
    let mut rng = common::Rng::new(6);
    let (mut faults, mut largest) = (0, 0);
    for round in 0..400 {
        let size = MIB + rng.below(31 * MIB as u64) as usize;
        let layout = Layout::from_size_align(size, 16).unwrap();
        let before = thread_faults();
        let p = a.alloc(layout);
        assert!(!p.is_null());
        for at in (0..size).step_by(PAGE) {
            // SAFETY: inside the live block.
            unsafe { p.add(at).write(1) };
        }
        if round >= 40 {
            faults += thread_faults() - before;
            largest = largest.max(size);
        }
        // SAFETY: a live block of `layout`, freed once.
        unsafe { a.dealloc(p, layout) };
    }
    let pages = (largest / PAGE) as u64;
    assert!(
        faults <= pages + pages / 2,
        "{faults} page faults after the first 40 rounds; the largest block has {pages} pages"
    );
    a.check().unwrap();
}

/// Two buffers grown side by side by doubling, to sizes just past powers of two, then freed,
/// round after round (two `Vec`s filled together): once the cache holds what a round uses,
/// each buffer grows in place in its own half of one freed range that held both. (Taking each
/// new block from the front of the largest range put the second right behind the first,
/// neither could grow in place, and the two leapfrogged through fresh pages.)
#[test]
fn two_buffers_grown_side_by_side_in_one_range_each_grow_in_place() {
    const KIB: usize = 1 << 10;
    let a = Allocator::new(TestPlatform::new());
    let at = |size| Layout::from_size_align(size, 16).unwrap();
    let sizes = [520 * KIB, 1032 * KIB, 2056 * KIB, 4104 * KIB];
    // One round: the blocks that moved as they grew, and the reservations made.
    let round = || {
        let reserves = a.platform().reserve_calls();
        let mut moved = 0;
        // SAFETY: live blocks of the layouts given, each the one the previous realloc
        // returned.
        unsafe {
            let mut x = a.alloc(at(sizes[0]));
            let mut y = a.alloc(at(sizes[0]));
            fill(x, sizes[0], 1);
            fill(y, sizes[0], 2);
            for w in sizes.windows(2) {
                let (old, new) = (w[0], w[1]);
                let x2 = a.realloc(x, at(old), new);
                let y2 = a.realloc(y, at(old), new);
                moved += usize::from(x2 != x) + usize::from(y2 != y);
                assert!(holds_prefix(x2, new, old, 1) && holds_prefix(y2, new, old, 2));
                fill(x2, new, 1);
                fill(y2, new, 2);
                (x, y) = (x2, y2);
                a.check().unwrap();
            }
            a.dealloc(x, at(sizes[3]));
            a.dealloc(y, at(sizes[3]));
        }
        (moved, a.platform().reserve_calls() - reserves)
    };
    // Rounds until the cache's limit holds a round's blocks.
    for _ in 0..4 {
        round();
    }
    // Then one range that held both, freed: the cache holds it whole.
    a.trim();
    let both = at(2 * sizes[3]);
    let p = a.alloc(both);
    // SAFETY: a live block of this layout.
    unsafe { a.dealloc(p, both) };
    let stats = a.stats();
    assert_eq!(
        (stats.large_cached_blocks, stats.large_cached_bytes),
        (1, 2 * sizes[3]),
        "{stats}"
    );
    let rounds: Vec<_> = (0..4).map(|_| round()).collect();
    assert!(
        rounds.iter().all(|&r| r == (0, 0)),
        "(blocks moved, reservations) each round: {rounds:?}"
    );
}
