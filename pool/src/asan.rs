//! Teaching AddressSanitizer about pool blocks (cargo feature `asan`, for builds with
//! `-Zsanitizer=address` only): blocks on a freelist and blocks never carved are *poisoned*,
//! so that any read or write of them — by pymalloc's own code or by a program through a
//! dangling pointer — is reported. Pools are unpoisoned whole when they go back to the arenas.
//! Without the feature these are empty functions.

// SAFETY: AddressSanitizer's public interface (`sanitizer/asan_interface.h`), with these
// signatures; the feature is only for builds linked with it.
#[cfg(feature = "asan")]
unsafe extern "C" {
    fn __asan_poison_memory_region(addr: *const u8, size: usize);
    fn __asan_unpoison_memory_region(addr: *const u8, size: usize);
}

/// Marks `len` bytes at `p` as not to be touched.
#[inline(always)]
pub(crate) fn poison(p: *const u8, len: usize) {
    #[cfg(feature = "asan")]
    // SAFETY: ASan's interface only records the range in its shadow memory.
    unsafe {
        __asan_poison_memory_region(p, len)
    };
    let _ = (p, len);
}

/// Marks `len` bytes at `p` as usable again.
#[inline(always)]
pub(crate) fn unpoison(p: *const u8, len: usize) {
    #[cfg(feature = "asan")]
    // SAFETY: as above.
    unsafe {
        __asan_unpoison_memory_region(p, len)
    };
    let _ = (p, len);
}
