//! The C allocation functions — `malloc`, `free`, `calloc`, `realloc`, `reallocarray`,
//! `posix_memalign`, `aligned_alloc`, `memalign`, `valloc`, `pvalloc`, `malloc_usable_size`,
//! and C23's `free_sized` and `free_aligned_sized` —
//! over the global allocator, with C's (and glibc's) semantics. The `pymalloc-override` crate
//! exports them under their C names, as a library for `LD_PRELOAD`; a Rust program may export
//! them itself.
//!
//! Semantics, as glibc's:
//! - every block is aligned to [`ALIGNMENT`] (16), at least; `malloc(0)` returns a unique
//!   pointer, `free(NULL)` does nothing, `realloc(NULL, n)` is `malloc(n)` and
//!   `realloc(p, 0)` frees `p` and returns NULL;
//! - a request that cannot be served, or whose size overflows (`calloc`, `reallocarray`,
//!   `pvalloc`), returns NULL with `errno = ENOMEM`; `realloc` leaves the old block untouched;
//! - a bad alignment gives `EINVAL`: returned by `posix_memalign` (which leaves `errno` alone),
//!   in `errno` for `aligned_alloc` and `memalign` (`memalign` rounds an alignment that is
//!   not a power of two up to one, as glibc does);
//! - `free`, `realloc` and `malloc_usable_size` find the block from its address (the arena map
//!   or the table of large blocks); a pointer pymalloc did not hand out is reported on stderr
//!   and aborts, as glibc's "free(): invalid pointer" (and so does `malloc_usable_size` of a
//!   block already freed, which glibc answers);
//! - `free_sized` and `free_aligned_sized` (which C++'s sized `operator delete` forms use too)
//!   free as `free` does, and abort with a message if the size or alignment is not one the
//!   block could have been allocated with.
//!
//! Nothing here allocates or unwinds, so the functions can serve the dynamic loader and libc
//! from the first call, and the thread-binding code's own reentrant calls.

use core::alloc::Layout;
use core::ffi::{c_int, c_void};
use core::fmt;
use core::ptr::{self, NonNull};

use pymalloc_arena::{OsPlatform, Platform};
use pymalloc_pool::{ALIGNMENT, POOL_SIZE};

use crate::session::Session;
use crate::stats::Stats;
use crate::{report, thread};

