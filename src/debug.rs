//! The `debug` cargo feature, in the spirit of CPython's `PYTHONMALLOC=debug`: every block
//! gets a trailer after the caller's bytes,
//!
//! ```text
//! | caller's bytes (0xCD when fresh) | 0xFD pad to 8 | 8 × 0xFD guard | tag | size |
//! ```
//!
//! and every free checks it before the block goes back:
//! - the tag says *live*: a *dead* tag with the same size is a double free;
//! - the recorded size equals the layout's (a wrong-layout dealloc, or a trampled trailer);
//! - the guard bytes are intact (a write past the end of the block).
//!
//! Each failure writes a clear message and aborts. A freed block is filled with 0xDD and its
//! tag set to *dead*. Under the feature every `realloc` moves, so both ends are checked. Without
//! the feature none of this runs: the calls are behind `cfg!(feature = "debug")` and compile
//! away.

use core::alloc::Layout;
use core::ptr::NonNull;

use pymalloc_pool::fatal;

/// Fill of a fresh block not asked to be zeroed.
pub const NEW_FILL: u8 = 0xCD;
/// Fill of a freed block.
pub const FREED_FILL: u8 = 0xDD;
/// Fill of the padding and guard bytes after a block.
pub const GUARD_FILL: u8 = 0xFD;
const GUARD_BYTES: usize = 8;
/// Tag of a block in use ("PYMALLOC"); a freed block's is its complement.
const LIVE: u64 = u64::from_be_bytes(*b"PYMALLOC");
const DEAD: u64 = !LIVE;
/// Guard, tag and size.
const TRAILER: usize = GUARD_BYTES + 16;

/// Offset of the guard bytes: the caller's size rounded up to 8, so the tag and size words
/// are aligned.
fn guard_at(size: usize) -> usize {
    size.next_multiple_of(8)
}

/// The layout allocated for `layout`: the caller's bytes, then the trailer.
pub(crate) fn inner(layout: Layout) -> Option<Layout> {
    let size = guard_at(layout.size()).checked_add(TRAILER)?;
    Layout::from_size_align(size, layout.align()).ok()
}

/// Writes the trailer of a block allocated for `layout` and fills the caller's bytes with
/// [`NEW_FILL`], or zeroes them (unless the block reads zero already: `reads_zero`); returns the
/// block.
///
/// # Safety
/// `block` is a block of at least `inner(layout)` bytes, just handed out, aligned as
/// `layout` asks.
pub(crate) unsafe fn dress(
    block: NonNull<u8>,
    layout: Layout,
    zeroed: bool,
    reads_zero: bool,
) -> *mut u8 {
    let p = block.as_ptr();
    let (size, guard) = (layout.size(), guard_at(layout.size()));
    // SAFETY: the block holds `guard + TRAILER` bytes, 8-aligned at `guard` (blocks are at
    // least 16-aligned and `guard` is a multiple of 8).
    unsafe {
        match (zeroed, reads_zero) {
            (true, true) => {}
            (true, false) => p.write_bytes(0, size),
            (false, _) => p.write_bytes(NEW_FILL, size),
        }
        p.add(size)
            .write_bytes(GUARD_FILL, guard - size + GUARD_BYTES);
        p.add(guard + GUARD_BYTES).cast::<u64>().write(LIVE);
        p.add(guard + GUARD_BYTES + 8)
            .cast::<u64>()
            .write(size as u64);
    }
    p
}

/// Checks the trailer of a block being freed (aborting with a message if it is wrong), fills
/// the block with [`FREED_FILL`], marks it dead, and returns the layout it was allocated with.
///
/// # Safety
/// `ptr` was dressed by [`dress`] (on an allocator with the `debug` feature) (a wrong layout is
/// detected as long as the trailer position it implies is mapped).
pub(crate) unsafe fn check_and_poison(ptr: NonNull<u8>, layout: Layout) -> Layout {
    let p = ptr.as_ptr();
    let (size, guard) = (layout.size(), guard_at(layout.size()));
    // SAFETY: the trailer of a block of `layout` lies at `guard` (caller).
    let (tag, recorded) = unsafe {
        (
            p.add(guard + GUARD_BYTES).cast::<u64>().read(),
            p.add(guard + GUARD_BYTES + 8).cast::<u64>().read(),
        )
    };
    if tag == DEAD && recorded == size as u64 {
        fatal("debug: double free of a block");
    }
    if tag != LIVE || recorded != size as u64 {
        fatal(
            "debug: dealloc with a layout other than the block's, or its trailer was overwritten",
        );
    }
    // SAFETY: the guard bytes lie between `size` and `guard + GUARD_BYTES`, inside the block.
    let guard_intact =
        (size..guard + GUARD_BYTES).all(|i| unsafe { p.add(i).read() } == GUARD_FILL);
    if !guard_intact {
        fatal("debug: heap overrun: bytes just past the end of a block were written");
    }
    // SAFETY: the caller's bytes and the tag word belong to the block being freed.
    unsafe {
        p.write_bytes(FREED_FILL, size);
        p.add(guard + GUARD_BYTES).cast::<u64>().write(DEAD);
    }
    match inner(layout) {
        Some(inner) => inner,
        None => fatal("debug: dealloc of a size that was never allocated"),
    }
}
