//! Per-thread heaps under `PyMalloc` as the global allocator: blocks handed between threads
//! and outliving them, thread churn, every size class as a thread's first allocation,
//! allocation in thread-local destructors, and `fork` from a busy multi-threaded process.

mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use common::{Rng, fill, holds, rss_bytes};
use pymalloc::PyMalloc;
use pymalloc_pool::SizeClass;

#[global_allocator]
static GLOBAL: PyMalloc = PyMalloc;

/// A block made by the test itself, filled with a pattern from its seed.
struct Block {
    ptr: usize,
    layout: Layout,
    seed: u64,
}

impl Block {
    fn new(rng: &mut Rng) -> Block {
        let size = match rng.below(10) {
            0 => rng.log_uniform(513, 300 << 10), // medium, sometimes large
            _ => rng.log_uniform(1, 512),
        };
        let align = 1 << rng.below(7);
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: a non-zero layout.
        let ptr = unsafe { GLOBAL.alloc(layout) };
        assert!(!ptr.is_null());
        assert_eq!(ptr as usize % align, 0);
        let seed = rng.next();
        // SAFETY: a fresh block of `size` bytes.
        unsafe { fill(ptr, size, seed) };
        Block {
            ptr: ptr as usize,
            layout,
            seed,
        }
    }

    fn free(self) {
        let ptr = self.ptr as *mut u8;
        // SAFETY: a live block of this layout, filled from this seed, freed once.
        unsafe {
            assert!(holds(ptr, self.layout.size(), self.seed), "block corrupted");
            GLOBAL.dealloc(ptr, self.layout);
        }
    }
}

/// The core stress test at 2 to 32 threads: every round starts new threads, each allocates,
/// frees some of its own blocks, hands others to a random thread of the round through a
/// mailbox, and leaves the rest to outlive it for the next round's threads to free.
#[test]
fn blocks_cross_and_outlive_threads_at_2_to_32_threads() {
    let before = pymalloc::stats();
    for threads in [2usize, 4, 8, 16, 32] {
        let leftovers: Arc<Mutex<Vec<Block>>> = Arc::default();
        for round in 0..4u64 {
            let mailboxes: Arc<Vec<Mutex<Vec<Block>>>> =
                Arc::new((0..threads).map(|_| Mutex::default()).collect());
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (mailboxes, leftovers) = (mailboxes.clone(), leftovers.clone());
                    std::thread::spawn(move || {
                        let mut rng = Rng::new(round * 1000 + t as u64 + threads as u64);
                        let mut mine = Vec::new();
                        for _ in 0..4000 {
                            match rng.below(6) {
                                0 | 1 if !mine.is_empty() => {
                                    let i = rng.below(mine.len() as u64) as usize;
                                    let b: Block = mine.swap_remove(i);
                                    b.free();
                                }
                                2 if !mine.is_empty() => {
                                    let to = rng.below(threads as u64) as usize;
                                    mailboxes[to].lock().unwrap().push(mine.pop().unwrap());
                                }
                                3 => {
                                    let mail = std::mem::take(&mut *mailboxes[t].lock().unwrap());
                                    mail.into_iter().for_each(Block::free);
                                }
                                4 => {
                                    let old = leftovers.lock().unwrap().pop();
                                    if let Some(b) = old {
                                        b.free();
                                    }
                                }
                                _ => mine.push(Block::new(&mut rng)),
                            }
                        }
                        leftovers.lock().unwrap().extend(mine);
                    })
                })
                .collect();
            handles.into_iter().for_each(|h| h.join().unwrap());
            let mut leftovers = leftovers.lock().unwrap();
            for mailbox in mailboxes.iter() {
                leftovers.extend(std::mem::take(&mut *mailbox.lock().unwrap()));
            }
            pymalloc::check().unwrap();
        }
        let all = std::mem::take(&mut *leftovers.lock().unwrap());
        assert!(!all.is_empty(), "no block outlived its thread");
        all.into_iter().for_each(Block::free);
        pymalloc::check().unwrap();
    }
    let after = pymalloc::stats();
    // Other tests of this binary may run meanwhile, so only this one's own balance is exact
    // when it runs alone; the check above is what holds regardless.
    assert!(after.heaps >= 2, "{after}");
    assert!(
        after.heaps <= before.heaps + 32 + 8,
        "heaps are not handed on: {after}"
    );
}

/// 100 000 short threads each allocate blocks and hand them to the main thread, which frees
/// them: heaps are reused, blocks freed after their thread ended go back, RSS stays flat.
#[test]
fn thread_churn_leaves_rss_flat() {
    const THREADS: usize = 100_000;
    let (tx, rx) = mpsc::channel::<Vec<Box<[u8]>>>();
    let mut rss_at = Vec::new();
    for i in 0..THREADS {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let blocks = (0..16).map(|k| vec![k as u8; 24 + k * 40].into_boxed_slice());
            tx.send(blocks.collect()).unwrap();
        })
        .join()
        .unwrap();
        for blocks in rx.try_iter() {
            for (k, b) in blocks.iter().enumerate() {
                assert!(b.iter().all(|&x| x == k as u8));
            }
        }
        if i == THREADS / 10 || i == THREADS - 1 {
            rss_at.push(rss_bytes());
        }
    }
    let stats = pymalloc::stats();
    assert!(
        stats.heaps <= 64,
        "heaps of exited threads are not reused: {stats}"
    );
    let grown = rss_at[1].saturating_sub(rss_at[0]);
    assert!(
        grown <= 4 << 20,
        "RSS grew by {grown} bytes from thread 10 000 to thread 100 000"
    );
}

