//! Scenario files: the scenario as data (parameters, variants, settings, expectations).
//! Parsing and validation are pure; every mistake in a file is reported as `file:line:col`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::check::expect::{Expectation, Val};
use crate::error::UsageError;
use crate::scenario::Kind;
use crate::text::format_duration;

mod file;

/// Duration bounds for [`ParamSpec::duration`], in milliseconds as written.
pub const HOUR_MS: u64 = 3_600_000;
pub const DAY_MS: u64 = 24 * HOUR_MS;

/// A parameter a scenario reads, and what it accepts.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    pub name: &'static str,
    pub accepts: Accepts,
    /// A duration the kernel takes in whole seconds (TCP keepalives): after --time-scale it
    /// must come to a whole number of seconds, so the sampler draws only such values.
    pub whole_seconds: bool,
}

/// The values a parameter accepts. Duration bounds are as written (at the write-up's real
/// speed), before `--time-scale`.
#[derive(Debug, Clone, Copy)]
pub enum Accepts {
    Count {
        min: i64,
        max: i64,
    },
    Duration {
        min: Duration,
        max: Duration,
    },
    Words(&'static [&'static str]),
    Flag,
    /// Any value: a step file's own parameters, which only its `${name}`s read.
    Any,
}

impl ParamSpec {
    pub const fn count(name: &'static str, min: i64, max: i64) -> ParamSpec {
        ParamSpec {
            name,
            accepts: Accepts::Count { min, max },
            whole_seconds: false,
        }
    }

    /// A duration from `min_ms` to `max_ms` milliseconds, as written.
    pub const fn duration(name: &'static str, min_ms: u64, max_ms: u64) -> ParamSpec {
        ParamSpec {
            name,
            accepts: Accepts::Duration {
                min: Duration::from_millis(min_ms),
                max: Duration::from_millis(max_ms),
            },
            whole_seconds: false,
        }
    }

    /// A duration the kernel takes in whole seconds, from `min_ms` to `max_ms` as written.
    pub const fn seconds(name: &'static str, min_ms: u64, max_ms: u64) -> ParamSpec {
        ParamSpec {
            whole_seconds: true,
            ..ParamSpec::duration(name, min_ms, max_ms)
        }
    }

    pub const fn words(name: &'static str, words: &'static [&'static str]) -> ParamSpec {
        ParamSpec {
            name,
            accepts: Accepts::Words(words),
            whole_seconds: false,
        }
    }

    pub const fn flag(name: &'static str) -> ParamSpec {
        ParamSpec {
            name,
            accepts: Accepts::Flag,
            whole_seconds: false,
        }
    }

    /// Checks a value as written; the error names the parameter, the value and what is allowed.
    pub fn check(&self, value: &Param) -> Result<(), String> {
        let ok = match (self.accepts, value) {
            (Accepts::Count { min, max }, Param::Int(i)) => (min..=max).contains(i),
            (Accepts::Duration { min, max }, Param::Duration(d)) => (min..=max).contains(d),
            // `0` for a duration whose range starts at zero: plain enough to accept.
            (Accepts::Duration { min, .. }, Param::Int(0)) => min.is_zero(),
            (Accepts::Words(words), Param::Text(t)) => words.contains(&t.as_str()),
            (Accepts::Flag, Param::Bool(_)) => true,
            (Accepts::Any, _) => true,
            _ => false,
        };
        match ok {
            true => Ok(()),
            false => Err(format!(
                "`{}` must be {}, not {value}",
                self.name,
                self.allowed()
            )),
        }
    }

    /// What the parameter accepts, for people: `a whole number from 1 to 1000`.
    pub fn allowed(&self) -> String {
        match self.accepts {
            Accepts::Count { min, max } => format!("a whole number from {min} to {max}"),
            Accepts::Duration { min, max } => format!(
                "a duration from {} to {} (as written, before --time-scale)",
                format_duration(min),
                format_duration(max)
            ),
            Accepts::Words(words) => format!("one of {}", words.join(", ")),
            Accepts::Flag => "true or false".into(),
            Accepts::Any => "a number, true/false, a duration or text".into(),
        }
    }

    /// The short form `explain` prints next to the value: `1..1000`, `freeze|kill|leak`.
    pub fn range(&self) -> String {
        match self.accepts {
            Accepts::Count { min, max } => format!("{min}..{max}"),
            Accepts::Duration { min, max } => {
                format!("{}..{}", format_duration(min), format_duration(max))
            }
            Accepts::Words(words) => words.join("|"),
            Accepts::Flag => "true|false".into(),
            Accepts::Any => "any".into(),
        }
    }
}

/// A parameter value as written in a file. Durations are written as at the write-up's real
/// speed and scaled by the run's time scale when resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Int(i64),
    Float(f64),
    Bool(bool),
    Duration(Duration),
    Text(String),
}

