//! One run of one variant: its settings applied, its code run within its cut-off (and the
//! harness's grace after it), its progress drawn, and its metrics judged against its
//! expectations.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::check::expect::MapScope;
use crate::check::metric_drift;
use crate::env::Env;
use crate::env::postgres::Sql as _;
use crate::history::{History, Outcome};
use crate::report::{Requests, VariantReport};
use crate::scenario::{Prepared, Scenario, VariantCtx, VariantRun};
use crate::trace::Trace;

/// A variant whose own code outlives its deadline by this much is a harness bug: cut it off.
const HARNESS_GRACE: Duration = Duration::from_secs(30);

/// The server settings a session of this variant sees, as the server reports them.
async fn server_settings(
    env: &Env,
    variant: &crate::scenario::ResolvedVariant,
) -> anyhow::Result<BTreeMap<String, String>> {
    let c = env.pg.connect(&env.app("settings")).await?;
    c.batch_execute(&crate::env::postgres::begin(&variant.settings))
        .await
        .context("could not apply the variant's settings")?;
    let rows = c
        .rows(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY($1) ORDER BY name",
            &[&variant.show_settings],
        )
        .await
        .context("could not read the server's settings")?;
    let _ = c.batch_execute("ROLLBACK").await;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

pub(super) async fn run_variant(
    env: &Env,
    scenario: &Scenario,
    variant: &crate::scenario::ResolvedVariant,
    code: &dyn Prepared,
    cancel: &CancellationToken,
    // Where progress is drawn, and whether other variants share the screen (the live view then
    // takes one line, not one per gauge).
    multi: Option<(&indicatif::MultiProgress, bool)>,
    label: &str,
) -> VariantReport {
    let started = Instant::now();
    let deadline = variant
        .params
        .duration("deadline")
        .unwrap_or(Duration::from_secs(30));
    let progress = match multi {
        Some((multi, _)) => progress_bar(
            multi,
            deadline,
            format!("{}/{}{label}", scenario.name, variant.name),
        ),
        None => ProgressBar::hidden(),
    };
    let ticker = {
        let bar = progress.clone();
        tokio::spawn(async move {
            loop {
                bar.set_position(started.elapsed().as_millis() as u64);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let ctx = VariantCtx {
        env,
        variant,
        cancel: cancel.clone(),
        progress: progress.clone(),
    };
    let board = multi.map(|_| crate::gauge::Board::default());
    let live = multi
        .zip(board.clone())
        .map(|((m, compact), b)| crate::live::Live::new(m, &progress, compact, b));
    let drawing = live.as_ref().map(crate::live::Live::spawn);
    let mut settings_seen = BTreeMap::new();
    let mut pooler_before = Vec::new();
    let result = async {
        if !variant.pooler_settings.is_empty() {
            pooler_before = env.set_pooler(&variant.pooler_settings).await?;
        }
        if !variant.show_settings.is_empty() {
            settings_seen = server_settings(env, variant).await?;
        }
        crate::gauge::scope(board, code.run(&ctx)).await
    };
    let result = tokio::time::timeout(deadline + HARNESS_GRACE, result)
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "the variant's own code did not finish within {} of its deadline",
                humantime::format_duration(HARNESS_GRACE)
            ))
        })
        .with_context(|| format!("{}/{}", scenario.name, variant.name));
    ticker.abort();
    if let Some(d) = drawing {
        d.abort();
    }
    if let Some(l) = &live {
        l.finish();
    }
    progress.finish_and_clear();
    // The next variant meets PgBouncer as it was.
    let restored = match pooler_before.is_empty() {
        true => Ok(()),
        false => env.set_pooler(&pooler_before).await.map(drop),
    };
    let result = result
        .and_then(|run| restored.map(|()| run))
        .and_then(|run| declared(scenario, run));
    let mut report = judge(variant, result);
    report.server_settings = settings_seen;
    report.wall_ms = started.elapsed().as_millis() as u64;
    report
}

/// A variant's progress bar: its time against its cut-off, and what it counts.
fn progress_bar(
    multi: &indicatif::MultiProgress,
    deadline: Duration,
    prefix: String,
) -> ProgressBar {
    let bar = multi.add(ProgressBar::new(deadline.as_millis() as u64));
    bar.set_style(
        ProgressStyle::with_template("{prefix:>32} [{bar:24}] {elapsed:>3} of cut-off  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}

/// A run's report: its checker's outcome and metrics, each expectation judged on them, or the
/// harness error that stopped it (then no expectation is judged).
fn judge(
    variant: &crate::scenario::ResolvedVariant,
    result: anyhow::Result<VariantRun>,
) -> VariantReport {
    let (run, error) = match result {
        Ok(run) => (run, None),
        Err(e) => (VariantRun::default(), Some(format!("{e:#}"))),
    };
    let evaluation = run.evaluation;
    let params = variant.params.vals();
    let scope = MapScope {
        params: &params,
        metrics: &evaluation.metrics,
    };
    let expectations: Vec<_> = match error {
        Some(_) => Vec::new(),
        None => variant
            .expect
            .iter()
            .map(|e| e.evaluate(&scope, variant.params.time_scale))
            .collect(),
    };
    let trace = error.is_none().then(|| {
        Trace::new(
            &run.history,
            run.input.as_ref(),
            run.origin_epoch_ms,
            &params,
        )
    });
    VariantReport {
        name: variant.name.clone(),
        mitigated: variant.mitigated,
        shows: variant.shows.clone(),
        settings: variant.settings.iter().cloned().collect::<BTreeMap<_, _>>(),
        outcome: match error {
            Some(_) => "error".into(),
            None => evaluation.outcome.clone(),
        },
        expectations_held: error.is_none() && expectations.iter().all(|e| e.held),
        expectations,
        requests: requests_checked(&run.history, run.input.as_ref(), &evaluation.metrics),
        warnings: warnings(&run.history),
        metrics: evaluation.metrics,
        lower_bounds: evaluation.lower_bounds.into_iter().collect(),
        wall_ms: 0,
        error,
        runs: 1,
        runs_held: 0,
        outcomes: BTreeMap::new(),
        repeats: Vec::new(),
        failure: None,
        server_settings: BTreeMap::new(),
        skipped: None,
        trace,
    }
}

/// A checker that emits metrics its scenario does not declare (or misses some) is a harness
/// bug: expectations would silently read a metric as unmeasured.
fn declared(scenario: &Scenario, run: VariantRun) -> anyhow::Result<VariantRun> {
    let (undeclared, missing) = metric_drift(&run.evaluation, scenario.kind.metrics);
    if !undeclared.is_empty() || !missing.is_empty() {
        anyhow::bail!(
            "{}: the checker's metrics differ from the declared ones (undeclared: {undeclared:?}, missing: {missing:?})",
            scenario.name
        );
    }
    Ok(run)
}

/// [`requests`], with a step file's checker's word on what is stuck: in a session looping
/// until the cut-off every client is mid-round when it comes, and a step the cut-off merely
/// interrupts is not stuck (the step checker says which are); a step never reached is.
fn requests_checked(
    h: &History,
    input: Option<&crate::check::Input>,
    metrics: &BTreeMap<String, serde_json::Value>,
) -> Requests {
    let mut r = requests(h);
    if let (Some(crate::check::Input::Steps(_)), Some(stuck)) = (
        input,
        metrics.get("stuck").and_then(serde_json::Value::as_u64),
    ) {
        r.stuck = stuck as usize;
    }
    r
}

fn requests(h: &History) -> Requests {
    let mut r = Requests::default();
    for op in &h.ops {
        match &op.outcome {
            Outcome::Ok => r.ok += 1,
            Outcome::Unknown if h.is_lost(op) => r.lost += 1,
            Outcome::Unknown => r.stuck += 1,
            Outcome::Error { class } => {
                r.failed += 1;
                *r.errors.entry(class.clone()).or_insert(0) += 1;
            }
        }
    }
    r
}

/// Harness trouble that did not stop the variant but that a reader must know about.
fn warnings(h: &History) -> Vec<String> {
    h.lost_clients
        .iter()
        .map(|l| {
            format!(
                "client {}'s task died ({}); its operation in flight is recorded as unknown",
                l.client, l.why
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{LostClient, Op};

    #[test]
    fn a_lost_clients_operation_counts_as_lost_not_stuck_and_is_warned_about() {
        let op = |client, end_ms: Option<f64>, outcome| Op {
            client,
            kind: "book".into(),
            start_ms: 0.0,
            end_ms,
            outcome,
        };
        let h = History {
            ops: vec![
                op(0, Some(1.0), Outcome::Ok),
                op(1, None, Outcome::Unknown),
                op(2, None, Outcome::Unknown),
            ],
            lost_clients: vec![LostClient {
                client: 1,
                why: "boom".into(),
            }],
        };
        let r = requests(&h);
        assert_eq!((r.ok, r.failed, r.stuck, r.lost), (1, 0, 1, 1));
        assert_eq!(
            warnings(&h),
            vec!["client 1's task died (boom); its operation in flight is recorded as unknown"]
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["lost"], 1, "{json}");
    }

    #[test]
    fn a_step_files_looping_step_cut_mid_round_is_not_counted_stuck() {
        let h = History {
            ops: vec![Op {
                client: 0,
                kind: "app.update".into(),
                start_ms: 990.0,
                end_ms: None,
                outcome: Outcome::Unknown,
            }],
            lost_clients: Vec::new(),
        };
        let metrics = BTreeMap::from([("stuck".to_string(), serde_json::json!(0))]);
        let steps = crate::check::Input::Steps(Box::default());
        assert_eq!(requests_checked(&h, Some(&steps), &metrics).stuck, 0);
        // Built-in checkers keep the history's count.
        assert_eq!(requests_checked(&h, None, &metrics).stuck, 1);
    }
}
