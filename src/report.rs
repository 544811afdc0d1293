//! Writing text without allocating: a [`fmt::Write`] that gathers bytes in a buffer on the
//! stack and hands each full buffer to a sink — a file descriptor ([`to_fd`]) or a C `FILE`
//! ([`to_file`]). The statistics at exit, `malloc_stats`, `malloc_info` and the warnings use
//! it: they run inside the allocator, or at exit, where allocating could recurse or fail.

use core::ffi::c_int;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};

use pymalloc_pool::write_fd;

/// Bytes gathered before each hand-off to the sink.
const BUFFER: usize = 1024;

/// A [`fmt::Write`] through a stack buffer into `sink`; [`Buffered::finish`] hands on the rest.
pub(crate) struct Buffered<S: FnMut(&[u8])> {
    sink: S,
    buf: [u8; BUFFER],
    len: usize,
}

impl<S: FnMut(&[u8])> Buffered<S> {
    pub(crate) fn new(sink: S) -> Self {
        Buffered {
            sink,
            buf: [0; BUFFER],
            len: 0,
        }
    }

    fn flush(&mut self) {
        if let Some(full) = self.buf.get(..self.len) {
            (self.sink)(full);
        }
        self.len = 0;
    }

    /// Hands what is buffered to the sink.
    pub(crate) fn finish(mut self) {
        self.flush();
    }
}

impl<S: FnMut(&[u8])> Write for Buffered<S> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &byte in s.as_bytes() {
            if self.len == BUFFER {
                self.flush();
            }
            // `flush` empties the buffer, so there is always room: `get_mut` never fails.
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = byte;
                self.len += 1;
            }
        }
        Ok(())
    }
}

/// Writes `args` to the file descriptor `fd` without allocating.
pub(crate) fn to_fd(fd: c_int, args: fmt::Arguments<'_>) {
    let mut out = Buffered::new(|bytes: &[u8]| write_fd(fd, bytes));
    // Formatting into the buffer cannot fail.
    let _ = out.write_fmt(args);
    out.finish();
}

/// Writes `args` to the C stream `file` (with `fwrite`, which may allocate its own buffer
/// the first time; nothing of ours is held then).
///
/// # Safety
/// `file` is an open `FILE`.
#[cfg(target_os = "linux")]
pub(crate) unsafe fn to_file(file: *mut libc::FILE, args: fmt::Arguments<'_>) {
    let mut out = Buffered::new(|bytes: &[u8]| {
        // SAFETY: `file` is open (caller); the pointer and length describe `bytes`.
        unsafe { libc::fwrite(bytes.as_ptr().cast(), 1, bytes.len(), file) };
    });
    let _ = out.write_fmt(args);
    out.finish();
}

/// Writes `pymalloc: fatal: ` and the panic's message and place on a line of stderr, without
/// allocating, and aborts: the panic handler of a program or library built without the
/// standard library around pymalloc (`libpymalloc_override.so`). pymalloc's own code never
/// panics; this is for whatever else shares the library.
#[cold]
pub fn report_panic(info: &core::panic::PanicInfo<'_>) -> ! {
    to_fd(
        libc::STDERR_FILENO,
        format_args!("pymalloc: fatal: {info}\n"),
    );
    // SAFETY: abort has no preconditions and never returns.
    unsafe { libc::abort() }
}

/// Writes `pymalloc: warning: ` and `args` on a line of stderr, without allocating.
pub(crate) fn warn(args: fmt::Arguments<'_>) {
    to_fd(
        libc::STDERR_FILENO,
        format_args!("pymalloc: warning: {args}\n"),
    );
}

/// The most warnings [`warn_limited`] writes; then one saying the rest are not.
pub(crate) const MAX_WARNINGS: usize = 16;

/// Warnings written by [`warn_limited`] so far.
static WARNINGS: AtomicUsize = AtomicUsize::new(0);

/// [`warn`], the first [`MAX_WARNINGS`] times in the process: for what may repeat as often as
/// a program allocates.
pub(crate) fn warn_limited(args: fmt::Arguments<'_>) {
    match WARNINGS.fetch_add(1, Ordering::Relaxed) {
        n if n < MAX_WARNINGS => warn(args),
        MAX_WARNINGS => warn(format_args!(
            "{MAX_WARNINGS} such warnings written; no more will be"
        )),
        _ => {}
    }
}
