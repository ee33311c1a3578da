//! Statements in the one form a transaction-mode pooler passes through intact.
//!
//! tokio-postgres's `query`/`execute` prepare a *named* statement, then bind it in a second
//! round trip. Through PgBouncer in transaction mode the two round trips can land on different
//! server connections (`prepared statement "s12" does not exist`). Everything locklab runs goes
//! through [`Sql`] instead: parse, bind and execute of the unnamed statement in one message
//! batch, with the parameter types stated here rather than asked of the server. The raw
//! methods are refused by clippy.toml, so a new scenario cannot slip back.
//!
//! Session settings likewise never travel as startup options (PgBouncer refuses them) or as
//! session-level `SET` (the next client of the server connection would inherit them): each
//! transaction opens with [`begin`], which sets them with `SET LOCAL`.

use std::future::Future;

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Error, Row};

/// A statement parameter and the PostgreSQL type it is sent as.
pub trait Param: ToSql + Sync {
    fn pg_type(&self) -> Type;
}

macro_rules! param {
    ($($t:ty => $pg:expr),* $(,)?) => {
        $(impl Param for $t {
            fn pg_type(&self) -> Type {
                $pg
            }
        })*
    };
}

param! {
    bool => Type::BOOL,
    i32 => Type::INT4,
    i64 => Type::INT8,
    f64 => Type::FLOAT8,
    &str => Type::TEXT,
    String => Type::TEXT,
    Vec<String> => Type::TEXT_ARRAY,
}

fn typed<'a>(params: &'a [&'a dyn Param]) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    params
        .iter()
        .map(|p| (*p as &(dyn ToSql + Sync), p.pg_type()))
        .collect()
}

/// Pooler-safe statements (see the module doc). Implemented for `Client`; pooled connections
/// reach it through `Deref`.
pub trait Sql {
    fn rows<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [&'a dyn Param],
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send + 'a;

    fn exec<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [&'a dyn Param],
    ) -> impl Future<Output = Result<u64, Error>> + Send + 'a;

    /// Exactly one row (an error otherwise).
    fn one<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [&'a dyn Param],
    ) -> impl Future<Output = Result<Row, Error>> + Send + 'a;

    /// At most one row.
    fn opt<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [&'a dyn Param],
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send + 'a;
}

impl Sql for Client {
    async fn rows(&self, sql: &str, params: &[&dyn Param]) -> Result<Vec<Row>, Error> {
        self.query_typed(sql, &typed(params)).await
    }

    async fn exec(&self, sql: &str, params: &[&dyn Param]) -> Result<u64, Error> {
        self.execute_typed(sql, &typed(params)).await
    }

    async fn one(&self, sql: &str, params: &[&dyn Param]) -> Result<Row, Error> {
        self.query_typed_one(sql, &typed(params)).await
    }

    async fn opt(&self, sql: &str, params: &[&dyn Param]) -> Result<Option<Row>, Error> {
        self.query_typed_opt(sql, &typed(params)).await
    }
}

/// A `LIKE` pattern for the names starting with `prefix` (`_` is a wildcard in LIKE).
pub fn like_prefix(prefix: &str) -> String {
    format!("{}%", prefix.replace('_', "\\_"))
}

/// Ends, from `admin`'s session, every other session whose application_name starts with
/// `prefix`: the one way locklab clears its own sessions, on a session it already holds (with
/// the server's slots full, a new one would be refused).
pub async fn end_sessions_named(admin: &Client, prefix: &str) -> Result<u64, Error> {
    admin
        .exec(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name LIKE $1 AND pid <> pg_backend_pid()",
            &[&like_prefix(prefix)],
        )
        .await
}

/// `BEGIN` followed by a `SET LOCAL` for each session setting, as one simple-protocol message:
/// the settings hold for this transaction only, on whichever server connection runs it.
pub fn begin(settings: &[(String, String)]) -> String {
    begin_with("BEGIN", settings)
}

/// [`begin`] with a transaction-opening statement of its own, e.g.
/// `BEGIN ISOLATION LEVEL SERIALIZABLE`.
pub fn begin_with(head: &str, settings: &[(String, String)]) -> String {
    let mut sql = String::from(head);
    for (name, value) in settings {
        sql.push_str(&format!("; SET LOCAL {} = {}", ident(name), literal(value)));
    }
    sql
}

/// A setting's name as an identifier (quoted when it needs to be, e.g. `app.custom`).
fn ident(name: &str) -> String {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
    match plain && !name.is_empty() {
        true => name.to_string(),
        false => format!("\"{}\"", name.replace('"', "\"\"")),
    }
}

/// A string literal, whatever the session's standard_conforming_strings: quotes doubled, and
/// a value with a backslash as an escape string with backslashes doubled.
pub(crate) fn literal(value: &str) -> String {
    let quoted = value.replace('\'', "''");
    match value.contains('\\') {
        true => format!("E'{}'", quoted.replace('\\', "\\\\")),
        false => format!("'{quoted}'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_sets_each_setting_for_the_transaction_only() {
        assert_eq!(begin(&[]), "BEGIN");
        assert_eq!(
            begin(&[
                ("lock_timeout".into(), "500ms".into()),
                ("search_path".into(), "it's".into()),
                ("Odd Name".into(), "1".into()),
            ]),
            "BEGIN; SET LOCAL lock_timeout = '500ms'; SET LOCAL search_path = 'it''s'; \
             SET LOCAL \"Odd Name\" = '1'"
        );
    }
}
