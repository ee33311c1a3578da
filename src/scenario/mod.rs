//! Scenarios: data in `scenarios/*.toml`, plus one code file per failure mode.
//! A scenario never sees the CLI: it gets its resolved variant and a context to work in.

pub mod begin_on_pool;
pub mod booking;
pub mod check_then_act;
pub mod connection_storm;
pub mod isolation;
pub mod lost_client;
pub mod orphan_lock;
pub mod own_server;
pub mod pool_deadlock;
pub mod pooler_pitfalls;
pub mod redis_failover;
pub mod setnx_race;
pub mod shutdown;
pub mod spec;
pub mod steps;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::future::Future;

use futures::future::BoxFuture;
use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;

use crate::check::Evaluation;
use crate::env::Env;
use crate::env::postgres::PgTarget;
use crate::env::worker::WorkerIo;
use crate::error::UsageError;
use crate::history::{Clock, History};
pub use spec::{Accepts, ParamSpec, Params, ResolvedVariant, Scenario};

/// The code behind a scenario. The implementing type is the scenario's typed configuration,
/// parsed once from a variant's resolved parameters (after each value was checked against
/// [`Code::PARAMS`]) and then run: nothing is parsed, and no usage error raised, mid-run.
pub trait Code: Send + Sync + Sized + 'static {
    const NAME: &'static str;
    /// Its scenario file, embedded so `locklab run NAME` works from any directory.
    const FILE: &'static str;
    /// Every parameter it reads, with what each accepts.
    const PARAMS: &'static [ParamSpec];
    /// Every metric its checker emits (a test per checker keeps the two in step).
    const METRICS: &'static [&'static str];
    /// The run starts (or connects to) Redis only when some scenario needs it.
    const NEEDS_REDIS: bool = false;

    /// The parameters a variant's PostgreSQL sessions grow with, for the message that tells a
    /// user what to lower when the server is too small (e.g. `clients`).
    const SIZED_BY: &'static str;

    /// Builds the configuration; relations between parameters are checked here.
    fn config(p: &Params) -> Result<Self, UsageError>;

    /// The most PostgreSQL sessions a variant with this configuration has open at once, its
    /// own setup and observer sessions included (a test checks the count on a real server).
    fn sessions(&self) -> usize;

    /// How much of the machine a variant takes, in sessions' worth, for how many runs go side
    /// by side (`--jobs`): its sessions, unless its load is of another kind.
    fn weight(&self) -> usize {
        self.sessions()
    }

    /// What a variant does to the machine's CPU, and what a busy CPU does to its verdict:
    /// which runs it may go side by side with.
    fn cpu(&self) -> Cpu {
        Cpu::Timed
    }

    /// How long a run takes, where the scenario knows better than its cut-off (the queue's
    /// guess when no results file has taught it: longest first, so no short run waits behind
    /// a long tail). `None`: the cut-off.
    fn estimate(&self) -> Option<std::time::Duration> {
        None
    }

    /// Why this variant cannot run in this environment, if it cannot: it needs a server locklab
    /// starts itself, a path straight to the server, slots no pooler hides, or root for a
    /// network fault (the `Env::…_missing` methods say each). The runner then skips it with the
    /// reason.
    fn unavailable(&self, env: &Env) -> Option<String> {
        let _ = env;
        None
    }

    /// Against a user's server (`--pg-url`), whether this configuration fits the connection
    /// slots it has free, read once before any variant runs: a point that cannot show the harm
    /// there is refused (exit 2) up front, never found out mid-run.
    fn fits(&self, capacity: &crate::env::postgres::Capacity) -> Result<(), UsageError> {
        let _ = capacity;
        Ok(())
    }

    /// Runs one variant with this configuration.
    fn run<'a>(
        &'a self,
        ctx: &'a VariantCtx<'a>,
    ) -> impl Future<Output = anyhow::Result<VariantRun>> + Send + 'a;

    /// The scenario's own worker process (`locklab __worker NAME`), where its fault needs one.
    fn worker(io: WorkerIo) -> impl Future<Output = anyhow::Result<()>> + Send {
        async move {
            drop(io);
            anyhow::bail!("{} has no worker process", Self::NAME)
        }
    }
}

