//! [`Heaps`]: the heaps an allocator makes for threads and local heaps (only ever added, each
//! mapped from the platform on its own pages), and the stack of those no thread holds, which
//! the next thread or local heap takes. (The fallback heap is the allocator's own, in its
//! `heap::Context`.)
//!
//! The stack of unbound heaps is kept under the shared lock (`shared.rs`): a heap is pushed
//! and popped, and an unbound heap is claimed, only with that lock held — witnessed by the
//! arenas' guard the methods take — so that a `fork` (whose handler holds the lock) never
//! happens in the middle of a hand-over.

use core::cell::UnsafeCell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use pymalloc_arena::{Arenas, Platform};
use pymalloc_pool::fatal;

use crate::heap::{self, Claim, HeapCell};
use crate::shared::{Shared, SharedAccess};

/// The heaps of an allocator. See the module documentation.
pub(crate) struct Heaps {
    /// Every heap made for threads and local heaps, newest first, linked through `next_all`;
    /// heaps are only ever added.
    all: AtomicPtr<HeapCell>,
    /// Heaps made so far: the next one's remote-list shard, so that the first
    /// [`REMOTE_SHARDS`](crate::heap::REMOTE_SHARDS) threads each get a shard of their own.
    made: AtomicUsize,
    /// The top of the stack of unbound heaps, linked through `next_free`; only under the
    /// shared lock.
    unbound: UnsafeCell<*mut HeapCell>,
}

// SAFETY: `unbound` is only read and written under the shared lock (module documentation);
// everything else is atomic or a heap, which is `Sync`.
unsafe impl Sync for Heaps {}
// SAFETY: as above; the heaps live as long as their allocator.
unsafe impl Send for Heaps {}

impl Heaps {
    pub(crate) const fn new() -> Heaps {
        Heaps {
            all: AtomicPtr::new(ptr::null_mut()),
            made: AtomicUsize::new(1),
            unbound: UnsafeCell::new(ptr::null_mut()),
        }
    }

    /// Bytes mapped for each heap made for a thread.
    pub(crate) fn heap_bytes<P: Platform>(platform: &P) -> usize {
        size_of::<HeapCell>().next_multiple_of(platform.page_size())
    }

    /// Visits every heap made, newest first.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&HeapCell)) {
        let mut next = self.all.load(Ordering::Acquire).cast_const();
        // SAFETY: heaps live as long as the allocator; `next_all` never changes once published.
        while let Some(cell) = unsafe { next.as_ref() } {
            f(cell);
            next = cell.next_all;
        }
    }

    /// Claims a heap no thread holds, or makes a new one; it takes its first blocks of each
    /// class from the fallback heap if it `shares` (heap H6).
    pub(crate) fn acquire<'a, P: Platform>(
        &'a self,
        shared: &'a Shared<P>,
        shares: bool,
    ) -> Option<Claim<'a>> {
        let mut claim = self.acquire_unbound(shared)?;
        claim.set_up(shares);
        Some(claim)
    }

    /// Claims a heap no thread holds, or makes a new one.
    fn acquire_unbound<'a, P: Platform>(&'a self, shared: &'a Shared<P>) -> Option<Claim<'a>> {
        let mut held = shared.arenas();
        if let Some(cell) = self.pop(&mut held) {
            // Unbound heaps are only claimed under the lock we hold (`heap::tidy_unclaimed`).
            let Some(claim) = cell.try_claim() else {
                fatal("heap: an unbound heap was claimed outside the lock");
            };
            return Some(claim);
        }
        drop(held);
        let bytes = Self::heap_bytes(&shared.platform);
        let cell = shared
            .platform
            .reserve(bytes, align_of::<HeapCell>())?
            .cast::<HeapCell>();
        // SAFETY: fresh memory of the right size and alignment, ours alone until published
        // by the swap below; after that only `next_all`'s readers see it, and it never changes.
        unsafe {
            cell.write(HeapCell::new(self.made.fetch_add(1, Ordering::Relaxed)));
            let Some(claim) = cell.as_ref().try_claim() else {
                fatal("heap: a new heap was already claimed");
            };
            let mut head = self.all.load(Ordering::Relaxed);
            loop {
                (*cell.as_ptr()).next_all = head;
                match self.all.compare_exchange_weak(
                    head,
                    cell.as_ptr(),
                    Ordering::Release,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(current) => head = current,
                }
            }
            Some(claim)
        }
    }

    /// Takes the top of the stack of unbound heaps.
    fn pop(&self, _held: &mut Arenas) -> Option<&HeapCell> {
        // SAFETY: under the shared lock (witnessed by the arenas it guards: callers pass their
        // own allocator's), the only place the stack is touched; heaps on it live as long as
        // the allocator.
        unsafe {
            let top = NonNull::new(*self.unbound.get())?.as_ref();
            *self.unbound.get() = top.next_free.load(Ordering::Relaxed);
            Some(top)
        }
    }

    /// Pushes a heap on the stack of unbound heaps.
    fn push(&self, _held: &mut Arenas, cell: &HeapCell) {
        // SAFETY: as in `pop`.
        unsafe {
            cell.next_free.store(*self.unbound.get(), Ordering::Relaxed);
            *self.unbound.get() = ptr::from_ref(cell).cast_mut();
        }
    }

    /// Hands a heap on: the blocks of other heaps' pools it kept sent back to their owners,
    /// its remotely freed blocks taken back, its kept empty pools returned,
    /// it goes on the stack of unbound heaps for the next thread, its claim released under
    /// the shared lock.
    pub(crate) fn release<P: Platform>(&self, shared: &Shared<P>, mut claim: Claim<'_>) {
        let cell = claim.cell();
        // Before the lock: an owner with no thread is collected on the way (heap H8).
        claim.flush_foreign(shared);
        let mut access = SharedAccess::new(shared);
        claim.tidy(&mut access);
        self.push(access.arenas(), cell);
        // Released under the lock, like every unbound heap's claim.
        let waiting = claim.release();
        drop(access);
        if waiting {
            heap::collect(cell, shared);
        }
    }

    /// Unmaps every heap made for threads.
    ///
    /// # Safety
    /// None of them is used any more; `platform` is the one they came from.
    pub(crate) unsafe fn release_all<P: Platform>(&mut self, platform: &P) {
        let bytes = Self::heap_bytes(platform);
        let mut next = *self.all.get_mut();
        while let Some(cell) = NonNull::new(next) {
            // SAFETY: every heap was reserved by `acquire_unbound` with this size, and nothing
            // uses it any more (caller).
            unsafe {
                next = (*cell.as_ptr()).next_all.cast_mut();
                platform.release(cell.cast(), bytes);
            }
        }
    }
}
