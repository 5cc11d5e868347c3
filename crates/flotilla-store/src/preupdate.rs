//! SQLite's pre-update hook, called through the bindings bundled with `libsqlite3-sys`.
//!
//! rusqlite's own wrapper (its `preupdate_hook` feature) makes `libsqlite3-sys` generate its
//! bindings at build time with bindgen, which needs libclang: a machine with only the Rust
//! toolchain could not build Flotilla. The bundled bindings already declare these functions;
//! `.cargo/config.toml` compiles SQLite with `SQLITE_ENABLE_PREUPDATE_HOOK` so that they exist.

use rusqlite::ffi;
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use std::ffi::{c_char, c_int, c_void, CStr};

/// One row image of the change the hook is called for: the row before (`old`) or after it.
pub(crate) struct Row {
    db: *mut ffi::sqlite3,
    rowid: i64,
    new: bool,
}

impl Row {
    pub(crate) fn rowid(&self) -> i64 {
        self.rowid
    }

    /// The number of values in the row (generated columns included).
    pub(crate) fn column_count(&self) -> usize {
        // SAFETY: `db` is the connection whose hook is running (a `Row` lives only inside it).
        unsafe { ffi::sqlite3_preupdate_count(self.db).max(0) as usize }
    }

    /// Value `i` of the row; SQLite refuses (SQLITE_RANGE) columns it does not store.
    pub(crate) fn value(&self, i: usize) -> rusqlite::Result<ValueRef<'_>> {
        let mut v: *mut ffi::sqlite3_value = std::ptr::null_mut();
        let i = c_int::try_from(i).map_err(|_| failure(ffi::SQLITE_RANGE))?;
        // SAFETY: inside the hook, as above; `v` stays valid until the hook returns, which
        // outlives the borrow of `self`.
        unsafe {
            let rc = if self.new {
                ffi::sqlite3_preupdate_new(self.db, i, &mut v)
            } else {
                ffi::sqlite3_preupdate_old(self.db, i, &mut v)
            };
            if rc != ffi::SQLITE_OK {
                return Err(failure(rc));
            }
            Ok(value_ref(v))
        }
    }

    /// Whether the change is an incremental blob write (`sqlite3_blob_write`), which SQLite
    /// reports as a delete of the row.
    pub(crate) fn is_blob_write(&self) -> bool {
        // SAFETY: inside the hook, as above.
        unsafe { ffi::sqlite3_preupdate_blobwrite(self.db) >= 0 }
    }
}

fn failure(rc: c_int) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None)
}

/// # Safety
/// `v` is a valid value, alive for `'a`.
unsafe fn value_ref<'a>(v: *mut ffi::sqlite3_value) -> ValueRef<'a> {
    // SAFETY: per the caller; text and blob pointers are read before their lengths, as SQLite
    // asks, and are valid for that many bytes.
    unsafe {
        let bytes = |p: *const u8| -> &'a [u8] {
            let n = ffi::sqlite3_value_bytes(v).max(0) as usize;
            if p.is_null() || n == 0 {
                &[]
            } else {
                std::slice::from_raw_parts(p, n)
            }
        };
        match ffi::sqlite3_value_type(v) {
            ffi::SQLITE_INTEGER => ValueRef::Integer(ffi::sqlite3_value_int64(v)),
            ffi::SQLITE_FLOAT => ValueRef::Real(ffi::sqlite3_value_double(v)),
            ffi::SQLITE_TEXT => ValueRef::Text(bytes(ffi::sqlite3_value_text(v))),
            ffi::SQLITE_BLOB => ValueRef::Blob(bytes(ffi::sqlite3_value_blob(v).cast())),
            _ => ValueRef::Null,
        }
    }
}

/// A change as the hook reports it.
pub(crate) enum PreUpdateCase {
    Insert(Row),
    Delete(Row),
    Update { old: Row, new: Row },
    Unknown,
}

