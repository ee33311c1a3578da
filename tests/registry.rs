//! A scenario is registered in one place (`CODE`, or `STEP_FILES` for a step file, in src/scenario/mod.rs); what cannot be derived
//! from it is checked here, each failure naming the place to fix. A half-registered scenario
//! (a file without a registry entry, code nobody runs, a scenario the README does not list)
//! fails here before it confuses a user.

use std::path::Path;

use locklab::scenario::{kinds, load};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_scenario_file_is_registered() {
    for entry in std::fs::read_dir("scenarios")
        .expect("scenarios/")
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = read(&path);
        assert!(
            kinds().iter().any(|k| k.file == text),
            "{} is no registered scenario's file: add it to STEP_FILES in src/scenario/mod.rs \
             (a step file), or give its code `const FILE: &str = include_str!(\"../../{}\")` \
             and add `kind::<…>()` to CODE there",
            path.display(),
            path.display()
        );
    }
}

#[test]
fn every_scenario_code_is_registered() {
    let mut files = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from("src/scenario")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/scenario").flatten() {
            let path = entry.path();
            match path.is_dir() {
                true => dirs.push(path),
                false if path.extension().is_some_and(|e| e == "rs") => files.push(path),
                false => {}
            }
        }
    }
    let mut found = 0;
    for path in files {
        let text = read(&path);
        if !text.contains("impl Code for ") {
            continue;
        }
        found += 1;
        let name = text
            .split("const NAME: &'static str = \"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("{}: `impl Code` without `const NAME`", path.display()));
        assert!(
            kinds().iter().any(|k| k.name == name),
            "{} implements scenario `{name}`, but KINDS in src/scenario/mod.rs does not list it: \
             add `kind::<…>()` there",
            path.display()
        );
    }
    assert_eq!(
        found,
        kinds().iter().filter(|k| k.steps.is_none()).count(),
        "one `impl Code` per registered scenario"
    );
}

#[test]
fn every_registered_scenario_parses_and_says_what_it_needs() {
    for k in kinds() {
        let s = load(k.name).unwrap_or_else(|e| panic!("scenarios/{}.toml: {}", k.name, e.0));
        assert_eq!(
            s.name, k.name,
            "scenarios/{}.toml names itself `{}`",
            k.name, s.name
        );
        assert!(
            k.metrics.contains(&s.harm_metric.as_str()),
            "scenarios/{}.toml: its harm metric `{}` is not in its code's METRICS",
            k.name,
            s.harm_metric
        );
        assert!(
            k.sized_by.is_empty() || k.param(k.sized_by).is_some(),
            "{}: SIZED_BY `{}` names no parameter in its PARAMS",
            k.name,
            k.sized_by
        );
    }
}

#[test]
fn the_readme_lists_every_scenario_and_its_variants() {
    let readme = read(Path::new("README.md"));
    for k in kinds() {
        let s = load(k.name).expect("parses");
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", k.name)))
            .unwrap_or_else(|| {
                panic!(
                    "README.md's Scenarios table has no row `| `{}` | … |`: add one (what \
                     fails, and its variants)",
                    k.name
                )
            });
        for v in &s.variants {
            assert!(
                row.contains(&format!("`{}`", v.name)),
                "README.md's Scenarios row for `{}` does not name its variant `{}`",
                k.name,
                v.name
            );
        }
    }
}
