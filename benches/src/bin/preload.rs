//! `preload`: programs people already run, on each C allocator through `LD_PRELOAD` —
//! glibc's own, pymalloc's `libpymalloc_override.so`, and jemalloc's and mimalloc's shared
//! libraries where installed (Debian's `libjemalloc2` and `libmimalloc2.0`) — run interleaved;
//! prints the medians of wall time and peak RSS with ratios to glibc, checks that every
//! allocator gives the same output, and writes `docs/preload.md`.
//!
//! ```sh
//! cargo run --release -p pymalloc-bench --bin preload [-- --quick] [--runs N] [--only a,b]
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use pymalloc_bench::report::{median, provenance, ratio};

/// One program to run: its command line and environment.
struct Program {
    name: &'static str,
    what: &'static str,
    argv: Vec<String>,
    env: Vec<(&'static str, String)>,
}

/// A C allocator: none (glibc) or a library to preload.
struct Peer {
    name: &'static str,
    lib: Option<PathBuf>,
}

struct Sample {
    time_ns: u64,
    peak_rss: u64,
    minor_faults: u64,
    sys_ns: u64,
    output: u64,
}

/// One measure of the tables: title, unit, the value of a sample, and the divisor that shows
/// it in that unit.
type Measure = (&'static str, &'static str, fn(&Sample) -> u64, f64);

/// The measures of the tables.
const MEASURES: [Measure; 4] = [
    ("time", "ms", |s| s.time_ns, 1e6),
    ("peak RSS", "MiB", |s| s.peak_rss, (1 << 20) as f64),
    ("minor page faults", "thousands", |s| s.minor_faults, 1e3),
    ("system CPU time", "ms", |s| s.sys_ns, 1e6),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds `libpymalloc_override.so` in release mode; its path.
fn build_override(secure: bool) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let release = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let mut command = Command::new(cargo);
    command.args(["build", "--release", "--quiet", "-p", "pymalloc-override"]);
    // The hardened build in a target directory of its own, so that the two builds do not
    // rebuild each other.
    let secure_target = release.parent().unwrap().join("secure");
    if secure {
        command
            .args(["--features", "secure", "--target-dir"])
            .arg(&secure_target);
    }
    let status = command.status().expect("run cargo");
    assert!(status.success(), "building pymalloc-override failed");
    let lib = if secure {
        secure_target.join("release/libpymalloc_override.so")
    } else {
        release.join("libpymalloc_override.so")
    };
    assert!(lib.exists(), "{} missing", lib.display());
    lib
}

/// A shared library of the system's, if installed.
fn system_library(name: &str) -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ]
    .iter()
    .map(|dir| Path::new(dir).join(name))
    .find(|p| p.exists())
}

fn scratch() -> PathBuf {
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .join("preload-bench");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Compiles `benches/c/<name>.c`.
fn build_c(dir: &Path, name: &str) -> PathBuf {
    let exe = dir.join(name);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("c/{name}.c"));
    let status = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&exe)
        .arg(&source)
        .arg("-lpthread")
        .status()
        .expect("cc (a C compiler) must be installed");
    assert!(status.success(), "compiling {}", source.display());
    exe
}

/// Compiles `benches/c/empty_library.c` into a shared library with nothing in it: the floor
/// of any `LD_PRELOAD` for the start-up table.
fn build_empty_library(dir: &Path) -> PathBuf {
    let lib = dir.join("libempty.so");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("c/empty_library.c");
    let status = Command::new("cc")
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&source)
        .status()
        .expect("cc (a C compiler) must be installed");
    assert!(status.success(), "compiling {}", source.display());
    lib
}

