//! `--format json`: the run as one JSON document (also what lands under results/).

use super::{Exporter, RunReport};

pub struct Json;

impl Exporter for Json {
    fn render(&self, report: &RunReport) -> String {
        // Serialising plain data with string keys cannot fail. A run on several releases
        // carries their comparison too (ignored when the file is read back: it is derived).
        let text = match super::matrix::matrix(report) {
            None => serde_json::to_string_pretty(report),
            Some(m) => {
                #[derive(serde::Serialize)]
                struct WithMatrix<'a> {
                    #[serde(flatten)]
                    report: &'a RunReport,
                    matrix: super::matrix::Matrix,
                }
                serde_json::to_string_pretty(&WithMatrix { report, matrix: m })
            }
        };
        text.unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;

    #[test]
    fn json_follows_the_contract_and_round_trips() {
        let report = fixtures::report();
        let text = Json.render(&report);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let variant = &v["scenarios"][0]["variants"][0];
        assert_eq!(v["locklab"], "0.1.0");
        assert_eq!(v["scenarios"][0]["name"], "orphan-lock");
        assert_eq!(variant["name"], "baseline");
        assert_eq!(variant["mitigated"], false);
        assert_eq!(variant["outcome"], "stuck");
        assert_eq!(variant["expectations"][0]["what"], "cut_off");
        assert_eq!(variant["expectations"][0]["held"], true);
        assert_eq!(variant["expectations_held"], true);
        assert_eq!(variant["metrics"]["cut_off"], true);
        let back: RunReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back.scenarios[0].variants.len(), 4);
    }
}
