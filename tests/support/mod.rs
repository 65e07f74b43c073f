//! What the process-level tests of the examples share: finding an example's binary beside the
//! test's own, and building it first when it is missing or older than its sources.
//!
//! `cargo test --all-targets` builds the examples beside the tests; `cargo test --test NAME`
//! does not, so the first use builds it with `$CARGO build --example NAME` in the test's
//! profile.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// The binary of example `name` (`target/<profile>/examples/<name>`), built with `features` if
/// it is missing or older than `examples/<name>.rs`, the facade's `src/` or the `src/` of any
/// crate in `crates` (`"shutdown"` for `crates/palisade-shutdown`). Call it once per test
/// binary (keep the path in a `OnceLock`): it may run cargo.
pub(crate) fn example_binary(name: &str, features: &str, crates: &[&str]) -> PathBuf {
    let test = std::env::current_exe().expect("the test binary's path");
    let profile_dir = test
        .parent()
        .and_then(Path::parent)
        .expect("the test binary sits in target/<profile>/deps");
    let binary = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !is_fresh(&binary, name, crates) {
        build(profile_dir, name, features);
    }
    assert!(
        binary.exists(),
        "{} is missing even after building it; build it with `cargo build --example {name} \
         --features {features}` for the profile and target of this test",
        binary.display()
    );
    binary
}

/// Whether `binary` exists and is newer than every source it is built from.
fn is_fresh(binary: &Path, name: &str, crates: &[&str]) -> bool {
    fn modified(path: &Path) -> Option<SystemTime> {
        fs::metadata(path).and_then(|meta| meta.modified()).ok()
    }
    let Some(built) = modified(binary) else {
        return false;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("src")];
    dirs.extend(
        crates
            .iter()
            .map(|krate| root.join(format!("crates/palisade-{krate}/src"))),
    );
    let mut sources = vec![root.join(format!("examples/{name}.rs"))];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                sources.push(path);
            }
        }
    }
    sources
        .iter()
        .all(|source| modified(source).is_none_or(|changed| changed <= built))
}

/// `$CARGO build --example NAME --features FEATURES` in the profile this test was built with.
fn build(profile_dir: &Path, name: &str, features: &str) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "--example",
        name,
        "--features",
        features,
    ]);
    match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => {}
        Some(profile) => {
            command.args(["--profile", profile]);
        }
    }
    let status = command.status().expect("run cargo build");
    assert!(
        status.success(),
        "cargo build --example {name} failed: {status}"
    );
}
