//! `libpymalloc_override.so` under `LD_PRELOAD`: the C test program (every function and its edge
//! cases, threads, fork, the loader), invalid frees, and real programs — a shell pipeline,
//! Python with every object through `malloc`, and multi-threaded `sort` — whose output must
//! equal their output on the system allocator; and a C++ program of sized frees. Needs `cc`,
//! `c++`, `sh`, `sort`, `grep`, `awk` and `python3` (`.ci/run` checks they are there).
#![cfg(target_os = "linux")]

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The library under test, built once per test binary through cargo in the profile this test
/// was built in (`target/debug/` is the `test` profile's, `target/release/` the release
/// profile's): `cargo test` builds no cdylib, and the package is only one (`Cargo.toml`).
fn library() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test executable path");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("target/<profile>");
            let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
                Some("release") => "release",
                _ => "test",
            };
            let status = Command::new(env!("CARGO"))
                .args(["build", "--quiet", "--lib", "-p", "pymalloc-override"])
                .args(["--profile", profile])
                .status()
                .expect("run cargo");
            assert!(status.success(), "building libpymalloc_override.so");
            let lib = profile_dir.join("libpymalloc_override.so");
            assert!(lib.exists(), "{} not built", lib.display());
            lib
        })
        .clone()
}

/// Scratch space for this test binary.
fn scratch() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("preload")
}

/// Compiles `tests/c/<name>.c` into the scratch folder.
fn compile(name: &str) -> PathBuf {
    std::fs::create_dir_all(scratch()).unwrap();
    let exe = scratch().join(name);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/c/{name}.c"));
    let status = Command::new("cc")
        .args(["-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(&source)
        .args(["-lpthread", "-ldl"])
        .status()
        .expect("cc (a C compiler) must be installed");
    assert!(status.success(), "compiling {}", source.display());
    exe
}

/// The C++ test program of sized frees (`tests/cpp/sized_delete.cpp`), compiled once with the
/// system's C++ compiler (sized deallocation is on by default from C++14).
fn sized_delete() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        std::fs::create_dir_all(scratch()).unwrap();
        let exe = scratch().join("sized_delete");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cpp/sized_delete.cpp");
        let status = Command::new("c++")
            .args(["-O2", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&exe)
            .arg(&source)
            .arg("-ldl")
            .status()
            .expect("c++ (a C++ compiler) must be installed");
        assert!(status.success(), "compiling {}", source.display());
        exe
    })
}

/// The C test program, compiled once.
fn abi_test() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| compile("abi_test"))
}

/// The program that forks under its own `pthread_atfork` handlers, compiled once.
fn fork_handlers() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| compile("fork_handlers"))
}

/// Runs `command` on pymalloc (`preload`) or on the system allocator, with the statistics
/// printed at exit when preloaded.
fn run(command: Command, preload: bool) -> Output {
    run_within(command, preload, Duration::from_secs(600))
}

/// [`run`], but a program still running after `limit` is killed, with its children (its
/// process group), and the test fails: it hung.
fn run_within(mut command: Command, preload: bool, limit: Duration) -> Output {
    if preload {
        command
            .env("LD_PRELOAD", library())
            .env("PYMALLOC_STATS", "1");
    } else {
        command.env_remove("LD_PRELOAD");
    }
    let mut child = command
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("program runs");
    // Read as it comes, so that a program writing more than a pipe holds never waits on us.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).expect("program's output");
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the program") {
            break status;
        }
        if start.elapsed() > limit {
            let group = -i32::try_from(child.id()).expect("a pid fits an i32");
            // SAFETY: kill has no memory-safety conditions; the group is the child's own.
            unsafe { libc::kill(group, libc::SIGKILL) };
            let _ = child.wait();
            panic!("{command:?} still running after {limit:?}: it hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// How many processes printed pymalloc's statistics at exit: how many ran on it.
fn processes_on_pymalloc(out: &Output) -> usize {
    text(&out.stderr).matches("pymalloc statistics").count()
}

/// Runs `make()` on both allocators: both succeed with the same, non-empty standard output,
/// and at least `min_processes` processes ran on pymalloc.
fn same_output(make: impl Fn() -> Command, min_processes: usize) -> Output {
    let system = run(make(), false);
    let ours = run(make(), true);
    assert!(system.status.success(), "system: {}", text(&system.stderr));
    assert!(ours.status.success(), "pymalloc: {}", text(&ours.stderr));
    assert!(!system.stdout.is_empty());
    assert!(
        system.stdout == ours.stdout,
        "outputs differ:\n{}\n---\n{}",
        text(&system.stdout),
        text(&ours.stdout)
    );
    let on_pymalloc = processes_on_pymalloc(&ours);
    assert!(
        on_pymalloc >= min_processes,
        "{on_pymalloc} processes ran on pymalloc:\n{}",
        text(&ours.stderr)
    );
    ours
}

#[test]
fn the_c_test_passes() {
    let out = run(Command::new(abi_test()), true);
    succeeds_with_ok(&out);
    // The fork test's children exit with _exit: only the parent prints statistics.
    assert_eq!(processes_on_pymalloc(&out), 1, "{}", text(&out.stderr));
}

#[test]
fn freeing_a_block_twice_in_a_row_aborts_with_a_message() {
    let mut command = Command::new(abi_test());
    command.arg("double-free");
    let out = run(command, true);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT));
    // The freelist's head gives it away, or, if the pool has no other block in use, its
    // count of blocks in use.
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("pymalloc: fatal: free") && stderr.contains("double free"),
        "{stderr}"
    );
}

