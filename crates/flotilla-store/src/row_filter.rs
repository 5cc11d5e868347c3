//! A logical follower's publication filter: which tables, which columns of them, and which rows
//! (an SQL predicate per table) it keeps.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RowFilter {
    /// Only these tables (all when empty).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub tables: BTreeSet<String>,
    /// Only these columns of a table (all of it when absent). Must include its primary key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub columns: BTreeMap<String, Vec<String>>,
    /// Only rows of a table for which this SQL expression over its columns is true.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub predicates: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterParseError(pub String);

impl RowFilter {
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty() && self.columns.is_empty() && self.predicates.is_empty()
    }

    /// Builds a filter from the command-line forms: `--tables t1,t2`, `--columns t1:a,b` and
    /// `--where "t1: <predicate>"` (the last two repeatable).
    pub fn parse(
        tables: &[String],
        columns: &[String],
        predicates: &[String],
    ) -> Result<RowFilter, FilterParseError> {
        let mut f = RowFilter::default();
        for list in tables {
            for t in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                f.tables.insert(t.to_string());
            }
        }
        for spec in columns {
            let (table, cols) = spec.split_once(':').ok_or_else(|| {
                FilterParseError(format!(
                    "--columns {spec:?}: expected TABLE:COLUMN,COLUMN (for example orders:id,total)"
                ))
            })?;
            let cols: Vec<String> = cols
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            if table.trim().is_empty() || cols.is_empty() {
                return Err(FilterParseError(format!(
                    "--columns {spec:?}: name a table and at least one column"
                )));
            }
            if f.columns.insert(table.trim().to_string(), cols).is_some() {
                return Err(FilterParseError(format!(
                    "--columns names table {:?} twice",
                    table.trim()
                )));
            }
        }
        for spec in predicates {
            let (table, pred) = spec.split_once(':').ok_or_else(|| {
                FilterParseError(format!(
                    "--where {spec:?}: expected \"TABLE: PREDICATE\" (for example \"orders: total > 100\")"
                ))
            })?;
            if table.trim().is_empty() || pred.trim().is_empty() {
                return Err(FilterParseError(format!(
                    "--where {spec:?}: name a table and a predicate"
                )));
            }
            if f.predicates
                .insert(table.trim().to_string(), pred.trim().to_string())
                .is_some()
            {
                return Err(FilterParseError(format!(
                    "--where names table {:?} twice",
                    table.trim()
                )));
            }
        }
        // A table with a column list or predicate is kept even if --tables does not list it
        // (unless --tables is given and leaves it out: that is a contradiction).
        if !f.tables.is_empty() {
            for t in f.columns.keys().chain(f.predicates.keys()) {
                if !f.tables.contains(t) {
                    return Err(FilterParseError(format!(
                        "table {t:?} has a column list or predicate but --tables leaves it out"
                    )));
                }
            }
        }
        Ok(f)
    }

    /// Whether rows of `table` are kept at all.
    pub fn keeps_table(&self, table: &str) -> bool {
        self.tables.is_empty() || self.tables.contains(table)
    }
}

impl fmt::Display for RowFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("everything");
        }
        let mut parts = Vec::new();
        if !self.tables.is_empty() {
            parts.push(format!(
                "tables {}",
                self.tables.iter().cloned().collect::<Vec<_>>().join(",")
            ));
        }
        for (t, c) in &self.columns {
            parts.push(format!("columns {t}:{}", c.join(",")));
        }
        for (t, p) in &self.predicates {
            parts.push(format!("where {t}: {p}"));
        }
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_the_command_line_forms() {
        let f = RowFilter::parse(
            &s(&["a, b", "c"]),
            &s(&["a:id,x"]),
            &s(&["b: total > 100 AND note LIKE 'x:%'"]),
        )
        .unwrap();
        assert_eq!(f.tables.len(), 3);
        assert_eq!(f.columns["a"], s(&["id", "x"]));
        assert_eq!(f.predicates["b"], "total > 100 AND note LIKE 'x:%'");
        assert!(f.keeps_table("c") && !f.keeps_table("d"));
    }

    #[test]
    fn names_what_is_wrong() {
        for (t, c, w, needle) in [
            (vec![], vec!["a"], vec![], "expected TABLE:COLUMN"),
            (
                vec![],
                vec![],
                vec!["a > 1"],
                "expected \"TABLE: PREDICATE\"",
            ),
            (vec!["b"], vec!["a:x"], vec![], "--tables leaves it out"),
            (vec![], vec![], vec!["a: x", "a: y"], "twice"),
            (vec![], vec!["a:"], vec![], "at least one column"),
        ] {
            let err = RowFilter::parse(&s(&t), &s(&c), &s(&w)).unwrap_err();
            assert!(err.0.contains(needle), "{err}");
        }
    }
}
