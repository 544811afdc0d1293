//! What both benchmark runners (`main.rs`, `bin/preload.rs`) say about a run: medians,
//! ratios to the baseline, the machine, the date and the commit.

use std::process::Command;

/// The median (the upper one of an even count).
pub fn median<T: Ord + Copy>(mut v: Vec<T>) -> T {
    v.sort_unstable();
    v[v.len() / 2]
}

/// A value's ratio to the baseline's, as the tables show it: `—` where the baseline's median
/// is 0, below the measure's resolution (system time comes in clock ticks), to which no
/// ratio means anything.
pub fn ratio(value: f64, base: f64) -> String {
    if base == 0.0 {
        "—".to_string()
    } else {
        format!("{:.2}×", value / base)
    }
}

/// A command's standard output, trimmed; empty if it cannot run.
pub fn command_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// CPU model, cores, memory and kernel.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']))
        .unwrap_or("unknown CPU");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    format!(
        "{model}, {cores} cores, {:.0} GiB, {}",
        mem_kib as f64 / (1 << 20) as f64,
        command_output("uname", &["-sr"])
    )
}

/// The `- machine`, `- date` and `- commit` lines of a report.
pub fn provenance() -> String {
    let commit = command_output(
        "git",
        &[
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ],
    );
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    format!(
        "- machine: {}\n- date: {date}\n- commit: `{commit}`",
        machine()
    )
}
