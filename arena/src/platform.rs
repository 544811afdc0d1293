//! The platform layer: the only place pymalloc asks the operating system for memory.
//!
//! [`Platform`] is a small trait so that tests can run the allocator on memory they own and
//! make any call fail on demand (`TestPlatform`, feature `test-platform`). [`OsPlatform`] is
//! the real one: anonymous `mmap`, `madvise` and, on Linux, `mremap`.
//!
//! Vocabulary: *reserve* maps address space that reads and writes (Linux commits each page on
//! first touch); *decommit* hands a range's physical pages back while keeping the addresses;
//! *commit* makes a decommitted range usable again; *release* unmaps.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Where pymalloc's memory comes from.
///
/// Sizes passed to every method are multiples of [`Platform::page_size`]; alignments are
/// powers of two.
///
/// # Safety
/// Implementations must keep each method's contract: memory returned by `reserve` or `remap`
/// is readable and writable, exclusively the caller's, of the asked size and alignment, and
/// stays so until released; if `ZERO_FILLED`, it reads zero when fresh and after `decommit`
/// succeeds. pymalloc relies on this for memory safety.
pub unsafe trait Platform: Sync {
    /// Fresh memory, and memory after a successful `decommit`, reads as zero.
    const ZERO_FILLED: bool;
    /// `remap` may resize a reservation; if false it always returns `None`.
    const CAN_REMAP: bool;

    /// The granularity of every call.
    fn page_size(&self) -> usize;

    /// Maps `size` bytes aligned to `max(align, page_size)`, or `None`.
    fn reserve(&self, size: usize, align: usize) -> Option<NonNull<u8>>;

    /// Unmaps whole pages of reservations, as `munmap` does: a whole reservation, or part of
    /// one, or neighbouring parts of several.
    ///
    /// # Safety
    /// Every page of the `size` bytes from `ptr` lies in a live reservation (after any remap)
    /// and is no longer used.
    unsafe fn release(&self, ptr: NonNull<u8>, size: usize);

    /// Makes a decommitted range usable again; `false` if the system refuses.
    ///
    /// # Safety
    /// The range lies inside a live reservation.
    unsafe fn commit(&self, ptr: NonNull<u8>, size: usize) -> bool;

    /// Returns a range's physical memory while keeping its addresses; `false` if refused, in
    /// which case the contents are unchanged.
    ///
    /// # Safety
    /// The range lies inside a live reservation and holds nothing the caller still needs.
    unsafe fn decommit(&self, ptr: NonNull<u8>, size: usize) -> bool;

    /// Resizes a range of mapped pages (a reservation, or what [`Platform::release`] left of
    /// one), keeping its contents up to the smaller size; may refuse (`None`) a range that is
    /// not one whole reservation. In place unless `may_move`; on success the old range must
    /// no longer be used (unless returned again).
    ///
    /// # Safety
    /// Every page of the `old_size` bytes from `ptr` lies in a live reservation, ours alone.
    unsafe fn remap(
        &self,
        ptr: NonNull<u8>,
        old_size: usize,
        new_size: usize,
        may_move: bool,
    ) -> Option<NonNull<u8>>;
}

/// The operating system's memory: `mmap`, `munmap`, `madvise(MADV_DONTNEED)`, `mremap`.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsPlatform;

static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: anonymous private mappings are zero-filled, readable and writable, and ours alone;
// MADV_DONTNEED on them makes the next touch read zero; mremap keeps contents.
unsafe impl Platform for OsPlatform {
    const ZERO_FILLED: bool = true;
    const CAN_REMAP: bool = cfg!(target_os = "linux");

    #[inline]
    fn page_size(&self) -> usize {
        let cached = PAGE_SIZE.load(Ordering::Relaxed);
        if cached != 0 {
            return cached;
        }
        // SAFETY: sysconf has no preconditions.
        let queried = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = if queried > 0 && (queried as usize).is_power_of_two() {
            queried as usize
        } else {
            4096
        };
        PAGE_SIZE.store(page, Ordering::Relaxed);
        page
    }

