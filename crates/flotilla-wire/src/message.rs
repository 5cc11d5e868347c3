//! Replication messages, one per WebSocket binary frame. Layout: `u8 protocol version`,
//! `u8 message type`, the body, and a CRC32 of all preceding bytes. A peer speaking another
//! protocol version gets a [`DecodeError::Version`], which the node reports by name.

use crate::cursor::unseal;
use crate::{decode_record, Cursor, DecodeError, Out};
use flotilla_types::{Chain, Epoch, LogKind, LogRecord, Lsn, Position};

/// 2: `Welcome` carries the leader's incarnation.
/// 3: a `Records` message to a physical follower is a unit, applied whole: page images that a
///    later record of the message writes again are left out (see `physical_unit.rs`).
pub const PROTOCOL_VERSION: u8 = 3;

/// The largest replication message either side accepts (one transaction's record may be up to
/// the leader's `max-transaction-mib`, at most 768 MiB, and travels in one message).
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;
/// The largest message a follower sends (a hello with three texts of at most 4 KiB): what a
/// leader accepts from one, so a peer cannot make it buffer more before it even says hello.
pub const MAX_FOLLOWER_MESSAGE_BYTES: usize = 64 << 10;
const MAX_TEXT: usize = 4096;

/// Why a leader refuses a follower's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalCode {
    /// The node asked is not a leader; the message names the leader if known.
    NotLeader = 1,
    /// The follower belongs to another cluster.
    WrongCluster = 2,
    /// The follower is older than the retained log: bootstrap from a snapshot.
    NeedSnapshot = 3,
    /// The follower's history is not the leader's (its chain differs): bootstrap from a snapshot.
    Diverged = 4,
    /// The follower is ahead of the leader.
    FollowerAhead = 5,
    /// Malformed or unexpected message.
    Protocol = 6,
    /// The follower was removed by an operator.
    Removed = 7,
    /// The follower's token was revoked, or never allowed replication.
    Unauthorized = 8,
    /// Another session of the same follower id is streaming.
    Duplicate = 9,
}

impl RefusalCode {
    fn from_u8(v: u8) -> Result<RefusalCode, DecodeError> {
        Ok(match v {
            1 => RefusalCode::NotLeader,
            2 => RefusalCode::WrongCluster,
            3 => RefusalCode::NeedSnapshot,
            4 => RefusalCode::Diverged,
            5 => RefusalCode::FollowerAhead,
            6 => RefusalCode::Protocol,
            7 => RefusalCode::Removed,
            8 => RefusalCode::Unauthorized,
            9 => RefusalCode::Duplicate,
            other => {
                return Err(DecodeError::invalid(
                    "refusal",
                    format!("unknown code {other}"),
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::NotLeader => "not_leader",
            RefusalCode::WrongCluster => "wrong_cluster",
            RefusalCode::NeedSnapshot => "need_snapshot",
            RefusalCode::Diverged => "diverged",
            RefusalCode::FollowerAhead => "follower_ahead",
            RefusalCode::Protocol => "protocol",
            RefusalCode::Removed => "removed",
            RefusalCode::Unauthorized => "unauthorized",
            RefusalCode::Duplicate => "duplicate",
        }
    }
}

/// Follower → leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowerMessage {
    /// Opens a session: who the follower is and exactly which state it holds.
    Hello {
        /// `None` for a follower that has never held data (it adopts the leader's cluster id).
        cluster_id: Option<String>,
        follower_id: String,
        /// Where clients can reach the follower's API (shown in the leader's status).
        follower_url: String,
        log_kind: LogKind,
        position: Position,
        chain: Chain,
    },
    /// Progress: `received` records are buffered, `durable` survive a crash, `applied` are visible.
    Ack {
        received: Position,
        durable: Position,
        applied: Position,
        now_ms: u64,
    },
}

/// Leader → follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderMessage {
    /// The session is accepted; records after `start_after` follow.
    Welcome {
        cluster_id: String,
        leader_id: String,
        /// Random, fixed for as long as this data directory leads: a follower refuses another
        /// leader (a copy of some node's directory started as a leader) than the one it follows.
        incarnation: String,
        epoch: Epoch,
        start_after: Lsn,
        head: Position,
    },
    /// Contiguous records, one unit: a follower applies them in one local transaction with
    /// any others, never a part of them (to a physical follower, an earlier record may lack
    /// the page images a later one rewrites).
    Records(Vec<LogRecord>),
    /// Sent when idle: the last record sent on this session (the follower checks that nothing
    /// was lost) and a sign of life.
    Heartbeat {
        head: Position,
        now_ms: u64,
    },
    Refuse {
        code: RefusalCode,
        message: String,
    },
}

const T_HELLO: u8 = 1;
const T_ACK: u8 = 2;
const T_WELCOME: u8 = 10;
const T_RECORDS: u8 = 11;
const T_HEARTBEAT: u8 = 12;
const T_REFUSE: u8 = 13;

fn pos(out: &mut Out, p: Position) {
    out.u64(p.epoch.0).u64(p.lsn.0);
}

fn read_pos(c: &mut Cursor) -> Result<Position, DecodeError> {
    Ok(Position::new(c.u64()?, c.u64()?))
}

fn header(kind: u8) -> Out {
    let mut out = Out::default();
    out.u8(PROTOCOL_VERSION).u8(kind);
    out
}

fn open<'a>(bytes: &'a [u8], what: &'static str) -> Result<(u8, Cursor<'a>), DecodeError> {
    let body = unseal(bytes, what)?;
    let mut c = Cursor::new(body, what);
    let version = c.u8()?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::Version {
            what: "replication protocol",
            version,
            supported: PROTOCOL_VERSION,
        });
    }
    let kind = c.u8()?;
    Ok((kind, c))
}

