//! [`Session`]: calls on an allocator through one heap that the calling thread has claimed —
//! the routing of every request ([`Route`]: a layout's size and alignment alone say whether a
//! pool block or a large block serves it), the fast paths, and what C's calls add (frees and
//! resizes without a layout, sized frees checked against the block). [`LocalHeap`] is a
//! session held by one user.
//!
//! Every `Layout` is routed by its size and alignment alone: a size up to 256 KiB aligned to
//! at most a slot (16 KiB) takes a pool block, of a class whose blocks all have the alignment
//! (`SizeClass::for_layout`), so that every pointer handed out starts its block; anything
//! else is a large block. Nothing here allocates, panics or unwinds: a request that cannot be
//! served gets null.

use core::alloc::Layout;
use core::mem::ManuallyDrop;
use core::ptr::{self, NonNull};

use pymalloc_arena::{ArenaMap, Platform};
use pymalloc_pool::secure;
use pymalloc_pool::{
    ALIGNMENT, POOLED_MAX, PoolPtr, SizeClass, blocks_per_pool, fatal, holds_freed_mark,
};

use crate::debug;
use crate::heap::{self, Claim, Context};
use crate::heaps::Heaps;
use crate::large::mapping_len;

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
pub(crate) enum Found {
    /// The block starting at the pointer, in `pool`, of `class`.
    Pooled { pool: PoolPtr, class: SizeClass },
    /// A large block with a mapping of `len` bytes.
    Large { len: usize },
}

/// Calls on an allocator through one heap that the calling thread has claimed.
pub(crate) struct Session<'a, P: Platform> {
    pub(crate) ctx: &'a Context<P>,
    pub(crate) claim: Claim<'a>,
}

impl<'a, P: Platform> Session<'a, P> {
    /// Calls through the heap of `claim`, a heap of the allocator that `ctx` belongs to.
    #[inline(always)]
    pub(crate) fn new(ctx: &'a Context<P>, claim: Claim<'a>) -> Self {
        Session { ctx, claim }
    }