/// Each peer's start-up from `benches/c/startups.c`: `steps` starts of `empty` under every
/// peer in turn, and for each the median start and the median of its differences to the
/// first peer's (glibc's), in nanoseconds.
fn starts_in_turn(dir: &Path, empty: &str, peers: &[&Peer], steps: usize) -> Vec<(u64, i64)> {
    let startups = build_c(dir, "startups");
    let libs = peers.iter().map(|peer| match &peer.lib {
        Some(lib) => lib.as_os_str().to_owned(),
        None => "-".into(),
    });
    let out = Command::new(&startups)
        .arg(steps.to_string())
        .arg(empty)
        .args(libs)
        .env_remove("LD_PRELOAD")
        .output()
        .expect("run startups");
    assert!(out.status.success(), "startups failed");
    let lines: Vec<(u64, i64)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let mut fields = line.split(' ').map(|f| f.parse::<i64>().unwrap());
            let start = fields.next().unwrap();
            (start as u64, fields.next().unwrap())
        })
        .collect();
    assert_eq!(lines.len(), peers.len(), "startups: a line a library");
    lines
}

/// Compiles `benches/c/<name>.cpp` with the system's C++ compiler.
fn build_cpp(dir: &Path, name: &str) -> PathBuf {
    let exe = dir.join(name);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("c/{name}.cpp"));
    let status = Command::new("c++")
        .args(["-O2", "-std=c++17", "-o"])
        .arg(&exe)
        .arg(&source)
        .status()
        .expect("c++ (a C++ compiler) must be installed");
    assert!(status.success(), "compiling {}", source.display());
    exe
}

/// The Python interpreter itself, not a wrapper in front of it (pyenv's `python3` is a shell
/// script, which would be timed and preloaded too).
fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 must be installed");
    let exe = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(!exe.is_empty(), "python3 did not say where it is");
    exe
}

/// Lines of pseudo-random words and numbers.
fn write_lines(path: &Path, lines: usize) {
    let words = [
        "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
        "lambda", "mu", "quux",
    ];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut text = String::new();
    for _ in 0..lines {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let (a, b) = (state, state.rotate_left(29));
        writeln!(
            text,
            "{}{} {} {}",
            words[a as usize % words.len()],
            a % 5000,
            b % 1_000_000,
            words[(b >> 40) as usize % words.len()]
        )
        .unwrap();
    }
    std::fs::write(path, text).unwrap();
}

/// Python that allocates many small objects, growing containers and big strings.
const PYTHON: &str = r#"
import hashlib, json, random, sys
random.seed(7)
n = int(sys.argv[1])
h = hashlib.sha256()
records = [{"id": i, "name": "n%06d" % random.randrange(10**6),
            "tags": [str(random.random()) for _ in range(random.randrange(8))],
            "blob": "x" * random.randrange(2000)} for i in range(n)]
records.sort(key=lambda r: (r["name"], r["id"]))
text = json.dumps(records)
again = json.loads(text)
index = {}
for r in again:
    index.setdefault(r["name"][:3], []).append(r["id"])
h.update(text.encode())
h.update(repr(sorted((k, len(v)) for k, v in index.items())).encode())
print(h.hexdigest())
"#;

/// Python that creates and drops objects of its common sizes in bulk: tuples of floats,
/// dicts, lists, ints, strings, small class instances and sets, in six rounds.
const PYTHON_OBJECTS: &str = r#"
import sys
n = int(sys.argv[1])
acc = 0
class P:
    __slots__ = ("a", "b")
    def __init__(self, a, b):
        self.a = a; self.b = b
