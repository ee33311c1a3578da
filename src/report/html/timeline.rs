//! One variant's timeline: who held the lock, a lane per client (or bands of clients), the
//! servers' gauges, and the markers of the fault and the release, on one time axis.

use crate::history::{Op, Outcome};
use crate::trace::{MarkKind, Trace};
use std::collections::BTreeMap;
use std::fmt::Write;

use super::*;

pub(super) fn timeline(out: &mut String, v: &VariantReport, t: &Trace, span: f64) {
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
    let l = Layout::of(t, clients.len(), holders.len(), span);
    let classes = classes(&t.ops);
    let _ = write!(
        out,
        "<svg class=\"lanes\" viewBox=\"0 0 {WIDTH} {:.0}\" width=\"{WIDTH}\" \
         height=\"{:.0}\" role=\"img\" aria-label=\"timeline of {}\">",
        l.height,
        l.height,
        esc(&v.name)
    );
    holder_spans(out, t, &holders, &l);
    match l.banded {
        true => bands(
            out,
            t,
            &clients,
            l.per,
            (l.lanes_top, l.lane_h),
            span,
            &classes,
        ),
        false => lanes(out, t, &clients, &l, &classes),
    }
    gauges(out, t, &l);
    marks(out, v, t, &l);
    axis(out, l.axis_y, span);
    out.push_str("</svg>");
    let bands = l.banded.then_some((clients.len(), l.rows));
    legend(out, &classes, !t.spans.is_empty(), bands);
}

/// Where each part of a variant's timeline goes, top to bottom: who held the lock, a lane per
/// client (or per band of clients), the gauges, the time axis.
struct Layout {
    span: f64,
    top: f64,
    lanes_top: f64,
    lane_h: f64,
    /// Lanes drawn, and clients per lane (more than one only when banded).
    rows: usize,
    per: usize,
    banded: bool,
    gauges_top: f64,
    axis_y: f64,
    height: f64,
}

impl Layout {
    fn of(t: &Trace, clients: usize, holders: usize, span: f64) -> Layout {
        // Clients per lane: one, or as many as keep the lanes within MAX_LANES.
        let per = clients.div_ceil(MAX_LANES).max(1);
        let rows = clients.div_ceil(per);
        let lane_h = match rows {
            0 => 0.0,
            n => (240.0 / n as f64).clamp(3.0, 12.0),
        };
        let top = 16.0;
        let lanes_top = top + holders as f64 * 9.0 + if holders == 0 { 0.0 } else { 6.0 };
        let gauges_top = lanes_top + rows as f64 * lane_h + 8.0;
        let axis_y = gauges_top + t.series.len() as f64 * (GAUGE_H + 6.0);
        Layout {
            span,
            top,
            lanes_top,
            lane_h,
            rows,
            per,
            banded: clients > MAX_LANES,
            gauges_top,
            axis_y,
            height: axis_y + 22.0,
        }
    }

    /// A time on the variant's clock, across the plot.
    fn x(&self, ms: f64) -> f64 {
        LEFT + (ms.clamp(0.0, self.span) / self.span) * PLOT
    }
}

/// Who held the lock, from when to when: a row per holder.
fn holder_spans(out: &mut String, t: &Trace, holders: &[&str], l: &Layout) {
    for (i, who) in holders.iter().enumerate() {
        let y = l.top + i as f64 * 9.0;
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
                l.x(s.from_ms),
                (l.x(to) - l.x(s.from_ms)).max(1.0),
                esc(who),
                ms(s.from_ms),
                s.to_ms.map_or("still held".into(), ms)
            );
        }
    }
}

/// A lane per client: each of its operations from start to end, coloured by how it ended.
fn lanes(
    out: &mut String,
    t: &Trace,
    clients: &[usize],
    l: &Layout,
    classes: &BTreeMap<String, &'static str>,
) {
    let lane_h = l.lane_h;
    for (row, client) in clients.iter().enumerate() {
        let y = l.lanes_top + row as f64 * lane_h;
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
                Outcome::Error { class } => {
                    format!("failed: {}", crate::report::describe_error(class))
                }
            };
            let _ = write!(
                out,
                "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\">\
                 <title>client {client} {} {} → {}: {state}</title></rect>",
                l.x(op.start_ms),
                (l.x(end) - l.x(op.start_ms)).max(1.0),
                (lane_h - 1.0).max(1.0),
                colour(op, classes),
                esc(&op.kind),
                ms(op.start_ms),
                op.end_ms.map_or("…".into(), ms),
            );
        }
        out.push_str("</g>");
    }
}

/// The servers' gauges under the lanes: a step line each, a gauge holding its value until the
/// next sample.
fn gauges(out: &mut String, t: &Trace, l: &Layout) {
    for (i, s) in t.series.iter().enumerate() {
        let y0 = l.gauges_top + i as f64 * (GAUGE_H + 6.0);
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
                match j {
                    0 => {
                        let _ = write!(d, "M{:.1},{y:.1}", l.x(p[0]));
                    }
                    _ => {
                        let _ = write!(d, "H{:.1}V{y:.1}", l.x(p[0]));
                    }
                }
            }
            let _ = write!(d, "H{:.1}", l.x(t.end_ms));
            let _ = write!(
                out,
                "<path d=\"{d}\" fill=\"none\" stroke=\"#0969da\" stroke-width=\"1.5\"/>"
            );
        }
        out.push_str("</g>");
    }
}

/// Markers across the lanes and the gauges: the fault, the release, events, the cut-off.
fn marks(out: &mut String, v: &VariantReport, t: &Trace, l: &Layout) {
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
            l.x(*at),
            l.top - 2.0,
            l.axis_y,
            10.0,
            if l.x(*at) > LEFT + PLOT * 0.8 {
                "end"
            } else {
                "start"
            },
            esc(what),
            ms(*at)
        );
    }
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
pub(super) fn nice_step(raw: f64) -> f64 {
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
            esc(&crate::report::describe_error(class))
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
