//! # pymalloc-radix
//!
//! A three-level radix tree from addresses to owners, in the spirit of the one CPython's
//! obmalloc uses to answer "is this address one of ours?". The address space is cut into
//! *granules* of `1 << GRANULE_SHIFT` bytes (pymalloc's arenas); each granule maps to at most
//! one owner, a `NonNull<T>`. The tree knows nothing of what an owner is.
//!
//! It covers the low [`ADDRESS_BITS`] = 57 bits of address: every user-space address the
//! kernel hands out on x86-64 (5-level paging included) and aarch64 (at most 52 bits). Any
//! other address is answered with a clean "not ours".
//!
//! Invariants:
//! - T1 interior nodes are created on demand, from a [`NodeAlloc`] (never from the allocator
//!   the tree serves), zero-filled, and never freed while the tree lives;
//! - T2 [`RadixTree::get`] takes no lock: it only loads pointers with `Acquire`, pairing with
//!   the `Release` stores and compare-exchanges that publish nodes and owners;
//! - T3 writers ([`RadixTree::insert`], [`RadixTree::remove`]) of one granule are serialised
//!   by the caller (pymalloc holds its arena lock); writers of different granules may race:
//!   node creation is a compare-exchange, and the loser gives its node back.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
// An allocator must never unwind: its non-test code neither indexes nor unwraps unchecked.
#![cfg_attr(
    not(test),
    warn(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Address bits covered by the tree.
pub const ADDRESS_BITS: u32 = 57;

/// Where interior nodes come from: zero-filled memory that is not the allocator's own.
///
/// # Safety
/// `alloc_node` returns either `None` or a pointer to `bytes` zero-filled, writable bytes,
/// aligned to at least 8, that stay valid until given to `free_node`.
pub unsafe trait NodeAlloc {
    /// Zero-filled memory for one node of `bytes` bytes.
    fn alloc_node(&self, bytes: usize) -> Option<NonNull<u8>>;
    /// Gives a node back.
    ///
    /// # Safety
    /// `node` came from `alloc_node(bytes)` on this allocator and is no longer used.
    unsafe fn free_node(&self, node: NonNull<u8>, bytes: usize);
}

/// Why an insert failed; the tree is unchanged either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertError {
    /// The address is beyond [`ADDRESS_BITS`].
    OutOfRange,
    /// The node allocator refused memory for a node.
    NoMemory,
}

/// A node: `1 << bits` atomic pointers to the next level (or, in a leaf, to owners).
type Slot = AtomicPtr<u8>;

/// The radix tree. `GRANULE_SHIFT` is the log2 of the bytes each entry covers.
pub struct RadixTree<T, const GRANULE_SHIFT: u32> {
    root: AtomicPtr<u8>,
    /// Bytes of nodes held, for statistics.
    node_bytes: AtomicUsize,
    _owner: PhantomData<*mut T>,
}

// SAFETY: the tree holds only atomics; owners are opaque pointers it never dereferences.
unsafe impl<T, const S: u32> Sync for RadixTree<T, S> {}
// SAFETY: as above; moving the tree moves only the root pointer and a counter.
unsafe impl<T, const S: u32> Send for RadixTree<T, S> {}

impl<T, const GRANULE_SHIFT: u32> Default for RadixTree<T, GRANULE_SHIFT> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const GRANULE_SHIFT: u32> RadixTree<T, GRANULE_SHIFT> {
    const KEY_BITS: u32 = ADDRESS_BITS - GRANULE_SHIFT;
    /// Bits resolved by the leaf and the middle level; the root takes the rest.
    const LOW_BITS: u32 = Self::KEY_BITS / 3;
    const ROOT_BITS: u32 = Self::KEY_BITS - 2 * Self::LOW_BITS;

    /// An empty tree; it allocates nothing until the first insert.
    pub const fn new() -> Self {
        RadixTree {
            root: AtomicPtr::new(ptr::null_mut()),
            node_bytes: AtomicUsize::new(0),
            _owner: PhantomData,
        }
    }

    /// Bytes of a node with `bits` index bits.
    const fn node_bytes(bits: u32) -> usize {
        (1usize << bits) * size_of::<Slot>()
    }

    /// Bytes of interior nodes currently held by the tree.
    pub fn node_bytes_in_use(&self) -> usize {
        self.node_bytes.load(Ordering::Relaxed)
    }

    /// Splits an address into (root, middle, leaf) indices; `None` beyond `ADDRESS_BITS`.
    #[inline]
    fn split(addr: usize) -> Option<[usize; 3]> {
        if (addr as u64) >> ADDRESS_BITS != 0 {
            return None;
        }
        let key = addr >> GRANULE_SHIFT;
        let low_mask = (1usize << Self::LOW_BITS) - 1;
        Some([
            key >> (2 * Self::LOW_BITS),
            (key >> Self::LOW_BITS) & low_mask,
            key & low_mask,
        ])
    }

    /// The entry `index` of `node`.
    ///
    /// # Safety
    /// `node` is a live node with more than `index` entries.
    #[inline]
    unsafe fn entry<'a>(node: *mut u8, index: usize) -> &'a Slot {
        // SAFETY: live, zero-initialised node of atomics, index in bounds (caller).
        unsafe { &*node.cast::<Slot>().add(index) }
    }

