//! Tells the crates that depend on this one whether it links the standard library: with the
//! `test-platform` feature it does, and `libpymalloc_override.so`, which is built without
//! `std` (its own panic handler), must then leave the panic handler to `std`
//! (`override/build.rs`). That happens only where tests enable the feature in the same build.

fn main() {
    let with_std = std::env::var_os("CARGO_FEATURE_TEST_PLATFORM").is_some();
    println!("cargo::metadata=std={}", u8::from(with_std));
    println!("cargo::rerun-if-changed=build.rs");
}
