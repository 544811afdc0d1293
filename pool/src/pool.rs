//! The pool: `class.pool_bytes()` of memory — one slot of [`POOL_SIZE`] bytes, or a span of
//! several consecutive slots — carved into blocks of one size class. Its header is not in
//! that memory: pools live in arenas of [`ARENA_SIZE`] bytes, aligned to their size, whose
//! first [`HEADER_SLOTS`](crate::HEADER_SLOTS) slots hold no pool. From [`DESCRIPTORS`] on
//! they hold one 64-byte line per slot: the *descriptor* of the pool that starts there, if
//! one does — what every free of one of its blocks reads, from any thread — and in its last
//! four bytes the slot's *first-slot entry*, which names the first slot of the pool that
//! holds the slot (by the offset of that slot's line). [`HOT_OFFSET`] further on, each slot
//! has a line of its own for its pool's *hot record*: the freelist, the count of blocks in
//! use and the list links, which the pool's holder writes on every allocation and free.
//!
//! ```text
//! arena: | slots 0-1: header | lines of slots | hot records | slot 2 | slot 3 | …
//! line:  | descriptor (50 bytes) ... | first-slot entry |
//! hot:   | freelist, links, count ...                    |
//! pool:  | gap | block 0 | block 1 | ... | never used ... |
//!        ^ a slot's start   ^ bump offset from here   ^ limit bytes from here to the end
//!              ^ memory: the first block, `class.first_block()` in (48 bytes for a small class)
//! ```
//!
//! Out of line, the descriptors of an arena's pools share a page and sit in consecutive cache
//! lines. At the start of each pool, 16 KiB apart, they would all fall in the same few sets
//! of a set-associative cache and evict one another on every allocation.
//!
//! A span may start at any slot, so that a free run of slots anywhere in an arena can take
//! it; the first-slot entries are how the pool of a block is found from the block's address
//! alone. For a pool of one slot the entry shares the descriptor's cache line, so a free
//! touches one line of metadata. The arena manager writes the entries when it hands out and
//! takes back slots; this crate only reads them, and never writes that word of a line.
//!
//! Invariants of a live pool (checked by [`PoolPtr::check`]):
//! - P1 the pool's memory starts at a slot of an arena aligned to [`ARENA_SIZE`], its
//!   descriptor is the one of its first slot (and keeps the address of the pool's first
//!   block, `class.first_block()` past the memory's start, for carving), and the first-slot
//!   entries of all its slots name that slot, so the descriptor of any block is found from
//!   the block's address alone ([`PoolPtr::containing`]).
//! - P2 every block starts at `k * size` from the first block and ends by `limit` from it,
//!   the pool's end.
//! - P3 blocks below `bump` are either in use or on the freelist, never both; blocks at or
//!   above `bump` have never been handed out (the pool is carved lazily, like obmalloc's).
//! - P4 `used` + freelist length = number of blocks below `bump`.
//! - P5 the pool is *full* exactly when its freelist is empty and no block is left to carve.
//! - P6 if `fresh`, the memory from `bump` to the end of the pool reads zero.
//! - P7 `owner` is set when the pool is created or reused and does not change while a block
//!   is in use; other threads read it (atomically) to learn where a block they free must go.
//! - P8 `class` holds the index of a size class, and it and `used` are written only by
//!   whoever has the pool (a load and a store, no read-modify-write) but are atomics, so that
//!   statistics may read them from any thread, for a figure of some recent moment. Every
//!   other field belongs to whoever has the pool.
//! - P9 every block on the freelist holds its *freed mark* (`mark.rs`: its address XOR a
//!   per-process key) in its second word, written by the [`PoolPtr::free`] that put it there
//!   (or by the remote free that sent it back, `remote.rs`); every block handed out has that
//!   word cleared. So a free of a block that holds its mark is a double free; the freelist
//!   walk ([`PoolPtr::on_freelist`]) only says where the block is, for the message.
//! - P10 `bump` only grows while a block of the pool is in use; `carved`, the blocks below
//!   it, is `bump / size`, stored beside it so that a free tests a pointer with one
//!   comparison ([`carved_block_at`]). Both are atomic, so that any thread may test whether a
//!   pointer starts a block handed out ([`PoolPtr::starts_carved_block`]): a pointer past
//!   the blocks carved, or inside a block, is none.
//!
//! And of every arena (checked by the arena manager, [`slot_zero_line_is_clear`]):
//! - P11 the line of slot 0, which starts no pool, is never written and reads zero: as a
//!   descriptor it has a bump offset of 0, so [`PoolPtr::of_block`] may follow a first-slot
//!   entry of 0 (a free slot's) to it and find no block carved, without testing the entry.
//! - P12 (by construction: the geometry's compile-time checks) a pool's hot record (freelist
//!   head, list links, count of blocks in use) is
//!   [`HOT_OFFSET`] past its descriptor, on a line of its own; the pool's holder writes it,
//!   other threads read only the count (statistics). So a free from another thread reads
//!   the descriptor's line, which the holder writes only when it formats the pool and while
//!   it first carves the pool's blocks (the bump offset), and never the line the holder
//!   writes on every allocation and free.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicU16, AtomicU32, Ordering};

use crate::asan;
use crate::class::{ALIGNMENT, MAX_SPAN_SLOTS, POOLED_MAX, SizeClass};
use crate::fatal::{ensure, fatal};
use crate::geometry::{
    ARENA_SIZE, DESCRIPTOR_BYTES, DESCRIPTORS, FIRST_SLOT_ENTRY, HOT_OFFSET, POOL_SIZE,
    entry_naming, first_slot_entry, first_slot_of, line_of, slot_index,
};
use crate::list::{Chain, Links, List};
use crate::mark::{self, FreedMark, clear_freed_mark, holds_freed_mark};
use crate::secure::{self, read_link, write_link};

const _: () = assert!(POOL_SIZE >= ALIGNMENT);
const _: () = assert!(
    size_of::<Pool>() <= FIRST_SLOT_ENTRY && align_of::<Pool>() <= DESCRIPTOR_BYTES,
    "a descriptor ends before its line's first-slot entry"
);

/// Number of blocks of `class` that fit in one pool.
pub const fn blocks_per_pool(class: SizeClass) -> usize {
    class.block_bytes() / class.block_size()
}

/// Whether the line of slot 0 of the arena that starts at `arena` reads zero (P11).
///
/// # Safety
/// `arena` is the start of a mapped arena (with its provenance).
pub unsafe fn slot_zero_line_is_clear(arena: NonNull<u8>) -> bool {
    let line = descriptor_at(arena, 0).cast::<u64>();
    // SAFETY: the line lies in the arena's header slot, mapped (caller); read as words,
    // atomically where others may write (slot 0's entry word is only ever 0).
    (0..DESCRIPTOR_BYTES / 8).all(|i| unsafe { line.add(i).read_volatile() } == 0)
}

