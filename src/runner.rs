//! Runs scenarios variant by variant against one environment, decides each variant's
//! expectations from its metrics, and writes results as soon as each variant finishes.

use crate::env::postgres::Sql as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::check::expect::MapScope;
use crate::check::metric_drift;
use crate::env::{Env, EnvOptions};
use crate::error::UsageError;
use crate::history::{History, Outcome};
use crate::report::{Failure, Harm, RepeatRun, Requests, RunReport, ScenarioReport, VariantReport};
use crate::scenario::{Cpu, Prepared, Scenario, VariantCtx, VariantRun};
use crate::text::nearest;
use crate::trace::Trace;

/// A variant whose own code outlives its deadline by this much is a harness bug: cut it off.
const HARNESS_GRACE: Duration = Duration::from_secs(30);

pub struct RunOptions {
    pub scenarios: Vec<Scenario>,
    /// Run only these variants (all when empty).
    pub variants: Vec<String>,
    pub time_scale: f64,
    pub env: EnvOptions,
    /// Where the JSON results go; `None` writes none.
    pub out_dir: Option<PathBuf>,
    pub progress: bool,
    /// Runs of each variant (`--repeat`).
    pub repeat: u32,
    /// Variants run side by side (`--jobs`), each on servers of its own; 1 on the user's servers.
    pub jobs: usize,
}

pub struct Finished {
    pub report: RunReport,
    /// Where the results were written, if they were.
    pub results_file: Option<PathBuf>,
    pub write_error: Option<String>,
}

