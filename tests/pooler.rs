//! Through a pooler: every scenario runs through PgBouncer in transaction mode with the same
//! verdicts, the orphan lock survives the pooler, and PgBouncer's own timeout frees it.

mod common;
use common::*;

use std::process::Stdio;
use std::time::{Duration, Instant};

fn scenarios(report: &serde_json::Value) -> &Vec<serde_json::Value> {
    report["scenarios"].as_array().expect("scenarios")
}

#[test]
fn every_scenario_runs_through_a_pgbouncer_given_as_pg_url() {
    let tmp = tempdir();
    let env = EnvUp::start(tmp.path(), &[]);
    let run_tmp = tempdir();
    let (code, report, stderr) = run_json(
        run_tmp.path(),
        &[
            "all",
            "--pg-url",
            &env.pooler_url,
            "--redis-url",
            &env.redis_url,
        ],
    );
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    for s in scenarios(&report) {
        assert!(
            s["target"]
                .as_str()
                .is_some_and(|t| t.contains("transaction-mode pooler")),
            "the header says the run went through a pooler: {}",
            s["target"]
        );
        for v in s["variants"].as_array().expect("variants") {
            assert!(v.get("error").is_none(), "harness error: {v:#}");
        }
    }
    // The pooler's own timeout needs locklab's PgBouncer: skipped with its reason, not failed.
    assert!(
        stderr.contains("orphan-lock/pooler-idle-timeout skipped"),
        "{stderr}"
    );
    // pooler-pitfalls compares the pooler's path with a direct one, which this run lacks.
    let pitfalls = scenarios(&report)
        .iter()
        .find(|s| s["name"] == "pooler-pitfalls")
        .expect("pooler-pitfalls is part of all");
    for v in pitfalls["variants"].as_array().expect("variants") {
        assert!(
            v["skipped"]
                .as_str()
                .is_some_and(|why| why.contains("--pooler-url")),
            "{v:#}"
        );
    }
    let orphan = &scenarios(&report)[0];
    let through = orphan["variants"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == "through-pooler"))
        .expect("through-pooler ran on the user's pooler");
    assert_eq!(through["outcome"], "stuck");
    assert!(env.stop().success());
    assert_nothing_left(run_tmp.path(), Duration::from_secs(5));
}

#[test]
fn the_orphan_lock_outlives_the_pooler_until_its_own_timeout_frees_it() {
    let tmp = tempdir();
    let (code, report, stderr) = run_json(
        tmp.path(),
        &[
            "orphan-lock",
            "--variant",
            "baseline",
            "--variant",
            "through-pooler",
            "--variant",
            "pooler-idle-timeout",
            "--repeat",
            "3",
        ],
    );
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    let baseline = variant(&report, "baseline");
    let through = variant(&report, "through-pooler");
    let freed = variant(&report, "pooler-idle-timeout");
    assert_eq!(through["outcome"], "stuck", "{through:#}");
    assert!(metric(through, "lock_held_ms") >= metric(baseline, "lock_held_ms") * 0.9);
    // The pooler caps the server sessions (PgBouncer's default pool of 20), the direct run
    // opens one per client and more; the row stays locked either way.
    assert!(
        metric(through, "max_server_sessions") <= 20.0,
        "{through:#}"
    );
    assert!(
        metric(baseline, "max_server_sessions") > 20.0,
        "{baseline:#}"
    );
    assert_eq!(freed["outcome"], "released", "{freed:#}");
    assert_eq!(freed["runs_held"], 3);
    assert_nothing_left(tmp.path(), Duration::from_secs(5));
}

/// Each pitfall through the user's own pooler (env up's PgBouncer given as --pooler-url):
/// the failing variants show their harm in the figures designed for them, the fixes zero.
#[test]
fn each_pooler_pitfall_shows_its_harm_and_each_fix_none() {
    let tmp = tempdir();
    let env = EnvUp::start(tmp.path(), &[]);
    let run_tmp = tempdir();
    let (code, report, stderr) = run_json(
        run_tmp.path(),
        &[
            "pooler-pitfalls",
            "--pooler-url",
            &env.pooler_url,
            "--pg-url",
            &env.url,
            "--repeat",
            "2",
        ],
    );
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    let v = |name| variant(&report, name);
    let (tenants, rounds) = (20.0, 3.0);
    assert!(metric(v("prepared-statements"), "prepared_errors") >= 1.0);
    assert!(metric(v("plan-cache-mode"), "connect_refused") >= 1.0);
    assert_eq!(metric(v("plan-cache-mode"), "plan_cache_mode_applied"), 0.0);
    assert_eq!(
        metric(v("unnamed-statements"), "transactions"),
        tenants * rounds
    );
    // The connection client 0 set statement_timeout on serves one tenant every round; the
    // time zone does not stray (PgBouncer sets each client's own back).
    let set = v("set-session");
    assert_eq!(metric(set, "foreign_statement_timeout"), rounds, "{set:#}");
    assert_eq!(metric(set, "cancelled"), rounds, "{set:#}");
    assert_eq!(metric(set, "foreign_timezone"), 0.0, "{set:#}");
    assert_eq!(metric(v("set-local"), "foreign_settings"), 0.0);
    let advisory = v("advisory-session");
    assert_eq!(metric(advisory, "overlaps"), rounds, "{advisory:#}");
    assert_eq!(metric(advisory, "stranded_locks"), rounds, "{advisory:#}");
    assert_eq!(metric(v("advisory-xact"), "locks_left"), 0.0);
    let lost = v("listen-through-pooler");
    assert_eq!(
        metric(lost, "lost_notifications"),
        tenants * rounds,
        "{lost:#}"
    );
    let direct = v("listen-direct");
    assert_eq!(metric(direct, "notifications_received"), tenants * rounds);
    assert!(env.stop().success());
    assert_nothing_left(run_tmp.path(), Duration::from_secs(5));
}

