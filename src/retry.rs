//! One backoff policy for every retry: a pause that doubles from `first` up to `max`, with
//! jitter where many clients may retry together, for as long as the caller allows. Each
//! backend names its own policy here, so the constants live in one place.

use std::time::{Duration, Instant};

/// How the pauses between attempts grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    /// Each pause is drawn from [pause/2, pause]: clients that failed together do not retry
    /// together.
    pub jitter: bool,
}

impl Backoff {
    /// S3 requests: a throttling server asks for pauses of seconds.
    pub const S3: Backoff = Backoff::new(100, 5_000, true);
    /// PostgreSQL statements while the server cannot be reached (blocks and metadata).
    pub const POSTGRES: Backoff = Backoff::new(50, 2_000, false);
    /// A write-behind journal sending its transactions to an unreachable volume.
    pub const JOURNAL: Backoff = Backoff::new(100, 5_000, false);
    /// A write-back stage uploading blocks in the background: no caller waits for it.
    pub const UPLOADS: Backoff = Backoff::new(500, 30_000, false);

    const fn new(first_ms: u64, max_ms: u64, jitter: bool) -> Backoff {
        Backoff {
            first: Duration::from_millis(first_ms),
            max: Duration::from_millis(max_ms),
            jitter,
        }
    }

    /// Attempts that give up once `patience` has passed (`None`: never).
    pub fn start(self, patience: Option<Duration>) -> Attempts {
        Attempts {
            policy: self,
            pause: self.first,
            deadline: patience.map(|p| Instant::now() + p),
            attempt: 1,
        }
    }
}

/// The attempts of one operation under a [`Backoff`].
#[derive(Debug)]
pub struct Attempts {
    policy: Backoff,
    pause: Duration,
    deadline: Option<Instant>,
    /// The attempt under way, from 1.
    pub attempt: u32,
}

impl Attempts {
    /// The pause before the next attempt, grown for the one after; `None` once the caller's
    /// patience has run out.
    pub fn next_pause(&mut self) -> Option<Duration> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let pause = match self.policy.jitter {
            true => {
                let ms = self.pause.as_millis() as u64;
                Duration::from_millis(ms / 2 + rand::random::<u64>() % (ms / 2 + 1))
            }
            false => self.pause,
        };
        self.pause = (self.pause * 2).min(self.policy.max);
        self.attempt += 1;
        Some(pause)
    }

    /// `next_pause`, slept.
    pub fn wait(&mut self) -> bool {
        match self.next_pause() {
            Some(p) => {
                std::thread::sleep(p);
                true
            }
            None => false,
        }
    }

    /// Starts over from the first pause (after a success, for a loop that keeps going).
    pub fn reset(&mut self) {
        self.pause = self.policy.first;
        self.attempt = 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_stop_with_the_patience() {
        let mut a = Backoff::new(10, 40, false).start(None);
        let pauses: Vec<u64> = (0..4)
            .map(|_| a.next_pause().unwrap().as_millis() as u64)
            .collect();
        assert_eq!(pauses, [10, 20, 40, 40]);
        assert_eq!(a.attempt, 5);
        a.reset();
        assert_eq!(a.next_pause(), Some(Duration::from_millis(10)));
        let mut j = Backoff::new(100, 100, true).start(None);
        for _ in 0..20 {
            let p = j.next_pause().unwrap();
            assert!(p >= Duration::from_millis(50) && p <= Duration::from_millis(100));
        }
        let mut done = Backoff::POSTGRES.start(Some(Duration::ZERO));
        assert_eq!(done.next_pause(), None);
    }
}
