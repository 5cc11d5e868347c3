//! Checking a log for damage, and cutting it at the damage on an operator's request.
//!
//! At start-up only a torn last record (a crash during an append) is cut by itself. Damage
//! followed by intact records is corruption: the node refuses to start, and the operator
//! decides. `flotilla log check` reports the damage without changing anything; `flotilla log
//! repair` truncates the damaged segment at the damage and removes every later segment, and
//! says which records that drops. On a leader the database still holds those commits (the log
//! restarts after the database's position and followers behind it bootstrap from a snapshot).

use crate::segment::{segment_firsts, segment_path, Damage, Scan, Segment};
use crate::LogError;
use std::path::{Path, PathBuf};

/// The first damage of a log and what a repair drops with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamageReport {
    pub damage: Damage,
    /// The last intact record before the damage (`damage.lsn - 1`).
    pub last_kept_lsn: u64,
    /// Segments after the damaged one (removed by a repair).
    pub later_segments: Vec<PathBuf>,
}

impl DamageReport {
    /// Whether this is only a torn last record (cut at the next start by itself).
    pub fn is_torn_tail(&self) -> bool {
        self.damage.intact_after.is_none() && self.later_segments.is_empty()
    }

    pub fn describe(&self) -> String {
        let d = &self.damage;
        let mut s = format!(
            "{} is damaged at byte {} (record {}: {}); {} bytes from there on",
            d.path.display(),
            d.offset,
            d.lsn,
            d.detail,
            d.bytes_cut
        );
        if let Some((at, lsn)) = d.intact_after {
            s.push_str(&format!(
                ", holding intact records again from lsn {lsn} at byte {at}"
            ));
        }
        if !self.later_segments.is_empty() {
            s.push_str(&format!(
                ", and {} later segment files",
                self.later_segments.len()
            ));
        }
        s.push_str(&format!(
            ". Records from lsn {} on are affected; the log is intact up to lsn {}.",
            d.lsn, self.last_kept_lsn
        ));
        s
    }
}

/// Scans every segment of the log in `dir` without changing anything; the first damage.
pub fn check(dir: &Path) -> Result<Option<DamageReport>, LogError> {
    first_damage(dir, Scan::Check)
}

/// Cuts the log in `dir` at its first damage: truncates that segment there and removes every
/// later segment. Returns what was cut (`None`: the log was intact). The node must not run.
pub fn repair(dir: &Path) -> Result<Option<DamageReport>, LogError> {
    let report = first_damage(dir, Scan::CutAnything)?;
    if let Some(r) = &report {
        if r.damage.offset == 0 {
            // The segment's header itself is damaged: the whole file goes.
            std::fs::remove_file(&r.damage.path).map_err(|e| LogError::io(&r.damage.path, e))?;
        }
        for p in &r.later_segments {
            std::fs::remove_file(p).map_err(|e| LogError::io(p, e))?;
        }
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| LogError::io(dir, e))?;
    }
    Ok(report)
}

fn first_damage(dir: &Path, mode: Scan) -> Result<Option<DamageReport>, LogError> {
    let firsts = segment_firsts(dir)?;
    let mut expected: Option<u64> = None;
    for (i, first) in firsts.iter().enumerate() {
        let path = segment_path(dir, *first);
        let later = || -> Vec<PathBuf> {
            firsts[i + 1..]
                .iter()
                .map(|f| segment_path(dir, *f))
                .collect()
        };
        let damage = match Segment::scan(path.clone(), *first, mode) {
            Ok((seg, damage)) => {
                if let Some(e) = expected.filter(|e| *e != *first) {
                    Some(Damage {
                        path: path.clone(),
                        offset: 0,
                        lsn: e,
                        detail: format!("segment starts at lsn {first}, expected {e}"),
                        intact_after: Some((0, *first)),
                        bytes_cut: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
                    })
                } else {
                    expected = Some(seg.last_lsn().map_or(seg.first_lsn, |l| l + 1));
                    damage
                }
            }
            Err(LogError::Corrupt {
                offset: 0, detail, ..
            })
            | Err(LogError::Corrupt {
                offset: 8 | 9,
                detail,
                ..
            }) => Some(Damage {
                path: path.clone(),
                offset: 0,
                lsn: expected.unwrap_or(*first),
                detail,
                intact_after: None,
                bytes_cut: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
            }),
            Err(e) => return Err(e),
        };
        if let Some(damage) = damage {
            return Ok(Some(DamageReport {
                last_kept_lsn: damage.lsn.saturating_sub(1),
                damage,
                later_segments: later(),
            }));
        }
    }
    Ok(None)
}