/// Installs `hook` on `conn`, replacing any earlier one; it is called with the database name
/// (`main`, `temp`, …), the table name and the change. The connection owns the closure: it is
/// freed when the connection closes (or a later hook replaces it). A panic in it aborts the
/// process (it cannot unwind through SQLite), which is right for a capture that would otherwise
/// lose a change.
pub(crate) fn install<F>(conn: &Connection, hook: F) -> rusqlite::Result<()>
where
    F: FnMut(&str, &str, &PreUpdateCase) + Send + 'static,
{
    unsafe extern "C" fn call<F: FnMut(&str, &str, &PreUpdateCase)>(
        ctx: *mut c_void,
        db: *mut ffi::sqlite3,
        op: c_int,
        db_name: *const c_char,
        table: *const c_char,
        old_rowid: i64,
        new_rowid: i64,
    ) {
        let row = |rowid, new| Row { db, rowid, new };
        let case = match op {
            ffi::SQLITE_INSERT => PreUpdateCase::Insert(row(new_rowid, true)),
            ffi::SQLITE_DELETE => PreUpdateCase::Delete(row(old_rowid, false)),
            ffi::SQLITE_UPDATE => PreUpdateCase::Update {
                old: row(old_rowid, false),
                new: row(new_rowid, true),
            },
            _ => PreUpdateCase::Unknown,
        };
        // SAFETY: `ctx` is the closure installed below, alive while the connection is open;
        // SQLite passes NUL-terminated names.
        unsafe {
            let name = |p: *const c_char| CStr::from_ptr(p).to_str().unwrap_or("");
            (*ctx.cast::<F>())(name(db_name), name(table), &case);
        }
    }
    unsafe extern "C" fn free<F>(p: *mut c_void) {
        // SAFETY: `p` came from `Box::into_raw` below, and SQLite frees client data once.
        drop(unsafe { Box::from_raw(p.cast::<F>()) });
    }
    let boxed = Box::into_raw(Box::new(hook)).cast::<c_void>();
    // SAFETY: the handle is this open connection's. The hook is replaced before the client
    // data that owns the previous closure is (which frees it).
    unsafe {
        let db = conn.handle();
        ffi::sqlite3_preupdate_hook(db, Some(call::<F>), boxed);
        let rc = ffi::sqlite3_set_clientdata(
            db,
            c"flotilla_preupdate_hook".as_ptr(),
            boxed,
            Some(free::<F>),
        );
        if rc != ffi::SQLITE_OK {
            ffi::sqlite3_preupdate_hook(db, None, std::ptr::null_mut());
            free::<F>(boxed);
            return Err(failure(rc));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Every kind of change reaches the hook with its rowids and values, and the closure is
    /// freed when the connection closes.
    #[test]
    fn reports_changes_and_is_freed_with_the_connection() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t(a, b)").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        install(&conn, move |db, table, case| {
            let image = |r: &Row| {
                let vals: Vec<String> = (0..r.column_count())
                    .map(|i| format!("{:?}", r.value(i).unwrap()))
                    .collect();
                format!("{}:{}", r.rowid(), vals.join(","))
            };
            let text = match case {
                PreUpdateCase::Insert(n) => format!("insert {}", image(n)),
                PreUpdateCase::Delete(o) => format!("delete {}", image(o)),
                PreUpdateCase::Update { old, new } => {
                    format!("update {} -> {}", image(old), image(new))
                }
                PreUpdateCase::Unknown => "unknown".into(),
            };
            log.lock().unwrap().push(format!("{db}.{table} {text}"));
        })
        .unwrap();
        conn.execute_batch(
            "INSERT INTO t VALUES (1, 'x'); UPDATE t SET rowid = 5, b = x'ff'; DELETE FROM t;",
        )
        .unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                "main.t insert 1:Integer(1),Text([120])",
                "main.t update 1:Integer(1),Text([120]) -> 5:Integer(1),Blob([255])",
                "main.t delete 5:Integer(1),Blob([255])",
            ]
        );
        assert_eq!(Arc::strong_count(&seen), 2);
        drop(conn);
        assert_eq!(
            Arc::strong_count(&seen),
            1,
            "the closure outlived its connection"
        );
    }
}
