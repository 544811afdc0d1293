//! [`RawLock`]: a flag taken by compare-and-swap, which allocates nothing and which a `fork`
//! handler can release ([`RawLock::force_unlock`]): the claim of a heap, and what the
//! `pymalloc` crate's locks are built on. Its atomics come through the `sync` switch, so
//! the hand-off between a heap's claim and its remote lists (`inbox.rs`) is model-checked
//! with loom.
//!
//! `std::sync::Mutex` would do for mutual exclusion, but a child forked while another thread
//! holds it inherits it held, and it cannot be released from outside. Waiters spin briefly,
//! then yield the processor: every critical section is short (a few list operations, or one
//! system call at most).
//!
//! Taking and releasing are sequentially consistent, because heaps use the flag in a
//! handshake with their remote lists ([`crate::Inbox`]); [`RawLock::unlock_release`] is for
//! locks that guard nothing of the kind.

use crate::sync::{AtomicBool, Ordering};

/// A lock without a value.
#[derive(Debug, Default)]
pub struct RawLock {
    locked: AtomicBool,
}

impl RawLock {
    /// A free lock.
    #[cfg(not(loom))]
    pub const fn new() -> RawLock {
        RawLock {
            locked: AtomicBool::new(false),
        }
    }

    /// A free lock (loom's atomics cannot be built in a `const fn`).
    #[cfg(loom)]
    pub fn new() -> RawLock {
        RawLock {
            locked: AtomicBool::new(false),
        }
    }

    /// Takes the lock if it is free.
    #[inline]
    pub fn try_lock(&self) -> bool {
        !self.locked.load(Ordering::Relaxed)
            && self
                .locked
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
    }

    /// Takes the lock, waiting for it.
    #[inline]
    pub fn lock(&self) {
        if !self.try_lock() {
            self.lock_contended();
        }
    }

    #[cold]
    fn lock_contended(&self) {
        loop {
            for _ in 0..64 {
                core::hint::spin_loop();
                if self.try_lock() {
                    return;
                }
            }
            #[cfg(loom)]
            loom::thread::yield_now();
            // SAFETY: sched_yield has no preconditions.
            #[cfg(not(loom))]
            unsafe {
                libc::sched_yield()
            };
        }
    }

    /// Whether someone holds the lock.
    #[inline]
    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::SeqCst)
    }

    /// Releases the lock.
    ///
    /// # Safety
    /// The caller holds it.
    #[inline]
    pub unsafe fn unlock(&self) {
        self.locked.store(false, Ordering::SeqCst);
    }

    /// Releases the lock, ordering only what the critical section did before the release (no
    /// handshake relies on this release).
    ///
    /// # Safety
    /// The caller holds it.
    #[inline]
    pub unsafe fn unlock_release(&self) {
        self.locked.store(false, Ordering::Release);
    }

    /// Releases the lock whoever holds it: for a forked child, where the holder does not exist.
    ///
    /// # Safety
    /// No thread of this process is inside the critical section.
    pub unsafe fn force_unlock(&self) {
        self.locked.store(false, Ordering::SeqCst);
    }
}
