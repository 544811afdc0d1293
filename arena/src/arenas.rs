//! Arenas: [`ARENA_SIZE`]-aligned mappings cut into [`POOL_SIZE`] slots, and the manager that
//! hands pools to the heaps — one slot, or an aligned span of 2, 4 … [`MAX_SPAN_SLOTS`] slots
//! — and takes them back.
//!
//! Slot 0 of every arena holds its [`Header`] and, from `pymalloc_pool::DESCRIPTORS` on, the
//! descriptors of its pools (only those two pages are ever touched); slots 1.. are pool slots. Each arena keeps three bitmaps: `free` (slot not in a pool), `dirty`
//! (free slot written since it was last fresh or decommitted) and `heads` (slot that starts a
//! pool), and the span length of each pool.
//!
//! A pool of `k` slots sits at a slot index that is a multiple of `k`, so that with arenas
//! aligned to their size every pool is aligned to its own size (its header is found by
//! masking a block's address). Finding such a run is a few shift-and-mask steps on `free`.
//!
//! Policies:
//! - *Fullest first*: arenas sit in buckets by their number of free slots, with a bitmap of the
//!   non-empty buckets, so the fullest arena with a free slot is one `trailing_zeros` away, and
//!   moving an arena when its count changes is O(1). Sparse arenas thus drain and can go back.
//! - *Spans in O(1)*: for each span length above one, a list holds the arenas that have a free,
//!   aligned run of that length, and another those with such a run wholly dirty; an arena's
//!   memberships are recomputed (a few bit operations per length) whenever its bitmaps change.
//!   A span is taken from a dirty run when there is one anywhere, so freed memory is reused
//!   before fresh memory is faulted in (and long before it would be decommitted).
//! - *Dirty before fresh*: a single slot, or a run wholly dirty, is taken first (no page
//!   faults).
//! - *Decommit with hysteresis*: once more than [`DIRTY_LIMIT`] free slots are dirty, the
//!   oldest are decommitted until half that remains, so a pool freed and taken again in a loop
//!   costs no system call, yet a program that frees a lot gets its memory back.
//! - *Keep a few empty arenas*: up to [`MAX_EMPTY_ARENAS`] wholly free arenas stay mapped
//!   (their pages subject to the decommit policy); beyond that an emptied arena is unmapped.
//!
//! Invariants (checked by [`Arenas::check`]):
//! - A1 every arena is in exactly one bucket, the one for its number of free slots; bit `n` of
//!   `nonempty` is set exactly when bucket `n` is not empty;
//! - A2 `dirty ⊆ free ⊆ USABLE` (slot 0 is never free); the pools (a head and its span) tile
//!   exactly the slots that are not free, each aligned to its length;
//! - A3 an arena is in the dirty list exactly when its `dirty` is not zero, and `dirty_slots`
//!   is the sum of their dirty bits; `empty` counts the arenas with every slot free;
//! - A4 an arena is in the run list of a span length exactly when it has a free aligned run of
//!   that length, and in the dirty-run list exactly when it has a wholly dirty one;
//! - A5 the [`ArenaMap`] maps every arena's granule to its header, and nothing else;
//! - A6 `pool_head[i]` is, for a slot `i` in a pool, the index of the pool's first slot, and 0
//!   for a free slot (slot 0, the header's, starts no pool).
//!
//! The map lives outside the manager: the manager is used under its owner's lock, while
//! [`ArenaMap::pool_of`] answers "which pool holds this address?" from any thread without one.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU8, Ordering};

pub use pymalloc_pool::{ARENA_SHIFT, ARENA_SIZE, SLOTS};
use pymalloc_pool::{DESCRIPTORS, MAX_SPAN_SLOTS, POOL_SIZE, ensure};
use pymalloc_radix::NodeAlloc;

use crate::Platform;
use crate::map::ArenaMap;

/// Pool slots per arena.
pub const POOLS_PER_ARENA: usize = SLOTS - 1;
/// Wholly free arenas kept mapped before an emptied one is unmapped.
pub const MAX_EMPTY_ARENAS: usize = 4;
/// Dirty free slots allowed before the oldest are decommitted (4 MiB of pools).
pub const DIRTY_LIMIT: usize = (4 << 20) / POOL_SIZE;

