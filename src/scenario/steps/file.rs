//! Reading a step file: every key checked, every name it refers to resolved, every mistake
//! reported as `file:line:col` before anything starts.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::After;
use super::step_def::{check_cycles, resolve_after, step};
use super::{Action, Connect, Fault, SessionDef, Spec, StepDef};
use crate::check::expect::Expectation;
use crate::check::steps::{Layout, SessionLayout};
use crate::error::UsageError;
use crate::scenario::spec::{Accepts, Param, ParamSpec, Scenario, Variant, line_col};
use crate::scenario::{Kind, kinds};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSpec {
    pub(super) name: Spanned<String>,
    pub(super) summary: String,
    #[serde(default)]
    pub(super) explain: String,
    pub(super) harm: ColumnSpec,
    #[serde(default)]
    pub(super) columns: Vec<ColumnSpec>,
    /// The file's own default time scale (1: durations as written), unless --time-scale.
    pub(super) time_scale: Option<Spanned<f64>>,
    #[serde(default)]
    pub(super) params: BTreeMap<String, Spanned<toml::Value>>,
    pub(super) setup: Option<SetupSpec>,
    pub(super) sessions: Vec<SessionSpec>,
    /// `{ of = "EXPR" }` is arithmetic over the other metrics, else SQL.
    #[serde(default)]
    pub(super) metrics: BTreeMap<String, Spanned<toml::Value>>,
    /// Relations between parameters a run needs (`deadline >= 3 * step`): a point where one
    /// fails is refused before anything starts.
    #[serde(default)]
    pub(super) requires: Vec<Spanned<String>>,
    /// The table's outcome word: the first whose `when` holds (none: stuck, errors or clean).
    #[serde(default)]
    pub(super) outcomes: Vec<OutcomeSpec>,
    pub(super) variants: Vec<VariantSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OutcomeSpec {
    pub(super) is: Spanned<String>,
    /// Conditions over metrics, all of which must hold (a string is one); none: always.
    #[serde(default)]
    pub(super) when: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ColumnSpec {
    pub(super) metric: Spanned<String>,
    pub(super) label: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetupSpec {
    pub(super) sql: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SessionSpec {
    pub(super) name: Spanned<String>,
    pub(super) clients: Option<Spanned<toml::Value>>,
    pub(super) connect: Option<Spanned<String>>,
    /// With connect = "pool": the pool's connections (a count or `${param}`).
    pub(super) pool_size: Option<Spanned<toml::Value>>,
    /// With connect = "pool": how long a checkout waits at most (none: for ever).
    pub(super) pool_timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) settings: BTreeMap<String, Spanned<toml::Value>>,
    /// "once", "until-deadline", or a count of rounds (a number or `${param}`).
    pub(super) repeat: Option<Spanned<toml::Value>>,
    pub(super) probe: Option<String>,
    /// Settings applied where the role may set them (a superuser setting such as
    /// deadlock_timeout); elsewhere the server's value stands.
    #[serde(default)]
    pub(super) try_settings: BTreeMap<String, Spanned<toml::Value>>,
    /// A round that fails with one of these SQLSTATEs is rolled back and run again.
    pub(super) retry: Option<RetrySpec>,
    pub(super) steps: Vec<StepSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RetrySpec {
    pub(super) on: Vec<Spanned<String>>,
    /// Retries per round: a count or `${param}`.
    pub(super) max: Spanned<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StepSpec {
    pub(super) name: Spanned<String>,
    pub(super) sql: Option<String>,
    pub(super) sleep: Option<Spanned<String>>,
    pub(super) fault: Option<Spanned<String>>,
    /// A Redis command, its first argument the key (`SET lock:${key} ${token} NX PX 10000`).
    pub(super) redis: Option<Spanned<String>>,
    /// A Lua script, with `keys` and `args`.
    pub(super) redis_eval: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) keys: Vec<String>,
    #[serde(default)]
    pub(super) args: Vec<String>,
    /// The reply that counts as success.
    pub(super) want: Option<String>,
    /// On another reply: "retry" (after `retry_after`) or "stop" (the step fails).
    #[serde(rename = "else")]
    pub(super) otherwise: Option<Spanned<String>>,
    pub(super) retry_after: Option<Spanned<String>>,
    pub(super) critical: Option<Spanned<String>>,
    /// A condition, or a list of them of which the first to come true starts the step.
    pub(super) after: Option<Spanned<toml::Value>>,
    /// With `after`: start anyway once the client has waited this long for it.
    pub(super) patience: Option<Spanned<String>>,
    /// A SQL step: the first column of the last row it returns, as `${name}` in the client's
    /// later steps (what a report saw, to record it).
    pub(super) into: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VariantSpec {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) mitigated: bool,
    /// Runs only when named (`--variant`): a check of the user's own server.
    #[serde(default)]
    pub(super) opt_in: bool,
    /// Server settings the table shows for this variant (as the server has them).
    #[serde(default)]
    pub(super) show_settings: Vec<String>,
    #[serde(default)]
    pub(super) shows: String,
    #[serde(default)]
    pub(super) params: BTreeMap<String, Spanned<toml::Value>>,
    /// Session settings for every session of the variant (a session's own win).
    #[serde(default)]
    pub(super) settings: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    pub(super) expect: Vec<Spanned<String>>,
    /// Steps across sessions in the order they run: each starts once the one before it has
    /// completed or is seen waiting on a lock (an isolationtester permutation).
    pub(super) order: Option<Spanned<Vec<Spanned<String>>>>,
}

/// Each variant's `order`, as the conditions it puts on the steps it lists (which replace
/// their own `after`): a step starts once the one before it in the order has completed, or
/// (running SQL) is seen waiting on a lock.
fn orders(
    at: &At<'_>,
    file: &FileSpec,
    sessions: &[SessionDef],
) -> Result<BTreeMap<String, super::Order>, UsageError> {
    let mut out = BTreeMap::new();
    for v in &file.variants {
        let Some(order) = &v.order else { continue };
        if order.get_ref().len() < 2 {
            return Err(at.err(order.span(), "an order lists two steps or more"));
        }
        let mut steps: Vec<After> = Vec::new();
        for entry in order.get_ref() {
            if entry.get_ref().ends_with(":waiting") {
                return Err(at.err(
                    entry.span(),
                    "an order lists steps (\"S.step\"); each waits for the one before it to \
                     complete or to wait on a lock",
                ));
            }
            let a = resolve_after(at, entry, sessions)?;
            if steps
                .iter()
                .any(|s| (s.session, s.step) == (a.session, a.step))
            {
                return Err(at.err(
                    entry.span(),
                    &format!("`{}` is in the order twice", entry.get_ref()),
                ));
            }
            steps.push(a);
        }
        let mut after = BTreeMap::new();
        for pair in steps.windows(2) {
            let (prev, this) = (pair[0], pair[1]);
            let mut conds = vec![After {
                waiting: false,
                ..prev
            }];
            if matches!(
                sessions[prev.session].steps[prev.step].action,
                super::Action::Sql(_)
            ) {
                conds.push(After {
                    waiting: true,
                    ..prev
                });
            }
            after.insert((this.session, this.step), conds);
        }
        check_cycles(at, file, sessions, (&after, Some(order.span())))?;
        out.insert(v.name.get_ref().clone(), super::Order { after });
    }
    Ok(out)
}

/// Whether a scenario file is a step file: it has `[[sessions]]`.
pub fn is_step_file(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("sessions"))
}

pub(super) struct At<'a> {
    pub(super) text: &'a str,
    pub(super) origin: &'a str,
}

impl At<'_> {
    pub(super) fn err(&self, span: Range<usize>, msg: &str) -> UsageError {
        let (line, col) = line_col(self.text, span.start);
        UsageError(format!("{}:{line}:{col}: {msg}", self.origin))
    }
}

/// A name sessions, steps and metrics can be dotted together from.
pub(super) fn plain_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A PostgreSQL setting's name (`lock_timeout`, `myapp.tenant`): spliced into `SET`, so no
/// other character passes.
pub(super) fn setting_name(name: &str) -> bool {
    plain_name(&name.replace('.', "_"))
}

pub(super) fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Metrics every step file has (besides `errors_CODE`): a `[metrics]` entry may not take
/// their names.
const EVERY_FILE: &[&str] = &[
    "cut_off",
    "p50_ms",
    "p99_ms",
    "max_holders",
    "stuck",
    "retries",
];

/// Parses a step file into a scenario whose code is the step runner.
pub fn parse(text: &str, origin: &str) -> Result<Scenario, UsageError> {
    parse_as(text, origin, false)
}

/// Parses one of locklab's own step files (which may take a built-in's name).
pub fn parse_builtin(text: &str, origin: &str) -> Result<Scenario, UsageError> {
    parse_as(text, origin, true)
}

fn parse_as(text: &str, origin: &str, builtin: bool) -> Result<Scenario, UsageError> {
    let at = At { text, origin };
    let file: FileSpec = toml::from_str(text).map_err(|e| {
        let msg = e.message().trim().to_string();
        match e.span() {
            Some(span) => at.err(span, &msg),
            None => UsageError(format!("{origin}: {msg}")),
        }
    })?;
    let name = file.name.get_ref().clone();
    if !builtin && kinds().iter().any(|k| k.name == name) {
        return Err(at.err(
            file.name.span(),
            &format!("`{name}` is a built-in scenario's name: give yours another"),
        ));
    }
    if let Some(scale) = &file.time_scale
        && !(*scale.get_ref() > 0.0 && scale.get_ref().is_finite())
    {
        return Err(at.err(scale.span(), "time_scale must be a positive number"));
    }
    let decls = params(&at, &file.params)?;
    let params = &decls.values;
    if !params.contains_key("deadline") {
        return Err(UsageError(format!(
            "{origin}: [params] must set `deadline`, the cut-off (e.g. deadline = \"10s\")"
        )));
    }
    let mut requires = Vec::new();
    for r in &file.requires {
        let e = Expectation::parse(r.get_ref()).map_err(|m| at.err(r.span(), &m))?;
        if let Some(bad) = e.idents().into_iter().find(|i| !params.contains_key(*i)) {
            return Err(at.err(
                r.span(),
                &format!("requires: `{bad}` is no parameter (a relation is between parameters)"),
            ));
        }
        requires.push(e);
    }
    let known = known_refs(&decls);
    let sessions = sessions(&at, &file, &decls, &known)?;
    check_cycles(&at, &file, &sessions, (&BTreeMap::new(), None))?;
    let orders = orders(&at, &file, &sessions)?;
    let mut queries: Vec<(String, String)> = Vec::new();
    let mut derived: Vec<(String, String)> = Vec::new();
    for (k, v) in &file.metrics {
        if !plain_name(k) {
            return Err(at.err(
                v.span(),
                &format!("`{k}`: a metric's name is letters, digits and _"),
            ));
        }
        if EVERY_FILE.contains(&k.as_str()) || k.starts_with("errors_") {
            return Err(at.err(
                v.span(),
                &format!("`{k}` is a metric every step file has: name yours otherwise"),
            ));
        }
        match v.get_ref() {
            toml::Value::String(sql) => {
                check_refs(&at, v.span(), sql, &known)?;
                queries.push((k.clone(), sql.clone()));
            }
            toml::Value::Table(t) if t.len() == 1 && t.get("of").is_some_and(|o| o.is_str()) => {
                let text = t.get("of").and_then(|o| o.as_str()).unwrap_or_default();
                crate::check::expect::Formula::parse(text)
                    .map_err(|m| at.err(v.span(), &format!("`{k}`: {m}")))?;
                derived.push((k.clone(), text.to_string()));
            }
            _ => {
                return Err(at.err(
                    v.span(),
                    &format!(
                        "`{k}`: a metric is SQL (\"SELECT …\") or {{ of = \"EXPR\" }} over other metrics"
                    ),
                ));
            }
        }
    }
    let setup = file
        .setup
        .as_ref()
        .map(|s| s.sql.clone())
        .unwrap_or_default();
    check_refs(&at, file.name.span(), &setup, &known)?;
    let layout = layout(&file, &sessions, &queries, &derived);
    let metrics = layout.metrics();
    // A derived metric reads metrics that exist, each defined before it.
    for (i, (k, text)) in derived.iter().enumerate() {
        let span = file.metrics.get(k).map(|v| v.span()).unwrap_or(0..0);
        let f = crate::check::expect::Formula::parse(text).map_err(|m| at.err(span.clone(), &m))?;
        let known =
            |m: &str| metrics.iter().any(|x| x == m) && !derived[i..].iter().any(|(d, _)| d == m);
        if let Some(bad) = f.idents().into_iter().find(|m| !known(m)) {
            let hint = crate::text::nearest(bad, metrics.iter().map(String::as_str))
                .map(|n| format!("; did you mean `{n}`?"))
                .unwrap_or_default();
            return Err(at.err(
                span,
                &format!("`{k}`: `{bad}` is no metric defined before it{hint}"),
            ));
        }
    }
    let mut outcomes = Vec::new();
    for o in &file.outcomes {
        let word = o.is.get_ref();
        if word.is_empty()
            || !word
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(at.err(
                o.is.span(),
                "an outcome is a word (letters, digits, - and _)",
            ));
        }
        let conds: Vec<String> = match o.when.as_ref().map(|w| (w.get_ref(), w.span())) {
            None => Vec::new(),
            Some((toml::Value::String(x), _)) => vec![x.clone()],
            Some((toml::Value::Array(xs), span)) => xs
                .iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| at.err(span, "when lists conditions as text"))?,
            Some((_, span)) => return Err(at.err(span, "when is a condition, or a list of them")),
        };
        for c in &conds {
            let span = o.when.as_ref().map_or(o.is.span(), |w| w.span());
            let e = Expectation::parse(c).map_err(|m| at.err(span.clone(), &m))?;
            if let Some(bad) = e
                .idents()
                .into_iter()
                .find(|i| !metrics.iter().any(|m| m == i))
            {
                let hint = crate::text::nearest(bad, metrics.iter().map(String::as_str))
                    .map(|n| format!("; did you mean `{n}`?"))
                    .unwrap_or_default();
                return Err(at.err(span, &format!("`{bad}` is no metric of this file{hint}")));
            }
        }
        outcomes.push((word.clone(), conds));
    }
    let mut layout = layout;
    layout.outcomes = outcomes;
    let variants = variants(&at, &file, &decls, &metrics)?;
    for c in std::iter::once(&file.harm).chain(&file.columns) {
        if !metrics.contains(c.metric.get_ref()) {
            return Err(at.err(
                c.metric.span(),
                &format!(
                    "`{}` is no metric of this file (it has: {})",
                    c.metric.get_ref(),
                    metrics.join(", ")
                ),
            ));
        }
    }
    let spec = Spec {
        setup,
        sessions,
        queries,
        layout,
        choices: decls.choices.clone(),
        requires,
        orders,
    };
    let kind = kind(&name, text, &decls, metrics, spec);
    Ok(Scenario {
        name,
        kind,
        summary: file.summary.trim().to_string(),
        explain: file.explain.trim().to_string(),
        harm_metric: file.harm.metric.get_ref().clone(),
        harm_label: file.harm.label.clone(),
        columns: file
            .columns
            .iter()
            .map(|c| (c.metric.get_ref().clone(), c.label.clone()))
            .collect(),
        params: decls.values,
        variants,
        source: origin.to_string(),
        swept: Vec::new(),
        default_scale: file.time_scale.map(|s| s.into_inner()),
    })
}

