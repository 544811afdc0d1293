//! A program with `PyMalloc` as its global allocator: collections, strings, over-aligned
//! types and threads all run on it.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::{in_child, passes_in_child_within};

#[global_allocator]
static GLOBAL: pymalloc::PyMalloc = pymalloc::PyMalloc;

#[test]
fn collections_and_strings_run_on_pymalloc() {
    let before = pymalloc::stats();
    let mut words: HashMap<String, Vec<usize>> = HashMap::new();
    let mut text = String::new();
    for i in 0..200_000usize {
        let word = format!("w{}", i * 7919 % 5003);
        text.push_str(&word);
        text.push(' ');
        words.entry(word).or_default().push(i);
    }
    let mut tree: BTreeMap<String, usize> =
        text.split(' ').map(|w| (w.to_owned(), w.len())).collect();
    tree.retain(|k, _| k.len() % 2 == 0);
    let during = pymalloc::stats();
    assert!(
        during.pooled_blocks > before.pooled_blocks + 10_000,
        "{during}"
    );
    assert!(
        during.large_blocks > before.large_blocks,
        "the text buffer is a large block"
    );
    assert_eq!(words.values().map(Vec::len).sum::<usize>(), 200_000);
    assert!(tree.keys().all(|k| k.len() % 2 == 0));
    let mut v: Vec<u64> = Vec::new();
    for i in 0..3_000_000u64 {
        v.push(i); // realloc growth through every size, small to tens of MB
    }
    assert_eq!(v.iter().sum::<u64>(), 3_000_000 * 2_999_999 / 2);
    drop((words, tree, text, v));
    pymalloc::check().unwrap();
}

#[test]
fn over_aligned_types_get_their_alignment() {
    #[repr(align(64))]
    struct Line([u8; 64]);
    #[repr(align(4096))]
    struct Page([u8; 100]);
    let lines: Vec<Box<Line>> = (0..1000).map(|i| Box::new(Line([i as u8; 64]))).collect();
    let pages: Vec<Box<Page>> = (0..100).map(|i| Box::new(Page([i as u8; 100]))).collect();
    assert!(
        lines
            .iter()
            .all(|l| (&**l as *const Line as usize) % 64 == 0)
    );
    assert!(
        pages
            .iter()
            .all(|p| (&**p as *const Page as usize) % 4096 == 0)
    );
    assert!(
        lines
            .iter()
            .enumerate()
            .all(|(i, l)| l.0.iter().all(|&b| b == i as u8))
    );
    assert!(pages.iter().enumerate().all(|(i, p)| p.0[99] == i as u8));
    pymalloc::check().unwrap();
}

#[test]
fn threads_share_and_free_each_others_data() {
    let shared = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                for round in 0..200 {
                    let batch: Vec<String> = (0..50).map(|i| format!("{t}-{round}-{i}")).collect();
                    let mut s = shared.lock().unwrap();
                    s.push(batch);
                    if s.len() > 20 {
                        s.drain(..10); // freed by whichever thread gets here
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let all = shared.lock().unwrap();
    assert!(all.iter().flatten().all(|s| s.split('-').count() == 3));
    pymalloc::check().unwrap();
}

/// Requests no machine can serve, through every entry point, in a build with overflow checks
/// (the test profile's): each gives null or `Err`, and nothing on the way overflows. An
/// overflow panics while the allocator's lock is held, and the panic's message allocates and
/// waits on that lock forever: so the requests run in a child process that must finish.
#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "needs overflow checks, which the test profile has and release builds lack"
)]
fn huge_requests_fail_cleanly_with_overflow_checks_on() {
    if !in_child() {
        return passes_in_child_within(
            "huge_requests_fail_cleanly_with_overflow_checks_on",
            Duration::from_secs(120),
        );
    }
    let one = std::hint::black_box(usize::MAX);
    assert!(
        std::panic::catch_unwind(|| one + 1).is_err(),
        "this build checks for overflow"
    );
    let max = isize::MAX as usize;
    for len in [
        max,
        max - 1,
        max - 4095,
        max - 4096,
        max - (1 << 20),
        max / 2 + 1,
        1 << 62,
    ] {
        assert!(Vec::<u8>::new().try_reserve_exact(len).is_err(), "{len:#x}");
        assert!(Vec::<u8>::new().try_reserve(len).is_err(), "{len:#x}");
        let mut small = vec![7u8; 100];
        assert!(small.try_reserve_exact(len).is_err(), "{len:#x} more");
        assert!(small.iter().all(|&b| b == 7));
    }
    for align in [1, 16, 64, 4096, 1 << 16, 1 << 21, 1 << 30] {
        for size in [max - (align - 1), max / 2, 1 << 62] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: a layout of non-zero size; nothing is freed.
            unsafe {
                assert!(GLOBAL.alloc(layout).is_null(), "{layout:?}");
                assert!(GLOBAL.alloc_zeroed(layout).is_null(), "{layout:?}");
            }
        }
        let layout = Layout::from_size_align(100, align).unwrap();
        // SAFETY: a live block of `layout`, resized only on success, freed once.
        unsafe {
            let p = GLOBAL.alloc(layout);
            assert!(!p.is_null());
            for new in [max - (align - 1), max / 2, 1 << 62] {
                assert!(
                    GLOBAL.realloc(p, layout, new).is_null(),
                    "{layout:?} to {new:#x}"
                );
            }
            GLOBAL.dealloc(p, layout);
        }
    }
    use pymalloc::c_abi;
    for size in [usize::MAX, usize::MAX - 4096, max, max - 4095, 1 << 62] {
        assert!(c_abi::malloc(size).is_null(), "malloc {size:#x}");
        assert!(c_abi::calloc(1, size).is_null(), "calloc {size:#x}");
        assert!(c_abi::valloc(size).is_null(), "valloc {size:#x}");
        assert!(c_abi::pvalloc(size).is_null(), "pvalloc {size:#x}");
        assert!(
            c_abi::aligned_alloc(1 << 20, size).is_null(),
            "aligned_alloc {size:#x}"
        );
        assert!(
            c_abi::memalign(1 << 20, size).is_null(),
            "memalign {size:#x}"
        );
        let mut out = core::ptr::null_mut();
        // SAFETY: `out` is a valid place for the result.
        let rc = unsafe { c_abi::posix_memalign(&mut out, 4096, size) };
        assert_eq!(rc, libc::ENOMEM, "posix_memalign {size:#x}");
        // SAFETY: a live block, resized only on success, freed once.
        unsafe {
            let p = c_abi::malloc(100);
            assert!(c_abi::realloc(p, size).is_null(), "realloc {size:#x}");
            assert!(c_abi::reallocarray(p, 2, size / 2 + 1).is_null());
            c_abi::free(p);
        }
    }
    assert!(c_abi::calloc(usize::MAX / 2, 3).is_null());
    pymalloc::check().unwrap();
}

