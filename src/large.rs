//! Large blocks: requests above the small range (or too aligned for it), each served by a
//! mapping of its own straight from the platform, with a small cache of freed mappings so
//! that repeated large allocations do not each pay for a system call and fresh page faults.
//!
//! [`Large`] is bookkeeping; the allocator makes the system calls for blocks (reserve, remap,
//! release) with its lock released. Only the table of blocks in use ([`Registry`]) takes
//! memory under the lock, when it doubles.
//!
//! Invariants:
//! - L1 a large block of layout (size, align) starts a mapping of [`mapping_len`]`(size)`
//!   bytes, or up to a quarter more ([`fits`]: a cached mapping reused, or a block resized in
//!   place), aligned to `max(align, page)`; large blocks carry no header;
//! - L2 every large block in use is registered, by its start, with its mapping length; no
//!   other address is;
//! - L3 the cache holds at most [`CACHE_ENTRIES`] mappings and [`CACHE_BYTES`] bytes, none of
//!   them in use; a cached mapping is handed out again only for the same length and an
//!   alignment its address already has.

use core::ptr::{self, NonNull};

use pymalloc_arena::Platform;
use pymalloc_pool::fatal;

use crate::registry::Registry;

/// Freed mappings kept for reuse.
pub const CACHE_ENTRIES: usize = 8;
/// Bytes of freed mappings kept for reuse, at most.
pub const CACHE_BYTES: usize = 4 << 20;

/// Bytes mapped for a large block of `size` bytes; `None` if that overflows.
#[inline]
pub fn mapping_len(size: usize, page: usize) -> Option<usize> {
    size.max(1).checked_next_multiple_of(page)
}

/// Whether a mapping of `len` bytes may hold a block that needs `needed` (L1): at least that,
/// and at most a quarter more, so a mapping is reused for sizes near its own without a system
/// call, but never wastes much.
#[inline]
pub fn fits(len: usize, needed: usize) -> bool {
    len >= needed && len - needed <= needed / 4
}

#[derive(Clone, Copy)]
struct Cached {
    ptr: *mut u8,
    len: usize,
}

impl Cached {
    /// Whether this entry holds a mapping that may serve a block needing `len` bytes aligned
    /// to `align` (L1, L3).
    fn serves(&self, len: usize, align: usize) -> bool {
        !self.ptr.is_null() && fits(self.len, len) && self.ptr.addr() % align == 0
    }
}

const VACANT: Cached = Cached {
    ptr: ptr::null_mut(),
    len: 0,
};

pub(crate) struct Large {
    /// A ring of cached mappings; `next` is where the next one goes, so walking from `next`
    /// visits them oldest first.
    cache: [Cached; CACHE_ENTRIES],
    next: usize,
    cached_bytes: usize,
    cached_blocks: usize,
    /// The blocks in use (L2).
    in_use: Registry,
}

// SAFETY: cached mappings are owned exclusively by this value.
unsafe impl Send for Large {}

/// Figures about large blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LargeStats {
    pub blocks: usize,
    pub bytes: usize,
    pub cached_blocks: usize,
    pub cached_bytes: usize,
    /// Bytes of the table of blocks in use.
    pub table_bytes: usize,
}

/// Mappings to unmap once the allocator's lock is released.
pub(crate) struct Unmap {
    items: [Cached; CACHE_ENTRIES + 1],
    len: usize,
}

impl Unmap {
    const NONE: Unmap = Unmap {
        items: [VACANT; CACHE_ENTRIES + 1],
        len: 0,
    };

    fn push(&mut self, mapping: Cached) {
        match self.items.get_mut(self.len) {
            Some(slot) => *slot = mapping,
            None => fatal("large: more mappings to unmap than the cache holds"),
        }
        self.len += 1;
    }

    /// Unmaps them all.
    ///
    /// # Safety
    /// The mappings are no longer used by anyone (they were cached, or just freed).
    pub(crate) unsafe fn release<P: Platform>(self, platform: &P) {
        for m in &self.items[..self.len] {
            if let Some(ptr) = NonNull::new(m.ptr) {
                // SAFETY: a whole mapping of `len` bytes that nobody uses (caller, L1).
                unsafe { platform.release(ptr, m.len) };
            }
        }
    }
}

/// The bookkeeping of large blocks: what is in use, and the cache. It makes no system call
/// for blocks, so that the allocator can hold its lock only around this, never around
/// `mmap` of a block.
impl Large {
    pub(crate) const fn new() -> Large {
        Large {
            cache: [VACANT; CACHE_ENTRIES],
            next: 0,
            cached_bytes: 0,
            cached_blocks: 0,
            in_use: Registry::new(),
        }
    }

