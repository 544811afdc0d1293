//! Random sequences of alloc / alloc_zeroed / realloc / dealloc (sizes 1 B to 4 MiB,
//! alignments 1 B to 64 KiB), sized or without the layout as C calls them, on an instance
//! over the test platform, checked against a model
//! of the live blocks: no two overlap, contents survive, alignment holds, zeroed memory reads
//! zero, the stats agree with the model, and the bytes the stats say are mapped are exactly
//! what the platform has handed out.
// The model is of the default build's classes and resizes in place; the `secure` build
// gives every block a trailer and moves on every resize on purpose (`tests/secure.rs`).
#![cfg(not(feature = "secure"))]

mod common;

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::ptr::NonNull;

use common::{fill, holds, holds_prefix};
use pymalloc::{Allocator, LocalHeap};
use pymalloc_arena::{TEST_PAGE_SIZE, TestPlatform};
use pymalloc_pool::{NUM_CLASSES, SizeClass};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

const MAX_SIZE: usize = 4 << 20;
const MAX_ALIGN_LOG: u8 = 16;

/// Local heaps the model drives besides the instance's own calls.
const HEAPS: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        size: usize,
        align_log: u8,
        zeroed: bool,
        via: Via,
    },
    /// `sizeless`: as C's `realloc`, without the layout; the block's layout becomes
    /// `(size, 16)`.
    Realloc {
        pick: usize,
        size: usize,
        via: Via,
        sizeless: bool,
    },
    /// `sizeless`: as C's `free`, without the layout.
    Free {
        pick: usize,
        via: Via,
        sizeless: bool,
    },
    /// Hands local heap `k` back and takes another (likely the same one again).
    Rebind {
        k: usize,
    },
    Check,
}

/// Who makes a call: the instance itself (`None`) or one of its local heaps, so that blocks
/// are freed by heaps that do not own them.
#[derive(Clone, Copy, Debug)]
struct Via(Option<usize>);

impl Arbitrary for Via {
    fn arbitrary(g: &mut Gen) -> Via {
        let k = usize::arbitrary(g) % (HEAPS + 1);
        Via((k < HEAPS).then_some(k))
    }
}

fn arbitrary_size(g: &mut Gen) -> usize {
    let max = match u8::arbitrary(g) % 20 {
        0..12 => 512,
        12..17 => 64 << 10,
        _ => MAX_SIZE,
    };
    // Log-uniform below `max`: every magnitude is visited.
    let bits = 1 + u32::arbitrary(g) % max.ilog2();
    (usize::arbitrary(g) % (1 << bits)).clamp(1, max)
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Op {
        match u8::arbitrary(g) % 10 {
            0..5 => Op::Alloc {
                size: arbitrary_size(g),
                align_log: if bool::arbitrary(g) {
                    u8::arbitrary(g) % 5
                } else {
                    u8::arbitrary(g) % (MAX_ALIGN_LOG + 1)
                },
                zeroed: bool::arbitrary(g),
                via: Via::arbitrary(g),
            },
            5..7 => Op::Realloc {
                pick: usize::arbitrary(g),
                size: arbitrary_size(g),
                via: Via::arbitrary(g),
                sizeless: bool::arbitrary(g),
            },
            7..9 => Op::Free {
                pick: usize::arbitrary(g),
                via: Via::arbitrary(g),
                sizeless: bool::arbitrary(g),
            },
            _ if bool::arbitrary(g) => Op::Rebind {
                k: usize::arbitrary(g) % HEAPS,
            },
            _ => Op::Check,
        }
    }
}

struct Live {
    ptr: *mut u8,
    layout: Layout,
    seed: u64,
}

/// The size class the spec gives a size: 16-byte steps to 512 bytes, then eight classes per
/// power of two up to 256 KiB; `None` for a large block.
fn class_of_size(size: usize) -> Option<usize> {
    match size {
        0..=512 => Some(size.saturating_sub(1) / 16),
        513..=262_144 => {
            let log = (size - 1).ilog2() as usize;
            Some(32 + (log - 9) * 8 + ((size - 1) >> (log - 3)) % 8)
        }
        _ => None,
    }
}

/// The block size of class `c`, as the spec gives it: after the 32 small and 72 medium
/// classes, 16 aligned small classes in steps of 32 bytes.
fn block_size_of(c: usize) -> usize {
    if c < 32 {
        16 * (c + 1)
    } else if c < 104 {
        let log = 9 + (c - 32) / 8;
        (1 << log) + ((c - 32) % 8 + 1) * (1 << (log - 3))
    } else {
        32 * (c - 103)
    }
}

/// Where the first block of class `c` starts in its pool, as the spec gives it: 48 bytes in
/// for a small class (obmalloc's layout), at the start for the others.
fn first_block_of(c: usize) -> usize {
    if c < 32 { 48 } else { 0 }
}

