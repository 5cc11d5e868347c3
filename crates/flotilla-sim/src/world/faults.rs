//! Faults at rest and power losses on the leader: its database files going back to an earlier
//! image, and damage in its log.

use super::disk_image::{read_files, write_files};
use super::World;
use rand::Rng;

impl World {
    /// Keeps a copy of the leader's database files as they are now (after the commit at `lsn`).
    pub(super) fn take_leader_image(&mut self, lsn: u64) -> anyhow::Result<()> {
        self.leader.image = Some((lsn, read_files(&self.leader.path)?));
        Ok(())
    }

    /// A power loss on the leader: the database files go back to an earlier image (SQLite had
    /// not flushed the WAL frames since, with `synchronous=NORMAL`), the log keeps everything
    /// it had flushed. Restarting must complete the database from the log, losing nothing
    /// acknowledged.
    pub(super) fn power_loss_leader(&mut self) -> anyhow::Result<()> {
        let Some((lsn, files)) = self.leader.image.take() else {
            return Ok(());
        };
        if lsn + 1 < self.leader.log.stats().first_lsn {
            return Ok(()); // retention removed what would complete it: not a state a power loss leaves
        }
        self.report.power_losses += 1;
        self.leader.generation += 1;
        let path = self
            .leader
            .path
            .with_file_name(format!("leader-{}.sqlite", self.leader.generation));
        write_files(&path, &files)?;
        self.log(|| {
            format!(
                "leader loses power: its database goes back to lsn {lsn}, the log is at {}",
                self.leader.log.stats().last_lsn
            )
        });
        self.leader.path = path;
        self.crash_leader()
    }

    /// Flips one byte of a random record in the oldest log segment (damage at rest): a follower
    /// that needs that record must bootstrap instead.
    pub(super) fn damage_log_at_rest(&mut self) -> anyhow::Result<()> {
        use std::os::unix::fs::FileExt;
        let seg = &self.leader.log.segments()[0];
        if seg.bytes < 1024 {
            return Ok(());
        }
        let offset = self.rng.random_range(64..seg.bytes);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg.path)?;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, offset)?;
        f.write_all_at(&[b[0] ^ 0x40], offset)?;
        self.leader.damaged = true;
        self.report.log_damage += 1;
        self.log(|| {
            format!(
                "log byte {offset} of {} damaged at rest",
                seg.path.display()
            )
        });
        Ok(())
    }
}
