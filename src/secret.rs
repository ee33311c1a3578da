//! Passwords never leave: every connection string a person may see passes through [`redact`].
//!
//! One function for every form a user may give, PostgreSQL's and Redis's alike, because a URL
//! given to the wrong option still carries somebody's password:
//! - URL userinfo: `scheme://user:PW@host`, and Redis's `redis://PW@host`, `redis://:PW@host`;
//! - URL query parameters: `?password=PW`, `&sslpassword=PW`, redis-rs's `?pass=PW`;
//! - libpq key=value strings: `password=PW`, `password = PW`, `password='P W'` with escapes.
//!
//! Where a string cannot be read as either, everything from the first password keyword on is
//! hidden: showing too little beats showing a password.

use std::ops::Range;

/// What a hidden password reads as.
pub const HIDDEN: &str = "***";

/// Keys whose value is a password, in a URL query or a key=value string (case-insensitive).
const PASSWORD_KEYS: &[&str] = &["password", "sslpassword", "pass", "passwd", "pwd", "auth"];

/// The string with every password in it replaced by `***`.
pub fn redact(conn: &str) -> String {
    // Leading spaces would hide a URL's scheme.
    let lead = conn.len() - conn.trim_start().len();
    let mut spans: Vec<Range<usize>> = spans_of(&conn[lead..])
        .into_iter()
        .map(|r| r.start + lead..r.end + lead)
        .collect();
    spans.sort_by_key(|r| r.start);
    // Overlapping spans (a userinfo and a query read two ways) hide their union.
    let mut merged: Vec<Range<usize>> = Vec::new();
    for r in spans {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    let mut out = String::with_capacity(conn.len());
    let mut at = 0;
    for span in merged {
        out.push_str(&conn[at..span.start]);
        out.push_str(HIDDEN);
        at = span.end;
    }
    out.push_str(&conn[at..]);
    out
}

/// Password spans of a URL or a key=value string.
fn spans_of(conn: &str) -> Vec<Range<usize>> {
    // A URL's scheme is a word before `://`; a key=value string may have `://` in a value.
    let scheme_end = conn.find("://").filter(|&i| {
        i > 0
            && conn[..i]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    });
    match scheme_end {
        Some(i) => url_spans(conn, i),
        None => keyword_spans(conn),
    }
}

fn is_password_key(key: &str) -> bool {
    // As the drivers read it: `pass%77ord` is `password`.
    let decoded = percent_decode(key);
    PASSWORD_KEYS
        .iter()
        .any(|k| k.eq_ignore_ascii_case(&decoded))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).and_then(|b| hex(*b)),
            bytes.get(i + 2).and_then(|b| hex(*b)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Password spans of a URL whose scheme ends at `scheme_end` (the index of `://`).
fn url_spans(url: &str, scheme_end: usize) -> Vec<Range<usize>> {
    let scheme = &url[..scheme_end];
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let mut spans = Vec::new();
    // The last `@` ends the userinfo: a password with an unencoded `@`, `/` or `?` still
    // ends up hidden whole (a query value with an `@` hides a little more than needed).
    if let Some(at) = rest.rfind('@') {
        let userinfo = &rest[..at];
        match userinfo.find(':') {
            Some(colon) => spans.push(rest_start + colon + 1..rest_start + at),
            // Redis reads a userinfo without a colon as a password alone.
            None if scheme.to_ascii_lowercase().contains("redis")
                || scheme.eq_ignore_ascii_case("valkey") =>
            {
                spans.push(rest_start..rest_start + at)
            }
            None => {}
        }
    }
    // Query parameters, wherever a `?` or `&` starts one: whichever way the `@`s are read.
    for (i, c) in url.char_indices().skip(rest_start) {
        if c != '?' && c != '&' {
            continue;
        }
        let pair = &url[i + 1..];
        let end = pair.find(['&', '?']).map_or(url.len(), |e| i + 1 + e);
        if let Some((key, _)) = url[i + 1..end].split_once('=')
            && is_password_key(key)
        {
            spans.push(i + 1 + key.len() + 1..end);
        }
    }
    spans
}

/// Password spans of a libpq key=value string, read the way libpq reads it (a value that is
/// itself a URL, as `dbname` may be, is read as one too). A string that does not read as one
/// hides everything from its first password keyword on.
fn keyword_spans(conn: &str) -> Vec<Range<usize>> {
    match parse_keywords(conn) {
        Some(pairs) => pairs
            .into_iter()
            .flat_map(|(key, value)| match is_password_key(key) {
                true => vec![value],
                false => spans_of(&conn[value.clone()])
                    .into_iter()
                    .map(|r| r.start + value.start..r.end + value.start)
                    .collect(),
            })
            .collect(),
        None => {
            let lower = conn.to_ascii_lowercase();
            PASSWORD_KEYS
                .iter()
                .filter_map(|k| lower.find(k))
                .min()
                .map(|i| std::iter::once(i..conn.len()).collect())
                .unwrap_or_default()
        }
    }
}

/// `(key, value span)` pairs of a key=value string, or None where it is not one.
fn parse_keywords(conn: &str) -> Option<Vec<(&str, Range<usize>)>> {
    let bytes = conn.as_bytes();
    let skip_ws = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let mut pairs = Vec::new();
    let mut i = skip_ws(0);
    while i < bytes.len() {
        let key_start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'=' {
            i += 1;
        }
        let key = &conn[key_start..i];
        i = skip_ws(i);
        if key.is_empty() || bytes.get(i) != Some(&b'=') {
            return None;
        }
        i = skip_ws(i + 1);
        let value_start = i;
        if bytes.get(i) == Some(&b'\'') {
            i += 1;
            loop {
                match bytes.get(i) {
                    None => return None,
                    Some(b'\\') => i += 2,
                    Some(b'\'') => break,
                    Some(_) => i += 1,
                }
            }
            i += 1;
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
        }
        let value_end = i.min(bytes.len());
        pairs.push((key, value_start..value_end));
        i = skip_ws(value_end);
    }
    Some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_userinfo_in_every_scheme() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact("postgresql://u:p@ss/w?rd@h/db"),
            "postgresql://u:***@h/db"
        );
        assert_eq!(redact("mysql://u:pw@h"), "mysql://u:***@h");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn url_query_passwords() {
        assert_eq!(
            redact("postgres://u@h/db?password=secret"),
            "postgres://u@h/db?password=***"
        );
        assert_eq!(
            redact("postgres://h/db?sslmode=disable&PASSWORD=s%40x&application_name=a"),
            "postgres://h/db?sslmode=disable&PASSWORD=***&application_name=a"
        );
        assert_eq!(
            redact("postgres://u:one@h/db?sslpassword=two"),
            "postgres://u:***@h/db?sslpassword=***"
        );
    }

    #[test]
    fn redis_auth_forms() {
        assert_eq!(redact("redis://:pw@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact("redis://u:pw@h:6379"), "redis://u:***@h:6379");
        assert_eq!(redact("redis://pw@h"), "redis://***@h");
        assert_eq!(redact("rediss://pw@h"), "rediss://***@h");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        assert_eq!(
            redact("redis+unix:///run/redis.sock?db=1&pass=pw&user=u"),
            "redis+unix:///run/redis.sock?db=1&pass=***&user=u"
        );
    }

    #[test]
    fn keyword_strings_as_libpq_reads_them() {
        assert_eq!(
            redact("host=h user=u password=secret"),
            "host=h user=u password=***"
        );
        assert_eq!(
            redact("host=h password = secret dbname=d"),
            "host=h password = *** dbname=d"
        );
        assert_eq!(
            redact(r"host=h password='se cr\'et' dbname=d"),
            "host=h password=*** dbname=d"
        );
        assert_eq!(redact(r"password=a\ b host=h"), "password=*** host=h");
        assert_eq!(redact("host=h"), "host=h");
        assert_eq!(redact("host=h password=x://y@z"), "host=h password=***");
    }

    #[test]
    fn forms_found_by_review() {
        assert_eq!(
            redact("postgres://u@db.example.com/app?password=s3cret&application_name=me@laptop"),
            "postgres://u@db.example.com/app?password=***&application_name=me@laptop"
        );
        assert_eq!(redact(" postgres://u:pw@h/db"), " postgres://u:***@h/db");
        assert_eq!(
            redact("host=h dbname=postgres://u:pw@h/db"),
            "host=h dbname=postgres://u:***@h/db"
        );
        assert_eq!(
            redact("postgres://u@h/db?pass%77ord=pw"),
            "postgres://u@h/db?pass%77ord=***"
        );
        assert_eq!(redact("postgres://u:p?ss@h/db"), "postgres://u:***@h/db");
    }

    #[test]
    fn what_does_not_parse_hides_everything_after_a_password_key() {
        assert_eq!(redact("host=h password='never closed"), "host=h ***");
        assert_eq!(redact("not a conninfo"), "not a conninfo");
        assert_eq!(redact("garbage Password:x y"), "garbage ***");
    }
}
