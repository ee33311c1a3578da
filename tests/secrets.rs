//! No password leaves locklab: each form a user may write a password in goes through a real
//! run (and through the error paths), and every output is searched for it: stdout and stderr
//! in every format, the results file, JUnit, the page, `report`'s re-prints, and the live view.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{EnvUp, bin, locklab, tempdir};

/// A password no other output contains by chance.
const SECRET: &str = "Zq7canaryPW4471";
const ROLE: &str = "leak_probe";

fn host_port(url: &str) -> (String, String) {
    // env up's URLs are postgres://user:pw@127.0.0.1:PORT/db and redis://user:pw@127.0.0.1:PORT/0
    let hp = url
        .rsplit_once('@')
        .map(|(_, r)| r.split('/').next().unwrap_or(r))
        .expect("a URL with userinfo");
    let (h, p) = hp.split_once(':').expect("host:port");
    (h.to_string(), p.to_string())
}

/// Every PostgreSQL form of the same login.
fn pg_forms(host: &str, port: &str, password: &str) -> Vec<String> {
    vec![
        format!("postgres://{ROLE}:{password}@{host}:{port}/postgres"),
        format!("postgresql://{ROLE}@{host}:{port}/postgres?password={password}"),
        format!(
            "postgres://{host}:{port}/postgres?user={ROLE}&password={password}&sslmode=disable"
        ),
        format!("host={host} port={port} user={ROLE} password={password} dbname=postgres"),
        format!("host={host} port={port} user={ROLE} password = '{password}' dbname=postgres"),
    ]
}

/// Every Redis form of the same login.
fn redis_forms(host: &str, port: &str, password: &str) -> Vec<String> {
    vec![
        format!("redis://leakprobe:{password}@{host}:{port}/0"),
        format!("redis://:{password}@{host}:{port}/0"),
    ]
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Panics naming the output that holds the secret.
fn assert_clean(what: &str, text: &str) {
    assert!(
        !text.contains(SECRET),
        "the password leaked into {what}:\n{text}"
    );
}

/// Every file under `dir`, searched.
fn assert_files_clean(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            assert_files_clean(&path);
        } else {
            let body = String::from_utf8_lossy(&std::fs::read(&path).expect("read")).to_string();
            assert_clean(&path.display().to_string(), &body);
        }
    }
}

fn prepare_servers(env: &EnvUp) {
    use locklab::env::postgres::Sql as _;
    let (rt, c) = common::connect(&env.url);
    rt.block_on(async {
        c.batch_execute(&format!(
            "CREATE ROLE {ROLE} LOGIN PASSWORD '{SECRET}'; \
             GRANT CREATE ON DATABASE postgres TO {ROLE}"
        ))
        .await
        .expect("a role with the secret");
        let _: i64 = c.one("SELECT 1::bigint", &[]).await.expect("ok").get(0);
        let redis = redis::Client::open(env.redis_url.as_str()).expect("redis url");
        let mut r = redis
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let _: () = redis::cmd("ACL")
            .arg(&[
                "SETUSER",
                "leakprobe",
                "on",
                &format!(">{SECRET}"),
                "~*",
                "&*",
                "+@all",
            ])
            .query_async(&mut r)
            .await
            .expect("a Redis user with the secret");
        let _: () = redis::cmd("ACL")
            .arg(&["SETUSER", "default", &format!(">{SECRET}")])
            .query_async(&mut r)
            .await
            .expect("the default user gets the secret too");
    });
}

