//! `radix`: inserts, removals and lookups on the radix tree against a `BTreeMap` model, with
//! addresses drawn from a few clusters (shared nodes) and from the edges of the 57-bit space.
#![no_main]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::collections::BTreeMap;
use std::ptr::NonNull;

use libfuzzer_sys::fuzz_target;
use pymalloc_radix::{ADDRESS_BITS, NodeAlloc, RadixTree};

const SHIFT: u32 = 20;

struct Nodes;

// SAFETY: zeroed, 8-aligned memory of the asked size from the system allocator.
unsafe impl NodeAlloc for Nodes {
    fn alloc_node(&self, bytes: usize) -> Option<NonNull<u8>> {
        // SAFETY: a non-zero size.
        NonNull::new(unsafe { alloc_zeroed(Layout::from_size_align(bytes, 8).unwrap()) })
    }
    unsafe fn free_node(&self, node: NonNull<u8>, bytes: usize) {
        // SAFETY: allocated above with this layout.
        unsafe { dealloc(node.as_ptr(), Layout::from_size_align(bytes, 8).unwrap()) }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut tree: RadixTree<u8, SHIFT> = RadixTree::new();
    let mut model = BTreeMap::new();
    for op in data.chunks_exact(9) {
        let raw = u64::from_le_bytes(op[1..9].try_into().unwrap()) as usize;
        let clusters = [0, 0x7f00_0000_0000, 1 << 47, (1 << ADDRESS_BITS) - (1 << 30), usize::MAX - (1 << 30)];
        let addr = clusters[op[0] as usize % clusters.len()].wrapping_add(raw % (1 << 30));
        let owner = NonNull::new(std::ptr::without_provenance_mut::<u8>((raw & 0xFFF0) | 8)).unwrap();
        match op[0] / 5 % 3 {
            0 => {
                let inserted = tree.insert(addr, owner, &Nodes).is_ok();
                assert_eq!(inserted, (addr as u64) >> ADDRESS_BITS == 0, "{addr:#x}");
                if inserted {
                    model.insert(addr >> SHIFT, owner);
                }
            }
            1 => {
                tree.remove(addr);
                model.remove(&(addr >> SHIFT));
            }
            _ => assert_eq!(tree.get(addr), model.get(&(addr >> SHIFT)).copied(), "{addr:#x}"),
        }
    }
    for (&key, &owner) in &model {
        assert_eq!(tree.get(key << SHIFT), Some(owner));
    }
    // SAFETY: every node came from Nodes; no lookups follow.
    unsafe { tree.release_nodes(&Nodes) };
});
