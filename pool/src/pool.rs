//! The pool: one [`POOL_SIZE`]-aligned slot of memory carved into blocks of one size class.
//!
//! ```text
//! | Pool header | pad to POOL_OVERHEAD | block 0 | block 1 | ... | never used ... |
//! ^ POOL_SIZE-aligned                                          ^ bump
//! ```
//!
//! Invariants of a live pool (checked by [`PoolPtr::check`]):
//! - P1 the header sits at the pool's `POOL_SIZE`-aligned start, so the header of any block
//!   is found by masking the block's address ([`PoolPtr::containing`]).
//! - P2 every block starts at `POOL_OVERHEAD + k * size` and ends by `POOL_SIZE`.
//! - P3 blocks below `bump` are either in use or on the freelist, never both; blocks at or
//!   above `bump` have never been handed out (the pool is carved lazily, like obmalloc's).
//! - P4 `used` + freelist length = number of blocks below `bump`.
//! - P5 the pool is *full* exactly when its freelist is empty and no block is left to carve.
//! - P6 if `fresh`, the memory from `bump` to the end of the pool reads zero.

use core::ptr::{self, NonNull};

use crate::class::{ALIGNMENT, SizeClass};
use crate::fatal::ensure;

/// Bytes in one pool. A power of two: pool headers are found by masking block addresses.
pub const POOL_SIZE: usize = 16 * 1024;

/// Bytes at the start of every pool taken by its header, rounded up to the block alignment.
pub const POOL_OVERHEAD: usize = size_of::<Pool>().next_multiple_of(ALIGNMENT);

const _: () = assert!(POOL_SIZE.is_power_of_two());
// Every class has room for at least two blocks, so one free cannot both leave a full pool
// and empty it: `Freed::WasFull` and `Freed::Empty` are exclusive.
const _: () = assert!(blocks_per_pool(SizeClass::from_index(crate::NUM_CLASSES - 1).unwrap()) >= 2);

/// Number of blocks of `class` that fit in one pool.
pub const fn blocks_per_pool(class: SizeClass) -> usize {
    (POOL_SIZE - POOL_OVERHEAD) / class.block_size()
}

/// The header at the start of every pool.
#[repr(C)]
pub struct Pool {
    /// Head of the freelist; each free block's first word holds the next free block.
    free: *mut u8,
    /// Links in the list of usable pools of this class (see [`PoolList`]).
    prev: *mut Pool,
    next: *mut Pool,
    /// Blocks handed out and not yet freed.
    used: u32,
    /// Offset of the first never-used block.
    bump: u32,
    /// Block size of `class`, kept here so the fast path need not compute it.
    size: u32,
    class: SizeClass,
    /// Whether the never-used part of the pool reads zero (invariant P6).
    fresh: bool,
}

/// What a free did to its pool's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freed {
    /// The pool still has blocks in use and was not full before.
    InUse,
    /// The pool was full: it is usable again and must rejoin its class's list.
    WasFull,
    /// The last block in use came back: the whole pool is free.
    Empty,
}

/// A pointer to a live pool header. All access goes through raw pointers that carry the
/// provenance of the whole slot, so blocks derived from it may cover the entire pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolPtr(NonNull<Pool>);

impl PoolPtr {
    /// Formats `slot` as an empty pool of `class`.
    ///
    /// # Safety
    /// `slot` is `POOL_SIZE`-aligned, points to `POOL_SIZE` writable bytes that the caller owns
    /// exclusively and that stay mapped while the pool is used; if `fresh`, they read zero.
    pub unsafe fn init(slot: NonNull<u8>, class: SizeClass, fresh: bool) -> PoolPtr {
        ensure(
            slot.addr().get() % POOL_SIZE == 0,
            "pool slot is not POOL_SIZE-aligned",
        );
        let pool = slot.cast::<Pool>();
        // SAFETY: the caller guarantees the slot is writable and ours; the header fits in it.
        unsafe {
            pool.write(Pool {
                free: ptr::null_mut(),
                prev: ptr::null_mut(),
                next: ptr::null_mut(),
                used: 0,
                bump: POOL_OVERHEAD as u32,
                size: class.block_size() as u32,
                class,
                fresh,
            });
        }
        PoolPtr(pool)
    }

