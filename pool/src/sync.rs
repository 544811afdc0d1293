//! The atomics of the remote-free protocol and of the claim (`remote.rs`, `lock.rs`,
//! `inbox.rs`): `loom`'s under `--cfg loom`, so that its model checker explores their
//! interleavings (`tests/loom.rs`).

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

/// Where a handshake relies on its sequentially consistent accesses being in one total
/// order (the act of one side before its look at the other's state, `inbox.rs`): nothing
/// at all in the real build, whose accesses there are `SeqCst`; under loom, which models
/// `SeqCst` accesses as acquire-release only, a `SeqCst` fence, which it models exactly
/// and which gives the same guarantee.
#[inline(always)]
pub(crate) fn sequentially_consistent() {
    #[cfg(loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
}
