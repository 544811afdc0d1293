//! The platform layer: the only place pymalloc asks the operating system for memory.
//!
//! [`Platform`] is a small trait so that tests can run the allocator on memory they own and
//! make any call fail on demand (`TestPlatform`, feature `test-platform`). [`OsPlatform`] is
//! the real one: anonymous `mmap`, `madvise` and, on Linux, `mremap`.
//!
//! Vocabulary: *reserve* maps address space that reads and writes, charged to the kernel's
//! overcommit accounting (Linux backs each page on first touch); *decommit* hands a range's
//! physical pages back while keeping the addresses; *commit* makes a decommitted range usable
//! again; *release* unmaps.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

bitflags::bitflags! {
    /// What a [`Platform`]'s memory does beyond the basics, which the allocator can rely on.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Capabilities: u8 {
        /// Fresh memory, and memory after a successful `decommit`, reads as zero (so
        /// zeroed requests skip the `memset`).
        const ZERO_FILLED = 1;
        /// `remap` may resize a reservation; without this it always returns `None`.
        const REMAP = 1 << 1;
    }
}

/// Where pymalloc's memory comes from.
///
/// Sizes passed to every method are multiples of [`Platform::page_size`]; alignments are
/// powers of two.
///
/// # Safety
/// Implementations must keep each method's contract: memory returned by `reserve` or `remap`
/// is readable and writable, exclusively the caller's, of the asked size and alignment, and
/// stays so until released; with [`Capabilities::ZERO_FILLED`], it reads zero when fresh and
/// after `decommit` succeeds. pymalloc relies on this for memory safety.
pub unsafe trait Platform: Sync {
    /// What this platform's memory does beyond the basics.
    const CAPABILITIES: Capabilities;

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

    /// Asks for a range to be backed by huge pages where the system has them; `false` if it
    /// does not take the advice (the default: no huge pages). Changes nothing but how the
    /// range is backed: contents, zero-filling and the other calls' contracts stay.
    ///
    /// # Safety
    /// The range lies inside a live reservation.
    unsafe fn advise_huge_pages(&self, ptr: NonNull<u8>, size: usize) -> bool {
        let _ = (ptr, size);
        false
    }

    /// Makes a range a guard (`guard`), which faults on any read or write, or readable and
    /// writable again (`!guard`); `false` if the system refuses (the default: no guards).
    /// Changes nothing else: the range stays reserved, and its contents are kept.
    ///
    /// # Safety
    /// The range lies inside a live reservation; nothing reads or writes it while it is a
    /// guard, and no other call is made on it then but [`Platform::release`].
    unsafe fn set_guard(&self, ptr: NonNull<u8>, size: usize, guard: bool) -> bool {
        let _ = (ptr, size, guard);
        false
    }
}

/// The operating system's memory: `mmap`, `munmap`, `madvise(MADV_DONTNEED)`, `mremap`.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsPlatform;

static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: anonymous private mappings are zero-filled, readable and writable, and ours alone;
// on Linux, MADV_DONTNEED on them makes the next touch read zero (elsewhere it may leave the
// contents, so ZERO_FILLED is Linux's alone); mremap keeps contents.
unsafe impl Platform for OsPlatform {
    const CAPABILITIES: Capabilities = if cfg!(any(target_os = "linux", target_os = "android")) {
        Capabilities::ZERO_FILLED.union(Capabilities::REMAP)
    } else {
        Capabilities::empty()
    };

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