    /// The pool that contains `block` (invariant P1). Pure address arithmetic: the result is
    /// only meaningful if `block` lies in a pool.
    #[inline(always)]
    pub fn containing(block: NonNull<u8>) -> PoolPtr {
        let base = block.as_ptr().map_addr(|a| a & !(POOL_SIZE - 1));
        // SAFETY: a block lies at least POOL_OVERHEAD bytes above its pool's start, and the
        // pool itself is mapped memory, so the masked address is not zero.
        PoolPtr(unsafe { NonNull::new_unchecked(base.cast()) })
    }

    /// The pool's slot: the address it was created at.
    #[inline(always)]
    pub fn slot(self) -> NonNull<u8> {
        self.0.cast()
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
            if let Some(block) = NonNull::new((*p).free) {
                (*p).free = block.cast::<*mut u8>().read();
                (*p).used += 1;
                return Some((block, false));
            }
            let bump = (*p).bump as usize;
            let next = bump + (*p).size as usize;
            if next <= POOL_SIZE {
                (*p).bump = next as u32;
                (*p).used += 1;
                return Some((self.0.cast::<u8>().add(bump), (*p).fresh));
            }
        }
        None
    }

    /// Whether no block is left to hand out (invariant P5).
    ///
    /// # Safety
    /// `self` is a live pool and the caller has exclusive access to it.
    #[inline(always)]
    pub unsafe fn is_full(self) -> bool {
        let p = self.0.as_ptr();
        // SAFETY: the pool is live (caller).
        unsafe { (*p).free.is_null() && (*p).bump as usize + (*p).size as usize > POOL_SIZE }
    }

    /// Returns `block` to the freelist.
    ///
    /// # Safety
    /// `self` is a live pool the caller has exclusive access to, and `block` is the start of a
    /// block of this pool that is in use.
    #[inline(always)]
    pub unsafe fn free(self, block: NonNull<u8>) -> Freed {
        let p = self.0.as_ptr();
        // SAFETY: the pool is live and ours; `block` is one of its blocks in use (caller), so
        // its first word is ours to overwrite with the freelist link.
        unsafe {
            ensure(
                (*p).used != 0,
                "free into a pool with no block in use (double free?)",
            );
            let was_full = self.is_full();
            block.cast::<*mut u8>().write((*p).free);
            (*p).free = block.as_ptr();
            (*p).used -= 1;
            if (*p).used == 0 {
                Freed::Empty
            } else if was_full {
                Freed::WasFull
            } else {
                Freed::InUse
            }
        }
    }

    /// The start of the block that contains `ptr`, for pointers handed out at an offset
    /// inside their block (over-aligned requests).
    ///
    /// # Safety
    /// `self` is a live pool and `ptr` points into one of its blocks.
    #[inline]
    pub unsafe fn block_start(self, ptr: NonNull<u8>) -> NonNull<u8> {
        // SAFETY: the pool is live (caller).
        let size = unsafe { (*self.0.as_ptr()).size } as usize;
        let offset = ptr.addr().get() - self.0.addr().get();
        let start = POOL_OVERHEAD + (offset - POOL_OVERHEAD) / size * size;
        // SAFETY: `start` is the offset of the block holding `ptr`, inside the same pool,
        // so the result is within `ptr`'s allocation and not null.
        unsafe { self.0.cast::<u8>().add(start) }
    }

    /// The pool's size class.
    ///
    /// # Safety
    /// `self` is a live pool.
    #[inline(always)]
    pub unsafe fn class(self) -> SizeClass {
        // SAFETY: the pool is live (caller).
        unsafe { (*self.0.as_ptr()).class }
    }

    /// Blocks in use.
    ///
    /// # Safety
    /// `self` is a live pool.
    #[inline]
    pub unsafe fn used(self) -> usize {
        // SAFETY: the pool is live (caller).
        unsafe { (*self.0.as_ptr()).used as usize }
    }

    /// Checks invariants P2 to P5 by walking the freelist.
    ///
    /// # Safety
    /// `self` is a live pool the caller has exclusive access to.
    pub unsafe fn check(self) -> Result<(), &'static str> {
        // SAFETY: the pool is live and ours (caller).
        let (class, size, bump, used, mut free) = unsafe {
            let p = self.0.as_ptr();
            (
                (*p).class,
                (*p).size as usize,
                (*p).bump as usize,
                (*p).used as usize,
                (*p).free,
            )
        };
        if size != class.block_size() {
            return Err("pool: block size does not match its class");
        }
        if !(POOL_OVERHEAD..=POOL_SIZE).contains(&bump) || (bump - POOL_OVERHEAD) % size != 0 {
            return Err("pool: bump offset off the block grid");
        }
        let carved = (bump - POOL_OVERHEAD) / size;
        let base = self.0.addr().get();
        let mut listed = 0;
        while !free.is_null() {
            let offset = free.addr().wrapping_sub(base);
            if offset < POOL_OVERHEAD || offset >= bump || (offset - POOL_OVERHEAD) % size != 0 {
                return Err("pool: freelist entry outside the carved blocks");
            }
            listed += 1;
            if listed > carved {
                return Err("pool: freelist longer than the carved blocks (cycle?)");
            }
            // SAFETY: `free` was just checked to be a carved block of this live pool.
            free = unsafe { free.cast::<*mut u8>().read() };
        }
        if used + listed != carved {
            return Err("pool: blocks in use plus free blocks differ from blocks carved");
        }
        Ok(())
    }
}

