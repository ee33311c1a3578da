//! SQL text: a script split into its statements, so a failing one can be named.

/// SQL split into its statements at semicolons outside quotes, dollar quotes and comments, so
/// a failing one can be named.
pub(super) fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' | '"' => {
                // E'…' strings take backslash escapes: `E'it\'s'` is one string.
                let escapes = c == '\''
                    && i > 0
                    && matches!(chars[i - 1], 'E' | 'e')
                    && (i < 2 || !chars[i - 2].is_alphanumeric());
                cur.push(c);
                i += 1;
                while i < chars.len() {
                    cur.push(chars[i]);
                    i += 1;
                    if escapes && chars[i - 1] == '\\' && i < chars.len() {
                        cur.push(chars[i]);
                        i += 1;
                        continue;
                    }
                    if chars[i - 1] == c {
                        break;
                    }
                }
                continue;
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                // A block comment (they nest).
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        cur.push_str("/*");
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        cur.push_str("*/");
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        cur.push(chars[i]);
                        i += 1;
                    }
                }
                continue;
            }
            '-' if chars.get(i + 1) == Some(&'-') => {
                while i < chars.len() && chars[i] != '\n' {
                    cur.push(chars[i]);
                    i += 1;
                }
                continue;
            }
            '$' => {
                // A dollar quote: $tag$ … $tag$.
                let tag_end = chars[i + 1..].iter().position(|c| *c == '$');
                if let Some(len) = tag_end
                    && chars[i + 1..i + 1 + len]
                        .iter()
                        .all(|c| c.is_alphanumeric() || *c == '_')
                {
                    let tag: String = chars[i..i + len + 2].iter().collect();
                    let rest: String = chars[i + len + 2..].iter().collect();
                    let close = rest.find(&tag).map_or(rest.len(), |p| p + tag.len());
                    cur.push_str(&tag);
                    cur.push_str(&rest[..close]);
                    i += len + 2 + rest[..close].chars().count();
                    continue;
                }
                cur.push(c);
            }
            ';' => {
                if !cur.trim().is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                cur.clear();
            }
            _ => cur.push(c),
        }
        i += 1;
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_quotes_and_dollar_quotes() {
        let sql = "CREATE TABLE t (a text DEFAULT ';'); -- a ; comment\n\
                   CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n\
                   INSERT INTO t VALUES ('x;y'); /* a; /* nested; */ b; */ \
                   INSERT INTO t VALUES (E'it\\'s;x')";
        let s = statements(sql);
        assert_eq!(s.len(), 4, "{s:?}");
        assert!(s[1].contains("$$ SELECT 1; $$"), "{s:?}");
        assert!(s[2].contains("'x;y'"), "{s:?}");
        assert!(
            s[3].contains("nested; */ b; */") && s[3].contains("E'it\\'s;x'"),
            "{s:?}"
        );
    }
}