#[test]
fn freeing_a_block_again_after_another_aborts_with_a_message() {
    let mut command = Command::new(abi_test());
    command.arg("double-free-later");
    let out = run(command, true);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT));
    // The freelist's head is the other block: the freed mark gives it away.
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("pymalloc: fatal: free of a block that is already free (double free)"),
        "{stderr}"
    );
}

#[test]
fn the_c_test_notices_when_pymalloc_is_not_loaded() {
    let out = run(Command::new(abi_test()), false);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("marker != NULL"));
}

/// A program that registers its `pthread_atfork` handlers before its first `malloc` forks 300
/// times, in each of the three orders that deadlock when pymalloc's prepare handler runs
/// first (it holds the allocator's locks while the program's handlers run): a prepare
/// handler waiting for a thread that is inside `malloc`, a prepare handler that allocates,
/// and a child handler that allocates. glibc runs all three.
#[test]
fn fork_works_under_handlers_the_program_registered_first() {
    for mode in ["prepare-lock", "prepare-malloc", "child-malloc"] {
        for preload in [false, true] {
            let mut command = Command::new(fork_handlers());
            command.arg(mode);
            let out = run_within(command, preload, Duration::from_secs(120));
            let on = if preload { "pymalloc" } else { "system" };
            assert!(
                out.status.success(),
                "{mode} on {on}: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
            assert_eq!(text(&out.stdout), "ok\n", "{mode} on {on}");
        }
    }
}

#[test]
fn freeing_a_pointer_pymalloc_did_not_hand_out_aborts_with_a_message() {
    for mode in ["invalid-free", "interior-free"] {
        let mut command = Command::new(abi_test());
        command.arg(mode);
        let out = run(command, true);
        assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{mode}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("pymalloc: fatal: free: pointer is no block of this allocator"),
            "{mode}: {stderr}"
        );
    }
}

/// A test program's run: it must exit 0 having printed `ok` alone.
fn succeeds_with_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "ok\n");
}

/// Runs `program MODE` on pymalloc: it must abort (SIGABRT) with `expected` on stderr.
fn aborts_with(program: &Path, mode: &str, expected: &str) {
    let mut command = Command::new(program);
    command.arg(mode);
    assert_aborted(&run(command, true), mode, expected);
}

/// `out` is that of a program that aborted (SIGABRT) with `expected` on stderr; `what` names
/// the run in a failure's message.
fn assert_aborted(out: &Output, what: &str, expected: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{what}: {:?}\n{stderr}",
        out.status
    );
    assert!(stderr.contains(expected), "{what}: {stderr}");
}

/// Bad frees that would have a block handed out twice: each aborts with its message.
#[test]
fn bad_frees_that_would_hand_out_a_block_twice_abort_with_a_message() {
    let double = "pymalloc: fatal: free of a block that is already free";
    let not_a_block = "pymalloc: fatal: free: pointer is no block of this allocator";
    for (mode, expected) in [
        ("free-after-realloc-moved", double),
        ("realloc-of-freed-moving", double),
        ("realloc-of-freed-in-place", double),
        ("free-of-uncarved", not_a_block),
        ("free-after-remote-free-taken-back", double),
        (
            "free-while-remote-free-waits",
            "already free: another thread freed it, and it waits to go back to its heap",
        ),
        ("shared-block-freed-by-two-threads", double),
        ("realloc-of-freed-shared-block", double),
        ("interior-48+16", not_a_block),
        ("interior-112+16", not_a_block),
        ("interior-112+48", not_a_block),
    ] {
        aborts_with(abi_test(), mode, expected);
    }
}

