//! The command line: exit codes and clear errors for bad input, never a panic or a hang.

mod common;
use common::*;

use std::process::Output;

fn run(tmp: &std::path::Path, args: &[&str]) -> Output {
    locklab(tmp).args(args).output().expect("run locklab")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// `locklab run ARGS` where no server binary can be found: whatever it says comes before
/// anything would start.
fn run_without_servers(tmp: &std::path::Path, args: &[String]) -> Output {
    locklab(tmp)
        .arg("run")
        .args(args)
        .env("LOCKLAB_PG_BIN", "/nonexistent-locklab-test")
        .env("LOCKLAB_REDIS_BIN", "/nonexistent-locklab-test")
        .output()
        .expect("run locklab")
}

#[test]
fn list_and_explain_describe_the_scenarios() {
    let tmp = tempdir();
    let o = run(tmp.path(), &["list"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("orphan-lock"), "{out}");
    assert!(out.contains("payment-outside-tx"), "{out}");

    let o = run(tmp.path(), &["explain", "orphan-lock"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("idle_in_transaction_session_timeout=10000ms"),
        "{out}"
    );
    assert!(out.contains("statement-timeout-only"), "{out}");
}

#[test]
fn unknown_scenario_suggests_the_nearest_name() {
    let tmp = tempdir();
    let o = run(tmp.path(), &["run", "orphan-lok"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("did you mean `orphan-lock`?"),
        "{}",
        stderr(&o)
    );
    let o = run(tmp.path(), &["explain", "nothing-like-it"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn unknown_variant_and_parameter_are_usage_errors() {
    let tmp = tempdir();
    let o = run(tmp.path(), &["run", "orphan-lock", "--variant", "mitigatd"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("did you mean `mitigated`?"),
        "{}",
        stderr(&o)
    );
    let o = run(tmp.path(), &["run", "orphan-lock", "--param", "clinets=3"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("clinets"), "{}", stderr(&o));
    let o = run(tmp.path(), &["run", "orphan-lock", "--param", "fault=melt"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = run(tmp.path(), &["run", "orphan-lock", "--time-scale", "0"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(tmp.path(), &["run"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn malformed_scenario_file_is_reported_with_file_line_and_column() {
    let tmp = tempdir();
    let text = locklab::scenario::builtin_file("orphan-lock")
        .unwrap()
        .replace("clients = 20", "clients = = 20");
    let file = tmp.path().join("broken.toml");
    std::fs::write(&file, text).unwrap();
    let o = run(tmp.path(), &["run", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    let line = locklab::scenario::builtin_file("orphan-lock")
        .unwrap()
        .lines()
        .position(|l| l.starts_with("clients = 20"))
        .unwrap()
        + 1;
    assert!(err.contains(&format!("broken.toml:{line}:")), "{err}");

    let typo = locklab::scenario::builtin_file("orphan-lock")
        .unwrap()
        .replacen("bookings_ok < clients", "bookings_okk < clients", 1);
    std::fs::write(&file, typo).unwrap();
    let o = run(tmp.path(), &["run", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("bookings_okk"), "{}", stderr(&o));

    let o = run(tmp.path(), &["run", "./does-not-exist.toml"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn unreachable_server_exits_3_with_the_url_but_not_the_password() {
    let tmp = tempdir();
    let o = run(
        tmp.path(),
        &[
            "run",
            "orphan-lock",
            "--pg-url",
            "postgres://me:hunter2@127.0.0.1:1/db",
        ],
    );
    assert_eq!(o.status.code(), Some(3));
    let err = stderr(&o);
    assert!(
        err.contains("could not connect to PostgreSQL at postgres://me:***@127.0.0.1:1/db"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn pg_bin_names_the_release_in_the_header_and_refuses_a_major_too_old_or_no_server() {
    let tmp = tempdir();
    // A bin directory whose postgres says it is 13: refused before anything starts.
    let old = tmp.path().join("pg13");
    std::fs::create_dir(&old).expect("dir");
    for name in ["postgres", "initdb"] {
        let path = old.join(name);
        std::fs::write(&path, "#!/bin/sh\necho 'postgres (PostgreSQL) 13.2'\n").expect("write");
        let mut perms = std::fs::metadata(&path).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&path, perms).expect("chmod");
    }
    let old = old.to_string_lossy().to_string();
    let o = run(
        tmp.path(),
        &["run", "deadlock", "--no-results", "--pg-bin", &old],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("PostgreSQL 13.2"), "{err}");
    assert!(err.contains("PostgreSQL 14 to 18"), "{err}");
    let o = run(
        tmp.path(),
        &[
            "run",
            "deadlock",
            "--no-results",
            "--pg-bin",
            "/nonexistent/bin",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no postgres and initdb in --pg-bin"));
    // The machine's own server, given by its directory: the header names its release.
    let bins = locklab::env::postgres::find_binaries().expect("a PostgreSQL server");
    let dir = bins.dir.to_string_lossy().to_string();
    let o = run(
        tmp.path(),
        &["run", "deadlock", "--no-results", "--pg-bin", &dir],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("throwaway PostgreSQL {}", bins.release)),
        "{out}"
    );
    // The same release twice would compare a server with itself.
    let o = run(
        tmp.path(),
        &[
            "run",
            "deadlock",
            "--no-results",
            "--pg-bin",
            &dir,
            "--pg-bin",
            &dir,
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("are both PostgreSQL {}", bins.release)),
        "{}",
        stderr(&o)
    );
}

/// `--pg-bin` twice: the machine's PostgreSQL and 18 from the project's cache, compared.
#[test]
#[cfg_attr(
    not(locklab_pg18),
    ignore = "needs PostgreSQL 18 in .cache/pg/18 (scripts/setup --pg-major 18)"
)]
fn a_version_matrix_compares_releases_side_by_side() {
    let tmp = tempdir();
    let own = locklab::env::postgres::find_binaries().expect("a PostgreSQL server");
    let newest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/pg/18/bin");
    let (own_dir, newest_dir) = (
        own.dir.to_string_lossy().to_string(),
        newest.to_string_lossy().to_string(),
    );
    // A machine whose own server is already 18 has nothing to compare it with.
    if own.release.split('.').next() == Some("18") {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "skipped: the machine's own PostgreSQL is {}, the same major as the cached 18",
            own.release
        );
        return;
    }
    let out_dir = tmp.path().join("results");
    let junit = tmp.path().join("junit.xml");
    let o = run(
        tmp.path(),
        &[
            "run",
            "orphan-lock",
            "--variant",
            "polling-idle-timeout",
            "--variant",
            "transaction-timeout",
            "--pg-bin",
            &own_dir,
            "--pg-bin",
            &newest_dir,
            "--out",
            &out_dir.to_string_lossy(),
            "--junit",
            &junit.to_string_lossy(),
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(out.contains("PostgreSQL side by side"), "{out}");
    assert!(
        out.contains(&format!("PostgreSQL {}", own.release)),
        "{out}"
    );
    assert!(out.contains("PostgreSQL 18."), "{out}");
    // transaction_timeout is 17+: held on 18, skipped with the reason on an older server.
    let own_major = own
        .release
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok());
    if own_major.is_some_and(|m| m < 17) {
        assert!(
            out.contains(&format!("skipped on {} (transaction_timeout", own.release)),
            "{out}"
        );
    }
    let junit = std::fs::read_to_string(&junit).expect("junit written");
    assert!(
        junit.contains("<testsuite name=\"orphan-lock[postgres=18."),
        "{junit}"
    );
    assert!(
        junit.contains("<testcase classname=\"orphan-lock[postgres=18_"),
        "{junit}"
    );
    // One results file for the matrix; read back, it compares the releases again, as JSON too.
    let file = std::fs::read_dir(&out_dir)
        .expect("results dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-versions.json"))
        .expect("a -versions.json results file");
    let o = run(
        tmp.path(),
        &["report", &file.to_string_lossy(), "--format", "json"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let versions = doc["matrix"]["versions"].as_array().expect("versions");
    assert_eq!(versions.len(), 2, "{doc}");
    let rows = doc["matrix"]["variants"].as_array().expect("rows");
    let polling = rows
        .iter()
        .find(|r| r["variant"] == "polling-idle-timeout")
        .expect("polling row");
    assert_eq!(polling["differs"], false, "{polling}");
    assert!(
        polling["by_version"]
            .as_array()
            .expect("cells")
            .iter()
            .all(|c| c["verdict"] == "held"),
        "{polling}"
    );
}

#[test]
fn missing_server_binaries_name_the_packages_to_install() {
    let tmp = tempdir();
    let o = locklab(tmp.path())
        .env("LOCKLAB_PG_BIN", tmp.path())
        .args(["run", "orphan-lock"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    let err = stderr(&o);
    assert!(
        err.contains("apt-get install postgresql redis-server pgbouncer"),
        "{err}"
    );
    assert!(err.contains("docker compose"), "{err}");
    assert_nothing_left(tmp.path(), std::time::Duration::from_secs(5));

    // PostgreSQL is there but redis-server is not: the throwaway PostgreSQL is stopped again.
    let o = locklab(tmp.path())
        .env("LOCKLAB_REDIS_BIN", tmp.path())
        .args(["run", "setnx-race", "--no-results"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    let err = stderr(&o);
    assert!(err.contains("redis-server not found"), "{err}");
    assert!(
        err.contains("apt-get install postgresql redis-server"),
        "{err}"
    );
    assert_nothing_left(tmp.path(), std::time::Duration::from_secs(5));
}

#[test]
fn workshop_server_takes_scenarios_by_url_and_rejects_a_wrong_password() {
    let tmp = tempdir();
    let env = EnvUp::start(tmp.path(), &[]);
    assert!(
        env.url.starts_with("postgres://locklab:locklab@127.0.0.1:"),
        "{}",
        env.url
    );

    let wrong = env.url.replace("locklab:locklab@", "locklab:wrong@");
    let o = run(tmp.path(), &["run", "orphan-lock", "--pg-url", &wrong]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("password authentication failed"),
        "{}",
        stderr(&o)
    );

    // Against a server it did not start, locklab works in its own schema and drops it after.
    let (code, report, err) = run_json(
        tmp.path(),
        &[
            "orphan-lock",
            "--pg-url",
            &env.url,
            "--variant",
            "mitigated",
            "--variant",
            "baseline",
        ],
    );
    assert_eq!(code, 0, "{err}\n{report:#}");
    let target = report["scenarios"][0]["target"].as_str().unwrap();
    assert!(target.contains("locklab:***@"), "{target}");
    // A server reached directly is not taken for a pooler (the check that skips the budget).
    assert!(!target.contains("pooler"), "{target}");
    assert_eq!(variant(&report, "mitigated")["outcome"], "released");
    assert_eq!(variant(&report, "baseline")["outcome"], "stuck");

    use locklab::env::postgres::Sql as _;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let leftovers: (i64, i64, i64) = rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&env.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let schemas: i64 = c
            .one(
                "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'locklab%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let sessions: i64 = c
            .one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'locklab\\_%/%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let role_or_db_settings: i64 = c
            .one("SELECT count(*) FROM pg_db_role_setting", &[])
            .await
            .unwrap()
            .get(0);
        (schemas, sessions, role_or_db_settings)
    });
    assert_eq!(
        leftovers,
        (0, 0, 0),
        "(schemas, sessions, db/role settings) left on the user's server"
    );

    let status = env.stop();
    assert!(status.success(), "env up exits 0 on Ctrl-C: {status:?}");
    assert_nothing_left(tmp.path(), std::time::Duration::from_secs(5));
}

#[test]
fn a_broken_mitigation_exits_1_and_names_the_expectation_and_figure() {
    let tmp = tempdir();
    // The user's copy of the scenario with the idle timeout removed from `mitigated`.
    let text = locklab::scenario::builtin_file("orphan-lock")
        .unwrap()
        .replace(
            "settings = { idle_in_transaction_session_timeout = \"idle_timeout\", ",
            "settings = { ",
        );
    let file = tmp.path().join("no-idle-timeout.toml");
    std::fs::write(&file, text).unwrap();
    let o = run(
        tmp.path(),
        &[
            "run",
            file.to_str().unwrap(),
            "--variant",
            "mitigated",
            "--no-results",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(
            "MITIGATION REGRESSED orphan-lock/mitigated: `not cut_off` did not hold: was true"
        ),
        "{err}"
    );
    assert!(
        err.contains("`lock_held_ms <= idle_timeout * 1.5` did not hold: was"),
        "{err}"
    );
}

#[test]
fn a_baseline_that_no_longer_fails_is_named_apart_from_a_regression() {
    let tmp = tempdir();
    // The user's copy where the baseline quietly gained the mitigation: the lab lost its teeth.
    let text = locklab::scenario::builtin_file("orphan-lock").unwrap().replacen(
        "name = \"baseline\"\n",
        "name = \"baseline\"\nsettings = { idle_in_transaction_session_timeout = \"idle_timeout\" }\n",
        1,
    );
    let file = tmp.path().join("toothless.toml");
    std::fs::write(&file, text).unwrap();
    let junit = tmp.path().join("junit.xml");
    let o = run(
        tmp.path(),
        &[
            "run",
            file.to_str().unwrap(),
            "--variant",
            "baseline",
            "--no-results",
            "--junit",
            junit.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(
            "BASELINE NO LONGER REPRODUCES orphan-lock/baseline: \
             `bookings_ok < clients or bookings_committed < clients` did not hold"
        ),
        "{err}"
    );
    assert!(!err.contains("MITIGATION REGRESSED"), "{err}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("type=\"BASELINE NO LONGER REPRODUCES\""),
        "{xml}"
    );
}

#[test]
fn repeats_show_consistency_and_a_results_file_prints_again_without_a_rerun() {
    let tmp = tempdir();
    let out_dir = tmp.path().join("results");
    let o = run(
        tmp.path(),
        &[
            "run",
            "orphan-lock",
            "--variant",
            "payment-outside-tx",
            "--repeat",
            "2",
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(table.contains("held in"), "{table}");
    assert!(table.contains("2/2"), "{table}");
    // One results file under --out, rewritten in place after every run.
    let files: Vec<_> = std::fs::read_dir(&out_dir).unwrap().flatten().collect();
    assert_eq!(files.len(), 1);
    let file = files[0].path();
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let v = &report["scenarios"][0]["variants"][0];
    assert_eq!(v["name"], "payment-outside-tx");
    assert_eq!(v["expectations_held"], true);
    assert_eq!(v["runs"], 2);
    assert_eq!(v["runs_held"], 2);
    assert_eq!(v["repeats"].as_array().unwrap().len(), 2);

    let junit = tmp.path().join("junit.xml");
    let again = run(
        tmp.path(),
        &[
            "report",
            file.to_str().unwrap(),
            "--format",
            "markdown",
            "--junit",
            junit.to_str().unwrap(),
        ],
    );
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    let md = String::from_utf8_lossy(&again.stdout);
    assert!(md.contains("| payment-outside-tx | never-locked |"), "{md}");
    assert!(md.contains("| 2/2 |"), "{md}");
    assert!(md.contains("**Every expectation held**"), "{md}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("<testcase classname=\"orphan-lock\" name=\"payment-outside-tx\""),
        "{xml}"
    );

    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, "{\"locklab\": 1}").unwrap();
    let o = run(tmp.path(), &["report", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("not a locklab results file"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn as_configured_checks_what_the_server_itself_is_configured_with() {
    let tmp = tempdir();
    let args = |url: &str| {
        vec![
            "run".to_string(),
            "orphan-lock".into(),
            "--variant".into(),
            "as-configured".into(),
            "--pg-url".into(),
            url.to_string(),
            "--format".into(),
            "json".into(),
            "--no-results".into(),
        ]
    };
    // A server configured with the timeout: protected.
    let protected = EnvUp::start(
        tmp.path(),
        &["--pg-setting", "idle_in_transaction_session_timeout=1s"],
    );
    let o = run(
        tmp.path(),
        &args(&protected.url)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let v = &report["scenarios"][0]["variants"][0];
    assert_eq!(
        v["settings"],
        serde_json::json!({}),
        "the variant declares none"
    );
    // What a workload session of the variant saw: the server's timeout, and none of the
    // timeouts locklab's own mitigated variant would have set on it.
    let seen = &v["server_settings"];
    assert_eq!(seen["idle_in_transaction_session_timeout"], "1s");
    assert_eq!(seen["lock_timeout"], "0", "{seen}");
    assert_eq!(seen["statement_timeout"], "0", "{seen}");
    drop(protected);

    // The same server without it: not protected, and the message says which expectation failed.
    let bare = EnvUp::start(tmp.path(), &[]);
    let o = run(
        tmp.path(),
        &args(&bare.url)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let v = &report["scenarios"][0]["variants"][0];
    assert_eq!(
        v["server_settings"]["idle_in_transaction_session_timeout"],
        "0"
    );
    assert_eq!(v["failure"], "mitigation-regressed");
    assert!(
        stderr(&o).contains("orphan-lock/as-configured: `not cut_off` did not hold: was true"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_closed_stdout_is_no_panic_and_keeps_the_exit_code() {
    let tmp = tempdir();
    // The reader is gone before locklab writes a byte, as with `locklab … | head -c 0`.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = locklab(tmp.path())
        .args(["explain", "orphan-lock"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

/// Bad values for a parameter, from what it declares it accepts: a new scenario gets its
/// rows here by declaring its parameters.
fn bad_values(accepts: &locklab::scenario::spec::Accepts) -> Vec<String> {
    use locklab::scenario::spec::Accepts;
    match *accepts {
        Accepts::Count { min, max } => {
            let mut v = vec![
                (min - 1).to_string(),
                "-1".into(),
                (max + 1).to_string(),
                "1000000000000".into(),
                "lots".into(),
                "2.5".into(),
            ];
            v.dedup();
            v
        }
        Accepts::Duration { min, max } => {
            let mut v = vec![
                "5".into(),
                "-1s".into(),
                "soon".into(),
                "5 parsecs".into(),
                format!("{}ms", max.as_millis() + 1),
            ];
            if !min.is_zero() {
                v.push(format!(
                    "{}us",
                    min.as_micros().saturating_sub(1).max(1) / 2
                ));
            }
            v
        }
        Accepts::Words(_) => vec!["nonsense".into(), "7".into()],
        Accepts::Flag => vec!["maybe".into(), "2".into()],
        // A step file's own parameters take any value.
        Accepts::Any => Vec::new(),
    }
}

/// Every built-in scenario, present and future, refuses nonsense before anything starts:
/// exit 2, the message names the parameter, no server is started (the server binaries are
/// pointed at nothing, so a start would exit 3), and nothing is written under results/.
#[test]
fn every_builtin_scenario_refuses_bad_input_before_anything_starts() {
    let tmp = tempdir();
    let out = tmp.path().join("results");
    let mut cases: Vec<(String, Vec<String>, String)> = Vec::new();
    for kind in locklab::scenario::kinds() {
        let name = kind.name.to_string();
        for p in kind.params {
            for v in bad_values(&p.accepts) {
                let args = vec![name.clone(), "--param".into(), format!("{}={v}", p.name)];
                cases.push((name.clone(), args, p.name.to_string()));
            }
        }
        // A deadline shorter than the window its verdicts are judged in.
        cases.push((
            name.clone(),
            vec![name.clone(), "--param".into(), "deadline=100ms".into()],
            "deadline".into(),
        ));
        for (flag, named) in [("--pg-url", "PostgreSQL URL"), ("--redis-url", "Redis URL")] {
            for url in ["notaurl", "postgres://user:hunter2@:/", "redis://:hunter2@"] {
                let args = vec![name.clone(), flag.into(), url.into()];
                cases.push((name.clone(), args, named.into()));
            }
        }
    }
    assert!(cases.len() > 100, "{} cases", cases.len());
    for (scenario, args, named) in &cases {
        let with_out = [
            args.clone(),
            vec!["--out".into(), out.display().to_string()],
        ]
        .concat();
        let o = run_without_servers(tmp.path(), &with_out);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{scenario} {args:?}:\n{err}");
        assert!(
            err.contains(named.as_str()),
            "{args:?} names {named}:\n{err}"
        );
        assert!(
            !err.contains("hunter2"),
            "{args:?} shows a password:\n{err}"
        );
        assert!(!err.contains("panicked"), "{args:?}:\n{err}");
        assert!(!out.exists(), "{args:?} wrote results");
    }
    // The environment variables are the same input.
    let o = locklab(tmp.path())
        .args(["run", "orphan-lock", "--no-results"])
        .env("LOCKLAB_PG_URL", "notaurl")
        .output()
        .expect("run locklab");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("tmp")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn options_that_do_nothing_say_so() {
    let tmp = tempdir();
    let o = run(
        tmp.path(),
        &[
            "run",
            "orphan-lock",
            "--redis-url",
            "redis://localhost:1",
            "--variant",
            "nothing",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--redis-url"), "{}", stderr(&o));
    let o = run(
        tmp.path(),
        &["run", "all", "--param", "clients=5", "--variant", "nothing"],
    );
    assert!(
        stderr(&o).contains("--param clients applies to orphan-lock"),
        "{}",
        stderr(&o)
    );
    let o = run(tmp.path(), &["run", "all", "--param", "clientz=5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("did you mean `clients`"),
        "{}",
        stderr(&o)
    );
    // A variant's own value stays (max_lease=0 would be bounded-lease without its bound), and
    // the note says how to change it; named with its variant, only the scenarios with it read it.
    let o = run(
        tmp.path(),
        &[
            "run",
            "lock-watchdog",
            "--param",
            "max_lease=0",
            "--variant",
            "nothing",
        ],
    );
    assert!(
        stderr(&o).contains("leaves bounded-lease (max_lease = 10s) of lock-watchdog as they are")
            && stderr(&o).contains("--param bounded-lease.max_lease=0"),
        "{}",
        stderr(&o)
    );
    let o = run(
        tmp.path(),
        &[
            "run",
            "all",
            "--param",
            "bounded-lease.max_lease=4s",
            "--variant",
            "nothing",
        ],
    );
    assert!(
        stderr(&o).contains("--param bounded-lease.max_lease applies to lock-watchdog;"),
        "{}",
        stderr(&o)
    );
    // A sweep leaves them alone too, with one note, and the variants are listed once.
    let o = run(
        tmp.path(),
        &[
            "run",
            "pool-deadlock",
            "--sweep",
            "pool_size=4,6,8",
            "--variant",
            "nothing",
        ],
    );
    let err = stderr(&o);
    assert_eq!(
        err.matches(
            "note: --sweep pool_size leaves bigger-pool, bigger-pool-more-handlers of pool-deadlock"
        )
        .count(),
        1,
        "{err}"
    );
    assert_eq!(err.matches("bigger-pool-more-handlers").count(), 2, "{err}");
    for (arg, says) in [
        (
            "fault=pause",
            "`fault` is what tells lock-watchdog's variants apart",
        ),
        ("bounded-leas.max_lease=4s", "did you mean `bounded-lease`?"),
        ("bounded-lease.max_leas=4s", "did you mean `max_lease`?"),
        ("bounded-lease.max_lease=fast", "max_lease"),
    ] {
        let o = run(tmp.path(), &["run", "lock-watchdog", "--param", arg]);
        assert_eq!(o.status.code(), Some(2), "{arg}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{arg}: {}", stderr(&o));
    }
}

#[test]
fn completions_and_man_pages_come_from_the_command_line_definitions() {
    let tmp = tempdir();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = locklab(tmp.path())
            .args(["completions", shell])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("locklab") && script.contains("time-scale"),
            "{shell}"
        );
    }
    // bash loads its script and completes locklab's commands with it.
    let script = tmp.path().join("locklab.bash");
    let out = locklab(tmp.path())
        .args(["completions", "bash"])
        .output()
        .expect("run");
    std::fs::write(&script, &out.stdout).expect("write");
    let loaded = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && COMP_WORDS=(locklab re) && COMP_CWORD=1 && _locklab locklab re locklab; echo \"${{COMPREPLY[@]}}\"",
            script.display()
        ))
        .output()
        .expect("bash");
    let words = String::from_utf8_lossy(&loaded.stdout);
    assert!(words.contains("report"), "{words}");

    let man = locklab(tmp.path()).arg("man").output().expect("run");
    assert_eq!(man.status.code(), Some(0));
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(page.contains(".TH locklab 1"), "{page}");
    let dir = tmp.path().join("man");
    let pages = locklab(tmp.path())
        .args(["man", "--dir"])
        .arg(&dir)
        .output()
        .expect("run");
    assert_eq!(pages.status.code(), Some(0));
    let run_page = std::fs::read_to_string(dir.join("locklab-run.1")).expect("locklab-run.1");
    assert!(run_page.contains("time\\-scale"), "{run_page}");
}

/// The relations the 200-point soak found (README, "The 200-point soak"): each point is
/// refused before anything starts, exit 2, naming the parameter to change.
#[test]
fn points_the_soak_found_are_refused_with_their_relation() {
    let tmp = tempdir();
    let points: &[(&[&str], &str)] = &[
        (
            &[
                "pooler-pitfalls",
                "--param",
                "work=370ms",
                "--param",
                "set_timeout=400ms",
            ],
            "--param set_timeout=",
        ),
        (
            &[
                "pooler-pitfalls",
                "--param",
                "set_timeout=57ms",
                "--time-scale",
                "0.05",
            ],
            "--param set_timeout=",
        ),
        (&["setnx-race", "--param", "ttl=5.01s"], "--param ttl="),
        // The sampler's seed 4242: the failover (its own time, not the scale's) outlasted the
        // defaults' lease at time scale 0.05, a harness error instead of a refusal.
        (
            &["redis-failover", "--time-scale", "0.05"],
            "--param ttl=70s",
        ),
        (&["lock-watchdog", "--param", "pause=6s"], "--param pause="),
        (
            &["lock-watchdog", "--param", "max_lease=2s"],
            "--param max_lease=",
        ),
        (&["shutdown", "--param", "grace=12.76s"], "--param grace="),
        (
            &[
                "lost-client",
                "--param",
                "partition_after=800ms",
                "--param",
                "keepalives_idle=40s",
                "--param",
                "keepalives_interval=20s",
                "--time-scale",
                "0.05",
            ],
            "--param partition_after=",
        ),
        (
            &[
                "connection-storm",
                "--param",
                "max_connections=202",
                "--param",
                "rate=6",
                "--time-scale",
                "0.2",
            ],
            "--param rate",
        ),
        (
            &[
                "connection-storm",
                "--param",
                "rate=50",
                "--time-scale",
                "0.1",
            ],
            "new connections a second",
        ),
    ];
    for (args, names) in points {
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.push("--no-results".into());
        let o = run_without_servers(tmp.path(), &args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}:\n{err}");
        assert!(err.contains(names), "{args:?} names {names}:\n{err}");
    }
}
