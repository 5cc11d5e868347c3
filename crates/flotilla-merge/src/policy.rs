//! Conflict policies: per column, how concurrent writes combine; per table, what a delete that
//! races an update does.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ColumnPolicy {
    /// The write with the latest timestamp wins (ties: the larger origin name). The default.
    #[default]
    Lww,
    /// The largest value (SQLite's order) among the concurrent writes.
    Max,
    /// The smallest value among the concurrent writes.
    Min,
    /// Every write is an increment (its new value minus its old one); concurrent increments
    /// add up. For INTEGER and REAL columns.
    Counter,
    /// The latest write is shown, the conflict stays open with both values until someone
    /// resolves it (a later write to the column).
    KeepBoth,
    /// A SQL expression over `local` (the earlier-stamped value) and `remote` (the later one).
    Custom(String),
}

impl ColumnPolicy {
    pub fn name(&self) -> &'static str {
        match self {
            ColumnPolicy::Lww => "lww",
            ColumnPolicy::Max => "max",
            ColumnPolicy::Min => "min",
            ColumnPolicy::Counter => "counter",
            ColumnPolicy::KeepBoth => "keep-both",
            ColumnPolicy::Custom(_) => "custom",
        }
    }

    /// From its name, with the expression for `custom`.
    pub fn parse(name: &str, expression: Option<&str>) -> Result<ColumnPolicy, PolicyError> {
        let policy = match name {
            "lww" => ColumnPolicy::Lww,
            "max" => ColumnPolicy::Max,
            "min" => ColumnPolicy::Min,
            "counter" => ColumnPolicy::Counter,
            "keep-both" => ColumnPolicy::KeepBoth,
            "custom" => match expression {
                Some(e) if !e.trim().is_empty() => return Ok(ColumnPolicy::Custom(e.to_string())),
                _ => return Err(PolicyError::CustomWithoutExpression),
            },
            other => return Err(PolicyError::Unknown(other.to_string())),
        };
        if expression.is_some() {
            return Err(PolicyError::ExpressionWithoutCustom(name.to_string()));
        }
        Ok(policy)
    }

    pub fn expression(&self) -> Option<&str> {
        match self {
            ColumnPolicy::Custom(e) => Some(e),
            _ => None,
        }
    }

    /// Whether this policy suits a column declared with `declared_type` (SQLite's type
    /// affinity rules: `counter` needs INTEGER or REAL affinity).
    pub fn check_column_type(&self, column: &str, declared_type: &str) -> Result<(), PolicyError> {
        if *self != ColumnPolicy::Counter {
            return Ok(());
        }
        let t = declared_type.to_ascii_uppercase();
        let integer = t.contains("INT");
        let text = t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT");
        let blob = t.contains("BLOB") || t.is_empty();
        let real = t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB");
        if integer || (!text && !blob && (real || !t.is_empty())) {
            Ok(())
        } else {
            Err(PolicyError::CounterOnNonNumber {
                column: column.to_string(),
                declared_type: declared_type.to_string(),
            })
        }
    }
}

impl fmt::Display for ColumnPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnPolicy::Custom(e) => write!(f, "custom ({e})"),
            p => f.write_str(p.name()),
        }
    }
}

/// What happens when a delete and an update of the same row are concurrent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeleteRule {
    /// The row stays deleted (the update's values are kept with the deleted row, and shown if
    /// it is inserted again). The default: a delete is usually meant.
    #[default]
    DeleteWins,
    /// The row comes back with the update applied.
    UpdateWins,
}

impl DeleteRule {
    pub fn name(self) -> &'static str {
        match self {
            DeleteRule::DeleteWins => "delete-wins",
            DeleteRule::UpdateWins => "update-wins",
        }
    }

    pub fn parse(s: &str) -> Result<DeleteRule, PolicyError> {
        match s {
            "delete-wins" => Ok(DeleteRule::DeleteWins),
            "update-wins" => Ok(DeleteRule::UpdateWins),
            other => Err(PolicyError::UnknownDeleteRule(other.to_string())),
        }
    }
}

/// A table's policies: one per column (in the table's column order), and its delete rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TablePolicies {
    pub columns: Vec<ColumnPolicy>,
    pub delete: DeleteRule,
}

impl TablePolicies {
    /// `lww` everywhere and deletes winning.
    pub fn lww(width: usize) -> TablePolicies {
        TablePolicies {
            columns: vec![ColumnPolicy::Lww; width],
            delete: DeleteRule::DeleteWins,
        }
    }

    pub fn column(&self, i: usize) -> &ColumnPolicy {
        static LWW: ColumnPolicy = ColumnPolicy::Lww;
        self.columns.get(i).unwrap_or(&LWW)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown policy {0:?}: use lww, max, min, counter, keep-both or custom")]
    Unknown(String),
    #[error("the custom policy needs an expression over `local` and `remote` (--expression)")]
    CustomWithoutExpression,
    #[error("an expression is only taken with the custom policy, not {0}")]
    ExpressionWithoutCustom(String),
    #[error("counter adds numbers, but column {column} is declared {declared_type:?}: use it on INTEGER or REAL columns")]
    CounterOnNonNumber {
        column: String,
        declared_type: String,
    },
    #[error("unknown delete rule {0:?}: use delete-wins or update-wins")]
    UnknownDeleteRule(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_check() {
        assert_eq!(ColumnPolicy::parse("max", None).unwrap(), ColumnPolicy::Max);
        assert!(matches!(
            ColumnPolicy::parse("custom", None),
            Err(PolicyError::CustomWithoutExpression)
        ));
        assert!(ColumnPolicy::parse("lww", Some("local")).is_err());
        assert!(ColumnPolicy::parse("newest", None).is_err());
        let counter = ColumnPolicy::Counter;
        assert!(counter.check_column_type("n", "INTEGER").is_ok());
        assert!(counter.check_column_type("n", "REAL").is_ok());
        assert!(counter.check_column_type("n", "NUMERIC").is_ok());
        assert!(counter.check_column_type("n", "TEXT").is_err());
        assert!(counter.check_column_type("n", "VARCHAR(20)").is_err());
        assert!(counter.check_column_type("n", "").is_err());
        assert_eq!(
            DeleteRule::parse("update-wins").unwrap(),
            DeleteRule::UpdateWins
        );
    }
}
