//! The `secure` feature's zero-size blocks ([`ZeroBlocks`]): addresses in a range reserved
//! inaccessible, so that any read or write of a zero-size block faults (`docs/security.md`).

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicUsize, Ordering};

use pymalloc_arena::Platform;

/// Bytes of address space reserved, inaccessible, for zero-size blocks.
const ZERO_BYTES: usize = 256 << 20;
/// Most alignment a zero-size block gets from [`ZeroBlocks`]; a larger one gets a block of
/// its own (with a canary where its bytes would be).
pub(crate) const ZERO_MAX_ALIGN: usize = 4096;

/// The zero-size blocks: addresses in a reserved range that faults on any read or write,
/// handed out in turn (distinct until the range wraps, after 16 M requests).
pub(crate) struct ZeroBlocks {
    /// Start of the range, 0 until reserved.
    base: AtomicUsize,
    /// Bytes handed out so far (wrapping around the range).
    next: AtomicUsize,
}

impl ZeroBlocks {
    pub(crate) const fn new() -> ZeroBlocks {
        ZeroBlocks {
            base: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
        }
    }

    /// Whether `ptr` is a zero-size block.
    pub(crate) fn holds(&self, ptr: NonNull<u8>) -> bool {
        let base = self.base.load(Ordering::Acquire);
        base != 0 && ptr.addr().get().wrapping_sub(base) < ZERO_BYTES
    }

    /// A zero-size block aligned to `align` (at most [`ZERO_MAX_ALIGN`]), or null if the
    /// range cannot be reserved.
    pub(crate) fn take<P: Platform>(&self, platform: &P, align: usize) -> *mut u8 {
        let mut base = self.base.load(Ordering::Acquire);
        if base == 0 {
            base = self.reserve(platform);
            if base == 0 {
                return ptr::null_mut();
            }
        }
        let step = align.max(pymalloc_pool::ALIGNMENT);
        let at = self.next.fetch_add(step, Ordering::Relaxed) % (ZERO_BYTES - ZERO_MAX_ALIGN);
        ptr::with_exposed_provenance_mut(base + at.next_multiple_of(step))
    }

    /// Reserves the range, guarded whole; the start, or 0 if the system refuses. A thread
    /// that loses a race gives its range back.
    #[cold]
    fn reserve<P: Platform>(&self, platform: &P) -> usize {
        let Some(range) = platform.reserve(ZERO_BYTES, ZERO_MAX_ALIGN) else {
            return 0;
        };
        // SAFETY: the reservation just made, used by nothing.
        if !unsafe { platform.set_guard(range, ZERO_BYTES, true) } {
            // SAFETY: as above.
            unsafe { platform.release(range, ZERO_BYTES) };
            return 0;
        }
        let start = range.as_ptr().expose_provenance();
        match self
            .base
            .compare_exchange(0, start, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => start,
            Err(theirs) => {
                // SAFETY: ours, never published.
                unsafe { platform.release(range, ZERO_BYTES) };
                theirs
            }
        }
    }

    /// Gives the range back.
    ///
    /// # Safety
    /// No zero-size block is used any more.
    pub(crate) unsafe fn release<P: Platform>(&mut self, platform: &P) {
        let base = core::mem::take(self.base.get_mut());
        if let Some(range) = NonNull::new(ptr::with_exposed_provenance_mut::<u8>(base)) {
            // SAFETY: the whole reservation, unused (caller).
            unsafe { platform.release(range, ZERO_BYTES) };
        }
    }
}
