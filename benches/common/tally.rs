//! What a benchmark's workers count: each request's latency, the errors and the first of them; and the
//! latency percentile the reports print. Shared by the gateway and UserService benchmarks.

use std::time::Instant;

/// Requests counted in one worker (or, merged, in all of them).
#[derive(Default)]
pub struct Tally {
    pub latencies_us: Vec<u32>,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Tally {
    /// Counts one request that started at `started`.
    pub fn record<E: std::fmt::Display>(&mut self, started: Instant, result: Result<(), E>) {
        match result {
            Ok(()) => self.latencies_us.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX)),
            Err(error) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| error.to_string());
            }
        }
    }

    pub fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Nearest rank: the smallest latency (ms) that at least `quantile` of the requests did not exceed.
pub fn percentile_ms(sorted_us: &[u32], quantile: f64) -> Option<f64> {
    let rank = (quantile * sorted_us.len() as f64).ceil() as usize;
    sorted_us.get(rank.saturating_sub(1)).map(|&us| f64::from(us) / 1000.0)
}
