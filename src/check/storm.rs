//! connection-storm's checker: how long the ghost's row lock lasted, what the storm of booking
//! invocations did to the server's connection slots, and what the other endpoints got while
//! the outage lasted (the blast radius).

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Evaluation;
use super::samples::{PoolerSample, SlotSample};
use super::stats::{json_ms, p50, p99, round1};
use crate::history::{History, Outcome, class};

pub mod outcome {
    pub use crate::check::outcome::{RELEASED, STUCK};
    /// Freed by a restart, then locked again by the next frozen payment call.
    pub const RELAPSED: &str = "relapsed";
}

/// Operation kinds in the history.
pub mod kind {
    pub const BOOK: &str = "book";
    pub const SEARCH: &str = "search";
    pub const CHECK_IN: &str = "check-in";
}

/// A booking invocation the runtime's concurrency cap turned away before it touched a
/// connection.
pub const THROTTLED: &str = "throttled";

/// The restart-db variant's events, on the variant's clock.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Restart {
    /// When the restart (or its stand-in) began.
    pub at_ms: f64,
    /// When the next frozen payment call held the row again; `None` if it never did.
    pub relapse_at_ms: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Observations {
    pub cut_off: bool,
    /// The ghost froze (variant clock).
    pub fault_ms: f64,
    /// The row was free again (variant clock); `None` if it stayed locked to the cut-off.
    pub released_ms: Option<f64>,
    /// The ghost held the row when it froze (a probe's NOWAIT lock failed).
    pub locked_before_fault: bool,
    /// When the run stopped waiting (variant clock): the lower bound of a lock never freed.
    pub end_ms: f64,
    pub samples: Vec<SlotSample>,
    pub max_connections: i64,
    /// Connections the workload's role may open in all (max_connections less the slots
    /// reserved for superusers): at this many, the next one gets 53300.
    pub usable_slots: i64,
    pub invocations: u64,
    /// Booking attempts executing at once (past the cap, holding or seeking a connection).
    pub max_concurrent: u64,
    /// Booking invocations alive at once, waiting out a retry's backoff included.
    pub max_in_flight: u64,
    pub bookings_committed: i64,
    pub db_cpu_pct: Option<f64>,
    pub harness_cpu_pct: Option<f64>,
    pub restart: Option<Restart>,
    /// The runtime's concurrency cap on bookings, when on.
    pub runtime_cap: Option<usize>,
    /// The workload went through a pooler (the through-pooler variants).
    #[serde(default)]
    pub through_pooler: bool,
    /// The pooler's own view over the run; empty when it could not be read.
    #[serde(default)]
    pub pooler_samples: Vec<PoolerSample>,
    /// Why the pooler's own figures are unknown (no admin console), when they are.
    #[serde(default)]
    pub pooler_unknown: Option<String>,
}

pub const METRICS: &[&str] = &[
    "lock_held_ms",
    "cut_off",
    "bookings_ok",
    "bookings_failed",
    "bookings_stuck",
    "stuck_behind_lock",
    "bookings_committed",
    "invocations",
    "retries",
    "throttled",
    "runtime_cap",
    "max_concurrent",
    "max_in_flight",
    "too_many_clients",
    "listen_queue_full",
    "lock_timeouts",
    "statement_timeouts",
    "max_connections",
    "usable_slots",
    "max_connections_used",
    "max_waiting_on_lock",
    "outage_ms",
    "other_calls",
    "other_ok_ratio",
    "other_ok_pct",
    "other_p99_ms",
    "p50_ms",
    "p99_ms",
    "db_cpu_pct",
    "harness_cpu_pct",
    "recovered_ms",
    "relapse_ms",
    "booked_after_relapse",
    "pool_server_conns_max",
    "pooler_clients_waiting_max",
    "pooler_wait_ms_max",
    "query_wait_timeouts",
];

fn is_other(kind: &str) -> bool {
    kind == kind::SEARCH || kind == kind::CHECK_IN
}

/// After `restart-db`'s restart: how soon a booking got through, when the next ghost held the
/// row again, and how many bookings began after that and still got through.
struct Recovery {
    recovered_ms: Option<f64>,
    relapse_ms: Option<f64>,
    booked_after_relapse: Option<usize>,
}