fn check_variant_filter(opts: &RunOptions) -> Result<(), UsageError> {
    for wanted in &opts.variants {
        let all: Vec<&str> = opts
            .scenarios
            .iter()
            .flat_map(|s| s.variants.iter().map(|v| v.name.as_str()))
            .collect();
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
fn wanted(opts: &RunOptions, variant: &crate::scenario::spec::Variant) -> bool {
    match opts.variants.is_empty() {
        true => !variant.opt_in,
        false => opts.variants.contains(&variant.name),
    }
}

/// Sessions the runner itself may have open beside a variant's (reading settings, ending
/// sessions, the variant's teardown).
const HARNESS_SESSIONS: usize = 1;

/// The most sessions any one variant needs (variants run one after another), and whose.
fn budget(
    scenarios: &[Scenario],
    prepared: &[Vec<Option<Box<dyn Prepared>>>],
) -> Option<crate::env::Budget> {
    scenarios
        .iter()
        .zip(prepared)
        .flat_map(|(s, configs)| configs.iter().flatten().map(move |c| (s, c.sessions())))
        .max_by_key(|(_, n)| *n)
        .map(|(s, n)| crate::env::Budget {
            sessions: n + HARNESS_SESSIONS,
            scenario: s.name.clone(),
            sized_by: s.kind.sized_by.to_string(),
        })
}

pub async fn run(opts: RunOptions, cancel: CancellationToken) -> anyhow::Result<Finished> {
    check_variant_filter(&opts)?;
    // Every variant's parameters become its scenario's configuration once, here, before any
    // server starts: a bad value or combination is a usage error, never a failure mid-run.
    // Only variants that will run: a relation one of them breaks is no reason to refuse others.
    let mut prepared: Vec<Vec<Option<Box<dyn Prepared>>>> = Vec::new();
    for s in &opts.scenarios {
        let mut configs = Vec::new();
        for v in &s.variants {
            if !wanted(&opts, v) {
                configs.push(None);
                continue;
            }
            let resolved = s.resolve(v, opts.time_scale);
            let config = (s.kind.prepare)(&resolved.params)
                .map_err(|e| anyhow::Error::from(e).context(format!("{}/{}", s.name, v.name)))?;
            configs.push(Some(config));
        }
        prepared.push(configs);
    }
    let started = Instant::now();
    let need_pooler = opts.scenarios.iter().any(|s| {
        s.variants
            .iter()
            .any(|v| wanted(&opts, v) && v.through_pooler)
    });
    let env_opts = EnvOptions {
        budget: budget(&opts.scenarios, &prepared),
        need_pooler,
        ..opts.env.clone()
    };
    // The first lane's servers come up before anything else; the other lanes start theirs
    // while it already runs. Every lane has the same shape: the first stands for all in
    // headers and skips.
    let first = Env::setup(&env_opts).await?;
    let lanes = lanes_for(&env_opts, opts.jobs.max(1));
    let env = &first;
    let mut target = match env.pg_url() {
        Some(_) => "throwaway PostgreSQL".to_string(),
        None => format!("PostgreSQL at {}", env.direct.display),
    };
    if let Some(pooler) = &env.pooler {
        target = format!("{target} {}", pooler.describe);
    }
    let results_file = opts
        .out_dir
        .as_ref()
        .map(|d| results_path(d, &opts.scenarios));
    let mut report = RunReport {
        locklab: env!("CARGO_PKG_VERSION").to_string(),
        scenarios: Vec::new(),
        wall_ms: 0,
        interrupted: false,
    };
    // One slot per scenario and variant, filled as runs finish, read in scenario order.
    let mut slots: Vec<Vec<Option<VariantReport>>> = Vec::new();
    let mut units = std::collections::VecDeque::new();
    let repeat = opts.repeat.max(1);
    for (si, (scenario, configs)) in opts.scenarios.iter().zip(&prepared).enumerate() {
        let base = scenario.resolve(&scenario.variants[0], opts.time_scale);
        report.scenarios.push(ScenarioReport {
            name: scenario.name.clone(),
            summary: scenario.summary.clone(),
            source: scenario.source.clone(),
            target: {
                let mut t = match (&env.redis, scenario.kind.needs_redis, env.redis_url()) {
                    (Some(_), true, Some(_)) => format!("{target} + throwaway Redis"),
                    (Some(r), true, None) => format!("{target} + Redis at {}", r.display),
                    _ => target.clone(),
                };
                // Variants that go through a pooler when the rest of the run does not.
                let some_pooled = scenario
                    .variants
                    .iter()
                    .any(|v| wanted(&opts, v) && v.through_pooler);
                if some_pooled && env.pooler.is_none() && env.pooled.is_some() {
                    t.push_str(
                        " (through-pooler variants: a throwaway PgBouncer, transaction pooling)",
                    );
                }
                t
            },
            time_scale: opts.time_scale,
            params: base.params.to_json(),
            harm: Harm {
                metric: scenario.harm_metric.clone(),
                label: scenario.harm_label.clone(),
            },
            columns: scenario
                .columns
                .iter()
                .map(|(metric, label)| Harm {
                    metric: metric.clone(),
                    label: label.clone(),
                })
                .collect(),
            swept: scenario
                .swept
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect(),
            variants: Vec::new(),
        });
        let mut row = Vec::new();
        // Skipped variants, by reason: one note per reason, naming its variants.
        let mut skipped: Vec<(String, Vec<&str>)> = Vec::new();
        for (vi, (variant, config)) in scenario.variants.iter().zip(configs).enumerate() {
            row.push(None);
            if config.is_none() {
                continue;
            }
            let resolved = scenario.resolve(variant, opts.time_scale);
            let cannot = env
                .cannot_run(
                    resolved.through_pooler,
                    !resolved.pooler_settings.is_empty(),
                )
                .or_else(|| config.as_ref().and_then(|c| c.unavailable(env)));
            if let Some(why) = cannot {
                match skipped.iter_mut().find(|(w, _)| *w == why) {
                    Some((_, names)) => names.push(&variant.name),
                    None => skipped.push((why.clone(), vec![&variant.name])),
                }
                row[vi] = Some(VariantReport::skipped(
                    &variant.name,
                    resolved.mitigated,
                    &resolved.shows,
                    why,
                ));
                continue;
            }
            units.push_back(Unit {
                si,
                vi,
                rep: 0,
                started: 0,
            });
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

    // Each run weighs the sessions it opens; lanes run side by side only while the weights in
    // flight stay within the machine's share, so a hundred-client variant runs (nearly) alone
    // and small ones run many at a time.
    let weights: Vec<Vec<(usize, Cpu)>> = prepared
        .iter()
        .map(|row| {
            row.iter()
                .map(|c| {
                    c.as_ref()
                        .map_or((1, Cpu::Timed), |c| (c.weight().max(1), c.cpu()))
                })
                .collect()
        })
        .collect();
    // Each lane takes the next run off the queue until it is empty: variants (and repeats of
    // one variant) run side by side, each on its lane's own servers.
    // Repeats go round by round (every variant once, then every variant again): side by side
    // run different variants, not ten copies of the same busiest one.
    let mut firsts: Vec<Unit> = units.drain(..).collect();
    firsts.sort_by_key(|u| start_order(&opts.scenarios[u.si], u.vi, weights[u.si][u.vi].1, &opts));
    for rep in 0..repeat {
        units.extend(firsts.iter().map(|u| Unit { rep, ..*u }));
    }
    // The live view takes a line per gauge when one variant has the screen, one line when
    // several may run side by side.
    let side_by_side = lanes.min(units.len()) > 1;
    let queue = Admission::new(units, weight_cap());
    let finished =
        std::sync::Mutex::new(BTreeMap::<(usize, usize), Vec<(u32, VariantReport)>>::new());
    let multi = opts.progress.then(indicatif::MultiProgress::new);
    let state = std::sync::Mutex::new((report, slots, None::<String>));
    // Traces (megabytes in all) join the report only in its last write: the file rewritten as
    // variants finish, so a killed run leaves its verdicts, would otherwise serialise them
    // again and again on the runtime's threads while other variants' timing windows run.
    let traces = std::sync::Mutex::new(BTreeMap::<(usize, usize), Trace>::new());
    let lane_runs = (0..lanes).map(|lane| {
        let (queue, finished, state, prepared) = (&queue, &finished, &state, &prepared);
        let traces = &traces;
        let (weights, first, env_opts) = (&weights, &first, &env_opts);
        let (opts, cancel, multi, results_file) = (&opts, &cancel, &multi, &results_file);
        async move {
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
            loop {
                let Some(unit) = queue.next(weights, cancel).await else {
                    break;
                };
                let scenario = &opts.scenarios[unit.si];
                let variant = &scenario.variants[unit.vi];
                let Some(code) = prepared[unit.si][unit.vi].as_ref() else {
                    queue.done(unit, weights);
                    continue;
                };
                let resolved = scenario.resolve(variant, opts.time_scale);
                let label = match repeat {
                    1 => String::new(),
                    n => format!(" {}/{n}", unit.rep + 1),
                };
                let run = run_variant(
                    env,
                    scenario,
                    &resolved,
                    code.as_ref(),
                    cancel,
                    multi.as_ref().map(|m| (m, side_by_side)),
                    &label,
                )
                .await;
                queue.done(unit, weights);
                // Ctrl-C (or SIGTERM) ended this run early: its history stops at the interrupt,
                // not at its cut-off, so a verdict on it would be about the interrupt. (A run
                // that ended in the same instant counts as cut short too.)
                let run = match cancel.is_cancelled() {
                    true => VariantReport {
                        wall_ms: run.wall_ms,
                        ..VariantReport::skipped(
                            &variant.name,
                            resolved.mitigated,
                            &resolved.shows,
                            CUT_SHORT.into(),
                        )
                    },
                    false => run,
                };
                let done = match finished.lock() {
                    Ok(mut f) => {
                        let runs = f.entry((unit.si, unit.vi)).or_default();
                        runs.push((unit.rep, run));
                        // Every run done (or the rest will never start): the variant's verdict.
                        (runs.len() as u32 == repeat || cancel.is_cancelled())
                            .then(|| std::mem::take(runs))
                    }
                    Err(_) => None,
                };
                let Some(mut runs) = done else {
                    continue;
                };
                runs.sort_by_key(|(rep, _)| *rep);
                let mut v = aggregate(
                    runs.into_iter().map(|(_, r)| r).collect(),
                    resolved.mitigated,
                );
                if let (Some(t), Ok(mut kept)) = (v.trace.take(), traces.lock()) {
                    kept.insert((unit.si, unit.vi), t);
                }
                if let Ok(mut st) = state.lock() {
                    let (report, slots, write_error) = &mut *st;
                    slots[unit.si][unit.vi] = Some(v);
                    fill(report, slots);
                    report.interrupted = cancel.is_cancelled();
                    report.wall_ms = started.elapsed().as_millis() as u64;
                    if let Some(path) = results_file {
                        *write_error = write_results(path, report).err().map(|e| format!("{e:#}"));
                    }
                }
            }
            if let Some(env) = own {
                env.teardown().await;
            }
        }
    });
    let sampling = CancellationToken::new();
    let sampler = async {
        if lanes > 1 {
            queue.idle.sample(sampling.clone()).await;
        }
    };
    let lanes_done = async {
        futures::future::join_all(lane_runs).await;
        sampling.cancel();
    };
    tokio::join!(sampler, lanes_done);
    first.teardown().await;
    let (mut report, mut slots, mut write_error) = state
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a lane of the run panicked"))?;
    // Runs finished when Ctrl-C came, of variants whose other repeats never started.
    if let Ok(f) = finished.into_inner() {
        for ((si, vi), mut runs) in f.into_iter().filter(|(_, r)| !r.is_empty()) {
            runs.sort_by_key(|(rep, _)| *rep);
            let mitigated = opts.scenarios[si].variants[vi].mitigated;
            slots[si][vi] = Some(aggregate(
                runs.into_iter().map(|(_, r)| r).collect(),
                mitigated,
            ));
        }
    }
    for ((si, vi), t) in traces.into_inner().unwrap_or_default() {
        if let Some(v) = slots[si][vi].as_mut() {
            v.trace = Some(t);
        }
    }
    fill(&mut report, &slots);
    report.interrupted = cancel.is_cancelled();
    report.wall_ms = started.elapsed().as_millis() as u64;
    if let Some(path) = &results_file {
        write_error = write_results(path, &report).err().map(|e| format!("{e:#}"));
    }
    Ok(Finished {
        report,
        results_file: if write_error.is_none() {
            results_file
        } else {
            None
        },
        write_error,
    })
}

/// Where a variant's runs stand in the queue (results come out in scenario and variant order
/// whatever the queue's). Kernel-timed runs first, then the hogs beside them: lost-client's
/// ten seconds of keepalive timing pass while the storms take the CPU, which nothing timed
/// could share. The timed runs follow, the longest cut-offs first, so the long ones wait
/// beside the short ones instead of after them. Ties keep scenario and variant order.
fn start_order(
    scenario: &Scenario,
    vi: usize,
    cpu: Cpu,
    opts: &RunOptions,
) -> (u8, std::cmp::Reverse<Duration>) {
    let kind = match cpu {
        Cpu::Kernel => 0,
        Cpu::Hog => 1,
        Cpu::Timed => 2,
    };
    let resolved = scenario.resolve(&scenario.variants[vi], opts.time_scale);
    let window = resolved.params.duration("deadline").unwrap_or_default();
    (kind, std::cmp::Reverse(window))
}

/// `--jobs` unless given: four lanes per core, at most 8. Most of a variant's time is a
/// designed wait (a cut-off, a timeout, a TTL) with the CPU idle, so lanes outnumber cores;
/// [`Admission`] keeps them from starting runs on a machine whose CPU is already busy.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 4)
        .unwrap_or(1)
        .clamp(1, 8)
}

/// Sessions in flight per core before another lane may start a run: a PostgreSQL backend
/// and a client task each, busy while a variant's clients work.
const SESSIONS_PER_CORE: usize = 90;

/// Another run starts beside those in flight only while this share of the machine's CPU time
/// was idle over the last sample (whoever else is using it).
const IDLE_FLOOR_PERMILLE: u32 = 100;

/// How often the machine's idle CPU is sampled.
const IDLE_SAMPLE: Duration = Duration::from_millis(100);

fn weight_cap() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) * SESSIONS_PER_CORE
}

/// The machine's idle CPU share over the last [`IDLE_SAMPLE`], from /proc/stat (all idle
/// where it cannot be read), and how many samples have been taken.
#[derive(Default)]
struct IdleCpu {
    permille: std::sync::atomic::AtomicU32,
    samples: std::sync::atomic::AtomicU64,
}

impl IdleCpu {
    /// Samples until `stop` fires.
    async fn sample(&self, stop: CancellationToken) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut last = crate::observe::cpu::machine_ticks();
        self.permille.store(1000, Relaxed);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(IDLE_SAMPLE) => {}
                _ = stop.cancelled() => return,
            }
            let now = crate::observe::cpu::machine_ticks();
            let permille = match (last, now) {
                (Some((i0, t0)), Some((i1, t1))) if t1 > t0 => {
                    ((i1.saturating_sub(i0)) * 1000 / (t1 - t0)) as u32
                }
                _ => 1000,
            };
            last = now;
            self.permille.store(permille, Relaxed);
            self.samples.fetch_add(1, Relaxed);
        }
    }
}

