//! The interpreter shared by the `ops`, `global`, `oom` and `heaps` targets: a byte string decoded as
//! alloc / alloc_zeroed / realloc / dealloc / check (and, where the target allows, refused
//! memory), run against a shadow model of the live blocks. Frees and reallocs go without the
//! layout, as C calls them, when the op's top bit is set; before a free the usable size must
//! cover the block. Every block is filled with its own
//! byte and checked before it is freed or moved; at the end everything is freed and the
//! allocator's consistency check must pass.

use std::alloc::Layout;

/// What the interpreter drives.
pub trait Target {
    fn alloc(&self, layout: Layout, zeroed: bool) -> *mut u8;
    /// # Safety
    /// `p` is a live block of `layout`.
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8;
    /// # Safety
    /// `p` is a live block of `layout`.
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout);
    /// Frees `p` without its layout, as C's `free`.
    ///
    /// # Safety
    /// `p` is a live block.
    unsafe fn dealloc_sizeless(&self, p: *mut u8);
    /// Resizes `p` without its layout, as C's `realloc` (the result is 16-aligned).
    ///
    /// # Safety
    /// `p` is a live block.
    unsafe fn realloc_sizeless(&self, p: *mut u8, new_size: usize) -> *mut u8;
    /// The bytes usable at `p`, as C's `malloc_usable_size`.
    ///
    /// # Safety
    /// `p` is a live block.
    unsafe fn usable_size(&self, p: *mut u8) -> usize;
    fn check(&self);
    /// Refuses memory as `op` says; false where the target cannot inject failures.
    fn inject(&self, _op: &[u8]) -> bool {
        false
    }
    /// Bytes in use, for the final check.
    fn bytes_in_use(&self) -> usize;
    /// Called before each op: a target with several heaps picks the one that runs it.
    fn select(&self, _op: &[u8]) {}
    /// Called before the final frees and check: a target with heaps hands them all back.
    fn finish(&self) {}
}

struct Live {
    ptr: *mut u8,
    layout: Layout,
    byte: u8,
}

/// Positions filled and checked: the first and last 32 bytes (all of a small block).
fn positions(size: usize) -> impl Iterator<Item = usize> {
    (0..size.min(32)).chain(size.saturating_sub(32).max(32.min(size))..size)
}

fn fill(b: &Live) {
    for i in positions(b.layout.size()) {
        // SAFETY: i < size of a live block.
        unsafe { b.ptr.add(i).write(b.byte) };
    }
}

fn intact(b: &Live, len: usize) -> bool {
    // SAFETY: i < len <= size of a live block.
    positions(b.layout.size()).filter(|&i| i < len).all(|i| unsafe { b.ptr.add(i).read() } == b.byte)
}

/// One byte picks a magnitude (sizes up to 4 MiB), two the size within it.
fn size_from(bytes: &[u8]) -> usize {
    let bits = bytes[0] as u32 % 23;
    let within = u16::from_le_bytes([bytes[1], bytes[2]]) as usize % (1 << bits.min(16));
    (within.max(1) << bits.saturating_sub(16)).max(1)
}

pub fn run(a: &impl Target, data: &[u8]) {
    let before = a.bytes_in_use();
    let mut live: Vec<Live> = Vec::new();
    for (n, op) in data.chunks_exact(5).enumerate() {
        let byte = n as u8 | 1;
        let sizeless = op[0] & 0x80 != 0;
        a.select(op);
        match op[0] % 8 {
            0..=2 => {
                let layout = Layout::from_size_align(size_from(&op[1..4]), 1 << (op[4] % 17)).unwrap();
                let zeroed = op[0] & 0x80 != 0;
                let p = a.alloc(layout, zeroed);
                if p.is_null() {
                    continue; // only where memory was refused on purpose
                }
                assert_eq!(p as usize % layout.align(), 0, "misaligned block");
                // SAFETY: a fresh block of layout.size() bytes.
                assert!(!zeroed || unsafe { std::slice::from_raw_parts(p, layout.size()) }.iter().all(|&b| b == 0));
                let b = Live { ptr: p, layout, byte };
                fill(&b);
                live.push(b);
            }
            3 | 4 if !live.is_empty() => {
                let b = live.swap_remove(op[1] as usize % live.len());
                assert!(intact(&b, b.layout.size()), "block corrupted");
                // SAFETY: a live block of this layout.
                unsafe {
                    assert!(a.usable_size(b.ptr) >= b.layout.size(), "usable size too small");
                    if sizeless {
                        a.dealloc_sizeless(b.ptr);
                    } else {
                        a.dealloc(b.ptr, b.layout);
                    }
                }
            }
            5 if !live.is_empty() => {
                let i = op[1] as usize % live.len();
                let new_size = size_from(&op[2..5]);
                let old = &live[i];
                // SAFETY: a live block of this layout.
                let p = unsafe {
                    if sizeless {
                        a.realloc_sizeless(old.ptr, new_size)
                    } else {
                        a.realloc(old.ptr, old.layout, new_size)
                    }
                };
                if p.is_null() {
                    assert!(intact(old, old.layout.size()), "failed realloc touched the block");
                    continue;
                }
                let moved = Live { ptr: p, layout: old.layout, byte: old.byte };
                assert!(intact(&moved, new_size.min(old.layout.size())), "realloc lost contents");
                let align = if sizeless { 16 } else { old.layout.align() };
                assert_eq!(p as usize % align, 0, "realloc lost the alignment");
                let b = Live { ptr: p, layout: Layout::from_size_align(new_size, align).unwrap(), byte };
                fill(&b);
                live[i] = b;
            }
            6 if a.inject(op) => {}
            _ => a.check(),
        }
    }
    for b in live.drain(..) {
        assert!(intact(&b, b.layout.size()), "block corrupted");
        // SAFETY: a live block of this layout.
        unsafe { a.dealloc(b.ptr, b.layout) };
    }
    a.finish();
    a.check();
    assert_eq!(a.bytes_in_use(), before, "bytes in use after freeing everything");
}