fn recovery(h: &History, obs: &Observations) -> Recovery {
    let recovered_ms = obs.restart.and_then(|r| {
        h.ops
            .iter()
            .filter(|op| op.kind == kind::BOOK && op.outcome == Outcome::Ok)
            .filter_map(|op| op.end_ms)
            .filter(|end| *end > r.at_ms)
            .min_by(f64::total_cmp)
            .map(|end| end - r.at_ms)
    });
    let relapse_ms = obs
        .restart
        .and_then(|r| r.relapse_at_ms.map(|at| (at - r.at_ms).max(0.0)));
    // Bookings that began once the next ghost held the row, and still got through.
    let booked_after_relapse = obs.restart.and_then(|r| r.relapse_at_ms).map(|at| {
        h.ops
            .iter()
            .filter(|op| op.kind == kind::BOOK && op.outcome == Outcome::Ok && op.start_ms > at)
            .count()
    });
    Recovery {
        recovered_ms,
        relapse_ms,
        booked_after_relapse,
    }
}

// Long for its table: one line per metric of METRICS, in the same order, so the two read side
// by side; the computations above it are the seams, and the restart's are split off.
pub fn evaluate(h: &History, obs: &Observations) -> Evaluation {
    let lock_held_ms = match (obs.locked_before_fault, obs.released_ms) {
        (false, _) => Some(0.0),
        (true, Some(at)) => Some((at - obs.fault_ms).max(0.0)),
        (true, None) => None,
    };
    // The outage: from the freeze until the row is free again (or the end of the run).
    let outage_end = match lock_held_ms {
        Some(held) => obs.fault_ms + held,
        None => obs.end_ms,
    };
    let in_outage =
        |start: f64| start >= obs.fault_ms && (start < outage_end || lock_held_ms == Some(0.0));
    let others: Vec<_> = h
        .ops
        .iter()
        .filter(|op| is_other(&op.kind) && in_outage(op.start_ms))
        .collect();
    let others_ok = others.iter().filter(|op| op.outcome == Outcome::Ok).count();
    let other_latencies: Vec<f64> = others.iter().filter_map(|op| op.latency_ms()).collect();
    let ratio = (!others.is_empty()).then(|| others_ok as f64 / others.len() as f64);
    let other_ok_ratio = ratio.map_or(json!(null), |r| json!((r * 10_000.0).round() / 10_000.0));
    // Bookings that reached the server: a throttled one never did.
    let book_latencies: Vec<f64> = h
        .ops
        .iter()
        .filter(|op| op.kind == kind::BOOK)
        .filter(|op| !matches!(&op.outcome, Outcome::Error { class: c } if c == THROTTLED))
        .filter_map(|op| op.latency_ms())
        .collect();
    let attempts = h.ops.iter().filter(|op| op.kind == kind::BOOK).count() as u64;
    let count_class = |wanted: &str| {
        h.ops
            .iter()
            .filter(|op| matches!(&op.outcome, Outcome::Error { class: c } if c == wanted))
            .count()
    };
    let max = |f: fn(&SlotSample) -> i64| obs.samples.iter().map(f).max().unwrap_or(0);
    let Recovery {
        recovered_ms,
        relapse_ms,
        booked_after_relapse,
    } = recovery(h, obs);
    let outcome = match (lock_held_ms, relapse_ms) {
        (_, Some(_)) => outcome::RELAPSED,
        (None, None) => outcome::STUCK,
        (Some(_), None) => outcome::RELEASED,
    };
    let pct = |x: Option<f64>| x.map_or(json!(null), |v| json!(round1(v)));
    // The pooler's own figures: only through one, and only where its console was read (never
    // guessed: unknown otherwise).
    let pooler = |f: fn(&[PoolerSample]) -> Option<serde_json::Value>| match obs.through_pooler
        && obs.pooler_unknown.is_none()
    {
        true => f(&obs.pooler_samples).unwrap_or(json!(null)),
        false => json!(null),
    };
    let metrics = [
        (
            "lock_held_ms",
            json!(round1(lock_held_ms.unwrap_or(obs.end_ms - obs.fault_ms))),
        ),
        ("cut_off", json!(obs.cut_off)),
        ("bookings_ok", json!(h.ok(kind::BOOK))),
        ("bookings_failed", json!(h.failed(kind::BOOK))),
        ("bookings_stuck", json!(h.unknown(kind::BOOK))),
        // The harm's own count: still waiting at the cut-off, having begun while the ghost
        // held the row. A booking that began after the release and was cut off in a slow
        // connect to a server busy forking the storm's backends is load, not the lock.
        (
            "stuck_behind_lock",
            json!(
                h.ops
                    .iter()
                    .filter(|op| op.kind == kind::BOOK && op.outcome == Outcome::Unknown)
                    .filter(|op| op.start_ms < outage_end)
                    .count()
            ),
        ),
        ("bookings_committed", json!(obs.bookings_committed)),
        ("invocations", json!(obs.invocations)),
        ("retries", json!(attempts.saturating_sub(obs.invocations))),
        ("throttled", json!(h.count(kind::BOOK, THROTTLED))),
        ("runtime_cap", json!(obs.runtime_cap)),
        ("max_concurrent", json!(obs.max_concurrent)),
        ("max_in_flight", json!(obs.max_in_flight)),
        (
            "too_many_clients",
            json!(count_class(class::TOO_MANY_CONNECTIONS)),
        ),
        (
            "listen_queue_full",
            json!(count_class(class::LISTEN_QUEUE_FULL)),
        ),
        (
            "lock_timeouts",
            json!(h.count(kind::BOOK, class::LOCK_TIMEOUT)),
        ),
        (
            "statement_timeouts",
            json!(h.count(kind::BOOK, class::STATEMENT_TIMEOUT)),
        ),
        ("max_connections", json!(obs.max_connections)),
        ("usable_slots", json!(obs.usable_slots)),
        ("max_connections_used", json!(max(|s| s.connections))),
        ("max_waiting_on_lock", json!(max(|s| s.waiting_on_lock))),
        ("outage_ms", json!(round1(outage_end - obs.fault_ms))),
        ("other_calls", json!(others.len())),
        ("other_ok_ratio", other_ok_ratio),
        ("other_ok_pct", pct(ratio.map(|r| r * 100.0))),
        ("other_p99_ms", p99(&other_latencies)),
        ("p50_ms", p50(&book_latencies)),
        ("p99_ms", p99(&book_latencies)),
        ("db_cpu_pct", pct(obs.db_cpu_pct)),
        ("harness_cpu_pct", pct(obs.harness_cpu_pct)),
        ("recovered_ms", json_ms(recovered_ms)),
        ("relapse_ms", json_ms(relapse_ms)),
        ("booked_after_relapse", json!(booked_after_relapse)),
        (
            "pool_server_conns_max",
            pooler(|s| s.iter().map(|p| p.server_conns).max().map(|m| json!(m))),
        ),
        (
            "pooler_clients_waiting_max",
            pooler(|s| s.iter().map(|p| p.waiting).max().map(|m| json!(m))),
        ),
        (
            "pooler_wait_ms_max",
            pooler(|s| {
                s.iter()
                    .map(|p| p.maxwait_ms)
                    .max_by(f64::total_cmp)
                    .map(|m| json!(round1(m)))
            }),
        ),
        (
            "query_wait_timeouts",
            json!(count_class(class::QUERY_WAIT_TIMEOUT)),
        ),
    ];
    Evaluation::new(outcome, metrics)
        .lower_bound("lock_held_ms", lock_held_ms.is_none())
        .lower_bound("outage_ms", lock_held_ms.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Op;
    use serde_json::Value;

    fn op(kind: &'static str, start: f64, end: Option<f64>, outcome: Outcome) -> Op {
        Op {
            client: 0,
            kind: kind.into(),
            start_ms: start,
            end_ms: end,
            outcome,
        }
    }

    fn err(class: &str) -> Outcome {
        Outcome::Error {
            class: class.into(),
        }
    }

    fn obs() -> Observations {
        Observations {
            fault_ms: 100.0,
            locked_before_fault: true,
            end_ms: 3100.0,
            max_connections: 40,
            usable_slots: 37,
            invocations: 3,
            ..Observations::default()
        }
    }

    #[test]
    fn only_bookings_begun_while_the_row_was_held_count_as_stuck_behind_it() {
        let h = History {
            ops: vec![
                op(kind::BOOK, 500.0, None, Outcome::Unknown), // behind the ghost
                op(kind::BOOK, 2_900.0, None, Outcome::Unknown), // a slow connect, later
                op(kind::BOOK, 1_200.0, Some(1_210.0), Outcome::Ok),
            ],
            lost_clients: Vec::new(),
        };
        let e = evaluate(
            &h,
            &Observations {
                released_ms: Some(1_100.0),
                ..obs()
            },
        );
        assert_eq!(e.metrics["bookings_stuck"], Value::from(2));
        assert_eq!(e.metrics["stuck_behind_lock"], Value::from(1));
    }

    #[test]
    fn a_storm_behind_a_lock_never_freed() {
        let h = History {
            ops: vec![
                op(kind::BOOK, 110.0, None, Outcome::Unknown),
                op(kind::BOOK, 120.0, Some(121.0), err("53300")),
                op(kind::BOOK, 300.0, Some(301.0), err("53300")),
                op(kind::BOOK, 130.0, Some(130.0), err(THROTTLED)),
                op(kind::SEARCH, 50.0, Some(52.0), Outcome::Ok), // before the fault
                op(kind::SEARCH, 200.0, Some(203.0), Outcome::Ok),
                op(kind::CHECK_IN, 210.0, Some(211.0), err("53300")),
                op(kind::CHECK_IN, 220.0, Some(221.0), err("53300")),
                op(kind::SEARCH, 230.0, Some(234.0), Outcome::Ok),
            ],
            lost_clients: vec![],
        };
        let samples = vec![
            SlotSample {
                connections: 37,
                waiting_on_lock: 30,
                ..SlotSample::default()
            },
            SlotSample {
                connections: 12,
                ..SlotSample::default()
            },
        ];
        let e = evaluate(
            &h,
            &Observations {
                cut_off: true,
                samples,
                ..obs()
            },
        );
        crate::check::assert_emits_exactly(&e, METRICS);
        assert_eq!(e.outcome, outcome::STUCK);
        assert!(e.lower_bounds.contains("lock_held_ms"));
        let m = |k: &str| e.metrics[k].clone();
        assert_eq!(m("lock_held_ms"), Value::from(3000.0));
        assert_eq!(m("retries"), Value::from(1));
        assert_eq!(m("throttled"), Value::from(1));
        assert_eq!(m("too_many_clients"), Value::from(4));
        assert_eq!(m("max_connections_used"), Value::from(37));
        assert_eq!(m("other_calls"), Value::from(4));
        assert_eq!(m("other_ok_ratio"), Value::from(0.5));
        assert_eq!(m("bookings_stuck"), Value::from(1));
        assert_eq!(m("stuck_behind_lock"), Value::from(1));
        assert_eq!(m("db_cpu_pct"), Value::Null);
        assert_eq!(m("recovered_ms"), Value::Null);
    }

    #[test]
    fn a_restart_recovers_then_the_next_freeze_relapses() {
        let h = History {
            ops: vec![
                op(kind::BOOK, 500.0, Some(1010.0), err("57P01")),
                op(kind::BOOK, 1100.0, Some(1150.0), Outcome::Ok),
                op(kind::BOOK, 1200.0, Some(1240.0), Outcome::Ok),
                op(kind::SEARCH, 1500.0, Some(1501.0), Outcome::Ok), // after the outage
            ],
            lost_clients: vec![],
        };
        let e = evaluate(
            &h,
            &Observations {
                released_ms: Some(1000.0),
                restart: Some(Restart {
                    at_ms: 1000.0,
                    relapse_at_ms: Some(2000.0),
                }),
                db_cpu_pct: Some(2.96),
                ..obs()
            },
        );
        assert_eq!(e.outcome, outcome::RELAPSED);
        let m = |k: &str| e.metrics[k].clone();
        assert_eq!(m("lock_held_ms"), Value::from(900.0));
        assert_eq!(m("recovered_ms"), Value::from(150.0));
        assert_eq!(m("relapse_ms"), Value::from(1000.0));
        assert_eq!(m("booked_after_relapse"), Value::from(0));
        assert_eq!(m("other_calls"), Value::from(0));
        assert_eq!(m("other_ok_ratio"), Value::Null);
        assert_eq!(m("db_cpu_pct"), Value::from(3.0));
        assert!(e.lower_bounds.is_empty());
    }

    #[test]
    fn the_poolers_figures_are_read_from_its_samples_and_unknown_without_its_console() {
        let h = History {
            ops: vec![
                op(
                    kind::SEARCH,
                    200.0,
                    Some(900.0),
                    err(class::QUERY_WAIT_TIMEOUT),
                ),
                op(kind::CHECK_IN, 300.0, None, Outcome::Unknown),
            ],
            lost_clients: Vec::new(),
        };
        let sample = |waiting, server_conns, maxwait_ms| PoolerSample {
            at_ms: 0.0,
            waiting,
            server_conns,
            maxwait_ms,
        };
        let mut o = Observations {
            through_pooler: true,
            pooler_samples: vec![sample(3, 20, 120.0), sample(41, 20, 700.5)],
            ..obs()
        };
        let e = evaluate(&h, &o);
        assert_eq!(e.metrics["pooler_clients_waiting_max"], json!(41));
        assert_eq!(e.metrics["pool_server_conns_max"], json!(20));
        assert_eq!(e.metrics["pooler_wait_ms_max"], json!(700.5));
        assert_eq!(e.metrics["query_wait_timeouts"], json!(1));
        assert_eq!(e.metrics["other_ok_ratio"], json!(0.0));
        o.pooler_unknown = Some("no admin console".into());
        let e = evaluate(&h, &o);
        assert_eq!(e.metrics["pooler_clients_waiting_max"], Value::Null);
        assert_eq!(
            e.metrics["query_wait_timeouts"],
            json!(1),
            "seen by the clients"
        );
        let direct = evaluate(&h, &obs());
        assert_eq!(direct.metrics["pool_server_conns_max"], Value::Null);
    }
}