    /// The owner of the granule holding `addr`, if any. Takes no lock (T2).
    #[inline]
    pub fn get(&self, addr: usize) -> Option<NonNull<T>> {
        let [i, j, k] = Self::split(addr)?;
        let root = NonNull::new(self.root.load(Ordering::Acquire))?;
        // SAFETY: published nodes are live (T1) and sized for their level's indices.
        unsafe {
            let mid = NonNull::new(Self::entry(root.as_ptr(), i).load(Ordering::Acquire))?;
            let leaf = NonNull::new(Self::entry(mid.as_ptr(), j).load(Ordering::Acquire))?;
            NonNull::new(Self::entry(leaf.as_ptr(), k).load(Ordering::Acquire).cast())
        }
    }

    /// Loads `slot`, or installs a new zeroed node of `bits` bits there. `None` if the node
    /// allocator fails.
    fn child(&self, slot: &AtomicPtr<u8>, bits: u32, nodes: &impl NodeAlloc) -> Option<*mut u8> {
        let current = slot.load(Ordering::Acquire);
        if !current.is_null() {
            return Some(current);
        }
        let bytes = Self::node_bytes(bits);
        let fresh = nodes.alloc_node(bytes)?.as_ptr();
        match slot.compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                self.node_bytes.fetch_add(bytes, Ordering::Relaxed);
                Some(fresh)
            }
            Err(winner) => {
                // SAFETY: `fresh` came from `alloc_node(bytes)` and was never published.
                unsafe { nodes.free_node(NonNull::new_unchecked(fresh), bytes) };
                Some(winner)
            }
        }
    }

    /// Maps the granule holding `addr` to `owner`, creating nodes as needed. Fails (and
    /// changes nothing visible) if the address is beyond the tree or a node cannot be had.
    pub fn insert(
        &self,
        addr: usize,
        owner: NonNull<T>,
        nodes: &impl NodeAlloc,
    ) -> Result<(), InsertError> {
        let [i, j, k] = Self::split(addr).ok_or(InsertError::OutOfRange)?;
        let root = self
            .child(&self.root, Self::ROOT_BITS, nodes)
            .ok_or(InsertError::NoMemory)?;
        // SAFETY: `root` and `mid` are live nodes of their level (T1); indices come from split.
        let result = unsafe {
            self.child(Self::entry(root, i), Self::LOW_BITS, nodes)
                .and_then(|mid| self.child(Self::entry(mid, j), Self::LOW_BITS, nodes))
                .map(|leaf| Self::entry(leaf, k).store(owner.as_ptr().cast(), Ordering::Release))
        };
        result.ok_or(InsertError::NoMemory)
    }

    /// Unmaps the granule holding `addr`. Nodes stay (T1).
    pub fn remove(&self, addr: usize) {
        let Some([i, j, k]) = Self::split(addr) else {
            return;
        };
        let root = self.root.load(Ordering::Acquire);
        if root.is_null() {
            return;
        }
        // SAFETY: published nodes are live (T1) and indices come from split.
        unsafe {
            let mid = Self::entry(root, i).load(Ordering::Acquire);
            if mid.is_null() {
                return;
            }
            let leaf = Self::entry(mid, j).load(Ordering::Acquire);
            if !leaf.is_null() {
                Self::entry(leaf, k).store(ptr::null_mut(), Ordering::Release);
            }
        }
    }

    /// Visits every node (pointer, bytes), children before their parents.
    ///
    /// # Safety
    /// No node may be freed during the walk.
    unsafe fn for_each_node(&self, mut f: impl FnMut(*mut u8, usize)) {
        let root = self.root.load(Ordering::Acquire);
        if root.is_null() {
            return;
        }
        for i in 0..1usize << Self::ROOT_BITS {
            // SAFETY: live nodes (T1), indices within each level's size.
            let mid = unsafe { Self::entry(root, i) }.load(Ordering::Acquire);
            if mid.is_null() {
                continue;
            }
            for j in 0..1usize << Self::LOW_BITS {
                // SAFETY: as above.
                let leaf = unsafe { Self::entry(mid, j) }.load(Ordering::Acquire);
                if !leaf.is_null() {
                    f(leaf, Self::node_bytes(Self::LOW_BITS));
                }
            }
            f(mid, Self::node_bytes(Self::LOW_BITS));
        }
        f(root, Self::node_bytes(Self::ROOT_BITS));
    }

    /// Gives every node back to `nodes` and empties the tree.
    ///
    /// # Safety
    /// Every node came from `nodes`, and no lookup runs concurrently or later uses an owner
    /// found before this call.
    pub unsafe fn release_nodes(&mut self, nodes: &impl NodeAlloc) {
        // SAFETY: children are visited before parents, so a node is freed only after the walk
        // has read all its entries; each came from `nodes` with these sizes (caller).
        unsafe {
            self.for_each_node(|node, bytes| nodes.free_node(NonNull::new_unchecked(node), bytes));
        }
        self.root.store(ptr::null_mut(), Ordering::Release);
        self.node_bytes.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