/// Span lengths above one slot: 2, 4, … MAX_SPAN_SLOTS.
const SPAN_LENGTHS: usize = MAX_SPAN_SLOTS.trailing_zeros() as usize;
/// Run lists: one per span length for free runs, then one per span length for dirty runs.
const RUN_LISTS: usize = 2 * SPAN_LENGTHS;

const _: () = assert!(
    SLOTS >= 2 && SLOTS <= u64::BITS as usize,
    "slot bitmaps are one u64"
);
const _: () = assert!(
    MAX_SPAN_SLOTS < SLOTS,
    "the longest span must fit beside the header slot"
);
const _: () = assert!(
    size_of::<Header>() <= DESCRIPTORS,
    "the header ends where the pools' descriptors begin"
);

const ALL_SLOTS: u64 = u64::MAX >> (u64::BITS as usize - SLOTS);
/// Every slot but slot 0, the header's.
const USABLE: u64 = ALL_SLOTS & !1;

/// Bits `start .. start + len` set.
const fn run_mask(start: u32, len: u32) -> u64 {
    (u64::MAX >> (u64::BITS - len)) << start
}

/// Bit `i` set iff slots `i .. i + len` are all free and `i` is a multiple of `len` (a power of
/// two). Constant time: log2(len) shift-and-mask steps.
const fn aligned_runs(free: u64, len: u32) -> u64 {
    let mut runs = free;
    let mut width = 1;
    while width < len {
        runs &= runs >> width;
        width *= 2;
    }
    // Multiples of `len`: the repeating pattern 0…01 of period `len`.
    runs & (u64::MAX / (u64::MAX >> (u64::BITS - len)))
}

/// Links of one intrusive list.
struct Links {
    prev: *mut Header,
    next: *mut Header,
}

const UNLINKED: Links = Links {
    prev: ptr::null_mut(),
    next: ptr::null_mut(),
};

/// The header in slot 0 of every arena.
pub struct Header {
    free: u64,
    dirty: u64,
    heads: u64,
    /// Bit `i` set iff the arena is in run list `i` (see [`Arenas::with_run`]).
    in_run_lists: u16,
    /// Span length of the pool starting at each slot (meaningful for heads only).
    span: [u8; SLOTS],
    /// For each slot in a pool, the index of the pool's first slot; 0 for free slots (A6).
    /// Written under the manager's owner's lock, read by [`ArenaMap::pool_of`] without it.
    pub(crate) pool_head: [AtomicU8; SLOTS],
    bucket: Links,
    dirty_list: Links,
    run_lists: [Links; RUN_LISTS],
}

/// Which of a header's links a list uses.
#[derive(Clone, Copy)]
enum Chain {
    Bucket,
    Dirty,
    Runs(usize),
}

impl Chain {
    /// # Safety
    /// `h` is a live header.
    unsafe fn links(self, h: *mut Header) -> *mut Links {
        // SAFETY: a live header (caller); raw place projections create no reference.
        unsafe {
            match self {
                Chain::Bucket => &raw mut (*h).bucket,
                Chain::Dirty => &raw mut (*h).dirty_list,
                Chain::Runs(i) => (&raw mut (*h).run_lists).cast::<Links>().add(i),
            }
        }
    }
}

/// A doubly-linked list of arena headers, FIFO.
struct List {
    head: *mut Header,
    tail: *mut Header,
}

impl List {
    const EMPTY: List = List {
        head: ptr::null_mut(),
        tail: ptr::null_mut(),
    };

    /// # Safety
    /// `h` is a live header in no list of this chain.
    unsafe fn push_back(&mut self, h: *mut Header, chain: Chain) {
        // SAFETY: `h` and the tail are live headers (caller, list invariant).
        unsafe {
            *chain.links(h) = Links {
                prev: self.tail,
                next: ptr::null_mut(),
            };
            if self.tail.is_null() {
                self.head = h;
            } else {
                (*chain.links(self.tail)).next = h;
            }
        }
        self.tail = h;
    }