/// `malloc_usable_size` of a freed block is a use after free, caught by the block's freed
/// mark.
#[test]
fn malloc_usable_size_of_a_freed_block_aborts_with_a_message() {
    aborts_with(
        abi_test(),
        "usable-size-of-freed",
        "pymalloc: fatal: malloc_usable_size: the block is free (used after free)",
    );
}

/// C++'s sized and aligned `operator delete` forms and C23's `free_sized` and
/// `free_aligned_sized` take pymalloc's sized path for every size, alignment and container
/// (the program checks it runs on pymalloc), and a size that does not match the block, or a
/// sized double free, aborts with a message.
#[test]
fn sized_frees_from_cpp_and_c23_check_the_size() {
    succeeds_with_ok(&run(Command::new(sized_delete()), true));
    let mismatch = "pymalloc: fatal: free_sized: size or alignment does not match the block";
    for (mode, expected) in [
        ("delete-wrong-size", mismatch),
        ("delete-array-wrong-size", mismatch),
        ("delete-aligned-wrong-size", mismatch),
        ("free-sized-wrong-size", mismatch),
        (
            "free-sized-large-wrong-size",
            "pymalloc: fatal: dealloc: layout does not match the large block's size",
        ),
        (
            "free-sized-twice",
            "pymalloc: fatal: free of a block that is already free",
        ),
    ] {
        aborts_with(sized_delete(), mode, expected);
    }
}

/// Loaded with `dlopen` instead of `LD_PRELOAD`, the library (whose thread-local slot is
/// initial-exec TLS) loads, and its `malloc` and `free` serve threads started before and after
/// the load.
#[test]
fn the_library_loaded_with_dlopen_serves_threads_started_before_and_after() {
    let exe = compile("dlopen_override");
    succeeds_with_ok(&Command::new(exe).arg(library()).output().unwrap());
}

/// Every direct call in the library's own disassembly, as (caller, callee) symbol names;
/// `None` where `objdump` is missing.
fn direct_calls() -> Option<Vec<(String, String)>> {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(library())
        .output()
        .ok()?;
    let listing = text(&out.stdout);
    let mut current = "";
    let mut functions = 0;
    let mut calls = Vec::new();
    for line in listing.lines() {
        if let Some((_, name)) = line.strip_suffix(">:").and_then(|l| l.split_once(" <")) {
            current = name;
            functions += 1;
        } else if line.contains("call")
            && let Some((_, callee)) = line.split_once(" <")
        {
            let callee = callee.trim_end_matches('>');
            let callee = callee.split('@').next().unwrap_or(callee);
            calls.push((current.to_string(), callee.to_string()));
        }
    }
    assert!(functions > 100, "no disassembly read");
    Some(calls)
}

/// No allocator path reads the thread's heap with `__tls_get_addr` (it is initial-exec TLS;
/// see `src/tls.rs`): nothing in the library's own disassembly calls it (the library has no
/// standard library, whose `thread_local!` would). Skipped where `objdump` is missing.
#[test]
fn no_allocator_path_calls_tls_get_addr() {
    let Some(calls) = direct_calls() else {
        eprintln!("objdump not found: skipped");
        return;
    };
    let bad: Vec<_> = calls
        .iter()
        .filter(|(_, callee)| callee == "__tls_get_addr")
        .map(|(caller, _)| caller.as_str())
        .collect();
    assert!(bad.is_empty(), "__tls_get_addr called from {bad:?}");
    // The check sees calls into the C library: the allocator maps its memory.
    assert!(calls.iter().any(|(_, callee)| callee == "mmap"));
}

