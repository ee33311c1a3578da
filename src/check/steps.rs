//! The checker of a step scenario (a user's file of sessions and steps): per step, what its
//! operations got and how long they waited on locks, per session what the server showed, and
//! the file's own `[metrics]` queries. Which metrics exist follows from the file alone
//! ([`Layout::metrics`]), so expectations are checked against them before anything runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Evaluation;
use super::expect::{Expectation, Formula, MapScope, Verdict};
use super::stats::{p50, p99, round1};
use crate::history::{History, Outcome};

/// Outcome words of a step scenario.
pub mod outcome {
    pub use crate::check::outcome::STUCK;
    /// Some step failed, none was stuck.
    pub const ERRORS: &str = "errors";
    /// Every step that started completed without an error.
    pub const CLEAN: &str = "clean";
}

/// The statistics every SQL step gets, as `session.step.stat`. `failed` counts the attempts
/// that failed for good (a retried one is not), `failed_p50_ms` how long every failed attempt
/// took (a deadlock's victim: about deadlock_timeout).
pub const STEP_STATS: &[&str] = &[
    "ok",
    "failed",
    "stuck",
    "p50_ms",
    "p99_ms",
    "failed_p50_ms",
    "waited_ms",
];
/// The statistics every session gets, as `session.stat`: `ok` and `failed` count its rounds
/// (a round fails at its first failed step, after any retries), `retries` the rounds run again.
pub const SESSION_STATS: &[&str] = &[
    "ok",
    "failed",
    "retries",
    "lock_waiters_max",
    "idle_in_tx_max_ms",
];

/// What the file declares that the metrics follow from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Layout {
    pub sessions: Vec<SessionLayout>,
    /// `[metrics]` names, in the file's order.
    pub queries: Vec<String>,
    /// Some step marks a critical section: `max_holders` is measured.
    #[serde(default)]
    pub critical: bool,
    /// SQLSTATEs counted over every step as `errors_CODE`.
    #[serde(default)]
    pub codes: Vec<String>,
    /// `[metrics]` computed from the others (`{ of = "EXPR" }`), in the file's order.
    #[serde(default)]
    pub derived: Vec<(String, String)>,
    /// Outcome words and the conditions over metrics that give each, first match wins.
    #[serde(default)]
    pub outcomes: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionLayout {
    pub name: String,
    pub clients: usize,
    /// Runs its steps a count of rounds (a step not reached by the cut-off is stuck), or
    /// until the cut-off.
    pub once: bool,
    /// With `once`: how many rounds (0, as in results written before counted rounds: 1).
    #[serde(default)]
    pub rounds: usize,
    /// Its SQL steps, by name.
    pub steps: Vec<String>,
    /// SQLSTATEs counted per step as `errors_CODE`: those the file's expectations and columns
    /// name (any other shows in the table's errors).
    pub codes: Vec<(String, String)>,
    /// It has a fault and a probe: `lock_held_ms` is measured.
    pub probed: bool,
}

impl Layout {
    /// Every metric a run of this layout emits.
    pub fn metrics(&self) -> Vec<String> {
        let mut out = vec![
            "cut_off".into(),
            "p50_ms".into(),
            "p99_ms".into(),
            "stuck".into(),
            "retries".into(),
        ];
        out.extend(self.codes.iter().map(|c| format!("errors_{c}")));
        for s in &self.sessions {
            for t in &s.steps {
                out.extend(
                    STEP_STATS
                        .iter()
                        .map(|stat| format!("{}.{t}.{stat}", s.name)),
                );
            }
            for (t, code) in &s.codes {
                out.push(format!("{}.{t}.errors_{code}", s.name));
            }
            out.extend(
                SESSION_STATS
                    .iter()
                    .map(|stat| format!("{}.{stat}", s.name)),
            );
            if s.probed {
                out.push(format!("{}.lock_held_ms", s.name));
            }
        }
        if self.critical {
            out.push("max_holders".into());
        }
        out.extend(self.queries.iter().cloned());
        out.extend(self.derived.iter().map(|(n, _)| n.clone()));
        out
    }
}

