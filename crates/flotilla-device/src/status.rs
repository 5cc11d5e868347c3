//! What a device tells its application about syncing.

use std::fmt;

/// A device's sync status (see its `Display`: what an app shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Switched offline by the application.
    pub offline: bool,
    /// Local transactions the server has not acknowledged.
    pub pending: usize,
    /// Local transactions the server refused (see `Device::rejected`).
    pub rejected: usize,
    /// The origin the server gave this local database (`None` before its first sync).
    pub origin: Option<String>,
    /// The server position the device has its shape through.
    pub cursor: Option<String>,
    /// When a sync last succeeded (Unix milliseconds).
    pub last_sync_ms: Option<u64>,
    /// Why the last sync failed, if it did (cleared by the next that succeeds).
    pub last_error: Option<String>,
    /// The last sync failed because the server could not be reached.
    pub unreachable: bool,
}

impl Status {
    /// The short state: `offline` (switched off, or the server unreachable), `failing` (the
    /// server refused the last sync, or this device could not apply it: `last_error` says
    /// why), `syncing` (changes pending) or `synced`.
    pub fn state(&self) -> &'static str {
        if self.offline || self.unreachable {
            "offline"
        } else if self.last_error.is_some() {
            "failing"
        } else if self.pending > 0 || self.cursor.is_none() {
            "syncing"
        } else {
            "synced"
        }
    }
}

fn changes(n: usize) -> String {
    if n == 1 {
        "1 change pending".into()
    } else {
        format!("{n} changes pending")
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.state() {
            "offline" => {
                write!(f, "offline ({})", changes(self.pending))?;
                if let (false, Some(e)) = (self.offline, &self.last_error) {
                    write!(f, ": {e}")?;
                }
            }
            "failing" => write!(
                f,
                "sync failing ({}): {}",
                changes(self.pending),
                self.last_error.as_deref().unwrap_or("")
            )?,
            "syncing" => write!(f, "syncing ({})", changes(self.pending))?,
            _ => write!(
                f,
                "synced through {}",
                self.cursor.as_deref().unwrap_or("nothing yet")
            )?,
        }
        if let Some(ms) = self.last_sync_ms {
            write!(f, ", last synced {}", utc(ms))?;
        }
        if self.rejected > 0 {
            write!(f, ", {} rejected by the server", self.rejected)?;
        }
        Ok(())
    }
}

/// A Unix time in milliseconds as `2026-12-03 16:27:26 UTC`.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// What one `Device::sync` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Local transactions the server acknowledged.
    pub pushed: usize,
    /// Items pulled (rows, deletes, schema changes, conflicts).
    pub pulled: usize,
    /// Local transactions the server refused.
    pub rejected: usize,
    /// The whole shape was pulled again.
    pub reset: bool,
    pub bytes_sent: usize,
    pub bytes_received: usize,
}

/// A local transaction the server refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub seq: u64,
    pub code: String,
    pub reason: String,
    /// Its row changes (JSON), as they were.
    pub changes: String,
    pub at_ms: u64,
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_read_as_utc() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(1_796_314_846_879), "2026-12-03 16:20:46 UTC");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }
}
