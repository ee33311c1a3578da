//! `--html FILE`: the run as one self-contained page. Per scenario, its variants stacked on a
//! shared time axis: a lane per client, the lock's holders, the fault and the release as
//! vertical markers, the server's gauges under the lanes, a latency histogram, and the verdict.
//!
//! Inline SVG and CSS only; nothing is fetched. The one inline script only checks what was
//! drawn (for the browser test): the page reads the same without it. Past [`MAX_LANES`]
//! clients the lanes are drawn as bands, each the worst state of its clients in each stretch
//! of time, so a storm of 2,000 clients stays a picture of bounded size.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{Exporter, RunReport, ScenarioReport, VariantReport, fmt_ms};
use crate::history::{Op, Outcome};
use crate::trace::{MarkKind, Trace};

pub struct Html;

/// Clients drawn one lane each; past this, bands.
pub const MAX_LANES: usize = 60;
/// Time buckets across a band.
const BUCKETS: usize = 240;

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 120.0;
const PLOT: f64 = WIDTH - LEFT - 20.0;
const GAUGE_H: f64 = 34.0;

const CSS: &str = "
body{font:14px/1.4 system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:24px;color:#1d232b;background:#fff;max-width:1060px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 2px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 2px}.sub{color:#57606a;margin:0 0 8px}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;margin-left:6px;color:#fff}
.held{background:#1a7f37}.failed{background:#cf222e}.skipped{background:#8c959f}
.outcome{font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:13px}
ul.fail{color:#cf222e;margin:4px 0}svg{display:block;margin:4px 0}
svg text{font:11px system-ui,'DejaVu Sans',sans-serif;fill:#57606a}
.legend span{display:inline-block;margin-right:12px;font-size:12px}
.legend i{display:inline-block;width:12px;height:10px;margin-right:4px;vertical-align:middle}
.note{color:#57606a;font-size:12px}
";

/// Colours of the states a lane shows.
const OK: &str = "#2da44e";
const UNKNOWN: &str = "#d4a72c";
const LOCK: &str = "#8250df";
const FAULT: &str = "#cf222e";
const RELEASE: &str = "#1a7f37";
const EVENT: &str = "#57606a";
/// Failure classes get these (see [`class_colour`]): reds, magenta and browns, apart from ok's
/// green, the cut-off's amber and the lock's purple.
const FAILED: &[&str] = &[
    "#cf222e", "#bf3989", "#82071e", "#953800", "#e16f24", "#ff8182",
];

impl Exporter for Html {
    fn render(&self, report: &RunReport) -> String {
        let mut out = String::new();
        let verdict = match (report.interrupted, report.all_held()) {
            (true, _) => "interrupted: partial results".to_string(),
            (false, true) => "every expectation held".to_string(),
            (false, false) => format!("{} variant(s) failed the run", report.failures().len()),
        };
        let _ = write!(
            out,
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width\">\
             <title>locklab: {}</title><style>{CSS}</style></head><body>\
             <h1>locklab {}</h1><p class=\"sub\">{} · wall time {:.1} s</p>",
            esc(&names(report)),
            esc(&report.locklab),
            esc(&verdict),
            report.wall_ms as f64 / 1000.0
        );
        for s in &report.scenarios {
            scenario(&mut out, s);
        }
        out.push_str(CHECK_SCRIPT);
        out.push_str("</body></html>\n");
        out
    }
}

/// Counts what was drawn and any script error onto `<body data-…>`, for the browser test.
const CHECK_SCRIPT: &str = "<script>\
(function(){var b=document.body;b.dataset.errors='0';\
window.addEventListener('error',function(){b.dataset.errors=String(+b.dataset.errors+1)});\
b.dataset.variants=document.querySelectorAll('section.variant').length;\
b.dataset.lanes=document.querySelectorAll('g.lane').length;\
b.dataset.faults=document.querySelectorAll('line.mark-fault').length;\
b.dataset.releases=document.querySelectorAll('line.mark-release').length;\
b.dataset.check='ok';})();</script>";

fn names(report: &RunReport) -> String {
    let mut n: Vec<&str> = report.scenarios.iter().map(|s| s.name.as_str()).collect();
    n.dedup();
    n.join(", ")
}

fn scenario(out: &mut String, s: &ScenarioReport) {
    let _ = write!(
        out,
        "<h2>{}</h2><p class=\"sub\">{}<br>{} · time scale {} · * = mitigated variant</p>",
        esc(&s.label()),
        esc(&s.summary),
        esc(&s.target),
        s.time_scale
    );
    // One time axis for every variant of the scenario, so their lanes compare at a glance.
    let span = s
        .variants
        .iter()
        .filter_map(|v| v.trace.as_ref())
        .map(|t| t.end_ms)
        .fold(1.0, f64::max);
    for v in &s.variants {
        variant(out, s, v, span);
    }
}

fn variant(out: &mut String, s: &ScenarioReport, v: &VariantReport, span: f64) {
    let (class, word) = match (&v.skipped, v.failure_kind()) {
        (Some(_), _) => ("skipped", "skipped".to_string()),
        (None, None) => ("held", "held".to_string()),
        (None, Some(f)) => ("failed", f.headline().to_lowercase()),
    };
    let _ = write!(
        out,
        "<section class=\"variant\"><h3>{}{} <span class=\"outcome\">{}</span>\
         <span class=\"badge {class}\">{}</span></h3><p class=\"sub\">{}</p>",
        esc(&v.name),
        if v.mitigated { " *" } else { "" },
        esc(&v.outcome),
        esc(&word),
        esc(&v.shows)
    );
    if let Some(why) = &v.skipped {
        let _ = write!(out, "<p class=\"note\">not run here: {}</p>", esc(why));
    }
    let failures = v.failure_lines(&s.label());
    if !failures.is_empty() {
        out.push_str("<ul class=\"fail\">");
        for f in failures {
            let _ = write!(out, "<li>{}</li>", esc(&f));
        }
        out.push_str("</ul>");
    }
    if !v.expectations.is_empty() {
        out.push_str("<p class=\"note\">expected: ");
        for (i, e) in v.expectations.iter().enumerate() {
            let _ = write!(
                out,
                "{}<span title=\"{}\">{} <code>{}</code></span>",
                if i == 0 { "" } else { " · " },
                esc(&e.measured),
                if e.held { "✓" } else { "✗" },
                esc(&e.what)
            );
        }
        out.push_str("</p>");
    }
    if let Some(t) = &v.trace {
        timeline(out, v, t, span);
        latencies(out, t);
        for n in &t.notes {
            let _ = write!(out, "<p class=\"note\">{}</p>", esc(n));
        }
    }
    out.push_str("</section>");
}

/// The failure classes among `ops`, each with its colour: the same class has the same colour
/// in every variant and on every page.
fn classes(ops: &[Op]) -> BTreeMap<String, &'static str> {
    ops.iter()
        .filter_map(|op| match &op.outcome {
            Outcome::Error { class } => Some((class.clone(), class_colour(class))),
            _ => None,
        })
        .collect()
}

fn class_colour(class: &str) -> &'static str {
    use crate::history::class::*;
    match class {
        LOCK_TIMEOUT => FAILED[0],
        STATEMENT_TIMEOUT => FAILED[1],
        TOO_MANY_CONNECTIONS => FAILED[2],
        DEADLOCK | SERIALIZATION => FAILED[3],
        IDLE_IN_TRANSACTION_TIMEOUT | TERMINATED => FAILED[4],
        DENIED => FAILED[5],
        // Any other class: a colour of its own name, so it too is the same everywhere.
        other => {
            let sum = other
                .bytes()
                .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(b.into()));
            FAILED[sum % FAILED.len()]
        }
    }
}

fn colour<'a>(op: &Op, classes: &'a BTreeMap<String, &'static str>) -> &'a str {
    match &op.outcome {
        Outcome::Ok => OK,
        Outcome::Unknown => UNKNOWN,
        Outcome::Error { class } => classes.get(class).copied().unwrap_or(FAULT),
    }
}

fn timeline(out: &mut String, v: &VariantReport, t: &Trace, span: f64) {
    let x = |ms: f64| LEFT + (ms.clamp(0.0, span) / span) * PLOT;
    let clients: Vec<usize> = {
        let mut c: Vec<usize> = t.ops.iter().map(|o| o.client).collect();
        c.sort_unstable();
        c.dedup();
        c
    };
    let holders: Vec<&str> = {
        let mut h: Vec<&str> = Vec::new();
        for s in &t.spans {
            if !h.contains(&s.who.as_str()) {
                h.push(&s.who);
            }
        }
        h.truncate(MAX_LANES);
        h
    };
    let banded = clients.len() > MAX_LANES;
    // Clients per lane: one, or as many as keep the lanes within MAX_LANES.
    let per = clients.len().div_ceil(MAX_LANES).max(1);
    let rows = clients.len().div_ceil(per);
    let lane_h = match rows {
        0 => 0.0,
        n => (240.0 / n as f64).clamp(3.0, 12.0),
    };
    let top = 16.0;
    let holders_h = holders.len() as f64 * 9.0;
    let lanes_top = top + holders_h + if holders.is_empty() { 0.0 } else { 6.0 };
    let gauges_top = lanes_top + rows as f64 * lane_h + 8.0;
    let axis_y = gauges_top + t.series.len() as f64 * (GAUGE_H + 6.0);
    let height = axis_y + 22.0;
    let classes = classes(&t.ops);
    let _ = write!(
        out,
        "<svg class=\"lanes\" viewBox=\"0 0 {WIDTH} {height:.0}\" width=\"{WIDTH}\" \
         height=\"{height:.0}\" role=\"img\" aria-label=\"timeline of {}\">",
        esc(&v.name)
    );
    // Who held the lock, from when to when.
    for (i, who) in holders.iter().enumerate() {
        let y = top + i as f64 * 9.0;
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{} (lock)</text>",
            LEFT - 6.0,
            y + 7.5,
            esc(who)
        );
        for s in t.spans.iter().filter(|s| s.who == *who) {
            let to = s.to_ms.unwrap_or(t.end_ms);
            let _ = write!(
                out,
                "<rect class=\"span\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"7\" \
                 fill=\"{LOCK}\"><title>{} holds the lock {} → {}</title></rect>",
                x(s.from_ms),
                (x(to) - x(s.from_ms)).max(1.0),
                esc(who),
                ms(s.from_ms),
                s.to_ms.map_or("still held".into(), ms)
            );
        }
    }
    if banded {
        bands(out, t, &clients, per, (lanes_top, lane_h), span, &classes);
    } else {
        for (row, client) in clients.iter().enumerate() {
            let y = lanes_top + row as f64 * lane_h;
            let _ = write!(out, "<g class=\"lane\">");
            if lane_h >= 9.0 || row % 5 == 0 {
                let _ = write!(
                    out,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">client {client}</text>",
                    LEFT - 6.0,
                    y + lane_h - 2.0
                );
            }
            for op in t.ops.iter().filter(|o| o.client == *client) {
                let end = op.end_ms.unwrap_or(t.end_ms);
                let state = match &op.outcome {
                    Outcome::Ok => "ok".to_string(),
                    Outcome::Unknown => "unknown: in flight at the cut-off".to_string(),
                    Outcome::Error { class } => format!("failed: {}", super::describe_error(class)),
                };
                let _ = write!(
                    out,
                    "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\">\
                     <title>client {client} {} {} → {}: {state}</title></rect>",
                    x(op.start_ms),
                    (x(end) - x(op.start_ms)).max(1.0),
                    (lane_h - 1.0).max(1.0),
                    colour(op, &classes),
                    esc(&op.kind),
                    ms(op.start_ms),
                    op.end_ms.map_or("…".into(), ms),
                );
            }
            out.push_str("</g>");
        }
    }
    for (i, s) in t.series.iter().enumerate() {
        let y0 = gauges_top + i as f64 * (GAUGE_H + 6.0);
        let max = s.points.iter().map(|p| p[1]).fold(0.0, f64::max);
        let _ = write!(
            out,
            "<g class=\"gauge\"><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">max {}</text>\
             <line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#d0d7de\"/>",
            LEFT - 6.0,
            y0 + 14.0,
            esc(&s.name),
            LEFT - 6.0,
            y0 + 27.0,
            num(max),
            LEFT + PLOT,
            y0 + GAUGE_H,
            y0 + GAUGE_H
        );
        if !s.points.is_empty() {
            let scale = if max > 0.0 { GAUGE_H / max } else { 0.0 };
            let mut d = String::new();
            for (j, p) in s.points.iter().enumerate() {
                let y = y0 + GAUGE_H - p[1] * scale;
                // A step line: a gauge holds its value until the next sample.
                match j {
                    0 => {
                        let _ = write!(d, "M{:.1},{y:.1}", x(p[0]));
                    }
                    _ => {
                        let _ = write!(d, "H{:.1}V{y:.1}", x(p[0]));
                    }
                }
            }
            let _ = write!(d, "H{:.1}", x(t.end_ms));
            let _ = write!(
                out,
                "<path d=\"{d}\" fill=\"none\" stroke=\"#0969da\" stroke-width=\"1.5\"/>"
            );
        }
        out.push_str("</g>");
    }
    // Markers across the lanes and the gauges.
    let cut_off = v.metrics.get("cut_off").and_then(|c| c.as_bool()) == Some(true);
    let mut marks: Vec<(f64, &str, String, &str)> = t
        .marks
        .iter()
        .map(|m| {
            let (class, colour) = match m.kind {
                MarkKind::Fault => ("mark-fault", FAULT),
                MarkKind::Release => ("mark-release", RELEASE),
                MarkKind::Event => ("mark-event", EVENT),
            };
            (m.at_ms, class, m.what.clone(), colour)
        })
        .collect();
    if cut_off {
        marks.push((t.end_ms, "mark-cutoff", "cut-off".into(), "#24292f"));
    }
    for (at, class, what, colour) in &marks {
        let dash = if *class == "mark-cutoff" {
            "2,2"
        } else {
            "5,3"
        };
        let _ = write!(
            out,
            "<line class=\"{class}\" x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1:.1}\" y2=\"{2:.1}\" \
             stroke=\"{colour}\" stroke-width=\"1.5\" stroke-dasharray=\"{dash}\"/>\
             <text x=\"{0:.1}\" y=\"{3:.1}\" fill=\"{colour}\" style=\"fill:{colour}\" \
             text-anchor=\"{4}\">{5} {6}</text>",
            x(*at),
            top - 2.0,
            axis_y,
            10.0,
            if x(*at) > LEFT + PLOT * 0.8 {
                "end"
            } else {
                "start"
            },
            esc(what),
            ms(*at)
        );
    }
    axis(out, axis_y, span);
    out.push_str("</svg>");
    let bands = banded.then_some((clients.len(), rows));
    legend(out, &classes, !t.spans.is_empty(), bands);
}

/// A band per group of clients: in each stretch of time, the worst state any of them was in.
fn bands(
    out: &mut String,
    t: &Trace,
    clients: &[usize],
    per: usize,
    (top, lane_h): (f64, f64),
    span: f64,
    classes: &BTreeMap<String, &'static str>,
) {
    let index: BTreeMap<usize, usize> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| (*c, i / per))
        .collect();
    let bucket_ms = span / BUCKETS as f64;
    // Worst first: failed (by class), unknown, ok.
    let rank = |op: &Op| match &op.outcome {
        Outcome::Error { .. } => 3u8,
        Outcome::Unknown => 2,
        Outcome::Ok => 1,
    };
    let mut cells: Vec<Vec<Option<(u8, &str)>>> =
        vec![vec![None; BUCKETS]; clients.len().div_ceil(per)];
    for op in &t.ops {
        let Some(&band) = index.get(&op.client) else {
            continue;
        };
        let end = op.end_ms.unwrap_or(t.end_ms);
        let from = ((op.start_ms / bucket_ms) as usize).min(BUCKETS - 1);
        let to = ((end / bucket_ms) as usize).min(BUCKETS - 1);
        let this = (rank(op), colour(op, classes));
        for cell in &mut cells[band][from..=to.max(from)] {
            if cell.is_none_or(|c| c.0 < this.0) {
                *cell = Some(this);
            }
        }
    }
    for (band, row) in cells.iter().enumerate() {
        let y = top + band as f64 * lane_h;
        let first = band * per;
        let last = ((band + 1) * per).min(clients.len()) - 1;
        if first >= clients.len() {
            break;
        }
        let _ = write!(out, "<g class=\"lane band\">");
        if band % 10 == 0 {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">clients {}–{}</text>",
                LEFT - 6.0,
                y + lane_h,
                clients[first],
                clients[last]
            );
        }
        // Runs of one state are one rectangle.
        let mut i = 0;
        while i < BUCKETS {
            let Some(state) = row[i] else {
                i += 1;
                continue;
            };
            let mut j = i + 1;
            while j < BUCKETS && row[j] == Some(state) {
                j += 1;
            }
            let x0 = LEFT + i as f64 / BUCKETS as f64 * PLOT;
            let w = (j - i) as f64 / BUCKETS as f64 * PLOT;
            let _ = write!(
                out,
                "<rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{}\"/>",
                (lane_h - 0.5).max(1.0),
                state.1
            );
            i = j;
        }
        out.push_str("</g>");
    }
}

