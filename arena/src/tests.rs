use std::collections::BTreeSet;
use std::ptr::NonNull;

use pymalloc_pool::{MAX_SPAN_SLOTS, POOL_SIZE};
use quickcheck::{QuickCheck, TestResult};

use super::*;

/// An arena manager on a test platform, released (and leak-checked) on drop.
struct Fixture {
    arenas: Arenas,
    map: ArenaMap,
    platform: TestPlatform,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            arenas: Arenas::new(),
            map: ArenaMap::new(),
            platform: TestPlatform::new(),
        }
    }
    fn alloc(&mut self) -> Option<(NonNull<u8>, bool)> {
        self.alloc_span(1)
    }
    fn alloc_span(&mut self, slots: usize) -> Option<(NonNull<u8>, bool)> {
        let r = self.arenas.alloc_pool(slots, &self.platform, &self.map);
        self.check_step();
        r
    }
    fn free(&mut self, slot: NonNull<u8>) {
        // SAFETY: tests only free slots they got from `alloc` and no longer use.
        unsafe { self.arenas.free_pool(slot, &self.platform, &self.map) };
        self.check_step();
    }
    /// Checks every invariant after each step; under Miri (slow) only at the end of a test.
    fn check_step(&self) {
        if !cfg!(miri) {
            self.arenas.check(&self.map).unwrap();
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.arenas.check(&self.map).unwrap();
        }
        // SAFETY: the test is over; nothing uses the arenas.
        unsafe { self.arenas.release_all(&self.platform, &mut self.map) };
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
        assert_eq!(
            f.map.pool_of(f.platform.pointer(slot.addr().get() + 100)),
            Some(slot)
        );
        assert_eq!(
            f.arenas.stats(&f.map).arenas,
            1 + (i == POOLS_PER_ARENA) as usize
        );
    }
    let any = *seen.iter().next().unwrap();
    assert_eq!(
        f.map.pool_of(f.platform.pointer(any & !(ARENA_SIZE - 1))),
        None,
        "header slot is not a pool"
    );
    assert_eq!(f.map.pool_of(f.platform.pointer(8)), None);
    assert_eq!(f.map.pool_of(f.platform.pointer(usize::MAX)), None);
    assert_eq!(f.arenas.stats(&f.map).pools_in_use, POOLS_PER_ARENA + 1);
}

#[test]
fn a_freed_slot_is_reused_first_and_is_not_zero() {
    let mut f = Fixture::new();
    let (a, _) = f.alloc().unwrap();
    let (b, _) = f.alloc().unwrap();
    // SAFETY: `a` is ours.
    unsafe { a.as_ptr().write(1) };
    f.free(a);
    assert_eq!(f.map.pool_of(f.platform.pointer(a.addr().get())), None);
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
        1 + 1,
        "the empty arena and the flat map stay"
    );
}

#[test]
fn empty_arenas_beyond_the_limit_are_unmapped() {
    let mut f = Fixture::new();
    let n = MIN_EMPTY_ARENAS + 2;
    let slots: Vec<_> = (0..n * POOLS_PER_ARENA)
        .map(|_| f.alloc().unwrap().0)
        .collect();
    assert_eq!(f.arenas.stats(&f.map).arenas, n);
    for s in slots {
        f.free(s);
    }
    let stats = f.arenas.stats(&f.map);
    assert_eq!(
        (stats.arenas, stats.empty_arenas),
        (MIN_EMPTY_ARENAS, MIN_EMPTY_ARENAS)
    );
    let before_trim = f.platform.live_reservations();
    f.arenas.trim(&f.platform, &f.map);
    f.arenas.check(&f.map).unwrap();
    assert_eq!(f.arenas.stats(&f.map).arenas, 0);
    // Only the map is left: the flat map (and radix nodes, were arenas above its limit).
    let nodes = f.platform.live_reservations();
    assert!(nodes >= 1);
    assert_eq!(
        before_trim,
        MIN_EMPTY_ARENAS + nodes,
        "the kept arenas and the map"
    );
}

