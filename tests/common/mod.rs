//! Helpers shared by the integration tests and the examples: fill patterns, RSS, and the
//! multi-thread churn workload. Each user includes what it needs; the rest is unused there.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::sync::{Barrier, Mutex};

/// The bytes of a block that [`fill`] writes: all of the first 256, one per page up to 64 KiB,
/// one per 64 KiB beyond, and the last. A big block thus has some of its pages touched, not
/// all; the positions below any given length do not depend on the block's size, so a prefix
/// kept by a realloc can be checked.
fn sample_positions(size: usize) -> impl Iterator<Item = usize> {
    let head = 0..size.min(256);
    let pages = (4096..size.min(64 << 10)).step_by(4096);
    let far = ((64 << 10)..size).step_by(64 << 10);
    head.chain(pages).chain(far).chain(size.checked_sub(1))
}

fn pattern(seed: u64, i: usize) -> u8 {
    (seed
        .wrapping_add(i as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        >> 56) as u8
}

/// Writes the block's pattern for `seed`.
///
/// # Safety
/// `ptr` points to `size` writable bytes.
pub unsafe fn fill(ptr: *mut u8, size: usize, seed: u64) {
    for i in sample_positions(size) {
        // SAFETY: i < size (caller).
        unsafe { ptr.add(i).write(pattern(seed, i)) };
    }
}

/// Whether a block of `size` bytes filled for `seed` still holds its pattern.
///
/// # Safety
/// `ptr` points to `size` readable bytes.
pub unsafe fn holds(ptr: *const u8, size: usize, seed: u64) -> bool {
    // SAFETY: as the caller guarantees.
    unsafe { holds_prefix(ptr, size, size, seed) }
}

/// Whether the first `len` bytes of a block once filled with `size` bytes for `seed` (and
/// since moved or resized) still hold their pattern.
///
/// # Safety
/// `ptr` points to `len` readable bytes.
pub unsafe fn holds_prefix(ptr: *const u8, size: usize, len: usize, seed: u64) -> bool {
    // SAFETY: i < len (caller).
    sample_positions(size)
        .filter(|&i| i < len)
        .all(|i| unsafe { ptr.add(i).read() } == pattern(seed, i))
}

/// Resident anonymous memory of this process, in bytes.
pub fn rss_bytes() -> usize {
    // Anonymous memory only: file-backed pages (the test binary's own code and debug
    // information, paged in as it runs) say nothing about the allocator.
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("RssAnon in /proc/self/status");
    kib << 10
}

/// The anonymous mappings of this process holding at least `min_rss` bytes, a line each
/// (address range, size, resident bytes, and whether it is arena-shaped: 2 MiB at a 2 MiB
/// boundary), for a test that finds RSS higher than it expects to say where it is.
pub fn large_anonymous_mappings(min_rss: usize) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut out = String::new();
    let mut range = None;
    let mut file_backed = false;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                range = Some((lo, hi));
                // Fields: range, perms, offset, device, inode, path; inode 0 is anonymous.
                file_backed = fields.nth(3).is_some_and(|inode| inode != "0");
                continue;
            }
        }
        if let (Some((lo, hi)), "Rss:", false) = (range, first, file_backed) {
            let rss = fields
                .next()
                .and_then(|k| k.parse::<usize>().ok())
                .unwrap_or(0)
                << 10;
            if rss >= min_rss {
                let arena = hi - lo == 2 << 20 && lo % (2 << 20) == 0;
                out += &format!(
                    "{lo:#x}-{hi:#x}: {} KiB mapped, {} KiB resident{}\n",
                    (hi - lo) >> 10,
                    rss >> 10,
                    if arena { " (arena-shaped)" } else { "" }
                );
            }
        }
    }
    out
}

/// A small, fast, deterministic generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Log-uniform in `lo..=hi`.
    pub fn log_uniform(&mut self, lo: usize, hi: usize) -> usize {
        let (a, b) = ((lo as f64).ln(), (hi as f64 + 1.0).ln());
        let x = a + (b - a) * (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (x.exp() as usize).clamp(lo, hi)
    }
}

/// A layout from the churn's distribution: mostly small, some medium, a few large up to
/// `max_size`; alignments mostly ≤ 16, some up to `max_align`.
pub fn random_layout(rng: &mut Rng, max_size: usize, max_align: usize) -> Layout {
    let size = match rng.below(100) {
        0..80 => rng.log_uniform(1, 512),
        80..95 => rng.log_uniform(513, 64 << 10),
        _ => rng.log_uniform(64 << 10, max_size),
    };
    let align_log = if rng.below(100) < 85 {
        rng.below(5)
    } else {
        rng.below(max_align.trailing_zeros() as u64 + 1)
    };
    Layout::from_size_align(size, 1 << align_log).unwrap()
}

/// A live block in the churn.
pub struct Block {
    ptr: usize,
    layout: Layout,
    seed: u64,
}

/// What a churn run saw.
#[derive(Debug, Default)]
pub struct ChurnReport {
    pub ops: u64,
    pub remote_frees: u64,
    pub corrupt: u64,
    pub failed_allocs: u64,
}

