//! [`Allocator`]: one pymalloc instance over a [`Platform`] — its heaps, and what they share
//! behind one lock: the arenas and the large blocks. `PyMalloc`, the global allocator, is a
//! static instance over the operating system whose threads each hold a heap (`thread.rs`);
//! tests make their own instances over `TestPlatform`.
//!
//! Lock order: a heap's claim, then the shared lock. Code that holds the shared lock only
//! ever *tries* a claim, so nothing waits in the other order.
//!
//! Every `Layout` is routed by its size and alignment alone ([`Route`]): a size up to 256 KiB
//! aligned to at most a slot (16 KiB) takes a pool block, of a class whose blocks all have
//! the alignment (`SizeClass::for_layout`), so that every pointer handed out starts its
//! block; anything else is a large block.
//! Nothing here allocates, panics or unwinds: a request that cannot be served gets null.

use core::alloc::Layout;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use pymalloc_arena::{ArenaMap, Arenas, Capabilities, Platform};
use pymalloc_pool::{
    ALIGNMENT, POOL_SIZE, POOLED_MAX, PoolPtr, SizeClass, blocks_per_pool, fatal, holds_freed_mark,
};

use crate::debug;
use crate::heap::{self, HeapCell, SharedAccess};
use crate::large::{Large, fits, mapping_len};
use crate::lock::{SpinGuard, SpinLock};
use crate::options::{self, Options};
use crate::report;
use crate::stats::{self, Stats};

/// How a layout is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// A block of this class (small or medium), aligned as the layout asks, handed out from
    /// its start.
    Pooled(SizeClass),
    /// A mapping of its own.
    Large,
}

impl Route {
    #[inline(always)]
    pub(crate) fn of(layout: Layout) -> Route {
        match SizeClass::for_layout(layout.size(), layout.align()) {
            Some(class) => Route::Pooled(class),
            None => Route::Large,
        }
    }
}

/// What all heaps share, behind the allocator's lock: the arenas, the large blocks, and the
/// stack of heaps that no thread holds.
pub(crate) struct Shared {
    pub(crate) arenas: Arenas,
    pub(crate) large: Large,
    free_heaps: *mut HeapCell,
    /// Whether the options' policies have been applied (see [`Allocator::shared`]).
    configured: bool,
}

// SAFETY: the arenas and the cached mappings are owned by this value; the heaps on the free
// stack live as long as the allocator.
unsafe impl Send for Shared {}

/// A pymalloc instance over the platform `P`.
///
/// Its own methods (`alloc`, `dealloc`, ...) serve every thread from one *fallback* heap,
/// claimed around each call; [`Allocator::local_heap`] hands out heaps of its own to a
/// caller, which uses them without any lock (the global [`crate::PyMalloc`] gives one to
/// each thread). A block from any heap may be freed through any other, or through the
/// instance.
pub struct Allocator<P: Platform> {
    pub(crate) platform: P,
    /// The arenas' address map, read without the lock (written under it).
    pub(crate) map: ArenaMap,
    shared: SpinLock<Shared>,
    fallback: HeapCell,
    /// Every heap made for threads and local heaps, newest first, linked through `next_all`;
    /// heaps are only ever added.
    heaps: AtomicPtr<HeapCell>,
    /// Heaps made so far: the next one's remote-list shard, so that the first
    /// [`REMOTE_SHARDS`](crate::heap::REMOTE_SHARDS) threads each get a shard of their own.
    heaps_made: AtomicUsize,
    /// Classes parked by all heaps together (heap H7).
    parked: AtomicUsize,
    /// The options given to [`Allocator::with_options`]; `None` for the environment's.
    given: Option<Options>,
}

impl<P: Platform> Allocator<P> {
    /// An instance that maps nothing until its first allocation, with the options the
    /// environment sets (`PYMALLOC_*`, read at first use; see [`Options`]).
    pub const fn new(platform: P) -> Self {
        Self::configured(platform, None)
    }

    /// An instance with the given options, whatever the environment says.
    pub const fn with_options(platform: P, options: Options) -> Self {
        Self::configured(platform, Some(options))
    }

    const fn configured(platform: P, given: Option<Options>) -> Self {
        Allocator {
            platform,
            map: ArenaMap::new(),
            shared: SpinLock::new(Shared {
                arenas: Arenas::new(),
                large: Large::new(),
                free_heaps: ptr::null_mut(),
                configured: false,
            }),
            fallback: HeapCell::new(0),
            heaps: AtomicPtr::new(ptr::null_mut()),
            heaps_made: AtomicUsize::new(1),
            parked: AtomicUsize::new(0),
            given,
        }
    }

    /// This instance's options: those given, or the environment's (the defaults while the
    /// process has no environment yet).
    pub fn options(&self) -> Options {
        self.given
            .or_else(options::from_environment)
            .unwrap_or(Options::DEFAULT)
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

    /// The platform this instance takes its memory from.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// Locks what all heaps share; the first time the options can be had, applies their
    /// policies first.
    #[inline]
    pub(crate) fn shared(&self) -> SpinGuard<'_, Shared> {
        let mut shared = self.shared.lock();
        if !shared.configured {
            self.configure(&mut shared);
        }
        shared
    }

