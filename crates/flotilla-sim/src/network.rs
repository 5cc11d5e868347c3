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
    pub drop: f64,
    pub duplicate: f64,
    pub bit_flip: f64,
    pub max_delay_ms: u64,
}

impl Faults {
    pub const NONE: Faults = Faults {
        drop: 0.0,
        duplicate: 0.0,
        bit_flip: 0.0,
        max_delay_ms: 1,
    };
}

#[derive(Default)]
pub struct Network {
    pub in_flight: Vec<InFlight>,
    pub sent: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub flipped: u64,
}

impl Network {
    /// Queues `bytes`; faults decide whether, when and how (often, intact) it arrives.
    pub fn send(
        &mut self,
        rng: &mut ChaCha8Rng,
        faults: Faults,
        now_ms: u64,
        conn: u64,
        dir: Dir,
        bytes: Vec<u8>,
    ) {
        self.sent += 1;
        if rng.random_bool(faults.drop) {
            self.dropped += 1;
            return;
        }
        let copies = if rng.random_bool(faults.duplicate) {
            self.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut b = bytes.clone();
            if !b.is_empty() && rng.random_bool(faults.bit_flip) {
                let i = rng.random_range(0..b.len());
                b[i] ^= 1 << rng.random_range(0..8);
                self.flipped += 1;
            }
            let delay = rng.random_range(0..=faults.max_delay_ms.max(1));
            self.in_flight.push(InFlight {
                deliver_at_ms: now_ms + delay,
                conn,
                dir,
                bytes: b,
            });
        }
    }

    /// Messages due at `now_ms`, in delivery order (ties in send order).
    pub fn due(&mut self, now_ms: u64) -> Vec<InFlight> {
        let (mut due, rest): (Vec<_>, Vec<_>) = self
            .in_flight
            .drain(..)
            .partition(|m| m.deliver_at_ms <= now_ms);
        self.in_flight = rest;
        due.sort_by_key(|m| m.deliver_at_ms);
        due
    }

    /// Drops everything in flight on a connection (it was closed).
    pub fn close(&mut self, conn: u64) {
        self.in_flight.retain(|m| m.conn != conn);
    }
}