/// Points the first-slot entries (P1) of the `slots` slots from the one that holds `first` on
/// at `head`: the index of the first slot of the pool they now belong to, or 0 for free slots.
///
/// # Safety
/// Those slots lie in one arena (with its provenance), whose header slot is mapped and
/// writable.
#[inline]
pub unsafe fn set_first_slot_entries(first: NonNull<u8>, slots: usize, head: u8) {
    let entry = first_slot_entry(first);
    let head = entry_naming(head);
    for i in 0..slots {
        // SAFETY: the entries of consecutive slots lie one line apart in the arena's header
        // slot, which holds the entries of all its slots (caller). Relaxed suffices: a reader
        // that holds a block of the pool got it after the pool was handed out, through
        // whatever synchronisation passed the block along; any other reader gets no promise.
        unsafe { entry.byte_add(i * DESCRIPTOR_BYTES).as_ref() }.store(head, Ordering::Relaxed);
    }
}

/// The descriptor of slot `slot` of the arena that holds `address`.
#[inline(always)]
fn descriptor_at(address: NonNull<u8>, slot: usize) -> NonNull<Pool> {
    line_of(address, slot).cast()
}

/// The descriptor that the first-slot entry of the slot holding `address` names (P1): for
/// a slot in no pool, the line of slot 0 (P11). Relaxed suffices: the entry was written
/// before the pool was handed out, which happened before any caller that holds one of its
/// blocks got it; any other caller gets a hint (the entry is atomic).
///
/// # Safety
/// `address` lies in a mapped arena (with its provenance).
#[inline(always)]
unsafe fn named_descriptor(address: NonNull<u8>) -> NonNull<Pool> {
    // SAFETY: the entry lies in the arena's header slot, mapped (caller).
    let offset = unsafe { first_slot_entry(address).as_ref() }.load(Ordering::Relaxed);
    let line = address
        .as_ptr()
        .map_addr(|a| (a & !(ARENA_SIZE - 1)) + DESCRIPTORS + offset as usize);
    // SAFETY: an address inside an arena, at least `DESCRIPTORS` above its nonzero start.
    unsafe { NonNull::new_unchecked(line) }.cast()
}

/// The descriptor of the pool whose memory starts at `memory`, a slot of an arena (P1).
#[inline(always)]
pub(crate) fn descriptor_of(memory: NonNull<u8>) -> NonNull<Pool> {
    descriptor_at(memory, slot_index(memory.addr().get()))
}

/// A pool's descriptor, in the first slot of the pool's arena. Its fields are ordered
/// widest first, so that it ends before its line's first-slot entry.
#[repr(C)]
pub struct Pool {
    /// The heap that owns the pool, opaque to this crate (invariant P7).
    owner: AtomicPtr<()>,
    /// `ceil(2^RECIPROCAL_SHIFT / size)`: whether an offset in the pool is a multiple of the
    /// block size is a multiplication ([`carved_block_at`]).
    reciprocal: u64,
    /// The first block's offset in its arena times `reciprocal` ([`Grid::of`]), so that
    /// [`carved_block_at`] starts from an address's offset in the arena.
    origin: u64,
    /// Where the pool's first block starts, [`PoolPtr::first_block`] (P1): a function of
    /// where the descriptor lies and of the class, stored so that carving a block is one
    /// addition.
    memory: *mut u8,
    /// Offset of the first never-used block (P10). Written only by whoever has the pool,
    /// with a load and a store.
    bump: AtomicU32,
    /// Blocks below `bump` (P10), written with it; read by any thread that frees a pointer
    /// into the pool.
    carved: AtomicU32,
    /// Block size of `class`, kept here so the fast path need not look it up.
    size: u32,
    /// Bytes from the first block to the pool's end: `class.block_bytes()`.
    limit: u32,
    /// The index of the pool's [`SizeClass`].
    class: AtomicU8,
    /// Whether the never-used part of the pool reads zero (invariant P6).
    fresh: bool,
}

/// What the pool's holder writes on every allocation and free — the freelist and the count
/// of blocks in use — and its list links: the pool's *hot record*, a cache line of its own
/// [`HOT_OFFSET`] past its descriptor's (P12), so that a thread freeing one of the pool's
/// blocks, which reads the descriptor, reads no line the holder writes on its fast paths.
#[repr(C)]
struct Hot {
    /// Head of the freelist; each free block's first word holds the next free block.
    free: *mut u8,
    /// Links in the list of usable pools of this class (see [`PoolList`]).
    links: Links<Pool>,
    /// Blocks handed out and not yet freed (at most 1 024: 16 KiB of 16-byte blocks). Like
    /// `class`, written only by whoever has the pool (with a load and a store, no
    /// read-modify-write) and atomic so that statistics may read it from any thread (P8).
    used: AtomicU16,
}

const _: () = assert!(
    size_of::<Hot>() <= DESCRIPTOR_BYTES && align_of::<Hot>() <= DESCRIPTOR_BYTES,
    "a hot record fits its line"
);

/// The hot record of the pool whose descriptor is `p` (P12): a constant offset further, so
/// that it costs no instruction where the descriptor is at hand.
#[inline(always)]
fn hot(p: *mut Pool) -> *mut Hot {
    // (Inside the arena: `HOT_OFFSET` past a line is inside the header slots.)
    p.cast::<u8>().wrapping_add(HOT_OFFSET).cast()
}

const _: () = assert!(
    POOL_SIZE / ALIGNMENT <= u16::MAX as usize,
    "a pool's count of blocks in use fits `used`"
);