    /// # Safety
    /// `h` is a live header in this list.
    unsafe fn remove(&mut self, h: *mut Header, chain: Chain) {
        // SAFETY: `h` and its neighbours are live headers of this list (caller).
        unsafe {
            let Links { prev, next } = chain.links(h).read();
            if prev.is_null() {
                self.head = next;
            } else {
                (*chain.links(prev)).next = next;
            }
            if next.is_null() {
                self.tail = prev;
            } else {
                (*chain.links(next)).prev = prev;
            }
        }
    }

    /// Visits every header, tolerating the removal of the visited one.
    ///
    /// # Safety
    /// Every header in the list is live.
    unsafe fn for_each(&self, chain: Chain, mut f: impl FnMut(*mut Header)) {
        let mut h = self.head;
        while !h.is_null() {
            // SAFETY: live header (caller); the next link is read before `f` runs.
            let next = unsafe { (*chain.links(h)).next };
            f(h);
            h = next;
        }
    }
}

/// Node memory for the radix tree, straight from the platform (never from pymalloc).
pub(crate) struct PlatformNodes<'a, P>(pub(crate) &'a P);

// SAFETY: whole pages from the platform, zero-filled here if the platform does not promise it.
unsafe impl<P: Platform> NodeAlloc for PlatformNodes<'_, P> {
    fn alloc_node(&self, bytes: usize) -> Option<NonNull<u8>> {
        let size = bytes.next_multiple_of(self.0.page_size());
        let node = self.0.reserve(size, 1)?;
        if !P::ZERO_FILLED {
            // SAFETY: a fresh reservation of `size` bytes.
            unsafe { node.as_ptr().write_bytes(0, size) };
        }
        Some(node)
    }

    unsafe fn free_node(&self, node: NonNull<u8>, bytes: usize) {
        // SAFETY: reserved by alloc_node with this rounded size (caller).
        unsafe {
            self.0
                .release(node, bytes.next_multiple_of(self.0.page_size()))
        }
    }
}

/// Figures about the arenas, for statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Arenas mapped.
    pub arenas: usize,
    /// Arenas with every pool slot free.
    pub empty_arenas: usize,
    /// Pools (of one slot or a span of several) in use.
    pub pools_in_use: usize,
    /// Slots in use by pools.
    pub slots_in_use: usize,
    /// Free pool slots whose memory is still committed.
    pub free_dirty_slots: usize,
    /// Free pool slots that are fresh or decommitted.
    pub free_clean_slots: usize,
    /// Bytes mapped for arenas and for the radix tree's nodes.
    pub mapped_bytes: usize,
}

/// The arena manager. See the module documentation for its policies and invariants.
pub struct Arenas {
    /// `by_free[n]`: arenas with `n` free pool slots.
    by_free: [List; SLOTS],
    /// Bit `n` set iff `by_free[n]` is not empty.
    nonempty: u64,
    /// `with_run[i]`: arenas with a free aligned run of `2 << i` slots; `with_run[SPAN_LENGTHS
    /// + i]`: arenas with a wholly dirty one.
    with_run: [List; RUN_LISTS],
    /// Arenas with dirty free slots, the oldest first.
    dirty: List,
    dirty_slots: usize,
    /// Slots in pools in use, over all arenas.
    slots_in_use: usize,
    arenas: usize,
    empty: usize,
}

// SAFETY: the manager exclusively owns the arenas its pointers lead to; moving it to another
// thread moves that ownership. Shared access is only through `&self` methods that read.
unsafe impl Send for Arenas {}

impl Default for Arenas {
    fn default() -> Self {
        Self::new()
    }
}

impl Arenas {
    /// A manager with no arena; maps nothing until the first pool is asked for.
    pub const fn new() -> Arenas {
        Arenas {
            by_free: [const { List::EMPTY }; SLOTS],
            nonempty: 0,
            with_run: [const { List::EMPTY }; RUN_LISTS],
            dirty: List::EMPTY,
            dirty_slots: 0,
            slots_in_use: 0,
            arenas: 0,
            empty: 0,
        }
    }

    fn header_of(addr: NonNull<u8>) -> *mut Header {
        addr.as_ptr().map_addr(|a| a & !(ARENA_SIZE - 1)).cast()
    }

