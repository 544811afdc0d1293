//! `pymalloc-run`: runs a program on pymalloc.
//!
//! ```sh
//! pymalloc-run [--stats | --stats=json] [--library PATH] [--] PROGRAM [ARGS...]
//! ```
//!
//! Puts `libpymalloc_override.so` (by default the one beside this executable, where
//! `cargo build --release -p pymalloc-override` leaves both) first in `LD_PRELOAD`, sets
//! `PYTHONMALLOC=malloc` when the program is a Python interpreter (so that every object goes
//! through pymalloc) unless the environment sets it already, and `PYMALLOC_STATS` with
//! `--stats`, then becomes the program: its exit status, or its signal, is the caller's.
//! Prints a usage line and exits with 2 on a wrong command line or a library that is not
//! there (the loader would run the program without it); 127 if the program cannot be found,
//! 126 if it cannot be run.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str =
    "usage: pymalloc-run [--stats | --stats=json] [--library PATH] [--] PROGRAM [ARGS...]";
const LIBRARY: &str = "libpymalloc_override.so";

/// What the command line asks for.
struct Request {
    stats: Option<&'static str>,
    library: Option<PathBuf>,
    program: OsString,
    args: Vec<OsString>,
}

fn parse(mut args: impl Iterator<Item = OsString>) -> Result<Request, String> {
    let mut stats = None;
    let mut library = None;
    let program = loop {
        let Some(arg) = args.next() else {
            return Err("no program given".into());
        };
        match arg.to_str() {
            Some("--stats") => stats = Some("1"),
            Some("--stats=json") => stats = Some("json"),
            Some("--library") => {
                library = Some(PathBuf::from(args.next().ok_or("--library needs a path")?))
            }
            Some("--") => break args.next().ok_or("no program given")?,
            Some("-h" | "--help") => return Err(String::new()),
            Some(flag) if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            _ => break arg,
        }
    };
    Ok(Request {
        stats,
        library,
        program,
        args: args.collect(),
    })
}

/// The library beside this executable.
fn default_library() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
    let lib = exe.with_file_name(LIBRARY);
    if lib.exists() {
        Ok(lib)
    } else {
        Err(format!(
            "{} not found (build it with `cargo build --release -p pymalloc-override`, or \
             give --library)",
            lib.display()
        ))
    }
}

/// Whether `program` names a Python interpreter (`python`, `python3`, `python3.12`, ...).
fn is_python(program: &OsStr) -> bool {
    Path::new(program)
        .file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|name| {
            name.strip_prefix("python")
                .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit() || c == '.'))
        })
}

fn main() -> ExitCode {
    let request = match parse(std::env::args_os().skip(1)) {
        Ok(request) => request,
        Err(why) => {
            if !why.is_empty() {
                eprintln!("pymalloc-run: {why}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let library = request.library.map(Ok).unwrap_or_else(default_library);
    let library = match library.and_then(|lib| match lib.is_file() {
        true => Ok(std::path::absolute(&lib).unwrap_or(lib)),
        false => Err(format!("{} is not a file", lib.display())),
    }) {
        Ok(library) => library,
        Err(why) => {
            eprintln!("pymalloc-run: {why}");
            return ExitCode::from(2);
        }
    };
    let mut preload = library.into_os_string();
    if let Some(others) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(" ");
        preload.push(others);
    }
    let mut command = Command::new(&request.program);
    command.args(&request.args).env("LD_PRELOAD", preload);
    if is_python(&request.program) && std::env::var_os("PYTHONMALLOC").is_none() {
        command.env("PYTHONMALLOC", "malloc");
    }
    if let Some(stats) = request.stats {
        command.env("PYMALLOC_STATS", stats);
    }
    let error = command.exec(); // returns only on failure
    eprintln!(
        "pymalloc-run: cannot run {}: {error}",
        request.program.to_string_lossy()
    );
    ExitCode::from(if error.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> impl Iterator<Item = OsString> {
        line.split_whitespace()
            .map(OsString::from)
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn the_command_line_is_read() {
        let r = parse(args("--stats=json --library /x.so -- prog -a b")).unwrap();
        assert_eq!(r.stats, Some("json"));
        assert_eq!(r.library, Some(PathBuf::from("/x.so")));
        assert_eq!(r.program, "prog");
        assert_eq!(r.args, ["-a", "b"]);
        let r = parse(args("prog --stats")).unwrap();
        assert_eq!(
            (r.stats, r.args.len()),
            (None, 1),
            "flags after the program are its"
        );
        assert!(parse(args("--stats")).is_err());
        assert!(parse(args("--frobnicate prog")).is_err());
    }

    #[test]
    fn python_interpreters_are_recognised() {
        for yes in ["python", "python3", "/usr/bin/python3.11", "python3.13"] {
            assert!(is_python(OsStr::new(yes)), "{yes}");
        }
        for no in ["pythonista", "ipython", "sh", "python3-config"] {
            assert!(!is_python(OsStr::new(no)), "{no}");
        }
    }
}
