//! orphan-lock's checker: from the history and what the server showed, how long the row stayed
//! locked after the fault, and what the booking clients got.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Evaluation;
use super::stats::{p50, p99, round1};
use crate::check::samples::Sample;
use crate::history::{History, class};

/// What the server showed about the row.
pub mod outcome {
    pub use crate::check::outcome::{RELEASED, STUCK};
    /// The row was free even just before the fault.
    pub const NEVER_LOCKED: &str = "never-locked";
}

/// What the probe session found when it tried to lock the row after the fault.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// The row was locked by someone else just before the fault (a NOWAIT lock failed).
    pub locked_before_fault: bool,
    /// Server clock (epoch seconds) when the probe got the row lock; `None` if it never did.
    pub free_at_epoch: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Observations {
    /// Server clock (epoch seconds) just before the holder went into its payment call.
    pub holder_paying_epoch: f64,
    pub probe: Probe,
    /// From the holder's report to the end of the wait, locally: a lower bound on how long the
    /// lock was held when the probe never got it.
    pub waited_ms: f64,
    /// The deadline came with a client or the probe still waiting.
    pub cut_off: bool,
    pub samples: Vec<Sample>,
    /// Rows in `bookings` after the run, counted on the server.
    pub bookings_committed: i64,
    pub payments: Payments,
    /// Leak fault only: the next user of the pool found itself inside the leaked transaction.
    pub next_user_in_leaked_tx: Option<bool>,
}

/// The payment provider's record after the run, counted on the server.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Payments {
    pub charged: i64,
    pub refunded: i64,
    /// Charged, not refunded, and no booking: the customer paid for nothing.
    pub charged_without_booking: i64,
}

pub const METRICS: &[&str] = &[
    "lock_held_ms",
    "cut_off",
    "bookings_ok",
    "bookings_failed",
    "bookings_stuck",
    "bookings_committed",
    "lock_timeouts",
    "statement_timeouts",
    "p50_ms",
    "p99_ms",
    "max_idle_in_transaction",
    "max_waiting_on_lock",
    "max_blocked",
    "max_server_sessions",
    "holder_idle_in_transaction_ms",
    "next_user_in_leaked_tx",
    "charged",
    "refunded",
    "charged_without_booking",
];

