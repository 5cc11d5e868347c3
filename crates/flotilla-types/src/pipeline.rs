//! Trigger-based replication: a pipeline's definition (what it captures, how it reshapes it,
//! where it delivers). Stored as JSON in the database it captures from, so it travels with the
//! data (a promoted physical follower knows its pipelines).

use serde::{Deserialize, Serialize};

/// Version of the stored pipeline definition (JSON in `_flotilla_pipelines`).
pub const PIPELINE_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Unique on the node: letters, digits, `-` and `_`, at most 64 characters.
    pub name: String,
    /// The source table (it must have a PRIMARY KEY: the target upserts and deletes by it).
    pub source: String,
    /// Source columns to deliver; empty: all of them. The key columns are always delivered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// A SQL expression over the source row's columns: only rows for which it is true are
    /// delivered. Evaluated in the trigger, so other rows never reach the changelog.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub predicate: Option<String>,
    /// Column renames, source name to target name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub renames: Vec<Rename>,
    /// Extra target columns computed by a SQL expression over the source row.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub computed: Vec<Computed>,
    /// The target table; default: the source table's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub into: Option<String>,
    /// `postgres://…`, `http://…` (another Flotilla), `file:PATH` (NDJSON) or `file:-` (stdout).
    pub target: String,
    /// A statement run on the target for each change, in the same target transaction, with the
    /// change bound as parameters: `$1` the operation (`upsert` or `delete`), then the target
    /// columns in delivery order as text (`$2`, `$3`, …; NULL for a delete's non-key columns).
    #[serde(default, alias = "apply-sql", skip_serializing_if = "Option::is_none")]
    pub apply_sql: Option<String>,
    /// A backlog of more changelog rows than this raises a warning in status and metrics.
    #[serde(
        default,
        alias = "backlog-warn-rows",
        skip_serializing_if = "Option::is_none"
    )]
    pub backlog_warn_rows: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Computed {
    pub name: String,
    pub expr: String,
}

/// A pipeline definition or target that is not valid, and why (shown to the user as it is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPipeline(pub String);

/// Where a pipeline delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineTarget {
    Postgres(String),
    Flotilla(String),
    File(std::path::PathBuf),
    Stdout,
}

impl PipelineTarget {
    pub fn parse(s: &str) -> Result<PipelineTarget, InvalidPipeline> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(PipelineTarget::Postgres(s.to_string()))
        } else if s.starts_with("http://") || s.starts_with("https://") {
            Ok(PipelineTarget::Flotilla(
                s.trim_end_matches('/').to_string(),
            ))
        } else if let Some(path) = s.strip_prefix("file:") {
            match path {
                "" => Err(InvalidPipeline(
                    "file: needs a path (file:PATH, or file:- for stdout)".into(),
                )),
                "-" => Ok(PipelineTarget::Stdout),
                p => Ok(PipelineTarget::File(p.into())),
            }
        } else {
            Err(InvalidPipeline(format!(
                "target {s:?} is not postgres://…, http://… (another Flotilla) or file:PATH"
            )))
        }
    }

    /// The target without a password, for status and logs.
    pub fn redacted(s: &str) -> String {
        match (s.find("://"), s.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let userinfo = &s[scheme + 3..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        format!("{}{}:***{}", &s[..scheme + 3], &userinfo[..colon], &s[at..])
                    }
                    None => s.to_string(),
                }
            }
            _ => s.to_string(),
        }
    }
}

impl PipelineSpec {
    /// Checks what can be checked without the database: the name, the target, and that the
    /// pieces are not empty or repeated.
    pub fn check(&self) -> Result<(), InvalidPipeline> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(InvalidPipeline(format!(
                "pipeline name {:?}: use 1 to 64 letters, digits, '-' or '_'",
                self.name
            )));
        }
        if self.source.trim().is_empty() {
            return Err(InvalidPipeline("the pipeline needs a source table".into()));
        }
        PipelineTarget::parse(&self.target)?;
        if let Some(p) = &self.predicate {
            if p.trim().is_empty() {
                return Err(InvalidPipeline("the row predicate (where) is empty".into()));
            }
        }
        for r in &self.renames {
            if r.from.is_empty() || r.to.is_empty() {
                return Err(InvalidPipeline(format!(
                    "rename {}={}: both names are needed",
                    r.from, r.to
                )));
            }
        }
        for c in &self.computed {
            if c.name.is_empty() || c.expr.trim().is_empty() {
                return Err(InvalidPipeline(format!(
                    "computed column {:?}: use NAME=SQL_EXPRESSION",
                    c.name
                )));
            }
        }
        if matches!(self.into.as_deref(), Some("")) {
            return Err(InvalidPipeline(
                "the target table name (into) is empty".into(),
            ));
        }
        Ok(())
    }

    /// The target table.
    pub fn target_table(&self) -> &str {
        self.into.as_deref().unwrap_or(&self.source)
    }
}

/// Parses `a=b` (for `--rename` and `--compute`): the first `=` splits.
pub fn split_assignment(s: &str) -> Option<(&str, &str)> {
    let (a, b) = s.split_once('=')?;
    let (a, b) = (a.trim(), b.trim());
    (!a.is_empty() && !b.is_empty()).then_some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_passwords_are_redacted() {
        assert_eq!(
            PipelineTarget::parse("file:-").unwrap(),
            PipelineTarget::Stdout
        );
        assert!(matches!(
            PipelineTarget::parse("postgres://u@h/db").unwrap(),
            PipelineTarget::Postgres(_)
        ));
        assert!(PipelineTarget::parse("mysql://x")
            .unwrap_err()
            .0
            .contains("postgres://"));
        assert_eq!(
            PipelineTarget::redacted("postgres://me:secret@127.0.0.1:5/db"),
            "postgres://me:***@127.0.0.1:5/db"
        );
        assert_eq!(
            PipelineTarget::redacted("postgres://me@h/db"),
            "postgres://me@h/db"
        );
    }

    #[test]
    fn names_are_checked() {
        let mut s = PipelineSpec {
            name: "orders-to-pg".into(),
            source: "orders".into(),
            columns: vec![],
            predicate: None,
            renames: vec![],
            computed: vec![],
            into: None,
            target: "file:/tmp/x".into(),
            apply_sql: None,
            backlog_warn_rows: None,
        };
        assert!(s.check().is_ok());
        s.name = "no spaces".into();
        assert!(s.check().unwrap_err().0.contains("letters"));
        assert_eq!(split_assignment("a = b+1"), Some(("a", "b+1")));
        assert_eq!(split_assignment("a="), None);
    }
}
