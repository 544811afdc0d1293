//! `heaps`: three local heaps and the instance's own calls, driven from one thread in an
//! order the fuzzer chooses (the last byte of each op picks who runs it), so that blocks are
//! freed and resized by heaps that do not own them; ops of kind 6 hand a heap back and take
//! another. The instance's check adds up blocks in use across heaps, so a remotely freed
//! block that is lost or freed twice is found.
#![no_main]

#[path = "shared/interpreter.rs"]
mod interpreter;

use std::alloc::Layout;
use std::cell::{Cell, RefCell};
use std::ptr::NonNull;

use libfuzzer_sys::fuzz_target;
use pymalloc::{Allocator, LocalHeap};
use pymalloc_arena::TestPlatform;

const HEAPS: usize = 3;

struct Heaps<'a> {
    a: &'a Allocator<TestPlatform>,
    heaps: RefCell<Vec<LocalHeap<'a, TestPlatform>>>,
    /// Who runs the next op: a heap, or the instance itself (`HEAPS`).
    current: Cell<usize>,
}

impl interpreter::Target for Heaps<'_> {
    fn alloc(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        match self.heaps.borrow_mut().get_mut(self.current.get()) {
            Some(h) if zeroed => h.alloc_zeroed(layout),
            Some(h) => h.alloc(layout),
            None if zeroed => self.a.alloc_zeroed(layout),
            None => self.a.alloc(layout),
        }
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as the caller guarantees.
        unsafe {
            match self.heaps.borrow_mut().get_mut(self.current.get()) {
                Some(h) => h.realloc(p, layout, new_size),
                None => self.a.realloc(p, layout, new_size),
            }
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: as the caller guarantees.
        unsafe {
            match self.heaps.borrow_mut().get_mut(self.current.get()) {
                Some(h) => h.dealloc(p, layout),
                None => self.a.dealloc(p, layout),
            }
        }
    }
    unsafe fn dealloc_sizeless(&self, p: *mut u8) {
        let p = NonNull::new(p).unwrap();
        // SAFETY: as the caller guarantees.
        unsafe {
            match self.heaps.borrow_mut().get_mut(self.current.get()) {
                Some(h) => h.dealloc_unsized(p),
                None => self.a.dealloc_unsized(p),
            }
        }
    }
    unsafe fn realloc_sizeless(&self, p: *mut u8, new_size: usize) -> *mut u8 {
        let p = NonNull::new(p).unwrap();
        // SAFETY: as the caller guarantees.
        unsafe {
            match self.heaps.borrow_mut().get_mut(self.current.get()) {
                Some(h) => h.realloc_unsized(p, new_size),
                None => self.a.realloc_unsized(p, new_size),
            }
        }
    }
    unsafe fn usable_size(&self, p: *mut u8) -> usize {
        // SAFETY: as the caller guarantees.
        unsafe { self.a.usable_size(NonNull::new(p).unwrap()) }
    }
    fn check(&self) {
        self.a.check().unwrap();
    }
    fn inject(&self, op: &[u8]) -> bool {
        let k = op[1] as usize % HEAPS;
        self.heaps.borrow_mut()[k] = self.a.local_heap().unwrap();
        true
    }
    fn bytes_in_use(&self) -> usize {
        self.a.stats().bytes_in_use
    }
    fn select(&self, op: &[u8]) {
        self.current.set(op[4] as usize % (HEAPS + 1));
    }
    fn finish(&self) {
        self.heaps.borrow_mut().clear();
    }
}

fuzz_target!(|data: &[u8]| {
    let a = Allocator::new(TestPlatform::new());
    let target = Heaps {
        a: &a,
        heaps: RefCell::new((0..HEAPS).map(|_| a.local_heap().unwrap()).collect()),
        current: Cell::new(HEAPS),
    };
    interpreter::run(&target, data);
    drop(target);
    let stats = a.stats();
    assert_eq!(stats.pooled_blocks, 0, "{stats}");
});
