//! A real workload on pymalloc: Box-heavy binary trees, a `BTreeMap` of strings, a word count
//! in a `HashMap<String, Vec<_>>`, `Vec`/`String` growth, and four threads trading blocks.
//! Prints each phase's time, RSS along the way, and pymalloc's statistics.
//!
//! `cargo run --release --example workload`

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::time::Instant;

use common::{Rng, churn, rss_bytes};

#[global_allocator]
static GLOBAL: pymalloc::PyMalloc = pymalloc::PyMalloc;

enum Tree {
    Leaf,
    Node(Box<Tree>, Box<Tree>),
}

fn build(depth: u32) -> Tree {
    if depth == 0 {
        Tree::Leaf
    } else {
        Tree::Node(Box::new(build(depth - 1)), Box::new(build(depth - 1)))
    }
}

fn count(t: &Tree) -> usize {
    match t {
        Tree::Leaf => 1,
        Tree::Node(l, r) => 1 + count(l) + count(r),
    }
}

fn binary_trees() -> usize {
    let long_lived = build(16);
    let mut total = 0;
    for depth in (4..=16).step_by(2) {
        for _ in 0..1 << (16 - depth) {
            total += count(&build(depth));
        }
    }
    total + count(&long_lived)
}

fn string_map(rng: &mut Rng) -> usize {
    let mut map = BTreeMap::new();
    for i in 0..400_000u64 {
        let key = format!("key-{:x}", rng.below(200_000));
        if i % 3 == 0 {
            map.remove(&key);
        } else {
            map.insert(key, i.to_string());
        }
    }
    map.len()
}

fn word_count(rng: &mut Rng) -> usize {
    let words: Vec<String> = (0..5000).map(|i| format!("word{i}")).collect();
    let mut counts: HashMap<String, Vec<u32>> = HashMap::new();
    for pos in 0..1_500_000u32 {
        let w = &words[rng.log_uniform(1, words.len()) - 1];
        counts.entry(w.clone()).or_default().push(pos);
    }
    counts.values().map(Vec::len).sum()
}

fn growth() -> usize {
    let mut total = 0;
    for round in 0..200 {
        let mut v: Vec<u64> = Vec::new();
        let mut s = String::new();
        for i in 0..(20_000 + round * 100) {
            v.push(i as u64);
            s.push(char::from(b'a' + (i % 26) as u8));
        }
        total += v.len() + s.len();
    }
    total
}

fn main() {
    let start_rss = rss_bytes();
    let mut rng = Rng::new(7);
    let mut peak_rss = start_rss;
    println!(
        "pymalloc workload (RSS at start: {:.1} MiB)",
        start_rss as f64 / (1 << 20) as f64
    );
    println!("{:<28} {:>10} {:>12}", "phase", "time (ms)", "RSS (MiB)");
    let mut phase = |name: &str, f: &mut dyn FnMut() -> usize| {
        let t = Instant::now();
        black_box(f());
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let rss = rss_bytes();
        peak_rss = peak_rss.max(rss);
        println!(
            "{name:<28} {ms:>10.1} {:>12.1}",
            rss as f64 / (1 << 20) as f64
        );
    };
    phase("binary trees (depth 16)", &mut binary_trees);
    phase("BTreeMap<String, String>", &mut || string_map(&mut rng));
    phase("word count HashMap", &mut || word_count(&mut rng));
    phase("Vec and String growth", &mut growth);
    phase("4 threads trading blocks", &mut || {
        churn(&GLOBAL, 4, 250_000, 2000, 1 << 20, 4096).ops as usize
    });
    let end_rss = rss_bytes();
    println!(
        "RSS: start {:.1} MiB, peak seen {:.1} MiB, after freeing {:.1} MiB",
        start_rss as f64 / (1 << 20) as f64,
        peak_rss as f64 / (1 << 20) as f64,
        end_rss as f64 / (1 << 20) as f64
    );
    println!("\n{}", pymalloc::stats());
}
