//! The allocator's thread-local storage, read and written without `__tls_get_addr`: the
//! calling thread's heap ([`HeapSlot`], the one word on the fast path) and its binding state
//! ([`StateSlot`], `thread.rs`).
//!
//! Rust's `thread_local!` in a shared library (`libpymalloc_override.so`) uses the
//! general-dynamic TLS model: every access calls `__tls_get_addr`, about 11 instructions and a
//! call, on every `malloc` and `free`. On Linux for x86-64 and aarch64 each word is instead
//! a TLS symbol defined here in assembly and read with the *initial-exec* model: the
//! symbol's offset from the thread pointer is in a GOT entry that the dynamic loader fills in
//! once, so a read is two loads (x86-64: `mov off, [rip + sym@GOTTPOFF]; mov val,
//! fs:[off]`). In an executable the linker relaxes the GOT load to a constant.
//!
//! What that asks of the loader: an initial-exec symbol must live in the *static* TLS block,
//! laid out when a thread starts. A library loaded at start-up (`LD_PRELOAD`, or linked) is
//! always placed there; one loaded later with `dlopen` takes its 16 bytes (the two words)
//! from the surplus glibc reserves for such libraries (`glibc.rtld.optional_static_tls`, 512
//! bytes by default), and `dlopen` fails with "cannot allocate memory in static TLS block"
//! only when that surplus is used up. The linker marks the library `DF_STATIC_TLS`
//! (`readelf -d` shows `STATIC_TLS` among the flags).
//!
//! Elsewhere (other targets, Miri) each word is an ordinary `thread_local!`, and the crate
//! links `std` for it; on Linux for x86-64 and aarch64 the crate needs only `core`, so that
//! `libpymalloc_override.so` carries no standard library (`docs/design.md`, *The override
//! library without the standard library*).
//!
//! Invariant T1: a thread's heap slot is null until the thread binds a heap, then that heap
//! until the thread's exit hook clears it; only the thread itself reads or writes either
//! word.

use core::ptr;

use crate::heap::HeapCell;

/// The calling thread's heap slot (see the module documentation).
pub(crate) struct HeapSlot;

/// The calling thread's binding state: one of `thread.rs`'s states, 0 before anything.
pub(crate) struct StateSlot;

/// Defines a zero-initialised, hidden TLS word (never exported from the shared library nor
/// taken from another module) and a module `$name` with its `get` and `set`, read with the
/// initial-exec model. (`%` rather than `@` before the section and symbol types: both
/// assemblers accept it, and `@` starts a comment on Arm.)
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(miri)
))]
macro_rules! tls_word {
    ($name:ident, $symbol:literal) => {
        core::arch::global_asm!(
            ".pushsection .tbss,\"awT\",%nobits",
            ".p2align 3",
            concat!(".globl ", $symbol),
            concat!(".hidden ", $symbol),
            concat!(".type ", $symbol, ",%object"),
            concat!(".size ", $symbol, ",8"),
            concat!($symbol, ":"),
            ".zero 8",
            ".popsection",
        );

        mod $name {
            #[cfg(target_arch = "x86_64")]
            #[inline(always)]
            pub(super) fn get() -> usize {
                let value: usize;
                // SAFETY: reads the calling thread's own 8-byte TLS word, defined above and
                // placed in the static TLS block (initial-exec); no other memory is touched.
                unsafe {
                    core::arch::asm!(
                        concat!("mov {value}, qword ptr [rip + ", $symbol, "@GOTTPOFF]"),
                        "mov {value}, qword ptr fs:[{value}]",
                        value = out(reg) value,
                        options(nostack, readonly, preserves_flags),
                    );
                }
                value
            }

            #[cfg(target_arch = "x86_64")]
            #[inline(always)]
            pub(super) fn set(value: usize) {
                // SAFETY: writes the calling thread's own TLS word (as `get`).
                unsafe {
                    core::arch::asm!(
                        concat!("mov {offset}, qword ptr [rip + ", $symbol, "@GOTTPOFF]"),
                        "mov qword ptr fs:[{offset}], {value}",
                        offset = out(reg) _,
                        value = in(reg) value,
                        options(nostack, preserves_flags),
                    );
                }
            }

            #[cfg(target_arch = "aarch64")]
            #[inline(always)]
            pub(super) fn get() -> usize {
                let value: usize;
                // SAFETY: reads the calling thread's own 8-byte TLS word (initial-exec: the
                // offset from the thread pointer through the GOT); no other memory is touched.
                unsafe {
                    core::arch::asm!(
                        "mrs {tp}, tpidr_el0",
                        concat!("adrp {value}, :gottprel:", $symbol),
                        concat!("ldr {value}, [{value}, #:gottprel_lo12:", $symbol, "]"),
                        "ldr {value}, [{tp}, {value}]",
                        tp = out(reg) _,
                        value = out(reg) value,
                        options(nostack, readonly, preserves_flags),
                    );
                }
                value
            }

            #[cfg(target_arch = "aarch64")]
            #[inline(always)]
            pub(super) fn set(value: usize) {
                // SAFETY: writes the calling thread's own TLS word (as `get`).
                unsafe {
                    core::arch::asm!(
                        "mrs {tp}, tpidr_el0",
                        concat!("adrp {offset}, :gottprel:", $symbol),
                        concat!("ldr {offset}, [{offset}, #:gottprel_lo12:", $symbol, "]"),
                        "str {value}, [{tp}, {offset}]",
                        tp = out(reg) _,
                        offset = out(reg) _,
                        value = in(reg) value,
                        options(nostack, preserves_flags),
                    );
                }
            }
        }
    };
}

/// Elsewhere, the same module over an ordinary `thread_local!`.
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(miri)
)))]
macro_rules! tls_word {
    ($name:ident, $symbol:literal) => {
        mod $name {
            use core::cell::Cell;

            std::thread_local! {
                /// No destructor, so reading it never registers one.
                static WORD: Cell<usize> = const { Cell::new(0) };
            }

            #[inline(always)]
            pub(super) fn get() -> usize {
                WORD.get()
            }

            #[inline(always)]
            pub(super) fn set(value: usize) {
                WORD.set(value)
            }
        }
    };
}

tls_word!(heap_word, "pymalloc_tls_current_heap");
tls_word!(state_word, "pymalloc_tls_thread_state");

impl HeapSlot {
    /// The calling thread's heap, if it has bound one (T1).
    #[inline(always)]
    pub(crate) fn get() -> Option<&'static HeapCell> {
        let cell = ptr::with_exposed_provenance::<HeapCell>(heap_word::get());
        // SAFETY: the slot holds null or a heap of the global allocator (T1), which lives as
        // long as the program.
        unsafe { cell.as_ref() }
    }

    /// Records the calling thread's heap.
    #[inline]
    pub(crate) fn set(cell: &'static HeapCell) {
        heap_word::set(ptr::from_ref(cell).expose_provenance())
    }

    /// Clears the calling thread's slot, returning the heap it held.
    #[inline]
    pub(crate) fn take() -> Option<&'static HeapCell> {
        let cell = Self::get();
        heap_word::set(0);
        cell
    }
}

impl StateSlot {
    /// The calling thread's state; 0 until it is first set.
    #[inline]
    pub(crate) fn get() -> u8 {
        // Only `set` writes the word, with a `u8`.
        state_word::get() as u8
    }

    /// Sets the calling thread's state.
    #[inline]
    pub(crate) fn set(state: u8) {
        state_word::set(usize::from(state))
    }
}
