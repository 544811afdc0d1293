//! The `secure` cargo feature's calls (`docs/security.md`): every allocation, free, resize
//! and size query of a [`Session`] goes through here instead of the fast paths when the
//! feature is on. Without it, `pymalloc_pool::secure::ENABLED` is false and none of this runs.
//!
//! - Every block is asked of the heap for the caller's `n` bytes (at least 16) plus the tag
//!   ([`TAG_BYTES`]), so the class leaves room for the trailer; handed out, it gets its canary
//!   and live tag (`pymalloc_pool::secure`), after the check that the free block it was holds
//!   its fill and free tag (no write after free).
//! - A free finds the block from its address, as C's `free` does, whatever the call carried,
//!   reads its trailer (a double free, an overflow, a tag overwritten), checks the tag of the
//!   block before it in its pool (an underflow), and a size the caller gave against the one
//!   recorded, to the byte; then fills the block and writes its free tag.
//! - A large block's mapping ends in a guard page; its trailer is before it.
//! - A zero-size request gets an address in a reserved range that no access may touch
//!   ([`ZeroBlocks`]); freeing it does nothing.
//! - Every resize moves, so that both blocks are checked.

use core::alloc::Layout;
use core::ptr::{self, NonNull};

use pymalloc_arena::Platform;
use pymalloc_pool::secure::{self as pool_secure, TAG_BYTES, Trailer};
use pymalloc_pool::{ALIGNMENT, POOLED_MAX, PoolPtr, SizeClass, fatal};

use crate::heap;
use crate::session::{Found, Route, Session};
use crate::zero::ZERO_MAX_ALIGN;

/// Whether the `secure` feature is on.
const ENABLED: bool = pool_secure::ENABLED;

const _: () = assert!(
    !(ENABLED && cfg!(feature = "debug")),
    "the `secure` and `debug` features each add a trailer: pick one"
);

const DOUBLE_FREE: &str = "secure: free of a block that is already free (double free)";
const OVERFLOW: &str = "secure: heap overflow: bytes just past the end of a block were written";
const TAG_OVERWRITTEN: &str =
    "secure: heap overflow: a block's trailer was overwritten (or the pointer is no block's start)";
const UNDERFLOW: &str =
    "secure: heap underflow: the end of the block before this one was overwritten";
const WRITTEN_AFTER_FREE: &str =
    "secure: a freed block was written after it was freed (use after free)";
const SIZE_MISMATCH: &str = "secure: the size given to free does not match the block's";
const INVALID: &str = "secure: pointer is no block of this allocator (invalid free)";

/// The layout asked of the heap for `layout` (see the module documentation); `None` if it
/// overflows.
fn inner<P: Platform>(layout: Layout, platform: &P) -> Option<Layout> {
    let size = layout.size().max(16).checked_add(TAG_BYTES)?;
    let inner = Layout::from_size_align(size, layout.align()).ok()?;
    if let Route::Pooled(_) = Route::of(inner) {
        return Some(inner);
    }
    // A large block: whole pages, and one more for the guard.
    let page = platform.page_size();
    let size = size.checked_next_multiple_of(page)?.checked_add(page)?;
    Layout::from_size_align(size, layout.align()).ok()
}

/// Aborts unless `size`, the bytes a block was asked with, is what the caller says it was
/// asked with (`expected`), or that rounded up to its alignment (as C++'s aligned `new` asks).
fn check_size(size: usize, expected: Option<Layout>) {
    if let Some(layout) = expected {
        let rounded = layout.size().checked_next_multiple_of(layout.align());
        if size != layout.size() && rounded != Some(size) {
            fatal(SIZE_MISMATCH);
        }
    }
}

/// A block found from its address.
#[derive(Clone, Copy)]
enum Block {
    /// A pooled block, in `pool`, of `class`.
    Pooled { pool: PoolPtr, class: SizeClass },
    /// A large block with a mapping of `len` bytes, its guard page included.
    Large { len: usize },
    /// A zero-size block.
    Zero,
}

/// A block found from its address and checked, with the bytes its trailer ends (its
/// capacity).
#[derive(Clone, Copy)]
struct Checked {
    block: Block,
    capacity: usize,
    /// The bytes asked for when it was handed out (0 for a zero-size block).
    size: usize,
}