    /// Applies the options' policies to the arenas and the large cache, if the options can
    /// be had yet (the environment's are not before libc has set it up). What the new
    /// limits do not allow is given back at once, under the lock: this happens once.
    #[cold]
    #[inline(never)]
    fn configure(&self, shared: &mut Shared) {
        let Some(options) = self.given.or_else(options::from_environment) else {
            return;
        };
        shared.configured = true;
        shared.arenas.set_policy(
            options.empty_arenas,
            options.dirty_floor / POOL_SIZE,
            &self.platform,
            &self.map,
        );
        let unmap = shared.large.set_max_cache(options.large_cache);
        // SAFETY: ranges evicted from the cache, which nobody uses (L3).
        unsafe { unmap.release(&self.platform) };
    }

    /// Runs `f` with the fallback heap claimed.
    #[inline]
    pub(crate) fn with_fallback<'a, R>(&'a self, f: impl FnOnce(Session<'a, P>) -> R) -> R {
        self.fallback.claim().lock();
        // SAFETY: just claimed; released below.
        let result = f(unsafe { Session::new(self, &self.fallback) });
        // SAFETY: claimed above.
        unsafe { self.fallback.claim().unlock() };
        if self.fallback.has_remote() {
            heap::collect(&self.fallback, self);
        }
        result
    }

