//! The one way allocator code reports a broken invariant: write a message to standard error
//! without allocating, then abort. A global allocator must never unwind, so nothing in the
//! allocator's code paths calls `panic!`, `assert!` or `unwrap()`; it calls [`fatal`].

/// Writes `pymalloc: fatal: <msg>` to standard error with plain `write(2)` calls (no
/// allocation, no formatting machinery, no locks) and aborts the process.
#[cold]
#[inline(never)]
pub fn fatal(msg: &str) -> ! {
    write_fd(libc::STDERR_FILENO, b"pymalloc: fatal: ");
    write_fd(libc::STDERR_FILENO, msg.as_bytes());
    write_fd(libc::STDERR_FILENO, b"\n");
    // SAFETY: abort has no preconditions and never returns.
    unsafe { libc::abort() }
}

/// Checks a cheap invariant; on failure reports `msg` through [`fatal`].
#[inline(always)]
pub fn ensure(condition: bool, msg: &str) {
    if !condition {
        fatal(msg);
    }
}

/// Checks a precondition of an `unsafe fn` — one its callers promise and the release build
/// takes on trust — in builds with debug assertions: on failure, reports `msg` through
/// [`fatal`] (never a panic, which an allocator must not raise). Compiled out otherwise.
#[macro_export]
macro_rules! debug_ensure {
    ($condition:expr, $msg:expr $(,)?) => {
        if cfg!(debug_assertions) && !$condition {
            $crate::fatal($msg);
        }
    };
}

/// Writes all of `bytes` to the file descriptor `fd` with plain `write(2)` calls, as far as
/// it takes them; a failed write drops the rest (there is nowhere to report it).
pub fn write_fd(fd: libc::c_int, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe the live slice `bytes`.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return; // nowhere to report to
        }
        bytes = bytes.get(n as usize..).unwrap_or_default();
    }
}