    /// Commits what it maps under the kernel's overcommit accounting (no `MAP_NORESERVE`), so
    /// that a request no machine can back fails here, as glibc's does, rather than at first
    /// touch. An aligned request takes no more address space than it needs unless it must:
    /// the exact size first (the kernel often places it aligned already), then grown in place
    /// down or up to an aligned start, and only then over-reserved by the alignment and trimmed.
    fn reserve(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let page = self.page_size();
        if size == 0 || size % page != 0 || !align.is_power_of_two() {
            return None;
        }
        let align = align.max(page);
        let span = size.checked_add(align - page)?; // what the fallback maps
        let base = map(None, size)?;
        let misalignment = base.addr().get() % align;
        if misalignment == 0 {
            return Some(base);
        }
        // Grow down to the aligned start below, then give back the tail above it...
        let below = misalignment;
        if let Some(start) = base.addr().get().checked_sub(below)
            && map(Some(start), below).is_some()
        {
            // SAFETY: [start, start + size + below) is ours (the two mappings just made);
            // the top `below` bytes are unused.
            unsafe { libc::munmap((start + size) as *mut libc::c_void, below) };
            return NonNull::new(start as *mut u8);
        }
        // ...or up to the aligned start above, giving back the head below it.
        let above = align - misalignment;
        if let Some(end) = base.addr().get().checked_add(size)
            && map(Some(end), above).is_some()
        {
            // SAFETY: [base, end + above) is ours (the two mappings just made); the first
            // `above` bytes are unused.
            unsafe { libc::munmap(base.as_ptr().cast(), above) };
            return NonNull::new(base.as_ptr().wrapping_add(above));
        }
        // SAFETY: the mapping just made, unused.
        unsafe { libc::munmap(base.as_ptr().cast(), size) };
        let base = map(None, span)?;
        let head = base.addr().get().next_multiple_of(align) - base.addr().get();
        let tail = span - head - size;
        // SAFETY: head and tail are the page-aligned ends of the mapping just made, unused.
        unsafe {
            if head > 0 {
                libc::munmap(base.as_ptr().cast(), head);
            }
            if tail > 0 {
                libc::munmap(base.as_ptr().add(head + size).cast(), tail);
            }
            NonNull::new(base.as_ptr().add(head))
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

    /// `mprotect(PROT_NONE)`, or back to `PROT_READ | PROT_WRITE`.
    unsafe fn set_guard(&self, ptr: NonNull<u8>, size: usize, guard: bool) -> bool {
        protect(ptr, size, guard)
    }

    /// `madvise(MADV_HUGEPAGE)`: transparent huge pages for the range, also where the
    /// system's setting is `madvise` (Linux; elsewhere, no).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    unsafe fn advise_huge_pages(&self, ptr: NonNull<u8>, size: usize) -> bool {
        // SAFETY: a range inside a live reservation (caller); the advice changes no contents.
        unsafe { libc::madvise(ptr.as_ptr().cast(), size, libc::MADV_HUGEPAGE) == 0 }
    }
}

/// `mprotect` of a range to no access (`guard`) or to reading and writing; whether it took.
pub(crate) fn protect(ptr: NonNull<u8>, size: usize, guard: bool) -> bool {
    let prot = if guard {
        libc::PROT_NONE
    } else {
        libc::PROT_READ | libc::PROT_WRITE
    };
    // SAFETY: changes the protection of pages the caller has reserved (both callers are
    // `Platform::set_guard`, whose caller guarantees it), nothing else.
    unsafe { libc::mprotect(ptr.as_ptr().cast(), size, prot) == 0 }
}

/// A fresh private anonymous read-write mapping of `len` bytes, under overcommit accounting:
/// anywhere, or exactly at `at` (never replacing a mapping there), or `None`.
fn map(at: Option<usize>, len: usize) -> Option<NonNull<u8>> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    let (hint, flags) = match at {
        None => (core::ptr::null_mut(), flags),
        #[cfg(any(target_os = "linux", target_os = "android"))]
        Some(at) => (at as *mut libc::c_void, flags | libc::MAP_FIXED_NOREPLACE),
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        Some(at) => (at as *mut libc::c_void, flags),
    };
    // SAFETY: a new anonymous mapping replaces nothing: without MAP_FIXED the kernel only
    // takes `hint` as a hint, and MAP_FIXED_NOREPLACE fails rather than replace a mapping.
    let p = unsafe { libc::mmap(hint, len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
    if p == libc::MAP_FAILED {
        return None;
    }
    match at {
        // A kernel older than 4.17 ignores MAP_FIXED_NOREPLACE and may place it elsewhere.
        Some(at) if p.addr() != at => {
            // SAFETY: the mapping just made, unused.
            unsafe { libc::munmap(p, len) };
            None
        }
        _ => NonNull::new(p.cast()),
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
        if OsPlatform::CAPABILITIES.contains(Capabilities::REMAP) {
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

    /// What the kernel would refuse to back — more than RAM and swap together, under the
    /// heuristic (0) or strict (2) overcommit policy — is refused at `reserve`, not handed out
    /// to fault on first touch. Policy 1 backs everything, so there is nothing to check.
    #[test]
    #[cfg_attr(miri, ignore = "Miri has no /proc")]
    fn os_platform_refuses_what_the_machine_cannot_back() {
        let Some(unbackable) = crate::unbackable_bytes() else {
            eprintln!("overcommit_memory is 1 (or no /proc): every mapping is backed; skipped");
            return;
        };
        let os = OsPlatform;
        let too_much = unbackable.next_multiple_of(1 << 21);
        for align in [1, 1 << 21, 1 << 30] {
            assert!(
                os.reserve(too_much, align).is_none(),
                "{too_much} bytes aligned to {align}, twice what the machine can back"
            );
        }
        if OsPlatform::CAPABILITIES.contains(Capabilities::REMAP) {
            let page = os.page_size();
            let p = os.reserve(page, 1).unwrap();
            // SAFETY: a live reservation of ours, released through whichever pointer is live.
            unsafe {
                assert!(
                    os.remap(p, page, too_much, true).is_none(),
                    "growing is charged too"
                );
                os.release(p, page);
            }
        }
    }
}
