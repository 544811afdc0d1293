//! # pymalloc-pool
//!
//! The small-object half of pymalloc's design, after CPython's obmalloc: 32 size classes in
//! 16-byte steps up to 512 bytes ([`SizeClass`]), and the 16 KiB *pool* that serves one class
//! from its own singly-linked freelist ([`PoolPtr`]), carved lazily from a bump offset.
//!
//! A pool is in one of three states, with obmalloc's transitions:
//! - *used*: some blocks in use and some available; it sits in its class's [`PoolList`];
//! - *full*: nothing left to hand out; it is in no list and rejoins on its first free
//!   ([`Freed::WasFull`]);
//! - *empty*: no block in use ([`Freed::Empty`]); its slot goes back to the arena, which may
//!   give it to any class next.
//!
//! This crate knows nothing of where slots come from (the `pymalloc-arena` crate) nor of
//! which heap owns a pool (the `pymalloc` crate). It is also home to [`fatal`], the
//! non-allocating abort that every pymalloc crate uses for broken invariants.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

mod class;
mod fatal;
mod pool;

pub use class::{ALIGNMENT, NUM_CLASSES, SMALL_MAX, SizeClass};
pub use fatal::{ensure, fatal};
pub use pool::{Freed, POOL_OVERHEAD, POOL_SIZE, Pool, PoolList, PoolPtr, blocks_per_pool};

#[cfg(test)]
mod tests;