/// A doubly-linked list of pools through their headers' links: a size class's usable pools.
pub struct PoolList {
    head: *mut Pool,
}

impl Default for PoolList {
    fn default() -> Self {
        Self::new()
    }
}

impl PoolList {
    /// An empty list.
    pub const fn new() -> Self {
        PoolList {
            head: ptr::null_mut(),
        }
    }

    /// The first pool, if any.
    #[inline(always)]
    pub fn first(&self) -> Option<PoolPtr> {
        NonNull::new(self.head).map(PoolPtr)
    }

    /// Links `pool` in at the front.
    ///
    /// # Safety
    /// `pool` is live, exclusively ours, and in no list.
    pub unsafe fn push_front(&mut self, pool: PoolPtr) {
        let p = pool.0.as_ptr();
        // SAFETY: `pool` and the current head are live pools that this list owns the links of.
        unsafe {
            (*p).prev = ptr::null_mut();
            (*p).next = self.head;
            if !self.head.is_null() {
                (*self.head).prev = p;
            }
        }
        self.head = p;
    }

    /// Unlinks `pool`.
    ///
    /// # Safety
    /// `pool` is live, exclusively ours, and in this list.
    pub unsafe fn remove(&mut self, pool: PoolPtr) {
        let p = pool.0.as_ptr();
        // SAFETY: `pool` and its neighbours are live pools of this list (caller).
        unsafe {
            let (prev, next) = ((*p).prev, (*p).next);
            if prev.is_null() {
                self.head = next;
            } else {
                (*prev).next = next;
            }
            if !next.is_null() {
                (*next).prev = prev;
            }
            (*p).prev = ptr::null_mut();
            (*p).next = ptr::null_mut();
        }
    }

    /// Visits every pool in the list.
    ///
    /// # Safety
    /// Every pool in the list is live and not modified during the walk.
    pub unsafe fn for_each(&self, mut f: impl FnMut(PoolPtr)) {
        let mut p = self.head;
        while let Some(pool) = NonNull::new(p) {
            f(PoolPtr(pool));
            // SAFETY: pools in the list are live (caller).
            p = unsafe { (*p).next };
        }
    }
}