/// `threads` threads each do `ops` random operations on `slots` slots of their own: each op
/// frees (after checking its pattern) or hands to the next thread (one time in ten) the
/// block in a random slot, and allocates a new one there. Blocks handed over are checked and
/// freed by the receiving thread. Everything is freed at the end.
pub fn churn<A: GlobalAlloc + Sync>(
    a: &A,
    threads: usize,
    ops: u64,
    slots: usize,
    max_size: usize,
    max_align: usize,
) -> ChurnReport {
    let inboxes: Vec<Mutex<Vec<Block>>> = (0..threads).map(|_| Mutex::new(Vec::new())).collect();
    let report = Mutex::new(ChurnReport::default());
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (inboxes, report, barrier) = (&inboxes, &report, &barrier);
                s.spawn(move || {
                    let mut r = ChurnReport::default();
                    let mut rng = Rng::new(t as u64 + 1);
                    let free = |b: Block, r: &mut ChurnReport| {
                        // SAFETY: `b` is a live block of `a` with this layout, filled with its seed.
                        unsafe {
                            if !holds(b.ptr as *const u8, b.layout.size(), b.seed) {
                                r.corrupt += 1;
                            }
                            a.dealloc(b.ptr as *mut u8, b.layout);
                        }
                    };
                    let mut mine: Vec<Option<Block>> = (0..slots).map(|_| None).collect();
                    for op in 0..ops {
                        let i = rng.below(slots as u64) as usize;
                        if let Some(b) = mine[i].take() {
                            if rng.below(10) == 0 {
                                inboxes[(t + 1) % threads].lock().unwrap().push(b);
                                r.remote_frees += 1;
                            } else {
                                free(b, &mut r);
                            }
                        }
                        let layout = random_layout(&mut rng, max_size, max_align);
                        // SAFETY: the layout has a non-zero size.
                        let ptr = unsafe { a.alloc(layout) };
                        if ptr.is_null() {
                            r.failed_allocs += 1;
                        } else {
                            let seed = rng.next();
                            // SAFETY: a fresh block of layout.size() bytes.
                            unsafe { fill(ptr, layout.size(), seed) };
                            if ptr as usize % layout.align() != 0 {
                                r.corrupt += 1;
                            }
                            mine[i] = Some(Block {
                                ptr: ptr as usize,
                                layout,
                                seed,
                            });
                        }
                        if op % 64 == 0 {
                            let received = std::mem::take(&mut *inboxes[t].lock().unwrap());
                            received.into_iter().for_each(|b| free(b, &mut r));
                        }
                        r.ops += 1;
                    }
                    mine.into_iter().flatten().for_each(|b| free(b, &mut r));
                    barrier.wait(); // nobody sends any more
                    let received = std::mem::take(&mut *inboxes[t].lock().unwrap());
                    received.into_iter().for_each(|b| free(b, &mut r));
                    let mut total = report.lock().unwrap();
                    total.ops += r.ops;
                    total.remote_frees += r.remote_frees;
                    total.corrupt += r.corrupt;
                    total.failed_allocs += r.failed_allocs;
                })
            })
            .collect();
        // Joined one by one, not by the scope's end: that returns once each closure is done,
        // before the thread's exit (its thread-local destructors, its heap handed on, its
        // stack given back), so memory measured right after would still hold some of it.
        for h in handles {
            h.join().unwrap();
        }
    });
    report.into_inner().unwrap()
}

/// A pymalloc instance seen through `GlobalAlloc`, so the churn can drive instances that are
/// not the process's global allocator.
pub struct Via<'a, P: pymalloc::Platform>(pub &'a pymalloc::Allocator<P>);

// SAFETY: forwards to the instance, whose methods have GlobalAlloc's contract.
unsafe impl<P: pymalloc::Platform> GlobalAlloc for Via<'_, P> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller keeps GlobalAlloc's contract.
        unsafe { self.0.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.0.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller keeps GlobalAlloc's contract.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

/// Peak resident set size of this process so far (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

/// Runs `test` in a child process with `TEST_CHILD_OF_PYMALLOC` set, expecting it to abort with a
/// message containing `expected` on standard error (under the `secure` feature, which finds
/// most damage first with checks of its own, a message of those checks will do).
pub fn expect_abort(test: &str, expected: &str) {
    if in_child() {
        return;
    }
    let out = run_in_child(test);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGABRT),
        "{test}: {:?}\n{stderr}",
        out.status
    );
    let secure = cfg!(feature = "secure") && stderr.contains("pymalloc: fatal: secure: ");
    assert!(
        stderr.contains(expected) || secure,
        "{test}: stderr was:\n{stderr}"
    );
}

pub fn in_child() -> bool {
    std::env::var_os("TEST_CHILD_OF_PYMALLOC").is_some()
}

/// Runs the test named `test` alone in a child process of this test binary, with
/// `TEST_CHILD_OF_PYMALLOC` set (so [`in_child`] is true there), and returns how it ended.
pub fn run_in_child(test: &str) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("TEST_CHILD_OF_PYMALLOC", "1")
        .output()
        .unwrap()
}

/// Runs the test named `test` again in a child process (where [`in_child`] is true) and
/// checks that it passes there within `limit`; a child still running then is killed and the
/// test fails: it hung. For tests of what could deadlock the allocator, which would take
/// the test harness with it.
pub fn passes_in_child_within(test: &str, limit: std::time::Duration) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("TEST_CHILD_OF_PYMALLOC", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{test}: still running after {limit:?}, it hung:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{test}: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
