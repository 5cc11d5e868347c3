//! Data-centre leaders in one process (`--dc` databases): their transactions as another data
//! centre receives them, and merging another's.

use flotilla_store::*;
use flotilla_types::{Chain, Epoch, ExchangeStamp, Lsn, NodeId, OriginName, Position, RowPayload};
use rusqlite::Connection;
use std::path::PathBuf;

pub struct Dc {
    pub name: OriginName,
    pub db: LeaderDb,
    pub path: PathBuf,
    pub node: NodeId,
    pub now_us: u64,
    /// Its transactions, as another data centre receives them.
    pub out: Vec<(Lsn, ExchangeStamp, RowPayload, Chain)>,
}

impl Dc {
    pub fn open(dir: &std::path::Path, name: &str) -> Dc {
        Dc::open_with(dir, name, &DbSettings::default())
    }

    pub fn open_with(dir: &std::path::Path, name: &str, settings: &DbSettings) -> Dc {
        let path = dir.join(format!("{name}.db"));
        let (mut db, _) = LeaderDb::open(&path, settings, || "ab".repeat(16)).unwrap();
        let node = NodeId::new(&format!("{name}-1")).unwrap();
        db.uncaptured(Lsn(0), &node).unwrap();
        let dc = OriginName::new(name).unwrap();
        let enabled = db
            .enable_multi_leader(&dc, "test", 60_000, Epoch(1), &node, 1_000_000)
            .unwrap();
        assert!(enabled.is_some(), "the first enable makes the tables");
        Dc {
            name: dc,
            db,
            path,
            node,
            now_us: 2_000_000,
            out: Vec::new(),
        }
    }

    pub fn tick(&mut self) -> u64 {
        self.now_us += 1_000;
        self.now_us
    }

    pub fn sql(&mut self, statements: &[&str]) {
        let req = super::req(&statements.iter().map(|s| (*s, vec![])).collect::<Vec<_>>());
        let now = self.tick();
        let out = self
            .db
            .commit_batch(&[req], Epoch(1), &self.node, now)
            .unwrap();
        match &out.outcomes[0] {
            RequestOutcome::Committed(_) => {}
            other => panic!("{statements:?}: {other:?}"),
        }
        self.keep(&out);
    }

    pub fn keep(&mut self, out: &CommitOutcome) {
        let rec = out.record.as_ref().expect("committed");
        let stamp = rec.exchange.clone().expect("stamped");
        let rows = stamp
            .original
            .clone()
            .unwrap_or_else(|| flotilla_wire::decode_rows(&out.encoded_rows).unwrap());
        self.out.push((rec.lsn, stamp, rows, rec.chain));
    }

    /// Merges everything `from` committed that this one has not merged yet.
    pub fn pull(&mut self, from: &Dc) -> usize {
        let mut conflicts = 0;
        let start = self.db.link_position(&from.name).unwrap();
        for (lsn, stamp, rows, chain) in from.out.iter().filter(|(l, _, _, _)| *l > start) {
            let now = self.tick();
            let at = (
                Position {
                    epoch: Epoch(1),
                    lsn: *lsn,
                },
                *chain,
            );
            match self
                .db
                .commit_merge(stamp, rows, &from.name, at, Epoch(1), &self.node, now)
                .unwrap()
            {
                MergeOutcome::Committed {
                    conflicts: n,
                    commit,
                    ..
                } => {
                    conflicts += n;
                    let rec = commit.record.as_ref().unwrap();
                    assert_eq!(
                        rec.exchange.as_ref().unwrap().origin,
                        from.name,
                        "passed on with its origin"
                    );
                }
                MergeOutcome::Duplicate => {}
            }
        }
        conflicts
    }

    /// Merges what `from` committed that this one has not merged yet, up to the first that
    /// waits for a transaction of a third data centre not merged here yet: how many merged.
    pub fn pull_ready(&mut self, from: &Dc) -> usize {
        let start = self.db.link_position(&from.name).unwrap();
        let mut merged = 0;
        for (lsn, stamp, rows, chain) in from.out.iter().filter(|(l, _, _, _)| *l > start) {
            let now = self.tick();
            let at = (
                Position {
                    epoch: Epoch(1),
                    lsn: *lsn,
                },
                *chain,
            );
            match self
                .db
                .commit_merge(stamp, rows, &from.name, at, Epoch(1), &self.node, now)
            {
                Ok(_) => merged += 1,
                Err(MergeApplyError::NotReady(_)) => break,
                Err(e) => panic!("{} merging {}/{}: {e}", self.name, from.name, lsn.0),
            }
        }
        merged
    }

    pub fn read(&self, sql: &str) -> Vec<String> {
        let c = Connection::open(&self.path).unwrap();
        let mut s = c.prepare(sql).unwrap();
        let n = s.column_count();
        s.query_map([], |r| {
            Ok((0..n)
                .map(|i| match r.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Text(t) => {
                        format!("Text({:?})", String::from_utf8_lossy(t))
                    }
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>()
                .join("|"))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }
}