/// What loading the library costs a process is mostly the dynamic loader's work for what it
/// needs (`docs/design.md`, *The override library without the standard library*): it needs
/// the C library alone — no `libgcc_s` for an unwinder, no `libpthread` — and imports none
/// of the standard library's panic, backtrace or thread-local machinery. Skipped where
/// `objdump` is missing.
#[test]
fn the_library_needs_only_the_c_library() {
    // The dynamic section (`NEEDED` lines) and the dynamic symbols (`*UND*` lines), at once.
    let Ok(out) = Command::new("objdump").arg("-pT").arg(library()).output() else {
        eprintln!("objdump not found: skipped");
        return;
    };
    let symbols = text(&out.stdout);
    let needed: Vec<&str> = symbols
        .lines()
        .filter_map(|line| line.trim().strip_prefix("NEEDED"))
        .map(str::trim)
        .collect();
    assert_eq!(needed, ["libc.so.6"], "{symbols}");
    let imported: Vec<&str> = symbols
        .lines()
        .filter(|line| line.contains("*UND*"))
        .filter_map(|line| line.split_whitespace().last())
        .collect();
    assert!(imported.contains(&"mmap"), "{symbols}");
    for std_only in [
        "__tls_get_addr",
        "__cxa_thread_atexit_impl",
        "dl_iterate_phdr",
        "_Unwind_Resume",
        "pthread_mutex_lock",
    ] {
        assert!(
            !imported.contains(&std_only),
            "{std_only} imported:\n{symbols}"
        );
    }
}

/// The allocator never unwinds, and has no panic in it to unwind from: nothing in the
/// library's disassembly calls one of Rust's panicking functions (a bounds check, a division
/// by zero, an `unwrap`, a `panic!`), so even its panic handler is left out of the link.
/// Release builds only: the test profile checks arithmetic overflow, which panics by design.
/// Skipped where `objdump` is missing.
#[test]
fn no_allocator_path_can_panic() {
    if cfg!(debug_assertions) {
        eprintln!("overflow checks panic in this profile: run with --release");
        return;
    }
    let Some(calls) = direct_calls() else {
        eprintln!("objdump not found: skipped");
        return;
    };
    let panicking =
        |f: &str| f.contains("panicking") || f.contains("panic_") || f.contains("_failed");
    let bad: Vec<_> = calls
        .iter()
        .filter(|(_, callee)| panicking(callee))
        .collect();
    assert!(bad.is_empty(), "functions that can panic: {bad:#?}");
    // The check sees calls into the C library: the allocator maps its memory.
    assert!(calls.iter().any(|(_, callee)| callee == "mmap"));
}

/// Requests no machine can back — twice its RAM and swap, and 2^40 bytes — give null and
/// `ENOMEM` through every entry point, as on glibc, rather than a block that faults when
/// touched; a failed realloc keeps the block. Under `overcommit_memory` 1 the kernel backs
/// anything, so there is nothing to check.
#[test]
fn requests_the_machine_cannot_back_give_null_and_enomem_as_on_glibc() {
    let Some(unbackable) = pymalloc_arena::unbackable_bytes() else {
        eprintln!("overcommit_memory is 1 (or no /proc): every request is backed; skipped");
        return;
    };
    for size in [
        unbackable.next_multiple_of(1 << 30),
        (1 << 40).max(2 * unbackable),
    ] {
        let command = || {
            let mut command = Command::new(abi_test());
            command.args(["unbackable", &size.to_string()]);
            command
        };
        let (system, ours) = (run(command(), false), run(command(), true));
        assert!(system.status.success(), "system: {}", text(&system.stderr));
        assert!(ours.status.success(), "pymalloc: {}", text(&ours.stderr));
        let lines = text(&ours.stdout);
        assert_eq!(lines.lines().count(), 9, "{lines}");
        for line in lines.lines() {
            assert!(line.ends_with("ENOMEM"), "{size} bytes: {line}");
        }
        assert_eq!(text(&system.stdout), lines, "{size} bytes: as on glibc");
    }
}

