//! What pymalloc hooks into the process for the global allocator: `fork` handlers, and the
//! statistics at exit that `PYMALLOC_STATS` asks for. Both are registered when the program
//! (or the library holding pymalloc) is loaded — an `.init_array` entry, before any of the
//! program's own code runs — and else on the first thread binding (`thread.rs`).
//!
//! `fork`: handlers registered with `pthread_atfork` take the fallback heap and the shared
//! lock before the process is copied and release them after, in parent and child, so the
//! child can allocate at once. Registered before the program's handlers, ours *prepare* last
//! (the program's may allocate, or wait for a thread that is allocating) and release first
//! in parent and child (the program's may allocate there too) — `pthread_atfork` runs
//! prepare handlers in the reverse order of registration and the others in order.
//!
//! Statistics at exit: an `atexit` handler, registered before the program's own, so it runs
//! after them, when the program has freed what it frees. It writes to a copy of stderr made
//! when it is registered, since programs may close stderr before exit (GNU coreutils do).

use core::ffi::c_int;
use core::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use crate::global::GLOBAL;
use crate::options::{self, StatsAtExit};
use crate::report;

static FORK_HANDLERS: AtomicBool = AtomicBool::new(false);
static EXIT_STATS: AtomicBool = AtomicBool::new(false);

/// Where the statistics go at exit: the copy of stderr; -1 for none.
static STATS_FD: AtomicI32 = AtomicI32::new(-1);

/// An `.init_array` entry runs when the program (or the library holding pymalloc) is loaded,
/// before the constructors of code loaded after it and before `main`.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static AT_LOAD: extern "C" fn() = {
    extern "C" fn at_load() {
        register_hooks();
    }
    at_load
};

/// Registers the `fork` handlers, once, and the statistics at exit if `PYMALLOC_STATS` asks
/// for them, once the environment can be read (see the module's text); later calls do
/// nothing. `libpymalloc_override.so` calls it when it is loaded.
pub fn register_hooks() {
    register_fork_handlers();
    register_exit_stats();
}

fn register_fork_handlers() {
    if FORK_HANDLERS.swap(true, Ordering::Relaxed) {
        return;
    }
    extern "C" fn prepare() {
        GLOBAL.fork_prepare();
    }
    extern "C" fn parent() {
        // SAFETY: runs after `prepare`, in the thread that forked.
        unsafe { GLOBAL.fork_parent() }
    }
    extern "C" fn child() {
        // SAFETY: runs in the child after `prepare`.
        unsafe { GLOBAL.fork_child() }
    }
    // SAFETY: the handlers are plain functions that neither allocate nor unwind. Failure
    // (ENOMEM) leaves fork unprotected, as it was before; nothing else depends on it.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}

fn register_exit_stats() {
    if EXIT_STATS.load(Ordering::Relaxed) {
        return;
    }
    let Some(options) = options::from_environment() else {
        return; // not yet: the next binding tries again
    };
    if EXIT_STATS.swap(true, Ordering::Relaxed) || options.stats == StatsAtExit::Off {
        return;
    }
    // SAFETY: duplicating a descriptor has no memory-safety conditions; a failure is -1.
    let fd = unsafe { libc::fcntl(libc::STDERR_FILENO, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return;
    }
    STATS_FD.store(fd, Ordering::Relaxed);
    // SAFETY: a plain function that neither allocates nor unwinds. If registering fails
    // (ENOMEM), there are no statistics at exit; nothing else depends on it.
    unsafe { libc::atexit(write_exit_stats) };
}

/// The `atexit` handler: the statistics, in the form the options ask for (read already: the
/// handler is registered only once they were), to the copy of stderr.
extern "C" fn write_exit_stats() {
    let fd: c_int = STATS_FD.load(Ordering::Relaxed);
    let stats = GLOBAL.stats();
    match options::from_environment().map(|o| o.stats) {
        Some(StatsAtExit::Table) => report::to_fd(fd, format_args!("{stats}\n")),
        Some(StatsAtExit::Json) => report::to_fd(fd, format_args!("{}\n", stats.json())),
        Some(StatsAtExit::Off) | None => {}
    }
}
