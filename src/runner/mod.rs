//! Runs scenarios variant by variant against one environment (or several side by side), decides
//! each variant's expectations from its metrics, and writes results as soon as each variant
//! finishes.
//!
//! [`run`] is four steps: the [`plan::Plans`] (every variant resolved once), the headers and
//! skips ([`heading`]), the [`Lanes`] that take runs off the [`queue`], and the finish.

mod plan;
mod queue;
mod results;
mod variant;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::env::{Env, EnvOptions};
use crate::report::{Harm, RunReport, ScenarioReport, VariantReport};
use crate::scenario::Scenario;
use crate::trace::Trace;
use plan::Plans;
use queue::{Admission, Unit};

pub use queue::default_jobs;

/// How long each variant's run took in the newest results file under `dir` at this time scale
/// (see [`RunOptions::estimates`]); empty where there is none.
pub fn estimates(
    dir: &std::path::Path,
    time_scale: f64,
) -> BTreeMap<(String, String), std::time::Duration> {
    results::learnt(dir, time_scale)
}

#[derive(Clone)]
pub struct RunOptions {
    pub scenarios: Vec<Scenario>,
    /// Run only these variants (all when empty).
    pub variants: Vec<String>,
    /// `--time-scale`, or 0.1 where it was not given (see [`RunOptions::scale_for`]).
    pub time_scale: f64,
    /// The user gave `--time-scale`: it wins over a scenario file's own default.
    pub time_scale_given: bool,
    pub env: EnvOptions,
    /// Where the JSON results go; `None` writes none.
    pub out_dir: Option<PathBuf>,
    /// How long each variant's run takes, by scenario and variant name, for the queue's order;
    /// where empty, learnt from the newest results file in `out_dir`.
    pub estimates: BTreeMap<(String, String), std::time::Duration>,
    pub progress: bool,
    /// Runs of each variant (`--repeat`).
    pub repeat: u32,
    /// Variants run side by side (`--jobs`), each on servers of its own; 1 on the user's servers.
    pub jobs: usize,
}

impl RunOptions {
    /// The time scale `scenario` runs at: `--time-scale` if given, else the file's own
    /// `time_scale`, else 0.1.
    pub fn scale_for(&self, scenario: &Scenario) -> f64 {
        match (self.time_scale_given, scenario.default_scale) {
            (false, Some(own)) => own,
            _ => self.time_scale,
        }
    }
}

pub struct Finished {
    pub report: RunReport,
    /// Where the results were written, if they were.
    pub results_file: Option<PathBuf>,
    pub write_error: Option<String>,
    /// A version matrix stopped by an error after some releases ran: they are reported, and
    /// the error ends the run after them.
    pub stopped: Option<anyhow::Error>,
}

pub async fn run(opts: RunOptions, cancel: CancellationToken) -> anyhow::Result<Finished> {
    let learnt = match (&opts.estimates, opts.out_dir.as_deref()) {
        (e, _) if !e.is_empty() => e.clone(),
        (_, Some(dir)) => results::learnt(dir, opts.time_scale),
        (_, None) => BTreeMap::new(),
    };
    let plans = Plans::new(&opts, &|s, v| learnt.get(&(s.into(), v.into())).copied())?;
    let started = Instant::now();
    let env_opts = EnvOptions {
        budget: plans.budget(&opts.scenarios),
        need_pooler: plans.need_pooler(),
        ..opts.env.clone()
    };
    // The first lane's servers come up before anything else; the other lanes start theirs
    // while it already runs. Every lane has the same shape: the first stands for all in
    // headers and skips.
    let first = Env::setup(&env_opts).await?;
    if let Err(e) = fits(&opts, &plans, &first).await {
        first.teardown().await;
        return Err(e);
    }
    let lanes = lanes_for(&env_opts, opts.jobs.max(1));
    let (progress, skipped) = heading(&opts, &plans, &first);
    let units: VecDeque<Unit> = queue::order(&plans, opts.repeat)
        .into_iter()
        .filter(|u| !skipped.contains(&(u.si, u.vi)))
        .collect();
    let shared = Lanes {
        // The live view takes a line per gauge when one variant has the screen, one line when
        // several may run side by side.
        side_by_side: lanes.min(units.len()) > 1,
        queue: Admission::new(units, queue::weight_cap()),
        opts: &opts,
        plans: &plans,
        cancel: &cancel,
        multi: opts.progress.then(indicatif::MultiProgress::new),
        results_file: opts
            .out_dir
            .as_ref()
            .map(|d| results::results_path(d, &opts.scenarios)),
        started,
        finished: Mutex::default(),
        state: Mutex::new(progress),
        traces: Mutex::default(),
    };
    shared.run(lanes, &first, &env_opts).await;
    first.teardown().await;
    shared.finish()
}