/// The class the spec gives a layout: its size's if aligned to 16 or less; else, of the
/// classes whose every block starts at a multiple of the alignment (the first block does, at
/// a 16 KiB slot or 48 bytes past one, and its size is a multiple of it or its pool holds one
/// block), the one with the smallest blocks at least as large as the size's class's;
/// `None` for a large block (too big, or aligned to more than 16 KiB).
fn class_of(layout: Layout) -> Option<usize> {
    let sized = class_of_size(layout.size())?;
    if layout.align() > 16 << 10 {
        return None;
    }
    if layout.align() <= 16 {
        return Some(sized);
    }
    (0..NUM_CLASSES)
        .filter(|&c| {
            let one_block = pymalloc_pool::blocks_per_pool(SizeClass::from_index(c).unwrap()) == 1;
            first_block_of(c) % layout.align() == 0
                && (block_size_of(c) % layout.align() == 0 || one_block)
                && block_size_of(c) >= block_size_of(sized)
        })
        .min_by_key(|&c| block_size_of(c))
}

/// What the model says the stats must show: blocks per class, large blocks and bytes.
fn expected(live: &[Live]) -> ([usize; NUM_CLASSES], usize, usize) {
    let mut classes = [0; NUM_CLASSES];
    let (mut large, mut large_bytes) = (0, 0);
    for b in live {
        match class_of(b.layout) {
            Some(c) => classes[c] += 1,
            None => {
                large += 1;
                large_bytes += b.layout.size().next_multiple_of(TEST_PAGE_SIZE);
            }
        }
    }
    (classes, large, large_bytes)
}

fn agree(a: &Allocator<TestPlatform>, live: &[Live]) -> Result<(), String> {
    a.check()?;
    let stats = a.stats();
    let (classes, large, large_bytes) = expected(live);
    for (i, &n) in classes.iter().enumerate() {
        if stats.classes[i].blocks_in_use != n {
            return Err(format!(
                "class {i}: stats say {} blocks, model {n}",
                stats.classes[i].blocks_in_use
            ));
        }
    }
    // A large block's mapping is its page-rounded size, or up to a quarter more when a
    // cached mapping was reused or the block resized in place.
    let bytes_fit = (large_bytes..=large_bytes + large_bytes / 4).contains(&stats.large_bytes);
    if stats.large_blocks != large || !bytes_fit {
        return Err(format!(
            "large: stats {:?}, model {:?}",
            (stats.large_blocks, stats.large_bytes),
            (large, large_bytes)
        ));
    }
    if stats.bytes_mapped != a.platform().live_bytes() {
        return Err(format!(
            "stats map {} bytes, the platform {}",
            stats.bytes_mapped,
            a.platform().live_bytes()
        ));
    }
    Ok(())
}

/// Registers `[p, p + size)` as live; an error if it overlaps a live range.
fn claim(ranges: &mut BTreeMap<usize, usize>, p: *mut u8, size: usize) -> Result<(), String> {
    let (start, end) = (p as usize, p as usize + size.max(1));
    if let Some((&s, &e)) = ranges.range(..end).next_back() {
        if e > start {
            return Err(format!(
                "block {start:#x}..{end:#x} overlaps live {s:#x}..{e:#x}"
            ));
        }
    }
    ranges.insert(start, end);
    Ok(())
}

fn is_zero(p: *const u8, size: usize) -> bool {
    let step = if size <= 64 << 10 { 1 } else { 61 };
    // SAFETY: i < size, within a block just handed out.
    (0..size)
        .step_by(step)
        .chain(size.checked_sub(1))
        .all(|i| unsafe { p.add(i).read() } == 0)
}

/// The calls of one [`Via`].
struct Caller<'h, 'a> {
    heap: Option<&'h mut LocalHeap<'a, TestPlatform>>,
    a: &'a Allocator<TestPlatform>,
}

impl Caller<'_, '_> {
    fn alloc(&mut self, layout: Layout, zeroed: bool) -> *mut u8 {
        match (&mut self.heap, zeroed) {
            (Some(h), false) => h.alloc(layout),
            (Some(h), true) => h.alloc_zeroed(layout),
            (None, false) => self.a.alloc(layout),
            (None, true) => self.a.alloc_zeroed(layout),
        }
    }

    unsafe fn realloc(&mut self, p: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        // SAFETY: as the caller guarantees.
        unsafe {
            match &mut self.heap {
                Some(h) => h.realloc(p, layout, size),
                None => self.a.realloc(p, layout, size),
            }
        }
    }

    unsafe fn dealloc(&mut self, p: *mut u8, layout: Layout) {
        // SAFETY: as the caller guarantees.
        unsafe {
            match &mut self.heap {
                Some(h) => h.dealloc(p, layout),
                None => self.a.dealloc(p, layout),
            }
        }
    }

    unsafe fn realloc_unsized(&mut self, p: NonNull<u8>, size: usize) -> *mut u8 {
        // SAFETY: as the caller guarantees.
        unsafe {
            match &mut self.heap {
                Some(h) => h.realloc_unsized(p, size),
                None => self.a.realloc_unsized(p, size),
            }
        }
    }

    unsafe fn dealloc_unsized(&mut self, p: NonNull<u8>) {
        // SAFETY: as the caller guarantees.
        unsafe {
            match &mut self.heap {
                Some(h) => h.dealloc_unsized(p),
                None => self.a.dealloc_unsized(p),
            }
        }
    }
}

