//! `global`: the ops of `ops` through the `GlobalAlloc` trait of `PyMalloc`, the process-wide
//! instance over the operating system (its state carries over from one input to the next);
//! sizeless frees and reallocs through `pymalloc::c_abi`, C's `free` and `realloc`.
#![no_main]

#[path = "shared/interpreter.rs"]
mod interpreter;

use std::alloc::{GlobalAlloc, Layout};

use libfuzzer_sys::fuzz_target;
use pymalloc::{PyMalloc, c_abi};

struct Global;

impl interpreter::Target for Global {
    fn alloc(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        // SAFETY: GlobalAlloc's contract allows any layout here; zero sizes are served.
        unsafe { if zeroed { PyMalloc.alloc_zeroed(layout) } else { PyMalloc.alloc(layout) } }
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as the caller guarantees.
        unsafe { PyMalloc.realloc(p, layout, new_size) }
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: as the caller guarantees.
        unsafe { PyMalloc.dealloc(p, layout) }
    }
    unsafe fn dealloc_sizeless(&self, p: *mut u8) {
        // SAFETY: as the caller guarantees.
        unsafe { c_abi::free(p.cast()) }
    }
    unsafe fn realloc_sizeless(&self, p: *mut u8, new_size: usize) -> *mut u8 {
        // SAFETY: as the caller guarantees; `new_size` is never 0 (which would free).
        unsafe { c_abi::realloc(p.cast(), new_size).cast() }
    }
    unsafe fn usable_size(&self, p: *mut u8) -> usize {
        // SAFETY: as the caller guarantees.
        unsafe { c_abi::malloc_usable_size(p.cast()) }
    }
    fn check(&self) {
        pymalloc::check().unwrap();
    }
    fn bytes_in_use(&self) -> usize {
        pymalloc::stats().bytes_in_use
    }
}

fuzz_target!(|data: &[u8]| interpreter::run(&Global, data));
