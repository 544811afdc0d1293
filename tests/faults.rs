//! The system says no: refused reservations, commits and decommits through the test platform
//! give null (or keep memory committed) and leave the allocator consistent and usable; layouts
//! that cannot be served give null; misuse the allocator can see aborts with a message.

mod common;

use std::alloc::Layout;
use std::ptr::NonNull;

use common::{expect_abort, fill, holds, in_child};
use pymalloc::{Allocator, OsPlatform};
use pymalloc_arena::{MIN_DIRTY_SLOTS, TestPlatform};

type Blocks = Vec<(*mut u8, Layout)>;

/// A mix that needs new pools, new arenas and new large mappings as it goes.
fn workload() -> Vec<Layout> {
    let mut layouts = Vec::new();
    for i in 0..40usize {
        layouts.push(Layout::from_size_align(1 + i * 13 % 512, 8).unwrap());
        layouts.push(Layout::from_size_align(600 + i * 4096, 16).unwrap());
        layouts.push(Layout::from_size_align(300_000 + i * 4096, 16).unwrap());
        layouts.push(Layout::from_size_align(100, 1 << (i % 13)).unwrap());
    }
    layouts
}

fn free_all(a: &Allocator<TestPlatform>, blocks: Blocks) {
    for (p, layout) in blocks {
        // SAFETY: live blocks of these layouts, filled with their size as seed.
        unsafe {
            assert!(holds(p, layout.size(), layout.size() as u64));
            a.dealloc(p, layout);
        }
    }
    a.check().unwrap();
    assert_eq!(a.stats().bytes_in_use, 0);
}

fn alloc_filled(a: &Allocator<TestPlatform>, layout: Layout) -> *mut u8 {
    let p = a.alloc(layout);
    if !p.is_null() {
        // SAFETY: a fresh block of layout.size() bytes.
        unsafe { fill(p, layout.size(), layout.size() as u64) };
    }
    p
}

#[test]
fn the_kth_refused_reservation_fails_one_allocation_and_the_next_ones_work() {
    let calls = {
        let a = Allocator::new(TestPlatform::new());
        let blocks: Blocks = workload()
            .into_iter()
            .map(|l| (alloc_filled(&a, l), l))
            .collect();
        assert!(blocks.iter().all(|(p, _)| !p.is_null()));
        free_all(&a, blocks);
        a.platform().reserve_calls()
    };
    assert!(calls > 40, "the workload makes {calls} reservations");
    for k in 1..=calls {
        let a = Allocator::new(TestPlatform::new());
        a.platform().fail_reserve_in(k);
        let mut blocks = Vec::new();
        let mut nulls = 0;
        for layout in workload() {
            let p = alloc_filled(&a, layout);
            if p.is_null() {
                nulls += 1;
                a.check().unwrap();
            } else {
                blocks.push((p, layout));
            }
        }
        // Radix-tree nodes are reserved as the arenas' addresses require, and the test
        // platform's addresses come from the system allocator, so a run may make fewer
        // reservations than the first one: a refusal that never came fails nothing.
        let reached = a.platform().reserve_calls() >= k;
        assert_eq!(
            nulls,
            usize::from(reached),
            "refusing reservation {k} of {calls}"
        );
        free_all(&a, blocks);
    }
}

#[test]
fn with_every_reservation_refused_only_memory_at_hand_is_served() {
    let a = Allocator::new(TestPlatform::new());
    let small = Layout::from_size_align(64, 8).unwrap();
    let large = Layout::from_size_align(300_000, 8).unwrap();
    let (p, q) = (alloc_filled(&a, small), alloc_filled(&a, large));
    a.platform().set_fail_reserves(true);
    // The pool at hand still serves its class; a new class needs a pool from the arena at hand.
    let more = alloc_filled(&a, small);
    assert!(!more.is_null());
    let other = Layout::from_size_align(300, 8).unwrap();
    let o = alloc_filled(&a, other);
    assert!(!o.is_null());
    assert!(
        a.alloc(Layout::from_size_align(500_000, 8).unwrap())
            .is_null()
    );
    // A realloc that must move gets null and leaves the block as it was.
    // SAFETY: `q` is a live block of `large`.
    unsafe {
        assert!(a.realloc(q, large, 1 << 20).is_null());
        assert!(holds(q, large.size(), large.size() as u64));
    }
    a.check().unwrap();
    a.platform().set_fail_reserves(false);
    let r = alloc_filled(&a, Layout::from_size_align(500_000, 8).unwrap());
    assert!(!r.is_null());
    free_all(
        &a,
        vec![
            (p, small),
            (q, large),
            (more, small),
            (o, other),
            (r, Layout::from_size_align(500_000, 8).unwrap()),
        ],
    );
}

