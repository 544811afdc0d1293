//! [`SpinLock`]: a value behind a `pymalloc_pool::RawLock`, a lock that allocates nothing and
//! that a `fork` handler can release. It guards no handshake (unlike a heap's claim, see
//! `pymalloc_pool::Inbox`), so it releases with an ordinary release store (on x86, a plain
//! store where the sequentially consistent one is a locked exchange).

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};

use pymalloc_pool::RawLock;

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
