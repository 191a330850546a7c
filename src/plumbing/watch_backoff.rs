//! Backoff for the Kubernetes watches of the controller and the gateway.
//!
//! kube's default (client-go's reflector: 0.8 s doubling to 30 s, reset only after two quiet
//! minutes) left a change unseen for 28–57 s after a 30 s apiserver outage. Watches here retry
//! from 250 ms doubling to 2 s and start over on the first success, so a returning apiserver is
//! seen within ~2 s. Jitter spreads the replicas' retries.

use std::time::Duration;

const FIRST: Duration = Duration::from_millis(250);
const MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
    /// xorshift state for jitter (no need for real randomness).
    seed: u64,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.subsec_nanos() as u64);
        Self { next: FIRST, seed: nanos | 1 }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    /// The wait before the next retry: the current step with up to 25 % taken off, then doubled.
    fn next(&mut self) -> Option<Duration> {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let step = self.next;
        self.next = (self.next * 2).min(MAX);
        let off = step.mul_f64((self.seed % 1000) as f64 / 4000.0);
        Some(step - off)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::utils::Backoff;

    use super::*;

    #[test]
    fn retries_start_fast_never_wait_more_than_two_seconds_and_start_over_after_a_success() {
        let mut b = WatchBackoff::default();
        let waits: Vec<Duration> = (&mut b).take(50).collect();
        assert!(waits[0] <= FIRST && waits[0] >= FIRST * 3 / 4, "{waits:?}");
        assert!(waits.iter().all(|w| *w <= MAX), "{waits:?}");
        assert!(waits[10..].iter().all(|w| *w >= MAX * 3 / 4), "it does back off: {waits:?}");
        b.reset();
        assert!(b.next().unwrap() <= FIRST);
    }
}
