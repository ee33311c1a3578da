//! The result of a run as plain serde data, and the exporters that only read it.

pub mod html;
pub mod json;
pub mod junit;
pub mod markdown;
pub mod matrix;
pub mod recheck;
pub mod table;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::check::expect::{ExpectationResult, Verdict};

/// One run of locklab: the stable JSON contract later scenarios reuse.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub locklab: String,
    pub scenarios: Vec<ScenarioReport>,
    /// Wall time of the whole run.
    pub wall_ms: u64,
    /// Ctrl-C or SIGTERM stopped the run: what is here was measured before that.
    #[serde(default)]
    pub interrupted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub name: String,
    pub summary: String,
    /// `built-in orphan-lock.toml` or the user's file.
    pub source: String,
    /// Where it ran: `throwaway` or the user's server (password hidden).
    pub target: String,
    pub time_scale: f64,
    pub params: BTreeMap<String, serde_json::Value>,
    pub harm: Harm,
    /// Further metric columns of the table.
    #[serde(default)]
    pub columns: Vec<Harm>,
    /// The `--sweep` point this run is: parameter and value as given, in the order swept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub swept: Vec<(String, serde_json::Value)>,
    pub variants: Vec<VariantReport>,
}

impl ScenarioReport {
    /// `begin-on-pool` or, for a sweep point, `begin-on-pool[pool_size=4 bookers=20]`: the
    /// name failures and JUnit use, so the point where a verdict changes is named.
    pub fn label(&self) -> String {
        match self.swept.is_empty() {
            true => self.name.clone(),
            false => format!(
                "{}[{}]",
                self.name,
                self.swept
                    .iter()
                    .map(|(k, v)| format!("{k}={}", plain(v)))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        }
    }

    /// Variants ran more than once (`--repeat`): the table shows how many runs held.
    pub fn repeated(&self) -> bool {
        self.variants.iter().any(|v| v.runs > 1)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Harm {
    pub metric: String,
    pub label: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VariantReport {
    pub name: String,
    pub mitigated: bool,
    pub shows: String,
    /// Session settings the variant applied (never server settings).
    pub settings: BTreeMap<String, String>,
    pub outcome: String,
    pub expectations: Vec<ExpectationResult>,
    pub expectations_held: bool,
    pub metrics: BTreeMap<String, serde_json::Value>,
    /// Metrics measured only up to a cut-off: the true figure is at least this (shown as `≥`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lower_bounds: Vec<String>,
    pub requests: Requests,
    /// Harness trouble that did not stop the variant (e.g. a client task that panicked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub wall_ms: u64,
    /// The harness failed for this variant: no verdict could be reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How often the variant ran (`--repeat`), and in how many runs every expectation held.
    /// The fields above are those of the first run that failed, else of the first run.
    #[serde(default = "one")]
    pub runs: u32,
    #[serde(default)]
    pub runs_held: u32,
    /// Outcomes over all runs, counted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outcomes: BTreeMap<String, u32>,
    /// Every run, in order, when there was more than one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repeats: Vec<RepeatRun>,
    /// Why this variant fails the run, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Server settings as a session of this variant saw them (e.g. the as-configured variant).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub server_settings: BTreeMap<String, String>,
    /// Why the variant has no verdict: it did not run in this environment (it needs a pooler
    /// the run lacks, say), or an interrupt cut its run short. Not a failure: no verdict was
    /// asked of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// What happened in the run these figures are from: its history, gauges and events, and
    /// what its checker was given, to re-derive the verdict and to draw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::trace::Trace>,
}

/// Why a run in flight at Ctrl-C has no verdict (it reads as a skip, with this reason).
pub const CUT_SHORT: &str = "cut short by the interrupt: no verdict";

impl VariantReport {
    /// The interrupt came before this variant had a verdict.
    pub fn cut_short(&self) -> bool {
        self.skipped.as_deref() == Some(CUT_SHORT)
    }

    /// A variant this environment cannot run, and why.
    pub fn skipped(name: &str, mitigated: bool, shows: &str, why: String) -> VariantReport {
        VariantReport {
            name: name.into(),
            mitigated,
            shows: shows.into(),
            settings: BTreeMap::new(),
            outcome: "skipped".into(),
            expectations: Vec::new(),
            expectations_held: true,
            metrics: BTreeMap::new(),
            lower_bounds: Vec::new(),
            requests: Requests::default(),
            warnings: Vec::new(),
            wall_ms: 0,
            error: None,
            runs: 0,
            runs_held: 0,
            outcomes: BTreeMap::new(),
            repeats: Vec::new(),
            failure: None,
            server_settings: BTreeMap::new(),
            skipped: Some(why),
            trace: None,
        }
    }

    /// Why this variant fails the run, if it does: the recorded kind, or for a results file
    /// written without one, the kind its single verdict calls for.
    pub fn failure_kind(&self) -> Option<Failure> {
        self.failure.or_else(|| {
            (!self.expectations_held || self.error.is_some())
                .then(|| Failure::classify(self.mitigated, 1, 0, self.error.is_some()))
                .flatten()
        })
    }

    /// Why this variant fails the run, one line per reason; empty when it does not.
    pub fn failure_lines(&self, scenario: &str) -> Vec<String> {
        let Some(kind) = self.failure_kind() else {
            return Vec::new();
        };
        let at = format!("{} {scenario}/{}", kind.headline(), self.name);
        if let Some(e) = &self.error {
            return vec![format!("{at}: {e}")];
        }
        let mut out = Vec::new();
        if kind == Failure::Inconsistent {
            out.push(format!(
                "{at}: every expectation held in {} of {} runs",
                self.runs_held, self.runs
            ));
        }
        for e in self
            .expectations
            .iter()
            .filter(|e| e.verdict != Verdict::Held)
        {
            let verdict = match e.verdict {
                Verdict::Unknown => "could not be decided",
                _ => "did not hold",
            };
            out.push(format!("{at}: `{}` {verdict}: {}", e.what, e.measured));
        }
        out
    }
}

fn one() -> u32 {
    1
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One run of a repeated variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepeatRun {
    pub outcome: String,
    pub expectations_held: bool,
    /// The expectations that did not hold, with the measured figure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
    pub metrics: BTreeMap<String, serde_json::Value>,
    pub wall_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The ways a variant fails a run, named apart because they call for different actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Failure {
    /// A mitigated variant's expectation did not hold: the protection stopped working.
    MitigationRegressed,
    /// A variant that demonstrates a failure did not show it: the lab lost its teeth
    /// (e.g. the server's defaults now mitigate it).
    BaselineNoLongerReproduces,
    /// Repeated runs disagreed: a lab whose verdicts flip is not a regression test.
    Inconsistent,
    /// locklab itself could not run the variant: no verdict.
    HarnessError,
}

impl Failure {
    /// Decides from the runs' verdicts. `None`: every run held.
    pub fn classify(
        mitigated: bool,
        runs: u32,
        runs_held: u32,
        harness_error: bool,
    ) -> Option<Failure> {
        if harness_error {
            Some(Failure::HarnessError)
        } else if runs_held == runs {
            None
        } else if runs_held > 0 {
            Some(Failure::Inconsistent)
        } else if mitigated {
            Some(Failure::MitigationRegressed)
        } else {
            Some(Failure::BaselineNoLongerReproduces)
        }
    }

    pub fn headline(self) -> &'static str {
        match self {
            Failure::MitigationRegressed => "MITIGATION REGRESSED",
            Failure::BaselineNoLongerReproduces => "BASELINE NO LONGER REPRODUCES",
            Failure::Inconsistent => "INCONSISTENT",
            Failure::HarnessError => "HARNESS ERROR",
        }
    }
}

/// What the simulated clients got, from the history.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Requests {
    pub ok: usize,
    pub failed: usize,
    /// In flight at the cut-off: outcome unknown.
    pub stuck: usize,
    /// In flight in a client task that died: outcome unknown (a harness warning says why).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost: usize,
    /// Failures by class (SQLSTATE where the server gave one).
    pub errors: BTreeMap<String, u64>,
}

impl Requests {
    /// The most frequent failure class, named for people: `55P03 lock_timeout`.
    pub fn main_error(&self) -> Option<String> {
        self.errors
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(class, _)| describe_error(class))
    }
}

/// Short names for the SQLSTATEs the scenarios provoke.
pub fn describe_error(class: &str) -> String {
    use crate::history::class::*;
    let name = match class {
        LOCK_TIMEOUT => "lock timeout",
        STATEMENT_TIMEOUT => "statement timeout",
        DEADLOCK => "deadlock",
        SERIALIZATION => "serialization",
        UNIQUE_VIOLATION => "unique violation",
        IDLE_IN_TRANSACTION_TIMEOUT => "idle-in-transaction timeout",
        TERMINATED => "terminated",
        TOO_MANY_CONNECTIONS => "too many connections",
        "26000" => "no such prepared statement",
        "42P05" => "prepared statement exists",
        "08P01" => "refused by the pooler",
        _ => return class.to_string(),
    };
    format!("{class} {name}")
}

impl RunReport {
    pub fn all_held(&self) -> bool {
        self.scenarios
            .iter()
            .flat_map(|s| &s.variants)
            .all(|v| v.failure_kind().is_none())
    }

    /// Every variant that fails the run, each with why, as lines for people:
    /// `MITIGATION REGRESSED orphan-lock/mitigated: `not cut_off` did not hold: was true`.
    pub fn failures(&self) -> Vec<String> {
        self.scenarios
            .iter()
            .flat_map(|s| {
                s.variants
                    .iter()
                    .flat_map(move |v| v.failure_lines(&s.label()))
            })
            .collect()
    }

    pub fn harness_failed(&self) -> bool {
        self.scenarios
            .iter()
            .flat_map(|s| &s.variants)
            .any(|v| v.error.is_some())
    }

    /// The exit code this report calls for.
    pub fn exit_code(&self) -> i32 {
        use crate::error::exit;
        if self.interrupted {
            exit::INTERRUPTED
        } else if self.harness_failed() {
            exit::ENVIRONMENT
        } else if !self.all_held() {
            exit::EXPECTATION_FAILED
        } else {
            exit::OK
        }
    }
}

/// A JSON value as a person writes it: `10`, `freeze`, `1s`.
pub fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Lines printed under a scenario's table: harness warnings, then
/// `as-configured: the server reports idle_in_transaction_session_timeout=0, ...` for every
/// variant that read server settings.
pub fn notes(s: &ScenarioReport) -> Vec<String> {
    let warnings = s.variants.iter().flat_map(|v| {
        v.warnings
            .iter()
            .map(move |w| format!("warning: {}/{}: {w}", s.label(), v.name))
    });
    let settings = s
        .variants
        .iter()
        .filter(|v| !v.server_settings.is_empty())
        .map(|v| {
            let kv: Vec<String> = v
                .server_settings
                .iter()
                .map(|(k, val)| format!("{k}={val}"))
                .collect();
            format!("{}: the server reports {}", v.name, kv.join(", "))
        });
    warnings.chain(settings).collect()
}

/// An output format.
pub trait Exporter {
    fn render(&self, report: &RunReport) -> String;
}

/// `1.00 s`, `35 ms`, `—`: how a millisecond metric reads in a table.
pub fn fmt_ms(v: Option<&serde_json::Value>) -> String {
    match v.and_then(serde_json::Value::as_f64) {
        None => "—".into(),
        // The thresholds are where the rounding of the shorter form would carry over
        // (999.7 ms is "1.00 s", never "1000 ms").
        Some(ms) if ms >= 999.5 => format!("{:.2} s", ms / 1000.0),
        Some(ms) if ms >= 9.95 => format!("{ms:.0} ms"),
        Some(ms) => format!("{ms:.1} ms"),
    }
}

/// A metric as a table cell: milliseconds for `*_ms`, else the number or yes/no.
pub fn fmt_metric(name: &str, v: Option<&serde_json::Value>) -> String {
    if name.ends_with("_ms") {
        return fmt_ms(v);
    }
    match v {
        None | Some(serde_json::Value::Null) => "—".into(),
        Some(serde_json::Value::Bool(b)) => if *b { "yes" } else { "no" }.into(),
        Some(serde_json::Value::Number(n)) => match n.as_i64() {
            Some(i) => i.to_string(),
            None => format!("{:.1}", n.as_f64().unwrap_or(0.0)),
        },
        Some(other) => other.to_string(),
    }
}

/// Where a sweep's points ran: one target, or each distinct one (a version matrix's releases).
pub fn targets(points: &[&ScenarioReport]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for p in points {
        if !seen.contains(&p.target.as_str()) {
            seen.push(&p.target);
        }
    }
    seen.join(", ")
}

/// What an exporter prints, in order: a scenario's table, or a sweep's tables (consecutive
/// points of one scenario).
pub enum Section<'a> {
    Scenario(&'a ScenarioReport),
    Sweep(Vec<&'a ScenarioReport>),
}

pub fn sections(report: &RunReport) -> Vec<Section<'_>> {
    let mut out: Vec<Section> = Vec::new();
    for s in &report.scenarios {
        match out.last_mut() {
            Some(Section::Sweep(points))
                if !s.swept.is_empty() && points.first().is_some_and(|p| p.name == s.name) =>
            {
                points.push(s)
            }
            _ if !s.swept.is_empty() => out.push(Section::Sweep(vec![s])),
            _ => out.push(Section::Scenario(s)),
        }
    }
    out
}

/// One variant across a sweep's points: the swept values, then what the variant's row shows.
pub struct SweepTable {
    pub variant: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// A sweep's tables, one per variant, rows in the order the points ran.
pub fn sweep_tables(points: &[&ScenarioReport]) -> Vec<SweepTable> {
    let Some(first) = points.first() else {
        return Vec::new();
    };
    let mut headers: Vec<String> = first.swept.iter().map(|(k, _)| k.clone()).collect();
    headers.extend([
        "outcome".to_string(),
        "requests".into(),
        first.harm.label.clone(),
    ]);
    headers.extend(first.columns.iter().map(|c| c.label.clone()));
    if points.iter().any(|p| p.repeated()) {
        headers.push("held in".into());
    }
    headers.push("expectations".into());
    // Every variant any point ran (`--variant` may differ from point to point in a file).
    let mut variants: Vec<(&ScenarioReport, &VariantReport)> = Vec::new();
    for p in points {
        for v in &p.variants {
            if !variants.iter().any(|(_, x)| x.name == v.name) {
                variants.push((p, v));
            }
        }
    }
    variants
        .into_iter()
        .map(|(at, v)| {
            let rows = points
                .iter()
                .filter_map(|p| {
                    let pv = p.variants.iter().find(|x| x.name == v.name)?;
                    let row = Row::of(p, pv);
                    let mut cells: Vec<String> = p.swept.iter().map(|(_, x)| plain(x)).collect();
                    cells.extend([row.outcome, row.requests, row.harm]);
                    cells.extend(row.extra);
                    cells.extend(row.runs);
                    cells.push(row.verdict);
                    Some(cells)
                })
                .collect();
            SweepTable {
                variant: Row::of(at, v).variant,
                headers: headers.clone(),
                rows,
            }
        })
        .collect()
}

/// The cells every exporter shows for a variant, so table and Markdown agree.
pub struct Row {
    pub variant: String,
    pub outcome: String,
    pub requests: String,
    pub p50: String,
    pub p99: String,
    pub harm: String,
    pub extra: Vec<String>,
    /// `10/10`: runs in which every expectation held (shown with --repeat).
    pub runs: Option<String>,
    pub verdict: String,
}

impl Row {
    pub fn of(s: &ScenarioReport, v: &VariantReport) -> Row {
        let r = &v.requests;
        let mut requests = format!("{} ok / {} failed", r.ok, r.failed);
        if r.stuck > 0 {
            requests.push_str(&format!(" / {} stuck", r.stuck));
        }
        if r.lost > 0 {
            requests.push_str(&format!(" / {} lost", r.lost));
        }
        if let Some(e) = r.main_error() {
            requests.push_str(&format!(" ({e})"));
        }
        let cell = |metric: &str| {
            let figure = fmt_metric(metric, v.metrics.get(metric));
            match v.lower_bounds.iter().any(|m| m == metric) {
                true => format!("≥ {figure}"),
                false => figure,
            }
        };
        let harm = cell(&s.harm.metric);
        let extra = s.columns.iter().map(|c| cell(&c.metric)).collect();
        if let Some(why) = &v.skipped {
            return Row {
                variant: v.name.clone() + if v.mitigated { " *" } else { "" },
                outcome: v.outcome.clone(),
                requests: "—".into(),
                p50: "—".into(),
                p99: "—".into(),
                harm: "—".into(),
                extra: s.columns.iter().map(|_| "—".into()).collect(),
                runs: s.repeated().then(|| "—".into()),
                verdict: format!("skipped: {why}"),
            };
        }
        let verdict = if let Some(e) = &v.error {
            format!("ERROR: {e}")
        } else if v.failure == Some(Failure::Inconsistent) {
            format!("INCONSISTENT: held in {} of {} runs", v.runs_held, v.runs)
        } else if v.expectations_held {
            format!("held ({})", v.expectations.len())
        } else {
            let bad: Vec<String> = v
                .expectations
                .iter()
                .filter(|e| e.verdict != Verdict::Held)
                .map(|e| format!("{}: {}", e.what, e.measured))
                .collect();
            let kind = match v.mitigated {
                true => "REGRESSED",
                false => "NOT REPRODUCED",
            };
            format!("{kind}: {}", bad.join("; "))
        };
        Row {
            variant: if v.mitigated {
                format!("{} *", v.name)
            } else {
                v.name.clone()
            },
            outcome: v.outcome.clone(),
            requests,
            p50: fmt_ms(v.metrics.get("p50_ms")),
            p99: fmt_ms(v.metrics.get("p99_ms")),
            harm,
            extra,
            runs: s.repeated().then(|| format!("{}/{}", v.runs_held, v.runs)),
            verdict,
        }
    }

    /// The columns of a scenario's table, each with its header, in display order.
    pub fn columns(s: &ScenarioReport) -> Vec<(Column, String)> {
        let mut c = vec![
            (Column::Variant, "variant".to_string()),
            (Column::Outcome, "outcome".into()),
            (Column::Requests, "requests".into()),
            (Column::P50, "p50".into()),
            (Column::P99, "p99".into()),
            (Column::Harm, s.harm.label.clone()),
        ];
        c.extend(s.columns.iter().map(|x| (Column::Figure, x.label.clone())));
        if s.repeated() {
            c.push((Column::HeldIn, "held in".into()));
        }
        c.push((Column::Expectations, "expectations".into()));
        c
    }

    /// The cells, in the order of [`Row::columns`].
    pub fn cells(self) -> Vec<String> {
        let mut c = vec![
            self.variant,
            self.outcome,
            self.requests,
            self.p50,
            self.p99,
            self.harm,
        ];
        c.extend(self.extra);
        c.extend(self.runs);
        c.push(self.verdict);
        c
    }
}

/// What a table column shows, so a layout can choose columns by kind rather than position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Variant,
    Outcome,
    Requests,
    P50,
    P99,
    /// The scenario's harm metric.
    Harm,
    /// One of the scenario's further metric columns.
    Figure,
    HeldIn,
    Expectations,
}

impl Column {
    /// Supporting figures, as opposed to what decides the verdict; a table too wide for the
    /// terminal shows these in a second table.
    pub fn is_figure(self) -> bool {
        matches!(self, Column::P50 | Column::P99 | Column::Figure)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) mod fixtures;