#[test]
fn a_refused_large_mapping_is_asked_for_again_once_the_cache_is_emptied() {
    // What the cache holds counts against the system's limits (address space, commit
    // charge), so a refusal while it holds something empties it and asks once more.
    let a = Allocator::new(TestPlatform::new());
    let cached = Layout::from_size_align(1 << 20, 8).unwrap();
    let bigger = Layout::from_size_align(3 << 20, 8).unwrap();
    let p = alloc_filled(&a, cached);
    // SAFETY: a live block of this layout.
    unsafe { a.dealloc(p, cached) };
    assert_eq!(a.stats().large_cached_blocks, 1);
    a.platform().fail_reserve_in(1);
    let q = alloc_filled(&a, bigger);
    assert!(!q.is_null(), "served by the second request");
    assert_eq!(a.stats().large_cached_blocks, 0, "the cache was emptied");
    // With nothing cached, a refusal is final.
    a.platform().fail_reserve_in(1);
    assert!(a.alloc(bigger).is_null());
    a.check().unwrap();
    free_all(&a, vec![(q, bigger)]);
}

#[test]
fn a_refused_commit_gives_null_and_nothing_is_lost() {
    let a = Allocator::new(TestPlatform::new());
    let first = Layout::from_size_align(32, 8).unwrap();
    let p = alloc_filled(&a, first);
    a.platform().set_fail_commits(true);
    // Another class needs a new pool slot, which must be committed first.
    let other = Layout::from_size_align(256, 8).unwrap();
    assert!(a.alloc(other).is_null());
    a.check().unwrap();
    a.platform().set_fail_commits(false);
    let q = alloc_filled(&a, other);
    assert!(!q.is_null());
    free_all(&a, vec![(p, first), (q, other)]);
}

#[test]
fn refused_decommits_keep_memory_committed_and_consistent() {
    let a = Allocator::new(TestPlatform::new());
    a.platform().set_fail_decommits(true);
    let layout = Layout::from_size_align(512, 16).unwrap();
    // Enough pools that freeing them exceeds the dirty limit. The first block of each arena
    // stays in use, so that no arena empties (emptied arenas beyond a few are unmapped).
    let per_arena = pymalloc_arena::POOLS_PER_ARENA
        * pymalloc_pool::blocks_per_pool(pymalloc_pool::SizeClass::for_size(512).unwrap());
    let count = (MIN_DIRTY_SLOTS + 64) * 31;
    let blocks: Blocks = (0..count)
        .map(|_| (alloc_filled(&a, layout), layout))
        .collect();
    assert!(blocks.iter().all(|(p, _)| !p.is_null()));
    let (kept, freed): (Vec<_>, Vec<_>) = blocks
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % per_arena == 0);
    for (_, (p, layout)) in freed {
        // SAFETY: live blocks of this layout.
        unsafe { a.dealloc(p, layout) };
    }
    a.check().unwrap();
    assert_eq!(a.platform().decommits(), 0);
    assert!(a.stats().pools_free_dirty > MIN_DIRTY_SLOTS);
    a.platform().set_fail_decommits(false);
    free_all(&a, kept.into_iter().map(|(_, b)| b).collect());
    a.trim();
    a.check().unwrap();
    assert_eq!(a.stats().pools_free_dirty, 0);
    assert_eq!(a.stats().arenas, 0);
}

#[test]
fn layouts_that_cannot_be_served_give_null() {
    let test = Allocator::new(TestPlatform::new());
    let os = Allocator::new(OsPlatform);
    let huge = [
        Layout::from_size_align(isize::MAX as usize - 4095, 4096).unwrap(),
        Layout::from_size_align(isize::MAX as usize / 2, 8).unwrap(),
        Layout::from_size_align(1, 1 << 62).unwrap(),
        Layout::from_size_align(1 << 47, 1 << 47).unwrap(),
    ];
    for layout in huge {
        assert!(test.alloc(layout).is_null(), "{layout:?}");
        assert!(os.alloc(layout).is_null(), "{layout:?}");
        assert!(os.alloc_zeroed(layout).is_null(), "{layout:?}");
    }
    test.check().unwrap();
    os.check().unwrap();
    // A realloc to an impossible size gives null and keeps the block.
    let layout = Layout::from_size_align(100, 64).unwrap();
    let p = os.alloc(layout);
    // SAFETY: a live block of `layout`, resized only on success.
    unsafe {
        fill(p, 100, 100);
        assert!(
            os.realloc(p, layout, isize::MAX as usize).is_null(),
            "size past isize::MAX - align"
        );
        assert!(
            os.realloc(p, layout, isize::MAX as usize - 8191).is_null(),
            "system refuses"
        );
        assert!(holds(p, 100, 100));
        os.dealloc(p, layout);
    }
    os.check().unwrap();
}

#[test]
fn a_double_free_aborts_with_a_message() {
    // The emptied pool is kept by the heap; the block is the freelist's head and its header
    // says no block is in use: a message and an abort, never corruption.
    expect_abort("a_double_free_aborts_with_a_message", "(double free)");
    if in_child() {
        let a = Allocator::new(TestPlatform::new());
        let layout = Layout::from_size_align(24, 8).unwrap();
        let p = a.alloc(layout);
        // SAFETY: deliberately not: the second free is the misuse under test.
        unsafe {
            a.dealloc(p, layout);
            a.dealloc(p, layout);
        }
    }
}