/// Evaluates `$body` with `$s` the calling thread's heap's session (binding one if needed).
/// A macro rather than a function taking a closure: the bound case's code is then written
/// out in place, where its `inline(always)` callees are inlined, while a closure called from
/// both cases may be left out of line.
macro_rules! with_session {
    (|$s:ident| $body:expr) => {
        match thread::session() {
            Some(mut $s) => {
                let $s = &mut $s;
                $body
            }
            None => thread::with_new_session(move |$s: &mut Session<'_, OsPlatform>| $body),
        }
    };
}

fn set_errno(code: c_int) {
    // SAFETY: `__errno_location` returns the calling thread's `errno`, always valid.
    unsafe { *libc::__errno_location() = code };
}

/// A block of `size` bytes aligned to `align` (a power of two), or null; no `errno`.
#[inline]
fn alloc_aligned(size: usize, align: usize) -> *mut c_void {
    let Ok(layout) = Layout::from_size_align(size, align.max(ALIGNMENT)) else {
        return ptr::null_mut();
    };
    with_session!(|s| s.alloc(layout)).cast()
}

/// `p`, with `errno = ENOMEM` if it is null (a request that could not be served).
#[inline]
fn enomem_if_null(p: *mut c_void) -> *mut c_void {
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p
}

/// [`alloc_aligned`], with `errno = ENOMEM` on failure.
#[inline]
fn allocate_or_enomem(size: usize, align: usize) -> *mut c_void {
    enomem_if_null(alloc_aligned(size, align))
}

/// C's `malloc`. The fast path, a block from the first pool of the size's class in the
/// thread's heap, makes no call; everything else is served out of line, reached by a tail
/// call, so that `malloc` needs no stack frame.
#[inline]
pub fn malloc(size: usize) -> *mut c_void {
    if let Some(mut s) = thread::session() {
        if let Some(block) = s.malloc_fast(size) {
            return block.as_ptr().cast();
        }
    }
    malloc_rarely(size)
}

/// C's `malloc` past its fast path ([`Session::malloc_past_fast`], which also serves a
/// thread that has no heap yet), and `errno`.
#[inline(never)]
fn malloc_rarely(size: usize) -> *mut c_void {
    enomem_if_null(with_session!(|s| s.malloc_past_fast(size)).cast())
}

/// C's `calloc`: zero-filled; NULL with `ENOMEM` if `count * size` overflows.
pub fn calloc(count: usize, size: usize) -> *mut c_void {
    let layout = count
        .checked_mul(size)
        .and_then(|bytes| Layout::from_size_align(bytes, ALIGNMENT).ok());
    let p = match layout {
        Some(layout) => with_session!(|s| s.alloc_zeroed(layout)).cast(),
        None => ptr::null_mut(),
    };
    enomem_if_null(p)
}

/// C's `free`.
///
/// # Safety
/// `ptr` is null, or a block from these functions (or the global allocator) in use, not
/// used after this call.
#[inline(always)]
pub unsafe fn free(ptr: *mut c_void) {
    if let Some(ptr) = NonNull::new(ptr.cast::<u8>()) {
        // SAFETY: as the caller guarantees.
        with_session!(|s| unsafe { s.dealloc_unsized(ptr) });
    }
}

/// C23's `free_sized`: `free` of a block allocated with `size` bytes by `malloc`, `calloc`
/// or `realloc`. A size that does not match the block is reported and aborts.
///
/// # Safety
/// As [`free`].
#[inline(always)]
pub unsafe fn free_sized(ptr: *mut c_void, size: usize) {
    // SAFETY: as the caller guarantees.
    unsafe { free_aligned_sized(ptr, ALIGNMENT, size) }
}

/// C23's `free_aligned_sized`: `free` of a block allocated with `size` bytes aligned to
/// `align` (`aligned_alloc`, `posix_memalign`, `memalign`); C++'s sized and aligned `operator
/// delete` take this path too. A size or alignment that does not match the block is reported
/// and aborts.
///
/// # Safety
/// As [`free`].
#[inline(always)]
pub unsafe fn free_aligned_sized(ptr: *mut c_void, align: usize, size: usize) {
    if let Some(ptr) = NonNull::new(ptr.cast::<u8>()) {
        // SAFETY: as the caller guarantees.
        with_session!(|s| unsafe { s.dealloc_checked(ptr, size, align) });
    }
}

/// C's `realloc`, as glibc's: `realloc(NULL, n)` allocates, `realloc(p, 0)` frees and
/// returns NULL.
///
/// # Safety
/// As [`free`].
pub unsafe fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    let Some(block) = NonNull::new(ptr.cast::<u8>()) else {
        return malloc(size);
    };
    if size == 0 {
        // SAFETY: as the caller guarantees.
        unsafe { free(ptr) };
        return ptr::null_mut();
    }
    // SAFETY: as the caller guarantees.
    let p = with_session!(|s| unsafe { s.realloc_unsized(block, size) });
    enomem_if_null(p.cast())
}

/// C's `reallocarray`: `realloc` of `count * size` bytes; NULL with `ENOMEM` (the block
/// untouched) if that overflows.
///
/// # Safety
/// As [`free`].
pub unsafe fn reallocarray(ptr: *mut c_void, count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size) {
        // SAFETY: as the caller guarantees.
        Some(bytes) => unsafe { realloc(ptr, bytes) },
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// C's `posix_memalign`: 0 and the block in `*out`; `EINVAL` if `align` is not a power of two
/// multiple of the pointer size, `ENOMEM` if it cannot be served (`*out` untouched either way).
///
/// # Safety
/// `out` is valid for writing a pointer.
pub unsafe fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || align % size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
    let p = alloc_aligned(size, align);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: writable (caller).
    unsafe { out.write(p) };
    0
}

/// C's `aligned_alloc`: NULL with `EINVAL` if `align` is not a power of two.
pub fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    allocate_or_enomem(size, align)
}

