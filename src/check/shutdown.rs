//! shutdown's checker: after a deploy's SIGTERM (or a database restart), how long the row
//! stayed locked, what became of the holder's own booking, and how the other bookings fared.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Evaluation;
use super::stats::{p50, p99, round1};
use crate::history::{History, Outcome, class};

pub const METRICS: &[&str] = &[
    "lock_held_ms",
    "cut_off",
    "holder_exit_code",
    "holder_killed",
    "holder_drained",
    "holder_committed",
    "holder_charged_without_booking",
    "bookings_ok",
    "bookings_failed",
    "bookings_stuck",
    "p50_ms",
    "p99_ms",
    "restart_errors",
    "first_ok_after_restart_ms",
    "broken_after_restart",
];

/// What the servers and the holder's process showed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Observations {
    /// Server clock (epoch seconds) just before the signal or the restart.
    pub event_epoch: f64,
    /// Server clock when a probe first got the row afterwards; `None` if never.
    pub free_at_epoch: Option<f64>,
    /// From the event to the end of the watch, locally: the lower bound when never freed.
    pub waited_ms: f64,
    pub cut_off: bool,
    /// The holder's exit code, or `None` when a signal ended it.
    pub holder_exit_code: Option<i32>,
    pub holder_killed: bool,
    /// The holder reported a finished drain.
    pub holder_drained: bool,
    /// Counted on the server: the holder's bookings committed, and its charges with none.
    pub holder_committed: i64,
    pub holder_charged_without_booking: i64,
    /// Restart only: history clock (ms) when the restart began and when the server answered
    /// again.
    pub restart: Option<(f64, f64)>,
}

/// Whether an error is what a client sees of a server going away under it.
fn server_went_away(c: &str) -> bool {
    c == class::TERMINATED || c == class::CONNECTION_CLOSED
}

pub fn evaluate(h: &History, obs: &Observations) -> Evaluation {
    let lock_held_ms = obs
        .free_at_epoch
        .map(|t| ((t - obs.event_epoch) * 1000.0).max(0.0));
    let latencies = h.completed_latencies("book");
    let (restart_errors, first_ok, broken) = match obs.restart {
        None => (None, None, None),
        Some((began, answered)) => {
            let failed = |o: &&crate::history::Op| matches!(o.outcome, Outcome::Error { .. });
            let errors = h.ops.iter().filter(failed).count();
            let first_ok = h
                .ops
                .iter()
                .filter(|o| o.outcome == Outcome::Ok)
                .filter_map(|o| o.end_ms)
                .filter(|end| *end >= began)
                .fold(None, |m: Option<f64>, e| Some(m.map_or(e, |m| m.min(e))))
                .map(|e| round1(e - began));
            // A connection the pool handed out after the server was back, dead on arrival.
            let broken = h
                .ops
                .iter()
                .filter(|o| o.start_ms >= answered)
                .filter(
                    |o| matches!(&o.outcome, Outcome::Error { class } if server_went_away(class)),
                )
                .count();
            (Some(errors), first_ok, Some(broken))
        }
    };
    let outcome = match lock_held_ms {
        None => "stuck",
        Some(_) if obs.holder_charged_without_booking > 0 => "booking-lost",
        Some(_) => "released",
    };
    let metrics = [
        (
            "lock_held_ms",
            json!(round1(lock_held_ms.unwrap_or(obs.waited_ms))),
        ),
        ("cut_off", json!(obs.cut_off)),
        ("holder_exit_code", json!(obs.holder_exit_code)),
        ("holder_killed", json!(obs.holder_killed)),
        ("holder_drained", json!(obs.holder_drained)),
        ("holder_committed", json!(obs.holder_committed)),
        (
            "holder_charged_without_booking",
            json!(obs.holder_charged_without_booking),
        ),
        ("bookings_ok", json!(h.ok("book"))),
        ("bookings_failed", json!(h.failed("book"))),
        ("bookings_stuck", json!(h.unknown("book"))),
        ("p50_ms", p50(&latencies)),
        ("p99_ms", p99(&latencies)),
        ("restart_errors", json!(restart_errors)),
        ("first_ok_after_restart_ms", json!(first_ok)),
        ("broken_after_restart", json!(broken)),
    ];
    Evaluation::new(outcome, metrics).lower_bound("lock_held_ms", lock_held_ms.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Op;

    fn op(start: f64, end: f64, outcome: Outcome) -> Op {
        Op {
            client: 0,
            kind: "book".into(),
            start_ms: start,
            end_ms: Some(end),
            outcome,
        }
    }

    fn err(c: &str) -> Outcome {
        Outcome::Error {
            class: c.to_string(),
        }
    }

    #[test]
    fn a_killed_holder_frees_the_row_but_loses_its_booking() {
        let obs = Observations {
            event_epoch: 100.0,
            free_at_epoch: Some(100.004),
            holder_killed: true,
            holder_charged_without_booking: 1,
            ..Observations::default()
        };
        let e = evaluate(&History::default(), &obs);
        assert_eq!(e.outcome, "booking-lost");
        assert_eq!(e.metrics["lock_held_ms"], json!(4.0));
        assert_eq!(e.metrics["restart_errors"], json!(null));
        crate::check::assert_emits_exactly(&e, METRICS);
    }

    #[test]
    fn a_row_never_freed_is_a_lower_bound() {
        let obs = Observations {
            event_epoch: 100.0,
            waited_ms: 6000.0,
            cut_off: true,
            ..Observations::default()
        };
        let e = evaluate(&History::default(), &obs);
        assert_eq!(e.outcome, "stuck");
        assert!(e.lower_bounds.contains("lock_held_ms"));
    }

    #[test]
    fn a_restart_counts_errors_first_success_and_dead_connections_after_it() {
        let h = History {
            ops: vec![
                op(10.0, 1000.0, err("57P01")),
                op(20.0, 1000.0, err("connection-closed")),
                op(1000.0, 1010.0, err("client")),
                op(1200.0, 1300.0, Outcome::Ok),
                op(1250.0, 1260.0, err("connection-closed")),
                op(1400.0, 1500.0, Outcome::Ok),
            ],
            ..History::default()
        };
        let obs = Observations {
            event_epoch: 100.0,
            free_at_epoch: Some(100.1),
            restart: Some((1000.0, 1150.0)),
            ..Observations::default()
        };
        let e = evaluate(&h, &obs);
        assert_eq!(e.metrics["restart_errors"], json!(4));
        assert_eq!(e.metrics["first_ok_after_restart_ms"], json!(300.0));
        assert_eq!(e.metrics["broken_after_restart"], json!(1));
        assert_eq!(e.outcome, "released");
    }
}
