//! The command line (clap derive only).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "locklab",
    version,
    about = "Reproduce lock failures against real PostgreSQL, and see which setting stops them.",
    after_help = "Exit codes: 0 every expectation held; 1 a mitigation regressed, a baseline no \
                  longer reproduces, or repeated runs disagreed; 2 bad usage or input; \
                  3 the environment or harness failed; 130 interrupted."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run scenarios (by name, `all`, or a path to a .toml file) and print a table.
    Run(Box<RunArgs>),
    /// Print a results file again (table, JSON, Markdown or JUnit) without re-running anything.
    /// Exits as the run did.
    Report(ReportArgs),
    /// List the built-in scenarios, or those of the given files and directories.
    List {
        /// Scenario files or directories of them [default: the built-in scenarios].
        scenarios: Vec<String>,
    },
    /// Write NAME.toml: a commented scenario file of sessions and steps that runs as it is
    /// (a migration's ALTER TABLE queueing behind a report), to make into your own.
    New {
        /// The scenario's name (and file name).
        name: String,
    },
    /// Tell a scenario's story: what fails, why, which setting fixes it, what each variant shows.
    Explain {
        /// Scenario name or path to a .toml file.
        scenario: String,
    },
    /// Throwaway servers for a workshop.
    Env {
        #[command(subcommand)]
        command: EnvCommand,
    },
    /// Print a shell completion script, e.g. `locklab completions bash > /etc/bash_completion.d/locklab`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into DIR.
    Man {
        /// Write locklab.1, locklab-run.1, … into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Measure locklab itself.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Internal: a scenario's worker process (a lock holder a fault can hit for real).
    #[command(name = "__worker", hide = true)]
    Worker { scenario: String },
    /// Internal: removes temp dirs and stops servers if locklab dies.
    #[command(name = "__guardian", hide = true)]
    Guardian,
}

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Start throwaway servers, print their URLs, keep them up until Ctrl-C.
    Up {
        /// Extra server setting for the throwaway PostgreSQL, NAME=VALUE (repeatable).
        #[arg(long = "pg-setting", value_name = "NAME=VALUE")]
        pg_settings: Vec<String>,
        /// A pgbouncer.ini setting for the throwaway PgBouncer, NAME=VALUE (repeatable).
        #[arg(long = "pooler-setting", value_name = "NAME=VALUE")]
        pooler_settings: Vec<String>,
        /// The throwaway PostgreSQL's binaries: a bin directory with initdb and postgres, of
        /// PostgreSQL 14 to 18 (or set LOCKLAB_PG_BIN).
        #[arg(long = "pg-bin", value_name = "DIR")]
        pg_bin: Option<std::path::PathBuf>,
        /// Show the server's sessions live (waiting on a lock, idle in transaction,
        /// connections, the oldest idle transaction) while anything runs against it.
        #[arg(long)]
        watch: bool,
    },
    /// Measure how fast a throwaway server starts (template copy vs initdb) and stops.
    Time {
        /// How many warm starts to time.
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// `run all` at --jobs 1 (scenario by scenario) and at the default (or --jobs N): wall
    /// times and the machine's busy CPU seconds of each; the floors no schedule goes below (the
    /// longest single variant, and the CPU seconds per core); whether the verdicts agree.
    Jobs {
        /// Lanes for the parallel run [default: as `run`].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
        jobs: Option<u16>,
        /// Runs of each variant, as `run --repeat`.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        repeat: u32,
    },
    /// Parameter points drawn at random (seeded) from what each scenario declares, each run as
    /// a user would: every expectation must hold, or the point be refused up front (exit 2). A
    /// point that fails is shrunk toward the defaults and printed as the command to reproduce.
    Claims {
        /// How many points, round-robin over the scenarios.
        #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        samples: u32,
        /// The seed: the same seed draws the same points.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Only this scenario (repeatable) [default: every built-in one].
        #[arg(long = "scenario", value_name = "NAME")]
        scenarios: Vec<String>,
    },
    /// The workload driver against pgbench: one hot-row UPDATE, the same clients, the same
    /// throwaway server; transactions a second of each and their ratio.
    Driver {
        /// Concurrent clients, each with its own connection.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=500))]
        clients: u16,
        /// Seconds each run lasts (whole seconds; pgbench's -T).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=600))]
        seconds: u16,
        /// Runs of each, alternately; the best of each counts.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100))]
        rounds: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Markdown,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Scenario names (`all` for every built-in one) or paths to scenario files.
    #[arg(required = true)]
    pub scenarios: Vec<String>,
    /// Run only this variant (repeatable).
    #[arg(long = "variant", value_name = "NAME")]
    pub variants: Vec<String>,
    /// Override a scenario parameter, NAME=VALUE (repeatable), e.g. --param fault=kill. A
    /// variant that sets NAME itself keeps its own value; VARIANT.NAME=VALUE changes that one.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Run the scenario once per value (repeatable: once per combination) and print, per
    /// variant, its outcome and harm against the swept values, e.g. --sweep bookers=5,20,50.
    #[arg(long = "sweep", value_name = "NAME=V1,V2,...")]
    pub sweeps: Vec<String>,
    /// Multiply every scenario duration: 1 runs at the write-ups' real speed
    /// (25 s payment call, 10 s idle timeout) [default: 0.1, or a scenario file's own
    /// `time_scale`].
    #[arg(long, value_name = "FACTOR")]
    pub time_scale: Option<f64>,
    /// Use your own PostgreSQL instead of a throwaway one. locklab works only in a schema of
    /// its own, which it drops afterwards, and changes no server, database or role setting.
    #[arg(
        long,
        env = "LOCKLAB_PG_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub pg_url: Option<String>,
    /// The throwaway PostgreSQL's binaries: a bin directory with initdb and postgres, of
    /// PostgreSQL 14 to 18 (or set LOCKLAB_PG_BIN). The table's header names the release.
    /// Given more than once, the run is repeated on each and the versions are compared side by
    /// side (e.g. --pg-bin /usr/lib/postgresql/15/bin --pg-bin .cache/pg/18/bin).
    #[arg(long = "pg-bin", value_name = "DIR", conflicts_with = "pg_url")]
    pub pg_bin: Vec<std::path::PathBuf>,
    /// Use your own Redis instead of a throwaway one (redis://[:PASSWORD@]HOST:PORT/DB).
    /// locklab touches only keys under its own `locklab_<id>:` prefix and deletes them
    /// afterwards; it never runs FLUSHDB, FLUSHALL or CONFIG SET.
    #[arg(
        long,
        env = "LOCKLAB_REDIS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub redis_url: Option<String>,
    /// Run the workload through a throwaway PgBouncer in transaction mode, in front of the
    /// throwaway PostgreSQL (locklab's own probes and observers still go straight to it).
    #[arg(long, conflicts_with = "pooler_url")]
    pub pooler: bool,
    /// Run the workload through your own pooler (PgBouncer, RDS Proxy, …); --pg-url names the
    /// server behind it, which locklab's probes and observers use directly.
    #[arg(
        long,
        env = "LOCKLAB_POOLER_URL",
        value_name = "URL",
        hide_env_values = true,
        requires = "pg_url"
    )]
    pub pooler_url: Option<String>,
    /// Your PgBouncer's admin console (its `pgbouncer` database, as a user in admin_users or
    /// stats_users), read for the pooler's own figures (SHOW POOLS); without it they are
    /// reported as unknown.
    #[arg(
        long,
        env = "LOCKLAB_POOLER_ADMIN_URL",
        value_name = "URL",
        hide_env_values = true,
        requires = "pooler_url"
    )]
    pub pooler_admin_url: Option<String>,
    /// A second pool on your pooler (another database alias or user of the same server), for
    /// traffic kept apart from the workload's pool: connection-storm's other endpoints in its
    /// separate-pool variants.
    #[arg(
        long,
        env = "LOCKLAB_POOLER_OTHERS_URL",
        value_name = "URL",
        hide_env_values = true,
        requires = "pooler_url"
    )]
    pub pooler_others_url: Option<String>,
    /// A pgbouncer.ini setting for the throwaway PgBouncer, NAME=VALUE (repeatable; implies
    /// --pooler), e.g. --pooler-setting default_pool_size=5.
    #[arg(
        long = "pooler-setting",
        value_name = "NAME=VALUE",
        conflicts_with = "pooler_url"
    )]
    pub pooler_settings: Vec<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Directory for the JSON results.
    #[arg(long, default_value = "results", value_name = "DIR")]
    pub out: PathBuf,
    /// Write no results file.
    #[arg(long)]
    pub no_results: bool,
    /// No progress bars (they are hidden anyway when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Run each variant N times; any disagreement between runs fails the run.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeat: u32,
    /// Run up to N variants (or repeats) side by side, each on throwaway servers of its own
    /// [default: four per core, at most 8]. Runs on your servers (--pg-url, --redis-url,
    /// --pooler-url) go one at a time.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: Option<u16>,
    /// Also write a JUnit XML report (one test case per scenario and variant).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Also write the run as one self-contained HTML page: per variant, a lane per client, the
    /// fault and release markers, the server's gauges and the latencies, on a shared time axis.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A results file written by `locklab run` (under results/ by default).
    pub file: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Also write a JUnit XML report.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Also write the run as one self-contained HTML page (as `run --html`).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}