#[test]
fn sigkill_of_locklab_takes_its_pgbouncer_along() {
    let tmp = tempdir();
    let out = tempdir();
    let mut child = locklab(tmp.path())
        .args(["run", "orphan-lock", "--pooler", "--variant", "baseline"])
        .args(["--param", "deadline=600s"])
        .arg("--out")
        .arg(out.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn locklab");
    let needle = tmp.path().to_string_lossy().to_string();
    let until = Instant::now() + Duration::from_secs(30);
    while processes_mentioning_all(&["__worker", &needle]).is_empty()
        || processes_mentioning_all(&["pgbouncer", &needle]).is_empty()
    {
        assert!(Instant::now() < until, "the run did not get going");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&child, libc::SIGKILL);
    child.wait().expect("wait");
    assert_nothing_left(tmp.path(), Duration::from_secs(10));
}

#[test]
fn pooler_options_are_checked_before_anything_starts() {
    let tmp = tempdir();
    for args in [
        // A throwaway PgBouncer fronts only locklab's own server.
        &[
            "run",
            "orphan-lock",
            "--pooler",
            "--pg-url",
            "postgres://u@h/db",
        ][..],
        // The server behind the user's pooler is needed for the probes.
        &[
            "run",
            "orphan-lock",
            "--pooler-url",
            "postgres://u@h:6432/db",
        ],
        &["run", "orphan-lock", "--pooler-setting", "nonsense"],
        &[
            "run",
            "orphan-lock",
            "--pooler-url",
            "notaurl",
            "--pg-url",
            "postgres://u@h/db",
        ],
    ] {
        let o = locklab(tmp.path()).args(args).output().expect("run");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert_nothing_left(tmp.path(), Duration::from_secs(5));
}

/// connection-storm through the user's own PgBouncer (env up's, sized for a fleet: md5, room
/// for every client): the outage moves into the pooler's queue, read from its admin console;
/// the others on a second pool never notice; the database timeouts free the row. Without the
/// admin console the pooler's figures are unknown, with the reason, never guessed.
#[test]
fn the_storm_through_your_own_pgbouncer_moves_the_outage_into_its_queue() {
    let tmp = tempdir();
    let env = EnvUp::start(
        tmp.path(),
        &[
            "--pooler-setting",
            "max_client_conn=3000",
            "--pooler-setting",
            "auth_type=md5",
        ],
    );
    let base = env.pooler_url.trim_end_matches("/postgres").to_string();
    let (others, admin) = (format!("{base}/others"), format!("{base}/pgbouncer"));
    let run_tmp = tempdir();
    let (code, report, stderr) = run_json(
        run_tmp.path(),
        &[
            "connection-storm",
            "--pg-url",
            &env.url,
            "--pooler-url",
            &env.pooler_url,
            "--pooler-others-url",
            &others,
            "--pooler-admin-url",
            &admin,
        ],
    );
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    // The direct variants need the server's own slots: skipped with the reason.
    assert!(
        variant(&report, "baseline")["skipped"]
            .as_str()
            .is_some_and(|w| w.contains("pooler")),
        "{report:#}"
    );
    let through = variant(&report, "through-pooler");
    assert_eq!(metric(through, "too_many_clients"), 0.0, "{through:#}");
    assert!(metric(through, "other_ok_ratio") < 0.99, "{through:#}");
    assert!(
        metric(through, "pooler_clients_waiting_max") >= 20.0,
        "{through:#}"
    );
    assert!(
        metric(through, "pool_server_conns_max") >= 1.0,
        "{through:#}"
    );
    let separate = variant(&report, "pooler-separate-pool");
    assert!(metric(separate, "other_ok_ratio") >= 0.99, "{separate:#}");
    assert_eq!(metric(separate, "bookings_ok"), 0.0, "{separate:#}");
    assert!(metric(variant(&report, "pooler-mitigated"), "bookings_ok") >= 1.0);

    let (code, report, stderr) = run_json(
        run_tmp.path(),
        &[
            "connection-storm",
            "--variant",
            "through-pooler",
            "--pg-url",
            &env.url,
            "--pooler-url",
            &env.pooler_url,
        ],
    );
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    let through = variant(&report, "through-pooler");
    assert!(
        through["metrics"]["pooler_clients_waiting_max"].is_null(),
        "{through:#}"
    );
    assert!(
        stderr.contains("the pooler's own figures are unknown")
            && stderr.contains("--pooler-admin-url"),
        "{stderr}"
    );
    assert!(env.stop().success());
    assert_nothing_left(run_tmp.path(), Duration::from_secs(5));
}