/// The bytes usable at a live block, from its address alone: at least its size, and no more
/// than its size class (or mapping) holds.
fn check_usable(a: &Allocator<TestPlatform>, b: &Live) -> Result<(), String> {
    // SAFETY: a live block.
    let usable = unsafe { a.usable_size(NonNull::new(b.ptr).unwrap()) };
    let most = match class_of(b.layout) {
        // Every pointer handed out starts its block: all of it is usable.
        Some(c) if usable != block_size_of(c) => {
            return Err(format!("usable size {usable} of a block of class {c}"));
        }
        Some(c) => block_size_of(c),
        None => {
            let len = b.layout.size().next_multiple_of(TEST_PAGE_SIZE);
            len + len / 4
        }
    };
    if usable < b.layout.size() || usable > most {
        return Err(format!(
            "usable size {usable} of a block of {:?} (at most {most})",
            b.layout
        ));
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), String> {
    let a = Allocator::new(TestPlatform::new());
    let mut heaps: Vec<LocalHeap<'_, TestPlatform>> =
        (0..HEAPS).map(|_| a.local_heap().unwrap()).collect();
    let mut live: Vec<Live> = Vec::new();
    let mut ranges = BTreeMap::new();
    let mut seed = 0u64;
    for op in ops {
        seed += 1;
        match op {
            Op::Alloc {
                size,
                align_log,
                zeroed,
                via,
            } => {
                let layout = Layout::from_size_align(size, 1 << align_log).unwrap();
                let mut caller = Caller {
                    heap: via.0.map(|k| &mut heaps[k]),
                    a: &a,
                };
                let p = caller.alloc(layout, zeroed);
                if p.is_null() {
                    return Err(format!("alloc({layout:?}) failed"));
                }
                if p as usize % layout.align() != 0 {
                    return Err(format!("{p:?} is not aligned for {layout:?}"));
                }
                if zeroed && !is_zero(p, size) {
                    return Err(format!("alloc_zeroed({layout:?}) is not zero"));
                }
                claim(&mut ranges, p, size)?;
                // SAFETY: a fresh block of `size` bytes.
                unsafe { fill(p, size, seed) };
                live.push(Live {
                    ptr: p,
                    layout,
                    seed,
                });
            }
            Op::Realloc {
                pick,
                size,
                via,
                sizeless,
            } if !live.is_empty() => {
                let i = pick % live.len();
                check_usable(&a, &live[i])?;
                let b = &mut live[i];
                ranges.remove(&(b.ptr as usize));
                let mut caller = Caller {
                    heap: via.0.map(|k| &mut heaps[k]),
                    a: &a,
                };
                // SAFETY: a live block of this layout.
                let p = unsafe {
                    if sizeless {
                        caller.realloc_unsized(NonNull::new(b.ptr).unwrap(), size)
                    } else {
                        caller.realloc(b.ptr, b.layout, size)
                    }
                };
                if p.is_null() {
                    return Err(format!("realloc to {size} failed"));
                }
                let kept = size.min(b.layout.size());
                // SAFETY: the new block holds at least `kept` bytes.
                if !unsafe { holds_prefix(p, b.layout.size(), kept, b.seed) } {
                    return Err(format!(
                        "realloc {} -> {size} lost contents",
                        b.layout.size()
                    ));
                }
                // C's realloc promises malloc's alignment only.
                let align = if sizeless { 16 } else { b.layout.align() };
                if p as usize % align != 0 {
                    return Err("realloc lost the alignment".into());
                }
                b.ptr = p;
                b.layout = Layout::from_size_align(size, align).unwrap();
                b.seed = seed;
                // SAFETY: the block holds `size` bytes.
                unsafe { fill(p, size, seed) };
                claim(&mut ranges, p, size)?;
            }
            Op::Free {
                pick,
                via,
                sizeless,
            } if !live.is_empty() => {
                let b = live.swap_remove(pick % live.len());
                check_usable(&a, &b)?;
                ranges.remove(&(b.ptr as usize));
                let mut caller = Caller {
                    heap: via.0.map(|k| &mut heaps[k]),
                    a: &a,
                };
                // SAFETY: a live block of this layout, filled with its seed.
                unsafe {
                    if !holds(b.ptr, b.layout.size(), b.seed) {
                        return Err(format!("block of {:?} corrupted", b.layout));
                    }
                    if sizeless {
                        caller.dealloc_unsized(NonNull::new(b.ptr).unwrap());
                    } else {
                        caller.dealloc(b.ptr, b.layout);
                    }
                }
            }
            Op::Rebind { k } => {
                heaps[k] = a.local_heap().ok_or("no memory for a heap")?;
            }
            Op::Check => agree(&a, &live)?,
            _ => {}
        }
    }
    agree(&a, &live)?;
    for b in live.drain(..) {
        // SAFETY: a live block of this layout.
        unsafe { a.dealloc(b.ptr, b.layout) };
    }
    drop(heaps);
    agree(&a, &live)?;
    a.trim();
    agree(&a, &live)?;
    let stats = a.stats();
    if stats.arenas != 0 || stats.large_cached_blocks != 0 || stats.bytes_in_use != 0 {
        return Err(format!("trim left memory behind:\n{stats}"));
    }
    Ok(())
}

fn prop(ops: Vec<Op>) -> TestResult {
    match run(ops) {
        Ok(()) => TestResult::passed(),
        Err(e) => TestResult::error(e),
    }
}

#[test]
fn short_sequences_match_the_model() {
    QuickCheck::new()
        .tests(300)
        .quickcheck(prop as fn(Vec<Op>) -> TestResult);
}

#[test]
fn long_sequences_match_the_model() {
    // Long enough for pools to fill and empty, arenas to come and go, and purges to run.
    QuickCheck::new()
        .tests(12)
        .rng(Gen::new(6000))
        .quickcheck(prop as fn(Vec<Op>) -> TestResult);
}

#[test]
fn every_size_up_to_two_pages_and_every_alignment_round_trips() {
    let a = Allocator::new(TestPlatform::new());
    let mut live = Vec::new();
    let mut ranges = BTreeMap::new();
    for align_log in 0..=MAX_ALIGN_LOG {
        for size in (1..=600).chain([1000, 4095, 4096, 4097, 8192]) {
            let layout = Layout::from_size_align(size, 1 << align_log).unwrap();
            let p = a.alloc(layout);
            assert!(
                !p.is_null() && p as usize % layout.align() == 0,
                "{layout:?}"
            );
            claim(&mut ranges, p, size).unwrap();
            // SAFETY: a fresh block of `size` bytes.
            unsafe { fill(p, size, size as u64) };
            live.push(Live {
                ptr: p,
                layout,
                seed: size as u64,
            });
        }
    }
    agree(&a, &live).unwrap();
    for b in live.drain(..) {
        // SAFETY: live blocks of these layouts.
        unsafe {
            assert!(holds(b.ptr, b.layout.size(), b.seed));
            a.dealloc(b.ptr, b.layout);
        }
    }
    agree(&a, &live).unwrap();
}

#[test]
fn zero_sized_requests_get_distinct_blocks_of_their_own() {
    // Live 16-byte blocks all around: a zero-size request at any alignment must get a block
    // of its own, not the start of a neighbour (which an aligned pointer just past a 16-byte
    // block once was), and freeing it must leave the neighbours alone.
    let a = Allocator::new(TestPlatform::new());
    let small = Layout::from_size_align(16, 16).unwrap();
    let neighbours: Vec<*mut u8> = (0..256).map(|_| a.alloc(small)).collect();
    for (i, &n) in neighbours.iter().enumerate() {
        // SAFETY: a live block of 16 bytes.
        unsafe { fill(n, 16, i as u64) };
    }
    for log in 0..=17 {
        let layout = Layout::from_size_align(0, 1 << log).unwrap();
        let zeros: Vec<*mut u8> = (0..64).map(|_| a.alloc(layout)).collect();
        for (i, &p) in zeros.iter().enumerate() {
            assert!(
                !p.is_null() && p as usize % layout.align() == 0,
                "align {}",
                1 << log
            );
            assert!(
                !zeros[..i].contains(&p),
                "align {}: handed out twice",
                1 << log
            );
            let inside = |n: &*mut u8| (*n as usize..*n as usize + 16).contains(&(p as usize));
            assert!(
                !neighbours.iter().any(inside),
                "align {}: a zero-size block inside a live one",
                1 << log
            );
        }
        for p in zeros {
            // SAFETY: live blocks of this layout.
            unsafe { a.dealloc(p, layout) };
        }
        a.check().unwrap();
    }
    for (i, &n) in neighbours.iter().enumerate() {
        // SAFETY: live blocks, filled above.
        unsafe {
            assert!(holds(n, 16, i as u64), "a neighbour was written");
            a.dealloc(n, small);
        }
    }
    a.check().unwrap();
}

/// Waves of many blocks of a few sizes, so that pools fill (and rejoin their lists when a
/// block comes back), empty pools move between classes, arenas empty out and purges run;
/// the model is checked after every wave, and the test asserts that those states were met.
#[test]
fn waves_fill_and_empty_pools_across_classes() {
    let a = Allocator::new(TestPlatform::new());
    let mut rng = common::Rng::new(42);
    let mut live: Vec<Live> = Vec::new();
    let mut ranges = BTreeMap::new();
    let (mut saw_full, mut saw_many_arenas) = (false, false);
    for wave in 0..6u64 {
        // Each wave favours other sizes, so that freed pools are taken by other classes.
        let sizes = [16 + 16 * wave as usize, 512 - 32 * wave as usize, 100, 3000];
        for i in 0..30_000u64 {
            let size = sizes[rng.below(sizes.len() as u64) as usize];
            let layout = Layout::from_size_align(size, 8).unwrap();
            let p = a.alloc(layout);
            assert!(!p.is_null());
            claim(&mut ranges, p, size).unwrap();
            let seed = wave << 32 | i;
            // SAFETY: a fresh block of `size` bytes.
            unsafe { fill(p, size, seed) };
            live.push(Live {
                ptr: p,
                layout,
                seed,
            });
        }
        let stats = a.stats();
        saw_full |= stats.pools_full > 0;
        saw_many_arenas |= stats.arenas > pymalloc_arena::MIN_EMPTY_ARENAS + 2;
        agree(&a, &live).unwrap();
        // Free a random 80%.
        let mut kept = Vec::new();
        for b in live.drain(..) {
            if rng.below(10) < 8 {
                ranges.remove(&(b.ptr as usize));
                // SAFETY: a live block of this layout, filled with its seed.
                unsafe {
                    assert!(holds(b.ptr, b.layout.size(), b.seed));
                    a.dealloc(b.ptr, b.layout);
                }
            } else {
                kept.push(b);
            }
        }
        live = kept;
        agree(&a, &live).unwrap();
    }
    assert!(
        saw_full && saw_many_arenas,
        "the waves did not reach the states they are for"
    );
    for b in live.drain(..) {
        // SAFETY: a live block of this layout.
        unsafe { a.dealloc(b.ptr, b.layout) };
    }
    agree(&a, &live).unwrap();
    let stats = a.stats();
    assert!(
        a.platform().decommits() > 0,
        "freeing everything decommitted nothing"
    );
    // Each empty pool the heap keeps — among its spare ones, or as its class's only, listed
    // pool (at most one per class) — may hold one arena that is otherwise empty.
    assert!(stats.pools_used <= stats.classes.len(), "{stats}");
    assert!(
        stats.arenas <= stats.empty_arenas + stats.pools_kept + stats.pools_used,
        "{stats}"
    );
    // Few slots are in use: the floor of the empty-arena limit applies.
    assert!(
        stats.empty_arenas <= pymalloc_arena::MIN_EMPTY_ARENAS,
        "{stats}"
    );
    assert!(stats.pools_kept <= pymalloc::CACHED_POOLS, "{stats}");
    assert!(
        stats.pools_free_dirty <= stats.pools_free_dirty_limit
            && stats.pools_free_dirty_limit <= pymalloc_arena::MAX_DIRTY_FLOOR,
        "{stats}"
    );
}

/// A buffer doubling from 1 byte to 64 MiB (on the operating system, so large blocks use
/// `mremap`): it never moves while its class stays the same, so it is copied at most once per
/// class change, and its contents always survive.
#[test]
fn realloc_moves_only_when_the_class_changes() {
    let a = Allocator::new(pymalloc::OsPlatform);
    let mut layout = Layout::from_size_align(1, 1).unwrap();
    let mut p = a.alloc(layout);
    // SAFETY: a fresh block of one byte.
    unsafe { fill(p, 1, 7) };
    let (mut moves, mut class_changes) = (0, 0);
    while layout.size() < 64 << 20 {
        for new_size in [layout.size() + layout.size() / 2, layout.size() * 2] {
            let same_class = match (class_of_size(layout.size()), class_of_size(new_size)) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            };
            // SAFETY: a live block of `layout`.
            let q = unsafe { a.realloc(p, layout, new_size) };
            assert!(!q.is_null());
            if same_class {
                assert_eq!(
                    q,
                    p,
                    "{} -> {new_size} stays in its class and in place",
                    layout.size()
                );
            }
            class_changes += !same_class as usize;
            moves += (q != p) as usize;
            // SAFETY: the block holds `new_size` bytes, the first `layout.size()` filled.
            unsafe {
                assert!(holds_prefix(q, layout.size(), layout.size(), 7));
                fill(q, new_size, 7);
            }
            p = q;
            layout = Layout::from_size_align(new_size, 1).unwrap();
        }
    }
    assert!(
        moves <= class_changes,
        "{moves} moves for {class_changes} class changes"
    );
    // SAFETY: a live block of `layout`.
    unsafe { a.dealloc(p, layout) };
    a.check().unwrap();
}