impl FollowerMessage {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            FollowerMessage::Hello {
                cluster_id,
                follower_id,
                follower_url,
                log_kind,
                position,
                chain,
            } => {
                let mut out = header(T_HELLO);
                out.str16(cluster_id.as_deref().unwrap_or(""))
                    .str16(follower_id)
                    .str16(follower_url)
                    .u8(match log_kind {
                        LogKind::Physical => 1,
                        LogKind::Logical => 2,
                    });
                pos(&mut out, *position);
                out.u64(chain.0);
                out.seal()
            }
            FollowerMessage::Ack {
                received,
                durable,
                applied,
                now_ms,
            } => {
                let mut out = header(T_ACK);
                pos(&mut out, *received);
                pos(&mut out, *durable);
                pos(&mut out, *applied);
                out.u64(*now_ms);
                out.seal()
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<FollowerMessage, DecodeError> {
        let (kind, mut c) = open(bytes, "follower message")?;
        let msg = match kind {
            T_HELLO => {
                let cluster = c.str16(MAX_TEXT)?;
                let follower_id = c.str16(MAX_TEXT)?.to_string();
                let follower_url = c.str16(MAX_TEXT)?.to_string();
                let log_kind = match c.u8()? {
                    1 => LogKind::Physical,
                    2 => LogKind::Logical,
                    other => {
                        return Err(DecodeError::invalid(
                            "follower message",
                            format!("unknown log kind {other}"),
                        ))
                    }
                };
                FollowerMessage::Hello {
                    cluster_id: (!cluster.is_empty()).then(|| cluster.to_string()),
                    follower_id,
                    follower_url,
                    log_kind,
                    position: read_pos(&mut c)?,
                    chain: Chain(c.u64()?),
                }
            }
            T_ACK => FollowerMessage::Ack {
                received: read_pos(&mut c)?,
                durable: read_pos(&mut c)?,
                applied: read_pos(&mut c)?,
                now_ms: c.u64()?,
            },
            other => {
                return Err(DecodeError::invalid(
                    "follower message",
                    format!("unknown message type {other}"),
                ))
            }
        };
        c.finish()?;
        Ok(msg)
    }
}

impl LeaderMessage {
    /// Encodes a `Records` message from records already encoded by [`crate::encode_record`]
    /// (the leader ships log bytes as they are stored, without decoding them).
    pub fn encode_records<B: AsRef<[u8]>>(records: &[B]) -> Vec<u8> {
        let total: usize = records.iter().map(|r| r.as_ref().len() + 4).sum();
        let mut out = header(T_RECORDS);
        out.0.reserve(total + 8);
        out.u32(records.len() as u32);
        for r in records {
            out.bytes32(r.as_ref());
        }
        out.seal()
    }

