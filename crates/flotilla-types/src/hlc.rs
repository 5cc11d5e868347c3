//! Hybrid logical clock timestamps: what orders concurrent changes made in different data
//! centres (last-writer-wins) while never running behind causality.
//!
//! A timestamp is one `u64`: the wall-clock milliseconds in the high 48 bits and a logical
//! counter in the low 16. Every timestamp a node issues is greater than every timestamp it
//! issued or received before, and at least its wall clock: so a change made after seeing
//! another (causally after it) always carries a larger timestamp, whatever the clocks say.

use std::fmt;

const COUNTER_BITS: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc(pub u64);

/// A remote timestamp too far ahead of this node's clock: taking it would drag every later
/// timestamp of this node into the future, so that one bad clock wins every later conflict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a timestamp {ahead_ms} ms ahead of this node's clock (the bound is {max_drift_ms} ms): is a clock wrong?")]
pub struct HlcDrift {
    pub ahead_ms: u64,
    pub max_drift_ms: u64,
}

impl Hlc {
    pub const ZERO: Hlc = Hlc(0);

    pub fn from_parts(wall_ms: u64, counter: u16) -> Hlc {
        Hlc((wall_ms << COUNTER_BITS) | counter as u64)
    }

    pub fn wall_ms(self) -> u64 {
        self.0 >> COUNTER_BITS
    }

    pub fn counter(self) -> u16 {
        (self.0 & 0xffff) as u16
    }

    /// The timestamp of a local event at wall time `now_ms`, after `self` (the last one issued
    /// or received).
    pub fn tick(self, now_ms: u64) -> Hlc {
        Hlc(self.0.saturating_add(1).max(now_ms << COUNTER_BITS))
    }

    /// Takes in a timestamp received from elsewhere: afterwards `self` is past it. Refused when
    /// it is more than `max_drift_ms` ahead of `now_ms`.
    pub fn receive(self, remote: Hlc, now_ms: u64, max_drift_ms: u64) -> Result<Hlc, HlcDrift> {
        let ahead_ms = remote.wall_ms().saturating_sub(now_ms);
        if ahead_ms > max_drift_ms {
            return Err(HlcDrift {
                ahead_ms,
                max_drift_ms,
            });
        }
        Ok(Hlc(self.0.max(remote.0)))
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.wall_ms(), self.counter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_never_go_back_and_follow_the_wall_clock() {
        let a = Hlc::ZERO.tick(1_000);
        assert_eq!((a.wall_ms(), a.counter()), (1_000, 0));
        let b = a.tick(1_000);
        assert_eq!((b.wall_ms(), b.counter()), (1_000, 1));
        // The wall clock stepped back: the timestamp still goes forward.
        let c = b.tick(500);
        assert!(c > b);
        assert!(b.tick(2_000) == Hlc::from_parts(2_000, 0));
    }

    #[test]
    fn a_received_timestamp_pulls_the_clock_forward_within_the_bound() {
        let local = Hlc::ZERO.tick(1_000);
        let remote = Hlc::from_parts(1_400, 3);
        let after = local.receive(remote, 1_000, 500).unwrap();
        assert!(after.tick(1_000) > remote);
        let err = local
            .receive(Hlc::from_parts(9_000, 0), 1_000, 500)
            .unwrap_err();
        assert_eq!(err.ahead_ms, 8_000);
    }
}
