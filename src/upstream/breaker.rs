//! The per-endpoint circuit breaker: passive outlier detection for one upstream endpoint.
//!
//! The breaker sits per endpoint inside the balancer; retries and the deadline sit above it. It is a pure state
//! machine over [`tokio::time::Instant`]: it does no I/O, reads no clock (every method takes `now`) and knows
//! nothing about gRPC. The caller decides which outcomes count as failures.
//!
//! # States
//!
//! - **Closed**: traffic flows. [`BreakerConfig::consecutive_failures`] failures in a row open the breaker; a
//!   success resets the count.
//! - **Open**: the endpoint is ejected until a deadline; every request is rejected with the time left.
//! - **HalfOpen**: the deadline has passed. The next request is admitted as the one probe and, while it is in
//!   flight, everything else is rejected. The probe's success closes the breaker; its failure opens it again
//!   for a longer ejection. A probe that ends without a verdict ([`Breaker::on_abandoned`]) lets the next
//!   request probe.
//!
//! # Ejection time
//!
//! The n-th ejection in a row lasts `base_ejection × 2^(n-1)`, capped at `max_ejection`; with the defaults that
//! is 1, 2, 4, 8, 16, 30, 30, … seconds. Jitter then multiplies it by `1 - jitter_ratio × random`, where
//! `random` in [0, 1) comes from the caller of [`Breaker::on_failure`] (production passes `fastrand::f64()`,
//! tests a constant). So with `jitter_ratio` 0.2 and `random` 0.5 a 1 s ejection lasts 900 ms. Jitter only
//! shortens, so `max_ejection` stays a true bound.
//!
//! The ejection count decays: once the breaker has stayed Closed for `reset_after` (default 30 s, the default
//! cap) since it last closed, the count returns to 0 and the next ejection is `base_ejection` again. Failures
//! below the threshold do not restart that period; only an ejection does.
//!
//! # Outcomes that arrive late
//!
//! A request admitted while Closed may finish after the breaker opened. Outcomes are counted only while Closed
//! or while a probe is in flight, and ignored otherwise: during an ejection a late failure would only repeat
//! what opened the breaker, and a late success says nothing about the endpoint now. While a probe is in flight
//! the breaker cannot tell a late outcome from the probe's, so the first verdict decides.
//!
//! # Sharing
//!
//! The balancer holds one [`SharedBreaker`] per endpoint (behind an `Arc`); its lock is held only inside each
//! method call, never across an `.await`.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Keeps `now + ejection` far from `Instant` overflow whatever the config says; an endpoint ejected for longer
/// than a day is a misconfiguration, which [`BreakerConfig::validate`] reports.
const EJECTION_LIMIT: Duration = Duration::from_secs(24 * 60 * 60);

/// Breaker settings, the same for every endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Failures in a row, while Closed, that open the breaker.
    pub consecutive_failures: u32,
    /// The first ejection; each further ejection in a row doubles it.
    pub base_ejection: Duration,
    /// The cap on one ejection, before jitter.
    pub max_ejection: Duration,
    /// The largest share of an ejection that jitter may take off, in [0, 1); 0 turns jitter off.
    pub jitter_ratio: f64,
    /// How long the breaker must stay Closed before the ejection count returns to 0.
    pub reset_after: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
            jitter_ratio: 0.1,
            reset_after: Duration::from_secs(30),
        }
    }
}

/// Why a [`BreakerConfig`] was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BreakerConfigError {
    #[error("breaker consecutive_failures must be at least 1")]
    ZeroThreshold,
    #[error("breaker base_ejection must be positive and at most max_ejection ({max:?}), got {base:?}")]
    BaseEjection { base: Duration, max: Duration },
    #[error("breaker max_ejection must be at most {limit:?}, got {max:?}")]
    MaxEjection { max: Duration, limit: Duration },
    #[error("breaker jitter_ratio must be in [0, 1), got {0}")]
    JitterRatio(f64),
}

