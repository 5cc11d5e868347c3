//! SQLite's order of values (for `max` and `min`) and the arithmetic of `counter` columns.

use flotilla_types::SqlValue;
use std::cmp::Ordering;

fn class(v: &SqlValue) -> u8 {
    match v {
        SqlValue::Null => 0,
        SqlValue::Integer(_) | SqlValue::Real(_) => 1,
        SqlValue::Text(_) | SqlValue::TextBytes(_) => 2,
        SqlValue::Blob(_) => 3,
    }
}

fn text_bytes(v: &SqlValue) -> &[u8] {
    match v {
        SqlValue::Text(t) => t.as_bytes(),
        SqlValue::TextBytes(b) | SqlValue::Blob(b) => b,
        _ => &[],
    }
}

/// SQLite's ordering of values (NULL < numbers < text < blob; numbers by value, text by its
/// bytes as the BINARY collation does). A total order: NaN sorts below every number.
pub fn compare_values(a: &SqlValue, b: &SqlValue) -> Ordering {
    match (a, b) {
        (SqlValue::Integer(x), SqlValue::Integer(y)) => x.cmp(y),
        (SqlValue::Integer(x), SqlValue::Real(y)) => cmp_f64(*x as f64, *y),
        (SqlValue::Real(x), SqlValue::Integer(y)) => cmp_f64(*x, *y as f64),
        (SqlValue::Real(x), SqlValue::Real(y)) => cmp_f64(*x, *y),
        _ if class(a) != class(b) => class(a).cmp(&class(b)),
        _ => text_bytes(a).cmp(text_bytes(b)),
    }
}

fn cmp_f64(a: f64, b: f64) -> Ordering {
    a.partial_cmp(&b)
        .unwrap_or_else(|| a.is_nan().cmp(&b.is_nan()).reverse())
}

/// A counter's increment from `before` to `after` (NULL and non-numbers count as 0).
pub fn counter_delta(before: Option<&SqlValue>, after: Option<&SqlValue>) -> SqlValue {
    let num = |v: Option<&SqlValue>| match v {
        Some(SqlValue::Integer(i)) => SqlValue::Integer(*i),
        Some(SqlValue::Real(r)) => SqlValue::Real(*r),
        _ => SqlValue::Integer(0),
    };
    match (num(before), num(after)) {
        // Wrapping: integer increments then add up to the same sum in any order.
        (SqlValue::Integer(b), SqlValue::Integer(a)) => SqlValue::Integer(a.wrapping_sub(b)),
        (b, a) => SqlValue::Real(as_f64(&a) - as_f64(&b)),
    }
}

fn as_f64(v: &SqlValue) -> f64 {
    match v {
        SqlValue::Integer(i) => *i as f64,
        SqlValue::Real(r) => *r,
        _ => 0.0,
    }
}

/// `value + delta` for a counter column. Integers wrap on overflow (so that increments add up
/// to the same sum in any order, exactly); REAL counters agree up to floating-point rounding.
pub fn counter_add(value: &SqlValue, delta: &SqlValue) -> SqlValue {
    match (value, delta) {
        (SqlValue::Integer(a), SqlValue::Integer(d)) => SqlValue::Integer(a.wrapping_add(*d)),
        (SqlValue::Null, SqlValue::Integer(d)) => SqlValue::Integer(*d),
        (v, d) => SqlValue::Real(as_f64(v) + as_f64(d)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_order() {
        use SqlValue::*;
        let mut v = vec![
            Blob(vec![1]),
            Text("b".into()),
            Real(2.5),
            Null,
            Integer(2),
            Text("a".into()),
            Integer(3),
        ];
        v.sort_by(compare_values);
        assert_eq!(
            v,
            vec![
                Null,
                Integer(2),
                Real(2.5),
                Integer(3),
                Text("a".into()),
                Text("b".into()),
                Blob(vec![1])
            ]
        );
    }

    #[test]
    fn counters_add_their_deltas() {
        use SqlValue::*;
        let d = counter_delta(Some(&Integer(5)), Some(&Integer(7)));
        assert_eq!(d, Integer(2));
        assert_eq!(counter_add(&Integer(10), &d), Integer(12));
        assert_eq!(counter_delta(None, Some(&Integer(3))), Integer(3));
        assert_eq!(counter_delta(Some(&Integer(3)), None), Integer(-3));
        assert_eq!(counter_add(&Null, &Integer(1)), Integer(1));
        assert_eq!(
            counter_add(&Integer(i64::MAX), &Integer(1)),
            Integer(i64::MIN)
        );
    }
}