    /// Runs `f` with the fallback heap claimed, for a heap that shares its pools (heap H6).
    #[inline]
    pub(crate) fn with_fallback_heap<R>(&self, f: impl FnOnce(&HeapCell) -> R) -> R {
        self.with_fallback(|session| f(session.cell))
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

    /// The fallback heap's identity, as its pools record their owner.
    #[inline(always)]
    pub(crate) fn fallback_heap_id(&self) -> *mut () {
        self.fallback.id()
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
        let cell = self.acquire_heap(false)?;
        // SAFETY: `acquire_heap` claimed it; `LocalHeap::drop` releases it.
        Some(LocalHeap {
            session: unsafe { Session::new(self, cell) },
        })
    }

    /// Claims a heap no thread holds, or makes a new one; it takes its first blocks of each
    /// class from the fallback heap if it `shares` (heap H6).
    pub(crate) fn acquire_heap(&self, shares: bool) -> Option<&HeapCell> {
        let cell = self.acquire_unbound_heap()?;
        // SAFETY: claimed by acquire_unbound_heap.
        unsafe { cell.set_sharing(shares) };
        Some(cell)
    }

    /// Claims a heap no thread holds, or makes a new one.
    fn acquire_unbound_heap(&self) -> Option<&HeapCell> {
        let mut shared = self.shared();
        if let Some(cell) = NonNull::new(shared.free_heaps) {
            // SAFETY: heaps on the free stack live as long as the allocator.
            let cell = unsafe { cell.as_ref() };
            shared.free_heaps = cell.next_free.load(Ordering::Relaxed);
            // Unbound heaps are only claimed under the lock we hold (`heap::collect`).
            if !cell.claim().try_lock() {
                fatal("heap: an unbound heap was claimed outside the lock");
            }
            return Some(cell);
        }
        drop(shared);
        let bytes = self.heap_bytes();
        let cell = self
            .platform
            .reserve(bytes, align_of::<HeapCell>())?
            .cast::<HeapCell>();
        // SAFETY: fresh memory of the right size and alignment, ours alone until published
        // by the swap below; after that only `next_all`'s readers see it, and it never changes.
        unsafe {
            cell.write(HeapCell::new(
                self.heaps_made.fetch_add(1, Ordering::Relaxed),
            ));
            if !cell.as_ref().claim().try_lock() {
                fatal("heap: a new heap was already claimed");
            }
            let mut head = self.heaps.load(Ordering::Relaxed);
            loop {
                (*cell.as_ptr()).next_all = head;
                match self.heaps.compare_exchange_weak(
                    head,
                    cell.as_ptr(),
                    Ordering::Release,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(current) => head = current,
                }
            }
            Some(cell.as_ref())
        }
    }

    /// Bytes mapped for each heap made for a thread.
    pub(crate) fn heap_bytes(&self) -> usize {
        size_of::<HeapCell>().next_multiple_of(self.platform.page_size())
    }

    /// Hands a heap on: its remotely freed blocks taken back, its kept empty pools returned,
    /// it goes on the stack of unbound heaps for the next thread.
    ///
    /// # Safety
    /// The caller claimed `cell` with [`Allocator::acquire_heap`] and no longer uses it.
    pub(crate) unsafe fn release_heap(&self, cell: &HeapCell) {
        let mut shared = SharedAccess::new(self);
        // SAFETY: claimed (caller).
        unsafe { cell.tidy(&mut shared) };
        let guard = shared.get();
        cell.next_free.store(guard.free_heaps, Ordering::Relaxed);
        guard.free_heaps = ptr::from_ref(cell).cast_mut();
        // SAFETY: claimed (caller); released under the lock, like every unbound heap's claim.
        unsafe { cell.claim().unlock() };
        drop(shared);
        heap::collect(cell, self);
    }

    /// Visits every heap: the fallback, then those made for threads.
    pub(crate) fn for_each_heap(&self, mut f: impl FnMut(&HeapCell)) {
        f(&self.fallback);
        let mut next = self.heaps.load(Ordering::Acquire).cast_const();
        // SAFETY: heaps live as long as the allocator; `next_all` never changes once published.
        while let Some(cell) = unsafe { next.as_ref() } {
            f(cell);
            next = cell.next_all;
        }
    }

    /// A large block, registered: from the cache, else mapped with the lock released.
    fn allocate_large(&self, layout: Layout) -> Option<(NonNull<u8>, bool)> {
        let len = mapping_len(layout.size(), self.platform.page_size())?;
        {
            let mut shared = self.shared();
            if !shared.large.make_room(&self.platform) {
                return None;
            }
            if let Some(cached) = shared.large.take_cached(len, layout.align()) {
                return Some((cached, false));
            }
            shared.large.missed(len);
        }
        let fresh = match self.platform.reserve(len, layout.align()) {
            Some(fresh) => fresh,
            None => {
                // Refused: what the cache holds may be the address space or commit charge
                // the system lacks. Empty it and ask once more.
                let unmap = self.shared().large.trim();
                let again = if unmap.is_empty() {
                    None
                } else {
                    // SAFETY: cached mappings are used by nobody.
                    unsafe { unmap.release(&self.platform) };
                    self.platform.reserve(len, layout.align())
                };
                let Some(fresh) = again else {
                    self.refused(len);
                    return None;
                };
                fresh
            }
        };
        let mut shared = self.shared();
        if !shared.large.make_room(&self.platform) {
            drop(shared);
            // SAFETY: just mapped, never handed out.
            unsafe { self.platform.release(fresh, len) };
            return None;
        }
        shared.large.register(fresh, len);
        Some((fresh, P::CAPABILITIES.contains(Capabilities::ZERO_FILLED)))
    }

    /// Frees a large block; with `expected`, its mapping must [`fits`] one of those two
    /// lengths. A pointer that starts no large block in use, or one of a length that does not
    /// fit, is reported and aborts.
    ///
    /// # Safety
    /// If `ptr` is a large block in use, it is not used after this call.
    unsafe fn free_large(&self, ptr: NonNull<u8>, expected: Option<[usize; 2]>) {
        let Some((len, unmap)) = self.shared().large.retire(ptr) else {
            fatal("free: pointer is no block of this allocator (invalid or freed twice)");
        };
        if expected.is_some_and(|e| !e.iter().any(|&e| fits(len, e))) {
            fatal("dealloc: layout does not match the large block's size");
        }
        // SAFETY: the freed block and the cache entries evicted for it are unused.
        unsafe { unmap.release(&self.platform) };
    }

    /// [`Allocator::free_large`] without a length to check, out of line (C's `free` of a
    /// large block, or of no block at all), so that the pooled free keeps no stack frame.
    ///
    /// # Safety
    /// As [`Allocator::free_large`].
    #[cold]
    #[inline(never)]
    unsafe fn free_large_unsized(&self, ptr: NonNull<u8>) {
        // SAFETY: as the caller guarantees.
        unsafe { self.free_large(ptr, None) }
    }

    /// The pool of the block that `ptr` was handed out as, found from the address alone,
    /// without a lock; `None` if `ptr` is in no pool in use, or does not start a block the
    /// pool has carved (every pointer handed out starts its block: an interior pointer, or
    /// one past the blocks carved, is none). Exact for a block the caller holds; for other
    /// addresses, a best effort that is never undefined behaviour.
    #[inline(always)]
    fn pooled_block(&self, ptr: NonNull<u8>) -> Option<PoolPtr> {
        if !self.map.contains(ptr.addr().get()) {
            return None;
        }
        // SAFETY: `ptr` lies in one of our arenas (the map), which stays mapped while a block
        // the caller holds is in it; for any other pointer the answer is a hint (see above).
        unsafe { PoolPtr::of_block(ptr) }
    }

    /// Resizes a large block of `old` bytes, aligned to `align`, without copying: in place if
    /// its range still [`fits`] the new size, shrinks (its tail cached), or grows into the
    /// cached range right after it, else by remapping (with the lock released). `None` if it
    /// should move by copy — it cannot be remapped, or it grows by half or more and the cache
    /// holds a range for it — in which case the block is unchanged.
    ///
    /// # Safety
    /// `block` is a large block in use of `old` bytes, aligned to `align`.
    unsafe fn resize_large(
        &self,
        block: NonNull<u8>,
        old: usize,
        align: usize,
        new_size: usize,
    ) -> Option<NonNull<u8>> {
        let page = self.platform.page_size();
        let new = mapping_len(new_size, page)?;
        if fits(old, new) {
            return Some(block);
        }
        if new < old {
            let unmap = self.shared().large.shrink(block, old, new);
            // SAFETY: the block's tail and cached ranges evicted for it are unused.
            unsafe { unmap.release(&self.platform) };
            return Some(block);
        }
        let mut shared = self.shared();
        // Growing into the cached pages after it: already faulted in, and nothing moves.
        if shared.large.grow_in_place(block, old, new) {
            return Some(block);
        }
        // Growing by half or more into cached pages elsewhere: copying the block costs less
        // than faulting in as many fresh pages as a remap would add (a page fault costs
        // several times a page's copy).
        if new - old >= old / 2 && shared.large.has_cached(new, align) {
            return None;
        }
        shared.large.missed(new - old);
        drop(shared);
        if !P::CAPABILITIES.contains(Capabilities::REMAP) {
            return None;
        }
        // The system places a moved mapping on a page boundary, no more: over-aligned blocks
        // may only be resized in place.
        // SAFETY: `block` starts `old` mapped bytes (L1, L2), ours alone (caller).
        let resized = unsafe { self.platform.remap(block, old, new, align <= page) }?;
        self.shared().large.moved(block, resized, new);
        Some(resized)
    }

    /// A snapshot of this instance's figures.
    pub fn stats(&self) -> Stats {
        let shared = self.shared();
        Stats::collect(self, &shared)
    }

    /// Checks every invariant of the arenas and of every heap that no other thread holds
    /// (the caller's own, `mine`, included), walking all their memory. Each checked heap
    /// first takes back its remotely freed blocks; then, if every heap could be checked, no
    /// block may be left counted as waiting on a remote list, so a block that went missing
    /// between two heaps is found.
    pub(crate) fn check_with(&self, mine: Option<&HeapCell>) -> Result<(), &'static str> {
        let guard = self.shared();
        let mut shared = SharedAccess::held(self, guard);
        let mut result = shared
            .get()
            .arenas
            .check(&self.map)
            .and(shared.get().large.check());
        let mut all_checked = true;
        self.for_each_heap(|cell| {
            let is_mine = mine.is_some_and(|m| ptr::eq(m, cell));
            if result.is_err() {
                return;
            }
            if !(is_mine || cell.claim().try_lock()) {
                all_checked = false;
                return;
            }
            // SAFETY: claimed, by the caller or just now (and released at once).
            unsafe {
                cell.collect_remote(&mut shared);
                result = cell.check(&shared.get().arenas, &self.map);
                if !is_mine {
                    cell.claim().unlock();
                }
            }
        });
        result?;
        if all_checked && stats::waiting_on_remote_lists(self).iter().any(|&w| w != 0) {
            return Err("heaps: blocks freed remotely were never taken back");
        }
        drop(shared);
        self.for_each_heap(|cell| heap::collect(cell, self));
        Ok(())
    }