/// The registry entry of a step file, made once per file for the life of the process: its
/// parameters (any value), its metrics, and the step runner as its code.
pub(super) fn kind(
    name: &str,
    text: &str,
    decls: &Decls,
    metrics: Vec<String>,
    spec: Spec,
) -> &'static Kind {
    let spec: &'static Spec = Box::leak(Box::new(spec));
    let param_specs: Vec<ParamSpec> = decls
        .values
        .keys()
        .map(|k| ParamSpec {
            name: leak(k.clone()),
            accepts: decls.accepts.get(k).copied().unwrap_or(Accepts::Any),
            whole_seconds: false,
        })
        .collect();
    let metric_names: Vec<&'static str> = metrics.into_iter().map(leak).collect();
    Box::leak(Box::new(Kind {
        name: leak(name.to_string()),
        file: leak(text.to_string()),
        params: Box::leak(param_specs.into_boxed_slice()),
        metrics: Box::leak(metric_names.into_boxed_slice()),
        needs_redis: spec
            .sessions
            .iter()
            .flat_map(|s| &s.steps)
            .any(|t| matches!(t.action, Action::Redis(_))),
        // The parameter a session's clients come from, for "lower it" in a too-small
        // server's message.
        sized_by: spec
            .sessions
            .iter()
            .find_map(|s| {
                let rest = &s.clients[s.clients.find("${")? + 2..];
                Some(&rest[..rest.find('}')?])
            })
            .map_or("", |p| leak(p.to_string())),
        prepare: super::prepare,
        worker: crate::scenario::no_worker,
        steps: Some(spec),
    }))
}

