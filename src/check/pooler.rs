//! Checker of pooler-pitfalls: what tenants saw inside their transactions through a
//! transaction-mode pooler, against what each of them did. A setting, a lock or a notification
//! that reached a tenant who never asked for it is the harm; so is a statement that vanished
//! between two of a client's requests.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::Evaluation;
use super::stats::{p50, p99};
use crate::history::{History, Op, Outcome};

/// Operation kinds in the history.
pub mod kind {
    /// The first client's opening move (prepare, SET, lock, LISTEN), alone, before the rounds.
    pub const OPEN: &str = "open";
    /// One tenant's transaction in one round.
    pub const TXN: &str = "txn";
    /// The first client's closing move (its unlock), after the rounds.
    pub const CLOSE: &str = "close";
}

/// SQLSTATEs of the prepared-statement pitfall.
pub mod sqlstate {
    /// `prepared statement "…" does not exist`.
    pub const MISSING: &str = "26000";
    /// `prepared statement "…" already exists`.
    pub const DUPLICATE: &str = "42P05";
    /// A connection the pooler refused at startup (e.g. `unsupported startup parameter`).
    pub const PROTOCOL_VIOLATION: &str = "08P01";
}

pub mod outcome {
    pub use crate::check::outcome::STUCK;
    pub const STATEMENT_ERRORS: &str = "statement-errors";
    pub const REFUSED: &str = "refused";
    pub const FOREIGN_SETTINGS: &str = "foreign-settings";
    pub const TWO_HOLDERS: &str = "two-holders";
    pub const STRANDED_LOCKS: &str = "stranded-locks";
    pub const LOST_NOTIFICATIONS: &str = "lost-notifications";
    pub const CLEAN: &str = "clean";
}

/// The settings a transaction ran under, as the server reported them inside it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Settings {
    pub statement_timeout: String,
    pub timezone: String,
    pub plan_cache_mode: String,
}

/// What one client's transaction saw on the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Seen {
    pub client: usize,
    pub backend_pid: i32,
    pub settings: Settings,
    /// Advisory locks on the scenario's key that this backend already held when the
    /// transaction began (from pg_locks).
    pub locks_held: i64,
    /// Whether the client believed it held the lock at that moment (it took it earlier).
    pub believed_holding: bool,
}

/// A span during which a client believed it held the advisory lock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Belief {
    pub client: usize,
    pub from_ms: f64,
    /// `None`: still believed at the end.
    pub to_ms: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PoolerObservations {
    /// The server's defaults, as a session straight to it reads them.
    pub defaults: Settings,
    /// Clients that set session settings themselves: what they set is theirs.
    pub setters: BTreeSet<usize>,
    pub seen: Vec<Seen>,
    pub beliefs: Vec<Belief>,
    /// Unlocks that returned false: the lock was on another server connection.
    pub failed_unlocks: usize,
    /// Advisory locks on the scenario's key still granted once every client was done.
    pub locks_left: i64,
    pub notifications_sent: usize,
    /// Payloads the listener received (each counted once).
    pub received: BTreeSet<String>,
    /// Notifications delivered to clients that never listened.
    pub misdelivered: usize,
    pub cut_off: bool,
}

pub const METRICS: &[&str] = &[
    "transactions",
    "failed",
    "stuck",
    "pitfall_hits",
    "prepared_errors",
    "statement_missing",
    "statement_exists",
    "connect_refused",
    "plan_cache_mode_applied",
    "foreign_settings",
    "foreign_statement_timeout",
    "foreign_timezone",
    "cancelled",
    "overlaps",
    "stranded_locks",
    "failed_unlocks",
    "locks_left",
    "notifications_sent",
    "notifications_received",
    "lost_notifications",
    "misdelivered",
    "p50_ms",
    "p99_ms",
    "cut_off",
];

/// Acquisitions made while another client believed it held the lock.
pub fn overlaps(beliefs: &[Belief]) -> usize {
    beliefs
        .iter()
        .filter(|b| {
            beliefs.iter().any(|other| {
                other.client != b.client
                    && other.from_ms <= b.from_ms
                    && other.to_ms.is_none_or(|to| to > b.from_ms)
            })
        })
        .count()
}

fn errors_of(ops: &[Op], class: &str) -> usize {
    ops.iter()
        .filter(|o| matches!(&o.outcome, Outcome::Error { class: c } if c == class))
        .count()
}

