//! `--junit FILE`: one test case per scenario × variant, for CI systems that read JUnit XML.
//! A failed expectation becomes a `<failure>` whose message names the kind of failure, the
//! expectation and the measured figure; a harness error becomes an `<error>`.

use super::{Exporter, Failure, RunReport};

pub struct Junit;

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 allows no other control characters.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

impl Exporter for Junit {
    fn render(&self, report: &RunReport) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let total: usize = report.scenarios.iter().map(|s| s.variants.len()).sum();
        let (mut failed, mut errored) = (0, 0);
        let skipped = report
            .scenarios
            .iter()
            .flat_map(|s| &s.variants)
            .filter(|v| v.skipped.is_some())
            .count();
        for v in report.scenarios.iter().flat_map(|s| &s.variants) {
            match v.failure_kind() {
                Some(Failure::HarnessError) => errored += 1,
                Some(_) => failed += 1,
                None => {}
            }
        }
        out.push_str(&format!(
            "<testsuites name=\"locklab\" tests=\"{total}\" failures=\"{failed}\" errors=\"{errored}\" skipped=\"{skipped}\" time=\"{:.3}\">\n",
            report.wall_ms as f64 / 1000.0
        ));
        for s in &report.scenarios {
            out.push_str(&format!(
                "  <testsuite name=\"{}\" tests=\"{}\">\n",
                escape(&s.label()),
                s.variants.len()
            ));
            // CI tools read a classname's dots as package separators (Jenkins would file
            // `orphan-lock[postgres=18.1]` as class `1]` of package `orphan-lock[postgres=18`):
            // the classname has none, the suite's name keeps the label as it is.
            let classname = s.label().replace('.', "_");
            for v in &s.variants {
                out.push_str(&format!(
                    "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">\n",
                    escape(&classname),
                    escape(&v.name),
                    v.wall_ms as f64 / 1000.0
                ));
                if let Some(why) = &v.skipped {
                    out.push_str(&format!("      <skipped message=\"{}\"/>\n", escape(why)));
                }
                let mine = v.failure_lines(&s.label());
                if let (Some(first), Some(kind)) = (mine.first(), v.failure_kind()) {
                    let tag = match kind {
                        Failure::HarnessError => "error",
                        _ => "failure",
                    };
                    out.push_str(&format!(
                        "      <{tag} message=\"{}\" type=\"{}\">{}</{tag}>\n",
                        escape(first),
                        kind.headline(),
                        escape(&mine.join("\n"))
                    ));
                }
                out.push_str(&format!(
                    "      <system-out>{}</system-out>\n",
                    escape(&format!("outcome: {}; {}", v.outcome, v.shows))
                ));
                out.push_str("    </testcase>\n");
            }
            out.push_str("  </testsuite>\n");
        }
        out.push_str("</testsuites>\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;

    #[test]
    fn a_variant_this_environment_cannot_run_is_a_skipped_testcase() {
        let xml = Junit.render(&fixtures::report());
        assert!(
            xml.contains("<skipped message=\"it runs through a pooler\"/>"),
            "{xml}"
        );
    }

    #[test]
    fn one_testcase_per_variant_and_the_regression_as_a_failure() {
        let xml = Junit.render(&fixtures::report());
        assert_eq!(xml.matches("<testcase ").count(), 4, "{xml}");
        assert!(
            xml.contains("tests=\"4\" failures=\"1\" errors=\"0\" skipped=\"1\""),
            "{xml}"
        );
        assert!(
            xml.contains("<failure message=\"MITIGATION REGRESSED orphan-lock/broken: `not cut_off` did not hold: was true\" type=\"MITIGATION REGRESSED\">"),
            "{xml}"
        );
        assert!(!xml.contains("<failure message=\"MITIGATION REGRESSED orphan-lock/mitigated"));
    }

    #[test]
    fn a_point_with_dots_keeps_them_in_the_suite_name_not_the_classname() {
        let mut report = fixtures::report();
        report.scenarios[0].swept = vec![("postgres".into(), serde_json::json!("18.1"))];
        let xml = Junit.render(&report);
        assert!(
            xml.contains("<testsuite name=\"orphan-lock[postgres=18.1]\""),
            "{xml}"
        );
        assert!(
            xml.contains("<testcase classname=\"orphan-lock[postgres=18_1]\" name=\"baseline\""),
            "{xml}"
        );
    }

    #[test]
    fn markup_in_messages_is_escaped() {
        assert_eq!(escape("a < b & \"c\""), "a &lt; b &amp; &quot;c&quot;");
    }
}
