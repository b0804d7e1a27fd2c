//! Shared test machinery for cross-program tests: locating the workspace's binaries, and (as
//! their issues land) the vSphere simulator, the Qubes stand-ins and the GitHub stand-in.

/// Headless Chromium over WebDriver, for the job page's browser tests (issue 16).
pub mod browser;

pub mod fixture;

pub mod github;

/// What the job page's tests and benchmark share (issue 16).
pub mod job_page;

pub mod qubes_world;

/// Slack incoming-webhook stand-in (issue 8).
pub mod slack;

pub mod vsphere_sim;

/// A whole simulated installation for end-to-end tests and the demo (issue 10).
pub mod world;

/// What an end-to-end test body needs of a world, on either backend (issue 22).
pub mod job_world;

/// The end-to-end world on a real libvirtd with QEMU guests (issue 22).
pub mod libvirt_world;

use std::path::PathBuf;

/// The workspace root (the folder holding the top `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Path of a workspace binary built into the same target directory as the running test.
///
/// Cross-program tests call this after `cargo build --workspace --bins` (the README's test
/// command does that first), so they run the real binaries, not copies.
pub fn binary(name: &str) -> PathBuf {
    // `SDCI_BIN_SDCI_HOST=/path/to/sdci-host` runs another build of one program (a benchmark
    // against a release build, say).
    let var = format!("SDCI_BIN_{}", name.replace('-', "_").to_uppercase());
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("debug").join(name)
}