    /// Checks every invariant of the arenas and of every heap no thread holds, walking all
    /// their memory.
    pub fn check(&self) -> Result<(), &'static str> {
        self.check_with(None)
    }

    /// Gives back to the system all memory that is not in use: takes back blocks freed into
    /// heaps no thread holds (and into `mine`, the caller's own) and their kept empty pools,
    /// decommits free pools, unmaps empty arenas and cached large mappings.
    pub(crate) fn trim_with(&self, mine: Option<&HeapCell>) {
        if let Some(cell) = mine {
            // SAFETY: the caller's own heap, claimed by it.
            unsafe { cell.tidy(&mut SharedAccess::new(self)) };
        }
        self.for_each_heap(|cell| {
            heap::tidy_unclaimed(cell, self);
        });
        let mut shared = self.shared();
        shared.arenas.trim(&self.platform, &self.map);
        let unmap = shared.large.trim();
        drop(shared);
        // SAFETY: cached mappings are used by nobody.
        unsafe { unmap.release(&self.platform) };
    }

    /// Gives back to the system all memory that is not in use (see `trim_with`).
    pub fn trim(&self) {
        self.trim_with(None)
    }

    /// `fork` preparation: takes the fallback heap and the lock, so that no other thread is
    /// inside either when the process is copied.
    pub(crate) fn fork_prepare(&self) {
        self.fallback.claim().lock();
        self.shared.raw().lock();
    }

    /// After `fork`, in the parent: releases what [`Allocator::fork_prepare`] took.
    ///
    /// # Safety
    /// Called once after `fork_prepare`, by the same thread.
    pub(crate) unsafe fn fork_parent(&self) {
        // SAFETY: taken by fork_prepare (caller).
        unsafe {
            self.shared.raw().unlock();
            self.fallback.claim().unlock();
        }
    }

    /// After `fork`, in the child: the same, whatever thread took them. Heaps bound to
    /// threads of the parent stay claimed in the child: their blocks may still be freed (they
    /// wait on the heaps' remote lists), but their memory is not reused.
    ///
    /// # Safety
    /// Called once in the child of a `fork` that `fork_prepare` preceded.
    pub(crate) unsafe fn fork_child(&self) {
        // SAFETY: the child has one thread, outside both critical sections.
        unsafe {
            self.shared.raw().force_unlock();
            self.fallback.claim().force_unlock();
        }
    }
}

/// Blocks up to this size share their pools with others, so they never resize in place
/// (`HeapCell::resize_in_place` needs a block alone in its pool): C's `realloc` moves them on
/// its short path.
const SHARES_POOL_MAX: usize = 32 * 1024;

const _: () = {
    let mut i = 0;
    while i < pymalloc_pool::NUM_CLASSES {
        if let Some(class) = SizeClass::from_index(i) {
            assert!(class.block_size() > SHARES_POOL_MAX || blocks_per_pool(class) > 1);
        }
        i += 1;
    }
};

/// A block handed out, as its address alone tells (`Session::find`).
#[derive(Clone, Copy)]
enum Found {
    /// The block starting at the pointer, in `pool`, of `class`.
    Pooled { pool: PoolPtr, class: SizeClass },
    /// A large block with a mapping of `len` bytes.
    Large { len: usize },
}

/// Calls on an allocator through one heap that the calling thread has claimed.
pub(crate) struct Session<'a, P: Platform> {
    alloc: &'a Allocator<P>,
    cell: &'a HeapCell,
}

impl<P: Platform> Clone for Session<'_, P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P: Platform> Copy for Session<'_, P> {}

impl<'a, P: Platform> Session<'a, P> {
    /// # Safety
    /// The calling thread has claimed `cell`, a heap of `alloc`, for as long as the session is
    /// used.
    #[inline(always)]
    pub(crate) unsafe fn new(alloc: &'a Allocator<P>, cell: &'a HeapCell) -> Self {
        Session { alloc, cell }
    }

    /// A block for `layout`, with whether it reads zero; `None` if it cannot be had.
    #[inline(always)]
    pub(crate) fn allocate(self, layout: Layout) -> Option<(NonNull<u8>, bool)> {
        // With no padding for alignment, `Route::of` is the size's class.
        let class = SizeClass::for_size(layout.size()).filter(|_| layout.align() <= ALIGNMENT);
        match class {
            // SAFETY: the heap is claimed (Session::new); blocks are aligned to ALIGNMENT.
            Some(class) => unsafe { self.cell.alloc(class, self.alloc) },
            None => self.allocate_rarely(layout),
        }
    }