/// How a variant's run shares the machine's CPU side by side (`--jobs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cpu {
    /// Little CPU of its own, and windows the kernel times in whole seconds (keepalive
    /// probes) and checks within 0.9-1.5x: a busy CPU moves its figures by milliseconds, so it
    /// may run beside anything, a [`Cpu::Hog`] too.
    Kernel,
    /// Takes the machine's CPU (a storm of connections, each forking a backend): beside a
    /// [`Cpu::Timed`] run it would starve that run's windows, and beside another hog its own.
    /// It runs beside [`Cpu::Kernel`] runs only.
    Hog,
    /// Windows that processes time (retry loops, TTLs, timeouts a busy backend checks late):
    /// beside other timed runs while the machine has idle CPU, never beside a hog.
    Timed,
}

impl Cpu {
    /// Whether a run of this kind may start beside one of `other` in flight.
    pub fn beside(self, other: Cpu) -> bool {
        matches!(
            (self, other),
            (Cpu::Kernel, _) | (_, Cpu::Kernel) | (Cpu::Timed, Cpu::Timed)
        )
    }
}

/// A scenario's configuration, ready to run a variant.
/// The defaults are [`Code`]'s: a step file's variant ([`steps`]) takes them as they are.
pub trait Prepared: Send + Sync {
    fn run<'a>(&'a self, ctx: &'a VariantCtx<'a>) -> BoxFuture<'a, anyhow::Result<VariantRun>>;
    fn sessions(&self) -> usize;
    fn weight(&self) -> usize {
        self.sessions()
    }
    fn cpu(&self) -> Cpu {
        Cpu::Timed
    }
    fn estimate(&self) -> Option<std::time::Duration> {
        None
    }
    fn unavailable(&self, env: &Env) -> Option<String> {
        let _ = env;
        None
    }
    fn fits(&self, capacity: &crate::env::postgres::Capacity) -> Result<(), UsageError> {
        let _ = capacity;
        Ok(())
    }
}

impl<C: Code> Prepared for C {
    fn run<'a>(&'a self, ctx: &'a VariantCtx<'a>) -> BoxFuture<'a, anyhow::Result<VariantRun>> {
        Box::pin(Code::run(self, ctx))
    }
    fn sessions(&self) -> usize {
        Code::sessions(self)
    }
    fn weight(&self) -> usize {
        Code::weight(self)
    }
    fn cpu(&self) -> Cpu {
        Code::cpu(self)
    }
    fn estimate(&self) -> Option<std::time::Duration> {
        Code::estimate(self)
    }
    fn unavailable(&self, env: &Env) -> Option<String> {
        Code::unavailable(self, env)
    }
    fn fits(&self, capacity: &crate::env::postgres::Capacity) -> Result<(), UsageError> {
        Code::fits(self, capacity)
    }
}

/// Builds a variant's configuration from its parameters (the kind is passed for a step file's
/// definition).
pub type Prepare = fn(&'static Kind, &Params) -> Result<Box<dyn Prepared>, UsageError>;

/// A registered scenario: its declarations, and its code behind function pointers.
#[derive(Debug)]
pub struct Kind {
    pub name: &'static str,
    pub file: &'static str,
    pub params: &'static [ParamSpec],
    pub metrics: &'static [&'static str],
    pub needs_redis: bool,
    pub sized_by: &'static str,
    pub prepare: Prepare,
    pub worker: fn(WorkerIo) -> BoxFuture<'static, anyhow::Result<()>>,
    /// A step file's sessions and steps (see [`steps`]); `None` for built-in code.
    pub steps: Option<&'static steps::Spec>,
}

impl Kind {
    pub fn param(&self, name: &str) -> Option<&'static ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }

