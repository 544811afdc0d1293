//! # pymalloc
//!
//! CPython's small-object allocator (pymalloc / obmalloc), rebuilt in Rust as a
//! [`GlobalAlloc`]. Install it with one line:
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: pymalloc::PyMalloc = pymalloc::PyMalloc;
//! ```
//!
//! Each thread allocates from a *heap* of its own, without a lock; a block freed by another
//! thread goes back to its heap through a lock-free list.
//! Requests up to 256 KiB (after padding for alignment) are served from *pools* of one size
//! class — obmalloc's 16-byte classes to 512 bytes, then eight per power of two — each with its
//! own freelist; a pool is a 16 KiB slot, or a span of several, in 2 MiB *arenas* that
//! a radix tree maps. Whole-empty pools are recycled across size classes in O(1), and memory
//! goes back to the system with hysteresis. Larger requests get their own mappings, with a
//! small cache.
//! [`stats()`] returns a snapshot of the figures. See `docs/design.md`.
//!
//! [`c_abi`] has C's `malloc` family over the same allocator, for programs that replace the C
//! allocator (the `pymalloc-override` crate builds `libpymalloc_override.so` for `LD_PRELOAD`).
//!
//! The `debug` cargo feature adds fill patterns, guard bytes checked on free, and
//! double-free and wrong-layout detection, each reported with a message and an abort (see
//! `src/debug.rs`).
//!
//! The crates underneath: `pymalloc-pool` (size classes, pools), `pymalloc-arena` (platform
//! layer, arenas), `pymalloc-radix` (the address → arena map).
// Only `core` (and `libc`): see `tls.rs` for where `std` is linked all the same.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
// An allocator must never unwind: its non-test code neither indexes nor unwraps unchecked.
#![cfg_attr(
    not(test),
    warn(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

#[cfg(all(
    not(test),
    any(
        miri,
        not(all(
            target_os = "linux",
            any(target_arch = "x86_64", target_arch = "aarch64")
        ))
    )
))]
extern crate std;

mod allocator;
#[cfg(target_os = "linux")]
pub mod c_abi;
mod debug;
mod global;
mod heap;
mod heaps;
mod large;
mod lock;
mod options;
mod process;
mod registry;
mod report;
mod secure;
mod session;
mod shared;
mod stats;
mod thread;
mod tls;
mod zero;

use core::alloc::{GlobalAlloc, Layout};

use global::GLOBAL;

pub use allocator::Allocator;
pub use heap::{
    CACHED_POOLS, CACHED_SLOTS, FOREIGN_BLOCKS, FOREIGN_BYTES, FOREIGN_CLASS_BYTES, KEPT_OWNERS,
    PARKED_POOLS, PARKED_TOTAL, REMOTE_SHARDS, SHARED_BYTES,
};
pub use large::{AUTO_HUGE_BYTES, CACHE_BYTES, CACHE_ENTRIES, HUGE_PAGE, MAX_CACHE_BYTES};
pub use options::{MAX_OPTION_BYTES, Options, StatsAtExit};
pub use process::register_hooks;
pub use pymalloc_arena::{HugePages, OsPlatform, Platform};
pub use report::report_panic;
pub use session::LocalHeap;
pub use stats::{ClassStats, Stats};

/// pymalloc as a global allocator: `#[global_allocator] static A: PyMalloc = PyMalloc;`.
#[derive(Clone, Copy, Debug, Default)]
pub struct PyMalloc;

// SAFETY: every method forwards to the global instance, which returns null or a block that
// fits the layout, exclusively the caller's until freed, and never unwinds or allocates.
unsafe impl GlobalAlloc for PyMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match thread::session() {
            Some(mut s) => s.alloc(layout),
            None => thread::with_new_session(|s| s.alloc(layout)),
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: GlobalAlloc's contract is Allocator::dealloc's.
        unsafe {
            match thread::session() {
                Some(mut s) => s.dealloc(ptr, layout),
                None => thread::with_new_session(|s| s.dealloc(ptr, layout)),
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match thread::session() {
            Some(mut s) => s.alloc_zeroed(layout),
            None => thread::with_new_session(|s| s.alloc_zeroed(layout)),
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc's contract is Allocator::realloc's.
        unsafe {
            match thread::session() {
                Some(mut s) => s.realloc(ptr, layout, new_size),
                None => thread::with_new_session(|s| s.realloc(ptr, layout, new_size)),
            }
        }
    }
}

/// A snapshot of the global allocator's figures (all zero if [`PyMalloc`] is not installed).
pub fn stats() -> Stats {
    GLOBAL.stats()
}

/// Gives back to the system all of the global allocator's memory that is not in use: the
/// calling thread's heap and unbound ones are tidied; heaps other threads hold keep their
/// few empty pools.
pub fn trim() {
    // SAFETY: the calling thread's own heap, claimed by it; no session is live here.
    let mut mine = thread::current().map(|cell| unsafe { cell.claimed() });
    GLOBAL.trim_with(mine.as_mut())
}

/// Checks every invariant of the global allocator — the arenas, the calling thread's heap,
/// and every heap no other thread holds — walking all their memory; for tests.
pub fn check() -> Result<(), &'static str> {
    // SAFETY: as in `trim`.
    let mut mine = thread::current().map(|cell| unsafe { cell.claimed() });
    GLOBAL.check_with(mine.as_mut())
}
