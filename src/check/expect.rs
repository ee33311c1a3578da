//! The small expectation language of scenario files.
//!
//! An expectation is `[not] operand [cmp operand]`, where an operand is arithmetic over
//! numbers, durations (`500ms`, `2s`: scaled by the time scale like every scenario duration,
//! and compared in milliseconds), `true`/`false`, parameters and metrics:
//!
//! ```text
//! cut_off
//! bookings_ok == clients
//! lock_held_ms <= idle_timeout * 1.5
//! not cut_off
//! oversold >= 1 or lost_bookings >= 1     (held when either holds)
//! ```
//!
//! Evaluation is three-valued (Jepsen's held / violated / unknown): a metric the run could not
//! measure makes the expectation unknown, never silently held.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A value an expression can take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Val {
    Num(f64),
    Bool(bool),
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Bool(b) => write!(f, "{b}"),
            Val::Num(n) if n.fract() == 0.0 && n.abs() < 1e15 => write!(f, "{}", *n as i64),
            Val::Num(n) => write!(f, "{n:.1}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn symbol(self) -> &'static str {
        match self {
            Cmp::Eq => "==",
            Cmp::Ne => "!=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Lit(Val),
    /// A duration literal, in milliseconds before scaling.
    Duration(f64),
    Ident(String),
    Bin(Box<Expr>, char, Box<Expr>),
}

/// A parsed expectation: one or more clauses joined by `or`, holding when any clause holds.
/// A harm has many forms (oversold, or told "booked" with no row, or stuck behind a leaked
/// transaction); a baseline fails whenever any of them shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    pub text: String,
    clauses: Vec<Clause>,
}

/// `[not] operand [cmp operand]`
#[derive(Debug, Clone, PartialEq)]
struct Clause {
    text: String,
    negate: bool,
    lhs: Expr,
    rhs: Option<(Cmp, Expr)>,
}

/// What the checker concluded about one expectation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Held,
    Violated,
    Unknown,
}

/// An evaluated expectation, as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpectationResult {
    pub what: String,
    pub held: bool,
    pub verdict: Verdict,
    /// The measured left-hand side and, where there is one, the resolved right-hand side.
    pub measured: String,
}

/// Where identifiers get their values: parameters (already scaled) and measured metrics.
pub trait Scope {
    fn lookup(&self, name: &str) -> Lookup;
}

pub enum Lookup {
    Value(Val),
    /// A metric that exists but was not measured in this run.
    Unmeasured,
    NoSuchName,
}

impl Expectation {
    pub fn parse(text: &str) -> Result<Expectation, String> {
        let tokens = tokenize(text)?;
        let mut clauses = Vec::new();
        for part in tokens.split(|t| matches!(t, Tok::Word(w) if w == "or")) {
            if part.is_empty() {
                return Err(format!("`or` needs a condition on each side: `{text}`"));
            }
            clauses.push(Clause::parse(part.to_vec(), text)?);
        }
        // Each clause as written (`2s`, not the token's `2000ms`), where the words line up.
        let words: Vec<&str> = text.split_whitespace().collect();
        let written: Vec<String> = words.split(|w| *w == "or").map(|c| c.join(" ")).collect();
        if written.len() == clauses.len() {
            for (c, w) in clauses.iter_mut().zip(written) {
                c.text = w;
            }
        }
        Ok(Expectation {
            text: text.trim().to_string(),
            clauses,
        })
    }

    /// Every identifier the expectation names, for checking a file at load time.
    pub fn idents(&self) -> Vec<&str> {
        let mut out = Vec::new();
        for c in &self.clauses {
            collect_idents(&c.lhs, &mut out);
            if let Some((_, rhs)) = &c.rhs {
                collect_idents(rhs, &mut out);
            }
        }
        out
    }

    /// Three-valued `or`: held when any clause held, else unknown when any clause could not be
    /// decided, else violated. A held disjunction shows the clause that held; a violated one
    /// shows every clause's figure.
    pub fn evaluate(&self, scope: &dyn Scope, time_scale: f64) -> ExpectationResult {
        let results: Vec<(Verdict, String)> = self
            .clauses
            .iter()
            .map(|c| c.evaluate(scope, time_scale))
            .collect();
        let (verdict, measured) = if let [(v, m)] = results.as_slice() {
            (*v, m.clone())
        } else {
            let named = |i: usize| format!("{}: {}", self.clauses[i].text, results[i].1);
            if let Some(i) = results.iter().position(|(v, _)| *v == Verdict::Held) {
                (Verdict::Held, named(i))
            } else {
                let all = (0..results.len()).map(named).collect::<Vec<_>>().join("; ");
                match results.iter().any(|(v, _)| *v == Verdict::Unknown) {
                    true => (Verdict::Unknown, all),
                    false => (Verdict::Violated, all),
                }
            }
        };
        ExpectationResult {
            what: self.text.clone(),
            held: verdict == Verdict::Held,
            verdict,
            measured,
        }
    }
}

