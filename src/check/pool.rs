//! Checkers of the pool scenarios: pool-deadlock (handlers against the pool's own state) and
//! begin-on-pool (what customers were told against the rows PostgreSQL shows).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::stats::{json_ms, percentile};
use crate::history::History;
pub use crate::observe::pool::PoolState;
use crate::scenario::VariantRun;

#[derive(Debug, Clone)]
pub struct DeadlockObservations {
    pub history: History,
    /// The pool as it was at the end: at the cut-off for a deadlocked run.
    pub pool_at_end: PoolState,
    pub cut_off: bool,
}

pub const DEADLOCK_METRICS: &[&str] = &[
    "handlers_completed",
    "handlers_failed",
    "handlers_stuck",
    "pool_timeouts",
    "p50_ms",
    "p99_ms",
    "pool_size",
    "pool_available",
    "pool_waiting",
    "cut_off",
];

fn metrics(pairs: Vec<(&str, Value)>) -> BTreeMap<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

pub fn evaluate_deadlock(obs: &DeadlockObservations) -> VariantRun {
    let h = &obs.history;
    let latencies = h.completed_latencies("handle");
    let (ok, failed, stuck) = (h.ok("handle"), h.failed("handle"), h.unknown("handle"));
    let timeouts = h
        .error_classes("handle")
        .get("pool-timeout")
        .copied()
        .unwrap_or(0);
    let outcome = if stuck > 0 {
        "deadlocked"
    } else if failed > 0 {
        "failed-fast"
    } else {
        "completed"
    };
    VariantRun {
        outcome: outcome.into(),
        metrics: metrics(vec![
            ("handlers_completed", json!(ok)),
            ("handlers_failed", json!(failed)),
            ("handlers_stuck", json!(stuck)),
            ("pool_timeouts", json!(timeouts)),
            ("p50_ms", json_ms(percentile(&latencies, 50.0))),
            ("p99_ms", json_ms(percentile(&latencies, 99.0))),
            ("pool_size", json!(obs.pool_at_end.size)),
            ("pool_available", json!(obs.pool_at_end.available)),
            ("pool_waiting", json!(obs.pool_at_end.waiting)),
            ("cut_off", json!(obs.cut_off)),
        ]),
        history: obs.history.clone(),
    }
}

#[derive(Debug, Clone)]
pub struct BookingObservations {
    pub history: History,
    pub seats: i64,
    /// Customers whose booking call returned "booked".
    pub told_booked: BTreeSet<String>,
    /// Customers with a row in `bookings`, as a fresh session sees it after the run.
    pub visible: Vec<String>,
    /// The pool's connections left `idle in transaction` once every booker was done.
    pub leaked_open_transactions: i64,
    pub cut_off: bool,
}

pub const BOOKING_METRICS: &[&str] = &[
    "seats",
    "bookings",
    "oversold",
    "reported_booked",
    "lost_bookings",
    "leaked_open_transactions",
    "refused",
    "unique_violations",
    "p50_ms",
    "p99_ms",
    "cut_off",
];

pub fn evaluate_booking(obs: &BookingObservations) -> VariantRun {
    let h = &obs.history;
    let bookings = obs.visible.len() as i64;
    let oversold = (bookings - obs.seats).max(0);
    let visible: BTreeSet<&String> = obs.visible.iter().collect();
    let lost = obs
        .told_booked
        .iter()
        .filter(|c| !visible.contains(c))
        .count();
    let errors = h.error_classes("book");
    let latencies = h.completed_latencies("book");
    let outcome = if oversold > 0 {
        "oversold"
    } else if lost > 0 || obs.leaked_open_transactions > 0 {
        "lost-bookings"
    } else if bookings == obs.seats {
        "booked-once"
    } else {
        "unbooked"
    };
    VariantRun {
        outcome: outcome.into(),
        metrics: metrics(vec![
            ("seats", json!(obs.seats)),
            ("bookings", json!(bookings)),
            ("oversold", json!(oversold)),
            ("reported_booked", json!(obs.told_booked.len())),
            ("lost_bookings", json!(lost)),
            (
                "leaked_open_transactions",
                json!(obs.leaked_open_transactions),
            ),
            ("refused", json!(errors.get("taken").copied().unwrap_or(0))),
            (
                "unique_violations",
                json!(errors.get("23505").copied().unwrap_or(0)),
            ),
            ("p50_ms", json_ms(percentile(&latencies, 50.0))),
            ("p99_ms", json_ms(percentile(&latencies, 99.0))),
            ("cut_off", json!(obs.cut_off)),
        ]),
        history: obs.history.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Op, Outcome};

    fn op(kind: &'static str, client: usize, outcome: Outcome) -> Op {
        let end_ms = (outcome != Outcome::Unknown).then_some(10.0 * (client + 1) as f64);
        Op {
            client,
            kind,
            start_ms: 0.0,
            end_ms,
            outcome,
        }
    }

    #[test]
    fn a_deadlocked_pool_reports_every_handler_stuck_and_the_pool_drained() {
        let mut history = History::default();
        for c in 0..4 {
            history.ops.push(op("handle", c, Outcome::Unknown));
        }
        let run = evaluate_deadlock(&DeadlockObservations {
            history,
            pool_at_end: PoolState {
                size: 4,
                available: 0,
                waiting: 4,
            },
            cut_off: true,
        });
        assert_eq!(run.outcome, "deadlocked");
        assert_eq!(run.metrics["handlers_stuck"], json!(4));
        assert_eq!(run.metrics["pool_waiting"], json!(4));
        assert_eq!(run.metrics["p50_ms"], Value::Null);
    }

    #[test]
    fn a_wait_timeout_turns_the_hang_into_fast_failures() {
        let mut history = History::default();
        history.ops.push(op(
            "handle",
            0,
            Outcome::Error {
                class: "pool-timeout".into(),
            },
        ));
        history.ops.push(op("handle", 1, Outcome::Ok));
        let run = evaluate_deadlock(&DeadlockObservations {
            history,
            pool_at_end: PoolState::default(),
            cut_off: false,
        });
        assert_eq!(run.outcome, "failed-fast");
        assert_eq!(run.metrics["pool_timeouts"], json!(1));
        assert_eq!(run.metrics["handlers_completed"], json!(1));
    }

    #[test]
    fn lost_bookings_are_customers_told_yes_without_a_visible_row() {
        let mut history = History::default();
        for c in 0..3 {
            history.ops.push(op("book", c, Outcome::Ok));
        }
        let run = evaluate_booking(&BookingObservations {
            history,
            seats: 1,
            told_booked: ["a", "b", "c"].iter().map(|s| s.to_string()).collect(),
            visible: vec!["a".into(), "b".into()],
            leaked_open_transactions: 1,
            cut_off: false,
        });
        assert_eq!(run.outcome, "oversold");
        assert_eq!(run.metrics["bookings"], json!(2));
        assert_eq!(run.metrics["oversold"], json!(1));
        assert_eq!(run.metrics["reported_booked"], json!(3));
        assert_eq!(run.metrics["lost_bookings"], json!(1));
        assert_eq!(run.metrics["p99_ms"], json!(30.0));
    }
}