/// What the servers showed during one run, per session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionSeen {
    /// The most of its clients seen waiting on a lock at once.
    pub lock_waiters_max: i64,
    /// The longest any of its clients was seen idle in a transaction.
    pub idle_in_tx_max_ms: f64,
    /// When its fault struck (history clock), and when its probe got what it held.
    pub fault_ms: Option<f64>,
    pub freed_ms: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Observations {
    pub layout: Layout,
    /// Per session, in the layout's order.
    pub seen: Vec<SessionSeen>,
    /// Per `session.step`: the time its clients were seen waiting on a lock while running it.
    pub waited_ms: BTreeMap<String, f64>,
    /// `[metrics]` results: one number each, `None` for SQL NULL.
    pub queries: BTreeMap<String, Option<f64>>,
    /// The cut-off came with a step in flight or not yet reached.
    pub cut_off: bool,
    /// When the run ended (history clock).
    pub end_ms: f64,
    /// Critical sections as the clients marked them (`critical = "enter"` to `"leave"`).
    #[serde(default)]
    pub sections: Vec<Section>,
    /// Per `session.step`: clients that skipped it because an earlier step of theirs failed.
    #[serde(default)]
    pub skipped: BTreeMap<String, usize>,
    /// Per `session.step`: failed attempts whose round was run again (`retry`).
    #[serde(default)]
    pub retried: BTreeMap<String, usize>,
    /// Per session, in the layout's order: rounds completed, and rounds that failed for good.
    #[serde(default)]
    pub rounds: Vec<Rounds>,
    /// Per `session.step`: the (client, round) pairs that ran it to an end (completed, failed
    /// for good, skipped after a failure, or left after the client's fault). None in results
    /// written before it was kept: ok + failed + skipped stands in.
    #[serde(default)]
    pub settled: Option<BTreeMap<String, usize>>,
}

/// A session's rounds: all steps done, ended by a failure (after retries), and run again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rounds {
    pub ok: usize,
    pub failed: usize,
    pub retries: usize,
}

/// One client's critical section: it believed it held the lock from `enter_ms` to `leave_ms`
/// (history clock); `None`, still inside at the end (a frozen holder, say).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Section {
    pub who: String,
    pub enter_ms: f64,
    pub leave_ms: Option<f64>,
}

/// The most sections open at once.
pub fn max_holders(sections: &[Section], end_ms: f64) -> usize {
    let mut edges: Vec<(f64, i32)> = sections
        .iter()
        .flat_map(|s| [(s.enter_ms, 1), (s.leave_ms.unwrap_or(end_ms), -1)])
        .collect();
    // At the same instant a leave comes before an enter: touching sections do not overlap.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut open, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        open += d;
        most = most.max(open);
    }
    most.max(0) as usize
}

/// A number as JSON: whole ones as integers (a count reads `5`, not `5.0`).
fn number(x: f64) -> Value {
    match x.fract() == 0.0 && x.abs() < 1e15 {
        true => json!(x as i64),
        false => json!(x),
    }
}

/// The file's first outcome whose conditions all hold over the metrics.
fn declared_outcome<'a>(
    outcomes: &'a [(String, Vec<String>)],
    metrics: &[(String, Value)],
) -> Option<&'a str> {
    let known: BTreeMap<String, Value> = metrics.iter().cloned().collect();
    let none = BTreeMap::new();
    let scope = MapScope {
        params: &none,
        metrics: &known,
    };
    outcomes
        .iter()
        .find(|(_, when)| {
            when.iter().all(|c| {
                Expectation::parse(c)
                    .is_ok_and(|e| e.evaluate(&scope, 1.0).verdict == Verdict::Held)
            })
        })
        .map(|(word, _)| word.as_str())
}

