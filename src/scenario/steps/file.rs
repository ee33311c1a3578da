//! Reading a step file: every key checked, every name it refers to resolved, every mistake
//! reported as `file:line:col` before anything starts.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::{Action, After, Connect, Fault, SessionDef, Spec, StepDef};
use crate::check::expect::Expectation;
use crate::check::steps::{Layout, SessionLayout};
use crate::error::UsageError;
use crate::scenario::spec::{Accepts, Param, ParamSpec, Scenario, Variant, line_col};
use crate::scenario::{KINDS, Kind};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    name: Spanned<String>,
    summary: String,
    #[serde(default)]
    explain: String,
    harm: ColumnSpec,
    #[serde(default)]
    columns: Vec<ColumnSpec>,
    /// The file's own default time scale (1: durations as written), unless --time-scale.
    time_scale: Option<Spanned<f64>>,
    #[serde(default)]
    params: BTreeMap<String, Spanned<toml::Value>>,
    setup: Option<SetupSpec>,
    sessions: Vec<SessionSpec>,
    #[serde(default)]
    metrics: BTreeMap<String, Spanned<String>>,
    variants: Vec<VariantSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnSpec {
    metric: Spanned<String>,
    label: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetupSpec {
    sql: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionSpec {
    name: Spanned<String>,
    clients: Option<Spanned<toml::Value>>,
    connect: Option<Spanned<String>>,
    #[serde(default)]
    settings: BTreeMap<String, Spanned<toml::Value>>,
    repeat: Option<Spanned<String>>,
    probe: Option<String>,
    steps: Vec<StepSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepSpec {
    name: Spanned<String>,
    sql: Option<String>,
    sleep: Option<Spanned<String>>,
    fault: Option<Spanned<String>>,
    /// A Redis command, its first argument the key (`SET lock:${key} ${token} NX PX 10000`).
    redis: Option<Spanned<String>>,
    /// A Lua script, with `keys` and `args`.
    redis_eval: Option<Spanned<String>>,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    /// The reply that counts as success.
    want: Option<String>,
    /// On another reply: "retry" (after `retry_after`) or "stop" (the step fails).
    #[serde(rename = "else")]
    otherwise: Option<Spanned<String>>,
    retry_after: Option<Spanned<String>>,
    critical: Option<Spanned<String>>,
    after: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VariantSpec {
    name: Spanned<String>,
    #[serde(default)]
    mitigated: bool,
    #[serde(default)]
    shows: String,
    #[serde(default)]
    params: BTreeMap<String, Spanned<toml::Value>>,
    /// Session settings for every session of the variant (a session's own win).
    #[serde(default)]
    settings: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    expect: Vec<Spanned<String>>,
}

/// Whether a scenario file is a step file: it has `[[sessions]]`.
pub fn is_step_file(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("sessions"))
}

struct At<'a> {
    text: &'a str,
    origin: &'a str,
}

impl At<'_> {
    fn err(&self, span: Range<usize>, msg: &str) -> UsageError {
        let (line, col) = line_col(self.text, span.start);
        UsageError(format!("{}:{line}:{col}: {msg}", self.origin))
    }
}

/// A name sessions, steps and metrics can be dotted together from.
fn plain_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Parses a step file into a scenario whose code is the step runner.
pub fn parse(text: &str, origin: &str) -> Result<Scenario, UsageError> {
    let at = At { text, origin };
    let file: FileSpec = toml::from_str(text).map_err(|e| {
        let msg = e.message().trim().to_string();
        match e.span() {
            Some(span) => at.err(span, &msg),
            None => UsageError(format!("{origin}: {msg}")),
        }
    })?;
    let name = file.name.get_ref().clone();
    if KINDS.iter().any(|k| k.name == name) {
        return Err(at.err(
            file.name.span(),
            &format!("`{name}` is a built-in scenario's name: give yours another"),
        ));
    }
    let params = params(&at, &file.params)?;
    if !params.contains_key("deadline") {
        return Err(UsageError(format!(
            "{origin}: [params] must set `deadline`, the cut-off (e.g. deadline = \"10s\")"
        )));
    }
    let sessions = sessions(&at, &file, &params)?;
    check_cycles(&at, &file, &sessions)?;
    let queries: Vec<(String, String)> = file
        .metrics
        .iter()
        .map(|(k, v)| (k.clone(), v.get_ref().clone()))
        .collect();
    for (k, v) in &file.metrics {
        check_refs(&at, v.span(), v.get_ref(), &params)?;
        if !plain_name(k) {
            return Err(at.err(
                v.span(),
                &format!("`{k}`: a metric's name is letters, digits and _"),
            ));
        }
    }
    let setup = file
        .setup
        .as_ref()
        .map(|s| s.sql.clone())
        .unwrap_or_default();
    check_refs(&at, file.name.span(), &setup, &params)?;
    let layout = layout(&file, &sessions, &queries);
    let metrics = layout.metrics();
    let variants = variants(&at, &file, &params, &metrics)?;
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
    };
    let kind = kind(&name, text, &params, metrics, spec);
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
        params,
        variants,
        source: origin.to_string(),
        swept: Vec::new(),
        default_scale: file.time_scale.map(|s| s.into_inner()),
    })
}