    /// [`Session::allocate`] for over-aligned and large blocks, out of line.
    #[cold]
    #[inline(never)]
    fn allocate_rarely(self, layout: Layout) -> Option<(NonNull<u8>, bool)> {
        match Route::of(layout) {
            // SAFETY: the heap is claimed (Session::new); every block of the class has the
            // layout's alignment (`SizeClass::for_layout`).
            Route::Pooled(class) => unsafe { self.cell.alloc(class, self.alloc) },
            Route::Large => self.alloc.allocate_large(layout),
        }
    }

    /// See [`Allocator::alloc`]. Its fast path is the freelist's alone: Rust callers inline
    /// it, often with a constant size whose class is then computed at compile time, and a
    /// larger fast path would no longer be inlined (`small-churn`: 314 M instructions with
    /// this one, 347 M with [`Session::malloc`]'s).
    #[inline(always)]
    pub(crate) fn alloc(self, layout: Layout) -> *mut u8 {
        if cfg!(feature = "debug") {
            return debug::alloc(self, layout, false);
        }
        if let Some(class) = SizeClass::for_size(layout.size()) {
            if layout.align() <= ALIGNMENT {
                // SAFETY: the heap is claimed (Session::new).
                if let Some(block) = unsafe { self.cell.alloc_freelist(class) } {
                    return block.as_ptr();
                }
            }
        }
        self.alloc_rarely(layout)
    }

    /// C's `malloc` of `size` bytes: as [`Session::alloc`], but its fast path also carves a
    /// never-used block (`PoolPtr::alloc_unless_last`), since it is a function of its own
    /// that no caller inlines, and a program that builds up its data carves most of its
    /// blocks.
    #[inline(always)]
    pub(crate) fn malloc(self, size: usize) -> *mut u8 {
        if cfg!(feature = "debug") {
            return match Layout::from_size_align(size, ALIGNMENT) {
                Ok(layout) => debug::alloc(self, layout, false),
                Err(_) => ptr::null_mut(),
            };
        }
        if let Some(class) = SizeClass::for_size(size) {
            // SAFETY: the heap is claimed (Session::new).
            if let Some((block, _)) = unsafe { self.cell.alloc_fast(class) } {
                return block.as_ptr();
            }
            // SAFETY: as above; the fast path was just tried.
            return unsafe { self.cell.alloc_from_any_pool(class, self.alloc) }
                .map_or(ptr::null_mut(), |(p, _)| p.as_ptr());
        }
        match Layout::from_size_align(size, ALIGNMENT) {
            Ok(layout) => self.alloc_rarely(layout),
            Err(_) => ptr::null_mut(),
        }
    }

    /// [`Session::alloc`] past its fast path, out of line.
    #[inline(never)]
    fn alloc_rarely(self, layout: Layout) -> *mut u8 {
        self.allocate(layout)
            .map_or(ptr::null_mut(), |(p, _)| p.as_ptr())
    }

    /// See [`Allocator::alloc_zeroed`].
    #[inline]
    pub(crate) fn alloc_zeroed(self, layout: Layout) -> *mut u8 {
        if cfg!(feature = "debug") {
            return debug::alloc(self, layout, true);
        }
        match self.allocate(layout) {
            Some((p, true)) => p.as_ptr(),
            Some((p, false)) => {
                // SAFETY: a block of at least `layout.size()` bytes, just handed to us.
                unsafe { p.as_ptr().write_bytes(0, layout.size()) };
                p.as_ptr()
            }
            None => ptr::null_mut(),
        }
    }

    /// See [`Allocator::dealloc`].
    ///
    /// # Safety
    /// As [`Allocator::dealloc`].
    #[inline(always)]
    pub(crate) unsafe fn dealloc(self, ptr: *mut u8, layout: Layout) {
        // SAFETY: a block this allocator handed out (caller), so not null.
        let ptr = unsafe { NonNull::new_unchecked(ptr) };
        let layout = if cfg!(feature = "debug") {
            // SAFETY: a block of ours for `layout`, allocated with a debug trailer (caller).
            unsafe { debug::check_and_poison(ptr, layout) }
        } else {
            layout
        };
        // SAFETY: as the caller guarantees.
        unsafe { self.free_block(ptr, layout) }
    }

    /// Frees a block of exactly `layout` as allocated (with the debug trailer, if any).
    ///
    /// # Safety
    /// As [`Allocator::dealloc`].
    #[inline(always)]
    pub(crate) unsafe fn free_block(self, ptr: NonNull<u8>, layout: Layout) {
        // A pooled block with no padding for alignment: `Route::Pooled`, without computing
        // the class, which the pool knows.
        if layout.align() <= ALIGNMENT && layout.size() <= POOLED_MAX {
            if cfg!(debug_assertions) {
                if let Route::Pooled(class) = Route::of(layout) {
                    check_pooled_block(&self.alloc.map, ptr, class);
                }
            }
            // SAFETY: `ptr` starts a pooled block in use (caller; blocks are aligned to
            // ALIGNMENT, so no padding was skipped); the heap is claimed (Session::new).
            unsafe { self.cell.free(ptr, self.alloc) }
        } else {
            // SAFETY: as the caller guarantees.
            unsafe { self.free_block_rarely(ptr, layout) }
        }
    }

