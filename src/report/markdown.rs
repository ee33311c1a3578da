//! `--format markdown`: the same rows as the table, for a CI job summary or an issue.

use super::{Exporter, Row, RunReport};

pub struct Markdown;

fn escape(cell: &str) -> String {
    cell.replace('|', "\\|")
}

impl Exporter for Markdown {
    fn render(&self, report: &RunReport) -> String {
        let mut out = String::new();
        for s in &report.scenarios {
            out.push_str(&format!("### {}\n\n{}\n\n", s.name, s.summary));
            let headers: Vec<String> = Row::columns(s).into_iter().map(|(_, h)| h).collect();
            out.push_str(&format!("| {} |\n", headers.join(" | ")));
            out.push_str(&format!("|{}\n", "---|".repeat(headers.len())));
            for v in &s.variants {
                let cells: Vec<String> = Row::of(s, v).cells().iter().map(|c| escape(c)).collect();
                out.push_str(&format!("| {} |\n", cells.join(" | ")));
            }
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
            4,
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