    /// Encodes a `Records` message for a physical follower from records as stored in the log:
    /// one unit, the follower applies it whole, and page images superseded within it are left
    /// out (see `physical_unit.rs`). An undecodable record (damaged, or without pages) is an
    /// error naming it.
    pub fn encode_physical_unit<B: AsRef<[u8]>>(records: &[B]) -> Result<Vec<u8>, DecodeError> {
        let mut out = header(T_RECORDS);
        crate::physical_unit::write_unit(&mut out, records)?;
        Ok(out.seal())
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            LeaderMessage::Welcome {
                cluster_id,
                leader_id,
                incarnation,
                epoch,
                start_after,
                head,
            } => {
                let mut out = header(T_WELCOME);
                out.str16(cluster_id)
                    .str16(leader_id)
                    .str16(incarnation)
                    .u64(epoch.0)
                    .u64(start_after.0);
                pos(&mut out, *head);
                out.seal()
            }
            LeaderMessage::Records(records) => {
                let raw: Vec<Vec<u8>> = records.iter().map(crate::encode_record).collect();
                LeaderMessage::encode_records(&raw)
            }
            LeaderMessage::Heartbeat { head, now_ms } => {
                let mut out = header(T_HEARTBEAT);
                pos(&mut out, *head);
                out.u64(*now_ms);
                out.seal()
            }
            LeaderMessage::Refuse { code, message } => {
                let mut out = header(T_REFUSE);
                out.u8(*code as u8).str16(message);
                out.seal()
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<LeaderMessage, DecodeError> {
        let (kind, mut c) = open(bytes, "leader message")?;
        let msg = match kind {
            T_WELCOME => LeaderMessage::Welcome {
                cluster_id: c.str16(MAX_TEXT)?.to_string(),
                leader_id: c.str16(MAX_TEXT)?.to_string(),
                incarnation: c.str16(MAX_TEXT)?.to_string(),
                epoch: Epoch(c.u64()?),
                start_after: Lsn(c.u64()?),
                head: read_pos(&mut c)?,
            },
            T_RECORDS => {
                let count = c.u32()? as usize;
                // Each record takes at least 4 bytes of length prefix: bound the allocation by
                // what is actually present.
                let mut records = Vec::with_capacity(count.min(c.remaining() / 4));
                for _ in 0..count {
                    records.push(decode_record(c.bytes32()?)?);
                }
                LeaderMessage::Records(records)
            }
            T_HEARTBEAT => LeaderMessage::Heartbeat {
                head: read_pos(&mut c)?,
                now_ms: c.u64()?,
            },
            T_REFUSE => LeaderMessage::Refuse {
                code: RefusalCode::from_u8(c.u8()?)?,
                message: c.str16(MAX_TEXT)?.to_string(),
            },
            other => {
                return Err(DecodeError::invalid(
                    "leader message",
                    format!("unknown message type {other}"),
                ))
            }
        };
        c.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all_follower() -> Vec<FollowerMessage> {
        vec![
            FollowerMessage::Hello {
                cluster_id: Some("ab".repeat(16)),
                follower_id: "f1".into(),
                follower_url: "http://127.0.0.1:1".into(),
                log_kind: LogKind::Physical,
                position: Position::new(1, 5),
                chain: Chain(99),
            },
            FollowerMessage::Hello {
                cluster_id: None,
                follower_id: "f2".into(),
                follower_url: String::new(),
                log_kind: LogKind::Physical,
                position: Position::ZERO,
                chain: Chain::GENESIS,
            },
            FollowerMessage::Ack {
                received: Position::new(1, 9),
                durable: Position::new(1, 8),
                applied: Position::new(1, 7),
                now_ms: 5,
            },
        ]
    }

    fn all_leader() -> Vec<LeaderMessage> {
        vec![
            LeaderMessage::Welcome {
                cluster_id: "cd".repeat(16),
                leader_id: "l".into(),
                incarnation: "0123456789abcdef".into(),
                epoch: Epoch(2),
                start_after: Lsn(4),
                head: Position::new(2, 10),
            },
            LeaderMessage::Records(vec![crate::record::tests::sample(5, &[1, 2])]),
            LeaderMessage::Records(vec![]),
            LeaderMessage::Heartbeat {
                head: Position::new(2, 10),
                now_ms: 77,
            },
            LeaderMessage::Refuse {
                code: RefusalCode::WrongCluster,
                message: "other cluster".into(),
            },
        ]
    }

    #[test]
    fn round_trip() {
        for m in all_follower() {
            assert_eq!(FollowerMessage::decode(&m.encode()).unwrap(), m);
        }
        for m in all_leader() {
            assert_eq!(LeaderMessage::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn the_largest_follower_message_fits_what_a_leader_accepts() {
        let text = "x".repeat(MAX_TEXT);
        let hello = FollowerMessage::Hello {
            cluster_id: Some(text.clone()),
            follower_id: text.clone(),
            follower_url: text,
            log_kind: LogKind::Physical,
            position: Position::new(u64::MAX, u64::MAX),
            chain: Chain(u64::MAX),
        };
        let bytes = hello.encode();
        assert_eq!(FollowerMessage::decode(&bytes).unwrap(), hello);
        assert!(bytes.len() <= MAX_FOLLOWER_MESSAGE_BYTES, "{}", bytes.len());
    }

    #[test]
    fn other_protocol_version_is_named() {
        let mut bytes = all_follower()[2].encode();
        bytes[0] = 9;
        let body_len = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..body_len]);
        bytes[body_len..].copy_from_slice(&crc.to_le_bytes());
        let err = FollowerMessage::decode(&bytes).unwrap_err();
        assert!(
            err.to_string().contains("replication protocol version 9"),
            "{err}"
        );
    }

    #[test]
    fn bit_flips_are_detected() {
        for m in all_leader() {
            let bytes = m.encode();
            for i in 0..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 1;
                assert!(LeaderMessage::decode(&b).is_err(), "flip at {i} of {m:?}");
            }
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = FollowerMessage::decode(&body);
            let _ = LeaderMessage::decode(&body);
            let mut out = Out::default();
            out.u8(PROTOCOL_VERSION).raw(&body);
            let sealed = out.seal();
            let _ = FollowerMessage::decode(&sealed);
            let _ = LeaderMessage::decode(&sealed);
        }
    }
}