/// `--pg-bin` given more than once: the same plan on each release in turn (`bins`: each bin
/// directory with its release), merged into one report where every scenario's releases read
/// as the points of a sweep (see [`crate::report::matrix`]). The results file is rewritten
/// after each release; an interrupt ends the matrix after the release it cut short.
pub async fn run_matrix(
    opts: RunOptions,
    bins: Vec<(PathBuf, String)>,
    cancel: CancellationToken,
) -> anyhow::Result<Finished> {
    use crate::report::matrix;
    let results_file = opts
        .out_dir
        .as_ref()
        .map(|d| results::results_path(d, &opts.scenarios))
        .map(|p| {
            let stem = p.file_stem().map(|n| n.to_string_lossy().to_string());
            p.with_file_name(format!("{}-versions.json", stem.unwrap_or_default()))
        });
    let estimates = match (&opts.estimates, opts.out_dir.as_deref()) {
        (e, _) if !e.is_empty() => e.clone(),
        (_, Some(dir)) => results::learnt(dir, opts.time_scale),
        (_, None) => BTreeMap::new(),
    };
    let mut runs: Vec<(String, RunReport)> = Vec::new();
    let (mut write_error, mut stopped) = (None, None);
    let count = bins.len();
    for (i, (dir, release)) in bins.into_iter().enumerate() {
        if cancel.is_cancelled() {
            crate::say!("interrupted: {} release(s) not run", count - i);
            break;
        }
        crate::say!("PostgreSQL {release} ({})", dir.display());
        crate::env::postgres::use_bin_dir(dir);
        let one = RunOptions {
            out_dir: None,
            estimates: estimates.clone(),
            ..opts.clone()
        };
        let finished = match run(one, cancel.clone()).await {
            Ok(f) => f,
            // The releases already run keep their results; the error still ends the run.
            Err(e) if !runs.is_empty() => {
                stopped = Some(e.context(format!("PostgreSQL {release}")));
                break;
            }
            Err(e) => return Err(e),
        };
        crate::say!(
            "PostgreSQL {release}: wall time {:.1} s",
            finished.report.wall_ms as f64 / 1000.0
        );
        runs.push((release, finished.report));
        if let Some(path) = &results_file {
            write_error = results::write_results(path, &matrix::merge(runs.clone()))
                .err()
                .map(|e| format!("{e:#}"));
        }
    }
    Ok(Finished {
        report: matrix::merge(runs),
        results_file: results_file.filter(|_| write_error.is_none()),
        write_error,
        stopped,
    })
}

/// On a user's server, every variant that will run fits the slots it has free (see
/// `Code::fits`), or the run is refused before anything starts.
async fn fits(opts: &RunOptions, plans: &Plans, env: &Env) -> anyhow::Result<()> {
    if !env.on_users_server() || env.direct_is_pooled() {
        return Ok(());
    }
    let mut capacity = None;
    for (si, scenario) in opts.scenarios.iter().enumerate() {
        for vi in 0..scenario.variants.len() {
            let Some(plan) = plans.get(si, vi) else {
                continue;
            };
            let v = &plan.resolved;
            let skipped = env
                .cannot_run(v.through_pooler, !v.pooler_settings.is_empty())
                .or_else(|| plan.code.unavailable(env))
                .is_some();
            if skipped {
                continue;
            }
            let c = match capacity.take() {
                Some(c) => c,
                None => env.direct.capacity(&env.app("capacity")).await?,
            };
            if let Err(e) = plan.code.fits(&c) {
                return Err(crate::error::UsageError(format!(
                    "{}/{}: {}",
                    scenario.name, v.name, e.0
                ))
                .into());
            }
            capacity = Some(c);
        }
    }
    Ok(())
}