impl BreakerConfig {
    /// Checks the settings once at start-up.
    ///
    /// # Errors
    ///
    /// The first setting that is out of range: a zero threshold, a zero `base_ejection` or one above
    /// `max_ejection`, a `max_ejection` above one day, or a `jitter_ratio` outside [0, 1).
    pub fn validate(&self) -> Result<(), BreakerConfigError> {
        if self.consecutive_failures == 0 {
            return Err(BreakerConfigError::ZeroThreshold);
        }
        if self.base_ejection.is_zero() || self.base_ejection > self.max_ejection {
            return Err(BreakerConfigError::BaseEjection { base: self.base_ejection, max: self.max_ejection });
        }
        if self.max_ejection > EJECTION_LIMIT {
            return Err(BreakerConfigError::MaxEjection { max: self.max_ejection, limit: EJECTION_LIMIT });
        }
        if !(0.0..1.0).contains(&self.jitter_ratio) {
            return Err(BreakerConfigError::JitterRatio(self.jitter_ratio));
        }
        Ok(())
    }
}

/// What the breaker says about the endpoint at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Ejected; nothing is admitted before `until`.
    Open {
        until: Instant,
    },
    /// The ejection is over: the next request probes, or a probe is in flight.
    HalfOpen,
}

/// The answer to [`Breaker::try_acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send the request; report its outcome if it has one.
    Allowed,
    /// Send the request as the one probe. Its outcome must be reported ([`Breaker::on_success`],
    /// [`Breaker::on_failure`]) or, if it ends without one, [`Breaker::on_abandoned`] called; until then the
    /// endpoint admits nothing.
    Probe,
    /// Do not send it here. `retry_after` is the time left in the ejection, or `None` while a probe is in
    /// flight (its outcome, not the clock, decides).
    Rejected { retry_after: Option<Duration> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `since` is when the breaker last closed after an ejection; `None` if it never was ejected.
    Closed {
        failures: u32,
        since: Option<Instant>,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        probing: bool,
    },
}

/// The breaker of one endpoint. See the [module docs](self) for the state machine.
///
/// Any [`BreakerConfig`] is accepted without panicking, valid or not: a threshold of 0 acts as 1, `jitter_ratio`
/// and `random` are clamped into [0, 1], and ejections are cut to `max_ejection` and to one day. Use
/// [`BreakerConfig::validate`] to reject such settings instead.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    phase: Phase,
    /// Ejections in a row, before decay; [`Breaker::ejections`] applies the decay.
    ejections: u32,
}

impl Breaker {
    /// A Closed breaker that has never ejected.
    pub fn new(config: BreakerConfig) -> Self {
        Self { config, phase: Phase::Closed { failures: 0, since: None }, ejections: 0 }
    }

    /// Whether a new request may go to this endpoint now. Open past its deadline becomes HalfOpen and admits
    /// one probe; while the probe is in flight, nothing else is admitted.
    #[must_use]
    pub fn try_acquire(&mut self, now: Instant) -> Admission {
        match self.phase {
            Phase::Closed { .. } => Admission::Allowed,
            Phase::Open { until } if now < until => Admission::Rejected { retry_after: Some(until - now) },
            Phase::Open { .. } | Phase::HalfOpen { probing: false } => {
                self.phase = Phase::HalfOpen { probing: true };
                Admission::Probe
            }
            Phase::HalfOpen { probing: true } => Admission::Rejected { retry_after: None },
        }
    }

    /// A request succeeded: resets the failure count while Closed, closes the breaker if a probe is in flight.
    pub fn on_success(&mut self, now: Instant) {
        match self.phase {
            Phase::Closed { since, .. } => self.phase = Phase::Closed { failures: 0, since },
            Phase::HalfOpen { probing: true } => self.phase = Phase::Closed { failures: 0, since: Some(now) },
            Phase::Open { .. } | Phase::HalfOpen { probing: false } => {}
        }
    }

