//! The real workloads of the benchmark, and the worker that runs one of them in a process
//! whose global allocator is the allocator under test (see `src/bin/worker-*.rs`).
//!
//! Each workload returns a checksum that does not depend on the allocator; the runner checks
//! that every allocator produced the same one.

#[path = "../../tests/common/mod.rs"]
mod common;
pub mod report;

use std::alloc::{Layout, alloc, dealloc, realloc};
use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::sync::{Mutex, mpsc};
use std::time::Instant;

pub use common::rss_bytes;
use common::{Rng, peak_rss_bytes};

/// The allocators compared, the baseline first; `pymalloc-secure` is pymalloc's hardened
/// build (`--features secure`, `docs/security.md`).
pub const ALLOCATORS: [&str; 5] = [
    "system",
    "pymalloc",
    "pymalloc-secure",
    "mimalloc",
    "jemalloc",
];

/// How much work: `--quick` or the full run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    Quick,
    Full,
}

impl Scale {
    fn pick(self, quick: usize, full: usize) -> usize {
        match self {
            Scale::Quick => quick,
            Scale::Full => full,
        }
    }
}

/// One real workload.
pub struct Workload {
    pub name: &'static str,
    pub what: &'static str,
    pub run: fn(Scale) -> u64,
}

pub const WORKLOADS: &[Workload] = &[
    Workload {
        name: "binary-trees",
        what: "Box-heavy binary trees, built and walked",
        run: binary_trees,
    },
    Workload {
        name: "btreemap",
        what: "BTreeMap<String, String>: inserts and removes",
        run: btreemap,
    },
    Workload {
        name: "word-count",
        what: "HashMap<String, Vec<u32>> word count",
        run: word_count,
    },
    Workload {
        name: "json",
        what: "serde_json parse and print of a generated document",
        run: json,
    },
    Workload {
        name: "vec-growth",
        what: "Vec<u8> and String grown by pushes to 200 KiB, many times",
        run: vec_growth,
    },
    Workload {
        name: "vec-growth-large",
        what: "Vec<u8> and String grown by pushes to 4 MiB (past the pooled sizes)",
        run: vec_growth_large,
    },
    Workload {
        name: "large-loop",
        what: "blocks of 1–32 MiB allocated, written a byte per page and freed, one at a time",
        run: large_loop,
    },
    Workload {
        name: "realloc-large",
        what: "64 blocks above 256 KiB grown, shrunk and freed with realloc",
        run: realloc_large,
    },
    Workload {
        name: "medium-random",
        what: "random sizes from 513 B to 256 KiB, each page written, replaced in 2000 slots",
        run: medium_random,
    },
    Workload {
        name: "fragmentation",
        what: "random-sized buffers, a random 60% freed each round",
        run: fragmentation,
    },
    Workload {
        name: "small-churn",
        what: "each thread replaces random slots of its own 1000 blocks of 8 B to 512 B",
        run: small_churn,
    },
    Workload {
        name: "producer-consumer",
        what: "2 producers, 2 consumers: every free is remote",
        run: producer_consumer,
    },
    Workload {
        name: "larson",
        what: "4 threads replace random slots of a shared array",
        run: larson,
    },
    Workload {
        name: "xmalloc",
        what: "2 threads allocate batches of 8 B to 512 B blocks, 2 others free them",
        run: xmalloc,
    },
    Workload {
        name: "threads-4x",
        what: "4 threads per core, each replacing random slots of its own 500 blocks",
        run: oversubscribed,
    },
];

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

fn count(t: &Tree) -> u64 {
    match t {
        Tree::Leaf => 1,
        Tree::Node(l, r) => 1 + count(l) + count(r),
    }
}

fn binary_trees(scale: Scale) -> u64 {
    let max = scale.pick(16, 18) as u32;
    let long_lived = build(max);
    let mut total = 0;
    for depth in (4..=max).step_by(2) {
        for _ in 0..1u32 << (max - depth) {
            total += count(&black_box(build(depth)));
        }
    }
    total + count(&long_lived)
}

fn btreemap(scale: Scale) -> u64 {
    let mut rng = Rng::new(1);
    let mut map = BTreeMap::new();
    for i in 0..scale.pick(400_000, 1_500_000) as u64 {
        let key = format!("key-{:x}", rng.below(200_000));
        if i % 3 == 0 {
            map.remove(&key);
        } else {
            map.insert(key, format!("value-{i}"));
        }
    }
    map.len() as u64 + map.values().map(|v| v.len() as u64).sum::<u64>()
}

