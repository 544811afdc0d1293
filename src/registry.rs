//! [`Registry`]: the large blocks in use, by address, so that a block freed without its size
//! (C's `free`, `malloc_usable_size`) is found, a pointer that is no block of ours is told
//! apart, and a dropped instance can unmap what its users never freed.
//!
//! An open-addressing hash table with linear probing, in whole pages from the platform (never
//! from pymalloc itself), doubled when half full; deletion shifts later entries back, so there
//! are no tombstones. It lives under the allocator's lock, beside the cache of freed mappings.
//!
//! Invariants (checked by [`Registry::check`]):
//! - G1 `entries` is null and `capacity` 0, or it points to `capacity` entries, a power of two,
//!   of which `count` are occupied and `2 * count <= capacity`, so a probe always ends;
//! - G2 an occupied entry sits at its home index or after it, with no vacant entry in between
//!   (cyclically): a probe from the home index finds it;
//! - G3 `bytes` is the sum of the occupied entries' lengths, at most `peak_bytes`; no block
//!   appears twice.

use core::ptr::{self, NonNull};

use pymalloc_arena::{Capabilities, Platform};
use pymalloc_pool::fatal;

/// One large block: where its mapping starts and how long it is. A null `ptr` is vacant.
#[derive(Clone, Copy)]
struct Entry {
    ptr: *mut u8,
    len: usize,
}

const VACANT: Entry = Entry {
    ptr: ptr::null_mut(),
    len: 0,
};

pub(crate) struct Registry {
    entries: *mut Entry,
    capacity: usize,
    count: usize,
    bytes: usize,
    /// The most `bytes` has been.
    peak_bytes: usize,
}

// SAFETY: the table's memory is owned by this value alone.
unsafe impl Send for Registry {}

impl Registry {
    pub(crate) const fn new() -> Registry {
        Registry {
            entries: ptr::null_mut(),
            capacity: 0,
            count: 0,
            bytes: 0,
            peak_bytes: 0,
        }
    }

    /// Blocks registered.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Bytes of mapping of the blocks registered.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The most bytes of mapping registered at once so far.
    pub(crate) fn peak_bytes(&self) -> usize {
        self.peak_bytes
    }

    /// Bytes of the table itself, mapped from the platform.
    pub(crate) fn table_bytes(&self) -> usize {
        self.capacity * size_of::<Entry>()
    }

