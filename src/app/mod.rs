//! What each command does. `main` only maps the result to an exit code.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use comfy_table::{Table, presets::NOTHING};
use tokio_util::sync::CancellationToken;

use crate::cli::{BenchCommand, Cli, Command, EnvCommand, Format, ReportArgs, RunArgs};
use crate::env::{EnvOptions, PoolerChoice};
use crate::error::{UsageError, exit, exit_code};
use crate::report::{
    Exporter, RunReport, html::Html, json::Json, junit::Junit, markdown::Markdown, table::Tables,
};
use crate::runner::{self, RunOptions};
use crate::scenario::{self, kinds, spec};

/// `println!` that does not panic when stdout is closed (`locklab run … | head`): a reader
/// that went away wants no more output, and the run's exit code still stands.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod bench;
mod env;

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
        }
    };
    // The guardian needs no runtime, and must not wait on one.
    let command = match cli.command {
        Command::Guardian => return crate::env::guardian::guardian_main(),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "locklab", &mut script);
            // A reader that went away (`| head`) wants no more: not an error.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            return exit::OK;
        }
        Command::Man { dir } => return man(dir.as_deref()),
        Command::Run(a) => Work::Run(a),
        Command::Report(a) => Work::Report(a),
        Command::List { scenarios } => Work::List(scenarios),
        Command::New { name } => return new_scenario(&name),
        Command::Explain { scenario } => Work::Explain(scenario),
        Command::Env { command } => Work::Env(command),
        Command::Worker { scenario } => Work::Worker(scenario),
        Command::Bench { command } => Work::Bench(command),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            crate::say!("Error: could not start the async runtime: {e}");
            return exit::ENVIRONMENT;
        }
    };
    let code = rt.block_on(async {
        match dispatch(command).await {
            Ok(code) => code,
            Err(e) => {
                crate::say!("Error: {e:#}");
                exit_code(&e)
            }
        }
    });
    // Worker connections may still be closing; do not wait on them.
    rt.shutdown_timeout(Duration::from_millis(100));
    code
}

/// What a command does, once the runtime is up.
enum Work {
    Run(Box<RunArgs>),
    Report(ReportArgs),
    List(Vec<String>),
    Explain(String),
    Env(EnvCommand),
    Bench(BenchCommand),
    Worker(String),
}

async fn dispatch(work: Work) -> anyhow::Result<i32> {
    match work {
        Work::List(files) => list(&files),
        Work::Explain(scenario) => explain(&scenario),
        Work::Run(args) => run(*args).await,
        Work::Report(args) => reprint(args),
        Work::Env(EnvCommand::Up {
            pg_settings,
            pooler_settings,
            pg_bin,
            watch,
        }) => {
            if let Some(dir) = pg_bin {
                crate::env::postgres::use_bin_dir(dir);
            }
            env::env_up(pg_settings, pooler_settings, watch).await
        }
        Work::Env(EnvCommand::Time { runs }) => env::env_time(runs).await,
        Work::Bench(BenchCommand::Claims {
            samples,
            seed,
            scenarios,
        }) => {
            tokio::task::spawn_blocking(move || bench::claims(samples as usize, seed, &scenarios))
                .await?
        }
        Work::Bench(BenchCommand::Jobs { jobs, repeat }) => {
            bench::jobs(jobs.map_or_else(runner::default_jobs, usize::from), repeat).await
        }
        Work::Bench(BenchCommand::Driver {
            clients,
            seconds,
            rounds,
        }) => bench::driver(clients.into(), seconds.into(), rounds.into()).await,
        Work::Worker(name) => {
            let kind = scenario::kind_named(&name)
                .ok_or_else(|| UsageError(format!("no scenario `{name}` has a worker")))?;
            (kind.worker)(crate::env::worker::WorkerIo::open().await?).await?;
            Ok(exit::OK)
        }
    }
}

fn list(files: &[String]) -> anyhow::Result<i32> {
    let mut t = Table::new();
    t.load_style(NOTHING);
    let names: Vec<String> = match files.is_empty() {
        true => vec!["all".into()],
        false => files.to_vec(),
    };
    for s in resolve_scenarios(&names, &[])?.0 {
        let variants: Vec<&str> = s.variants.iter().map(|v| v.name.as_str()).collect();
        t.add_row(vec![s.name.clone(), s.summary.clone(), variants.join(", ")]);
    }
    out!("{t}");
    Ok(exit::OK)
}

