//! Offline devices (docs/devices.md): the devices a data centre's leader syncs with, the
//! origins it gave their local databases, the shapes that say which rows each may pull and
//! push, and the checks and reads of a sync.
//!
//! The model: the server merges each device transaction with the multi-leader merge (its
//! policies, its conflicts table), stamped with the device's origin; the device takes the
//! server's rows as they come and replays what it has not pushed on top. The registry is
//! this data centre's own (`_flotilla_` tables, not exchanged): a device syncs with the data
//! centre it was added at.

pub mod protocol;
mod pull;
mod push;
mod shapes;

pub use pull::{current_rows, pull_items_of, shape_snapshot, user_origins, ShapeSnapshot};
pub use push::{DeviceRefusal, DeviceRowChange, DeviceTxn, PreparedDeviceTxn};
pub use shapes::{read_shapes, Affinity, DeviceView, Shape, ViewTable, SHAPES_TABLE};

use crate::leader_db::{CommitOutcome, LeaderDb};
use crate::leader_tokens::{StoredToken, TokenError};
use crate::StoreError;
use flotilla_types::{Epoch, NodeId, OriginName};
use rusqlite::{params, Connection, OptionalExtension};

const CREATE_REGISTRY: &str = "
CREATE TABLE IF NOT EXISTS _flotilla_devices (
    name TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    token_id TEXT NOT NULL,
    created_ms INTEGER NOT NULL
) WITHOUT ROWID;
-- Each local database a device starts is an origin of its own (a device whose file was lost
-- starts counting its transactions again under a new one).
CREATE TABLE IF NOT EXISTS _flotilla_device_origins (
    origin TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    created_ms INTEGER NOT NULL
) WITHOUT ROWID;
-- The clock of each device transaction merged: the same number pushed again with another
-- clock is another transaction (a local database restored from a backup, or copied, that
-- reuses its origin), not a replay.
CREATE TABLE IF NOT EXISTS _flotilla_device_seqs (
    origin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    hlc INTEGER NOT NULL,
    PRIMARY KEY (origin, seq)
) WITHOUT ROWID;
";

/// Fresh local databases one device may start (each takes an origin, an entry of every
/// version vector for good): a bound on what a buggy or hostile device can add.
pub const MAX_ORIGINS_PER_DEVICE: i64 = 100;

/// A device change refused (nothing committed), or one that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for DeviceError {
    fn from(e: rusqlite::Error) -> Self {
        DeviceError::Store(StoreError::from(e))
    }
}

impl From<crate::leader_pipelines::InternalTooLarge> for DeviceError {
    fn from(e: crate::leader_pipelines::InternalTooLarge) -> Self {
        DeviceError::Invalid(e.0)
    }
}

impl From<TokenError> for DeviceError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Store(s) => DeviceError::Store(s),
            other => DeviceError::Invalid(other.to_string()),
        }
    }
}

/// A device as registered, with its token's state and the origins its local databases took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDevice {
    pub name: String,
    pub user: String,
    pub token_id: String,
    pub created_ms: u64,
    pub revoked_ms: Option<u64>,
    pub origins: Vec<String>,
}

/// The clock a merged device transaction carried (`None`: not recorded).
pub(crate) fn merged_clock(
    conn: &Connection,
    origin: &str,
    seq: u64,
) -> Result<Option<u64>, StoreError> {
    if !has_registry(conn)? {
        return Ok(None);
    }
    let exists: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name = '_flotilla_device_seqs'",
        [],
        |r| r.get(0),
    )?;
    if exists == 0 {
        return Ok(None);
    }
    Ok(conn
        .prepare_cached("SELECT hlc FROM _flotilla_device_seqs WHERE origin = ?1 AND seq = ?2")?
        .query_row(params![origin, seq as i64], |r| r.get::<_, i64>(0))
        .optional()?
        .map(|h| h as u64))
}

pub(crate) fn has_registry(conn: &Connection) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name = '_flotilla_devices'",
        [],
        |r| r.get::<_, i64>(0),
    )? > 0)
}

