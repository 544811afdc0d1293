//! `libpymalloc_override.so`: pymalloc as the C allocator of any program, through `LD_PRELOAD`:
//!
//! ```sh
//! cargo build --release -p pymalloc-override
//! LD_PRELOAD=$PWD/target/release/libpymalloc_override.so some-program
//! ```
//!
//! It exports the C allocation functions (also under glibc's `__libc_*` names, and `cfree`),
//! `malloc_trim`, and glibc's `malloc_stats`,
//! `mallinfo`, `mallinfo2` and `malloc_info` with pymalloc's figures (their semantics are in
//! `pymalloc::c_abi`), and `pymalloc_write_stats(fd)`. The `PYMALLOC_*` options in the
//! environment apply (`pymalloc::Options`): with `PYMALLOC_STATS=1` (or `json`), the
//! statistics go to stderr when the program exits. Rust code inside the library allocates
//! through pymalloc directly. pymalloc's own `.init_array` entry (`pymalloc::register_hooks`)
//! registers its `fork` handlers, and the statistics at exit, when the library is loaded,
//! before the program's constructors.
//!
//! The library is built without the standard library (`#![no_std]`; the workspace's release
//! and dev profiles abort on panic, which a `no_std` library needs): it imports about half
//! the symbols from the C library that `std` would, and each is a lookup the dynamic loader
//! makes in every process started under `LD_PRELOAD` (`docs/design.md`, *The override
//! library without the standard library*). A panic, which the allocator's code never raises,
//! writes its message and aborts.
#![cfg_attr(not(any(test, std_linked)), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![cfg(target_os = "linux")]

use core::ffi::{c_int, c_void};

use pymalloc::{PyMalloc, c_abi};

#[global_allocator]
static GLOBAL: PyMalloc = PyMalloc;

// Without `std`, nothing else asks the linker for the C library (the `libc` crate only
// declares its functions), whose `libc.so` also brings `libc_nonshared.a`'s `atexit`; nor
// for `libpthread`, where glibc before 2.34 keeps `pthread_key_create` and its kin (from
// 2.34 on it is empty, and the linker, told `--as-needed`, records no need of it).
#[link(name = "c")]
unsafe extern "C" {}
#[link(name = "pthread")]
unsafe extern "C" {}

// Without LTO (the dev and test profiles), `core`'s precompiled code, built to unwind, names
// a personality routine in its unwinding tables; the standard library would define it. Panics
// here abort, so it is never called: a hidden symbol (not exported, so it cannot stand in for
// another library's) that traps, to resolve the name.
#[cfg(not(any(test, std_linked)))]
macro_rules! trapping_personality {
    ($trap:literal) => {
        core::arch::global_asm!(
            ".pushsection .text.rust_eh_personality,\"ax\",%progbits",
            ".globl rust_eh_personality",
            ".hidden rust_eh_personality",
            ".type rust_eh_personality,%function",
            "rust_eh_personality:",
            $trap,
            ".size rust_eh_personality, . - rust_eh_personality",
            ".popsection",
        );
    };
}
#[cfg(all(not(any(test, std_linked)), target_arch = "x86_64"))]
trapping_personality!("ud2");
#[cfg(all(not(any(test, std_linked)), target_arch = "aarch64"))]
trapping_personality!("udf #0");

/// What a panic does without the standard library: the message, without allocating, and
/// `abort()`. (Where the standard library is linked all the same, in tests and builds with
/// tests (`build.rs`), it is `std`'s.)
#[cfg(not(any(test, std_linked)))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    pymalloc::report_panic(info)
}

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

/// `malloc_stats(3)`: pymalloc's statistics table, to stderr.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_stats() {
    c_abi::malloc_stats();
}

/// `mallinfo2(3)`: pymalloc's figures in glibc's fields (see `pymalloc::c_abi::MallInfo2`).
#[unsafe(no_mangle)]
pub extern "C" fn mallinfo2() -> c_abi::MallInfo2 {
    c_abi::mallinfo2()
}

/// `mallinfo(3)`: as [`mallinfo2`], in `int`s.
#[unsafe(no_mangle)]
pub extern "C" fn mallinfo() -> c_abi::MallInfo {
    c_abi::mallinfo()
}

/// `malloc_info(3)`: pymalloc's figures as XML of glibc's shape.
///
/// # Safety
/// `file` is an open `FILE`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_info(options: c_int, file: *mut libc::FILE) -> c_int {
    // SAFETY: as the caller guarantees.
    unsafe { c_abi::malloc_info(options, file) }
}

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

// glibc's public `__libc_*` names of its allocation functions, which a program may call
// directly (an allocation wrapper that forwards to "the real malloc", old binaries that call
// `cfree`): here they are pymalloc's too, so a block from one is freed by the other instead
// of being reported as no block of pymalloc's (and glibc's freeing one of pymalloc's).

/// glibc's `__libc_malloc`: [`malloc`].
#[unsafe(no_mangle)]
pub extern "C" fn __libc_malloc(size: usize) -> *mut c_void {
    c_abi::malloc(size)
}

/// glibc's `__libc_calloc`: [`calloc`].
#[unsafe(no_mangle)]
pub extern "C" fn __libc_calloc(count: usize, size: usize) -> *mut c_void {
    c_abi::calloc(count, size)
}

/// glibc's `__libc_realloc`: [`realloc`].
///
/// # Safety
/// As [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __libc_realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: as the caller guarantees.
    unsafe { c_abi::realloc(ptr, size) }
}

/// glibc's `__libc_free`: [`free`].
///
/// # Safety
/// As [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __libc_free(ptr: *mut c_void) {
    // SAFETY: as the caller guarantees.
    unsafe { c_abi::free(ptr) }
}

/// `cfree`, which glibc keeps for old binaries only: [`free`].
///
/// # Safety
/// As [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cfree(ptr: *mut c_void) {
    // SAFETY: as the caller guarantees.
    unsafe { c_abi::free(ptr) }
}

/// glibc's `__libc_memalign`: [`memalign`].
#[unsafe(no_mangle)]
pub extern "C" fn __libc_memalign(align: usize, size: usize) -> *mut c_void {
    c_abi::memalign(align, size)
}

/// glibc's `__libc_valloc`: [`valloc`].
#[unsafe(no_mangle)]
pub extern "C" fn __libc_valloc(size: usize) -> *mut c_void {
    c_abi::valloc(size)
}

/// glibc's `__libc_pvalloc`: [`pvalloc`].
#[unsafe(no_mangle)]
pub extern "C" fn __libc_pvalloc(size: usize) -> *mut c_void {
    c_abi::pvalloc(size)
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