fn explain(name: &str) -> anyhow::Result<i32> {
    let s = scenario::load(name)?;
    out!(
        "{} — {}\n\n{}\n\nVariants (at time scale 1, the write-up's real speed):",
        s.name,
        s.summary,
        s.explain
    );
    for v in &s.variants {
        let r = s.resolve(v, 1.0);
        let settings = if r.settings.is_empty() {
            "no settings".to_string()
        } else {
            r.settings
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut mark = if v.mitigated { " (mitigation)" } else { "" }.to_string();
        if v.opt_in {
            mark.push_str(" (runs only when named with --variant)");
        }
        out!(
            "\n  {}{mark} [{settings}]\n    {}",
            v.name,
            v.shows.replace('\n', "\n    ")
        );
        if !v.params.is_empty() {
            // What `--param NAME=V` leaves alone here (`--param VARIANT.NAME=V` changes it).
            let own: Vec<String> = v.params.iter().map(|(k, p)| format!("{k}={p}")).collect();
            out!("    its own: {}", own.join(", "));
        }
        for e in &r.expect {
            out!("    expects: {}", e.text);
        }
    }
    out!(
        "\nParameters: {}",
        s.params
            .iter()
            .map(|(k, v)| match s.kind.param(k) {
                Some(spec) => format!("{k}={v} ({})", spec.range()),
                None => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(exit::OK)
}

/// The selected scenarios with `--param` overrides applied, and notes about options that do
/// nothing. A name no selected scenario declares is refused (a typo, with the nearest name);
/// in a run of several scenarios, an override applies to those that declare it.
pub(crate) fn resolve_scenarios(
    names: &[String],
    overrides: &[String],
) -> Result<(Vec<scenario::Scenario>, Vec<String>), UsageError> {
    let overrides = overrides
        .iter()
        .map(|o| spec::parse_override(o))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    for name in names {
        if name == "all" {
            for k in kinds() {
                out.push(scenario::load(k.name)?);
            }
        } else if std::path::Path::new(name).is_dir() {
            out.extend(scenario::load_dir(std::path::Path::new(name))?);
        } else {
            out.push(scenario::load(name)?);
        }
    }
    let mut notes = Vec::new();
    for (key, v) in &overrides {
        // `VARIANT.NAME=V`: that variant's own value, in the scenarios that have it.
        let (variant, k) = spec::split_key(key);
        let readers: Vec<usize> = (0..out.len())
            .filter(|&i| out[i].kind.param(k).is_some())
            .filter(|&i| variant.is_none_or(|n| out[i].variants.iter().any(|x| x.name == n)))
            .collect();
        if readers.is_empty() {
            // One scenario: its own error names its parameters (or variants) and the nearest.
            if let [only] = out.as_mut_slice() {
                only.override_params(&[(key.clone(), v.clone())])?;
            }
            if let (Some(variant), true) = (variant, out.iter().any(|s| s.kind.param(k).is_some()))
            {
                return Err(UsageError(format!(
                    "--param {key}: no selected scenario that reads `{k}` has a variant `{variant}`"
                )));
            }
            return Err(undeclared(&format!("`{k}`"), k, &out));
        }
        for &i in &readers {
            notes.extend(out[i].override_params(&[(key.clone(), v.clone())])?);
        }
        if readers.len() < out.len() {
            let unread: Vec<&str> = (0..out.len())
                .filter(|i| !readers.contains(i))
                .map(|i| out[i].name.as_str())
                .collect();
            notes.push(format!(
                "note: --param {key} applies to {}; {} do not read it",
                readers
                    .iter()
                    .map(|&i| out[i].name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                unread.join(", ")
            ));
        }
    }
    Ok((out, notes))
}

/// A parameter no selected scenario declares, with the nearest name any of them does.
fn undeclared(what: &str, name: &str, scenarios: &[scenario::Scenario]) -> UsageError {
    let known = scenarios
        .iter()
        .flat_map(|s| s.kind.params.iter().map(|p| p.name));
    let hint = crate::text::nearest(name, known)
        .map(|n| format!("; did you mean `{n}`?"))
        .unwrap_or_default();
    UsageError(format!(
        "{what} is not a parameter of any selected scenario{hint}"
    ))
}

/// Runs of one scenario a sweep may make, all points together: beyond it, a typo.
const MAX_SWEEP_POINTS: usize = 200;

/// `--sweep NAME=V1,V2`: one copy of each scenario per combination of the swept values it
/// declares, each value checked like a `--param`.
fn sweep(
    scenarios: Vec<scenario::Scenario>,
    sweeps: &[String],
    overrides: &[String],
    notes: &mut Vec<String>,
) -> Result<Vec<scenario::Scenario>, UsageError> {
    if sweeps.is_empty() {
        return Ok(scenarios);
    }
    let mut axes: Vec<(String, Vec<spec::Param>)> = Vec::new();
    for s in sweeps {
        let (name, values) = s
            .split_once('=')
            .ok_or_else(|| UsageError(format!("--sweep takes NAME=V1,V2,..., got `{s}`")))?;
        let name = name.trim();
        let values = values
            .split(',')
            .map(|v| spec::parse_override(&format!("{name}={v}")).map(|(_, p)| p))
            .collect::<Result<Vec<_>, _>>()?;
        if axes.iter().any(|(n, _)| n == name) {
            return Err(UsageError(format!("--sweep {name} is given twice")));
        }
        if overrides
            .iter()
            .any(|o| o.split_once('=').is_some_and(|(k, _)| k.trim() == name))
        {
            return Err(UsageError(format!(
                "{name} is both swept and set with --param: choose one"
            )));
        }
        if !scenarios.iter().any(|sc| sc.kind.param(name).is_some()) {
            return Err(undeclared(&format!("--sweep {name}"), name, &scenarios));
        }
        axes.push((name.to_string(), values));
    }
    let mut out = Vec::new();
    for s in scenarios {
        let mine: Vec<&(String, Vec<spec::Param>)> = axes
            .iter()
            .filter(|(n, _)| s.kind.param(n).is_some())
            .collect();
        if mine.len() < axes.len() {
            notes.push(format!(
                "note: {} does not read every swept parameter; it is swept over {}",
                s.name,
                if mine.is_empty() {
                    "none (runs once)".to_string()
                } else {
                    mine.iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        }
        let mut points: Vec<Vec<(String, spec::Param)>> = vec![Vec::new()];
        for (name, values) in &mine {
            points = points
                .into_iter()
                .flat_map(|p| {
                    values.iter().map(move |v| {
                        let mut p = p.clone();
                        p.push((name.clone(), v.clone()));
                        p
                    })
                })
                .collect();
        }
        if points.len() > MAX_SWEEP_POINTS {
            return Err(UsageError(format!(
                "--sweep would run {} at {} points; at most {MAX_SWEEP_POINTS}",
                s.name,
                points.len()
            )));
        }
        // As with --param, a variant that sets a swept parameter itself keeps its value: one
        // note per parameter, not one per point.
        for (name, _) in &mine {
            let own: Vec<&str> = s
                .variants
                .iter()
                .filter(|v| v.params.contains_key(name.as_str()))
                .map(|v| v.name.as_str())
                .collect();
            if !own.is_empty() {
                notes.push(format!(
                    "note: --sweep {name} leaves {} of {} at their own value",
                    own.join(", "),
                    s.name
                ));
            }
        }
        for point in points {
            let mut copy = s.clone();
            copy.override_params(&point)?;
            copy.swept = point;
            out.push(copy);
        }
    }
    Ok(out)
}

/// Ctrl-C and SIGTERM cancel the token; teardown then runs as usual. A second one exits at
/// once: servers still die with locklab (PDEATHSIG) and the guardian removes their files.
pub(crate) fn cancel_on_signals(winding_down: &'static str) -> CancellationToken {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        for round in 0.. {
            let terminated = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminated => {}
            }
            if round > 0 {
                crate::say!("locklab: interrupted again; exiting now (servers die with locklab)");
                std::process::exit(exit::INTERRUPTED);
            }
            crate::say!("locklab: interrupted; {winding_down} (again to quit at once)");
            c.cancel();
        }
    });
    cancel
}

pub(crate) fn exe() -> anyhow::Result<std::path::PathBuf> {
    std::env::current_exe().context("cannot find the locklab executable")
}

async fn run(args: RunArgs) -> anyhow::Result<i32> {
    let versions = pg_versions(&args.pg_bin)?;
    let (scenarios, mut notes) = resolve_scenarios(&args.scenarios, &args.params)?;
    let scenarios = sweep(scenarios, &args.sweeps, &args.params, &mut notes)?;
    let need_redis = scenarios.iter().any(|s| s.kind.needs_redis);
    // Malformed URLs are the user's input: refused before anything starts.
    if let Some(url) = &args.pg_url {
        crate::env::postgres::parse_url(url)?;
    }
    let pooler = pooler_choice(&args)?;
    if let Some(url) = &args.redis_url {
        crate::env::redis::parse_url(url)?;
        if !need_redis {
            notes.push(
                "note: --redis-url (or LOCKLAB_REDIS_URL) is not used: no selected scenario uses Redis"
                    .to_string(),
            );
        }
    }
    for n in &notes {
        crate::say!("{n}");
    }
    let cancel = cancel_on_signals("stopping servers and writing partial results");
    let opts = RunOptions {
        scenarios,
        variants: args.variants,
        time_scale: args.time_scale.unwrap_or(0.1),
        time_scale_given: args.time_scale.is_some(),
        env: EnvOptions {
            pg_url: args.pg_url,
            redis_url: args.redis_url,
            need_redis,
            exe: exe()?,
            pooler,
            pooler_admin_url: args.pooler_admin_url,
            pooler_others_url: args.pooler_others_url,
            ..EnvOptions::default()
        },
        // The queue's order learns from the last run here, whether or not this one writes.
        estimates: runner::estimates(&args.out, args.time_scale.unwrap_or(0.1)),
        out_dir: (!args.no_results).then_some(args.out),
        repeat: args.repeat,
        jobs: args.jobs.map_or_else(runner::default_jobs, usize::from),
        progress: !args.no_progress
            && args.format == Format::Table
            && std::io::stderr().is_terminal(),
    };
    let finished = match versions.len() {
        0 | 1 => runner::run(opts, cancel).await?,
        _ => runner::run_matrix(opts, versions, cancel).await?,
    };
    let code = print_report(
        &finished.report,
        args.format,
        args.junit.as_deref(),
        args.html.as_deref(),
    )?;
    if let Some(e) = &finished.write_error {
        crate::say!("locklab: results not written: {e}");
    } else if let Some(path) = &finished.results_file {
        crate::say!("results: {}", path.display());
    }
    match finished.stopped {
        Some(e) => Err(e),
        None => Ok(code),
    }
}

/// The `--pg-bin` directories, each checked (server binaries there, a supported major) before
/// anything starts, with its release; the last one given stays in use. Two directories of the
/// same release would compare a server with itself: refused.
fn pg_versions(dirs: &[std::path::PathBuf]) -> anyhow::Result<Vec<(std::path::PathBuf, String)>> {
    let mut out: Vec<(std::path::PathBuf, String)> = Vec::new();
    for dir in dirs {
        crate::env::postgres::use_bin_dir(dir.clone());
        let bins = crate::env::postgres::find_binaries()?;
        if let Some((other, _)) = out.iter().find(|(_, r)| *r == bins.release) {
            return Err(UsageError(format!(
                "--pg-bin {} and --pg-bin {} are both PostgreSQL {}: give each release once",
                other.display(),
                dir.display(),
                bins.release
            ))
            .into());
        }
        out.push((dir.clone(), bins.release));
    }
    Ok(out)
}

/// Prints a report in the chosen format, writes JUnit if asked, lists what failed and why,
/// and returns the exit code the report calls for.
fn print_report(
    report: &RunReport,
    format: Format,
    junit: Option<&std::path::Path>,
    html: Option<&std::path::Path>,
) -> anyhow::Result<i32> {
    let out = match format {
        Format::Table => Tables {
            fit_terminal: std::io::stdout().is_terminal(),
        }
        .render(report),
        Format::Json => Json.render(report),
        Format::Markdown => Markdown.render(report),
    };
    out!("{}", out.trim_end());
    if let Some(path) = junit {
        write_file(path, &Junit.render(report), "the JUnit report")?;
    }
    if let Some(path) = html {
        write_file(path, &Html.render(report), "the page")?;
        crate::say!("page: {}", path.display());
    }
    for f in report.failures() {
        crate::say!("{f}");
    }
    Ok(report.exit_code())
}

/// `locklab new NAME`: a commented step file that runs as it is, to edit into one's own.
fn new_scenario(name: &str) -> i32 {
    let path = std::path::PathBuf::from(match name.ends_with(".toml") {
        true => name.to_string(),
        false => format!("{name}.toml"),
    });
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let plain = stem
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if stem.is_empty() || !plain || scenario::kind_named(&stem).is_some() {
        crate::say!(
            "Error: `{stem}` cannot name a scenario: use letters, digits, - and _, and no \
             built-in scenario's name"
        );
        return exit::USAGE;
    }
    if path.exists() {
        crate::say!("Error: {} exists already: nothing written", path.display());
        return exit::USAGE;
    }
    let text = scenario::steps::TEMPLATE.replacen(
        "name = \"migration-queue\"",
        &format!("name = \"{stem}\""),
        1,
    );
    match std::fs::write(&path, text) {
        Ok(()) => {
            out!("{}", path.display());
            crate::say!(
                "wrote {}: `locklab run {}` runs it as it is; see README, \"Write your own scenario\"",
                path.display(),
                path.display()
            );
            exit::OK
        }
        Err(e) => {
            crate::say!("Error: could not write {}: {e}", path.display());
            exit::ENVIRONMENT
        }
    }
}

/// `locklab man`: the man page from the command line's own definitions.
fn man(dir: Option<&std::path::Path>) -> i32 {
    let cmd = <Cli as clap::CommandFactory>::command();
    let written = match dir {
        Some(dir) => std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(cmd, dir))
            .map(|()| crate::say!("man pages: {}", dir.display())),
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout()),
    };
    match written {
        Ok(()) => exit::OK,
        // A reader that went away (`| head`) wants no more: not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            crate::say!("Error: could not write the man page: {e}");
            exit::ENVIRONMENT
        }
    }
}

/// Writes `text` to `path`, creating its directory.
fn write_file(path: &std::path::Path, text: &str, what: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("could not write {what} {}", path.display()))
}

