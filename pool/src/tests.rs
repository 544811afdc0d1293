use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::collections::BTreeSet;
use std::ptr::NonNull;

use quickcheck::{QuickCheck, TestResult};

use super::*;

/// A zeroed arena owned by the test, with one pool of a class entered in its first-slot entries:
/// `.0` is the pool's memory, from slot [`FIRST`] on (not aligned to a span's size: spans
/// start at any slot).
pub(crate) struct Mem(pub(crate) NonNull<u8>, NonNull<u8>);

const ARENA: Layout = match Layout::from_size_align(ARENA_SIZE, ARENA_SIZE) {
    Ok(layout) => layout,
    Err(_) => panic!("arena layout"),
};

impl Mem {
    pub(crate) fn new(class: SizeClass) -> Mem {
        // SAFETY: the layout has a non-zero size.
        let arena = NonNull::new(unsafe { alloc_zeroed(ARENA) }).expect("test memory");
        // SAFETY: the widest pool fits past slot FIRST, inside the arena.
        let memory = unsafe { arena.add(FIRST * POOL_SIZE) };
        enter_pool(memory, class);
        Mem(memory, arena)
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.1.as_ptr(), ARENA) }
    }
}

/// The slot where test pools start.
const FIRST: usize = 3;
const _: () = assert!(FIRST + MAX_SPAN_SLOTS <= SLOTS);

/// Enters the pool of `class` starting at `memory` in its slots' first-slot entries, as the
/// arena manager does when it hands out slots.
fn enter_pool(memory: NonNull<u8>, class: SizeClass) {
    let first = (memory.addr().get() % ARENA_SIZE / POOL_SIZE) as u8;
    // SAFETY: the pool's slots lie in a live test arena.
    unsafe { set_first_slot_entries(memory, class.span_slots(), first) };
}

fn quickcheck_tests() -> u64 {
    if cfg!(miri) { 8 } else { 200 }
}

#[test]
fn carves_every_block_once_then_reports_full() {
    // Under Miri, a sample of the classes (the big ones take long to carve and check).
    let step = if cfg!(miri) { 13 } else { 1 };
    for class in SizeClass::all()
        .step_by(step)
        .chain(SizeClass::from_index(NUM_CLASSES - 1))
    {
        let slot = Mem::new(class);
        // SAFETY: the memory is ours, entered in its table, zeroed.
        let pool = unsafe { PoolPtr::init(slot.0, class, true, core::ptr::null_mut()) };
        let mut seen = BTreeSet::new();
        let capacity = blocks_per_pool(class);
        for i in 0..capacity {
            // SAFETY: the pool is live and ours.
            let (block, zeroed) = unsafe { pool.alloc() }.expect("room left");
            assert!(zeroed, "never-used block of a fresh pool is zero");
            let offset = block.addr().get() - slot.0.addr().get();
            assert_eq!(offset, class.first_block() + i * class.block_size());
            assert!(offset + class.block_size() <= class.pool_bytes());
            assert_eq!(block.addr().get() % ALIGNMENT, 0);
            // SAFETY: the first and last bytes of a block just handed out.
            unsafe {
                assert_eq!(PoolPtr::containing(block), pool);
                assert_eq!(PoolPtr::containing(block.add(class.block_size() - 1)), pool);
            }
            assert!(seen.insert(offset));
            // SAFETY: live pool.
            assert_eq!(unsafe { pool.is_full() }, i + 1 == capacity);
        }
        // SAFETY: live pool.
        unsafe {
            assert!(pool.alloc().is_none());
            assert_eq!(pool.used(), capacity);
            assert_eq!(pool.check(), Ok(()));
        }
    }
}

