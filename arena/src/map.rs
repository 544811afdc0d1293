//! [`ArenaMap`]: from any address to the arena, and the pool, that hold it — the question a
//! `free` with no size asks. Lookups take no lock.
//!
//! Two parts:
//! - the *flat map*, one bit per arena-sized granule of the address space below
//!   [`FLAT_LIMIT`] (where the system places every mapping a program makes without asking for
//!   a high address): a set bit says that the granule is one of the manager's arenas, whose
//!   header is then the granule's start. A lookup is one load and a bit test, on a 2^47-byte
//!   space 8 MiB of bits, reserved from the platform with the first arena and touched only
//!   where arenas lie (a page of bits covers 64 GiB of addresses);
//! - the radix tree (`pymalloc-radix`) for arenas above it, which a program that maps at
//!   high hints could make us place there; it stays empty otherwise.
//!
//! Both are atomic (the bits are read and written as atomic words; R2 in `pymalloc-radix`),
//! and so is each slot's entry in its arena header (A5 in `arenas.rs`).
//!
//! The arena manager enters and removes arenas under its owner's lock; lookups may run at any
//! time. A lookup of an address inside a block that the caller holds is exact: the pool was
//! entered before the block was handed out, and stays until the block is freed. For any other
//! address the answer is only a hint, and never undefined behaviour while the arena is
//! mapped: a mapped arena's header can always be read.
//!
//! Invariants (`Arenas::check` verifies, with A4, that every arena is found; that no other
//! bit is set is not checked, which would read the whole map):
//! - M1 a flat bit is set exactly for the granules of arenas below [`FLAT_LIMIT`]; the radix
//!   tree maps exactly the arenas at or above it;
//! - M2 the flat map, once published, stays until the manager releases everything; `flat_end`
//!   is [`FLAT_LIMIT`] exactly while it is published, 0 otherwise.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use pymalloc_pool::{ARENA_SHIFT, ARENA_SIZE};
use pymalloc_radix::{InsertError, NodeAlloc, RadixTree};

use crate::header::{Header, pool_head, slot, slot_index};

/// The addresses the flat map covers: `0 .. FLAT_LIMIT`, the user address space of x86-64
/// with four-level page tables (and what Linux hands out on five-level ones unless asked for
/// more); 2^48 on other targets (aarch64 with 48-bit addresses).
#[cfg(target_arch = "x86_64")]
pub const FLAT_LIMIT: usize = 1 << 47;
/// The addresses the flat map covers (see the x86-64 definition).
#[cfg(not(target_arch = "x86_64"))]
pub const FLAT_LIMIT: usize = 1 << 48;

/// Bytes of the flat map: a bit per granule below [`FLAT_LIMIT`].
pub const FLAT_BYTES: usize = FLAT_LIMIT >> ARENA_SHIFT >> 3;

/// Granules per word of the flat map.
const WORD_BITS: usize = u64::BITS as usize;

const _: () = assert!(ARENA_SIZE == 1 << ARENA_SHIFT && FLAT_BYTES > 0);

/// The address → arena map of one arena manager.
pub struct ArenaMap {
    /// Bits of the granules below [`FLAT_LIMIT`], 64 to a word; null until the first arena is
    /// entered (M2).
    flat: AtomicPtr<AtomicU64>,
    /// The addresses the flat map answers for: 0 until it is published, then [`FLAT_LIMIT`]
    /// (M2). One comparison with it tells both that the map exists and that it covers the
    /// address; the others go to the radix tree.
    flat_end: AtomicUsize,
    /// Arenas at or above [`FLAT_LIMIT`].
    pub(crate) radix: RadixTree<Header, ARENA_SHIFT>,
}

impl Default for ArenaMap {
    fn default() -> Self {
        Self::new()
    }
}

/// The word of the flat map that holds `addr`'s bit, and the bit's index in it.
#[inline(always)]
fn flat_position(addr: usize) -> (usize, u32) {
    let granule = addr >> ARENA_SHIFT;
    (granule / WORD_BITS, (granule % WORD_BITS) as u32)
}

impl ArenaMap {
    /// An empty map; it allocates nothing until the first arena is entered.
    pub const fn new() -> ArenaMap {
        ArenaMap {
            flat: AtomicPtr::new(ptr::null_mut()),
            flat_end: AtomicUsize::new(0),
            radix: RadixTree::new(),
        }
    }

    /// Whether `addr` lies in one of the manager's arenas. Takes no lock: below
    /// `FLAT_LIMIT`, one load (and one of the map's address) and a bit test.
    #[inline(always)]
    pub fn contains(&self, addr: usize) -> bool {
        if addr >= self.flat_end.load(Ordering::Acquire) {
            // Above the flat map, or none yet: the radix tree (empty below FLAT_LIMIT, M1).
            return self.radix.get(addr).is_some();
        }
        // Published before `flat_end` (Release), seen after it (Acquire).
        let flat = self.flat.load(Ordering::Relaxed);
        let (word, bit) = flat_position(addr);
        // SAFETY: a published flat map holds FLAT_BYTES bytes and stays (M2); `word` is below
        // FLAT_BYTES / 8 as `addr < FLAT_LIMIT`. Acquire pairs with the Release that set the
        // bit after the arena's header was written.
        let bits = unsafe { (*flat.add(word)).load(Ordering::Acquire) };
        (bits >> bit) & 1 != 0
    }

