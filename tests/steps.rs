//! Step scenarios (a user's own file of sessions and steps) on real PostgreSQL: ordering by
//! `after` and `:waiting`, faults and their probes, `[metrics]`, the example and `locklab new`,
//! a directory of files, every bad-file error, and a file's SQL leaving nothing outside its
//! schema on a user's server.

mod common;

use std::path::Path;

use common::{EnvUp, locklab, metric, run_json, tempdir, variant};

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the file");
    path.to_string_lossy().to_string()
}

const EXAMPLE: &str = "examples/scenarios/migration-queue.toml";

#[test]
fn the_example_shows_the_queue_and_lock_timeout_ends_it() {
    let tmp = tempdir();
    let (code, report, err) = run_json(tmp.path(), &[EXAMPLE]);
    assert_eq!(code, 0, "{err}\n{report:#}");
    let base = variant(&report, "baseline");
    let fixed = variant(&report, "lock-timeout");
    // The report holds its lock for 2 s: every read waited that long behind the ALTER.
    assert!(metric(base, "app.read.p99_ms") >= 1900.0, "{base:#}");
    assert_eq!(metric(base, "app.lock_waiters_max"), 10.0, "{base:#}");
    assert!(
        metric(base, "app.read.waited_ms") > 10_000.0,
        "ten readers, ~2 s each: {base:#}"
    );
    assert_eq!(
        metric(base, "note_added"),
        1.0,
        "the ALTER ran once the report ended"
    );
    assert_eq!(metric(fixed, "migration.alter.errors_55P03"), 1.0);
    assert!(metric(fixed, "app.read.p99_ms") < 500.0, "{fixed:#}");
    assert_eq!(metric(fixed, "note_added"), 0.0, "the ALTER gave up");
    assert_eq!(
        report["scenarios"][0]["time_scale"], 1.0,
        "the file's own scale"
    );
}

const ORDERED: &str = r#"
name = "ordered"
summary = "after and :waiting"
harm = { metric = "b.update.waited_ms", label = "b waited" }
[params]
deadline = "3s"
hold = "400ms"
[setup]
sql = "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0);"
[[sessions]]
name = "a"
steps = [
  { name = "begin", sql = "BEGIN" },
  { name = "update", sql = "UPDATE t SET v = v + 1 WHERE id = 1" },
  { name = "hold", sleep = "${hold}" },
  { name = "commit", sql = "COMMIT" },
]
[[sessions]]
name = "b"
steps = [{ name = "update", sql = "UPDATE t SET v = v * 10 WHERE id = 1", after = "a.update" }]
[[sessions]]
name = "c"
settings = { lock_timeout = "50ms" }
steps = [{ name = "peek", sql = "SELECT v FROM t WHERE id = 1 FOR UPDATE", after = "b.update:waiting" }]
[metrics]
v = "SELECT v FROM t WHERE id = 1"
[[variants]]
name = "only"
mitigated = true
expect = ["v == 10", "c.peek.errors_55P03 == 1", "b.update.waited_ms > hold / 4", "b.update.ok == 1"]
"#;

#[test]
fn after_and_waiting_order_the_steps_from_what_the_server_shows() {
    let tmp = tempdir();
    let file = write(tmp.path(), "ordered.toml", ORDERED);
    // At time scale 1 the hold is 400 ms; at 0.1, 40 ms: both orders are forced, not raced.
    for scale in ["1", "0.1"] {
        let (code, report, err) = run_json(tmp.path(), &[&file, "--time-scale", scale]);
        assert_eq!(code, 0, "scale {scale}: {err}\n{report:#}");
        let v = variant(&report, "only");
        // b updated after a's update (v = (0 + 1) * 10), and waited for a's commit; c started
        // once the server showed b waiting, and gave up on the lock b waited for.
        assert_eq!(metric(v, "v"), 10.0, "{v:#}");
        assert_eq!(metric(v, "c.peek.errors_55P03"), 1.0, "{v:#}");
    }
}

