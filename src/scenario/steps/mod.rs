//! Step scenarios: a user's own failure as a file of sessions and steps, no Rust. A file with
//! `[[sessions]]` is one; it runs through the same runner, checker, tables and results as the
//! built-in scenarios (see README, "Write your own scenario").
//!
//! A session is one connection, or `clients` copies of it; its steps run in order, each after
//! the condition it names: another step completed (`after = "S.step"`), or seen waiting on a
//! lock by the server (`after = "S.step:waiting"`). Every mistake in a file is reported as
//! `file:line:col` before anything starts.

mod client;
mod file;
mod observe;
mod run;
mod sql;
mod step_def;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;

use super::spec::{Param, Params};
use super::{Kind, Prepared, VariantCtx, VariantRun};
use crate::check::expect::{Expectation, Formula, MapScope};
use crate::check::steps::Layout;
use crate::error::UsageError;

pub use file::{is_step_file, parse, parse_builtin};

/// What `locklab new` writes: a step file that runs as it is.
pub const TEMPLATE: &str = include_str!("../../../examples/scenarios/migration-queue.toml");

/// A step file's definition, as written (`${param}` still in place); one per file, for the
/// life of the process.
#[derive(Debug)]
pub struct Spec {
    /// `[setup] sql`: run once per variant, in its own schema.
    pub setup: String,
    pub sessions: Vec<SessionDef>,
    /// `[metrics]`: a name and the SQL whose first column of the first row is its value.
    pub queries: Vec<(String, String)>,
    /// The metrics layout; per-variant client counts are filled in when a variant is prepared.
    pub layout: Layout,
    /// Choice parameters whose words stand for other text in `${name}`.
    pub choices: BTreeMap<String, Vec<(String, String)>>,
    /// Relations between parameters every point must satisfy (`requires`).
    pub requires: Vec<Expectation>,
    /// Per variant with an `order`: what it puts on the steps it lists.
    pub orders: BTreeMap<String, Order>,
}

/// A variant's `order`: per (session, step) it lists after the first, the conditions that
/// replace the step's own `after`.
#[derive(Debug, Default)]
pub struct Order {
    pub after: BTreeMap<(usize, usize), Vec<After>>,
}

#[derive(Debug)]
pub struct SessionDef {
    pub name: String,
    /// A count, or `${param}`.
    pub clients: String,
    /// Where it connects (with `connect_by`, the default word's).
    pub connect: Connect,
    /// `connect = "${name}"`: the choice that says where, per variant.
    pub connect_by: Option<String>,
    /// With connect = "pool" (or a choice that may say so): the client pool the session's
    /// clients share.
    pub pool: Option<PoolDef>,
    /// Session settings, `SET` before the first step; values may hold `${param}`.
    pub settings: Vec<(String, String)>,
    /// Runs its steps this many rounds (a count or `${param}`), or loops them until the
    /// cut-off (None).
    pub rounds: Option<String>,
    /// For a session with a fault: SQL that succeeds once what the faulted session held is free
    /// (e.g. `SELECT … FOR UPDATE NOWAIT`), run from a session of locklab's own.
    pub probe: Option<String>,
    /// Settings applied where the role may set them; elsewhere the server's value stands.
    pub try_settings: Vec<(String, String)>,
    pub retry: Option<RetryDef>,
    pub steps: Vec<StepDef>,
}

/// A client pool (deadpool-postgres, connections returned as they are, as most application
/// pools do): its size, and how long a checkout waits (none: for ever). Each may be `${param}`.
#[derive(Debug)]
pub struct PoolDef {
    pub size: String,
    pub timeout: Option<String>,
}

/// A round that fails with one of `on` is rolled back and run again, at most `max` times
/// (a count or `${param}`).
#[derive(Debug)]
pub struct RetryDef {
    pub on: Vec<String>,
    pub max: String,
}

/// `connect`'s words and where each goes.
const CONNECT_OF: &[(&str, Connect)] = &[
    ("direct", Connect::Direct),
    ("pooler", Connect::Pooler),
    ("pool", Connect::Pool),
];

