//! [`Allocator`]: one pymalloc instance over a [`Platform`] — what its heaps share
//! (`shared.rs`) and its heaps (`heaps.rs`) — with its public calls, its statistics, its
//! checks, `trim`, and the `fork` handlers' steps. `PyMalloc`, the global allocator, is a
//! static instance over the operating system whose threads each hold a heap (`thread.rs`);
//! tests make their own instances over `TestPlatform`.
//!
//! The instance's own calls (`alloc`, `dealloc`, ...) are served by its fallback heap,
//! claimed around each call (a [`Session`] on it); [`Allocator::local_heap`] hands out heaps
//! of its own. Nothing here allocates, panics or unwinds: a request that cannot be served
//! gets null.

use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use pymalloc_arena::Platform;
use pymalloc_pool::{NUM_CLASSES, PoolPtr, SizeClass, blocks_per_pool};

use crate::heap::{self, Claim, Context, HeapCell};
use crate::heaps::Heaps;
use crate::options::Options;
use crate::session::{LocalHeap, Session};
use crate::shared::{Shared, SharedAccess};
use crate::stats::{ClassStats, Stats};

/// A pymalloc instance over the platform `P`.
///
/// Its own methods (`alloc`, `dealloc`, ...) serve every thread from one *fallback* heap,
/// claimed around each call; [`Allocator::local_heap`] hands out heaps of its own to a
/// caller, which uses them without any lock (the global [`crate::PyMalloc`] gives one to
/// each thread). A block from any heap may be freed through any other, or through the
/// instance.
pub struct Allocator<P: Platform> {
    /// What all heaps share, and the fallback heap.
    ctx: Context<P>,
    heaps: Heaps,
}

impl<P: Platform> Allocator<P> {
    /// An instance that maps nothing until its first allocation, with the options the
    /// environment sets (`PYMALLOC_*`, read at first use; see [`Options`]).
    pub const fn new(platform: P) -> Self {
        Allocator {
            ctx: Context::new(Shared::new(platform, None)),
            heaps: Heaps::new(),
        }
    }

    /// An instance with the given options, whatever the environment says.
    pub const fn with_options(platform: P, options: Options) -> Self {
        Allocator {
            ctx: Context::new(Shared::new(platform, Some(options))),
            heaps: Heaps::new(),
        }
    }

    /// This instance's options: those given, or the environment's (the defaults while the
    /// process has no environment yet).
    pub fn options(&self) -> Options {
        self.ctx.shared.options()
    }

    /// The platform this instance takes its memory from.
    pub fn platform(&self) -> &P {
        &self.ctx.shared.platform
    }

    /// Visits every heap: the fallback, then those made for threads and local heaps.
    fn for_each_heap(&self, mut f: impl FnMut(&HeapCell)) {
        f(&self.ctx.fallback);
        self.heaps.for_each(f);
    }

    /// A session on the heap of `claim`, a heap of this instance.
    #[inline(always)]
    pub(crate) fn session<'a>(&'a self, claim: Claim<'a>) -> Session<'a, P> {
        Session::new(&self.ctx, claim)
    }

    /// Runs `f` with the fallback heap claimed. (Written out rather than through
    /// `Context::with_fallback` with a reborrowed claim: that form, inlined into the global
    /// `dealloc`'s cold branch, made its fast path spill a register, 2 instructions more per
    /// free under cachegrind on `small-churn`.)
    #[inline]
    pub(crate) fn with_fallback<R>(&self, f: impl FnOnce(&mut Session<'_, P>) -> R) -> R {
        let mut session = self.session(self.ctx.fallback.lock());
        let result = f(&mut session);
        if session.into_claim().release() {
            heap::collect(&self.ctx.fallback, &self.ctx.shared);
        }
        result
    }

    /// Allocates a block for `layout`; null if it cannot be served. Like
    /// [`GlobalAlloc::alloc`](core::alloc::GlobalAlloc::alloc), but a zero size is allowed.
    pub fn alloc(&self, layout: Layout) -> *mut u8 {
        self.with_fallback(|s| s.alloc(layout))
    }

    /// As [`Allocator::alloc`], with the block zero-filled; memory known to be fresh from the
    /// system is not written.
    pub fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.with_fallback(|s| s.alloc_zeroed(layout))
    }

