//! The envelope of a consensus message between voters: a format version, the cluster it belongs
//! to, then raft-rs's protobuf message. A node refuses a message of another cluster or of a
//! format it does not know, with a reason (the transport logs it and counts it).
//!
//! Layout, version 1: `[1u8][cluster id length u8][cluster id bytes][raft Message, protobuf]`.

use protobuf::Message as _;
use raft::eraftpb::Message;

pub const ENVELOPE_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("empty consensus message")]
    Empty,
    #[error(
        "consensus message format version {0}; this node speaks version {ENVELOPE_VERSION} \
         (upgrade the older node)"
    )]
    Version(u8),
    #[error("truncated consensus message")]
    Truncated,
    #[error("a message of cluster {theirs:?}, not of this cluster ({ours:?})")]
    OtherCluster { theirs: String, ours: String },
    #[error("undecodable raft message: {0}")]
    Raft(String),
}

pub fn encode(cluster_id: &str, message: &Message) -> Vec<u8> {
    let id = cluster_id.as_bytes();
    // Cluster ids are short (a UUID): longer ones are a host bug, cut rather than panic.
    let id = &id[..id.len().min(255)];
    let mut out = Vec::with_capacity(2 + id.len() + message.compute_size() as usize);
    out.push(ENVELOPE_VERSION);
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    // Writing a message into a Vec cannot fail.
    let _ = message.write_to_vec(&mut out);
    out
}

pub fn decode(cluster_id: &str, bytes: &[u8]) -> Result<Message, EnvelopeError> {
    let (&version, rest) = bytes.split_first().ok_or(EnvelopeError::Empty)?;
    if version != ENVELOPE_VERSION {
        return Err(EnvelopeError::Version(version));
    }
    let (&len, rest) = rest.split_first().ok_or(EnvelopeError::Truncated)?;
    let len = len as usize;
    if rest.len() < len {
        return Err(EnvelopeError::Truncated);
    }
    let (id, body) = rest.split_at(len);
    let ours = &cluster_id.as_bytes()[..cluster_id.len().min(255)];
    if id != ours {
        return Err(EnvelopeError::OtherCluster {
            theirs: String::from_utf8_lossy(id).into_owned(),
            ours: cluster_id.to_string(),
        });
    }
    Message::parse_from_bytes(body).map_err(|e| EnvelopeError::Raft(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::MessageType;

    #[test]
    fn round_trips_and_refuses_strangers() {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = 1;
        m.to = 2;
        m.term = 7;
        let bytes = encode("c1", &m);
        assert_eq!(decode("c1", &bytes).unwrap(), m);
        assert!(matches!(
            decode("c2", &bytes),
            Err(EnvelopeError::OtherCluster { .. })
        ));
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(decode("c1", &v2), Err(EnvelopeError::Version(2)));
        for cut in 0..4 {
            assert!(decode("c1", &bytes[..cut]).is_err(), "cut at {cut}");
        }
        // Arbitrary bytes never panic.
        for seed in 0..2000u32 {
            let junk: Vec<u8> = (0..(seed % 40))
                .map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i * 97) >> 7) as u8)
                .collect();
            let mut framed = vec![1, 2, b'c', b'1'];
            framed.extend(junk);
            let _ = decode("c1", &framed);
        }
    }
}
