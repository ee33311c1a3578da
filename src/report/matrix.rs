//! A version matrix: one plan run on several PostgreSQL releases (`--pg-bin` given more than
//! once), merged into one report, and each variant's verdict and harm compared across them.
//!
//! Each scenario of a run on release R is a sweep point `postgres=R`, so the tables, JUnit and
//! failure lines name the version like any other swept parameter; [`Matrix`] is the summary
//! across versions that the table, Markdown and JSON add.

use serde::Serialize;

use super::{RunReport, ScenarioReport, VariantReport, fmt_metric, plain};

/// The swept parameter that names a run's PostgreSQL release.
pub const VERSION_KEY: &str = "postgres";

/// A cell's verdict where the interrupt came before the variant had one on that release.
const CUT_SHORT_VERDICT: &str = "cut short";

/// The runs of one plan, one per release in the order given, as one report: each scenario's
/// runs next to each other, so a scenario's versions read as one sweep.
pub fn merge(runs: Vec<(String, RunReport)>) -> RunReport {
    let locklab = runs
        .first()
        .map(|(_, r)| r.locklab.clone())
        .unwrap_or_default();
    let wall_ms = runs.iter().map(|(_, r)| r.wall_ms).sum();
    let interrupted = runs.iter().any(|(_, r)| r.interrupted);
    let mut columns: Vec<std::vec::IntoIter<ScenarioReport>> = Vec::new();
    for (release, report) in runs {
        let scenarios: Vec<ScenarioReport> = report
            .scenarios
            .into_iter()
            .map(|mut s| {
                s.swept.retain(|(k, _)| k != VERSION_KEY);
                s.swept.push((
                    VERSION_KEY.into(),
                    serde_json::Value::String(release.clone()),
                ));
                s
            })
            .collect();
        columns.push(scenarios.into_iter());
    }
    let mut scenarios = Vec::new();
    loop {
        let row: Vec<ScenarioReport> = columns.iter_mut().filter_map(Iterator::next).collect();
        if row.is_empty() {
            break;
        }
        scenarios.extend(row);
    }
    RunReport {
        locklab,
        scenarios,
        wall_ms,
        interrupted,
    }
}

/// The release a scenario report ran on, in a matrix.
pub fn release_of(s: &ScenarioReport) -> Option<String> {
    s.swept
        .iter()
        .find(|(k, _)| k == VERSION_KEY)
        .map(|(_, v)| plain(v))
}

/// A scenario's label without its release: what a matrix compares across releases.
pub fn point_of(s: &ScenarioReport) -> String {
    let rest: Vec<String> = s
        .swept
        .iter()
        .filter(|(k, _)| k != VERSION_KEY)
        .map(|(k, v)| format!("{k}={}", plain(v)))
        .collect();
    match rest.is_empty() {
        true => s.name.clone(),
        false => format!("{}[{}]", s.name, rest.join(" ")),
    }
}