for rnd in range(6):
    pts = [(i * 0.5, i * 1.5, float(i)) for i in range(n)]
    acc += int(sum(p[0] for p in pts)) & 0xffff
    rows = [{"id": i, "v": i * 3, "name": "r%d" % i, "tags": [i, i + 1]} for i in range(n // 2)]
    acc += sum(len(r["tags"]) + r["v"] for r in rows) & 0xffff
    words = ["w%d-%s" % (i, "x" * (i % 40)) for i in range(n)]
    acc += len("".join(words[::7]))
    live = []
    for i in range(n):
        live.append(P(i, [i]))
        if len(live) > 1000:
            live = live[500:]
    acc += len(live)
    s = {i * 7919 for i in range(n)}
    acc += len(s)
    del pts, rows, words, live, s
print(acc)
"#;

/// Processes the `startup` program starts.
const STARTS: &str = "1000";

/// Starts of the empty program under each library for the start-up table (`startups.c`).
const STARTUP_STEPS: usize = 3000;
const STARTUP_STEPS_QUICK: usize = 500;

fn programs(dir: &Path, quick: bool) -> Vec<Program> {
    let churn = build_c(dir, "churn").display().to_string();
    let larson = build_c(dir, "larson").display().to_string();
    let producer_consumer = build_c(dir, "producer_consumer").display().to_string();
    let large_loop = build_c(dir, "large_loop").display().to_string();
    let realloc_large = build_c(dir, "realloc_large").display().to_string();
    let cpp_churn = build_cpp(dir, "cpp_churn").display().to_string();
    let spawn = build_c(dir, "spawn").display().to_string();
    let empty = build_c(dir, "empty").display().to_string();
    let python = python();
    let objects = if quick { "60000" } else { "200000" };
    let cpp_rounds = if quick { "6" } else { "20" };
    let lines = dir.join("lines.txt");
    write_lines(&lines, if quick { 300_000 } else { 1_000_000 });
    let lines = lines.display().to_string();
    let ops = if quick { "4000000" } else { "20000000" };
    let larson_ops = if quick { "1000000" } else { "4000000" };
    let messages = if quick { "500000" } else { "2000000" };
    let large_blocks = if quick { "400" } else { "2000" };
    let realloc_ops = if quick { "30000" } else { "100000" };
    let records = if quick { "40000" } else { "150000" };
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        Program {
            name: "c-churn",
            what: "a C program: malloc/free/realloc, mostly 8–255 B, a window of 4096 live blocks",
            argv: s(&[&churn, "1", ops]),
            env: vec![],
        },
        Program {
            name: "c-churn-2t",
            what: "the same in 2 threads, a tenth of the frees of the other thread's blocks",
            argv: s(&[&churn, "2", ops]),
            env: vec![],
        },
        Program {
            name: "c-larson",
            what: "a C program: 4 threads replace random slots of one shared array (8 B to 1 KiB), freeing what another thread allocated",
            argv: s(&[&larson, "4", larson_ops]),
            env: vec![],
        },
        Program {
            name: "c-producer-consumer",
            what: "a C program: 2 threads allocate messages of 8 B to 2 KiB, 2 others read and free them (a bounded queue)",
            argv: s(&[&producer_consumer, messages]),
            env: vec![],
        },
        Program {
            name: "large-loop",
            what: "a C program: blocks of 1–32 MiB allocated, written a byte per page and freed, one at a time",
            argv: s(&[&large_loop, large_blocks]),
            env: vec![],
        },
        Program {
            name: "realloc-large",
            what: "a C program: 64 blocks above 256 KiB grown, shrunk and freed with realloc",
            argv: s(&[&realloc_large, realloc_ops]),
            env: vec![],
        },
        Program {
            name: "cpp-churn",
            what: "a C++ program: std::map of std::string to std::vector, nodes made and dropped (sized delete)",
            argv: s(&[&cpp_churn, cpp_rounds]),
            env: vec![],
        },
        Program {
            name: "startup",
            what: "1000 starts of an empty C program, one after another (the time of one start is this over 1000)",
            argv: s(&[&spawn, STARTS, &empty]),
            env: vec![],
        },
        Program {
            name: "python-objects-malloc",
            what: "python3 with PYTHONMALLOC=malloc: tuples of floats, dicts, lists, strings, instances and sets made and dropped in bulk",
            argv: s(&[&python, "-c", PYTHON_OBJECTS, objects]),
            env: vec![
                ("PYTHONMALLOC", "malloc".into()),
                ("PYTHONHASHSEED", "0".into()),
            ],
        },
        Program {
            name: "python-objects",
            what: "the same with Python's own small-object allocator: the line to beat",
            argv: s(&[&python, "-c", PYTHON_OBJECTS, objects]),
            env: vec![("PYTHONHASHSEED", "0".into())],
        },
        Program {
            name: "python-malloc",
            what: "python3 with PYTHONMALLOC=malloc (every object through malloc): JSON, dicts, sorting",
            argv: s(&[&python, "-c", PYTHON, records]),
            env: vec![
                ("PYTHONMALLOC", "malloc".into()),
                ("PYTHONHASHSEED", "0".into()),
            ],
        },
        Program {
            name: "python",
            what: "the same with Python's own small-object allocator (only larger requests reach malloc)",
            argv: s(&[&python, "-c", PYTHON, records]),
            env: vec![("PYTHONHASHSEED", "0".into())],
        },
        Program {
            name: "sort",
            what: "GNU sort of the lines file by number then word",
            argv: s(&["sort", "-k2,2n", "-k1,1", &lines]),
            env: vec![],
        },
        Program {
            name: "sort-parallel",
            what: "the same with --parallel=2 (threads)",
            argv: s(&[
                "sort",
                "--parallel=2",
                "-S",
                "64M",
                "-k2,2n",
                "-k1,1",
                &lines,
            ]),
            env: vec![],
        },
        Program {
            name: "pipeline",
            what: "sh -c 'sort | grep | awk (associative arrays) | sort'",
            argv: s(&[
                "sh",
                "-c",
                "sort \"$1\" | grep -v quux | awk '{ n[$1] += $2; w[$3]++ } \
                 END { for (k in n) print k, n[k]; for (k in w) print k, w[k] }' | sort",
                "sh",
                &lines,
            ]),
            env: vec![],
        },
    ]
}

/// Runs `program` once on `peer`, through `peak_rss` (see `benches/c/peak_rss.c`): wall time,
/// peak RSS (of the process or, for a pipeline, of the largest one) and a hash of its output.
fn measure(program: &Program, peer: &Peer, peak_rss: &Path, dir: &Path) -> Sample {
    let rss_file = dir.join("peak-rss.txt");
    let mut cmd = Command::new(peak_rss);
    cmd.arg(&rss_file)
        .args(&program.argv)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in &program.env {
        cmd.env(k, v);
    }
    match &peer.lib {
        Some(lib) => cmd.env("LD_PRELOAD", lib),
        None => cmd.env_remove("LD_PRELOAD"),
    };
    let start = Instant::now();
    let mut child = cmd.spawn().expect("start the program");
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let status = child.wait().expect("wait for the program");
    let time_ns = start.elapsed().as_nanos() as u64;
    assert!(
        status.success(),
        "{} on {} failed ({status})",
        program.name,
        peer.name
    );
    let usage: Vec<u64> = std::fs::read_to_string(&rss_file)
        .expect("peak_rss wrote its file")
        .split_whitespace()
        .map(|v| v.parse().expect("a number"))
        .collect();
    let [kib, minor_faults, sys_us] = usage[..] else {
        panic!("peak_rss wrote {usage:?}");
    };
    let mut hasher = DefaultHasher::new();
    hasher.write(&out);
    Sample {
        time_ns,
        peak_rss: kib * 1024,
        minor_faults,
        sys_ns: sys_us * 1000,
        output: hasher.finish(),
    }
}

/// Steps of `benches/c/ops.c` under callgrind.
const OPS_STEPS: u64 = 1_000_000;

/// Instructions per `malloc` and per `free` on each peer, counted by callgrind (inclusive of
/// what they call) over `benches/c/ops.c`'s steady state, if valgrind is installed: a table.
fn instructions(peers: &[Peer], dir: &Path) -> Option<String> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("valgrind not found (apt-get install valgrind): no instruction counts");
        return None;
    }
    let ops = build_c(dir, "ops");
    let mut table = String::from(
        "\n**instructions per call** (callgrind, inclusive; `benches/c/ops.c`: 1 000 000 steps \
         of one `free` and one `malloc` of 16–255 bytes among 1 024 live blocks)\n\n\
         | | malloc | free |\n|---|---:|---:|\n",
    );
    for peer in peers {
        let out_file = dir.join(format!("callgrind-{}.out", peer.name));
        let mut cmd = Command::new("valgrind");
        cmd.arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out_file.display()))
            .arg(&ops)
            .arg(OPS_STEPS.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match &peer.lib {
            Some(lib) => cmd.env("LD_PRELOAD", lib),
            None => cmd.env_remove("LD_PRELOAD"),
        };
        if !cmd.status().is_ok_and(|s| s.success()) {
            eprintln!("callgrind failed on {}", peer.name);
            continue;
        }
        let annotated = Command::new("callgrind_annotate")
            .args(["--inclusive=yes", "--threshold=100"])
            .arg(&out_file)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&annotated.stdout);
        // Lines like `94,103,672 (49.64%)  ./malloc/./malloc/malloc.c:free [/usr/lib/…]`; a
        // function callgrind splits over several files is summed.
        let count = |name: &str| -> u64 {
            text.lines()
                .filter_map(|line| {
                    let (number, rest) = line.trim().split_once(' ')?;
                    let symbol = rest.split_whitespace().nth(1)?;
                    (symbol.rsplit(':').next()? == name)
                        .then(|| number.replace(',', "").parse::<u64>().ok())?
                })
                .sum()
        };
        let (malloc, free) = (count("malloc"), count("free"));
        writeln!(
            table,
            "| {} | {:.0} | {:.0} |",
            peer.name,
            malloc as f64 / OPS_STEPS as f64,
            free as f64 / OPS_STEPS as f64
        )
        .unwrap();
    }
    Some(table)
}

