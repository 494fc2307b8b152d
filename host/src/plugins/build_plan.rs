//! How the plugins workspace (`plugins/`) is built: one `cargo build` per
//! plugin kind, because memhost-sdk allows one world per build and Cargo
//! unifies features across the packages of one build. Shared by the host's
//! build script (`#[path]` include) and `memhost plugin build`, so both build
//! the same way. No dependencies beyond std.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const TARGET: &str = "wasm32-wasip2";

/// A 128 KiB shadow stack instead of Rust's 1 MiB default. Every call starts
/// from a fresh linear memory, and each page a call touches is reset after
/// it: with the stack at the bottom (wasm-ld's stack-first layout) a small
/// stack keeps stack, data and a typical heap within the first few hundred
/// KiB, which the host resets with a cheap memset instead of page faults and
/// madvise. An overflow still traps (it runs below address 0).
pub const GUEST_RUSTFLAGS: &str = r#"target.wasm32-wasip2.rustflags=["-C", "link-arg=-zstack-size=131072"]"#;

/// Plugin packages under `plugins/` grouped by the SDK kind feature they
/// enable (`""` for packages that use wit-bindgen directly). Package name =
/// directory name, the workspace's convention.
pub fn packages_by_kind(plugins_dir: &Path) -> std::io::Result<BTreeMap<String, Vec<String>>> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for parent in [plugins_dir.to_path_buf(), plugins_dir.join("fixtures")] {
        if !parent.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&parent)? {
            let path = entry?.path();
            if path.join("Cargo.toml").is_file() && path.file_name().is_some_and(|n| n != "sdk") {
                dirs.push(path);
            }
        }
    }
    dirs.sort();
    for dir in dirs {
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))?;
        let kind = ["pricing", "rate-limit", "alert-channel", "extractor"]
            .into_iter()
            .find(|k| manifest.lines().any(|l| l.contains("memhost-sdk") && l.contains(&format!("\"{k}\""))))
            .unwrap_or("");
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        groups.entry(kind.to_string()).or_default().push(name);
    }
    Ok(groups)
}

/// The `cargo build` commands that build every plugin into `target_dir`.
pub fn commands(cargo: &str, plugins_dir: &Path, target_dir: &Path, locked: bool) -> std::io::Result<Vec<Command>> {
    let mut out = Vec::new();
    for packages in packages_by_kind(plugins_dir)?.values() {
        let mut cmd = Command::new(cargo);
        cmd.current_dir(plugins_dir).args(["build", "--release", "--target", TARGET, "--target-dir"]).arg(target_dir);
        cmd.args(["--config", GUEST_RUSTFLAGS]);
        if locked {
            cmd.arg("--locked");
        }
        for p in packages {
            cmd.args(["-p", p]);
        }
        out.push(cmd);
    }
    Ok(out)
}

/// Where a built plugin lands: `<target_dir>/wasm32-wasip2/release/<name>.wasm`.
pub fn artifact(target_dir: &Path, package: &str) -> PathBuf {
    target_dir.join(TARGET).join("release").join(format!("{}.wasm", package.replace('-', "_")))
}

/// Makes sure the active toolchain has the wasm32-wasip2 standard library:
/// `rust-toolchain.toml` lists the target, but rustup adds listed targets
/// only when it installs the toolchain, not to one already installed.
pub fn ensure_target() {
    let has_target = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|dir| dir.is_dir());
    if !has_target {
        let _ = Command::new("rustup").args(["target", "add", TARGET]).status();
    }
}