    pub fn param_names(&self) -> String {
        self.params
            .iter()
            .map(|p| p.name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Registers a scenario's code.
pub const fn kind<C: Code>() -> Kind {
    fn prepare<C: Code>(_: &'static Kind, p: &Params) -> Result<Box<dyn Prepared>, UsageError> {
        Ok(Box::new(C::config(p)?))
    }
    fn worker<C: Code>(io: WorkerIo) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(C::worker(io))
    }
    Kind {
        name: C::NAME,
        file: C::FILE,
        params: C::PARAMS,
        metrics: C::METRICS,
        needs_redis: C::NEEDS_REDIS,
        sized_by: C::SIZED_BY,
        prepare: prepare::<C>,
        worker: worker::<C>,
        steps: None,
    }
}

/// The worker of code that has none (a step file's faults need no process of their own).
pub fn no_worker(io: WorkerIo) -> BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(async move {
        drop(io);
        anyhow::bail!("this scenario has no worker process")
    })
}

/// The built-in scenarios written in Rust, in the order `list` and `run all` use.
static CODE: &[Kind] = &[
    kind::<orphan_lock::OrphanLock>(),
    kind::<connection_storm::ConnectionStorm>(),
    kind::<lost_client::LostClient>(),
    kind::<shutdown::Shutdown>(),
    kind::<begin_on_pool::BeginOnPool>(),
    kind::<pool_deadlock::PoolDeadlock>(),
    kind::<setnx_race::SetnxRace>(),
    kind::<setnx_race::LockWatchdog>(),
    kind::<redis_failover::RedisFailover>(),
    kind::<pooler_pitfalls::PoolerPitfalls>(),
    kind::<check_then_act::CheckThenAct>(),
];

/// The built-in scenarios written as step files (no Rust of their own), after [`CODE`].
pub static STEP_FILES: &[(&str, &str)] = &[
    (
        "write-skew",
        include_str!("../../scenarios/write-skew.toml"),
    ),
    ("read-skew", include_str!("../../scenarios/read-skew.toml")),
    ("deadlock", include_str!("../../scenarios/deadlock.toml")),
];

/// Every built-in scenario, in the order `list` and `run all` use.
pub fn kinds() -> &'static [&'static Kind] {
    static ALL: std::sync::OnceLock<Vec<&'static Kind>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let mut all: Vec<&'static Kind> = CODE.iter().collect();
        for (name, text) in STEP_FILES {
            // Checked by the test suite (every built-in loads); a broken one is left out
            // rather than taking every run down.
            if let Ok(s) = steps::parse_builtin(text, &format!("built-in {name}.toml")) {
                all.push(s.kind);
            }
        }
        all
    })
}

pub fn kind_named(name: &str) -> Option<&'static Kind> {
    kinds().iter().copied().find(|k| k.name == name)
}

/// A built-in scenario's file, by name.
pub fn builtin_file(name: &str) -> Option<&'static str> {
    kind_named(name).map(|k| k.file)
}

/// Loads a built-in scenario by name, or a file by path (anything with a `/` or `.toml`).
pub fn load(name_or_path: &str) -> Result<Scenario, UsageError> {
    if name_or_path.contains('/') || name_or_path.ends_with(".toml") {
        let text = std::fs::read_to_string(Path::new(name_or_path))
            .map_err(|e| UsageError(format!("cannot read scenario file {name_or_path}: {e}")))?;
        return Scenario::parse(&text, name_or_path);
    }
    match kind_named(name_or_path) {
        Some(k) => match k.steps {
            // A step file's kind is made once: the scenario reuses it.
            Some(_) => {
                let mut s = steps::parse_builtin(k.file, &format!("built-in {}.toml", k.name))?;
                s.kind = k;
                Ok(s)
            }
            None => Scenario::parse(k.file, &format!("built-in {}.toml", k.name)),
        },
        None => {
            let hint = match crate::text::nearest(name_or_path, kinds().iter().map(|k| k.name)) {
                Some(n) => format!("; did you mean `{n}`?"),
                None => String::new(),
            };
            Err(UsageError(format!(
                "unknown scenario `{name_or_path}`{hint} (`locklab list` shows them all; a path to a .toml file runs your own)"
            )))
        }
    }
}

/// Every scenario file (`*.toml`) in a directory, by file name.
pub fn load_dir(dir: &Path) -> Result<Vec<Scenario>, UsageError> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| UsageError(format!("cannot read {}: {e}", dir.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(UsageError(format!(
            "{} holds no scenario file (*.toml)",
            dir.display()
        )));
    }
    let mut out: Vec<Scenario> = Vec::new();
    for f in files {
        let s = load(&f.to_string_lossy())?;
        if let Some(twin) = out.iter().find(|o| o.name == s.name) {
            return Err(UsageError(format!(
                "{} and {} both name a scenario `{}`",
                twin.source, s.source, s.name
            )));
        }
        out.push(s);
    }
    Ok(out)
}

/// Everything a scenario may use while running one variant.
pub struct VariantCtx<'a> {
    pub env: &'a Env,
    pub variant: &'a ResolvedVariant,
    /// Ctrl-C or SIGTERM: wind down now, as at the cut-off.
    pub cancel: CancellationToken,
    pub progress: ProgressBar,
}