fn word_count(scale: Scale) -> u64 {
    let mut rng = Rng::new(2);
    let words: Vec<String> = (0..20_000).map(|i| format!("word{i}")).collect();
    let text: Vec<&str> = (0..scale.pick(1_000_000, 4_000_000))
        .map(|_| words[rng.log_uniform(1, words.len()) - 1].as_str())
        .collect();
    let mut counts: HashMap<String, Vec<u32>> = HashMap::new();
    for (pos, w) in text.iter().enumerate() {
        counts.entry((*w).to_owned()).or_default().push(pos as u32);
    }
    counts.len() as u64 + counts.values().map(|v| v.len() as u64).sum::<u64>()
}

fn json(scale: Scale) -> u64 {
    let mut rng = Rng::new(3);
    let records = scale.pick(60_000, 200_000);
    let mut doc = String::from("[");
    for i in 0..records {
        let tags: Vec<String> = (0..rng.below(6))
            .map(|t| format!("\"tag{}\"", t * 7 + i as u64 % 13))
            .collect();
        doc.push_str(&format!(
            "{}{{\"id\":{i},\"name\":\"user-{}\",\"score\":{}.{},\"tags\":[{}],\"nested\":{{\"x\":[{},{},{}],\"ok\":{}}},\"bio\":\"{}\"}}",
            if i == 0 { "" } else { "," },
            rng.below(1 << 20),
            rng.below(1000),
            rng.below(100),
            tags.join(","),
            rng.below(10),
            rng.below(100),
            rng.below(1000),
            i % 2 == 0,
            "lorem ipsum ".repeat(rng.below(12) as usize),
        ));
    }
    doc.push(']');
    let value: serde_json::Value = serde_json::from_str(&doc).expect("generated JSON parses");
    let out = serde_json::to_string(&value).expect("JSON prints");
    doc.len() as u64 + out.len() as u64
}

/// `rounds` times, a `Vec<u8>` pushed byte by byte and a `String` by 8-byte pieces to about
/// `target` bytes each.
fn grow(rounds: usize, target: usize) -> u64 {
    let mut total = 0;
    for round in 0..rounds {
        let target = target - round % 100 * 64;
        let mut bytes: Vec<u8> = Vec::new();
        let mut text = String::new();
        while bytes.len() < target {
            bytes.push(bytes.len() as u8);
            if bytes.len() % 8 == 0 {
                text.push_str("pymalloc");
            }
        }
        total += black_box(bytes).len() as u64 + black_box(text).len() as u64;
    }
    total
}

fn vec_growth(scale: Scale) -> u64 {
    grow(scale.pick(400, 1600), 200 << 10)
}

fn vec_growth_large(scale: Scale) -> u64 {
    grow(scale.pick(60, 240), 4 << 20)
}

/// `benches/c/large_loop.c` in Rust: a block of 1 to 32 MiB at a time, allocated, written a
/// byte per page, and freed.
fn large_loop(scale: Scale) -> u64 {
    let mut rng = Rng::new(6);
    let mut checksum = 0u64;
    for i in 0..scale.pick(400, 2000) {
        let size = (1 << 20) + rng.below(31 << 20) as usize;
        let layout = Layout::from_size_align(size, 16).unwrap();
        // SAFETY: a layout of nonzero size; the block is written within its size and freed
        // with its layout.
        unsafe {
            let p = alloc(layout);
            assert!(!p.is_null());
            for at in (0..size).step_by(4096) {
                p.add(at).write((i + at) as u8);
            }
            p.add(size - 1).write(i as u8);
            let middle = size / 2 / 4096 * 4096; // a page start: written above
            checksum += u64::from(p.add(middle).read()) + u64::from(p.add(size - 1).read());
            dealloc(p, layout);
        }
    }
    black_box(checksum)
}

/// `benches/c/realloc_large.c` in Rust: 64 slots of blocks above 256 KiB, each step growing
/// or shrinking one with `realloc` (what it gains written a byte per page) or freeing it.
fn realloc_large(scale: Scale) -> u64 {
    const SLOTS: usize = 64;
    let mut rng = Rng::new(7);
    let mut live: [(*mut u8, usize); SLOTS] = [(std::ptr::null_mut(), 0); SLOTS];
    let at = |size| Layout::from_size_align(size, 16).unwrap();
    let mut checksum = 0u64;
    for i in 0..scale.pick(30_000, 100_000) {
        let k = rng.below(SLOTS as u64) as usize;
        let (p, old) = live[k];
        // SAFETY: each slot holds null or a live block of its size, written to its end.
        unsafe {
            if !p.is_null() && rng.below(4) == 0 {
                checksum += u64::from(p.read()) + u64::from(p.add(old - 1).read());
                dealloc(p, at(old));
                live[k] = (std::ptr::null_mut(), 0);
                continue;
            }
            let size = (256 << 10) + 1 + rng.below(4 << 20) as usize;
            let q = if p.is_null() {
                alloc(at(size))
            } else {
                realloc(p, at(old), size)
            };
            assert!(!q.is_null());
            for offset in (old.min(size)..size).step_by(4096) {
                q.add(offset).write(offset as u8);
            }
            q.add(size - 1).write(i as u8);
            checksum += u64::from(q.read());
            live[k] = (q, size);
        }
    }
    for (p, size) in live {
        if !p.is_null() {
            // SAFETY: a live block of its size.
            unsafe { dealloc(p, at(size)) };
        }
    }
    black_box(checksum)
}

