//! The terminal table: one per scenario, one row per variant.

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

use super::{Exporter, Row, RunReport};

pub struct Tables {
    /// Wrap to the terminal width; otherwise lay out at natural width (files, pipes).
    pub fit_terminal: bool,
}

impl Exporter for Tables {
    fn render(&self, report: &RunReport) -> String {
        let mut out = String::new();
        for s in &report.scenarios {
            let mut t = Table::new();
            t.load_style(UTF8_FULL_CONDENSED);
            t.set_content_arrangement(if self.fit_terminal {
                ContentArrangement::Dynamic
            } else {
                ContentArrangement::Disabled
            });
            t.set_header(Row::headers(s));
            for v in &s.variants {
                t.add_row(Row::of(s, v).cells());
            }
            out.push_str(&format!(
                "{} — {}\n{} · time scale {} · * = mitigated variant\n{t}\n",
                s.name, s.summary, s.target, s.time_scale
            ));
            for line in super::settings_lines(s) {
                out.push_str(&format!("{line}\n"));
            }
        }
        let verdict = if report.interrupted {
            "interrupted: partial results".to_string()
        } else if report.all_held() {
            "every expectation held".to_string()
        } else {
            format!("FAILED: {} reason(s) below", report.failures().len())
        };
        out.push_str(&format!(
            "{verdict} · wall time {:.1} s\n",
            report.wall_ms as f64 / 1000.0
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;

    #[test]
    fn table_shows_outcomes_harm_and_failed_expectation() {
        let out = Tables {
            fit_terminal: false,
        }
        .render(&fixtures::report());
        assert!(
            out.contains("orphan-lock — A frozen holder keeps a row locked"),
            "{out}"
        );
        assert!(out.contains("row locked"), "{out}");
        assert!(
            out.contains("≥ 3.00 s"),
            "baseline's figure is a lower bound:\n{out}"
        );
        assert!(out.contains("0 ok / 0 failed / 20 stuck"), "{out}");
        assert!(
            out.contains("20 ok / 31 failed (55P03 lock timeout)"),
            "{out}"
        );
        assert!(out.contains("mitigated *"), "{out}");
        assert!(out.contains("1.00 s"), "{out}");
        assert!(out.contains("53 ms") || out.contains("52 ms"), "{out}");
        assert!(out.contains("REGRESSED: not cut_off: was true"), "{out}");
        assert!(
            out.contains("FAILED: 1 reason(s) below · wall time 4.2 s"),
            "{out}"
        );
    }
}