#[test]
fn no_form_of_a_password_reaches_any_output() {
    let tmp = tempdir();
    let env = EnvUp::start(tmp.path(), &[]);
    prepare_servers(&env);
    let (pg_host, pg_port) = host_port(&env.url);
    let (r_host, r_port) = host_port(&env.redis_url);

    // A real run in each form, with every output it can write; then `report` prints it again.
    let pg = pg_forms(&pg_host, &pg_port, SECRET);
    let redis = redis_forms(&r_host, &r_port, SECRET);
    for (i, (pg_url, redis_url)) in pg.iter().zip(redis.iter().cycle()).enumerate() {
        let out = tmp.path().join(format!("out-{i}"));
        let run = locklab(tmp.path())
            .args(["run", "orphan-lock", "setnx-race", "--variant", "mitigated"])
            .args(["--pg-url", pg_url, "--redis-url", redis_url])
            .arg("--out")
            .arg(&out)
            .arg("--junit")
            .arg(out.join("junit.xml"))
            .arg("--html")
            .arg(out.join("page.html"))
            .output()
            .expect("run");
        let said = text(&run);
        assert_eq!(run.status.code(), Some(0), "form {i}: {said}");
        assert!(
            said.contains("***"),
            "form {i}: the target is shown, hidden: {said}"
        );
        assert_clean(&format!("the table and stderr of form {i}"), &said);
        let results = std::fs::read_dir(&out)
            .expect("results dir")
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "json"))
            .expect("a results file");
        for format in ["table", "json", "markdown"] {
            let again = locklab(tmp.path())
                .arg("report")
                .arg(&results)
                .args(["--format", format])
                .arg("--junit")
                .arg(out.join("again.xml"))
                .arg("--html")
                .arg(out.join("again.html"))
                .output()
                .expect("report");
            assert_eq!(again.status.code(), Some(0), "{}", text(&again));
            assert_clean(&format!("report --format {format}"), &text(&again));
        }
        assert_files_clean(&out);
    }

    // The error paths: a wrong password, an unreachable server, a malformed URL, in each form.
    let wrong = "Zq7canaryPW4471x"; // holds SECRET: a leak of it is a leak of SECRET
    for url in pg_forms(&pg_host, &pg_port, wrong) {
        let o = locklab(tmp.path())
            .args(["run", "orphan-lock", "--no-results", "--pg-url", &url])
            .output()
            .expect("run");
        assert_eq!(o.status.code(), Some(3), "{url}: {}", text(&o));
        assert!(
            text(&o).contains("password authentication failed"),
            "{}",
            text(&o)
        );
        assert_clean(&format!("the wrong-password error of {url}"), &text(&o));
    }
    for url in pg_forms("127.0.0.1", "1", SECRET) {
        let pooler = env.pooler_url.as_str();
        for flag in [
            vec!["--pg-url", url.as_str()],
            vec!["--pooler-url", url.as_str()],
            vec!["--pooler-url", pooler, "--pooler-admin-url", url.as_str()],
            vec!["--pooler-url", pooler, "--pooler-others-url", url.as_str()],
        ] {
            let o = locklab(tmp.path())
                .args(["run", "orphan-lock", "--no-results"])
                .args(flag)
                .args(["--pg-url", &env.url])
                .output()
                .expect("run");
            assert!(matches!(o.status.code(), Some(2 | 3)), "{}", text(&o));
            assert_clean(&format!("the unreachable-server error of {url}"), &text(&o));
        }
    }
    for url in [
        format!("postgres://{ROLE}:{SECRET}@127.0.0.1:notaport/db"),
        format!("postgres://127.0.0.1/db?password={SECRET}&port=x"),
        format!("host=127.0.0.1 port=x password={SECRET}"),
        format!("host=127.0.0.1 password='{SECRET}"),
    ] {
        let o = locklab(tmp.path())
            .args(["run", "orphan-lock", "--no-results", "--pg-url", &url])
            .output()
            .expect("run");
        assert_eq!(o.status.code(), Some(2), "{url}: {}", text(&o));
        assert_clean(&format!("the malformed-URL error of {url}"), &text(&o));
    }
    for url in redis_forms("127.0.0.1", "1", SECRET)
        .into_iter()
        .chain(redis_forms(&r_host, &r_port, wrong))
        .chain([format!("redis://:{SECRET}@127.0.0.1:notaport")])
    {
        let o = locklab(tmp.path())
            .args(["run", "setnx-race", "--no-results", "--pg-url", &env.url])
            .args(["--redis-url", &url])
            .output()
            .expect("run");
        assert!(
            matches!(o.status.code(), Some(2 | 3)),
            "{url}: {}",
            text(&o)
        );
        assert_clean(&format!("the Redis error of {url}"), &text(&o));
    }

    live_view_is_clean(tmp.path(), &pg[1]);
}

/// The live view on a real terminal (tmux), while a run against the URL is in flight.
fn live_view_is_clean(tmp: &Path, url: &str) {
    let socket = format!("locklab-secret-{}", std::process::id());
    let tmux = || {
        let mut c = Command::new("tmux");
        c.args(["-L", &socket]);
        c
    };
    let shell = format!(
        "TMPDIR={} {} run orphan-lock --variant baseline --no-results --pg-url '{url}'; sleep 30",
        tmp.display(),
        bin()
    );
    let started = tmux()
        .args(["new-session", "-d", "-x", "200", "-y", "50", &shell])
        .status()
        .expect("tmux (Debian package tmux; scripts/setup installs it)");
    assert!(started.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut screens = Vec::new();
    let mut done = false;
    while Instant::now() < deadline && !done {
        let out = tmux()
            .args(["capture-pane", "-p", "-S", "-200"])
            .output()
            .expect("capture");
        let screen = String::from_utf8_lossy(&out.stdout).to_string();
        done = screen.contains("wall time");
        screens.push(screen);
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = tmux().arg("kill-server").status();
    assert!(
        screens.iter().any(|s| s.contains("waiting on lock")),
        "the live view never showed: {:?}",
        screens.last()
    );
    for s in &screens {
        assert_clean("the live view", s);
    }
}
