//! A program with `PyMalloc` as its global allocator: collections, strings, over-aligned
//! types and threads all run on it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

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