    /// A request failed: counts towards the threshold while Closed, re-opens the breaker if a probe is in
    /// flight. `random` in [0, 1) scales the jitter of a resulting ejection.
    pub fn on_failure(&mut self, now: Instant, random: f64) {
        match self.phase {
            Phase::Closed { failures, since } => {
                let failures = failures.saturating_add(1);
                if failures >= self.config.consecutive_failures {
                    self.eject(now, random);
                } else {
                    self.phase = Phase::Closed { failures, since };
                }
            }
            Phase::HalfOpen { probing: true } => self.eject(now, random),
            Phase::Open { .. } | Phase::HalfOpen { probing: false } => {}
        }
    }

    /// The probe ended without a verdict (cancelled, or failed before reaching the endpoint): lets the next
    /// request probe. Call it only for a request admitted as [`Admission::Probe`]; otherwise it does nothing.
    pub fn on_abandoned(&mut self) {
        if self.phase == (Phase::HalfOpen { probing: true }) {
            self.phase = Phase::HalfOpen { probing: false };
        }
    }

    /// Whether [`Self::try_acquire`] would admit a request now, without taking the probe slot: lets the
    /// balancer choose among endpoints before committing to one.
    pub fn admits(&self, now: Instant) -> bool {
        match self.phase {
            Phase::Closed { .. } => true,
            Phase::Open { until } => now >= until,
            Phase::HalfOpen { probing } => !probing,
        }
    }

    /// The active health check saw the endpoint recover (it turned SERVING): close the breaker at once
    /// instead of waiting out the ejection, as Envoy does by default. The ejection count is kept, so an
    /// endpoint that keeps failing under traffic is still ejected for longer each time.
    pub fn uneject(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Closed { .. }) {
            self.phase = Phase::Closed { failures: 0, since: Some(now) };
        }
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        match self.phase {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::Open { until } if now < until => BreakerState::Open { until },
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Ejections in a row so far, after decay: the next ejection will be the `ejections(now) + 1`-th.
    pub fn ejections(&self, now: Instant) -> u32 {
        match self.phase {
            Phase::Closed { since: Some(since), .. }
                if now.saturating_duration_since(since) >= self.config.reset_after =>
            {
                0
            }
            _ => self.ejections,
        }
    }

    fn eject(&mut self, now: Instant, random: f64) {
        self.ejections = self.ejections(now).saturating_add(1);
        self.phase = Phase::Open { until: now + self.ejection_time(self.ejections, random) };
    }

    /// The length of the `nth` ejection in a row.
    fn ejection_time(&self, nth: u32, random: f64) -> Duration {
        let cap = self.config.max_ejection.min(EJECTION_LIMIT);
        let mut ejection = self.config.base_ejection.min(cap);
        // Doubling stops at the cap, so this loop is short however large `nth` grows.
        for _ in 1..nth {
            if ejection >= cap || ejection.is_zero() {
                break;
            }
            ejection = ejection.saturating_mul(2).min(cap);
        }
        ejection.mul_f64(1.0 - unit(self.config.jitter_ratio) * unit(random))
    }
}

/// Clamps into [0, 1] so that the jitter factor stays in [0, 1] and `mul_f64` cannot panic.
fn unit(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

/// A [`Breaker`] behind a lock, for the balancer to hold as `Arc<SharedBreaker>` per endpoint. Each method
/// locks only for its own duration and does the same as the [`Breaker`] method of the same name.
#[derive(Debug)]
pub struct SharedBreaker {
    inner: Mutex<Breaker>,
}

impl SharedBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self { inner: Mutex::new(Breaker::new(config)) }
    }

    #[must_use]
    pub fn try_acquire(&self, now: Instant) -> Admission {
        self.lock().try_acquire(now)
    }

    pub fn on_success(&self, now: Instant) {
        self.lock().on_success(now);
    }

    pub fn on_failure(&self, now: Instant, random: f64) {
        self.lock().on_failure(now, random);
    }

    pub fn on_abandoned(&self) {
        self.lock().on_abandoned();
    }

    pub fn admits(&self, now: Instant) -> bool {
        self.lock().admits(now)
    }

    pub fn uneject(&self, now: Instant) {
        self.lock().uneject(now);
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        self.lock().state(now)
    }

    pub fn ejections(&self, now: Instant) -> u32 {
        self.lock().ejections(now)
    }