#[test]
fn freeing_the_block_freed_last_again_aborts_with_a_message() {
    // The pool still has a block in use; the freed mark gives the block away (pool invariant
    // P9), and the walk finds it at the freelist's head.
    expect_abort(
        "freeing_the_block_freed_last_again_aborts_with_a_message",
        "pymalloc: fatal: free of a block that is already free (double free)",
    );
    if in_child() {
        let a = Allocator::new(TestPlatform::new());
        let layout = Layout::from_size_align(24, 8).unwrap();
        let (p, _q) = (a.alloc(layout), a.alloc(layout));
        // SAFETY: deliberately not: the second free is the misuse under test.
        unsafe {
            a.dealloc(p, layout);
            a.dealloc(p, layout);
        }
    }
}

#[test]
fn a_c_free_of_a_block_freed_before_others_aborts_with_a_message() {
    // Through C's `free` (no layout): blocks freed since put another at the freelist's head,
    // and the pool still has a block in use; the freed mark tells (pool invariant P9).
    expect_abort(
        "a_c_free_of_a_block_freed_before_others_aborts_with_a_message",
        "pymalloc: fatal: free of a block that is already free (double free)",
    );
    if in_child() {
        let a = Allocator::new(TestPlatform::new());
        let layout = Layout::from_size_align(24, 8).unwrap();
        let (p, q, _r) = (a.alloc(layout), a.alloc(layout), a.alloc(layout));
        // SAFETY: deliberately not: the third free is the misuse under test.
        unsafe {
            a.dealloc_unsized(NonNull::new(p).unwrap());
            a.dealloc_unsized(NonNull::new(q).unwrap());
            a.dealloc_unsized(NonNull::new(p).unwrap());
        }
    }
}

#[test]
fn a_block_freed_twice_by_another_heap_aborts_with_a_message() {
    // The second free finds the block's freed mark, written by the first.
    expect_abort(
        "a_block_freed_twice_by_another_heap_aborts_with_a_message",
        "pymalloc: fatal: free of a block that is already free (double free)",
    );
    if in_child() {
        let a = Allocator::new(TestPlatform::new());
        let (mut owner, mut other) = (a.local_heap().unwrap(), a.local_heap().unwrap());
        let layout = Layout::from_size_align(24, 8).unwrap();
        let (p, _q) = (owner.alloc(layout), owner.alloc(layout));
        // SAFETY: deliberately not: the second free is the misuse under test.
        unsafe {
            other.dealloc(p, layout);
            other.dealloc(p, layout);
        }
    }
}

#[test]
fn a_block_handed_out_again_frees_again_with_its_second_word_unwritten() {
    // A block freed through C's `free` holds its freed mark; handed out again, the mark is
    // cleared, so a free that never wrote the second word frees it as any other.
    let a = Allocator::new(TestPlatform::new());
    let layout = Layout::from_size_align(16, 8).unwrap();
    let keep = a.alloc(layout);
    for _ in 0..3 {
        let p = NonNull::new(a.alloc(layout)).unwrap();
        // SAFETY: a live block, freed once per round; only its first word is written.
        unsafe {
            p.cast::<usize>().write(7);
            a.dealloc_unsized(p);
        }
        a.check().unwrap();
    }
    // SAFETY: a live block of this layout.
    unsafe { a.dealloc(keep, layout) };
}

#[test]
fn a_block_that_holds_its_freed_mark_is_free_wherever_it_waits() {
    // A block holding its freed mark is free, even where its owner cannot find it (in another
    // thread's hands): the free aborts rather than hand the block out twice. The mark's key is
    // drawn per process, so only a program that reads it out of the allocator can write one;
    // this test does, to stand for a block that waits where the owner cannot see.
    expect_abort(
        "a_block_that_holds_its_freed_mark_is_free_wherever_it_waits",
        "pymalloc: fatal: free of a block that is already free: freed and not handed out since",
    );
    if in_child() {
        let a = Allocator::new(TestPlatform::new());
        let layout = Layout::from_size_align(32, 8).unwrap();
        let (p, _q) = (a.alloc(layout), a.alloc(layout));
        let p = NonNull::new(p).unwrap();
        // SAFETY: a live block of 32 bytes; the free is the misuse under test.
        unsafe {
            p.cast::<usize>().add(1).write(pymalloc_pool::freed_mark(p));
            a.dealloc_unsized(p);
        }
    }
}

#[test]
#[cfg(debug_assertions)]
fn a_dealloc_with_the_wrong_layout_aborts_in_debug_builds() {
    expect_abort(
        "a_dealloc_with_the_wrong_layout_aborts_in_debug_builds",
        "pymalloc: fatal: dealloc: layout does not match",
    );
    if in_child() {
        let a = Allocator::new(TestPlatform::new());
        let p = a.alloc(Layout::from_size_align(24, 8).unwrap());
        let _q = a.alloc(Layout::from_size_align(200, 8).unwrap());
        // SAFETY: deliberately not: the wrong layout is the misuse under test.
        unsafe { a.dealloc(p, Layout::from_size_align(200, 8).unwrap()) };
    }
}
