//! What happened in one variant run, kept in its results: every operation, the server's gauges
//! over time, the moments the fault and the mitigation acted, the lock spans, and the checker's
//! input. `locklab report` re-derives the verdict from it and draws it (`--html`).
//!
//! Everything is on the variant's clock: milliseconds since its origin. Observers that read the
//! server's clock or the wall clock (epoch times) are moved onto it with the origin's epoch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::check::Input;
use crate::check::expect::Val;
use crate::gauge::Gauged;
use crate::history::{History, LostClient, Op};

/// Operations kept per run. A storm of 2,000 clients with retries stays well under it; past it
/// the first ones are kept, and the file says the verdict cannot be re-derived.
pub const MAX_OPS: usize = 50_000;
/// Points kept per gauge: enough for a page a few thousand pixels wide.
pub const MAX_POINTS: usize = 1_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Trace {
    /// The operations, in start order (the first [`MAX_OPS`] when there were more).
    pub ops: Vec<Op>,
    /// Operations the run recorded in all.
    pub ops_total: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost_clients: Vec<LostClient>,
    /// Gauges sampled on the servers, downsampled to at most [`MAX_POINTS`] each.
    #[serde(default)]
    pub series: Vec<Series>,
    /// The fault, the mitigation acting, restarts: moments drawn as vertical markers.
    #[serde(default)]
    pub marks: Vec<Mark>,
    /// Who held the contended lock, from when to when.
    #[serde(default)]
    pub spans: Vec<Span>,
    /// When the run stopped watching (its cut-off or its natural end).
    pub end_ms: f64,
    /// The checker's input. Absent when the history was capped: a verdict is not re-derived
    /// from part of a history.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::check::input::or_retired"
    )]
    pub input: Option<Input>,
    /// The parameters the expectations read, scaled as they were.
    #[serde(default)]
    pub scope: BTreeMap<String, Value>,
    /// What is missing from this trace, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub name: String,
    /// `[ms, value]` pairs in time order.
    pub points: Vec<[f64; 2]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MarkKind {
    /// The fault struck (a holder froze, a signal, a partition, a crash).
    Fault,
    /// The harm ended: the row or the key was free again.
    Release,
    /// Anything else worth seeing: a restart, a relapse, a backend the server ended.
    Event,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    pub at_ms: f64,
    pub kind: MarkKind,
    pub what: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Span {
    pub who: String,
    pub from_ms: f64,
    /// `None`: still held when the run stopped watching.
    pub to_ms: Option<f64>,
}

impl Trace {
    /// The trace of one run: its history (capped), what its checker was given, and the
    /// drawable parts read off that input.
    pub fn new(
        history: &History,
        input: Option<&Input>,
        origin_epoch_ms: f64,
        scope: &BTreeMap<String, Val>,
    ) -> Trace {
        let mut notes = Vec::new();
        let capped = history.ops.len() > MAX_OPS;
        if capped {
            notes.push(format!(
                "history capped at its first {MAX_OPS} of {} operations: the verdict is not re-derived from it",
                history.ops.len()
            ));
        }
        let drawn = input
            .map(|i| Drawn::of(i, origin_epoch_ms))
            .unwrap_or_default();
        let last_op = history
            .ops
            .iter()
            .map(|o| o.end_ms.unwrap_or(o.start_ms))
            .fold(0.0, f64::max);
        let end_ms = drawn.end_ms.unwrap_or(0.0).max(last_op).max(
            drawn
                .series
                .iter()
                .filter_map(|s| s.points.last().map(|p| p[0]))
                .fold(0.0, f64::max),
        );
        let mut series = drawn.series;
        for s in &mut series {
            s.points = downsample(&s.points, MAX_POINTS);
        }
        Trace {
            ops: history.ops.iter().take(MAX_OPS).cloned().collect(),
            ops_total: history.ops.len(),
            lost_clients: history.lost_clients.clone(),
            series,
            marks: drawn.marks,
            spans: drawn.spans,
            end_ms,
            input: input.filter(|_| !capped).cloned(),
            scope: scope
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Val::Bool(b) => Value::Bool(*b),
                        Val::Num(n) => serde_json::Number::from_f64(*n)
                            .map(Value::Number)
                            .unwrap_or(Value::Null),
                    };
                    (k.clone(), v)
                })
                .collect(),
            notes,
        }
    }

    /// The history as the checker saw it, when the trace has all of it.
    pub fn history(&self) -> Option<History> {
        (self.ops.len() == self.ops_total).then(|| History {
            ops: self.ops.clone(),
            lost_clients: self.lost_clients.clone(),
        })
    }

    /// The scope's parameters as the expectation language reads them.
    pub fn params(&self) -> BTreeMap<String, Val> {
        self.scope
            .iter()
            .filter_map(|(k, v)| {
                let v = match v {
                    Value::Bool(b) => Val::Bool(*b),
                    Value::Number(n) => Val::Num(n.as_f64()?),
                    _ => return None,
                };
                Some((k.clone(), v))
            })
            .collect()
    }
}