pub fn evaluate(h: &History, obs: &Observations) -> Evaluation {
    // Every SQL step's latency together, for the table's p50 and p99 columns.
    let all: Vec<f64> = h.ops.iter().filter_map(|o| o.latency_ms()).collect();
    let mut metrics: Vec<(String, Value)> = vec![
        ("cut_off".into(), json!(obs.cut_off)),
        ("p50_ms".into(), p50(&all)),
        ("p99_ms".into(), p99(&all)),
    ];
    let (mut stuck_any, mut failed_any) = (false, false);
    let mut stuck_total = 0;
    let mut lower = Vec::new();
    for (si, s) in obs.layout.sessions.iter().enumerate() {
        for t in &s.steps {
            let kind = format!("{}.{t}", s.name);
            let ops: Vec<_> = h.ops.iter().filter(|o| o.kind == kind).collect();
            let ok = ops.iter().filter(|o| o.outcome == Outcome::Ok).count();
            let failed = ops
                .iter()
                .filter(|o| matches!(o.outcome, Outcome::Error { .. }))
                .count();
            let in_flight = ops.iter().filter(|o| o.outcome == Outcome::Unknown).count();
            // Run once, a step no client reached by the cut-off is stuck too (one skipped after
            // an earlier step failed is not: it was never going to run).
            let skipped = obs.skipped.get(&kind).copied().unwrap_or(0);
            let settled = match &obs.settled {
                Some(m) => m.get(&kind).copied().unwrap_or(0),
                None => ok + failed + skipped,
            };
            let stuck = match s.once {
                true => s
                    .clients
                    .saturating_mul(s.rounds.max(1))
                    .saturating_sub(settled)
                    .max(in_flight),
                false => looped_stuck(&ops, obs.end_ms),
            };
            stuck_any |= stuck > 0;
            failed_any |= failed > 0;
            let latencies: Vec<f64> = ops.iter().filter_map(|o| o.latency_ms()).collect();
            let failed_latencies: Vec<f64> = ops
                .iter()
                .filter(|o| matches!(o.outcome, Outcome::Error { .. }))
                .filter_map(|o| o.latency_ms())
                .collect();
            let retried = obs.retried.get(&kind).copied().unwrap_or(0);
            stuck_total += stuck;
            let m = |stat: &str| format!("{kind}.{stat}");
            metrics.push((m("ok"), json!(ok)));
            metrics.push((m("failed"), json!(failed.saturating_sub(retried))));
            metrics.push((m("stuck"), json!(stuck)));
            metrics.push((m("p50_ms"), p50(&latencies)));
            metrics.push((m("p99_ms"), p99(&latencies)));
            metrics.push((m("failed_p50_ms"), p50(&failed_latencies)));
            let waited = obs.waited_ms.get(&kind).copied().unwrap_or(0.0);
            metrics.push((m("waited_ms"), json!(round1(waited))));
        }
        for (t, code) in &s.codes {
            let kind = format!("{}.{t}", s.name);
            metrics.push((format!("{kind}.errors_{code}"), json!(h.count(&kind, code))));
        }
        let seen = obs.seen.get(si).cloned().unwrap_or_default();
        let rounds = obs.rounds.get(si).copied().unwrap_or_default();
        metrics.push((format!("{}.ok", s.name), json!(rounds.ok)));
        metrics.push((format!("{}.failed", s.name), json!(rounds.failed)));
        metrics.push((format!("{}.retries", s.name), json!(rounds.retries)));
        metrics.push((
            format!("{}.lock_waiters_max", s.name),
            json!(seen.lock_waiters_max),
        ));
        metrics.push((
            format!("{}.idle_in_tx_max_ms", s.name),
            json!(round1(seen.idle_in_tx_max_ms)),
        ));
        if s.probed {
            let name = format!("{}.lock_held_ms", s.name);
            let held = match (seen.fault_ms, seen.freed_ms) {
                (Some(f), Some(r)) => json!(round1((r - f).max(0.0))),
                // Still held at the end: at least this long.
                (Some(f), None) => {
                    lower.push(name.clone());
                    json!(round1((obs.end_ms - f).max(0.0)))
                }
                (None, _) => Value::Null,
            };
            metrics.push((name, held));
        }
    }
    if obs.layout.critical {
        metrics.push((
            "max_holders".into(),
            json!(max_holders(&obs.sections, obs.end_ms)),
        ));
    }
    for q in &obs.layout.queries {
        let v = obs.queries.get(q).copied().flatten();
        metrics.push((q.clone(), v.map_or(Value::Null, number)));
    }
    metrics.push(("stuck".into(), json!(stuck_total)));
    metrics.push((
        "retries".into(),
        json!(obs.rounds.iter().map(|r| r.retries).sum::<usize>()),
    ));
    for code in &obs.layout.codes {
        let n = h
            .ops
            .iter()
            .filter(|o| matches!(&o.outcome, Outcome::Error { class } if class == code))
            .count();
        metrics.push((format!("errors_{code}"), json!(n)));
    }
    // Derived metrics last, each over those before it; one that cannot be computed (a metric
    // it reads was not measured) is null.
    for (name, text) in &obs.layout.derived {
        let known: BTreeMap<String, Value> = metrics.iter().cloned().collect();
        let none = BTreeMap::new();
        let scope = MapScope {
            params: &none,
            metrics: &known,
        };
        let v = Formula::parse(text).and_then(|f| f.eval(&scope, 1.0));
        let v = v.map_or(Value::Null, |x| number(round1(x)));
        metrics.push((name.clone(), v));
    }
    let default = match (stuck_any, failed_any) {
        (true, _) => outcome::STUCK,
        (false, true) => outcome::ERRORS,
        (false, false) => outcome::CLEAN,
    };
    let outcome = declared_outcome(&obs.layout.outcomes, &metrics).unwrap_or(default);
    let mut e = Evaluation::new(
        outcome,
        metrics.iter().map(|(k, v)| (k.as_str(), v.clone())),
    );
    for l in lower {
        e = e.lower_bound(&l, true);
    }
    e
}

