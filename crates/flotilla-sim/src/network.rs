//! The simulated network: messages between the leader and each follower over numbered
//! connections, with seeded loss, duplication, delay (and so reordering), bit flips and
//! partitions.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    ToLeader,
    ToFollower,
}

#[derive(Debug, Clone)]
pub struct InFlight {
    pub deliver_at_ms: u64,
    pub conn: u64,
    pub dir: Dir,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Probability that sending a message breaks its connection.
    pub drop: f64,
    pub bit_flip: f64,
    pub max_delay_ms: u64,
    /// Probability that a message is held up to [`STALL_MS`] (a retransmission, a stalled
    /// path); what follows it on its connection waits behind it.
    pub stall: f64,
}

pub const STALL_MS: u64 = 1_500;

impl Faults {
    pub const NONE: Faults = Faults {
        drop: 0.0,
        bit_flip: 0.0,
        max_delay_ms: 1,
        stall: 0.0,
    };
}

/// Connections behave like TCP (WebSocket): messages on one connection arrive in order, or the
/// connection breaks. So "loss" breaks the connection (both ends see it close), delays vary but
/// never reorder within a connection, and duplicates and reordering reach the protocol only the
/// way they do in production: as records sent again on a new session after a reconnect.
/// Bit flips model corruption that TCP's weak checksum lets through.
#[derive(Default)]
pub struct Network {
    pub in_flight: Vec<InFlight>,
    /// Delivery time of the last message per (connection, direction): FIFO order.
    last_at: std::collections::HashMap<(u64, bool), u64>,
    pub sent: u64,
    pub dropped: u64,
    pub flipped: u64,
    pub stalled: u64,
}

/// What happened to a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    Queued,
    /// The connection broke: the caller closes it on both ends.
    ConnectionBroke,
}

impl Network {
    pub fn send(
        &mut self,
        rng: &mut ChaCha8Rng,
        faults: Faults,
        now_ms: u64,
        conn: u64,
        dir: Dir,
        bytes: Vec<u8>,
    ) -> Sent {
        self.sent += 1;
        if rng.random_bool(faults.drop) {
            self.dropped += 1;
            return Sent::ConnectionBroke;
        }
        let mut b = bytes;
        if !b.is_empty() && rng.random_bool(faults.bit_flip) {
            let i = rng.random_range(0..b.len());
            b[i] ^= 1 << rng.random_range(0..8);
            self.flipped += 1;
        }
        let key = (conn, dir == Dir::ToLeader);
        let mut delay = rng.random_range(0..=faults.max_delay_ms.max(1));
        if rng.random_bool(faults.stall) {
            delay += rng.random_range(0..=STALL_MS);
            self.stalled += 1;
        }
        let at = (now_ms + delay).max(self.last_at.get(&key).copied().unwrap_or(0));
        self.last_at.insert(key, at);
        self.in_flight.push(InFlight {
            deliver_at_ms: at,
            conn,
            dir,
            bytes: b,
        });
        Sent::Queued
    }

    /// Messages due at `now_ms`, in delivery order (ties in send order).
    pub fn due(&mut self, now_ms: u64) -> Vec<InFlight> {
        let (mut due, rest): (Vec<_>, Vec<_>) = self
            .in_flight
            .drain(..)
            .partition(|m| m.deliver_at_ms <= now_ms);
        self.in_flight = rest;
        // Stable: equal times keep send order (FIFO per connection).
        due.sort_by_key(|m| m.deliver_at_ms);
        due
    }

    /// When the last message in flight on `conn` in direction `dir` arrives (`None`: none).
    pub fn last_delivery(&self, conn: u64, dir: Dir) -> Option<u64> {
        self.in_flight
            .iter()
            .filter(|m| m.conn == conn && m.dir == dir)
            .map(|m| m.deliver_at_ms)
            .max()
    }

    /// The leader's end of a connection closed: what was on its way to the leader is dropped;
    /// what was on its way to the follower still arrives (the host decides what it means).
    pub fn close_to_leader(&mut self, conn: u64) {
        self.in_flight
            .retain(|m| m.conn != conn || m.dir == Dir::ToFollower);
        self.last_at.retain(|k, _| !(k.0 == conn && k.1));
    }
}