    pub(crate) fn slot(h: *mut Header, index: u32) -> NonNull<u8> {
        // SAFETY: `index < SLOTS`, so the slot lies inside the arena that starts at `h`.
        unsafe { NonNull::new_unchecked(h.cast::<u8>().add(index as usize * POOL_SIZE)) }
    }

    /// Points slots `start .. start + len` at `head` (A6): the pool's first slot, or 0.
    ///
    /// # Safety
    /// `h` is a live arena header and the slots are in range.
    unsafe fn set_pool_head(h: *mut Header, start: u32, len: u32, head: u8) {
        for i in start..start + len {
            // SAFETY: a live header (caller); `i < SLOTS` (caller). Relaxed suffices: a reader
            // that holds a block of the pool got it after the pool was handed out, through
            // whatever synchronisation passed the block along; any other reader gets no promise.
            unsafe {
                (*h).pool_head
                    .get_unchecked(i as usize)
                    .store(head, Ordering::Relaxed)
            };
        }
    }

    /// # Safety
    /// `h` is a live arena header.
    unsafe fn free_count(h: *mut Header) -> usize {
        // SAFETY: live header (caller).
        unsafe { (*h).free.count_ones() as usize }
    }

    /// # Safety
    /// `h` is a live arena header in no bucket, with `n` free slots.
    unsafe fn bucket_in(&mut self, h: *mut Header, n: usize) {
        // SAFETY: `n <= POOLS_PER_ARENA < SLOTS`, and `h` is in no bucket (caller).
        unsafe {
            self.by_free
                .get_unchecked_mut(n)
                .push_back(h, Chain::Bucket)
        };
        self.nonempty |= 1 << n;
    }

    /// # Safety
    /// `h` is a live arena header in bucket `n`.
    unsafe fn bucket_out(&mut self, h: *mut Header, n: usize) {
        // SAFETY: `n < SLOTS` and `h` is in that bucket (caller).
        let list = unsafe { self.by_free.get_unchecked_mut(n) };
        // SAFETY: as above.
        unsafe { list.remove(h, Chain::Bucket) };
        if list.head.is_null() {
            self.nonempty &= !(1 << n);
        }
    }

    /// Whether the arena belongs in run list `i` (A4).
    ///
    /// # Safety
    /// `h` is a live arena header.
    unsafe fn belongs_in_run_list(h: *mut Header, i: usize) -> bool {
        // SAFETY: a live header (caller).
        let bits = unsafe {
            if i < SPAN_LENGTHS {
                (*h).free
            } else {
                (*h).dirty
            }
        };
        aligned_runs(bits, 2 << (i % SPAN_LENGTHS)) != 0
    }

    /// Brings the arena's run-list memberships in line with its `free` bitmap (A4).
    ///
    /// # Safety
    /// `h` is a live arena header of this manager.
    unsafe fn update_run_lists(&mut self, h: *mut Header) {
        for (i, list) in self.with_run.iter_mut().enumerate() {
            // SAFETY: a live header (caller); membership follows its `in_run_lists` bit.
            unsafe {
                let has = Self::belongs_in_run_list(h, i);
                let member = (*h).in_run_lists & (1 << i) != 0;
                if has && !member {
                    list.push_back(h, Chain::Runs(i));
                } else if !has && member {
                    list.remove(h, Chain::Runs(i));
                }
                (*h).in_run_lists ^= ((has != member) as u16) << i;
            }
        }
    }

