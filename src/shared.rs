//! [`Shared`]: what every heap of an allocator shares — the platform, the arena map, the
//! arenas behind the shared lock, the large blocks behind a lock of their own, the count of
//! parked classes and the options — below the heaps, which take it instead of the
//! allocator. [`SharedAccess`] takes the shared lock on first use and holds it, so that a run
//! of slow-path operations takes it once.
//!
//! Lock order: a heap's claim, then the shared lock, then the large blocks' lock. Code that
//! holds the shared lock only ever *tries* a claim, so nothing waits in the other order; the
//! large blocks' lock is taken under the shared lock only when the options are applied, and
//! nothing takes the shared lock under it. Unbound heaps are claimed only under the shared
//! lock, so that a `fork`, whose handler holds it, never happens in the middle of that.

use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use pymalloc_arena::{ArenaMap, Arenas, Platform};
use pymalloc_pool::{POOL_SIZE, PoolPtr};

use crate::large::LargeBlocks;
use crate::lock::{SpinGuard, SpinLock};
use crate::options::{self, Options};
use crate::report;
use crate::zero::ZeroBlocks;

/// What all heaps of an allocator over `P` share. See the module documentation.
pub(crate) struct Shared<P: Platform> {
    pub(crate) platform: P,
    /// The arenas' address map, read without the lock (written under it).
    pub(crate) map: ArenaMap,
    arenas: SpinLock<Arenas>,
    pub(crate) large: LargeBlocks,
    /// Classes parked by all heaps together (heap H7).
    parked: AtomicUsize,
    /// The options given to the allocator; `None` for the environment's.
    given: Option<Options>,
    /// Whether the options' policies have been applied (see [`Shared::configure`]).
    configured: AtomicBool,
    /// The zero-size blocks of the `secure` feature.
    pub(crate) zero: ZeroBlocks,
}

impl<P: Platform> Shared<P> {
    pub(crate) const fn new(platform: P, given: Option<Options>) -> Self {
        Shared {
            platform,
            map: ArenaMap::new(),
            arenas: SpinLock::new(Arenas::new()),
            large: LargeBlocks::new(),
            parked: AtomicUsize::new(0),
            given,
            configured: AtomicBool::new(false),
            zero: ZeroBlocks::new(),
        }
    }

    /// The options: those given, or the environment's (the defaults while the process has no
    /// environment yet).
    pub(crate) fn options(&self) -> Options {
        self.options_if_readable().unwrap_or(Options::DEFAULT)
    }

    /// The options given, or the environment's once it can be read.
    fn options_if_readable(&self) -> Option<Options> {
        self.given.or_else(options::from_environment)
    }

