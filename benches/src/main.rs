//! The benchmark runner: every workload on every allocator, interleaved (system, pymalloc,
//! mimalloc, jemalloc, system, …), several runs each, medians; prints one table of time, peak
//! RSS and RSS after freeing, each also as a ratio to the system allocator; writes
//! `docs/benchmarks.md` and `docs/benchmarks.svg`.
//!
//! Then `small-churn` again at 1, 2, 4, … up to `--threads` threads (default: the number of
//! cores), as a table of throughput and speed-up.
//!
//! `cargo run --release -p pymalloc-bench -- [--quick] [--runs N] [--only WORKLOAD[,WORKLOAD…]] [--threads N]`

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use pymalloc_bench::report::{median, provenance, ratio};
use pymalloc_bench::{ALLOCATORS, Sample, THREADS_VAR, WORKLOADS, churn_ops};

struct Options {
    quick: bool,
    runs: usize,
    only: Option<String>,
    /// Most threads of the scaling table.
    threads: usize,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let runs = value("--runs")
        .and_then(|r| r.parse().ok())
        .unwrap_or(if quick { 3 } else { 5 });
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    Options {
        quick,
        runs,
        only: value("--only"),
        threads: value("--threads")
            .and_then(|t| t.parse().ok())
            .unwrap_or(cores.max(2)),
    }
}

/// Builds the worker binaries (one per global allocator) next to this one; pymalloc's
/// hardened build's into a target directory of its own (`target/secure/`, so that the two
/// builds do not rebuild each other), copied here as `worker-pymalloc-secure`.
fn build_workers() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let secure_target = dir.parent().unwrap().join("secure");
    let status = Command::new(&cargo)
        .args(["build", "--release", "--quiet", "-p", "pymalloc-bench"])
        .arg("--bins")
        .status()
        .expect("run cargo to build the workers");
    assert!(status.success(), "building the workers failed");
    let status = Command::new(&cargo)
        .args(["build", "--release", "--quiet", "-p", "pymalloc-bench"])
        .args([
            "--features",
            "secure",
            "--bin",
            "worker-pymalloc",
            "--target-dir",
        ])
        .arg(&secure_target)
        .status()
        .expect("run cargo to build the hardened worker");
    assert!(status.success(), "building the hardened worker failed");
    std::fs::copy(
        secure_target.join("release/worker-pymalloc"),
        dir.join("worker-pymalloc-secure"),
    )
    .expect("copy the hardened worker");
    dir
}