impl Clause {
    fn parse(tokens: Vec<Tok>, text: &str) -> Result<Clause, String> {
        let clause_text = tokens
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        let mut p = Parser { tokens, pos: 0 };
        let negate = p.eat_word("not");
        let lhs = p.sum()?;
        let rhs = match p.peek() {
            Some(Tok::Cmp(c)) => {
                let c = *c;
                p.pos += 1;
                Some((c, p.sum()?))
            }
            _ => None,
        };
        if let Some(t) = p.peek() {
            return Err(format!("unexpected `{t}` in expectation `{text}`"));
        }
        if negate && rhs.is_some() {
            return Err(format!(
                "`not` applies to a single true/false metric, not a comparison: `{text}`"
            ));
        }
        Ok(Clause {
            text: clause_text,
            negate,
            lhs,
            rhs,
        })
    }

    fn evaluate(&self, scope: &dyn Scope, time_scale: f64) -> (Verdict, String) {
        let lhs = eval(&self.lhs, scope, time_scale);
        match (&self.rhs, lhs) {
            (_, Err(e)) => (Verdict::Unknown, e),
            (None, Ok(Val::Bool(b))) => {
                let held = b != self.negate;
                (verdict_of(held), format!("was {b}"))
            }
            (None, Ok(v @ Val::Num(_))) => (
                Verdict::Unknown,
                format!("was {v}, which is not true/false"),
            ),
            (Some((cmp, rhs)), Ok(l)) => match eval(rhs, scope, time_scale) {
                Err(e) => (Verdict::Unknown, e),
                Ok(r) => match compare(l, *cmp, r) {
                    Some(held) => (
                        verdict_of(held),
                        format!("was {l}, expected {} {r}", cmp.symbol()),
                    ),
                    None => (Verdict::Unknown, format!("cannot compare {l} with {r}")),
                },
            },
        }
    }
}

fn verdict_of(held: bool) -> Verdict {
    if held {
        Verdict::Held
    } else {
        Verdict::Violated
    }
}

fn compare(l: Val, cmp: Cmp, r: Val) -> Option<bool> {
    match (l, r) {
        (Val::Bool(a), Val::Bool(b)) => match cmp {
            Cmp::Eq => Some(a == b),
            Cmp::Ne => Some(a != b),
            _ => None,
        },
        (Val::Num(a), Val::Num(b)) => Some(match cmp {
            Cmp::Eq => (a - b).abs() < 1e-9,
            Cmp::Ne => (a - b).abs() >= 1e-9,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
        }),
        _ => None,
    }
}

fn collect_idents<'a>(e: &'a Expr, out: &mut Vec<&'a str>) {
    match e {
        Expr::Ident(name) => out.push(name),
        Expr::Bin(a, _, b) => {
            collect_idents(a, out);
            collect_idents(b, out);
        }
        Expr::Lit(_) | Expr::Duration(_) => {}
    }
}

/// Arithmetic over numbers, durations and names, as an expectation's operand is: a step file's
/// derived metric (`{ of = "a.ok + b.ok" }`) or a count (`${pairs} * 2`).
#[derive(Debug, Clone, PartialEq)]
pub struct Formula(Expr);

impl Formula {
    pub fn parse(text: &str) -> Result<Formula, String> {
        let mut p = Parser {
            tokens: tokenize(text)?,
            pos: 0,
        };
        let e = p.sum()?;
        match p.tokens.get(p.pos) {
            None => Ok(Formula(e)),
            Some(t) => Err(format!("`{t}` after the value in `{}`", text.trim())),
        }
    }

    pub fn idents(&self) -> Vec<&str> {
        let mut out = Vec::new();
        collect_idents(&self.0, &mut out);
        out
    }

    /// Its value; an error when a name is unknown or unmeasured, or the value is no number.
    pub fn eval(&self, scope: &dyn Scope, time_scale: f64) -> Result<f64, String> {
        match eval(&self.0, scope, time_scale)? {
            Val::Num(n) => Ok(n),
            Val::Bool(b) => Err(format!("{b} is no number")),
        }
    }
}

