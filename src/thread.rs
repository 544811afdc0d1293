//! Thread binding for the global allocator: each thread claims a heap of [`GLOBAL`] on its
//! first allocation and uses it without a lock until it exits; then the heap goes on the
//! stack of unbound heaps, for the next new thread.
//!
//! A thread is in one of four states (its [`StateSlot`]):
//! - *unbound*: no heap yet; the next allocation binds one;
//! - *binding*: setting up. Arming the thread-exit hook may allocate; such a reentrant
//!   call is served by the fallback heap (claimed with a lock), never recursed into binding;
//! - *bound*: the thread's [`HeapSlot`] holds its heap; the fast path is one read of it,
//!   without `__tls_get_addr` (`tls.rs`);
//! - *exited*: the exit hook has released the heap (or none could be armed); calls made by
//!   later destructors use the fallback heap.
//!
//! The exit hook is the destructor of a `pthread` key, not a Rust `thread_local!`: the crate
//! needs no standard library (`tls.rs`), and the hook runs after the thread's `thread_local`
//! destructors, so what they free goes back to the thread's own heap.
//!
//! Blocks outlive their thread: a heap keeps its pools when it is released, its blocks are
//! freed into its remote list from anywhere, and whoever finds the heap unbound collects
//! that list (H4 in `heap.rs`).
//!
//! The first binding also registers the process's hooks (`process.rs`), if loading did not.

use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

use pymalloc_arena::OsPlatform;

use crate::global::GLOBAL;
use crate::heap::HeapCell;
use crate::session::Session;
use crate::tls::{HeapSlot, StateSlot};

const UNBOUND: u8 = 0;
const BINDING: u8 = 1;
const BOUND: u8 = 2;
const EXITED: u8 = 3;

/// The process's `pthread` key whose destructor is the exit hook; `NO_KEY` until created.
static EXIT_KEY: AtomicUsize = AtomicUsize::new(NO_KEY);
const NO_KEY: usize = usize::MAX;

/// The thread-exit hook: a `pthread` key's destructor, run when a thread that bound a heap
/// exits — after the thread's C++ and Rust `thread_local` destructors, which may still
/// allocate and free on its heap. (The main thread's does not run at `exit`: its heap stays
/// bound to the end.) A destructor that allocates after this one uses the fallback heap.
extern "C" fn exit_hook(_value: *mut c_void) {
    StateSlot::set(EXITED);
    if let Some(cell) = HeapSlot::take() {
        // SAFETY: the thread claimed this heap when it bound it, and is done with it.
        GLOBAL.release_heap(unsafe { cell.claimed() });
    }
}

/// The exit hook's key, created on first use; `None` if the process has no key left.
fn exit_key() -> Option<libc::pthread_key_t> {
    let key = EXIT_KEY.load(Ordering::Acquire);
    if key != NO_KEY {
        return libc::pthread_key_t::try_from(key).ok();
    }
    let mut new: libc::pthread_key_t = 0;
    // SAFETY: `new` is a valid place for the key; the destructor neither unwinds nor frees
    // the value it is given (a marker, not memory).
    if unsafe { libc::pthread_key_create(&mut new, Some(exit_hook)) } != 0 {
        return None;
    }
    let Ok(as_word) = usize::try_from(new) else {
        return None;
    };
    match EXIT_KEY.compare_exchange(NO_KEY, as_word, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Some(new),
        Err(theirs) => {
            // Another thread created one first: ours is not needed.
            // SAFETY: `new` was created above and has no values set.
            unsafe { libc::pthread_key_delete(new) };
            libc::pthread_key_t::try_from(theirs).ok()
        }
    }
}

/// A session on the calling thread's heap, if it is bound: the fast path.
#[inline(always)]
pub(crate) fn session() -> Option<Session<'static, OsPlatform>> {
    let cell = HeapSlot::get()?;
    // SAFETY: the thread claimed its heap when binding and holds it until exit; sessions are
    // not nested (a reentrant call while binding uses the fallback heap).
    Some(GLOBAL.session(unsafe { cell.claimed() }))
}

/// Runs `f` for a thread with no heap: binds one, or uses the fallback heap where the thread
/// cannot have one.
#[cold]
#[inline(never)]
pub(crate) fn with_new_session<R>(f: impl FnOnce(&mut Session<'_, OsPlatform>) -> R) -> R {
    match bind() {
        // SAFETY: just bound and claimed, by this thread.
        Some(cell) => f(&mut GLOBAL.session(unsafe { cell.claimed() })),
        None => GLOBAL.with_fallback(f),
    }
}

/// Binds the thread to a heap, unless it is binding already, has exited, or no memory can
/// be had.
fn bind() -> Option<&'static HeapCell> {
    if StateSlot::get() != UNBOUND {
        return None;
    }
    StateSlot::set(BINDING);
    crate::process::register_hooks();
    let Some(claim) = GLOBAL.acquire_heap() else {
        StateSlot::set(UNBOUND);
        return None;
    };
    // Setting the key's value arms the exit hook; it may allocate (keys past the first 32),
    // and that call finds the state `BINDING`. The value is only a marker: not null.
    let cell = claim.cell();
    let armed = exit_key().is_some_and(|key| {
        // SAFETY: `key` is a live key of this process; the value is never dereferenced.
        unsafe { libc::pthread_setspecific(key, ptr::from_ref(cell).cast::<c_void>()) == 0 }
    });
    if !armed {
        // No exit hook can be had (no key left, or no memory for its value): the heap would
        // never be handed on. The thread uses the fallback heap from now on.
        GLOBAL.release_heap(claim);
        StateSlot::set(EXITED);
        return None;
    }
    // The claim stays held until the exit hook releases it.
    HeapSlot::set(cell);
    StateSlot::set(BOUND);
    Some(cell)
}

/// The calling thread's heap, if it has one.
pub(crate) fn current() -> Option<&'static HeapCell> {
    HeapSlot::get()
}