    /// Hands out one pool of `slots` slots (a power of two up to [`MAX_SPAN_SLOTS`]):
    /// `slots * POOL_SIZE` bytes aligned to that size, exclusively the caller's until given
    /// back with [`Arenas::free_pool`], with whether they read zero. `None` if the platform
    /// refuses memory; the manager is unchanged but for a possibly new, empty arena. New arenas
    /// are entered in `map`, which must be the one this manager has always been given.
    pub fn alloc_pool<P: Platform>(
        &mut self,
        slots: usize,
        platform: &P,
        map: &ArenaMap,
    ) -> Option<(NonNull<u8>, bool)> {
        ensure(
            slots.is_power_of_two() && slots <= MAX_SPAN_SLOTS,
            "alloc_pool: bad span length",
        );
        let len = slots as u32;
        let h = if len == 1 {
            // Bucket 0 holds full arenas; the lowest other bucket holds the fullest with room.
            let with_room = self.nonempty & !1;
            if with_room != 0 {
                // SAFETY: bit n set means bucket n is not empty (A1).
                unsafe {
                    self.by_free
                        .get_unchecked(with_room.trailing_zeros() as usize)
                        .head
                }
            } else {
                self.new_arena(platform, map)?
            }
        } else {
            // A wholly dirty run anywhere, else any free run, else a new arena. `len` is
            // 2 ..= MAX_SPAN_SLOTS, so both indices are below RUN_LISTS.
            let i = len.trailing_zeros() as usize - 1;
            // SAFETY: as above.
            let (dirty, any) = unsafe {
                let lists = &self.with_run;
                (
                    lists.get_unchecked(SPAN_LENGTHS + i).head,
                    lists.get_unchecked(i).head,
                )
            };
            match (dirty.is_null(), any.is_null()) {
                (false, _) => dirty,
                (true, false) => any,
                (true, true) => self.new_arena(platform, map)?,
            }
        };
        // SAFETY: `h` is a live arena with a free aligned run of `len` slots (its list, or a new
        // arena); the run chosen becomes the caller's.
        unsafe {
            let (free, dirty) = ((*h).free, (*h).dirty);
            // A wholly dirty run first (`dirty ⊆ free`), else any free run.
            let dirty_runs = aligned_runs(dirty, len);
            let runs = if dirty_runs != 0 {
                dirty_runs
            } else {
                aligned_runs(free, len)
            };
            let start = runs.trailing_zeros();
            let run = run_mask(start, len);
            let pool = Self::slot(h, start);
            let dirty_in_run = dirty & run;
            if dirty_in_run != run && !platform.commit(pool, slots * POOL_SIZE) {
                return None;
            }
            let n = Self::free_count(h);
            self.bucket_out(h, n);
            (*h).free &= !run;
            self.slots_in_use += slots;
            (*h).heads |= 1 << start;
            (*h).span[start as usize] = len as u8;
            Self::set_pool_head(h, start, len, start as u8);
            if dirty_in_run != 0 {
                (*h).dirty &= !run;
                self.dirty_slots -= dirty_in_run.count_ones() as usize;
                if (*h).dirty == 0 {
                    self.dirty.remove(h, Chain::Dirty);
                }
            }
            if n == POOLS_PER_ARENA {
                self.empty -= 1;
            }
            self.bucket_in(h, n - slots);
            self.update_run_lists(h);
            Some((pool, dirty_in_run == 0 && P::ZERO_FILLED))
        }
    }

    /// Maps, registers and lists a new, empty arena.
    fn new_arena<P: Platform>(&mut self, platform: &P, map: &ArenaMap) -> Option<*mut Header> {
        let base = platform.reserve(ARENA_SIZE, ARENA_SIZE)?;
        let h = base.cast::<Header>();
        // SAFETY: a fresh reservation, exclusively ours, large and aligned enough for a header.
        unsafe {
            h.write(Header {
                free: USABLE,
                dirty: 0,
                heads: 0,
                in_run_lists: 0,
                span: [0; SLOTS],
                pool_head: [const { AtomicU8::new(0) }; SLOTS],
                bucket: UNLINKED,
                dirty_list: UNLINKED,
                run_lists: [const { UNLINKED }; RUN_LISTS],
            });
        }
        if map
            .radix
            .insert(base.addr().get(), h, &PlatformNodes(platform))
            .is_err()
        {
            // SAFETY: the reservation was never published.
            unsafe { platform.release(base, ARENA_SIZE) };
            return None;
        }
        self.arenas += 1;
        self.empty += 1;
        // SAFETY: a live header in no list, every pool slot free.
        unsafe {
            self.bucket_in(h.as_ptr(), POOLS_PER_ARENA);
            self.update_run_lists(h.as_ptr());
        }
        Some(h.as_ptr())
    }

