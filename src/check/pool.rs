//! Checkers of the pool scenarios: pool-deadlock (handlers against the pool's own state) and
//! begin-on-pool (what customers were told against the rows PostgreSQL shows).

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

use serde_json::json;

use super::Evaluation;
pub use super::samples::PoolState;
use super::stats::{p50, p99};
use crate::history::{History, class};

/// What the pool and the database showed.
pub mod outcome {
    pub use crate::check::outcome::{DEADLOCKED, STUCK};
    /// pool-deadlock: no handler waited for ever, some gave up.
    pub const FAILED_FAST: &str = "failed-fast";
    pub const COMPLETED: &str = "completed";
    /// begin-on-pool: more bookings than seats.
    pub const OVERSOLD: &str = "oversold";
    /// begin-on-pool: customers told "booked" without a row, or transactions left open.
    pub const LOST_BOOKINGS: &str = "lost-bookings";
    pub const BOOKED_ONCE: &str = "booked-once";
    pub const UNBOOKED: &str = "unbooked";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadlockObservations {
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

pub fn evaluate_deadlock(h: &History, obs: &DeadlockObservations) -> Evaluation {
    let latencies = h.completed_latencies("handle");
    let (ok, failed, stuck) = (h.ok("handle"), h.failed("handle"), h.unknown("handle"));
    let timeouts = h.count("handle", class::POOL_TIMEOUT);
    let outcome = if stuck > 0 {
        outcome::DEADLOCKED
    } else if failed > 0 {
        outcome::FAILED_FAST
    } else {
        outcome::COMPLETED
    };
    Evaluation::new(
        outcome,
        [
            ("handlers_completed", json!(ok)),
            ("handlers_failed", json!(failed)),
            ("handlers_stuck", json!(stuck)),
            ("pool_timeouts", json!(timeouts)),
            ("p50_ms", p50(&latencies)),
            ("p99_ms", p99(&latencies)),
            ("pool_size", json!(obs.pool_at_end.size)),
            ("pool_available", json!(obs.pool_at_end.available)),
            ("pool_waiting", json!(obs.pool_at_end.waiting)),
            ("cut_off", json!(obs.cut_off)),
        ],
    )
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BookingObservations {
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
    "stuck",
    "p50_ms",
    "p99_ms",
    "cut_off",
];

pub fn evaluate_booking(h: &History, obs: &BookingObservations) -> Evaluation {
    let bookings = obs.visible.len() as i64;
    let oversold = (bookings - obs.seats).max(0);
    let visible: BTreeSet<&String> = obs.visible.iter().collect();
    let lost = obs
        .told_booked
        .iter()
        .filter(|c| !visible.contains(c))
        .count();
    let latencies = h.completed_latencies("book");
    let stuck = h.unknown("book");
    let outcome = if oversold > 0 {
        outcome::OVERSOLD
    } else if stuck > 0 {
        outcome::STUCK
    } else if lost > 0 || obs.leaked_open_transactions > 0 {
        outcome::LOST_BOOKINGS
    } else if bookings == obs.seats {
        outcome::BOOKED_ONCE
    } else {
        outcome::UNBOOKED
    };
    Evaluation::new(
        outcome,
        [
            ("seats", json!(obs.seats)),
            ("bookings", json!(bookings)),
            ("oversold", json!(oversold)),
            ("reported_booked", json!(obs.told_booked.len())),
            ("lost_bookings", json!(lost)),
            (
                "leaked_open_transactions",
                json!(obs.leaked_open_transactions),
            ),
            ("refused", json!(h.count("book", class::TAKEN))),
            (
                "unique_violations",
                json!(h.count("book", class::UNIQUE_VIOLATION)),
            ),
            ("p50_ms", p50(&latencies)),
            ("p99_ms", p99(&latencies)),
            ("stuck", json!(stuck)),
            ("cut_off", json!(obs.cut_off)),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::assert_emits_exactly;
    use crate::history::{Op, Outcome};
    use serde_json::Value;

    fn op(kind: &'static str, client: usize, outcome: Outcome) -> Op {
        let end_ms = (outcome != Outcome::Unknown).then_some(10.0 * (client + 1) as f64);
        Op {
            client,
            kind: kind.into(),
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
        let run = evaluate_deadlock(
            &history,
            &DeadlockObservations {
                pool_at_end: PoolState {
                    size: 4,
                    available: 0,
                    waiting: 4,
                },
                cut_off: true,
            },
        );
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
                class: class::POOL_TIMEOUT.into(),
            },
        ));
        history.ops.push(op("handle", 1, Outcome::Ok));
        let run = evaluate_deadlock(
            &history,
            &DeadlockObservations {
                pool_at_end: PoolState::default(),
                cut_off: false,
            },
        );
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
        let run = evaluate_booking(
            &history,
            &BookingObservations {
                seats: 1,
                told_booked: ["a", "b", "c"].iter().map(|s| s.to_string()).collect(),
                visible: vec!["a".into(), "b".into()],
                leaked_open_transactions: 1,
                cut_off: false,
            },
        );
        assert_eq!(run.outcome, "oversold");
        assert_eq!(run.metrics["bookings"], json!(2));
        assert_eq!(run.metrics["oversold"], json!(1));
        assert_eq!(run.metrics["reported_booked"], json!(3));
        assert_eq!(run.metrics["lost_bookings"], json!(1));
        assert_eq!(run.metrics["p99_ms"], json!(30.0));
    }

    #[test]
    fn both_checkers_emit_exactly_the_declared_metrics() {
        let h = History::default();
        let deadlock = DeadlockObservations {
            pool_at_end: PoolState::default(),
            cut_off: false,
        };
        assert_emits_exactly(&evaluate_deadlock(&h, &deadlock), DEADLOCK_METRICS);
        let booking = BookingObservations {
            seats: 1,
            told_booked: BTreeSet::new(),
            visible: vec![],
            leaked_open_transactions: 0,
            cut_off: false,
        };
        assert_emits_exactly(&evaluate_booking(&h, &booking), BOOKING_METRICS);
    }
}
