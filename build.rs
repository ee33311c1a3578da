//! Marks a build made as root (`cfg(locklab_root)`): the tests that need root (network
//! namespaces and nftables for a real partition) are then run; built as anyone else, they are
//! ignored with the reason, so a test report says "skipped" rather than "passed".
//!
//! Likewise `cfg(locklab_pg18)`: PostgreSQL 18 is in the project's cache (`scripts/setup
//! --pg-major 18`, which `scripts/test` runs first), so the tests that compare it with the
//! machine's own server run; without it they are ignored with the command that fetches it.

fn main() {
    println!("cargo:rustc-check-cfg=cfg(locklab_root)");
    println!("cargo:rustc-check-cfg=cfg(locklab_pg18)");
    // Rebuilt when a major is fetched or removed (a path that does not exist yet is checked
    // again on every build).
    println!("cargo:rerun-if-changed=.cache/pg/18/bin/postgres");
    if std::path::Path::new(".cache/pg/18/bin/postgres").is_file() {
        println!("cargo:rustc-cfg=locklab_pg18");
    }
    println!("cargo:rerun-if-changed=build.rs");
    // Who builds: a change of user (sudo, su) rebuilds.
    println!("cargo:rerun-if-env-changed=USER");
    println!("cargo:rerun-if-env-changed=SUDO_USER");
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false);
    if root {
        println!("cargo:rustc-cfg=locklab_root");
    }
}
