//! Arenas: [`ARENA_SIZE`]-aligned mappings cut into [`POOL_SIZE`] slots, and the manager that
//! hands single slots to the heaps and takes them back.
//!
//! Slot 0 of every arena holds its [`Header`] (only the header's page is ever touched); slots
//! 1.. are pool slots. Each arena keeps two bitmaps: `free` (slot not in use as a pool) and
//! `dirty` (free slot whose memory was written since it was last fresh or decommitted).
//!
//! Policies:
//! - *Fullest first*: arenas sit in buckets by their number of free slots, with a bitmap of the
//!   non-empty buckets, so finding the fullest arena that has room is one `trailing_zeros`, and
//!   moving an arena when its count changes is O(1). Sparse arenas thus drain and can go back.
//! - *Dirty before fresh*: inside an arena a dirty slot is reused first (no page faults).
//! - *Decommit with hysteresis*: once more than [`DIRTY_LIMIT`] free slots are dirty, the
//!   oldest are decommitted until half that remains, so a pool freed and taken again in a loop
//!   costs no system call, yet a program that frees a lot gets its memory back.
//! - *Keep a few empty arenas*: up to [`MAX_EMPTY_ARENAS`] wholly free arenas stay mapped
//!   (their pages subject to the decommit policy); beyond that an emptied arena is unmapped.
//!
//! Invariants (checked by [`Arenas::check`]):
//! - A1 every arena is in exactly one bucket, the one for its number of free slots; bit `n` of
//!   `nonempty` is set exactly when bucket `n` is not empty;
//! - A2 `dirty ⊆ free ⊆ USABLE` (slot 0 is never free);
//! - A3 an arena is in the dirty list exactly when its `dirty` is not zero, and
//!   `dirty_slots` is the sum of their dirty bits; `empty` counts the arenas with every slot free;
//! - A4 the radix tree maps every arena's granule to its header, and nothing else.

use core::ptr::{self, NonNull};

use pymalloc_pool::{POOL_SIZE, ensure};
use pymalloc_radix::{NodeAlloc, RadixTree};

use crate::Platform;

/// log2 of [`ARENA_SIZE`].
pub const ARENA_SHIFT: u32 = 20;
/// Bytes in one arena: 1 MiB, as CPython's radix-tree configuration.
pub const ARENA_SIZE: usize = 1 << ARENA_SHIFT;
/// Slots per arena, the header's included.
pub const SLOTS: usize = ARENA_SIZE / POOL_SIZE;
/// Pool slots per arena.
pub const POOLS_PER_ARENA: usize = SLOTS - 1;
/// Wholly free arenas kept mapped before an emptied one is unmapped.
pub const MAX_EMPTY_ARENAS: usize = 4;
/// Dirty free slots allowed before the oldest are decommitted (4 MiB of pools).
pub const DIRTY_LIMIT: usize = (4 << 20) / POOL_SIZE;

const _: () = assert!(
    SLOTS >= 2 && SLOTS <= u64::BITS as usize,
    "slot bitmaps are one u64"
);
const _: () = assert!(size_of::<Header>() <= POOL_SIZE);

const ALL_SLOTS: u64 = u64::MAX >> (u64::BITS as usize - SLOTS);
/// Every slot but slot 0, the header's.
const USABLE: u64 = ALL_SLOTS & !1;

/// Links of one intrusive list.
struct Links {
    prev: *mut Header,
    next: *mut Header,
}

/// The header in slot 0 of every arena.
pub struct Header {
    free: u64,
    dirty: u64,
    bucket: Links,
    dirty_list: Links,
}

/// Which links of a header a list uses.
type LinksOf = fn(*mut Header) -> *mut Links;

fn bucket_links(h: *mut Header) -> *mut Links {
    // SAFETY: only called on live headers; a raw place projection creates no reference.
    unsafe { &raw mut (*h).bucket }
}

