//! [`RemoteList`]: blocks freed by threads that do not own them, on their way back to the
//! owner — a lock-free stack that any thread pushes onto and only the owner empties, all at
//! once.
//!
//! Each block on the list carries two words in its own memory (every block holds at least
//! [`ALIGNMENT`] = 16 bytes): the next block, and the block's freed mark (pool invariant P9),
//! as if it were free already: so a block that waits here is seen as freed by its owner's
//! own free (which then looks for it here), and still is once taken back. The owner finds a
//! block's pool from its address ([`PoolPtr::containing`](crate::PoolPtr::containing)).
//!
//! Invariants:
//! - R1 a block is pushed only while it is in use in its pool (the pool stays live until the
//!   owner takes the block back), and the pusher never touches it again; a push of the block
//!   already at the head (a double free) aborts; every block on the list holds its freed mark.
//!   Blocks are pushed one at a time or as a chain (one compare-and-swap for many blocks,
//!   linked before the push);
//! - R2 the list is emptied only by [`RemoteList::take_all`], which swaps the head for null:
//!   no single block is ever popped, so no ABA can occur (a head that is compared and swapped
//!   by a pusher can only have gained blocks, never lost and regained one);
//! - R3 a push publishes its block's words with release ordering, and `take_all` acquires
//!   them, so the owner reads every word that every pusher wrote (and the data the freeing
//!   thread last wrote into the block).

use core::ptr::{self, NonNull};

use crate::class::ALIGNMENT;
use crate::fatal::fatal;
use crate::mark::write_freed_mark;
use crate::secure::{read_link, write_link};
use crate::sync::{AtomicPtr, Ordering};

const _: () = assert!(ALIGNMENT >= 2 * size_of::<*mut u8>());

/// A stack of blocks freed remotely. See the module documentation.
#[derive(Debug)]
pub struct RemoteList {
    head: AtomicPtr<u8>,
}

impl Default for RemoteList {
    fn default() -> Self {
        Self::new()
    }
}

impl RemoteList {
    /// An empty list.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        RemoteList {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// An empty list (loom's atomics cannot be built in a `const fn`).
    #[cfg(loom)]
    pub fn new() -> Self {
        RemoteList {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Pushes `block`, the start of a block in use of a live pool. Sequentially consistent,
    /// so that a pusher that then finds the owner gone and an owner that leaves and then
    /// looks at the list cannot both miss the block.
    ///
    /// # Safety
    /// As R1: `block` is the start of a block in use of a live pool, at least 16 bytes, which
    /// the caller gives up.
    #[inline]
    pub unsafe fn push(&self, block: NonNull<u8>) {
        // SAFETY: the block is ours to overwrite and holds two words (caller, ALIGNMENT); a
        // chain of one block, marked.
        unsafe {
            write_freed_mark(block);
            self.push_chain(block, block);
        }
    }

    /// Pushes a chain of blocks, `first` to `last`, each linked to the next through its first
    /// word and holding its freed mark, with one compare-and-swap: `last`'s link is
    /// overwritten. Sequentially consistent, as [`RemoteList::push`].
    ///
    /// # Safety
    /// As R1 for every block of the chain, which the caller gives up: each is the start of a
    /// block in use of a live pool whose owner this list belongs to, holding its freed mark,
    /// reached from `first` through the links, `last` the final one.
    #[inline]
    pub unsafe fn push_chain(&self, first: NonNull<u8>, last: NonNull<u8>) {
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // A block at the head was pushed and not yet taken back: pushing it again would
            // make the list a cycle (and the owner loop on it).
            if head == first.as_ptr() {
                fatal("free of a block already on its way back to its heap (double free)");
            }
            // SAFETY: `last` is ours (caller); not yet visible to anyone else.
            unsafe { write_link(last, head) };
            match self.head.compare_exchange_weak(
                head,
                first.as_ptr(),
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(current) => head = current,
            }
        }
    }

    /// Whether the list looks empty (a hint: a push may land right after).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.head.load(Ordering::SeqCst).is_null()
    }

    /// Takes every block pushed so far, newest first.
    pub fn take_all(&self) -> Drain {
        Drain {
            next: self.head.swap(ptr::null_mut(), Ordering::SeqCst),
        }
    }
}

/// The blocks taken by [`RemoteList::take_all`]. Their pools are for the taker to find
/// ([`PoolPtr::containing`](crate::PoolPtr::containing)); under the `secure` feature, where a link leads is for the
/// taker to check before it looks at the block.
#[derive(Debug)]
pub struct Drain {
    next: *mut u8,
}

impl Drain {
    /// The next block, with what `look` says of it — called before the block's link is read,
    /// so that a block reached through an overwritten link (under the `secure` feature) is
    /// looked at, and rejected, before anything is read from it.
    #[inline]
    pub fn next_with<T>(
        &mut self,
        look: impl FnOnce(NonNull<u8>) -> T,
    ) -> Option<(NonNull<u8>, T)> {
        let block = NonNull::new(self.next)?;
        let seen = look(block);
        // SAFETY: a pushed block holds its successor in its first word, written before the
        // push that published it (R3); no one else reads it now.
        self.next = unsafe { read_link(block) };
        Some((block, seen))
    }
}

impl Iterator for Drain {
    type Item = NonNull<u8>;

    fn next(&mut self) -> Option<NonNull<u8>> {
        self.next_with(|_| ()).map(|(block, ())| block)
    }
}
