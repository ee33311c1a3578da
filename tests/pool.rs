//! pool-deadlock and begin-on-pool against a real throwaway PostgreSQL, through a real pool
//! (deadpool-postgres). The figures come from the pool's own counters and from the database.

mod common;
use std::time::Duration;

use common::*;

// Exit code 0 means every expectation in the scenario files held; these tests check what the
// files cannot say: outcome words, the pool's size, exact fingerprints, and the cleanup.

#[test]
fn nested_queries_deadlock_the_pool_until_the_cutoff_and_each_fix_holds() {
    let tmp = tempdir();
    let (code, report, stderr) = run_json(tmp.path(), &["pool-deadlock"]);
    assert_eq!(code, 0, "{stderr}\n{report:#}");

    let baseline = variant(&report, "baseline");
    assert_eq!(baseline["outcome"], "deadlocked");
    assert_eq!(metric(baseline, "pool_size"), 4.0);
    // The cut-off (20 s at time scale 0.1) ends it: the tool itself never hangs.
    assert!(
        baseline["wall_ms"].as_f64().unwrap() < 10_000.0,
        "{baseline:#}"
    );

    assert_eq!(variant(&report, "wait-timeout")["outcome"], "failed-fast");
    for fixed in ["fixed-code", "bigger-pool"] {
        assert_eq!(variant(&report, fixed)["outcome"], "completed");
    }
    let cliff = variant(&report, "bigger-pool-more-handlers");
    assert_eq!(cliff["outcome"], "deadlocked");
    assert_eq!(metric(cliff, "pool_size"), 5.0);
    assert_nothing_left(tmp.path(), Duration::from_secs(5));
}

#[test]
fn begin_through_the_pool_oversells_loses_bookings_and_leaks_transactions() {
    let tmp = tempdir();
    // A big warm pool, fewer bookers than connections: every form of the harm at once.
    let (code, report, stderr) = run_json(
        tmp.path(),
        &[
            "begin-on-pool",
            "--param",
            "pool_size=65",
            "--param",
            "bookers=20",
        ],
    );
    assert_eq!(code, 0, "{stderr}\n{report:#}");

    // The pool deals connections out the same way on every run: 5 INSERTs autocommit, 15 land
    // in transactions left open by other bookers' BEGINs.
    let baseline = variant(&report, "baseline");
    assert_eq!(metric(baseline, "bookings"), 5.0);
    assert_eq!(metric(baseline, "oversold"), 4.0);
    assert_eq!(metric(baseline, "reported_booked"), 20.0);
    assert_eq!(metric(baseline, "lost_bookings"), 15.0);
    assert_eq!(metric(baseline, "leaked_open_transactions"), 15.0);

    let half = variant(&report, "dedicated-client");
    assert_eq!(metric(half, "bookings"), 20.0);
    assert_eq!(metric(half, "leaked_open_transactions"), 0.0);

    for fixed in ["for-update", "conditional-update", "unique-index"] {
        assert_eq!(variant(&report, fixed)["outcome"], "booked-once");
    }
    assert_nothing_left(tmp.path(), Duration::from_secs(5));
}
