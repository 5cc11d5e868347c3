//! The calendar itself: meetings in a local database that a device owns, written and read the
//! same way online or offline, synced with the server when asked (or when `sync` runs).

use anyhow::{bail, Context};
use flotilla_device::Device;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What `calendar setup` stores for a device: where its server is, its token and its user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub server: String,
    pub token: String,
    pub user: String,
}

impl Settings {
    fn path(dir: &Path, device: &str) -> PathBuf {
        dir.join(format!("{device}.json"))
    }

    pub fn save(&self, dir: &Path, device: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let path = Settings::path(dir, device);
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    pub fn load(dir: &Path, device: &str) -> anyhow::Result<Settings> {
        let path = Settings::path(dir, device);
        let text = std::fs::read(&path).with_context(|| {
            format!(
                "device {device} is not set up in {} (calendar --device {device} setup --server \
                 URL --token TOKEN --user NAME; `calendar server` prints these)",
                dir.display()
            )
        })?;
        serde_json::from_slice(&text).with_context(|| format!("reading {}", path.display()))
    }
}

/// A meeting as the calendar shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub title: String,
    pub starts: String,
    pub minutes: i64,
}

/// A conflict the server recorded on one of this user's meetings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub id: String,
    pub event: String,
    pub column: String,
    pub kept: String,
    pub lost: String,
    pub policy: String,
}

impl Conflict {
    /// One line for people.
    pub fn describe(&self) -> String {
        if self.column == "(the meeting)" {
            let outcome = if self.policy == "update-wins" {
                "kept, with the edit"
            } else {
                "deleted"
            };
            format!(
                "{}: edited on one device while deleted on another: {outcome} ({})",
                self.event, self.policy
            )
        } else {
            format!(
                "{}: {} is {:?}, not {:?} ({})",
                self.event, self.column, self.kept, self.lost, self.policy
            )
        }
    }
}

pub struct Calendar {
    pub device: Device,
    pub name: String,
    pub user: String,
}

/// The first 8 characters of an id, as `list` shows it (ids made elsewhere may be any text).
pub fn short_id(id: &str) -> String {
    id.chars().take(8).collect()
}

/// `2026-12-01T10:00`: what a start looks like.
fn check_start(starts: &str) -> anyhow::Result<()> {
    let b = starts.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    let ok = b.len() == 16
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16);
    if !ok {
        bail!("{starts:?} is not a start time like 2026-12-01T10:00");
    }
    // A date and time that exist (SQLite's own calendar: datetime() of an impossible one is
    // NULL, or another day).
    let n = |r: std::ops::Range<usize>| starts[r].parse::<u32>().unwrap_or(0);
    let (year, month, day, hour, minute) = (n(0..4), n(5..7), n(8..10), n(11..13), n(14..16));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => 0,
    };
    if day == 0 || day > days || hour > 23 || minute > 59 {
        bail!("{starts:?} is not a date and time that exist");
    }
    Ok(())
}

fn no_table(e: rusqlite::Error) -> anyhow::Error {
    if e.to_string().contains("no such table") {
        anyhow::anyhow!(
            "this device has not synced yet: the calendar's tables come from the server with \
             its first sync (calendar sync)"
        )
    } else {
        e.into()
    }
}

impl Calendar {
    pub fn open(dir: &Path, name: &str) -> anyhow::Result<Calendar> {
        let s = Settings::load(dir, name)?;
        Calendar::open_at(&dir.join(format!("{name}.db")), name, &s)
    }

    pub fn open_at(db: &Path, name: &str, s: &Settings) -> anyhow::Result<Calendar> {
        let device = Device::open(db, &s.server, &s.token)
            .with_context(|| format!("opening {}", db.display()))?;
        Ok(Calendar {
            device,
            name: name.to_string(),
            user: s.user.clone(),
        })
    }

    pub fn add(&mut self, title: &str, starts: &str, minutes: i64) -> anyhow::Result<String> {
        check_start(starts)?;
        if minutes <= 0 {
            bail!("a meeting lasts at least a minute");
        }
        let user = self.user.clone();
        let id = self
            .device
            .transaction(|tx| {
                tx.query_row(
                    "INSERT INTO events (owner, title, starts, minutes) VALUES (?1, ?2, ?3, ?4) \
                     RETURNING id",
                    rusqlite::params![user, title, starts, minutes],
                    |r| r.get::<_, String>(0),
                )
            })
            .map_err(|e| match e {
                flotilla_device::DeviceError::Sqlite(e) => no_table(e),
                e => e.into(),
            })?;
        Ok(id)
    }

