//! A step as a file writes it: what it does (SQL, a sleep, a fault, a Redis command, a
//! critical-section mark), what it waits for, and the loops of waits that are refused.

use super::{Action, After, Fault, SessionDef, StepDef};
use crate::error::UsageError;
use crate::scenario::spec::Param;
use std::collections::BTreeMap;
use toml::Spanned;

use super::file::*;

/// `params`: what `${…}` may name anywhere in the step; `sql_refs`: in its SQL, which may
/// name the client's captures too.
pub(super) fn step(
    at: &At<'_>,
    session: &str,
    t: &StepSpec,
    (params, sql_refs): (&BTreeMap<String, Param>, &BTreeMap<String, Param>),
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
    if let Some(p) = &t.patience {
        if t.after.is_none() {
            return Err(at.err(
                p.span(),
                "patience bounds the wait for `after`: give the step an `after`",
            ));
        }
        check_refs(at, p.span(), p.get_ref(), params)?;
        if !p.get_ref().contains("${") {
            humantime::parse_duration(p.get_ref().trim())
                .map_err(|e| at.err(p.span(), &format!("patience: {e}")))?;
        }
    }
    let action = if let Some(sql) = &t.sql {
        check_refs(at, t.name.span(), sql, sql_refs)?;
        // A capture is text from the server: no unit (`:ms`) turns it into a duration.
        for name in sql_refs.keys().filter(|k| !params.contains_key(*k)) {
            if sql.contains(&format!("${{{name}:")) {
                return Err(at.err(
                    t.name.span(),
                    &format!("`${{{name}}}` is a capture: it takes no `:unit`"),
                ));
            }
        }
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
            "leak" => Fault::Leak,
            other => {
                return Err(at.err(
                    fault.span(),
                    &format!("fault is freeze, kill or leak, not `{other}`"),
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
        after: Vec::new(),
        patience: t.patience.as_ref().map(|p| p.get_ref().clone()),
        into: match (&t.into, &t.sql) {
            (Some(i), Some(_)) => Some(i.get_ref().clone()),
            _ => None,
        },
    })
}

/// A `redis` or `redis_eval` step: its words, which are keys, and what it wants.
pub(super) fn redis_step(
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
            let name = words[0].to_ascii_uppercase();
            if NOT_ONE_KEY.contains(&name.as_str()) {
                return Err(at.err(
                    cmd.span(),
                    &format!(
                        "`{name}` touches keys other than its first argument (or the whole \
                         server): a redis step takes one key, which locklab keeps under its \
                         own prefix; use redis_eval with `keys` for more"
                    ),
                ));
            }
            let multi = matches!(name.as_str(), "DEL" | "UNLINK" | "EXISTS" | "TOUCH");
            if multi && words.len() > 2 {
                return Err(at.err(
                    cmd.span(),
                    &format!("`{name}` of more than one key: give each its own step"),
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

/// Redis commands that name more than their first argument as a key, or touch the server
/// itself: a redis step refuses them (only its first argument gets locklab's prefix).
pub(super) const NOT_ONE_KEY: &[&str] = &[
    "FLUSHDB",
    "FLUSHALL",
    "CONFIG",
    "KEYS",
    "SCAN",
    "RENAME",
    "RENAMENX",
    "MOVE",
    "COPY",
    "MIGRATE",
    "SWAPDB",
    "SELECT",
    "SHUTDOWN",
    "DEBUG",
    "SCRIPT",
    "FUNCTION",
    "ACL",
    "CLIENT",
    "MSET",
    "MSETNX",
    "MGET",
    "EVAL",
    "EVALSHA",
    "EVAL_RO",
    "EVALSHA_RO",
    "FCALL",
    "SMOVE",
    "LMOVE",
    "BLMOVE",
    "RPOPLPUSH",
    "BRPOPLPUSH",
    "SINTERSTORE",
    "SUNIONSTORE",
    "SDIFFSTORE",
    "ZUNIONSTORE",
    "ZINTERSTORE",
    "ZDIFFSTORE",
    "OBJECT",
    "WAIT",
    "MULTI",
    "EXEC",
    "WATCH",
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "PUBLISH",
    "MONITOR",
    "SAVE",
    "BGSAVE",
    "BGREWRITEAOF",
    "REPLICAOF",
    "SLAVEOF",
    "FAILOVER",
    "CLUSTER",
    "MODULE",
    "LATENCY",
    "MEMORY",
    "SORT",
    "BITOP",
    "PFMERGE",
    "GEORADIUS",
    "XREAD",
    "XREADGROUP",
];

/// A command line split into words at spaces; "double quotes" keep a word's spaces.
pub(super) fn words(line: &str) -> Result<Vec<String>, String> {
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

pub(super) fn resolve_after(
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

/// Per (session, step): conditions that replace the step's own `after` (a variant's `order`).
pub(super) type Conditions = BTreeMap<(usize, usize), Vec<After>>;

/// Steps wait on the step before them in their session and on what they name `after`: a loop
/// of waits would only end at the cut-off, so it is refused.
pub(super) fn check_cycles(
    at: &At<'_>,
    file: &FileSpec,
    sessions: &[SessionDef],
    (overrides, span): (&Conditions, Option<std::ops::Range<usize>>),
) -> Result<(), UsageError> {
    let deps = |s: usize, t: usize| {
        let mut d = Vec::new();
        if t > 0 {
            d.push((s, t - 1));
        }
        // Waiting on any of several conditions, a step is in a loop only if it is through
        // each of them; one loop through any is refused, the strict (simpler) rule.
        for a in overrides
            .get(&(s, t))
            .unwrap_or(&sessions[s].steps[t].after)
        {
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
                let span = span
                    .clone()
                    .unwrap_or_else(|| file.sessions[cs].steps[ct].name.span());
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