fn run_worker(dir: &Path, allocator: &str, workload: &str, quick: bool, threads: usize) -> Sample {
    let out = Command::new(dir.join(format!("worker-{allocator}")))
        .args([workload, if quick { "quick" } else { "full" }])
        .env(THREADS_VAR, threads.to_string())
        .output()
        .expect("start a worker");
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().find_map(Sample::parse) {
        Some(s) if out.status.success() => s,
        _ => panic!(
            "worker-{allocator} {workload} failed: {:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Medians per (workload, allocator): time in ns, peak RSS, RSS after freeing.
type Medians = BTreeMap<(&'static str, &'static str), [u64; 5]>;

const MEASURES: [(&str, &str); 5] = [
    ("time", "ms"),
    ("peak RSS", "MiB"),
    ("RSS after freeing", "MiB"),
    ("minor page faults", "thousands"),
    ("system CPU time", "ms"),
];

fn shown(measure: usize, value: u64) -> String {
    match measure {
        0 | 4 => format!("{:.1}", value as f64 / 1e6),
        3 => format!("{:.1}", value as f64 / 1e3),
        _ => format!("{:.1}", value as f64 / (1 << 20) as f64),
    }
}

fn table(medians: &Medians, workloads: &[&'static str]) -> String {
    let mut t = String::new();
    for (m, (measure, unit)) in MEASURES.iter().enumerate() {
        writeln!(
            t,
            "\n**{measure}** ({unit}; × = ratio to the system allocator, lower is better)\n"
        )
        .unwrap();
        writeln!(t, "| workload | {} |", ALLOCATORS.join(" | ")).unwrap();
        writeln!(t, "|---|{}", "---:|".repeat(ALLOCATORS.len())).unwrap();
        // A median of 0 is below the measure's resolution (system time comes in clock ticks):
        // no ratio is taken to it, and a workload where any allocator measured 0 is left out of
        // the geometric mean, which would otherwise follow the resolution, not the allocators.
        let mut logs = [0f64; ALLOCATORS.len()];
        let mut counted = 0usize;
        for w in workloads {
            let value = |a: &str| medians[&(*w, a)][m];
            let base = value(ALLOCATORS[0]);
            let measured = ALLOCATORS.iter().all(|a| value(a) > 0);
            if measured {
                counted += 1;
            }
            let cells: Vec<String> = ALLOCATORS
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let v = value(a);
                    if measured {
                        logs[i] += (v as f64 / base as f64).ln();
                    }
                    if i == 0 {
                        shown(m, v)
                    } else {
                        format!("{} ({})", shown(m, v), ratio(v as f64, base as f64))
                    }
                })
                .collect();
            writeln!(t, "| {w} | {} |", cells.join(" | ")).unwrap();
        }
        let geo: Vec<String> = logs
            .iter()
            .map(|l| match counted {
                0 => "—".to_string(),
                n => format!("{:.2}×", (l / n as f64).exp()),
            })
            .collect();
        let over = if counted < workloads.len() {
            format!(" (the {counted} workloads measured above 0 on every allocator)")
        } else {
            String::new()
        };
        writeln!(
            t,
            "| *geometric mean of ratios*{over} | {} |",
            geo.join(" | ")
        )
        .unwrap();
    }
    t
}

/// Thread counts of the scaling table: powers of two up to `max`, and `max`.
fn thread_counts(max: usize) -> Vec<usize> {
    let mut counts: Vec<usize> = (0..).map(|k| 1 << k).take_while(|&t| t < max).collect();
    counts.push(max);
    counts
}

/// `small-churn` at 1 to `opts.threads` threads, each thread doing the same work: total
/// throughput per allocator, pymalloc's ratio to the system allocator, and each allocator's
/// speed-up over its own one-thread run. Each round runs every thread count on every allocator
/// and the machine's own loop, so that a speed-up compares runs taken minutes apart at most,
/// not a first half of the table with a second half taken while the machine was busier.
fn scaling(dir: &Path, opts: &Options) -> String {
    let counts = thread_counts(opts.threads);
    let mut times: BTreeMap<(usize, &str), Vec<u64>> = BTreeMap::new();
    let mut spins: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    let total = counts.len() * opts.runs * ALLOCATORS.len();
    let mut k = 0;
    for run in 1..=opts.runs {
        for &t in &counts {
            for a in ALLOCATORS {
                k += 1;
                eprint!("\r[{k:>3}/{total}] small-churn × {t:<3} {a:<9} run {run}   ");
                let sample = run_worker(dir, a, "small-churn", opts.quick, t);
                times.entry((t, a)).or_default().push(sample.time_ns);
            }
            spins.entry(t).or_default().push(spin_rate(t));
        }
    }
    eprintln!();
    let churn = churn_ops(if opts.quick {
        pymalloc_bench::Scale::Quick
    } else {
        pymalloc_bench::Scale::Full
    });
    let mops: BTreeMap<(usize, &str), f64> = times
        .into_iter()
        .map(|((t, a), v)| ((t, a), (t * churn) as f64 / median(v) as f64 * 1e3))
        .collect();
    let spin = |t: usize| median(spins[&t].clone()) as f64;
    let ceiling: Vec<f64> = counts.iter().map(|&t| spin(t) / spin(1)).collect();
    let mut out = String::from(
        "\n**Thread scaling**: `small-churn` with every thread doing the same work; million \
         operations (a free and an allocation) per second, all threads together; higher is \
         better. *× system*: pymalloc's throughput over the system allocator's; *speed-up*: \
         each allocator's throughput over its own one-thread figure; *machine*: the speed-up of \
         a loop that does not allocate at all, the most this machine's cores can give. Each run \
         takes every thread count in turn, so that load drifting during the table weighs on \
         one-thread and many-thread figures alike.\n\n",
    );
    writeln!(
        out,
        "| threads | {} | pymalloc × system | speed-up: {} | machine |",
        ALLOCATORS.join(" | "),
        ALLOCATORS.join(" / ")
    )
    .unwrap();
    writeln!(
        out,
        "|---:|{}---:|---:|---:|",
        "---:|".repeat(ALLOCATORS.len())
    )
    .unwrap();
    for (&t, machine) in counts.iter().zip(ceiling) {
        let cells: Vec<String> = ALLOCATORS
            .iter()
            .map(|a| format!("{:.1}", mops[&(t, *a)]))
            .collect();
        let speedups: Vec<String> = ALLOCATORS
            .iter()
            .map(|a| format!("{:.2}", mops[&(t, *a)] / mops[&(1, *a)]))
            .collect();
        writeln!(
            out,
            "| {t} | {} | {:.2}× | {} | {machine:.2} |",
            cells.join(" | "),
            mops[&(t, "pymalloc")] / mops[&(t, "system")],
            speedups.join(" / ")
        )
        .unwrap();
    }
    out
}

/// Iterations per second of an arithmetic loop on `threads` threads together: the machine's
/// own scaling, with no allocator involved.
fn spin_rate(threads: usize) -> u64 {
    const ITERATIONS: u64 = 200_000_000;
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads as u64 {
            s.spawn(move || {
                let mut x = t;
                for i in 0..ITERATIONS {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i);
                }
                std::hint::black_box(x);
            });
        }
    });
    ((threads as u64 * ITERATIONS) as f64 / start.elapsed().as_secs_f64()) as u64
}