/// A pool taken back empty and formatted for a class of the same span but another first
/// block (medium, small, aligned small and back) carves its blocks from the new class's
/// first block, and `check` holds at each step.
#[test]
fn a_pool_reused_for_another_class_carves_from_that_class_s_first_block() {
    let medium = SizeClass::for_size(1024).unwrap();
    let small = SizeClass::for_size(64).unwrap();
    let aligned = SizeClass::for_layout(64, 64).unwrap();
    assert_eq!(
        (
            medium.span_slots(),
            small.span_slots(),
            aligned.span_slots()
        ),
        (1, 1, 1)
    );
    assert_eq!(small.first_block(), SMALL_FIRST_BLOCK);
    assert_eq!((medium.first_block(), aligned.first_block()), (0, 0));
    let mem = Mem::new(medium);
    // SAFETY: the memory is ours, zeroed; every block freed was handed out by the pool and
    // the pool is empty whenever it is formatted again.
    unsafe {
        let pool = PoolPtr::init(mem.0, medium, true, core::ptr::null_mut());
        for class in [small, aligned, medium, small, medium] {
            let blocks: Vec<_> = std::iter::from_fn(|| pool.alloc())
                .map(|(b, _)| b)
                .collect();
            assert_eq!(pool.check(), Ok(()));
            for &b in &blocks {
                pool.free(FreedMark::of(b));
            }
            pool.reinit(class);
            assert_eq!(pool.check(), Ok(()));
            let (first, _) = pool.alloc().unwrap();
            assert_eq!(first, mem.0.add(class.first_block()), "{class:?}");
            let rest: Vec<_> = std::iter::from_fn(|| pool.alloc())
                .map(|(b, _)| b)
                .collect();
            assert_eq!(rest.len() + 1, blocks_per_pool(class), "{class:?}");
            assert_eq!(pool.check(), Ok(()));
            for b in std::iter::once(first).chain(rest) {
                assert!(pool.starts_carved_block(b));
                pool.free(FreedMark::of(b));
            }
        }
    }
}

#[test]
fn state_transitions_follow_obmalloc() {
    let class = SizeClass::for_size(512).unwrap();
    let slot = Mem::new(class);
    // SAFETY: the memory is ours; every block freed below was handed out by this pool.
    unsafe {
        let pool = PoolPtr::init(slot.0, class, false, core::ptr::null_mut());
        let blocks: Vec<_> = std::iter::from_fn(|| pool.alloc()).collect();
        assert_eq!(blocks.len(), blocks_per_pool(class));
        assert!(
            blocks.iter().all(|&(_, zeroed)| !zeroed),
            "pool was not fresh"
        );
        let in_use = Freed {
            was_full: false,
            now_empty: false,
        };
        assert_eq!(
            pool.free(FreedMark::of(blocks[3].0)),
            Freed {
                was_full: true,
                now_empty: false
            }
        );
        assert_eq!(pool.free(FreedMark::of(blocks[5].0)), in_use);
        // LIFO reuse of freed blocks, not marked zero.
        assert_eq!(pool.alloc(), Some((blocks[5].0, false)));
        assert_eq!(pool.free(FreedMark::of(blocks[5].0)), in_use);
        for (i, &(b, _)) in blocks.iter().enumerate() {
            if i == 3 || i == 5 {
                continue;
            }
            let last = pool.used() == 1;
            assert_eq!(
                pool.free(FreedMark::of(b)),
                Freed {
                    was_full: false,
                    now_empty: last
                }
            );
        }
        assert_eq!(pool.used(), 0);
        assert_eq!(pool.check(), Ok(()));
    }
}