/// The registry entry of a step file, made once per file for the life of the process: its
/// parameters (any value), its metrics, and the step runner as its code.
fn kind(
    name: &str,
    text: &str,
    params: &BTreeMap<String, Param>,
    metrics: Vec<String>,
    spec: Spec,
) -> &'static Kind {
    let spec: &'static Spec = Box::leak(Box::new(spec));
    let param_specs: Vec<ParamSpec> = params
        .keys()
        .map(|k| ParamSpec {
            name: leak(k.clone()),
            accepts: Accepts::Any,
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
        sized_by: "",
        prepare: super::prepare,
        worker: crate::scenario::no_worker,
        steps: Some(spec),
    }))
}

fn params(
    at: &At<'_>,
    raw: &BTreeMap<String, Spanned<toml::Value>>,
) -> Result<BTreeMap<String, Param>, UsageError> {
    let mut out = BTreeMap::new();
    for (k, v) in raw {
        if !plain_name(k) {
            return Err(at.err(
                v.span(),
                &format!("`{k}`: a parameter's name is letters, digits and _"),
            ));
        }
        out.insert(
            k.clone(),
            Param::from_toml(v.get_ref()).map_err(|m| at.err(v.span(), &m))?,
        );
    }
    Ok(out)
}

/// Every `${name}` in `text` names a parameter.
fn check_refs(
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
        if name != "token" && !params.contains_key(name) {
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
fn as_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn sessions(
    at: &At<'_>,
    file: &FileSpec,
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
        let connect = match s.connect.as_ref().map(|c| (c.get_ref().as_str(), c.span())) {
            None | Some(("direct", _)) => Connect::Direct,
            Some(("pooler", _)) => Connect::Pooler,
            Some(("pool", span)) => {
                return Err(at.err(
                    span,
                    "connect = \"pool\" (a client pool) is not supported yet: use direct or pooler",
                ));
            }
            Some((other, span)) => {
                return Err(at.err(span, &format!("connect is direct or pooler, not `{other}`")));
            }
        };
        let once = match s.repeat.as_ref().map(|r| (r.get_ref().as_str(), r.span())) {
            None | Some(("once", _)) => true,
            Some(("until-deadline", _)) => false,
            Some((other, span)) => {
                return Err(at.err(
                    span,
                    &format!("repeat is \"once\" or \"until-deadline\", not `{other}`"),
                ));
            }
        };
        let mut settings = Vec::new();
        for (k, v) in &s.settings {
            let text = as_text(v.get_ref());
            check_refs(at, v.span(), &text, params)?;
            settings.push((k.clone(), text));
        }
        if let Some(p) = &s.probe {
            check_refs(at, s.name.span(), p, params)?;
        }
        let mut steps: Vec<StepDef> = Vec::new();
        for t in &s.steps {
            let step = step(at, name, t, params)?;
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
        let faulted = steps.iter().any(|t| matches!(t.action, Action::Fault(_)));
        if s.probe.is_some() && !faulted {
            return Err(at.err(s.name.span(), "`probe` measures how long a fault's locks outlive it: this session has no fault step"));
        }
        out.push(SessionDef {
            name: name.clone(),
            clients,
            connect,
            settings,
            once,
            probe: s.probe.clone(),
            steps,
        });
    }
    // `after` names a step of some session: resolved once every session is known.
    for (si, s) in file.sessions.iter().enumerate() {
        for (ti, t) in s.steps.iter().enumerate() {
            if let Some(a) = &t.after {
                let after = resolve_after(at, a, &out)?;
                out[si].steps[ti].after = Some(after);
            }
        }
    }
    Ok(out)
}

fn step(
    at: &At<'_>,
    session: &str,
    t: &StepSpec,
    params: &BTreeMap<String, Param>,
) -> Result<StepDef, UsageError> {
    let name = t.name.get_ref();
    if !plain_name(name) {
        return Err(at.err(t.name.span(), "a step's name is letters, digits and _"));
    }
    let set = [
        t.sql.is_some(),
        t.sleep.is_some(),
        t.fault.is_some(),
        t.redis.is_some(),
        t.redis_eval.is_some(),
        t.critical.is_some(),
    ];
    if set.iter().filter(|x| **x).count() != 1 {
        return Err(at.err(
            t.name.span(),
            "a step does exactly one thing: `sql`, `sleep`, `fault`, `redis`, `redis_eval` or \
             `critical`",
        ));
    }
    let redis_only = t.want.is_some() || t.otherwise.is_some() || t.retry_after.is_some();
    if redis_only && t.redis.is_none() && t.redis_eval.is_none() {
        return Err(at.err(
            t.name.span(),
            "`want`, `else` and `retry_after` go with a `redis` or `redis_eval` step",
        ));
    }
    let action = if let Some(sql) = &t.sql {
        check_refs(at, t.name.span(), sql, params)?;
        Action::Sql(sql.clone())
    } else if let Some(sleep) = &t.sleep {
        check_refs(at, sleep.span(), sleep.get_ref(), params)?;
        if !sleep.get_ref().contains("${") {
            humantime::parse_duration(sleep.get_ref().trim())
                .map_err(|e| at.err(sleep.span(), &format!("sleep: {e}")))?;
        }
        Action::Sleep(sleep.get_ref().clone())
    } else if let Some(fault) = &t.fault {
        Action::Fault(match fault.get_ref().as_str() {
            "freeze" => Fault::Freeze,
            "kill" => Fault::Kill,
            "leak" => {
                return Err(at.err(
                    fault.span(),
                    "fault = \"leak\" needs a client pool (connect = \"pool\"), not supported yet: use freeze or kill",
                ));
            }
            other => {
                return Err(at.err(
                    fault.span(),
                    &format!("fault is freeze or kill, not `{other}`"),
                ));
            }
        })
    } else if let Some(c) = &t.critical {
        match c.get_ref().as_str() {
            "enter" => Action::Critical(true),
            "leave" => Action::Critical(false),
            other => {
                return Err(at.err(
                    c.span(),
                    &format!("critical is \"enter\" or \"leave\", not `{other}`"),
                ));
            }
        }
    } else {
        Action::Redis(redis_step(at, t, params)?)
    };
    Ok(StepDef {
        name: name.clone(),
        kind: leak(format!("{session}.{name}")),
        action,
        after: None,
    })
}

/// A `redis` or `redis_eval` step: its words, which are keys, and what it wants.
fn redis_step(
    at: &At<'_>,
    t: &StepSpec,
    params: &BTreeMap<String, Param>,
) -> Result<super::RedisStep, UsageError> {
    let (words, keys) = match (&t.redis, &t.redis_eval) {
        (Some(cmd), _) => {
            check_refs(at, cmd.span(), cmd.get_ref(), params)?;
            let words = words(cmd.get_ref()).map_err(|m| at.err(cmd.span(), &m))?;
            if words.len() < 2 {
                return Err(at.err(
                    cmd.span(),
                    "a redis step is a command and its key, at least",
                ));
            }
            (words, vec![1])
        }
        (None, Some(script)) => {
            check_refs(at, script.span(), script.get_ref(), params)?;
            for w in t.keys.iter().chain(&t.args) {
                check_refs(at, script.span(), w, params)?;
            }
            let mut words = vec![
                "EVAL".to_string(),
                script.get_ref().clone(),
                t.keys.len().to_string(),
            ];
            words.extend(t.keys.iter().cloned());
            words.extend(t.args.iter().cloned());
            (words, (3..3 + t.keys.len()).collect())
        }
        (None, None) => return Err(at.err(t.name.span(), "no redis command")),
    };
    let retry_after = match t
        .otherwise
        .as_ref()
        .map(|o| (o.get_ref().as_str(), o.span()))
    {
        None | Some(("stop", _)) => None,
        Some(("retry", span)) => {
            let raw = t
                .retry_after
                .as_ref()
                .map_or("10ms".to_string(), |r| r.get_ref().clone());
            if !raw.contains("${") {
                humantime::parse_duration(raw.trim())
                    .map_err(|e| at.err(span, &format!("retry_after: {e}")))?;
            }
            Some(raw)
        }
        Some((other, span)) => {
            return Err(at.err(
                span,
                &format!("else is \"retry\" or \"stop\", not `{other}`"),
            ));
        }
    };
    if retry_after.is_some() && t.want.is_none() {
        return Err(at.err(t.name.span(), "else = \"retry\" needs the reply to `want`"));
    }
    Ok(super::RedisStep {
        words,
        keys,
        want: t.want.clone(),
        retry_after,
    })
}

/// A command line split into words at spaces; "double quotes" keep a word's spaces.
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if quoted {
        return Err("an unclosed \"".into());
    }
    if any {
        out.push(cur);
    }
    Ok(out)
}

fn resolve_after(
    at: &At<'_>,
    a: &Spanned<String>,
    sessions: &[SessionDef],
) -> Result<After, UsageError> {
    let raw = a.get_ref();
    let (target, waiting) = match raw.strip_suffix(":waiting") {
        Some(t) => (t, true),
        None => (raw.as_str(), false),
    };
    let steps_of = |s: &SessionDef| {
        s.steps
            .iter()
            .map(|t| format!("{}.{}", s.name, t.name))
            .collect::<Vec<_>>()
    };
    let all: Vec<String> = sessions.iter().flat_map(steps_of).collect();
    let hint = || {
        crate::text::nearest(target, all.iter().map(String::as_str))
            .map(|n| format!("; did you mean `{n}`?"))
            .unwrap_or_default()
    };
    let (s, t) = target.split_once('.').ok_or_else(|| {
        at.err(
            a.span(),
            &format!("after = \"SESSION.STEP\" or \"SESSION.STEP:waiting\", not `{raw}`"),
        )
    })?;
    let session = sessions
        .iter()
        .position(|x| x.name == s)
        .ok_or_else(|| at.err(a.span(), &format!("after: no step `{target}`{}", hint())))?;
    let step = sessions[session]
        .steps
        .iter()
        .position(|x| x.name == t)
        .ok_or_else(|| at.err(a.span(), &format!("after: no step `{target}`{}", hint())))?;
    if waiting && !matches!(sessions[session].steps[step].action, Action::Sql(_)) {
        return Err(at.err(
            a.span(),
            &format!("after: `{target}` runs no SQL, so it never waits on a lock"),
        ));
    }
    Ok(After {
        session,
        step,
        waiting,
    })
}

/// Steps wait on the step before them in their session and on what they name `after`: a loop
/// of waits would only end at the cut-off, so it is refused.
fn check_cycles(at: &At<'_>, file: &FileSpec, sessions: &[SessionDef]) -> Result<(), UsageError> {
    let deps = |s: usize, t: usize| {
        let mut d = Vec::new();
        if t > 0 {
            d.push((s, t - 1));
        }
        if let Some(a) = sessions[s].steps[t].after {
            d.push((a.session, a.step));
        }
        d
    };
    // 0 unvisited, 1 on the path, 2 done.
    let mut state: BTreeMap<(usize, usize), u8> = BTreeMap::new();
    fn visit(
        node: (usize, usize),
        deps: &dyn Fn(usize, usize) -> Vec<(usize, usize)>,
        state: &mut BTreeMap<(usize, usize), u8>,
        path: &mut Vec<(usize, usize)>,
    ) -> Option<Vec<(usize, usize)>> {
        match state.get(&node) {
            Some(2) => return None,
            Some(1) => {
                let from = path.iter().position(|n| *n == node).unwrap_or(0);
                return Some(path[from..].to_vec());
            }
            _ => {}
        }
        state.insert(node, 1);
        path.push(node);
        for d in deps(node.0, node.1) {
            if let Some(cycle) = visit(d, deps, state, path) {
                return Some(cycle);
            }
        }
        path.pop();
        state.insert(node, 2);
        None
    }
    for (s, session) in sessions.iter().enumerate() {
        for t in 0..session.steps.len() {
            let mut path = Vec::new();
            if let Some(cycle) = visit((s, t), &deps, &mut state, &mut path) {
                let names: Vec<&str> = cycle
                    .iter()
                    .map(|(s, t)| sessions[*s].steps[*t].kind)
                    .collect();
                let (cs, ct) = cycle[0];
                let span = file.sessions[cs].steps[ct].name.span();
                return Err(at.err(
                    span,
                    &format!(
                        "these steps wait on each other in a loop: {}",
                        names.join(" → ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The metrics layout: the file's sessions and steps, the SQLSTATEs its expectations and
/// columns count, and its queries.
fn layout(file: &FileSpec, sessions: &[SessionDef], queries: &[(String, String)]) -> Layout {
    let mentioned: Vec<&str> = file
        .variants
        .iter()
        .flat_map(|v| v.expect.iter().map(|e| e.get_ref().as_str()))
        .chain(std::iter::once(file.harm.metric.get_ref().as_str()))
        .chain(file.columns.iter().map(|c| c.metric.get_ref().as_str()))
        .collect();
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
                    once: s.once,
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
    }
}

fn variants(
    at: &At<'_>,
    file: &FileSpec,
    params: &BTreeMap<String, Param>,
    metrics: &[String],
) -> Result<Vec<Variant>, UsageError> {
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
            overrides.insert(
                k.clone(),
                Param::from_toml(p.get_ref()).map_err(|m| at.err(p.span(), &m))?,
            );
        }
        let mut settings = Vec::new();
        for (k, s) in &v.settings {
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
            opt_in: false,
            show_settings: Vec::new(),
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