    /// Takes back a pool. Its contents are given up; its slots may go to any class next.
    ///
    /// # Safety
    /// `pool` came from [`Arenas::alloc_pool`] on this manager and is no longer used; `map` is
    /// the manager's.
    pub unsafe fn free_pool<P: Platform>(
        &mut self,
        pool: NonNull<u8>,
        platform: &P,
        map: &ArenaMap,
    ) {
        let h = Self::header_of(pool);
        let start = ((pool.addr().get() - h.addr()) / POOL_SIZE) as u32;
        // SAFETY: `pool` starts a pool of a live arena of ours (caller), so `h` is its header.
        unsafe {
            ensure(
                pool.addr().get() % POOL_SIZE == 0 && (*h).heads & (1 << start) != 0,
                "free_pool: not the start of a pool in use",
            );
            let len = (*h).span[start as usize] as u32;
            let run = run_mask(start, len);
            let n = Self::free_count(h);
            self.bucket_out(h, n);
            (*h).free |= run;
            self.slots_in_use -= len as usize;
            (*h).heads &= !(1 << start);
            Self::set_pool_head(h, start, len, 0);
            if (*h).dirty == 0 {
                self.dirty.push_back(h, Chain::Dirty);
            }
            (*h).dirty |= run;
            self.dirty_slots += len as usize;
            let n = n + len as usize;
            if n == POOLS_PER_ARENA {
                self.empty += 1;
                if self.empty > MAX_EMPTY_ARENAS {
                    self.release_arena(h, platform, map);
                    return;
                }
            }
            self.bucket_in(h, n);
            self.update_run_lists(h);
        }
        if self.dirty_slots > DIRTY_LIMIT {
            self.purge(platform, DIRTY_LIMIT / 2);
        }
    }

    /// Unmaps an empty arena that is in no bucket.
    ///
    /// # Safety
    /// `h` is a live, empty arena of ours, in no bucket; `map` is the manager's.
    unsafe fn release_arena<P: Platform>(&mut self, h: *mut Header, platform: &P, map: &ArenaMap) {
        // SAFETY: live header (caller); after this nothing refers to the arena.
        unsafe {
            if (*h).dirty != 0 {
                self.dirty_slots -= (*h).dirty.count_ones() as usize;
                self.dirty.remove(h, Chain::Dirty);
            }
            for (i, list) in self.with_run.iter_mut().enumerate() {
                if (*h).in_run_lists & (1 << i) != 0 {
                    list.remove(h, Chain::Runs(i));
                }
            }
            map.radix.remove(h.addr());
            self.arenas -= 1;
            self.empty -= 1;
            platform.release(NonNull::new_unchecked(h.cast()), ARENA_SIZE);
        }
    }

    /// Decommits the oldest dirty free slots until at most `target` remain dirty. Stops early,
    /// leaving everything consistent, if the platform refuses a decommit.
    pub fn purge<P: Platform>(&mut self, platform: &P, target: usize) {
        while self.dirty_slots > target {
            let h = self.dirty.head;
            if h.is_null() {
                return;
            }
            // SAFETY: `h` is a live arena in the dirty list; its dirty slots are free, so their
            // contents are ours to give up.
            let refused = unsafe {
                let mut refused = false;
                while (*h).dirty != 0 && !refused {
                    let d = (*h).dirty;
                    let start = d.trailing_zeros();
                    let len = (!(d >> start)).trailing_zeros();
                    refused = !platform.decommit(Self::slot(h, start), len as usize * POOL_SIZE);
                    if !refused {
                        (*h).dirty &= !run_mask(start, len);
                        self.dirty_slots -= len as usize;
                    }
                }
                if (*h).dirty == 0 {
                    self.dirty.remove(h, Chain::Dirty);
                }
                self.update_run_lists(h);
                refused
            };
            if refused {
                return;
            }
        }
    }

    /// Gives back what is not needed: decommits every dirty free slot and unmaps every empty
    /// arena (`map` is the manager's).
    pub fn trim<P: Platform>(&mut self, platform: &P, map: &ArenaMap) {
        let bucket = POOLS_PER_ARENA;
        while self.nonempty & (1 << bucket) != 0 {
            let h = self.by_free[bucket].head;
            // SAFETY: `h` is a live, empty arena in bucket `bucket`.
            unsafe {
                self.bucket_out(h, bucket);
                self.release_arena(h, platform, map);
            }
        }
        self.purge(platform, 0);
    }