/// A block alone in its pool (the largest classes) grows into the free slots after it, and
/// shrinks by giving slots back, without moving; with a pool right after it, it moves.
#[test]
fn a_block_alone_in_its_pool_resizes_in_place_where_the_slots_allow() {
    let a = Allocator::new(TestPlatform::new());
    let at = |size| Layout::from_size_align(size, 16).unwrap();
    let p = a.alloc(at(100_000));
    // SAFETY: a fresh block of that size.
    unsafe { fill(p, 100_000, 3) };
    // SAFETY: a live block of the layout given, each time.
    unsafe {
        let q = a.realloc(p, at(100_000), 250_000);
        assert_eq!(q, p, "grows into the free slots after it");
        assert!(holds_prefix(q, 100_000, 100_000, 3));
        fill(q, 250_000, 4);
        a.check().unwrap();
        let r = a.realloc_unsized(NonNull::new(q).unwrap(), 60_000);
        assert_eq!(r, q, "shrinks in place");
        assert!(holds_prefix(r, 250_000, 60_000, 4));
        assert!(a.usable_size(NonNull::new(r).unwrap()) < 250_000);
        a.check().unwrap();
        // The slots it gave back go to the next pool, right after it: it can no longer grow.
        let next = a.alloc(at(150_000));
        assert!(!next.is_null() && (next as usize) > (r as usize));
        let s = a.realloc(r, at(60_000), 200_000);
        assert_ne!(s, r, "no free slots after it: it moves");
        assert!(holds_prefix(s, 250_000, 60_000, 4));
        let stats = a.stats();
        assert_eq!((stats.pooled_blocks, stats.pools_full), (2, 2), "{stats}");
        a.dealloc(s, at(200_000));
        a.dealloc(next, at(150_000));
    }
    a.check().unwrap();
    assert_eq!(a.stats().pooled_blocks, 0);
}

