//! orphan-lock against a real throwaway PostgreSQL: every variant, every fault mode.
//! The figures come from the JSON report, i.e. from the probe session and pg_stat_activity.

mod common;
use common::*;

fn held(v: &serde_json::Value) -> bool {
    v["expectations_held"] == true
}

#[test]
fn frozen_holder_locks_the_row_until_cutoff_and_only_idle_timeout_frees_it() {
    let tmp = tempdir();
    let (code, report, stderr) = run_json(tmp.path(), &["orphan-lock"]);
    assert_eq!(code, 0, "{stderr}\n{report:#}");

    let baseline = variant(&report, "baseline");
    assert_eq!(baseline["outcome"], "stuck");
    assert_eq!(baseline["metrics"]["cut_off"], true);
    assert!(metric(baseline, "lock_held_ms") >= 2700.0, "{baseline:#}");
    assert_eq!(metric(baseline, "bookings_ok"), 0.0);
    assert_eq!(metric(baseline, "bookings_stuck"), 20.0);
    assert_eq!(metric(baseline, "max_waiting_on_lock"), 20.0);
    assert!(
        metric(baseline, "holder_idle_in_transaction_ms") >= 2500.0,
        "{baseline:#}"
    );

    let half = variant(&report, "statement-timeout-only");
    assert_eq!(half["outcome"], "stuck");
    assert!(metric(half, "lock_held_ms") >= 2700.0);
    assert_eq!(metric(half, "bookings_ok"), 0.0);
    assert!(metric(half, "statement_timeouts") >= 20.0, "{half:#}");

    let mitigated = variant(&report, "mitigated");
    assert_eq!(mitigated["outcome"], "released");
    let held_ms = metric(mitigated, "lock_held_ms");
    assert!(
        (900.0..=1500.0).contains(&held_ms),
        "released after {held_ms} ms for a 1 s idle timeout"
    );
    assert_eq!(metric(mitigated, "bookings_ok"), 20.0);
    assert_eq!(metric(mitigated, "bookings_committed"), 20.0);
    assert!(metric(mitigated, "lock_timeouts") >= 1.0);
    assert_eq!(mitigated["metrics"]["cut_off"], false);

    let fixed = variant(&report, "payment-outside-tx");
    assert_eq!(fixed["outcome"], "never-locked");
    assert_eq!(metric(fixed, "lock_held_ms"), 0.0);
    assert_eq!(metric(fixed, "holder_idle_in_transaction_ms"), 0.0);
    assert_eq!(metric(fixed, "bookings_committed"), 20.0);

    for name in [
        "baseline",
        "statement-timeout-only",
        "mitigated",
        "payment-outside-tx",
    ] {
        assert!(held(variant(&report, name)), "{name}: {report:#}");
    }
    assert_nothing_left(tmp.path(), std::time::Duration::from_secs(5));
}

#[test]
fn killed_holder_frees_the_row_within_milliseconds_in_every_variant() {
    let tmp = tempdir();
    let (code, report, stderr) = run_json(tmp.path(), &["orphan-lock", "--param", "fault=kill"]);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    for name in ["baseline", "statement-timeout-only", "mitigated"] {
        let v = variant(&report, name);
        assert_eq!(v["outcome"], "released", "{v:#}");
        assert!(metric(v, "lock_held_ms") < 500.0, "{v:#}");
        assert_eq!(metric(v, "bookings_ok"), 20.0, "{v:#}");
    }
    assert_eq!(
        variant(&report, "payment-outside-tx")["outcome"],
        "never-locked"
    );
}

#[test]
fn aborted_task_returns_its_connection_to_the_pool_inside_the_transaction() {
    let tmp = tempdir();
    let (code, report, stderr) = run_json(tmp.path(), &["orphan-lock", "--param", "fault=leak"]);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    let baseline = variant(&report, "baseline");
    assert_eq!(
        baseline["metrics"]["next_user_in_leaked_tx"], true,
        "{baseline:#}"
    );
    assert_eq!(baseline["outcome"], "stuck");
    let mitigated = variant(&report, "mitigated");
    assert_eq!(mitigated["outcome"], "released");
    assert!(
        (900.0..=1500.0).contains(&metric(mitigated, "lock_held_ms")),
        "{mitigated:#}"
    );
    assert_eq!(
        variant(&report, "payment-outside-tx")["outcome"],
        "never-locked"
    );
}

#[test]
fn a_variant_is_cut_off_at_its_deadline_and_reported_stuck() {
    let tmp = tempdir();
    let started = std::time::Instant::now();
    let (code, report, stderr) = run_json(
        tmp.path(),
        &[
            "orphan-lock",
            "--variant",
            "baseline",
            "--param",
            "deadline=5s",
            "--param",
            "clients=3",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let v = variant(&report, "baseline");
    assert_eq!(v["requests"]["stuck"], 3);
    assert!(metric(v, "lock_held_ms") >= 450.0);
    // 5 s at time scale 0.1 is a 0.5 s cut-off: far from a hang.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}