    /// The claim of the session's heap, given back.
    pub(crate) fn into_claim(self) -> Claim<'a> {
        self.claim
    }

    /// The same session, for a call that takes it by value (so that it travels in
    /// registers, not through memory); `self` is borrowed meanwhile.
    #[inline(always)]
    pub(crate) fn reborrow(&mut self) -> Session<'_, P> {
        Session {
            ctx: self.ctx,
            claim: self.claim.reborrow(),
        }
    }

    /// The pool of the block that `ptr` was handed out as, found from the address alone,
    /// without a lock; `None` if `ptr` is in no pool in use, or does not start a block the
    /// pool has carved (every pointer handed out starts its block: an interior pointer, or
    /// one past the blocks carved, is none). Exact for a block the caller holds; for other
    /// addresses, a best effort that is never undefined behaviour.
    #[inline(always)]
    fn pooled_block(&self, ptr: NonNull<u8>) -> Option<PoolPtr> {
        heap::pool_of_block(&self.ctx.shared.map, ptr)
    }

    /// The `debug` feature's allocation: `layout` with a trailer ([`debug::dress`]).
    fn debug_alloc(&mut self, layout: Layout, zeroed: bool) -> *mut u8 {
        match debug::inner(layout).and_then(|inner| self.block(inner)) {
            // SAFETY: a block of `debug::inner(layout)` bytes, just handed to us.
            Some((block, fresh)) => unsafe { debug::dress(block, layout, zeroed, fresh) },
            None => ptr::null_mut(),
        }
    }

    /// A block for `layout`, with whether it reads zero; `None` if it cannot be had.
    #[inline(always)]
    pub(crate) fn block(&mut self, layout: Layout) -> Option<(NonNull<u8>, bool)> {
        // With no padding for alignment, `Route::of` is the size's class.
        let class = SizeClass::for_size(layout.size()).filter(|_| layout.align() <= ALIGNMENT);
        match class {
            // Blocks are aligned to ALIGNMENT.
            Some(class) => self.claim.alloc(class, self.ctx),
            None => self.reborrow().block_rarely(layout),
        }
    }

    /// [`Session::allocate`] for over-aligned and large blocks, out of line.
    #[cold]
    #[inline(never)]
    fn block_rarely(mut self, layout: Layout) -> Option<(NonNull<u8>, bool)> {
        match Route::of(layout) {
            // Every block of the class has the layout's alignment (`SizeClass::for_layout`).
            Route::Pooled(class) => self.claim.alloc(class, self.ctx),
            Route::Large => self.ctx.shared.large_block(layout),
        }
    }

    /// See `Allocator::alloc`. Its fast path is the freelist's alone: Rust callers inline
    /// it, often with a constant size whose class is then computed at compile time, and a
    /// larger fast path would no longer be inlined (`small-churn`: 314 M instructions with
    /// this one, 347 M with [`Session::malloc_fast`]'s).
    #[inline(always)]
    pub(crate) fn alloc(&mut self, layout: Layout) -> *mut u8 {
        if cfg!(feature = "debug") {
            return self.debug_alloc(layout, false);
        }
        if secure::ENABLED {
            return self.secure_alloc(layout, false);
        }
        if let Some(class) = SizeClass::for_size(layout.size()) {
            if layout.align() <= ALIGNMENT {
                if let Some(block) = self.claim.alloc_freelist(class) {
                    return block.as_ptr();
                }
            }
        }
        self.reborrow().alloc_rarely(layout)
    }

    /// The fast path of C's `malloc` of `size` bytes: a block from the first pool of the
    /// size's class, if that pool has one to spare (`Claim::alloc_fast`); `None`, with nothing
    /// changed, for everything else (and always in the `debug` and `secure` builds). Unlike
    /// [`Session::alloc`]'s, it also carves a never-used block (`PoolPtr::alloc_unless_last`),
    /// since C's `malloc` is a function of its own that no caller inlines, and a program that
    /// builds up its data carves most of its blocks.
    #[inline(always)]
    pub(crate) fn malloc_fast(&mut self, size: usize) -> Option<NonNull<u8>> {
        if cfg!(feature = "debug") || secure::ENABLED {
            return None;
        }
        let class = SizeClass::for_size(size)?;
        self.claim.alloc_fast(class).map(|(block, _)| block)
    }

    /// The rest of C's `malloc`, for a request [`Session::malloc_fast`] did not serve (or did not
    /// try: it serves any request whole).
    #[inline(always)]
    pub(crate) fn malloc_past_fast(&mut self, size: usize) -> *mut u8 {
        if cfg!(feature = "debug") || secure::ENABLED {
            return match Layout::from_size_align(size, ALIGNMENT) {
                Ok(layout) if secure::ENABLED => self.secure_alloc(layout, false),
                Ok(layout) => self.debug_alloc(layout, false),
                Err(_) => ptr::null_mut(),
            };
        }
        if let Some(class) = SizeClass::for_size(size) {
            return self
                .claim
                .reborrow()
                .alloc_from_any_pool(class, self.ctx)
                .map_or(ptr::null_mut(), |(p, _)| p.as_ptr());
        }
        match Layout::from_size_align(size, ALIGNMENT) {
            Ok(layout) => self.reborrow().alloc_rarely(layout),
            Err(_) => ptr::null_mut(),
        }
    }

    /// [`Session::alloc`] past its fast path, out of line.
    #[inline(never)]
    fn alloc_rarely(mut self, layout: Layout) -> *mut u8 {
        self.block(layout)
            .map_or(ptr::null_mut(), |(p, _)| p.as_ptr())
    }

    /// See `Allocator::alloc_zeroed`.
    #[inline]
    pub(crate) fn alloc_zeroed(&mut self, layout: Layout) -> *mut u8 {
        if cfg!(feature = "debug") {
            return self.debug_alloc(layout, true);
        }
        if secure::ENABLED {
            return self.secure_alloc(layout, true);
        }
        match self.block(layout) {
            Some((p, true)) => p.as_ptr(),
            Some((p, false)) => {
                // SAFETY: a block of at least `layout.size()` bytes, just handed to us.
                unsafe { p.as_ptr().write_bytes(0, layout.size()) };
                p.as_ptr()
            }
            None => ptr::null_mut(),
        }
    }

    /// See `Allocator::dealloc`.
    ///
    /// # Safety
    /// As `Allocator::dealloc`.
    #[inline(always)]
    pub(crate) unsafe fn dealloc(&mut self, ptr: *mut u8, layout: Layout) {
        // SAFETY: a block this allocator handed out (caller), so not null.
        let ptr = unsafe { NonNull::new_unchecked(ptr) };
        if secure::ENABLED {
            // SAFETY: as the caller guarantees.
            return unsafe { self.secure_free(ptr, Some(layout)) };
        }
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
    /// As `Allocator::dealloc`.
    #[inline(always)]
    pub(crate) unsafe fn free_block(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // A pooled block with no padding for alignment: `Route::Pooled`, without computing
        // the class, which the pool knows.
        if layout.align() <= ALIGNMENT && layout.size() <= POOLED_MAX {
            if cfg!(debug_assertions) {
                if let Route::Pooled(class) = Route::of(layout) {
                    check_pooled_block(&self.ctx.shared.map, ptr, class);
                }
            }
            // SAFETY: `ptr` starts a pooled block in use (caller; blocks are aligned to
            // ALIGNMENT, so no padding was skipped).
            unsafe { self.claim.free(ptr, self.ctx) }
        } else {
            // SAFETY: as the caller guarantees.
            unsafe { self.reborrow().free_block_rarely(ptr, layout) }
        }
    }

    /// [`Session::free_block`] for over-aligned and large blocks, out of line so that the
    /// common path keeps no registers to restore.
    ///
    /// # Safety
    /// As `Allocator::dealloc`.
    #[cold]
    #[inline(never)]
    unsafe fn free_block_rarely(mut self, ptr: NonNull<u8>, layout: Layout) {
        match Route::of(layout) {
            Route::Pooled(class) => {
                if cfg!(debug_assertions) {
                    check_pooled_block(&self.ctx.shared.map, ptr, class);
                }
                // SAFETY: `ptr` starts a block of `class` in use (caller; blocks are handed
                // out from their start).
                unsafe { self.claim.free(ptr, self.ctx) }
            }
            // SAFETY: a large block in use of `layout` (caller).
            Route::Large => unsafe {
                let expected = mapping_len(layout.size(), self.ctx.shared.platform.page_size());
                self.ctx.shared.free_large(ptr, expected.map(|e| [e, e]))
            },
        }
    }

    /// The block handed out as `ptr`, found from its address alone; a pointer that is no
    /// block of this allocator aborts with `message`.
    ///
    /// # Safety
    /// `ptr` is a block in use of this allocator, as far as the caller knows.
    pub(crate) unsafe fn find(self, ptr: NonNull<u8>, message: &'static str) -> Found {
        if let Some(pool) = self.pooled_block(ptr) {
            // SAFETY: a live pool (`pooled_block`).
            let class = unsafe { pool.class() };
            return Found::Pooled { pool, class };
        }
        match self.ctx.shared.large().len_of(ptr.as_ptr()) {
            Some(len) => Found::Large { len },
            None => fatal(message),
        }
    }

    /// See `Allocator::usable_size`.
    ///
    /// # Safety
    /// As `Allocator::usable_size`.
    pub(crate) unsafe fn usable_size(&mut self, ptr: NonNull<u8>) -> usize {
        if secure::ENABLED {
            // SAFETY: as the caller guarantees.
            return unsafe { self.secure_usable_size(ptr) };
        }
        const MESSAGE: &str = "malloc_usable_size: pointer is no block of this allocator";
        // SAFETY: as the caller guarantees.
        match unsafe { self.reborrow().find(ptr, MESSAGE) } {
            // A freed pooled block holds its freed mark, which no block in use does (P9):
            // asked about after its free, it is a use after free. (A freed large block is no
            // longer registered, and `find` reports it.)
            // SAFETY: `ptr` starts a carved block (`find`), two words at least.
            Found::Pooled { .. } if unsafe { holds_freed_mark(ptr) } => {
                fatal("malloc_usable_size: the block is free (used after free)")
            }
            Found::Pooled { class, .. } => class.block_size(),
            Found::Large { len } => len,
        }
    }

    /// See `Allocator::dealloc_unsized`.
    ///
    /// # Safety
    /// As `Allocator::dealloc_unsized`.
    #[inline(always)]
    pub(crate) unsafe fn dealloc_unsized(&mut self, ptr: NonNull<u8>) {
        if secure::ENABLED {
            // SAFETY: as the caller guarantees.
            return unsafe { self.secure_free(ptr, None) };
        }
        if let Some(pool) = self.pooled_block(ptr) {
            // SAFETY: `ptr` starts a carved block of `pool`, in use unless this is a double
            // free, which the heap looks for (caller).
            unsafe { self.claim.free_in(ptr, pool, self.ctx) };
        } else {
            // SAFETY: a large block in use, or (checked there) no block at all (caller).
            unsafe { self.ctx.shared.free_large_unsized(ptr) };
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
    /// As `Allocator::dealloc_unsized`.
    #[inline(always)]
    pub(crate) unsafe fn dealloc_checked(&mut self, ptr: NonNull<u8>, size: usize, align: usize) {
        if secure::ENABLED {
            let Ok(layout) = Layout::from_size_align(size, align) else {
                fatal("free_sized: size or alignment does not match the block");
            };
            // SAFETY: as the caller guarantees.
            return unsafe { self.secure_free(ptr, Some(layout)) };
        }
        if cfg!(feature = "debug") {
            // Blocks carry the debug trailer, so their class is not the size's: freed as C's
            // `free` frees them.
            // SAFETY: as the caller guarantees.
            return unsafe { self.dealloc_unsized(ptr) };
        }
        // The common case, a pooled block of malloc's alignment: its class is the size's.
        if align <= ALIGNMENT {
            if let Some(pool) = self.pooled_block(ptr) {
                // SAFETY: a carved block of a live pool (`pooled_block`).
                if SizeClass::for_size(size) == Some(unsafe { pool.class() }) {
                    // SAFETY: `ptr` starts a carved block of `pool`, in use unless this is a
                    // double free, which the heap looks for (caller).
                    return unsafe { self.claim.free_in(ptr, pool, self.ctx) };
                }
            }
        }
        // SAFETY: as the caller guarantees.
        unsafe { self.reborrow().dealloc_checked_rarely(ptr, size, align) }
    }

    /// [`Session::dealloc_checked`] for over-aligned and large blocks, and mismatches.
    ///
    /// # Safety
    /// As `Allocator::dealloc_unsized`.
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_checked_rarely(mut self, ptr: NonNull<u8>, size: usize, align: usize) {
        const MESSAGE: &str = "free_sized: size or alignment does not match the block";
        if !align.is_power_of_two() {
            fatal(MESSAGE);
        }
        let align = align.max(ALIGNMENT);
        if let Some(pool) = self.pooled_block(ptr) {
            // SAFETY: a carved block of a live pool (`pooled_block`).
            let class = unsafe { pool.class() };
            let served_as = |size: usize| SizeClass::for_layout(size, align) == Some(class);
            if !(served_as(size) || size.checked_next_multiple_of(align).is_some_and(served_as)) {
                fatal(MESSAGE);
            }
            // SAFETY: `ptr` starts a carved block of `pool`, in use unless this is a double
            // free, which the heap looks for (caller).
            unsafe { self.claim.free_in(ptr, pool, self.ctx) };
        } else {
            let pooled = Layout::from_size_align(size, align)
                .is_ok_and(|layout| matches!(Route::of(layout), Route::Pooled(_)));
            let page = self.ctx.shared.platform.page_size();
            let rounded = size.checked_next_multiple_of(align);
            let expected = mapping_len(size, page)
                .zip(rounded.and_then(|r| mapping_len(r, page)))
                .filter(|_| !pooled);
            let Some((exact, rounded)) = expected else {
                fatal(MESSAGE);
            };
            // SAFETY: a large block in use, or (checked there) no block at all (caller).
            unsafe { self.ctx.shared.free_large(ptr, Some([exact, rounded])) };
        }
    }

    /// See `Allocator::realloc_unsized`.
    ///
    /// # Safety
    /// As `Allocator::realloc_unsized`.
    pub(crate) unsafe fn realloc_unsized(&mut self, ptr: NonNull<u8>, new_size: usize) -> *mut u8 {
        if secure::ENABLED {
            return match Layout::from_size_align(new_size, ALIGNMENT) {
                // SAFETY: as the caller guarantees.
                Ok(new) => unsafe { self.secure_realloc(ptr, None, new) },
                Err(_) => ptr::null_mut(),
            };
        }
        // The common case, a small or medium block that stays pooled: no layout to build,
        // the class compared as a size's, the new block from `malloc`'s fast path.
        if !cfg!(feature = "debug") {
            if let (Some(pool), Some(to)) = (self.pooled_block(ptr), SizeClass::for_size(new_size))
            {
                // SAFETY: `ptr` starts a carved block of `pool` (`pooled_block`).
                let class = unsafe { pool.class() };
                if class.block_size() <= SHARES_POOL_MAX || to.block_size() <= SHARES_POOL_MAX {
                    // SAFETY: a carved block of `pool`.
                    unsafe { self.claim.ensure_in_use(ptr, pool, self.ctx) };
                    if to == class {
                        return ptr.as_ptr();
                    }
                    // `malloc` of the class found above. Its fast path frees nothing, so the
                    // old block is still in use after it; the rest of `malloc` may take back
                    // blocks other threads freed, which a racing free of this one would be.
                    let (new, read_mark) = match self.claim.alloc_fast(to) {
                        Some((block, _)) => (block, false),
                        None => match self.claim.reborrow().alloc_from_any_pool(to, self.ctx) {
                            Some((block, _)) => (block, true),
                            None => return ptr::null_mut(),
                        },
                    };
                    // SAFETY: both blocks are live and distinct and hold the bytes copied;
                    // the old one is then freed, marked as C's `free` marks it (its mark
                    // read again only after the rest of `malloc`).
                    unsafe {
                        ptr::copy_nonoverlapping(
                            ptr.as_ptr(),
                            new.as_ptr(),
                            class.block_size().min(new_size),
                        );
                        // Two calls with constant flags: each inlined free is then
                        // specialised (a flag tested at run time cost 4 instructions a call).
                        if read_mark {
                            self.claim.free_in(ptr, pool, self.ctx);
                        } else {
                            self.claim.free_in_reading_mark(ptr, pool, self.ctx, false);
                        }
                    }
                    return new.as_ptr();
                }
            }
        }
        // SAFETY: as the caller guarantees.
        unsafe { self.reborrow().realloc_unsized_rarely(ptr, new_size) }
    }

    /// [`Session::realloc_unsized`] for large blocks, blocks that may resize in place (alone
    /// in their pools), and the `debug` feature.
    ///
    /// # Safety
    /// As `Allocator::realloc_unsized`.
    #[inline(never)]
    unsafe fn realloc_unsized_rarely(mut self, ptr: NonNull<u8>, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, ALIGNMENT) else {
            return ptr::null_mut();
        };
        let in_place = !cfg!(feature = "debug");
        // SAFETY: as the caller guarantees.
        let found = unsafe {
            self.reborrow()
                .find(ptr, "realloc: pointer is no block of this allocator")
        };
        let old_size = match found {
            Found::Pooled { pool, class } => {
                // A block freed already must not be handed back as if it were live.
                // SAFETY: `ptr` starts a carved block of `pool` (found above).
                unsafe { self.claim.ensure_in_use(ptr, pool, self.ctx) };
                if in_place {
                    match Route::of(new_layout) {
                        Route::Pooled(to) if to == class => return ptr.as_ptr(),
                        Route::Pooled(to)
                            // SAFETY: a block in use of `class` at its start (found above).
                            if unsafe { self.claim.resize_in_place(ptr, class, to, self.ctx) } =>
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
                    let page = self.ctx.shared.platform.page_size();
                    // SAFETY: a large block in use of `len` bytes (L2), page-aligned (L1).
                    let resized = unsafe { self.ctx.shared.resize_large(ptr, len, page, new_size) };
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
                    Found::Pooled { pool, .. } => self.claim.free_in(ptr, pool, self.ctx),
                    Found::Large { len } => self.ctx.shared.free_large(ptr, Some([len, len])),
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
    unsafe fn ensure_pooled_in_use(mut self, block: NonNull<u8>) {
        // SAFETY: the block lies in a mapped arena (caller); a pool it names is live.
        let pool = unsafe { PoolPtr::of_block(block) };
        match pool {
            // SAFETY: a carved block of `pool`.
            Some(pool) => unsafe { self.claim.ensure_in_use(block, pool, self.ctx) },
            None => fatal("realloc: pointer is no block of this allocator"),
        }
    }

    /// See `Allocator::realloc`.
    ///
    /// # Safety
    /// As `Allocator::realloc`.
    pub(crate) unsafe fn realloc(
        &mut self,
        ptr: *mut u8,
        layout: Layout,
        new_size: usize,
    ) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return ptr::null_mut();
        };
        if secure::ENABLED {
            // SAFETY: a block this allocator handed out (caller), so not null; as the caller
            // guarantees.
            return unsafe {
                self.secure_realloc(NonNull::new_unchecked(ptr), Some(layout), new_layout)
            };
        }
        // Under `debug`, every resize moves, so that both blocks' trailers are checked.
        match (Route::of(layout), Route::of(new_layout), NonNull::new(ptr)) {
            _ if cfg!(feature = "debug") => {}
            (Route::Pooled(a), Route::Pooled(b), Some(block)) if a == b => {
                // SAFETY: a pooled block (caller), so its two words are mapped.
                if unsafe { holds_freed_mark(block) } {
                    // SAFETY: as above.
                    unsafe { self.reborrow().ensure_pooled_in_use(block) };
                }
                return ptr;
            }
            (Route::Pooled(a), Route::Pooled(b), Some(block))
                if layout.align() <= ALIGNMENT
                    // SAFETY: a block in use of class `a` (caller), at its block's start as
                    // its alignment is the blocks' own.
                    && unsafe { self.claim.resize_in_place(block, a, b, self.ctx) } =>
            {
                return ptr;
            }
            (Route::Large, Route::Large, Some(block)) => {
                let old = self.ctx.shared.large().len_of(ptr);
                // SAFETY: a large block in use of this layout (caller), of `old` bytes (L2).
                let resized = old.and_then(|old| unsafe {
                    self.ctx
                        .shared
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

/// A heap of an [`Allocator`](crate::Allocator) held by one user (see `Allocator::local_heap`): the same
/// calls as the allocator's, without its lock for blocks of this heap.
pub struct LocalHeap<'a, P: Platform> {
    /// Taken out only by `drop`.
    session: ManuallyDrop<Session<'a, P>>,
    heaps: &'a Heaps,
}

impl<P: Platform> LocalHeap<'_, P> {
    /// As `Allocator::alloc`, from this heap.
    pub fn alloc(&mut self, layout: Layout) -> *mut u8 {
        self.session.alloc(layout)
    }

    /// As `Allocator::alloc_zeroed`, from this heap.
    pub fn alloc_zeroed(&mut self, layout: Layout) -> *mut u8 {
        self.session.alloc_zeroed(layout)
    }

    /// As `Allocator::dealloc`: a block of this heap goes straight back; one of another heap
    /// goes on that heap's remote list.
    ///
    /// # Safety
    /// As `Allocator::dealloc`.
    pub unsafe fn dealloc(&mut self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as the caller guarantees.
        unsafe { self.session.dealloc(ptr, layout) }
    }

    /// As `Allocator::dealloc_unsized`.
    ///
    /// # Safety
    /// As `Allocator::dealloc_unsized`.
    pub unsafe fn dealloc_unsized(&mut self, ptr: NonNull<u8>) {
        // SAFETY: as the caller guarantees.
        unsafe { self.session.dealloc_unsized(ptr) }
    }

    /// As `Allocator::realloc_unsized`; a block that moves moves into this heap.
    ///
    /// # Safety
    /// As `Allocator::dealloc_unsized`.
    pub unsafe fn realloc_unsized(&mut self, ptr: NonNull<u8>, new_size: usize) -> *mut u8 {
        // SAFETY: as the caller guarantees.
        unsafe { self.session.realloc_unsized(ptr, new_size) }
    }

    /// As `Allocator::realloc`; a block that moves moves into this heap.
    ///
    /// # Safety
    /// As `Allocator::realloc`.
    pub unsafe fn realloc(&mut self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as the caller guarantees.
        unsafe { self.session.realloc(ptr, layout, new_size) }
    }
}

impl<'a, P: Platform> LocalHeap<'a, P> {
    /// A local heap of the claim of a heap of `heaps`, which `ctx` is the context of.
    pub(crate) fn new(ctx: &'a Context<P>, claim: Claim<'a>, heaps: &'a Heaps) -> Self {
        LocalHeap {
            session: ManuallyDrop::new(Session::new(ctx, claim)),
            heaps,
        }
    }
}

impl<P: Platform> Drop for LocalHeap<'_, P> {
    fn drop(&mut self) {
        // SAFETY: taken once, here, and not used again.
        let session = unsafe { ManuallyDrop::take(&mut self.session) };
        let shared = &session.ctx.shared;
        self.heaps.release(shared, session.into_claim());
    }
}
