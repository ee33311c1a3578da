//! redis-failover against real redis-server processes of each variant's own: every figure
//! comes from the JSON report (critical sections, the key as sampled on every node, orders
//! counted by PostgreSQL), and nothing the run started survives it, even a SIGKILL.

mod common;
use std::time::Duration;

use common::*;

// Exit code 0 means every expectation in redis-failover.toml held; these check what the file
// cannot say.
#[test]
fn each_failure_and_each_fix_show_and_no_node_is_left_behind() {
    let tmp = tempdir();
    let (code, report, stderr) = run_json(tmp.path(), &["redis-failover"]);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    for (name, outcome) in [
        ("restart-no-persistence", "oversold"),
        ("failover-async", "oversold"),
        ("failover-wait", "sold-exactly"),
        ("restart-aof-always", "sold-exactly"),
        ("redlock-node-lost", "sold-exactly"),
        ("redlock-restart-empty", "oversold"),
        ("fenced", "sold-exactly"),
    ] {
        assert_eq!(variant(&report, name)["outcome"], outcome, "{name}");
    }
    // The restart took the lock away from its holder; Redlock's one lost node did not.
    let metric = |v: &str, m: &str| variant(&report, v)["metrics"][m].clone();
    assert_eq!(metric("restart-no-persistence", "lock_lost"), 1);
    assert_eq!(metric("redlock-node-lost", "lock_lost"), 0);
    // Sentinel's own view of the failover: a promotion within seconds, after the 200 ms it
    // waits before calling the primary down.
    let failover = metric("failover-async", "failover_ms")
        .as_f64()
        .unwrap_or(-1.0);
    assert!((200.0..30_000.0).contains(&failover), "{failover}");
    assert!(metric("restart-no-persistence", "failover_ms").is_null());
    assert_nothing_left(tmp.path(), Duration::from_secs(5));
}

/// A more crowded shop and a second item: the restart still loses the lock, the fixes hold.
#[test]
fn holds_with_thirty_buyers_and_two_items() {
    let tmp = tempdir();
    let (code, report, stderr) = run_json(
        tmp.path(),
        &[
            "redis-failover",
            "--param",
            "buyers=30",
            "--param",
            "stock=2",
        ],
    );
    assert_eq!(code, 0, "{stderr}\n{report:#}");
}

#[test]
fn against_a_redis_given_by_url_every_variant_is_skipped_with_the_reason() {
    let tmp = tempdir();
    let servers = EnvUp::start(tmp.path(), &[]);
    let (code, report, stderr) = run_json(
        tmp.path(),
        &[
            "redis-failover",
            "--pg-url",
            &servers.url,
            "--redis-url",
            &servers.redis_url,
        ],
    );
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    let skipped = variant(&report, "restart-no-persistence")["skipped"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(skipped.contains("without --redis-url"), "{skipped}");
}

/// Starts a run of a Sentinel variant and a Redlock one, and waits until a variant's nodes
/// are up (the run's own Redis, then five masters, or a primary, its replica and three
/// Sentinels).
fn start_nodes(tmp: &std::path::Path) -> std::process::Child {
    let child = spawn_quiet(
        tmp,
        &[
            "run",
            "redis-failover",
            "--variant",
            "redlock-node-lost",
            "--variant",
            "failover-wait",
            "--param",
            "deadline=600s",
            "--param",
            "ttl=1200s",
            "--no-results",
        ],
    );
    let needle = tmp.to_string_lossy().to_string();
    wait_until("a variant's nodes up", || {
        processes_mentioning_all(&["redis-server", &needle]).len() >= 6
    });
    std::thread::sleep(Duration::from_millis(500));
    child
}

#[test]
fn sigkill_of_locklab_leaves_no_redis_node_no_sentinel_and_no_data_dir() {
    let tmp = tempdir();
    let mut child = start_nodes(tmp.path());
    signal(&child, libc::SIGKILL);
    child.wait().expect("wait");
    assert_nothing_left(tmp.path(), Duration::from_secs(10));
}

/// A stopped replica and Sentinels mid-discovery do not hold up an interrupt.
#[test]
fn ctrl_c_stops_every_node_and_sentinel_at_once() {
    let tmp = tempdir();
    let mut child = start_nodes(tmp.path());
    signal(&child, libc::SIGINT);
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130));
    assert_nothing_left(tmp.path(), Duration::from_secs(3));
}
