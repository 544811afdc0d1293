//! The `debug` feature: each misuse it exists to catch aborts with its message (run in a
//! child process), and a real program runs clean under it. `cargo test --features debug --test
//! debug` (CI runs it).
#![cfg(feature = "debug")]

mod common;

use std::alloc::Layout;
use std::collections::{BTreeMap, HashMap};

use common::{expect_abort, in_child};
use pymalloc::Allocator;
use pymalloc_arena::TestPlatform;

#[global_allocator]
static GLOBAL: pymalloc::PyMalloc = pymalloc::PyMalloc;

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

#[test]
fn a_write_one_byte_past_the_end_is_caught_on_free() {
    expect_abort(
        "a_write_one_byte_past_the_end_is_caught_on_free",
        "debug: heap overrun",
    );
    if in_child() {
        let a = Allocator::new(TestPlatform::new());
        let p = a.alloc(layout(20, 4));
        // SAFETY: deliberately not: the write past the end is the misuse under test.
        unsafe {
            p.add(20).write(1);
            a.dealloc(p, layout(20, 4));
        }
    }
}

#[test]
fn a_double_free_is_named_as_such() {
    expect_abort("a_double_free_is_named_as_such", "debug: double free");
    if in_child() {
        let a = Allocator::new(TestPlatform::new());
        let keep = a.alloc(layout(40, 8)); // keeps the pool in use, so its memory stays
        let p = a.alloc(layout(40, 8));
        // SAFETY: deliberately not: the second free is the misuse under test.
        unsafe {
            a.dealloc(p, layout(40, 8));
            a.dealloc(p, layout(40, 8));
        }
        let _ = keep;
    }
}

#[test]
fn a_wrong_size_in_the_same_class_is_caught() {
    // Without the feature, 24 and 20 bytes share a class, so nothing could tell.
    expect_abort(
        "a_wrong_size_in_the_same_class_is_caught",
        "debug: dealloc with a layout other than the block's",
    );
    if in_child() {
        let a = Allocator::new(TestPlatform::new());
        let p = a.alloc(layout(24, 8));
        // SAFETY: deliberately not: the wrong size is the misuse under test.
        unsafe { a.dealloc(p, layout(20, 8)) };
    }
}

#[test]
fn fresh_zeroed_and_resized_blocks_behave() {
    let a = Allocator::new(TestPlatform::new());
    for (size, align) in [
        (0, 1),
        (1, 1),
        (24, 8),
        (100, 64),
        (5000, 16),
        (300_000, 4096),
    ] {
        let z = a.alloc_zeroed(layout(size, align));
        // SAFETY: a zeroed block of `size` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(z, size) };
        assert!(bytes.iter().all(|&b| b == 0));
        assert_eq!(z as usize % align, 0);
        // SAFETY: `z` is a live block of this layout; the realloc keeps its bytes.
        unsafe {
            z.write_bytes(7, size);
            let q = a.realloc(z, layout(size, align), size + 10);
            assert!(std::slice::from_raw_parts(q, size).iter().all(|&b| b == 7));
            a.dealloc(q, layout(size + 10, align));
        }
    }
    a.check().unwrap();
    assert_eq!(a.stats().bytes_in_use, 0);
}

#[test]
fn a_real_program_runs_clean_under_the_checks() {
    let mut words: HashMap<String, Vec<usize>> = HashMap::new();
    let mut tree = BTreeMap::new();
    for i in 0..50_000usize {
        let w = format!("w{}", i * 7919 % 3001);
        words.entry(w.clone()).or_default().push(i);
        tree.insert(w, vec![i as u8; i % 700]);
    }
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || (0..10_000).map(|i| format!("{t}:{i}")).collect::<Vec<_>>())
        })
        .collect();
    let total: usize = threads.into_iter().map(|h| h.join().unwrap().len()).sum();
    assert_eq!(total, 40_000);
    assert_eq!(words.values().map(Vec::len).sum::<usize>(), 50_000);
    drop((words, tree));
    pymalloc::check().unwrap();
}
