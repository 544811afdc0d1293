//! The header in slot 0 of every arena ([`Header`]): its slot bitmaps, the span of each pool,
//! the buckets it is in, and its links in the manager's lists — one [`Chain`] each — and the
//! arithmetic from an arena to its slots and their first-slot entries. The manager
//! (`arenas.rs`) keeps the invariants; the map (`map.rs`) only reads the entries.

use core::ptr::NonNull;

use pymalloc_pool::{
    ARENA_SIZE, Chain, DESCRIPTORS, Links, POOL_SIZE, SLOTS, first_slot_of, set_first_slot_entries,
};

use crate::slots::SlotBits;

const _: () = assert!(
    size_of::<Header>() <= DESCRIPTORS,
    "the header ends where the slots' lines begin"
);

/// The header in slot 0 of every arena.
pub struct Header {
    pub(crate) free: SlotBits,
    pub(crate) dirty: SlotBits,
    /// Free slots decommitted by a purge (they read zero) and not taken since: taking them
    /// back is what shows a purge was undone.
    pub(crate) purged: SlotBits,
    pub(crate) heads: SlotBits,
    /// Span length of the pool starting at each slot (meaningful for heads only).
    pub(crate) span: [u8; SLOTS],
    /// The run bucket the arena is in (0: none).
    pub(crate) run_bucket: u8,
    /// The dirty-run bucket the arena is in (0: none).
    pub(crate) dirty_run_bucket: u8,
    /// Whether the arena is backed by huge pages on the platform's advice (A6): its free
    /// slots are then not decommitted one by one.
    pub(crate) huge: bool,
    all: Links<Header>,
    runs: Links<Header>,
    dirty_runs: Links<Header>,
    dirty_list: Links<Header>,
    empty_list: Links<Header>,
}

impl Header {
    /// A header of an arena whose every pool slot is free (and dirty where `dirty` says),
    /// in no list and no bucket.
    pub(crate) const fn new(free: SlotBits, purged: SlotBits) -> Header {
        Header {
            free,
            dirty: 0,
            purged,
            heads: 0,
            span: [0; SLOTS],
            run_bucket: 0,
            dirty_run_bucket: 0,
            huge: false,
            all: Links::UNLINKED,
            runs: Links::UNLINKED,
            dirty_runs: Links::UNLINKED,
            dirty_list: Links::UNLINKED,
            empty_list: Links::UNLINKED,
        }
    }
}

/// Declares a chain of the header's links: a marker type and its [`Chain`] impl.
macro_rules! chains {
    ($($(#[$doc:meta])* $name:ident => $field:ident;)*) => {$(
        $(#[$doc])*
        pub(crate) struct $name;

        // SAFETY: each chain names a field of its own, which only its lists write.
        unsafe impl Chain<Header> for $name {
            #[inline(always)]
            unsafe fn links(node: *mut Header) -> *mut Links<Header> {
                // SAFETY: a live header (caller); a place projection creates no reference.
                unsafe { &raw mut (*node).$field }
            }
        }
    )*};
}

chains! {
    /// Every arena.
    All => all;
    /// The arenas of one bucket by longest free run.
    Runs => runs;
    /// The arenas of one bucket by longest dirty run.
    DirtyRuns => dirty_runs;
    /// Arenas with dirty free slots.
    Dirty => dirty_list;
    /// Arenas with every pool slot free.
    Empty => empty_list;
}

/// The header of the arena that holds `addr`.
#[inline]
pub(crate) fn header_of(addr: NonNull<u8>) -> NonNull<Header> {
    addr.map_addr(|a| {
        // SAFETY: an arena's start is nonzero, and `addr` lies in one (it is nonzero).
        unsafe { core::num::NonZero::new_unchecked(a.get() & !(ARENA_SIZE - 1)) }
    })
    .cast()
}

/// Slot `index` of the arena that starts at `h`.
#[inline]
pub(crate) fn slot(h: NonNull<Header>, index: u32) -> NonNull<u8> {
    // SAFETY: `index < SLOTS`, so the slot lies inside the arena that starts at `h`.
    unsafe { h.cast::<u8>().add(index as usize * POOL_SIZE) }
}

/// The index of the slot that holds `addr` in its arena.
#[inline]
pub(crate) fn slot_index(addr: NonNull<u8>) -> u32 {
    pymalloc_pool::slot_index(addr.addr().get()) as u32
}

/// Points the first-slot entries of slots `start .. start + len` at `head` (A5 in
/// `arenas.rs`): the pool's first slot, or 0.
///
/// # Safety
/// `h` is a live arena header and the slots are in range.
pub(crate) unsafe fn set_pool_head(h: NonNull<Header>, start: u32, len: u32, head: u8) {
    // SAFETY: a live header (caller), and the slots in range (caller), so in its arena.
    unsafe { set_first_slot_entries(slot(h, start), len as usize, head) };
}

/// The first-slot entry of slot `i` (A5 in `arenas.rs`).
///
/// # Safety
/// `h` is a live arena header and `i < SLOTS`.
#[inline]
pub(crate) unsafe fn pool_head(h: NonNull<Header>, i: u32) -> u8 {
    // SAFETY: as `set_pool_head`.
    unsafe { first_slot_of(slot(h, i)) }
}
