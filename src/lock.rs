//! Locks that allocate nothing and that a `fork` handler can release: [`RawLock`], a flag
//! taken by compare-and-swap, and [`SpinLock`], a value behind one.
//!
//! `std::sync::Mutex` would do for mutual exclusion, but a child forked while another
//! thread holds it inherits it held, and it cannot be released from outside; these can
//! ([`RawLock::force_unlock`]). Waiters spin briefly, then yield the processor: every
//! critical section here is short (a few list operations, or one system call at most).
//!
//! Taking and releasing a [`RawLock`] are sequentially consistent, because heaps use the flag
//! in a handshake with their remote-free list (see `heap.rs`). A [`SpinLock`] guards nothing
//! of the kind and releases with an ordinary release store (on x86, a plain store where the
//! sequentially consistent one is a locked exchange).

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

/// A lock without a value.
#[derive(Debug, Default)]
pub(crate) struct RawLock {
    locked: AtomicBool,
}

impl RawLock {
    pub(crate) const fn new() -> RawLock {
        RawLock {
            locked: AtomicBool::new(false),
        }
    }

    /// Takes the lock if it is free.
    #[inline]
    pub(crate) fn try_lock(&self) -> bool {
        !self.locked.load(Ordering::Relaxed)
            && self
                .locked
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
    }

    /// Takes the lock, waiting for it.
    #[inline]
    pub(crate) fn lock(&self) {
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
            std::thread::yield_now();
        }
    }

    /// Whether someone holds the lock.
    #[inline]
    pub(crate) fn is_locked(&self) -> bool {
        self.locked.load(Ordering::SeqCst)
    }

    /// Releases the lock.
    ///
    /// # Safety
    /// The caller holds it.
    #[inline]
    pub(crate) unsafe fn unlock(&self) {
        self.locked.store(false, Ordering::SeqCst);
    }

    /// Releases the lock, ordering only what the critical section did before the release (no
    /// handshake relies on this release).
    ///
    /// # Safety
    /// The caller holds it.
    #[inline]
    unsafe fn unlock_release(&self) {
        self.locked.store(false, Ordering::Release);
    }

    /// Releases the lock whoever holds it: for a forked child, where the holder does not exist.
    ///
    /// # Safety
    /// No thread of this process is inside the critical section.
    pub(crate) unsafe fn force_unlock(&self) {
        self.locked.store(false, Ordering::SeqCst);
    }
}

/// A value behind a [`RawLock`].
pub(crate) struct SpinLock<T> {
    raw: RawLock,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out the value to one thread at a time.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub(crate) const fn new(value: T) -> SpinLock<T> {
        SpinLock {
            raw: RawLock::new(),
            value: UnsafeCell::new(value),
        }
    }

    #[inline]
    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        self.raw.lock();
        SpinGuard { lock: self }
    }

    /// The lock itself, for `fork` handlers.
    pub(crate) fn raw(&self) -> &RawLock {
        &self.raw
    }

    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }
}

/// Access to a [`SpinLock`]'s value; releases the lock when dropped.
pub(crate) struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock, and `&mut self` makes this the only access.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the guard holds the lock.
        unsafe { self.lock.raw.unlock_release() }
    }
}
