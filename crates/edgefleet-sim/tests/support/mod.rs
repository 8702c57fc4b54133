//! Shared by the simulator's integration tests.

use std::path::PathBuf;

/// The `edgefleet` server binary next to this test's build directory
/// (`target/<profile>/edgefleet`, built by `cargo test --workspace` or
/// `cargo build -p edgefleet`), or `$EDGEFLEET_BIN`. Fails with what to do when missing.
pub fn edgefleet_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("EDGEFLEET_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/edgefleet
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable in target/<profile>/deps")
        .join("edgefleet");
    assert!(
        bin.exists(),
        "the edgefleet server binary is missing at {}: run `cargo build -p edgefleet` first \
         (or set EDGEFLEET_BIN)",
        bin.display()
    );
    bin
}
