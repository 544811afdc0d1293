//! One word of memory read as the machine holds it ([`read_frozen_word`]): for words the
//! program may have left uninitialized, or another thread may store meanwhile — a block's
//! freed mark (`mark.rs`) and, under `secure`, a neighbour's tag (`secure.rs`).

#[cfg(any(miri, not(any(target_arch = "x86_64", target_arch = "aarch64"))))]
use core::sync::atomic::{AtomicUsize, Ordering};

/// The word `WORD` words from `base` as the machine holds it, by one aligned load: the
/// program may have left uninitialized bytes there (a struct's padding, even in safe code),
/// which a plain read may not look at, and another thread may store the word meanwhile
/// (under `secure`, the tag of the block before the one being freed). An inline `asm` load
/// (with the offset in the instruction) yields an initialized value whatever the bytes, and
/// AddressSanitizer does not see it (so a block freed twice gets our message, not its
/// report, and a free neighbour's poison is no error). Where the target has none here, or
/// under Miri, an atomic load (the tests under Miri read only initialized words).
///
/// # Safety
/// `base` is valid for reading `WORD + 1` `usize`s, and aligned.
#[inline(always)]
pub(crate) unsafe fn read_frozen_word<const WORD: usize>(base: *const usize) -> usize {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        let value: usize;
        // SAFETY: one aligned load from a valid address (caller), no other effect.
        unsafe {
            core::arch::asm!(
                "mov {value}, qword ptr [{base} + {offset}]",
                base = in(reg) base,
                offset = const WORD * size_of::<usize>(),
                value = lateout(reg) value,
                options(nostack, readonly, preserves_flags),
            )
        };
        value
    }
    #[cfg(all(target_arch = "aarch64", not(miri)))]
    {
        let value: usize;
        // SAFETY: as above.
        unsafe {
            core::arch::asm!(
                "ldr {value}, [{base}, #{offset}]",
                base = in(reg) base,
                offset = const WORD * size_of::<usize>(),
                value = lateout(reg) value,
                options(nostack, readonly, preserves_flags),
            )
        };
        value
    }
    #[cfg(any(miri, not(any(target_arch = "x86_64", target_arch = "aarch64"))))]
    // SAFETY: valid and aligned (caller).
    unsafe {
        AtomicUsize::from_ptr(base.add(WORD).cast_mut()).load(Ordering::Relaxed)
    }
}