    /// [`Session::free_block`] for over-aligned and large blocks, out of line so that the
    /// common path keeps no registers to restore.
    ///
    /// # Safety
    /// As [`Allocator::dealloc`].
    #[cold]
    #[inline(never)]
    unsafe fn free_block_rarely(self, ptr: NonNull<u8>, layout: Layout) {
        match Route::of(layout) {
            Route::Pooled(class) => {
                if cfg!(debug_assertions) {
                    check_pooled_block(&self.alloc.map, ptr, class);
                }
                // SAFETY: `ptr` starts a block of `class` in use (caller; blocks are handed
                // out from their start); the heap is claimed (Session::new).
                unsafe { self.cell.free(ptr, self.alloc) }
            }
            // SAFETY: a large block in use of `layout` (caller).
            Route::Large => unsafe {
                let expected = mapping_len(layout.size(), self.alloc.platform.page_size());
                self.alloc.free_large(ptr, expected.map(|e| [e, e]))
            },
        }
    }

    /// The block handed out as `ptr`, found from its address alone; a pointer that is no
    /// block of this allocator aborts with `message`.
    ///
    /// # Safety
    /// `ptr` is a block in use of this allocator, as far as the caller knows.
    unsafe fn find(self, ptr: NonNull<u8>, message: &'static str) -> Found {
        if let Some(pool) = self.alloc.pooled_block(ptr) {
            // SAFETY: a live pool (`pooled_block`).
            let class = unsafe { pool.class() };
            return Found::Pooled { pool, class };
        }
        match self.alloc.shared().large.len_of(ptr.as_ptr()) {
            Some(len) => Found::Large { len },
            None => fatal(message),
        }
    }

    /// See [`Allocator::usable_size`].
    ///
    /// # Safety
    /// As [`Allocator::usable_size`].
    pub(crate) unsafe fn usable_size(self, ptr: NonNull<u8>) -> usize {
        const MESSAGE: &str = "malloc_usable_size: pointer is no block of this allocator";
        // SAFETY: as the caller guarantees.
        match unsafe { self.find(ptr, MESSAGE) } {
            Found::Pooled { class, .. } => class.block_size(),
            Found::Large { len } => len,
        }
    }

    /// See [`Allocator::dealloc_unsized`].
    ///
    /// # Safety
    /// As [`Allocator::dealloc_unsized`].
    #[inline(always)]
    pub(crate) unsafe fn dealloc_unsized(self, ptr: NonNull<u8>) {
        if let Some(pool) = self.alloc.pooled_block(ptr) {
            // SAFETY: `ptr` starts a carved block of `pool`, in use unless this is a double
            // free, which the heap looks for (caller); the heap is claimed (Session::new).
            unsafe { self.cell.free_in(ptr, pool, self.alloc) };
        } else {
            // SAFETY: a large block in use, or (checked there) no block at all (caller).
            unsafe { self.alloc.free_large_unsized(ptr) };
        }
    }

    /// A free that carries the block's size and alignment, as C23's `free_sized` and
    /// `free_aligned_sized` and C++'s sized `operator delete`: found from the address as by
    /// [`Session::dealloc_unsized`], and the block must be one that a request of `size` bytes
    /// aligned to `align` is served with (the class or mapping length it routes to, also
    /// after rounding `size` up to a multiple of `align`, as C++'s aligned `new` does); any
    /// other size, or an alignment that is not a power of two, is reported and aborts.
    ///
    /// # Safety
    /// As [`Allocator::dealloc_unsized`].
    #[inline(always)]
    pub(crate) unsafe fn dealloc_checked(self, ptr: NonNull<u8>, size: usize, align: usize) {
        if cfg!(feature = "debug") {
            // Blocks carry the debug trailer, so their class is not the size's: freed as C's
            // `free` frees them.
            // SAFETY: as the caller guarantees.
            return unsafe { self.dealloc_unsized(ptr) };
        }
        // The common case, a pooled block of malloc's alignment: its class is the size's.
        if align <= ALIGNMENT {
            if let Some(pool) = self.alloc.pooled_block(ptr) {
                // SAFETY: a carved block of a live pool (`pooled_block`).
                if SizeClass::for_size(size) == Some(unsafe { pool.class() }) {
                    // SAFETY: `ptr` starts a carved block of `pool`, in use unless this is a
                    // double free, which the heap looks for (caller); the heap is claimed.
                    return unsafe { self.cell.free_in(ptr, pool, self.alloc) };
                }
            }
        }
        // SAFETY: as the caller guarantees.
        unsafe { self.dealloc_checked_rarely(ptr, size, align) }
    }

    /// [`Session::dealloc_checked`] for over-aligned and large blocks, and mismatches.
    ///
    /// # Safety
    /// As [`Allocator::dealloc_unsized`].
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_checked_rarely(self, ptr: NonNull<u8>, size: usize, align: usize) {
        const MESSAGE: &str = "free_sized: size or alignment does not match the block";
        if !align.is_power_of_two() {
            fatal(MESSAGE);
        }
        let align = align.max(ALIGNMENT);
        if let Some(pool) = self.alloc.pooled_block(ptr) {
            // SAFETY: a carved block of a live pool (`pooled_block`).
            let class = unsafe { pool.class() };
            let served_as = |size: usize| SizeClass::for_layout(size, align) == Some(class);
            if !(served_as(size) || size.checked_next_multiple_of(align).is_some_and(served_as)) {
                fatal(MESSAGE);
            }
            // SAFETY: `ptr` starts a carved block of `pool`, in use unless this is a double
            // free, which the heap looks for (caller); the heap is claimed (Session::new).
            unsafe { self.cell.free_in(ptr, pool, self.alloc) };
        } else {
            let pooled = Layout::from_size_align(size, align)
                .is_ok_and(|layout| matches!(Route::of(layout), Route::Pooled(_)));
            let page = self.alloc.platform.page_size();
            let rounded = size.checked_next_multiple_of(align);
            let expected = mapping_len(size, page)
                .zip(rounded.and_then(|r| mapping_len(r, page)))
                .filter(|_| !pooled);
            let Some((exact, rounded)) = expected else {
                fatal(MESSAGE);
            };
            // SAFETY: a large block in use, or (checked there) no block at all (caller).
            unsafe { self.alloc.free_large(ptr, Some([exact, rounded])) };
        }
    }

