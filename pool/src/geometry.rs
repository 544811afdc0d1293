//! The geometry of pools and arenas, below everything else of this crate: the sizes of a
//! slot, an arena and a descriptor's line, and the arithmetic from an address to its slot,
//! its slot's line and that line's first-slot entry (`pool.rs` says what they hold).
//!
//! ```text
//! arena: | slots 0-1: header | lines of slots 0..SLOTS | hot records | slot 2 | slot 3 | …
//! line:  | descriptor (50 bytes) ... | first-slot entry |   (64 bytes, one a slot)
//! hot:   | freelist, links, count ...                    |   (64 bytes, one a slot)
//! ```

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

/// Bytes in one slot — the unit arenas hand out, and the size of a single-slot pool. A power
/// of two, like every pool's size.
pub const POOL_SIZE: usize = 16 * 1024;
/// log2 of [`ARENA_SIZE`].
pub const ARENA_SHIFT: u32 = 21;
/// Bytes in one arena: 2 MiB (CPython uses 1 MiB; `docs/design.md` says why 2).
pub const ARENA_SIZE: usize = 1 << ARENA_SHIFT;
/// Slots per arena, slot 0 (the arena's own) included.
pub const SLOTS: usize = ARENA_SIZE / POOL_SIZE;
/// Offset in an arena of the line of its slot 0; slot `i`'s is `DESCRIPTOR_BYTES * i` further.
/// Below it, the arena manager keeps its own header.
pub const DESCRIPTORS: usize = 4096;
/// Bytes between descriptors: one cache line each.
pub(crate) const DESCRIPTOR_BYTES: usize = 64;
/// Slots at the start of every arena that hold no pool: the arena's header, the slots'
/// lines and their hot records.
pub const HEADER_SLOTS: usize = 2;
/// Offset in an arena of the hot record of its slot 0 (`pool.rs`, P12); slot `i`'s is
/// `DESCRIPTOR_BYTES * i` further, so that every hot record is [`HOT_OFFSET`] past its
/// slot's line: past the lines, into the second header slot.
pub(crate) const HOT_RECORDS: usize = DESCRIPTORS + SLOTS * DESCRIPTOR_BYTES;
/// Bytes of the header slots in use: the arena manager's header, the lines and the hot
/// records; the rest of the header slots is unused.
pub const HEADER_BYTES: usize = HOT_RECORDS + SLOTS * DESCRIPTOR_BYTES;
/// Bytes from a slot's line to its hot record.
pub(crate) const HOT_OFFSET: usize = HOT_RECORDS - DESCRIPTORS;
/// Offset in a slot's line of its first-slot entry, a 32-bit word: the offset from slot 0's
/// line to the line of the first slot of the pool that holds the slot (that slot's index
/// times [`DESCRIPTOR_BYTES`]), or 0 for a slot in no pool (slot 0 is the arena's own). An
/// offset rather than an index, so that the pool's descriptor is one addition away; a whole
/// word, so that loading it needs no widening. Past the descriptor, which never writes it.
pub(crate) const FIRST_SLOT_ENTRY: usize = DESCRIPTOR_BYTES - size_of::<u32>();

const _: () = assert!(POOL_SIZE.is_power_of_two() && ARENA_SIZE % POOL_SIZE == 0);
const _: () = assert!(
    DESCRIPTORS + SLOTS * DESCRIPTOR_BYTES <= POOL_SIZE,
    "the lines fit in slot 0"
);
const _: () = assert!(
    HEADER_BYTES <= HEADER_SLOTS * POOL_SIZE,
    "the hot records fit in the header slots"
);
const _: () = assert!(SLOTS <= u8::MAX as usize + 1, "a slot's index is one byte");

/// The index, within its arena, of the slot that holds the address `addr`.
#[inline(always)]
pub const fn slot_index(addr: usize) -> usize {
    (addr >> POOL_SIZE.trailing_zeros()) & (SLOTS - 1)
}

/// The line of slot `slot` of the arena that holds `address` (with the arena's provenance).
#[inline(always)]
pub(crate) fn line_of(address: NonNull<u8>, slot: usize) -> NonNull<u8> {
    let line = address
        .as_ptr()
        .map_addr(|a| (a & !(ARENA_SIZE - 1)) + DESCRIPTORS + slot * DESCRIPTOR_BYTES);
    // SAFETY: an address inside an arena, at least `DESCRIPTORS` above its nonzero start.
    unsafe { NonNull::new_unchecked(line) }
}

/// The first-slot entry (pool invariant P1) of the slot that holds `address`, an address
/// inside an arena (with the arena's provenance).
#[inline(always)]
pub(crate) fn first_slot_entry(address: NonNull<u8>) -> NonNull<AtomicU32> {
    let line = line_of(address, slot_index(address.addr().get()));
    // SAFETY: inside the line, so inside the arena's header slot, not null; the entry's
    // offset is a multiple of 4 in a 64-byte line, so aligned.
    unsafe { line.add(FIRST_SLOT_ENTRY).cast() }
}

/// The index of the first slot of the pool that holds the slot of `address` (its first-slot
/// entry, pool invariant P1), or 0 for a slot in no pool.
///
/// # Safety
/// `address` lies in a mapped arena (with its provenance).
#[inline]
pub unsafe fn first_slot_of(address: NonNull<u8>) -> u8 {
    // SAFETY: the entry lies in the arena's header slot, mapped (caller).
    let offset = unsafe { first_slot_entry(address).as_ref() }.load(Ordering::Relaxed);
    (offset as usize / DESCRIPTOR_BYTES) as u8
}

/// The first-slot entry that names slot `first`.
#[inline]
pub(crate) const fn entry_naming(first: u8) -> u32 {
    first as u32 * DESCRIPTOR_BYTES as u32
}