/// The report's scenario headers, a slot per variant (skipped ones already filled with the
/// reason, one note per reason on stderr), and which variants were skipped.
fn heading(opts: &RunOptions, plans: &Plans, env: &Env) -> (Progress, Vec<(usize, usize)>) {
    let mut report = RunReport {
        locklab: env!("CARGO_PKG_VERSION").to_string(),
        scenarios: Vec::new(),
        wall_ms: 0,
        interrupted: false,
    };
    let mut slots: Vec<Vec<Option<VariantReport>>> = Vec::new();
    let mut skipped_units = Vec::new();
    for (si, scenario) in opts.scenarios.iter().enumerate() {
        report
            .scenarios
            .push(scenario_header(opts, plans, si, scenario, env));
        let mut row: Vec<Option<VariantReport>> = Vec::new();
        // Skipped variants, by reason: one note per reason, naming its variants.
        let mut skipped: Vec<(String, Vec<&str>)> = Vec::new();
        for vi in 0..scenario.variants.len() {
            row.push(None);
            let Some(plan) = plans.get(si, vi) else {
                continue;
            };
            let v = &plan.resolved;
            let cannot = env
                .cannot_run(v.through_pooler, !v.pooler_settings.is_empty())
                .or_else(|| plan.code.unavailable(env));
            if let Some(why) = cannot {
                match skipped.iter_mut().find(|(w, _)| *w == why) {
                    Some((_, names)) => names.push(&v.name),
                    None => skipped.push((why.clone(), vec![&v.name])),
                }
                row[vi] = Some(VariantReport::skipped(&v.name, v.mitigated, &v.shows, why));
                skipped_units.push((si, vi));
            }
        }
        for (why, names) in skipped {
            let which = match names.len() == scenario.variants.len() {
                true => scenario.name.clone(),
                false => format!("{}/{}", scenario.name, names.join(", ")),
            };
            crate::say!("note: {which} skipped: {why}");
        }
        slots.push(row);
    }
    let progress = Progress {
        report,
        slots,
        write_error: None,
    };
    (progress, skipped_units)
}

/// A scenario's header: where it runs, at which scale and parameters, and its columns.
fn scenario_header(
    opts: &RunOptions,
    plans: &Plans,
    si: usize,
    scenario: &Scenario,
    env: &Env,
) -> ScenarioReport {
    let release = env
        .pg_release
        .as_ref()
        .map(|r| format!(" {r}"))
        .unwrap_or_default();
    let mut target = match env.pg_url() {
        Some(_) => format!("throwaway PostgreSQL{release}"),
        None => format!("PostgreSQL{release} at {}", env.direct.display),
    };
    if let Some(pooler) = &env.pooler {
        target = format!("{target} {}", pooler.describe);
    }
    match (&env.redis, scenario.kind.needs_redis, env.redis_url()) {
        (Some(_), true, Some(_)) => target.push_str(" + throwaway Redis"),
        (Some(r), true, None) => target.push_str(&format!(" + Redis at {}", r.display)),
        _ => {}
    }
    // Variants that go through a pooler when the rest of the run does not.
    let some_pooled = plans.of(si).any(|p| p.resolved.through_pooler);
    if some_pooled && env.pooler.is_none() && env.pooled.is_some() {
        target.push_str(" (through-pooler variants: a throwaway PgBouncer, transaction pooling)");
    }
    let base = scenario.resolve(&scenario.variants[0], opts.scale_for(scenario));
    let harm = |(metric, label): &(String, String)| Harm {
        metric: metric.clone(),
        label: label.clone(),
    };
    ScenarioReport {
        name: scenario.name.clone(),
        summary: scenario.summary.clone(),
        source: scenario.source.clone(),
        target,
        time_scale: opts.scale_for(scenario),
        params: base.params.to_json(),
        harm: harm(&(scenario.harm_metric.clone(), scenario.harm_label.clone())),
        columns: scenario.columns.iter().map(harm).collect(),
        swept: scenario
            .swept
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect(),
        variants: Vec::new(),
    }
}

