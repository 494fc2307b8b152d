//! Build script: embeds migrations (rebuild when they change) and builds the
//! plugins workspace for `wasm32-wasip2`, so the server binary carries its
//! default plugins and `cargo run -- serve` works on a fresh clone.
//!
//! The plugins are built by nested `cargo build --release` runs into
//! `target/plugins/` (its own target directory: sharing ours would deadlock on
//! the build lock). Cargo's fingerprints make them no-ops when nothing in
//! `plugins/` or `wit/` changed, and this script reruns only when they do.

use std::path::PathBuf;

#[path = "src/plugins/build_plan.rs"]
mod build_plan;

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
    println!("cargo:rerun-if-changed=../plugins");
    println!("cargo:rerun-if-changed=../wit");
    println!("cargo:rerun-if-changed=src/plugins/build_plan.rs");
    println!("cargo:rerun-if-env-changed=MEMHOST_SKIP_PLUGIN_BUILD");

    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("host/ sits in the workspace root").to_path_buf();
    let target_dir = root.join("target").join("plugins");
    println!(
        "cargo:rustc-env=MEMHOST_PLUGINS_DIR={}",
        build_plan::artifact(&target_dir, "x").parent().unwrap().display()
    );

    // Escape hatch for packagers who build the plugins separately.
    if std::env::var_os("MEMHOST_SKIP_PLUGIN_BUILD").is_some() {
        return;
    }
    build_plan::ensure_target();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let plugins = root.join("plugins");
    let commands = build_plan::commands(&cargo, &plugins, &target_dir, true)
        .unwrap_or_else(|e| panic!("reading {}: {e}", plugins.display()));
    for mut cmd in commands {
        // Settings meant for the host build must not leak into the guest build.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.contains("RUSTFLAGS")
                || key.starts_with("CARGO_PROFILE_")
                || key.starts_with("CARGO_CFG_")
                || key.starts_with("CARGO_FEATURE_")
                || key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_MANIFEST_")
                || ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET", "RUSTC_WORKSPACE_WRAPPER", "CARGO_PRIMARY_PACKAGE"]
                    .contains(&key.as_ref())
            {
                cmd.env_remove(key.as_ref());
            }
        }
        let status = cmd.status().unwrap_or_else(|e| panic!("could not run cargo to build the plugins: {e}"));
        if !status.success() {
            panic!("building the plugins failed: {cmd:?}");
        }
    }
}