fn medium_random(scale: Scale) -> u64 {
    let mut rng = Rng::new(5);
    let mut slots: Vec<Vec<u8>> = (0..2000).map(|_| Vec::new()).collect();
    let mut checksum = 0u64;
    for _ in 0..scale.pick(300_000, 1_200_000) {
        let i = rng.below(slots.len() as u64) as usize;
        let len = rng.log_uniform(513, 256 << 10);
        let mut block: Vec<u8> = Vec::with_capacity(len);
        // Written as a buffer in use would be: every page, and the last byte.
        let spare = block.spare_capacity_mut();
        for at in (0..len).step_by(4096).chain([len - 1]) {
            spare[at].write(at as u8);
        }
        let old = std::mem::replace(&mut slots[i], block);
        checksum += old.capacity() as u64;
    }
    checksum + slots.iter().map(|s| s.capacity() as u64).sum::<u64>()
}

fn fragmentation(scale: Scale) -> u64 {
    let mut rng = Rng::new(4);
    let mut live: Vec<Vec<u8>> = Vec::new();
    let mut checksum = 0u64;
    for _ in 0..scale.pick(20, 60) {
        for _ in 0..20_000 {
            let len = rng.log_uniform(16, 16 << 10);
            live.push(vec![len as u8; len]);
        }
        live.retain(|b| {
            checksum += b[b.len() - 1] as u64;
            rng.below(10) >= 6
        });
    }
    checksum + live.len() as u64
}

/// Threads for `small_churn`: `BENCH_THREADS`, else one.
pub const THREADS_VAR: &str = "BENCH_THREADS";

/// Operations per thread of `small_churn`.
pub fn churn_ops(scale: Scale) -> usize {
    scale.pick(2_000_000, 10_000_000)
}

fn small_churn(scale: Scale) -> u64 {
    let threads: u64 = std::env::var(THREADS_VAR)
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    let ops = churn_ops(scale);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut rng = Rng::new(30 + t);
                    let mut slots: Vec<Vec<u8>> = (0..1000).map(|_| vec![0u8; 8]).collect();
                    let mut sum = 0u64;
                    for _ in 0..ops {
                        let len = 8 + rng.below(505) as usize;
                        let i = rng.below(slots.len() as u64) as usize;
                        let mut fresh = Vec::with_capacity(len);
                        fresh.push(len as u8);
                        let old = std::mem::replace(&mut slots[i], black_box(fresh));
                        sum += old[0] as u64;
                    }
                    sum
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    })
}

fn producer_consumer(scale: Scale) -> u64 {
    let messages = scale.pick(400_000, 2_000_000);
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(4096);
    let rx = Mutex::new(rx);
    std::thread::scope(|s| {
        for p in 0..2u64 {
            let tx = tx.clone();
            s.spawn(move || {
                let mut rng = Rng::new(10 + p);
                for _ in 0..messages / 2 {
                    let len = rng.log_uniform(8, 2048);
                    tx.send(vec![len as u8; len]).unwrap();
                }
            });
        }
        drop(tx);
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let rx = &rx;
                s.spawn(move || {
                    let mut sum = 0u64;
                    while let Ok(m) = { rx.lock().unwrap().recv() } {
                        sum += m[0] as u64 + m.len() as u64;
                    }
                    sum
                })
            })
            .collect();
        consumers.into_iter().map(|c| c.join().unwrap()).sum()
    })
}

fn larson(scale: Scale) -> u64 {
    let slots: Vec<Mutex<Box<[u8]>>> = (0..10_000)
        .map(|_| Mutex::new(vec![0u8; 8].into_boxed_slice()))
        .collect();
    let ops = scale.pick(500_000, 2_000_000);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let slots = &slots;
                s.spawn(move || {
                    let mut rng = Rng::new(20 + t);
                    let mut allocated = 0u64;
                    for _ in 0..ops / 4 {
                        let len = rng.log_uniform(8, 1024);
                        let fresh = vec![len as u8; len].into_boxed_slice();
                        let i = rng.below(slots.len() as u64) as usize;
                        let old = std::mem::replace(&mut *slots[i].lock().unwrap(), fresh);
                        drop(black_box(old)); // most often allocated by another thread
                        allocated += len as u64;
                    }
                    allocated
                })
            })
            .collect();
        // Which block ends in which slot depends on scheduling; the bytes allocated do not.
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    })
}