    /// Frees a block.
    ///
    /// # Safety
    /// `ptr` is a block (not null) returned by this instance (or one of its heaps) for
    /// `layout` (or resized to it), and is not used after this call.
    pub unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as the caller guarantees.
        self.with_fallback(|s| unsafe { s.dealloc(ptr, layout) })
    }

    /// Resizes a block to `new_size`, keeping its alignment and contents up to the smaller
    /// size: in place when the size class (or mapping length) does not change, by remapping
    /// large blocks where the system allows, else by allocating, copying and freeing. Null if
    /// it cannot be served; the old block is then untouched.
    ///
    /// # Safety
    /// As [`Allocator::dealloc`] for `ptr` and `layout`.
    pub unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as the caller guarantees.
        self.with_fallback(|s| unsafe { s.realloc(ptr, layout, new_size) })
    }

    /// Frees a block without its layout, as C's `free`: the address alone tells which pool or
    /// large mapping holds it. A pointer that is no block of this instance is reported and
    /// aborts (as far as it can be told: see `ArenaMap`).
    ///
    /// # Safety
    /// `ptr` was returned by this instance (or one of its heaps) and is not used after this
    /// call.
    pub unsafe fn dealloc_unsized(&self, ptr: NonNull<u8>) {
        // SAFETY: as the caller guarantees.
        self.with_fallback(|s| unsafe { s.dealloc_unsized(ptr) })
    }

    /// Resizes a block without its layout, as C's `realloc`: the result is a block of layout
    /// `(new_size, ALIGNMENT)`, with the contents kept up to the smaller size; it stays in place
    /// when its size class (or mapping length) does not change. Null if it cannot be served;
    /// the old block is then untouched.
    ///
    /// # Safety
    /// As [`Allocator::dealloc_unsized`].
    pub unsafe fn realloc_unsized(&self, ptr: NonNull<u8>, new_size: usize) -> *mut u8 {
        // SAFETY: as the caller guarantees.
        self.with_fallback(|s| unsafe { s.realloc_unsized(ptr, new_size) })
    }

    /// The bytes usable at `ptr`, at least the size it was allocated with, as C's
    /// `malloc_usable_size`.
    ///
    /// # Safety
    /// `ptr` was returned by this instance (or one of its heaps) and is in use.
    pub unsafe fn usable_size(&self, ptr: NonNull<u8>) -> usize {
        // SAFETY: as the caller guarantees.
        self.with_fallback(|s| unsafe { s.usable_size(ptr) })
    }

    /// A heap of this instance for the caller alone: its allocations and frees of its own
    /// blocks take no lock. `None` if the memory for it cannot be had. Dropping it hands the
    /// heap on to the next caller; its blocks stay valid and may be freed anywhere.
    pub fn local_heap(&self) -> Option<LocalHeap<'_, P>> {
        let claim = self.heaps.acquire(&self.ctx.shared, false)?;
        Some(LocalHeap::new(&self.ctx, claim, &self.heaps))
    }

    /// Claims a heap no thread holds, or makes a new one, for a thread (it shares: heap H6).
    pub(crate) fn acquire_heap(&self) -> Option<Claim<'_>> {
        self.heaps.acquire(&self.ctx.shared, true)
    }

    /// Hands a thread's heap on (see `Heaps::release`).
    pub(crate) fn release_heap(&self, claim: Claim<'_>) {
        self.heaps.release(&self.ctx.shared, claim);
    }

    /// A snapshot of this instance's figures. Blocks in use are the sum of every pool's count
    /// (pool invariant P8), less the blocks that wait on remote lists (summed from every
    /// heap's counters: threads' heaps, unbound ones and the fallback; H5 in `heap.rs`):
    /// blocks freed by one thread and not yet taken back by their heap's owner count as free.
    /// Pool figures are sums of the heaps' counters. All are exact whenever no other thread
    /// is allocating, and never out of range while one is.
    pub fn stats(&self) -> Stats {
        let arenas = self.ctx.shared.arenas();
        let mut classes = [ClassStats::default(); NUM_CLASSES];
        let mut used = [0usize; NUM_CLASSES];
        arenas.for_each_pool(|memory| {
            // SAFETY: a pool in use, its descriptor written under the lock we hold when its
            // slots were handed out; `class` and `used` are atomics (P8).
            unsafe {
                let pool = PoolPtr::at(memory);
                if let Some(used) = used.get_mut(pool.class().index()) {
                    *used += pool.used();
                }
            }
        });
        let waiting = self.waiting_on_remote_lists();
        let mut totals = [[0usize; 2]; NUM_CLASSES];
        let mut heaps = 0;
        self.for_each_heap(|cell| {
            heaps += 1;
            let c = &cell.counters;
            for ((t, pools), full) in totals.iter_mut().zip(&c.pools).zip(&c.full) {
                for (total, counter) in t.iter_mut().zip([pools, full]) {
                    *total = total.wrapping_add(counter.load(Ordering::Relaxed));
                }
            }
        });
        for ((((class, stats), [pools, full]), used), waiting) in SizeClass::all()
            .zip(classes.iter_mut())
            .zip(totals)
            .zip(used)
            .zip(waiting)
        {
            // While other threads run, the counters are read at slightly different moments;
            // keep the figures in range.
            let in_use = used.saturating_sub(clamp(waiting));
            stats.block_size = class.block_size();
            stats.pools = clamp(pools);
            stats.full_pools = clamp(full).min(stats.pools);
            stats.blocks_in_use = in_use;
            stats.blocks_free = (stats.pools * blocks_per_pool(class)).saturating_sub(in_use);
        }
        let arena_stats = arenas.stats(&self.ctx.shared.map);
        drop(arenas);
        let large = self.ctx.shared.large().lock().stats();
        let pooled_blocks = classes.iter().map(|c| c.blocks_in_use).sum();
        let pooled_bytes = classes
            .iter()
            .map(|c| c.blocks_in_use * c.block_size)
            .sum::<usize>();
        let pools = classes.iter().map(|c| c.pools).sum::<usize>();
        let pools_full = classes.iter().map(|c| c.full_pools).sum();
        Stats {
            heaps: heaps - 1,
            arenas: arena_stats.arenas,
            empty_arenas: arena_stats.empty_arenas,
            pools_used: pools - pools_full,
            pools_full,
            pools_kept: arena_stats.pools_in_use.saturating_sub(pools),
            pools_free_dirty: arena_stats.free_dirty_slots,
            pools_free_clean: arena_stats.free_clean_slots,
            pools_free_dirty_limit: arena_stats.dirty_limit,
            classes,
            pooled_blocks,
            pooled_bytes,
            large_blocks: large.blocks,
            large_bytes: large.bytes,
            large_cached_blocks: large.cached_blocks,
            large_cached_bytes: large.cached_bytes,
            large_cached_limit: large.cache_limit,
            bytes_in_use: pooled_bytes + large.bytes,
            bytes_mapped: arena_stats.mapped_bytes
                + large.bytes
                + large.cached_bytes
                + large.table_bytes
                + (heaps - 1) * Heaps::heap_bytes(&self.ctx.shared.platform),
        }
    }

    /// Per class, the blocks waiting on remote lists: over every heap (H5 in `heap.rs`), the
    /// blocks freed onto other heaps' lists less those taken back. Summed with wrapping: a
    /// heap takes back blocks that others freed, so only the total means anything, and while
    /// other threads run it may read as negative.
    fn waiting_on_remote_lists(&self) -> [usize; NUM_CLASSES] {
        let mut waiting = [0usize; NUM_CLASSES];
        self.for_each_heap(|cell| {
            let c = &cell.counters;
            for ((w, freed), taken) in waiting.iter_mut().zip(&c.freed_remotely).zip(&c.taken_back)
            {
                *w = w
                    .wrapping_add(freed.load(Ordering::Relaxed))
                    .wrapping_sub(taken.load(Ordering::Relaxed));
            }
        });
        waiting
    }

    /// Checks every invariant of the arenas and of every heap that no other thread holds
    /// (the caller's own, `mine`, included), walking all their memory. Each checked heap
    /// first takes back its remotely freed blocks; then, if every heap could be checked, no
    /// block may be left counted as waiting on a remote list, so a block that went missing
    /// between two heaps is found.
    pub(crate) fn check_with(&self, mine: Option<&mut Claim<'_>>) -> Result<(), &'static str> {
        let mine_id = mine.as_ref().map(|m| m.id());
        let guard = self.ctx.shared.arenas();
        let mut shared = SharedAccess::held(&self.ctx.shared, guard);
        let mut result = shared
            .arenas()
            .check(&self.ctx.shared.map)
            .and(self.ctx.shared.large().lock().check());
        // Blocks the caller's heap keeps of other heaps' pools count as waiting (heap H8).
        let mut kept = [0; NUM_CLASSES];
        if let Some(claim) = mine {
            claim.collect_remote(&mut shared);
            result = result.and(claim.check(shared.arenas(), &self.ctx.shared.map));
            kept = claim.foreign_counts();
        }
        let mut all_checked = true;
        self.for_each_heap(|cell| {
            if result.is_err() || mine_id == Some(cell.id()) {
                return;
            }
            let Some(mut claim) = cell.try_claim() else {
                all_checked = false;
                return;
            };
            claim.collect_remote(&mut shared);
            result = claim.check(shared.arenas(), &self.ctx.shared.map);
            // What waits now is collected below.
            claim.release();
        });
        result?;
        if all_checked && self.waiting_on_remote_lists() != kept {
            return Err("heaps: blocks freed remotely were never taken back");
        }
        drop(shared);
        self.heaps
            .for_each(|cell| heap::collect(cell, &self.ctx.shared));
        Ok(())
    }

    /// Checks every invariant of the arenas and of every heap no thread holds, walking all
    /// their memory.
    pub fn check(&self) -> Result<(), &'static str> {
        self.check_with(None)
    }

    /// Gives back to the system all memory that is not in use: sends the blocks of other
    /// heaps' pools that `mine` (the caller's own heap) kept back to their owners, takes back
    /// blocks freed into heaps no thread holds (and into `mine`) and their kept empty pools,
    /// decommits free pools, unmaps empty arenas and cached large mappings. (Other threads'
    /// heaps keep theirs, at most [`FOREIGN_BYTES`](crate::FOREIGN_BYTES) each, until
    /// their threads exit.)
    pub(crate) fn trim_with(&self, mine: Option<&mut Claim<'_>>) {
        if let Some(claim) = mine {
            claim.flush_foreign(&self.ctx.shared);
            claim.tidy(&mut SharedAccess::new(&self.ctx.shared));
        }
        self.for_each_heap(|cell| {
            heap::tidy_unclaimed(cell, &self.ctx.shared);
        });
        self.ctx
            .shared
            .arenas()
            .trim(&self.ctx.shared.platform, &self.ctx.shared.map);
        self.ctx.shared.large().trim(&self.ctx.shared.platform);
    }

    /// Gives back to the system all memory that is not in use (see `trim_with`).
    pub fn trim(&self) {
        self.trim_with(None)
    }

    /// `fork` preparation: takes the fallback heap and the locks, so that no other thread is
    /// inside any of them when the process is copied.
    pub(crate) fn fork_prepare(&self) {
        self.ctx.fallback.fork_lock().lock();
        self.ctx.shared.fork_prepare();
    }

    /// After `fork`, in the parent: releases what [`Allocator::fork_prepare`] took.
    ///
    /// # Safety
    /// Called once after `fork_prepare`, by the same thread.
    pub(crate) unsafe fn fork_parent(&self) {
        // SAFETY: taken by fork_prepare (caller).
        unsafe {
            self.ctx.shared.fork_parent();
            self.ctx.fallback.fork_lock().unlock();
        }
    }

    /// After `fork`, in the child: the same, whatever thread took them. Heaps bound to
    /// threads of the parent stay claimed in the child: their blocks may still be freed (they
    /// wait on the heaps' remote lists), but their memory is not reused.
    ///
    /// # Safety
    /// Called once in the child of a `fork` that `fork_prepare` preceded.
    pub(crate) unsafe fn fork_child(&self) {
        // SAFETY: the child has one thread, outside every critical section.
        unsafe {
            self.ctx.shared.fork_child();
            self.ctx.fallback.fork_lock().force_unlock();
        }
    }
}

impl<P: Platform> Drop for Allocator<P> {
    /// Unmaps everything: arenas, large blocks (in use or cached), heaps. Nothing the instance
    /// handed out may be used afterwards.
    fn drop(&mut self) {
        // SAFETY: the instance is going away; nothing it handed out may be used any more.
        unsafe {
            self.ctx.shared.release_all();
            self.heaps.release_all(&self.ctx.shared.platform);
        }
    }
}

/// A counter sum read as signed: a transiently negative one counts as zero.
fn clamp(sum: usize) -> usize {
    if sum > isize::MAX as usize { 0 } else { sum }
}
