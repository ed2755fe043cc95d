//! Residency over time, for the report (`lazy.resident`): how many of the tree's lazy pages are
//! no longer missing, sampled from the moment the restored processes run.

use std::time::{Duration, Instant};

use crate::report::ResidentSample;

/// Time between two samples, at first.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Most samples kept: past it every other one is dropped and the interval doubles, so a long
/// restore (an idle push that waits for minutes) still gets a short list over its whole time.
const MAX_SAMPLES: usize = 512;

/// Samples `(time since running, pages resident)`: one when the processes start running, then
/// at most one per interval while the count changes, and one at the end.
pub(super) struct Sampler {
    since: Option<Instant>,
    every: Duration,
    /// When the next sample is due.
    next: Instant,
    samples: Vec<ResidentSample>,
}

impl Sampler {
    pub(super) fn new() -> Sampler {
        Sampler {
            since: None,
            every: SAMPLE_EVERY,
            next: Instant::now(),
            samples: Vec::new(),
        }
    }

    /// Whether sampling started (the processes run).
    pub(super) fn started(&self) -> bool {
        self.since.is_some()
    }

    /// The processes started running at `at`, with `pages` resident by now.
    pub(super) fn start(&mut self, at: Instant, pages: u64) {
        self.since = Some(at);
        self.next = at + self.every;
        self.record(at, pages);
    }

    /// How long until a sample is due, when `pages` differs from the last one taken (else
    /// nothing is due: an unchanged count is not sampled again).
    pub(super) fn due_in(&self, now: Instant, pages: u64) -> Option<Duration> {
        let last = self.samples.last()?;
        (last.pages != pages).then(|| self.next.saturating_duration_since(now))
    }

    /// Takes a sample if one is due and the count changed.
    pub(super) fn tick(&mut self, now: Instant, pages: u64) {
        if self.due_in(now, pages) == Some(Duration::ZERO) {
            self.record(now, pages);
            self.next = now + self.every;
        }
    }

    /// The last sample (serving ended), and every sample taken.
    pub(super) fn finish(mut self, now: Instant, pages: u64) -> Vec<ResidentSample> {
        if self.started() {
            self.record(now, pages);
        }
        self.samples
    }

    fn record(&mut self, now: Instant, pages: u64) {
        let Some(since) = self.since else {
            return;
        };
        let at_us = crate::util::us(now.saturating_duration_since(since));
        match self.samples.last_mut() {
            // Two samples at the same microsecond: the later count wins.
            Some(last) if last.at_us == at_us => last.pages = pages,
            _ => self.samples.push(ResidentSample { at_us, pages }),
        }
        if self.samples.len() > MAX_SAMPLES {
            // Keep the first, every other one after it, and the newest.
            let newest = self.samples.pop();
            let mut k = 0;
            self.samples.retain(|_| {
                k += 1;
                k % 2 == 1
            });
            self.samples.extend(newest);
            self.every *= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_changes_at_most_once_per_interval_plus_the_start_and_the_end() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut s = Sampler::new();
        assert_eq!(s.due_in(t0, 5), None, "nothing before the start");
        s.start(t0, 10);
        assert_eq!(s.due_in(ms(10), 10), None, "unchanged: nothing due");
        assert_eq!(s.due_in(ms(10), 20), Some(Duration::from_millis(40)));
        s.tick(ms(10), 20);
        s.tick(ms(50), 30);
        s.tick(ms(60), 40);
        s.tick(ms(120), 40);
        let got: Vec<(u64, u64)> = s
            .finish(ms(130), 50)
            .iter()
            .map(|x| (x.at_us, x.pages))
            .collect();
        assert_eq!(
            got,
            vec![(0, 10), (50_000, 30), (120_000, 40), (130_000, 50)]
        );
    }

    #[test]
    fn a_long_run_keeps_a_bounded_list_from_start_to_end() {
        let t0 = Instant::now();
        let mut s = Sampler::new();
        s.start(t0, 0);
        let mut t = t0;
        for n in 1..=10_000u64 {
            t += Duration::from_millis(50);
            s.tick(t, n);
        }
        let v = s.finish(t + Duration::from_millis(1), 10_001);
        assert!(v.len() <= MAX_SAMPLES + 1, "{}", v.len());
        assert_eq!(v.first().map(|x| x.pages), Some(0));
        assert_eq!(v.last().map(|x| x.pages), Some(10_001));
        assert!(v.windows(2).all(|w| w[0].at_us < w[1].at_us));
    }

    #[test]
    fn no_samples_when_the_processes_never_ran() {
        assert!(Sampler::new().finish(Instant::now(), 7).is_empty());
    }
}