impl Param {
    pub(crate) fn from_toml(v: &toml::Value) -> Result<Param, String> {
        Ok(match v {
            toml::Value::Integer(i) => Param::Int(*i),
            toml::Value::Float(f) => Param::Float(*f),
            toml::Value::Boolean(b) => Param::Bool(*b),
            toml::Value::String(s) => parse_text_param(s),
            other => {
                return Err(format!(
                    "a parameter is a number, true/false, a duration (\"500ms\") or text, not {}",
                    other.type_str()
                ));
            }
        })
    }

    fn scaled(&self, time_scale: f64) -> Param {
        match self {
            Param::Duration(d) => Param::Duration(d.mul_f64(time_scale)),
            other => other.clone(),
        }
    }

    /// The value an expectation sees: durations in milliseconds.
    pub fn as_val(&self) -> Option<Val> {
        match self {
            Param::Int(i) => Some(Val::Num(*i as f64)),
            Param::Float(f) => Some(Val::Num(*f)),
            Param::Bool(b) => Some(Val::Bool(*b)),
            Param::Duration(d) => Some(Val::Num(d.as_secs_f64() * 1000.0)),
            Param::Text(_) => None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Param::Int(i) => serde_json::json!(i),
            Param::Float(f) => serde_json::json!(f),
            Param::Bool(b) => serde_json::json!(b),
            Param::Duration(d) => serde_json::json!(format_duration(*d)),
            Param::Text(s) => serde_json::json!(s),
        }
    }
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Param::Int(i) => write!(f, "{i}"),
            Param::Float(x) => write!(f, "{x}"),
            Param::Bool(b) => write!(f, "{b}"),
            Param::Duration(d) => write!(f, "{}", format_duration(*d)),
            Param::Text(s) => write!(f, "{s}"),
        }
    }
}

fn parse_text_param(s: &str) -> Param {
    let starts_with_digit = s.chars().next().is_some_and(|c| c.is_ascii_digit());
    match humantime::parse_duration(s) {
        Ok(d) if starts_with_digit => Param::Duration(d),
        _ => Param::Text(s.to_string()),
    }
}

/// Parses a `--param name=value` override: numbers, booleans and durations as in a file.
pub fn parse_override(s: &str) -> Result<(String, Param), UsageError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| UsageError(format!("--param takes name=value, got `{s}`")))?;
    let v = v.trim();
    let p = if let Ok(i) = v.parse::<i64>() {
        Param::Int(i)
    } else if let Ok(f) = v.parse::<f64>() {
        Param::Float(f)
    } else if let Ok(b) = v.parse::<bool>() {
        Param::Bool(b)
    } else {
        parse_text_param(v)
    };
    Ok((k.trim().to_string(), p))
}

/// Parameters of one variant, durations already scaled.
#[derive(Debug, Clone)]
pub struct Params {
    values: BTreeMap<String, Param>,
    pub time_scale: f64,
    /// Parameters the variant's session settings name (e.g. `idle_timeout`).
    in_settings: Vec<String>,
    /// The variant these are the parameters of.
    pub variant: String,
}

impl Params {
    pub fn get(&self, name: &str) -> Result<&Param, UsageError> {
        self.values
            .get(name)
            .ok_or_else(|| UsageError(format!("the scenario needs a parameter `{name}`")))
    }