/// A `connect` word's place, or the error saying which words there are.
fn connect_word(w: &str) -> Result<Connect, String> {
    CONNECT_OF
        .iter()
        .find(|(x, _)| *x == w)
        .map(|(_, c)| *c)
        .ok_or_else(|| format!("connect is direct, pooler or pool, not `{w}`"))
}

/// Where a session's connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connect {
    /// Straight to the server.
    Direct,
    /// The run's path to the server: through the pooler when the run has one.
    Pooler,
    /// A client pool of `pool_size` connections on the run's path, shared by the session's
    /// clients: every step checks one out and gives it back.
    Pool,
}

#[derive(Debug)]
pub struct StepDef {
    pub name: String,
    /// `session.step`, as the history and the metrics name it.
    pub kind: &'static str,
    pub action: Action,
    /// Starts once any of these has come true: a step of a session completed by every client,
    /// or seen waiting on a lock. None: at once.
    pub after: Vec<After>,
    /// Starts anyway once its client has waited this long for `after` (`${param}` allowed).
    pub patience: Option<String>,
    /// A SQL step's capture: the first column of the last row it returns, as `${name}` in its
    /// client's later steps.
    pub into: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct After {
    pub session: usize,
    pub step: usize,
    pub waiting: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Sql(String),
    /// An outside call (`${param}` allowed): the session holds whatever it holds meanwhile.
    Sleep(String),
    Fault(Fault),
    Redis(RedisStep),
    /// `critical = "enter"` (true) or `"leave"`: the client believes it holds the lock.
    Critical(bool),
}

/// A Redis command: its words (`${param}` and `${token}` in place), which of them are keys
/// (the run's prefix goes before each), and the reply it wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStep {
    pub words: Vec<String>,
    pub keys: Vec<usize>,
    /// The reply that counts as success (`OK`, `1`, `nil`); any reply when none.
    pub want: Option<String>,
    /// Another reply: try again after this long (`${param}` allowed), or fail the step.
    pub retry_after: Option<String>,
}

/// What happens to a session at a fault step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The session stops where it is with its connection open: to the server it is a client
    /// frozen mid-transaction (as a process stopped by SIGSTOP is), until the run ends.
    Freeze,
    /// The connection is closed: the server ends the session and frees what it held.
    Kill,
    /// In a pool session: the client ends, and the connection of its last step stays in the
    /// pool as it is, mid-transaction, for the next client that checks it out.
    Leak,
}

/// A variant's view of a step file: every `${param}` resolved.
pub struct StepVariant {
    spec: &'static Spec,
    /// Per session: its clients, settings, and steps' SQL and sleeps, resolved.
    sessions: Vec<ResolvedSession>,
    setup: String,
    queries: Vec<(String, String)>,
    deadline: Duration,
    layout: Layout,
}

struct ResolvedSession {
    clients: usize,
    connect: Connect,
    /// Rounds it runs (usize::MAX: until the cut-off).
    rounds: usize,
    settings: Vec<(String, String)>,
    try_settings: Vec<(String, String)>,
    /// SQLSTATEs a round is retried on, and how many times at most.
    retry: Option<(Vec<String>, usize)>,
    /// Per step: the SQL or the sleep's length (faults carry no text).
    steps: Vec<Resolved>,
    /// Per step: how long its client waits for its `after` at most.
    patience: Vec<Option<Duration>>,
    /// Per step: what starts it, the file's `after` or the variant's `order`.
    after: Vec<Vec<After>>,
    /// connect = "pool": the pool's size and checkout bound.
    pool: Option<(usize, Option<Duration>)>,
    probe: Option<String>,
}

#[derive(Clone)]
enum Resolved {
    /// Shared, so a client's loop takes it without copying the text.
    Sql(std::sync::Arc<str>),
    Sleep(Duration),
    Fault(Fault),
    Redis {
        words: Vec<String>,
        keys: Vec<usize>,
        want: Option<String>,
        retry_after: Option<Duration>,
    },
    Critical(bool),
}

