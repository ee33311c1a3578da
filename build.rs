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
    // Rebuilt when 18 is fetched or removed. Cargo reruns a build script on every build while a
    // path it watches does not exist (and then recompiles the crate), so the watch is on the
    // nearest of these that does: the server itself, else the cache a fetch adds it to
    // (`scripts/setup` creates `.cache/pg` whatever it fetches).
    let server = ".cache/pg/18/bin/postgres";
    let watched = [server, ".cache/pg", ".cache"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or(".cache");
    println!("cargo:rerun-if-changed={watched}");
    if std::path::Path::new(server).is_file() {
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
