//! Cutting typed or scripted text into whole SQL statements, the way SQLite itself decides a
//! statement is complete (`sqlite3_complete`: semicolons in strings, comments and trigger
//! bodies do not end one). The shell cuts what is typed; a restore cuts a SQL dump, so that
//! each statement is prepared on its own (linear in the dump's size) and a failure names it.

use std::ffi::CString;

/// Whether `sql` ends with a complete statement.
pub fn is_complete(sql: &str) -> bool {
    let Ok(c) = CString::new(sql) else {
        // A NUL byte: nothing SQLite would parse further; let the node say what is wrong.
        return true;
    };
    // SAFETY: `c` is a NUL-terminated string that outlives the call; sqlite3_complete only
    // reads it and keeps no pointer.
    unsafe { rusqlite::ffi::sqlite3_complete(c.as_ptr()) != 0 }
}

/// The complete statements at the start of `text`, and what is left (an unfinished
/// statement, or only blanks). Each statement keeps its own text without the final `;`.
pub fn split(text: &str) -> (Vec<String>, String) {
    let mut statements = Vec::new();
    let rest = for_each_statement(text, |s, _| {
        statements.push(s.to_string());
        Ok::<(), ()>(())
    })
    .unwrap_or_default();
    (statements, rest.to_string())
}

/// Calls `f` with each complete statement of `text` (without its `;`, comment-only ones left
/// out) and its line number; returns what is left after the last one. Stops at `f`'s first
/// error.
pub fn for_each_statement<'a, E>(
    text: &'a str,
    mut f: impl FnMut(&'a str, usize) -> Result<(), E>,
) -> Result<&'a str, E> {
    let mut start = 0;
    let mut line = 1;
    let mut counted_to = 0;
    // A candidate is checked from its own start only: each check reads one statement's text.
    for (i, _) in text.match_indices(';') {
        let candidate = &text[start..=i];
        if is_complete(candidate) {
            let body = candidate[..candidate.len() - 1].trim();
            if !only_comments(body) {
                // The line of its first keyword (comments before it are not the statement).
                let keyword_at =
                    without_leading_comments(body).as_ptr() as usize - text.as_ptr() as usize;
                line += text[counted_to..keyword_at].matches('\n').count();
                counted_to = keyword_at;
                f(body, line)?;
            }
            start = i + 1;
        }
    }
    Ok(&text[start..])
}

/// Whether `sql` holds nothing but blanks and comments.
pub fn only_comments(sql: &str) -> bool {
    without_leading_comments(sql).is_empty()
}

/// The statement from its first keyword on (blanks and comments before it left out).
pub fn without_leading_comments(sql: &str) -> &str {
    let mut rest = sql.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else {
            return rest;
        }
    }
}

/// The first keyword of a statement, upper-cased (after blanks and comments).
pub fn first_keyword(sql: &str) -> String {
    without_leading_comments(sql)
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_end_where_sqlite_says() {
        let (s, rest) = split("SELECT 1; SELECT ';' ; INSERT INTO t VALUES (1); SELECT");
        assert_eq!(
            s,
            vec!["SELECT 1", "SELECT ';'", "INSERT INTO t VALUES (1)"]
        );
        assert_eq!(rest.trim(), "SELECT");
        let trigger = "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET x = 1; END;";
        assert_eq!(split(trigger).0, vec![trigger.trim_end_matches(';')]);
        let (s, rest) = split("CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET x = 1;");
        assert!(s.is_empty() && !rest.is_empty());
        assert_eq!(split("-- just a comment;\n; ;").0, Vec::<String>::new());
        assert_eq!(
            split("SELECT 1 -- it; ends\n;").0,
            vec!["SELECT 1 -- it; ends"]
        );
    }

    #[test]
    fn statements_are_numbered_by_the_line_of_their_first_keyword() {
        let mut seen = Vec::new();
        let rest = for_each_statement(
            "CREATE TABLE a(x);\n\n-- a comment\nINSERT INTO a VALUES (1);\nSELECT 1; SELECT\n 2;\nSELE",
            |s, line| {
                seen.push((without_leading_comments(s).to_string(), line));
                Ok::<(), ()>(())
            },
        )
        .unwrap();
        assert_eq!(
            seen,
            vec![
                ("CREATE TABLE a(x)".to_string(), 1),
                ("INSERT INTO a VALUES (1)".to_string(), 4),
                ("SELECT 1".to_string(), 5),
                ("SELECT\n 2".to_string(), 5),
            ]
        );
        assert_eq!(rest.trim(), "SELE");
    }

    #[test]
    fn the_first_keyword_skips_comments() {
        assert_eq!(first_keyword("  /* x */ -- y\n select 1"), "SELECT");
        assert_eq!(first_keyword("with x as (select 1) insert"), "WITH");
    }
}