#[test]
fn starts_carved_block_takes_only_the_starts_of_blocks_carved_so_far() {
    for size in [16, 48, 112, 3000, 40_000] {
        let class = SizeClass::for_size(size).unwrap();
        let mem = Mem::new(class);
        // SAFETY: the memory is ours; the pointers are only compared, never dereferenced.
        unsafe {
            let pool = PoolPtr::init(mem.0, class, true, core::ptr::null_mut());
            let base = mem.0.as_ptr().wrapping_add(class.first_block());
            let bytes = class.block_size();
            let at = |offset: usize| NonNull::new(base.wrapping_add(offset)).unwrap();
            assert!(!pool.starts_carved_block(at(0)), "nothing carved yet");
            let carved = blocks_per_pool(class).min(3);
            for _ in 0..carved {
                pool.alloc().unwrap();
            }
            for k in 0..carved {
                assert!(pool.starts_carved_block(at(k * bytes)), "size {size} k {k}");
                // Interior pointers: 16 and 48 bytes in (what `memalign` once handed out).
                for delta in [1, 8, 16, 48, bytes - 1] {
                    if delta < bytes {
                        let p = at(k * bytes + delta);
                        assert!(!pool.starts_carved_block(p), "size {size} +{delta}");
                    }
                }
            }
            // Past the bump offset: never handed out; and on either side of the pool.
            if carved < blocks_per_pool(class) {
                assert!(!pool.starts_carved_block(at(carved * bytes)), "size {size}");
            }
            // Before the first block: the pool's start, its gap, a block's length before it.
            for outside in [
                mem.0.as_ptr(),
                base.wrapping_sub(ALIGNMENT),
                base.wrapping_sub(bytes),
                mem.0.as_ptr().wrapping_add(class.pool_bytes()),
            ] {
                if outside == base {
                    continue;
                }
                let p = NonNull::new(outside).unwrap();
                assert!(!pool.starts_carved_block(p), "size {size}");
            }
        }
    }
}

#[test]
#[cfg_attr(
    feature = "asan",
    ignore = "writes into a freed block on purpose, which AddressSanitizer then reports"
)]
fn check_catches_a_corrupted_freelist() {
    let class = SizeClass::for_size(32).unwrap();
    let slot = Mem::new(class);
    // SAFETY: the memory is ours; the corruption writes inside a freed block.
    unsafe {
        let pool = PoolPtr::init(slot.0, class, true, core::ptr::null_mut());
        let (a, _) = pool.alloc().unwrap();
        let (b, _) = pool.alloc().unwrap();
        pool.free(FreedMark::of(a));
        assert_eq!(pool.check(), Ok(()));
        // A use-after-free write pointing the link at the middle of a block.
        a.cast::<*mut u8>().write(b.as_ptr().add(8));
        assert!(pool.check().is_err());
        // A link back to itself: a cycle.
        a.cast::<*mut u8>().write(a.as_ptr());
        assert!(pool.check().is_err());
        // A write over the freed mark alone (P9).
        a.cast::<*mut u8>().write(core::ptr::null_mut());
        assert_eq!(pool.check(), Ok(()));
        a.cast::<usize>().add(1).write(0);
        assert!(pool.check().is_err());
    }
}

#[test]
fn a_free_marks_the_block_an_allocation_clears_it_and_a_mark_by_chance_is_told_apart() {
    let class = SizeClass::for_size(48).unwrap();
    let slot = Mem::new(class);
    // SAFETY: the memory is ours; every block freed below was handed out by this pool and is
    // freed once.
    unsafe {
        let pool = PoolPtr::init(slot.0, class, true, core::ptr::null_mut());
        let (a, b) = (pool.alloc().unwrap().0, pool.alloc().unwrap().0);
        assert!(!holds_freed_mark(a) && !holds_freed_mark(b));
        pool.free(FreedMark::of(a));
        assert!(holds_freed_mark(a), "P9");
        assert!(pool.on_freelist(a));
        // A program that stores the mark's value in its block: the walk does not find the
        // block on the freelist, and the free goes on.
        b.cast::<usize>().add(1).write(freed_mark(b));
        assert!(holds_freed_mark(b) && !pool.on_freelist(b));
        pool.free(FreedMark::of(b));
        assert_eq!(pool.used(), 0);
        assert_eq!(pool.check(), Ok(()));
        // Handed out again, from the freelist or carved, a block's mark is cleared.
        for _ in 0..3 {
            let again = pool.alloc().unwrap().0;
            assert_eq!(again.cast::<usize>().add(1).read(), 0);
            assert!(!holds_freed_mark(again));
        }
        assert_eq!(pool.check(), Ok(()));
    }
}