#[test]
fn a_pool_sessions_client_is_seen_waiting_through_the_connection_it_checked_out() {
    let tmp = tempdir();
    // ORDERED with b on a client pool: the server still tells which client waits (the
    // connection carries its name for the step), so c starts once b waits, as before.
    let pooled = ORDERED.replacen(
        "name = \"b\"\n",
        "name = \"b\"\nconnect = \"pool\"\npool_size = 1\n",
        1,
    );
    let file = write(tmp.path(), "pooled.toml", &pooled);
    let (code, report, err) = run_json(tmp.path(), &[&file, "--time-scale", "1"]);
    assert_eq!(code, 0, "{err}\n{report:#}");
    let v = variant(&report, "only");
    assert_eq!(metric(v, "v"), 10.0, "{v:#}");
    assert_eq!(metric(v, "c.peek.errors_55P03"), 1.0, "{v:#}");
    assert!(metric(v, "b.update.waited_ms") > 100.0, "{v:#}");
}

const COUNTED: &str = r#"
name = "counted"
summary = "counted rounds, a barrier in each, captures, and a fault that ends a session early"
harm = { metric = "stuck", label = "stuck" }
[params]
deadline = "3s"
[setup]
sql = """CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0);
CREATE TABLE seen (round int, v int);"""
[[sessions]]
name = "writer"
repeat = 3
steps = [{ name = "bump", sql = "UPDATE t SET v = v + 1 WHERE id = 1", after = "reader.read" }]
[[sessions]]
name = "reader"
clients = 2
repeat = 3
steps = [
  { name = "read", into = "v", sql = "SELECT v FROM t WHERE id = 1" },
  { name = "again", into = "w", sql = "SELECT v FROM t WHERE id = 1", after = "writer.bump" },
  { name = "record", sql = "INSERT INTO seen VALUES (${w}, ${v})" },
]
[[sessions]]
name = "quitter"
repeat = 3
steps = [{ name = "work", sql = "SELECT 1" }, { name = "gone", fault = "kill" }]
[[sessions]]
name = "follower"
repeat = 3
steps = [{ name = "after", sql = "SELECT 1", after = "quitter.work" }]
[metrics]
# In every round both readers read before the bump and again after it: v then v + 1.
rounds_seen = "SELECT count(*) FROM seen WHERE round = v + 1"
[[variants]]
name = "only"
mitigated = true
expect = ["not cut_off", "stuck == 0", "rounds_seen == 6", "reader.record.ok == 6",
          "follower.after.ok == 3", "quitter.work.ok == 1"]
"#;

#[test]
fn counted_rounds_hold_a_barrier_in_each_and_a_fault_ends_a_session_without_stalling_others() {
    let tmp = tempdir();
    let file = write(tmp.path(), "counted.toml", COUNTED);
    let (code, report, err) = run_json(tmp.path(), &[&file, "--time-scale", "1"]);
    assert_eq!(code, 0, "{err}\n{report:#}");
    let v = variant(&report, "only");
    // The quitter ran one round of three, then its fault: the follower's later rounds did not
    // wait for rounds that will never come, and they are not stuck.
    assert!(metric(v, "p99_ms") < 1000.0, "{v:#}");
}

const PERMUTED: &str = r#"
name = "permuted"
summary = "one file, three orders of the same steps"
harm = { metric = "b.update.waited_ms", label = "b waited" }
[params]
deadline = "3s"
[setup]
sql = "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0);"
[[sessions]]
name = "a"
steps = [
  { name = "begin", sql = "BEGIN" },
  { name = "update", sql = "UPDATE t SET v = v + 1 WHERE id = 1" },
  { name = "commit", sql = "COMMIT" },
]
[[sessions]]
name = "b"
steps = [
  { name = "begin", sql = "BEGIN" },
  { name = "update", sql = "UPDATE t SET v = v * 10 WHERE id = 1" },
  { name = "commit", sql = "COMMIT" },
]
[metrics]
v = "SELECT v FROM t WHERE id = 1"
[[variants]]
name = "a-then-b"
mitigated = true
order = ["a.begin", "a.update", "a.commit", "b.begin", "b.update", "b.commit"]
expect = ["v == 10", "b.update.waited_ms == 0"]
[[variants]]
name = "b-then-a"
mitigated = true
order = ["b.begin", "b.update", "b.commit", "a.begin", "a.update", "a.commit"]
expect = ["v == 1", "a.update.waited_ms == 0"]
[[variants]]
name = "b-waits-for-a"
mitigated = true
order = ["a.begin", "a.update", "b.begin", "b.update", "a.commit", "b.commit"]
expect = ["v == 10", "b.update.waited_ms > 0", "b.update.ok == 1"]
"#;