/// An empty pool that a heap keeps for its next pool, right after a block alone in its pool,
/// gives way when that block grows: the block grows in place into its slots rather than
/// move (a copy) while the kept pool saves only a call to the arenas.
#[test]
fn a_block_alone_in_its_pool_grows_into_an_empty_pool_its_heap_keeps() {
    let a = Allocator::new(TestPlatform::new());
    let at = |size| Layout::from_size_align(size, 16).unwrap();
    let class = SizeClass::for_size(60_000).unwrap();
    assert_eq!(pymalloc_pool::blocks_per_pool(class), 1);
    // SAFETY: live blocks of the layouts given, each time.
    unsafe {
        let p = a.alloc(at(60_000));
        fill(p, 60_000, 5);
        let next = a.alloc(at(60_000));
        // In a fresh arena the next pool takes the slots right after the first.
        assert_eq!(
            next as usize,
            p as usize + class.span_slots() * pymalloc_pool::POOL_SIZE
        );
        a.dealloc(next, at(60_000));
        assert_eq!(
            a.stats().pools_kept,
            1,
            "the emptied pool is kept, not given back"
        );
        let q = a.realloc(p, at(60_000), 120_000);
        assert_eq!(q, p, "grows in place into the kept pool's slots");
        assert!(holds_prefix(q, 60_000, 60_000, 5));
        assert_eq!(a.stats().pools_kept, 0, "{}", a.stats());
        a.check().unwrap();
        a.dealloc(q, at(120_000));
    }
    a.check().unwrap();
    assert_eq!(a.stats().pooled_blocks, 0);
}