/// `locklab report FILE`: a past run, printed again.
fn reprint(args: ReportArgs) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| UsageError(format!("cannot read {}: {e}", args.file.display())))?;
    let report: RunReport = serde_json::from_str(&text).map_err(|e| {
        UsageError(format!(
            "{}:{}:{}: not a locklab results file: {e}",
            args.file.display(),
            e.line(),
            e.column()
        ))
    })?;
    let code = print_report(
        &report,
        args.format,
        args.junit.as_deref(),
        args.html.as_deref(),
    )?;
    let again = crate::report::recheck::recheck(&report);
    for line in again.lines() {
        crate::say!("{line}");
    }
    // A verdict the saved history does not bear out fails the report, as a regression would.
    Ok(match again.differ.is_empty() {
        true => code,
        false => code.max(1),
    })
}

/// Where the workload meets PostgreSQL, from --pooler, --pooler-url and --pooler-setting;
/// checked for shape before anything starts.
fn pooler_choice(args: &RunArgs) -> Result<PoolerChoice, UsageError> {
    if let Some(url) = &args.pooler_url {
        let given = [
            ("--pooler-url", Some(url)),
            ("--pooler-admin-url", args.pooler_admin_url.as_ref()),
            ("--pooler-others-url", args.pooler_others_url.as_ref()),
        ];
        for (flag, url) in given {
            if let Some(url) = url {
                crate::env::postgres::parse_url(url)
                    .map_err(|e| UsageError(format!("{flag}: {}", e.0)))?;
            }
        }
        return Ok(PoolerChoice::Url(url.clone()));
    }
    if !args.pooler && args.pooler_settings.is_empty() {
        return Ok(PoolerChoice::None);
    }
    if args.pg_url.is_some() {
        return Err(UsageError(crate::env::pgbouncer::FRONTS_OWN_SERVER.into()));
    }
    let settings = args
        .pooler_settings
        .iter()
        .map(|s| crate::env::pgbouncer::parse_setting(s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PoolerChoice::Throwaway(settings))
}