pub fn evaluate(h: &History, obs: &Observations) -> Evaluation {
    let lock_held_ms = match obs.probe {
        Probe {
            locked_before_fault: false,
            ..
        } => Some(0.0),
        Probe {
            free_at_epoch: Some(t),
            ..
        } => Some(((t - obs.holder_paying_epoch) * 1000.0).max(0.0)),
        Probe {
            free_at_epoch: None,
            ..
        } => None,
    };
    let outcome = match lock_held_ms {
        None => outcome::STUCK,
        Some(_) if !obs.probe.locked_before_fault => outcome::NEVER_LOCKED,
        Some(_) => outcome::RELEASED,
    };
    let latencies = h.completed_latencies("book");
    let max = |f: fn(&Sample) -> i64| obs.samples.iter().map(f).max().unwrap_or(0);
    let holder_idle = obs
        .samples
        .iter()
        .filter_map(|s| s.holder_idle_ms)
        .fold(0.0_f64, f64::max);
    let metrics = [
        // When the probe never got the row, report the lower bound: held at least this long.
        (
            "lock_held_ms",
            json!(round1(lock_held_ms.unwrap_or(obs.waited_ms))),
        ),
        ("cut_off", json!(obs.cut_off)),
        ("bookings_ok", json!(h.ok("book"))),
        ("bookings_failed", json!(h.failed("book"))),
        ("bookings_stuck", json!(h.unknown("book"))),
        ("bookings_committed", json!(obs.bookings_committed)),
        ("lock_timeouts", json!(h.count("book", class::LOCK_TIMEOUT))),
        (
            "statement_timeouts",
            json!(h.count("book", class::STATEMENT_TIMEOUT)),
        ),
        ("p50_ms", p50(&latencies)),
        ("p99_ms", p99(&latencies)),
        (
            "max_idle_in_transaction",
            json!(max(|s| s.idle_in_transaction)),
        ),
        ("max_waiting_on_lock", json!(max(|s| s.waiting_on_lock))),
        ("max_blocked", json!(max(|s| s.blocked))),
        ("max_server_sessions", json!(max(|s| s.sessions))),
        ("holder_idle_in_transaction_ms", json!(round1(holder_idle))),
        ("next_user_in_leaked_tx", json!(obs.next_user_in_leaked_tx)),
        ("charged", json!(obs.payments.charged)),
        ("refunded", json!(obs.payments.refunded)),
        (
            "charged_without_booking",
            json!(obs.payments.charged_without_booking),
        ),
    ];
    Evaluation::new(outcome, metrics).lower_bound("lock_held_ms", lock_held_ms.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Op, Outcome};
    use serde_json::Value;

    fn op(client: usize, start: f64, end: Option<f64>, outcome: Outcome) -> Op {
        Op {
            client,
            kind: "book".into(),
            start_ms: start,
            end_ms: end,
            outcome,
        }
    }

    fn base() -> Observations {
        Observations {
            payments: Payments::default(),
            holder_paying_epoch: 1000.0,
            probe: Probe {
                locked_before_fault: true,
                free_at_epoch: None,
            },
            waited_ms: 3000.0,
            cut_off: true,
            samples: vec![],
            bookings_committed: 0,
            next_user_in_leaked_tx: None,
        }
    }

    #[test]
    fn kill_frees_the_row_within_milliseconds_and_counts_as_released() {
        let mut obs = base();
        obs.probe = Probe {
            locked_before_fault: true,
            free_at_epoch: Some(1000.002),
        };
        let r = evaluate(&History::default(), &obs);
        assert_eq!(r.outcome, "released");
        assert_eq!(r.metrics["lock_held_ms"], json!(2.0));
    }

    #[test]
    fn lock_never_freed_is_stuck_with_a_lower_bound() {
        let mut obs = base();
        let history = History {
            ops: vec![
                op(0, 10.0, None, Outcome::Unknown),
                op(1, 11.0, None, Outcome::Unknown),
            ],
            ..History::default()
        };
        obs.samples = vec![Sample {
            idle_in_transaction: 1,
            waiting_on_lock: 2,
            holder_idle_ms: Some(2900.0),
            ..Default::default()
        }];
        let r = evaluate(&history, &obs);
        assert_eq!(r.outcome, "stuck");
        assert_eq!(r.metrics["lock_held_ms"], json!(3000.0));
        assert!(r.lower_bounds.contains("lock_held_ms"), "{r:?}");
        assert_eq!(r.metrics["bookings_stuck"], json!(2));
        assert_eq!(r.metrics["bookings_ok"], json!(0));
        assert_eq!(r.metrics["p99_ms"], Value::Null);
        assert_eq!(r.metrics["max_waiting_on_lock"], json!(2));
        assert_eq!(r.metrics["holder_idle_in_transaction_ms"], json!(2900.0));
    }

    #[test]
    fn lock_freed_is_measured_on_the_server_clock() {
        let mut obs = base();
        obs.probe = Probe {
            locked_before_fault: true,
            free_at_epoch: Some(1001.0025),
        };
        obs.cut_off = false;
        let history = History {
            ops: vec![
                op(
                    0,
                    0.0,
                    Some(60.0),
                    Outcome::Error {
                        class: class::LOCK_TIMEOUT.into(),
                    },
                ),
                op(0, 150.0, Some(1100.0), Outcome::Ok),
            ],
            ..History::default()
        };
        let r = evaluate(&history, &obs);
        assert_eq!(r.outcome, "released");
        assert_eq!(r.metrics["lock_held_ms"], json!(1002.5));
        assert!(r.lower_bounds.is_empty(), "{r:?}");
        assert_eq!(r.metrics["lock_timeouts"], json!(1));
        assert_eq!(r.metrics["bookings_ok"], json!(1));
        assert_eq!(r.metrics["p50_ms"], json!(60.0));
        assert_eq!(r.metrics["p99_ms"], json!(950.0));
    }

    #[test]
    fn emits_exactly_the_declared_metrics() {
        crate::check::assert_emits_exactly(&evaluate(&History::default(), &base()), METRICS);
    }

    #[test]
    fn row_free_before_the_fault_was_never_locked() {
        let mut obs = base();
        obs.probe = Probe {
            locked_before_fault: false,
            free_at_epoch: Some(1000.001),
        };
        let r = evaluate(&History::default(), &obs);
        assert_eq!(r.outcome, "never-locked");
        assert_eq!(r.metrics["lock_held_ms"], json!(0.0));
    }
}
