//! The *freed mark*: the value a free block holds in its second word (pool invariant P9), so
//! that a free can tell a block freed already from one in use without a search.
//!
//! The mark is the block's address XOR a key drawn once per process from the system's random
//! source ([`draw_key`], before the first pool is formatted, so before any mark exists), with
//! its top bit set: a mark is never an address a program holds (user addresses have the top
//! bit clear on the targets pymalloc serves), nor zero (the cleared word), and a program
//! cannot store one by chance, nor knowingly without reading the key out of the allocator.
//! So a block that holds its mark when freed is free already — on its pool's freelist, on
//! a remote list on its way back, or in another thread's cache — and the free is a double
//! free, whichever thread makes it.
//!
//! Invariant:
//! - M1 the key is drawn at most once, before any pool exists, and never changes after: every
//!   mark ever written and every mark ever tested use the same key.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::class::ALIGNMENT;
use crate::frozen::read_frozen_word;

/// The key of every mark: 0 until drawn (M1).
static KEY: AtomicUsize = AtomicUsize::new(0);

/// The top bit, set in every key.
const TOP_BIT: usize = 1 << (usize::BITS - 1);

/// Draws the key if it is not drawn yet: call before formatting a pool (M1). Concurrent
/// callers agree on one key (the first to publish it wins).
#[inline]
pub fn draw_key() {
    if KEY.load(Ordering::Relaxed) == 0 {
        draw_key_now();
    }
}

#[cold]
#[inline(never)]
fn draw_key_now() {
    if crate::secure::ENABLED {
        // With the key, before any pool (S1); a thread reaches a block only through
        // whatever handed it over after its pool was formatted, so it sees them too.
        crate::secure::draw_secrets(random_word);
    }
    let key = random_word() | TOP_BIT;
    // Whoever publishes first wins; a loser's key is dropped, so all agree (M1).
    let _ = KEY.compare_exchange(0, key, Ordering::Relaxed, Ordering::Relaxed);
}

/// A random word from `getrandom(2)`, without blocking; if the system has none to give, a mix
/// of what differs between processes (the address space's layout and the time), which still
/// no program stores by chance.
fn random_word() -> usize {
    let mut word = 0usize;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: `word` is valid for writing its size in bytes; the call writes at most that.
        let got = unsafe {
            libc::getrandom(
                (&raw mut word).cast(),
                size_of::<usize>(),
                libc::GRND_NONBLOCK,
            )
        };
        if got == size_of::<usize>() as isize {
            return word;
        }
    }
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is valid for writing a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let layout = (&raw const KEY).addr() ^ (&raw const word).addr().rotate_left(17);
    (layout ^ (now.tv_nsec as usize).rotate_left(31) ^ now.tv_sec as usize)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15_u64 as usize)
}

/// The key, as drawn (M1).
#[inline(always)]
fn key() -> usize {
    KEY.load(Ordering::Relaxed)
}

/// The value a free block holds in its second word (P9): its address XOR the key.
#[inline(always)]
pub fn freed_mark(block: NonNull<u8>) -> usize {
    block.addr().get() ^ key()
}

const _: () = assert!(
    ALIGNMENT >= 2 * size_of::<usize>(),
    "a block holds the freelist link and the freed mark"
);

/// Writes the freed mark (P9) of a block being freed.
///
/// # Safety
/// `block` starts a block (at least [`ALIGNMENT`] bytes) that the caller may overwrite.
#[inline(always)]
pub unsafe fn write_freed_mark(block: NonNull<u8>) {
    // SAFETY: as the caller guarantees.
    unsafe { FreedMark::of(block).write() }
}

/// Clears the freed mark (P9) of a block being handed out, so that its next free is not taken
/// for a double free: a block of 16 bytes holding 8 would otherwise keep the mark.
///
/// # Safety
/// `block` starts a block (at least [`ALIGNMENT`] bytes) that the caller has just been
/// handed and has not yet given to the program.
#[inline(always)]
pub unsafe fn clear_freed_mark(block: NonNull<u8>) {
    // SAFETY: the caller's block, at least two words long.
    unsafe { block.cast::<usize>().add(1).write(0) };
}

/// Whether the block at `block` holds its freed mark (P9): it is free already (see the
/// module documentation). The word is read as the machine holds it, whatever the program
/// left there.
///
/// # Safety
/// `block` starts a block of a live pool (at least [`ALIGNMENT`] bytes, mapped).
#[inline(always)]
pub unsafe fn holds_freed_mark(block: NonNull<u8>) -> bool {
    // SAFETY: as the caller guarantees.
    unsafe { FreedMark::of(block).is_held() }
}

/// A block with its freed mark computed: one load of the key for a free that first tests the
/// mark and then writes it.
#[derive(Clone, Copy, Debug)]
pub struct FreedMark {
    block: NonNull<u8>,
    mark: usize,
}

impl FreedMark {
    /// `block`'s mark.
    #[inline(always)]
    pub fn of(block: NonNull<u8>) -> FreedMark {
        FreedMark {
            block,
            mark: freed_mark(block),
        }
    }

    /// The block.
    #[inline(always)]
    pub fn block(self) -> NonNull<u8> {
        self.block
    }

    /// Whether the block holds its mark ([`holds_freed_mark`]).
    ///
    /// # Safety
    /// As [`holds_freed_mark`].
    #[inline(always)]
    pub unsafe fn is_held(self) -> bool {
        // SAFETY: the block's second word is mapped and aligned (caller).
        unsafe { read_frozen_word::<1>(self.block.cast::<usize>().as_ptr()) == self.mark }
    }

    /// Writes the mark into the block ([`write_freed_mark`]).
    ///
    /// # Safety
    /// As [`write_freed_mark`].
    #[inline(always)]
    pub unsafe fn write(self) {
        // SAFETY: the caller's block, at least two words long.
        unsafe { self.block.cast::<usize>().add(1).write(self.mark) };
    }
}

/// Whether the key is drawn (M1), for `check`: once a pool exists, it must be.
pub fn key_is_drawn() -> bool {
    key() & TOP_BIT != 0
}