/// At most `max` points, each the largest value of its stretch (so a short peak, such as the
/// moment every slot was taken, survives), at the stretch's first time.
pub fn downsample(points: &[[f64; 2]], max: usize) -> Vec<[f64; 2]> {
    if points.len() <= max || max == 0 {
        return points.to_vec();
    }
    let per = points.len().div_ceil(max);
    points
        .chunks(per)
        .map(|c| {
            let top = c.iter().map(|p| p[1]).fold(f64::MIN, f64::max);
            [c[0][0], top]
        })
        .collect()
}

/// The drawable parts of a checker's input.
#[derive(Default)]
struct Drawn {
    series: Vec<Series>,
    marks: Vec<Mark>,
    spans: Vec<Span>,
    end_ms: Option<f64>,
}

impl Drawn {
    // Long by design: one arm per checker input, each drawing its own marks and spans; a
    // checker added to `check::Input` adds its arm here (the compiler asks for it).
    fn of(input: &Input, origin_epoch_ms: f64) -> Drawn {
        // Server clock (epoch seconds) and wall clock (epoch ms) onto the variant's clock.
        let from_s = |s: f64| s * 1000.0 - origin_epoch_ms;
        let from_epoch_ms = |ms: f64| ms - origin_epoch_ms;
        let mark = |at_ms: f64, kind: MarkKind, what: &str| Mark {
            at_ms,
            kind,
            what: what.to_string(),
        };
        // A shop's lock holders, grant to release, and where the run ended.
        let holders = |d: &mut Drawn, sections: &[crate::check::setnx_race::Section], end_ms| {
            for s in sections {
                d.spans.push(Span {
                    who: s.buyer.clone(),
                    from_ms: from_epoch_ms(s.granted_ms),
                    to_ms: s.released_ms.map(from_epoch_ms),
                });
            }
            d.end_ms = Some(from_epoch_ms(end_ms));
        };
        let mut d = Drawn::default();
        match input {
            Input::OrphanLock(o) => d.orphan_lock(o, &from_s),
            Input::LostClient(i) => {
                d.orphan_lock(&i.observations, &from_s);
                if let Some(gone) = i.backend.gone_at_epoch {
                    d.marks.push(mark(
                        from_s(gone),
                        MarkKind::Event,
                        "server ended the backend",
                    ));
                }
            }
            Input::ConnectionStorm(o) => {
                d.series = series_of(&o.samples, |s| s.at_ms);
                // Through a pooler, its queue and its server connections beside the server's.
                d.series.extend(series_of(&o.pooler_samples, |s| s.at_ms));
                d.marks
                    .push(mark(o.fault_ms, MarkKind::Fault, "ghost froze"));
                if let Some(r) = o.released_ms {
                    d.marks.push(mark(r, MarkKind::Release, "row free"));
                }
                if let Some(r) = &o.restart {
                    d.marks.push(mark(r.at_ms, MarkKind::Event, "restart"));
                    if let Some(at) = r.relapse_at_ms {
                        d.marks.push(mark(at, MarkKind::Fault, "relapse"));
                    }
                }
                d.spans.push(Span {
                    who: "ghost".into(),
                    from_ms: o.fault_ms,
                    to_ms: o.released_ms,
                });
                d.end_ms = Some(o.end_ms);
            }
            Input::Shutdown(o) => {
                let at = from_s(o.event_epoch);
                let what = match o.restart.is_some() {
                    true => "restart",
                    false => "SIGTERM",
                };
                d.marks.push(mark(at, MarkKind::Fault, what));
                let free = o.free_at_epoch.map(from_s);
                if let Some(f) = free {
                    d.marks.push(mark(f, MarkKind::Release, "row free"));
                }
                if let Some((_, back)) = o.restart {
                    d.marks.push(mark(back, MarkKind::Event, "server back"));
                }
                d.spans.push(Span {
                    who: "holder".into(),
                    from_ms: at,
                    to_ms: free,
                });
                d.end_ms = Some(at + o.waited_ms);
            }
            Input::SetnxRace(o) | Input::LockWatchdog(o) => {
                let held: Vec<[f64; 2]> = o
                    .key_samples
                    .iter()
                    .map(|s| {
                        [
                            from_epoch_ms(s.at_ms),
                            f64::from(u8::from(s.value.is_some())),
                        ]
                    })
                    .collect();
                d.series.push(Series {
                    name: "lock key set".into(),
                    points: held,
                });
                if let Some(c) = &o.crash {
                    d.marks.push(mark(
                        from_epoch_ms(c.at_ms),
                        MarkKind::Fault,
                        "holder crashed",
                    ));
                }
                holders(&mut d, &o.sections, o.end_ms);
            }
            Input::RedisFailover(o) => {
                // How many nodes hold some lock: a restart or a crash shows as a drop.
                let mut times: Vec<f64> = o.nodes.iter().flatten().map(|k| k.at_ms).collect();
                times.sort_by(f64::total_cmp);
                let holding = |t: f64| {
                    o.nodes
                        .iter()
                        .filter(|n| {
                            n.iter()
                                .take_while(|k| k.at_ms <= t)
                                .last()
                                .is_some_and(|k| k.value.is_some())
                        })
                        .count() as f64
                };
                d.series.push(Series {
                    name: "nodes holding a lock".into(),
                    points: times
                        .iter()
                        .map(|t| [from_epoch_ms(*t), holding(*t)])
                        .collect(),
                });
                if let Some(at) = o.fault_ms {
                    d.marks
                        .push(mark(from_epoch_ms(at), MarkKind::Fault, "nodes fail"));
                }
                holders(&mut d, &o.sections, o.end_ms);
            }
            Input::Pooler(o) => {
                for b in &o.beliefs {
                    d.spans.push(Span {
                        who: format!("client {}", b.client),
                        from_ms: b.from_ms,
                        to_ms: b.to_ms,
                    });
                }
            }
            Input::Steps(o) => {
                for (s, seen) in o.layout.sessions.iter().zip(&o.seen) {
                    if let Some(at) = seen.fault_ms {
                        d.marks
                            .push(mark(at, MarkKind::Fault, &format!("{} fault", s.name)));
                        d.spans.push(Span {
                            who: s.name.clone(),
                            from_ms: at,
                            to_ms: seen.freed_ms,
                        });
                    }
                    if let Some(at) = seen.freed_ms {
                        d.marks
                            .push(mark(at, MarkKind::Release, &format!("{} freed", s.name)));
                    }
                }
                d.end_ms = Some(o.end_ms);
            }
            Input::PoolBooking(_) | Input::PoolDeadlock(_) | Input::Account(_) => {}
        }
        d
    }

