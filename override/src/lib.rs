//! `libpymalloc_override.so`: pymalloc as the C allocator of any program, through `LD_PRELOAD`:
//!
//! ```sh
//! cargo build --release -p pymalloc-override
//! LD_PRELOAD=$PWD/target/release/libpymalloc_override.so some-program
//! ```
//!
//! It exports the C allocation functions and `malloc_trim` (their semantics are in
//! `pymalloc::c_abi`), and `pymalloc_write_stats(fd)`. With `PYMALLOC_STATS=1` in the environment, the statistics
//! table goes to stderr when the program exits. Rust code inside the library allocates
//! through pymalloc directly.
#![deny(unsafe_op_in_unsafe_fn)]
#![cfg(target_os = "linux")]

use core::ffi::{c_char, c_int, c_void};
use core::sync::atomic::{AtomicI32, Ordering};

use pymalloc::{PyMalloc, c_abi};

#[global_allocator]
static GLOBAL: PyMalloc = PyMalloc;

/// `malloc(3)`.
#[unsafe(no_mangle)]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    c_abi::malloc(size)
}

/// `calloc(3)`.
#[unsafe(no_mangle)]
pub extern "C" fn calloc(count: usize, size: usize) -> *mut c_void {
    c_abi::calloc(count, size)
}

/// `free(3)`.
///
/// # Safety
/// As C's: `ptr` is null or a block in use from these functions, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    // SAFETY: as the caller guarantees.
    unsafe { c_abi::free(ptr) }
}

/// `realloc(3)`.
///
/// # Safety
/// As [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: as the caller guarantees.
    unsafe { c_abi::realloc(ptr, size) }
}

/// `reallocarray(3)`.
///
/// # Safety
/// As [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reallocarray(ptr: *mut c_void, count: usize, size: usize) -> *mut c_void {
    // SAFETY: as the caller guarantees.
    unsafe { c_abi::reallocarray(ptr, count, size) }
}

/// `posix_memalign(3)`.
///
/// # Safety
/// `out` is valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    // SAFETY: as the caller guarantees.
    unsafe { c_abi::posix_memalign(out, align, size) }
}

/// `aligned_alloc(3)`.
#[unsafe(no_mangle)]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    c_abi::aligned_alloc(align, size)
}

/// `memalign(3)`.
#[unsafe(no_mangle)]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    c_abi::memalign(align, size)
}

/// `valloc(3)`.
#[unsafe(no_mangle)]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    c_abi::valloc(size)
}

/// `pvalloc(3)`.
#[unsafe(no_mangle)]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    c_abi::pvalloc(size)
}

/// `malloc_usable_size(3)`.
///
/// # Safety
/// `ptr` is null or a block in use from these functions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_usable_size(ptr: *mut c_void) -> usize {
    // SAFETY: as the caller guarantees.
    unsafe { c_abi::malloc_usable_size(ptr) }
}

/// `malloc_trim(3)`: 1 if memory went back to the system, else 0.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_trim(pad: usize) -> c_int {
    c_abi::malloc_trim(pad)
}

/// Writes pymalloc's statistics table to the file descriptor `fd`.
#[unsafe(no_mangle)]
pub extern "C" fn pymalloc_write_stats(fd: c_int) {
    c_abi::write_stats(fd);
}

/// Where the statistics go at exit, if `PYMALLOC_STATS=1`: a copy of stderr made at load
/// time, since programs may close stderr before exit (GNU coreutils do); -1 for none.
static STATS_FD: AtomicI32 = AtomicI32::new(-1);

