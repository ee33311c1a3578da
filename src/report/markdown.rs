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
        s.target, s.time_scale
    ));
    for p in points {
        for line in super::notes(p) {
            out.push_str(&format!("{}\n\n", escape(&line)));
        }
    }
    out
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
            for line in super::notes(s) {
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
