//! check-then-act's checker: an account's balance against the withdrawals committed. The rest
//! of the isolation family (read-skew, write-skew, deadlock) are step files, checked by the
//! step checker.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Evaluation;
use super::stats::{p50, p99};
use crate::history::{History, class};

pub mod kind {
    pub const WITHDRAW: &str = "withdraw";
}

pub mod outcome {
    pub use crate::check::outcome::STUCK;
    pub const OVERDRAWN: &str = "overdrawn";
    pub const LOST_UPDATES: &str = "lost-updates";
    pub const ERRORS: &str = "errors";
    pub const CONSISTENT: &str = "consistent";
}

/// Insufficient funds: the check said no (a refusal, not an error).
pub const REFUSED: &str = "insufficient-funds";

/// What the database showed after the withdrawals.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AccountObservations {
    pub initial_balance: i64,
    /// Amounts of the committed withdrawals, in commit order (the ledger's ids).
    pub ledger: Vec<i64>,
    pub final_balance: i64,
    /// 40001s met along the way, retried or not.
    pub serialization_failures: usize,
    pub retries: usize,
    /// How many withdrawals the balance allows.
    pub valid_withdrawals: usize,
    pub cut_off: bool,
}

pub const ACCOUNT_METRICS: &[&str] = &[
    "overdrafts",
    "final_balance",
    "lost_updates",
    "withdrawals_ok",
    "valid_withdrawals",
    "refused",
    "serialization_failures",
    "retries",
    "stuck",
    "p50_ms",
    "p99_ms",
    "cut_off",
];

pub fn evaluate_account(h: &History, obs: &AccountObservations) -> Evaluation {
    // A withdrawal overdraws when the balance, as the committed ledger has it, goes below zero.
    let mut running = obs.initial_balance;
    let mut overdrafts = 0;
    for amount in &obs.ledger {
        running -= amount;
        if running < 0 {
            overdrafts += 1;
        }
    }
    // Committed withdrawals the balance does not reflect were overwritten.
    let unreflected = obs.final_balance - running;
    let per = obs.ledger.first().copied().unwrap_or(1).max(1);
    let lost = (unreflected.max(0) + per - 1) / per;
    let ok = h.ok(kind::WITHDRAW);
    let refused = h.count(kind::WITHDRAW, REFUSED);
    let stuck = h.unknown(kind::WITHDRAW);
    let failed_other = h.failed(kind::WITHDRAW) as u64 - refused;
    let outcome = if overdrafts > 0 {
        outcome::OVERDRAWN
    } else if lost > 0 {
        outcome::LOST_UPDATES
    } else if stuck > 0 {
        outcome::STUCK
    } else if failed_other > 0 {
        outcome::ERRORS
    } else {
        outcome::CONSISTENT
    };
    Evaluation::new(
        outcome,
        [
            ("overdrafts", json!(overdrafts)),
            ("final_balance", json!(obs.final_balance)),
            ("lost_updates", json!(lost)),
            ("withdrawals_ok", json!(ok)),
            ("valid_withdrawals", json!(obs.valid_withdrawals)),
            ("refused", json!(refused)),
            ("serialization_failures", json!(obs.serialization_failures)),
            ("retries", json!(obs.retries)),
        ]
        .into_iter()
        .chain(timing(h, kind::WITHDRAW, obs.cut_off)),
    )
}

/// The figures every isolation checker reports about its operations of `kind`: those still in
/// flight at the cut-off, the latency of the rest, and whether the variant was cut off.
fn timing(h: &History, kind: &str, cut_off: bool) -> [(&'static str, serde_json::Value); 4] {
    let latencies = h.completed_latencies(kind);
    [
        ("stuck", json!(h.unknown(kind))),
        ("p50_ms", p50(&latencies)),
        ("p99_ms", p99(&latencies)),
        ("cut_off", json!(cut_off)),
    ]
}

/// Whether an error class is one a retry loop on serialization failures retries.
pub fn retryable(c: &str) -> bool {
    c == class::SERIALIZATION || c == class::DEADLOCK
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::assert_emits_exactly;
    use crate::history::{Op, Outcome};

    fn ops(kind: &'static str, outcomes: Vec<Outcome>) -> History {
        History {
            ops: outcomes
                .into_iter()
                .enumerate()
                .map(|(i, outcome)| Op {
                    client: i,
                    kind: kind.into(),
                    start_ms: 0.0,
                    end_ms: (outcome != Outcome::Unknown).then_some(5.0),
                    outcome,
                })
                .collect(),
            ..History::default()
        }
    }

    fn refused() -> Outcome {
        Outcome::Error {
            class: REFUSED.into(),
        }
    }

    #[test]
    fn withdrawals_past_the_balance_are_overdrafts() {
        // 100, four withdrawals of 30 committed: the fourth takes it to -20.
        let h = ops(kind::WITHDRAW, vec![Outcome::Ok; 4]);
        let obs = AccountObservations {
            initial_balance: 100,
            ledger: vec![30; 4],
            final_balance: -20,
            valid_withdrawals: 3,
            ..AccountObservations::default()
        };
        let e = evaluate_account(&h, &obs);
        assert_emits_exactly(&e, ACCOUNT_METRICS);
        assert_eq!(e.outcome, outcome::OVERDRAWN);
        assert_eq!(e.metrics["overdrafts"], 1);
        assert_eq!(e.metrics["lost_updates"], 0);
    }

    #[test]
    fn a_committed_withdrawal_the_balance_forgot_is_a_lost_update() {
        let h = ops(kind::WITHDRAW, vec![Outcome::Ok, Outcome::Ok]);
        let obs = AccountObservations {
            initial_balance: 100,
            ledger: vec![30, 30],
            final_balance: 70,
            valid_withdrawals: 3,
            ..AccountObservations::default()
        };
        let e = evaluate_account(&h, &obs);
        assert_eq!(e.outcome, outcome::LOST_UPDATES);
        assert_eq!(e.metrics["lost_updates"], 1);
    }

    #[test]
    fn refusals_are_not_errors_but_40001s_are() {
        let mut outcomes = vec![Outcome::Ok; 3];
        outcomes.extend(vec![refused(); 7]);
        let e = evaluate_account(
            &ops(kind::WITHDRAW, outcomes),
            &AccountObservations {
                initial_balance: 100,
                ledger: vec![30; 3],
                final_balance: 10,
                valid_withdrawals: 3,
                ..AccountObservations::default()
            },
        );
        assert_eq!(e.outcome, outcome::CONSISTENT);
        assert_eq!(e.metrics["refused"], 7);
        let e = evaluate_account(
            &ops(
                kind::WITHDRAW,
                vec![
                    Outcome::Ok,
                    Outcome::Error {
                        class: class::SERIALIZATION.into(),
                    },
                ],
            ),
            &AccountObservations {
                initial_balance: 100,
                ledger: vec![30],
                final_balance: 70,
                serialization_failures: 1,
                valid_withdrawals: 2,
                ..AccountObservations::default()
            },
        );
        assert_eq!(e.outcome, outcome::ERRORS);
    }
}
