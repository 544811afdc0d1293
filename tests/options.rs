//! The options' effects: each policy option, given to an instance over the test platform,
//! changes what it keeps, against the same program at the defaults. (Reading them from the
//! environment is tested in `src/options.rs` and, end to end, under `LD_PRELOAD` in
//! `override/tests/preload.rs`.)
// Figures of the default build's blocks; the `secure` build's differ on purpose (a trailer
// on each block, a guard page on each large one).
#![cfg(not(feature = "secure"))]

use std::alloc::Layout;

use pymalloc::{Allocator, HugePages, Options, Stats};
use pymalloc_arena::{ARENA_SIZE, TestPlatform};

/// Allocates `bytes` in 1 KiB blocks, frees them all, and returns the figures after.
fn fill_and_free(a: &Allocator<TestPlatform>, bytes: usize) -> Stats {
    let layout = Layout::from_size_align(1024, 8).unwrap();
    let blocks: Vec<_> = (0..bytes / 1024).map(|_| a.alloc(layout)).collect();
    assert!(blocks.iter().all(|p| !p.is_null()));
    for p in blocks {
        // SAFETY: a live block of this layout.
        unsafe { a.dealloc(p, layout) };
    }
    a.check().unwrap();
    a.stats()
}

fn with(options: Options) -> Allocator<TestPlatform> {
    Allocator::with_options(TestPlatform::new(), options)
}

#[test]
fn empty_arenas_sets_how_many_stay_mapped() {
    let bytes = 8 * ARENA_SIZE;
    let default = fill_and_free(&with(Options::DEFAULT), bytes);
    let many = fill_and_free(
        &with(Options {
            empty_arenas: 16,
            ..Options::DEFAULT
        }),
        bytes,
    );
    let none = fill_and_free(
        &with(Options {
            empty_arenas: 0,
            dirty_floor: 0,
            ..Options::DEFAULT
        }),
        bytes,
    );
    assert_eq!(
        default.empty_arenas,
        Options::DEFAULT.empty_arenas,
        "{default}"
    );
    assert!(many.empty_arenas >= 6, "all kept: {many}");
    assert_eq!(none.empty_arenas, 0, "{none}");
}

#[test]
fn dirty_floor_sets_how_much_freed_memory_stays_committed() {
    let bytes = ARENA_SIZE;
    let default = fill_and_free(&with(Options::DEFAULT), bytes);
    let none = fill_and_free(
        &with(Options {
            dirty_floor: 0,
            ..Options::DEFAULT
        }),
        bytes,
    );
    assert!(default.pools_free_dirty >= 64, "{default}");
    assert!(none.pools_free_dirty <= 8, "{none}");
    assert_eq!(none.pools_free_dirty_limit, none.pools_kept / 2);
}

#[test]
fn large_cache_sets_how_much_of_freed_large_blocks_is_kept() {
    let free_one = |options: Options, bytes: usize| {
        let a = with(options);
        let layout = Layout::from_size_align(bytes, 8).unwrap();
        let p = a.alloc(layout);
        assert!(!p.is_null());
        // SAFETY: a live block of this layout.
        unsafe { a.dealloc(p, layout) };
        a.check().unwrap();
        a.stats()
    };
    let mib = 1 << 20;
    assert_eq!(
        free_one(Options::DEFAULT, 3 * mib).large_cached_bytes,
        3 * mib
    );
    let small = Options {
        large_cache: 2 * mib + 100,
        ..Options::DEFAULT
    };
    // A block longer than the limit (rounded down to whole pages): its front kept, as much
    // as the limit.
    assert_eq!(free_one(small, 3 * mib).large_cached_bytes, 2 * mib);
    assert_eq!(free_one(small, mib).large_cached_bytes, mib);
    let off = Options {
        large_cache: 0,
        ..Options::DEFAULT
    };
    let s = free_one(off, mib);
    assert_eq!((s.large_cached_bytes, s.large_cached_limit), (0, 0));
}

#[test]
fn given_options_are_the_instances_whatever_the_environment_says() {
    let options = Options {
        empty_arenas: 9,
        ..Options::DEFAULT
    };
    assert_eq!(with(options).options(), options);
}

