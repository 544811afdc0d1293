//! The README's first steps, followed as a new user would: a new program made with
//! `cargo new` beside a clone of this repository, with the README's dependency line and its
//! program, builds and runs on pymalloc. Needs `cargo` (the one running the tests) and the
//! crates the workspace uses (already fetched, or crates.io).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The first code block fenced as `lang` after the heading `section` in the README.
fn block(readme: &str, section: &str, lang: &str) -> String {
    let after = &readme[readme.find(section).expect("the section")..];
    let fence = format!("```{lang}\n");
    let start = after.find(&fence).expect("the block") + fence.len();
    let len = after[start..].find("```").expect("the block's end");
    after[start..start + len].to_owned()
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

#[test]
fn a_new_program_uses_pymalloc_from_the_readme_alone() {
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(checkout.join("README.md")).unwrap();
    let section = "### In a Rust program";
    let dependency = block(&readme, section, "toml");
    let program = block(&readme, section, "rust");
    assert!(block(&readme, section, "sh").starts_with("cargo new hello"));

    // Outside the checkout, whose workspace would otherwise claim the new package.
    let root: PathBuf =
        std::env::temp_dir().join(format!("pymalloc-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::symlink(checkout, root.join("pymalloc")).unwrap();
    let made = cargo()
        .args(["new", "--vcs", "none", "--quiet", "hello"])
        .current_dir(&root)
        .status()
        .unwrap();
    assert!(made.success());
    let hello = root.join("hello");
    let manifest = std::fs::read_to_string(hello.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("[dependencies]\n"), "{manifest}");
    let manifest = manifest.replace("[dependencies]\n", &dependency);
    std::fs::write(hello.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(hello.join("src/main.rs"), program).unwrap();
    // The versions this workspace locked, so that the crates already fetched serve.
    std::fs::copy(checkout.join("Cargo.lock"), hello.join("Cargo.lock")).unwrap();

    let run = |offline: bool| {
        let mut command = cargo();
        command
            .args(["run", "--quiet"])
            .current_dir(&hello)
            .env("CARGO_TARGET_DIR", root.join("target"))
            .env_remove("RUSTFLAGS");
        if offline {
            command.arg("--offline");
        }
        command.output().unwrap()
    };
    let mut out = run(true);
    if !out.status.success() {
        out = run(false); // a crate not fetched yet: from crates.io
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let in_use: usize = stdout
        .trim()
        .strip_prefix("10000 words; pymalloc: ")
        .and_then(|rest| rest.strip_suffix(" bytes in use"))
        .unwrap_or_else(|| panic!("unexpected output: {stdout}"))
        .parse()
        .unwrap();
    assert!(in_use >= 10_000 * 8, "the words are on pymalloc: {stdout}");
    let _ = std::fs::remove_dir_all(&root);
}