impl VariantCtx<'_> {
    /// The workload's path to PostgreSQL: through the pooler for a variant that runs through
    /// one (the runner skips it when the run has none), else the run's own path.
    pub fn pg(&self) -> &PgTarget {
        match (self.variant.through_pooler, &self.env.pooled) {
            (true, Some(pooled)) => pooled,
            _ => &self.env.pg,
        }
    }

    /// application_name of a session of this variant, e.g. `locklab_1a2b3c4d/baseline/holder`.
    /// Sessions of the workload live under `…/w/`, so observers can tell them from probes.
    pub fn app(&self, role: &str) -> String {
        self.env.app(&format!("{}/{role}", self.variant_tag()))
    }

    /// The variant's name as it appears in application_name (which PostgreSQL caps at 63 bytes).
    fn variant_tag(&self) -> String {
        self.variant.name.chars().take(24).collect()
    }

    /// The variant's setup session, straight to the server (never through a pooler), after it
    /// has created the variant's tables afresh with `ddl`. It stays open to read the results.
    pub async fn admin(&self, ddl: &str) -> anyhow::Result<tokio_postgres::Client> {
        let admin = self.env.direct.connect(&self.app("admin")).await?;
        if !ddl.is_empty() {
            anyhow::Context::context(
                admin.batch_execute(ddl).await,
                "could not create the scenario's tables",
            )?;
        }
        Ok(admin)
    }

    /// A Redis key of this variant, under the run's prefix.
    pub fn redis_key(&self, name: &str) -> anyhow::Result<String> {
        Ok(self
            .env
            .redis()?
            .key(&format!("{}/{}", self.variant_tag(), name)))
    }

    /// A counter the progress bar shows as `{n}{label}` (e.g. ` of 20 booked`) every 100 ms,
    /// for as long as the returned ticker lives.
    pub fn progress_counter(&self, label: String) -> (Arc<AtomicUsize>, Ticker) {
        let count = Arc::new(AtomicUsize::new(0));
        let (bar, c) = (self.progress.clone(), count.clone());
        let task = tokio::spawn(async move {
            loop {
                bar.set_message(format!("{}{label}", c.load(Ordering::Relaxed)));
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
        (count, Ticker(task))
    }

    /// The variant's clock, started now, and its cut-off `within` from now.
    pub fn window(&self, within: std::time::Duration) -> Window {
        Window {
            clock: Clock::start(),
            deadline: tokio::time::Instant::now() + within,
        }
    }

    /// Runs the workload: every client under `plan` until all are done or the window's cut-off
    /// (or Ctrl-C) comes, the progress bar counting what they got done as `{n}{label}`.
    pub async fn drive(
        &self,
        clients: Vec<Box<dyn crate::workload::Client>>,
        plan: crate::workload::Plan,
        window: &Window,
        label: impl Into<String>,
    ) -> crate::workload::Driven {
        let (done, ticker) = self.progress_counter(label.into());
        let driven = crate::workload::drive(
            clients,
            plan,
            window.clock,
            window.deadline,
            &self.cancel,
            done,
        )
        .await;
        drop(ticker);
        driven
    }

    /// Deletes this variant's Redis keys (those [`Self::redis_key`] names).
    pub async fn remove_redis_keys(&self) -> anyhow::Result<usize> {
        self.env
            .redis()?
            .remove_keys(&format!("{}/", self.variant_tag()))
            .await
    }

    /// Ends this variant's sessions whose role starts with `role_prefix` (e.g. `w/`).
    pub async fn terminate_sessions(&self, role_prefix: &str) -> anyhow::Result<()> {
        self.env
            .terminate_sessions(&format!("{}/{role_prefix}", self.variant_tag()))
            .await
    }
}

/// A variant's clock and its cut-off, started together: what its history's times count from,
/// and when its clients are cut off.
#[derive(Clone, Copy)]
pub struct Window {
    pub clock: Clock,
    pub deadline: tokio::time::Instant,
}

/// Stops updating the progress bar when dropped.
pub struct Ticker(tokio::task::JoinHandle<()>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What one variant run produced: the raw history, what its checker was given, and what the
/// checker concluded from both.
#[derive(Debug, Clone, Default)]
pub struct VariantRun {
    pub history: History,
    pub evaluation: Evaluation,
    /// The checker's input, kept so the verdict can be re-derived from a results file.
    pub input: Option<crate::check::Input>,
    /// The variant clock's origin on the wall clock, to place server-clock events.
    pub origin_epoch_ms: f64,
}

impl VariantRun {
    /// Hands `input` to its checker, and keeps both for the results file.
    pub fn checked(clock: &Clock, history: History, input: crate::check::Input) -> VariantRun {
        VariantRun {
            evaluation: input.evaluate(&history),
            history,
            input: Some(input),
            origin_epoch_ms: clock.origin_epoch_ms,
        }
    }
}
