//! The pool: `class.pool_bytes()` of memory — one slot of [`POOL_SIZE`] bytes, or a span of
//! several — aligned to its own size and carved into blocks of one size class.
//!
//! ```text
//! | Pool header | pad to POOL_OVERHEAD | block 0 | block 1 | ... | never used ... |
//! ^ aligned to the pool's size                                 ^ bump          ^ limit
//! ```
//!
//! Invariants of a live pool (checked by [`PoolPtr::check`]):
//! - P1 the header sits at the pool's start, aligned to the pool's size, so the header of any
//!   block is found by masking the block's address ([`PoolPtr::containing`]).
//! - P2 every block starts at `POOL_OVERHEAD + k * size` and ends by `limit`, the pool's size.
//! - P3 blocks below `bump` are either in use or on the freelist, never both; blocks at or
//!   above `bump` have never been handed out (the pool is carved lazily, like obmalloc's).
//! - P4 `used` + freelist length = number of blocks below `bump`.
//! - P5 the pool is *full* exactly when its freelist is empty and no block is left to carve.
//! - P6 if `fresh`, the memory from `bump` to the end of the pool reads zero.
//! - P7 `owner` is set when the pool is created or reused and does not change while a block
//!   is in use; it is the only field other threads read (atomically), to learn where a block
//!   they free must go. Everything else belongs to whoever owns the pool.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, Ordering};

use crate::asan;
use crate::class::{ALIGNMENT, SizeClass};
use crate::fatal::ensure;

/// Bytes in one slot — the unit arenas hand out, and the size of a single-slot pool. A power
/// of two, like every pool's size.
pub const POOL_SIZE: usize = 16 * 1024;

/// Bytes at the start of every pool taken by its header, rounded up to the block alignment.
pub const POOL_OVERHEAD: usize = size_of::<Pool>().next_multiple_of(ALIGNMENT);

const _: () = assert!(POOL_SIZE.is_power_of_two());

