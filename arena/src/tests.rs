use std::collections::BTreeSet;
use std::ptr::NonNull;

use pymalloc_pool::POOL_SIZE;
use quickcheck::{QuickCheck, TestResult};

use super::*;

/// An arena manager on a test platform, released (and leak-checked) on drop.
struct Fixture {
    arenas: Arenas,
    platform: TestPlatform,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            arenas: Arenas::new(),
            platform: TestPlatform::new(),
        }
    }
    fn alloc(&mut self) -> Option<(NonNull<u8>, bool)> {
        let r = self.arenas.alloc_pool(&self.platform);
        self.check_step();
        r
    }
    fn free(&mut self, slot: NonNull<u8>) {
        // SAFETY: tests only free slots they got from `alloc` and no longer use.
        unsafe { self.arenas.free_pool(slot, &self.platform) };
        self.check_step();
    }
    /// Checks every invariant after each step; under Miri (slow) only at the end of a test.
    fn check_step(&self) {
        if !cfg!(miri) {
            self.arenas.check().unwrap();
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.arenas.check().unwrap();
        }
        // SAFETY: the test is over; nothing uses the arenas.
        unsafe { self.arenas.release_all(&self.platform) };
        assert_eq!(self.platform.live_reservations(), 0, "release_all leaked");
    }
}

fn arena_of(slot: NonNull<u8>) -> usize {
    slot.addr().get() & !(ARENA_SIZE - 1)
}

#[test]
fn slots_are_distinct_aligned_and_found_by_the_radix_tree() {
    let mut f = Fixture::new();
    let mut seen = BTreeSet::new();
    for i in 0..POOLS_PER_ARENA + 1 {
        let (slot, zeroed) = f.alloc().unwrap();
        assert!(zeroed, "fresh memory");
        assert_eq!(slot.addr().get() % POOL_SIZE, 0);
        assert_ne!(slot.addr().get() % ARENA_SIZE, 0, "slot 0 holds the header");
        assert!(seen.insert(slot.addr().get()));
        assert_eq!(f.arenas.pool_slot(slot.addr().get() + 100), Some(slot));
        assert_eq!(f.arenas.stats().arenas, 1 + (i == POOLS_PER_ARENA) as usize);
    }
    let any = *seen.iter().next().unwrap();
    assert_eq!(
        f.arenas.pool_slot(any & !(ARENA_SIZE - 1)),
        None,
        "header slot is not a pool"
    );
    assert_eq!(f.arenas.pool_slot(8), None);
    assert_eq!(f.arenas.pool_slot(usize::MAX), None);
    assert_eq!(f.arenas.stats().pools_in_use, POOLS_PER_ARENA + 1);
}

#[test]
fn a_freed_slot_is_reused_first_and_is_not_zero() {
    let mut f = Fixture::new();
    let (a, _) = f.alloc().unwrap();
    let (b, _) = f.alloc().unwrap();
    // SAFETY: `a` is ours.
    unsafe { a.as_ptr().write(1) };
    f.free(a);
    assert_eq!(f.arenas.pool_slot(a.addr().get()), None);
    assert_eq!(f.alloc(), Some((a, false)), "dirty slot before fresh one");
    let (c, zeroed) = f.alloc().unwrap();
    assert!(zeroed && c != a && c != b);
}

#[test]
fn allocation_prefers_the_fullest_arena() {
    let mut f = Fixture::new();
    let slots: Vec<_> = (0..3 * POOLS_PER_ARENA)
        .map(|_| f.alloc().unwrap().0)
        .collect();
    let arena = |i: usize| &slots[i * POOLS_PER_ARENA..(i + 1) * POOLS_PER_ARENA];
    // Arena 0 gets 10 free slots, arena 1 one, arena 2 thirty.
    for &s in &arena(0)[..10] {
        f.free(s);
    }
    f.free(arena(1)[7]);
    for &s in &arena(2)[..30] {
        f.free(s);
    }
    assert_eq!(f.alloc().unwrap().0, arena(1)[7]);
    // Arena 1 is full again: the next fullest is arena 0.
    assert_eq!(arena_of(f.alloc().unwrap().0), arena_of(arena(0)[0]));
}

#[test]
fn a_free_then_allocate_loop_makes_no_system_call() {
    let mut f = Fixture::new();
    let (s, _) = f.alloc().unwrap();
    f.free(s);
    let (reserves, decommits) = (f.platform.reserve_calls(), f.platform.decommits());
    for _ in 0..1000 {
        let (t, _) = f.alloc().unwrap();
        f.free(t);
    }
    assert_eq!(f.platform.reserve_calls(), reserves);
    assert_eq!(f.platform.decommits(), decommits);
    assert_eq!(
        f.platform.live_reservations(),
        1 + 3,
        "the empty arena and the radix nodes stay"
    );
}

#[test]
fn empty_arenas_beyond_the_limit_are_unmapped() {
    let mut f = Fixture::new();
    let n = MAX_EMPTY_ARENAS + 2;
    let slots: Vec<_> = (0..n * POOLS_PER_ARENA)
        .map(|_| f.alloc().unwrap().0)
        .collect();
    assert_eq!(f.arenas.stats().arenas, n);
    for s in slots {
        f.free(s);
    }
    let stats = f.arenas.stats();
    assert_eq!(
        (stats.arenas, stats.empty_arenas),
        (MAX_EMPTY_ARENAS, MAX_EMPTY_ARENAS)
    );
    assert_eq!(f.platform.live_reservations(), MAX_EMPTY_ARENAS + 3);
    f.arenas.trim(&f.platform);
    f.arenas.check().unwrap();
    assert_eq!(f.arenas.stats().arenas, 0);
    assert_eq!(
        f.platform.live_reservations(),
        3,
        "only the radix nodes are left"
    );
}