pub fn evaluate(h: &History, obs: &PoolerObservations) -> Evaluation {
    let ops = &h.ops;
    let missing = errors_of(ops, sqlstate::MISSING);
    let duplicate = errors_of(ops, sqlstate::DUPLICATE);
    let prepared = missing + duplicate;
    // A refused startup is a failed opening or first transaction that never had a connection:
    // the pooler answers it with a protocol violation.
    let refused = errors_of(ops, sqlstate::PROTOCOL_VIOLATION);
    let cancelled = errors_of(ops, crate::history::class::STATEMENT_TIMEOUT);
    let foreign: Vec<&Seen> = obs
        .seen
        .iter()
        .filter(|s| !obs.setters.contains(&s.client))
        .collect();
    let foreign_timeout = foreign
        .iter()
        .filter(|s| s.settings.statement_timeout != obs.defaults.statement_timeout)
        .count();
    let foreign_timezone = foreign
        .iter()
        .filter(|s| s.settings.timezone != obs.defaults.timezone)
        .count();
    let foreign_any = foreign
        .iter()
        .filter(|s| {
            s.settings.statement_timeout != obs.defaults.statement_timeout
                || s.settings.timezone != obs.defaults.timezone
        })
        .count();
    let plan_applied = obs
        .seen
        .iter()
        .filter(|s| s.settings.plan_cache_mode == "force_custom_plan")
        .count();
    let stranded = obs
        .seen
        .iter()
        .filter(|s| s.locks_held > 0 && !s.believed_holding)
        .count();
    let overlapping = overlaps(&obs.beliefs);
    let received = obs.received.len();
    let lost = obs.notifications_sent.saturating_sub(received);
    let hits = prepared + refused + foreign_any + overlapping + stranded + lost + obs.misdelivered;

    let txns = || ops.iter().filter(|o| o.kind == kind::TXN);
    let transactions = txns().filter(|o| o.outcome == Outcome::Ok).count();
    let failed = ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Error { .. }))
        .count();
    let stuck = ops.iter().filter(|o| o.outcome == Outcome::Unknown).count();
    let latencies: Vec<f64> = txns().filter_map(Op::latency_ms).collect();

    let outcome = if refused > 0 {
        outcome::REFUSED
    } else if prepared > 0 {
        outcome::STATEMENT_ERRORS
    } else if foreign_any > 0 {
        outcome::FOREIGN_SETTINGS
    } else if overlapping > 0 {
        outcome::TWO_HOLDERS
    } else if stranded > 0 || obs.locks_left > 0 {
        outcome::STRANDED_LOCKS
    } else if lost > 0 || obs.misdelivered > 0 {
        outcome::LOST_NOTIFICATIONS
    } else if stuck > 0 {
        outcome::STUCK
    } else {
        outcome::CLEAN
    };
    let metrics: BTreeMap<&str, serde_json::Value> = BTreeMap::from([
        ("transactions", json!(transactions)),
        ("failed", json!(failed)),
        ("stuck", json!(stuck)),
        ("pitfall_hits", json!(hits)),
        ("prepared_errors", json!(prepared)),
        ("statement_missing", json!(missing)),
        ("statement_exists", json!(duplicate)),
        ("connect_refused", json!(refused)),
        ("plan_cache_mode_applied", json!(plan_applied)),
        ("foreign_settings", json!(foreign_any)),
        ("foreign_statement_timeout", json!(foreign_timeout)),
        ("foreign_timezone", json!(foreign_timezone)),
        ("cancelled", json!(cancelled)),
        ("overlaps", json!(overlapping)),
        ("stranded_locks", json!(stranded)),
        ("failed_unlocks", json!(obs.failed_unlocks)),
        ("locks_left", json!(obs.locks_left)),
        ("notifications_sent", json!(obs.notifications_sent)),
        ("notifications_received", json!(received)),
        ("lost_notifications", json!(lost)),
        ("misdelivered", json!(obs.misdelivered)),
        ("p50_ms", p50(&latencies)),
        ("p99_ms", p99(&latencies)),
        ("cut_off", json!(obs.cut_off)),
    ]);
    Evaluation::new(outcome, metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::assert_emits_exactly;

    fn op(client: usize, kind: &'static str, outcome: Outcome) -> Op {
        let end_ms = (outcome != Outcome::Unknown).then_some(10.0);
        Op {
            client,
            kind: kind.into(),
            start_ms: 0.0,
            end_ms,
            outcome,
        }
    }

    fn err(class: &str) -> Outcome {
        Outcome::Error {
            class: class.into(),
        }
    }

    fn defaults() -> Settings {
        Settings {
            statement_timeout: "0".into(),
            timezone: "Etc/UTC".into(),
            plan_cache_mode: "auto".into(),
        }
    }

    fn seen(client: usize, settings: Settings) -> Seen {
        Seen {
            client,
            backend_pid: 100 + client as i32,
            settings,
            locks_held: 0,
            believed_holding: false,
        }
    }

    #[test]
    fn a_clean_run_emits_every_metric_and_no_hit() {
        let h = History {
            ops: vec![op(1, kind::TXN, Outcome::Ok), op(2, kind::TXN, Outcome::Ok)],
            ..History::default()
        };
        let obs = PoolerObservations {
            defaults: defaults(),
            seen: vec![seen(1, defaults()), seen(2, defaults())],
            ..PoolerObservations::default()
        };
        let e = evaluate(&h, &obs);
        assert_emits_exactly(&e, METRICS);
        assert_eq!(e.outcome, outcome::CLEAN);
        assert_eq!(e.metrics["pitfall_hits"], 0);
        assert_eq!(e.metrics["transactions"], 2);
    }

    #[test]
    fn statement_errors_of_both_kinds_are_counted() {
        let h = History {
            ops: vec![
                op(1, kind::TXN, err(sqlstate::DUPLICATE)),
                op(2, kind::TXN, err(sqlstate::MISSING)),
                op(3, kind::TXN, err(sqlstate::MISSING)),
                op(4, kind::TXN, Outcome::Ok),
            ],
            ..History::default()
        };
        let e = evaluate(&h, &PoolerObservations::default());
        assert_eq!(e.outcome, outcome::STATEMENT_ERRORS);
        assert_eq!(e.metrics["prepared_errors"], 3);
        assert_eq!(e.metrics["statement_missing"], 2);
        assert_eq!(e.metrics["statement_exists"], 1);
        assert_eq!(e.metrics["failed"], 3);
    }

    #[test]
    fn a_setting_counts_as_foreign_only_for_those_who_never_set_it() {
        let mut tainted = defaults();
        tainted.statement_timeout = "20ms".into();
        let obs = PoolerObservations {
            defaults: defaults(),
            setters: BTreeSet::from([0]),
            seen: vec![
                seen(0, tainted.clone()),
                seen(1, tainted.clone()),
                seen(2, defaults()),
            ],
            ..PoolerObservations::default()
        };
        let h = History {
            ops: vec![op(1, kind::TXN, err("57014"))],
            ..History::default()
        };
        let e = evaluate(&h, &obs);
        assert_eq!(e.outcome, outcome::FOREIGN_SETTINGS);
        assert_eq!(e.metrics["foreign_settings"], 1);
        assert_eq!(e.metrics["foreign_statement_timeout"], 1);
        assert_eq!(e.metrics["foreign_timezone"], 0);
        assert_eq!(e.metrics["cancelled"], 1);
    }

    #[test]
    fn two_beliefs_at_once_overlap_and_a_lock_found_unasked_is_stranded() {
        let beliefs = vec![
            Belief {
                client: 0,
                from_ms: 0.0,
                to_ms: None,
            },
            Belief {
                client: 3,
                from_ms: 50.0,
                to_ms: Some(60.0),
            },
            // After client 3 let go, and client 0 is itself: not an overlap with 3.
            Belief {
                client: 0,
                from_ms: 70.0,
                to_ms: Some(80.0),
            },
        ];
        assert_eq!(overlaps(&beliefs), 1);
        let mut found = seen(3, defaults());
        found.locks_held = 1;
        let mut own = seen(0, defaults());
        own.locks_held = 1;
        own.believed_holding = true;
        let obs = PoolerObservations {
            defaults: defaults(),
            seen: vec![found, own],
            beliefs,
            locks_left: 1,
            ..PoolerObservations::default()
        };
        let e = evaluate(&History::default(), &obs);
        assert_eq!(e.outcome, outcome::TWO_HOLDERS);
        assert_eq!(e.metrics["stranded_locks"], 1);
        assert_eq!(e.metrics["pitfall_hits"], 2);
    }

    #[test]
    fn beliefs_one_after_another_do_not_overlap() {
        let beliefs = vec![
            Belief {
                client: 1,
                from_ms: 0.0,
                to_ms: Some(10.0),
            },
            Belief {
                client: 2,
                from_ms: 10.0,
                to_ms: Some(20.0),
            },
        ];
        assert_eq!(overlaps(&beliefs), 0);
    }

    #[test]
    fn notifications_not_received_are_lost_and_strays_misdelivered() {
        let obs = PoolerObservations {
            defaults: defaults(),
            notifications_sent: 5,
            received: BTreeSet::from(["1".to_string(), "2".to_string()]),
            misdelivered: 1,
            ..PoolerObservations::default()
        };
        let e = evaluate(&History::default(), &obs);
        assert_eq!(e.outcome, outcome::LOST_NOTIFICATIONS);
        assert_eq!(e.metrics["lost_notifications"], 3);
        assert_eq!(e.metrics["pitfall_hits"], 4);
    }

    #[test]
    fn a_refused_startup_is_counted_apart() {
        let h = History {
            ops: vec![op(0, kind::OPEN, err(sqlstate::PROTOCOL_VIOLATION))],
            ..History::default()
        };
        let e = evaluate(&h, &PoolerObservations::default());
        assert_eq!(e.outcome, outcome::REFUSED);
        assert_eq!(e.metrics["connect_refused"], 1);
    }
}
