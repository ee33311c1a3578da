//! `locklab report FILE` re-derives each verdict from the run's saved history: the same
//! checker on the same input, the same expectations on what it finds. A results file is then
//! evidence, not a claim.

use crate::check::expect::{Expectation, MapScope};

use super::{RunReport, VariantReport};

/// What re-deriving a file's verdicts found.
#[derive(Debug, Default, PartialEq)]
pub struct Recheck {
    /// Variants whose verdict was re-derived.
    pub rederived: usize,
    /// Variants that ran but whose results keep no complete history, with why.
    pub without: Vec<String>,
    /// Where the re-derived figures differ from the saved ones, one line each.
    pub differ: Vec<String>,
}

impl Recheck {
    /// Lines for people, after the report.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .differ
            .iter()
            .map(|d| format!("RE-CHECK DIFFERS {d}"))
            .collect();
        if self.rederived > 0 && self.differ.is_empty() {
            out.push(format!(
                "re-derived {} verdict{} from the saved histories: the same as the run's",
                self.rederived,
                if self.rederived == 1 { "" } else { "s" }
            ));
        }
        if !self.without.is_empty() {
            out.push(format!(
                "not re-derived (no complete history in the file, or a checker this version does not have): {}",
                self.without.join(", ")
            ));
        }
        out
    }
}

pub fn recheck(report: &RunReport) -> Recheck {
    let mut r = Recheck::default();
    for s in &report.scenarios {
        for v in &s.variants {
            if v.skipped.is_some() || v.error.is_some() {
                continue;
            }
            let at = format!("{}/{}", s.label(), v.name);
            match rederive(v, s.time_scale) {
                Some(diffs) => {
                    r.rederived += 1;
                    r.differ
                        .extend(diffs.into_iter().map(|d| format!("{at}: {d}")));
                }
                None => r.without.push(at),
            }
        }
    }
    r
}

/// The differences between the saved verdict and the one re-derived from the trace; `None`
/// when the trace cannot re-derive it.
fn rederive(v: &VariantReport, time_scale: f64) -> Option<Vec<String>> {
    let trace = v.trace.as_ref()?;
    let input = trace.input.as_ref()?;
    let history = trace.history()?;
    let e = input.evaluate(&history);
    let mut diffs = Vec::new();
    if e.outcome != v.outcome {
        diffs.push(format!(
            "outcome was `{}`, re-derived `{}`",
            v.outcome, e.outcome
        ));
    }
    for (name, saved) in &v.metrics {
        match e.metrics.get(name) {
            Some(now) if now == saved => {}
            Some(now) => diffs.push(format!("{name} was {saved}, re-derived {now}")),
            None => diffs.push(format!("{name} was {saved}, not re-derived")),
        }
    }
    let params = trace.params();
    let scope = MapScope {
        params: &params,
        metrics: &e.metrics,
    };
    for saved in &v.expectations {
        let now = match Expectation::parse(&saved.what) {
            Ok(x) => x.evaluate(&scope, time_scale),
            Err(why) => {
                diffs.push(format!("`{}` no longer parses: {why}", saved.what));
                continue;
            }
        };
        if now.verdict != saved.verdict || now.measured != saved.measured {
            diffs.push(format!(
                "`{}` was {:?} ({}), re-derived {:?} ({})",
                saved.what, saved.verdict, saved.measured, now.verdict, now.measured
            ));
        }
    }
    Some(diffs)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::check::Input;
    use crate::check::expect::Val;
    use crate::check::isolation::AccountObservations;
    use crate::history::{History, Op, Outcome};
    use crate::report::fixtures;
    use crate::trace::Trace;

    /// A check-then-act run by hand: two withdrawals of 60 from 100, both committed.
    fn overdrawn() -> (History, Input) {
        let op = |client, start_ms: f64| Op {
            client,
            kind: "withdraw".into(),
            start_ms,
            end_ms: Some(start_ms + 5.0),
            outcome: Outcome::Ok,
        };
        let obs = AccountObservations {
            initial_balance: 100,
            ledger: vec![60, 60],
            final_balance: -20,
            valid_withdrawals: 1,
            ..Default::default()
        };
        (
            History {
                ops: vec![op(0, 1.0), op(1, 2.0)],
                lost_clients: Vec::new(),
            },
            Input::Account(obs),
        )
    }

    /// The fixture's report with one variant replaced by the run above, its verdict as the
    /// runner would have written it.
    fn saved(history: &History, input: &Input) -> RunReport {
        let mut report = fixtures::report();
        let scale = report.scenarios[0].time_scale;
        let params = BTreeMap::from([("clients".to_string(), Val::Num(2.0))]);
        let e = input.evaluate(history);
        let expectation = Expectation::parse("overdrafts >= clients - 1").unwrap();
        let result = expectation.evaluate(
            &MapScope {
                params: &params,
                metrics: &e.metrics,
            },
            scale,
        );
        let v = &mut report.scenarios[0].variants[0];
        v.outcome = e.outcome.clone();
        v.metrics = e.metrics.clone();
        v.expectations = vec![result];
        v.error = None;
        v.trace = Some(Trace::new(history, Some(input), 0.0, &params));
        for other in &mut report.scenarios[0].variants[1..] {
            other.trace = None;
        }
        report
    }

    #[test]
    fn a_saved_run_re_derives_to_the_same_verdict() {
        let (h, input) = overdrawn();
        let report = saved(&h, &input);
        let r = recheck(&report);
        assert_eq!(r.rederived, 1);
        assert!(r.differ.is_empty(), "{:?}", r.differ);
        assert!(r.lines()[0].starts_with("re-derived 1 verdict from"));
    }

    #[test]
    fn an_edited_history_or_input_shows_where_it_differs() {
        let (h, input) = overdrawn();
        let mut report = saved(&h, &input);
        let trace = report.scenarios[0].variants[0].trace.as_mut().unwrap();
        trace.input = Some(Input::Account(AccountObservations {
            initial_balance: 100,
            ledger: vec![60],
            final_balance: 40,
            valid_withdrawals: 1,
            ..Default::default()
        }));
        let r = recheck(&report);
        assert!(
            r.differ
                .iter()
                .any(|d| d.contains("overdrafts was 1, re-derived 0")),
            "{:?}",
            r.differ
        );
        assert!(
            r.differ
                .iter()
                .any(|d| d.contains("`overdrafts >= clients - 1` was Held")),
            "{:?}",
            r.differ
        );
        assert!(r.lines()[0].starts_with("RE-CHECK DIFFERS orphan-lock/"));
    }

    #[test]
    fn a_capped_history_is_not_re_derived_and_says_so() {
        let (mut h, input) = overdrawn();
        let template = h.ops[0].clone();
        h.ops = vec![template; crate::trace::MAX_OPS + 1];
        let report = saved(&h, &input);
        let trace = report.scenarios[0].variants[0].trace.as_ref().unwrap();
        assert!(trace.input.is_none());
        assert_eq!(trace.ops.len(), crate::trace::MAX_OPS);
        assert!(trace.notes[0].contains("capped"));
        let r = recheck(&report);
        assert_eq!(r.rederived, 0);
        assert!(r.without[0].starts_with("orphan-lock/"));
    }
}
