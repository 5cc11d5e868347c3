//! The tokens a node accepts, read from its database (where the leader keeps them) and cached.
//! The cache is re-read when it is a second old, when a token it does not know is presented
//! (at most every 100 ms: a new token is usable as soon as it reached this node), and at once
//! after this node made or revoked one.

use super::token::TokenText;
use flotilla_store::StoredToken;
use flotilla_types::AccessRole;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant};

const MAX_AGE: Duration = Duration::from_secs(1);
const MISS_RELOAD_EVERY: Duration = Duration::from_millis(100);

/// Why a request was not let in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("this node requires a token: send `Authorization: Bearer <token>` (flotilla commands take --token or FLOTILLA_TOKEN)")]
    Missing,
    #[error("the token is not `flt_…` (send `Authorization: Bearer flt_…`, or `?token=flt_…` on a document's WebSocket)")]
    Malformed,
    #[error("the token is not known to this node")]
    Unknown,
    #[error("the token was revoked")]
    Revoked,
    #[error("this needs a token with the {needed} role; the token given has the {has} role")]
    Forbidden { needed: AccessRole, has: AccessRole },
}

#[derive(Default)]
struct Cache {
    tokens: HashMap<String, StoredToken>,
    loaded: Option<Instant>,
    last_miss_reload: Option<Instant>,
}

pub struct Keyring {
    db_path: PathBuf,
    cache: RwLock<Cache>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl Keyring {
    pub fn new(db_path: PathBuf) -> Keyring {
        Keyring {
            db_path,
            cache: RwLock::new(Cache::default()),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The role of the token in an `Authorization` header value, if it allows `needed`.
    pub async fn check(
        &self,
        header: Option<&str>,
        needed: AccessRole,
    ) -> Result<AccessRole, Denied> {
        let header = header.ok_or(Denied::Missing)?;
        let text = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .and_then(TokenText::parse)
            .ok_or(Denied::Malformed)?;
        if self.is_stale() {
            self.reload(false).await;
        }
        let known = self.read().tokens.contains_key(&text.id);
        if !known {
            let may_reload = self
                .read()
                .last_miss_reload
                .is_none_or(|t| t.elapsed() > MISS_RELOAD_EVERY);
            if may_reload {
                self.write().last_miss_reload = Some(Instant::now());
                self.reload(true).await;
            }
        }
        let cache = self.read();
        let token = cache.tokens.get(&text.id).ok_or(Denied::Unknown)?;
        if !text.matches(&token.hash) {
            return Err(Denied::Unknown);
        }
        if token.revoked_ms.is_some() {
            return Err(Denied::Revoked);
        }
        if !token.role.allows(needed) {
            return Err(Denied::Forbidden {
                needed,
                has: token.role,
            });
        }
        Ok(token.role)
    }

    fn is_stale(&self) -> bool {
        self.read().loaded.is_none_or(|t| t.elapsed() > MAX_AGE)
    }

    /// Forget the cache (this node just changed the tokens).
    pub fn invalidate(&self) {
        self.write().loaded = None;
    }

    /// Whether the database holds any token at all (revoked ones included).
    pub async fn has_any(&self) -> bool {
        self.reload(true).await;
        !self.read().tokens.is_empty()
    }

    /// Re-reads the tokens; unless `force`, only if nobody did while this one waited its turn
    /// (many requests may find the cache stale at once: one reload serves them all).
    async fn reload(&self, force: bool) {
        let _one = self.reloading.lock().await;
        if !force && !self.is_stale() {
            return;
        }
        let path = self.db_path.clone();
        // Only logged: either error (opening, reading) keeps the cache.
        type ReadError = Box<dyn std::error::Error + Send + Sync>;
        let read = tokio::task::spawn_blocking(move || -> Result<Vec<StoredToken>, ReadError> {
            if !path.exists() {
                return Ok(Vec::new());
            }
            let conn = flotilla_store::open_reader(&path)?;
            Ok(flotilla_store::read_tokens(&conn)?)
        })
        .await;
        match read {
            Ok(Ok(tokens)) => {
                let mut c = self.write();
                c.tokens = tokens.into_iter().map(|t| (t.id.clone(), t)).collect();
                c.loaded = Some(Instant::now());
            }
            // Keep what is cached (a follower swapping its database, a busy moment).
            Ok(Err(e)) => tracing::warn!("cannot read the API tokens: {e}"),
            Err(e) => tracing::warn!("cannot read the API tokens: {e}"),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(|p| p.into_inner())
    }
}
