//! The shell's dot-commands (`.tables`, `.schema`, `.mode`, `.backup`, …), as in `sqlite3`.

use super::render::Mode;
use super::session::Session;
use flotilla_client::Client;
use std::io::Write;
use std::path::PathBuf;

pub const HELP: &str = "\
.backup FILE              write a backup of the database to FILE (a SQLite file)
.dump                     print a SQL dump of the database
.exit, .quit              leave the shell (Ctrl-D too)
.help                     this list
.indexes [TABLE]          the indexes (of TABLE)
.mode table|json|csv|line how rows are shown
.nodes, .status           this node, its leader and followers
.position                 the position reads wait for (your newest write or read)
.read FILE                run the statements in FILE
.restore FILE [--replace] load a backup (SQLite file or SQL dump) into the cluster
.schema [TABLE]           the CREATE statements (of TABLE)
.tables [PATTERN]         the tables and views (names LIKE PATTERN)
.timer on|off             show how long each statement takes

SQL ends with ';' and may span lines. Statements entered together run as one transaction
(start the shell with --one-by-one to run them separately); in a script, a dot-command ends
one transaction and the statements after it make the next. Reads run on the node you chose;
writes go to the leader, and later reads wait until this node has them.
NULL is shown as NULL, the text 'NULL' in quotes.";

/// What the shell does after a dot-command.
pub enum Flow {
    Continue,
    Quit,
    /// Run the statements of this file.
    Read(PathBuf),
}

/// Names of the application's objects, Flotilla's own left out.
const OWN: &str =
    "name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_flotilla\\_%' ESCAPE '\\'";

fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub async fn run(session: &mut Session, line: &str, out: &mut dyn Write) -> anyhow::Result<Flow> {
    let mut words = line.split_whitespace();
    let command = words.next().unwrap_or("");
    let args: Vec<&str> = words.collect();
    let one_arg = |what: &str| -> anyhow::Result<String> {
        match args.as_slice() {
            [a] => Ok(a.to_string()),
            _ => anyhow::bail!("usage: {command} {what}"),
        }
    };
    match command {
        ".help" => writeln!(out, "{HELP}")?,
        ".quit" | ".exit" => return Ok(Flow::Quit),
        ".tables" => {
            let like = match args.first() {
                Some(p) => format!("AND name LIKE {}", quoted(p)),
                None => String::new(),
            };
            let sql = format!(
                "SELECT name, type FROM sqlite_schema WHERE type IN ('table', 'view') AND {OWN} \
                 {like} ORDER BY name"
            );
            session.query(&sql, out).await?;
        }
        ".schema" => {
            let filter = match args.first() {
                Some(t) => format!("AND tbl_name = {}", quoted(t)),
                None => String::new(),
            };
            let sql = format!(
                "SELECT sql || ';' AS sql FROM sqlite_schema WHERE sql IS NOT NULL AND {OWN} \
                 {filter} ORDER BY rowid"
            );
            let answer = Session::call(
                &session.node,
                "/v1/query",
                &serde_json::json!({ "sql": sql, "min_position": session.position }),
            )
            .await?;
            for row in answer["rows"].as_array().cloned().unwrap_or_default() {
                writeln!(out, "{}", row[0].as_str().unwrap_or(""))?;
            }
        }
        ".indexes" | ".indices" => {
            let filter = match args.first() {
                Some(t) => format!("AND tbl_name = {}", quoted(t)),
                None => String::new(),
            };
            let sql = format!(
                "SELECT name AS 'index', tbl_name AS 'table' FROM sqlite_schema \
                 WHERE type = 'index' AND {OWN} {filter} ORDER BY tbl_name, name"
            );
            session.query(&sql, out).await?;
        }
        ".status" | ".nodes" => {
            let status = session.node.get("/v1/status").await?;
            out.write_all(crate::status::describe(&status).as_bytes())?;
        }
        ".position" => writeln!(
            out,
            "{}",
            session.position.as_deref().unwrap_or("(none yet)")
        )?,
        ".timer" => {
            session.timer = match one_arg("on|off")?.as_str() {
                "on" => true,
                "off" => false,
                _ => anyhow::bail!("usage: .timer on|off"),
            };
            // Confirmations go to stderr: stdout carries only rows (a script's CSV or JSON).
            eprintln!("timing is {}", if session.timer { "on" } else { "off" });
        }
        ".mode" => {
            let m = one_arg("table|json|csv|line")?.to_ascii_lowercase();
            session.mode = Mode::parse(&m)
                .ok_or_else(|| anyhow::anyhow!("unknown mode {m:?}: table, json, csv or line"))?;
            eprintln!("rows shown as {m}");
        }
        ".read" => return Ok(Flow::Read(PathBuf::from(one_arg("FILE")?))),
        ".dump" => {
            let resp = session
                .node
                .send(
                    session
                        .node
                        .request(reqwest::Method::GET, "/v1/backup?format=sql"),
                )
                .await?;
            out.write_all(&resp.bytes().await?)?;
        }
        ".backup" => {
            let file = PathBuf::from(one_arg("FILE")?);
            let done = crate::backup::download(&session.node, "sqlite", &file, false).await?;
            writeln!(out, "{done}")?;
        }
        ".restore" => {
            let (file, replace) = match args.as_slice() {
                [f] => (*f, false),
                [f, "--replace"] | ["--replace", f] => (*f, true),
                _ => anyhow::bail!("usage: .restore FILE [--replace]"),
            };
            // The leader takes restores: the node names it.
            let status = session.node.get("/v1/status").await?;
            let leader = status["leader"]
                .as_str()
                .map(Client::new)
                .unwrap_or_else(|| Client::new(session.node.url()));
            let done =
                crate::backup::upload(&leader, &PathBuf::from(file), replace, None, false).await?;
            writeln!(out, "{done}")?;
            // The restore is a new position: reads wait for it.
            let after = leader.get("/v1/status").await?;
            session.position = after["position"].as_str().map(str::to_string);
        }
        other => anyhow::bail!("unknown command {other}: .help lists them"),
    }
    Ok(Flow::Continue)
}