/// Blocks freed into one heap by more heaps than it has remote lists all come back: each
/// freeing heap keeps them (heap H8) until it lets go, then sends them back, and the owner
/// takes every list back before it asks for a new pool.
#[test]
fn remote_frees_from_more_heaps_than_shards_all_come_back() {
    let a = Allocator::new(TestPlatform::new());
    let mut owner = a.local_heap().unwrap();
    let mut others: Vec<_> = (0..pymalloc::REMOTE_SHARDS + 2)
        .map(|_| a.local_heap().unwrap())
        .collect();
    let layout = Layout::from_size_align(64, 8).unwrap();
    let per_pool = pymalloc_pool::blocks_per_pool(pymalloc_pool::SizeClass::for_size(64).unwrap());
    assert!(per_pool >= others.len());
    let blocks: Vec<*mut u8> = (0..per_pool).map(|_| owner.alloc(layout)).collect();
    let mut freed: Vec<*mut u8> = blocks
        .iter()
        .copied()
        .step_by(2)
        .take(others.len())
        .collect();
    for (other, &p) in others.iter_mut().zip(&freed) {
        // SAFETY: a live block of this layout, freed once, by a heap that does not own it.
        unsafe { other.dealloc(p, layout) };
    }
    assert_eq!(a.stats().classes[3].blocks_in_use, per_pool - freed.len());
    a.check().unwrap();
    // The freeing heaps let go: what they kept goes back to the owner's remote lists, each
    // heap's to a list of its own.
    drop(others);
    // The pool is full for its owner until it takes the lists back.
    let mut again: Vec<*mut u8> = (0..freed.len()).map(|_| owner.alloc(layout)).collect();
    again.sort();
    freed.sort();
    assert_eq!(
        again, freed,
        "every remotely freed block is handed out again"
    );
    let stats = a.stats();
    assert_eq!((stats.pools_full, stats.pools_used), (1, 0), "{stats}");
    for p in blocks {
        // SAFETY: live blocks of this layout, each freed once.
        unsafe { owner.dealloc(p, layout) };
    }
    drop(owner);
    a.check().unwrap();
    assert_eq!(a.stats().pooled_blocks, 0);
}

/// A pool that is full when another heap frees one of its blocks is not lost: its owner takes
/// the block back when it next needs one of that class, and reuses that very pool.
#[test]
fn a_full_pool_that_receives_a_remote_free_returns_to_use() {
    let a = Allocator::new(TestPlatform::new());
    let (mut owner, mut other) = (a.local_heap().unwrap(), a.local_heap().unwrap());
    let layout = Layout::from_size_align(64, 8).unwrap();
    let per_pool = pymalloc_pool::blocks_per_pool(pymalloc_pool::SizeClass::for_size(64).unwrap());
    let blocks: Vec<*mut u8> = (0..per_pool).map(|_| owner.alloc(layout)).collect();
    let stats = a.stats();
    assert_eq!((stats.pools_full, stats.pools_used), (1, 0), "{stats}");
    let victim = blocks[per_pool / 2];
    // SAFETY: a live block of this layout, freed once, by the heap that does not own it.
    unsafe { other.dealloc(victim, layout) };
    assert_eq!(a.stats().classes[3].blocks_in_use, per_pool - 1);
    a.check().unwrap();
    // The other heap kept the block (H8); letting go, it sends it back.
    drop(other);
    let mut other = a.local_heap().unwrap();
    // The owner has no usable pool of the class: it collects the remote free first.
    let again = owner.alloc(layout);
    assert_eq!(again, victim, "the full pool's freed block was not reused");
    assert_eq!(a.stats().pools_full, 1);
    for p in blocks.into_iter().filter(|&p| p != victim).chain([again]) {
        // SAFETY: live blocks of this layout, each freed once.
        unsafe { other.dealloc(p, layout) };
    }
    drop((owner, other));
    a.check().unwrap();
    let stats = a.stats();
    assert_eq!((stats.pooled_blocks, stats.pools_full), (0, 0), "{stats}");
}

