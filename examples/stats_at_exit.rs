//! pymalloc as a program's global allocator, with its statistics printed when the program
//! is done: `cargo run --release --example stats_at_exit`.
//!
//! (Any program gets the same table at exit, with nothing in its code, from
//! `PYMALLOC_STATS=1` in its environment; `PYMALLOC_STATS=json` prints one line of JSON.)

#[global_allocator]
static GLOBAL: pymalloc::PyMalloc = pymalloc::PyMalloc;

fn main() {
    let words: Vec<String> = (0..200_000).map(|i| format!("word{}", i % 7919)).collect();
    let mut counts = std::collections::HashMap::new();
    for w in &words {
        *counts.entry(w.as_str()).or_insert(0usize) += 1;
    }
    println!("{} words, {} distinct", words.len(), counts.len());
    drop(counts);
    drop(words);
    let stats = pymalloc::stats();
    eprintln!("{stats}");
    println!(
        "{} heap(s), {} bytes in use, {} bytes mapped",
        stats.heaps, stats.bytes_in_use, stats.bytes_mapped
    );
}