/// Lines of pseudo-random words and numbers, written once.
fn input_file(name: &str, lines: usize) -> PathBuf {
    std::fs::create_dir_all(scratch()).unwrap();
    let path = scratch().join(name);
    let words = [
        "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
        "lambda", "mu", "quux",
    ];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut text = String::new();
    for _ in 0..lines {
        let (a, b) = (next(), next());
        text.push_str(&format!(
            "{}{} {} {}\n",
            words[a as usize % words.len()],
            a % 1000,
            b % 1_000_000,
            words[(b >> 32) as usize % words.len()]
        ));
    }
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_shell_pipeline_gives_the_same_output() {
    let input = input_file("pipeline.txt", 200_000);
    let script = "sort \"$1\" | grep -v quux | awk '{ n[$1] += $2; w[$3]++ } \
                  END { for (k in n) print k, n[k]; for (k in w) print k, w[k] }' | sort";
    // sort, grep, awk and sort again (the shell may exit without running exit handlers).
    same_output(
        || {
            let mut c = Command::new("sh");
            c.args(["-c", script, "sh"]).arg(&input);
            c
        },
        4,
    );
}

#[test]
fn python_with_every_object_in_malloc_gives_the_same_output() {
    // Allocation-heavy: many small objects of every kind, growing containers, big strings,
    // JSON round trips, sorting, a few threads; a digest of everything as the output.
    let script = r#"
import hashlib, json, random, threading
random.seed(7)
h = hashlib.sha256()
records = [{"id": i, "name": "n%06d" % random.randrange(10**6),
            "tags": [str(random.random()) for _ in range(random.randrange(8))],
            "blob": "x" * random.randrange(3000)} for i in range(60000)]
records.sort(key=lambda r: (r["name"], r["id"]))
text = json.dumps(records)
h.update(text.encode())
again = json.loads(text)
assert again == records
index = {}
for r in again:
    index.setdefault(r["name"][:3], []).append(r["id"])
h.update(repr(sorted((k, len(v), sum(v)) for k, v in index.items())).encode())
del records, again, text
big = []
for i in range(2000):
    big.append(bytearray(random.randrange(1, 400000)))
    if i % 3 == 0:
        big.pop(random.randrange(len(big)))
h.update(str(sum(len(b) for b in big)).encode())
results = [None] * 4
def work(k):
    rng = random.Random(k)
    d = {}
    for i in range(100000):
        d[rng.randrange(5000)] = [rng.random()] * rng.randrange(5)
    results[k] = sum(len(v) for v in d.values())
threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
for t in threads: t.start()
for t in threads: t.join()
h.update(repr(results).encode())
print(h.hexdigest())
"#;
    same_output(
        || {
            let mut c = Command::new("python3");
            c.args(["-c", script])
                .env("PYTHONMALLOC", "malloc")
                .env("PYTHONHASHSEED", "0");
            c
        },
        1,
    );
}

#[test]
fn multithreaded_sort_gives_the_same_output() {
    // GNU sort with --parallel sorts in several threads; blocks move between them.
    let input = input_file("parallel.txt", 600_000);
    let out = same_output(
        || {
            let mut c = Command::new("sort");
            c.args(["--parallel=4", "-S", "64M", "-k2,2n", "-k1,1"])
                .arg(&input);
            c
        },
        1,
    );
    // The threads each bound a heap of their own.
    let heaps = text(&out.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("# heaps")?.trim().parse::<usize>().ok())
        .expect("a heaps line in the statistics");
    assert!(heaps >= 2, "{}", text(&out.stderr));
}

/// The program that asks the allocator about itself (`tests/c/introspect.c`), compiled once.
fn introspect() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| compile("introspect"))
}

/// `command` without the `PYMALLOC_*` variables of the test's own environment.
fn without_pymalloc_options(command: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars() {
        if name.starts_with("PYMALLOC_") {
            command.env_remove(name);
        }
    }
    command
}

/// Runs `program` on pymalloc with exactly the `PYMALLOC_*` variables given (others removed).
fn run_with_options(program: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(program);
    without_pymalloc_options(&mut command)
        .args(args)
        .env("LD_PRELOAD", library());
    for (name, value) in vars {
        command.env(name, value);
    }
    let out = command.output().expect("program runs");
    assert!(out.status.success(), "{command:?}: {out:?}");
    out
}

