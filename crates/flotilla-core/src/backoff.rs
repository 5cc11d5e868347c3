/// Exponential reconnect backoff: 100 ms doubling to a cap. Jitter is an input (the core has no
/// randomness of its own), so a simulation replays exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial_ms: u64,
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: 100,
            max_ms: 5_000,
        }
    }
}

impl Backoff {
    /// Delay before attempt `attempt` (1-based); `jitter` in 0..=1000 scales it by 50%..100%.
    pub fn delay_ms(&self, attempt: u32, jitter: u16) -> u64 {
        let base = self
            .initial_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
            .min(self.max_ms);
        base / 2 + base / 2 * u64::from(jitter.min(1000)) / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap() {
        let b = Backoff::default();
        assert_eq!(b.delay_ms(1, 1000), 100);
        assert_eq!(b.delay_ms(2, 1000), 200);
        assert_eq!(b.delay_ms(30, 1000), 5_000);
        assert_eq!(b.delay_ms(1, 0), 50);
    }
}
