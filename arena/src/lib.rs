//! # pymalloc-arena
//!
//! Where pymalloc's pools live. The [`Platform`] trait is the operating-system layer
//! ([`OsPlatform`] for real, `TestPlatform` under the `test-platform` feature for tests that
//! inject failures); [`Arenas`] maps 2 MiB arenas through it, hands their 16 KiB slots to the
//! heaps one pool at a time (a slot, or a span of up to 16 consecutive slots), recycles a
//! whole-empty pool for any size class in O(1), and gives memory back to the system with
//! enough hysteresis that a free-then-allocate loop does not call the system each time. An
//! [`ArenaMap`] (a radix tree from `pymalloc-radix`) leads from any address to its arena and
//! pool without a lock.
#![cfg_attr(not(any(test, feature = "test-platform")), no_std)]
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

mod arenas;
mod header;
mod map;
mod platform;
mod slots;
#[cfg(any(test, feature = "test-platform"))]
mod test_platform;

pub use arenas::{
    ARENA_SHIFT, ARENA_SIZE, AUTO_HUGE_ARENAS, ArenaStats, Arenas, DIRTY_SHARE, EMPTY_SHARE,
    HugePages, MAX_DIRTY_FLOOR, MIN_DIRTY_SLOTS, MIN_EMPTY_ARENAS, POOLS_PER_ARENA, SLOTS,
};
pub use map::ArenaMap;
pub use platform::{Capabilities, OsPlatform, Platform};
#[cfg(any(test, feature = "test-platform"))]
pub use test_platform::{TEST_PAGE_SIZE, TestPlatform, unbackable_bytes};

#[cfg(test)]
mod tests;