/// A looping session is always in the middle of a round at the cut-off: a step in flight then
/// is stuck only when it had run longer than any of its runs that succeeded (or none did),
/// not because the cut-off happened to fall inside it.
fn looped_stuck(ops: &[&crate::history::Op], end_ms: f64) -> usize {
    // Only runs that succeeded set the bar: one that failed on a timeout, or waited long
    // before failing, would raise it past a real hang near the cut-off.
    let slowest = ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok)
        .filter_map(|o| o.latency_ms())
        .fold(None, |m: Option<f64>, l| Some(m.map_or(l, |m| m.max(l))));
    ops.iter()
        .filter(|o| o.outcome == Outcome::Unknown)
        .filter(|o| slowest.is_none_or(|s| end_ms - o.start_ms > s))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Op;

    fn layout() -> Layout {
        Layout {
            sessions: vec![
                SessionLayout {
                    name: "migration".into(),
                    clients: 1,
                    once: true,
                    rounds: 1,
                    steps: vec!["alter".into()],
                    codes: vec![("alter".into(), "55P03".into())],
                    probed: false,
                },
                SessionLayout {
                    name: "app".into(),
                    clients: 2,
                    once: true,
                    // As a results file written before counted rounds has it: one round.
                    rounds: 0,
                    steps: vec!["read".into()],
                    codes: Vec::new(),
                    probed: true,
                },
            ],
            queries: vec!["rows".into()],
            critical: true,
            codes: vec!["55P03".into()],
            derived: vec![
                ("gave_up".into(), "errors_55P03".into()),
                ("per_read".into(), "rows / 2".into()),
            ],
            outcomes: vec![
                (
                    "gave-up".into(),
                    vec!["gave_up >= 1".into(), "stuck == 0".into()],
                ),
                ("calm".into(), vec!["rows == 0".into()]),
            ],
        }
    }

    #[test]
    fn holders_overlap_only_where_sections_do() {
        let s = |enter: f64, leave: Option<f64>| Section {
            who: "c".into(),
            enter_ms: enter,
            leave_ms: leave,
        };
        assert_eq!(max_holders(&[], 10.0), 0);
        assert_eq!(
            max_holders(&[s(0.0, Some(5.0)), s(5.0, Some(9.0))], 10.0),
            1
        );
        assert_eq!(max_holders(&[s(0.0, None), s(5.0, Some(9.0))], 10.0), 2);
    }

    fn op(client: usize, kind: &str, end: Option<f64>, outcome: Outcome) -> Op {
        Op {
            client,
            kind: kind.to_string().into(),
            start_ms: 0.0,
            end_ms: end,
            outcome,
        }
    }

    #[test]
    fn a_looping_step_cut_mid_run_is_not_stuck_but_one_slower_than_all_others_is() {
        let at = |start: f64, end: Option<f64>| Op {
            start_ms: start,
            ..op(
                0,
                "app.read",
                end,
                match end {
                    Some(_) => Outcome::Ok,
                    None => Outcome::Unknown,
                },
            )
        };
        let (done, cut) = (at(0.0, Some(40.0)), at(480.0, None));
        assert_eq!(looped_stuck(&[&done, &cut], 500.0), 0, "20 ms in, under 40");
        let slow = at(300.0, None);
        assert_eq!(
            looped_stuck(&[&done, &slow], 500.0),
            1,
            "200 ms in, over 40"
        );
        assert_eq!(looped_stuck(&[&cut], 500.0), 1, "nothing ever finished");
    }

    #[test]
    fn emits_exactly_the_layouts_metrics() {
        let obs = Observations {
            layout: layout(),
            ..Default::default()
        };
        let e = evaluate(&History::default(), &obs);
        let mut want = obs.layout.metrics();
        want.sort();
        assert_eq!(
            e.names(),
            want.iter().map(String::as_str).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_step_never_reached_is_stuck_and_errors_are_counted_by_sqlstate() {
        let h = History {
            ops: vec![
                op(
                    0,
                    "migration.alter",
                    Some(100.0),
                    Outcome::Error {
                        class: "55P03".into(),
                    },
                ),
                op(1, "app.read", Some(20.0), Outcome::Ok),
            ],
            lost_clients: Vec::new(),
        };
        let obs = Observations {
            layout: layout(),
            seen: vec![
                SessionSeen::default(),
                SessionSeen {
                    lock_waiters_max: 2,
                    fault_ms: Some(10.0),
                    ..Default::default()
                },
            ],
            cut_off: true,
            end_ms: 500.0,
            queries: BTreeMap::from([("rows".to_string(), Some(3.0))]),
            ..Default::default()
        };
        let e = evaluate(&h, &obs);
        assert_eq!(e.outcome, outcome::STUCK);
        assert_eq!(e.metrics["migration.alter.errors_55P03"], json!(1));
        assert_eq!(e.metrics["migration.alter.failed"], json!(1));
        assert_eq!(e.metrics["app.read.ok"], json!(1));
        assert_eq!(
            e.metrics["app.read.stuck"],
            json!(1),
            "the second client never read"
        );
        assert_eq!(e.metrics["app.read.p50_ms"], json!(20.0));
        assert_eq!(e.metrics["app.lock_waiters_max"], json!(2));
        assert_eq!(e.metrics["app.lock_held_ms"], json!(490.0));
        assert!(e.lower_bounds.contains("app.lock_held_ms"));
        assert_eq!(e.metrics["rows"], json!(3), "a whole number reads as one");
        assert_eq!(e.metrics["gave_up"], json!(1));
        assert_eq!(e.metrics["per_read"], json!(1.5));
        assert_eq!(e.metrics["errors_55P03"], json!(1));
        assert_eq!(e.metrics["stuck"], json!(1));
    }

    #[test]
    fn a_round_never_run_of_a_counted_session_is_stuck() {
        let mut layout = layout();
        layout.sessions[1].rounds = 3;
        let ok = |c| op(c, "app.read", Some(20.0), Outcome::Ok);
        let h = History {
            // Two clients, three rounds: the second client's third round never came.
            ops: vec![ok(0), ok(0), ok(0), ok(1), ok(1)],
            lost_clients: Vec::new(),
        };
        let obs = Observations {
            layout,
            seen: vec![SessionSeen::default(); 2],
            end_ms: 500.0,
            ..Default::default()
        };
        let e = evaluate(&h, &obs);
        assert_eq!(e.metrics["app.read.ok"], json!(5));
        assert_eq!(e.metrics["app.read.stuck"], json!(1));
        // With the clients' own account: a retried round's extra runs do not hide a round
        // never run, and the rounds a faulted client will not run are not stuck.
        let retried = History {
            ops: vec![ok(0), ok(0), ok(0), ok(0), ok(1)],
            lost_clients: Vec::new(),
        };
        let settled = |n| Observations {
            settled: Some(BTreeMap::from([("app.read".to_string(), n)])),
            ..obs.clone()
        };
        let e = evaluate(&retried, &settled(4));
        assert_eq!(e.metrics["app.read.stuck"], json!(2));
        let e = evaluate(&retried, &settled(6));
        assert_eq!(e.metrics["app.read.stuck"], json!(0));
    }

    #[test]
    fn a_retried_failure_is_not_a_failure_and_the_first_matching_outcome_wins() {
        let err = || Outcome::Error {
            class: "55P03".into(),
        };
        let h = History {
            ops: vec![
                op(0, "migration.alter", Some(100.0), err()),
                op(0, "migration.alter", Some(30.0), Outcome::Ok),
                op(0, "app.read", Some(20.0), Outcome::Ok),
                op(1, "app.read", Some(20.0), Outcome::Ok),
            ],
            lost_clients: Vec::new(),
        };
        let obs = Observations {
            layout: layout(),
            seen: vec![SessionSeen::default(); 2],
            retried: BTreeMap::from([("migration.alter".to_string(), 1)]),
            rounds: vec![
                Rounds {
                    ok: 1,
                    failed: 0,
                    retries: 1,
                },
                Rounds {
                    ok: 2,
                    ..Rounds::default()
                },
            ],
            queries: BTreeMap::from([("rows".to_string(), Some(0.0))]),
            ..Default::default()
        };
        let e = evaluate(&h, &obs);
        assert_eq!(
            e.metrics["migration.alter.failed"],
            json!(0),
            "it was retried"
        );
        assert_eq!(e.metrics["migration.alter.failed_p50_ms"], json!(100.0));
        assert_eq!(e.metrics["migration.retries"], json!(1));
        assert_eq!(e.metrics["retries"], json!(1));
        assert_eq!(e.metrics["app.ok"], json!(2));
        assert_eq!(
            e.outcome, "gave-up",
            "the first outcome whose conditions all hold"
        );
        let none_gave_up = History {
            ops: h.ops[1..].to_vec(),
            lost_clients: Vec::new(),
        };
        assert_eq!(evaluate(&none_gave_up, &obs).outcome, "calm");
        let other = Observations {
            queries: BTreeMap::from([("rows".to_string(), Some(4.0))]),
            ..obs
        };
        assert_eq!(evaluate(&none_gave_up, &other).outcome, outcome::CLEAN);
    }
}