#[test]
fn huge_pages_sets_which_arenas_are_advised_to_huge_pages() {
    // Four arenas' worth: below the automatic threshold, so only `always` advises them.
    let bytes = 4 * ARENA_SIZE;
    const { assert!(4 < pymalloc_arena::AUTO_HUGE_ARENAS) };
    for (huge_pages, advised) in [
        (HugePages::Never, false),
        (HugePages::Auto, false),
        (HugePages::Always, true),
    ] {
        let a = with(Options {
            huge_pages,
            ..Options::DEFAULT
        });
        let stats = fill_and_free(&a, bytes);
        assert!(stats.arenas >= 4, "{stats}");
        let ranges = a.platform().huge_advised();
        assert_eq!(!ranges.is_empty(), advised, "{huge_pages:?}: {ranges:?}");
        if advised {
            assert!(ranges.len() >= 4 && ranges.iter().all(|&(_, len)| len == ARENA_SIZE));
        }
    }
    // Past the threshold, `auto` advises them too; the default advises none.
    let bytes = (pymalloc_arena::AUTO_HUGE_ARENAS + 1) * ARENA_SIZE;
    let a = with(Options {
        huge_pages: HugePages::Auto,
        ..Options::DEFAULT
    });
    fill_and_free(&a, bytes);
    assert!(a.platform().huge_advised().len() >= pymalloc_arena::AUTO_HUGE_ARENAS);
    let a = with(Options::DEFAULT);
    fill_and_free(&a, bytes);
    assert!(a.platform().huge_advised().is_empty());
}

#[test]
fn huge_pages_sets_which_large_blocks_are_advised_to_huge_pages() {
    const MIB: usize = 1 << 20;
    let layout = |bytes| Layout::from_size_align(bytes, 16).unwrap();
    let advised = |a: &Allocator<TestPlatform>| -> Vec<(usize, usize)> {
        let arenas = |&(at, len): &(usize, usize)| len == ARENA_SIZE && at % ARENA_SIZE == 0;
        // Only large blocks: so few arenas are never advised but under `always`.
        let ranges = a.platform().huge_advised();
        ranges.into_iter().filter(|r| !arenas(r)).collect()
    };
    // One block of 3 MiB and one of 1 MiB: `always` advises the first alone, mapped from a
    // huge page's start; `auto` neither, with so little in use.
    for (huge_pages, expected) in [
        (HugePages::Never, 0),
        (HugePages::Auto, 0),
        (HugePages::Always, 1),
    ] {
        let a = with(Options {
            huge_pages,
            ..Options::DEFAULT
        });
        let big = a.alloc(layout(3 * MIB));
        let small = a.alloc(layout(MIB));
        assert!(!big.is_null() && !small.is_null());
        let ranges = advised(&a);
        assert_eq!(ranges.len(), expected, "{huge_pages:?}: {ranges:?}");
        if expected == 1 {
            assert_eq!(ranges[0], (big.addr(), 3 * MIB));
            assert_eq!(big.addr() % pymalloc::HUGE_PAGE, 0);
        }
        // A block grown past a huge page by remapping is advised as it grows (`always`).
        // SAFETY: a live block of this layout; its new size is not zero.
        let grown = unsafe { a.realloc(small, layout(MIB), 4 * MIB) };
        assert!(!grown.is_null());
        let ranges = advised(&a);
        assert_eq!(
            ranges.iter().any(|&r| r == (grown.addr(), 4 * MIB)),
            huge_pages == HugePages::Always,
            "{huge_pages:?}: {ranges:?}"
        );
        // SAFETY: live blocks of these layouts.
        unsafe {
            a.dealloc(big, layout(3 * MIB));
            a.dealloc(grown, layout(4 * MIB));
        }
        a.check().unwrap();
    }
    // `auto` advises blocks once large blocks in use, with the new one, come to
    // AUTO_HUGE_BYTES: of blocks of 4 MiB, the one that reaches it and those after.
    let a = with(Options {
        huge_pages: HugePages::Auto,
        ..Options::DEFAULT
    });
    let count = pymalloc::AUTO_HUGE_BYTES / (4 * MIB) + 1;
    let blocks: Vec<_> = (0..count).map(|_| a.alloc(layout(4 * MIB))).collect();
    assert!(blocks.iter().all(|p| !p.is_null()));
    let ranges = advised(&a);
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], (blocks[count - 2].addr(), 4 * MIB));
    for p in blocks {
        // SAFETY: a live block of this layout.
        unsafe { a.dealloc(p, layout(4 * MIB)) };
    }
    a.check().unwrap();
}
