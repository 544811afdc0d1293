use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::ptr::NonNull;

use quickcheck::{QuickCheck, TestResult};

use super::*;

const SHIFT: u32 = 20;
type Tree = RadixTree<u64, SHIFT>;

/// Nodes from the system allocator; can refuse the n-th request.
#[derive(Default)]
struct TestNodes {
    live: Cell<usize>,
    calls: Cell<usize>,
    fail_call: Cell<Option<usize>>,
}

// SAFETY: returns zeroed, 8-aligned memory of the asked size from the system allocator.
unsafe impl NodeAlloc for TestNodes {
    fn alloc_node(&self, bytes: usize) -> Option<NonNull<u8>> {
        self.calls.set(self.calls.get() + 1);
        if self.fail_call.get() == Some(self.calls.get()) {
            return None;
        }
        self.live.set(self.live.get() + 1);
        // SAFETY: non-zero size.
        NonNull::new(unsafe { alloc_zeroed(Layout::from_size_align(bytes, 8).unwrap()) })
    }
    unsafe fn free_node(&self, node: NonNull<u8>, bytes: usize) {
        self.live.set(self.live.get() - 1);
        // SAFETY: allocated by alloc_node with this layout.
        unsafe { dealloc(node.as_ptr(), Layout::from_size_align(bytes, 8).unwrap()) }
    }
}

fn owner(v: u64) -> NonNull<u64> {
    // Owners are opaque to the tree: a non-null, aligned address with no provenance will do.
    NonNull::new(std::ptr::without_provenance_mut((v as usize + 1) * 8)).unwrap()
}

fn quickcheck_tests() -> u64 {
    if cfg!(miri) { 4 } else { 300 }
}

#[test]
fn levels_cover_the_address_bits() {
    assert_eq!(Tree::ROOT_BITS + 2 * Tree::LOW_BITS + SHIFT, ADDRESS_BITS);
}

#[test]
fn lookups_see_inserts_and_removes() {
    let nodes = TestNodes::default();
    let mut tree = Tree::new();
    assert_eq!(tree.get(0x7f00_0000_0000), None, "empty tree owns nothing");
    let a = 0x7f12_3450_0000usize;
    tree.insert(a, owner(1), &nodes).unwrap();
    // Every address of the granule maps; its neighbours do not.
    assert_eq!(tree.get(a), Some(owner(1)));
    assert_eq!(tree.get(a + (1 << SHIFT) - 1), Some(owner(1)));
    assert_eq!(tree.get(a - 1), None);
    assert_eq!(tree.get(a + (1 << SHIFT)), None);
    assert_eq!(nodes.live.get(), 3, "root, middle and leaf");
    assert_eq!(
        tree.node_bytes_in_use(),
        (1 << Tree::ROOT_BITS) * 8 + 2 * (1 << Tree::LOW_BITS) * 8
    );
    tree.remove(a);
    assert_eq!(tree.get(a), None);
    // SAFETY: every node came from `nodes`; no lookups follow.
    unsafe { tree.release_nodes(&nodes) };
    assert_eq!(nodes.live.get(), 0);
}

#[test]
fn the_whole_57_bit_space_is_covered_and_beyond_is_not_ours() {
    let nodes = TestNodes::default();
    let mut tree = Tree::new();
    let top = (1usize << ADDRESS_BITS) - 1;
    tree.insert(top, owner(7), &nodes).unwrap();
    tree.insert(1 << SHIFT, owner(8), &nodes).unwrap();
    assert_eq!(tree.get(top), Some(owner(7)));
    assert_eq!(tree.get(1 << SHIFT), Some(owner(8)));
    assert_eq!(tree.get(top + 1), None);
    assert_eq!(tree.get(usize::MAX), None);
    assert_eq!(
        tree.insert(1 << ADDRESS_BITS, owner(9), &nodes),
        Err(InsertError::OutOfRange)
    );
    // SAFETY: every node came from `nodes`; no lookups follow.
    unsafe { tree.release_nodes(&nodes) };
    assert_eq!(nodes.live.get(), 0);
}

