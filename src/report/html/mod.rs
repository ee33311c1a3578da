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
use crate::trace::Trace;

mod timeline;

#[cfg(test)]
use timeline::nice_step;
use timeline::timeline;

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
table.matrix{border-collapse:collapse;margin:6px 0}table.matrix td,table.matrix th{border:1px solid #d0d7de;padding:2px 8px;text-align:left;font-size:13px}
table.matrix td.differs{color:#cf222e;font-weight:600}
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
        if let Some(m) = super::matrix::matrix(report) {
            matrix(&mut out, report, &m);
        }
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

/// A run on several releases: verdict and harm per release, the differing rows marked.
fn matrix(out: &mut String, report: &RunReport, m: &super::matrix::Matrix) {
    let (headers, rows) = m.table(report);
    out.push_str("<h2>PostgreSQL side by side</h2><table class=\"matrix\"><tr>");
    for h in &headers {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            let class = match i == 1 && cell.starts_with('≠') {
                true => " class=\"differs\"",
                false => "",
            };
            let _ = write!(out, "<td{class}>{}</td>", esc(cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    for line in m.findings() {
        let _ = write!(out, "<p class=\"note\">{}</p>", esc(&line));
    }
}

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
    use crate::check::samples::Sample;
    use crate::history::History;
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

    /// The page's element structure, without coordinates or figures: each opening tag with its
    /// class and id, runs of the same tag collapsed to a count.
    fn structure(page: &str) -> String {
        let mut lines: Vec<(String, usize)> = Vec::new();
        for chunk in page.split('<').skip(1) {
            let tag = chunk.split(['>', ' ', '\n']).next().unwrap_or("");
            if tag.is_empty() || tag.starts_with('/') || tag.starts_with('!') {
                continue;
            }
            let attr = |name: &str| {
                chunk
                    .split('>')
                    .next()
                    .and_then(|head| head.split(&format!(" {name}=\"")).nth(1))
                    .and_then(|v| v.split('"').next())
                    .map(|v| format!(" {name}={v}"))
                    .unwrap_or_default()
            };
            let line = format!("{tag}{}{}", attr("class"), attr("id"));
            match lines.last_mut() {
                Some((last, n)) if *last == line => *n += 1,
                _ => lines.push((line, 1)),
            }
        }
        lines
            .into_iter()
            .map(|(l, n)| match n {
                1 => l,
                n => format!("{l} ×{n}"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_page_keeps_its_structure() {
        let html = page(vec![run(3, false), run(3, true)]);
        insta::assert_snapshot!("html_structure", structure(&html));
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