/// A reservation the machine cannot back — twice its RAM and swap — is an `Err` from
/// `try_reserve`, and the vector keeps its contents, rather than a buffer that faults when
/// touched. Under `overcommit_memory` 1 the kernel backs anything: nothing to check.
#[test]
fn try_reserve_of_more_than_the_machine_can_back_is_an_error() {
    let Some(too_much) = pymalloc_arena::unbackable_bytes() else {
        eprintln!("overcommit_memory is 1 (or no /proc): every request is backed; skipped");
        return;
    };
    let mut bytes = vec![7u8; 1000];
    assert!(bytes.try_reserve(too_much).is_err());
    assert!(bytes.iter().all(|&b| b == 7));
    let mut empty: Vec<u64> = Vec::new();
    assert!(empty.try_reserve_exact(too_much / 8).is_err());
    let mut text = String::from("kept");
    assert!(text.try_reserve(too_much).is_err());
    assert_eq!(text, "kept");
}

/// Live threads that each touched ~50 size classes for a few blocks, then went idle, hold a
/// few pools each, not one per class: a thread's first blocks of a class come from pools all
/// threads share (`SHARED_BYTES`), and a heap's empty pools are bounded (`PARKED_POOLS`
/// listed, `CACHED_POOLS` kept), however many classes it touched.
#[test]
fn idle_threads_that_touched_many_classes_hold_few_pools() {
    if !in_child() {
        return passes_in_child_within(
            "idle_threads_that_touched_many_classes_hold_few_pools",
            Duration::from_secs(120),
        );
    }
    const THREADS: usize = 256;
    // 16 to 512 bytes in steps of 16, then medium sizes up to 2 240.
    let sizes: Vec<usize> = (0..50)
        .map(|i| {
            if i < 32 {
                16 * (i + 1)
            } else {
                512 + (i - 31) * 96
            }
        })
        .collect();
    let held = |rounds: usize, keep: usize| -> (usize, usize) {
        let barrier = Arc::new(std::sync::Barrier::new(THREADS + 1));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (barrier, sizes) = (barrier.clone(), sizes.clone());
                std::thread::spawn(move || {
                    // The blocks' addresses on the stack, so that they are all the thread holds.
                    let mut blocks = [[std::ptr::null_mut::<u8>(); 16]; 50];
                    let layout = |size| Layout::from_size_align(size, 1).unwrap();
                    for (of_size, &size) in blocks.iter_mut().zip(&sizes) {
                        for block in &mut of_size[..rounds] {
                            // SAFETY: a layout of non-zero size.
                            *block = unsafe { std::alloc::alloc(layout(size)) };
                            assert!(!block.is_null());
                            // SAFETY: a fresh block of `size` bytes.
                            unsafe { block.write_bytes(1, size) };
                        }
                    }
                    let free = |blocks: &mut [*mut u8], size| {
                        for block in blocks {
                            // SAFETY: a live block of this layout, freed once.
                            unsafe { std::alloc::dealloc(*block, layout(size)) };
                        }
                    };
                    for (of_size, &size) in blocks.iter_mut().zip(&sizes) {
                        free(&mut of_size[keep..rounds], size);
                    }
                    barrier.wait(); // idle, with `keep` blocks of each size
                    barrier.wait();
                    for (of_size, &size) in blocks.iter_mut().zip(&sizes) {
                        free(&mut of_size[..keep], size);
                    }
                })
            })
            .collect();
        barrier.wait();
        let s = pymalloc::stats();
        barrier.wait();
        threads.into_iter().for_each(|t| t.join().unwrap());
        (s.pools_used + s.pools_full + s.pools_kept, s.pooled_bytes)
    };
    // Everything freed: each heap (and the shared one) holds at most its parked and kept
    // empty pools, all of them together PARKED_TOTAL more, and the main thread its own. One
    // pool per thread and class would be 50 per thread, 12 800 in all.
    let (pools, _) = held(16, 0);
    let bound = (THREADS + 2) * (pymalloc::PARKED_POOLS + pymalloc::CACHED_POOLS)
        + pymalloc::PARKED_TOTAL
        + 50;
    assert!(
        pools <= bound,
        "{pools} pools held, at most {bound} expected"
    );
    // One block of each size kept, in shared pools: no more pools in use than twice what
    // the blocks fill (16 KiB each), beside the empty ones as above.
    let (pools, bytes) = held(4, 1);
    assert!(bytes >= THREADS * sizes.iter().sum::<usize>());
    let bound = bound + 2 * bytes / (16 << 10);
    assert!(
        pools <= bound,
        "{pools} pools held by {THREADS} idle threads, at most {bound}"
    );
}

