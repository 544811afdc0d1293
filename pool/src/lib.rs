//! # pymalloc-pool
//!
//! The pooled half of pymalloc's design, after CPython's obmalloc: size classes
//! ([`SizeClass`]) — obmalloc's 32 small classes in 16-byte steps up to 512 bytes, then eight
//! medium classes per power of two up to 256 KiB — and the *pool* that serves one class from
//! its own singly-linked freelist ([`PoolPtr`]), carved lazily from a bump offset. A pool is
//! one 16 KiB slot, or for larger classes a span of several consecutive slots.
//!
//! A pool is in one of three states, with obmalloc's transitions:
//! - *used*: some blocks in use and some available; it sits in its class's [`PoolList`];
//! - *full*: nothing left to hand out; it is in no list and rejoins on its first free
//!   ([`Freed::was_full`]);
//! - *empty*: no block in use ([`Freed::now_empty`]); its slots go back to the arena, which
//!   may give them to any class next.
//!
//! A block freed by a thread other than its pool's owner goes on the owner's [`RemoteList`],
//! a lock-free stack that the owner empties in one swap.
//!
//! This crate knows nothing of where slots come from (the `pymalloc-arena` crate) nor of
//! what the heap that owns a pool is (the `pymalloc` crate): a pool records its owner as an
//! opaque pointer. It is also home to [`fatal`], the
//! non-allocating abort that every pymalloc crate uses for broken invariants.
#![cfg_attr(not(any(test, loom)), no_std)]
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

mod asan;
mod class;
mod fatal;
mod frozen;
mod geometry;
mod inbox;
mod list;
mod lock;
mod mark;
mod pool;
mod remote;
pub mod secure;
mod sync;

pub use class::{
    ALIGNED_SMALL_CLASSES, ALIGNMENT, MAX_POOLED_ALIGN, MAX_SPAN_SLOTS, NUM_CLASSES, POOLED_MAX,
    SMALL_FIRST_BLOCK, SMALL_MAX, SizeClass,
};
pub use fatal::{ensure, fatal, write_fd};
pub use geometry::{
    ARENA_SHIFT, ARENA_SIZE, DESCRIPTORS, HEADER_BYTES, HEADER_SLOTS, POOL_SIZE, SLOTS,
    first_slot_of, slot_index,
};
pub use inbox::Inbox;
pub use list::{Chain, Links, List};
pub use lock::RawLock;
pub use mark::{FreedMark, clear_freed_mark, freed_mark, holds_freed_mark, write_freed_mark};
pub use pool::{
    Freed, Pool, PoolList, PoolPtr, Usable, blocks_per_pool, set_first_slot_entries,
    slot_zero_line_is_clear,
};
pub use remote::{Drain, RemoteList};

// Of the default build's pools, carved in order; the `secure` build's have their own tests
// (`secure.rs`, and `tests/secure.rs` at the top of the workspace).
#[cfg(all(test, not(feature = "secure")))]
mod tests;
