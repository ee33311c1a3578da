//! orphan-lock against a real throwaway PostgreSQL: every variant, every fault mode.
//! The figures come from the JSON report, i.e. from the probe session and pg_stat_activity.

mod common;
use common::*;

// Exit code 0 means every expectation in orphan-lock.toml held; these tests check only what
// the file cannot say: the outcome words, which figures are lower bounds, what a fault mode
// changes, and that nothing is left behind.

#[test]
fn frozen_holder_locks_the_row_until_cutoff_and_only_idle_timeout_frees_it() {
    let tmp = tempdir();
    let (code, report, stderr) = run_json(tmp.path(), &["orphan-lock"]);
    assert_eq!(code, 0, "{stderr}\n{report:#}");

    let baseline = variant(&report, "baseline");
    assert_eq!(baseline["outcome"], "stuck");
    // Still locked at the cut-off: the checker marks the figure as a lower bound.
    assert_eq!(
        baseline["lower_bounds"],
        serde_json::json!(["lock_held_ms"])
    );
    assert_eq!(baseline["requests"]["stuck"], 20);
    assert!(
        metric(baseline, "holder_idle_in_transaction_ms") >= 2500.0,
        "pg_stat_activity saw the frozen holder idle in transaction: {baseline:#}"
    );
    assert_eq!(
        variant(&report, "statement-timeout-only")["outcome"],
        "stuck"
    );
    let mitigated = variant(&report, "mitigated");
    assert_eq!(mitigated["outcome"], "released");
    assert!(mitigated.get("lower_bounds").is_none(), "{mitigated:#}");
    assert_eq!(
        variant(&report, "payment-outside-tx")["outcome"],
        "never-locked"
    );
    assert_nothing_left(tmp.path(), std::time::Duration::from_secs(5));
}

#[test]
fn killed_holder_frees_the_row_within_milliseconds_in_every_variant() {
    let tmp = tempdir();
    let (code, report, stderr) = run_json(tmp.path(), &["orphan-lock", "--param", "fault=kill"]);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    // The expectations for fault=kill (expect_when) held; the outcome says why.
    for name in ["baseline", "statement-timeout-only", "mitigated"] {
        let v = variant(&report, name);
        assert_eq!(v["outcome"], "released", "{v:#}");
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
    assert_eq!(variant(&report, "mitigated")["outcome"], "released");
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
