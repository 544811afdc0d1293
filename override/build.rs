//! Whether the standard library is linked into this build of the library anyway — by
//! `pymalloc-arena`'s `test-platform` feature, which tests in the same cargo invocation enable
//! (`arena/build.rs`) — and so provides the panic handler: `cfg(std_linked)`. The library
//! built on its own (`cargo build --release -p pymalloc-override`) is `no_std`.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(std_linked)");
    if std::env::var("DEP_PYMALLOC_ARENA_STD").is_ok_and(|v| v == "1") {
        println!("cargo::rustc-cfg=std_linked");
    }
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=DEP_PYMALLOC_ARENA_STD");
}
