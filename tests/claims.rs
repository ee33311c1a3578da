//! The parameter sampler's CI sample: points drawn (seeded) from what the fast scenarios
//! declare, each run on real servers; every point holds or is refused up front with the
//! relation that excludes it. Longer soaks: `locklab bench claims --samples 200` (README).

mod common;

use common::{locklab, tempdir};

#[test]
fn every_sampled_point_holds_or_is_refused_with_its_reason() {
    let tmp = tempdir();
    let out = locklab(tmp.path())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["bench", "claims", "--samples", "8", "--seed", "1"])
        .args(["--scenario", "deadlock", "--scenario", "write-skew"])
        .args(["--scenario", "read-skew", "--scenario", "check-then-act"])
        .output()
        .expect("bench claims");
    let said = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{said}\n{err}");
    let points: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("  locklab run "))
        .collect();
    assert_eq!(points.len(), 8, "{said}");
    for p in &points {
        assert!(
            p.ends_with("-> held") || p.contains("-> refused: Error: "),
            "a point neither held nor was refused with a reason: {p}"
        );
    }
    assert!(said.contains("0 failed"), "{said}");
}