fn dirty_links(h: *mut Header) -> *mut Links {
    // SAFETY: as above.
    unsafe { &raw mut (*h).dirty_list }
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
    /// `h` is a live header in no list of this kind.
    unsafe fn push_back(&mut self, h: *mut Header, links: LinksOf) {
        // SAFETY: `h` and the tail are live headers (caller, list invariant).
        unsafe {
            *links(h) = Links {
                prev: self.tail,
                next: ptr::null_mut(),
            };
            if self.tail.is_null() {
                self.head = h;
            } else {
                (*links(self.tail)).next = h;
            }
        }
        self.tail = h;
    }

    /// # Safety
    /// `h` is a live header in this list.
    unsafe fn remove(&mut self, h: *mut Header, links: LinksOf) {
        // SAFETY: `h` and its neighbours are live headers of this list (caller).
        unsafe {
            let Links { prev, next } = links(h).read();
            if prev.is_null() {
                self.head = next;
            } else {
                (*links(prev)).next = next;
            }
            if next.is_null() {
                self.tail = prev;
            } else {
                (*links(next)).prev = prev;
            }
        }
    }

    /// Visits every header, tolerating the removal of the visited one.
    ///
    /// # Safety
    /// Every header in the list is live.
    unsafe fn for_each(&self, links: LinksOf, mut f: impl FnMut(*mut Header)) {
        let mut h = self.head;
        while !h.is_null() {
            // SAFETY: live header (caller); the next link is read before `f` runs.
            let next = unsafe { (*links(h)).next };
            f(h);
            h = next;
        }
    }
}