fn eval(e: &Expr, scope: &dyn Scope, time_scale: f64) -> Result<Val, String> {
    match e {
        Expr::Lit(v) => Ok(*v),
        Expr::Duration(ms) => Ok(Val::Num(ms * time_scale)),
        Expr::Ident(name) => match scope.lookup(name) {
            Lookup::Value(v) => Ok(v),
            Lookup::Unmeasured => Err(format!("{name} was not measured")),
            Lookup::NoSuchName => Err(format!("{name} is neither a parameter nor a metric")),
        },
        Expr::Bin(a, op, b) => {
            let (a, b) = (eval(a, scope, time_scale)?, eval(b, scope, time_scale)?);
            match (a, b) {
                (Val::Num(a), Val::Num(b)) => Ok(Val::Num(match op {
                    '+' => a + b,
                    '-' => a - b,
                    '*' => a * b,
                    _ => a / b,
                })),
                _ => Err(format!("cannot do arithmetic with {a} and {b}")),
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Duration(f64),
    Word(String),
    Op(char),
    Cmp(Cmp),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Num(n) => write!(f, "{n}"),
            Tok::Duration(ms) => write!(f, "{ms}ms"),
            Tok::Word(w) => write!(f, "{w}"),
            Tok::Op(c) => write!(f, "{c}"),
            Tok::Cmp(c) => write!(f, "{}", c.symbol()),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || c == '.' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            out.push(number_or_duration(&word)?);
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            // A step scenario's metrics are dotted: `migration.alter.errors_55P03`.
            let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
            while i < chars.len() && word(chars[i]) {
                i += 1;
            }
            out.push(Tok::Word(chars[start..i].iter().collect()));
        } else if "+-*/".contains(c) {
            out.push(Tok::Op(c));
            i += 1;
        } else if "=!<>".contains(c) {
            let two = chars.get(i + 1) == Some(&'=');
            let cmp = match (c, two) {
                ('=', true) => Cmp::Eq,
                ('!', true) => Cmp::Ne,
                ('<', true) => Cmp::Le,
                ('>', true) => Cmp::Ge,
                ('<', false) => Cmp::Lt,
                ('>', false) => Cmp::Gt,
                _ => return Err(format!("`{c}` is not a comparison; use == != < <= > >=")),
            };
            out.push(Tok::Cmp(cmp));
            i += if two { 2 } else { 1 };
        } else {
            return Err(format!(
                "unexpected character `{c}` in expectation `{text}`"
            ));
        }
    }
    if out.is_empty() {
        return Err("empty expectation".into());
    }
    Ok(out)
}

fn number_or_duration(word: &str) -> Result<Tok, String> {
    if let Ok(n) = word.parse::<f64>() {
        return Ok(Tok::Num(n));
    }
    humantime::parse_duration(word)
        .map(|d: Duration| Tok::Duration(d.as_secs_f64() * 1000.0))
        .map_err(|_| format!("`{word}` is neither a number nor a duration like 500ms or 2s"))
}

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos)
    }

    fn eat_word(&mut self, w: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Word(x)) if x == w) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn sum(&mut self) -> Result<Expr, String> {
        let mut e = self.product()?;
        while let Some(Tok::Op(op @ ('+' | '-'))) = self.peek() {
            let op = *op;
            self.pos += 1;
            e = Expr::Bin(Box::new(e), op, Box::new(self.product()?));
        }
        Ok(e)
    }

    fn product(&mut self) -> Result<Expr, String> {
        let mut e = self.atom()?;
        while let Some(Tok::Op(op @ ('*' | '/'))) = self.peek() {
            let op = *op;
            self.pos += 1;
            e = Expr::Bin(Box::new(e), op, Box::new(self.atom()?));
        }
        Ok(e)
    }

    fn atom(&mut self) -> Result<Expr, String> {
        let tok = self.peek().cloned();
        self.pos += 1;
        match tok {
            Some(Tok::Num(n)) => Ok(Expr::Lit(Val::Num(n))),
            Some(Tok::Duration(ms)) => Ok(Expr::Duration(ms)),
            Some(Tok::Word(w)) if w == "true" => Ok(Expr::Lit(Val::Bool(true))),
            Some(Tok::Word(w)) if w == "false" => Ok(Expr::Lit(Val::Bool(false))),
            Some(Tok::Word(w)) => Ok(Expr::Ident(w)),
            Some(t) => Err(format!("expected a value, found `{t}`")),
            None => Err("expected a value at the end of the expectation".into()),
        }
    }
}

/// A scope over plain maps, used by the runner and by tests.
pub struct MapScope<'a> {
    pub params: &'a BTreeMap<String, Val>,
    pub metrics: &'a BTreeMap<String, serde_json::Value>,
}

