//! Micro benchmarks through the `GlobalAlloc` trait, pymalloc beside the system allocator in
//! the same run: alloc+free pairs per size, and a batch allocated then freed (LIFO and FIFO).
//! `cargo bench` runs them; the benchmark issue adds mimalloc and jemalloc as peers.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use pymalloc::PyMalloc;

const SIZES: [usize; 6] = [16, 64, 256, 512, 4096, 65536];

fn pairs(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc+free");
    for size in SIZES {
        let layout = Layout::from_size_align(size, 8).unwrap();
        let mut run = |name: &str, a: &dyn GlobalAlloc| {
            group.bench_with_input(BenchmarkId::new(name, size), &layout, |b, &layout| {
                // SAFETY: a non-zero layout, freed with itself.
                b.iter(|| unsafe {
                    let p = a.alloc(layout);
                    black_box(p).write(1);
                    a.dealloc(p, layout);
                })
            });
        };
        run("pymalloc", &PyMalloc);
        run("system", &System);
    }
    group.finish();
}

fn batches(c: &mut Criterion) {
    const N: usize = 1000;
    let mut group = c.benchmark_group("batch of 1000");
    for size in [32, 256] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        for (order, lifo) in [("lifo", true), ("fifo", false)] {
            let mut run = |name: &str, a: &dyn GlobalAlloc| {
                let id = BenchmarkId::new(format!("{name}/{order}"), size);
                group.bench_with_input(id, &layout, |b, &layout| {
                    let mut blocks = Vec::with_capacity(N);
                    // SAFETY: non-zero layouts, each freed once with itself.
                    b.iter(|| unsafe {
                        blocks.extend((0..N).map(|_| a.alloc(layout)));
                        if lifo {
                            blocks.iter().rev().for_each(|&p| a.dealloc(p, layout));
                        } else {
                            blocks.iter().for_each(|&p| a.dealloc(p, layout));
                        }
                        blocks.clear();
                    })
                });
            };
            run("pymalloc", &PyMalloc);
            run("system", &System);
        }
    }
    group.finish();
}

criterion_group!(benches, pairs, batches);
criterion_main!(benches);