/// Horizontal bars of each allocator's time and peak-RSS ratio to the system allocator, on a
/// log scale from 1/16 to 16 (beyond is drawn at the edge), one group per workload.
fn chart(medians: &Medians, workloads: &[&'static str]) -> String {
    const COLORS: [&str; ALLOCATORS.len()] =
        ["#888888", "#d62728", "#ff9896", "#1f77b4", "#2ca02c"];
    let (label_w, panel_w, panel_gap, bar_h, gap) = (150.0, 360.0, 60.0, 7.0, 10.0);
    let group_h = bar_h * ALLOCATORS.len() as f64 + gap;
    let height = 60.0 + group_h * workloads.len() as f64 + 30.0;
    let width = label_w + 2.0 * (panel_w + panel_gap);
    let x_of = |ratio: f64, panel: usize| {
        let r = ratio.clamp(1.0 / 16.0, 16.0);
        label_w + panel as f64 * (panel_w + panel_gap) + panel_w * (r.log2() + 4.0) / 8.0
    };
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (panel, title) in [
        "time ÷ system (lower is better)",
        "peak RSS ÷ system (lower is better)",
    ]
    .iter()
    .enumerate()
    {
        let x0 = label_w + panel as f64 * (panel_w + panel_gap);
        writeln!(
            s,
            "<text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-weight=\"bold\">{title}</text>",
            x0 + panel_w / 2.0
        )
        .unwrap();
        for r in [0.0625, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0] {
            let x = x_of(r, panel);
            let stroke = if r == 1.0 { "#000" } else { "#ddd" };
            writeln!(
                s,
                "<line x1=\"{x}\" y1=\"40\" x2=\"{x}\" y2=\"{}\" stroke=\"{stroke}\"/>",
                height - 30.0
            )
            .unwrap();
            let label = if r < 1.0 {
                format!("1/{}", (1.0 / r) as u32)
            } else {
                format!("{r}")
            };
            writeln!(
                s,
                "<text x=\"{x}\" y=\"34\" text-anchor=\"middle\">{label}×</text>"
            )
            .unwrap();
        }
    }
    for (g, w) in workloads.iter().enumerate() {
        let y0 = 45.0 + g as f64 * group_h;
        writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{w}</text>",
            label_w - 8.0,
            y0 + group_h / 2.0
        )
        .unwrap();
        for (i, a) in ALLOCATORS.iter().enumerate() {
            let y = y0 + i as f64 * bar_h;
            for (panel, m) in [(0usize, 0usize), (1, 1)] {
                let ratio = medians[&(*w, *a)][m].max(1) as f64
                    / medians[&(*w, ALLOCATORS[0])][m].max(1) as f64;
                let (x1, x2) = (x_of(1.0, panel), x_of(ratio, panel));
                writeln!(
                    s,
                    "<rect x=\"{}\" y=\"{y}\" width=\"{}\" height=\"{}\" fill=\"{}\"><title>{w} {a}: {ratio:.2}×</title></rect>",
                    x1.min(x2),
                    (x2 - x1).abs().max(1.0),
                    bar_h - 1.0,
                    COLORS[i]
                )
                .unwrap();
            }
        }
    }
    for (i, a) in ALLOCATORS.iter().enumerate() {
        let x = label_w + i as f64 * 110.0;
        writeln!(
            s,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"10\" fill=\"{}\"/>",
            height - 20.0,
            COLORS[i]
        )
        .unwrap();
        writeln!(
            s,
            "<text x=\"{}\" y=\"{}\">{a}</text>",
            x + 16.0,
            height - 11.0
        )
        .unwrap();
    }
    s.push_str("</svg>\n");
    s
}

