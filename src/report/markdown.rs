//! `--format markdown`: the same rows as the table, for a CI job summary or an issue.

use super::{Exporter, Row, RunReport, Section};

pub struct Markdown;

fn escape(cell: &str) -> String {
    cell.replace('|', "\\|")
}

fn table(headers: &[String], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut out = format!(
        "| {} |\n|{}\n",
        headers.join(" | "),
        "---|".repeat(headers.len())
    );
    for r in rows {
        let cells: Vec<String> = r.iter().map(|c| escape(c)).collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

/// A sweep: one table per variant, a row per point.
fn sweep(points: &[&super::ScenarioReport]) -> String {
    let s = points[0];
    let mut out = format!(
        "### {} (sweep, {} points)\n\n{}\n\n",
        s.name,
        points.len(),
        s.summary
    );
    for t in super::sweep_tables(points) {
        out.push_str(&format!("**{}**\n\n", escape(&t.variant)));
        out.push_str(&table(&t.headers, t.rows.into_iter()));
        out.push('\n');
    }
    out.push_str(&format!(
        "{} · time scale {} · * = mitigated variant\n\n",
        super::targets(points),
        s.time_scale
    ));
    for p in points {
        for line in super::notes(p) {
            out.push_str(&format!("{}\n\n", escape(&line)));
        }
    }
    out
}

/// The harm metric per variant as a Mermaid bar chart, which GitHub draws in a job summary or
/// an issue; empty when no variant measured it.
fn chart(s: &super::ScenarioReport) -> String {
    let bars: Vec<(String, f64)> = s
        .variants
        .iter()
        .filter(|v| v.skipped.is_none() && v.error.is_none())
        .filter_map(|v| {
            let value = match v.metrics.get(&s.harm.metric)? {
                serde_json::Value::Bool(b) => f64::from(u8::from(*b)),
                other => other.as_f64()?,
            };
            let star = if v.mitigated { "*" } else { "" };
            Some((format!("{}{star}", v.name), value))
        })
        .collect();
    if bars.is_empty() {
        return String::new();
    }
    let clean = |t: &str| t.replace('"', "'");
    let top = bars.iter().map(|b| b.1).fold(0.0, f64::max);
    let names: Vec<String> = bars
        .iter()
        .map(|b| format!("\"{}\"", clean(&b.0)))
        .collect();
    let ms = s.harm.metric.ends_with("_ms");
    let values: Vec<String> = bars
        .iter()
        .map(|b| match ms {
            true => format!("{}", b.1.round()),
            false => format!("{}", (b.1 * 10.0).round() / 10.0),
        })
        .collect();
    let (unit, axis) = match ms {
        true => (" (ms)", "ms".to_string()),
        false => ("", clean(&s.harm.metric)),
    };
    format!(
        "```mermaid\nxychart-beta horizontal\n    title \"{}: {}{unit}\"\n    x-axis [{}]\n    y-axis \"{}\" 0 --> {}\n    bar [{}]\n```\n\n",
        clean(&s.name),
        clean(&s.harm.label),
        names.join(", "),
        axis,
        (top * 1.1).ceil().max(1.0),
        values.join(", ")
    )
}

impl Exporter for Markdown {
    fn render(&self, report: &RunReport) -> String {
        let mut out = String::new();
        for section in super::sections(report) {
            let s = match section {
                Section::Scenario(s) => s,
                Section::Sweep(points) => {
                    out.push_str(&sweep(&points));
                    continue;
                }
            };
            out.push_str(&format!("### {}\n\n{}\n\n", s.name, s.summary));
            let headers: Vec<String> = Row::columns(s).into_iter().map(|(_, h)| h).collect();
            out.push_str(&table(
                &headers,
                s.variants.iter().map(|v| Row::of(s, v).cells()),
            ));
            out.push_str(&format!(
                "\n{} · time scale {} · * = mitigated variant\n\n",
                s.target, s.time_scale
            ));
            out.push_str(&chart(s));
            for line in super::notes(s) {
                out.push_str(&format!("{}\n\n", escape(&line)));
            }
        }
        if let Some(m) = super::matrix::matrix(report) {
            let (headers, rows) = m.table(report);
            out.push_str(
                "### PostgreSQL side by side\n\nVerdict · harm per release; ≠ marks a verdict \
                 that differs between releases.\n\n",
            );
            out.push_str(&table(&headers, rows.into_iter()));
            out.push('\n');
            for line in m.findings() {
                out.push_str(&format!("{}\n\n", escape(&line)));
            }
        }
        let failures = report.failures();
        let wall = report.wall_ms as f64 / 1000.0;
        if report.interrupted {
            out.push_str(&format!(
                "**Interrupted: partial results** (wall time {wall:.1} s)\n"
            ));
        } else if failures.is_empty() {
            out.push_str(&format!(
                "**Every expectation held** (wall time {wall:.1} s)\n"
            ));
        } else {
            out.push_str(&format!("**What failed** (wall time {wall:.1} s):\n\n"));
        }
        for f in failures {
            out.push_str(&format!("- {}\n", escape(&f)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;

    #[test]
    fn each_scenario_gets_a_mermaid_chart_of_its_harm_per_variant() {
        let out = Markdown.render(&fixtures::report());
        let start = out
            .find("```mermaid\nxychart-beta horizontal")
            .expect("a chart");
        let chart = &out[start..start + out[start..].find("\n```\n").expect("closed")];
        assert!(
            chart.contains("title \"orphan-lock: row locked (ms)\""),
            "{chart}"
        );
        assert!(
            chart.contains("x-axis [\"baseline\", \"mitigated*\""),
            "{chart}"
        );
        assert!(chart.contains("y-axis \"ms\" 0 --> 3301"), "{chart}");
        assert!(chart.contains("bar [3000, 1002, 3000]"), "{chart}");
    }

    #[test]
    fn markdown_table_has_one_row_per_variant_and_lists_failures() {
        let out = Markdown.render(&fixtures::report());
        assert!(out.contains("### orphan-lock"), "{out}");
        assert!(
            out.contains(
                "| variant | outcome | requests | p50 | p99 | row locked | expectations |"
            ),
            "{out}"
        );
        assert_eq!(
            out.lines().filter(|l| l.starts_with("| ")).count(),
            5,
            "{out}"
        );
        assert!(
            out.contains(
                "- MITIGATION REGRESSED orphan-lock/broken: `not cut_off` did not hold: was true"
            ),
            "{out}"
        );
    }
}
