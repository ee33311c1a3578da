//! `locklab bench`: measures locklab itself.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::env::EnvOptions;
use crate::error::exit;
use crate::report::RunReport;
use crate::runner::{self, RunOptions};

use super::{cancel_on_signals, exe, resolve_scenarios};

/// The workload driver against pgbench (see [`crate::bench`]).
pub(super) async fn driver(clients: usize, seconds: u64, rounds: usize) -> anyhow::Result<i32> {
    let cancel = cancel_on_signals("stopping servers");
    let tps = crate::bench::driver(clients, seconds as f64, rounds, exe()?, cancel.clone()).await?;
    if cancel.is_cancelled() {
        return Ok(exit::INTERRUPTED);
    }
    let ratio = |x: f64| x / tps.pgbench.max(f64::MIN_POSITIVE);
    out!("one-row UPDATE, {clients} clients, best of {rounds} × {seconds} s each:");
    out!(
        "  locklab's workload driver: {:>7.0} transactions/s  {:.2}× pgbench",
        tps.driver,
        ratio(tps.driver)
    );
    out!(
        "  a step file (whole run):   {:>7.0} transactions/s  {:.2}× pgbench",
        tps.step_file,
        ratio(tps.step_file)
    );
    out!(
        "  pgbench:                   {:>7.0} transactions/s",
        tps.pgbench
    );
    out!("  target: each ≥ 0.90× pgbench");
    Ok(if ratio(tps.driver) >= 0.9 && ratio(tps.step_file) >= 0.9 {
        exit::OK
    } else {
        exit::EXPECTATION_FAILED
    })
}

/// `run all` one variant at a time (scenario by scenario) and then side by side, on throwaway
/// servers. The side-by-side pass is measured against its floor, the larger of the two bounds
/// no schedule beats: the longest single variant, and the machine's busy CPU seconds over its
/// cores. Its queue is ordered by what each variant took in the first pass.
pub(super) async fn jobs(jobs: usize, repeat: u32) -> anyhow::Result<i32> {
    let (scenarios, _) = resolve_scenarios(&["all".to_string()], &[])?;
    let cancel = cancel_on_signals("stopping servers");
    out!("run all --repeat {repeat} --jobs 1, scenario by scenario:");
    let mut one = Pass::default();
    let mut estimates = BTreeMap::new();
    for s in &scenarios {
        let pass = Pass::run(options(vec![s.clone()], 1, repeat)?, &cancel).await?;
        if cancel.is_cancelled() {
            return Ok(exit::INTERRUPTED);
        }
        out!(
            "  {:<18} {:>7.1} s  {:>12}",
            s.name,
            pass.wall,
            cpu_text(pass.cpu)
        );
        estimates.extend(pass.took.clone());
        one.add(pass);
    }
    out!(
        "  {:<18} {:>7.1} s  {:>12}  ({})",
        "all",
        one.wall,
        cpu_text(one.cpu),
        held(one.held)
    );
    let opts = RunOptions {
        estimates,
        ..options(scenarios.clone(), jobs, repeat)?
    };
    let side = Pass::run(opts, &cancel).await?;
    if cancel.is_cancelled() {
        return Ok(exit::INTERRUPTED);
    }
    out!(
        "run all --repeat {repeat} --jobs {jobs}: {:.1} s, {} ({})",
        side.wall,
        cpu_text(side.cpu),
        held(side.held)
    );
    floors(&one, &side, jobs);
    let same = one.verdicts == side.verdicts;
    out!(
        "verdicts at --jobs 1 and --jobs {jobs}: {}",
        if same { "identical" } else { "DIFFERENT" }
    );
    for (a, b) in one
        .verdicts
        .iter()
        .zip(&side.verdicts)
        .filter(|(a, b)| a != b)
    {
        let said = |v: &VariantVerdict| v.failure.unwrap_or("held");
        out!(
            "  {}/{}: {} at --jobs 1, {} at --jobs {jobs}",
            a.scenario,
            a.variant,
            said(a),
            said(b)
        );
        for (pass, line) in (a.why.iter().map(|l| (1, l))).chain(b.why.iter().map(|l| (jobs, l))) {
            out!("    --jobs {pass}: {line}");
        }
    }
    Ok(if same {
        exit::OK
    } else {
        exit::EXPECTATION_FAILED
    })
}

