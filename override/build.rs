//! Links GCC's unwinder (`libgcc_eh.a`) into `libpymalloc_override.so` statically where the
//! C compiler has it (Linux, glibc), so that the library no longer needs `libgcc_s.so.1`:
//! every process it is preloaded into would otherwise open, map and relocate that library too,
//! which was about half of the library's start-up cost (see `docs/preload.md`). Rust's
//! standard library refers to the unwinder (panics, backtraces); pymalloc never unwinds, and
//! the symbols stay inside the library (a cdylib exports only its `#[no_mangle]` functions).
//! Where the archive is not found, nothing changes: the library links `libgcc_s` as before.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let gnu_linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if !gnu_linux {
        return;
    }
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let Ok(out) = Command::new(compiler)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
    else {
        return;
    };
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    // A compiler that lacks the file prints its bare name back.
    let (Some(dir), true) = (path.parent(), path.is_absolute() && path.exists()) else {
        return;
    };
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib=static:+verbatim=libgcc_eh.a");
}