/// Number of blocks of `class` that fit in one pool.
pub const fn blocks_per_pool(class: SizeClass) -> usize {
    (class.pool_bytes() - POOL_OVERHEAD) / class.block_size()
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
    /// Block size of `class`, kept here so the fast path need not look it up.
    size: u32,
    /// Bytes of the pool: `class.pool_bytes()`.
    limit: u32,
    class: SizeClass,
    /// Whether the never-used part of the pool reads zero (invariant P6).
    fresh: bool,
    /// The heap that owns the pool, opaque to this crate (invariant P7).
    owner: AtomicPtr<()>,
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

/// A pointer to a live pool header. All access goes through raw pointers that carry the
/// provenance of the whole pool, so blocks derived from it may cover the entire pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolPtr(NonNull<Pool>);

impl PoolPtr {
    /// Formats `memory` as an empty pool of `class` owned by `owner`.
    ///
    /// # Safety
    /// `memory` is aligned to `class.pool_bytes()` and points to that many writable bytes that
    /// the caller owns exclusively, that no other thread reads, and that stay mapped while the
    /// pool is used; if `fresh`, they read zero.
    pub unsafe fn init(
        memory: NonNull<u8>,
        class: SizeClass,
        fresh: bool,
        owner: *mut (),
    ) -> PoolPtr {
        let limit = class.pool_bytes();
        ensure(
            memory.addr().get() % limit == 0,
            "pool memory is not aligned to its size",
        );
        let pool = memory.cast::<Pool>();
        // SAFETY: the caller guarantees the memory is writable and ours; the header fits in it.
        unsafe {
            pool.write(Pool {
                free: ptr::null_mut(),
                prev: ptr::null_mut(),
                next: ptr::null_mut(),
                used: 0,
                bump: POOL_OVERHEAD as u32,
                size: class.block_size() as u32,
                limit: limit as u32,
                class,
                fresh,
                owner: AtomicPtr::new(owner),
            });
        }
        asan::poison(
            memory.as_ptr().wrapping_add(POOL_OVERHEAD),
            limit - POOL_OVERHEAD,
        );
        PoolPtr(pool)
    }

    /// The pool's memory, to go back to the arenas: the pool is no more.
    ///
    /// # Safety
    /// `self` is a live pool with no block in use, exclusively the caller's.
    pub unsafe fn retire(self) -> NonNull<u8> {
        // SAFETY: the pool is live (caller).
        let limit = unsafe { (*self.0.as_ptr()).limit } as usize;
        asan::unpoison(self.0.as_ptr().cast(), limit);
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
                (*p).limit as usize == class.pool_bytes() && (*p).used == 0,
                "pool reused for a class of another size, or with blocks in use",
            );
            (*p).free = ptr::null_mut();
            (*p).prev = ptr::null_mut();
            (*p).next = ptr::null_mut();
            (*p).bump = POOL_OVERHEAD as u32;
            (*p).size = class.block_size() as u32;
            (*p).class = class;
            (*p).fresh = false;
            let limit = (*p).limit as usize;
            asan::poison(
                self.0.as_ptr().cast::<u8>().add(POOL_OVERHEAD),
                limit - POOL_OVERHEAD,
            );
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

    /// The pool of `class` that contains `block` (invariant P1). Pure address arithmetic: the
    /// result is only meaningful if `block` lies in a pool of that class.
    #[inline(always)]
    pub fn containing(block: NonNull<u8>, class: SizeClass) -> PoolPtr {
        let base = block.as_ptr().map_addr(|a| a & !(class.pool_bytes() - 1));
        // SAFETY: a block lies at least POOL_OVERHEAD bytes above its pool's start, and the
        // pool itself is mapped memory, so the masked address is not zero.
        PoolPtr(unsafe { NonNull::new_unchecked(base.cast()) })
    }

    /// The pool that starts at `memory`.
    ///
    /// # Safety
    /// A live pool starts at `memory`.
    #[inline]
    pub unsafe fn at(memory: NonNull<u8>) -> PoolPtr {
        PoolPtr(memory.cast())
    }

    /// The pool's memory: the address it was created at.
    #[inline(always)]
    pub fn memory(self) -> NonNull<u8> {
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
                asan::unpoison(block.as_ptr(), (*p).size as usize);
                (*p).free = block.cast::<*mut u8>().read();
                (*p).used += 1;
                return Some((block, false));
            }
            let bump = (*p).bump;
            let next = bump + (*p).size;
            if next <= (*p).limit {
                (*p).bump = next;
                (*p).used += 1;
                let block = self.0.cast::<u8>().add(bump as usize);
                asan::unpoison(block.as_ptr(), (*p).size as usize);
                return Some((block, (*p).fresh));
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
        unsafe { (*p).free.is_null() && (*p).bump + (*p).size > (*p).limit }
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
            asan::poison(block.as_ptr(), (*p).size as usize);
            (*p).free = block.as_ptr();
            (*p).used -= 1;
            Freed {
                was_full,
                now_empty: (*p).used == 0,
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

    /// The start of the block that `ptr` points into, if it lies in the pool's block area
    /// (P2); `None` for the header, the tail that holds no whole block, or another pool.
    /// Reads only what is fixed while a block of the pool is in use (its size and limit).
    ///
    /// # Safety
    /// `self` is a live pool.
    #[inline]
    pub unsafe fn block_holding(self, ptr: NonNull<u8>) -> Option<NonNull<u8>> {
        // SAFETY: the pool is live (caller).
        let (size, limit) = unsafe {
            let p = self.0.as_ptr();
            ((*p).size as usize, (*p).limit as usize)
        };
        let offset = ptr.addr().get().wrapping_sub(self.0.addr().get());
        if !(POOL_OVERHEAD..limit).contains(&offset) {
            return None;
        }
        let start = POOL_OVERHEAD + (offset - POOL_OVERHEAD) / size * size;
        // SAFETY: `start < limit`: inside the pool, so within its provenance and not null.
        (start + size <= limit).then(|| unsafe { self.0.cast::<u8>().add(start) })
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

    /// Checks invariants P1 to P5 by walking the freelist.
    ///
    /// # Safety
    /// `self` is a live pool the caller has exclusive access to.
    pub unsafe fn check(self) -> Result<(), &'static str> {
        // SAFETY: the pool is live and ours (caller).
        let (class, size, limit, bump, used, mut free) = unsafe {
            let p = self.0.as_ptr();
            let (size, limit, bump) = ((*p).size as usize, (*p).limit as usize, (*p).bump as usize);
            ((*p).class, size, limit, bump, (*p).used as usize, (*p).free)
        };
        if size != class.block_size() || limit != class.pool_bytes() {
            return Err("pool: block or pool size does not match its class");
        }
        if self.0.addr().get() % limit != 0 {
            return Err("pool: not aligned to its size");
        }
        if !(POOL_OVERHEAD..=limit).contains(&bump) || (bump - POOL_OVERHEAD) % size != 0 {
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
            let link = size_of::<*mut u8>();
            asan::unpoison(free, link);
            // SAFETY: `free` was just checked to be a carved block of this live pool.
            let next = unsafe { free.cast::<*mut u8>().read() };
            asan::poison(free, link);
            free = next;
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