/// Counts one more block in use in the pool `p`: a load and a store, as only whoever has the
/// pool writes the count (P8).
///
/// # Safety
/// `p` is a live pool the caller has exclusive access to.
#[inline(always)]
unsafe fn add_used(p: *mut Pool) {
    // SAFETY: the pool is live (caller).
    let used = unsafe { &(*hot(p)).used };
    used.store(used.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Moves the bump offset of the pool `p` on by `blocks` blocks, and the count of blocks
/// carved with it (P10): a load and a store each, as only whoever has the pool writes them.
///
/// # Safety
/// `p` is a live pool the caller has exclusive access to, with room for `blocks` more blocks.
#[inline(always)]
unsafe fn advance_bump(p: *mut Pool, blocks: u32) {
    // SAFETY: the pool is live and ours (caller).
    unsafe {
        let (bump, carved) = (&(*p).bump, &(*p).carved);
        bump.store(
            bump.load(Ordering::Relaxed) + blocks * (*p).size,
            Ordering::Relaxed,
        );
        carved.store(carved.load(Ordering::Relaxed) + blocks, Ordering::Relaxed);
    }
}

/// See [`Pool::reciprocal`].
const RECIPROCAL_SHIFT: u32 = 40;

// `offset * ceil(2^s / size) >> s` is `offset / size` while `offset * size <= 2^s`: offsets
// stay below the widest pool and sizes at most the largest class.
const _: () = assert!(
    ((MAX_SPAN_SLOTS * POOL_SIZE) as u64)
        .checked_mul(POOLED_MAX as u64)
        .is_some()
        && (MAX_SPAN_SLOTS * POOL_SIZE) as u64 * POOLED_MAX as u64 <= 1 << RECIPROCAL_SHIFT
);

/// The reciprocal of a block size, for [`is_block_offset`].
pub(crate) const fn reciprocal(size: usize) -> u64 {
    (1u64 << RECIPROCAL_SHIFT).div_ceil(size as u64)
}

/// Below `2^GRID_SHIFT`, the low [`RECIPROCAL_SHIFT`] bits of `offset * reciprocal` say that
/// `offset` is a multiple of the block size ([`block_index`]).
const GRID_SHIFT: u32 = 20;
const ON_GRID: u64 = 1 << GRID_SHIFT;

// For `offset = j * size + r` (`r < size`) inside a pool of `limit` bytes, with `reciprocal =
// R = (2^s + e) / size` (`e < size`), `offset * R = j * 2^s + j * e + r * R`. Its low `s` bits
// are `j * e + r * R`, which does not reach 2^s (`r * R <= 2^s + e - R` and `j * e < limit`,
// while `e + limit <= R`). It is below `limit` when `r == 0`, and at least `R >= 2^s /
// POOLED_MAX` otherwise: `ON_GRID` lies between the two.
const _: () = assert!(
    (MAX_SPAN_SLOTS * POOL_SIZE) as u64 <= ON_GRID
        && ON_GRID <= (1u64 << RECIPROCAL_SHIFT) / POOLED_MAX as u64
        && (POOLED_MAX + MAX_SPAN_SLOTS * POOL_SIZE) as u64
            <= (1u64 << RECIPROCAL_SHIFT) / POOLED_MAX as u64
);

/// For `q = offset * R`, the product of an `offset` below the widest pool and the
/// reciprocal `R` of a block size: the index of the block that starts at `offset` if it is
/// on the block grid, and a number of at least `2^(64 - s)` (more than any pool's blocks:
/// `j < 2^(64 - s)`) if it is not. Of `q = j * 2^s + low` (see above), dropping the low
/// `GRID_SHIFT` bits and rotating the rest by `s - GRID_SHIFT` brings `j` to the bottom and
/// the bits of `low` that must be zero on the grid to the top.
#[inline(always)]
fn block_index(q: u64) -> u64 {
    (q >> GRID_SHIFT).rotate_right(RECIPROCAL_SHIFT - GRID_SHIFT)
}

/// A pool's block grid, as its descriptor keeps it: the reciprocal of the block size and
/// the pool's origin (see [`Pool::origin`]).
struct Grid {
    reciprocal: u64,
    origin: u64,
}

impl Grid {
    /// The grid of blocks of `size` bytes from `first`, a pool's first block.
    fn of(first: NonNull<u8>, size: usize) -> Grid {
        let reciprocal = reciprocal(size);
        // Below 2^21 times below 2^37: no overflow.
        let origin = (first.addr().get() & (ARENA_SIZE - 1)) as u64 * reciprocal;
        Grid { reciprocal, origin }
    }
}

/// Whether the address at `arena_offset` in its arena starts a block carved so far of the
/// pool `p`, from whose first block it lies less than the widest pool (`MAX_SPAN_SLOTS`
/// slots) further on: on the block grid (P2), below the bump offset (P10) — one comparison
/// of [`block_index`] with the blocks carved, the product taken from the arena's start less
/// the pool's origin. An address before the first block (at most a slot before it) makes a
/// negative product, whose index is at least `2^24 - 4`: no block.
///
/// # Safety
/// `p` is a live pool. The grid is fixed while a block of the pool is in use, and the count
/// of blocks carved atomic, so for a pool the caller holds no block of the answer is a hint.
#[inline(always)]
unsafe fn carved_block_at(p: *const Pool, arena_offset: usize) -> bool {
    // SAFETY: the pool is live (caller).
    let (carved, reciprocal, origin) = unsafe {
        (
            (*p).carved.load(Ordering::Relaxed),
            (*p).reciprocal,
            (*p).origin,
        )
    };
    // `(arena_offset - first) * R`, as `first * R` is the origin.
    let q = (arena_offset as u64)
        .wrapping_mul(reciprocal)
        .wrapping_sub(origin);
    block_index(q) < u64::from(carved)
}

/// What a free did to its pool's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freed {
    /// The pool was full before (so it was in no list, and now has a block to hand out).
    pub was_full: bool,
    /// The last block in use came back: the whole pool is free. A pool of one block is both
    /// `was_full` and `now_empty`.
    pub now_empty: bool,
}

impl Freed {
    /// Whether the pool changed state: it was full, or it is now empty.
    #[inline(always)]
    pub fn changed_state(self) -> bool {
        self.was_full | self.now_empty
    }
}

/// A pointer to a live pool's descriptor. All access goes through raw pointers that carry the
/// provenance of the whole arena, so blocks derived from it may cover the entire pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolPtr(NonNull<Pool>);

impl PoolPtr {
    /// Formats `memory` as an empty pool of `class` owned by `owner`, writing its descriptor.
    ///
    /// # Safety
    /// `memory` is the first of `class.span_slots()` consecutive slots of an arena (P1), whose
    /// first-slot entries name it; they are `class.pool_bytes()` writable bytes that the
    /// caller owns exclusively, that no other thread reads, and that stay mapped while the
    /// pool is used; if `fresh`, they read zero. The slot's descriptor is writable and the
    /// caller's too.
    pub unsafe fn init(
        memory: NonNull<u8>,
        class: SizeClass,
        fresh: bool,
        owner: *mut (),
    ) -> PoolPtr {
        ensure(
            memory.addr().get() % POOL_SIZE == 0,
            "pool memory does not start at a slot",
        );
        // Before the pool's first block exists, so before any mark is written (M1).
        mark::draw_key();
        let pool = descriptor_of(memory);
        // SAFETY: the first block lies inside the pool's first slot (`first_block`).
        let first = unsafe { memory.add(class.first_block()) };
        let grid = Grid::of(first, class.block_size());
        // SAFETY: the caller guarantees the descriptor is writable and ours.
        unsafe {
            hot(pool.as_ptr()).write(Hot {
                free: ptr::null_mut(),
                links: Links::UNLINKED,
                used: AtomicU16::new(0),
            });
            pool.write(Pool {
                bump: AtomicU32::new(0),
                carved: AtomicU32::new(0),
                size: class.block_size() as u32,
                limit: class.block_bytes() as u32,
                class: AtomicU8::new(class.index() as u8),
                fresh,
                owner: AtomicPtr::new(owner),
                reciprocal: grid.reciprocal,
                origin: grid.origin,
                memory: first.as_ptr(),
            });
        }
        asan::poison(memory.as_ptr(), class.pool_bytes());
        PoolPtr(pool)
    }

    /// The pool's memory, to go back to the arenas: the pool is no more.
    ///
    /// # Safety
    /// `self` is a live pool with no block in use, exclusively the caller's.
    pub unsafe fn retire(self) -> NonNull<u8> {
        // SAFETY: the pool is live (caller).
        asan::unpoison(self.memory().as_ptr(), unsafe { self.pool_bytes() });
        self.memory()
    }

    /// Formats an empty pool of the same size as a pool of `class`, keeping its owner; its
    /// memory is not known to read zero. Unlike [`PoolPtr::init`], this leaves the `owner`
    /// field alone, so other threads may read it meanwhile.
    ///
    /// # Safety
    /// `self` is a live pool with no block in use, exclusively the caller's, and
    /// `class.pool_bytes()` is its size.
    pub unsafe fn reinit(self, class: SizeClass) {
        let p = self.0.as_ptr();
        // SAFETY: the pool is live and the caller's (caller); each field is written on its
        // own so that `owner` is never written non-atomically.
        unsafe {
            ensure(
                self.pool_bytes() == class.pool_bytes()
                    && (*hot(p)).used.load(Ordering::Relaxed) == 0,
                "pool reused for a class of another size, or with blocks in use",
            );
            (*hot(p)).free = ptr::null_mut();
            (*hot(p)).links = Links::UNLINKED;
            (*p).bump.store(0, Ordering::Relaxed);
            (*p).carved.store(0, Ordering::Relaxed);
            (*p).size = class.block_size() as u32;
            self.set_grid(class);
            (*p).class.store(class.index() as u8, Ordering::Relaxed);
            (*p).fresh = false;
            asan::poison(self.memory().as_ptr(), class.pool_bytes());
        }
    }

    /// Turns a pool whose only block is in use into a pool of `class`, whose pools hold one
    /// block too, keeping that block where it is (now a block of `class`): for a block that
    /// grows or shrinks in place once the arenas have resized the pool's span to
    /// `class.pool_bytes()`.
    ///
    /// # Safety
    /// `self` is a live pool, exclusively the caller's, holding one block, in use at its
    /// start; its span now covers `class.pool_bytes()` and its first-slot entries are set
    /// (P1).
    pub unsafe fn reclass_sole_block(self, class: SizeClass) {
        let p = self.0.as_ptr();
        // SAFETY: the pool is live and the caller's (caller); `owner` is left alone.
        unsafe {
            ensure(
                (*hot(p)).used.load(Ordering::Relaxed) == 1
                    && (*p).bump.load(Ordering::Relaxed) == (*p).size
                    && (*hot(p)).free.is_null()
                    && (*p).limit.checked_div((*p).size) == Some(1)
                    && blocks_per_pool(class) == 1
                    && self.first_block() == self.memory()
                    && class.first_block() == 0,
                "reclass_sole_block: the pool or the class holds more than one block",
            );
            let (old_limit, limit) = (self.pool_bytes(), class.pool_bytes());
            (*p).size = class.block_size() as u32;
            (*p).bump.store((*p).size, Ordering::Relaxed);
            (*p).carved.store(1, Ordering::Relaxed);
            self.set_grid(class);
            (*p).class.store(class.index() as u8, Ordering::Relaxed);
            (*p).fresh = false;
            // The block is usable whole; the tail, never carved, is not; slots given back
            // are unpoisoned, as pools going back to the arenas are.
            let memory = self.memory().as_ptr();
            asan::unpoison(memory, old_limit.max(limit));
            asan::poison(memory.add(class.block_size()), limit - class.block_size());
        }
    }

    /// Writes the first block, the bytes from it to the pool's end and the grid of blocks of
    /// `class` into the descriptor.
    ///
    /// # Safety
    /// `self` is a live pool, exclusively the caller's, with no block in use or (when it is
    /// reclassed) one at its start, which every grid of one block has.
    unsafe fn set_grid(self, class: SizeClass) {
        // SAFETY: the first block lies inside the pool's first slot (`first_block`).
        let first = unsafe { self.memory().add(class.first_block()) };
        let grid = Grid::of(first, class.block_size());
        let p = self.0.as_ptr();
        // SAFETY: as the caller guarantees.
        unsafe {
            (*p).memory = first.as_ptr();
            (*p).limit = class.block_bytes() as u32;
            (*p).reciprocal = grid.reciprocal;
            (*p).origin = grid.origin;
        }
    }

    /// Bytes of the pool's memory, its gap before the first block included.
    ///
    /// # Safety
    /// `self` is a live pool.
    unsafe fn pool_bytes(self) -> usize {
        let p = self.0.as_ptr();
        // SAFETY: the pool is live (caller); `limit` counts from the first block, which lies
        // `first_block - memory` bytes into the pool (P1, P2).
        unsafe {
            (*p).limit as usize + (self.first_block().addr().get() - self.memory().addr().get())
        }
    }

    /// The heap that owns the pool (invariant P7).
    ///
    /// # Safety
    /// `self` is a live pool.
    #[inline(always)]
    pub unsafe fn owner(self) -> *mut () {
        // SAFETY: the pool is live (caller); `owner` is only ever accessed atomically once the
        // pool exists.
        unsafe { (*self.0.as_ptr()).owner.load(Ordering::Relaxed) }
    }

    /// The pool that contains `block`, found through its slot's first-slot entry (P1).
    ///
    /// # Safety
    /// `block` lies in a live pool, from which the caller holds a block in use.
    #[inline(always)]
    pub unsafe fn containing(block: NonNull<u8>) -> PoolPtr {
        // SAFETY: the block's arena is mapped (caller).
        PoolPtr(unsafe { named_descriptor(block) })
    }

    /// The pool in use that holds `address`, through its slot's first-slot entry (P1); `None`
    /// for a slot in no pool (or the header slot). For an address inside a block the caller
    /// holds the answer is exact; for any other address inside a mapped arena it is a hint
    /// that is never undefined behaviour (the entry is atomic).
    ///
    /// # Safety
    /// `address` lies in a mapped arena.
    #[inline(always)]
    pub unsafe fn holding(address: NonNull<u8>) -> Option<PoolPtr> {
        // SAFETY: the arena is mapped (caller).
        let p = unsafe { named_descriptor(address) };
        (p != descriptor_at(address, 0)).then_some(PoolPtr(p))
    }

    /// The pool in use of which `address` starts a block carved so far: [`PoolPtr::holding`]
    /// and [`PoolPtr::starts_carved_block`] at once, the offset taken from the first-slot
    /// entry rather than recomputed from the descriptor. Exact for a block the caller holds; a
    /// hint that is never undefined behaviour for any other address inside a mapped arena.
    ///
    /// # Safety
    /// `address` lies in a mapped arena.
    #[inline(always)]
    pub unsafe fn of_block(address: NonNull<u8>) -> Option<PoolPtr> {
        // An entry of 0 (a free slot, or the header slot) leads to the line of slot 0, which
        // reads zero (P11): its count of blocks carved of 0 makes every offset uncarved, so
        // no test of the entry is needed.
        // SAFETY: the arena is mapped (caller).
        let p = unsafe { named_descriptor(address) };
        // The pool's memory starts at the slot the entry names (P1), and the address's slot
        // is one of the pool's, so it lies less than the widest pool further on
        // (`carved_block_at`).
        let arena_offset = address.addr().get() & (ARENA_SIZE - 1);
        // SAFETY: a nonzero entry names the first slot of a pool in use, whose descriptor is
        // live, and an entry of 0 the zero line of slot 0 (P11); a racing change for an
        // address the caller does not hold only makes this a hint.
        unsafe { carved_block_at(p.as_ptr(), arena_offset) }.then_some(PoolPtr(p))
    }

    /// The pool that starts at `memory`.
    ///
    /// # Safety
    /// A live pool starts at `memory`.
    #[inline]
    pub unsafe fn at(memory: NonNull<u8>) -> PoolPtr {
        PoolPtr(descriptor_of(memory))
    }

    /// Where the pool's first block starts: `class.first_block()` bytes into its memory (P1).
    ///
    /// # Safety
    /// `self` is a live pool.
    #[inline(always)]
    pub unsafe fn first_block(self) -> NonNull<u8> {
        // SAFETY: the pool is live (caller); its descriptor keeps the first block's address
        // (P1), inside an arena, so not null.
        unsafe { NonNull::new_unchecked((*self.0.as_ptr()).memory) }
    }

    /// The pool's memory: the slot it starts at (the inverse of `descriptor_of`).
    #[inline(always)]
    pub fn memory(self) -> NonNull<u8> {
        let memory = self.0.as_ptr().cast::<u8>().map_addr(|d| {
            let arena = d & !(ARENA_SIZE - 1);
            arena + (d - arena - DESCRIPTORS) / DESCRIPTOR_BYTES * POOL_SIZE
        });
        // SAFETY: a descriptor of slot `i >= 1` leads to an address `i` slots into the arena.
        unsafe { NonNull::new_unchecked(memory) }
    }

    /// Takes the head of the freelist if another block follows it, so that the pool keeps a
    /// block to hand out and nothing but the freelist and the count changes: the smallest fast
    /// path, for callers that inline it (Rust's `alloc`). `None` otherwise (the pool is
    /// unchanged), for [`PoolPtr::alloc_unless_last`] or [`PoolPtr::alloc`] to deal with.
    ///
    /// # Safety
    /// `self` is a live pool and the caller has exclusive access to it.
    #[inline(always)]
    pub unsafe fn alloc_unless_last_free(self) -> Option<NonNull<u8>> {
        let p = self.0.as_ptr();
        // SAFETY: the pool is live and ours (caller); freelist entries are blocks of this pool
        // whose first word holds the next entry (P3).
        unsafe {
            let block = NonNull::new((*hot(p)).free)?;
            asan::unpoison(block.as_ptr(), (*p).size as usize);
            let next = self.next_of(block);
            if next.is_null() {
                asan::poison(block.as_ptr(), (*p).size as usize);
                return None;
            }
            Some(self.take_head(block, next))
        }
    }

    /// Takes one block — the head of the freelist, else the next never-used block — if the
    /// pool still has a block to hand out afterwards (so that nothing but the freelist, the
    /// bump offset and the count changes): the fast path of C's `malloc`, and the first step
    /// past [`PoolPtr::alloc_unless_last_free`]. `None` otherwise (the pool is unchanged), for
    /// [`PoolPtr::alloc`] to deal with. Returns the block with whether it is
    /// known to read zero, as [`PoolPtr::alloc`].
    ///
    /// # Safety
    /// `self` is a live pool and the caller has exclusive access to it.
    #[inline(always)]
    pub unsafe fn alloc_unless_last(self) -> Option<(NonNull<u8>, bool)> {
        let p = self.0.as_ptr();
        // SAFETY: the pool is live and ours (caller); freelist entries are blocks of this pool
        // whose first word holds the next entry (P3), and carving stays inside the pool (P2).
        unsafe {
            if secure::ENABLED && (*hot(p)).free.is_null() && !self.carved_out() {
                self.carve_batch();
            }
            match NonNull::new((*hot(p)).free) {
                Some(block) => {
                    asan::unpoison(block.as_ptr(), (*p).size as usize);
                    let next = self.next_of(block);
                    if next.is_null() && self.carved_out() {
                        asan::poison(block.as_ptr(), (*p).size as usize);
                        return None;
                    }
                    Some((self.take_head(block, next), false))
                }
                None => {
                    // Another never-used block must remain after this one.
                    let bump = (*p).bump.load(Ordering::Relaxed);
                    if bump + 2 * (*p).size > (*p).limit {
                        return None;
                    }
                    Some(self.carve(bump))
                }
            }
        }
    }

    /// Takes one block: the head of the freelist, else the next never-used block. Returns it
    /// with whether it is known to read zero, or `None` if the pool is full.
    ///
    /// # Safety
    /// `self` is a live pool and the caller has exclusive access to it.
    #[inline(always)]
    pub unsafe fn alloc(self) -> Option<(NonNull<u8>, bool)> {
        let p = self.0.as_ptr();
        // SAFETY: the pool is live and ours (caller); freelist entries are blocks of this pool
        // whose first word holds the next entry (P3), and carving stays inside the pool (P2).
        unsafe {
            if secure::ENABLED && (*hot(p)).free.is_null() && !self.carved_out() {
                self.carve_batch();
            }
            if let Some(block) = NonNull::new((*hot(p)).free) {
                asan::unpoison(block.as_ptr(), (*p).size as usize);
                let next = self.next_of(block);
                return Some((self.take_head(block, next), false));
            }
            if self.carved_out() {
                return None;
            }
            Some(self.carve((*p).bump.load(Ordering::Relaxed)))
        }
    }

    /// Hands out `block`, the freelist's head (unpoisoned), whose successor is `next`: the
    /// head moves on, the count grows, and the block's freed mark is cleared (P9).
    ///
    /// # Safety
    /// `self` is a live pool the caller has exclusive access to; `block` is its freelist's
    /// head and `next` the link it holds.
    #[inline(always)]
    unsafe fn take_head(self, block: NonNull<u8>, next: *mut u8) -> NonNull<u8> {
        let p = self.0.as_ptr();
        // SAFETY: the pool is live and ours, and `block` one of its free blocks (caller).
        unsafe {
            if secure::ENABLED && !holds_freed_mark(block) {
                fatal("secure: a free block's freed mark was overwritten (write after free)");
            }
            (*hot(p)).free = next;
            add_used(p);
            clear_freed_mark(block);
        }
        block
    }

    /// The link of `block`, a free block of this pool: the next one on the freelist, or
    /// null. Under the `secure` feature a link that leads anywhere but to a carved block of
    /// this pool was overwritten: reported, and the process aborts.
    ///
    /// # Safety
    /// `self` is a live pool the caller has exclusive access to, and `block` is on its
    /// freelist (unpoisoned).
    #[inline(always)]
    unsafe fn next_of(self, block: NonNull<u8>) -> *mut u8 {
        // SAFETY: a free block's first word is its link (P3).
        let next = unsafe { read_link(block) };
        if secure::ENABLED {
            if let Some(next) = NonNull::new(next) {
                // SAFETY: the pool is live (caller).
                if !unsafe { self.starts_carved_block(next) } {
                    fatal(
                        "secure: a freelist link was overwritten (heap overflow or write after \
                         free)",
                    );
                }
            }
        }
        next
    }

    /// Carves the next blocks — up to `secure::BATCH`, as many as are left — onto the empty
    /// freelist in a random order, each retired as a freed block is (`secure`, S2): the
    /// `secure` feature's way of carving, so that no program can tell where its next
    /// block will be.
    ///
    /// # Safety
    /// `self` is a live pool the caller has exclusive access to, with an empty freelist and
    /// a block left to carve, of a class of at least 32 bytes.
    #[cold]
    #[inline(never)]
    unsafe fn carve_batch(self) {
        let p = self.0.as_ptr();
        // SAFETY: the pool is live and ours; the blocks carved lie below its limit (P2) and
        // are never used, so ours to write.
        unsafe {
            let (size, limit) = ((*p).size as usize, (*p).limit as usize);
            let bump = (*p).bump.load(Ordering::Relaxed) as usize;
            let count = (limit - bump)
                .checked_div(size)
                .unwrap_or(0)
                .min(secure::BATCH);
            let memory = self.first_block();
            let order = secure::shuffled(count, memory.addr().get() ^ bump);
            advance_bump(p, count as u32);
            let mut head = (*hot(p)).free;
            for &i in order.iter().take(count) {
                let block = memory.add(bump + i as usize * size);
                asan::unpoison(block.as_ptr(), size);
                secure::retire(block, size);
                write_link(block, head);
                FreedMark::of(block).write();
                asan::poison(block.as_ptr(), size);
                head = block.as_ptr();
            }
            (*hot(p)).free = head;
        }
    }

    /// Hands out the never-used block at offset `bump`, the bump offset, which the caller has
    /// checked leaves room for it (P2), with whether it is known to read zero.
    ///
    /// # Safety
    /// `self` is a live pool the caller has exclusive access to, and a block fits at `bump`.
    #[inline(always)]
    unsafe fn carve(self, bump: u32) -> (NonNull<u8>, bool) {
        let p = self.0.as_ptr();
        // SAFETY: the pool is live and ours; the block lies inside it (caller).
        unsafe {
            // Published with the block: whoever is handed it sees it carved (P10).
            advance_bump(p, 1);
            add_used(p);
            let block = NonNull::new_unchecked((*p).memory.add(bump as usize));
            asan::unpoison(block.as_ptr(), (*p).size as usize);
            // Fresh memory reads zero already; other memory may hold a stale mark from a pool
            // of another class that had a block here.
            let fresh = (*p).fresh;
            if !fresh {
                clear_freed_mark(block);
            }
            (block, fresh)
        }
    }

    /// Whether no never-used block is left to carve.
    ///
    /// # Safety
    /// `self` is a live pool the caller has exclusive access to.
    #[inline(always)]
    unsafe fn carved_out(self) -> bool {
        let p = self.0.as_ptr();
        // SAFETY: the pool is live (caller).
        unsafe { (*p).bump.load(Ordering::Relaxed) + (*p).size > (*p).limit }
    }

    /// Whether no block is left to hand out (invariant P5).
    ///
    /// # Safety
    /// `self` is a live pool and the caller has exclusive access to it.
    #[inline(always)]
    pub unsafe fn is_full(self) -> bool {
        // SAFETY: the pool is live (caller).
        unsafe { (*hot(self.0.as_ptr())).free.is_null() && self.carved_out() }
    }

    /// Returns the block to the freelist, its freed mark written (P9).
    ///
    /// # Safety
    /// `self` is a live pool the caller has exclusive access to, and the block is the start
    /// of a block of this pool that is in use.
    #[inline(always)]
    pub unsafe fn free(self, freed: FreedMark) -> Freed {
        let block = freed.block();
        let p = self.0.as_ptr();
        // SAFETY: the pool is live and ours, `block` one of its blocks in use (caller); pushed
        // only with a block in use counted (ensured).
        unsafe {
            crate::debug_ensure!(
                self.starts_carved_block(block),
                "free: the block is not on its pool's grid below the bump (caller's promise)"
            );
            let used = (*hot(p)).used.load(Ordering::Relaxed);
            ensure(
                used != 0,
                "free into a pool with no block in use (double free)",
            );
            // The cheap half of a double-free check, as glibc's "fasttop": the block freed
            // last is the freelist's head.
            let head = (*hot(p)).free;
            ensure(
                block.as_ptr() != head,
                "free of the block this pool freed last (double free)",
            );
            self.push_freed(freed, head, used);
            // Full before (P5): no free block, and none left to carve — which this free did
            // not change. Tested last, and only for an empty freelist, so that the common
            // free computes nothing for it.
            let was_full = head.is_null() && self.carved_out();
            Freed {
                was_full,
                now_empty: used == 1,
            }
        }
    }

    /// The common free, for callers that inline it: unless the block is the freelist's head,
    /// the pool has no block in use, or the pool was full, pushes the block exactly as
    /// [`PoolPtr::free`] does and returns whether the pool is now empty (a change of state
    /// the caller deals with). `None`, with nothing changed, otherwise: for
    /// [`PoolPtr::free`], which reports the first two and returns the third's change of state
    /// (the mirror of [`PoolPtr::alloc_unless_last_free`]).
    ///
    /// # Safety
    /// As [`PoolPtr::free`].
    #[inline(always)]
    pub unsafe fn free_unless_was_full(self, freed: FreedMark) -> Option<bool> {
        let block = freed.block();
        let p = self.0.as_ptr();
        // SAFETY: the pool is live and ours, `block` one of its blocks in use (caller); pushed
        // only with a block in use counted.
        unsafe {
            let used = (*hot(p)).used.load(Ordering::Relaxed);
            let head = (*hot(p)).free;
            if used == 0 || block.as_ptr() == head || (head.is_null() && self.carved_out()) {
                return None;
            }
            self.push_freed(freed, head, used);
            Some(used == 1)
        }
    }

    /// Puts `freed`'s block at the head of the freelist, marked (P9), with `head` the
    /// freelist's head and `used` the count of blocks in use as the caller has just read them:
    /// the push that [`PoolPtr::free`] and [`PoolPtr::free_unless_was_full`] share.
    ///
    /// # Safety
    /// As [`PoolPtr::free`], and `used` is at least 1.
    #[inline(always)]
    unsafe fn push_freed(self, freed: FreedMark, head: *mut u8, used: u16) {
        let block = freed.block();
        let p = self.0.as_ptr();
        // SAFETY: the pool is live and ours; `block` is one of its blocks in use (caller), so
        // its first word is ours to overwrite with the freelist link.
        unsafe {
            write_link(block, head);
            freed.write();
            asan::poison(block.as_ptr(), (*p).size as usize);
            (*hot(p)).free = block.as_ptr();
            // A store of what was loaded above, less one (P8).
            (*hot(p)).used.store(used - 1, Ordering::Relaxed);
        }
    }

    /// Whether `block`, the start of a block of this pool, is on its freelist: once
    /// [`holds_freed_mark`] says the block is free (P9), where it is, for the message. Bounded
    /// by the blocks carved, whatever the freelist holds.
    ///
    /// # Safety
    /// `self` is a live pool the caller has exclusive access to.
    pub unsafe fn on_freelist(self, block: NonNull<u8>) -> bool {
        let p = self.0.as_ptr();
        // SAFETY: the pool is live and ours (caller); freelist entries are carved blocks
        // whose first word holds the next entry (P3), at most `bump / size` of them (P4).
        unsafe {
            let mut free = (*hot(p)).free;
            // (A zero size, which no live pool has, reads as no blocks rather than a panic.)
            let mut left = (*p)
                .bump
                .load(Ordering::Relaxed)
                .checked_div((*p).size)
                .unwrap_or(0);
            while !free.is_null() && left > 0 {
                if free == block.as_ptr() {
                    return true;
                }
                free = next_free(free);
                left -= 1;
            }
        }
        false
    }

    /// Whether `ptr` starts a block this pool has handed out at some time: it lies below the
    /// bump offset (P10), on the block grid (P2). Any thread may ask; for a block the caller
    /// holds the answer is exact, for any other pointer into the pool it is a hint that is
    /// never undefined behaviour.
    ///
    /// # Safety
    /// `self` is a live pool.
    #[inline(always)]
    pub unsafe fn starts_carved_block(self, ptr: NonNull<u8>) -> bool {
        let p = self.0.as_ptr();
        // SAFETY: the pool is live (caller); `carved_block_at` takes addresses inside the pool
        // (one before its first block wraps to a huge offset).
        unsafe {
            let offset = ptr
                .addr()
                .get()
                .wrapping_sub(self.first_block().addr().get());
            offset < (*p).limit as usize && carved_block_at(p, ptr.addr().get() & (ARENA_SIZE - 1))
        }
    }

    /// The pool's size class.
    ///
    /// # Safety
    /// `self` is a live pool.
    #[inline(always)]
    pub unsafe fn class(self) -> SizeClass {
        // SAFETY: the pool is live (caller); `class` holds a class's index (P8).
        unsafe { SizeClass::from_index_unchecked((*self.0.as_ptr()).class.load(Ordering::Relaxed)) }
    }

    /// Blocks in use. From a thread that does not have the pool, a figure of some recent
    /// moment (P8).
    ///
    /// # Safety
    /// `self` is a live pool.
    #[inline]
    pub unsafe fn used(self) -> usize {
        // SAFETY: the pool is live (caller).
        unsafe { (*hot(self.0.as_ptr())).used.load(Ordering::Relaxed) as usize }
    }

    /// Checks invariants P1 to P5, P9 and P10 by walking the freelist, and the freed mark's
    /// M1 (a pool exists, so the key is drawn).
    ///
    /// # Safety
    /// `self` is a live pool the caller has exclusive access to.
    pub unsafe fn check(self) -> Result<(), &'static str> {
        if !mark::key_is_drawn() {
            return Err("pool: a pool exists and the freed mark's key is not drawn (M1)");
        }
        // SAFETY: the pool is live and ours (caller).
        let (class, size, limit, bump, carved, used, mut free, (reciprocal, origin)) = unsafe {
            let p = self.0.as_ptr();
            let (size, limit) = ((*p).size as usize, (*p).limit as usize);
            let bump = (*p).bump.load(Ordering::Relaxed) as usize;
            let carved = (*p).carved.load(Ordering::Relaxed) as usize;
            let grid = ((*p).reciprocal, (*p).origin);
            (
                self.class(),
                size,
                limit,
                bump,
                carved,
                self.used(),
                (*hot(p)).free,
                grid,
            )
        };
        // SAFETY: inside the pool's first slot (`first_block`).
        let first_block = unsafe { self.memory().add(class.first_block()) };
        let grid = Grid::of(first_block, size);
        if size != class.block_size()
            || limit != class.block_bytes()
            || (reciprocal, origin) != (grid.reciprocal, grid.origin)
        {
            return Err("pool: block or pool size does not match its class");
        }
        let base = first_block.addr().get();
        let first = slot_index(base);
        for i in 0..class.span_slots() {
            // SAFETY: the pool's slots lie in its arena (P1), whose header is mapped.
            let named = unsafe { first_slot_of(self.memory().add(i * POOL_SIZE)) };
            if named as usize != first {
                return Err("pool: a slot of the pool does not name the pool's first slot");
            }
        }
        if self.memory().addr().get() % POOL_SIZE != 0 || descriptor_of(self.memory()) != self.0 {
            return Err("pool: not at a slot, or not at its first slot's descriptor");
        }
        // SAFETY: the pool is live (caller).
        if unsafe { self.first_block() } != first_block {
            return Err("pool: the first block its descriptor keeps is not the pool's");
        }
        if bump > limit || bump % size != 0 {
            return Err("pool: bump offset off the block grid");
        }
        if carved * size != bump {
            return Err("pool: the count of blocks carved is not the bump offset's (P10)");
        }
        let mut listed = 0;
        while !free.is_null() {
            let offset = free.addr().wrapping_sub(base);
            if offset >= bump || offset % size != 0 {
                return Err("pool: freelist entry outside the carved blocks");
            }
            listed += 1;
            if listed > carved {
                return Err("pool: freelist longer than the carved blocks (cycle?)");
            }
            // SAFETY: a carved block of this live pool, two words long at least.
            if !unsafe { holds_freed_mark(NonNull::new_unchecked(free)) } {
                return Err("pool: a free block lost its freed mark (written after free?)");
            }
            // SAFETY: as above; the block is free and ours to read whole (unpoisoned here).
            if secure::ENABLED && !unsafe { intact_free_block(free, size) } {
                return Err("pool: a free block lost its fill or free tag (S2)");
            }
            // SAFETY: `free` was just checked to be a carved block of this live pool.
            free = unsafe { next_free(free) };
        }
        if used + listed != carved {
            return Err("pool: blocks in use plus free blocks differ from blocks carved");
        }
        Ok(())
    }
}

