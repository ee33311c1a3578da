//! The terminal table: one per scenario, one row per variant.

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

use super::{Column, Exporter, Row, RunReport, Section};

pub struct Tables {
    /// Wrap to the terminal width; otherwise lay out at natural width (files, pipes).
    pub fit_terminal: bool,
}

/// One comfy table; `fit` wraps it to that many columns, `None` lays it out at natural width.
fn table(headers: &[String], rows: &[Vec<String>], fit: Option<u16>) -> String {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    match fit {
        Some(w) => {
            t.set_content_arrangement(ContentArrangement::Dynamic);
            t.set_width(w);
        }
        None => {
            t.set_content_arrangement(ContentArrangement::Disabled);
        }
    }
    t.set_header(headers.to_vec());
    for r in rows {
        t.add_row(r.clone());
    }
    t.to_string()
}

fn widest_line(text: &str) -> usize {
    text.lines().map(|l| l.chars().count()).max().unwrap_or(0)
}

/// A scenario's table at natural width, or fitted to `width` columns: split into a verdict
/// table and a figures table when it would not fit whole.
fn lay_out(s: &super::ScenarioReport, width: Option<u16>) -> String {
    let columns = Row::columns(s);
    let headers: Vec<String> = columns.iter().map(|(_, h)| h.clone()).collect();
    let rows: Vec<Vec<String>> = s.variants.iter().map(|v| Row::of(s, v).cells()).collect();
    let whole = table(&headers, &rows, None);
    match width {
        Some(w) if widest_line(&whole) > w as usize => {
            // Too wide for the terminal: the verdict table first, then the figures,
            // rather than one table whose cells wrap word by word. Both keep the variant.
            let pick = |figures: bool| -> Vec<usize> {
                (0..columns.len())
                    .filter(|&i| {
                        columns[i].0 == Column::Variant || columns[i].0.is_figure() == figures
                    })
                    .collect()
            };
            let sub = |cols: &[usize]| {
                let cells = |r: &[String]| cols.iter().map(|&i| r[i].clone()).collect::<Vec<_>>();
                let rows: Vec<Vec<String>> = rows.iter().map(|r| cells(r)).collect();
                table(&cells(&headers), &rows, Some(w))
            };
            format!("{}\n{}", sub(&pick(false)), sub(&pick(true)))
        }
        Some(w) => table(&headers, &rows, Some(w)),
        None => whole,
    }
}

impl Exporter for Tables {
    fn render(&self, report: &RunReport) -> String {
        let mut out = String::new();
        let width = if self.fit_terminal {
            // A terminal that reports no usable size (a pty of 0 x 0, say) would squeeze
            // every column to one character: lay out at natural width there instead.
            Table::new().width().filter(|w| *w >= 40)
        } else {
            None
        };
        for section in super::sections(report) {
            match section {
                Section::Scenario(s) => {
                    let t = lay_out(s, width);
                    out.push_str(&format!(
                        "{} — {}\n{} · time scale {} · * = mitigated variant\n{t}\n",
                        s.name, s.summary, s.target, s.time_scale
                    ));
                    for line in super::notes(s) {
                        out.push_str(&format!("{line}\n"));
                    }
                }
                Section::Sweep(points) => {
                    let s = points[0];
                    out.push_str(&format!(
                        "{} — {}\nsweep: {} points · {} · time scale {} · * = mitigated variant\n",
                        s.name,
                        s.summary,
                        points.len(),
                        super::targets(&points),
                        s.time_scale
                    ));
                    for t in super::sweep_tables(&points) {
                        out.push_str(&format!(
                            "{}\n{}\n",
                            t.variant,
                            table(&t.headers, &t.rows, width)
                        ));
                    }
                    for p in &points {
                        for line in super::notes(p) {
                            out.push_str(&format!("{line}\n"));
                        }
                    }
                }
            }
        }
        if let Some(m) = super::matrix::matrix(report) {
            let (headers, rows) = m.table(report);
            out.push_str(
                "PostgreSQL side by side — verdict · harm per release · ≠ = the verdict differs\n",
            );
            out.push_str(&format!("{}\n", table(&headers, &rows, width)));
            for line in m.findings() {
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
    fn a_table_too_wide_for_the_terminal_splits_into_verdicts_and_figures() {
        let mut report = fixtures::report();
        report.scenarios[0].columns = vec![crate::report::Harm {
            metric: "cut_off".into(),
            label: "cut off".into(),
        }];
        let s = &report.scenarios[0];
        let whole = lay_out(s, None);
        assert_eq!(whole.matches("┌").count(), 1, "{whole}");
        let split = lay_out(s, Some(90));
        assert_eq!(split.matches("┌").count(), 2, "{split}");
        assert!(widest_line(&split) <= 90, "{split}");
        let (verdicts, figures) = split.split_once("┘\n").unwrap();
        assert!(verdicts.contains("row locked") && verdicts.contains("expectations"));
        assert!(figures.contains("p99") && figures.contains("cut off"));
        assert!(!figures.contains("expectations"), "{figures}");
    }

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

    #[test]
    fn a_sweep_prints_one_table_per_variant_with_a_row_per_point() {
        let out = Tables {
            fit_terminal: false,
        }
        .render(&fixtures::sweep());
        assert!(out.contains("sweep: 2 points"), "{out}");
        // baseline and mitigated at both points; broken only at the second one; the skipped
        // variant as a table of skipped rows.
        assert_eq!(out.matches("┌").count(), 4, "{out}");
        assert!(out.contains("│ clients ┆ outcome"), "{out}");
        assert!(out.contains("│ 100     ┆ stuck"), "{out}");
        // The failure names the point where it happened.
        let report = fixtures::sweep();
        let failures = report.failures();
        assert_eq!(
            failures,
            vec![
                "MITIGATION REGRESSED orphan-lock[clients=100]/broken: `not cut_off` did not hold: was true"
            ]
        );
    }
}
