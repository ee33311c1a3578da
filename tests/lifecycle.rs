//! lost-client and shutdown on real servers: a real partition in a namespace of the run's own,
//! a deploy's SIGTERM with and without a drain, and a database restart; nothing left behind.

mod common;
use common::*;

use std::process::Stdio;
use std::time::Duration;

/// Runs `locklab run ARGS --format json`; returns (pid, exit code, report, stderr).
fn run_with_pid(tmp: &std::path::Path, args: &[&str]) -> (u32, i32, serde_json::Value, String) {
    let child = locklab(tmp)
        .arg("run")
        .args(args)
        .args(["--format", "json", "--no-results"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn locklab");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait locklab");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}); stderr:\n{stderr}"));
    (pid, out.status.code().unwrap_or(-1), json, stderr)
}

#[test]
fn a_partition_keeps_the_backend_until_the_server_side_gives_up() {
    let tmp = tempdir();
    let (pid, code, report, stderr) = run_with_pid(tmp.path(), &["lost-client"]);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    if !can_make_namespaces() {
        // Not root: every variant is skipped, and the reason says what it needs.
        for v in report["scenarios"][0]["variants"]
            .as_array()
            .expect("variants")
        {
            assert_eq!(v["outcome"], "skipped", "{v:#}");
            assert!(
                v["skipped"].as_str().is_some_and(|w| w.contains("root")),
                "{v:#}"
            );
        }
        return;
    }
    assert_no_namespace_left(pid, Duration::from_secs(5));
    assert_nothing_left(tmp.path(), Duration::from_secs(5));

    // Seen from an independent session: the backend outlives the cut-off unless a server-side
    // setting ends it, and then it goes when the settings say.
    for stuck in [
        "baseline",
        "statement-timeout-only",
        "client-keepalives",
        "tcp-user-timeout",
    ] {
        let v = variant(&report, stuck);
        assert_eq!(v["metrics"]["backend_outlived_cut_off"], true, "{v:#}");
        assert_eq!(metric(v, "bookings_committed"), 0.0, "{v:#}");
    }
    let baseline = variant(&report, "baseline");
    assert_eq!(metric(baseline, "expected_release_ms"), 7_875_000.0);

    let keepalives = variant(&report, "server-keepalives");
    assert_eq!(metric(keepalives, "expected_release_ms"), 6000.0);
    let gone = metric(keepalives, "backend_gone_ms");
    assert!((5400.0..=7000.0).contains(&gone), "{keepalives:#}");
    assert!((metric(keepalives, "lock_held_ms") - gone).abs() < 100.0);

    let idle = variant(&report, "idle-timeout");
    let gone = metric(idle, "backend_gone_ms");
    assert!((1800.0..=2600.0).contains(&gone), "{idle:#}");
    assert_eq!(metric(idle, "bookings_committed"), 5.0);
}

#[test]
fn a_deploy_loses_the_booking_in_flight_unless_it_drains() {
    let tmp = tempdir();
    let (code, report, stderr) = run_json(tmp.path(), &["shutdown"]);
    assert_eq!(code, 0, "{stderr}\n{report:#}");

    let plain = variant(&report, "sigterm-no-handler");
    assert!(metric(plain, "lock_held_ms") < 500.0, "{plain:#}");
    assert_eq!(metric(plain, "holder_charged_without_booking"), 1.0);
    assert_eq!(plain["metrics"]["holder_killed"], true);

    let drain = variant(&report, "sigterm-drain");
    assert_eq!(metric(drain, "holder_exit_code"), 0.0);
    assert_eq!(metric(drain, "holder_committed"), 1.0);
    assert_eq!(metric(drain, "holder_charged_without_booking"), 0.0);
    // Held until the booking in flight commits: the rest of its 2 s payment call.
    let held = metric(drain, "lock_held_ms");
    assert!((1400.0..=1800.0).contains(&held), "{drain:#}");

    let stuck = variant(&report, "sigterm-stuck-then-kill");
    let held = metric(stuck, "lock_held_ms");
    assert!((2900.0..=3500.0).contains(&held), "{stuck:#}");
    assert_eq!(metric(stuck, "holder_charged_without_booking"), 1.0);

    let restart = variant(&report, "db-restart");
    assert!(metric(restart, "restart_errors") >= 1.0, "{restart:#}");
    assert_eq!(metric(restart, "broken_after_restart"), 0.0);
    assert_eq!(metric(restart, "bookings_ok"), 5.0);
}