#[test]
fn a_list_is_a_stack_and_a_queue() {
    let class = SizeClass::for_size(16).unwrap();
    let slots: Vec<Mem> = (0..3).map(|_| Mem::new(class)).collect();
    // SAFETY: every slot is ours and each pool is in the list at most once.
    unsafe {
        let pools: Vec<PoolPtr> = slots
            .iter()
            .map(|s| PoolPtr::init(s.0, class, true, core::ptr::null_mut()))
            .collect();
        let mut list = PoolList::new();
        assert!(list.head().is_none());
        let first = |list: &PoolList| list.head().map(PoolPtr::from);
        for &p in &pools[..2] {
            list.push_front(p.into());
        }
        list.push_back(pools[2].into());
        let order = |list: &PoolList| {
            let mut v = Vec::new();
            list.for_each(|p| v.push(PoolPtr::from(p)));
            assert_eq!(list.check(), Ok(v.len()));
            v
        };
        assert_eq!(order(&list), vec![pools[1], pools[0], pools[2]]);
        list.remove(pools[2].into());
        assert_eq!(order(&list), vec![pools[1], pools[0]], "the tail removed");
        list.push_back(pools[2].into());
        list.remove(pools[0].into());
        assert_eq!(
            order(&list),
            vec![pools[1], pools[2]],
            "a middle node removed"
        );
        list.remove(pools[1].into());
        assert_eq!(first(&list), Some(pools[2]), "the head removed");
        assert_eq!(order(&list), vec![pools[2]]);
        list.remove(pools[2].into());
        assert!(list.head().is_none());
        assert_eq!(list.check(), Ok(0));
    }
}

