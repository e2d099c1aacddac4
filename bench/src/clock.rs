//! The one clock every process of a run shares: raw CLOCK_MONOTONIC nanoseconds.
//!
//! `std::time::Instant` wraps the same clock but hides its value, and its values
//! cannot be carried from the publishing process to a load-generator child. The raw
//! CLOCK_MONOTONIC value is one machine-wide counter on Linux, so a child subtracts
//! the publisher's timestamp directly. (CLOCK_REALTIME would also be comparable but
//! jumps when NTP steps the clock.)

/// Nanoseconds on CLOCK_MONOTONIC, comparable across processes on this machine.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec we own; CLOCK_MONOTONIC exists on
    // every Linux, so the call cannot fail with these arguments.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = monotonic_ns();
        assert!(b >= a + 1_000_000);
    }
}