    /// Visits the start of every pool in use.
    pub fn for_each_pool(&self, mut f: impl FnMut(NonNull<u8>)) {
        for list in &self.by_free {
            // SAFETY: bucketed headers are live (A1).
            unsafe {
                list.for_each(Chain::Bucket, |h| {
                    let mut heads = (*h).heads;
                    while heads != 0 {
                        f(Self::slot(h, heads.trailing_zeros()));
                        heads &= heads - 1;
                    }
                });
            }
        }
    }

    /// Current figures (`map` is the manager's).
    pub fn stats(&self, map: &ArenaMap) -> ArenaStats {
        let mut pools = 0;
        for list in &self.by_free {
            // SAFETY: bucketed headers are live (A1).
            unsafe { list.for_each(Chain::Bucket, |h| pools += (*h).heads.count_ones() as usize) };
        }
        let free_slots = self.arenas * POOLS_PER_ARENA - self.slots_in_use;
        ArenaStats {
            arenas: self.arenas,
            empty_arenas: self.empty,
            pools_in_use: pools,
            slots_in_use: self.slots_in_use,
            free_dirty_slots: self.dirty_slots,
            free_clean_slots: free_slots - self.dirty_slots,
            mapped_bytes: self.arenas * ARENA_SIZE + map.radix.node_bytes_in_use(),
        }
    }