/// A file's `[params]`: their defaults, what each accepts (a table form declares it), and the
/// text a choice's words stand for in `${name}`.
#[derive(Debug, Default)]
pub(super) struct Decls {
    pub(super) values: BTreeMap<String, Param>,
    pub(super) accepts: BTreeMap<String, Accepts>,
    pub(super) choices: BTreeMap<String, Vec<(String, String)>>,
}

/// `name = value`, or `name = { default = …, one_of = [words] or { word = "text" }, min = …,
/// max = … }`: a choice validated like a built-in's words, or a count or duration in a range
/// (which `bench claims` samples).
pub(super) fn params(
    at: &At<'_>,
    raw: &BTreeMap<String, Spanned<toml::Value>>,
) -> Result<Decls, UsageError> {
    let mut out = Decls::default();
    for (k, v) in raw {
        if !plain_name(k) {
            return Err(at.err(
                v.span(),
                &format!("`{k}`: a parameter's name is letters, digits and _"),
            ));
        }
        let bad = |m: &str| at.err(v.span(), &format!("`{k}`: {m}"));
        let toml::Value::Table(t) = v.get_ref() else {
            out.values.insert(
                k.clone(),
                Param::from_toml(v.get_ref()).map_err(|m| at.err(v.span(), &m))?,
            );
            continue;
        };
        if let Some(other) = t
            .keys()
            .find(|x| !["default", "one_of", "min", "max"].contains(&x.as_str()))
        {
            return Err(bad(&format!(
                "unknown key `{other}` (a declared parameter has default, one_of, min and max)"
            )));
        }
        let default = t
            .get("default")
            .ok_or_else(|| bad("a declared parameter needs its `default`"))?;
        let value = Param::from_toml(default).map_err(|m| bad(&m))?;
        let accepts = match (t.get("one_of"), t.get("min"), t.get("max")) {
            (Some(words), None, None) => {
                let pairs: Vec<(String, String)> = match words {
                    toml::Value::Array(a) => a
                        .iter()
                        .map(|w| w.as_str().map(|w| (w.to_string(), w.to_string())))
                        .collect::<Option<_>>()
                        .ok_or_else(|| bad("one_of lists words"))?,
                    toml::Value::Table(m) if !m.is_empty() && m.values().all(|v| v.is_table()) => {
                        fields(k, m, &mut out.choices).map_err(|e| bad(&e))?;
                        m.keys().map(|w| (w.clone(), w.clone())).collect()
                    }
                    toml::Value::Table(m) => m
                        .iter()
                        .map(|(w, text)| text.as_str().map(|t| (w.clone(), t.to_string())))
                        .collect::<Option<_>>()
                        .ok_or_else(|| {
                            bad("one_of maps each word to the text it stands for, or to a \
                                 table of texts (`${name.field}`)")
                        })?,
                    _ => return Err(bad("one_of is a list of words, or a table of word = text")),
                };
                if pairs.is_empty() {
                    return Err(bad("one_of needs at least one word"));
                }
                let words: Vec<&'static str> = pairs.iter().map(|(w, _)| leak(w.clone())).collect();
                if pairs.iter().any(|(w, t)| w != t) {
                    out.choices.insert(k.clone(), pairs);
                }
                Accepts::Words(Box::leak(words.into_boxed_slice()))
            }
            (None, min, max) if min.is_some() || max.is_some() => {
                let bound = |b: Option<&toml::Value>| -> Result<Option<Param>, UsageError> {
                    b.map(|b| Param::from_toml(b).map_err(|m| bad(&m)))
                        .transpose()
                };
                match (&value, bound(min)?, bound(max)?) {
                    (Param::Int(_), lo, hi) => Accepts::Count {
                        min: match lo {
                            Some(Param::Int(i)) => i,
                            None => 0,
                            _ => return Err(bad("min of a count is a whole number")),
                        },
                        max: match hi {
                            Some(Param::Int(i)) => i,
                            None => i64::MAX,
                            _ => return Err(bad("max of a count is a whole number")),
                        },
                    },
                    (Param::Duration(_), lo, hi) => Accepts::Duration {
                        min: match lo {
                            Some(Param::Duration(d)) => d,
                            Some(Param::Int(0)) | None => std::time::Duration::ZERO,
                            _ => return Err(bad("min of a duration is a duration")),
                        },
                        max: match hi {
                            Some(Param::Duration(d)) => d,
                            None => std::time::Duration::from_secs(86_400 * 365),
                            _ => return Err(bad("max of a duration is a duration")),
                        },
                    },
                    _ => return Err(bad("min and max bound a count or a duration")),
                }
            }
            (None, None, None) => Accepts::Any,
            _ => return Err(bad("one_of, or min and max: not both")),
        };
        let spec = ParamSpec {
            name: leak(k.clone()),
            accepts,
            whole_seconds: false,
        };
        spec.check(&value)
            .map_err(|m| bad(&format!("its default: {m}")))?;
        out.values.insert(k.clone(), value);
        out.accepts.insert(k.clone(), accepts);
    }
    Ok(out)
}