/// Whether the free block `block` of `size` bytes holds its fill and free tag (`secure`,
/// S2), read through AddressSanitizer's poison.
///
/// # Safety
/// `block` is a free block of a live pool the caller has exclusive access to.
unsafe fn intact_free_block(block: *mut u8, size: usize) -> bool {
    asan::unpoison(block, size);
    // SAFETY: as the caller guarantees.
    let intact = unsafe { secure::is_intact_free_block(NonNull::new_unchecked(block), size) };
    asan::poison(block, size);
    intact
}

/// The freelist entry after `block`, read through AddressSanitizer's poison (free blocks stay
/// poisoned, but for this moment).
///
/// # Safety
/// `block` is a block on the freelist of a live pool the caller has exclusive access to, so
/// its first word holds the next entry (P3).
#[inline(always)]
unsafe fn next_free(block: *mut u8) -> *mut u8 {
    let link = size_of::<*mut u8>();
    asan::unpoison(block, link);
    // SAFETY: as the caller guarantees.
    let next = unsafe { read_link(NonNull::new_unchecked(block)) };
    asan::poison(block, link);
    next
}

/// The usable pools of one class in a heap, through their descriptors' links: a [`List`].
pub type PoolList = List<Pool, Usable>;

/// The chain of a heap's lists of usable pools ([`PoolList`]).
pub struct Usable;