/// The runs of one variant done so far, by repeat.
type Runs = Vec<(u32, VariantReport)>;

/// The report as it stands, a slot per scenario and variant filled as runs finish, and why
/// the results file could not be written, if it could not.
struct Progress {
    report: RunReport,
    slots: Vec<Vec<Option<VariantReport>>>,
    write_error: Option<String>,
}

/// What the lanes of a run share: the plan, the queue, and what they have finished.
struct Lanes<'a> {
    opts: &'a RunOptions,
    plans: &'a Plans,
    queue: Admission,
    cancel: &'a CancellationToken,
    multi: Option<indicatif::MultiProgress>,
    side_by_side: bool,
    results_file: Option<PathBuf>,
    started: Instant,
    /// Runs done, by variant, until all its repeats are.
    finished: Mutex<BTreeMap<(usize, usize), Runs>>,
    state: Mutex<Progress>,
    /// Traces (megabytes in all) join the report only in its last write: the file rewritten
    /// as variants finish, so a killed run leaves its verdicts, would otherwise serialise them
    /// again and again on the runtime's threads while other variants' timing windows run.
    traces: Mutex<BTreeMap<(usize, usize), Trace>>,
}

impl Lanes<'_> {
    /// Runs `lanes` lanes until the queue is empty (or the run is interrupted), sampling the
    /// machine's idle CPU for the admission while more than one runs.
    async fn run(&self, lanes: usize, first: &Env, env_opts: &EnvOptions) {
        let sampling = CancellationToken::new();
        let sampler = async {
            if lanes > 1 {
                self.queue.idle.sample(sampling.clone()).await;
            }
        };
        let lanes_done = async {
            futures::future::join_all((0..lanes).map(|l| self.lane(l, first, env_opts))).await;
            sampling.cancel();
        };
        tokio::join!(sampler, lanes_done);
    }

    /// One lane: its own servers (lane 0 uses the first), then the next run off the queue
    /// until none is left.
    async fn lane(&self, lane: usize, first: &Env, env_opts: &EnvOptions) {
        let own = match lane {
            0 => None,
            _ => match Env::setup(env_opts).await {
                Ok(env) => Some(env),
                Err(e) => {
                    crate::say!("note: lane {lane} did not start ({e:#}); fewer lanes run");
                    return;
                }
            },
        };
        let env = own.as_ref().unwrap_or(first);
        while let Some(unit) = self.queue.next(&self.plans.loads, self.cancel).await {
            if let Some(run) = self.run_unit(env, unit).await {
                self.record(unit, run);
            }
            self.queue.done(unit, &self.plans.loads);
        }
        if let Some(env) = own {
            env.teardown().await;
        }
    }

    /// One run of one variant on `env`.
    async fn run_unit(&self, env: &Env, unit: Unit) -> Option<VariantReport> {
        let scenario = &self.opts.scenarios[unit.si];
        let plan = self.plans.get(unit.si, unit.vi)?;
        let label = match self.opts.repeat.max(1) {
            1 => String::new(),
            n => format!(" {}/{n}", unit.rep + 1),
        };
        let run = variant::run_variant(
            env,
            scenario,
            &plan.resolved,
            plan.code.as_ref(),
            self.cancel,
            self.multi.as_ref().map(|m| (m, self.side_by_side)),
            &label,
        )
        .await;
        // Ctrl-C (or SIGTERM) ended this run early: its history stops at the interrupt, not at
        // its cut-off, so a verdict on it would be about the interrupt. (A run that ended in
        // the same instant counts as cut short too.)
        let v = &plan.resolved;
        Some(match self.cancel.is_cancelled() {
            true => VariantReport {
                wall_ms: run.wall_ms,
                ..VariantReport::skipped(&v.name, v.mitigated, &v.shows, CUT_SHORT.into())
            },
            false => run,
        })
    }

    /// Keeps a finished run; once every run of its variant is in (or the rest will never
    /// start), the variant's report takes its slot and the results file is written again.
    fn record(&self, unit: Unit, run: VariantReport) {
        let done = match self.finished.lock() {
            Ok(mut f) => {
                let runs = f.entry((unit.si, unit.vi)).or_default();
                runs.push((unit.rep, run));
                (runs.len() as u32 == self.opts.repeat.max(1) || self.cancel.is_cancelled())
                    .then(|| std::mem::take(runs))
            }
            Err(_) => None,
        };
        let Some(runs) = done else {
            return;
        };
        let mut v = aggregate(self.opts, unit.si, unit.vi, runs);
        if let (Some(t), Ok(mut kept)) = (v.trace.take(), self.traces.lock()) {
            kept.insert((unit.si, unit.vi), t);
        }
        if let Ok(mut st) = self.state.lock() {
            let Progress {
                report,
                slots,
                write_error,
            } = &mut *st;
            slots[unit.si][unit.vi] = Some(v);
            fill(report, slots);
            report.interrupted = self.cancel.is_cancelled();
            report.wall_ms = self.started.elapsed().as_millis() as u64;
            if let Some(path) = &self.results_file {
                *write_error = results::write_results(path, report)
                    .err()
                    .map(|e| format!("{e:#}"));
            }
        }
    }

    /// The report once every lane is done: runs that finished when Ctrl-C came (of variants
    /// whose other repeats never started) and the traces join it, and it is written a last time.
    fn finish(self) -> anyhow::Result<Finished> {
        let Progress {
            mut report,
            mut slots,
            mut write_error,
        } = self
            .state
            .into_inner()
            .map_err(|_| anyhow::anyhow!("a lane of the run panicked"))?;
        if let Ok(f) = self.finished.into_inner() {
            for ((si, vi), runs) in f.into_iter().filter(|(_, r)| !r.is_empty()) {
                slots[si][vi] = Some(aggregate(self.opts, si, vi, runs));
            }
        }
        for ((si, vi), t) in self.traces.into_inner().unwrap_or_default() {
            if let Some(v) = slots[si][vi].as_mut() {
                v.trace = Some(t);
            }
        }
        fill(&mut report, &slots);
        report.interrupted = self.cancel.is_cancelled();
        report.wall_ms = self.started.elapsed().as_millis() as u64;
        let results_file = self.results_file;
        if let Some(path) = &results_file {
            write_error = results::write_results(path, &report)
                .err()
                .map(|e| format!("{e:#}"));
        }
        Ok(Finished {
            report,
            results_file: results_file.filter(|_| write_error.is_none()),
            write_error,
            stopped: None,
        })
    }
}