/// A choice whose words each stand for several texts, `{ word = { field = "text", … } }`:
/// each field is a choice of its own, `name.field`, the same fields for every word.
fn fields(
    name: &str,
    words: &toml::map::Map<String, toml::Value>,
    choices: &mut BTreeMap<String, Vec<(String, String)>>,
) -> Result<(), String> {
    let mut names: Option<Vec<&String>> = None;
    for (word, table) in words {
        let Some(t) = table.as_table() else {
            return Err(format!(
                "`{word}`: a word maps to text, or to a table of texts"
            ));
        };
        let keys: Vec<&String> = t.keys().collect();
        match &names {
            None => names = Some(keys),
            Some(first) if *first != keys => {
                return Err(format!(
                    "every word gives the same fields; `{word}` gives {}",
                    keys.iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            Some(_) => {}
        }
        for (field, text) in t {
            if !plain_name(field) {
                return Err(format!(
                    "`{word}.{field}`: a field's name is letters, digits and _"
                ));
            }
            let Some(text) = text.as_str() else {
                return Err(format!("`{word}.{field}` is text"));
            };
            choices
                .entry(format!("{name}.{field}"))
                .or_default()
                .push((word.clone(), text.to_string()));
        }
    }
    Ok(())
}

/// What `${…}` may name in a file's text: its parameters, and each field of a choice that
/// maps its words to tables (`${read.connect}`), valued as its default word's.
fn known_refs(decls: &Decls) -> BTreeMap<String, Param> {
    let mut known = decls.values.clone();
    for (name, words) in &decls.choices {
        if let Some((base, _)) = name.split_once('.') {
            let default = match decls.values.get(base) {
                Some(Param::Text(w)) => words.iter().find(|(x, _)| x == w),
                _ => None,
            };
            if let Some((_, text)) = default.or(words.first()) {
                known.insert(name.clone(), Param::Text(text.clone()));
            }
        }
    }
    known
}

/// `${…}` filled in as a step runs: unique per client and round, and the client's number in
/// its session (0, 1, …).
pub(super) const RUN_TIME: &[&str] = &["token", "client"];

/// Every `${name}` in `text` names a parameter.
pub(super) fn check_refs(
    at: &At<'_>,
    span: Range<usize>,
    text: &str,
    params: &BTreeMap<String, Param>,
) -> Result<(), UsageError> {
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        let Some(end) = rest[i..].find('}') else {
            return Err(at.err(span, "an unclosed `${`"));
        };
        let inner = &rest[i + 2..i + end];
        let name = inner.split_once(':').map_or(inner, |(n, _)| n);
        if !RUN_TIME.contains(&name) && !params.contains_key(name) {
            return Err(at.err(
                span,
                &format!(
                    "`${{{name}}}` names no parameter (this file's: {})",
                    params.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        rest = &rest[i + end + 1..];
    }
    Ok(())
}

/// A TOML value as the text a setting or a count is written with.
pub(super) fn as_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A pool session's size and checkout bound; keys a non-pool session may not give.
fn pool_of(
    at: &At<'_>,
    s: &SessionSpec,
    may_pool: bool,
    params: &BTreeMap<String, Param>,
) -> Result<Option<super::PoolDef>, UsageError> {
    if !may_pool {
        if let Some(span) = s
            .pool_size
            .as_ref()
            .map(|p| p.span())
            .or_else(|| s.pool_timeout.as_ref().map(|p| p.span()))
        {
            return Err(at.err(
                span,
                "pool_size and pool_timeout go with connect = \"pool\"",
            ));
        }
        return Ok(None);
    }
    let size = s.pool_size.as_ref().ok_or_else(|| {
        at.err(
            s.name.span(),
            "connect = \"pool\" needs pool_size (10 is node-postgres's default, 10 HikariCP's, \
             5 SQLAlchemy's)",
        )
    })?;
    let size_text = as_text(size.get_ref());
    check_refs(at, size.span(), &size_text, params)?;
    let timeout = match &s.pool_timeout {
        Some(t) => {
            check_refs(at, t.span(), t.get_ref(), params)?;
            if !t.get_ref().contains("${") {
                humantime::parse_duration(t.get_ref().trim())
                    .map_err(|e| at.err(t.span(), &format!("pool_timeout: {e}")))?;
            }
            Some(t.get_ref().clone())
        }
        None => None,
    };
    Ok(Some(super::PoolDef {
        size: size_text,
        timeout,
    }))
}

/// Where a session connects: one way, or `${name}` of a choice whose words stand for
/// direct, pooler or pool (the default word's, and every one the choice allows).
fn connects(
    at: &At<'_>,
    s: &SessionSpec,
    decls: &Decls,
    known: &BTreeMap<String, Param>,
) -> Result<(Connect, Option<String>, Vec<Connect>), UsageError> {
    let word = |w: &str, span: Range<usize>| super::connect_word(w).map_err(|e| at.err(span, &e));
    let Some(c) = &s.connect else {
        return Ok((Connect::Direct, None, vec![Connect::Direct]));
    };
    let raw = c.get_ref().trim();
    let Some(name) = raw.strip_prefix("${").and_then(|r| r.strip_suffix('}')) else {
        let one = word(raw, c.span())?;
        return Ok((one, None, vec![one]));
    };
    let texts: Vec<String> = match (decls.choices.get(name), decls.accepts.get(name)) {
        (Some(words), _) => words.iter().map(|(_, t)| t.clone()).collect(),
        (None, Some(Accepts::Words(words))) => words.iter().map(|w| w.to_string()).collect(),
        _ => {
            return Err(at.err(
                c.span(),
                &format!(
                    "connect = \"${{{name}}}\" names a choice (one_of) whose words stand for \
                     direct, pooler or pool"
                ),
            ));
        }
    };
    let mut all = Vec::new();
    for t in &texts {
        let one = word(t, c.span())?;
        if !all.contains(&one) {
            all.push(one);
        }
    }
    let default = match known.get(name) {
        Some(Param::Text(t)) => word(t, c.span())?,
        _ => all[0],
    };
    Ok((default, Some(name.to_string()), all))
}

/// How many rounds a session runs: None until the cut-off, or a count (a number or
/// `${param}`; "once" is 1).
fn rounds(
    at: &At<'_>,
    s: &SessionSpec,
    params: &BTreeMap<String, Param>,
) -> Result<Option<String>, UsageError> {
    let Some(r) = &s.repeat else {
        return Ok(Some("1".into()));
    };
    match r.get_ref() {
        toml::Value::String(w) if w == "once" => Ok(Some("1".into())),
        toml::Value::String(w) if w == "until-deadline" => Ok(None),
        toml::Value::String(w) if w.contains("${") => {
            check_refs(at, r.span(), w, params)?;
            Ok(Some(w.clone()))
        }
        toml::Value::Integer(n) if *n >= 1 => Ok(Some(n.to_string())),
        other => Err(at.err(
            r.span(),
            &format!(
                "repeat is \"once\", \"until-deadline\", or a count of rounds (5, \"${{rounds}}\"), \
                 not `{}`",
                as_text(other)
            ),
        )),
    }
}

pub(super) fn sessions(
    at: &At<'_>,
    file: &FileSpec,
    decls: &Decls,
    params: &BTreeMap<String, Param>,
) -> Result<Vec<SessionDef>, UsageError> {
    if file.sessions.is_empty() {
        return Err(UsageError(format!(
            "{}: a step file needs [[sessions]]",
            at.origin
        )));
    }
    let mut out: Vec<SessionDef> = Vec::new();
    for s in &file.sessions {
        let name = s.name.get_ref();
        if !plain_name(name) {
            return Err(at.err(s.name.span(), "a session's name is letters, digits and _"));
        }
        if out.iter().any(|o| &o.name == name) {
            return Err(at.err(s.name.span(), &format!("two sessions are named `{name}`")));
        }
        let clients = match &s.clients {
            Some(c) => {
                let text = as_text(c.get_ref());
                check_refs(at, c.span(), &text, params)?;
                text
            }
            None => "1".into(),
        };
        let (connect, connect_by, connects) = connects(at, s, decls, params)?;
        let rounds = rounds(at, s, params)?;
        let may_pool = connects.contains(&Connect::Pool);
        let pool = pool_of(at, s, may_pool, params)?;
        let settings_of = |map: &BTreeMap<String, Spanned<toml::Value>>| {
            let mut out = Vec::new();
            for (k, v) in map {
                if !setting_name(k) {
                    return Err(at.err(v.span(), &format!("`{k}` is not a setting's name")));
                }
                let text = as_text(v.get_ref());
                check_refs(at, v.span(), &text, params)?;
                out.push((k.clone(), text));
            }
            Ok(out)
        };
        let settings = settings_of(&s.settings)?;
        let try_settings = settings_of(&s.try_settings)?;
        let retry = match &s.retry {
            None => None,
            Some(r) => {
                let mut on = Vec::new();
                for c in &r.on {
                    let code = c.get_ref().to_ascii_uppercase();
                    if code.len() != 5 || !code.chars().all(|x| x.is_ascii_alphanumeric()) {
                        return Err(at.err(
                            c.span(),
                            &format!("retry.on lists SQLSTATEs (five characters: 40001, 40P01), not `{}`", c.get_ref()),
                        ));
                    }
                    on.push(code);
                }
                if on.is_empty() {
                    return Err(at.err(r.max.span(), "retry.on needs at least one SQLSTATE"));
                }
                let max = as_text(r.max.get_ref());
                check_refs(at, r.max.span(), &max, params)?;
                Some(super::RetryDef { on, max })
            }
        };
        if let Some(p) = &s.probe {
            check_refs(at, s.name.span(), p, params)?;
        }
        let mut steps: Vec<StepDef> = Vec::new();
        // What the session's steps may name: the parameters, and what its earlier steps
        // captured (`into`).
        let mut refs = params.clone();
        for t in &s.steps {
            let step = step(at, name, t, (params, &refs))?;
            if let Some(into) = &t.into {
                let n = into.get_ref();
                if step.into.is_none() {
                    return Err(at.err(into.span(), "`into` captures what a `sql` step returns"));
                }
                if !plain_name(n) || refs.contains_key(n) || RUN_TIME.contains(&n.as_str()) {
                    return Err(at.err(
                        into.span(),
                        &format!(
                            "`into = \"{n}\"`: a capture's name is letters, digits and _, and \
                             names no parameter, other capture, token or client"
                        ),
                    ));
                }
                refs.insert(n.clone(), Param::Text(String::new()));
            }
            if steps.iter().any(|o| o.name == step.name) {
                return Err(at.err(
                    t.name.span(),
                    &format!("two steps of `{name}` are named `{}`", step.name),
                ));
            }
            steps.push(step);
        }
        if steps.is_empty() {
            return Err(at.err(s.name.span(), "a session needs at least one step"));
        }
        let only_pool = connects.iter().all(|c| *c == Connect::Pool);
        for (t, def) in s.steps.iter().zip(&steps) {
            match def.action {
                Action::Fault(Fault::Leak) if !only_pool => {
                    return Err(at.err(
                        t.name.span(),
                        "fault = \"leak\" hands a connection back to a pool mid-transaction: \
                         it needs connect = \"pool\"",
                    ));
                }
                Action::Fault(Fault::Freeze | Fault::Kill) if may_pool => {
                    return Err(at.err(
                        t.name.span(),
                        "a pool session holds no connection between steps, so there is none \
                         to freeze or kill: use fault = \"leak\" (the client ends, its last \
                         connection goes back to the pool as it is)",
                    ));
                }
                _ => {}
            }
        }
        let faulted = steps.iter().any(|t| matches!(t.action, Action::Fault(_)));
        if s.probe.is_some() && !faulted {
            return Err(at.err(s.name.span(), "`probe` measures how long a fault's locks outlive it: this session has no fault step"));
        }
        out.push(SessionDef {
            name: name.clone(),
            clients,
            connect,
            connect_by,
            pool,
            settings,
            rounds,
            probe: s.probe.clone(),
            try_settings,
            retry,
            steps,
        });
    }
    // `after` names a step of some session: resolved once every session is known.
    for (si, s) in file.sessions.iter().enumerate() {
        for (ti, t) in s.steps.iter().enumerate() {
            if let Some(a) = &t.after {
                let conds: Vec<Spanned<String>> = match a.get_ref() {
                    toml::Value::String(x) => vec![Spanned::new(a.span(), x.clone())],
                    toml::Value::Array(xs) if !xs.is_empty() => xs
                        .iter()
                        .map(|x| x.as_str().map(|x| Spanned::new(a.span(), x.to_string())))
                        .collect::<Option<_>>()
                        .ok_or_else(|| at.err(a.span(), "after lists conditions as text"))?,
                    _ => {
                        return Err(at.err(
                            a.span(),
                            "after is \"S.step\", \"S.step:waiting\", or a list of them (the first to come true starts the step)",
                        ));
                    }
                };
                let mut after = Vec::new();
                for c in &conds {
                    after.push(resolve_after(at, c, &out)?);
                }
                out[si].steps[ti].after = after;
            }
        }
    }
    Ok(out)
}

/// The metrics layout: the file's sessions and steps, the SQLSTATEs its expectations and
/// columns count, and its queries.
pub(super) fn layout(
    file: &FileSpec,
    sessions: &[SessionDef],
    queries: &[(String, String)],
    derived: &[(String, String)],
) -> Layout {
    let mentioned: Vec<&str> = file
        .variants
        .iter()
        .flat_map(|v| v.expect.iter().map(|e| e.get_ref().as_str()))
        .chain(std::iter::once(file.harm.metric.get_ref().as_str()))
        .chain(file.columns.iter().map(|c| c.metric.get_ref().as_str()))
        .chain(derived.iter().map(|(_, f)| f.as_str()))
        .collect();
    // `errors_CODE` on its own (not after `session.step.`): the file's steps together.
    let mut codes_all: Vec<String> = Vec::new();
    for text in &mentioned {
        for (i, _) in text.match_indices("errors_") {
            let standalone = i == 0
                || !text[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            let code: String = text[i + 7..]
                .chars()
                .take(5)
                .collect::<String>()
                .to_ascii_uppercase();
            let whole = !text[i + 7..]
                .chars()
                .nth(5)
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            if standalone && whole && code.len() == 5 && !codes_all.contains(&code) {
                codes_all.push(code);
            }
        }
    }
    Layout {
        sessions: sessions
            .iter()
            .map(|s| {
                let steps: Vec<String> = s
                    .steps
                    .iter()
                    .filter(|t| matches!(t.action, Action::Sql(_) | Action::Redis(_)))
                    .map(|t| t.name.clone())
                    .collect();
                let mut codes = Vec::new();
                for t in &steps {
                    let prefix = format!("{}.{t}.errors_", s.name);
                    for text in &mentioned {
                        for (i, _) in text.match_indices(&prefix) {
                            let code: String = text[i + prefix.len()..].chars().take(5).collect();
                            let pair = (t.clone(), code.to_ascii_uppercase());
                            if code.len() == 5 && !codes.contains(&pair) {
                                codes.push(pair);
                            }
                        }
                    }
                }
                SessionLayout {
                    name: s.name.clone(),
                    clients: 1,
                    once: s.rounds.is_some(),
                    rounds: 0,
                    steps,
                    codes,
                    probed: s.probe.is_some(),
                }
            })
            .collect(),
        queries: queries.iter().map(|(n, _)| n.clone()).collect(),
        critical: sessions
            .iter()
            .flat_map(|s| &s.steps)
            .any(|t| matches!(t.action, Action::Critical(_))),
        codes: codes_all,
        derived: derived.to_vec(),
        outcomes: Vec::new(),
    }
}

pub(super) fn variants(
    at: &At<'_>,
    file: &FileSpec,
    decls: &Decls,
    metrics: &[String],
) -> Result<Vec<Variant>, UsageError> {
    let params = &decls.values;
    if file.variants.is_empty() {
        return Err(UsageError(format!(
            "{}: a scenario needs at least one [[variants]]",
            at.origin
        )));
    }
    let mut out: Vec<Variant> = Vec::new();
    for v in &file.variants {
        let name = v.name.get_ref();
        if out.iter().any(|o| &o.name == name) {
            return Err(at.err(v.name.span(), &format!("two variants are named `{name}`")));
        }
        let mut overrides = BTreeMap::new();
        for (k, p) in &v.params {
            if !params.contains_key(k) {
                return Err(at.err(p.span(), &format!("`{k}` is not in [params]")));
            }
            let value = Param::from_toml(p.get_ref()).map_err(|m| at.err(p.span(), &m))?;
            if let Some(accepts) = decls.accepts.get(k) {
                let spec = ParamSpec {
                    name: leak(k.clone()),
                    accepts: *accepts,
                    whole_seconds: false,
                };
                spec.check(&value).map_err(|m| at.err(p.span(), &m))?;
            }
            overrides.insert(k.clone(), value);
        }
        let mut settings = Vec::new();
        for (k, s) in &v.settings {
            if !setting_name(k) {
                return Err(at.err(s.span(), &format!("`{k}` is not a setting's name")));
            }
            let text = as_text(s.get_ref());
            check_refs(at, s.span(), &text, params)?;
            settings.push((k.clone(), text));
        }
        let mut expect = Vec::new();
        for e in &v.expect {
            let parsed = Expectation::parse(e.get_ref()).map_err(|m| at.err(e.span(), &m))?;
            if let Some(bad) = parsed
                .idents()
                .into_iter()
                .find(|i| !params.contains_key(*i) && !metrics.iter().any(|m| m == i))
            {
                let hint = crate::text::nearest(bad, metrics.iter().map(String::as_str))
                    .map(|n| format!("; did you mean `{n}`?"))
                    .unwrap_or_default();
                return Err(at.err(
                    e.span(),
                    &format!(
                        "`{bad}` is neither a parameter nor a metric this file produces{hint}"
                    ),
                ));
            }
            expect.push(parsed);
        }
        out.push(Variant {
            name: name.clone(),
            mitigated: v.mitigated,
            opt_in: v.opt_in,
            show_settings: v.show_settings.clone(),
            shows: v.shows.trim().to_string(),
            settings,
            through_pooler: false,
            pooler_settings: Vec::new(),
            params: overrides,
            expect,
            expect_when: Vec::new(),
        });
    }
    Ok(out)
}