#[test]
fn a_variants_order_runs_the_steps_as_that_permutation() {
    let tmp = tempdir();
    let file = write(tmp.path(), "permuted.toml", PERMUTED);
    for _ in 0..3 {
        let (code, report, err) = run_json(tmp.path(), &[&file]);
        assert_eq!(code, 0, "{err}\n{report:#}");
    }
    // An order against a session's own order is a loop, refused at the `order` line.
    let bad = PERMUTED.replacen(
        "order = [\"a.begin\", \"a.update\", \"a.commit\", \"b.begin\"",
        "order = [\"a.update\", \"a.begin\", \"a.commit\", \"b.begin\"",
        1,
    );
    let file = write(tmp.path(), "loop.toml", &bad);
    let o = locklab(tmp.path())
        .args(["run", &file, "--no-results"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("wait on each other in a loop"), "{err}");
    assert!(
        err.contains("loop.toml:28:"),
        "names the order's line: {err}"
    );
}

const FAULTED: &str = r#"
name = "faulted"
summary = "a holder faults mid-transaction"
harm = { metric = "holder.lock_held_ms", label = "row held" }
[params]
deadline = "1500ms"
fault = "freeze"
[setup]
sql = "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);"
[[sessions]]
name = "holder"
probe = "SELECT 1 FROM t WHERE id = 1 FOR UPDATE NOWAIT"
steps = [
  { name = "begin", sql = "BEGIN" },
  { name = "lock", sql = "SELECT 1 FROM t WHERE id = 1 FOR UPDATE" },
  { name = "hang", fault = "freeze" },
]
[[variants]]
name = "frozen"
expect = ["holder.lock_held_ms >= deadline * 0.8", "holder.idle_in_tx_max_ms > 500"]
[[variants]]
name = "idle-timeout"
mitigated = true
settings = { idle_in_transaction_session_timeout = "300ms" }
expect = ["holder.lock_held_ms < deadline / 2"]
"#;

#[test]
fn a_frozen_session_holds_its_lock_until_a_timeout_and_a_killed_one_does_not() {
    let tmp = tempdir();
    let file = write(tmp.path(), "faulted.toml", FAULTED);
    let (code, report, err) = run_json(tmp.path(), &[&file, "--time-scale", "1"]);
    assert_eq!(code, 0, "{err}\n{report:#}");
    let frozen = variant(&report, "frozen");
    assert!(
        metric(frozen, "holder.lock_held_ms") >= 1200.0,
        "{frozen:#}"
    );
    let timed_out = metric(variant(&report, "idle-timeout"), "holder.lock_held_ms");
    assert!((250.0..700.0).contains(&timed_out), "{timed_out}");

    let killed = write(
        tmp.path(),
        "killed.toml",
        &FAULTED
            .replace("fault = \"freeze\" }", "fault = \"kill\" }")
            .replace(
                "expect = [\"holder.lock_held_ms >= deadline * 0.8\", \"holder.idle_in_tx_max_ms > 500\"]",
                "mitigated = true\nexpect = [\"holder.lock_held_ms < 200\"]",
            ),
    );
    let (code, report, err) = run_json(tmp.path(), &[&killed, "--time-scale", "1"]);
    assert_eq!(code, 0, "{err}\n{report:#}");
    assert!(metric(variant(&report, "frozen"), "holder.lock_held_ms") < 200.0);
}

const ENDED: &str = r#"
name = "ended"
summary = "sessions the server ends, between steps and during one"
harm = { metric = "idle.after.failed", label = "after failed" }
time_scale = 1
[params]
deadline = "3s"
[setup]
sql = "CREATE TABLE got (v int)"
[[sessions]]
name = "idle"
settings = { idle_in_transaction_session_timeout = "200ms" }
steps = [
  { name = "begin", sql = "BEGIN" },
  { name = "read", into = "x", sql = "SELECT 41 + 1" },
  { name = "keep", sql = "INSERT INTO got VALUES (${x}); COMMIT; BEGIN" },
  { name = "pause", sleep = "600ms" },
  { name = "after", sql = "SELECT 1" },
]
[[sessions]]
name = "gone"
steps = [{ name = "die", sql = "SELECT pg_terminate_backend(pg_backend_pid())" }]
[metrics]
kept = "SELECT max(v) FROM got"
[[variants]]
name = "baseline"
expect = ["idle.after.failed == 1", "idle.after.errors_25P03 == 0", "gone.die.errors_57P01 == 1", "kept == 42"]
"#;

/// What a step client's own session (not tokio-postgres's) must report as tokio-postgres did:
/// an error the server sends between steps ends the session (the next step fails as
/// connection-closed, not with that error's SQLSTATE), a FATAL during a step is that step's
/// SQLSTATE, and a capture reads the row's text.
#[test]
fn a_session_the_server_ends_fails_its_next_step_as_closed_and_a_fatal_keeps_its_code() {
    let tmp = tempdir();
    let file = write(tmp.path(), "ended.toml", ENDED);
    let (code, report, err) = run_json(tmp.path(), &[&file]);
    assert_eq!(code, 0, "{err}\n{report:#}");
    let v = variant(&report, "baseline");
    assert_eq!(metric(v, "idle.after.failed"), 1.0, "{v:#}");
    assert_eq!(metric(v, "gone.die.errors_57P01"), 1.0, "{v:#}");
    // By class, over every step: the one closed session and the one FATAL, nothing else.
    assert_eq!(
        v["requests"]["errors"],
        serde_json::json!({ "connection-closed": 1, "57P01": 1 }),
        "{v:#}"
    );
    assert_eq!(metric(v, "kept"), 42.0, "{v:#}");
}

#[test]
fn a_connection_leaked_back_to_a_pool_keeps_its_transaction_for_the_next_client() {
    let tmp = tempdir();
    // FAULTED on a pool of one: the holder's BEGIN and FOR UPDATE each check the pool's only
    // connection out and back; then the client ends, and its transaction stays in the pool
    // with the row locked, after the last client of the pool has gone, until the server's
    // idle timeout ends it.
    let leaked = FAULTED
        .replacen(
            "name = \"holder\"\n",
            "name = \"holder\"\nconnect = \"pool\"\npool_size = 1\n",
            1,
        )
        .replace("fault = \"freeze\" }", "fault = \"leak\" }");
    let file = write(tmp.path(), "leaked.toml", &leaked);
    let (code, report, err) = run_json(tmp.path(), &[&file, "--time-scale", "1"]);
    assert_eq!(code, 0, "{err}\n{report:#}");
    let held = variant(&report, "frozen");
    assert!(metric(held, "holder.lock_held_ms") >= 1200.0, "{held:#}");
    assert!(metric(held, "holder.idle_in_tx_max_ms") > 500.0, "{held:#}");
    let timed_out = metric(variant(&report, "idle-timeout"), "holder.lock_held_ms");
    assert!((250.0..700.0).contains(&timed_out), "{timed_out}");
    // The pool is what the server sees: one connection, not one per client.
    let bad = leaked.replace("fault = \"leak\" }", "fault = \"freeze\" }");
    let file = write(tmp.path(), "frozen-pool.toml", &bad);
    let o = locklab(tmp.path())
        .args(["run", &file, "--no-results"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("holds no connection between steps"), "{err}");
}

#[test]
fn a_redis_lock_recipe_overlaps_exactly_when_its_ttl_is_shorter_than_the_work() {
    let tmp = tempdir();
    let file = "examples/scenarios/redis-lock.toml";
    let (code, report, err) = run_json(tmp.path(), &[file]);
    assert_eq!(code, 0, "{err}\n{report:#}");
    assert_eq!(
        metric(variant(&report, "ttl-too-short"), "max_holders"),
        3.0
    );
    let fine = variant(&report, "ttl-covers-the-work");
    assert_eq!(metric(fine, "max_holders"), 1.0, "{fine:#}");
    assert_eq!(metric(fine, "buyer.lock.ok"), 3.0, "{fine:#}");
    // Ten-fold faster, the same verdicts: the work and the retry scale, the TTL (in ms) does not.
    let (code, report, err) = run_json(tmp.path(), &[file, "--time-scale", "0.1"]);
    assert_eq!(code, 0, "{err}\n{report:#}");
}

const REVIEWED: &str = r#"
name = "reviewed"
summary = "after a fault, steps skipped after an error, a probe that waits"
harm = { metric = "holder.lock_held_ms", label = "row held" }
[params]
deadline = "1s"
[setup]
sql = "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);"
[[sessions]]
name = "holder"
probe = "SELECT 1 FROM t WHERE id = 1 FOR UPDATE"
steps = [
  { name = "begin", sql = "BEGIN" },
  { name = "lock", sql = "SELECT 1 FROM t WHERE id = 1 FOR UPDATE" },
  { name = "hang", fault = "freeze" },
]
[[sessions]]
name = "migration"
settings = { lock_timeout = "100ms" }
steps = [
  { name = "begin", sql = "BEGIN", after = "holder.hang" },
  { name = "alter", sql = "ALTER TABLE t ADD COLUMN c int" },
  { name = "commit", sql = "COMMIT" },
]
[[variants]]
name = "only"
expect = [
  "migration.alter.errors_55P03 == 1",
  "migration.commit.stuck == 0",
  "holder.lock_held_ms >= deadline * 0.8",
]
"#;

#[test]
fn a_fault_can_be_waited_on_skipped_steps_are_not_stuck_and_a_waiting_probe_never_hangs() {
    let tmp = tempdir();
    let file = write(tmp.path(), "reviewed.toml", REVIEWED);
    let started = std::time::Instant::now();
    let (code, report, err) = run_json(tmp.path(), &[&file, "--time-scale", "1"]);
    assert_eq!(code, 0, "{err}\n{report:#}");
    let v = variant(&report, "only");
    assert_eq!(
        v["outcome"], "errors",
        "a skipped commit is not stuck: {v:#}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "the probe without NOWAIT gave up at the cut-off"
    );
}

/// A built-in step file under a name of the user's, and a way to break one of its keys: the
/// text `from` (which must be there) replaced by `to`.
fn breaker(builtin: &str) -> impl Fn(&str, &str) -> String {
    let path = format!("scenarios/{builtin}.toml");
    let text = std::fs::read_to_string(&path)
        .expect("a built-in step file")
        .replacen(&format!("name = \"{builtin}\""), "name = \"mine\"", 1);
    move |from, to| {
        assert!(text.contains(from), "{path} has `{from}`");
        text.replacen(from, to, 1)
    }
}

#[test]
fn bad_files_are_refused_with_file_line_and_column_before_anything_starts() {
    let tmp = tempdir();
    let cases = [
        (
            "unknown-key",
            ORDERED.replacen("name = \"c\"\n", "name = \"c\"\ncolour = \"red\"\n", 1),
            "unknown field `colour`",
        ),
        (
            "no-such-step",
            ORDERED.replacen("after = \"a.update\" }]", "after = \"a.updat\" }]", 1),
            "no step `a.updat`; did you mean `a.update`?",
        ),
        (
            "cycle",
            ORDERED.replacen(
                "{ name = \"begin\", sql = \"BEGIN\" },",
                "{ name = \"begin\", sql = \"BEGIN\", after = \"b.update\" },",
                1,
            ),
            "wait on each other in a loop",
        ),
        (
            "unknown-param",
            ORDERED.replacen("\"${hold}\"", "\"${holdd}\"", 1),
            "`${holdd}` names no parameter",
        ),
        (
            "unknown-metric",
            ORDERED.replacen("\"v == 10\"", "\"vv == 10\"", 1),
            "`vv` is neither a parameter nor a metric",
        ),
    ];
    // The keys a built-in step file uses, each broken in turn.
    let broken = breaker("deadlock");
    let more = [
        (
            "requires",
            broken(
                "deadline >= deadlock_timeout * 3",
                "deadline >= deadlok_timeout * 3",
            ),
            "`deadlok_timeout` is no parameter",
        ),
        (
            "one-of-default",
            broken("default = \"opposite\"", "default = \"oposite\""),
            "must be one of opposite, ordered, not oposite",
        ),
        (
            "of",
            broken("of = \"errors_40P01\"", "of = \"transfer.okk\""),
            "did you mean `transfer.ok`?",
        ),
        (
            "retry-on",
            broken("on = [\"40P01\"]", "on = [\"4OP01x\"]"),
            "retry.on lists SQLSTATEs",
        ),
        (
            "outcome-metric",
            broken("when = \"deadlocks >= 1\"", "when = \"deadlockz >= 1\""),
            "did you mean `deadlocks`?",
        ),
        (
            "patience-without-after",
            broken("sql = \"COMMIT\"", "sql = \"COMMIT\", patience = \"1s\""),
            "patience bounds the wait for `after`",
        ),
        (
            "patience-not-a-duration",
            broken("patience = \"${step}\"", "patience = \"soon\""),
            "patience: expected number",
        ),
    ];
    // And the keys read-skew uses: a choice of several texts, connect and repeat by parameter,
    // and captures.
    let broken = breaker("read-skew");
    let skewed = [
        (
            "connect-not-a-choice",
            broken("connect = \"${read.connect}\"", "connect = \"${readers}\""),
            "names a choice (one_of) whose words stand for direct, pooler or pool",
        ),
        (
            "connect-word",
            broken(
                "connect = \"pool\", after_first",
                "connect = \"pools\", after_first",
            ),
            "connect is direct, pooler or pool, not `pools`",
        ),
        (
            "fields-differ",
            broken("before_second = \"\" }", "before_secnd = \"\" }"),
            "every word gives the same fields",
        ),
        (
            "repeat",
            broken("repeat = \"${rounds}\"", "repeat = \"twice\""),
            "repeat is \"once\", \"until-deadline\", or a count of rounds",
        ),
        (
            "capture-name",
            broken("into = \"first\"", "into = \"readers\""),
            "a capture's name",
        ),
        (
            "capture-unknown",
            broken("(${first}, ${second})", "(${first}, ${secnd})"),
            "`${secnd}` names no parameter",
        ),
    ];
    for (what, text, message) in cases.into_iter().chain(more).chain(skewed) {
        let file = write(tmp.path(), &format!("{what}.toml"), &text);
        let o = locklab(tmp.path())
            .args(["run", &file, "--no-results"])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains(message), "{what}: {err}");
        assert!(
            err.contains(&format!("{file}:")),
            "{what}: names the file and line: {err}"
        );
        assert!(!err.contains("throwaway"), "{what}: nothing started: {err}");
    }
}

#[test]
fn new_writes_a_file_that_runs_and_a_directory_runs_every_file_in_it() {
    let tmp = tempdir();
    let dir = tmp.path().join("incidents");
    std::fs::create_dir(&dir).expect("dir");
    let o = locklab(tmp.path())
        .current_dir(&dir)
        .args(["new", "checkout-stall"])
        .output()
        .expect("new");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = std::fs::read_to_string(dir.join("checkout-stall.toml")).expect("written");
    assert!(text.contains("name = \"checkout-stall\""), "{text}");
    let again = locklab(tmp.path())
        .current_dir(&dir)
        .args(["new", "checkout-stall"])
        .output()
        .expect("new");
    assert_eq!(again.status.code(), Some(2), "never overwrites");
    write(&dir, "ordered.toml", ORDERED);
    let (code, report, err) = run_json(
        tmp.path(),
        &[
            &dir.to_string_lossy(),
            "--variant",
            "only",
            "--variant",
            "baseline",
        ],
    );
    assert_eq!(code, 0, "{err}\n{report:#}");
    let names: Vec<&str> = report["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["checkout-stall", "ordered"]);
}

#[test]
fn on_a_users_server_a_files_sql_leaves_nothing_outside_its_schema() {
    let tmp = tempdir();
    let env = EnvUp::start(tmp.path(), &[]);
    let (code, report, err) = run_json(tmp.path(), &[EXAMPLE, "--pg-url", &env.url]);
    assert_eq!(code, 0, "{err}\n{report:#}");
    use locklab::env::postgres::Sql as _;
    let (rt, c) = common::connect(&env.url);
    let row = rt
        .block_on(c.one(
            "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'locklab%'), \
                    (SELECT count(*) FROM pg_class WHERE relname = 'orders')",
            &[],
        ))
        .expect("look");
    let left: (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(left, (0, 0), "(schemas, tables) left on the user's server");
}

#[test]
fn a_step_file_holds_on_a_small_server_as_a_plain_role_and_through_pgbouncer() {
    let tmp = tempdir();
    let env = EnvUp::start(tmp.path(), &["--pg-setting", "max_connections=40"]);
    use locklab::env::postgres::Sql as _;
    let (rt, c) = common::connect(&env.url);
    rt.block_on(c.batch_execute(
        "CREATE ROLE app_user LOGIN PASSWORD 'app-pw'; GRANT CREATE ON DATABASE postgres TO app_user",
    ))
    .expect("a plain role");
    let plain_role: bool = rt
        .block_on(c.one(
            "SELECT NOT rolsuper AND NOT rolbypassrls FROM pg_roles WHERE rolname = 'app_user'",
            &[],
        ))
        .expect("role")
        .get(0);
    assert!(
        plain_role,
        "the run must meet the server as a non-superuser"
    );
    let plain = env.url.replace("locklab:locklab@", "app_user:app-pw@");
    let (code, report, err) = run_json(tmp.path(), &[EXAMPLE, "--pg-url", &plain]);
    assert_eq!(code, 0, "{err}\n{report:#}");
    // The built-in step files too, at more clients than their defaults: as the plain role
    // (which may not set deadlock_timeout: the server's 1 s applies), then through PgBouncer.
    for builtin in [
        ["deadlock", "pairs=12"],
        ["write-skew", "shifts=12"],
        ["read-skew", "readers=12"],
    ] {
        let [name, more] = builtin;
        for through in [
            vec!["--pg-url", plain.as_str()],
            vec!["--pg-url", &env.url, "--pooler-url", &env.pooler_url],
        ] {
            let args = [vec![name, "--param", more], through].concat();
            let (code, report, err) = run_json(tmp.path(), &args);
            assert_eq!(code, 0, "{args:?}\n{err}\n{report:#}");
        }
    }
    // Through the transaction pooler in front of it, the readers' session included.
    let pooled = write(
        tmp.path(),
        "pooled.toml",
        &std::fs::read_to_string(EXAMPLE).expect("example").replacen(
            "name = \"app\"\n",
            "name = \"app\"\nconnect = \"pooler\"\n",
            1,
        ),
    );
    let (code, report, err) = run_json(
        tmp.path(),
        &[
            &pooled,
            "--pg-url",
            &env.url,
            "--pooler-url",
            &env.pooler_url,
        ],
    );
    assert_eq!(code, 0, "{err}\n{report:#}");
    assert!(metric(variant(&report, "baseline"), "app.read.p99_ms") >= 1900.0);
    // More readers than the server has slots for this role: refused up front, saying so.
    let o = locklab(tmp.path())
        .args([
            "run",
            EXAMPLE,
            "--no-results",
            "--param",
            "readers=60",
            "--pg-url",
            &plain,
        ])
        .output()
        .expect("run");
    let said = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{said}");
    assert!(said.contains("max_connections 40"), "{said}");
}