/// The runs waiting for a lane, and how much is in flight. A lane takes the first waiting run
/// that fits beside what runs now (its weight, and its kind of CPU use beside theirs: see
/// [`Cpu`]), if a sample of the machine taken after every run in flight started found idle CPU;
/// any run when nothing else is in flight.
struct Admission {
    state: std::sync::Mutex<Waiting>,
    changed: tokio::sync::Notify,
    cap: usize,
    idle: IdleCpu,
}

impl Admission {
    fn new(units: std::collections::VecDeque<Unit>, cap: usize) -> Admission {
        Admission {
            state: std::sync::Mutex::new(Waiting {
                queue: units,
                running: Vec::new(),
            }),
            changed: tokio::sync::Notify::new(),
            cap,
            idle: IdleCpu::default(),
        }
    }

    /// The next run for a lane; `None` when none is left or the run was cancelled.
    async fn next(
        &self,
        weights: &[Vec<(usize, Cpu)>],
        cancel: &CancellationToken,
    ) -> Option<Unit> {
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if cancel.is_cancelled() {
                return None;
            }
            {
                let mut st = self.state.lock().ok()?;
                let Waiting { queue, running } = &mut *st;
                if queue.is_empty() {
                    return None;
                }
                let sample = self.idle.samples.load(Relaxed);
                // Enough idle CPU, in a look taken after every run in flight started: a run
                // that started since then has not shown its load yet. (One that already ended
                // has nothing left to show, so a string of short runs need not wait a sample
                // each.)
                let room = running.iter().all(|r| r.started < sample)
                    && self.idle.permille.load(Relaxed) >= IDLE_FLOOR_PERMILLE;
                let fits = |u: &Unit| {
                    let (weight, cpu) = weights[u.si][u.vi];
                    let in_flight: usize = running.iter().map(|r| r.weight).sum();
                    in_flight + weight <= self.cap && running.iter().all(|r| cpu.beside(r.cpu))
                };
                let pick = match running.is_empty() {
                    true => Some(0),
                    false if room => queue.iter().position(fits),
                    false => None,
                };
                if let Some(unit) = pick.and_then(|i| queue.remove(i)) {
                    let (weight, cpu) = weights[unit.si][unit.vi];
                    running.push(Running {
                        weight,
                        cpu,
                        started: sample,
                    });
                    return Some(Unit {
                        started: sample,
                        ..unit
                    });
                }
            }
            tokio::select! {
                _ = &mut changed => {}
                _ = tokio::time::sleep(IDLE_SAMPLE) => {}
                _ = cancel.cancelled() => return None,
            }
        }
    }

    fn done(&self, unit: Unit, weights: &[Vec<(usize, Cpu)>]) {
        let (weight, cpu) = weights[unit.si][unit.vi];
        if let Ok(mut st) = self.state.lock() {
            let ran = Running {
                weight,
                cpu,
                started: unit.started,
            };
            if let Some(i) = st.running.iter().position(|r| *r == ran) {
                st.running.remove(i);
            }
        }
        self.changed.notify_waiters();
    }
}

