use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::collections::BTreeSet;
use std::ptr::NonNull;

use quickcheck::{QuickCheck, TestResult};

use super::*;

/// A pool-sized, pool-aligned, zeroed slot owned by the test.
struct Slot(NonNull<u8>);

impl Slot {
    fn new() -> Slot {
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc_zeroed(Self::layout()) };
        Slot(NonNull::new(p).expect("test slot"))
    }
    fn layout() -> Layout {
        Layout::from_size_align(POOL_SIZE, POOL_SIZE).unwrap()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { dealloc(self.0.as_ptr(), Self::layout()) }
    }
}

fn quickcheck_tests() -> u64 {
    if cfg!(miri) { 8 } else { 200 }
}

#[test]
fn carves_every_block_once_then_reports_full() {
    for class in SizeClass::all() {
        let slot = Slot::new();
        // SAFETY: the slot is ours, aligned, zeroed.
        let pool = unsafe { PoolPtr::init(slot.0, class, true) };
        let mut seen = BTreeSet::new();
        let capacity = blocks_per_pool(class);
        for i in 0..capacity {
            // SAFETY: the pool is live and ours.
            let (block, zeroed) = unsafe { pool.alloc() }.expect("room left");
            assert!(zeroed, "never-used block of a fresh pool is zero");
            let offset = block.addr().get() - slot.0.addr().get();
            assert_eq!(offset, POOL_OVERHEAD + i * class.block_size());
            assert!(offset + class.block_size() <= POOL_SIZE);
            assert_eq!(block.addr().get() % ALIGNMENT, 0);
            assert_eq!(PoolPtr::containing(block), pool);
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

#[test]
fn state_transitions_follow_obmalloc() {
    let slot = Slot::new();
    let class = SizeClass::for_size(512).unwrap();
    // SAFETY: the slot is ours; every block freed below was handed out by this pool.
    unsafe {
        let pool = PoolPtr::init(slot.0, class, false);
        let blocks: Vec<_> = std::iter::from_fn(|| pool.alloc()).collect();
        assert_eq!(blocks.len(), blocks_per_pool(class));
        assert!(
            blocks.iter().all(|&(_, zeroed)| !zeroed),
            "pool was not fresh"
        );
        assert_eq!(pool.free(blocks[3].0), Freed::WasFull);
        assert_eq!(pool.free(blocks[5].0), Freed::InUse);
        // LIFO reuse of freed blocks, not marked zero.
        assert_eq!(pool.alloc(), Some((blocks[5].0, false)));
        assert_eq!(pool.free(blocks[5].0), Freed::InUse);
        for (i, &(b, _)) in blocks.iter().enumerate() {
            if i == 3 || i == 5 {
                continue;
            }
            let expected = if pool.used() == 1 {
                Freed::Empty
            } else {
                Freed::InUse
            };
            assert_eq!(pool.free(b), expected);
        }
        assert_eq!(pool.used(), 0);
        assert_eq!(pool.check(), Ok(()));
    }
}

#[test]
fn block_start_finds_the_block_of_an_interior_pointer() {
    let slot = Slot::new();
    let class = SizeClass::for_size(96).unwrap();
    // SAFETY: the slot is ours and the pointers stay inside handed-out blocks.
    unsafe {
        let pool = PoolPtr::init(slot.0, class, true);
        for _ in 0..10 {
            let (block, _) = pool.alloc().unwrap();
            for delta in [0, 1, 15, 16, 95] {
                assert_eq!(pool.block_start(block.add(delta)), block);
            }
        }
    }
}

#[test]
fn check_catches_a_corrupted_freelist() {
    let slot = Slot::new();
    let class = SizeClass::for_size(32).unwrap();
    // SAFETY: the slot is ours; the corruption writes inside a freed block.
    unsafe {
        let pool = PoolPtr::init(slot.0, class, true);
        let (a, _) = pool.alloc().unwrap();
        let (b, _) = pool.alloc().unwrap();
        pool.free(a);
        assert_eq!(pool.check(), Ok(()));
        // A use-after-free write pointing the link at the middle of a block.
        a.cast::<*mut u8>().write(b.as_ptr().add(8));
        assert!(pool.check().is_err());
        // A link back to itself: a cycle.
        a.cast::<*mut u8>().write(a.as_ptr());
        assert!(pool.check().is_err());
    }
}

#[test]
fn pool_list_links_and_unlinks() {
    let slots: Vec<Slot> = (0..3).map(|_| Slot::new()).collect();
    let class = SizeClass::for_size(16).unwrap();
    // SAFETY: every slot is ours and each pool is in the list at most once.
    unsafe {
        let pools: Vec<PoolPtr> = slots
            .iter()
            .map(|s| PoolPtr::init(s.0, class, true))
            .collect();
        let mut list = PoolList::new();
        assert!(list.first().is_none());
        for &p in &pools {
            list.push_front(p);
        }
        let order = |list: &PoolList| {
            let mut v = Vec::new();
            list.for_each(|p| v.push(p));
            v
        };
        assert_eq!(order(&list), vec![pools[2], pools[1], pools[0]]);
        list.remove(pools[1]);
        assert_eq!(order(&list), vec![pools[2], pools[0]]);
        list.remove(pools[2]);
        assert_eq!(list.first(), Some(pools[0]));
        list.remove(pools[0]);
        assert!(list.first().is_none());
    }
}

/// Random alloc/free sequences on one pool against a model of the live blocks.
#[test]
fn pool_matches_a_model() {
    fn prop(class_index: u8, ops: Vec<(bool, u16)>) -> TestResult {
        let class = SizeClass::from_index(class_index as usize % NUM_CLASSES).unwrap();
        let slot = Slot::new();
        let capacity = blocks_per_pool(class);
        let mut live: Vec<NonNull<u8>> = Vec::new();
        let mut offsets = BTreeSet::new();
        // SAFETY: the slot is ours; only live blocks of this pool are freed.
        unsafe {
            let pool = PoolPtr::init(slot.0, class, true);
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
                    if (pool.free(b) == Freed::Empty) != expected_empty {
                        return TestResult::error("Empty reported wrongly");
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
