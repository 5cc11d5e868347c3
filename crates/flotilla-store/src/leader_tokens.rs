//! API tokens, kept in the database itself (`_flotilla_tokens`) so that every node of the
//! cluster knows them: a physical follower has the table in its pages, a logical follower
//! receives its rows (the one internal table the logical log carries). Only a hash of each
//! token's secret is stored; the secret is shown once, when the token is made.

use crate::leader_pipelines::InternalTooLarge;
use crate::{CommitOutcome, LeaderDb, StoreError};
use flotilla_types::{AccessRole, Epoch, NodeId};
use rusqlite::{Connection, OptionalExtension};

pub const TOKENS_TABLE: &str = "_flotilla_tokens";

pub(crate) const CREATE_TOKENS: &str = "CREATE TABLE IF NOT EXISTS _flotilla_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    hash BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
) WITHOUT ROWID";

/// A token as stored: its public id, a label, its role and the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub id: String,
    pub name: String,
    pub role: AccessRole,
    pub hash: Vec<u8>,
    pub created_ms: u64,
    /// When it was revoked; a revoked token authenticates nobody.
    pub revoked_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("{0}")]
    Invalid(String),
    #[error("no token {0:?}")]
    Unknown(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<InternalTooLarge> for TokenError {
    fn from(e: InternalTooLarge) -> Self {
        TokenError::Invalid(e.0)
    }
}

impl From<rusqlite::Error> for TokenError {
    fn from(e: rusqlite::Error) -> Self {
        TokenError::Store(StoreError::Sqlite(e))
    }
}

/// Every token in the database (none if the table does not exist yet), oldest first.
pub fn read_tokens(conn: &Connection) -> Result<Vec<StoredToken>, StoreError> {
    let exists: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [TOKENS_TABLE],
            |r| r.get(0),
        )
        .optional()?;
    if exists.is_none() {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT id, name, role, hash, created_ms, revoked_ms FROM {TOKENS_TABLE} \
         ORDER BY created_ms, id"
    ))?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Vec<u8>>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, Option<i64>>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, name, role, hash, created_ms, revoked_ms) = row?;
        let role = role
            .parse()
            .map_err(|e: flotilla_types::AccessRoleParseError| {
                StoreError::Mismatch(format!("token {id}: {e}"))
            })?;
        out.push(StoredToken {
            id,
            name,
            role,
            hash,
            created_ms: created_ms as u64,
            revoked_ms: revoked_ms.map(|v| v as u64),
        });
    }
    Ok(out)
}

/// Stores a new token in the open transaction (making the table the first time); a token id
/// taken already is refused.
pub(crate) fn insert_token(
    conn: &rusqlite::Connection,
    token: &StoredToken,
) -> Result<(), TokenError> {
    conn.execute_batch(CREATE_TOKENS)?;
    let taken: Option<i64> = conn
        .query_row(
            &format!("SELECT 1 FROM {TOKENS_TABLE} WHERE id = ?1"),
            [&token.id],
            |r| r.get(0),
        )
        .optional()?;
    if taken.is_some() {
        return Err(TokenError::Invalid(format!(
            "a token with id {} exists already",
            token.id
        )));
    }
    conn.execute(
        &format!(
            "INSERT INTO {TOKENS_TABLE} (id, name, role, hash, created_ms, revoked_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, NULL)"
        ),
        rusqlite::params![
            token.id,
            token.name,
            token.role.as_str(),
            token.hash,
            token.created_ms as i64
        ],
    )?;
    Ok(())
}

impl LeaderDb {
    /// Stores a new token, in a commit of its own (replicated like any other).
    pub fn add_token(
        &mut self,
        token: &StoredToken,
        epoch: Epoch,
        origin: &NodeId,
        now_us: u64,
    ) -> Result<CommitOutcome, TokenError> {
        let what = format!("add token {}", token.id);
        let ((), out) =
            self.internal_commit::<_, TokenError>(&what, epoch, origin, now_us, |db, _| {
                insert_token(&db.conn, token)?;
                db.capture.statement_done(&db.conn)?;
                Ok(())
            })?;
        Ok(out)
    }

    /// Revokes a token from now on (`now_ms`). Revoking a revoked token changes nothing.
    pub fn revoke_token(
        &mut self,
        id: &str,
        now_ms: u64,
        epoch: Epoch,
        origin: &NodeId,
        now_us: u64,
    ) -> Result<CommitOutcome, TokenError> {
        let what = format!("revoke token {id}");
        let ((), out) =
            self.internal_commit::<_, TokenError>(&what, epoch, origin, now_us, |db, _| {
                db.conn.execute_batch(CREATE_TOKENS)?;
                let n = db.conn.execute(
                    &format!(
                        "UPDATE {TOKENS_TABLE} SET revoked_ms = coalesce(revoked_ms, ?2) \
                         WHERE id = ?1"
                    ),
                    rusqlite::params![id, now_ms as i64],
                )?;
                if n == 0 {
                    return Err(TokenError::Unknown(id.to_string()));
                }
                db.capture.statement_done(&db.conn)?;
                Ok(())
            })?;
        Ok(out)
    }
}
