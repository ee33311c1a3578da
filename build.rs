//! Marks a build made as root (`cfg(locklab_root)`): the tests that need root (network
//! namespaces and nftables for a real partition) are then run; built as anyone else, they are
//! ignored with the reason, so a test report says "skipped" rather than "passed".

fn main() {
    println!("cargo:rustc-check-cfg=cfg(locklab_root)");
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
