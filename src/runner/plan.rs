//! What a run will do, decided once before any server starts: every variant that runs, with its
//! parameters resolved, its scenario's typed configuration, its load on the machine and how long
//! it is expected to take. The budget, the headers, the queue and the lanes all read this plan;
//! nothing goes back to the scenario files for it.

use std::time::Duration;

use crate::error::UsageError;
use crate::scenario::spec::Variant;
use crate::scenario::{Cpu, Prepared, ResolvedVariant, Scenario};
use crate::text::nearest;

use super::RunOptions;

/// One variant as it will run.
pub(super) struct VariantPlan {
    pub resolved: ResolvedVariant,
    /// The scenario's configuration for it, parsed and checked.
    pub code: Box<dyn Prepared>,
    /// How long a run of it takes: learnt from the last results file where it was there, else
    /// its cut-off.
    pub estimate: Duration,
}

/// Every scenario's variants, in scenario and variant order; `None` for a variant that does
/// not run (opt-in, or not named with --variant).
pub(super) struct Plans {
    pub rows: Vec<Vec<Option<VariantPlan>>>,
    /// Each run's weight and kind of CPU use, by scenario and variant, for the queue.
    pub loads: Vec<Vec<(usize, Cpu)>>,
}

/// Sessions the runner itself may have open beside a variant's (reading settings, ending
/// sessions, the variant's teardown).
const HARNESS_SESSIONS: usize = 1;

impl Plans {
    /// Checks the options and resolves every variant that runs. A bad value or combination is
    /// a usage error here, never a failure mid-run. Only variants that will run: a relation one
    /// of them breaks is no reason to refuse the others.
    pub fn new(
        opts: &RunOptions,
        learnt: &dyn Fn(&str, &str) -> Option<Duration>,
    ) -> anyhow::Result<Plans> {
        check_variant_filter(opts)?;
        let mut rows = Vec::new();
        for s in &opts.scenarios {
            let mut row = Vec::new();
            for v in &s.variants {
                if !wanted(opts, v) {
                    row.push(None);
                    continue;
                }
                let resolved = s.resolve(v, opts.scale_for(s));
                let code = (s.kind.prepare)(s.kind, &resolved.params).map_err(|mut e| {
                    // A value the variant sets itself changes only as `VARIANT.NAME=`.
                    for k in v.params.keys() {
                        e.0 = e.0.replace(
                            &format!("--param {k}="),
                            &format!("--param {}.{k}=", v.name),
                        );
                    }
                    anyhow::Error::from(e).context(format!("{}/{}", s.name, v.name))
                })?;
                let estimate = learnt(&s.name, &v.name)
                    .or_else(|| code.estimate())
                    .unwrap_or_else(|| cut_off(&resolved));
                row.push(Some(VariantPlan {
                    resolved,
                    code,
                    estimate,
                }));
            }
            rows.push(row);
        }
        let loads = rows
            .iter()
            .map(|row| {
                row.iter()
                    .map(|p| {
                        p.as_ref()
                            .map_or((1, Cpu::Timed), |p| (p.code.weight().max(1), p.code.cpu()))
                    })
                    .collect()
            })
            .collect();
        Ok(Plans { rows, loads })
    }

    pub fn get(&self, si: usize, vi: usize) -> Option<&VariantPlan> {
        self.rows.get(si)?.get(vi)?.as_ref()
    }

    /// The variants of scenario `si` that run.
    pub fn of(&self, si: usize) -> impl Iterator<Item = &VariantPlan> {
        self.rows.get(si).into_iter().flatten().flatten()
    }

    /// Whether any variant that runs goes through a pooler of its own.
    pub fn need_pooler(&self) -> bool {
        self.rows
            .iter()
            .flatten()
            .flatten()
            .any(|p| p.resolved.through_pooler)
    }

    /// The most sessions any one variant needs (variants of one lane run one after another),
    /// and whose.
    pub fn budget(&self, scenarios: &[Scenario]) -> Option<crate::env::Budget> {
        scenarios
            .iter()
            .zip(&self.rows)
            .flat_map(|(s, row)| row.iter().flatten().map(move |p| (s, p.code.sessions())))
            .max_by_key(|(_, n)| *n)
            .map(|(s, n)| crate::env::Budget {
                sessions: n + HARNESS_SESSIONS,
                scenario: s.name.clone(),
                sized_by: s.kind.sized_by.to_string(),
            })
    }
}

/// A variant's cut-off, the estimate of a run nothing was learnt of.
fn cut_off(v: &ResolvedVariant) -> Duration {
    v.params
        .duration("deadline")
        .unwrap_or(Duration::from_secs(30))
}

fn check_variant_filter(opts: &RunOptions) -> Result<(), UsageError> {
    for wanted in &opts.variants {
        // Each name once: a sweep's copies, and scenarios sharing a variant's name, list it
        // once.
        let mut all: Vec<&str> = Vec::new();
        for name in opts
            .scenarios
            .iter()
            .flat_map(|s| s.variants.iter().map(|v| v.name.as_str()))
        {
            if !all.contains(&name) {
                all.push(name);
            }
        }
        if !all.contains(&wanted.as_str()) {
            let hint = nearest(wanted, all.iter().copied())
                .map(|n| format!("; did you mean `{n}`?"))
                .unwrap_or_default();
            return Err(UsageError(format!(
                "no variant `{wanted}`{hint} (variants: {})",
                all.join(", ")
            )));
        }
    }
    if !(opts.time_scale > 0.0 && opts.time_scale.is_finite()) {
        return Err(UsageError(format!(
            "--time-scale must be a positive number, not {}",
            opts.time_scale
        )));
    }
    Ok(())
}

/// Whether a variant runs: all but the opt-in ones, or exactly those named with --variant.
fn wanted(opts: &RunOptions, variant: &Variant) -> bool {
    match opts.variants.is_empty() {
        true => !variant.opt_in,
        false => opts.variants.contains(&variant.name),
    }
}