fn main() {
    let opts = options();
    let workloads: Vec<&'static str> = WORKLOADS
        .iter()
        .map(|w| w.name)
        .filter(|n| {
            opts.only
                .as_deref()
                .is_none_or(|o| o.split(',').any(|o| o == *n))
        })
        .collect();
    assert!(!workloads.is_empty(), "no workload named {:?}", opts.only);
    eprintln!("building the workers …");
    let dir = build_workers();
    let total = workloads.len() * opts.runs * ALLOCATORS.len();
    let mut samples: BTreeMap<(&str, &str), Vec<Sample>> = BTreeMap::new();
    let mut k = 0;
    for w in &workloads {
        for run in 1..=opts.runs {
            for a in ALLOCATORS {
                k += 1;
                eprint!(
                    "\r[{k:>3}/{total}] {w:<18} {a:<9} run {run}/{}   ",
                    opts.runs
                );
                let sample = run_worker(&dir, a, w, opts.quick, 1);
                samples.entry((*w, a)).or_default().push(sample);
            }
        }
        let checks: Vec<u64> = ALLOCATORS
            .iter()
            .flat_map(|a| samples[&(*w, *a)].iter().map(|s| s.check))
            .collect();
        assert!(
            checks.windows(2).all(|p| p[0] == p[1]),
            "{w}: allocators computed different results: {checks:?}"
        );
    }
    eprintln!();
    let medians: Medians = samples
        .iter()
        .map(|(&key, v)| {
            (
                key,
                [
                    median(v.iter().map(|s| s.time_ns).collect()),
                    median(v.iter().map(|s| s.peak_rss).collect()),
                    median(v.iter().map(|s| s.end_rss).collect()),
                    median(v.iter().map(|s| s.minor_faults).collect()),
                    median(v.iter().map(|s| s.sys_ns).collect()),
                ],
            )
        })
        .collect();
    let mut table = table(&medians, &workloads);
    if opts
        .only
        .as_deref()
        .is_none_or(|o| o.split(',').any(|o| o == "small-churn"))
    {
        table.push_str(&scaling(&dir, &opts));
    }
    println!("{table}");

    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let mut md = String::from("# Benchmarks\n\n");
    writeln!(md, "pymalloc beside the system allocator (glibc), mimalloc and jemalloc, each the global allocator of its own worker process, run interleaved; medians of {} runs. pymalloc-secure is pymalloc's hardened build (`--features secure`, [security.md](security.md)).\n", opts.runs).unwrap();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flags = if args.is_empty() {
        String::new()
    } else {
        format!(" -- {}", args.join(" "))
    };
    writeln!(
        md,
        "- command: `cargo run --release -p pymalloc-bench{flags}`"
    )
    .unwrap();
    writeln!(md, "{}", provenance()).unwrap();
    writeln!(md, "\n| workload | what it does |\n|---|---|").unwrap();
    for w in WORKLOADS.iter().filter(|w| workloads.contains(&w.name)) {
        writeln!(md, "| {} | {} |", w.name, w.what).unwrap();
    }
    md.push_str(&table);
    md.push_str("\n![time and peak RSS as ratios to the system allocator](benchmarks.svg)\n");
    std::fs::write(docs.join("benchmarks.md"), md).expect("write docs/benchmarks.md");
    std::fs::write(docs.join("benchmarks.svg"), chart(&medians, &workloads))
        .expect("write docs/benchmarks.svg");
    eprintln!("wrote docs/benchmarks.md and docs/benchmarks.svg");
}