/// The fewest bytes a block is asked of the heap for, before the tag: a free block holds a
/// link, a freed mark and a tag (S2), so the smallest class used is 32 bytes.
const MIN_ASK: usize = 16;

/// Hands out the free pooled block `block` of `capacity` bytes for `n` bytes: checks that no
/// write after free reached it (its fill and free tag, S2), zeroes the caller's bytes if
/// asked, and dresses it (canary and live tag).
///
/// # Safety
/// `block` is a free block of a pooled class of `capacity` bytes just handed to the caller,
/// and `n.max(MIN_ASK) + TAG_BYTES <= capacity`.
#[inline(always)]
unsafe fn hand_out(block: NonNull<u8>, n: usize, capacity: usize, zeroed: bool) -> *mut u8 {
    // SAFETY: every pooled block comes off a freelist or a heap's kept blocks, retired (S2),
    // and holds `capacity` bytes, `n` and the trailer among them (caller).
    unsafe {
        if !pool_secure::dress_if_intact(block, capacity, n) {
            fatal(WRITTEN_AFTER_FREE);
        }
        if zeroed {
            block.as_ptr().write_bytes(0, n);
        }
    }
    block.as_ptr()
}

impl<P: Platform> Session<'_, P> {
    /// Allocates a block for `layout` (zero-filled if `zeroed`) under the `secure` feature:
    /// inline for a pooled block of malloc's alignment, out of line otherwise.
    #[inline(always)]
    pub(crate) fn secure_alloc(&mut self, layout: Layout, zeroed: bool) -> *mut u8 {
        let n = layout.size();
        if layout.align() <= ALIGNMENT && n != 0 && n <= POOLED_MAX - TAG_BYTES {
            if let Some(class) = SizeClass::for_size(n.max(MIN_ASK) + TAG_BYTES) {
                return match self.claim.alloc(class, self.ctx) {
                    // SAFETY: a free block of `class`, which holds `n` and the trailer.
                    Some((block, _)) => unsafe { hand_out(block, n, class.block_size(), zeroed) },
                    None => ptr::null_mut(),
                };
            }
        }
        self.reborrow().secure_alloc_rarely(layout, zeroed)
    }

    /// [`Session::secure_alloc`] for zero sizes, over-aligned and large blocks.
    #[cold]
    #[inline(never)]
    fn secure_alloc_rarely(mut self, layout: Layout, zeroed: bool) -> *mut u8 {
        let shared = &self.ctx.shared;
        if layout.size() == 0 && layout.align() <= ZERO_MAX_ALIGN {
            return shared.zero.take(&shared.platform, layout.align());
        }
        let Some(inner) = inner(layout, &shared.platform) else {
            return ptr::null_mut();
        };
        let Some((block, reads_zero)) = self.block(inner) else {
            return ptr::null_mut();
        };
        let capacity = match Route::of(inner) {
            Route::Pooled(class) => {
                // SAFETY: a free block of the class just handed to us, with room for the
                // trailer (`inner`).
                return unsafe { hand_out(block, layout.size(), class.block_size(), zeroed) };
            }
            Route::Large => {
                let page = shared.platform.page_size();
                let Some(len) = shared.large().len_of(block.as_ptr()) else {
                    fatal("secure: a large block just mapped is not registered");
                };
                // SAFETY: the last page of the block's mapping, which the block leaves unused
                // (`inner` added it).
                unsafe { shared.platform.set_guard(block.add(len - page), page, true) };
                len - page
            }
        };
        // SAFETY: a block of `capacity` bytes just handed to us, `layout.size() + TAG_BYTES`
        // of them at least (`inner`).
        unsafe {
            if zeroed && !reads_zero {
                block.as_ptr().write_bytes(0, layout.size());
            }
            pool_secure::dress(block, layout.size(), capacity);
        }
        block.as_ptr()
    }

    /// Finds the block at `ptr` and checks its trailer, and the block before it in its pool:
    /// any damage is reported and aborts.
    ///
    /// # Safety
    /// `ptr` is, as far as the caller knows, a block in use of this allocator.
    unsafe fn secure_check(&mut self, ptr: NonNull<u8>) -> Checked {
        let shared = &self.ctx.shared;
        if shared.zero.holds(ptr) {
            return Checked {
                block: Block::Zero,
                capacity: 0,
                size: 0,
            };
        }
        // SAFETY: as the caller guarantees.
        let (block, capacity) = match unsafe { self.reborrow().find(ptr, INVALID) } {
            Found::Pooled { pool, class } => (Block::Pooled { pool, class }, class.block_size()),
            Found::Large { len } => (Block::Large { len }, len - shared.platform.page_size()),
        };
        // SAFETY: the block found holds `capacity` mapped bytes before its guard.
        let size = match unsafe { pool_secure::trailer(ptr, capacity) } {
            Trailer::Live(size) => size,
            Trailer::Free => fatal(DOUBLE_FREE),
            Trailer::TagOverwritten => fatal(TAG_OVERWRITTEN),
            Trailer::CanaryOverwritten => fatal(OVERFLOW),
        };
        if let Block::Pooled { pool, class } = block {
            // SAFETY: `find` found `ptr` a carved block of `pool`, so the pool is live.
            if ptr != unsafe { pool.first_block() } {
                // SAFETY: a carved block starts one block before a carved block that is not
                // its pool's first (P2, P3).
                let before = unsafe { ptr.sub(class.block_size()) };
                // SAFETY: as above; a carved block of the live pool.
                if !unsafe { pool_secure::has_valid_tag(before, capacity) } {
                    fatal(UNDERFLOW);
                }
            }
        }
        Checked {
            block,
            capacity,
            size,
        }
    }

    /// Frees `ptr` under the `secure` feature; with `expected`, the size and alignment the
    /// caller says it was allocated with, which must match.
    ///
    /// # Safety
    /// `ptr` is, as far as the caller knows, a block in use of this allocator, not used
    /// after this call.
    #[inline(always)]
    pub(crate) unsafe fn secure_free(&mut self, ptr: NonNull<u8>, expected: Option<Layout>) {
        // The common case, inline: a pooled block whose trailer and neighbour's tag are
        // intact and whose size is the one given, if any. Anything else is looked at again,
        // and reported, out of line.
        if let Some(pool) = heap::pool_of_block(&self.ctx.shared.map, ptr) {
            // SAFETY: a carved block of a live pool (`pool_of_block`), of `capacity` bytes.
            unsafe {
                let capacity = pool.class().block_size();
                let n = expected.map(|layout| layout.size());
                // The block before, unless this is its pool's first: a carved block (P2, P3).
                let before = (ptr != pool.first_block()).then(|| ptr.sub(capacity));
                if n.is_none_or(|n| n <= capacity - TAG_BYTES)
                    && pool_secure::retire_if_intact(ptr, capacity, n, before)
                {
                    return self.claim.free_in(ptr, pool, self.ctx);
                }
            }
        }
        // SAFETY: as the caller guarantees.
        unsafe { self.reborrow().secure_free_rarely(ptr, expected) }
    }

    /// [`Session::secure_free`] for large and zero-size blocks, and for any block whose
    /// checks failed inline (which then aborts, saying which).
    ///
    /// # Safety
    /// As [`Session::secure_free`].
    #[cold]
    #[inline(never)]
    unsafe fn secure_free_rarely(mut self, ptr: NonNull<u8>, expected: Option<Layout>) {
        // SAFETY: as the caller guarantees.
        let checked = unsafe { self.secure_check(ptr) };
        check_size(checked.size, expected);
        let shared = &self.ctx.shared;
        match checked.block {
            Block::Zero => {}
            Block::Pooled { pool, .. } => {
                // SAFETY: a pooled block in use, checked, given up (caller); then freed as C's
                // `free` frees it.
                unsafe {
                    pool_secure::retire(ptr, checked.capacity);
                    self.claim.free_in(ptr, pool, self.ctx);
                }
            }
            Block::Large { len } => {
                let page = shared.platform.page_size();
                // SAFETY: the block's guard page (made at allocation), back to plain memory
                // before the mapping goes back; the block is in use and ours (caller).
                unsafe {
                    shared.platform.set_guard(ptr.add(len - page), page, false);
                    shared.free_large(ptr, Some([len, len]));
                }
            }
        }
    }

    /// Resizes `ptr` under the `secure` feature: always moves (both blocks checked);
    /// `expected` as for [`Session::secure_free`]. Null if the new block cannot be had (the
    /// old one is then untouched).
    ///
    /// # Safety
    /// As [`Session::secure_free`].
    pub(crate) unsafe fn secure_realloc(
        &mut self,
        ptr: NonNull<u8>,
        expected: Option<Layout>,
        new_layout: Layout,
    ) -> *mut u8 {
        // SAFETY: as the caller guarantees.
        let checked = unsafe { self.secure_check(ptr) };
        let old = checked.size;
        if let Block::Pooled { class, .. } = checked.block {
            // Within its class, or alone in its pool where the slots after it allow (as the
            // default build resizes), the block stays: its trailer, checked, is written anew.
            let new = new_layout.size();
            let to = (new_layout.align() <= ALIGNMENT && new != 0 && new <= POOLED_MAX - TAG_BYTES)
                .then(|| SizeClass::for_size(new.max(MIN_ASK) + TAG_BYTES))
                .flatten();
            if let Some(to) = to {
                check_size(old, expected);
                // SAFETY: a pooled block in use of `class` at its start (checked); once it is
                // of `to`, it holds `new` and the trailer.
                let stays =
                    to == class || unsafe { self.claim.resize_in_place(ptr, class, to, self.ctx) };
                if stays {
                    // SAFETY: as above.
                    unsafe { pool_secure::dress(ptr, new, to.block_size()) };
                    return ptr.as_ptr();
                }
            }
        }
        if let Block::Large { len } = checked.block {
            check_size(old, expected);
            // SAFETY: a large block in use of `len` bytes, checked (caller).
            if let Some(resized) = unsafe { self.resize_large_guarded(ptr, len, new_layout) } {
                return resized.as_ptr();
            }
        }
        let new = self.secure_alloc(new_layout, false);
        if !new.is_null() {
            // SAFETY: both blocks live and distinct, each holding the bytes copied; the old
            // one is then freed (caller).
            unsafe {
                ptr::copy_nonoverlapping(ptr.as_ptr(), new, old.min(new_layout.size()));
                self.secure_free(ptr, expected);
            }
        }
        new
    }

    /// Resizes the large block at `ptr`, of a mapping of `len` bytes, to `new_layout` without
    /// copying where the large blocks can (`Shared::resize_large`): its guard page moves to
    /// the new end and its trailer is written anew. `None` if the block must move (then it
    /// is as it was).
    ///
    /// # Safety
    /// `ptr` is a large block in use of a `len`-byte mapping, checked.
    unsafe fn resize_large_guarded(
        &mut self,
        ptr: NonNull<u8>,
        len: usize,
        new_layout: Layout,
    ) -> Option<NonNull<u8>> {
        let shared = &self.ctx.shared;
        let inner = inner(new_layout, &shared.platform)?;
        if Route::of(inner) != Route::Large {
            return None;
        }
        let page = shared.platform.page_size();
        if crate::large::fits(len, inner.size()) {
            // The mapping still fits, as the default build would keep it: only the trailer
            // moves (`inner` left room for it and the guard page, which stays).
            // SAFETY: a large block in use of `len - page` bytes before its guard (caller).
            unsafe { pool_secure::dress(ptr, new_layout.size(), len - page) };
            return Some(ptr);
        }
        // SAFETY: the block's guard page, made plain memory while the mapping changes and
        // guarded again at its end after; the block is ours (caller).
        unsafe {
            let guard = |block: NonNull<u8>, len: usize, on: bool| {
                shared.platform.set_guard(block.add(len - page), page, on)
            };
            guard(ptr, len, false);
            let Some(resized) = shared.resize_large(ptr, len, new_layout.align(), inner.size())
            else {
                guard(ptr, len, true);
                return None;
            };
            let Some(new_len) = shared.large().len_of(resized.as_ptr()) else {
                fatal("secure: a large block just resized is not registered");
            };
            guard(resized, new_len, true);
            pool_secure::dress(resized, new_layout.size(), new_len - page);
            Some(resized)
        }
    }

    /// The bytes asked for when the block at `ptr` was handed out, its trailer checked.
    ///
    /// # Safety
    /// `ptr` is, as far as the caller knows, a block in use of this allocator.
    pub(crate) unsafe fn secure_usable_size(&mut self, ptr: NonNull<u8>) -> usize {
        // SAFETY: as the caller guarantees.
        unsafe { self.secure_check(ptr) }.size
    }
}