#[test]
fn dirty_slots_beyond_the_limit_are_decommitted_oldest_first() {
    let mut f = Fixture::new();
    let count = MIN_DIRTY_SLOTS + 1;
    let slots: Vec<_> = (0..count + 1).map(|_| f.alloc().unwrap().0).collect();
    for &s in &slots {
        // SAFETY: each slot is ours until freed.
        unsafe { s.as_ptr().write_bytes(0xEE, POOL_SIZE) };
    }
    for &s in &slots[..count] {
        f.free(s);
    }
    let stats = f.arenas.stats(&f.map);
    assert!(stats.free_dirty_slots <= MIN_DIRTY_SLOTS / 2, "{stats:?}");
    assert!(f.platform.decommits() >= 1);
    // The oldest freed slots were decommitted: they read zero again.
    // SAFETY: freed slots stay mapped while their arena lives; we only read.
    let (oldest, newest) = unsafe { (slots[0].as_ptr().read(), slots[count - 1].as_ptr().read()) };
    assert_eq!(oldest, 0);
    assert_eq!(newest, 0xEE, "newest stays dirty");
    // Every slot handed out is either a dirty one or reported zeroed (and is zero).
    let mut zeroed = 0;
    for _ in 0..count {
        let (s, z) = f.alloc().unwrap();
        if z {
            zeroed += 1;
            // One byte in 64: the decommit and the earlier fill both work on whole slots.
            assert!((0..POOL_SIZE).step_by(64).all(|i| {
                // SAFETY: a slot reported zeroed, handed to us; we read its bytes.
                unsafe { s.as_ptr().add(i).read() == 0 }
            }));
        }
    }
    let dirty_used = stats.free_dirty_slots - f.arenas.stats(&f.map).free_dirty_slots;
    assert_eq!(zeroed, count - dirty_used);
    assert!(dirty_used > 0);
}

/// Takes `n` one-slot pools and gives back all but one in a hundred (so that no arena
/// empties and goes back), returning the kept ones.
fn churn_slots(f: &mut Fixture, n: usize) -> Vec<NonNull<u8>> {
    let slots: Vec<_> = (0..n).map(|_| f.alloc().unwrap().0).collect();
    let mut kept = Vec::new();
    for (i, s) in slots.into_iter().enumerate() {
        if i % 100 == 0 {
            kept.push(s);
        } else {
            f.free(s);
        }
    }
    kept
}

#[test]
fn a_purge_undone_by_the_next_takes_doubles_the_dirty_floor_up_to_its_cap() {
    let mut f = Fixture::new();
    let mut kept = Vec::new();
    assert_eq!(f.arenas.dirty_limit(), MIN_DIRTY_SLOTS);
    // Free slots swing past the limit: the first purge decommits.
    let n = MIN_DIRTY_SLOTS + MIN_DIRTY_SLOTS / 2;
    kept.extend(churn_slots(&mut f, n));
    let purges = f.platform.decommits();
    assert!(purges >= 1);
    // The same swing again takes the purged slots back: the floor doubles instead of a
    // second purge.
    kept.extend(churn_slots(&mut f, n));
    assert_eq!(f.arenas.dirty_limit(), 2 * MIN_DIRTY_SLOTS);
    assert_eq!(
        f.platform.decommits(),
        purges,
        "no purge while under the new floor"
    );
    // Ever larger swings raise it to the cap, and no further (thousands of slots: too slow
    // under Miri, which has checked the doubling above).
    let rounds = if cfg!(miri) { 0 } else { 8 };
    for _ in 0..rounds {
        let n = f.arenas.dirty_limit() * 3 / 2;
        kept.extend(churn_slots(&mut f, n));
        kept.extend(churn_slots(&mut f, n));
    }
    if !cfg!(miri) {
        assert_eq!(f.arenas.dirty_limit(), MAX_DIRTY_FLOOR);
    }
    for s in kept {
        f.free(s);
    }
}

