//! The leader's decision when a follower says which state it holds.

use flotilla_types::{Chain, Epoch, LogRecord, Lsn, Position};
use flotilla_wire::RefusalCode;

/// What the leader knows when deciding.
#[derive(Debug, Clone)]
pub struct LeaderView {
    pub cluster_id: String,
    pub epoch: Epoch,
    pub head: Position,
    pub head_chain: Chain,
    /// Oldest LSN still in the log (`head + 1` when the log is empty).
    pub first_retained: Lsn,
}

/// The follower's claim (from its `Hello`).
#[derive(Debug, Clone)]
pub struct FollowerClaim {
    pub cluster_id: Option<String>,
    pub position: Position,
    pub chain: Chain,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Stream records after `start_after`.
    Accept {
        start_after: Lsn,
    },
    /// Check that record `lsn` (in the log) links to the follower's chain, then accept.
    CheckLink {
        lsn: Lsn,
    },
    Refuse {
        code: RefusalCode,
        message: String,
    },
}

pub fn decide(view: &LeaderView, claim: &FollowerClaim) -> Decision {
    let refuse = |code, message: String| Decision::Refuse { code, message };
    let Some(cluster) = &claim.cluster_id else {
        return refuse(
            RefusalCode::NeedSnapshot,
            "the follower holds no database yet: bootstrap from a snapshot".into(),
        );
    };
    if *cluster != view.cluster_id {
        return refuse(
            RefusalCode::WrongCluster,
            format!(
                "the follower belongs to cluster {cluster} but this leader leads cluster {}; \
                 point it at a leader of its own cluster, or give it an empty data directory",
                view.cluster_id
            ),
        );
    }
    let lsn = claim.position.lsn;
    if lsn > view.head.lsn {
        return refuse(
            RefusalCode::FollowerAhead,
            format!(
                "the follower is at {} but the leader's log ends at {}",
                claim.position, view.head
            ),
        );
    }
    if lsn == view.head.lsn {
        return if claim.chain == view.head_chain && claim.position.epoch == view.head.epoch {
            Decision::Accept { start_after: lsn }
        } else {
            refuse(
                RefusalCode::Diverged,
                format!(
                    "the follower's history at {} is not the leader's (checksum chain {} vs {})",
                    claim.position, claim.chain, view.head_chain
                ),
            )
        };
    }
    if lsn.next() < view.first_retained {
        return refuse(
            RefusalCode::NeedSnapshot,
            format!(
                "the follower is at {} but the log starts at lsn {}: bootstrap from a snapshot",
                claim.position, view.first_retained
            ),
        );
    }
    Decision::CheckLink { lsn: lsn.next() }
}

/// Completes [`Decision::CheckLink`] with record `lsn` as read from the log; `None` when it
/// cannot be read (trimmed meanwhile, or damaged): the follower then needs a snapshot.
pub fn check_link(claim: &FollowerClaim, lsn: Lsn, next: Option<&LogRecord>) -> Decision {
    match next {
        None => Decision::Refuse {
            code: RefusalCode::NeedSnapshot,
            message: format!("record {lsn} cannot be read from the leader's log"),
        },
        Some(r) if r.links_to(claim.chain) => Decision::Accept {
            start_after: claim.position.lsn,
        },
        Some(r) => Decision::Refuse {
            code: RefusalCode::Diverged,
            message: format!(
                "the follower's history at {} is not the leader's (its checksum chain {} does not \
                 lead to the leader's next record, chain {})",
                claim.position, claim.chain, r.chain
            ),
        },
    }
}

/// Completes [`Decision::CheckLink`] when the record after the follower's position is one of
/// Raft's own entries: it carries the chain of the transaction before it, which the follower
/// must hold.
pub fn check_link_consensus(claim: &FollowerClaim, chain_before: Chain) -> Decision {
    if chain_before == claim.chain {
        Decision::Accept {
            start_after: claim.position.lsn,
        }
    } else {
        Decision::Refuse {
            code: RefusalCode::Diverged,
            message: format!(
                "the follower's history at {} is not the leader's (checksum chain {} where the \
                 leader's is {chain_before})",
                claim.position, claim.chain
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> LeaderView {
        LeaderView {
            cluster_id: "c1".into(),
            epoch: Epoch(1),
            head: Position::new(1, 100),
            head_chain: Chain(7),
            first_retained: Lsn(50),
        }
    }

    fn claim(cluster: Option<&str>, lsn: u64, chain: u64) -> FollowerClaim {
        FollowerClaim {
            cluster_id: cluster.map(str::to_string),
            position: Position::new(1, lsn),
            chain: Chain(chain),
        }
    }

    fn code(d: Decision) -> RefusalCode {
        match d {
            Decision::Refuse { code, .. } => code,
            other => panic!("accepted: {other:?}"),
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(
            code(decide(&view(), &claim(None, 0, 0))),
            RefusalCode::NeedSnapshot
        );
        assert_eq!(
            code(decide(&view(), &claim(Some("c2"), 10, 0))),
            RefusalCode::WrongCluster
        );
        assert_eq!(
            code(decide(&view(), &claim(Some("c1"), 101, 0))),
            RefusalCode::FollowerAhead
        );
        assert_eq!(
            decide(&view(), &claim(Some("c1"), 100, 7)),
            Decision::Accept {
                start_after: Lsn(100)
            }
        );
        assert_eq!(
            code(decide(&view(), &claim(Some("c1"), 100, 8))),
            RefusalCode::Diverged
        );
        assert_eq!(
            code(decide(&view(), &claim(Some("c1"), 48, 1))),
            RefusalCode::NeedSnapshot
        );
        assert_eq!(
            decide(&view(), &claim(Some("c1"), 49, 1)),
            Decision::CheckLink { lsn: Lsn(50) }
        );
        let c = claim(Some("c1"), 60, 1);
        let next = |chain: Chain| LogRecord {
            epoch: Epoch(1),
            lsn: Lsn(61),
            chain,
            digest: flotilla_types::ContentDigest(5),
            commit_time_us: 0,
            origin: flotilla_types::NodeId::new("l").unwrap(),
            pages: Some(flotilla_types::PagePayload {
                page_size: 512,
                db_size_pages: 1,
                pages: vec![],
            }),
            rows: None,
            exchange: None,
        };
        let linked = Chain(1).next(Epoch(1), Lsn(61), flotilla_types::ContentDigest(5));
        assert_eq!(
            check_link(&c, Lsn(61), Some(&next(linked))),
            Decision::Accept {
                start_after: Lsn(60)
            }
        );
        assert_eq!(
            code(check_link(&c, Lsn(61), Some(&next(Chain(2))))),
            RefusalCode::Diverged
        );
        assert_eq!(
            code(check_link(&c, Lsn(61), None)),
            RefusalCode::NeedSnapshot
        );
    }

    #[test]
    fn wrong_cluster_message_names_both() {
        let Decision::Refuse { message, .. } = decide(&view(), &claim(Some("c9"), 1, 0)) else {
            panic!()
        };
        assert!(
            message.contains("c9") && message.contains("c1"),
            "{message}"
        );
    }
}