#[test]
fn dirty_slots_beyond_the_limit_are_decommitted_oldest_first() {
    let mut f = Fixture::new();
    let count = DIRTY_LIMIT + 1;
    let slots: Vec<_> = (0..count + 1).map(|_| f.alloc().unwrap().0).collect();
    for &s in &slots {
        // SAFETY: each slot is ours until freed.
        unsafe { s.as_ptr().write_bytes(0xEE, POOL_SIZE) };
    }
    for &s in &slots[..count] {
        f.free(s);
    }
    let stats = f.arenas.stats();
    assert!(stats.free_dirty_slots <= DIRTY_LIMIT / 2, "{stats:?}");
    assert!(f.platform.decommits() >= 1);
    // The oldest freed slots were decommitted: they read zero again.
    // SAFETY: freed slots stay mapped while their arena lives; we only read.
    assert_eq!(unsafe { slots[0].as_ptr().read() }, 0);
    // SAFETY: as above.
    assert_eq!(
        unsafe { slots[count - 1].as_ptr().read() },
        0xEE,
        "newest stays dirty"
    );
    // Every slot handed out is either a dirty one or reported zeroed (and is zero).
    let mut zeroed = 0;
    for _ in 0..count {
        let (s, z) = f.alloc().unwrap();
        if z {
            zeroed += 1;
            // SAFETY: a slot reported zeroed; we read its bytes (one in 64: the decommit
            // and the earlier fill both work on whole slots).
            assert!(
                (0..POOL_SIZE)
                    .step_by(64)
                    .all(|i| unsafe { s.as_ptr().add(i).read() } == 0)
            );
        }
    }
    let dirty_used = stats.free_dirty_slots - f.arenas.stats().free_dirty_slots;
    assert_eq!(zeroed, count - dirty_used);
    assert!(dirty_used > 0);
}

#[test]
fn refused_memory_gives_none_and_leaves_the_manager_consistent() {
    // The arena's own mapping refused; then each of the radix tree's three nodes refused.
    for refused in 1..=4 {
        let mut f = Fixture::new();
        f.platform.fail_reserve_in(refused);
        assert_eq!(f.alloc(), None, "reserve call {refused} refused");
        assert_eq!(f.arenas.stats().arenas, 0);
        let (s, _) = f.alloc().expect("works again");
        assert_eq!(f.arenas.pool_slot(s.addr().get()), Some(s));
    }
    // Commit refused: nothing is handed out, the arena stays consistent.
    let mut f = Fixture::new();
    f.platform.set_fail_commits(true);
    assert_eq!(f.alloc(), None);
    f.platform.set_fail_commits(false);
    let (s, _) = f.alloc().unwrap();
    f.free(s);
    // Decommit refused: slots stay dirty, nothing is lost, and later purges still work.
    f.platform.set_fail_decommits(true);
    let slots: Vec<_> = (0..DIRTY_LIMIT + 8).map(|_| f.alloc().unwrap().0).collect();
    // The last slot stays in use so that its arena is not emptied (and unmapped).
    for &s in &slots[..slots.len() - 1] {
        f.free(s);
    }
    assert!(f.arenas.stats().free_dirty_slots > DIRTY_LIMIT);
    f.platform.set_fail_decommits(false);
    f.arenas.purge(&f.platform, DIRTY_LIMIT / 2);
    f.arenas.check().unwrap();
    assert!(f.arenas.stats().free_dirty_slots <= DIRTY_LIMIT / 2);
}

/// Random sequences of taking and giving back slots, against a model of the slots in use.
#[test]
fn manager_matches_a_model() {
    fn prop(ops: Vec<(u8, u16)>) -> TestResult {
        let mut f = Fixture::new();
        let mut live: Vec<NonNull<u8>> = Vec::new();
        for (op, pick) in ops {
            match op % 4 {
                // Allocate more often than free, in bursts, so that arenas fill and empty.
                0 | 1 => {
                    for _ in 0..1 + pick % 40 {
                        let (s, zeroed) = f.alloc().unwrap();
                        if live.contains(&s) {
                            return TestResult::error("slot handed out twice");
                        }
                        // SAFETY: the slot is ours.
                        if zeroed && unsafe { s.as_ptr().add(POOL_SIZE - 1).read() } != 0 {
                            return TestResult::error("zeroed slot is not zero");
                        }
                        // SAFETY: the slot is ours.
                        unsafe { s.as_ptr().add(POOL_SIZE - 1).write(1) };
                        live.push(s);
                    }
                }
                2 if !live.is_empty() => {
                    for _ in 0..1 + pick % 60 {
                        if live.is_empty() {
                            break;
                        }
                        let s = live.swap_remove(pick as usize % live.len());
                        f.free(s);
                    }
                }
                _ => f.arenas.purge(&f.platform, pick as usize % DIRTY_LIMIT),
            }
            if f.arenas.stats().pools_in_use != live.len() {
                return TestResult::error("pools in use disagree with the model");
            }
            if live
                .iter()
                .any(|s| f.arenas.pool_slot(s.addr().get()) != Some(*s))
            {
                return TestResult::error("radix lookup lost a slot");
            }
        }
        TestResult::passed()
    }
    let (tests, size) = if cfg!(miri) { (3, 25) } else { (100, 100) };
    QuickCheck::new()
        .rng(quickcheck::Gen::new(size))
        .tests(tests)
        .max_tests(tests * 10)
        .quickcheck(prop as fn(Vec<(u8, u16)>) -> TestResult);
}