#[test]
fn refused_memory_gives_none_and_leaves_the_manager_consistent() {
    // The arena's own mapping refused; then the flat map's.
    for refused in 1..=2 {
        let mut f = Fixture::new();
        f.platform.fail_reserve_in(refused);
        assert_eq!(f.alloc(), None, "reserve call {refused} refused");
        assert_eq!(f.arenas.stats(&f.map).arenas, 0);
        let (s, _) = f.alloc().expect("works again");
        assert_eq!(f.map.pool_of(f.platform.pointer(s.addr().get())), Some(s));
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
    let slots: Vec<_> = (0..MIN_DIRTY_SLOTS + 8)
        .map(|_| f.alloc().unwrap().0)
        .collect();
    // The last slot stays in use so that its arena is not emptied (and unmapped).
    for &s in &slots[..slots.len() - 1] {
        f.free(s);
    }
    assert!(f.arenas.stats(&f.map).free_dirty_slots > MIN_DIRTY_SLOTS);
    f.platform.set_fail_decommits(false);
    f.arenas.purge(&f.platform, MIN_DIRTY_SLOTS / 2);
    f.arenas.check(&f.map).unwrap();
    assert!(f.arenas.stats(&f.map).free_dirty_slots <= MIN_DIRTY_SLOTS / 2);
}

#[test]
fn spans_lie_in_one_arena_and_are_found_from_any_of_their_slots() {
    let mut f = Fixture::new();
    let mut taken = Vec::new();
    for round in 0..3 {
        for slots in [1, 2, 3, 5, 8, 16, 4, 1, 7] {
            let (p, zeroed) = f.alloc_span(slots).unwrap();
            let bytes = slots * POOL_SIZE;
            assert_eq!(p.addr().get() % POOL_SIZE, 0, "a pool starts at a slot");
            assert_eq!(
                p.addr().get() / ARENA_SIZE,
                (p.addr().get() + bytes - 1) / ARENA_SIZE,
                "a {slots}-slot pool lies in one arena"
            );
            assert!(zeroed || round > 0);
            for i in 0..slots {
                let inside = p.addr().get() + i * POOL_SIZE + 123;
                assert_eq!(f.map.pool_of(f.platform.pointer(inside)), Some(p));
            }
            // SAFETY: the pool's memory is ours.
            unsafe { p.as_ptr().write_bytes(0xAB, bytes) };
            taken.push((p, slots));
        }
        // Give back every other pool, so that later spans must find room between pools.
        let mut kept = Vec::new();
        for (i, (p, slots)) in taken.drain(..).enumerate() {
            if i % 2 == 0 {
                f.free(p);
                assert_eq!(f.map.pool_of(f.platform.pointer(p.addr().get())), None);
            } else {
                kept.push((p, slots));
            }
        }
        taken = kept;
    }
    f.arenas.check(&f.map).unwrap();
    let in_use: usize = taken.iter().map(|&(_, s)| s).sum();
    let stats = f.arenas.stats(&f.map);
    assert_eq!(
        (stats.pools_in_use, stats.slots_in_use),
        (taken.len(), in_use)
    );
    // Pools never overlap.
    taken.sort_by_key(|&(p, _)| p.addr());
    for pair in taken.windows(2) {
        assert!(pair[0].0.addr().get() + pair[0].1 * POOL_SIZE <= pair[1].0.addr().get());
    }
}

#[test]
fn an_emptied_span_serves_single_slots_and_the_reverse() {
    let mut f = Fixture::new();
    let (big, _) = f.alloc_span(MAX_SPAN_SLOTS).unwrap();
    f.free(big);
    // The freed slots are dirty: single slots come from them first.
    let singles: Vec<_> = (0..MAX_SPAN_SLOTS).map(|_| f.alloc().unwrap()).collect();
    assert!(singles.iter().all(
        |&(s, zeroed)| !zeroed && f.map.pool_of(f.platform.pointer(s.addr().get())) == Some(s)
    ));
    assert!(
        singles
            .iter()
            .all(|&(s, _)| s.addr().get() - big.addr().get() < MAX_SPAN_SLOTS * POOL_SIZE)
    );
    for (s, _) in singles {
        f.free(s);
    }
    assert_eq!(f.alloc_span(MAX_SPAN_SLOTS).unwrap().0, big);
}

#[test]
fn a_span_takes_the_arena_whose_longest_run_fits_it_best() {
    let mut f = Fixture::new();
    let slots: Vec<_> = (0..3 * POOLS_PER_ARENA)
        .map(|_| f.alloc().unwrap().0)
        .collect();
    let arena = |i: usize| &slots[i * POOLS_PER_ARENA..(i + 1) * POOLS_PER_ARENA];
    // Dirty runs: 9 slots in arena 0, 5 in arena 1, 12 in arena 2.
    for (i, n) in [(0, 9), (1, 5), (2, 12)] {
        for &s in &arena(i)[20..20 + n] {
            f.free(s);
        }
    }
    let (p, zeroed) = f.alloc_span(6).unwrap();
    assert!(!zeroed);
    assert_eq!(p, arena(0)[20], "the 9-slot run is the best fit for 6");
    assert_eq!(f.alloc_span(5).unwrap().0, arena(1)[20]);
    assert_eq!(
        f.alloc_span(3).unwrap().0,
        arena(0)[26],
        "what is left of the 9"
    );
    // No dirty run of 13: a new arena's clean slots.
    let (q, zeroed) = f.alloc_span(13).unwrap();
    assert!(zeroed && !slots.iter().any(|s| arena_of(*s) == arena_of(q)));
}

/// Random sequences of taking and giving back pools of every span length, against a model
/// of the slots in use.
#[test]
fn manager_matches_a_model() {
    fn prop(ops: Vec<(u8, u16)>) -> TestResult {
        let mut f = Fixture::new();
        let mut live: Vec<(NonNull<u8>, usize)> = Vec::new();
        for (op, pick) in ops {
            match op % 4 {
                // Allocate more often than free, in bursts, so that arenas fill and empty.
                0 | 1 => {
                    for i in 0..1 + pick % 40 {
                        let slots = if i % 3 == 0 {
                            1 + (pick as usize + i as usize) % MAX_SPAN_SLOTS
                        } else {
                            1
                        };
                        let (p, zeroed) = f.alloc_span(slots).unwrap();
                        let (start, end) = (p.addr().get(), p.addr().get() + slots * POOL_SIZE);
                        if live.iter().any(|&(q, n)| {
                            q.addr().get() < end && start < q.addr().get() + n * POOL_SIZE
                        }) {
                            return TestResult::error("pool overlaps a live one");
                        }
                        // SAFETY: the pool is ours.
                        if zeroed && unsafe { p.as_ptr().add(slots * POOL_SIZE - 1).read() } != 0 {
                            return TestResult::error("zeroed pool is not zero");
                        }
                        // SAFETY: the pool is ours.
                        unsafe { p.as_ptr().add(slots * POOL_SIZE - 1).write(1) };
                        live.push((p, slots));
                    }
                }
                2 if !live.is_empty() => {
                    for _ in 0..1 + pick % 60 {
                        if live.is_empty() {
                            break;
                        }
                        let (p, _) = live.swap_remove(pick as usize % live.len());
                        f.free(p);
                    }
                }
                _ => f.arenas.purge(&f.platform, pick as usize % MIN_DIRTY_SLOTS),
            }
            let stats = f.arenas.stats(&f.map);
            if stats.pools_in_use != live.len()
                || stats.slots_in_use != live.iter().map(|l| l.1).sum::<usize>()
            {
                return TestResult::error("pools or slots in use disagree with the model");
            }
            if live.iter().any(|&(p, n)| {
                f.map
                    .pool_of(f.platform.pointer(p.addr().get() + n * POOL_SIZE - 1))
                    != Some(p)
            }) {
                return TestResult::error("radix lookup lost a pool");
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

#[test]
fn a_pool_grows_into_the_free_slots_after_it_and_shrinks_in_place() {
    let mut f = Fixture::new();
    let (a, _) = f.alloc_span(3).unwrap();
    let (b, _) = f.alloc_span(2).unwrap();
    assert_eq!(
        b.addr().get(),
        a.addr().get() + 3 * POOL_SIZE,
        "packed after a"
    );
    // SAFETY: `a` is in use, and each resize is checked.
    unsafe {
        assert!(!f.arenas.resize_pool(a, 4, &f.platform), "b is in the way");
        assert!(f.arenas.resize_pool(b, MAX_SPAN_SLOTS, &f.platform));
        f.check_step();
        for i in 0..MAX_SPAN_SLOTS {
            assert_eq!(
                f.map
                    .pool_of(f.platform.pointer(b.addr().get() + i * POOL_SIZE)),
                Some(b)
            );
        }
        assert!(f.arenas.resize_pool(b, 1, &f.platform));
        f.check_step();
        assert_eq!(
            f.map
                .pool_of(f.platform.pointer(b.addr().get() + POOL_SIZE)),
            None,
            "given back"
        );
        let stats = f.arenas.stats(&f.map);
        assert_eq!(stats.slots_in_use, 3 + 1);
        assert_eq!(stats.free_dirty_slots, MAX_SPAN_SLOTS - 1);
        assert!(f.arenas.resize_pool(a, 3, &f.platform), "the same size");
    }
    for p in [a, b] {
        f.free(p);
    }
}

#[test]
fn a_pool_at_the_end_of_its_arena_cannot_grow_and_a_refused_commit_changes_nothing() {
    let mut f = Fixture::new();
    // Fill the arena so that the last pool ends at its last slot.
    let mut pools: Vec<_> = (0..POOLS_PER_ARENA - 1)
        .map(|_| f.alloc().unwrap().0)
        .collect();
    let (last, _) = f.alloc().unwrap();
    assert_eq!(arena_of(last) + ARENA_SIZE, last.addr().get() + POOL_SIZE);
    // SAFETY: every pool is ours; each resize is checked.
    unsafe {
        assert!(
            !f.arenas.resize_pool(last, 2, &f.platform),
            "past the arena"
        );
        f.check_step();
        // Free the two slots after a pool, decommit them, and refuse the commit a growth needs.
        let grower = pools[0];
        for p in pools.drain(1..3) {
            f.free(p);
        }
        f.arenas.purge(&f.platform, 0);
        f.platform.set_fail_commits(true);
        let before = f.arenas.stats(&f.map);
        assert!(
            !f.arenas.resize_pool(grower, 3, &f.platform),
            "commit refused"
        );
        f.check_step();
        assert_eq!(f.arenas.stats(&f.map), before);
        f.platform.set_fail_commits(false);
        assert!(f.arenas.resize_pool(grower, 3, &f.platform));
        f.check_step();
        assert_eq!(f.arenas.stats(&f.map).slots_in_use, before.slots_in_use + 2);
    }
    for p in pools.into_iter().chain([last]) {
        f.free(p);
    }
}

/// The test platform releases pages as `munmap` does, any whole pages of its reservations,
/// and frees a reservation's memory once none is left; it remaps whole reservations only.
#[test]
fn the_test_platform_releases_parts_of_reservations() {
    let p = TestPlatform::new();
    let page = TEST_PAGE_SIZE;
    let r = p.reserve(4 * page, page).unwrap();
    // SAFETY: pages of the live reservation `r`, unused.
    unsafe {
        p.release(r.byte_add(page), 2 * page);
        assert_eq!((p.live_reservations(), p.live_bytes()), (1, 2 * page));
        assert!(
            p.remap(r, page, 2 * page, true).is_none(),
            "a part: refused"
        );
        p.release(r, page);
        p.release(r.byte_add(3 * page), page);
    }
    assert_eq!((p.live_reservations(), p.live_bytes()), (0, 0));
}

/// A program that frees many arenas' worth of pools and takes as much again: the arenas
/// unmapped the first time count as released, the fresh ones mapped for the second round as
/// taken back, so the floor rises to what was released and the third round of the same
/// swing maps and unmaps nothing.
#[test]
fn arenas_released_and_taken_back_raise_the_floor_and_are_kept_next_time() {
    let mut f = Fixture::new();
    let n = if cfg!(miri) { 6 } else { 12 } * POOLS_PER_ARENA;
    let keep = f.alloc().unwrap().0;
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let (reserves, releases) = (f.platform.reserve_calls(), f.platform.live_reservations());
        let slots: Vec<_> = (0..n).map(|_| f.alloc().unwrap().0).collect();
        let mapped = f.platform.reserve_calls() - reserves;
        for s in slots {
            f.free(s);
        }
        rounds.push((mapped, releases, f.arenas.stats(&f.map).arenas));
    }
    // Round 1 maps its arenas; freeing them keeps only the floor's worth.
    assert!(rounds[0].0 as usize >= n / POOLS_PER_ARENA, "{rounds:?}");
    assert!(rounds[0].2 < n / POOLS_PER_ARENA, "{rounds:?}");
    // Round 2 maps them again, which undoes the release: the floor rises to it, so the
    // arenas stay mapped when freed, and round 3 maps none.
    assert!(rounds[1].0 > 0, "{rounds:?}");
    assert!(rounds[1].2 >= n / POOLS_PER_ARENA, "{rounds:?}");
    assert_eq!(rounds[2].0, 0, "{rounds:?}");
    assert!(
        f.arenas.dirty_limit() >= n / 2,
        "{}",
        f.arenas.dirty_limit()
    );
    f.free(keep);
}

/// Arenas above the flat map's limit (which the system hands out only to programs that ask
/// for high addresses) are looked up in the radix tree; the flat map answers no for them, and
/// for every address it does not cover.
#[test]
fn arenas_above_the_flat_limit_are_found_through_the_radix_tree() {
    use crate::arenas::PlatformNodes;
    use crate::header::Header;
    use crate::map::FLAT_LIMIT;
    let f = Fixture::new();
    let high = FLAT_LIMIT + 5 * ARENA_SIZE;
    // Never dereferenced: the radix tree stores the header's address and gives it back.
    let header = NonNull::new(std::ptr::without_provenance_mut::<Header>(high)).unwrap();
    assert!(!f.map.contains(high));
    f.map
        .insert(header, &PlatformNodes(&f.platform))
        .expect("room for the radix nodes");
    assert!(f.map.contains(high) && f.map.contains(high + ARENA_SIZE - 1));
    assert!(!f.map.contains(high + ARENA_SIZE) && !f.map.contains(high - 1));
    let inside = NonNull::new(std::ptr::without_provenance_mut::<u8>(high + 100)).unwrap();
    assert_eq!(f.map.arena_of(inside), Some(header));
    // No flat map was reserved for it, only the tree's nodes.
    assert_eq!(f.map.mapped_bytes(), f.map.radix.node_bytes_in_use());
    f.map.remove(high);
    assert!(!f.map.contains(high));
    assert!(!f.map.contains(usize::MAX) && !f.map.contains(FLAT_LIMIT - 1));
}

/// Each policy advises the arenas it says to huge pages: none, all from the first, or all
/// once [`AUTO_HUGE_ARENAS`] are mapped (those before too, at that moment) — each advice a
/// whole arena.
#[test]
#[cfg_attr(miri, ignore = "maps ten arenas three times: minutes under Miri")]
fn arenas_are_advised_to_huge_pages_as_the_policy_says() {
    for policy in [HugePages::Never, HugePages::Auto, HugePages::Always] {
        let mut f = Fixture::new();
        f.arenas.set_policy(
            MIN_EMPTY_ARENAS,
            MAX_DIRTY_FLOOR,
            policy,
            &f.platform,
            &f.map,
        );
        let mut slots = Vec::new();
        for arenas in 1..=AUTO_HUGE_ARENAS + 2 {
            while f.arenas.stats(&f.map).arenas < arenas {
                slots.push(f.alloc().unwrap().0);
            }
            let advised = f.platform.huge_advised();
            assert!(
                advised
                    .iter()
                    .all(|&(a, len)| a % ARENA_SIZE == 0 && len == ARENA_SIZE)
            );
            let expected = match policy {
                HugePages::Never => 0,
                HugePages::Always => arenas,
                HugePages::Auto if arenas < AUTO_HUGE_ARENAS => 0,
                HugePages::Auto => arenas,
            };
            let distinct: BTreeSet<usize> = advised.iter().map(|&(a, _)| a).collect();
            assert_eq!(
                (advised.len(), distinct.len()),
                (expected, expected),
                "{policy:?}, {arenas} arenas"
            );
        }
        for s in slots {
            f.free(s);
        }
    }
}

/// Over the dirty limit, arenas advised to huge pages give back wholly free arenas first and
/// keep the free slots of the others (their huge pages are not split), where arenas on small
/// pages give back their oldest free slots, whichever arena they are in.
#[test]
#[cfg_attr(miri, ignore = "fills five arenas twice: minutes under Miri")]
fn huge_arenas_give_whole_pages_back_before_splitting_one() {
    for policy in [HugePages::Never, HugePages::Always] {
        let mut f = Fixture::new();
        f.arenas.set_policy(
            MIN_EMPTY_ARENAS,
            MAX_DIRTY_FLOOR,
            policy,
            &f.platform,
            &f.map,
        );
        let slots: Vec<_> = (0..5 * POOLS_PER_ARENA)
            .map(|_| f.alloc().unwrap().0)
            .collect();
        for &s in &slots {
            // SAFETY: each slot is ours until freed.
            unsafe { s.as_ptr().write_bytes(0xEE, POOL_SIZE) };
        }
        let arena = |i: usize| &slots[i * POOLS_PER_ARENA..(i + 1) * POOLS_PER_ARENA];
        assert!((0..5).all(|i| {
            arena(i)
                .iter()
                .all(|&s| arena_of(s) == arena_of(arena(i)[0]))
        }));
        // Oldest: ten slots of the first arena; then the whole last arena, which empties; then
        // slots of the second arena until the dirty slots pass the limit.
        let oldest = &arena(0)[..10];
        for &s in oldest.iter().chain(arena(4)) {
            f.free(s);
        }
        assert_eq!(
            f.platform.decommits(),
            0,
            "{policy:?}: under the limit so far"
        );
        for &s in arena(1) {
            f.free(s);
            if f.platform.decommits() > 0 {
                break;
            }
        }
        // SAFETY: freed slots stay mapped while their arena lives; we only read.
        let kept = oldest.iter().all(|s| unsafe { s.as_ptr().read() } == 0xEE);
        match policy {
            HugePages::Always => assert!(kept, "the partly used huge arena was split"),
            _ => assert!(!kept, "small pages give back the oldest free slots first"),
        }
        // The wholly free arena went back either way (or was unmapped).
        let stats = f.arenas.stats(&f.map);
        assert!(
            stats.free_dirty_slots < POOLS_PER_ARENA,
            "{policy:?}: {stats:?}"
        );
        // `trim` gives back every free slot, huge pages or not.
        f.arenas.trim(&f.platform, &f.map);
        assert_eq!(f.arenas.stats(&f.map).free_dirty_slots, 0);
    }
}