    fn reserve(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let page = self.page_size();
        if size == 0 || size % page != 0 || !align.is_power_of_two() {
            return None;
        }
        let align = align.max(page);
        // Over-reserve by the alignment, then trim both ends.
        let span = size.checked_add(align - page)?;
        // SAFETY: a fresh anonymous mapping; the kernel picks the address.
        let base = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                span,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let base = base.cast::<u8>();
        let head = base.addr().next_multiple_of(align) - base.addr();
        let tail = span - head - size;
        // SAFETY: head and tail are the page-aligned ends of the mapping just made, unused.
        unsafe {
            if head > 0 {
                libc::munmap(base.cast(), head);
            }
            if tail > 0 {
                libc::munmap(base.add(head + size).cast(), tail);
            }
            NonNull::new(base.add(head))
        }
    }

    unsafe fn release(&self, ptr: NonNull<u8>, size: usize) {
        // SAFETY: pages of live reservations of ours (caller). munmap of our own range cannot fail in
        // a way we could act on; its memory is no longer used either way.
        unsafe { libc::munmap(ptr.as_ptr().cast(), size) };
    }

    unsafe fn commit(&self, _ptr: NonNull<u8>, _size: usize) -> bool {
        true // Linux maps a page back in on its first touch.
    }

    unsafe fn decommit(&self, ptr: NonNull<u8>, size: usize) -> bool {
        // SAFETY: a range inside a live reservation whose contents the caller gave up.
        unsafe { libc::madvise(ptr.as_ptr().cast(), size, libc::MADV_DONTNEED) == 0 }
    }

    #[cfg(target_os = "linux")]
    unsafe fn remap(
        &self,
        ptr: NonNull<u8>,
        old_size: usize,
        new_size: usize,
        may_move: bool,
    ) -> Option<NonNull<u8>> {
        let flags = if may_move { libc::MREMAP_MAYMOVE } else { 0 };
        // SAFETY: mapped pages of ours (caller); mremap refuses a range it cannot resize.
        let p = unsafe { libc::mremap(ptr.as_ptr().cast(), old_size, new_size, flags) };
        if p == libc::MAP_FAILED {
            None
        } else {
            NonNull::new(p.cast())
        }
    }

    #[cfg(not(target_os = "linux"))]
    unsafe fn remap(&self, _: NonNull<u8>, _: usize, _: usize, _: bool) -> Option<NonNull<u8>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "Miri supports mmap but not madvise or mremap")]
    fn os_platform_reserves_aligned_zeroed_memory_and_resizes_it() {
        let os = OsPlatform;
        let page = os.page_size();
        for align in [1, page, 1 << 20, 1 << 22] {
            let p = os.reserve(3 * page, align).unwrap();
            assert_eq!(p.addr().get() % align.max(page), 0);
            // SAFETY: the three pages are ours until released.
            unsafe {
                let bytes = core::slice::from_raw_parts_mut(p.as_ptr(), 3 * page);
                assert!(bytes.iter().all(|&b| b == 0));
                bytes.fill(7);
                assert!(os.decommit(p, page));
                assert_eq!(bytes[0], 0, "decommitted page reads zero");
                assert_eq!(bytes[page], 7, "the rest is untouched");
                assert!(os.commit(p, page));
                os.release(p, 3 * page);
            }
        }
        assert!(os.reserve(page + 1, 1).is_none(), "sizes are whole pages");
        assert!(
            os.reserve(1 << 62, 1).is_none(),
            "the system refuses absurd sizes"
        );
        assert!(
            os.reserve(page, usize::MAX / 2 + 1).is_none(),
            "alignment overflow"
        );
        if OsPlatform::CAN_REMAP {
            let p = os.reserve(page, 1).unwrap();
            // SAFETY: a live reservation, resized and released through the returned pointer.
            unsafe {
                p.as_ptr().write(42);
                let q = os.remap(p, page, 64 * page, true).unwrap();
                assert_eq!(q.as_ptr().read(), 42);
                let q2 = os.remap(q, 64 * page, page, false).unwrap();
                assert_eq!(q2, q, "shrinking stays in place");
                os.release(q2, page);
            }
        }
    }
}