    fn lock(&self) -> MutexGuard<'_, Breaker> {
        // No method panics halfway through an update, so a poisoned lock still guards a consistent breaker;
        // refusing it would turn one unrelated panic into a permanently unusable endpoint.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::time::advance;

    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    fn no_jitter() -> BreakerConfig {
        BreakerConfig { jitter_ratio: 0.0, ..BreakerConfig::default() }
    }

    /// Opens a Closed breaker with exactly the threshold's worth of failures.
    fn trip(breaker: &mut Breaker, now: Instant) {
        trip_with(breaker, now, 0.0);
    }

    /// Like `trip`, with `random` for the jitter of the ejection.
    fn trip_with(breaker: &mut Breaker, now: Instant, random: f64) {
        for _ in 0..breaker.config.consecutive_failures {
            breaker.on_failure(now, random);
        }
    }

    /// Waits out the current ejection and lets the probe fail, so the breaker ejects again.
    async fn fail_probe(breaker: &mut Breaker) -> Instant {
        fail_probe_with(breaker, 0.0).await
    }

    /// Like `fail_probe`, with `random` for the jitter of the next ejection.
    async fn fail_probe_with(breaker: &mut Breaker, random: f64) -> Instant {
        let BreakerState::Open { until } = breaker.state(Instant::now()) else {
            panic!("expected Open, got {:?}", breaker.state(Instant::now()));
        };
        advance(until - Instant::now()).await;
        let now = Instant::now();
        assert_eq!(breaker.try_acquire(now), Admission::Probe);
        breaker.on_failure(now, random);
        now
    }