/// C's `memalign`, as glibc's: an alignment that is not a power of two is rounded up to one;
/// NULL with `EINVAL` if that overflows.
pub fn memalign(align: usize, size: usize) -> *mut c_void {
    match align.checked_next_power_of_two() {
        Some(align) => allocate_or_enomem(size, align),
        None => {
            set_errno(libc::EINVAL);
            ptr::null_mut()
        }
    }
}

/// C's `valloc`: page-aligned.
pub fn valloc(size: usize) -> *mut c_void {
    allocate_or_enomem(size, OsPlatform.page_size())
}

/// C's `pvalloc`: page-aligned, the size rounded up to whole pages (one page for 0); NULL with
/// `ENOMEM` if that overflows.
pub fn pvalloc(size: usize) -> *mut c_void {
    let page = OsPlatform.page_size();
    match size.max(1).checked_next_multiple_of(page) {
        Some(size) => allocate_or_enomem(size, page),
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// C's `malloc_usable_size`: the bytes usable at `ptr` (at least those asked for); 0 for NULL.
///
/// # Safety
/// `ptr` is null, or a block from these functions (or the global allocator) in use.
pub unsafe fn malloc_usable_size(ptr: *mut c_void) -> usize {
    match NonNull::new(ptr.cast::<u8>()) {
        // SAFETY: as the caller guarantees.
        Some(ptr) => with_session!(|s| unsafe { s.usable_size(ptr) }),
        None => 0,
    }
}

/// C's `malloc_trim`: gives back to the system all memory not in use ([`crate::trim`]: free
/// pools decommitted, empty arenas and cached large ranges unmapped); 1 if that released
/// any, else 0. `pad` is ignored: pymalloc keeps no reserve at the top of a heap, as glibc
/// does.
pub fn malloc_trim(_pad: usize) -> c_int {
    let before = crate::stats();
    crate::trim();
    let after = crate::stats();
    c_int::from(
        after.bytes_mapped < before.bytes_mapped
            || after.pools_free_dirty < before.pools_free_dirty,
    )
}

/// Writes the global allocator's statistics table ([`crate::stats`]) to the file descriptor
/// `fd`, without allocating: for `PYMALLOC_STATS=1` at exit and `malloc_stats`.
pub fn write_stats(fd: c_int) {
    report::to_fd(fd, format_args!("{}\n", crate::stats()));
}

/// glibc's `malloc_stats`: pymalloc's statistics table ([`crate::Stats`]), to stderr.
pub fn malloc_stats() {
    write_stats(libc::STDERR_FILENO);
}

/// glibc's `struct mallinfo2`, filled by [`mallinfo2`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MallInfo2 {
    /// Bytes mapped for everything but large blocks in use: arenas, the arena map, the
    /// heaps, cached large ranges.
    pub arena: usize,
    /// Free blocks in pools in use.
    pub ordblks: usize,
    /// Always 0 (glibc's fastbin chunks).
    pub smblks: usize,
    /// Large blocks in use (each its own mapping, as glibc's mmapped chunks).
    pub hblks: usize,
    /// Bytes mapped for large blocks in use.
    pub hblkhd: usize,
    /// Always 0 (as in glibc).
    pub usmblks: usize,
    /// Always 0 (glibc's bytes in fastbin chunks).
    pub fsmblks: usize,
    /// Bytes of pooled blocks in use (block sizes).
    pub uordblks: usize,
    /// `arena - uordblks`: mapped, not in use.
    pub fordblks: usize,
    /// Bytes `malloc_trim` would give back: committed free pool slots and cached large
    /// ranges.
    pub keepcost: usize,
}

impl From<&Stats> for MallInfo2 {
    fn from(s: &Stats) -> MallInfo2 {
        let arena = s.bytes_mapped.saturating_sub(s.large_bytes);
        MallInfo2 {
            arena,
            ordblks: s.classes.iter().map(|c| c.blocks_free).sum(),
            smblks: 0,
            hblks: s.large_blocks,
            hblkhd: s.large_bytes,
            usmblks: 0,
            fsmblks: 0,
            uordblks: s.pooled_bytes,
            fordblks: arena.saturating_sub(s.pooled_bytes),
            keepcost: s.pools_free_dirty * POOL_SIZE + s.large_cached_bytes,
        }
    }
}

/// glibc's `struct mallinfo` (the same fields as [`MallInfo2`] in `int`s, which wrap above
/// 2 GiB as glibc's do).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are MallInfo2's
pub struct MallInfo {
    pub arena: c_int,
    pub ordblks: c_int,
    pub smblks: c_int,
    pub hblks: c_int,
    pub hblkhd: c_int,
    pub usmblks: c_int,
    pub fsmblks: c_int,
    pub uordblks: c_int,
    pub fordblks: c_int,
    pub keepcost: c_int,
}

/// glibc's `mallinfo2`: the global allocator's figures ([`crate::stats`]) in glibc's fields
/// (see [`MallInfo2`] for what each holds).
pub fn mallinfo2() -> MallInfo2 {
    MallInfo2::from(&crate::stats())
}

/// glibc's `mallinfo`: [`mallinfo2`] in `int`s.
pub fn mallinfo() -> MallInfo {
    let m = mallinfo2();
    let int = |v: usize| v as c_int; // wraps, as glibc's does
    MallInfo {
        arena: int(m.arena),
        ordblks: int(m.ordblks),
        smblks: int(m.smblks),
        hblks: int(m.hblks),
        hblkhd: int(m.hblkhd),
        usmblks: int(m.usmblks),
        fsmblks: int(m.fsmblks),
        uordblks: int(m.uordblks),
        fordblks: int(m.fordblks),
        keepcost: int(m.keepcost),
    }
}

/// glibc's `malloc_info`: the global allocator's figures as XML of glibc's shape, to `file`;
/// 0, or -1 with `EINVAL` if `options` is not 0. One `<heap>` (pymalloc's heaps share their
/// arenas); `<sizes>` lists, per size class, the free blocks of its pools; `mmap` counts the
/// large blocks; the `max` figures are the current ones (no peak is kept).
///
/// # Safety
/// `file` is an open `FILE`.
pub unsafe fn malloc_info(options: c_int, file: *mut libc::FILE) -> c_int {
    if options != 0 {
        set_errno(libc::EINVAL);
        return -1;
    }
    let stats = crate::stats();
    // SAFETY: `file` is open (caller).
    unsafe { report::to_file(file, format_args!("{}", MallocInfo(&stats))) };
    0
}

/// [`Stats`] as `malloc_info`'s XML.
struct MallocInfo<'a>(&'a Stats);