/// An arena's reservation (2 MiB aligned to 2 MiB) takes no more address space than it keeps
/// when the kernel places it aligned, as Linux 6.7 and later do for anonymous mappings of
/// 2 MiB: with 3 MiB of address space left under `RLIMIT_AS` (as under `prlimit --as`), it
/// succeeds. Over-reserving by the alignment, as every reservation did before, needs 4 MiB for
/// a moment and fails. (On older kernels the placement decides, so the test is skipped.)
#[test]
fn an_arena_reservation_fits_in_little_more_address_space_than_it_keeps() {
    use pymalloc::Platform;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut version = release
        .split(['.', '-'])
        .map(|v| v.parse::<u32>().unwrap_or(0));
    let (major, minor) = (version.next().unwrap_or(0), version.next().unwrap_or(0));
    if (major, minor) < (6, 7) {
        eprintln!("Linux {release}: 2 MiB mappings are not placed aligned; skipped");
        return;
    }
    if !in_child() {
        return passes_in_child_within(
            "an_arena_reservation_fits_in_little_more_address_space_than_it_keeps",
            Duration::from_secs(60),
        );
    }
    const MIB: usize = 1 << 20;
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let os = pymalloc::OsPlatform;
    let limit = (kib * 1024 + 3 * MIB) as libc::rlim_t;
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct; lowering a soft limit has no memory-safety effect.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rlimit) }, 0);
    let arena = os.reserve(2 * MIB, 2 * MIB);
    if let Some(p) = arena {
        // SAFETY: the reservation just made, unused.
        unsafe { os.release(p, 2 * MIB) };
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &unlimited) }, 0);
    let arena = arena.expect("2 MiB aligned in 3 MiB of address space");
    assert_eq!(arena.addr().get() % (2 * MIB), 0);
}

/// `PYMALLOC_STATS=json` in a Rust program's environment: one line of JSON on stderr at exit,
/// after the program's own frees.
#[test]
fn statistics_at_exit_when_the_environment_asks() {
    const NAME: &str = "statistics_at_exit_when_the_environment_asks";
    if in_child() {
        let kept: Vec<Box<[u8; 64]>> = (0..1000).map(|_| Box::new([1; 64])).collect();
        std::mem::forget(kept);
        return;
    }
    for (value, expect_json) in [("json", true), ("1", false)] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env("TEST_CHILD_OF_PYMALLOC", "1")
            .env("PYMALLOC_STATS", value)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if expect_json {
            let last = stderr.lines().last().unwrap_or_default();
            let json: serde_json::Value = serde_json::from_str(last).expect("JSON at exit");
            assert!(json["pooled_blocks"].as_u64().unwrap() >= 1000, "{last}");
        } else {
            assert!(stderr.contains("pymalloc statistics"), "{stderr}");
        }
    }
}