/// The runs not yet started, and those in flight.
struct Waiting {
    queue: std::collections::VecDeque<Unit>,
    running: Vec<Running>,
}

/// A run in flight: its weight, its kind of CPU use, and the idle-CPU sample current when it
/// started.
#[derive(PartialEq)]
struct Running {
    weight: usize,
    cpu: Cpu,
    started: u64,
}

/// One run of one variant, waiting for a lane.
#[derive(Clone, Copy)]
struct Unit {
    si: usize,
    vi: usize,
    rep: u32,
    /// The idle-CPU sample current when it started (0 while it waits).
    started: u64,
}

/// The report's variants, in scenario and variant order, from the slots filled so far.
fn fill(report: &mut RunReport, slots: &[Vec<Option<VariantReport>>]) {
    for (s, row) in report.scenarios.iter_mut().zip(slots) {
        s.variants = row.iter().flatten().cloned().collect();
    }
}

/// Why a run in flight at Ctrl-C has no verdict.
const CUT_SHORT: &str = "cut short by the interrupt: no verdict";

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

/// One report for all runs of a variant: the first failing run's figures (else the first run's),
/// how many runs held, and why the variant fails the run, if it does.
fn aggregate(mut runs: Vec<VariantReport>, mitigated: bool) -> VariantReport {
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

async fn run_variant(
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
    let progress = if let Some((multi, _)) = multi {
        let bar = multi.add(ProgressBar::new(deadline.as_millis() as u64));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>32} [{bar:24}] {elapsed:>3} of cut-off  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{}{label}", scenario.name, variant.name));
        bar
    } else {
        ProgressBar::hidden()
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
    let live = multi.map(|(m, compact)| crate::live::Live::new(m, &progress, compact));
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
        crate::live::scope(live.clone(), code.run(&ctx)).await
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
    let result = result.and_then(|run| restored.map(|()| run));

    let (run, error) = match result.and_then(|run| declared(scenario, run)) {
        Ok(run) => (run, None),
        Err(e) => (VariantRun::default(), Some(format!("{e:#}"))),
    };
    let evaluation = run.evaluation;
    let params = variant.params.vals();
    let scope = MapScope {
        params: &params,
        metrics: &evaluation.metrics,
    };
    let expectations: Vec<_> = if error.is_some() {
        Vec::new()
    } else {
        variant
            .expect
            .iter()
            .map(|e| e.evaluate(&scope, variant.params.time_scale))
            .collect()
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
        outcome: if error.is_some() {
            "error".into()
        } else {
            evaluation.outcome.clone()
        },
        expectations_held: error.is_none() && expectations.iter().all(|e| e.held),
        expectations,
        requests: requests(&run.history),
        warnings: warnings(&run.history),
        metrics: evaluation.metrics,
        lower_bounds: evaluation.lower_bounds.into_iter().collect(),
        wall_ms: started.elapsed().as_millis() as u64,
        error,
        runs: 1,
        runs_held: 0,
        outcomes: BTreeMap::new(),
        repeats: Vec::new(),
        failure: None,
        server_settings: settings_seen,
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

fn results_path(dir: &Path, scenarios: &[Scenario]) -> PathBuf {
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

fn write_results(path: &Path, report: &RunReport) -> anyhow::Result<()> {
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
    fn which_kinds_of_cpu_use_run_side_by_side() {
        use Cpu::*;
        // (a run of this kind, beside one of that kind in flight, may start)
        let table = [
            (Kernel, Kernel, true),
            (Kernel, Hog, true),
            (Kernel, Timed, true),
            (Hog, Kernel, true),
            (Hog, Hog, false),
            (Hog, Timed, false),
            (Timed, Kernel, true),
            (Timed, Hog, false),
            (Timed, Timed, true),
        ];
        for (a, b, expected) in table {
            assert_eq!(a.beside(b), expected, "{a:?} beside {b:?}");
        }
    }

    /// Admission over hand-built runs: `kinds[i]` is run i's CPU kind, weight 1 each.
    fn admission(kinds: &[Cpu]) -> (Admission, Vec<Vec<(usize, Cpu)>>) {
        let units = (0..kinds.len())
            .map(|vi| Unit {
                si: 0,
                vi,
                rep: 0,
                started: 0,
            })
            .collect();
        let weights = vec![kinds.iter().map(|k| (1, *k)).collect()];
        (Admission::new(units, 100), weights)
    }

    /// A new look at the machine's CPU, with this share idle.
    fn sample(a: &Admission, permille: u32) {
        use std::sync::atomic::Ordering::Relaxed;
        a.idle.permille.store(permille, Relaxed);
        a.idle.samples.fetch_add(1, Relaxed);
    }

    /// The next run admitted within 300 ms (the admission re-checks every 100 ms).
    async fn admitted(a: &Admission, weights: &[Vec<(usize, Cpu)>]) -> Option<usize> {
        let cancel = CancellationToken::new();
        tokio::time::timeout(Duration::from_millis(300), a.next(weights, &cancel))
            .await
            .ok()
            .flatten()
            .map(|u| u.vi)
    }

    #[tokio::test]
    async fn a_hog_runs_beside_kernel_timed_runs_only() {
        let (a, w) = admission(&[Cpu::Kernel, Cpu::Hog, Cpu::Hog, Cpu::Timed]);
        assert_eq!(
            admitted(&a, &w).await,
            Some(0),
            "nothing in flight: the first"
        );
        sample(&a, 900);
        let hog = a.next(&w, &CancellationToken::new()).await;
        assert_eq!(
            hog.map(|u| u.vi),
            Some(1),
            "a hog beside a kernel-timed run"
        );
        sample(&a, 900);
        assert_eq!(
            admitted(&a, &w).await,
            None,
            "no second hog, no timed run beside it"
        );
        if let Some(hog) = hog {
            a.done(hog, &w);
        }
        sample(&a, 900);
        assert_eq!(
            admitted(&a, &w).await,
            Some(2),
            "the next hog once the first is done"
        );
    }

    #[tokio::test]
    async fn a_hog_waits_for_timed_runs_and_every_start_for_idle_cpu() {
        let (a, w) = admission(&[Cpu::Timed, Cpu::Timed, Cpu::Hog]);
        assert_eq!(admitted(&a, &w).await, Some(0));
        sample(&a, 50);
        assert_eq!(
            admitted(&a, &w).await,
            None,
            "5% idle: no start beside a run"
        );
        sample(&a, 900);
        assert_eq!(admitted(&a, &w).await, Some(1));
        sample(&a, 900);
        assert_eq!(
            admitted(&a, &w).await,
            None,
            "the hog waits for the timed runs"
        );
    }

    #[tokio::test]
    async fn runs_side_by_side_stay_within_the_weight_cap() {
        let (mut a, w) = admission(&[Cpu::Timed, Cpu::Timed, Cpu::Timed]);
        a.cap = 2;
        assert_eq!(admitted(&a, &w).await, Some(0));
        sample(&a, 900);
        assert_eq!(admitted(&a, &w).await, Some(1));
        sample(&a, 900);
        assert_eq!(admitted(&a, &w).await, None, "a third would weigh 3 > 2");
    }

    #[tokio::test]
    async fn a_short_run_that_ended_does_not_hold_back_the_next_start() {
        let (a, w) = admission(&[Cpu::Timed, Cpu::Timed, Cpu::Timed, Cpu::Timed]);
        let cancel = CancellationToken::new();
        assert_eq!(admitted(&a, &w).await, Some(0));
        sample(&a, 900);
        let short = a.next(&w, &cancel).await;
        assert_eq!(short.map(|u| u.vi), Some(1));
        assert_eq!(
            admitted(&a, &w).await,
            None,
            "run 1 started after the last sample: its load is not seen yet"
        );
        if let Some(short) = short {
            a.done(short, &w);
        }
        assert_eq!(
            admitted(&a, &w).await,
            Some(2),
            "run 1 ended: nothing in flight is unseen, no need to wait for a sample"
        );
    }

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