/// `${name}` replaced by the parameter's value: durations in whole milliseconds (`250ms`, which
/// PostgreSQL takes for a setting or an interval), anything else as written. `${name:ms}` is a
/// duration as a bare number of milliseconds (Redis's `PX`), `${name:s}` of seconds.
pub fn substitute(text: &str, params: &Params) -> Result<String, String> {
    substitute_keeping(text, params, &[])
}

/// [`substitute`], leaving `${name}` of the names in `keep` (a client's captures) in place.
fn substitute_keeping(text: &str, params: &Params, keep: &[&str]) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let Some(end) = rest[i..].find('}') else {
            return Err("an unclosed `${`".into());
        };
        let inner = &rest[i + 2..i + end];
        rest = &rest[i + end + 1..];
        // Filled in as the step runs: unique per client and round, the client's number.
        if file::RUN_TIME.contains(&inner) || keep.contains(&inner) {
            out.push_str(&format!("${{{inner}}}"));
            continue;
        }
        let (name, unit) = inner.split_once(':').unwrap_or((inner, ""));
        let value = params
            .get(name)
            .map_err(|_| format!("`${{{name}}}` names no parameter in [params]"))?;
        match (value, unit) {
            // Never rounded down to 0, which turns a PostgreSQL timeout off.
            (Param::Duration(d), "") => out.push_str(&format!("{}ms", whole_ms(*d))),
            (Param::Duration(d), "ms") => out.push_str(&whole_ms(*d).to_string()),
            // Whole seconds, rounded up (Redis's EX takes no fraction).
            (Param::Duration(d), "s") => out.push_str(
                &(d.as_millis()
                    .div_ceil(1000)
                    .max(u128::from(!d.is_zero()))
                    .to_string()),
            ),
            (other, "") => out.push_str(&other.to_string()),
            (_, unit) => {
                return Err(format!(
                    "`${{{inner}}}`: `:{unit}` is for durations (`:ms` or `:s`), and `{name}` is none"
                ));
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Whole milliseconds of a duration; a non-zero one is at least 1.
fn whole_ms(d: Duration) -> u128 {
    match d.is_zero() {
        true => 0,
        false => d.as_millis().max(1),
    }
}

/// A duration as a step writes it: `${param}` (already scaled), or literal text, which is
/// scaled like every duration of the file.
fn duration(raw: &str, params: &Params) -> Result<Duration, String> {
    let text = substitute(raw, params)?;
    let d = humantime::parse_duration(text.trim()).map_err(|e| format!("`{text}`: {e}"))?;
    Ok(match raw.contains("${") {
        true => d,
        false => d.mul_f64(params.time_scale),
    })
}

/// A session setting's value: `${param}`s resolved (already scaled), and a duration written
/// as such (`50ms`) scaled like every duration of the file; PostgreSQL takes whole
/// milliseconds, and a timeout is never rounded down to 0 (off).
fn scaled_setting(raw: &str, params: &Params) -> Result<String, String> {
    if raw.contains("${") {
        return substitute(raw, params);
    }
    let t = raw.trim();
    match t.starts_with(|c: char| c.is_ascii_digit()) && t.parse::<f64>().is_err() {
        true => match humantime::parse_duration(t) {
            Ok(d) if !d.is_zero() => {
                let ms = d.mul_f64(params.time_scale).as_millis().max(1);
                Ok(format!("{ms}ms"))
            }
            _ => Ok(raw.to_string()),
        },
        false => Ok(raw.to_string()),
    }
}

/// A count as a file writes it: a number, `${param}`, or arithmetic over them
/// (`${pairs} * 2`), at least `min`.
fn count(raw: &str, params: &Params, min: usize) -> Result<usize, String> {
    let text = substitute(raw, params)?;
    let none = BTreeMap::new();
    let vals = BTreeMap::new();
    let scope = MapScope {
        params: &vals,
        metrics: &none,
    };
    let v = Formula::parse(&text)
        .and_then(|f| f.eval(&scope, params.time_scale))
        .map_err(|e| format!("`{text}`: {e}"))?;
    match v {
        x if x.fract() == 0.0 && x >= min as f64 && x <= usize::MAX as f64 => Ok(x as usize),
        x => Err(format!(
            "`{text}` is {x}, not a whole number of at least {min}"
        )),
    }
}

/// Refuses a point where a relation the file `requires` does not hold, naming the values.
fn requires(name: &str, spec: &Spec, params: &Params) -> Result<(), UsageError> {
    let vals = params.vals();
    let none = BTreeMap::new();
    let scope = MapScope {
        params: &vals,
        metrics: &none,
    };
    for r in &spec.requires {
        let result = r.evaluate(&scope, params.time_scale);
        if !result.held {
            let values: Vec<String> = r
                .idents()
                .iter()
                .filter_map(|i| Some(format!("{i} = {}", as_written(params, i)?)))
                .collect();
            return Err(UsageError(format!(
                "{name} requires `{}`, which this point breaks ({}): change the parameters with --param",
                r.text,
                values.join(", ")
            )));
        }
    }
    Ok(())
}

/// A parameter's value as the user wrote it (durations before --time-scale).
fn as_written(params: &Params, name: &str) -> Option<String> {
    Some(match params.get(name).ok()? {
        Param::Duration(d) => params.as_written(*d),
        other => other.to_string(),
    })
}

/// The registry's `prepare` for step files: resolves the variant's `${param}`s.
pub fn prepare(kind: &'static Kind, params: &Params) -> Result<Box<dyn Prepared>, UsageError> {
    let spec = kind
        .steps
        .ok_or_else(|| UsageError(format!("{} is not a step scenario", kind.name)))?;
    let bad = |what: &str, e: String| UsageError(format!("{}: {what}: {e}", kind.name));
    requires(kind.name, spec, params)?;
    // A choice's word stands for its text in `${name}`, and for each of its fields' in
    // `${name.field}`.
    let mut mapped = params.clone();
    for (name, words) in &spec.choices {
        let base = name.split_once('.').map_or(name.as_str(), |(b, _)| b);
        if let Ok(Param::Text(word)) = params.get(base)
            && let Some((_, text)) = words.iter().find(|(w, _)| w == word)
        {
            mapped.set(name, Param::Text(text.clone()));
        }
    }
    let params = &mapped;
    let mut layout = spec.layout.clone();
    let mut sessions = Vec::new();
    let order = spec.orders.get(&params.variant);
    for (si, (s, l)) in spec
        .sessions
        .iter()
        .zip(layout.sessions.iter_mut())
        .enumerate()
    {
        let clients = count(&s.clients, params, 1)
            .and_then(|n| match n <= 10_000 {
                true => Ok(n),
                false => Err(format!("{n} is more than 10000")),
            })
            .map_err(|e| {
                bad(
                    &s.name,
                    format!("`clients` must be a whole number from 1 to 10000: {e}"),
                )
            })?;
        l.clients = clients;
        let rounds = match &s.rounds {
            Some(raw) => count(raw, params, 1)
                .map_err(|e| bad(&s.name, format!("`repeat` is a count of rounds: {e}")))?,
            None => usize::MAX,
        };
        l.rounds = if s.rounds.is_some() { rounds } else { 0 };
        let connect = match &s.connect_by {
            Some(name) => {
                connect_word(&params.get(name)?.to_string()).map_err(|e| bad(&s.name, e))?
            }
            None => s.connect,
        };
        let captures: Vec<&str> = s.steps.iter().filter_map(|t| t.into.as_deref()).collect();
        let settings_of = |list: &[(String, String)]| {
            list.iter()
                .map(|(k, v)| Ok((k.clone(), scaled_setting(v, params)?)))
                .collect::<Result<Vec<_>, String>>()
                .map_err(|e| bad(&s.name, e))
        };
        let settings = settings_of(&s.settings)?;
        let try_settings = settings_of(&s.try_settings)?;
        let retry = match &s.retry {
            Some(r) => Some((
                r.on.clone(),
                count(&r.max, params, 0).map_err(|e| bad(&s.name, format!("retry.max: {e}")))?,
            )),
            None => None,
        };
        let mut steps = Vec::new();
        for t in &s.steps {
            let what = format!("{}.{}", s.name, t.name);
            steps.push(match &t.action {
                Action::Sql(sql) => Resolved::Sql(
                    substitute_keeping(sql, params, &captures)
                        .map_err(|e| bad(&what, e))?
                        .into(),
                ),
                Action::Sleep(raw) => {
                    Resolved::Sleep(duration(raw, params).map_err(|e| bad(&what, e))?)
                }
                Action::Fault(f) => Resolved::Fault(*f),
                Action::Critical(enter) => Resolved::Critical(*enter),
                Action::Redis(r) => {
                    let words = r
                        .words
                        .iter()
                        .map(|w| substitute(w, params))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| bad(&what, e))?;
                    let retry_after = match &r.retry_after {
                        Some(raw) => Some(duration(raw, params).map_err(|e| bad(&what, e))?),
                        None => None,
                    };
                    Resolved::Redis {
                        words,
                        keys: r.keys.clone(),
                        want: r.want.clone(),
                        retry_after,
                    }
                }
            });
        }
        let after = s
            .steps
            .iter()
            .enumerate()
            .map(|(ti, t)| {
                order
                    .and_then(|o| o.after.get(&(si, ti)))
                    .unwrap_or(&t.after)
                    .clone()
            })
            .collect();
        let pool = match (&s.pool, connect) {
            (Some(p), Connect::Pool) => Some((
                count(&p.size, params, 1).map_err(|e| bad(&s.name, format!("pool_size: {e}")))?,
                match &p.timeout {
                    Some(t) => Some(
                        duration(t, params)
                            .map_err(|e| bad(&s.name, format!("pool_timeout: {e}")))?,
                    ),
                    None => None,
                },
            )),
            _ => None,
        };
        let mut patience = Vec::new();
        for t in &s.steps {
            patience.push(match &t.patience {
                Some(raw) => Some(
                    duration(raw, params).map_err(|e| bad(&format!("{}.{}", s.name, t.name), e))?,
                ),
                None => None,
            });
        }
        let probe = match &s.probe {
            Some(p) => Some(substitute(p, params).map_err(|e| bad(&s.name, e))?),
            None => None,
        };
        sessions.push(ResolvedSession {
            clients,
            connect,
            rounds,
            settings,
            try_settings,
            retry,
            steps,
            patience,
            after,
            pool,
            probe,
        });
    }
    let queries = spec
        .queries
        .iter()
        .map(|(n, q)| Ok((n.clone(), substitute(q, params)?)))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| bad("[metrics]", e))?;
    Ok(Box::new(StepVariant {
        spec,
        setup: substitute(&spec.setup, params).map_err(|e| bad("[setup]", e))?,
        queries,
        deadline: params.duration("deadline")?,
        sessions,
        layout,
    }))
}

impl Prepared for StepVariant {
    fn run<'a>(&'a self, ctx: &'a VariantCtx<'a>) -> BoxFuture<'a, anyhow::Result<VariantRun>> {
        Box::pin(run::run(self, ctx))
    }

    fn sessions(&self) -> usize {
        // Every client, the setup session (which reads the [metrics] at the end), the sampler
        // of the server's view, and a probe per faulted session.
        let probes = self.sessions.iter().filter(|s| s.probe.is_some()).count();
        // A pool session opens its pool's connections, not one per client.
        let each = |s: &ResolvedSession| s.pool.map_or(s.clients, |(size, _)| size);
        self.sessions.iter().map(each).sum::<usize>() + 2 + probes
    }
}