// SAFETY: `links` is the descriptor's only `Links`, written by nothing but these lists.
unsafe impl Chain<Pool> for Usable {
    #[inline(always)]
    unsafe fn links(node: *mut Pool) -> *mut Links<Pool> {
        // SAFETY: a live descriptor (caller); a place projection creates no reference.
        unsafe { &raw mut (*hot(node)).links }
    }
}

impl PoolList {
    /// The first pool, if any.
    #[inline(always)]
    pub fn first(&self) -> Option<PoolPtr> {
        self.head().map(PoolPtr)
    }
}

impl From<NonNull<Pool>> for PoolPtr {
    /// The pool of a descriptor, as a [`PoolList`] gives it.
    #[inline(always)]
    fn from(descriptor: NonNull<Pool>) -> PoolPtr {
        PoolPtr(descriptor)
    }
}

impl From<PoolPtr> for NonNull<Pool> {
    /// A pool's descriptor, as a [`PoolList`] takes it.
    #[inline(always)]
    fn from(pool: PoolPtr) -> NonNull<Pool> {
        pool.0
    }
}

#[cfg(test)]
mod grid_tests {
    use super::*;

    // With `crate::tests`, whose test arenas are the default build's.
    #[cfg(not(feature = "secure"))]
    #[test]
    fn check_catches_a_descriptor_that_keeps_another_pools_memory() {
        use crate::class::SMALL_FIRST_BLOCK;
        let class = SizeClass::for_size(64).unwrap();
        let slot = crate::tests::Mem::new(class);
        // SAFETY: the memory is ours; the descriptor is written back before the pool is
        // used again.
        unsafe {
            let pool = PoolPtr::init(slot.0, class, true, ptr::null_mut());
            let (block, _) = pool.alloc().unwrap();
            assert_eq!(
                block,
                slot.0.add(SMALL_FIRST_BLOCK),
                "a small class's first block is carved 48 bytes into its pool"
            );
            assert_eq!(pool.check(), Ok(()));
            let p = pool.0.as_ptr();
            for wrong in [POOL_SIZE, 16, 0usize.wrapping_sub(SMALL_FIRST_BLOCK)] {
                (*p).memory = block.as_ptr().wrapping_add(wrong);
                assert!(pool.check().is_err(), "{wrong}");
            }
            (*p).memory = block.as_ptr();
            assert_eq!(pool.check(), Ok(()));
        }
    }

