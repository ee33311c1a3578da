//! Verdicts hold across the parameter space a real service lives in, not at one lucky point:
//! each scenario swept over its main parameters, every expectation held at every point.
//! (`locklab run NAME --sweep ...` prints the same grid as tables.)

mod common;
use common::*;

/// Runs a sweep and checks every point held, naming the first point that did not.
fn grid(args: &[&str], points: usize) {
    let tmp = tempdir();
    let (code, report, stderr) = run_json(tmp.path(), args);
    let scenarios = report["scenarios"].as_array().expect("scenarios");
    assert_eq!(scenarios.len(), points, "{stderr}");
    for s in scenarios {
        // Each point really ran with its values, not at the defaults.
        for pair in s["swept"].as_array().expect("swept values") {
            let (k, v) = (&pair[0], &pair[1]);
            assert_eq!(&s["params"][k.as_str().expect("name")], v, "{s:#}");
        }
        for v in s["variants"].as_array().expect("variants") {
            assert!(
                v["failure"].is_null() && v["expectations_held"] == true,
                "{} at {}: {:#}\n{stderr}",
                v["name"],
                s["swept"],
                v["expectations"]
            );
        }
    }
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn begin_on_pool_fails_at_every_pool_size_and_load() {
    grid(
        &[
            "begin-on-pool",
            "--sweep",
            "pool_size=4,10,20,65",
            "--sweep",
            "bookers=20,50",
        ],
        8,
    );
}

#[test]
fn pool_deadlock_cliff_is_exact_on_both_sides() {
    grid(
        &[
            "pool-deadlock",
            "--sweep",
            "handlers=2,4,8",
            "--sweep",
            "pool_size=4,10",
        ],
        6,
    );
}

/// A hundred clients take turns at the row once it is free, so they need a longer cut-off
/// than the default; locklab refuses the default with the figure it needs.
#[test]
fn orphan_lock_holds_from_a_few_clients_to_a_hundred() {
    let tmp = tempdir();
    let refused = locklab(tmp.path())
        .args([
            "run",
            "orphan-lock",
            "--param",
            "clients=100",
            "--no-results",
        ])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(
        err.contains("too short for 100 clients") && err.contains("--param deadline=40s"),
        "{err}"
    );
    grid(
        &[
            "orphan-lock",
            "--sweep",
            "clients=5,20,100",
            "--param",
            "deadline=40s",
        ],
        3,
    );
}

#[test]
fn setnx_race_holds_from_a_few_buyers_to_a_hundred() {
    grid(&["setnx-race", "--sweep", "buyers=5,20,100"], 3);
}

/// A few buyers to a hundred, and a second item in stock (the stall then oversells nothing:
/// two holders at once is the harm it shows).
#[test]
fn lock_watchdog_holds_from_a_few_buyers_to_a_hundred_and_two_items() {
    grid(
        &[
            "lock-watchdog",
            "--sweep",
            "buyers=5,100",
            "--sweep",
            "stock=1,2",
            "--param",
            "deadline=60s",
        ],
        4,
    );
}

/// Fewer tenants than the pooler's server connections, as many, and twice as many (they then
/// queue in PgBouncer): each pitfall still shows, each fix still holds.
#[test]
fn pooler_pitfalls_hold_for_few_and_many_tenants() {
    grid(&["pooler-pitfalls", "--sweep", "tenants=5,20,40"], 3);
}

/// The isolation family from a few clients to many (enough withdrawals to exceed the balance):
/// each anomaly and each defence at every size.
#[test]
fn isolation_scenarios_hold_from_two_clients_to_many() {
    grid(&["check-then-act", "--sweep", "withdrawers=4,10,40"], 3);
    grid(&["read-skew", "--sweep", "readers=1,20"], 2);
    grid(&["write-skew", "--sweep", "shifts=1,15"], 2);
    grid(&["deadlock", "--sweep", "pairs=1,15"], 2);
}

/// A small server and the default one: the slots pinned, the blast radius, the cap and the
/// relapse at both (the cap lowered to fit 40 slots).
#[test]
fn connection_storm_holds_at_40_and_100_slots() {
    grid(
        &[
            "connection-storm",
            "--sweep",
            "max_connections=40,100",
            "--param",
            "cap=20",
        ],
        2,
    );
}

#[test]
#[cfg_attr(
    not(locklab_root),
    ignore = "needs root: a network namespace and an nftables rule"
)]
fn lost_client_verdicts_hold_for_one_holder_queue_and_for_twenty() {
    assert!(
        can_make_namespaces(),
        "needs root (built as root, run as another user?)"
    );
    grid(&["lost-client", "--sweep", "clients=1,20"], 2);
}

#[test]
fn shutdown_verdicts_hold_from_one_booker_to_a_pool_of_twenty() {
    grid(&["shutdown", "--sweep", "clients=1,20"], 2);
}
