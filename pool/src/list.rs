//! [`List`]: pymalloc's one intrusive doubly-linked list, of pool descriptors (a heap's
//! usable pools of a class, `PoolList`) and of arena headers (the arena manager's lists and
//! buckets). A node carries a [`Links`] for each list it can be in; a [`Chain`] names which
//! one a list uses, at compile time.
//!
//! A list is one pointer, its head, so that the heap's array of lists stays one word per class
//! on the allocation fast path. The tail is found in O(1) all the same: the head's `prev`
//! points to the last node (and the last node's `next` is null), so a list serves as a stack
//! ([`List::push_front`]) and as a FIFO queue ([`List::push_back`]) alike.
//!
//! Invariants of a list (checked by [`List::check`]):
//! - N1 empty, its head is null; else following `next` from the head reaches every node once
//!   and ends at the tail, whose `next` is null;
//! - N2 each node's `prev` is the node before it, and the head's `prev` is the tail;
//! - N3 a node is in at most one list of each chain, and a node in none has null links.

use core::marker::PhantomData;
use core::ptr::{self, NonNull};

/// A node's links in one list.
pub struct Links<T> {
    prev: *mut T,
    next: *mut T,
}

impl<T> Links<T> {
    /// The links of a node in no list (N3).
    pub const UNLINKED: Links<T> = Links {
        prev: ptr::null_mut(),
        next: ptr::null_mut(),
    };
}

/// Which of a node's [`Links`] a list of `T` uses.
///
/// # Safety
/// [`Chain::links`] returns the same field of the node every time, a field that no other
/// chain of `T` returns and that nothing but the lists of this chain writes.
pub unsafe trait Chain<T> {
    /// The node's links for this chain.
    ///
    /// # Safety
    /// `node` is live.
    unsafe fn links(node: *mut T) -> *mut Links<T>;
}

/// An intrusive doubly-linked list of `T`s through their `C` links. See the module
/// documentation.
pub struct List<T, C: Chain<T>> {
    head: *mut T,
    chain: PhantomData<C>,
}

impl<T, C: Chain<T>> Default for List<T, C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, C: Chain<T>> List<T, C> {
    /// An empty list.
    pub const fn new() -> Self {
        List {
            head: ptr::null_mut(),
            chain: PhantomData,
        }
    }

    /// The first node, if any.
    #[inline(always)]
    pub fn head(&self) -> Option<NonNull<T>> {
        NonNull::new(self.head)
    }

    /// The node after `node`, if any: to walk the list while changing what the nodes hold
    /// (not the list itself).
    ///
    /// # Safety
    /// `node` is live and in this list.
    #[inline]
    pub unsafe fn next(&self, node: NonNull<T>) -> Option<NonNull<T>> {
        // SAFETY: a live node of this list (caller), so its links are this list's (N1).
        NonNull::new(unsafe { (*C::links(node.as_ptr())).next })
    }

    /// Whether the list is empty.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// Links `node` in first.
    ///
    /// # Safety
    /// `node` is live, in no list of this chain; the nodes of the list are live.
    pub unsafe fn push_front(&mut self, node: NonNull<T>) {
        let n = node.as_ptr();
        // SAFETY: `node` and the head are live (caller).
        unsafe {
            if self.head.is_null() {
                *C::links(n) = Links {
                    prev: n,
                    next: ptr::null_mut(),
                };
            } else {
                let head = C::links(self.head);
                *C::links(n) = Links {
                    prev: (*head).prev,
                    next: self.head,
                };
                (*head).prev = n;
            }
        }
        self.head = n;
    }

    /// Links `node` in last.
    ///
    /// # Safety
    /// As [`List::push_front`].
    pub unsafe fn push_back(&mut self, node: NonNull<T>) {
        let n = node.as_ptr();
        if self.head.is_null() {
            // SAFETY: as the caller guarantees.
            return unsafe { self.push_front(node) };
        }
        // SAFETY: `node`, the head and the tail are live (caller, N2).
        unsafe {
            let head = C::links(self.head);
            let tail = (*head).prev;
            *C::links(n) = Links {
                prev: tail,
                next: ptr::null_mut(),
            };
            (*C::links(tail)).next = n;
            (*head).prev = n;
        }
    }

    /// Unlinks `node`, leaving its links null (N3).
    ///
    /// # Safety
    /// `node` is in this list, whose nodes are live.
    pub unsafe fn remove(&mut self, node: NonNull<T>) {
        let n = node.as_ptr();
        // SAFETY: `node` and its neighbours are live nodes of this list (caller).
        unsafe {
            let Links { prev, next } = C::links(n).read();
            crate::debug_ensure!(
                !self.head.is_null()
                    && (n == self.head || (*C::links(prev)).next == n)
                    && (*C::links(if next.is_null() { self.head } else { next })).prev == n,
                "list: the node removed is not in this list (caller's promise)"
            );
            if n == self.head {
                self.head = next;
                if !next.is_null() {
                    (*C::links(next)).prev = prev; // the tail
                }
            } else {
                (*C::links(prev)).next = next;
                let after = if next.is_null() { self.head } else { next };
                (*C::links(after)).prev = prev; // `next`'s, or the head's: a new tail
            }
            *C::links(n) = Links::UNLINKED;
        }
    }

    /// Visits every node from the first, tolerating the removal of the visited one.
    ///
    /// # Safety
    /// Every node of the list is live.
    pub unsafe fn for_each(&self, mut f: impl FnMut(NonNull<T>)) {
        let mut n = self.head;
        while let Some(node) = NonNull::new(n) {
            // SAFETY: a live node (caller); its next link is read before `f` runs.
            n = unsafe { (*C::links(n)).next };
            f(node);
        }
    }

    /// Checks N1 and N2 and returns the length.
    ///
    /// # Safety
    /// Every node of the list is live.
    pub unsafe fn check(&self) -> Result<usize, &'static str> {
        let Some(head) = self.head() else {
            return Ok(0);
        };
        let (mut len, mut before) = (0, ptr::null_mut());
        let mut n = head.as_ptr();
        // SAFETY: nodes of the list are live (caller).
        unsafe {
            while !n.is_null() {
                if n != head.as_ptr() && (*C::links(n)).prev != before {
                    return Err("list: a node's prev is not the node before it");
                }
                len += 1;
                before = n;
                n = (*C::links(n)).next;
            }
            if (*C::links(head.as_ptr())).prev != before {
                return Err("list: the head's prev is not the tail");
            }
        }
        Ok(len)
    }
}