/// Node memory for the radix tree, straight from the platform (never from pymalloc).
struct PlatformNodes<'a, P>(&'a P);

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
    /// Pool slots in use by pools.
    pub pools_in_use: usize,
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
    /// Arenas with dirty free slots, the oldest first.
    dirty: List,
    dirty_slots: usize,
    arenas: usize,
    empty: usize,
    radix: RadixTree<Header, ARENA_SHIFT>,
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
            dirty: List::EMPTY,
            dirty_slots: 0,
            arenas: 0,
            empty: 0,
            radix: RadixTree::new(),
        }
    }

    fn header_of(addr: NonNull<u8>) -> *mut Header {
        addr.as_ptr().map_addr(|a| a & !(ARENA_SIZE - 1)).cast()
    }

    fn slot(h: *mut Header, index: u32) -> NonNull<u8> {
        // SAFETY: `index < SLOTS`, so the slot lies inside the arena that starts at `h`.
        unsafe { NonNull::new_unchecked(h.cast::<u8>().add(index as usize * POOL_SIZE)) }
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
        unsafe { self.by_free.get_unchecked_mut(n).push_back(h, bucket_links) };
        self.nonempty |= 1 << n;
    }

    /// # Safety
    /// `h` is a live arena header in bucket `n`.
    unsafe fn bucket_out(&mut self, h: *mut Header, n: usize) {
        // SAFETY: `n < SLOTS` and `h` is in that bucket (caller).
        let list = unsafe { self.by_free.get_unchecked_mut(n) };
        // SAFETY: as above.
        unsafe { list.remove(h, bucket_links) };
        if list.head.is_null() {
            self.nonempty &= !(1 << n);
        }
    }

    /// Hands out one pool slot: `POOL_SIZE` bytes, `POOL_SIZE`-aligned, exclusively the
    /// caller's until given back with [`Arenas::free_pool`], with whether it reads zero.
    /// `None` if the platform refuses memory; the manager is unchanged but for a possibly
    /// new, empty arena.
    pub fn alloc_pool<P: Platform>(&mut self, platform: &P) -> Option<(NonNull<u8>, bool)> {
        // Bucket 0 holds full arenas; the lowest other bucket holds the fullest with room.
        let with_room = self.nonempty & !1;
        let h = if with_room != 0 {
            // SAFETY: bit n set means bucket n is not empty (A1).
            unsafe {
                self.by_free
                    .get_unchecked(with_room.trailing_zeros() as usize)
                    .head
            }
        } else {
            self.new_arena(platform)?
        };
        // SAFETY: `h` is a live arena with a free slot (bucket >= 1); the slot chosen is free
        // and becomes the caller's.
        unsafe {
            let (free, dirty) = ((*h).free, (*h).dirty);
            let was_dirty = dirty != 0;
            let index = if was_dirty {
                dirty.trailing_zeros()
            } else {
                free.trailing_zeros()
            };
            let slot = Self::slot(h, index);
            if !was_dirty && !platform.commit(slot, POOL_SIZE) {
                return None;
            }
            let n = Self::free_count(h);
            self.bucket_out(h, n);
            (*h).free &= !(1 << index);
            if was_dirty {
                (*h).dirty &= !(1 << index);
                self.dirty_slots -= 1;
                if (*h).dirty == 0 {
                    self.dirty.remove(h, dirty_links);
                }
            }
            if n == POOLS_PER_ARENA {
                self.empty -= 1;
            }
            self.bucket_in(h, n - 1);
            Some((slot, !was_dirty && P::ZERO_FILLED))
        }
    }

    /// Maps, registers and buckets a new, empty arena.
    fn new_arena<P: Platform>(&mut self, platform: &P) -> Option<*mut Header> {
        let base = platform.reserve(ARENA_SIZE, ARENA_SIZE)?;
        let h = base.cast::<Header>();
        // SAFETY: a fresh reservation, exclusively ours, large and aligned enough for a header.
        unsafe {
            h.write(Header {
                free: USABLE,
                dirty: 0,
                bucket: Links {
                    prev: ptr::null_mut(),
                    next: ptr::null_mut(),
                },
                dirty_list: Links {
                    prev: ptr::null_mut(),
                    next: ptr::null_mut(),
                },
            });
        }
        if self
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
        // SAFETY: a live header in no bucket, every pool slot free.
        unsafe { self.bucket_in(h.as_ptr(), POOLS_PER_ARENA) };
        Some(h.as_ptr())
    }

    /// Takes back a pool slot. Its contents are given up; it may go to any size class next.
    ///
    /// # Safety
    /// `slot` came from [`Arenas::alloc_pool`] on this manager and is no longer used.
    pub unsafe fn free_pool<P: Platform>(&mut self, slot: NonNull<u8>, platform: &P) {
        let h = Self::header_of(slot);
        let index = (slot.addr().get() - h.addr()) / POOL_SIZE;
        let bit = 1u64 << index;
        // SAFETY: `slot` is a pool slot of a live arena of ours (caller), so `h` is its header.
        unsafe {
            ensure(
                slot.addr().get() % POOL_SIZE == 0,
                "free_pool: not a slot address",
            );
            ensure(
                USABLE & bit != 0 && (*h).free & bit == 0,
                "free_pool: slot is not in use",
            );
            let n = Self::free_count(h);
            self.bucket_out(h, n);
            (*h).free |= bit;
            if (*h).dirty == 0 {
                self.dirty.push_back(h, dirty_links);
            }
            (*h).dirty |= bit;
            self.dirty_slots += 1;
            if n + 1 == POOLS_PER_ARENA {
                self.empty += 1;
                if self.empty > MAX_EMPTY_ARENAS {
                    self.release_arena(h, platform);
                    return;
                }
            }
            self.bucket_in(h, n + 1);
        }
        if self.dirty_slots > DIRTY_LIMIT {
            self.purge(platform, DIRTY_LIMIT / 2);
        }
    }

    /// Unmaps an empty arena that is in no bucket.
    ///
    /// # Safety
    /// `h` is a live, empty arena of ours, in no bucket.
    unsafe fn release_arena<P: Platform>(&mut self, h: *mut Header, platform: &P) {
        // SAFETY: live header (caller); after this nothing refers to the arena.
        unsafe {
            if (*h).dirty != 0 {
                self.dirty_slots -= (*h).dirty.count_ones() as usize;
                self.dirty.remove(h, dirty_links);
            }
            self.radix.remove(h.addr());
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
            unsafe {
                while (*h).dirty != 0 {
                    let d = (*h).dirty;
                    let start = d.trailing_zeros();
                    let len = (!(d >> start)).trailing_zeros();
                    let run = (u64::MAX >> (u64::BITS - len)) << start;
                    if !platform.decommit(Self::slot(h, start), len as usize * POOL_SIZE) {
                        return;
                    }
                    (*h).dirty &= !run;
                    self.dirty_slots -= len as usize;
                }
                self.dirty.remove(h, dirty_links);
            }
        }
    }

    /// Gives back what is not needed: decommits every dirty free slot and unmaps every empty
    /// arena.
    pub fn trim<P: Platform>(&mut self, platform: &P) {
        let bucket = POOLS_PER_ARENA;
        while self.nonempty & (1 << bucket) != 0 {
            let h = self.by_free[bucket].head;
            // SAFETY: `h` is a live, empty arena in bucket `bucket`.
            unsafe {
                self.bucket_out(h, bucket);
                self.release_arena(h, platform);
            }
        }
        self.purge(platform, 0);
    }

    /// The pool slot in use that contains `addr`, found through the radix tree; `None` if the
    /// address is in no arena or in a slot that is not a pool.
    pub fn pool_slot(&self, addr: usize) -> Option<NonNull<u8>> {
        let h = self.radix.get(addr)?.as_ptr();
        let index = (addr - h.addr()) / POOL_SIZE;
        // SAFETY: the radix tree maps only live arenas (A4), and reading the bitmap is
        // serialised with its writers by the caller's `&self`.
        let in_use = unsafe { USABLE & !(*h).free } & (1 << index) != 0;
        in_use.then(|| Self::slot(h, index as u32))
    }

    /// Visits every pool slot in use.
    pub fn for_each_pool(&self, mut f: impl FnMut(NonNull<u8>)) {
        for list in &self.by_free {
            // SAFETY: bucketed headers are live (A1).
            unsafe {
                list.for_each(bucket_links, |h| {
                    let mut used = USABLE & !(*h).free;
                    while used != 0 {
                        f(Self::slot(h, used.trailing_zeros()));
                        used &= used - 1;
                    }
                });
            }
        }
    }

    /// Current figures.
    pub fn stats(&self) -> ArenaStats {
        let free_slots: usize = (0..SLOTS).map(|n| n * self.bucket_len(n)).sum();
        ArenaStats {
            arenas: self.arenas,
            empty_arenas: self.empty,
            pools_in_use: self.arenas * POOLS_PER_ARENA - free_slots,
            free_dirty_slots: self.dirty_slots,
            free_clean_slots: free_slots - self.dirty_slots,
            mapped_bytes: self.arenas * ARENA_SIZE + self.radix.node_bytes_in_use(),
        }
    }

    fn bucket_len(&self, n: usize) -> usize {
        let mut len = 0;
        // SAFETY: bucketed headers are live (A1).
        unsafe { self.by_free[n].for_each(bucket_links, |_| len += 1) };
        len
    }

    /// Checks invariants A1 to A4.
    pub fn check(&self) -> Result<(), &'static str> {
        let (mut arenas, mut empty, mut dirty_slots, mut dirty_arenas) = (0, 0, 0, 0);
        let mut result = Ok(());
        for (n, list) in self.by_free.iter().enumerate() {
            if (self.nonempty >> n & 1 == 1) == list.head.is_null() {
                return Err("arenas: non-empty bucket bitmap disagrees with the buckets");
            }
            // SAFETY: bucketed headers are live (A1).
            unsafe {
                list.for_each(bucket_links, |h| {
                    let (free, dirty) = ((*h).free, (*h).dirty);
                    arenas += 1;
                    empty += (n == POOLS_PER_ARENA) as usize;
                    dirty_slots += dirty.count_ones() as usize;
                    dirty_arenas += (dirty != 0) as usize;
                    if free.count_ones() as usize != n {
                        result = Err("arenas: arena in the wrong bucket");
                    } else if free & !USABLE != 0 || dirty & !free != 0 {
                        result = Err("arenas: dirty slots not free, or header slot free");
                    } else if self.radix.get(h.addr()).map(NonNull::as_ptr) != Some(h) {
                        result = Err("arenas: radix tree does not map the arena to its header");
                    }
                });
            }
            result?;
        }
        let mut listed = 0;
        // SAFETY: headers in the dirty list are live (A3).
        unsafe {
            self.dirty
                .for_each(dirty_links, |h| listed += ((*h).dirty != 0) as usize)
        };
        if arenas != self.arenas || empty != self.empty {
            return Err("arenas: arena or empty-arena count is off");
        }
        if dirty_slots != self.dirty_slots || listed != dirty_arenas {
            return Err("arenas: dirty slot count or dirty list is off");
        }
        Ok(())
    }

    /// Unmaps every arena and the radix tree's nodes, whatever they hold.
    ///
    /// # Safety
    /// Nothing handed out by this manager is used any more.
    pub unsafe fn release_all<P: Platform>(&mut self, platform: &P) {
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
        unsafe { self.radix.release_nodes(&PlatformNodes(platform)) };
        *self = Arenas::new();
    }
}