#[test]
fn against_a_users_server_the_faults_that_need_locklabs_own_are_skipped_with_the_reason() {
    let tmp = tempdir();
    let env = EnvUp::start(tmp.path(), &[]);
    for (scenario, skipped, runs) in [
        ("lost-client", "baseline", None),
        ("shutdown", "db-restart", Some("sigterm-drain")),
    ] {
        let (code, report, stderr) = run_json(tmp.path(), &[scenario, "--pg-url", &env.url]);
        assert_eq!(code, 0, "{stderr}\n{report:#}");
        let v = variant(&report, skipped);
        assert_eq!(v["outcome"], "skipped", "{v:#}");
        assert!(stderr.contains("skipped"), "{stderr}");
        if let Some(name) = runs {
            let v = variant(&report, name);
            assert_eq!(v["expectations_held"], true, "{v:#}");
        }
    }
    env.stop();
}

/// Starts a lost-client run and waits until its partition's namespace exists.
fn start_partitioned_run(tmp: &std::path::Path) -> std::process::Child {
    let child = spawn_quiet(
        tmp,
        &[
            "run",
            "lost-client",
            "--variant",
            "baseline",
            "--param",
            "deadline=600s",
            "--no-results",
        ],
    );
    let needle = tmp.to_string_lossy().to_string();
    wait_until("the run getting going", || {
        !namespaces_of(child.id()).is_empty()
            && !processes_mentioning_all(&["__worker", &needle]).is_empty()
    });
    std::thread::sleep(Duration::from_millis(600));
    child
}

#[test]
#[cfg_attr(
    not(locklab_root),
    ignore = "needs root: a network namespace and an nftables rule"
)]
fn sigkill_mid_partition_leaves_no_namespace_server_or_temp_dir() {
    assert!(
        can_make_namespaces(),
        "needs root (built as root, run as another user?)"
    );
    let tmp = tempdir();
    let mut child = start_partitioned_run(tmp.path());
    let pid = child.id();
    signal(&child, libc::SIGKILL);
    child.wait().expect("wait locklab");
    assert_nothing_left(tmp.path(), Duration::from_secs(10));
    assert_no_namespace_left(pid, Duration::from_secs(10));
}

#[test]
#[cfg_attr(
    not(locklab_root),
    ignore = "needs root: a network namespace and an nftables rule"
)]
fn ctrl_c_mid_partition_leaves_no_namespace() {
    assert!(
        can_make_namespaces(),
        "needs root (built as root, run as another user?)"
    );
    let tmp = tempdir();
    let mut child = start_partitioned_run(tmp.path());
    let pid = child.id();
    signal(&child, libc::SIGINT);
    let status = child.wait().expect("wait locklab");
    assert_eq!(status.code(), Some(130));
    assert_no_namespace_left(pid, Duration::from_secs(5));
    assert_nothing_left(tmp.path(), Duration::from_secs(5));
}

#[test]
fn keepalive_settings_the_kernel_or_the_cut_off_cannot_honour_are_refused_before_anything_starts() {
    let tmp = tempdir();
    for (args, says) in [
        // 30s at time scale 0.05 is 1.5 s: PostgreSQL would round it to 1 s or, below 1 s, to 0
        // (the kernel's two hours).
        (
            &["--time-scale", "0.05"][..],
            "TCP keepalive settings are whole seconds",
        ),
        (
            &[
                "--param",
                "keepalives_count=5",
                "--param",
                "keepalives_idle=50s",
            ][..],
            "predict (10s, in the kernel",
        ),
    ] {
        let out = locklab(tmp.path())
            .args(["run", "lost-client"])
            .args(args)
            .output()
            .expect("run locklab");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(says), "{err}");
    }
    assert_nothing_left(tmp.path(), Duration::from_secs(1));
}