/// Runs when the library is loaded, before the program's own constructors: registers
/// pymalloc's `fork` handlers before the program can register any (which a program that
/// allocates in its own handlers needs; see `pymalloc::register_fork_handlers`), and opens
/// the statistics' descriptor if asked.
extern "C" fn at_load() {
    pymalloc::register_fork_handlers();
    const NAME: &core::ffi::CStr = c"PYMALLOC_STATS";
    // SAFETY: a NUL-terminated name; the value, if any, is a NUL-terminated string that is
    // only read here, byte by byte up to its terminator.
    let on = unsafe {
        let value: *const c_char = libc::getenv(NAME.as_ptr());
        !value.is_null() && *value == b'1' as c_char && *value.add(1) == 0
    };
    if on {
        // SAFETY: duplicating a descriptor has no memory-safety conditions; a failure is -1.
        let fd = unsafe { libc::fcntl(libc::STDERR_FILENO, libc::F_DUPFD_CLOEXEC, 3) };
        STATS_FD.store(fd, Ordering::Relaxed);
    }
}

/// Runs when the library is unloaded (at exit): the statistics, if asked for.
extern "C" fn at_exit() {
    let fd = STATS_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        c_abi::write_stats(fd);
    }
}

/// `.init_array` and `.fini_array` entries run when the library is loaded and unloaded; for a
/// preloaded library, before the program starts and at exit, after its `atexit` handlers.
#[used]
#[unsafe(link_section = ".init_array")]
static AT_LOAD: extern "C" fn() = at_load;

#[used]
#[unsafe(link_section = ".fini_array")]
static AT_EXIT: extern "C" fn() = at_exit;

/// C23's `free_sized(3)`: a size that does not match the block is reported and aborts.
///
/// # Safety
/// As [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free_sized(ptr: *mut c_void, size: usize) {
    // SAFETY: as the caller guarantees.
    unsafe { c_abi::free_sized(ptr, size) }
}

/// C23's `free_aligned_sized(3)`.
///
/// # Safety
/// As [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free_aligned_sized(ptr: *mut c_void, align: usize, size: usize) {
    // SAFETY: as the caller guarantees.
    unsafe { c_abi::free_aligned_sized(ptr, align, size) }
}

// C++'s sized and aligned `operator delete` forms, under their Itanium-ABI names. libstdc++'s
// own versions call `free`; these take the sized path, which checks the size against the
// block. (`operator new` stays libstdc++'s, which calls `malloc` or `aligned_alloc` here and
// keeps `std::bad_alloc`; the unsized, unaligned `delete` calls our `free` through it.)

/// `operator delete(void*, std::size_t)`.
///
/// # Safety
/// As [`free`], for a block from `operator new(size)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _ZdlPvm(ptr: *mut c_void, size: usize) {
    // SAFETY: as the caller guarantees.
    unsafe { c_abi::free_sized(ptr, size) }
}

/// `operator delete[](void*, std::size_t)`.
///
/// # Safety
/// As [`free`], for a block from `operator new[](size)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _ZdaPvm(ptr: *mut c_void, size: usize) {
    // SAFETY: as the caller guarantees.
    unsafe { c_abi::free_sized(ptr, size) }
}

/// `operator delete(void*, std::align_val_t)`.
///
/// # Safety
/// As [`free`], for a block from `operator new(size, align)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _ZdlPvSt11align_val_t(ptr: *mut c_void, _align: usize) {
    // SAFETY: as the caller guarantees.
    unsafe { free(ptr) }
}

/// `operator delete[](void*, std::align_val_t)`.
///
/// # Safety
/// As [`free`], for a block from `operator new[](size, align)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _ZdaPvSt11align_val_t(ptr: *mut c_void, _align: usize) {
    // SAFETY: as the caller guarantees.
    unsafe { free(ptr) }
}

/// `operator delete(void*, std::size_t, std::align_val_t)`.
///
/// # Safety
/// As [`free`], for a block from `operator new(size, align)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _ZdlPvmSt11align_val_t(ptr: *mut c_void, size: usize, align: usize) {
    // SAFETY: as the caller guarantees.
    unsafe { c_abi::free_aligned_sized(ptr, align, size) }
}

/// `operator delete[](void*, std::size_t, std::align_val_t)`.
///
/// # Safety
/// As [`free`], for a block from `operator new[](size, align)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _ZdaPvmSt11align_val_t(ptr: *mut c_void, size: usize, align: usize) {
    // SAFETY: as the caller guarantees.
    unsafe { c_abi::free_aligned_sized(ptr, align, size) }
}
