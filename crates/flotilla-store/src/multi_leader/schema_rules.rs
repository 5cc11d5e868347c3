//! What a multi-leader node refuses: tables and schema changes other data centres could not
//! merge alike.

use super::*;

/// Why a table cannot be a multi-leader table (`None`: it can): it needs a declared primary
/// key that two data centres do not both count up — not the rowid, nor an INTEGER PRIMARY KEY
/// (an alias of the rowid, which SQLite numbers max + 1 in each data centre alike).
pub(super) fn key_problem(conn: &Connection, table: &str) -> Result<Option<String>, StoreError> {
    let keys: Vec<(String, String)> = conn
        .prepare_cached("SELECT name, type FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk")?
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let without_rowid: bool = conn
        .prepare_cached("SELECT wr FROM pragma_table_list WHERE name = ?1 AND schema = 'main'")?
        .query_row([table], |r| r.get::<_, i64>(0))
        .optional()?
        .is_some_and(|wr| wr != 0);
    let advice = "use a key no other data centre makes, such as id TEXT PRIMARY KEY DEFAULT \
                  (lower(hex(randomblob(16)))), or a key that includes the data centre";
    Ok(match keys.as_slice() {
        [] => Some(format!(
            "table {table} has no PRIMARY KEY: on a multi-leader node every table needs one \
             ({advice})"
        )),
        [(name, ty)] if !without_rowid && ty.eq_ignore_ascii_case("INTEGER") => Some(format!(
            "table {table}'s key {name} is an INTEGER PRIMARY KEY, which SQLite numbers the same \
             way in every data centre: two data centres would make different rows with the same \
             key ({advice})"
        )),
        _ => key_collation_problem(conn, table)?,
    })
}

/// A key column compared by another collation than BINARY (`COLLATE NOCASE`, `RTRIM`): SQLite
/// takes 'Key' and 'KEY' for one row, the merge state (which keeps keys as bytes) for two, so
/// data centres that wrote both would end with different rows.
fn key_collation_problem(conn: &Connection, table: &str) -> Result<Option<String>, StoreError> {
    let mut collated: Vec<(String, String)> = crate::key_collations::key_collations(conn, table)?
        .into_iter()
        .filter(|(_, coll)| !coll.eq_ignore_ascii_case("BINARY"))
        .collect();
    collated.sort();
    Ok(collated.into_iter().next().map(|(column, coll)| {
        format!(
            "table {table}'s key column {column} is compared with COLLATE {coll}: keys that \
             collation takes for one (such as 'Key' and 'KEY') would be different rows to the \
             merge, and data centres would end with different rows; drop the COLLATE from the \
             key (store the key already normalised, e.g. lower())"
        )
    }))
}

/// Why a table (its columns and constraints) cannot be merged between data centres: a merge
/// combines rows no single data centre wrote together, so a constraint between columns or rows
/// could refuse it after both sides accepted their halves, and stop the exchange for good.
fn table_problem(conn: &Connection, table: &str) -> Result<Option<String>, StoreError> {
    let virtual_generated: Option<String> = conn
        .prepare_cached("SELECT name FROM pragma_table_xinfo(?1) WHERE hidden = 2 LIMIT 1")?
        .query_row([table], |r| r.get(0))
        .optional()?;
    if let Some(c) = virtual_generated {
        return Ok(Some(format!(
            "column {c} of {table} is a VIRTUAL generated column, which cannot be replicated row \
             by row: declare it STORED"
        )));
    }
    let references: Option<String> = conn
        .prepare_cached("SELECT \"table\" FROM pragma_foreign_key_list(?1) LIMIT 1")?
        .query_row([table], |r| r.get(0))
        .optional()?;
    if let Some(parent) = references {
        return Ok(Some(format!(
            "{table} has a foreign key (to {parent}): on a multi-leader node a row and the row it \
             refers to can be deleted and inserted in two data centres at once, and the merge \
             could then neither keep nor refuse them alike everywhere; keep the reference as a \
             plain column"
        )));
    }
    let sql: Option<String> = conn
        .prepare_cached("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1")?
        .query_row([table], |r| r.get(0))
        .optional()?;
    if sql.is_some_and(|s| has_check(&s)) {
        return Ok(Some(format!(
            "{table} has a CHECK constraint: on a multi-leader node two data centres' writes that \
             each pass it can merge into a row that does not (two decrements of a counter), and \
             the merge could not be refused alike everywhere; check in the application instead"
        )));
    }
    Ok(None)
}

/// Whether a CREATE TABLE statement has a CHECK constraint (outside quotes and comments).
fn has_check(sql: &str) -> bool {
    let mut words = String::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                for d in chars.by_ref() {
                    if d == c {
                        break;
                    }
                }
                words.push(' ');
            }
            '[' => {
                for d in chars.by_ref() {
                    if d == ']' {
                        break;
                    }
                }
                words.push(' ');
            }
            '-' if chars.peek() == Some(&'-') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
            }
            '(' | ')' | ',' => {
                words.push(' ');
                words.push(c);
                words.push(' ');
            }
            c => words.push(c.to_ascii_lowercase()),
        }
    }
    let tokens: Vec<&str> = words.split_whitespace().collect();
    tokens.windows(2).any(|w| w[0] == "check" && w[1] == "(")
}

/// Why a schema change cannot be made on a multi-leader node (`None`: it can). What the other
/// data centres could not merge in order is refused where it is made, not left to diverge.
pub(crate) fn ddl_problem(
    conn: &Connection,
    kind: DdlKind,
    table: &str,
    sql: &str,
) -> Result<Option<String>, StoreError> {
    if local_only(table) {
        return Ok(None);
    }
    let words: Vec<String> = crate::sql_text::without_leading_comments(sql)
        .split_whitespace()
        .take(6)
        .map(str::to_ascii_lowercase)
        .collect();
    let why = match kind {
        DdlKind::CreateTable => {
            if let Some(why) = key_problem(conn, table)? {
                return Ok(Some(why));
            }
            return table_problem(conn, table);
        }
        DdlKind::CreateIndex | DdlKind::CreateView | DdlKind::DropView | DdlKind::SetPragma => {
            return Ok(None)
        }
        DdlKind::AlterTable if words.get(3).is_some_and(|w| w == "add") => {
            return table_problem(conn, table)
        }
        DdlKind::AlterTable
            if words.get(3).is_some_and(|w| w == "rename")
                && words.get(4).is_some_and(|w| w == "to") =>
        {
            "a table cannot be renamed on a multi-leader node: other data centres may still be \
             writing to it under its name"
        }
        DdlKind::AlterTable => {
            "only ADD COLUMN changes a table on a multi-leader node: a renamed \
                                or dropped column would meet rows still written the old way in \
                                other data centres"
        }
        DdlKind::DropTable => {
            "a table cannot be dropped on a multi-leader node: other data \
                               centres may still be writing to it (delete its rows instead)"
        }
        DdlKind::DropIndex => "an index cannot be dropped on a multi-leader node yet",
        DdlKind::CreateTrigger | DdlKind::DropTrigger => {
            "triggers are not allowed on a \
            multi-leader node: a trigger would run again in every data centre as the changes it \
            made are merged there"
        }
        DdlKind::CreateVirtualTable | DdlKind::DropVirtualTable => {
            "virtual tables are not replicated between data centres"
        }
    };
    Ok(Some(why.to_string()))
}
