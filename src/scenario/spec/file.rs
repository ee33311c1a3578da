//! A scenario file read against its code's declarations: every mistake is reported as
//! `file:line:col`.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::{Param, Scenario, Variant, line_col};
use crate::check::expect::Expectation;
use crate::error::UsageError;
use crate::scenario::Kind;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    name: Spanned<String>,
    /// Which built-in code drives the scenario; defaults to `name`, so an edited copy can be
    /// renamed and still run the same workload.
    kind: Option<Spanned<String>>,
    summary: String,
    explain: String,
    harm: HarmSpec,
    /// More metric columns for the table, after the harm column.
    #[serde(default)]
    columns: Vec<HarmSpec>,
    #[serde(default)]
    params: BTreeMap<String, Spanned<toml::Value>>,
    variants: Vec<VariantSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HarmSpec {
    metric: Spanned<String>,
    label: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VariantSpec {
    name: String,
    #[serde(default)]
    mitigated: bool,
    /// Runs only when named with --variant (e.g. as-configured, which checks the user's server).
    #[serde(default)]
    opt_in: bool,
    /// Server settings to read and report, as a session of this variant sees them.
    #[serde(default)]
    show_settings: Vec<String>,
    shows: String,
    #[serde(default)]
    settings: BTreeMap<String, Spanned<String>>,
    /// The workload goes through a transaction-mode pooler (locklab's PgBouncer unless the
    /// whole run already goes through one).
    #[serde(default)]
    through_pooler: bool,
    /// pgbouncer.ini settings for this variant (implies through_pooler; needs locklab's own
    /// PgBouncer): a parameter's name or a literal; durations go in seconds.
    #[serde(default)]
    pooler_settings: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    params: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    expect: Vec<Spanned<String>>,
    #[serde(default)]
    expect_when: Vec<ExpectWhenSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectWhenSpec {
    param: Spanned<String>,
    equals: toml::Value,
    expect: Vec<Spanned<String>>,
}

impl Scenario {
    /// Parses and validates a scenario file. `origin` names the file in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, UsageError> {
        if crate::scenario::steps::is_step_file(text) {
            return crate::scenario::steps::parse(text, origin);
        }
        let spec: FileSpec = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim().to_string();
            match e.span() {
                Some(span) => at(text, origin, span, &msg),
                None => UsageError(format!("{origin}: {msg}")),
            }
        })?;
        let kind_name = spec.kind.as_ref().unwrap_or(&spec.name);
        let kind = crate::scenario::kind_named(kind_name.get_ref()).ok_or_else(|| {
            at(
                text,
                origin,
                kind_name.span(),
                &format!(
                    "no built-in scenario code named `{}` (set `kind` to one of: {})",
                    kind_name.get_ref(),
                    crate::scenario::kinds()
                        .iter()
                        .map(|k| k.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        let p = FileParser { text, origin, kind };
        let params = p.params(&spec.params)?;
        for param in kind.params {
            if !params.contains_key(param.name) {
                return Err(UsageError(format!(
                    "{origin}: [params] must set `{}` (the {} scenario reads it)",
                    param.name, kind.name
                )));
            }
        }
        p.columns(&spec)?;
        if spec.variants.is_empty() {
            return Err(UsageError(format!(
                "{origin}: a scenario needs at least one [[variants]]"
            )));
        }
        let mut variants: Vec<Variant> = Vec::new();
        for v in &spec.variants {
            if variants.iter().any(|x| x.name == v.name) {
                return Err(UsageError(format!(
                    "{origin}: two variants are named `{}`",
                    v.name
                )));
            }
            variants.push(p.variant(v)?);
        }
        Ok(Scenario {
            name: spec.name.get_ref().clone(),
            kind,
            summary: spec.summary.trim().to_string(),
            explain: spec.explain.trim().to_string(),
            harm_metric: spec.harm.metric.get_ref().clone(),
            harm_label: spec.harm.label,
            columns: spec
                .columns
                .into_iter()
                .map(|c| (c.metric.into_inner(), c.label))
                .collect(),
            params,
            variants,
            source: origin.to_string(),
            swept: Vec::new(),
            default_scale: None,
        })
    }
}

/// A usage error at a place in a scenario file: `origin:line:col: msg`.
fn at(text: &str, origin: &str, span: Range<usize>, msg: &str) -> UsageError {
    let (line, col) = line_col(text, span.start);
    UsageError(format!("{origin}:{line}:{col}: {msg}"))
}

/// Reads the parts of one scenario file against its code's declarations, each error at its
/// place in the file.
struct FileParser<'a> {
    text: &'a str,
    origin: &'a str,
    kind: &'static Kind,
}

impl FileParser<'_> {
    fn at(&self, span: Range<usize>, msg: &str) -> UsageError {
        at(self.text, self.origin, span, msg)
    }

    /// Parameters, each a parameter of the code and a value it accepts.
    fn params(
        &self,
        raw: &BTreeMap<String, Spanned<toml::Value>>,
    ) -> Result<BTreeMap<String, Param>, UsageError> {
        let kind = self.kind;
        let mut out = BTreeMap::new();
        for (k, v) in raw {
            let Some(spec) = kind.param(k) else {
                return Err(self.at(
                    v.span(),
                    &format!(
                        "`{k}` is not a parameter of {} (it takes: {})",
                        kind.name,
                        kind.param_names()
                    ),
                ));
            };
            let p = Param::from_toml(v.get_ref()).map_err(|m| self.at(v.span(), &m))?;
            spec.check(&p).map_err(|m| self.at(v.span(), &m))?;
            out.insert(k.clone(), p);
        }
        Ok(out)
    }

    /// Expectations, naming only the code's parameters and metrics.
    fn expect(&self, list: &[Spanned<String>]) -> Result<Vec<Expectation>, UsageError> {
        let kind = self.kind;
        let known = |name: &str| kind.param(name).is_some() || kind.metrics.contains(&name);
        list.iter()
            .map(|s| {
                let e = Expectation::parse(s.get_ref()).map_err(|m| self.at(s.span(), &m))?;
                if let Some(bad) = e.idents().into_iter().find(|i| !known(i)) {
                    return Err(self.at(
                        s.span(),
                        &format!(
                            "`{bad}` is neither a parameter nor a metric of {} (metrics: {})",
                            kind.name,
                            kind.metrics.join(", ")
                        ),
                    ));
                }
                Ok(e)
            })
            .collect()
    }

    /// The harm and the extra columns: each a metric of the code.
    fn columns(&self, spec: &FileSpec) -> Result<(), UsageError> {
        let kind = self.kind;
        for column in std::iter::once(&spec.harm).chain(&spec.columns) {
            if !kind.metrics.contains(&column.metric.get_ref().as_str()) {
                return Err(self.at(
                    column.metric.span(),
                    &format!(
                        "`{}` is not a metric of {} (its metrics: {})",
                        column.metric.get_ref(),
                        kind.name,
                        kind.metrics.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    fn variant(&self, v: &VariantSpec) -> Result<Variant, UsageError> {
        let mut expect_when = Vec::new();
        for w in &v.expect_when {
            if self.kind.param(w.param.get_ref()).is_none() {
                return Err(self.at(w.param.span(), "expect_when names an unknown parameter"));
            }
            let equals = Param::from_toml(&w.equals).map_err(|m| self.at(w.param.span(), &m))?;
            expect_when.push((w.param.get_ref().clone(), equals, self.expect(&w.expect)?));
        }
        Ok(Variant {
            name: v.name.clone(),
            mitigated: v.mitigated,
            opt_in: v.opt_in,
            show_settings: v.show_settings.clone(),
            shows: v.shows.trim().to_string(),
            settings: v
                .settings
                .iter()
                .map(|(k, s)| (k.clone(), s.get_ref().clone()))
                .collect(),
            through_pooler: v.through_pooler || !v.pooler_settings.is_empty(),
            pooler_settings: v
                .pooler_settings
                .iter()
                .map(|(k, s)| (k.clone(), s.get_ref().clone()))
                .collect(),
            params: self.params(&v.params)?,
            expect: self.expect(&v.expect)?,
            expect_when,
        })
    }
}