    pub fn duration(&self, name: &str) -> Result<Duration, UsageError> {
        match self.get(name)? {
            Param::Duration(d) => Ok(*d),
            Param::Int(0) => Ok(Duration::ZERO),
            other => Err(UsageError(format!(
                "parameter `{name}` must be a duration like \"2s\", not {other}"
            ))),
        }
    }

    pub fn count(&self, name: &str) -> Result<usize, UsageError> {
        match self.get(name)? {
            Param::Int(i) if *i >= 0 => Ok(*i as usize),
            other => Err(UsageError(format!(
                "parameter `{name}` must be a whole number, not {other}"
            ))),
        }
    }

    /// A text parameter that picks one of two behaviours: `true` for `on`, `false` for `off`.
    pub fn switch(&self, name: &str, on: &str, off: &str) -> Result<bool, UsageError> {
        match self.text(name)? {
            v if v == on => Ok(true),
            v if v == off => Ok(false),
            v => Err(UsageError(format!(
                "{name} must be {on} or {off}, not `{v}`"
            ))),
        }
    }

    pub fn flag(&self, name: &str) -> Result<bool, UsageError> {
        match self.get(name)? {
            Param::Bool(b) => Ok(*b),
            other => Err(UsageError(format!(
                "parameter `{name}` must be true or false, not {other}"
            ))),
        }
    }

    pub fn text(&self, name: &str) -> Result<&str, UsageError> {
        match self.get(name)? {
            Param::Text(s) => Ok(s),
            other => Err(UsageError(format!(
                "parameter `{name}` must be text, not {other}"
            ))),
        }
    }