/// Instructions an empty program executes from its start to its exit with `lib` preloaded
/// (or nothing), counted by callgrind: the dynamic loader's work for the library, without
/// the noise of timing a process start on a shared machine. `None` without valgrind.
fn instructions_to_start(empty: &str, lib: Option<&Path>) -> Option<u64> {
    let mut cmd = Command::new("valgrind");
    cmd.args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(empty)
        .stdout(Stdio::null());
    match lib {
        Some(lib) => cmd.env("LD_PRELOAD", lib),
        None => cmd.env_remove("LD_PRELOAD"),
    };
    let out = cmd.output().ok()?;
    // A line like `==4242== Collected : 155393`.
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|line| line.split_once("Collected :")?.1.trim().parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(if quick { 3 } else { 5 });
    eprintln!("building libpymalloc_override.so …");
    let ours = build_override(false);
    eprintln!("building the hardened libpymalloc_override.so (--features secure) …");
    let hardened = build_override(true);
    let mut peers = vec![
        Peer {
            name: "glibc",
            lib: None,
        },
        Peer {
            name: "pymalloc",
            lib: Some(ours),
        },
        Peer {
            name: "pymalloc-secure",
            lib: Some(hardened),
        },
    ];
    for (name, file, package) in [
        ("jemalloc", "libjemalloc.so.2", "libjemalloc2"),
        ("mimalloc", "libmimalloc.so.2", "libmimalloc2.0"),
    ] {
        match system_library(file) {
            Some(lib) => peers.push(Peer {
                name,
                lib: Some(lib),
            }),
            None => eprintln!("{name}: {file} not found (apt-get install {package}); left out"),
        }
    }
    let dir = scratch();
    let peak_rss = build_c(&dir, "peak_rss");
    // `--only a,b`: just those programs (for a closer look; the page is written all the same).
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').map(str::to_string).collect());
    let programs: Vec<Program> = programs(&dir, quick)
        .into_iter()
        .filter(|p| only.as_ref().is_none_or(|o| o.iter().any(|n| n == p.name)))
        .collect();
    let total = programs.len() * runs * peers.len();
    let mut samples: BTreeMap<(usize, usize), Vec<Sample>> = BTreeMap::new();
    // The start-up table also starts the empty program with an empty library preloaded: what
    // preloading any library costs, under every allocator's start-up.
    let floor = Peer {
        name: "an empty library",
        lib: Some(build_empty_library(&dir)),
    };
    let mut k = 0;
    // Every round runs every program on every allocator, so that the rows compared with each
    // other (Python on malloc against Python on its own allocator) are interleaved too.
    for run in 1..=runs {
        for (p, program) in programs.iter().enumerate() {
            for (a, peer) in peers.iter().enumerate() {
                k += 1;
                eprint!(
                    "\r[{k:>3}/{total}] {:<22} {:<9} run {run}/{runs}   ",
                    program.name, peer.name
                );
                samples
                    .entry((p, a))
                    .or_default()
                    .push(measure(program, peer, &peak_rss, &dir));
            }
        }
    }
    for (p, program) in programs.iter().enumerate() {
        let outputs: Vec<u64> = (0..peers.len())
            .flat_map(|a| samples[&(p, a)].iter().map(|s| s.output))
            .collect();
        assert!(
            outputs.windows(2).all(|w| w[0] == w[1]),
            "{}: the allocators' outputs differ",
            program.name
        );
    }
    eprintln!();

    let mut table = String::new();
    for (title, unit, pick, scale) in MEASURES {
        write!(
            table,
            "\n**{title}** ({unit}; ratio to glibc)\n\n| program |"
        )
        .unwrap();
        for peer in &peers {
            write!(table, " {} |", peer.name).unwrap();
        }
        table.push_str("\n|---|");
        table.push_str(&"---:|".repeat(peers.len()));
        table.push('\n');
        for (p, program) in programs.iter().enumerate() {
            let value = |a: usize| median(samples[&(p, a)].iter().map(pick).collect()) as f64;
            let base = value(0);
            write!(table, "| {} |", program.name).unwrap();
            for a in 0..peers.len() {
                let v = value(a);
                let shown = v / scale;
                if a == 0 {
                    write!(table, " {shown:.1} |").unwrap();
                } else {
                    write!(table, " {shown:.1} ({}) |", ratio(v, base)).unwrap();
                }
            }
            table.push('\n');
        }
    }
    if let Some(counts) = instructions(&peers, &dir) {
        table.push_str(&counts);
    }
    let startup = programs.iter().position(|p| p.name == "startup");
    if let Some(p) = startup {
        let steps = if quick {
            STARTUP_STEPS_QUICK
        } else {
            STARTUP_STEPS
        };
        write!(
            table,
            "\n**start-up** (µs per process and what it costs more than glibc's, from {steps} \
             starts of an empty program under each library in turn, one after another: the \
             median start, and the median of each step's difference to glibc's start, a \
             millisecond apart; and the instructions the empty program executes from start to \
             exit under callgrind, beside glibc's. The empty library is the floor: what \
             preloading any library costs)\n\n\
             | | µs | more | instructions | more |\n|---|---:|---:|---:|---:|\n"
        )
        .unwrap();
        let empty = &programs[p].argv[2];
        let with_floor: Vec<&Peer> = peers.iter().chain([&floor]).collect();
        let alternated = starts_in_turn(&dir, empty, &with_floor, steps);
        let rows: Vec<_> = with_floor
            .iter()
            .zip(alternated)
            .map(|(peer, (start_ns, more_ns))| {
                let counted = instructions_to_start(empty, peer.lib.as_deref());
                (peer, start_ns as f64 / 1e3, more_ns as f64 / 1e3, counted)
            })
            .collect();
        // The first peer is glibc, with nothing preloaded.
        let glibc_instructions = rows.first().and_then(|&(_, _, _, counted)| counted);
        for (peer, us, more_us, counted) in rows {
            let (instructions, more) = match (counted, glibc_instructions) {
                (Some(n), Some(base)) => (n.to_string(), format!("{:+}", n as i64 - base as i64)),
                _ => ("—".into(), "—".into()),
            };
            writeln!(
                table,
                "| {} | {us:.0} | {more_us:+.0} | {instructions} | {more} |",
                peer.name,
            )
            .unwrap();
        }
    }
    println!("{table}");

    let mut md = String::from("# Programs under LD_PRELOAD\n\n");
    writeln!(
        md,
        "Each program run with the C allocator replaced through `LD_PRELOAD` (glibc: nothing \
         preloaded; pymalloc-secure: pymalloc's hardened build, `--features secure`, \
         [security.md](security.md); jemalloc and mimalloc: Debian's shared libraries), \
         interleaved (each round runs every program on every allocator), medians of {runs} \
         runs; every allocator gave the same output.\n"
    )
    .unwrap();
    let flags = if quick { " -- --quick" } else { "" };
    writeln!(
        md,
        "- command: `cargo run --release -p pymalloc-bench --bin preload{flags}`\n{}",
        provenance()
    )
    .unwrap();
    writeln!(md, "\n| program | what it does |\n|---|---|").unwrap();
    for program in &programs {
        writeln!(md, "| {} | {} |", program.name, program.what).unwrap();
    }
    md.push_str(&table);
    let path = workspace().join("docs/preload.md");
    std::fs::write(&path, md).expect("write docs/preload.md");
    eprintln!("wrote {}", path.display());
}