/// The side-by-side pass against each floor and the larger of them (the target is 1.15×).
fn floors(one: &Pass, side: &Pass, jobs: usize) {
    let longest = one.longest.max(side.longest);
    let cores = crate::observe::cpu::cores();
    out!("longest single variant: {longest:.2} s");
    let cpu_floor = side.cpu.map(|cpu| cpu / cores);
    if let (Some(cpu), Some(floor)) = (side.cpu, cpu_floor) {
        out!(
            "CPU: {cpu:.1} CPU-s on {cores} cores, so no schedule of this work ends before {floor:.1} s here"
        );
    }
    let floor = cpu_floor.unwrap_or(0.0).max(longest);
    out!(
        "--jobs {jobs}: {:.1} s = {:.2}× its floor of {floor:.1} s (target ≤ 1.15×); \
         --jobs 1 / --jobs {jobs}: {:.1}×",
        side.wall,
        side.wall / floor.max(0.001),
        one.wall / side.wall.max(0.001)
    );
}

/// The options of one `run all` pass over `scenarios` on `lanes` lanes.
fn options(
    scenarios: Vec<crate::scenario::Scenario>,
    lanes: usize,
    repeat: u32,
) -> anyhow::Result<RunOptions> {
    Ok(RunOptions {
        variants: Vec::new(),
        time_scale: 0.1,
        time_scale_given: true,
        env: EnvOptions {
            need_redis: scenarios.iter().any(|s| s.kind.needs_redis),
            exe: exe()?,
            ..EnvOptions::default()
        },
        scenarios,
        out_dir: None,
        estimates: BTreeMap::new(),
        repeat,
        jobs: lanes,
        progress: false,
    })
}

/// One pass (or several, added up): its wall time, the machine's busy CPU seconds, the longest
/// single variant's run, whether every expectation held, and the verdicts.
#[derive(Default)]
struct Pass {
    wall: f64,
    cpu: Option<f64>,
    longest: f64,
    held: bool,
    verdicts: Vec<VariantVerdict>,
    /// What each variant's run took.
    took: BTreeMap<(String, String), Duration>,
}

impl Pass {
    async fn run(
        opts: RunOptions,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Pass> {
        use crate::observe::cpu::machine_busy_seconds;
        let (t, cpu) = (std::time::Instant::now(), machine_busy_seconds());
        let report = runner::run(opts, cancel.clone()).await?.report;
        let cpu = cpu.zip(machine_busy_seconds()).map(|(a, b)| b - a);
        let took = took(&report);
        Ok(Pass {
            wall: t.elapsed().as_secs_f64(),
            cpu,
            longest: took.values().map(Duration::as_secs_f64).fold(0.0, f64::max),
            held: report.all_held(),
            verdicts: verdicts(&report),
            took,
        })
    }

    /// Adds a pass run after this one.
    fn add(&mut self, p: Pass) {
        let first = self.verdicts.is_empty() && self.wall == 0.0;
        self.wall += p.wall;
        self.cpu = match first {
            true => p.cpu,
            false => self.cpu.zip(p.cpu).map(|(a, b)| a + b),
        };
        self.longest = self.longest.max(p.longest);
        self.held = (first || self.held) && p.held;
        self.verdicts.extend(p.verdicts);
        self.took.extend(p.took);
    }
}

/// What each variant's run took, per run.
fn took(report: &RunReport) -> BTreeMap<(String, String), Duration> {
    report
        .scenarios
        .iter()
        .flat_map(|s| {
            s.variants.iter().filter(|v| v.skipped.is_none()).map(|v| {
                let each = v.wall_ms / u64::from(v.runs.max(1));
                (
                    (s.name.clone(), v.name.clone()),
                    Duration::from_millis(each),
                )
            })
        })
        .collect()
}

fn cpu_text(cpu: Option<f64>) -> String {
    cpu.map_or("unreadable".into(), |c| format!("{c:.1} CPU-s"))
}

fn held(all: bool) -> &'static str {
    match all {
        true => "every expectation held",
        false => "SOME EXPECTATION FAILED",
    }
}

