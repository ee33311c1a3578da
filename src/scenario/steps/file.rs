//! Reading a step file: every key checked, every name it refers to resolved, every mistake
//! reported as `file:line:col` before anything starts.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::step_def::{check_cycles, resolve_after, step};
use super::{Action, Connect, SessionDef, Spec, StepDef};
use crate::check::expect::Expectation;
use crate::check::steps::{Layout, SessionLayout};
use crate::error::UsageError;
use crate::scenario::spec::{Accepts, Param, ParamSpec, Scenario, Variant, line_col};
use crate::scenario::{KINDS, Kind};

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
    #[serde(default)]
    pub(super) metrics: BTreeMap<String, Spanned<String>>,
    pub(super) variants: Vec<VariantSpec>,
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
    #[serde(default)]
    pub(super) settings: BTreeMap<String, Spanned<toml::Value>>,
    pub(super) repeat: Option<Spanned<String>>,
    pub(super) probe: Option<String>,
    pub(super) steps: Vec<StepSpec>,
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
    pub(super) after: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VariantSpec {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) mitigated: bool,
    #[serde(default)]
    pub(super) shows: String,
    #[serde(default)]
    pub(super) params: BTreeMap<String, Spanned<toml::Value>>,
    /// Session settings for every session of the variant (a session's own win).
    #[serde(default)]
    pub(super) settings: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    pub(super) expect: Vec<Spanned<String>>,
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
    if let Some(scale) = &file.time_scale
        && !(*scale.get_ref() > 0.0 && scale.get_ref().is_finite())
    {
        return Err(at.err(scale.span(), "time_scale must be a positive number"));
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
        if ["cut_off", "p50_ms", "p99_ms", "max_holders"].contains(&k.as_str()) {
            return Err(at.err(
                v.span(),
                &format!("`{k}` is a metric every step file has: name yours otherwise"),
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
pub(super) fn kind(
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
        // The parameter a session's clients come from, for "lower it" in a too-small
        // server's message.
        sized_by: spec
            .sessions
            .iter()
            .find_map(|s| s.clients.trim().strip_prefix("${")?.strip_suffix('}'))
            .map_or("", |p| leak(p.to_string())),
        prepare: super::prepare,
        worker: crate::scenario::no_worker,
        steps: Some(spec),
    }))
}

pub(super) fn params(
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
pub(super) fn as_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Where a session connects, and whether it runs its steps once.
fn modes(at: &At<'_>, s: &SessionSpec) -> Result<(Connect, bool), UsageError> {
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
    Ok((connect, once))
}

pub(super) fn sessions(
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
        let (connect, once) = modes(at, s)?;
        let mut settings = Vec::new();
        for (k, v) in &s.settings {
            if !setting_name(k) {
                return Err(at.err(v.span(), &format!("`{k}` is not a setting's name")));
            }
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

/// The metrics layout: the file's sessions and steps, the SQLSTATEs its expectations and
/// columns count, and its queries.
pub(super) fn layout(
    file: &FileSpec,
    sessions: &[SessionDef],
    queries: &[(String, String)],
) -> Layout {
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

pub(super) fn variants(
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