    /// Where a probe for `ptr` starts: Fibonacci hashing, whose top bits depend on every bit of
    /// the address.
    fn home(&self, ptr: *mut u8) -> usize {
        let bits = self.capacity.trailing_zeros();
        ((ptr.addr() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (u64::BITS - bits)) as usize
    }

    /// # Safety
    /// `i < self.capacity`.
    unsafe fn entry(&self, i: usize) -> *mut Entry {
        // SAFETY: in bounds of the table (caller, G1).
        unsafe { self.entries.add(i) }
    }

    /// The index of `ptr`'s entry, if registered.
    fn find(&self, ptr: *mut u8) -> Option<usize> {
        if self.capacity == 0 {
            return None;
        }
        let mask = self.capacity - 1;
        let mut i = self.home(ptr);
        loop {
            // SAFETY: `i <= mask`; the probe ends at a vacant entry (G1).
            let e = unsafe { self.entry(i).read() };
            if e.ptr.is_null() {
                return None;
            }
            if e.ptr == ptr {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// The mapping length of the registered block starting at `ptr`.
    pub(crate) fn len_of(&self, ptr: *mut u8) -> Option<usize> {
        let i = self.find(ptr)?;
        // SAFETY: `find` returns an index in bounds.
        Some(unsafe { self.entry(i).read() }.len)
    }

    /// Makes sure one more block can be registered, doubling the table if needed. `false` if
    /// the platform refuses the memory; the table is then unchanged.
    pub(crate) fn make_room<P: Platform>(&mut self, platform: &P) -> bool {
        if 2 * (self.count + 1) <= self.capacity {
            return true;
        }
        let capacity = if self.capacity == 0 {
            (platform.page_size() / size_of::<Entry>()).next_power_of_two()
        } else {
            2 * self.capacity
        };
        let bytes = capacity * size_of::<Entry>();
        let Some(memory) = platform.reserve(bytes, align_of::<Entry>()) else {
            return false;
        };
        let entries = memory.as_ptr().cast::<Entry>();
        // SAFETY: a fresh reservation of `capacity` entries; an all-zero entry is vacant.
        unsafe {
            if !P::CAPABILITIES.contains(Capabilities::ZERO_FILLED) {
                entries.write_bytes(0, capacity);
            }
        }
        let old = Registry {
            entries: self.entries,
            capacity: self.capacity,
            ..Registry::new()
        };
        self.entries = entries;
        self.capacity = capacity;
        for i in 0..old.capacity {
            // SAFETY: `i` is in bounds of the old table.
            let e = unsafe { old.entry(i).read() };
            if !e.ptr.is_null() {
                self.place(e);
            }
        }
        // SAFETY: the old table was reserved with this size and nothing refers to it now.
        unsafe { old.release(platform) };
        true
    }

    /// Puts `e` in the first vacant entry of its probe.
    fn place(&mut self, e: Entry) {
        let mask = self.capacity - 1;
        let mut i = self.home(e.ptr);
        // SAFETY: indices are masked into bounds; a vacant entry exists (G1).
        unsafe {
            while !(*self.entry(i)).ptr.is_null() {
                i = (i + 1) & mask;
            }
            self.entry(i).write(e);
        }
    }

    /// Registers a block of `len` bytes of mapping at `ptr`, after [`Registry::make_room`]
    /// said there was room.
    pub(crate) fn insert(&mut self, ptr: NonNull<u8>, len: usize) {
        if 2 * (self.count + 1) > self.capacity {
            fatal("registry: insert without room");
        }
        self.place(Entry {
            ptr: ptr.as_ptr(),
            len,
        });
        self.count += 1;
        self.bytes += len;
        self.peak_bytes = self.peak_bytes.max(self.bytes);
    }

    /// Unregisters the block at `ptr`; its mapping length, or `None` if it is not registered.
    pub(crate) fn remove(&mut self, ptr: *mut u8) -> Option<usize> {
        let mut hole = self.find(ptr)?;
        let mask = self.capacity - 1;
        // SAFETY: `find` returns an index in bounds; all others are masked into bounds.
        unsafe {
            let len = (*self.entry(hole)).len;
            self.count -= 1;
            self.bytes -= len;
            // Shift back each later entry of the run whose probe passes the hole (G2).
            let mut j = hole;
            loop {
                j = (j + 1) & mask;
                let e = self.entry(j).read();
                if e.ptr.is_null() {
                    break;
                }
                let from_home = j.wrapping_sub(self.home(e.ptr)) & mask;
                let from_hole = j.wrapping_sub(hole) & mask;
                if from_home >= from_hole {
                    self.entry(hole).write(e);
                    hole = j;
                }
            }
            self.entry(hole).write(VACANT);
            Some(len)
        }
    }

    /// Visits every registered block with its mapping length.
    pub(crate) fn for_each(&self, mut f: impl FnMut(NonNull<u8>, usize)) {
        for i in 0..self.capacity {
            // SAFETY: `i` is in bounds.
            let e = unsafe { self.entry(i).read() };
            if let Some(ptr) = NonNull::new(e.ptr) {
                f(ptr, e.len);
            }
        }
    }

    /// Unmaps the table (not the blocks), leaving it empty.
    ///
    /// # Safety
    /// The table was reserved from `platform`; nothing looks it up afterwards unless it is
    /// filled again.
    pub(crate) unsafe fn release<P: Platform>(self, platform: &P) {
        if let Some(entries) = NonNull::new(self.entries) {
            // SAFETY: reserved by `make_room` with this size (caller).
            unsafe { platform.release(entries.cast(), self.table_bytes()) };
        }
    }

    /// Takes the table out, leaving an empty one.
    pub(crate) fn take(&mut self) -> Registry {
        core::mem::replace(self, Registry::new())
    }

    /// Checks G1 to G3.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        let (mut count, mut bytes) = (0, 0);
        let mut result = Ok(());
        self.for_each(|ptr, len| {
            count += 1;
            bytes += len;
            if result.is_ok() && self.len_of(ptr.as_ptr()) != Some(len) {
                result = Err("registry: a large block is not found where its probe looks");
            }
        });
        result?;
        if count != self.count
            || bytes != self.bytes
            || bytes > self.peak_bytes
            || 2 * self.count > self.capacity
        {
            return Err("registry: the counts disagree with the table");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pymalloc_arena::TestPlatform;
    use std::collections::HashMap;

    /// Random inserts and removes against a `HashMap`, with every invariant checked.
    #[test]
    fn behaves_like_a_map() {
        let platform = TestPlatform::new();
        let mut table = Registry::new();
        let mut model = HashMap::new();
        let mut seed = 0x1234_5678_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for step in 0..20_000 {
            // Page-aligned addresses from a small range, so that probes collide and wrap.
            let addr = ((next() % 4096) as usize + 1) << 12;
            let ptr = ptr::without_provenance_mut::<u8>(addr);
            if let Some(len) = model.remove(&addr) {
                assert_eq!(table.remove(ptr), Some(len), "step {step}");
            } else if next() % 3 != 0 {
                let len = (next() % 64 + 1) as usize * 4096;
                assert!(table.make_room(&platform));
                table.insert(NonNull::new(ptr).unwrap(), len);
                model.insert(addr, len);
            }
            assert_eq!(table.count(), model.len());
            if step % 500 == 0 {
                table.check().unwrap();
                for (&a, &len) in &model {
                    assert_eq!(table.len_of(ptr::without_provenance_mut(a)), Some(len));
                }
            }
        }
        assert_eq!(table.bytes(), model.values().sum::<usize>());
        assert_eq!(table.len_of(ptr::without_provenance_mut(8)), None);
        // SAFETY: the table came from this platform.
        unsafe { table.release(&platform) };
        assert_eq!(platform.live_reservations(), 0);
    }

    #[test]
    fn a_refused_table_leaves_the_registry_usable() {
        let platform = TestPlatform::new();
        let mut table = Registry::new();
        platform.set_fail_reserves(true);
        assert!(!table.make_room(&platform));
        assert_eq!(table.len_of(ptr::without_provenance_mut(4096)), None);
        assert_eq!(table.remove(ptr::without_provenance_mut(4096)), None);
        table.check().unwrap();
    }
}
