//! Large blocks: requests above the small range (or too aligned for it), each served by a
//! mapping of its own straight from the platform, with a small cache of freed mappings so
//! that repeated large allocations do not each pay for a system call and fresh page faults.
//!
//! Invariants:
//! - L1 a large block of layout (size, align) starts a mapping of exactly
//!   [`mapping_len`]`(size)` bytes, aligned to `max(align, page)`: its layout alone says how
//!   to unmap it, so large blocks carry no header;
//! - L2 the cache holds at most [`CACHE_ENTRIES`] mappings and [`CACHE_BYTES`] bytes, none of
//!   them in use; a cached mapping is handed out again only for the same length and an
//!   alignment its address already has.

use core::ptr::{self, NonNull};

use pymalloc_arena::Platform;
use pymalloc_pool::fatal;

/// Freed mappings kept for reuse.
pub const CACHE_ENTRIES: usize = 8;
/// Bytes of freed mappings kept for reuse, at most.
pub const CACHE_BYTES: usize = 4 << 20;

/// Bytes mapped for a large block of `size` bytes; `None` if that overflows.
#[inline]
pub fn mapping_len(size: usize, page: usize) -> Option<usize> {
    size.max(1).checked_next_multiple_of(page)
}

#[derive(Clone, Copy)]
struct Cached {
    ptr: *mut u8,
    len: usize,
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
    blocks: usize,
    bytes: usize,
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
}

impl Large {
    pub(crate) const fn new() -> Large {
        Large {
            cache: [VACANT; CACHE_ENTRIES],
            next: 0,
            cached_bytes: 0,
            cached_blocks: 0,
            blocks: 0,
            bytes: 0,
        }
    }

    /// A block of `size` bytes aligned to `align`, with whether it reads zero.
    pub(crate) fn alloc<P: Platform>(
        &mut self,
        platform: &P,
        size: usize,
        align: usize,
    ) -> Option<(NonNull<u8>, bool)> {
        let len = mapping_len(size, platform.page_size())?;
        let block = match self.take_cached(len, align) {
            Some(ptr) => (ptr, false),
            None => (platform.reserve(len, align)?, P::ZERO_FILLED),
        };
        self.blocks += 1;
        self.bytes += len;
        Some(block)
    }

    /// Frees a block, into the cache if it fits there.
    ///
    /// # Safety
    /// `ptr` is a large block in use, allocated here with `size`.
    pub(crate) unsafe fn dealloc<P: Platform>(
        &mut self,
        platform: &P,
        ptr: NonNull<u8>,
        size: usize,
    ) {
        let Some(len) = mapping_len(size, platform.page_size()) else {
            fatal("large dealloc: a size that was never allocated");
        };
        self.blocks -= 1;
        self.bytes -= len;
        if len <= CACHE_BYTES {
            self.make_room(platform, len);
            self.cache[self.next] = Cached {
                ptr: ptr.as_ptr(),
                len,
            };
            self.next = (self.next + 1) % CACHE_ENTRIES;
            self.cached_bytes += len;
            self.cached_blocks += 1;
        } else {
            // SAFETY: a mapping of `len` bytes that is no longer used (L1, caller).
            unsafe { platform.release(ptr, len) };
        }
    }

    /// Resizes a block without copying: in place if the mapping length does not change, else
    /// by remapping. `None` if it must move by copy; the block is then unchanged.
    ///
    /// # Safety
    /// `ptr` is a large block in use, allocated here with `old_size` and `align`.
    pub(crate) unsafe fn realloc<P: Platform>(
        &mut self,
        platform: &P,
        ptr: NonNull<u8>,
        old_size: usize,
        align: usize,
        new_size: usize,
    ) -> Option<NonNull<u8>> {
        let page = platform.page_size();
        let old = mapping_len(old_size, page)?;
        let new = mapping_len(new_size, page)?;
        if old == new {
            return Some(ptr);
        }
        if !P::CAN_REMAP {
            return None;
        }
        // The system places a moved mapping on a page boundary, no more: over-aligned blocks
        // may only be resized in place.
        // SAFETY: `ptr` starts a live mapping of `old` bytes (L1).
        let resized = unsafe { platform.remap(ptr, old, new, align <= page) }?;
        self.bytes = self.bytes - old + new;
        Some(resized)
    }

    /// Evicts the oldest cached mappings until `len` more bytes fit and the next entry is free.
    fn make_room<P: Platform>(&mut self, platform: &P, len: usize) {
        let mut i = self.next;
        while self.cached_bytes + len > CACHE_BYTES || !self.cache[self.next].ptr.is_null() {
            self.evict(platform, i);
            i = (i + 1) % CACHE_ENTRIES;
        }
    }

    fn evict<P: Platform>(&mut self, platform: &P, i: usize) {
        let entry = core::mem::replace(&mut self.cache[i], VACANT);
        if let Some(ptr) = NonNull::new(entry.ptr) {
            self.cached_bytes -= entry.len;
            self.cached_blocks -= 1;
            // SAFETY: a cached mapping of `len` bytes, in use by nobody (L2).
            unsafe { platform.release(ptr, entry.len) };
        }
    }

    fn take_cached(&mut self, len: usize, align: usize) -> Option<NonNull<u8>> {
        let i = self
            .cache
            .iter()
            .position(|c| c.len == len && !c.ptr.is_null() && c.ptr.addr() % align == 0)?;
        let entry = core::mem::replace(&mut self.cache[i], VACANT);
        self.cached_bytes -= len;
        self.cached_blocks -= 1;
        NonNull::new(entry.ptr)
    }

    /// Unmaps every cached mapping.
    pub(crate) fn trim<P: Platform>(&mut self, platform: &P) {
        for i in 0..CACHE_ENTRIES {
            self.evict(platform, i);
        }
    }

    pub(crate) fn stats(&self) -> LargeStats {
        LargeStats {
            blocks: self.blocks,
            bytes: self.bytes,
            cached_blocks: self.cached_blocks,
            cached_bytes: self.cached_bytes,
        }
    }
}