    /// A word parameter as the value `choices` pair with it: no `FromStr` to write for a
    /// scenario's own enum (its spec's words are checked before any config runs).
    pub fn one_of<T: Copy>(&self, name: &str, choices: &[(&str, T)]) -> Result<T, UsageError> {
        let word = self.text(name)?;
        choices
            .iter()
            .find(|(w, _)| *w == word)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let words: Vec<&str> = choices.iter().map(|(w, _)| *w).collect();
                UsageError(format!(
                    "`{name}` must be one of {}, not `{word}`",
                    words.join(", ")
                ))
            })
    }

    /// Refuses a `deadline` shorter than `times` × `window` (`what` names the window): a verdict
    /// judged within that window could not show before the cut-off. `why` says which.
    pub fn deadline_outlasts(
        &self,
        times: u32,
        what: &str,
        window: Duration,
        why: &str,
    ) -> Result<(), UsageError> {
        let need = window * times;
        let deadline = self.duration("deadline")?;
        match deadline >= need {
            true => Ok(()),
            false => Err(UsageError(format!(
                "deadline ({}) must be at least {times} times {what} ({}): {why} (--param deadline={} or more)",
                self.as_written(deadline),
                self.as_written(window),
                self.as_written(need)
            ))),
        }
    }

    /// `name`, refused where it comes to less than `min` after --time-scale: a window below
    /// what the server or the kernel can tell apart. `below` says what goes wrong under it.
    pub fn scaled_at_least(
        &self,
        name: &str,
        min: Duration,
        below: &str,
    ) -> Result<Duration, UsageError> {
        let d = self.duration(name)?;
        match d >= min {
            true => Ok(d),
            false => Err(UsageError(format!(
                "{name} is {} after --time-scale {}: under {} ms {below} (--param {name}={} or \
                 more, or a larger --time-scale)",
                humantime::format_duration(d),
                self.time_scale,
                min.as_millis(),
                self.as_written(min)
            ))),
        }
    }

    /// A duration as the user writes it: at the write-ups' real speed, before --time-scale, so
    /// a refusal names the figures of the scenario file and of `--param`.
    pub fn as_written(&self, d: Duration) -> String {
        let ms = (d.as_secs_f64() * 1000.0 / self.time_scale.max(1e-9)).round();
        format_duration(Duration::from_millis(ms as u64)).to_string()
    }

    /// Whether the variant's session settings use this parameter: a relation such as "the
    /// deadline must outlast the idle timeout" binds only the variants that set it.
    pub fn in_settings(&self, name: &str) -> bool {
        self.in_settings.iter().any(|n| n == name)
    }

    /// Replaces a parameter's value (a step file's choice by the text its word stands for).
    pub fn set(&mut self, name: &str, value: Param) {
        self.values.insert(name.to_string(), value);
    }

    pub fn vals(&self) -> BTreeMap<String, Val> {
        self.values
            .iter()
            .filter_map(|(k, v)| v.as_val().map(|v| (k.clone(), v)))
            .collect()
    }

    pub fn to_json(&self) -> BTreeMap<String, serde_json::Value> {
        self.values
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect()
    }

    /// Renders a variant's setting: a parameter name takes that parameter's value, a duration
    /// literal is scaled, anything else is passed to the server as written.
    fn setting_value(&self, raw: &str, time_scale: f64) -> Param {
        match self.values.get(raw) {
            Some(p) => p.clone(),
            None => parse_text_param(raw).scaled(time_scale),
        }
    }

    /// A pgbouncer.ini value: PgBouncer takes durations in (fractional) seconds.
    fn render_pooler_setting(&self, raw: &str, time_scale: f64) -> String {
        match self.setting_value(raw, time_scale) {
            Param::Duration(d) => format!("{}", d.as_secs_f64().max(0.001)),
            other => other.to_string(),
        }
    }

    fn render_setting(&self, raw: &str, time_scale: f64) -> String {
        match self.setting_value(raw, time_scale) {
            // PostgreSQL takes whole milliseconds; never round a timeout down to 0 (= off).
            Param::Duration(d) => format!("{}ms", d.as_millis().max(1)),
            other => other.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Variant {
    pub name: String,
    pub mitigated: bool,
    pub opt_in: bool,
    pub show_settings: Vec<String>,
    pub shows: String,
    pub(crate) settings: Vec<(String, String)>,
    pub through_pooler: bool,
    pub(crate) pooler_settings: Vec<(String, String)>,
    pub(crate) params: BTreeMap<String, Param>,
    pub(crate) expect: Vec<Expectation>,
    pub(crate) expect_when: Vec<(String, Param, Vec<Expectation>)>,
}

/// A variant ready to run: its parameters scaled, its settings rendered, its expectations chosen.
#[derive(Debug, Clone)]
pub struct ResolvedVariant {
    pub name: String,
    pub mitigated: bool,
    pub show_settings: Vec<String>,
    pub shows: String,
    pub params: Params,
    /// Session settings applied to the workload's connections (never to the server).
    pub settings: Vec<(String, String)>,
    /// The workload goes through a transaction-mode pooler.
    pub through_pooler: bool,
    /// PgBouncer settings for this variant (locklab's own PgBouncer only).
    pub pooler_settings: Vec<(String, String)>,
    pub expect: Vec<Expectation>,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub kind: &'static Kind,
    pub summary: String,
    pub explain: String,
    pub harm_metric: String,
    pub harm_label: String,
    /// Extra table columns: (metric, label).
    pub columns: Vec<(String, String)>,
    pub params: BTreeMap<String, Param>,
    pub variants: Vec<Variant>,
    /// Where it came from: `built-in` or a path.
    pub source: String,
    /// The values this copy was given by `--sweep`, in the order swept; empty otherwise.
    pub swept: Vec<(String, Param)>,
    /// A step file's own time scale (`time_scale = 1`), which `--time-scale` overrides.
    pub default_scale: Option<f64>,
}

impl Scenario {
    /// Applies `--param` overrides; unknown names are a usage error. `NAME=V` sets the
    /// scenario's value, which every variant runs with except one that sets NAME itself: a
    /// variant's own values say what it is (a mitigation's bound, a fix's word), and an
    /// override for the whole scenario must not turn it into another variant under its name.
    /// `VARIANT.NAME=V` changes that one variant's value. Returns a note for each variant
    /// that keeps its own value.
    pub fn override_params(
        &mut self,
        overrides: &[(String, Param)],
    ) -> Result<Vec<String>, UsageError> {
        let mut notes = Vec::new();
        for (key, v) in overrides {
            let (variant, k) = split_key(key);
            let Some(spec) = self.kind.param(k) else {
                let hint = crate::text::nearest(k, self.kind.params.iter().map(|p| p.name))
                    .map(|n| format!("; did you mean `{n}`?"))
                    .unwrap_or_default();
                return Err(UsageError(format!(
                    "`{k}` is not a parameter of {}{hint} (it takes: {})",
                    self.name,
                    self.kind.param_names()
                )));
            };
            spec.check(v)
                .map_err(|m| UsageError(format!("--param {key}={v}: {m}")))?;
            if let Some(variant) = variant {
                let Some(var) = self.variants.iter_mut().find(|x| x.name == variant) else {
                    let hint = crate::text::nearest(
                        variant,
                        self.variants.iter().map(|x| x.name.as_str()),
                    )
                    .map(|n| format!("; did you mean `{n}`?"))
                    .unwrap_or_default();
                    return Err(UsageError(format!(
                        "--param {key}: {} has no variant `{variant}`{hint}",
                        self.name
                    )));
                };
                var.params.insert(k.to_string(), v.clone());
                continue;
            }
            // A word or flag some variants set themselves is what tells the variants apart
            // (`lock`, `fault`): given to all, it would turn the others into one of them
            // under their own names (a baseline fenced, a bounded lease stalled instead).
            let setters: Vec<&str> = self
                .variants
                .iter()
                .filter(|x| x.params.contains_key(k))
                .map(|x| x.name.as_str())
                .collect();
            if matches!(spec.accepts, Accepts::Words(_) | Accepts::Flag) && !setters.is_empty() {
                return Err(UsageError(format!(
                    "--param {k}={v}: `{k}` is what tells {}'s variants apart ({} set it \
                     themselves); choose variants with --variant, or change one with \
                     --param VARIANT.{k}={v}",
                    self.name,
                    setters.join(", ")
                )));
            }
            self.params.insert(k.to_string(), v.clone());
            let kept: Vec<(&str, &Param)> = self
                .variants
                .iter()
                .filter_map(|x| {
                    x.params
                        .get(k)
                        .filter(|own| *own != v)
                        .map(|own| (x.name.as_str(), own))
                })
                .collect();
            if let Some((first, _)) = kept.first() {
                let listed: Vec<String> = kept
                    .iter()
                    .map(|(name, own)| format!("{name} ({k} = {own})"))
                    .collect();
                notes.push(format!(
                    "note: --param {k}={v} leaves {} of {} as they are: their own value is what \
                     they are; `--param {first}.{k}={v}` changes one",
                    listed.join(", "),
                    self.name,
                ));
            }
        }
        Ok(notes)
    }

    pub fn resolve(&self, variant: &Variant, time_scale: f64) -> ResolvedVariant {
        let mut values: BTreeMap<String, Param> = self.params.clone();
        values.extend(variant.params.clone());
        let values: BTreeMap<String, Param> = values
            .into_iter()
            .map(|(k, v)| (k, v.scaled(time_scale)))
            .collect();
        let in_settings = variant
            .settings
            .iter()
            .chain(&variant.pooler_settings)
            .filter(|(_, raw)| values.contains_key(raw))
            .map(|(_, raw)| raw.clone())
            .collect();
        let params = Params {
            values,
            time_scale,
            in_settings,
            variant: variant.name.clone(),
        };
        let settings = variant
            .settings
            .iter()
            .map(|(k, raw)| (k.clone(), params.render_setting(raw, time_scale)))
            .collect();
        let pooler_settings = variant
            .pooler_settings
            .iter()
            .map(|(k, raw)| (k.clone(), params.render_pooler_setting(raw, time_scale)))
            .collect();
        let expect = variant
            .expect_when
            .iter()
            .find(|(p, equals, _)| params.values.get(p) == Some(equals))
            .map(|(_, _, e)| e.clone())
            .unwrap_or_else(|| variant.expect.clone());
        ResolvedVariant {
            name: variant.name.clone(),
            mitigated: variant.mitigated,
            show_settings: variant.show_settings.clone(),
            shows: variant.shows.clone(),
            params,
            settings,
            through_pooler: variant.through_pooler,
            pooler_settings,
            expect,
        }
    }
}

/// An override's key: `VARIANT.NAME` (that variant's own value) or `NAME`. Parameter names
/// hold no dot, so a variant's name may.
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.rsplit_once('.') {
        Some((variant, name)) => (Some(variant), name),
        None => (None, key),
    }
}

pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// A word parameter's words and the value each stands for, written once: `$words` for its
/// `ParamSpec::words`, `$values` for [`Params::one_of`].
macro_rules! words {
    ($vis:vis $words:ident, $values:ident: $t:ty = { $($w:literal => $v:expr),+ $(,)? }) => {
        $vis const $words: &[&str] = &[$($w),+];
        $vis const $values: &[(&str, $t)] = &[$(($w, $v)),+];
    };
}
pub(crate) use words;

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "orphan-lock"
summary = "s"
explain = "e"
harm = { metric = "lock_held_ms", label = "row locked" }

[params]
clients = 20
fault = "freeze"
payment = "inside"
reconcile = false
seats = 100
payment_call = "25s"
booker_payment = "100ms"
retry_after = "1s"
idle_timeout = "10s"
lock_timeout = "500ms"
statement_timeout = "5s"
holder = "quiet"
poll_every = "1s"
transaction_timeout = "10s"
deadline = "30s"

[[variants]]
name = "mitigated"
mitigated = true
shows = "it works"
settings = { idle_in_transaction_session_timeout = "idle_timeout", lock_timeout = "250ms" }
expect = ["lock_held_ms <= idle_timeout * 1.5"]

[[variants.expect_when]]
param = "fault"
equals = "kill"
expect = ["lock_held_ms < 100"]
"#;

    #[test]
    fn durations_and_settings_are_scaled() {
        let s = Scenario::parse(MINIMAL, "t.toml").unwrap();
        let v = s.resolve(&s.variants[0], 0.1);
        assert_eq!(
            v.params.duration("idle_timeout").unwrap(),
            Duration::from_secs(1)
        );
        assert_eq!(
            v.settings,
            vec![
                (
                    "idle_in_transaction_session_timeout".into(),
                    "1000ms".into()
                ),
                ("lock_timeout".into(), "25ms".into()),
            ]
        );
        assert_eq!(v.expect[0].text, "lock_held_ms <= idle_timeout * 1.5");
    }

    #[test]
    fn expect_when_replaces_expectations_for_that_parameter_value() {
        let mut s = Scenario::parse(MINIMAL, "t.toml").unwrap();
        s.override_params(&[parse_override("fault=kill").unwrap()])
            .unwrap();
        let v = s.resolve(&s.variants[0], 1.0);
        assert_eq!(v.expect.len(), 1);
        assert_eq!(v.expect[0].text, "lock_held_ms < 100");
    }

    #[test]
    fn an_override_never_turns_a_variant_into_another_under_its_name() {
        let mut s = crate::scenario::load("lock-watchdog").unwrap();
        let max_lease = |s: &Scenario, name: &str| {
            let v = s.variants.iter().find(|v| v.name == name).unwrap();
            s.resolve(v, 1.0).params.duration("max_lease").unwrap()
        };
        // `max_lease=0` is no bound: bounded-lease keeps its own, and the note says how to
        // change it; the variants without one of their own take the value.
        let notes = s
            .override_params(&[parse_override("max_lease=0").unwrap()])
            .unwrap();
        assert_eq!(max_lease(&s, "bounded-lease"), Duration::from_secs(10));
        assert_eq!(max_lease(&s, "hung-worker"), Duration::ZERO);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].contains("bounded-lease (max_lease = 10s)")
                && notes[0].contains("--param bounded-lease.max_lease=0"),
            "{notes:?}"
        );
        // Named with its variant, it changes that variant only.
        let notes = s
            .override_params(&[parse_override("bounded-lease.max_lease=4s").unwrap()])
            .unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(max_lease(&s, "bounded-lease"), Duration::from_secs(4));
        assert_eq!(max_lease(&s, "hung-worker"), Duration::ZERO);
        // A value equal to a variant's own needs no note.
        assert!(
            s.override_params(&[parse_override("max_lease=4s").unwrap()])
                .unwrap()
                .is_empty()
        );
        // A word some variants set is theirs: for all, it is refused.
        let e = s
            .override_params(&[parse_override("fault=pause").unwrap()])
            .unwrap_err()
            .0;
        assert!(
            e.contains("`fault` is what tells lock-watchdog's variants apart")
                && e.contains("stalled-process, stalled-fenced"),
            "{e}"
        );
        let e = s
            .override_params(&[parse_override("bounded-leas.max_lease=4s").unwrap()])
            .unwrap_err()
            .0;
        assert!(
            e.contains("no variant `bounded-leas`; did you mean `bounded-lease`?"),
            "{e}"
        );
        let e = s
            .override_params(&[parse_override("bounded-lease.max_leas=4s").unwrap()])
            .unwrap_err()
            .0;
        assert!(e.contains("did you mean `max_lease`?"), "{e}");
    }

    #[test]
    fn syntax_error_reports_file_line_and_column() {
        let bad = MINIMAL.replace("clients = 20", "clients = = 20");
        let e = Scenario::parse(&bad, "my.toml").unwrap_err().0;
        assert!(e.starts_with("my.toml:8:"), "{e}");
    }

    #[test]
    fn unknown_metric_in_expectation_points_at_it() {
        let bad = MINIMAL.replace("lock_held_ms <= idle", "lock_hold_ms <= idle");
        let e = Scenario::parse(&bad, "my.toml").unwrap_err().0;
        assert!(e.starts_with("my.toml:29:"), "{e}");
        assert!(e.contains("lock_hold_ms"), "{e}");
    }

    #[test]
    fn unknown_parameter_and_field_are_rejected() {
        let bad = MINIMAL.replace("seats = 100", "seats = 100\nsaets = 3");
        assert!(Scenario::parse(&bad, "f").unwrap_err().0.contains("saets"));
        let bad = MINIMAL.replace("mitigated = true", "mitigated = true\nmitigate = 1");
        assert!(
            Scenario::parse(&bad, "f")
                .unwrap_err()
                .0
                .contains("mitigate")
        );
        let mut s = Scenario::parse(MINIMAL, "f").unwrap();
        assert!(
            s.override_params(&[parse_override("nope=1").unwrap()])
                .is_err()
        );
    }

    #[test]
    fn missing_parameter_is_named() {
        let bad = MINIMAL.replace("deadline = \"30s\"", "");
        assert!(
            Scenario::parse(&bad, "f")
                .unwrap_err()
                .0
                .contains("`deadline`")
        );
    }

    #[test]
    fn overrides_parse_like_file_values() {
        assert_eq!(parse_override("clients=5").unwrap().1, Param::Int(5));
        assert_eq!(
            parse_override("deadline=2s").unwrap().1,
            Param::Duration(Duration::from_secs(2))
        );
        assert_eq!(
            parse_override("fault=kill").unwrap().1,
            Param::Text("kill".into())
        );
        assert!(parse_override("novalue").is_err());
    }

    #[test]
    fn a_switch_takes_exactly_its_two_values() {
        let s = Scenario::parse(MINIMAL, "t.toml").unwrap();
        let p = &s.resolve(&s.variants[0], 1.0).params;
        assert!(p.switch("fault", "freeze", "kill").unwrap());
        assert!(!p.switch("fault", "kill", "freeze").unwrap());
        let e = p.switch("fault", "a", "b").unwrap_err().to_string();
        assert_eq!(e, "fault must be a or b, not `freeze`");
    }
}
