//! `ops`: a byte string decoded as alloc / alloc_zeroed / realloc / dealloc / check on an
//! instance over the test platform (which can also be told to refuse memory). Every block is
//! filled with its own byte and checked before it is freed or moved; everything is freed at
//! the end and the allocator's consistency check must pass.
#![no_main]

use std::alloc::Layout;

use libfuzzer_sys::fuzz_target;
use pymalloc::Allocator;
use pymalloc_arena::TestPlatform;

struct Live {
    ptr: *mut u8,
    layout: Layout,
    byte: u8,
}

/// Fills the first and last 32 bytes of a block (all of a small one) with `byte`.
fn touch(b: &Live) {
    let n = b.layout.size();
    for i in (0..n.min(32)).chain(n.saturating_sub(32)..n) {
        // SAFETY: i < size of a live block.
        unsafe { b.ptr.add(i).write(b.byte) };
    }
}

fn intact(b: &Live, len: usize) -> bool {
    let n = b.layout.size();
    (0..n.min(32))
        .chain(n.saturating_sub(32)..n)
        .filter(|&i| i < len)
        // SAFETY: i < len <= size of a live block.
        .all(|i| unsafe { b.ptr.add(i).read() } == b.byte)
}

fn size_from(bytes: [u8; 3]) -> usize {
    // One byte picks a magnitude (up to 4 MiB), two the size within it.
    let bits = bytes[0] as u32 % 23;
    (u16::from_le_bytes([bytes[1], bytes[2]]) as usize % (1 << bits)).max(1) << bits.saturating_sub(16)
}

fuzz_target!(|data: &[u8]| {
    let a = Allocator::new(TestPlatform::new());
    let mut live: Vec<Live> = Vec::new();
    for (n, op) in data.chunks_exact(5).enumerate() {
        let byte = n as u8 | 1;
        match op[0] % 8 {
            0..=2 => {
                let layout = Layout::from_size_align(size_from([op[1], op[2], op[3]]), 1 << (op[4] % 17)).unwrap();
                let zeroed = op[0] & 0x80 != 0;
                let p = if zeroed { a.alloc_zeroed(layout) } else { a.alloc(layout) };
                if p.is_null() {
                    continue; // only when the platform was told to refuse
                }
                assert_eq!(p as usize % layout.align(), 0);
                if zeroed {
                    // SAFETY: a fresh block of layout.size() bytes.
                    assert!(unsafe { std::slice::from_raw_parts(p, layout.size()) }.iter().all(|&b| b == 0));
                }
                let b = Live { ptr: p, layout, byte };
                touch(&b);
                live.push(b);
            }
            3 | 4 if !live.is_empty() => {
                let i = op[1] as usize % live.len();
                let b = live.swap_remove(i);
                assert!(intact(&b, b.layout.size()), "block corrupted");
                // SAFETY: a live block of this layout.
                unsafe { a.dealloc(b.ptr, b.layout) };
            }
            5 if !live.is_empty() => {
                let i = op[1] as usize % live.len();
                let new_size = size_from([op[2], op[3], op[4]]);
                let old = &live[i];
                // SAFETY: a live block of this layout.
                let p = unsafe { a.realloc(old.ptr, old.layout, new_size) };
                if p.is_null() {
                    continue;
                }
                let moved = Live { ptr: p, layout: old.layout, byte: old.byte };
                assert!(intact(&moved, new_size.min(old.layout.size())), "realloc lost contents");
                let b = Live { ptr: p, layout: Layout::from_size_align(new_size, old.layout.align()).unwrap(), byte };
                touch(&b);
                live[i] = b;
            }
            6 => a.platform().set_fail_reserves(op[1] % 4 == 0),
            _ => a.check().unwrap(),
        }
    }
    for b in live.drain(..) {
        assert!(intact(&b, b.layout.size()), "block corrupted");
        // SAFETY: a live block of this layout.
        unsafe { a.dealloc(b.ptr, b.layout) };
    }
    a.check().unwrap();
    assert_eq!(a.stats().bytes_in_use, 0);
});