/// Every variant's verdict and harm on each release.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Matrix {
    /// The releases, in the order they ran.
    pub versions: Vec<String>,
    pub variants: Vec<MatrixRow>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MatrixRow {
    /// The scenario, with its sweep point if any (never the release).
    pub scenario: String,
    pub variant: String,
    pub mitigated: bool,
    /// One cell per release in [`Matrix::versions`], `None` where the variant was not run there.
    pub by_version: Vec<Option<Cell>>,
    /// Releases that ran the variant disagree on its verdict.
    pub differs: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cell {
    /// `held`, `not reproduced`, `regressed`, `inconsistent`, `error`, `skipped` or
    /// `cut short` (by the interrupt: no verdict there).
    pub verdict: String,
    pub outcome: String,
    /// The scenario's harm metric, as measured.
    pub harm: serde_json::Value,
    /// The harm was measured only up to the cut-off: the true figure is at least this.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub harm_at_least: bool,
    /// Why it was skipped there, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl Cell {
    fn of(s: &ScenarioReport, v: &VariantReport) -> Cell {
        use super::Failure;
        let verdict = if v.cut_short() {
            CUT_SHORT_VERDICT
        } else if v.skipped.is_some() {
            "skipped"
        } else if v.error.is_some() {
            "error"
        } else if v.failure == Some(Failure::Inconsistent) {
            "inconsistent"
        } else if v.failure_kind().is_none() {
            "held"
        } else if v.mitigated {
            "regressed"
        } else {
            "not reproduced"
        };
        Cell {
            verdict: verdict.into(),
            outcome: v.outcome.clone(),
            harm: v
                .metrics
                .get(&s.harm.metric)
                .cloned()
                .unwrap_or(serde_json::Value::Null),
            harm_at_least: v.lower_bounds.contains(&s.harm.metric),
            skipped: v.skipped.clone().filter(|_| !v.cut_short()),
        }
    }

    /// The release gave this variant a verdict (it was neither skipped nor cut short).
    fn judged(&self) -> bool {
        self.verdict != "skipped" && self.verdict != CUT_SHORT_VERDICT
    }

    /// `held · 12.0 s`: the verdict and the harm, for a table cell.
    pub fn show(&self, harm_metric: &str) -> String {
        match self.verdict.as_str() {
            "skipped" => "skipped".into(),
            CUT_SHORT_VERDICT => CUT_SHORT_VERDICT.into(),
            "error" => "ERROR".into(),
            v => {
                let verdict = match v {
                    "held" => v.to_string(),
                    other => other.to_uppercase(),
                };
                let at_least = if self.harm_at_least { "≥ " } else { "" };
                format!(
                    "{verdict} · {at_least}{}",
                    fmt_metric(harm_metric, Some(&self.harm))
                )
            }
        }
    }
}

/// The matrix of a report whose scenarios ran on more than one release; `None` otherwise.
pub fn matrix(report: &RunReport) -> Option<Matrix> {
    let mut versions: Vec<String> = Vec::new();
    for r in report.scenarios.iter().filter_map(release_of) {
        if !versions.contains(&r) {
            versions.push(r);
        }
    }
    if versions.len() < 2 {
        return None;
    }
    let mut variants: Vec<MatrixRow> = Vec::new();
    for s in &report.scenarios {
        let Some(release) = release_of(s) else {
            continue;
        };
        let Some(col) = versions.iter().position(|r| *r == release) else {
            continue;
        };
        let scenario = point_of(s);
        for v in &s.variants {
            let at = match variants
                .iter()
                .position(|row| row.scenario == scenario && row.variant == v.name)
            {
                Some(i) => i,
                None => {
                    variants.push(MatrixRow {
                        scenario: scenario.clone(),
                        variant: v.name.clone(),
                        mitigated: v.mitigated,
                        by_version: vec![None; versions.len()],
                        differs: false,
                    });
                    variants.len() - 1
                }
            };
            variants[at].by_version[col] = Some(Cell::of(s, v));
        }
    }
    for row in &mut variants {
        let mut seen: Vec<&str> = row
            .by_version
            .iter()
            .flatten()
            .filter(|c| c.judged())
            .map(|c| c.verdict.as_str())
            .collect();
        seen.sort_unstable();
        seen.dedup();
        row.differs = seen.len() > 1;
    }
    Some(Matrix { versions, variants })
}

impl MatrixRow {
    /// The releases that ran this variant, grouped by what `key` reads off each one's cell
    /// (in the order first seen); cells for which it gives `None` are left out.
    fn on<'a, K: PartialEq + 'a>(
        &'a self,
        versions: &'a [String],
        key: impl Fn(&'a Cell) -> Option<K>,
    ) -> Vec<(K, Vec<&'a str>)> {
        let mut by: Vec<(K, Vec<&str>)> = Vec::new();
        for (c, v) in self.by_version.iter().zip(versions) {
            let Some(k) = c.as_ref().and_then(&key) else {
                continue;
            };
            match by.iter_mut().find(|(seen, _)| *seen == k) {
                Some((_, vs)) => vs.push(v),
                None => by.push((k, vec![v])),
            }
        }
        by
    }
}

impl Matrix {
    /// The harm metric of each scenario (by its label without the release), for cells.
    fn harm_metric<'a>(report: &'a RunReport, scenario: &str) -> &'a str {
        report
            .scenarios
            .iter()
            .find(|s| point_of(s) == scenario)
            .map_or("", |s| s.harm.metric.as_str())
    }

    /// The side-by-side table: headers, then a row per variant (the scenario named on its
    /// first row only), `≠` before a variant whose verdict differs between releases.
    pub fn table(&self, report: &RunReport) -> (Vec<String>, Vec<Vec<String>>) {
        let mut headers = vec!["scenario".to_string(), "variant".into()];
        headers.extend(self.versions.iter().map(|v| format!("PostgreSQL {v}")));
        let mut rows = Vec::new();
        let mut last = "";
        for row in &self.variants {
            let metric = Self::harm_metric(report, &row.scenario);
            let mut cells = vec![
                match last == row.scenario {
                    true => String::new(),
                    false => row.scenario.clone(),
                },
                format!(
                    "{}{}{}",
                    if row.differs { "≠ " } else { "" },
                    row.variant,
                    if row.mitigated { " *" } else { "" }
                ),
            ];
            cells.extend(row.by_version.iter().map(|c| match c {
                Some(c) => c.show(metric),
                None => "—".into(),
            }));
            last = &row.scenario;
            rows.push(cells);
        }
        (headers, rows)
    }

    /// What the comparison found, for people: which verdicts differ, and which variants ran
    /// on some releases only (and why not on the others).
    pub fn findings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let differ: Vec<&MatrixRow> = self.variants.iter().filter(|r| r.differs).collect();
        match differ.is_empty() {
            true => out.push(format!(
                "versions compared: {}: every verdict is the same on each release that ran it",
                self.versions.join(", ")
            )),
            false => out.push(format!(
                "versions compared: {}: {} verdict(s) differ between releases (≠)",
                self.versions.join(", "),
                differ.len()
            )),
        }
        let cut: usize = self
            .variants
            .iter()
            .map(|r| {
                r.on(&self.versions, |c| {
                    (c.verdict == CUT_SHORT_VERDICT).then_some(())
                })
            })
            .map(|by| by.first().map_or(0, |(_, vs)| vs.len()))
            .sum();
        if cut > 0 {
            out.push(format!(
                "{cut} variant run(s) cut short by the interrupt: no verdict there to compare"
            ));
        }
        for row in &differ {
            let ran = row.on(&self.versions, |c| c.judged().then_some(&c.verdict));
            let parts: Vec<String> = ran
                .iter()
                .map(|(verdict, vs)| format!("{verdict} on {}", vs.join(", ")))
                .collect();
            out.push(format!(
                "≠ {}/{}: {}",
                row.scenario,
                row.variant,
                parts.join("; ")
            ));
        }
        for row in &self.variants {
            let skipped = row.on(&self.versions, |c| c.skipped.as_ref());
            let ran = row.on(&self.versions, |c| c.judged().then_some(()));
            let [(_, ran)] = ran.as_slice() else {
                continue;
            };
            if skipped.is_empty() {
                continue;
            }
            let why: Vec<String> = skipped
                .iter()
                .map(|(why, vs)| format!("skipped on {} ({why})", vs.join(", ")))
                .collect();
            out.push(format!(
                "{}/{} ran on {} only; {}",
                row.scenario,
                row.variant,
                ran.join(", "),
                why.join("; ")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{CUT_SHORT, fixtures};

    fn on(release: &str, f: impl Fn(&mut RunReport)) -> (String, RunReport) {
        let mut r = fixtures::report();
        f(&mut r);
        (release.to_string(), r)
    }

    #[test]
    fn merge_puts_each_scenarios_releases_next_to_each_other() {
        let merged = merge(vec![
            on("15.18", |r| {
                let mut second = r.scenarios[0].clone();
                second.name = "other".into();
                r.scenarios.push(second);
            }),
            on("18.1", |r| {
                let mut second = r.scenarios[0].clone();
                second.name = "other".into();
                r.scenarios.push(second);
            }),
        ]);
        let labels: Vec<String> = merged.scenarios.iter().map(|s| s.label()).collect();
        assert_eq!(
            labels,
            [
                "orphan-lock[postgres=15.18]",
                "orphan-lock[postgres=18.1]",
                "other[postgres=15.18]",
                "other[postgres=18.1]"
            ]
        );
        // One sweep section per scenario: its releases read as points.
        assert_eq!(crate::report::sections(&merged).len(), 2);
    }

    #[test]
    fn a_verdict_that_differs_between_releases_is_marked_and_named() {
        let merged = merge(vec![
            on("15.18", |_| {}),
            on("17.10", |r| {
                let v = &mut r.scenarios[0].variants[0];
                v.expectations_held = false;
                v.failure = Some(crate::report::Failure::BaselineNoLongerReproduces);
            }),
        ]);
        let m = matrix(&merged).unwrap();
        assert_eq!(m.versions, ["15.18", "17.10"]);
        let first = &m.variants[0];
        assert!(first.differs);
        assert_eq!(first.by_version[0].as_ref().unwrap().verdict, "held");
        assert_eq!(
            first.by_version[1].as_ref().unwrap().verdict,
            "not reproduced"
        );
        assert!(m.variants[1..].iter().all(|r| !r.differs));
        let findings = m.findings();
        assert!(findings[0].contains("1 verdict(s) differ"), "{findings:?}");
        assert!(
            findings[1].contains("held on 15.18; not reproduced on 17.10"),
            "{findings:?}"
        );
        let (headers, rows) = m.table(&merged);
        assert_eq!(headers[2], "PostgreSQL 15.18");
        assert!(rows[0][1].starts_with("≠ "), "{rows:?}");
        assert!(rows[0][3].starts_with("NOT REPRODUCED · "), "{rows:?}");
        // The scenario is named on its first row only.
        assert_eq!(rows[1][0], "");
    }

    #[test]
    fn a_variant_skipped_on_an_older_release_is_not_a_difference_but_is_said() {
        let merged = merge(vec![
            on("15.18", |r| {
                let v = &mut r.scenarios[0].variants[1];
                *v = VariantReport::skipped(
                    &v.name,
                    v.mitigated,
                    &v.shows,
                    "needs PostgreSQL 17".into(),
                );
            }),
            on("18.1", |_| {}),
        ]);
        let m = matrix(&merged).unwrap();
        assert!(m.variants.iter().all(|r| !r.differs));
        let findings = m.findings();
        assert!(
            findings[0].contains("every verdict is the same"),
            "{findings:?}"
        );
        assert!(
            findings
                .iter()
                .any(|f| f.contains("ran on 18.1 only; skipped on 15.18 (needs PostgreSQL 17)")),
            "{findings:?}"
        );
    }

    #[test]
    fn a_variant_cut_short_on_one_release_is_no_verdict_and_no_skip() {
        let merged = merge(vec![
            on("15.18", |_| {}),
            on("18.1", |r| {
                let v = &mut r.scenarios[0].variants[1];
                *v = VariantReport::skipped(&v.name, v.mitigated, &v.shows, CUT_SHORT.into());
                // Held on 15.18 but no verdict on 18.1: not a difference.
                r.scenarios[0].variants[0].expectations_held = false;
                r.scenarios[0].variants[0].failure =
                    Some(crate::report::Failure::BaselineNoLongerReproduces);
            }),
        ]);
        let m = matrix(&merged).unwrap();
        let cell = m.variants[1].by_version[1].as_ref().unwrap();
        assert_eq!(cell.verdict, "cut short");
        assert_eq!(cell.skipped, None);
        assert!(!m.variants[1].differs);
        assert!(m.variants[0].differs, "a real difference is still one");
        let findings = m.findings();
        assert!(
            findings
                .iter()
                .any(|f| f.starts_with("1 variant run(s) cut short")),
            "{findings:?}"
        );
        assert!(
            !findings
                .iter()
                .any(|f| f.contains("ran on") || f.contains("skipped on")),
            "{findings:?}"
        );
    }

    #[test]
    fn skips_for_different_reasons_are_each_named_with_their_releases() {
        let skip = |why: &'static str| {
            move |r: &mut RunReport| {
                let v = &mut r.scenarios[0].variants[1];
                *v = VariantReport::skipped(&v.name, v.mitigated, &v.shows, why.into());
            }
        };
        let merged = merge(vec![
            on("14.23", skip("needs 17")),
            on("15.18", skip("needs 17")),
            on("16.14", skip("needs a pooler")),
            on("18.1", |_| {}),
        ]);
        let findings = matrix(&merged).unwrap().findings();
        assert!(
            findings.iter().any(|f| f.ends_with(
                "ran on 18.1 only; skipped on 14.23, 15.18 (needs 17); skipped on 16.14 (needs a pooler)"
            )),
            "{findings:?}"
        );
    }

    #[test]
    fn one_release_is_no_matrix() {
        assert!(matrix(&fixtures::report()).is_none());
        assert!(matrix(&merge(vec![on("15.18", |_| {})])).is_none());
    }
}
