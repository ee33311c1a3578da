//! connection-storm on real servers: the ghost's lock pins the slots, other endpoints get
//! 53300, the cap keeps them working, the timeouts free the row, a restart relapses; and bad
//! sizes are refused before anything starts.

mod common;
use common::*;

#[test]
fn storm_pins_the_slots_and_each_knob_does_what_it_says() {
    let tmp = tempdir();
    let (code, report, stderr) = run_json(tmp.path(), &["connection-storm"]);
    assert_eq!(code, 0, "{stderr}\n{report:#}");

    let baseline = variant(&report, "baseline");
    // The variant's own server: 100 slots, 3 for superusers, so 97 before 53300.
    assert_eq!(metric(baseline, "max_connections"), 100.0);
    assert_eq!(metric(baseline, "usable_slots"), 97.0);
    assert_eq!(metric(baseline, "max_connections_used"), 97.0);
    assert!(
        metric(baseline, "too_many_clients") >= 100.0,
        "{baseline:#}"
    );
    assert!(metric(baseline, "other_ok_ratio") < 0.5, "{baseline:#}");
    assert_eq!(metric(baseline, "bookings_committed"), 0.0);
    assert!(metric(baseline, "retries") >= 1.0, "{baseline:#}");
    // Measured from /proc on a throwaway server.
    assert!(metric(baseline, "db_cpu_pct") > 0.0, "{baseline:#}");
    assert!(metric(baseline, "harness_cpu_pct") > 0.0, "{baseline:#}");

    let cap_only = variant(&report, "cap-only");
    assert_eq!(metric(cap_only, "runtime_cap"), 50.0);
    assert_eq!(metric(cap_only, "max_concurrent"), 50.0);
    assert_eq!(metric(cap_only, "too_many_clients"), 0.0);
    assert_eq!(metric(cap_only, "other_ok_ratio"), 1.0);
    assert_eq!(metric(cap_only, "bookings_ok"), 0.0);

    let mitigated = variant(&report, "mitigated");
    assert_eq!(
        metric(mitigated, "bookings_ok"),
        metric(mitigated, "bookings_committed")
    );
    assert!(metric(mitigated, "bookings_ok") >= 1.0);
    assert_eq!(metric(mitigated, "other_ok_ratio"), 1.0);

    let restart = variant(&report, "restart-db");
    assert_eq!(restart["outcome"], "relapsed");
    assert!(metric(restart, "recovered_ms") < metric(restart, "relapse_ms"));
    assert_eq!(metric(restart, "booked_after_relapse"), 0.0);
}

#[test]
fn storm_sizes_that_cannot_work_are_refused_before_anything_starts() {
    let tmp = tempdir();
    let out = locklab(tmp.path())
        .args(["run", "connection-storm", "--param", "max_connections=40"])
        .output()
        .expect("run locklab");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cap 50 leaves the other endpoints too few connection slots"),
        "{err}"
    );
    assert!(err.contains("lower --param cap to 20 or less"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = locklab(tmp.path())
        .args(["run", "connection-storm", "--param", "rate=5000"])
        .output()
        .expect("run locklab");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("new connections a second"), "{err}");
}
