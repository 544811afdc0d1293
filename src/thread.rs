//! Thread binding for the global allocator: each thread claims a heap of [`GLOBAL`] on its
//! first allocation and uses it without a lock until it exits; then the heap goes on the
//! stack of unbound heaps, for the next new thread.
//!
//! A thread is in one of four states (`STATE`):
//! - *unbound*: no heap yet; the next allocation binds one;
//! - *binding*: setting up. Registering the thread-exit hook may allocate; such a reentrant
//!   call is served by the fallback heap (claimed with a lock), never recursed into binding;
//! - *bound*: the thread's [`HeapSlot`] holds its heap; the fast path is one read of it,
//!   without `__tls_get_addr` (`tls.rs`);
//! - *exited*: the exit hook has released the heap; calls made by later thread-local
//!   destructors use the fallback heap.
//!
//! Blocks outlive their thread: a heap keeps its pools when it is released, its blocks are
//! freed into its remote list from anywhere, and whoever finds the heap unbound collects
//! that list (H4 in `heap.rs`).
//!
//! The first binding also registers the process's hooks (`process.rs`), if loading did not.

use core::cell::Cell;

use pymalloc_arena::OsPlatform;

use crate::global::GLOBAL;
use crate::heap::HeapCell;
use crate::session::Session;
use crate::tls::HeapSlot;

const UNBOUND: u8 = 0;
const BINDING: u8 = 1;
const BOUND: u8 = 2;
const EXITED: u8 = 3;

thread_local! {
    static STATE: Cell<u8> = const { Cell::new(UNBOUND) };
    /// Touched once bound; its destructor hands the heap on at thread exit.
    static EXIT: ExitHook = const { ExitHook };
}

struct ExitHook;

impl Drop for ExitHook {
    fn drop(&mut self) {
        STATE.set(EXITED);
        if let Some(cell) = HeapSlot::take() {
            // SAFETY: the thread claimed this heap when it bound it, and is done with it.
            GLOBAL.release_heap(unsafe { cell.claimed() });
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
    if STATE.get() != UNBOUND {
        return None;
    }
    STATE.set(BINDING);
    crate::process::register_hooks();
    let Some(claim) = GLOBAL.acquire_heap() else {
        STATE.set(UNBOUND);
        return None;
    };
    // Registering the destructor may allocate: that call finds the state `BINDING`.
    if EXIT.try_with(|_| ()).is_err() {
        // Thread-local storage is being torn down: no exit hook can be had.
        GLOBAL.release_heap(claim);
        STATE.set(EXITED);
        return None;
    }
    // The claim stays held until the exit hook releases it.
    let cell = claim.cell();
    HeapSlot::set(cell);
    STATE.set(BOUND);
    Some(cell)
}

/// The calling thread's heap, if it has one.
pub(crate) fn current() -> Option<&'static HeapCell> {
    HeapSlot::get()
}
