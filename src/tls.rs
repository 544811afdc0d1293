//! [`HeapSlot`]: the one word of thread-local storage on the fast path — the calling thread's
//! heap — read and written without `__tls_get_addr`.
//!
//! Rust's `thread_local!` in a shared library (`libpymalloc_override.so`) uses the
//! general-dynamic TLS model: every access calls `__tls_get_addr`, about 11 instructions and a
//! call, on every `malloc` and `free`. On Linux for x86-64 and aarch64 the slot is instead a
//! TLS symbol defined here in assembly and read with the *initial-exec* model: the symbol's
//! offset from the thread pointer is in a GOT entry that the dynamic loader fills in once, so
//! a read is two loads (x86-64: `mov off, [rip + sym@GOTTPOFF]; mov val, fs:[off]`). In an
//! executable the linker relaxes the GOT load to a constant.
//!
//! What that asks of the loader: an initial-exec symbol must live in the *static* TLS block,
//! laid out when a thread starts. A library loaded at start-up (`LD_PRELOAD`, or linked) is
//! always placed there; one loaded later with `dlopen` takes its 8 bytes from the surplus
//! glibc reserves for such libraries (`glibc.rtld.optional_static_tls`, 512 bytes by
//! default), and `dlopen` fails with "cannot allocate memory in static TLS block" only when
//! that surplus is used up. The linker marks the library `DF_STATIC_TLS` (`readelf -d`
//! shows `STATIC_TLS` among the flags).
//!
//! Elsewhere (other targets, Miri) the slot is an ordinary `thread_local!`.
//!
//! Invariant T1: a thread's slot is null until the thread binds a heap, then that heap until
//! the thread's exit hook clears it; only the thread itself reads or writes it.

use core::ptr;

use crate::heap::HeapCell;

/// The calling thread's heap slot (see the module documentation).
pub(crate) struct HeapSlot;

// The slot: one pointer in `.tbss` (zero-initialised TLS), hidden so that it is never
// exported from the shared library nor taken from another module. (`%` rather than `@` before
// the section and symbol types: both assemblers accept it, and `@` starts a comment on Arm.)
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(miri)
))]
core::arch::global_asm!(
    ".pushsection .tbss,\"awT\",%nobits",
    ".p2align 3",
    ".globl pymalloc_tls_current_heap",
    ".hidden pymalloc_tls_current_heap",
    ".type pymalloc_tls_current_heap,%object",
    ".size pymalloc_tls_current_heap,8",
    "pymalloc_tls_current_heap:",
    ".zero 8",
    ".popsection",
);

#[cfg(all(target_os = "linux", target_arch = "x86_64", not(miri)))]
mod imp {
    use crate::heap::HeapCell;

    #[inline(always)]
    pub(super) fn get() -> *const HeapCell {
        let value: *const HeapCell;
        // SAFETY: reads the calling thread's own 8-byte TLS slot, defined above and placed in
        // the static TLS block (initial-exec); no other memory is touched.
        unsafe {
            core::arch::asm!(
                "mov {value}, qword ptr [rip + pymalloc_tls_current_heap@GOTTPOFF]",
                "mov {value}, qword ptr fs:[{value}]",
                value = out(reg) value,
                options(nostack, readonly, preserves_flags),
            );
        }
        value
    }

    #[inline(always)]
    pub(super) fn set(cell: *const HeapCell) {
        // SAFETY: writes the calling thread's own TLS slot (as `get`).
        unsafe {
            core::arch::asm!(
                "mov {offset}, qword ptr [rip + pymalloc_tls_current_heap@GOTTPOFF]",
                "mov qword ptr fs:[{offset}], {cell}",
                offset = out(reg) _,
                cell = in(reg) cell,
                options(nostack, preserves_flags),
            );
        }
    }
}

#[cfg(all(target_os = "linux", target_arch = "aarch64", not(miri)))]
mod imp {
    use crate::heap::HeapCell;

    #[inline(always)]
    pub(super) fn get() -> *const HeapCell {
        let value: *const HeapCell;
        // SAFETY: reads the calling thread's own 8-byte TLS slot (initial-exec: the offset
        // from the thread pointer through the GOT); no other memory is touched.
        unsafe {
            core::arch::asm!(
                "mrs {tp}, tpidr_el0",
                "adrp {value}, :gottprel:pymalloc_tls_current_heap",
                "ldr {value}, [{value}, #:gottprel_lo12:pymalloc_tls_current_heap]",
                "ldr {value}, [{tp}, {value}]",
                tp = out(reg) _,
                value = out(reg) value,
                options(nostack, readonly, preserves_flags),
            );
        }
        value
    }

    #[inline(always)]
    pub(super) fn set(cell: *const HeapCell) {
        // SAFETY: writes the calling thread's own TLS slot (as `get`).
        unsafe {
            core::arch::asm!(
                "mrs {tp}, tpidr_el0",
                "adrp {offset}, :gottprel:pymalloc_tls_current_heap",
                "ldr {offset}, [{offset}, #:gottprel_lo12:pymalloc_tls_current_heap]",
                "str {cell}, [{tp}, {offset}]",
                tp = out(reg) _,
                offset = out(reg) _,
                cell = in(reg) cell,
                options(nostack, preserves_flags),
            );
        }
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(miri)
)))]
mod imp {
    use core::cell::Cell;
    use core::ptr;

    use crate::heap::HeapCell;

    std::thread_local! {
        /// No destructor, so reading it never registers one.
        static CURRENT: Cell<*const HeapCell> = const { Cell::new(ptr::null()) };
    }

    #[inline(always)]
    pub(super) fn get() -> *const HeapCell {
        CURRENT.get()
    }

    #[inline(always)]
    pub(super) fn set(cell: *const HeapCell) {
        CURRENT.set(cell)
    }
}

impl HeapSlot {
    /// The calling thread's heap, if it has bound one (T1).
    #[inline(always)]
    pub(crate) fn get() -> Option<&'static HeapCell> {
        // SAFETY: the slot holds null or a heap of the global allocator (T1), which lives as
        // long as the program.
        unsafe { imp::get().as_ref() }
    }

    /// Records the calling thread's heap.
    #[inline]
    pub(crate) fn set(cell: &'static HeapCell) {
        imp::set(cell)
    }

    /// Clears the calling thread's slot, returning the heap it held.
    #[inline]
    pub(crate) fn take() -> Option<&'static HeapCell> {
        let cell = Self::get();
        imp::set(ptr::null());
        cell
    }
}
