//! The one edit that turns one text into another: what differs between their common prefix and
//! suffix. Used when a row's text changed by plain SQL: the document takes the change as an
//! edit of its own (merging with concurrent keystrokes instead of replacing them).

/// Turns `from` into `to`: delete `delete` UTF-16 units at UTF-16 offset `at`, then insert
/// `insert` there (offsets in UTF-16 units, as Yjs counts them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextEdit {
    pub at: u32,
    pub delete: u32,
    pub insert: String,
}

pub fn text_edit(from: &str, to: &str) -> Option<TextEdit> {
    if from == to {
        return None;
    }
    let (a, b): (Vec<char>, Vec<char>) = (from.chars().collect(), to.chars().collect());
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let units = |cs: &[char]| cs.iter().map(|c| c.len_utf16() as u32).sum::<u32>();
    Some(TextEdit {
        at: units(&a[..prefix]),
        delete: units(&a[prefix..a.len() - suffix]),
        insert: b[prefix..b.len() - suffix].iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edit_covers_only_what_differs() {
        assert_eq!(text_edit("same", "same"), None);
        assert_eq!(
            text_edit("hello world", "hello brave world"),
            Some(TextEdit {
                at: 6,
                delete: 0,
                insert: "brave ".into()
            })
        );
        assert_eq!(
            text_edit("abcabc", "abc"),
            Some(TextEdit {
                at: 3,
                delete: 3,
                insert: String::new()
            })
        );
        // Offsets count UTF-16 units: an emoji before the change counts two.
        assert_eq!(
            text_edit("😀a", "😀b"),
            Some(TextEdit {
                at: 2,
                delete: 1,
                insert: "b".into()
            })
        );
    }
}