/// A variant's verdict, and why it failed, which the comparison leaves out.
#[derive(Debug)]
struct VariantVerdict {
    scenario: String,
    variant: String,
    /// The failure's headline; `None`: every expectation held.
    failure: Option<&'static str>,
    /// Why, as the run's own summary says it ([`crate::report::VariantReport::failure_lines`]).
    why: Vec<String>,
}

impl PartialEq for VariantVerdict {
    fn eq(&self, other: &VariantVerdict) -> bool {
        (&self.scenario, &self.variant, self.failure)
            == (&other.scenario, &other.variant, other.failure)
    }
}

/// Each variant's verdict, in scenario and variant order. (Its outcome word may differ from
/// run to run where the harm shows in more than one form; the verdict must not.)
fn verdicts(report: &RunReport) -> Vec<VariantVerdict> {
    report
        .scenarios
        .iter()
        .flat_map(|s| {
            s.variants.iter().map(|v| VariantVerdict {
                scenario: s.name.clone(),
                variant: v.name.clone(),
                failure: v.failure_kind().map(|f| f.headline()),
                why: v.failure_lines(&s.label()),
            })
        })
        .collect()
}

/// `bench claims`: `samples` parameter points, drawn with `seed` from what the scenarios
/// declare, each run as a user would; any that fails is shrunk toward the defaults and
/// printed as the command that reproduces it.
pub(super) fn claims(samples: usize, seed: u64, names: &[String]) -> anyhow::Result<i32> {
    use crate::claims::{Sampler, Verdict, shrink};
    let names: Vec<String> = match names.is_empty() {
        true => vec!["all".into()],
        false => names.to_vec(),
    };
    let (scenarios, _) = resolve_scenarios(&names, &[])?;
    let exe = exe()?;
    let mut sampler = Sampler::new(seed);
    out!(
        "{samples} parameter points, seed {seed}, over {} scenario(s):",
        scenarios.len()
    );
    let (mut held, mut refused, mut failing) = (0, 0, Vec::new());
    for i in 0..samples {
        let point = sampler.draw(&scenarios[i % scenarios.len()]);
        let verdict = run_point(&exe, &point);
        let said = match &verdict {
            Verdict::Held => {
                held += 1;
                "held".to_string()
            }
            Verdict::Refused(why) => {
                refused += 1;
                format!("refused: {why}")
            }
            Verdict::Failed(130, _) => return Ok(exit::INTERRUPTED),
            Verdict::Failed(code, why) => {
                failing.push(point.clone());
                format!("FAILED (exit {code}): {why}")
            }
        };
        out!("  {:>4}  {}  -> {said}", i + 1, point.command());
    }
    out!(
        "{held} held, {refused} refused up front, {} failed",
        failing.len()
    );
    for p in &failing {
        let small = shrink(p, |q| run_point(&exe, q), 8);
        out!("reproduce: {}", small.command());
    }
    Ok(match failing.is_empty() {
        true => exit::OK,
        false => exit::EXPECTATION_FAILED,
    })
}

/// Runs one point as its own `locklab run`, and reads its verdict off its exit code.
fn run_point(exe: &std::path::Path, p: &crate::claims::Point) -> crate::claims::Verdict {
    use crate::claims::Verdict;
    let out = std::process::Command::new(exe)
        .args(p.args())
        .args(["--no-results", "--no-progress", "--format", "json"])
        .stdin(std::process::Stdio::null())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => return Verdict::Failed(3, format!("could not start it: {e}")),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = |pick: &dyn Fn(&str) -> bool| {
        stderr
            .lines()
            .find(|l| pick(l))
            .unwrap_or_else(|| stderr.lines().last().unwrap_or(""))
            .trim()
            .chars()
            .take(200)
            .collect::<String>()
    };
    match out.status.code() {
        Some(0) => Verdict::Held,
        Some(2) => Verdict::Refused(first(&|l| l.starts_with("Error:"))),
        Some(code) => Verdict::Failed(
            code,
            first(&|l| {
                l.contains("REGRESSED") || l.contains("NO LONGER") || l.starts_with("Error:")
            }),
        ),
        None => Verdict::Failed(-1, "killed by a signal".into()),
    }
}
