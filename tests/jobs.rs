//! Variants side by side (`--jobs`): the same report, in the same order, as one at a time.

mod common;
use common::*;

use std::time::Duration;

#[test]
fn side_by_side_runs_report_every_variant_in_file_order() {
    let tmp = tempdir();
    let args = [
        "begin-on-pool",
        "pool-deadlock",
        "--jobs",
        "4",
        "--repeat",
        "2",
    ];
    let (code, report, stderr) = run_json(tmp.path(), &args);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    for (scenario, names) in [
        (
            0,
            &[
                "baseline",
                "dedicated-client",
                "for-update",
                "conditional-update",
                "unique-index",
            ][..],
        ),
        (
            1,
            &[
                "baseline",
                "wait-timeout",
                "fixed-code",
                "bigger-pool",
                "bigger-pool-more-handlers",
            ],
        ),
    ] {
        let variants = report["scenarios"][scenario]["variants"]
            .as_array()
            .expect("variants");
        let got: Vec<&str> = variants.iter().filter_map(|v| v["name"].as_str()).collect();
        assert_eq!(got, names, "{report:#}");
        for v in variants {
            assert_eq!(v["runs"], 2, "{v:#}");
            assert_eq!(v["runs_held"], 2, "{v:#}");
        }
    }
    // The runs overlapped: together they took far longer than the run did (each variant's
    // wall_ms sums its own runs). One lane at a time would make the two equal.
    let own: u64 = report["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .flat_map(|s| s["variants"].as_array().expect("variants"))
        .filter_map(|v| v["wall_ms"].as_u64())
        .sum();
    let wall = report["wall_ms"].as_u64().expect("wall_ms");
    assert!(
        wall * 3 < own * 2,
        "run {wall} ms, its runs {own} ms: not side by side"
    );
    assert_nothing_left(tmp.path(), Duration::from_secs(5));
}
