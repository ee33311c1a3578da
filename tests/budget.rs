//! The sessions each scenario says it needs are what it really opens: as a non-superuser on a
//! server with max_connections = 40, with a CONNECTION LIMIT of exactly the need locklab
//! names, every scenario runs at its defaults with every expectation held. An undercount
//! would end in "too many connections for role" (a harness error, exit 3), never exit 0.

mod common;
use common::*;

fn sql(rt: &tokio::runtime::Runtime, url: &str, statement: &str) {
    rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect as the server's superuser");
        tokio::spawn(conn);
        c.batch_execute(statement).await.expect(statement);
    });
}

/// `orphan-lock needs 27 connections; ...` → 27.
fn needed(stderr: &str, scenario: &str) -> i64 {
    let prefix = format!("{scenario} needs ");
    let at = stderr
        .find(&prefix)
        .unwrap_or_else(|| panic!("no `{prefix}` in:\n{stderr}"));
    stderr[at + prefix.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count after `{prefix}` in:\n{stderr}"))
}

#[test]
fn each_scenario_fits_in_exactly_the_connections_it_says_it_needs() {
    let tmp = tempdir();
    let env = EnvUp::start(tmp.path(), &["--pg-setting", "max_connections=40"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    sql(
        &rt,
        &env.url,
        "CREATE ROLE app LOGIN PASSWORD 'app'; GRANT CREATE ON DATABASE postgres TO app;",
    );
    let app_url = env.url.replace("locklab:locklab@", "app:app@");
    for kind in locklab::scenario::kinds() {
        let name = kind.name;
        let args = [
            name,
            "--pg-url",
            &app_url,
            "--redis-url",
            &env.redis_url,
            "--no-results",
        ];
        sql(&rt, &env.url, "ALTER ROLE app CONNECTION LIMIT 1");
        let o = locklab(tmp.path())
            .arg("run")
            .args(args)
            .output()
            .expect("run locklab");
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("the role's CONNECTION LIMIT 1"), "{err}");
        let need = needed(&err, name);
        assert!(
            need <= 37,
            "{name} needs {need}: more than max_connections 40 leaves"
        );

        sql(
            &rt,
            &env.url,
            &format!("ALTER ROLE app CONNECTION LIMIT {need}"),
        );
        let (code, report, err) = run_json(tmp.path(), &args[..5]);
        assert_eq!(
            code, 0,
            "{name} within {need} connections:\n{err}\n{report:#}"
        );
    }
}