/// Every size class as the very first allocation of a new thread (a raw pthread, so that
/// nothing else allocates first), freed on the main thread.
#[test]
fn every_class_as_a_new_threads_first_allocation() {
    extern "C" fn first(arg: *mut libc::c_void) -> *mut libc::c_void {
        let size = arg as usize;
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: a non-zero layout; the block is handed back to the spawner.
        let p = unsafe { GLOBAL.alloc(layout) };
        if !p.is_null() {
            // SAFETY: a fresh block of `size` bytes.
            unsafe { fill(p, size, size as u64) };
        }
        p.cast()
    }
    for class in SizeClass::all() {
        let size = class.block_size();
        let mut thread = 0;
        let mut result = std::ptr::null_mut();
        // SAFETY: plain pthread calls with a function that takes and returns a pointer.
        unsafe {
            assert_eq!(
                libc::pthread_create(&mut thread, std::ptr::null(), first, size as *mut _),
                0
            );
            assert_eq!(libc::pthread_join(thread, &mut result), 0);
        }
        let p = result.cast::<u8>();
        assert!(!p.is_null(), "class of {size} B");
        // SAFETY: the block the thread made, of `size` bytes.
        unsafe {
            assert!(holds(p, size, size as u64));
            GLOBAL.dealloc(p, Layout::from_size_align(size, 8).unwrap());
        }
    }
    pymalloc::check().unwrap();
}

struct AllocatesOnDrop(u8);

impl Drop for AllocatesOnDrop {
    fn drop(&mut self) {
        // Runs during thread exit, before the heap's own exit hook (a `pthread` key's
        // destructor, which glibc runs after every `thread_local` destructor).
        let v: Vec<u64> = (0..1000).map(|i| i * self.0 as u64).collect();
        let s = format!("{}", v.iter().sum::<u64>());
        assert!(!s.is_empty());
        KEPT.lock().unwrap().push(v.into_boxed_slice());
    }
}

static KEPT: Mutex<Vec<Box<[u64]>>> = Mutex::new(Vec::new());

thread_local! {
    static BEFORE: AllocatesOnDrop = const { AllocatesOnDrop(1) };
    static AFTER: AllocatesOnDrop = const { AllocatesOnDrop(2) };
}

/// Thread-local destructors that allocate, registered both before the thread's heap is
/// bound and after (both run before its exit hook releases the heap); and a `pthread` key's
/// destructor that allocates, created after the allocator's own key, so that it runs after
/// the exit hook (the thread then uses the fallback heap).
#[test]
fn allocation_in_thread_local_destructors() {
    extern "C" fn allocates_late(value: *mut libc::c_void) {
        let v: Vec<u64> = (0..1000).map(|i| i * value as u64).collect();
        KEPT.lock().unwrap().push(v.into_boxed_slice());
    }
    // The allocator's key exists already: this test binary's threads have allocated.
    drop(vec![0u8; 10]);
    let mut late: libc::pthread_key_t = 0;
    // SAFETY: a new key, with a destructor that neither unwinds nor frees its value.
    let created = unsafe { libc::pthread_key_create(&mut late, Some(allocates_late)) };
    assert_eq!(created, 0);
    for _ in 0..200 {
        std::thread::spawn(move || {
            BEFORE.with(|_| {});
            let v = vec![1u8; 100];
            AFTER.with(|_| {});
            // SAFETY: a live key; the value is only a number (not null, so that it runs).
            unsafe { libc::pthread_setspecific(late, 3 as *const libc::c_void) };
            drop(v);
        })
        .join()
        .unwrap();
    }
    let kept = std::mem::take(&mut *KEPT.lock().unwrap());
    assert_eq!(kept.len(), 600);
    assert!(kept.iter().all(|v| v.len() == 1000));
    drop(kept);
    pymalloc::check().unwrap();
}

/// `fork` while other threads allocate: the child can allocate at once (no lock inherited
/// held) and its allocator is consistent.
#[test]
fn fork_from_a_busy_multi_threaded_process() {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(t);
                let mut live = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    live.push(Block::new(&mut rng));
                    if live.len() > 200 {
                        live.swap_remove(rng.below(200) as usize).free();
                    }
                    if rng.below(1000) == 0 {
                        pymalloc::trim();
                    }
                }
                live.into_iter().for_each(Block::free);
            })
        })
        .collect();
    for _ in 0..100 {
        // SAFETY: the child only allocates, checks and calls `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut rng = Rng::new(99);
            let blocks: Vec<Block> = (0..1000).map(|_| Block::new(&mut rng)).collect();
            blocks.into_iter().for_each(Block::free);
            let code = if pymalloc::check().is_ok() { 0 } else { 1 };
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        let mut waited = 0;
        loop {
            // SAFETY: waiting for our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                break;
            }
            waited += 1;
            if waited > 10_000 {
                // SAFETY: our own child, stuck.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("the forked child did not finish in 10 s (deadlocked?)");
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child failed: status {status:#x}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    workers.into_iter().for_each(|w| w.join().unwrap());
}