/// A heap that frees blocks of another heap's pools keeps them and hands them out again, the
/// last freed first, before it takes a pool of its own (heap H8); the figures count them as
/// free while kept and in use again once handed out.
#[test]
fn a_heap_hands_out_again_the_blocks_of_other_heaps_that_it_freed() {
    let a = Allocator::new(TestPlatform::new());
    let (mut owner, mut other) = (a.local_heap().unwrap(), a.local_heap().unwrap());
    let layout = Layout::from_size_align(48, 8).unwrap();
    let blocks: Vec<*mut u8> = (0..10).map(|_| owner.alloc(layout)).collect();
    for &p in &blocks[..4] {
        // SAFETY: live blocks of this layout, freed once, by a heap that does not own them.
        unsafe { other.dealloc(p, layout) };
    }
    let class = SizeClass::for_size(48).unwrap().index();
    assert_eq!(a.stats().classes[class].blocks_in_use, 6);
    a.check().unwrap();
    let again: Vec<*mut u8> = (0..4).map(|_| other.alloc(layout)).collect();
    let mut expected = blocks[..4].to_vec();
    expected.reverse();
    assert_eq!(again, expected, "the kept blocks, last freed first");
    let stats = a.stats();
    assert_eq!(stats.classes[class].blocks_in_use, 10);
    assert_eq!(
        stats.pools_used + stats.pools_full,
        1,
        "no pool of its own: {stats}"
    );
    // The next one is of a pool of its own.
    let own = other.alloc(layout);
    assert!(!blocks.contains(&own));
    for p in again
        .into_iter()
        .chain([own])
        .chain(blocks[4..].iter().copied())
    {
        // SAFETY: live blocks of this layout, each freed once.
        unsafe { other.dealloc(p, layout) };
    }
    drop((owner, other));
    a.check().unwrap();
    assert_eq!(a.stats().pooled_blocks, 0);
}

/// Past its limit, a class's kept blocks go back to their owners, each owner's in one chain
/// (heap H8): a heap freeing blocks of two owners keeps at most the limit, and the owners
/// get all of theirs back; nothing is lost when the owners have no thread either.
#[test]
fn kept_blocks_past_the_limit_go_back_to_their_owners() {
    let a = Allocator::new(TestPlatform::new());
    let (mut first, mut second) = (a.local_heap().unwrap(), a.local_heap().unwrap());
    let layout = Layout::from_size_align(64, 8).unwrap();
    let class = SizeClass::for_size(64).unwrap();
    let limit = (pymalloc::FOREIGN_CLASS_BYTES / class.block_size()).min(pymalloc::FOREIGN_BLOCKS);
    let mine: Vec<*mut u8> = (0..limit).map(|_| first.alloc(layout)).collect();
    let theirs: Vec<*mut u8> = (0..limit).map(|_| second.alloc(layout)).collect();
    // The owners have no thread from now on: what comes back is collected by whoever sends it.
    drop((first, second));
    let mut other = a.local_heap().unwrap();
    for (&p, &q) in mine.iter().zip(&theirs) {
        // SAFETY: live blocks of this layout, each freed once, by a heap that owns neither.
        unsafe {
            other.dealloc(p, layout);
            other.dealloc(q, layout);
        }
        a.check().unwrap();
        let in_use = a.stats().classes[class.index()].blocks_in_use;
        assert!(in_use <= 2 * limit, "{in_use}");
    }
    // Every block was freed; at most a limit's worth is kept, the rest went back.
    let stats = a.stats();
    assert_eq!(stats.classes[class.index()].blocks_in_use, 0, "{stats}");
    drop(other);
    a.check().unwrap();
    assert_eq!(a.stats().pooled_blocks, 0);
    a.trim();
    assert_eq!(a.stats().pools_used + a.stats().pools_full, 0);
}

