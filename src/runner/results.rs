//! What a run leaves: one report per variant from its repeated runs, and the results file,
//! rewritten as variants finish so a killed run still leaves its verdicts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;

use crate::report::{Failure, RepeatRun, RunReport, VariantReport};

/// One report for all runs of a variant: the first failing run's figures (else the first run's),
/// how many runs held, and why the variant fails the run, if it does.
pub(super) fn aggregate(mut runs: Vec<VariantReport>, mitigated: bool) -> VariantReport {
    // Runs an interrupt cut short have no verdict to add; alone, they say so.
    if runs.iter().all(|r| r.skipped.is_some())
        && let Some(first) = runs.first()
    {
        return first.clone();
    }
    runs.retain(|r| r.skipped.is_none());
    let n = runs.len() as u32;
    let held = runs.iter().filter(|r| r.expectations_held).count() as u32;
    let harness_error = runs.iter().any(|r| r.error.is_some());
    let mut outcomes = BTreeMap::new();
    for r in &runs {
        *outcomes.entry(r.outcome.clone()).or_insert(0) += 1;
    }
    let repeats = match n {
        0 | 1 => Vec::new(),
        _ => runs
            .iter()
            .map(|r| RepeatRun {
                outcome: r.outcome.clone(),
                expectations_held: r.expectations_held,
                failed: r
                    .expectations
                    .iter()
                    .filter(|e| !e.held)
                    .map(|e| format!("{}: {}", e.what, e.measured))
                    .collect(),
                metrics: r.metrics.clone(),
                wall_ms: r.wall_ms,
                error: r.error.clone(),
            })
            .collect(),
    };
    let wall_ms = runs.iter().map(|r| r.wall_ms).sum();
    // `runs` is never empty (the caller runs a variant at least once), so `pick` is in range.
    let pick = runs
        .iter()
        .position(|r| !r.expectations_held || r.error.is_some())
        .unwrap_or(0);
    let mut chosen = runs.swap_remove(pick);
    chosen.runs = n;
    chosen.runs_held = held;
    chosen.outcomes = outcomes;
    chosen.repeats = repeats;
    chosen.wall_ms = wall_ms;
    chosen.failure = Failure::classify(mitigated, n, held, harness_error);
    chosen
}

pub(super) fn results_path(dir: &Path, scenarios: &[crate::scenario::Scenario]) -> PathBuf {
    let stamp = humantime::format_rfc3339_millis(SystemTime::now())
        .to_string()
        .replace(':', "-");
    let mut names: Vec<&str> = scenarios.iter().map(|s| s.name.as_str()).collect();
    // A sweep runs one scenario at many points: name it once.
    names.dedup();
    let swept = scenarios.iter().any(|s| !s.swept.is_empty());
    let mut name = names.join("+");
    if swept {
        name.push_str("-sweep");
    }
    if name.len() > 60 {
        name = format!("{}-scenarios", names.len());
    }
    dir.join(format!("{stamp}-{name}.json"))
}

pub(super) fn write_results(path: &Path, report: &RunReport) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
    }
    // Write then rename, so a reader (or a crash) never sees half a file.
    // Compact: with the runs' traces the document runs to megabytes, 2.5 times more pretty.
    let tmp = path.with_extension("json.partial");
    let text = serde_json::to_vec(report).context("could not serialise the results")?;
    std::fs::write(&tmp, text).with_context(|| format!("could not write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("could not write {}", path.display()))
}

/// How long each variant's runs took in the newest results file under `dir` that ran at this
/// time scale: the queue's estimate, better than a cut-off (a variant that ends as soon as its
/// timeout fires takes a fraction of it). Empty where there is none or it cannot be read.
pub(super) fn learnt(dir: &Path, time_scale: f64) -> BTreeMap<(String, String), Duration> {
    #[derive(serde::Deserialize)]
    struct File {
        scenarios: Vec<Scenario>,
    }
    #[derive(serde::Deserialize)]
    struct Scenario {
        name: String,
        time_scale: f64,
        variants: Vec<Variant>,
    }
    #[derive(serde::Deserialize)]
    struct Variant {
        name: String,
        wall_ms: u64,
        runs: u32,
        #[serde(default)]
        skipped: Option<String>,
    }
    let newest = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max();
    let Some(file) = newest
        .and_then(|(_, p)| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice::<File>(&b).ok())
    else {
        return BTreeMap::new();
    };
    file.scenarios
        .into_iter()
        .filter(|s| s.time_scale == time_scale)
        .flat_map(|s| {
            s.variants
                .into_iter()
                .filter(|v| v.skipped.is_none() && v.runs > 0)
                .map(move |v| {
                    let each = Duration::from_millis(v.wall_ms / u64::from(v.runs));
                    ((s.name.clone(), v.name), each)
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::CUT_SHORT;

    #[test]
    fn a_run_an_interrupt_cut_short_adds_no_verdict() {
        let report = crate::report::fixtures::report();
        let done = report.scenarios[0].variants[0].clone();
        let cut = VariantReport::skipped(&done.name, done.mitigated, "", CUT_SHORT.into());
        let v = aggregate(vec![done.clone(), cut.clone()], done.mitigated);
        assert_eq!((v.runs, v.skipped.as_deref()), (1, None), "{v:#?}");
        assert_eq!(v.failure_kind(), done.failure_kind());
        let v = aggregate(vec![cut], done.mitigated);
        assert_eq!(v.skipped.as_deref(), Some(CUT_SHORT));
        assert_eq!(v.failure_kind(), None, "no verdict, so no failure");
    }
}
