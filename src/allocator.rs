//! [`Allocator`]: one pymalloc instance over a [`Platform`] — a heap of small-block pools,
//! the arenas under it, and the large blocks — behind one lock. `PyMalloc`, the global
//! allocator, is a static instance over the operating system; tests make their own instances
//! over `TestPlatform`.
//!
//! Every `Layout` is routed by its size and alignment alone ([`Route`]): what fits a small
//! class once padded for its alignment is a pool block; anything else is a large block.
//! Nothing here allocates, panics or unwinds: a request that cannot be served gets null.

use core::alloc::Layout;
use core::ptr::{self, NonNull};
use std::sync::{Mutex, MutexGuard, PoisonError};

use pymalloc_arena::{Arenas, Platform};
use pymalloc_pool::{ALIGNMENT, PoolPtr, SizeClass, fatal};

use crate::heap::Heap;
use crate::large::Large;
use crate::stats::Stats;

/// How a layout is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// A block of this class; over-aligned layouts get a block padded by `align - 16` and a
    /// pointer aligned inside it.
    Small(SizeClass),
    /// A mapping of its own.
    Large,
}

impl Route {
    #[inline(always)]
    pub(crate) fn of(layout: Layout) -> Route {
        // `Layout` guarantees size + align - 1 <= isize::MAX, so this cannot overflow.
        let padded = layout.size() + layout.align().saturating_sub(ALIGNMENT);
        match SizeClass::for_size(padded) {
            Some(class) => Route::Small(class),
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
    fn allocate(&self, layout: Layout) -> Option<(NonNull<u8>, bool)> {
        let mut guard = self.state();
        let State {
            heap,
            arenas,
            large,
        } = &mut *guard;
        match Route::of(layout) {
            Route::Small(class) => {
                let (block, zeroed) = heap.alloc(class, arenas, &self.platform)?;
                let aligned = block
                    .as_ptr()
                    .map_addr(|a| a.next_multiple_of(layout.align()));
                // SAFETY: aligning up a non-null address stays inside the padded block.
                Some((unsafe { NonNull::new_unchecked(aligned) }, zeroed))
            }
            Route::Large => large.alloc(&self.platform, layout.size(), layout.align()),
        }
    }

    /// Allocates a block for `layout`; null if it cannot be served. Like
    /// [`GlobalAlloc::alloc`](core::alloc::GlobalAlloc::alloc), but a zero size is allowed.
    #[inline]
    pub fn alloc(&self, layout: Layout) -> *mut u8 {
        self.allocate(layout)
            .map_or(ptr::null_mut(), |(p, _)| p.as_ptr())
    }

    /// As [`Allocator::alloc`], with the block zero-filled; memory known to be fresh from the
    /// system is not written.
    pub fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
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
        let mut guard = self.state();
        let State {
            heap,
            arenas,
            large,
        } = &mut *guard;
        match Route::of(layout) {
            Route::Small(class) => {
                if cfg!(debug_assertions) {
                    check_small_block(arenas, ptr, class);
                }
                let block = if layout.align() > ALIGNMENT {
                    // SAFETY: `ptr` lies inside a block of a live pool (caller).
                    unsafe { PoolPtr::containing(ptr).block_start(ptr) }
                } else {
                    ptr
                };
                // SAFETY: `block` starts a block in use from this heap (caller).
                unsafe { heap.dealloc(block, arenas, &self.platform) }
            }
            // SAFETY: a large block allocated with this size (caller).
            Route::Large => unsafe { large.dealloc(&self.platform, ptr, layout.size()) },
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
        match (Route::of(layout), Route::of(new_layout), NonNull::new(ptr)) {
            (Route::Small(a), Route::Small(b), Some(_)) if a == b => return ptr,
            (Route::Large, Route::Large, Some(block)) => {
                let mut state = self.state();
                // SAFETY: a large block in use of this layout (caller).
                let resized = unsafe {
                    state.large.realloc(
                        &self.platform,
                        block,
                        layout.size(),
                        layout.align(),
                        new_size,
                    )
                };
                if let Some(resized) = resized {
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
        state.large.trim(&self.platform);
    }
}

/// In debug builds: the block being freed must lie in a pool in use, of the layout's class.
fn check_small_block(arenas: &Arenas, ptr: NonNull<u8>, class: SizeClass) {
    let Some(slot) = arenas.pool_slot(ptr.addr().get()) else {
        fatal("dealloc: pointer is in no pool of this allocator (wrong pointer or layout?)");
    };
    // SAFETY: the radix tree says the slot holds a live pool.
    if unsafe { PoolPtr::containing(slot).class() } != class {
        fatal("dealloc: layout does not match the size class the block was allocated with");
    }
}

impl<P: Platform> Drop for Allocator<P> {
    /// Unmaps the arenas and cached large mappings. Large blocks still in use are not
    /// tracked and stay mapped: drop an instance only once everything is freed.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        state.large.trim(&self.platform);
        // SAFETY: the instance is going away; nothing it handed out may be used any more.
        unsafe { state.arenas.release_all(&self.platform) };
    }
}