/// `name=value` pairs of the line of `text` that starts with `prefix`, as numbers.
fn fields(text: &str, prefix: &str) -> std::collections::HashMap<String, i128> {
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{text}"));
    line.split_whitespace()
        .skip(1)
        .map(|pair| {
            let (name, value) = pair.split_once('=').expect("name=value");
            (name.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

/// The first number, and the number in parentheses, on the table's line that starts with
/// `label` (as `# pooled blocks in use    12 (1200 bytes)`).
fn table_line(table: &str, label: &str) -> (i128, Option<i128>) {
    let line = table
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{table}"));
    let mut numbers = line[label.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap());
    (numbers.next().unwrap(), numbers.next())
}

#[test]
fn mallinfo2_mallinfo_malloc_stats_and_malloc_info_agree_with_the_statistics() {
    let out = run_with_options(introspect(), &[], &[]);
    let (stdout, table) = (text(&out.stdout), text(&out.stderr));
    let m = fields(&stdout, "mallinfo2 ");
    let m1 = fields(&stdout, "mallinfo ");
    for (name, value) in &m {
        assert_eq!(m1[name], i128::from(*value as i32), "mallinfo's {name}");
    }
    let (pooled, pooled_bytes) = table_line(&table, "# pooled blocks in use");
    let (large, large_bytes) = table_line(&table, "# large blocks in use");
    let (cached, cached_bytes) = table_line(&table, "# large ranges cached");
    let (mapped, _) = table_line(&table, "# bytes mapped");
    assert!(pooled >= 1000 && large >= 1 && cached == 1, "{table}");
    assert_eq!(m["uordblks"], pooled_bytes.unwrap());
    assert_eq!((m["hblks"], m["hblkhd"]), (large, large_bytes.unwrap()));
    assert_eq!(m["arena"], mapped - m["hblkhd"]);
    assert_eq!(m["fordblks"], m["arena"] - m["uordblks"]);
    assert!(m["keepcost"] >= cached_bytes.unwrap(), "{stdout}");
    let xml = &stdout[stdout
        .find("<malloc version=\"1\">")
        .expect("malloc_info's XML")..];
    assert!(xml.trim_end().ends_with("</malloc>"), "{xml}");
    assert!(xml.contains(&format!(
        "<total type=\"mmap\" count=\"{large}\" size=\"{}\"/>",
        m["hblkhd"]
    )));
    assert!(xml.contains(&format!("<total type=\"rest\" count=\"{}\"", m["ordblks"])));
    assert!(xml.contains(&format!("<system type=\"current\" size=\"{mapped}\"/>")));
    let free_in_sizes: i128 = xml
        .lines()
        .filter(|l| l.starts_with("<size "))
        .map(|l| {
            let count = l.split("count=\"").nth(1).unwrap();
            count[..count.find('"').unwrap()].parse::<i128>().unwrap()
        })
        .sum();
    assert_eq!(free_in_sizes, m["ordblks"]);
}

#[test]
fn each_option_in_the_environment_is_read_and_has_its_effect() {
    // PYMALLOC_LARGE_CACHE=0: the freed 1 MiB block is not kept.
    let out = run_with_options(introspect(), &[], &[("PYMALLOC_LARGE_CACHE", "0")]);
    let (cached, bytes) = table_line(&text(&out.stderr), "# large ranges cached");
    assert_eq!((cached, bytes), (0, Some(0)));
    // PYMALLOC_STATS: the table, or one line of JSON, at exit, after the program's frees.
    let out = run_with_options(introspect(), &[], &[("PYMALLOC_STATS", "1")]);
    assert_eq!(processes_on_pymalloc(&out), 2, "malloc_stats and at exit");
    let out = run_with_options(introspect(), &[], &[("PYMALLOC_STATS", "json")]);
    let last = text(&out.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    let json: serde_json::Value = serde_json::from_str(&last).expect("JSON at exit");
    assert_eq!(json["large_blocks"], 0, "{last}");
    assert_eq!(
        json["bytes_in_use"].as_u64(),
        Some(json["pooled_bytes"].as_u64().unwrap() + json["large_bytes"].as_u64().unwrap())
    );
    // PYMALLOC_VERBOSE=1: the options in effect, once, and a warning for a request answered
    // NULL. The policy options show there as read.
    let vars = [
        ("PYMALLOC_VERBOSE", "1"),
        ("PYMALLOC_EMPTY_ARENAS", "9"),
        ("PYMALLOC_DIRTY_FLOOR", "64M"),
        ("PYMALLOC_HUGEPAGES", "auto"),
    ];
    let out = run_with_options(introspect(), &["oom"], &vars);
    let stderr = text(&out.stderr);
    assert_eq!(stderr.matches("pymalloc: options: ").count(), 1, "{stderr}");
    assert!(stderr.contains(
        "PYMALLOC_VERBOSE=1 PYMALLOC_EMPTY_ARENAS=9 PYMALLOC_DIRTY_FLOOR=67108864 \
         PYMALLOC_LARGE_CACHE=1073741824 PYMALLOC_HUGEPAGES=auto"
    ));
    assert!(
        stderr.contains(
            "pymalloc: warning: out of memory: the system refused 4611686018427387904 bytes"
        ),
        "{stderr}"
    );
    // PYMALLOC_EMPTY_ARENAS and PYMALLOC_DIRTY_FLOOR: after a phase is freed, the empty
    // arenas kept (of a 24 MiB phase) and the committed free slots kept (of a 1 MiB one,
    // under the floor) are the defaults' (4 arenas; all of it), as set, or none.
    let kept = |mib: &str, vars: &[(&str, &str)]| {
        let out = run_with_options(introspect(), &["phase", mib], vars);
        let table = text(&out.stderr);
        let (_, empty) = table_line(&table, "# arenas mapped");
        let (_, committed) = table_line(&table, "# free pool slots");
        (empty.unwrap(), committed.unwrap())
    };
    assert_eq!(kept("24", &[]).0, 4);
    // (The dirty floor's worth of arenas, one by default, stays too: both at 0 keep none.)
    let none = [
        ("PYMALLOC_EMPTY_ARENAS", "0"),
        ("PYMALLOC_DIRTY_FLOOR", "0"),
    ];
    assert_eq!(kept("24", &none).0, 0);
    assert_eq!(kept("24", &[("PYMALLOC_EMPTY_ARENAS", "8")]).0, 8);
    let committed = kept("1", &[]).1;
    assert!(committed >= 32, "{committed}");
    let committed = kept("1", &[("PYMALLOC_DIRTY_FLOOR", "0")]).1;
    assert!(committed <= 8, "{committed}");
    // Without it, the same program says nothing.
    let out = run_with_options(introspect(), &["oom"], &[]);
    assert_eq!(text(&out.stderr), "");
    // An unknown variable, or a bad value, is warned about once, and the program runs.
    let vars = [("PYMALLOC_STAT", "1"), ("PYMALLOC_LARGE_CACHE", "lots")];
    let out = run_with_options(introspect(), &["oom"], &vars);
    let stderr = text(&out.stderr);
    assert_eq!(stderr.matches("PYMALLOC_STAT is not an option").count(), 1);
    assert_eq!(
        stderr
            .matches("PYMALLOC_LARGE_CACHE=lots: expected")
            .count(),
        1
    );
}

/// `pymalloc-run` and the library this test built, side by side in a folder of their own,
/// as `cargo build --release -p pymalloc-override` leaves them: the launcher finds the
/// library beside itself, as the README runs it.
fn launcher() -> Command {
    static INSTALLED: OnceLock<PathBuf> = OnceLock::new();
    let exe = INSTALLED.get_or_init(|| {
        let dir = scratch().join("bin");
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("pymalloc-run");
        std::fs::copy(env!("CARGO_BIN_EXE_pymalloc-run"), &exe).unwrap();
        std::fs::copy(library(), dir.join("libpymalloc_override.so")).unwrap();
        exe
    });
    let mut command = Command::new(exe);
    without_pymalloc_options(&mut command)
        .env_remove("PYTHONMALLOC")
        .env_remove("LD_PRELOAD");
    command
}

#[test]
fn the_launcher_runs_a_c_program_on_pymalloc_with_its_statistics() {
    let out = launcher()
        .args(["--stats", "--"])
        .arg(abi_test())
        .output()
        .unwrap();
    succeeds_with_ok(&out);
    assert_eq!(processes_on_pymalloc(&out), 1, "{}", text(&out.stderr));
    let out = launcher()
        .arg("--stats=json")
        .arg(introspect())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let last = text(&out.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    serde_json::from_str::<serde_json::Value>(&last).expect("JSON at exit");
}

#[test]
fn the_launcher_passes_on_the_exit_status_and_the_signal() {
    let status = |script: &str| launcher().args(["sh", "-c", script]).status().unwrap();
    assert_eq!(status("exit 7").code(), Some(7));
    assert_eq!(status("kill -TERM $$").signal(), Some(libc::SIGTERM));
    let out = launcher().arg("no-such-program-here").output().unwrap();
    assert_eq!(out.status.code(), Some(127));
    let out = launcher().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("usage: pymalloc-run"));
    // --library names another copy; one that is not there is refused.
    let out = launcher()
        .arg("--library")
        .arg(library())
        .args(["sh", "-c", "exit 3"])
        .status()
        .unwrap();
    assert_eq!(out.code(), Some(3));
    let out = launcher()
        .args(["--library", "/nonexistent/lib.so", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn the_launcher_runs_python_with_every_object_through_pymalloc() {
    let script = "import os, sys; print(os.environ['PYTHONMALLOC']); \
                  sys.stdout.write(repr(sorted({str(i): i for i in range(1000)}.items())[:3]))";
    let out = launcher()
        .args(["--stats", "python3", "-c", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("malloc\n[('0', 0), ('1', 1), ('10', 10)]"),
        "{stdout}"
    );
    assert!(processes_on_pymalloc(&out) >= 1, "{}", text(&out.stderr));
    // A PYTHONMALLOC the user set is kept.
    let out = launcher()
        .env("PYTHONMALLOC", "pymalloc")
        .args([
            "python3",
            "-c",
            "import os; print(os.environ['PYTHONMALLOC'])",
        ])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "pymalloc\n");
}

/// The hardened library (`--features secure`, `docs/security.md`), built once per test
/// binary into a target directory of its own (`target/secure/`), so that it and the default
/// library do not rebuild each other.
fn secure_library() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("target/")
            .join("secure");
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "--release",
                "--lib",
                "-p",
                "pymalloc-override",
            ])
            .args(["--features", "secure", "--target-dir"])
            .arg(&dir)
            .status()
            .expect("run cargo");
        assert!(status.success(), "building the hardened library");
        dir.join("release/libpymalloc_override.so")
    })
}

/// A program of attacks, compiled once, without warnings (they are the point) and without
/// optimisation (which could drop an attack's undefined behaviour).
fn attack_program(name: &str, compiler: &str, source: &str) -> PathBuf {
    std::fs::create_dir_all(scratch()).unwrap();
    let exe = scratch().join(name);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(source);
    let status = Command::new(compiler)
        .args(["-O0", "-w", "-o"])
        .arg(&exe)
        .arg(&source)
        .arg("-lpthread")
        .status()
        .expect("a C and C++ compiler must be installed");
    assert!(status.success(), "compiling {}", source.display());
    exe
}

/// Runs `program attack` on the hardened library: it must abort with `expected` on stderr,
/// or (`expected` empty) fault on a guard page.
fn hardened_catches(program: &Path, attack: &str, expected: &str) {
    let out = Command::new(program)
        .arg(attack)
        .env("LD_PRELOAD", secure_library())
        .output()
        .expect("program runs");
    if expected.is_empty() {
        assert!(
            matches!(out.status.signal(), Some(libc::SIGSEGV | libc::SIGBUS)),
            "{attack}: {:?}\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
    } else {
        assert_aborted(&out, attack, expected);
    }
}

/// The hardened library catches every attack of `tests/c/attacks.c` and
/// `tests/cpp/attacks.cpp` (`docs/security.md` lists them): an abort with the protection's
/// message, or a fault on a guard page.
#[test]
fn the_hardened_library_catches_every_attack() {
    let c = attack_program("attacks", "cc", "tests/c/attacks.c");
    let overflow = "pymalloc: fatal: secure: heap overflow";
    let double = "pymalloc: fatal: secure: free of a block that is already free";
    let invalid = "is no block of this allocator";
    let link = "link was overwritten";
    let mismatch = "pymalloc: fatal: secure: the size given to free does not match";
    for (attack, expected) in [
        ("overflow-1", overflow),
        ("overflow-32-memcpy", overflow),
        ("underflow-1", "pymalloc: fatal: secure: heap underflow"),
        ("underflow-32", "pymalloc: fatal: secure: heap underflow"),
        ("freelist-poisoning", link),
        ("use-after-free-link", link),
        (
            "use-after-free-write",
            "pymalloc: fatal: secure: a freed block was written after it was freed",
        ),
        ("double-free-between", double),
        ("double-free-threads", double),
        ("forged-inside", invalid),
        ("forged-outside", invalid),
        ("sized-free-mismatch", mismatch),
        ("large-overflow", ""),
        ("zero-size-write", ""),
        ("zero-size-read", ""),
        ("realloc-freed", double),
    ] {
        hardened_catches(&c, attack, expected);
    }
    let cpp = attack_program("attacks_cpp", "c++", "tests/cpp/attacks.cpp");
    for attack in ["delete-wrong-type", "delete-array-as-single"] {
        hardened_catches(&cpp, attack, mismatch);
    }
}
