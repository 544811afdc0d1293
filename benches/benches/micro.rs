//! Micro benchmarks through the `GlobalAlloc` trait, every allocator in the same run:
//! pymalloc, the system allocator, mimalloc and jemalloc.
//!
//! - alloc+free pairs per size class (and a few sizes above the small range);
//! - a batch of 1000 blocks allocated, then freed in LIFO, FIFO and random order;
//! - `realloc` growth from 1 B to 1 MiB, doubling;
//! - `alloc_zeroed` of 64 B, 4 KiB and 1 MiB;
//! - aligned requests: 64 B aligned to 64, 4 KiB aligned to 4 KiB.
//!
//! `cargo bench -p pymalloc-bench` (or `cargo bench` at the root).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::Duration;

use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main, measurement::WallTime,
};

const PEERS: [(&str, &dyn GlobalAlloc); 4] = [
    ("system", &System),
    ("pymalloc", &pymalloc::PyMalloc),
    ("mimalloc", &mimalloc::MiMalloc),
    ("jemalloc", &tikv_jemallocator::Jemalloc),
];

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

/// Benchmarks `f` for every peer under `group/<peer>/<param>`.
fn each_peer(
    group: &mut BenchmarkGroup<'_, WallTime>,
    param: impl std::fmt::Display,
    f: impl Fn(&dyn GlobalAlloc),
) {
    for (name, a) in PEERS {
        group.bench_function(BenchmarkId::new(name, &param), |b| b.iter(|| f(a)));
    }
}

fn pair(a: &dyn GlobalAlloc, l: Layout) {
    // SAFETY: a non-zero layout, freed with itself.
    unsafe {
        let p = a.alloc(l);
        black_box(p).write(1);
        a.dealloc(p, l);
    }
}

fn pairs(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc+free");
    for size in [16, 32, 48, 64, 96, 128, 256, 384, 512, 1024, 4096, 65536] {
        each_peer(&mut group, size, |a| pair(a, layout(size, 8)));
    }
    group.finish();
}

fn batches(c: &mut Criterion) {
    const N: usize = 1000;
    let mut group = c.benchmark_group("batch of 1000");
    // A fixed shuffle for the random order (a simple LCG, the same for every peer).
    let mut order: Vec<usize> = (0..N).collect();
    let mut x = 12345u64;
    for i in (1..N).rev() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        order.swap(i, (x >> 33) as usize % (i + 1));
    }
    for size in [32, 256] {
        let l = layout(size, 8);
        for (how, free_order) in [
            ("lifo", (0..N).rev().collect::<Vec<_>>()),
            ("fifo", (0..N).collect()),
            ("random", order.clone()),
        ] {
            each_peer(&mut group, format!("{how}/{size}"), |a| {
                let mut blocks = [std::ptr::null_mut::<u8>(); N];
                // SAFETY: non-zero layouts, each freed once with itself.
                unsafe {
                    blocks.iter_mut().for_each(|p| *p = a.alloc(l));
                    free_order.iter().for_each(|&i| a.dealloc(blocks[i], l));
                }
            });
        }
    }
    group.finish();
}

fn realloc_growth(c: &mut Criterion) {
    let mut group = c.benchmark_group("realloc 1 B to 1 MiB");
    each_peer(&mut group, "doubling", |a| {
        // SAFETY: each realloc gets the block's current layout; the last one is freed.
        unsafe {
            let mut l = layout(1, 1);
            let mut p = a.alloc(l);
            while l.size() < 1 << 20 {
                p = a.realloc(p, l, l.size() * 2);
                l = layout(l.size() * 2, 1);
                black_box(p).write(1);
            }
            a.dealloc(p, l);
        }
    });
    group.finish();
}

fn zeroed(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc_zeroed+free");
    for size in [64, 4096, 1 << 20] {
        let l = layout(size, 8);
        each_peer(&mut group, size, |a| {
            // SAFETY: a non-zero layout, freed with itself.
            unsafe {
                let p = a.alloc_zeroed(l);
                black_box(p.add(size - 1).read());
                a.dealloc(p, l);
            }
        });
    }
    group.finish();
}

fn aligned(c: &mut Criterion) {
    let mut group = c.benchmark_group("aligned alloc+free");
    for (size, align) in [(64, 64), (4096, 4096)] {
        each_peer(&mut group, format!("{size}@{align}"), |a| {
            pair(a, layout(size, align))
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = pairs, batches, realloc_growth, zeroed, aligned }
criterion_main!(benches);
