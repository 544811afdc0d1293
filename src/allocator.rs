//! [`Allocator`]: one pymalloc instance over a [`Platform`] — a heap of small-block pools,
//! the arenas under it, and the large blocks — behind one lock. `PyMalloc`, the global
//! allocator, is a static instance over the operating system; tests make their own instances
//! over `TestPlatform`.
//!
//! Every `Layout` is routed by its size and alignment alone ([`Route`]): what fits a size
//! class (up to 256 KiB) once padded for its alignment is a pool block; anything else is a
//! large block.
//! Nothing here allocates, panics or unwinds: a request that cannot be served gets null.

use core::alloc::Layout;
use core::ptr::{self, NonNull};
use std::sync::{Mutex, MutexGuard, PoisonError};

use pymalloc_arena::{Arenas, Platform};
use pymalloc_pool::{ALIGNMENT, PoolPtr, SizeClass, fatal};

use crate::debug;
use crate::heap::Heap;
use crate::large::{Large, mapping_len};
use crate::stats::Stats;

/// How a layout is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// A block of this class (small or medium); over-aligned layouts get a block padded by
    /// `align - 16` and a pointer aligned inside it.
    Pooled(SizeClass),
    /// A mapping of its own.
    Large,
}

impl Route {
    #[inline(always)]
    pub(crate) fn of(layout: Layout) -> Route {
        // `Layout` guarantees size + align - 1 <= isize::MAX, so this cannot overflow.
        let padded = layout.size() + layout.align().saturating_sub(ALIGNMENT);
        match SizeClass::for_size(padded) {
            Some(class) => Route::Pooled(class),
            None => Route::Large,
        }
    }
}

pub(crate) struct State {
    pub(crate) heap: Heap,
    pub(crate) arenas: Arenas,
    pub(crate) large: Large,
}

/// A pymalloc instance over the platform `P`.
pub struct Allocator<P: Platform> {
    platform: P,
    state: Mutex<State>,
}

impl<P: Platform> Allocator<P> {
    /// An instance that maps nothing until its first allocation.
    pub const fn new(platform: P) -> Self {
        Allocator {
            platform,
            state: Mutex::new(State {
                heap: Heap::new(),
                arenas: Arenas::new(),
                large: Large::new(),
            }),
        }
    }

    /// The platform this instance takes its memory from.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock, so poisoning cannot happen; if it somehow
        // did, the state is still consistent between operations.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A block for `layout`, with whether it reads zero; `None` if it cannot be had.
    #[inline]
    pub(crate) fn allocate(&self, layout: Layout) -> Option<(NonNull<u8>, bool)> {
        match Route::of(layout) {
            Route::Pooled(class) => {
                let mut guard = self.state();
                let State { heap, arenas, .. } = &mut *guard;
                let (block, zeroed) = heap.alloc(class, arenas, &self.platform)?;
                // `Layout` alignments are powers of two: round up with a mask, not a division.
                let mask = layout.align() - 1;
                let aligned = block.as_ptr().map_addr(|a| (a + mask) & !mask);
                // SAFETY: aligning up a non-null address stays inside the padded block.
                Some((unsafe { NonNull::new_unchecked(aligned) }, zeroed))
            }
            Route::Large => self.allocate_large(layout),
        }
    }

    /// A large block: from the cache, else mapped with the lock released.
    fn allocate_large(&self, layout: Layout) -> Option<(NonNull<u8>, bool)> {
        let len = mapping_len(layout.size(), self.platform.page_size())?;
        if let Some(cached) = self.state().large.take_cached(len, layout.align()) {
            return Some((cached, false));
        }
        let fresh = self.platform.reserve(len, layout.align())?;
        self.state().large.count_new(len);
        Some((fresh, P::ZERO_FILLED))
    }

    /// Allocates a block for `layout`; null if it cannot be served. Like
    /// [`GlobalAlloc::alloc`](core::alloc::GlobalAlloc::alloc), but a zero size is allowed.
    #[inline]
    pub fn alloc(&self, layout: Layout) -> *mut u8 {
        if cfg!(feature = "debug") {
            return debug::alloc(self, layout, false);
        }
        self.allocate(layout)
            .map_or(ptr::null_mut(), |(p, _)| p.as_ptr())
    }

