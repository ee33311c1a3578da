//! setnx-race against a real throwaway Redis and PostgreSQL, and against a Redis given by URL.
//! Every figure comes from the JSON report: critical sections the buyers recorded, the lock key
//! as sampled from Redis, and orders counted by PostgreSQL.

mod common;
use std::time::Duration;

use common::*;

fn redis_keys(url: &str) -> Vec<String> {
    let client = redis::Client::open(url).expect("redis url");
    let mut con = client.get_connection().expect("connect to redis");
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).expect("KEYS");
    keys.sort();
    keys
}

// Exit code 0 means every expectation in setnx-race.toml held (oversold, overlapping holders,
// foreign DELs, stuck locks, stale writes rejected); these check what the file cannot say.
#[test]
fn every_variant_shows_its_verdict_and_nothing_is_left_behind() {
    let tmp = tempdir();
    let (code, report, stderr) = run_json(tmp.path(), &["setnx-race"]);
    assert_eq!(code, 0, "{stderr}\n{report:#}");

    let no_ttl = variant(&report, "setnx-no-ttl");
    assert_eq!(no_ttl["outcome"], "locked-out");
    // The crashed holder's key never went away: its figure is a lower bound.
    assert_eq!(no_ttl["lower_bounds"], serde_json::json!(["lock_stuck_ms"]));
    let ttl = variant(&report, "setnx-ttl");
    assert_eq!(ttl["outcome"], "sold-exactly");
    assert!(ttl.get("lower_bounds").is_none(), "{ttl:#}");
    assert_eq!(variant(&report, "ttl-too-short")["outcome"], "oversold");
    assert_eq!(variant(&report, "mitigated")["outcome"], "sold-exactly");

    // No redis-server, holder process or temp dir outlives the run.
    assert_nothing_left(tmp.path(), Duration::from_secs(5));
}

// lock-watchdog runs on setnx-race's shop: its file checks the verdicts; these check what the
// file cannot say: the figures come from Redis's view, and no holder process outlives the run.
#[test]
fn lock_watchdog_shows_each_lease_story_and_nothing_is_left_behind() {
    let tmp = tempdir();
    let (code, report, stderr) = run_json(tmp.path(), &["lock-watchdog"]);
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    let hung = variant(&report, "hung-worker");
    assert_eq!(hung["outcome"], "locked-out");
    // Renewed to the end: the hold is a lower bound, and Redis saw a renewal every third of
    // the lease (every 167 ms at the default 500 ms after --time-scale: some 24 in the 4 s
    // cut-off; fewer allowed for a busy machine).
    assert_eq!(hung["lower_bounds"], serde_json::json!(["lock_held_ms"]));
    let renewals = hung["metrics"]["renewals"].as_u64().expect("renewals");
    assert!(renewals >= 15, "{hung:#}");
    let bounded = variant(&report, "bounded-lease");
    assert_eq!(bounded["outcome"], "sold-exactly");
    // Renewed past the 1 s bound's start and freed at most one lease (500 ms) after it.
    let held = bounded["metrics"]["lock_held_ms"].as_f64().expect("held");
    assert!((900.0..=1560.0).contains(&held), "{bounded:#}");
    assert_eq!(variant(&report, "stalled-process")["outcome"], "oversold");
    assert_eq!(
        variant(&report, "stalled-fenced")["outcome"],
        "sold-exactly"
    );
    assert_nothing_left(tmp.path(), Duration::from_secs(5));
}

#[test]
fn against_a_redis_given_by_url_with_a_password_only_our_keys_are_touched() {
    let tmp = tempdir();
    let servers = EnvUp::start(tmp.path(), &[]);
    assert!(
        servers.redis_url.contains(":locklab@"),
        "{}",
        servers.redis_url
    );
    {
        let client = redis::Client::open(servers.redis_url.as_str()).expect("url");
        let mut con = client.get_connection().expect("connect");
        let _: () = redis::cmd("SET")
            .arg("customer:42")
            .arg("theirs")
            .query(&mut con)
            .expect("SET");
    }
    let (code, report, stderr) = run_json(
        tmp.path(),
        &[
            "setnx-race",
            "--pg-url",
            &servers.url,
            "--redis-url",
            &servers.redis_url,
        ],
    );
    assert_eq!(code, 0, "{stderr}\n{report:#}");
    assert!(
        !serde_json::to_string(&report)
            .unwrap()
            .contains(":locklab@"),
        "the Redis password leaked into the report"
    );
    assert_eq!(
        redis_keys(&servers.redis_url),
        vec!["customer:42".to_string()]
    );
}

#[test]
fn a_wrong_redis_password_or_an_unreachable_redis_is_an_environment_error() {
    let tmp = tempdir();
    let servers = EnvUp::start(tmp.path(), &[]);
    let run_with = |redis_url: &str| {
        let out = locklab(tmp.path())
            .args(["run", "setnx-race", "--no-results"])
            .args(["--pg-url", &servers.url, "--redis-url", redis_url])
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        stderr
    };

    let stderr = run_with(&servers.redis_url.replace(":locklab@", ":wrong@"));
    assert!(stderr.contains("authentication failed"), "{stderr}");
    assert!(!stderr.contains(":wrong@"), "password shown: {stderr}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let stderr = run_with(&format!("redis://:pw@127.0.0.1:{port}/0"));
    assert!(stderr.contains("could not connect to Redis"), "{stderr}");
    assert!(!stderr.contains(":pw@"), "password shown: {stderr}");
}