    /// The meetings, in time order.
    pub fn list(&self) -> anyhow::Result<Vec<Event>> {
        let conn = self.device.connection();
        let mut stmt = conn
            // Another device of the user (the browser's page, an app's SQL) may have written any
            // type into a column: shown as the calendar's types, not refused.
            .prepare(
                "SELECT CAST(id AS TEXT), coalesce(CAST(title AS TEXT), ''), \
                 coalesce(CAST(starts AS TEXT), ''), coalesce(CAST(minutes AS INTEGER), 0) \
                 FROM events ORDER BY starts, id",
            )
            .map_err(no_table)?;
        let out = stmt
            .query_map([], |r| {
                Ok(Event {
                    id: r.get(0)?,
                    title: r.get(1)?,
                    starts: r.get(2)?,
                    minutes: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(out)
    }

    /// Finds a meeting by id or by the start of its id.
    fn resolve(&self, id: &str) -> anyhow::Result<String> {
        if id.trim().is_empty() {
            bail!("which meeting? give its id, or the start of it (calendar list shows them)");
        }
        let matches: Vec<String> = self
            .list()?
            .into_iter()
            .filter(|e| e.id.starts_with(id))
            .map(|e| e.id)
            .collect();
        match matches.as_slice() {
            [one] => Ok(one.clone()),
            [] => bail!("no meeting {id} on device {}", self.name),
            _ => bail!("{id} is the start of several meetings' ids: give more of it"),
        }
    }

    pub fn edit(
        &mut self,
        id: &str,
        title: Option<&str>,
        starts: Option<&str>,
        minutes: Option<i64>,
    ) -> anyhow::Result<()> {
        let id = self.resolve(id)?;
        if let Some(s) = starts {
            check_start(s)?;
        }
        if minutes.is_some_and(|m| m <= 0) {
            bail!("a meeting lasts at least a minute");
        }
        if title.is_none() && starts.is_none() && minutes.is_none() {
            bail!("nothing to change: give --title, --starts or --minutes");
        }
        self.device.transaction(|tx| {
            if let Some(t) = title {
                tx.execute("UPDATE events SET title = ?1 WHERE id = ?2", [t, &id])?;
            }
            if let Some(s) = starts {
                tx.execute("UPDATE events SET starts = ?1 WHERE id = ?2", [s, &id])?;
            }
            if let Some(m) = minutes {
                tx.execute(
                    "UPDATE events SET minutes = ?1 WHERE id = ?2",
                    rusqlite::params![m, id],
                )?;
            }
            Ok(())
        })?;
        Ok(())
    }

    pub fn delete(&mut self, id: &str) -> anyhow::Result<()> {
        let id = self.resolve(id)?;
        self.device
            .execute("DELETE FROM events WHERE id = ?1", [&id])?;
        Ok(())
    }

    /// The conflicts on this user's meetings, as the server recorded them.
    pub fn conflicts(&self) -> anyhow::Result<Vec<Conflict>> {
        let conn = self.device.connection();
        let mut stmt = conn.prepare(
            "SELECT c.id, coalesce(e.title, c.row_key), coalesce(c.col, '(the meeting)'), \
                    coalesce(CAST(c.value AS TEXT), '(deleted)'), \
                    coalesce(CAST(CASE WHEN c.local_value IS c.value THEN c.remote_value \
                                  ELSE c.local_value END AS TEXT), '(deleted)'), \
                    c.policy \
             FROM flotilla_conflicts c LEFT JOIN events e ON c.row_key = json_array(e.id) \
             WHERE c.tbl = 'events' ORDER BY c.id",
        )?;
        let out = stmt
            .query_map([], |r| {
                Ok(Conflict {
                    id: r.get(0)?,
                    event: r.get(1)?,
                    column: r.get(2)?,
                    kept: r.get(3)?,
                    lost: r.get(4)?,
                    policy: r.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(out)
    }

    /// The calendar as text, one meeting a line.
    pub fn render(&self) -> anyhow::Result<String> {
        let events = self.list()?;
        if events.is_empty() {
            return Ok("  (no meetings)\n".into());
        }
        let mut out = String::new();
        for e in events {
            out.push_str(&format!(
                "  {}  {:>4} min  {:<32} [{}]\n",
                e.starts.replace('T', " "),
                e.minutes,
                e.title,
                short_id(&e.id)
            ));
        }
        Ok(out)
    }
}