/// Random alloc/free sequences on one pool against a model of the live blocks.
#[test]
fn pool_matches_a_model() {
    fn prop(class_index: u8, ops: Vec<(bool, u16)>) -> TestResult {
        let class = SizeClass::from_index(class_index as usize % NUM_CLASSES).unwrap();
        let slot = Mem::new(class);
        let capacity = blocks_per_pool(class);
        let mut live: Vec<NonNull<u8>> = Vec::new();
        let mut offsets = BTreeSet::new();
        // SAFETY: the slot is ours; only live blocks of this pool are freed.
        unsafe {
            let pool = PoolPtr::init(slot.0, class, true, core::ptr::null_mut());
            for (is_alloc, pick) in ops {
                if is_alloc {
                    match pool.alloc() {
                        Some((b, zeroed)) => {
                            if zeroed && b.as_ptr().read() != 0 {
                                return TestResult::error("zeroed block is not zero");
                            }
                            if !offsets.insert(b.addr().get()) {
                                return TestResult::error("block handed out twice");
                            }
                            b.as_ptr().write_bytes(0xA5, class.block_size());
                            live.push(b);
                        }
                        None if live.len() == capacity => {}
                        None => return TestResult::error("full too early"),
                    }
                } else if !live.is_empty() {
                    let b = live.swap_remove(pick as usize % live.len());
                    offsets.remove(&b.addr().get());
                    let expected_empty = live.is_empty();
                    let was_full = pool.is_full();
                    // Odd picks free through the fast path first, which must take every free
                    // but one into a full pool, and leave that one to `free` untouched.
                    let fast = if pick % 2 == 1 {
                        pool.free_unless_was_full(FreedMark::of(b))
                    } else {
                        None
                    };
                    match fast {
                        Some(_) if was_full => {
                            return TestResult::error("fast free into a full pool");
                        }
                        Some(now_empty) if now_empty != expected_empty => {
                            return TestResult::error("Empty reported wrongly (fast path)");
                        }
                        Some(_) => {}
                        None if pick % 2 == 1 && !was_full => {
                            return TestResult::error("fast free refused a pool that was not full");
                        }
                        None => {
                            let freed = pool.free(FreedMark::of(b));
                            if freed.now_empty != expected_empty || freed.was_full != was_full {
                                return TestResult::error("Empty or full reported wrongly");
                            }
                        }
                    }
                }
                if pool.used() != live.len() || pool.is_full() != (live.len() == capacity) {
                    return TestResult::error("count or full state disagrees with the model");
                }
                if let Err(e) = pool.check() {
                    return TestResult::error(e);
                }
            }
        }
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(quickcheck_tests())
        .quickcheck(prop as fn(u8, Vec<(bool, u16)>) -> TestResult);
}

#[test]
fn a_pool_of_one_block_goes_straight_from_full_to_empty() {
    let class = SizeClass::for_size(POOLED_MAX).unwrap();
    assert_eq!(
        blocks_per_pool(class),
        1,
        "the largest class has one block a pool"
    );
    let mem = Mem::new(class);
    // SAFETY: the memory is ours; the block is freed once.
    unsafe {
        let pool = PoolPtr::init(mem.0, class, true, core::ptr::null_mut());
        let (a, zeroed) = pool.alloc().unwrap();
        assert!(zeroed && pool.is_full() && pool.alloc().is_none());
        assert_eq!(PoolPtr::containing(a.add(POOLED_MAX - 1)), pool);
        assert_eq!(
            pool.free(FreedMark::of(a)),
            Freed {
                was_full: true,
                now_empty: true
            }
        );
        assert_eq!(pool.check(), Ok(()));
        let (b, zeroed) = pool.alloc().unwrap();
        assert!(
            b == a && !zeroed,
            "the freed block again, no longer known to be zero"
        );
    }
}

#[test]
fn blocks_of_a_multi_slot_pool_find_its_header() {
    let class = SizeClass::for_size(20_000).unwrap();
    assert!(class.span_slots() > 1);
    let mem = Mem::new(class);
    // SAFETY: the memory is ours; pointers stay inside handed-out blocks.
    unsafe {
        let pool = PoolPtr::init(mem.0, class, true, core::ptr::null_mut());
        while let Some((b, _)) = pool.alloc() {
            assert_eq!(PoolPtr::containing(b.add(class.block_size() - 1)), pool);
            assert!(b.addr().get() + class.block_size() <= mem.0.addr().get() + class.pool_bytes());
        }
        assert_eq!(pool.used(), blocks_per_pool(class));
        assert_eq!(pool.check(), Ok(()));
    }
}

#[test]
fn remote_list_returns_every_block_with_its_pool_newest_first() {
    let classes = [
        SizeClass::from_index(0).unwrap(),
        SizeClass::from_index(40).unwrap(),
    ];
    let mems: Vec<Mem> = classes.iter().map(|&c| Mem::new(c)).collect();
    // SAFETY: each memory is ours, entered in its table, zeroed.
    let pools: Vec<PoolPtr> = mems
        .iter()
        .zip(classes)
        .map(|(m, c)| unsafe { PoolPtr::init(m.0, c, true, core::ptr::null_mut()) })
        .collect();
    let list = RemoteList::new();
    assert!(list.is_empty());
    let mut pushed = Vec::new();
    for k in 0..6 {
        let pool = pools[k % 2];
        // SAFETY: the pools are ours and have blocks to hand out; each block is pushed once
        // while in use.
        unsafe {
            let (block, _) = pool.alloc().unwrap();
            list.push(block);
            // Waiting, the block holds its freed mark (R1), as a free block does.
            assert!(holds_freed_mark(block));
            pushed.push((block, pool));
        }
    }
    assert!(!list.is_empty());
    let taken: Vec<_> = list
        .take_all()
        // SAFETY: pushed blocks are in use in their live pools.
        .map(|b| (b, unsafe { PoolPtr::containing(b) }))
        .collect();
    assert!(list.is_empty());
    pushed.reverse();
    assert_eq!(taken, pushed);
    for (block, pool) in taken {
        // SAFETY: blocks in use of their pools, freed once.
        unsafe { pool.free(FreedMark::of(block)) };
    }
    assert!(pools.iter().all(|p| {
        // SAFETY: the pools are ours.
        unsafe { p.used() == 0 && p.check().is_ok() }
    }));
}
