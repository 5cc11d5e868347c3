//! A statement's parameter values: by position (`?`, `?NNN`) or by name (`:name`, `@name`,
//! `$name`), and binding them so that every parameter gets exactly one value.

use rusqlite::types::Value;
use rusqlite::Statement;

/// The values of one statement's parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Params {
    /// In order: the first value binds parameter 1.
    Positional(Vec<Value>),
    /// By name, written with or without its prefix (`"id"` binds `:id`, `@id` or `$id`).
    Named(Vec<(String, Value)>),
}

impl Default for Params {
    fn default() -> Self {
        Params::Positional(Vec::new())
    }
}

impl From<Vec<Value>> for Params {
    fn from(values: Vec<Value>) -> Self {
        Params::Positional(values)
    }
}

/// The prefixes SQLite accepts before a parameter's name.
const PREFIXES: [char; 3] = [':', '@', '$'];

impl Params {
    /// Binds every parameter of `stmt`. `Err` says what does not fit, in the client's terms.
    pub fn bind(&self, stmt: &mut Statement<'_>) -> Result<(), String> {
        let expected = stmt.parameter_count();
        match self {
            Params::Positional(values) => {
                if expected != values.len() {
                    return Err(format!(
                        "the statement has {expected} parameters but {} values were given",
                        values.len()
                    ));
                }
                for (i, v) in values.iter().enumerate() {
                    stmt.raw_bind_parameter(i + 1, v)
                        .map_err(|e| crate::sql_error_message(&e))?;
                }
            }
            Params::Named(values) => {
                let mut used = vec![false; values.len()];
                for index in 1..=expected {
                    let Some(name) = stmt.parameter_name(index) else {
                        return Err(format!(
                            "parameter {index} of the statement is a plain ?: give \"params\" as \
                             a list, or name every parameter (:name, @name or $name)"
                        ));
                    };
                    let bare = name.trim_start_matches(PREFIXES);
                    if name.starts_with('?') {
                        return Err(format!(
                            "parameter {name} is numbered: give \"params\" as a list, or name \
                             every parameter (:name, @name or $name)"
                        ));
                    }
                    let found = values
                        .iter()
                        .position(|(given, _)| given == name || given == bare);
                    let Some(at) = found else {
                        return Err(format!("no value was given for parameter {name}"));
                    };
                    used[at] = true;
                    stmt.raw_bind_parameter(index, &values[at].1)
                        .map_err(|e| crate::sql_error_message(&e))?;
                }
                if let Some(at) = used.iter().position(|u| !u) {
                    let names: Vec<String> = (1..=expected)
                        .filter_map(|i| stmt.parameter_name(i).map(str::to_string))
                        .collect();
                    return Err(format!(
                        "the statement has no parameter named {:?} (its parameters: {})",
                        values[at].0,
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    ));
                }
            }
        }
        Ok(())
    }

    /// How many values there are.
    pub fn len(&self) -> usize {
        match self {
            Params::Positional(v) => v.len(),
            Params::Named(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn bound(sql: &str, params: Params) -> Result<Vec<Value>, String> {
        let conn = Connection::open_in_memory().unwrap();
        let mut stmt = conn.prepare(sql).unwrap();
        params.bind(&mut stmt)?;
        let mut rows = stmt.raw_query();
        let row = rows.next().unwrap().unwrap();
        Ok((0..row.as_ref().column_count())
            .map(|i| row.get::<_, Value>(i).unwrap())
            .collect())
    }

    #[test]
    fn names_bind_with_or_without_their_prefix() {
        let got = bound(
            "SELECT :a, @b, $c, :a",
            Params::Named(vec![
                ("a".into(), Value::Integer(1)),
                ("@b".into(), Value::Text("x".into())),
                ("c".into(), Value::Null),
            ]),
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                Value::Integer(1),
                Value::Text("x".into()),
                Value::Null,
                Value::Integer(1)
            ]
        );
    }

    #[test]
    fn a_missing_an_extra_or_an_unnamed_parameter_is_named_in_the_error() {
        let one = |n: &str| Params::Named(vec![(n.into(), Value::Integer(1))]);
        let e = bound("SELECT :a, :b", one("a")).unwrap_err();
        assert!(e.contains("no value was given for parameter :b"), "{e}");
        let e = bound(
            "SELECT :a",
            Params::Named(vec![
                ("a".into(), Value::Integer(1)),
                ("zz".into(), Value::Integer(2)),
            ]),
        )
        .unwrap_err();
        assert!(
            e.contains("no parameter named \"zz\"") && e.contains(":a"),
            "{e}"
        );
        let e = bound("SELECT ?", one("a")).unwrap_err();
        assert!(e.contains("plain ?"), "{e}");
        let e = bound("SELECT ?1", one("a")).unwrap_err();
        assert!(e.contains("numbered"), "{e}");
        let e = bound("SELECT ?", Params::Positional(vec![])).unwrap_err();
        assert!(e.contains("1 parameters but 0 values"), "{e}");
    }
}