impl fmt::Display for MallocInfo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let m = MallInfo2::from(s);
        let free_bytes: usize = s.classes.iter().map(|c| c.blocks_free * c.block_size).sum();
        let system = |f: &mut fmt::Formatter<'_>, bytes: usize| {
            writeln!(f, "<system type=\"current\" size=\"{bytes}\"/>")?;
            writeln!(f, "<system type=\"max\" size=\"{bytes}\"/>")?;
            writeln!(f, "<aspace type=\"total\" size=\"{bytes}\"/>")?;
            writeln!(f, "<aspace type=\"mprotect\" size=\"{bytes}\"/>")
        };
        writeln!(f, "<malloc version=\"1\">")?;
        writeln!(f, "<heap nr=\"0\">")?;
        writeln!(f, "<sizes>")?;
        let mut from = 1;
        for c in &s.classes {
            if c.blocks_free > 0 {
                writeln!(
                    f,
                    "<size from=\"{from}\" to=\"{}\" total=\"{}\" count=\"{}\"/>",
                    c.block_size,
                    c.blocks_free * c.block_size,
                    c.blocks_free
                )?;
            }
            from = c.block_size + 1;
        }
        writeln!(f, "</sizes>")?;
        writeln!(f, "<total type=\"fast\" count=\"0\" size=\"0\"/>")?;
        let rest = format_args!("count=\"{}\" size=\"{free_bytes}\"", m.ordblks);
        writeln!(f, "<total type=\"rest\" {rest}/>")?;
        system(f, m.arena)?;
        writeln!(f, "</heap>")?;
        writeln!(f, "<total type=\"fast\" count=\"0\" size=\"0\"/>")?;
        writeln!(f, "<total type=\"rest\" {rest}/>")?;
        writeln!(
            f,
            "<total type=\"mmap\" count=\"{}\" size=\"{}\"/>",
            m.hblks, m.hblkhd
        )?;
        system(f, s.bytes_mapped)?;
        writeln!(f, "</malloc>")
    }
}