    #[tokio::test(start_paused = true)]
    async fn only_consecutive_failures_open_it() {
        // Default threshold: 5 failures in a row.
        let cases = [
            ("", false),
            ("FFFF", false),
            ("FFFFF", true),
            ("FFFFSFFFF", false),
            ("FFFFSFFFFF", true),
            ("SFFFFSFFFFS", false),
            ("FSFSFSFSFSFSFSFS", false),
        ];
        for (outcomes, opens) in cases {
            let mut breaker = Breaker::new(no_jitter());
            let now = Instant::now();
            for outcome in outcomes.chars() {
                match outcome {
                    'F' => breaker.on_failure(now, 0.0),
                    _ => breaker.on_success(now),
                }
            }
            let expected = if opens { BreakerState::Open { until: now + SEC } } else { BreakerState::Closed };
            assert_eq!(breaker.state(now), expected, "{outcomes:?}");
            let admission = breaker.try_acquire(now);
            assert_eq!(admission == Admission::Allowed, !opens, "{outcomes:?}: {admission:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn open_rejects_until_the_deadline_then_admits_one_probe() {
        let mut breaker = Breaker::new(no_jitter());
        let opened = Instant::now();
        trip(&mut breaker, opened);
        assert_eq!(breaker.try_acquire(opened), Admission::Rejected { retry_after: Some(SEC) });

        advance(400 * MS).await;
        let now = Instant::now();
        assert_eq!(breaker.try_acquire(now), Admission::Rejected { retry_after: Some(600 * MS) });
        assert_eq!(breaker.state(now), BreakerState::Open { until: opened + SEC });

        advance(599 * MS).await;
        assert_eq!(breaker.try_acquire(Instant::now()), Admission::Rejected { retry_after: Some(MS) });

        advance(MS).await;
        let now = Instant::now();
        assert_eq!(breaker.state(now), BreakerState::HalfOpen);
        assert_eq!(breaker.try_acquire(now), Admission::Probe);
        for _ in 0..3 {
            assert_eq!(breaker.try_acquire(now), Admission::Rejected { retry_after: None });
        }
        advance(10 * SEC).await;
        // The clock alone never releases a probe slot.
        assert_eq!(breaker.try_acquire(Instant::now()), Admission::Rejected { retry_after: None });
        assert_eq!(breaker.state(Instant::now()), BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn probe_success_closes_it() {
        let mut breaker = Breaker::new(no_jitter());
        trip(&mut breaker, Instant::now());
        advance(SEC).await;
        let now = Instant::now();
        assert_eq!(breaker.try_acquire(now), Admission::Probe);
        breaker.on_success(now);

        assert_eq!(breaker.state(now), BreakerState::Closed);
        assert_eq!(breaker.try_acquire(now), Admission::Allowed);
        assert_eq!(breaker.try_acquire(now), Admission::Allowed);
        // Closing does not forget the ejection; only staying closed does.
        assert_eq!(breaker.ejections(now), 1);
        // The failure count starts afresh after closing.
        for _ in 0..4 {
            breaker.on_failure(now, 0.0);
        }
        assert_eq!(breaker.state(now), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn probe_failure_reopens_it_for_twice_as_long() {
        let mut breaker = Breaker::new(no_jitter());
        trip(&mut breaker, Instant::now());
        let now = fail_probe(&mut breaker).await;
        assert_eq!(breaker.state(now), BreakerState::Open { until: now + 2 * SEC });
        assert_eq!(breaker.try_acquire(now), Admission::Rejected { retry_after: Some(2 * SEC) });
        assert_eq!(breaker.ejections(now), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn ejections_back_off_to_the_cap() {
        let expected_secs = [1, 2, 4, 8, 16, 30, 30];
        let mut breaker = Breaker::new(no_jitter());
        for (i, secs) in expected_secs.into_iter().enumerate() {
            let now = if i == 0 {
                let now = Instant::now();
                trip(&mut breaker, now);
                now
            } else {
                fail_probe(&mut breaker).await
            };
            let nth = i + 1;
            assert_eq!(breaker.state(now), BreakerState::Open { until: now + secs * SEC }, "ejection {nth}");
            assert_eq!(breaker.ejections(now) as usize, nth);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_shortens_the_ejection_by_its_documented_share() {
        // (jitter_ratio, random, which ejection in a row, expected length)
        let cases = [
            (0.2, 0.5, 1, 900 * MS),
            (0.2, 0.5, 2, 1800 * MS),
            (0.2, 0.5, 6, 27 * SEC),
            (0.2, 0.0, 1, SEC),
            (0.0, 0.9, 1, SEC),
            (0.25, 0.5, 3, 3500 * MS),
            // Out-of-range inputs are clamped rather than panicking.
            (0.5, 7.0, 1, 500 * MS),
            (0.5, f64::NAN, 1, SEC),
            (-1.0, 0.5, 1, SEC),
        ];
        for (jitter_ratio, random, nth, expected) in cases {
            let mut breaker = Breaker::new(BreakerConfig { jitter_ratio, ..BreakerConfig::default() });
            // Only the ejection under test gets the random sample; the earlier ones keep their full length.
            let now = if nth == 1 {
                let now = Instant::now();
                trip_with(&mut breaker, now, random);
                now
            } else {
                trip(&mut breaker, Instant::now());
                for _ in 2..nth {
                    fail_probe(&mut breaker).await;
                }
                fail_probe_with(&mut breaker, random).await
            };
            assert_eq!(
                breaker.state(now),
                BreakerState::Open { until: now + expected },
                "ratio {jitter_ratio}, random {random}, ejection {nth}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_count_decays_after_staying_closed() {
        // (time closed, failures below the threshold halfway through, ejections then, next ejection)
        let cases = [
            (29 * SEC, 0, 2, 4 * SEC),
            (30 * SEC - MS, 4, 2, 4 * SEC),
            (30 * SEC, 0, 0, SEC),
            (30 * SEC, 4, 0, SEC),
            (3600 * SEC, 0, 0, SEC),
        ];
        for (closed_for, failures, ejections, next) in cases {
            let mut breaker = Breaker::new(no_jitter());
            trip(&mut breaker, Instant::now());
            let now = fail_probe(&mut breaker).await;
            advance(2 * SEC).await;
            assert_eq!(breaker.try_acquire(Instant::now()), Admission::Probe);
            breaker.on_success(Instant::now());
            assert_eq!(breaker.ejections(Instant::now()), 2);

            advance(closed_for / 2).await;
            for _ in 0..failures {
                breaker.on_failure(Instant::now(), 0.0);
            }
            advance(closed_for - closed_for / 2).await;
            let later = Instant::now();
            assert_eq!(later - now, 2 * SEC + closed_for);
            assert_eq!(breaker.ejections(later), ejections, "closed for {closed_for:?}");
            // The failures from halfway still count, so the rest of the threshold opens it.
            for _ in failures..breaker.config.consecutive_failures {
                breaker.on_failure(later, 0.0);
            }
            assert_eq!(breaker.state(later), BreakerState::Open { until: later + next }, "closed for {closed_for:?}");
            assert_eq!(breaker.ejections(later), ejections + 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn admits_predicts_try_acquire_without_taking_the_probe() {
        let mut breaker = Breaker::new(no_jitter());
        assert!(breaker.admits(Instant::now()));
        trip(&mut breaker, Instant::now());
        assert!(!breaker.admits(Instant::now()));
        advance(SEC).await;
        let now = Instant::now();
        // Asking twice changes nothing: the probe slot is still free.
        assert!(breaker.admits(now) && breaker.admits(now));
        assert_eq!(breaker.try_acquire(now), Admission::Probe);
        assert!(!breaker.admits(now));
    }

    #[tokio::test(start_paused = true)]
    async fn a_recovered_health_check_unejects_but_keeps_the_count() {
        let mut breaker = Breaker::new(no_jitter());
        trip(&mut breaker, Instant::now());
        fail_probe(&mut breaker).await; // second ejection: 2 s
        let now = Instant::now();
        breaker.uneject(now);
        assert_eq!(breaker.state(now), BreakerState::Closed);
        assert_eq!(breaker.try_acquire(now), Admission::Allowed);
        // Failing again right away is the third ejection in a row: 4 s, not 1 s.
        trip(&mut breaker, now);
        assert_eq!(breaker.state(now), BreakerState::Open { until: now + 4 * SEC });
        // Unejecting a Closed breaker does nothing to its failure count.
        let mut closed = Breaker::new(no_jitter());
        for _ in 0..4 {
            closed.on_failure(now, 0.0);
        }
        closed.uneject(now);
        closed.on_failure(now, 0.0);
        assert!(matches!(closed.state(now), BreakerState::Open { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_lets_the_next_request_probe() {
        let mut breaker = Breaker::new(no_jitter());
        trip(&mut breaker, Instant::now());
        advance(SEC).await;
        let now = Instant::now();
        assert_eq!(breaker.try_acquire(now), Admission::Probe);
        breaker.on_abandoned();
        assert_eq!(breaker.state(now), BreakerState::HalfOpen);

        // With no probe out, a late outcome decides nothing.
        breaker.on_failure(now, 0.0);
        breaker.on_success(now);
        assert_eq!(breaker.state(now), BreakerState::HalfOpen);
        assert_eq!(breaker.ejections(now), 1);

        assert_eq!(breaker.try_acquire(now), Admission::Probe);
        assert_eq!(breaker.try_acquire(now), Admission::Rejected { retry_after: None });
        breaker.on_failure(now, 0.0);
        assert_eq!(breaker.state(now), BreakerState::Open { until: now + 2 * SEC });
    }

    #[tokio::test(start_paused = true)]
    async fn late_outcomes_while_open_change_nothing() {
        let mut breaker = Breaker::new(no_jitter());
        let opened = Instant::now();
        trip(&mut breaker, opened);
        advance(500 * MS).await;
        let now = Instant::now();
        breaker.on_success(now);
        breaker.on_failure(now, 0.0);
        breaker.on_abandoned();
        assert_eq!(breaker.state(now), BreakerState::Open { until: opened + SEC });
        assert_eq!(breaker.ejections(now), 1);

        // Past the deadline but before anyone probed, outcomes are just as late.
        advance(SEC).await;
        let now = Instant::now();
        breaker.on_failure(now, 0.0);
        breaker.on_success(now);
        assert_eq!(breaker.state(now), BreakerState::HalfOpen);
        assert_eq!(breaker.try_acquire(now), Admission::Probe);
    }

    #[test]
    fn extreme_settings_neither_panic_nor_exceed_a_day() {
        let cases = [
            (Duration::from_nanos(1), Duration::MAX, u32::MAX, EJECTION_LIMIT),
            (Duration::MAX, Duration::MAX, 1, EJECTION_LIMIT),
            (Duration::from_secs(10), Duration::from_secs(5), 1, Duration::from_secs(5)),
            (Duration::ZERO, SEC, u32::MAX, Duration::ZERO),
            (SEC, 30 * SEC, u32::MAX, 30 * SEC),
        ];
        for (base_ejection, max_ejection, nth, expected) in cases {
            let config = BreakerConfig { base_ejection, max_ejection, jitter_ratio: 0.0, ..BreakerConfig::default() };
            let breaker = Breaker::new(config);
            assert_eq!(breaker.ejection_time(nth, 0.0), expected, "{base_ejection:?} {max_ejection:?} {nth}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_threshold_acts_as_one() {
        let mut breaker = Breaker::new(BreakerConfig { consecutive_failures: 0, ..no_jitter() });
        let now = Instant::now();
        assert_eq!(breaker.try_acquire(now), Admission::Allowed);
        breaker.on_failure(now, 0.0);
        assert_eq!(breaker.state(now), BreakerState::Open { until: now + SEC });
    }

    #[test]
    fn validate_names_the_bad_setting() {
        let ok = BreakerConfig::default();
        let cases = [
            (ok.clone(), Ok(())),
            (BreakerConfig { consecutive_failures: 0, ..ok.clone() }, Err(BreakerConfigError::ZeroThreshold)),
            (
                BreakerConfig { base_ejection: Duration::ZERO, ..ok.clone() },
                Err(BreakerConfigError::BaseEjection { base: Duration::ZERO, max: 30 * SEC }),
            ),
            (
                BreakerConfig { base_ejection: 31 * SEC, ..ok.clone() },
                Err(BreakerConfigError::BaseEjection { base: 31 * SEC, max: 30 * SEC }),
            ),
            (
                BreakerConfig { max_ejection: EJECTION_LIMIT + SEC, ..ok.clone() },
                Err(BreakerConfigError::MaxEjection { max: EJECTION_LIMIT + SEC, limit: EJECTION_LIMIT }),
            ),
            (BreakerConfig { jitter_ratio: 1.0, ..ok.clone() }, Err(BreakerConfigError::JitterRatio(1.0))),
            (BreakerConfig { jitter_ratio: -0.1, ..ok.clone() }, Err(BreakerConfigError::JitterRatio(-0.1))),
            (BreakerConfig { jitter_ratio: 0.0, ..ok.clone() }, Ok(())),
        ];
        for (config, expected) in cases {
            assert_eq!(config.validate(), expected, "{config:?}");
        }
        // NaN never equals itself, so match instead of comparing.
        let nan = BreakerConfig { jitter_ratio: f64::NAN, ..ok };
        assert!(matches!(nan.validate(), Err(BreakerConfigError::JitterRatio(r)) if r.is_nan()));
    }

    #[tokio::test(start_paused = true)]
    async fn shared_breaker_runs_the_same_machine() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SharedBreaker>();

        let shared = Arc::new(SharedBreaker::new(no_jitter()));
        let opened = Instant::now();
        for _ in 0..5 {
            assert_eq!(shared.try_acquire(opened), Admission::Allowed);
            shared.on_failure(opened, 0.0);
        }
        assert_eq!(shared.state(opened), BreakerState::Open { until: opened + SEC });
        assert_eq!(shared.ejections(opened), 1);

        advance(SEC).await;
        let now = Instant::now();
        let other = Arc::clone(&shared);
        assert_eq!(shared.try_acquire(now), Admission::Probe);
        assert_eq!(other.try_acquire(now), Admission::Rejected { retry_after: None });
        shared.on_abandoned();
        assert_eq!(other.try_acquire(now), Admission::Probe);
        other.on_success(now);
        assert_eq!(shared.state(now), BreakerState::Closed);
    }
}