/// A heap keeps each owner's blocks of a class in a chain of its own, for at most
/// `KEPT_OWNERS` owners (heap H8): a block of one owner more sends the longest chain back to
/// its owner whole, and the heap hands out the last kept chain's blocks first.
#[test]
fn a_block_of_one_owner_more_than_kept_chains_sends_the_longest_back() {
    let a = Allocator::new(TestPlatform::new());
    let layout = Layout::from_size_align(64, 8).unwrap();
    let class = SizeClass::for_size(64).unwrap().index();
    let owners = pymalloc::KEPT_OWNERS + 1;
    // Owner `i` allocates `i + 1` blocks, and nothing more.
    let mut heaps: Vec<_> = (0..owners).map(|_| a.local_heap().unwrap()).collect();
    let blocks: Vec<Vec<*mut u8>> = (heaps.iter_mut().enumerate())
        .map(|(i, heap)| (0..=i).map(|_| heap.alloc(layout)).collect())
        .collect();
    let total: usize = (1..=owners).sum();
    let mut other = a.local_heap().unwrap();
    let in_use = || a.stats().classes[class].blocks_in_use;
    // The first owners' blocks fill the chains, all of them kept.
    let mut freed = 0;
    for own in &blocks[..owners - 1] {
        for &p in own {
            // SAFETY: a live block of this layout, freed once, by a heap that does not own it.
            unsafe { other.dealloc(p, layout) };
            freed += 1;
            a.check().unwrap();
            assert_eq!(in_use(), total - freed, "kept blocks are free");
        }
    }
    // One owner more: the longest chain (the last owner's so far) goes back whole, and the
    // new owner's block takes its place.
    let last = blocks.last().unwrap();
    // SAFETY: as above.
    unsafe { other.dealloc(last[0], layout) };
    a.check().unwrap();
    let counts = a.stats().classes[class].blocks_in_use;
    assert_eq!(counts, total - freed - 1, "still free, kept or sent back");
    // Handed out again: the new owner's block first (the chain kept in last), then the
    // chains left, never the blocks sent back.
    let sent_back = &blocks[owners - 2];
    let first = other.alloc(layout);
    assert_eq!(first, last[0], "the last kept chain first");
    let kept_left: usize = blocks[..owners - 2].iter().map(Vec::len).sum();
    let again: Vec<*mut u8> = (0..kept_left).map(|_| other.alloc(layout)).collect();
    for p in &again {
        assert!(
            blocks[..owners - 2].iter().any(|own| own.contains(p)),
            "a kept block, not one sent back"
        );
        assert!(!sent_back.contains(p));
    }
    // What is live now: those handed out again and the last owner's others.
    for p in again
        .into_iter()
        .chain([first])
        .chain(last[1..].iter().copied())
    {
        // SAFETY: live blocks of this layout, each freed once.
        unsafe { other.dealloc(p, layout) };
    }
    drop((other, heaps));
    a.check().unwrap();
    assert_eq!(a.stats().pooled_blocks, 0, "nothing lost");
}

/// A layout of each of the 32 small classes: 16 to 512 bytes.
fn one_layout_per_small_class() -> Vec<Layout> {
    (1..=32)
        .map(|i| Layout::from_size_align(16 * i, 8).unwrap())
        .collect()
}

#[test]
fn a_heap_of_few_keeps_an_empty_pool_for_each_class_it_cycles_through() {
    // One block of each small class, all freed, on an allocator with one heap: far below
    // PARKED_TOTAL, so every emptied pool stays listed and serves its class again, with no
    // pool taken from the arenas (tests/global.rs has the bound for many heaps).
    let a = Allocator::new(TestPlatform::new());
    let layouts = one_layout_per_small_class();
    assert!(layouts.len() < pymalloc::PARKED_TOTAL);
    for round in 0..3 {
        let blocks: Vec<*mut u8> = layouts.iter().map(|&l| a.alloc(l)).collect();
        assert!(blocks.iter().all(|p| !p.is_null()));
        let reserved = a.platform().reserve_calls();
        for (&p, &l) in blocks.iter().zip(&layouts) {
            // SAFETY: live blocks of these layouts, each freed once.
            unsafe { a.dealloc(p, l) };
            a.check().unwrap();
        }
        let s = a.stats();
        assert_eq!(
            s.pools_used,
            layouts.len(),
            "round {round}: every class keeps its pool"
        );
        for (&p, &l) in blocks.iter().zip(&layouts) {
            let again = a.alloc(l);
            assert_eq!(
                again, p,
                "round {round}: the parked pool serves its class again"
            );
            // SAFETY: a live block of this layout.
            unsafe { a.dealloc(again, l) };
        }
        assert_eq!(a.platform().reserve_calls(), reserved, "no new memory");
    }
    a.check().unwrap();
}

#[test]
fn many_heaps_together_park_at_most_their_floor_and_the_total() {
    // 48 heaps that each emptied a pool of 32 classes would park 1 536; together they may
    // park PARKED_TOTAL, and each PARKED_POOLS beyond it: the rest are retired.
    let a = Allocator::new(TestPlatform::new());
    let layouts = one_layout_per_small_class();
    let mut heaps: Vec<LocalHeap<'_, TestPlatform>> = Vec::new();
    for _ in 0..48 {
        let mut heap = a.local_heap().unwrap();
        let blocks: Vec<*mut u8> = layouts.iter().map(|&l| heap.alloc(l)).collect();
        for (&p, &l) in blocks.iter().zip(&layouts) {
            assert!(!p.is_null());
            // SAFETY: live blocks of these layouts, each freed once.
            unsafe { heap.dealloc(p, l) };
        }
        heaps.push(heap);
    }
    let held = a.stats().pools_used;
    let bound = pymalloc::PARKED_TOTAL + 48 * pymalloc::PARKED_POOLS;
    assert!(held <= bound, "{held} empty pools listed, at most {bound}");
    assert!(held >= pymalloc::PARKED_TOTAL, "{held}: the total is used");
    drop(heaps);
    a.check().unwrap();
}
