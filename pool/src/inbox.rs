//! [`Inbox`]: a heap's claim and the remote lists that other threads free its blocks into,
//! and the hand-off between them when the heap's thread leaves while others free.
//!
//! A block freed into a heap waits on one of its remote lists until whoever holds the heap's
//! claim takes the lists back. A heap may lose its holder (its thread exits) while another
//! thread frees into it; then someone else must take the lists back, or the blocks would wait
//! for ever. The two sides each act, then look at the other's state:
//! - the freeing thread pushes, then looks at the claim ([`Inbox::push`]): if nobody holds
//!   it, the freeing thread collects;
//! - the leaving holder releases the claim, then looks at the lists ([`Inbox::release`]): if
//!   a block waits, it collects.
//!
//! Invariant (checked by loom, `tests/loom.rs`):
//! - I1 both sides' steps are sequentially consistent (the push's compare-and-swap and the
//!   claim's store and loads), so at least one side sees the other's step: a block pushed
//!   while the holder leaves is collected by one of them, never left behind with nobody to
//!   take it. Collecting ([`Inbox::try_claim`], then [`Inbox::take_all`]) is safe for both
//!   at once: only the one that takes the claim takes the lists.
//!
//! Loom models `SeqCst` accesses as acquire-release only (its documented limit), under which
//! this handshake fails — as it would in a real program with weaker orderings. Under loom a
//! `SeqCst` fence stands between each side's act and its look (`sync::sequentially_consistent`),
//! which loom models exactly and which gives the guarantee that the real build's `SeqCst`
//! accesses give by themselves; the model then checks the protocol around it.

use core::ptr::NonNull;

use crate::lock::RawLock;
use crate::remote::{Drain, RemoteList};
use crate::sync;

/// A remote list on a cache line of its own, away from what the owner writes and from the
/// other lists.
#[repr(align(128))]
#[derive(Debug, Default)]
struct Padded(RemoteList);

/// A heap's claim and its `SHARDS` remote lists. See the module documentation.
#[derive(Debug)]
pub struct Inbox<const SHARDS: usize> {
    claim: RawLock,
    lists: [Padded; SHARDS],
}

impl<const SHARDS: usize> Default for Inbox<SHARDS> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const SHARDS: usize> Inbox<SHARDS> {
    /// An inbox with nothing waiting and no holder.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Inbox {
            claim: RawLock::new(),
            lists: [const { Padded(RemoteList::new()) }; SHARDS],
        }
    }

    /// An inbox with nothing waiting and no holder (loom's atomics cannot be built in a
    /// `const fn`).
    #[cfg(loom)]
    pub fn new() -> Self {
        Inbox {
            claim: RawLock::new(),
            lists: core::array::from_fn(|_| Padded(RemoteList::new())),
        }
    }

    /// The heap's claim.
    #[inline(always)]
    pub fn claim(&self) -> &RawLock {
        &self.claim
    }

    /// Pushes `block` on the list of `shard`, then looks at the claim: `true` if nobody holds
    /// it, when the caller must collect (I1).
    ///
    /// # Safety
    /// As [`RemoteList::push`]; `shard < SHARDS`.
    #[inline]
    pub unsafe fn push(&self, shard: usize, block: NonNull<u8>) -> bool {
        // SAFETY: as the caller guarantees.
        unsafe { self.lists.get_unchecked(shard).0.push(block) };
        sync::sequentially_consistent();
        !self.claim.is_locked()
    }

    /// Pushes a chain of blocks on the list of `shard` with one compare-and-swap, then looks
    /// at the claim: `true` if nobody holds it, when the caller must collect (I1).
    ///
    /// # Safety
    /// As [`RemoteList::push_chain`]; `shard < SHARDS`.
    #[inline]
    pub unsafe fn push_chain(&self, shard: usize, first: NonNull<u8>, last: NonNull<u8>) -> bool {
        // SAFETY: as the caller guarantees.
        unsafe { self.lists.get_unchecked(shard).0.push_chain(first, last) };
        sync::sequentially_consistent();
        !self.claim.is_locked()
    }

    /// Releases the claim, then looks at the lists: `true` if a block waits, when the caller
    /// must collect (I1).
    ///
    /// # Safety
    /// The caller holds the claim.
    #[inline]
    pub unsafe fn release(&self) -> bool {
        // SAFETY: held (caller).
        unsafe { self.claim.unlock() };
        sync::sequentially_consistent();
        self.has_waiting()
    }

    /// Takes the claim if nobody holds it.
    #[inline]
    pub fn try_claim(&self) -> bool {
        self.claim.try_lock()
    }

    /// Whether a block waits on a list (a hint: a push may land right after).
    #[inline]
    pub fn has_waiting(&self) -> bool {
        self.lists.iter().any(|list| !list.0.is_empty())
    }

    /// Takes every block waiting, list by list (see [`Drain`] on finding their pools).
    ///
    /// # Safety
    /// The caller holds the claim.
    pub unsafe fn take_all(&self) -> impl Iterator<Item = NonNull<u8>> + '_ {
        // SAFETY: as the caller guarantees.
        unsafe { self.take_lists() }.flatten()
    }

    /// Takes every block waiting, as one [`Drain`] per list, for a taker that checks each
    /// block before its link is read ([`Drain::next_with`]).
    ///
    /// # Safety
    /// The caller holds the claim.
    pub unsafe fn take_lists(&self) -> impl Iterator<Item = Drain> + '_ {
        self.lists.iter().map(|list| list.0.take_all())
    }
}