fn axis(out: &mut String, y: f64, span: f64) {
    let step = nice_step(span / 8.0);
    let _ = write!(
        out,
        "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#8c959f\"/>",
        LEFT + PLOT
    );
    let mut at = 0.0;
    while at <= span + 1e-9 {
        let x = LEFT + at / span * PLOT;
        let _ = write!(
            out,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{y:.1}\" y2=\"{:.1}\" stroke=\"#8c959f\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            y + 4.0,
            y + 16.0,
            ms(at)
        );
        at += step;
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

fn legend(
    out: &mut String,
    classes: &BTreeMap<String, &'static str>,
    spans: bool,
    bands: Option<(usize, usize)>,
) {
    out.push_str("<p class=\"legend\">");
    let _ = write!(out, "<span><i style=\"background:{OK}\"></i>ok</span>");
    for (class, c) in classes {
        let _ = write!(
            out,
            "<span><i style=\"background:{c}\"></i>{}</span>",
            esc(&super::describe_error(class))
        );
    }
    let _ = write!(
        out,
        "<span><i style=\"background:{UNKNOWN}\"></i>in flight at the cut-off</span>"
    );
    if spans {
        let _ = write!(
            out,
            "<span><i style=\"background:{LOCK}\"></i>lock held</span>"
        );
    }
    match bands {
        Some((clients, bands)) => {
            let _ = write!(
                out,
                "<span class=\"note\">{clients} clients in {bands} bands: each shows the worst state of its clients</span>"
            );
        }
        None => out.push_str(
            "<span class=\"note\">a bar is one operation, from its start to its end</span>",
        ),
    }
    out.push_str("</p>");
}

/// Completed operations' latencies as a histogram on a log scale.
fn latencies(out: &mut String, t: &Trace) {
    let lat: Vec<f64> = t
        .ops
        .iter()
        .filter_map(Op::latency_ms)
        .map(|l| l.max(0.1))
        .collect();
    if lat.is_empty() {
        return;
    }
    const BINS: usize = 24;
    let lo = lat.iter().copied().fold(f64::MAX, f64::min).log10().floor();
    let hi = lat
        .iter()
        .copied()
        .fold(0.0, f64::max)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let mut counts = [0usize; BINS];
    for l in &lat {
        let i = ((l.log10() - lo) / (hi - lo) * BINS as f64) as usize;
        counts[i.min(BINS - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let (w, h) = (360.0, 60.0);
    let _ = write!(
        out,
        "<svg class=\"latency\" viewBox=\"0 0 {w} {:.0}\" width=\"{w}\" height=\"{:.0}\">",
        h + 30.0,
        h + 30.0
    );
    let bw = (w - 20.0) / BINS as f64;
    for (i, c) in counts.iter().enumerate() {
        let bh = *c as f64 / top * h;
        let _ = write!(
            out,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#0969da\"><title>{c}</title></rect>",
            10.0 + i as f64 * bw,
            h - bh + 4.0,
            bw - 1.0
        );
    }
    let _ = write!(
        out,
        "<text x=\"10\" y=\"{:.0}\">{}</text><text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"end\">{}</text>\
         <text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\">latency of {} completed operations (log scale)</text></svg>",
        h + 16.0,
        ms(10f64.powf(lo)),
        w - 10.0,
        h + 16.0,
        ms(10f64.powf(hi)),
        w / 2.0,
        h + 28.0,
        lat.len()
    );
}

fn ms(v: f64) -> String {
    fmt_ms(Some(&serde_json::json!(v)))
}

fn num(v: f64) -> String {
    match v.fract() == 0.0 {
        true => format!("{v:.0}"),
        false => format!("{v:.1}"),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Input;
    use crate::check::orphan_lock::{Observations, Payments, Probe};
    use crate::history::History;
    use crate::observe::Sample;
    use crate::report::fixtures;

    /// A frozen holder: the lock from 100 ms, `clients` bookers waiting behind it until the
    /// row is free at 2,100 ms (or never, when `freed` is false).
    fn run(clients: usize, freed: bool) -> Trace {
        let ops = (0..clients)
            .map(|c| Op {
                client: c,
                kind: "book".into(),
                start_ms: 150.0 + c as f64,
                end_ms: freed.then_some(2_110.0 + c as f64),
                outcome: match (freed, c % 3) {
                    (false, _) => Outcome::Unknown,
                    (true, 0) => Outcome::Error {
                        class: "55P03".into(),
                    },
                    (true, _) => Outcome::Ok,
                },
            })
            .collect();
        let obs = Observations {
            holder_paying_epoch: 0.1,
            probe: Probe {
                locked_before_fault: true,
                free_at_epoch: freed.then_some(2.1),
            },
            waited_ms: 3_000.0,
            cut_off: !freed,
            samples: (0..300)
                .map(|i| Sample {
                    at_ms: i as f64 * 10.0,
                    waiting_on_lock: if (15..210).contains(&i) {
                        clients as i64
                    } else {
                        0
                    },
                    ..Default::default()
                })
                .collect(),
            bookings_committed: 0,
            payments: Payments::default(),
            next_user_in_leaked_tx: None,
        };
        let h = History {
            ops,
            lost_clients: Vec::new(),
        };
        Trace::new(&h, Some(&Input::OrphanLock(obs)), 0.0, &BTreeMap::new())
    }

    fn page(traces: Vec<Trace>) -> String {
        let mut r = fixtures::report();
        for (v, t) in r.scenarios[0].variants.iter_mut().zip(traces) {
            v.trace = Some(t);
        }
        Html.render(&r)
    }

    #[test]
    fn every_variant_gets_lanes_markers_and_gauges() {
        let html = page(vec![run(20, false), run(20, true)]);
        assert_eq!(html.matches("<section class=\"variant\">").count(), 4);
        assert_eq!(html.matches("<g class=\"lane\">").count(), 40);
        assert_eq!(html.matches("class=\"mark-fault\"").count(), 2);
        assert_eq!(html.matches("class=\"mark-release\"").count(), 1);
        assert_eq!(html.matches("class=\"mark-cutoff\"").count(), 1);
        assert!(html.contains("waiting on lock"));
        assert!(html.contains("55P03 lock timeout"));
        assert!(!html.contains("http://") && !html.contains("https://"));
    }

    #[test]
    fn a_storm_of_two_thousand_clients_is_drawn_in_bands_of_bounded_size() {
        let html = page(vec![run(2_000, true)]);
        let bands = html.matches("<g class=\"lane band\">").count();
        assert!((50..=MAX_LANES).contains(&bands), "{bands}");
        assert!(html.contains(&format!("2000 clients in {bands} bands")));
        // Bands merge runs of one state: far fewer shapes than operations.
        assert!(html.matches("<rect").count() < 2_000, "{}", html.len());
        assert!(html.len() < 400_000, "{}", html.len());
    }

    #[test]
    fn steps_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_step(380.0), 500.0);
        assert_eq!(nice_step(120.0), 200.0);
        assert_eq!(nice_step(0.9), 1.0);
        assert_eq!(nice_step(0.0), 1.0);
    }
}
