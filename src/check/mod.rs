//! Checkers: pure functions from a history and server observations to an [`Evaluation`].
//! Nothing here knows about scenarios, servers or the command line.

pub mod expect;
pub mod input;
pub mod isolation;
pub mod lock_watchdog;
pub mod lost_client;
pub mod orphan_lock;
pub mod outcome;
pub mod pool;
pub mod pooler;
pub mod redis_failover;
pub mod samples;
pub mod setnx_race;
pub mod shutdown;
pub mod stats;
pub mod steps;
pub mod storm;

pub use input::Input;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// What a checker concludes about one variant run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evaluation {
    /// One word for what the servers showed, e.g. `stuck`, `released`, `oversold`.
    pub outcome: String,
    pub metrics: BTreeMap<String, Value>,
    /// Metrics measured only up to a cut-off: the true figure is at least this much.
    pub lower_bounds: BTreeSet<String>,
}

impl Evaluation {
    pub fn new<'a>(outcome: &str, metrics: impl IntoIterator<Item = (&'a str, Value)>) -> Self {
        Evaluation {
            outcome: outcome.to_string(),
            metrics: metrics
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            lower_bounds: BTreeSet::new(),
        }
    }

    /// Marks `metric` as a lower bound when `when` holds (it was still growing at the cut-off).
    pub fn lower_bound(mut self, metric: &str, when: bool) -> Self {
        if when {
            self.lower_bounds.insert(metric.to_string());
        }
        self
    }

    /// The metric names emitted, for checking them against what a scenario declares.
    pub fn names(&self) -> Vec<&str> {
        self.metrics.keys().map(String::as_str).collect()
    }
}

/// `base` followed by `extra`, at compile time: a checker that extends another declares its
/// metrics as the other's plus its own, so the two lists cannot drift apart.
/// `N` must be `base.len() + extra.len()`.
pub const fn extend_metrics<const N: usize>(
    base: &[&'static str],
    extra: &[&'static str],
) -> [&'static str; N] {
    assert!(
        N == base.len() + extra.len(),
        "N must be the two lengths' sum"
    );
    let mut out = [""; N];
    let mut i = 0;
    while i < N {
        out[i] = if i < base.len() {
            base[i]
        } else {
            extra[i - base.len()]
        };
        i += 1;
    }
    out
}

/// The names a checker emits that its scenario does not declare, and those it declares but
/// does not emit: both empty when they agree.
pub fn metric_drift<'a>(
    emitted: &'a Evaluation,
    declared: &'a [&'a str],
) -> (Vec<&'a str>, Vec<&'a str>) {
    let emitted_names = emitted.names();
    let undeclared = emitted_names
        .iter()
        .copied()
        .filter(|n| !declared.contains(n))
        .collect();
    let missing = declared
        .iter()
        .copied()
        .filter(|n| !emitted_names.contains(n))
        .collect();
    (undeclared, missing)
}

#[cfg(test)]
pub(crate) fn assert_emits_exactly(e: &Evaluation, declared: &[&str]) {
    let (undeclared, missing) = metric_drift(e, declared);
    assert!(
        undeclared.is_empty() && missing.is_empty(),
        "emitted but not declared: {undeclared:?}; declared but not emitted: {missing:?}"
    );
}