    /// See [`Allocator::realloc_unsized`].
    ///
    /// # Safety
    /// As [`Allocator::realloc_unsized`].
    pub(crate) unsafe fn realloc_unsized(self, ptr: NonNull<u8>, new_size: usize) -> *mut u8 {
        // The common case, a small or medium block that stays pooled: no layout to build,
        // the class compared as a size's, the new block from `malloc`'s fast path.
        if !cfg!(feature = "debug") {
            if let (Some(pool), Some(to)) =
                (self.alloc.pooled_block(ptr), SizeClass::for_size(new_size))
            {
                // SAFETY: `ptr` starts a carved block of `pool` (`pooled_block`).
                let class = unsafe { pool.class() };
                if class.block_size() <= SHARES_POOL_MAX || to.block_size() <= SHARES_POOL_MAX {
                    // SAFETY: a carved block of `pool`; the heap is claimed.
                    unsafe { self.cell.ensure_in_use(ptr, pool, self.alloc) };
                    if to == class {
                        return ptr.as_ptr();
                    }
                    let new = self.malloc(new_size);
                    if !new.is_null() {
                        // SAFETY: both blocks are live and distinct and hold the bytes
                        // copied; the old one is then freed, marked as C's `free` marks it.
                        unsafe {
                            ptr::copy_nonoverlapping(
                                ptr.as_ptr(),
                                new,
                                class.block_size().min(new_size),
                            );
                            self.cell.free_in(ptr, pool, self.alloc);
                        }
                    }
                    return new;
                }
            }
        }
        // SAFETY: as the caller guarantees.
        unsafe { self.realloc_unsized_rarely(ptr, new_size) }
    }

