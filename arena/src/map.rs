//! [`ArenaMap`]: from any address to the arena, and the pool, that hold it — the question a
//! `free` with no size asks. Lookups take no lock: the radix tree's loads are atomic (R2 in
//! `pymalloc-radix`), and so is each slot's entry in its arena header (A5 in `arenas.rs`).
//!
//! The arena manager enters and removes arenas under its owner's lock; lookups may run at any
//! time. A lookup of an address inside a block that the caller holds is exact: the pool was
//! entered before the block was handed out, and stays until the block is freed. For any other
//! address the answer is only a hint, and never undefined behaviour: a mapped arena's header
//! can always be read.

use core::ptr::NonNull;

use pymalloc_pool::POOL_SIZE;
use pymalloc_radix::RadixTree;

use crate::arenas::{ARENA_SHIFT, Arenas, Header};

/// The address → arena map of one arena manager.
pub struct ArenaMap {
    pub(crate) radix: RadixTree<Header, ARENA_SHIFT>,
}

impl Default for ArenaMap {
    fn default() -> Self {
        Self::new()
    }
}

impl ArenaMap {
    /// An empty map; it allocates nothing until the first arena is entered.
    pub const fn new() -> ArenaMap {
        ArenaMap {
            radix: RadixTree::new(),
        }
    }

    /// Whether `addr` lies in one of the manager's arenas.
    #[inline]
    pub fn contains(&self, addr: usize) -> bool {
        self.radix.get(addr).is_some()
    }

    /// The start of the pool in use that contains `addr`; `None` if the address is in no arena,
    /// or in an arena's header or free slots. Takes no lock.
    #[inline]
    pub fn pool_of(&self, addr: usize) -> Option<NonNull<u8>> {
        let h = self.radix.get(addr)?.as_ptr();
        let index = ((addr - h.addr()) >> POOL_SIZE.trailing_zeros()) as u32;
        // SAFETY: the map holds live arenas only (A4), so `h` is a mapped header, and
        // `index < SLOTS` as `addr` lies in the arena's granule. The entry is atomic; see the
        // module documentation for what its value promises.
        let head = unsafe { Arenas::pool_head(h, index) };
        (head != 0).then(|| Arenas::slot(h, head.into()))
    }
}