    /// Checks the invariants of one arena in bucket `n`: A2, A4, A6 and its map entry.
    ///
    /// # Safety
    /// `h` is a live arena header of this manager.
    unsafe fn check_arena(
        &self,
        h: *mut Header,
        n: usize,
        map: &ArenaMap,
    ) -> Result<(), &'static str> {
        // SAFETY: a live header (caller).
        let (free, dirty, heads, in_runs, span) = unsafe {
            (
                (*h).free,
                (*h).dirty,
                (*h).heads,
                (*h).in_run_lists,
                &(*h).span,
            )
        };
        if free.count_ones() as usize != n {
            return Err("arenas: arena in the wrong bucket");
        }
        if free & !USABLE != 0 || dirty & !free != 0 || heads & (free | !USABLE) != 0 {
            return Err("arenas: dirty slots not free, a head slot free, or the header slot free");
        }
        let mut tiled = 0u64;
        let mut rest = heads;
        while rest != 0 {
            let start = rest.trailing_zeros();
            let len = span[start as usize] as u32;
            if !len.is_power_of_two()
                || len as usize > MAX_SPAN_SLOTS
                || start % len != 0
                || start + len > SLOTS as u32
            {
                return Err("arenas: a pool's span is misshapen or misaligned");
            }
            let run = run_mask(start, len);
            if run & (tiled | free) != 0 {
                return Err("arenas: pools overlap each other or free slots");
            }
            for i in start..start + len {
                // SAFETY: a live header (caller); `i < SLOTS` as checked above.
                if unsafe { (*h).pool_head[i as usize].load(Ordering::Relaxed) } as u32 != start {
                    return Err("arenas: a slot of a pool does not lead to the pool's start");
                }
            }
            tiled |= run;
            rest &= rest - 1;
        }
        if tiled != USABLE & !free {
            return Err("arenas: slots in use that belong to no pool");
        }
        let mut free_slots = free;
        while free_slots != 0 {
            let i = free_slots.trailing_zeros() as usize;
            // SAFETY: a live header (caller).
            if unsafe { (*h).pool_head[i].load(Ordering::Relaxed) } != 0 {
                return Err("arenas: a free slot leads to a pool");
            }
            free_slots &= free_slots - 1;
        }
        for i in 0..RUN_LISTS {
            // SAFETY: a live header (caller).
            if unsafe { Self::belongs_in_run_list(h, i) } != (in_runs & (1 << i) != 0) {
                return Err("arenas: run-list membership disagrees with the bitmaps");
            }
        }
        if map.radix.get(h.addr()).map(NonNull::as_ptr) != Some(h) {
            return Err("arenas: the map does not lead from the arena to its header");
        }
        Ok(())
    }

    /// Checks invariants A1 to A6 (`map` is the manager's).
    pub fn check(&self, map: &ArenaMap) -> Result<(), &'static str> {
        let (mut arenas, mut empty, mut dirty_slots, mut dirty_arenas) = (0, 0, 0, 0);
        let mut free_slots = 0;
        let mut in_runs = [0usize; RUN_LISTS];
        let mut result = Ok(());
        for (n, list) in self.by_free.iter().enumerate() {
            if (self.nonempty >> n & 1 == 1) == list.head.is_null() {
                return Err("arenas: non-empty bucket bitmap disagrees with the buckets");
            }
            // SAFETY: bucketed headers are live (A1).
            unsafe {
                list.for_each(Chain::Bucket, |h| {
                    arenas += 1;
                    free_slots += n;
                    empty += (n == POOLS_PER_ARENA) as usize;
                    dirty_slots += (*h).dirty.count_ones() as usize;
                    dirty_arenas += ((*h).dirty != 0) as usize;
                    for (i, count) in in_runs.iter_mut().enumerate() {
                        *count += ((*h).in_run_lists >> i & 1) as usize;
                    }
                    if result.is_ok() {
                        result = self.check_arena(h, n, map);
                    }
                });
            }
            result?;
        }
        let mut listed = 0;
        // SAFETY: headers in the dirty list are live (A3).
        unsafe {
            self.dirty
                .for_each(Chain::Dirty, |h| listed += ((*h).dirty != 0) as usize)
        };
        if arenas != self.arenas || empty != self.empty {
            return Err("arenas: arena or empty-arena count is off");
        }
        if dirty_slots != self.dirty_slots || listed != dirty_arenas {
            return Err("arenas: dirty slot count or dirty list is off");
        }
        if self.slots_in_use != self.arenas * POOLS_PER_ARENA - free_slots {
            return Err("arenas: count of slots in use is off");
        }
        for (i, list) in self.with_run.iter().enumerate() {
            let mut len = 0;
            // SAFETY: headers in run lists are live (A4).
            unsafe { list.for_each(Chain::Runs(i), |_| len += 1) };
            if len != in_runs[i] {
                return Err("arenas: a run list's length disagrees with its members");
            }
        }
        Ok(())
    }

    /// Unmaps every arena and the map's nodes, whatever they hold.
    ///
    /// # Safety
    /// Nothing handed out by this manager is used any more, and nobody looks up `map`, the
    /// manager's, any more.
    pub unsafe fn release_all<P: Platform>(&mut self, platform: &P, map: &mut ArenaMap) {
        for n in 0..SLOTS {
            while let Some(h) = NonNull::new(self.by_free[n].head) {
                // SAFETY: live header in bucket n; nothing uses the arena any more (caller).
                unsafe {
                    self.bucket_out(h.as_ptr(), n);
                    platform.release(h.cast(), ARENA_SIZE);
                }
            }
        }
        // SAFETY: every node came from PlatformNodes over this platform; no lookup follows.
        unsafe { map.radix.release_nodes(&PlatformNodes(platform)) };
        *self = Arenas::new();
    }
}

#[cfg(test)]
mod bit_tests {
    use super::*;

    #[test]
    fn aligned_runs_finds_exactly_the_aligned_free_runs() {
        for len in [1u32, 2, 4, 8, 16, 32] {
            for free in [
                USABLE,
                0,
                0xF0F0_F0F0_F0F0_F0F0,
                0xFFFF_0000_FFFF_0000,
                0x0000_FFFF_FFFF_0000,
                1 << 63,
            ] {
                let runs = aligned_runs(free, len);
                for i in 0..64u32 {
                    let expected = i % len == 0
                        && i + len <= 64
                        && free & run_mask(i, len) == run_mask(i, len);
                    assert_eq!(
                        runs >> i & 1 == 1,
                        expected,
                        "free {free:#x} len {len} slot {i}"
                    );
                }
            }
        }
    }
}