    /// [`Session::realloc_unsized`] for large blocks, blocks that may resize in place (alone
    /// in their pools), and the `debug` feature.
    ///
    /// # Safety
    /// As [`Allocator::realloc_unsized`].
    #[inline(never)]
    unsafe fn realloc_unsized_rarely(self, ptr: NonNull<u8>, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, ALIGNMENT) else {
            return ptr::null_mut();
        };
        let in_place = !cfg!(feature = "debug");
        // SAFETY: as the caller guarantees.
        let found = unsafe { self.find(ptr, "realloc: pointer is no block of this allocator") };
        let old_size = match found {
            Found::Pooled { pool, class } => {
                // A block freed already must not be handed back as if it were live.
                // SAFETY: `ptr` starts a carved block of `pool` (found above); claimed.
                unsafe { self.cell.ensure_in_use(ptr, pool, self.alloc) };
                if in_place {
                    match Route::of(new_layout) {
                        Route::Pooled(to) if to == class => return ptr.as_ptr(),
                        // SAFETY: a block in use of `class` at its start (found above); the
                        // heap is claimed.
                        Route::Pooled(to)
                            if unsafe { self.cell.resize_in_place(ptr, class, to, self.alloc) } =>
                        {
                            return ptr.as_ptr();
                        }
                        _ => {}
                    }
                }
                class.block_size()
            }
            Found::Large { len } => {
                if in_place && Route::of(new_layout) == Route::Large {
                    // C asks only malloc's alignment of a resized block: the mapping may move
                    // to any page.
                    let page = self.alloc.platform.page_size();
                    // SAFETY: a large block in use of `len` bytes (L2), page-aligned (L1).
                    let resized = unsafe { self.alloc.resize_large(ptr, len, page, new_size) };
                    if let Some(resized) = resized {
                        return resized.as_ptr();
                    }
                }
                len
            }
        };
        let new = self.alloc(new_layout);
        if !new.is_null() {
            // SAFETY: both blocks are live and distinct and hold at least the bytes copied;
            // the old one, as found above, is then freed (caller).
            unsafe {
                ptr::copy_nonoverlapping(ptr.as_ptr(), new, old_size.min(new_size));
                match found {
                    // Freed as C's `free` would: marked (P9), so a later free of it is caught.
                    Found::Pooled { pool, .. } => self.cell.free_in(ptr, pool, self.alloc),
                    Found::Large { len } => self.alloc.free_large(ptr, Some([len, len])),
                }
            }
        }
        new
    }

    /// For a block resized in place through Rust's `realloc`, which holds its freed mark: it
    /// must not be free (see [`HeapCell::ensure_in_use`]).
    ///
    /// # Safety
    /// `block` is, as far as the caller knows, a pooled block in use.
    #[cold]
    #[inline(never)]
    unsafe fn ensure_pooled_in_use(self, block: NonNull<u8>) {
        // SAFETY: the block lies in a mapped arena (caller); a pool it names is live.
        let pool = unsafe { PoolPtr::of_block(block) };
        match pool {
            // SAFETY: a carved block of `pool`; the heap is claimed.
            Some(pool) => unsafe { self.cell.ensure_in_use(block, pool, self.alloc) },
            None => fatal("realloc: pointer is no block of this allocator"),
        }
    }

    /// See [`Allocator::realloc`].
    ///
    /// # Safety
    /// As [`Allocator::realloc`].
    pub(crate) unsafe fn realloc(self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return ptr::null_mut();
        };
        // Under `debug`, every resize moves, so that both blocks' trailers are checked.
        match (Route::of(layout), Route::of(new_layout), NonNull::new(ptr)) {
            _ if cfg!(feature = "debug") => {}
            (Route::Pooled(a), Route::Pooled(b), Some(block)) if a == b => {
                // SAFETY: a pooled block (caller), so its two words are mapped.
                if unsafe { holds_freed_mark(block) } {
                    // SAFETY: as above; the heap is claimed.
                    unsafe { self.ensure_pooled_in_use(block) };
                }
                return ptr;
            }
            // SAFETY: a block in use of class `a` (caller), at its block's start as its
            // alignment is the blocks' own; the heap is claimed.
            (Route::Pooled(a), Route::Pooled(b), Some(block))
                if layout.align() <= ALIGNMENT
                    && unsafe { self.cell.resize_in_place(block, a, b, self.alloc) } =>
            {
                return ptr;
            }
            (Route::Large, Route::Large, Some(block)) => {
                let old = self.alloc.shared().large.len_of(ptr);
                // SAFETY: a large block in use of this layout (caller), of `old` bytes (L2).
                let resized = old.and_then(|old| unsafe {
                    self.alloc
                        .resize_large(block, old, layout.align(), new_size)
                });
                if let Some(resized) = resized {
                    return resized.as_ptr();
                }
            }
            _ => {}
        }
        let new = self.alloc(new_layout);
        if !new.is_null() {
            // SAFETY: both blocks are live, distinct, and hold at least the bytes copied; the
            // old one is then freed with its own layout (caller).
            unsafe {
                ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

/// A heap of an [`Allocator`] held by one user (see [`Allocator::local_heap`]): the same
/// calls as the allocator's, without its lock for blocks of this heap.
pub struct LocalHeap<'a, P: Platform> {
    session: Session<'a, P>,
}

impl<P: Platform> LocalHeap<'_, P> {
    /// As [`Allocator::alloc`], from this heap.
    pub fn alloc(&mut self, layout: Layout) -> *mut u8 {
        self.session.alloc(layout)
    }

    /// As [`Allocator::alloc_zeroed`], from this heap.
    pub fn alloc_zeroed(&mut self, layout: Layout) -> *mut u8 {
        self.session.alloc_zeroed(layout)
    }

    /// As [`Allocator::dealloc`]: a block of this heap goes straight back; one of another heap
    /// goes on that heap's remote list.
    ///
    /// # Safety
    /// As [`Allocator::dealloc`].
    pub unsafe fn dealloc(&mut self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as the caller guarantees.
        unsafe { self.session.dealloc(ptr, layout) }
    }

    /// As [`Allocator::dealloc_unsized`].
    ///
    /// # Safety
    /// As [`Allocator::dealloc_unsized`].
    pub unsafe fn dealloc_unsized(&mut self, ptr: NonNull<u8>) {
        // SAFETY: as the caller guarantees.
        unsafe { self.session.dealloc_unsized(ptr) }
    }

    /// As [`Allocator::realloc_unsized`]; a block that moves moves into this heap.
    ///
    /// # Safety
    /// As [`Allocator::dealloc_unsized`].
    pub unsafe fn realloc_unsized(&mut self, ptr: NonNull<u8>, new_size: usize) -> *mut u8 {
        // SAFETY: as the caller guarantees.
        unsafe { self.session.realloc_unsized(ptr, new_size) }
    }

    /// As [`Allocator::realloc`]; a block that moves moves into this heap.
    ///
    /// # Safety
    /// As [`Allocator::realloc`].
    pub unsafe fn realloc(&mut self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as the caller guarantees.
        unsafe { self.session.realloc(ptr, layout, new_size) }
    }
}

impl<P: Platform> Drop for LocalHeap<'_, P> {
    fn drop(&mut self) {
        // SAFETY: claimed by `local_heap`, and no longer used.
        unsafe { self.session.alloc.release_heap(self.session.cell) }
    }
}

/// In debug builds: the block being freed must lie in a pool in use, of the layout's class.
fn check_pooled_block(map: &ArenaMap, ptr: NonNull<u8>, class: SizeClass) {
    let Some(memory) = map.pool_of(ptr) else {
        fatal("dealloc: pointer is in no pool of this allocator (wrong pointer or layout?)");
    };
    // SAFETY: the arenas say a live pool starts there.
    if unsafe { PoolPtr::at(memory).class() } != class {
        fatal("dealloc: layout does not match the size class the block was allocated with");
    }
}

impl<P: Platform> Drop for Allocator<P> {
    /// Unmaps everything: arenas, large blocks (in use or cached), heaps. Nothing the instance
    /// handed out may be used afterwards.
    fn drop(&mut self) {
        let shared = self.shared.get_mut();
        // SAFETY: the instance is going away; nothing it handed out may be used any more.
        unsafe {
            shared.large.trim().release(&self.platform);
            shared.large.release_in_use(&self.platform);
            shared.arenas.release_all(&self.platform, &mut self.map);
        }
        let bytes = self.heap_bytes();
        let mut next = *self.heaps.get_mut();
        while let Some(cell) = NonNull::new(next) {
            // SAFETY: every heap was reserved by `acquire_heap` with this size, and nothing
            // uses it any more.
            unsafe {
                next = (*cell.as_ptr()).next_all.cast_mut();
                self.platform.release(cell.cast(), bytes);
            }
        }
    }
}