/// The report's variants, in scenario and variant order, from the slots filled so far.
fn fill(report: &mut RunReport, slots: &[Vec<Option<VariantReport>>]) {
    for (s, row) in report.scenarios.iter_mut().zip(slots) {
        s.variants = row.iter().flatten().cloned().collect();
    }
}

/// One report for a variant's runs, taken in repeat order.
fn aggregate(opts: &RunOptions, si: usize, vi: usize, mut runs: Runs) -> VariantReport {
    runs.sort_by_key(|(rep, _)| *rep);
    let mitigated = opts.scenarios[si].variants[vi].mitigated;
    results::aggregate(runs.into_iter().map(|(_, r)| r).collect(), mitigated)
}

pub(crate) use crate::report::CUT_SHORT;

/// How many lanes a run gets: one, or with `--jobs N` on throwaway servers, N, each with
/// servers of its own. Isolation by separate servers is what keeps verdicts exact side by
/// side: an observer of pg_stat_activity, pg_locks, a Redis key or a PgBouncer pool sees only
/// its own variant's sessions, and each lane has the whole connection budget to itself. A run
/// on the user's servers has one server to share, so it runs one variant at a time.
fn lanes_for(opts: &EnvOptions, jobs: usize) -> usize {
    let own_servers = opts.pg_url.is_none()
        && opts.redis_url.is_none()
        && !matches!(opts.pooler, crate::env::PoolerChoice::Url(_));
    if own_servers { jobs } else { 1 }
}