    /// The header of the arena that holds `addr`, if it is one of the manager's: below
    /// [`FLAT_LIMIT`] the start of `addr`'s granule (with `addr`'s provenance, the arena's
    /// own for an address inside it).
    #[inline(always)]
    pub(crate) fn arena_of(&self, addr: NonNull<u8>) -> Option<NonNull<Header>> {
        let a = addr.addr().get();
        if a >= FLAT_LIMIT {
            return self.radix.get(a);
        }
        if !self.contains(a) {
            return None;
        }
        NonNull::new(
            addr.as_ptr()
                .map_addr(|a| a & !(ARENA_SIZE - 1))
                .cast::<Header>(),
        )
    }

    /// The start of the pool in use that contains `addr`; `None` if the address is in no arena,
    /// or in an arena's header or free slots. Takes no lock.
    #[inline]
    pub fn pool_of(&self, addr: NonNull<u8>) -> Option<NonNull<u8>> {
        let h = self.arena_of(addr)?;
        let index = slot_index(addr);
        // SAFETY: the map holds live arenas only (A4), so `h` is a mapped header, and
        // `index < SLOTS` as `addr` lies in the arena's granule. The entry is atomic; see the
        // module documentation for what its value promises.
        let head = unsafe { pool_head(h, index) };
        (head != 0).then(|| slot(h, head.into()))
    }

    /// Enters the arena whose header is `h` (at the start of its granule). Fails, changing
    /// nothing, if the memory for the map cannot be had.
    pub(crate) fn insert(
        &self,
        h: NonNull<Header>,
        nodes: &impl NodeAlloc,
    ) -> Result<(), InsertError> {
        let addr = h.addr().get();
        if addr >= FLAT_LIMIT {
            return self.radix.insert(addr, h, nodes);
        }
        let flat = self.flat_or_reserve(nodes).ok_or(InsertError::NoMemory)?;
        let (word, bit) = flat_position(addr);
        // SAFETY: a published map of FLAT_BYTES bytes (M2); `word` in range as above.
        unsafe { (*flat.add(word)).fetch_or(1 << bit, Ordering::Release) };
        Ok(())
    }

    /// Removes the arena whose header is at `addr`.
    pub(crate) fn remove(&self, addr: usize) {
        if addr >= FLAT_LIMIT {
            return self.radix.remove(addr);
        }
        let flat = self.flat.load(Ordering::Acquire);
        if flat.is_null() {
            return;
        }
        let (word, bit) = flat_position(addr);
        // SAFETY: as in `insert`.
        unsafe { (*flat.add(word)).fetch_and(!(1 << bit), Ordering::Release) };
    }

    /// The published flat map, reserving it first if there is none yet.
    fn flat_or_reserve(&self, nodes: &impl NodeAlloc) -> Option<*mut AtomicU64> {
        let flat = self.flat.load(Ordering::Acquire);
        if !flat.is_null() {
            return Some(flat);
        }
        let fresh = nodes.alloc_node(FLAT_BYTES)?.as_ptr().cast::<AtomicU64>();
        match self.flat.compare_exchange(
            ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                self.flat_end.store(FLAT_LIMIT, Ordering::Release);
                Some(fresh)
            }
            Err(winner) => {
                // SAFETY: ours, never published.
                unsafe { nodes.free_node(NonNull::new_unchecked(fresh.cast()), FLAT_BYTES) };
                Some(winner)
            }
        }
    }

    /// Bytes the map holds from the platform: the flat map and the radix tree's nodes.
    pub fn mapped_bytes(&self) -> usize {
        let flat = if self.flat.load(Ordering::Relaxed).is_null() {
            0
        } else {
            FLAT_BYTES
        };
        flat + self.radix.node_bytes_in_use()
    }

    /// Gives the map's memory back; the map is empty afterwards.
    ///
    /// # Safety
    /// Everything came from `nodes`; no lookup runs concurrently or later uses an arena found
    /// before this call.
    pub(crate) unsafe fn release(&mut self, nodes: &impl NodeAlloc) {
        *self.flat_end.get_mut() = 0;
        let flat = core::mem::replace(self.flat.get_mut(), ptr::null_mut());
        if let Some(flat) = NonNull::new(flat) {
            // SAFETY: reserved by `flat_or_reserve` with this size (caller), unused now.
            unsafe { nodes.free_node(flat.cast(), FLAT_BYTES) };
        }
        // SAFETY: as the caller guarantees.
        unsafe { self.radix.release_nodes(nodes) };
    }
}