    /// Locks the arenas; the first time the options can be had, applies their policies
    /// first ([`Shared::configure`]).
    #[inline]
    pub(crate) fn arenas(&self) -> SpinGuard<'_, Arenas> {
        if !self.configured.load(Ordering::Acquire) {
            self.configure();
        }
        self.arenas.lock()
    }

    /// The large blocks, with the options' policy applied as for [`Shared::arenas`].
    #[inline]
    pub(crate) fn large(&self) -> &LargeBlocks {
        if !self.configured.load(Ordering::Acquire) {
            self.configure();
        }
        &self.large
    }

    /// Applies the options' policies to the arenas and the large cache, once the options can
    /// be had (the environment's cannot before libc has set it up). What the new limits do
    /// not allow is given back at once.
    #[cold]
    #[inline(never)]
    fn configure(&self) {
        let Some(options) = self.options_if_readable() else {
            return;
        };
        let mut arenas = self.arenas.lock();
        if self.configured.load(Ordering::Relaxed) {
            return; // another thread did, under the lock
        }
        arenas.set_policy(
            options.empty_arenas,
            options.dirty_floor / POOL_SIZE,
            options.huge_pages,
            &self.platform,
            &self.map,
        );
        self.large
            .set_max_cache(&self.platform, options.large_cache);
        self.large.lock().set_huge_pages(options.huge_pages);
        self.configured.store(true, Ordering::Release);
    }

    /// A large block for `layout`, with whether it reads zero (`LargeBlocks::allocate`).
    pub(crate) fn large_block(&self, layout: Layout) -> Option<(NonNull<u8>, bool)> {
        self.large()
            .allocate(&self.platform, layout, |bytes| self.refused(bytes))
    }

    /// Frees a large block (`LargeBlocks::free`).
    ///
    /// # Safety
    /// As `LargeBlocks::free`.
    pub(crate) unsafe fn free_large(&self, ptr: NonNull<u8>, expected: Option<[usize; 2]>) {
        // SAFETY: as the caller guarantees.
        unsafe { self.large().free(&self.platform, ptr, expected) }
    }

    /// [`Shared::free_large`] without a length to check, out of line (C's `free` of a large
    /// block, or of no block at all), so that the pooled free keeps no stack frame.
    ///
    /// # Safety
    /// As `LargeBlocks::free`.
    #[cold]
    #[inline(never)]
    pub(crate) unsafe fn free_large_unsized(&self, ptr: NonNull<u8>) {
        // SAFETY: as the caller guarantees.
        unsafe { self.free_large(ptr, None) }
    }

    /// Resizes a large block without copying (`LargeBlocks::resize`).
    ///
    /// # Safety
    /// As `LargeBlocks::resize`.
    pub(crate) unsafe fn resize_large(
        &self,
        block: NonNull<u8>,
        old: usize,
        align: usize,
        new_size: usize,
    ) -> Option<NonNull<u8>> {
        // SAFETY: as the caller guarantees.
        unsafe {
            self.large()
                .resize(&self.platform, block, old, align, new_size)
        }
    }

    /// Notes that the system refused `bytes` of fresh memory, so that a request gets null:
    /// a warning under `PYMALLOC_VERBOSE=1` ([`report::warn_limited`]).
    #[cold]
    #[inline(never)]
    pub(crate) fn refused(&self, bytes: usize) {
        if self.options().verbose {
            report::warn_limited(format_args!(
                "out of memory: the system refused {bytes} bytes; a request gets null"
            ));
        }
    }

    /// Classes parked by all heaps together (heap H7), stale bits included.
    #[inline]
    pub(crate) fn parked_total(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }

    /// Notes that a heap's parked classes went from `before` to `after`.
    #[inline]
    pub(crate) fn parked_changed(&self, before: usize, after: usize) {
        if after > before {
            self.parked.fetch_add(after - before, Ordering::Relaxed);
        } else if before > after {
            self.parked.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// `fork` preparation: takes the shared lock and the large blocks' lock (in that order),
    /// so that no other thread is inside either when the process is copied.
    pub(crate) fn fork_prepare(&self) {
        self.arenas.raw().lock();
        self.large.raw().lock();
    }

    /// After `fork`, in the parent: releases what [`Shared::fork_prepare`] took.
    ///
    /// # Safety
    /// Called once after `fork_prepare`, by the same thread.
    pub(crate) unsafe fn fork_parent(&self) {
        // SAFETY: taken by fork_prepare (caller).
        unsafe {
            self.large.raw().unlock();
            self.arenas.raw().unlock();
        }
    }

    /// After `fork`, in the child: the same, whatever thread took them.
    ///
    /// # Safety
    /// Called once in the child of a `fork` that `fork_prepare` preceded.
    pub(crate) unsafe fn fork_child(&self) {
        // SAFETY: the child has one thread, outside both critical sections.
        unsafe {
            self.large.raw().force_unlock();
            self.arenas.raw().force_unlock();
        }
    }

    /// Unmaps every arena and every large block.
    ///
    /// # Safety
    /// Nothing handed out is used any more.
    pub(crate) unsafe fn release_all(&mut self) {
        // SAFETY: as the caller guarantees.
        unsafe {
            self.large.release_all(&self.platform);
            self.zero.release(&self.platform);
            self.arenas
                .get_mut()
                .release_all(&self.platform, &mut self.map);
        }
    }
}

/// Access to the arenas, locked on first use and held until dropped.
pub(crate) struct SharedAccess<'a, P: Platform> {
    pub(crate) shared: &'a Shared<P>,
    guard: Option<SpinGuard<'a, Arenas>>,
}

impl<'a, P: Platform> SharedAccess<'a, P> {
    pub(crate) fn new(shared: &'a Shared<P>) -> Self {
        SharedAccess {
            shared,
            guard: None,
        }
    }

    pub(crate) fn held(shared: &'a Shared<P>, guard: SpinGuard<'a, Arenas>) -> Self {
        SharedAccess {
            shared,
            guard: Some(guard),
        }
    }

    /// The arenas, locked.
    pub(crate) fn arenas(&mut self) -> &mut Arenas {
        self.guard.get_or_insert_with(|| self.shared.arenas())
    }

    /// Gives an empty pool's slots back to the arenas.
    ///
    /// # Safety
    /// `pool` is a live pool of this allocator with no block in use, in no list and no cache,
    /// and nobody uses it any more.
    pub(crate) unsafe fn free_pool(&mut self, pool: PoolPtr) {
        let (platform, map) = (&self.shared.platform, &self.shared.map);
        // SAFETY: as the caller guarantees; the slots came from these arenas.
        unsafe {
            let memory = pool.retire();
            self.guard
                .get_or_insert_with(|| self.shared.arenas())
                .free_pool(memory, platform, map);
        }
    }
}