    /// Whether `offset` is on the grid of blocks whose size `reciprocal` was made from.
    fn is_block_offset(offset: usize, reciprocal: u64) -> bool {
        block_index((offset as u64).wrapping_mul(reciprocal)) < 1 << (u64::BITS - RECIPROCAL_SHIFT)
    }

    #[test]
    fn is_block_offset_holds_exactly_for_the_multiples_of_every_class() {
        for class in SizeClass::all() {
            let size = class.block_size();
            let r = reciprocal(size);
            let step = if cfg!(miri) { 997 } else { 1 };
            for offset in (0..class.pool_bytes()).step_by(step) {
                assert_eq!(
                    is_block_offset(offset, r),
                    offset % size == 0,
                    "size {size} {offset}"
                );
            }
            for k in 0..blocks_per_pool(class) {
                assert!(is_block_offset(k * size, r));
                assert!(!is_block_offset(k * size + 1, r));
                assert!(!is_block_offset(k * size + size - 1, r));
            }
        }
    }

    /// `carved_block_at` against its definition — on the grid and below the blocks carved —
    /// for every class, pools starting at several slots (so several origins), every offset
    /// up to the widest pool past the pool's start, and several counts carved.
    #[test]
    fn carved_block_at_is_a_carved_block_start_for_every_class_origin_and_offset() {
        // Under Miri, a sample: every fifth class, offsets 997 bytes apart.
        let (step, every) = if cfg!(miri) { (997, 5) } else { (1, 1) };
        for class in SizeClass::all().step_by(every) {
            let size = class.block_size();
            let blocks = blocks_per_pool(class);
            for slot in [2, 3, 77, ARENA_SIZE / POOL_SIZE - class.span_slots()] {
                let start = slot * POOL_SIZE + class.first_block();
                let memory = NonNull::new(ptr::without_provenance_mut(start)).unwrap();
                let grid = Grid::of(memory, size);
                for carved in [0, 1, blocks / 2, blocks] {
                    let pool = Pool {
                        owner: AtomicPtr::new(ptr::null_mut()),
                        reciprocal: grid.reciprocal,
                        origin: grid.origin,
                        memory: memory.as_ptr(),
                        bump: AtomicU32::new((carved * size) as u32),
                        carved: AtomicU32::new(carved as u32),
                        size: size as u32,
                        limit: class.block_bytes() as u32,
                        class: AtomicU8::new(class.index() as u8),
                        fresh: false,
                    };
                    for offset in (0..MAX_SPAN_SLOTS * POOL_SIZE).step_by(step) {
                        let expected = offset % size == 0 && offset / size < carved;
                        // SAFETY: a descriptor on the stack, live for the call.
                        let found = unsafe { carved_block_at(&pool, start + offset) };
                        assert_eq!(found, expected, "size {size} slot {slot} +{offset}");
                    }
                    // Before the first block, back to the slot before the pool's: no block.
                    for before in (1..=POOL_SIZE + class.first_block()).step_by(step) {
                        // SAFETY: as above.
                        let found = unsafe { carved_block_at(&pool, start - before) };
                        assert!(!found, "size {size} slot {slot} -{before}");
                    }
                }
            }
        }
    }

    /// The zero line of slot 0 (P11) finds no block anywhere.
    #[test]
    fn the_zero_line_finds_no_block() {
        // SAFETY: an all-zero descriptor is a valid value of every field.
        let zero: Pool = unsafe { core::mem::zeroed() };
        for offset in (0..ARENA_SIZE).step_by(if cfg!(miri) { 65_521 } else { 16 }) {
            // SAFETY: a descriptor on the stack, live for the call.
            assert!(!unsafe { carved_block_at(&zero, offset) });
        }
    }
}
