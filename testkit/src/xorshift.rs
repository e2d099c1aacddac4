//! `XorShift`: a small seeded generator for backoff jitter and random picks in test
//! and load clients, where a run must be reproducible and a dependency does not pay.

/// Multiplier that spreads consecutive stream numbers over all 64 bits (2^64 / φ).
const SPREAD: u64 = 0x9e37_79b9_7f4a_7c15;

/// Marsaglia's xorshift64 (shifts 13, 7, 17). Not for anything that must be unpredictable.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// Starts from `seed`; zero, which xorshift would never leave, becomes 1.
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    /// Generator number `n` of many that run side by side (one per task): consecutive
    /// numbers give unrelated sequences.
    pub fn for_stream(n: u64) -> XorShift {
        XorShift(n.wrapping_mul(SPREAD) | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// The next value below `n` (which must not be 0); the modulo bias is negligible for small `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_differ() {
        let take = |mut g: XorShift| (0..4).map(|_| g.next_u64()).collect::<Vec<_>>();
        assert_eq!(take(XorShift::for_stream(3)), take(XorShift::for_stream(3)));
        assert_ne!(take(XorShift::for_stream(3)), take(XorShift::for_stream(4)));
        assert_ne!(take(XorShift::new(0)), vec![0; 4]);
        let mut g = XorShift::new(7);
        assert!((0..100).all(|_| g.below(10) < 10));
    }
}