    /// As [`Allocator::alloc`], with the block zero-filled; memory known to be fresh from the
    /// system is not written.
    pub fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if cfg!(feature = "debug") {
            return debug::alloc(self, layout, true);
        }
        match self.allocate(layout) {
            Some((p, true)) => p.as_ptr(),
            Some((p, false)) => {
                // SAFETY: a block of at least `layout.size()` bytes, just handed to us.
                unsafe { p.as_ptr().write_bytes(0, layout.size()) };
                p.as_ptr()
            }
            None => ptr::null_mut(),
        }
    }

    /// Frees a block.
    ///
    /// # Safety
    /// `ptr` was returned by this instance for `layout` (or resized to it) and is not used
    /// after this call.
    #[inline]
    pub unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(ptr) = NonNull::new(ptr) else { return };
        let layout = if cfg!(feature = "debug") {
            // SAFETY: a block of ours for `layout`, allocated with a debug trailer (caller).
            unsafe { debug::check_and_poison(ptr, layout) }
        } else {
            layout
        };
        // SAFETY: as the caller guarantees.
        unsafe { self.free_block(ptr, layout) }
    }

    /// Frees a block of exactly `layout` as allocated (with the debug trailer, if any).
    ///
    /// # Safety
    /// As [`Allocator::dealloc`].
    #[inline]
    pub(crate) unsafe fn free_block(&self, ptr: NonNull<u8>, layout: Layout) {
        match Route::of(layout) {
            Route::Pooled(class) => {
                let mut guard = self.state();
                let State { heap, arenas, .. } = &mut *guard;
                if cfg!(debug_assertions) {
                    check_pooled_block(arenas, ptr, class);
                }
                let block = if layout.align() > ALIGNMENT {
                    // SAFETY: `ptr` lies inside a block of a live pool of `class` (caller).
                    unsafe { PoolPtr::containing(ptr, class).block_start(ptr) }
                } else {
                    ptr
                };
                // SAFETY: `block` starts a block of `class` in use from this heap (caller).
                unsafe { heap.dealloc(block, class, arenas, &self.platform) }
            }
            Route::Large => {
                let Some(len) = mapping_len(layout.size(), self.platform.page_size()) else {
                    fatal("dealloc: a large size that was never allocated");
                };
                let unmap = self.state().large.retire(ptr, len);
                // SAFETY: the freed block and the cache entries evicted for it are unused.
                unsafe { unmap.release(&self.platform) };
            }
        }
    }

    /// Resizes a block to `new_size`, keeping its alignment and contents up to the smaller
    /// size: in place when the size class (or mapping length) does not change, by remapping
    /// large blocks where the system allows, else by allocating, copying and freeing. Null if
    /// it cannot be served; the old block is then untouched.
    ///
    /// # Safety
    /// As [`Allocator::dealloc`] for `ptr` and `layout`.
    pub unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return ptr::null_mut();
        };
        // Under `debug`, every resize moves, so that both blocks' trailers are checked.
        match (Route::of(layout), Route::of(new_layout), NonNull::new(ptr)) {
            _ if cfg!(feature = "debug") => {}
            (Route::Pooled(a), Route::Pooled(b), Some(_)) if a == b => return ptr,
            (Route::Large, Route::Large, Some(block)) => {
                // SAFETY: a large block in use of this layout (caller).
                if let Some(resized) = unsafe { self.resize_large(block, layout, new_size) } {
                    return resized.as_ptr();
                }
            }
            _ => {}
        }
        let new = self.alloc(new_layout);
        if !new.is_null() {
            // SAFETY: both blocks are live, distinct, and hold at least the bytes copied; the
            // old one is then freed with its own layout (caller).
            unsafe {
                ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }

    /// Resizes a large block without copying: in place if its mapping length does not change,
    /// else by remapping (with the lock released). `None` if it must move by copy, in which
    /// case the block is unchanged.
    ///
    /// # Safety
    /// `block` is a large block in use of `layout`.
    unsafe fn resize_large(
        &self,
        block: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> Option<NonNull<u8>> {
        let page = self.platform.page_size();
        let old = mapping_len(layout.size(), page)?;
        let new = mapping_len(new_size, page)?;
        if old == new {
            return Some(block);
        }
        if !P::CAN_REMAP {
            return None;
        }
        // The system places a moved mapping on a page boundary, no more: over-aligned blocks
        // may only be resized in place.
        // SAFETY: `block` starts a live mapping of `old` bytes (L1), ours alone (caller).
        let resized = unsafe { self.platform.remap(block, old, new, layout.align() <= page) }?;
        self.state().large.count_resized(old, new);
        Some(resized)
    }

    /// A snapshot of this instance's figures.
    pub fn stats(&self) -> Stats {
        let state = self.state();
        Stats::collect(&state)
    }

    /// Checks every invariant of the heap, its pools and the arenas, walking them all.
    pub fn check(&self) -> Result<(), &'static str> {
        let state = self.state();
        state.arenas.check()?;
        state.heap.check(&state.arenas)
    }

    /// Gives back to the system all memory that is not in use: decommits free pools, unmaps
    /// empty arenas and cached large mappings.
    pub fn trim(&self) {
        let mut state = self.state();
        state.arenas.trim(&self.platform);
        let unmap = state.large.trim();
        drop(state);
        // SAFETY: cached mappings are used by nobody.
        unsafe { unmap.release(&self.platform) };
    }
}

/// In debug builds: the block being freed must lie in a pool in use, of the layout's class.
fn check_pooled_block(arenas: &Arenas, ptr: NonNull<u8>, class: SizeClass) {
    let Some(memory) = arenas.pool_slot(ptr.addr().get()) else {
        fatal("dealloc: pointer is in no pool of this allocator (wrong pointer or layout?)");
    };
    // SAFETY: the arenas say a live pool starts there.
    if unsafe { PoolPtr::at(memory).class() } != class {
        fatal("dealloc: layout does not match the size class the block was allocated with");
    }
}

impl<P: Platform> Drop for Allocator<P> {
    /// Unmaps the arenas and cached large mappings. Large blocks still in use are not
    /// tracked and stay mapped: drop an instance only once everything is freed.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: the instance is going away; nothing it handed out may be used any more.
        unsafe {
            state.large.trim().release(&self.platform);
            state.arenas.release_all(&self.platform);
        }
    }
}
