//! The isolation family on a real server: each anomaly shows in the figures PostgreSQL's
//! documented behaviour predicts, at each isolation level and with each defence.

mod common;
use common::*;

use std::time::Duration;

fn run(args: &[&str]) -> serde_json::Value {
    let tmp = tempdir();
    let (code, report, stderr) = run_json(tmp.path(), args);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    assert_nothing_left(tmp.path(), Duration::from_secs(5));
    report
}

#[test]
fn check_then_act_overdraws_exactly_as_the_levels_predict() {
    let r = run(&["check-then-act"]);
    // 100, ten withdrawals of 30: every check passes under READ COMMITTED.
    let rc = variant(&r, "read-committed");
    assert_eq!(metric(rc, "final_balance"), -200.0, "{rc:#}");
    assert_eq!(metric(rc, "overdrafts"), 7.0);
    // REPEATABLE READ without a retry: one withdrawal, nine 40001s.
    let rr = variant(&r, "repeatable-read-no-retry");
    assert_eq!(metric(rr, "withdrawals_ok"), 1.0, "{rr:#}");
    assert_eq!(metric(rr, "serialization_failures"), 9.0);
    for fixed in [
        "for-update",
        "conditional-update",
        "version-column",
        "serializable-retry",
        "app-queue-one-instance",
    ] {
        let v = variant(&r, fixed);
        assert_eq!(metric(v, "final_balance"), 10.0, "{v:#}");
        assert_eq!(metric(v, "withdrawals_ok"), 3.0, "{v:#}");
    }
    // Two instances: the k-th of each race, from the second round on below zero.
    let two = variant(&r, "app-queue-two-instances");
    assert_eq!(metric(two, "final_balance"), -20.0, "{two:#}");
}

#[test]
fn read_skew_write_skew_and_deadlock_show_on_every_round() {
    let r = run(&["read-skew"]);
    let pooled = variant(&r, "two-queries-on-pool");
    // Five reports, five rounds, a transfer between each report's two reads in every round.
    assert_eq!(metric(pooled, "reads"), 25.0, "{pooled:#}");
    assert_eq!(metric(pooled, "skewed_reads"), 25.0, "{pooled:#}");
    assert_eq!(metric(pooled, "worst_skew"), 100.0);
    let rc = variant(&r, "read-committed-tx");
    assert_eq!(metric(rc, "skewed_reads"), 25.0, "{rc:#}");
    // Through a pooler of 3 server connections for 10 reports: the 3 that hold them wait for
    // the transfer (which goes straight to the server), so every round still shows the skew.
    let r = run(&[
        "read-skew",
        "--pooler",
        "--pooler-setting",
        "default_pool_size=3",
        "--param",
        "readers=10",
    ]);
    let rc = variant(&r, "read-committed-tx");
    assert_eq!(metric(rc, "skewed_rounds"), 5.0, "in every round: {rc:#}");
    assert_eq!(metric(rc, "reads"), 50.0, "{rc:#}");

    let r = run(&["write-skew"]);
    assert_eq!(
        metric(variant(&r, "repeatable-read"), "invariant_violations"),
        5.0
    );
    let ssi = variant(&r, "serializable-retry");
    assert_eq!(metric(ssi, "serialization_failures"), 5.0, "{ssi:#}");
    assert_eq!(metric(ssi, "went_off_call"), 5.0);

    let r = run(&["deadlock"]);
    let d = variant(&r, "opposite-order");
    assert_eq!(metric(d, "deadlocks"), 5.0, "{d:#}");
    // The victim is found after deadlock_timeout (1 s at real speed, 100 ms here), not before.
    assert_eq!(metric(d, "deadlock_timeout_ms"), 100.0);
    assert!(metric(d, "victim_wait_ms") >= 90.0, "{d:#}");
}