/// xmalloc-test's pattern: allocating threads fill batches of blocks of mixed small sizes
/// and hand each batch to a freeing thread, which frees it whole; no thread frees what it
/// allocated.
fn xmalloc(scale: Scale) -> u64 {
    const BATCH: usize = 256;
    let batches = scale.pick(2_000, 10_000);
    let (tx, rx) = mpsc::sync_channel::<Vec<Box<[u8]>>>(64);
    let rx = Mutex::new(rx);
    std::thread::scope(|s| {
        for p in 0..2u64 {
            let tx = tx.clone();
            s.spawn(move || {
                let mut rng = Rng::new(40 + p);
                for _ in 0..batches / 2 {
                    let batch: Vec<Box<[u8]>> = (0..BATCH)
                        .map(|_| {
                            let len = 8 + rng.below(505) as usize;
                            vec![len as u8; len].into_boxed_slice()
                        })
                        .collect();
                    tx.send(batch).unwrap();
                }
            });
        }
        drop(tx);
        let freeing: Vec<_> = (0..2)
            .map(|_| {
                let rx = &rx;
                s.spawn(move || {
                    let mut sum = 0u64;
                    while let Ok(batch) = { rx.lock().unwrap().recv() } {
                        sum += batch
                            .iter()
                            .map(|b| b[0] as u64 + b.len() as u64)
                            .sum::<u64>();
                        drop(black_box(batch));
                    }
                    sum
                })
            })
            .collect();
        freeing.into_iter().map(|f| f.join().unwrap()).sum()
    })
}

/// Four threads for every core, each churning blocks of its own: many more heaps than cores,
/// threads preempted in the middle of their work.
fn oversubscribed(scale: Scale) -> u64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = 4 * cores as u64;
    let ops = scale.pick(2_000_000, 8_000_000) as u64 / threads;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut rng = Rng::new(50 + t);
                    let mut slots: Vec<Vec<u8>> = (0..500).map(|_| vec![0u8; 8]).collect();
                    let mut sum = 0u64;
                    for _ in 0..ops {
                        let len = 8 + rng.below(505) as usize;
                        let i = rng.below(slots.len() as u64) as usize;
                        let old = std::mem::replace(&mut slots[i], black_box(vec![len as u8; len]));
                        sum += old[0] as u64 + old.len() as u64;
                    }
                    sum
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    })
}

/// What one run of a workload measured.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub time_ns: u64,
    pub peak_rss: u64,
    pub end_rss: u64,
    pub minor_faults: u64,
    pub sys_ns: u64,
    pub check: u64,
}

impl Sample {
    /// The line a worker prints, and the runner parses.
    pub fn to_line(self) -> String {
        format!(
            "result time_ns={} peak_rss={} end_rss={} minor_faults={} sys_ns={} check={}",
            self.time_ns, self.peak_rss, self.end_rss, self.minor_faults, self.sys_ns, self.check
        )
    }

    pub fn parse(line: &str) -> Option<Sample> {
        let mut fields = line
            .strip_prefix("result ")?
            .split(' ')
            .map(|f| f.split_once('=').and_then(|(_, v)| v.parse().ok()));
        Some(Sample {
            time_ns: fields.next()??,
            peak_rss: fields.next()??,
            end_rss: fields.next()??,
            minor_faults: fields.next()??,
            sys_ns: fields.next()??,
            check: fields.next()??,
        })
    }
}

/// `worker-<allocator> <workload> <quick|full>`: runs one workload once and prints its
/// [`Sample`]. The process is fresh, so its peak RSS is the workload's own.
pub fn worker_main(allocator: &str) {
    let args: Vec<String> = std::env::args().collect();
    let (Some(name), Some(scale)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: worker-{allocator} <workload> <quick|full>");
        std::process::exit(2);
    };
    let Some(workload) = WORKLOADS.iter().find(|w| w.name == name) else {
        eprintln!("unknown workload {name}");
        std::process::exit(2);
    };
    let scale = if scale == "full" {
        Scale::Full
    } else {
        Scale::Quick
    };
    let start = Instant::now();
    let check = (workload.run)(scale);
    let time_ns = start.elapsed().as_nanos() as u64;
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let sample = Sample {
        time_ns,
        peak_rss: peak_rss_bytes() as u64,
        end_rss: rss_bytes() as u64,
        minor_faults: usage.ru_minflt as u64,
        sys_ns: usage.ru_stime.tv_sec as u64 * 1_000_000_000 + usage.ru_stime.tv_usec as u64 * 1000,
        check,
    };
    println!("{}", sample.to_line());
}