    /// Makes sure one more block can be registered; `false` if the table cannot grow.
    pub(crate) fn make_room<P: Platform>(&mut self, platform: &P) -> bool {
        self.in_use.make_room(platform)
    }

    /// The smallest cached mapping that [`fits`] a block needing `len` bytes, aligned to
    /// `align`, now registered in use (with its own length), if there is one. Call
    /// [`Large::make_room`] first.
    pub(crate) fn take_cached(&mut self, len: usize, align: usize) -> Option<NonNull<u8>> {
        let i = self
            .cache
            .iter()
            .enumerate()
            .filter(|(_, c)| c.serves(len, align))
            .min_by_key(|(_, c)| c.len)?
            .0;
        let entry = core::mem::replace(&mut self.cache[i], VACANT);
        self.cached_bytes -= entry.len;
        self.cached_blocks -= 1;
        let block = NonNull::new(entry.ptr)?;
        self.in_use.insert(block, entry.len);
        Some(block)
    }

    /// Whether [`Large::take_cached`] would find a mapping for `len` bytes aligned to `align`.
    pub(crate) fn has_cached(&self, len: usize, align: usize) -> bool {
        self.cache.iter().any(|c| c.serves(len, align))
    }

    /// Registers a new mapping of `len` bytes in use. Call [`Large::make_room`] first.
    pub(crate) fn register(&mut self, block: NonNull<u8>, len: usize) {
        self.in_use.insert(block, len);
    }

    /// The mapping length of the large block in use at `ptr`, if there is one.
    pub(crate) fn len_of(&self, ptr: *mut u8) -> Option<usize> {
        self.in_use.len_of(ptr)
    }

    /// Records that the block at `old` was remapped to `new`, `len` bytes long.
    pub(crate) fn moved(&mut self, old: NonNull<u8>, new: NonNull<u8>, len: usize) {
        if self.in_use.remove(old.as_ptr()).is_none() {
            fatal("large: a resized block was not registered");
        }
        // One out, one in: the table has room.
        self.in_use.insert(new, len);
    }

    /// Takes back a freed block: unregistered, then into the cache if it fits there. Returns
    /// its mapping length (`None`, changing nothing, if `ptr` is no large block in use) and
    /// what must be unmapped (the block itself, or cached mappings evicted for it).
    pub(crate) fn retire(&mut self, ptr: NonNull<u8>) -> Option<(usize, Unmap)> {
        let len = self.in_use.remove(ptr.as_ptr())?;
        let mut unmap = Unmap::NONE;
        let block = Cached {
            ptr: ptr.as_ptr(),
            len,
        };
        if len > CACHE_BYTES {
            unmap.push(block);
            return Some((len, unmap));
        }
        // Evict the oldest until the block fits and its entry is vacant.
        let mut i = self.next;
        while self.cached_bytes + len > CACHE_BYTES || !self.cache[self.next].ptr.is_null() {
            self.evict(i, &mut unmap);
            i = (i + 1) % CACHE_ENTRIES;
        }
        self.cache[self.next] = block;
        self.next = (self.next + 1) % CACHE_ENTRIES;
        self.cached_bytes += len;
        self.cached_blocks += 1;
        Some((len, unmap))
    }

    fn evict(&mut self, i: usize, unmap: &mut Unmap) {
        let entry = core::mem::replace(&mut self.cache[i], VACANT);
        if !entry.ptr.is_null() {
            self.cached_bytes -= entry.len;
            self.cached_blocks -= 1;
            unmap.push(entry);
        }
    }

    /// Empties the cache; returns what must be unmapped.
    pub(crate) fn trim(&mut self) -> Unmap {
        let mut unmap = Unmap::NONE;
        for i in 0..CACHE_ENTRIES {
            self.evict(i, &mut unmap);
        }
        unmap
    }

    pub(crate) fn stats(&self) -> LargeStats {
        LargeStats {
            blocks: self.in_use.count(),
            bytes: self.in_use.bytes(),
            cached_blocks: self.cached_blocks,
            cached_bytes: self.cached_bytes,
            table_bytes: self.in_use.table_bytes(),
        }
    }

    /// Checks the table of blocks in use (G1 to G3 in `registry.rs`).
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        self.in_use.check()
    }

    /// Unmaps every block still in use and the table, leaving no block registered.
    ///
    /// # Safety
    /// None of the blocks is used any more.
    pub(crate) unsafe fn release_in_use<P: Platform>(&mut self, platform: &P) {
        let table = self.in_use.take();
        // SAFETY: registered blocks start mappings of their length (L1, L2), unused (caller);
        // the table came from `platform`.
        unsafe {
            table.for_each(|block, len| platform.release(block, len));
            table.release(platform);
        }
    }
}