#[test]
fn a_refused_node_fails_the_insert_cleanly() {
    for fail in 1..=3 {
        let nodes = TestNodes::default();
        nodes.fail_call.set(Some(fail));
        let mut tree = Tree::new();
        let a = 0x5555_0000_0000usize;
        assert_eq!(tree.insert(a, owner(1), &nodes), Err(InsertError::NoMemory));
        assert_eq!(tree.get(a), None);
        // The next try works.
        tree.insert(a, owner(1), &nodes).unwrap();
        assert_eq!(tree.get(a), Some(owner(1)));
        // SAFETY: every node came from `nodes`; no lookups follow.
        unsafe { tree.release_nodes(&nodes) };
        assert_eq!(nodes.live.get(), 0);
    }
}

#[test]
fn lookups_race_with_inserts_on_other_threads() {
    use std::sync::atomic::{AtomicBool, Ordering};
    struct SyncNodes;
    // SAFETY: as TestNodes, without counters.
    unsafe impl NodeAlloc for SyncNodes {
        fn alloc_node(&self, bytes: usize) -> Option<NonNull<u8>> {
            // SAFETY: non-zero size.
            NonNull::new(unsafe { alloc_zeroed(Layout::from_size_align(bytes, 8).unwrap()) })
        }
        unsafe fn free_node(&self, node: NonNull<u8>, bytes: usize) {
            // SAFETY: allocated by alloc_node with this layout.
            unsafe { dealloc(node.as_ptr(), Layout::from_size_align(bytes, 8).unwrap()) }
        }
    }
    let n: usize = if cfg!(miri) { 8 } else { 2000 };
    let mut tree = Tree::new();
    let done = AtomicBool::new(false);
    let addr = |i: usize| (i << 33) | (i << SHIFT);
    std::thread::scope(|s| {
        let (tree, done) = (&tree, &done);
        s.spawn(move || {
            for i in 1..=n {
                tree.insert(addr(i), owner(i as u64), &SyncNodes).unwrap();
            }
            done.store(true, Ordering::Release);
        });
        s.spawn(move || {
            while !done.load(Ordering::Acquire) {
                for i in 1..=n {
                    // Either not yet there, or the right owner: never a torn or wrong value.
                    if let Some(o) = tree.get(addr(i)) {
                        assert_eq!(o, owner(i as u64));
                    }
                }
            }
        });
    });
    for i in 1..=n {
        assert_eq!(tree.get(addr(i)), Some(owner(i as u64)));
    }
    // SAFETY: every node came from SyncNodes; no lookups follow.
    unsafe { tree.release_nodes(&SyncNodes) };
}

#[derive(Clone, Debug)]
enum Op {
    Insert(usize, u64),
    Remove(usize),
    Get(usize),
}

impl quickcheck::Arbitrary for Op {
    fn arbitrary(g: &mut quickcheck::Gen) -> Op {
        // Addresses from a few clusters, so that nodes are shared and collisions happen.
        let cluster = *g
            .choose(&[
                0usize,
                0x7f00_0000_0000,
                0x1_0000_0000_0000,
                (1 << 57) - (64 << SHIFT),
            ])
            .unwrap();
        let a =
            cluster + ((usize::arbitrary(g) % 64) << SHIFT) + usize::arbitrary(g) % (1 << SHIFT);
        match u8::arbitrary(g) % 3 {
            0 => Op::Insert(a, u64::arbitrary(g) % 1000),
            1 => Op::Remove(a),
            _ => Op::Get(a),
        }
    }
}

#[test]
fn tree_matches_a_btreemap() {
    fn prop(ops: Vec<Op>) -> TestResult {
        let nodes = TestNodes::default();
        let mut tree = Tree::new();
        let mut model = BTreeMap::new();
        for op in ops {
            match op {
                Op::Insert(a, v) => {
                    tree.insert(a, owner(v), &nodes).unwrap();
                    model.insert(a >> SHIFT, owner(v));
                }
                Op::Remove(a) => {
                    tree.remove(a);
                    model.remove(&(a >> SHIFT));
                }
                Op::Get(a) => {
                    if tree.get(a) != model.get(&(a >> SHIFT)).copied() {
                        return TestResult::error(format!("lookup of {a:#x} disagrees"));
                    }
                }
            }
        }
        for (&key, &v) in &model {
            if tree.get(key << SHIFT) != Some(v) {
                return TestResult::error("final contents disagree");
            }
        }
        // SAFETY: every node came from `nodes`; no lookups follow.
        unsafe { tree.release_nodes(&nodes) };
        TestResult::from_bool(nodes.live.get() == 0)
    }
    QuickCheck::new()
        .tests(quickcheck_tests())
        .quickcheck(prop as fn(Vec<Op>) -> TestResult);
}