/// Every registered device (none before the first).
pub fn read_devices(conn: &Connection) -> Result<Vec<StoredDevice>, StoreError> {
    if !has_registry(conn)? {
        return Ok(Vec::new());
    }
    let revoked: std::collections::HashMap<String, Option<u64>> = crate::read_tokens(conn)?
        .into_iter()
        .map(|t| (t.id, t.revoked_ms))
        .collect();
    let mut stmt = conn
        .prepare("SELECT name, user, token_id, created_ms FROM _flotilla_devices ORDER BY name")?;
    let rows: Vec<(String, String, String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (name, user, token_id, created_ms) in rows {
        let origins = origins_of(conn, &name)?;
        out.push(StoredDevice {
            revoked_ms: revoked.get(&token_id).copied().flatten(),
            name,
            user,
            token_id,
            created_ms: created_ms as u64,
            origins,
        });
    }
    Ok(out)
}

/// The device a token was made for: its name and user (`None`: not a device's token).
pub fn device_of_token(
    conn: &Connection,
    token_id: &str,
) -> Result<Option<(String, String)>, StoreError> {
    if !has_registry(conn)? {
        return Ok(None);
    }
    Ok(conn
        .prepare_cached("SELECT name, user FROM _flotilla_devices WHERE token_id = ?1")?
        .query_row([token_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// The origins the device's local databases were given, oldest first.
pub fn origins_of(conn: &Connection, device: &str) -> Result<Vec<String>, StoreError> {
    if !has_registry(conn)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare_cached(
        "SELECT origin FROM _flotilla_device_origins WHERE device = ?1 ORDER BY created_ms, origin",
    )?;
    let out = stmt
        .query_map([device], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(out)
}

/// The device an origin belongs to (`None`: no device's).
pub fn device_of_origin(conn: &Connection, origin: &str) -> Result<Option<String>, StoreError> {
    if !has_registry(conn)? {
        return Ok(None);
    }
    Ok(conn
        .prepare_cached("SELECT device FROM _flotilla_device_origins WHERE origin = ?1")?
        .query_row([origin], |r| r.get(0))
        .optional()?)
}

/// Whether `origin` names a device origin given by data centre `dc` (`<dc>--<n>`): such a
/// transaction counts as made in `dc` for the data centres exchanging with it.
pub fn is_device_origin_of(origin: &str, dc: &str) -> bool {
    origin
        .strip_prefix(dc)
        .and_then(|rest| rest.strip_prefix("--"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A device name: what a node id may be (letters, digits, `-`, `_`; at most 64).
pub fn check_device_name(name: &str) -> Result<(), String> {
    NodeId::new(name)
        .map(|_| ())
        .map_err(|_| format!("device name {name:?}: use 1 to 64 letters, digits, '-' or '_'"))
}

impl LeaderDb {
    /// Registers a device of `user` with its token (made here, in the same commit): the token
    /// is what the device syncs with; revoking it cuts the device off.
    #[allow(clippy::too_many_arguments)]
    pub fn add_device(
        &mut self,
        name: &str,
        user: &str,
        token: &StoredToken,
        epoch: Epoch,
        origin: &NodeId,
        now_us: u64,
    ) -> Result<CommitOutcome, DeviceError> {
        if self.multi_leader.is_none() {
            return Err(DeviceError::Invalid(
                "devices sync with a data centre's leader: start this node with --dc NAME".into(),
            ));
        }
        check_device_name(name).map_err(DeviceError::Invalid)?;
        if user.is_empty() || user.len() > 200 || user.chars().any(char::is_control) {
            return Err(DeviceError::Invalid(
                "a device's user is 1 to 200 characters, without control characters".into(),
            ));
        }
        let what = format!("add device {name}");
        let ((), out) =
            self.internal_commit::<_, DeviceError>(&what, epoch, origin, now_us, |db, _| {
                db.conn.execute_batch(CREATE_REGISTRY)?;
                let taken: Option<i64> = db
                    .conn
                    .query_row(
                        "SELECT 1 FROM _flotilla_devices WHERE name = ?1",
                        [name],
                        |r| r.get(0),
                    )
                    .optional()?;
                if taken.is_some() {
                    return Err(DeviceError::Invalid(format!(
                        "a device named {name} exists already (flotilla device list); a \
                         revoked device's name is not used again"
                    )));
                }
                db.conn.execute(
                    "INSERT INTO _flotilla_devices (name, user, token_id, created_ms) \
                     VALUES (?1, ?2, ?3, ?4)",
                    params![name, user, token.id, token.created_ms as i64],
                )?;
                crate::leader_tokens::insert_token(&db.conn, token)?;
                db.capture.statement_done(&db.conn)?;
                Ok(())
            })?;
        Ok(out)
    }

    /// Gives a fresh local database of `device` its origin, `<dc>--<n>`, in a commit of its
    /// own.
    pub fn new_device_origin(
        &mut self,
        device: &str,
        epoch: Epoch,
        origin: &NodeId,
        now_us: u64,
    ) -> Result<(OriginName, CommitOutcome), DeviceError> {
        let Some(ml) = self.multi_leader.clone() else {
            return Err(DeviceError::Invalid(
                "devices sync with a data centre's leader: start this node with --dc NAME".into(),
            ));
        };
        let what = format!("a new origin for device {device}");
        let (given, out) =
            self.internal_commit::<_, DeviceError>(&what, epoch, origin, now_us, |db, _| {
                db.conn.execute_batch(CREATE_REGISTRY)?;
                // Counted over every device of the data centre: an origin names no device, so
                // renaming or revoking one never makes two alike.
                let mine: i64 = db.conn.query_row(
                    "SELECT count(*) FROM _flotilla_device_origins WHERE device = ?1",
                    [device],
                    |r| r.get(0),
                )?;
                if mine >= MAX_ORIGINS_PER_DEVICE {
                    return Err(DeviceError::Invalid(format!(
                        "device {device} has started {mine} local databases already (each fresh \
                         one asks for an origin at its first sync): revoke it and add it again \
                         under a new name"
                    )));
                }
                let n: i64 = db.conn.query_row(
                    "SELECT count(*) + 1 FROM _flotilla_device_origins",
                    [],
                    |r| r.get(0),
                )?;
                let name = format!("{}--{n}", ml.dc);
                let given = OriginName::new(&name).map_err(|_| {
                    DeviceError::Invalid(format!(
                        "data centre {} has too long a name to give devices origins ({name} \
                         is over 64 characters)",
                        ml.dc
                    ))
                })?;
                db.conn.execute(
                    "INSERT INTO _flotilla_device_origins (origin, device, created_ms) \
                     VALUES (?1, ?2, ?3)",
                    params![name, device, (now_us / 1000) as i64],
                )?;
                db.capture.statement_done(&db.conn)?;
                Ok(given)
            })?;
        Ok((given, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_origins_belong_to_the_data_centre_that_gave_them() {
        assert!(is_device_origin_of("eu--3", "eu"));
        assert!(!is_device_origin_of("eu--", "eu"));
        assert!(!is_device_origin_of("eu--x", "eu"));
        assert!(!is_device_origin_of("eu", "eu"));
        assert!(!is_device_origin_of("eu-west--3", "eu"));
        assert!(check_device_name("laptop-1").is_ok());
        assert!(check_device_name("my laptop").is_err());
    }
}