impl Scope for MapScope<'_> {
    fn lookup(&self, name: &str) -> Lookup {
        if let Some(v) = self.params.get(name) {
            return Lookup::Value(*v);
        }
        match self.metrics.get(name) {
            None => Lookup::NoSuchName,
            Some(serde_json::Value::Bool(b)) => Lookup::Value(Val::Bool(*b)),
            Some(serde_json::Value::Number(n)) => match n.as_f64() {
                Some(f) => Lookup::Value(Val::Num(f)),
                None => Lookup::Unmeasured,
            },
            Some(_) => Lookup::Unmeasured,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(text: &str, metrics: serde_json::Value) -> ExpectationResult {
        let params: BTreeMap<String, Val> = [
            ("clients".to_string(), Val::Num(20.0)),
            ("idle_timeout".to_string(), Val::Num(1000.0)),
        ]
        .into();
        let metrics: BTreeMap<String, serde_json::Value> = serde_json::from_value(metrics).unwrap();
        let scope = MapScope {
            params: &params,
            metrics: &metrics,
        };
        Expectation::parse(text).unwrap().evaluate(&scope, 0.1)
    }

    #[test]
    fn comparison_with_parameter_arithmetic_holds() {
        let r = check(
            "lock_held_ms <= idle_timeout * 1.5",
            json!({"lock_held_ms": 1003}),
        );
        assert_eq!(r.verdict, Verdict::Held);
        assert_eq!(r.measured, "was 1003, expected <= 1500");
    }

    #[test]
    fn violated_expectation_names_the_measured_figure() {
        let r = check("bookings_ok == clients", json!({"bookings_ok": 3}));
        assert_eq!(r.verdict, Verdict::Violated);
        assert!(!r.held);
        assert_eq!(r.measured, "was 3, expected == 20");
    }

    #[test]
    fn bare_and_negated_boolean_metrics() {
        assert_eq!(
            check("cut_off", json!({"cut_off": true})).verdict,
            Verdict::Held
        );
        assert_eq!(
            check("not cut_off", json!({"cut_off": true})).verdict,
            Verdict::Violated
        );
    }

    #[test]
    fn duration_literals_are_scaled_like_scenario_durations() {
        // 2s at time scale 0.1 is 200 ms.
        let r = check("lock_held_ms < 2s", json!({"lock_held_ms": 150}));
        assert_eq!(r.verdict, Verdict::Held);
        let r = check("lock_held_ms < 2s", json!({"lock_held_ms": 250}));
        assert_eq!(r.verdict, Verdict::Violated);
    }

    #[test]
    fn unmeasured_metric_is_unknown_not_held() {
        let r = check("p99_ms < 100", json!({"p99_ms": null}));
        assert_eq!(r.verdict, Verdict::Unknown);
        assert!(!r.held);
        let r = check("nonsense > 1", json!({}));
        assert_eq!(r.verdict, Verdict::Unknown);
    }

    #[test]
    fn malformed_expectations_are_rejected_with_a_reason() {
        assert!(Expectation::parse("").is_err());
        assert!(
            Expectation::parse("a = 1")
                .unwrap_err()
                .contains("comparison")
        );
        assert!(Expectation::parse("a == ").is_err());
        assert!(Expectation::parse("a == 1 2").is_err());
        assert!(Expectation::parse("not a == 1").is_err());
        assert!(Expectation::parse("a == 3parsecs").is_err());
    }

    #[test]
    fn or_holds_when_any_form_of_the_harm_shows() {
        let harm = "oversold >= 1 or stuck >= 1";
        let r = check(
            "oversold >= 1 or lock_held_ms < 2s",
            json!({"oversold": 0, "lock_held_ms": 5}),
        );
        assert_eq!(r.measured, "lock_held_ms < 2s: was 5, expected < 200");
        let r = check(harm, json!({"oversold": 0, "stuck": 4}));
        assert_eq!(r.verdict, Verdict::Held);
        assert_eq!(r.measured, "stuck >= 1: was 4, expected >= 1");
        let r = check(harm, json!({"oversold": 0, "stuck": 0}));
        assert_eq!(r.verdict, Verdict::Violated);
        assert_eq!(
            r.measured,
            "oversold >= 1: was 0, expected >= 1; stuck >= 1: was 0, expected >= 1"
        );
        // One clause unmeasured and none held: undecided, never violated or held.
        let r = check(harm, json!({"oversold": 0, "stuck": null}));
        assert_eq!(r.verdict, Verdict::Unknown);
        // ... but a held clause decides it.
        let r = check(harm, json!({"oversold": 2, "stuck": null}));
        assert_eq!(r.verdict, Verdict::Held);
        assert!(Expectation::parse("a >= 1 or").is_err());
        assert!(Expectation::parse("or a").is_err());
        assert!(Expectation::parse("cut_off or not stuck").is_ok());
    }

    #[test]
    fn idents_lists_every_name() {
        let e = Expectation::parse("lock_held_ms <= idle_timeout * 1.5 + 10ms").unwrap();
        assert_eq!(e.idents(), vec!["lock_held_ms", "idle_timeout"]);
        let e = Expectation::parse("oversold >= 1 or stuck > bookers").unwrap();
        assert_eq!(e.idents(), vec!["oversold", "stuck", "bookers"]);
    }
}
