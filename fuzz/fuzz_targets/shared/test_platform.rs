//! The `ops` and `oom` targets' allocator: an instance over the test platform.

use std::alloc::Layout;

use crate::interpreter::Target;

/// An instance over the test platform; with `faults`, ops of kind 6 refuse memory.
pub struct OnTestPlatform {
    pub a: pymalloc::Allocator<pymalloc_arena::TestPlatform>,
    pub faults: bool,
}

impl Target for OnTestPlatform {
    fn alloc(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        if zeroed { self.a.alloc_zeroed(layout) } else { self.a.alloc(layout) }
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as the caller guarantees.
        unsafe { self.a.realloc(p, layout, new_size) }
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: as the caller guarantees.
        unsafe { self.a.dealloc(p, layout) }
    }
    unsafe fn dealloc_sizeless(&self, p: *mut u8) {
        // SAFETY: as the caller guarantees.
        unsafe { self.a.dealloc_unsized(std::ptr::NonNull::new(p).unwrap()) }
    }
    unsafe fn realloc_sizeless(&self, p: *mut u8, new_size: usize) -> *mut u8 {
        // SAFETY: as the caller guarantees.
        unsafe { self.a.realloc_unsized(std::ptr::NonNull::new(p).unwrap(), new_size) }
    }
    unsafe fn usable_size(&self, p: *mut u8) -> usize {
        // SAFETY: as the caller guarantees.
        unsafe { self.a.usable_size(std::ptr::NonNull::new(p).unwrap()) }
    }
    fn check(&self) {
        self.a.check().unwrap();
    }
    fn inject(&self, op: &[u8]) -> bool {
        if !self.faults {
            return false;
        }
        let platform = self.a.platform();
        match op[1] % 4 {
            0 => platform.fail_reserve_in(1 + op[2] as u64 % 8),
            1 => platform.set_fail_reserves(op[2] % 2 == 0),
            2 => platform.set_fail_commits(op[2] % 2 == 0),
            _ => platform.set_fail_decommits(op[2] % 2 == 0),
        }
        true
    }
    fn bytes_in_use(&self) -> usize {
        self.a.stats().bytes_in_use
    }
}
