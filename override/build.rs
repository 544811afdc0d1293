//! Whether the standard library is linked into this build of the library anyway — by
//! `pymalloc-arena`'s `test-platform` feature, which tests in the same cargo invocation enable
//! (`arena/build.rs`) — and so provides the panic handler: `cfg(std_linked)`. The library
//! built on its own (`cargo build --release -p pymalloc-override`) is `no_std`.
//!
//! And the library is linked `-z nodelete`: once loaded it stays, even when a program that
//! loaded it with `dlopen` closes it, since every thread that bound a heap holds a `pthread`
//! key whose destructor is in it (`src/thread.rs`), and every block it handed out is freed
//! through it.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(std_linked)");
    if std::env::var("DEP_PYMALLOC_ARENA_STD").is_ok_and(|v| v == "1") {
        println!("cargo::rustc-cfg=std_linked");
    }
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo::rustc-cdylib-link-arg=-Wl,-z,nodelete");
    }
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=DEP_PYMALLOC_ARENA_STD");
}