    fn orphan_lock(
        &mut self,
        o: &crate::check::orphan_lock::Observations,
        from_s: &dyn Fn(f64) -> f64,
    ) {
        self.series = series_of(&o.samples, |s| s.at_ms);
        let fault = from_s(o.holder_paying_epoch);
        self.marks.push(Mark {
            at_ms: fault,
            kind: MarkKind::Fault,
            what: "holder frozen".into(),
        });
        let free = o.probe.free_at_epoch.map(from_s);
        if let Some(f) = free {
            self.marks.push(Mark {
                at_ms: f,
                kind: MarkKind::Release,
                what: "row free".into(),
            });
        }
        self.spans.push(Span {
            who: "holder".into(),
            from_ms: fault,
            to_ms: free,
        });
        self.end_ms = Some(fault + o.waited_ms);
    }
}

/// One series per gauge the samples carry: the same gauges, under the same names, as the live
/// view shows while the run goes on ([`Gauged`]).
fn series_of<T: Gauged>(samples: &[T], at: impl Fn(&T) -> f64) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    for sample in samples {
        let t = at(sample);
        for (name, value) in sample.gauges() {
            match out.iter_mut().find(|s| s.name == name) {
                Some(s) => s.points.push([t, value]),
                None => out.push(Series {
                    name: name.to_string(),
                    points: vec![[t, value]],
                }),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsampling_keeps_the_peaks_and_the_bound() {
        let mut points: Vec<[f64; 2]> = (0..10_000).map(|i| [i as f64, 1.0]).collect();
        points[5_003][1] = 97.0;
        let d = downsample(&points, 1_000);
        assert!(d.len() <= 1_000);
        assert!(d.iter().any(|p| p[1] == 97.0));
        assert_eq!(d[0][0], 0.0);
        assert_eq!(downsample(&points[..10], 1_000).len(), 10);
    }
}
