//! Retries of upstream calls: which failures may be retried, how long to wait first, and how many retries the
//! gateway may add on top of its traffic.
//!
//! The design rule is "retry only what was never sent or is idempotent, within a budget" (linkerd's retry
//! budgets, pingora's failover guide). A retry goes to another endpoint (the balancer picks again) and never
//! outlives the request's deadline. Everything here is pure logic over [`tokio::time::Instant`] and
//! [`Duration`]: it does no I/O, reads no clock (every method takes `now`) and knows no gRPC types. The caller
//! maps status codes and transport errors to a [`Failure`] and draws the jitter (production passes
//! `fastrand::f64()`, tests a constant).
//!
//! - [`RetryBudget`] caps retries at a share of recent traffic, so that during an outage retries cannot
//!   multiply the load on endpoints that are already failing.
//! - [`Backoff`] spaces retries out exponentially with jitter, so that requests which failed together do not
//!   come back together.
//! - [`RetryPolicy::decide`] applies the rules to one failed attempt and, only if they all allow a retry, takes
//!   a retry from the budget.
//!
//! # Putting them together
//!
//! For each request: call [`RetryBudget::deposit`] once when the original attempt starts, and never for a retry
//! (retries must not fund more retries). After a failed attempt, compute the delay with
//! [`Backoff::delay`]`(attempts, random)` and pass it, with what is known about the attempt, to
//! [`RetryPolicy::decide`]. On [`Decision::RetryAfter`] sleep that long and send to another endpoint; on
//! [`Decision::GiveUp`] answer with the last attempt's error. The budget is shared by all requests to an
//! upstream (behind an `Arc`); its lock is held only inside each method call, never across an `.await`.

use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The window is kept as this many buckets; with the default ttl each bucket is one second.
const BUCKETS: u32 = 10;
/// The budget's ratio is kept in millionths so that the usual decimal ratios (0.2, 0.29) are exact. In floating
/// point, 0.29 × 100 is 28.999…, which would cost a retry.
const PPM: u128 = 1_000_000;
/// Above this a "budget" no longer limits anything; the bound also keeps the arithmetic far from overflow.
const MAX_RATIO: f64 = 1000.0;
/// linkerd's bounds: shorter windows make the budget jumpy, longer ones keep it full of a past traffic peak.
const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(60);

/// Retry budget settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudgetConfig {
    /// Retries allowed per original request in the window: 0.2 lets retries add at most 20 % to the load.
    pub ratio: f64,
    /// Retries allowed per second of the window whatever the traffic, so that a quiet upstream can still retry.
    pub min_retries_per_second: u32,
    /// How long a request or retry counts towards the budget, in [1 s, 60 s].
    pub ttl: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self { ratio: 0.2, min_retries_per_second: 10, ttl: Duration::from_secs(10) }
    }
}

impl RetryBudgetConfig {
    /// Checks the settings once at start-up.
    ///
    /// # Errors
    ///
    /// A `ratio` that is not a number in [0, 1000], or a `ttl` outside [1 s, 60 s].
    pub fn validate(&self) -> Result<(), RetryConfigError> {
        if !(0.0..=MAX_RATIO).contains(&self.ratio) {
            return Err(RetryConfigError::Ratio(self.ratio));
        }
        if !(MIN_TTL..=MAX_TTL).contains(&self.ttl) {
            return Err(RetryConfigError::Ttl(self.ttl));
        }
        Ok(())
    }
}

/// Why a retry setting was rejected.
#[derive(Debug, Clone, PartialEq)]
pub enum RetryConfigError {
    Ratio(f64),
    Ttl(Duration),
    Backoff { base: Duration, max: Duration },
    ZeroAttempts,
}

impl fmt::Display for RetryConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ratio(ratio) => write!(f, "retry budget ratio must be in [0, {MAX_RATIO}], got {ratio}"),
            Self::Ttl(ttl) => write!(f, "retry budget ttl must be in [{MIN_TTL:?}, {MAX_TTL:?}], got {ttl:?}"),
            Self::Backoff { base, max } => {
                write!(f, "retry backoff base must be positive and at most max ({max:?}), got {base:?}")
            }
            Self::ZeroAttempts => write!(f, "retry max_attempts must be at least 1 (1 turns retries off)"),
        }
    }
}

impl std::error::Error for RetryConfigError {}

/// A linkerd-style retry budget, shared by every request to one upstream.
///
/// # The rule
///
/// Let `D` be the deposits and `W` the successful withdrawals in the window (see below). A withdrawal succeeds,
/// and is counted, if and only if
///
/// ```text
/// W + 1 <= floor(D × ratio + min_retries_per_second × ttl)        (ttl in seconds)
/// ```
///
/// So over any window, retries add at most `ratio` of the original requests plus a floor of
/// `min_retries_per_second` per second. The ratio is what protects a failing upstream: however many attempts
/// fail, the gateway sends at most `1 + ratio` times its incoming load. The floor is there for low traffic,
/// where the ratio alone would almost never allow a retry (at 1 request/s and ratio 0.2, one retry per 5 s).
/// With the defaults (0.2, 10/s, 10 s) an upstream taking 100 requests in 10 s may get 20 + 100 retries.
///
/// # The window
///
/// Counts are kept in 10 buckets of `ttl / 10` (one second with the default ttl); bucket boundaries fall at
/// whole multiples of `ttl / 10` after the first `now` the budget sees. The window is the current bucket and the
/// nine before it, so a deposit or withdrawal stops counting at the start of the tenth bucket after its own:
/// at most `ttl` and more than `ttl - ttl / 10` after it happened. A `now` older than one already seen counts
/// as the newest one seen, because concurrent callers can arrive slightly out of order and the window only
/// moves forward.
///
/// # Settings out of range
///
/// Any [`RetryBudgetConfig`] is accepted without panicking: the ratio is clamped into [0, 1000] (NaN is 0) and
/// rounded to millionths, and the ttl is clamped into [1 s, 60 s]. Use [`RetryBudgetConfig::validate`] to
/// reject such settings instead.
#[derive(Debug)]
pub struct RetryBudget {
    /// `ratio` in millionths of a retry per deposit.
    ratio_ppm: u128,
    /// `min_retries_per_second × ttl` in millionths of a retry.
    floor_ppm: u128,
    bucket_width: Duration,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// The start of bucket 0: the first `now` seen.
    epoch: Option<Instant>,
    /// The index, counted from `epoch`, of the newest bucket; it lives in slot `newest % BUCKETS`.
    newest: u64,
    buckets: [Bucket; BUCKETS as usize],
}

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    deposits: u64,
    withdrawals: u64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(RetryBudgetConfig::default())
    }
}

impl RetryBudget {
    pub fn new(config: RetryBudgetConfig) -> Self {
        let ratio = if config.ratio.is_nan() { 0.0 } else { config.ratio.clamp(0.0, MAX_RATIO) };
        let ttl = config.ttl.clamp(MIN_TTL, MAX_TTL);
        Self {
            // In range and rounded, so the cast is exact.
            ratio_ppm: (ratio * 1e6).round() as u128,
            // retries/s × ms × (10⁶ ppm / 10³ ms per s).
            floor_ppm: u128::from(config.min_retries_per_second) * ttl.as_millis() * 1000,
            bucket_width: ttl / BUCKETS,
            window: Mutex::new(Window::default()),
        }
    }

    /// Records an original request. Call it once per request, never for a retry.
    pub fn deposit(&self, now: Instant) {
        let mut window = self.lock();
        let slot = window.advance(now, self.bucket_width);
        let bucket = &mut window.buckets[slot];
        bucket.deposits = bucket.deposits.saturating_add(1);
    }

    /// Takes one retry from the budget if the [rule](Self#the-rule) allows it. A `true` is a retry spent: call
    /// it only for a retry that will be sent.
    #[must_use]
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let mut window = self.lock();
        let slot = window.advance(now, self.bucket_width);
        let (deposits, withdrawals) = window.totals();
        if withdrawals >= self.limit(deposits) {
            return false;
        }
        let bucket = &mut window.buckets[slot];
        bucket.withdrawals = bucket.withdrawals.saturating_add(1);
        true
    }

    /// How many withdrawals would succeed at `now` if nothing else happened, for metrics and tests.
    pub fn available(&self, now: Instant) -> u64 {
        let mut window = self.lock();
        window.advance(now, self.bucket_width);
        let (deposits, withdrawals) = window.totals();
        self.limit(deposits).saturating_sub(withdrawals)
    }

    /// `floor(D × ratio + floor)`: the withdrawals the window allows for `deposits`.
    fn limit(&self, deposits: u64) -> u64 {
        let limit = (u128::from(deposits) * self.ratio_ppm + self.floor_ppm) / PPM;
        u64::try_from(limit).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        // Every update is a single counter increment or a bucket reset, so a poisoned lock still guards
        // consistent counts; refusing it would turn one unrelated panic into no retries for the upstream.
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Window {
    /// Moves the window forward to `now`, emptying the buckets that fell out of it, and returns the slot of the
    /// bucket `now` counts in.
    fn advance(&mut self, now: Instant, width: Duration) -> usize {
        let epoch = *self.epoch.get_or_insert(now);
        let index = now.saturating_duration_since(epoch).as_nanos() / width.as_nanos();
        // Beyond u64 only after centuries; saturating keeps the window moving forward regardless.
        let index = u64::try_from(index).unwrap_or(u64::MAX);
        if index > self.newest {
            // After a quiet spell longer than the window every bucket is stale; emptying each once is enough.
            let stale = (index - self.newest).min(u64::from(BUCKETS));
            for step in 1..=stale {
                self.buckets[slot(self.newest.wrapping_add(step))] = Bucket::default();
            }
            self.newest = index;
        }
        slot(self.newest)
    }

    /// Deposits and withdrawals in the window. Buckets that left it were emptied by `advance`.
    fn totals(&self) -> (u64, u64) {
        self.buckets.iter().fold((0, 0), |(deposits, withdrawals), bucket| {
            (deposits.saturating_add(bucket.deposits), withdrawals.saturating_add(bucket.withdrawals))
        })
    }
}

fn slot(index: u64) -> usize {
    // Below BUCKETS, so the cast is exact.
    (index % u64::from(BUCKETS)) as usize
}

/// How [`Backoff`] randomises a delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Anywhere in [0, ceiling): spreads retries the most, and a first retry to another endpoint may go at once.
    Full,
    /// In [ceiling / 2, ceiling): keeps half of the backoff, so no retry goes out immediately.
    Equal,
}

/// Exponential backoff with jitter (the "full" and "equal" jitter of the AWS architecture blog).
///
/// Before jitter, retry `n` (1 = the first retry) waits `base × 2^(n-1)`, capped at `max`: with the defaults
/// 25, 50, 100, 200, 400, 800, 1000, 1000, … ms. Jitter then scales that ceiling by `random` in [0, 1), which
/// the caller draws, so the delay is deterministic given `random`:
///
/// - [`Jitter::Full`]: `ceiling × random`
/// - [`Jitter::Equal`]: `ceiling / 2 + ceiling / 2 × random`
///
/// Both stay below the ceiling, so `max` is a true bound. A `random` outside [0, 1] is clamped (NaN is 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub jitter: Jitter,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { base: Duration::from_millis(25), max: Duration::from_secs(1), jitter: Jitter::Full }
    }
}

impl Backoff {
    /// Checks the settings once at start-up.
    ///
    /// # Errors
    ///
    /// A zero `base`, or a `base` above `max`.
    pub fn validate(&self) -> Result<(), RetryConfigError> {
        if self.base.is_zero() || self.base > self.max {
            return Err(RetryConfigError::Backoff { base: self.base, max: self.max });
        }
        Ok(())
    }

    /// The delay before retry `attempt` (1 = the first retry; 0 counts as 1), given `random` in [0, 1).
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let ceiling = self.ceiling(attempt).as_nanos() as f64;
        let random = if random.is_nan() { 0.0 } else { random.clamp(0.0, 1.0) };
        let nanos = match self.jitter {
            Jitter::Full => ceiling * random,
            Jitter::Equal => ceiling / 2.0 + ceiling / 2.0 * random,
        };
        // The float-to-int cast truncates (a delay never rounds up past the ceiling) and saturates.
        Duration::from_nanos(nanos as u64)
    }

    /// The delay before retry `attempt` without jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        // Past 2^31 the product is far above any sane cap anyway, so saturating there is harmless.
        let factor = 1_u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// How an attempt failed, as far as retrying is concerned. The caller maps transport errors and gRPC status
/// codes to these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection to the endpoint could be made; nothing reached a server.
    ConnectFailed,
    /// The server refused the stream without processing it: HTTP/2 `REFUSED_STREAM`, or a `GOAWAY` whose last
    /// stream id is below ours. The protocol guarantees no application code saw the request.
    Refused,
    /// gRPC `UNAVAILABLE`, or the connection broke after the request went out: the server may or may not have
    /// acted on it.
    Unavailable,
    /// gRPC `DEADLINE_EXCEEDED`, from the server or from the gateway's own deadline.
    DeadlineExceeded,
    /// Any other status: the server's answer to this request.
    Other,
}

/// What is known about an attempt that just failed.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedAttempt {
    /// Whether any of the request went out on a connection.
    pub sent: bool,
    /// Whether the RPC may be applied more than once with the same effect, as the caller knows it (for example
    /// from the method's `idempotency_level` option: `IDEMPOTENT` or `NO_SIDE_EFFECTS`).
    pub idempotent: bool,
    /// Whether the request is a client stream of which some messages were already sent. The gateway does not
    /// keep what it streamed, so those messages cannot be sent again.
    pub partial_stream: bool,
    pub failure: Failure,
    /// Attempts made so far, including the one that just failed: 1 after the original request failed.
    pub attempts: u32,
    /// Time left until the request's deadline; `None` if it has none.
    pub time_left: Option<Duration>,
    /// The backoff the retry would sleep first, normally [`Backoff::delay`]`(attempts, random)`.
    pub delay: Duration,
}

/// The answer to [`RetryPolicy::decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Sleep this long, then send the request to another endpoint. One retry was taken from the budget.
    RetryAfter(Duration),
    /// Answer with the failed attempt's error.
    GiveUp(GiveUpReason),
}

/// Why [`RetryPolicy::decide`] gave up: the first rule that refused a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpReason {
    PartialStream,
    /// [`Failure::DeadlineExceeded`] or [`Failure::Other`].
    NotRetryable,
    NotIdempotent,
    AttemptsExhausted,
    DeadlineTooClose,
    BudgetExhausted,
}

impl GiveUpReason {
    /// A stable name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PartialStream => "partial_stream",
            Self::NotRetryable => "not_retryable",
            Self::NotIdempotent => "not_idempotent",
            Self::AttemptsExhausted => "attempts_exhausted",
            Self::DeadlineTooClose => "deadline_too_close",
            Self::BudgetExhausted => "budget_exhausted",
        }
    }
}

/// Which failed attempts to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the original included: 3 allows two retries, 1 turns retries off (0 acts as 1).
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 3 }
    }
}

impl RetryPolicy {
    /// Checks the settings once at start-up.
    ///
    /// # Errors
    ///
    /// A `max_attempts` of 0.
    pub fn validate(&self) -> Result<(), RetryConfigError> {
        if self.max_attempts == 0 {
            return Err(RetryConfigError::ZeroAttempts);
        }
        Ok(())
    }

    /// Whether to retry `failed`. The rules apply in this order, and the first that refuses gives the reason:
    ///
    /// 1. **A partly sent client stream is never retried** ([`GiveUpReason::PartialStream`]): the messages
    ///    already sent were read from the client and not kept, so another attempt would send a truncated stream
    ///    that the server would take for the whole request.
    /// 2. **`DEADLINE_EXCEEDED` and other statuses are never retried** ([`GiveUpReason::NotRetryable`]): after a
    ///    deadline there is no time left for another attempt, and any other status is the server's answer to
    ///    this request, which another endpoint would most likely repeat.
    /// 3. **A request that no server processed is retried whether or not it is idempotent**: one never sent
    ///    (`sent == false`), one whose connection failed, or one the server refused. No server acted on it, so
    ///    a retry cannot apply it twice. **`UNAVAILABLE` after the request went out is retried only if the RPC
    ///    is idempotent** ([`GiveUpReason::NotIdempotent`]): the server may have applied it before failing,
    ///    and only an idempotent RPC is safe to apply again.
    /// 4. **At most `max_attempts` in all** ([`GiveUpReason::AttemptsExhausted`]): a request that failed on that
    ///    many endpoints points to a wider outage, which more attempts would only add load to.
    /// 5. **Never a backoff that reaches the deadline** ([`GiveUpReason::DeadlineTooClose`]): if `delay` is not
    ///    shorter than `time_left`, the retry could only end in `DEADLINE_EXCEEDED`, which would hide the real
    ///    error behind a timeout and waste a retry from the budget.
    /// 6. **The budget is consulted last** ([`GiveUpReason::BudgetExhausted`]), because a successful
    ///    withdrawal spends a retry: asked earlier, it would be charged for retries that a later rule refuses,
    ///    starving retries that are allowed.
    #[must_use]
    pub fn decide(&self, failed: &FailedAttempt, budget: &RetryBudget, now: Instant) -> Decision {
        match self.refusal(failed) {
            Some(reason) => Decision::GiveUp(reason),
            None if budget.try_withdraw(now) => Decision::RetryAfter(failed.delay),
            None => Decision::GiveUp(GiveUpReason::BudgetExhausted),
        }
    }

    /// Rules 1 to 5 of [`Self::decide`]: the reason to give up, if any, without touching the budget.
    fn refusal(&self, failed: &FailedAttempt) -> Option<GiveUpReason> {
        if failed.partial_stream {
            return Some(GiveUpReason::PartialStream);
        }
        let unprocessed = match failed.failure {
            Failure::DeadlineExceeded | Failure::Other => return Some(GiveUpReason::NotRetryable),
            Failure::ConnectFailed | Failure::Refused => true,
            Failure::Unavailable => !failed.sent,
        };
        if !unprocessed && !failed.idempotent {
            return Some(GiveUpReason::NotIdempotent);
        }
        if failed.attempts >= self.max_attempts.max(1) {
            return Some(GiveUpReason::AttemptsExhausted);
        }
        if failed.time_left.is_some_and(|left| failed.delay >= left) {
            return Some(GiveUpReason::DeadlineTooClose);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use tokio::time::advance;

    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    fn budget(ratio: f64, min_retries_per_second: u32, ttl: Duration) -> RetryBudget {
        RetryBudget::new(RetryBudgetConfig { ratio, min_retries_per_second, ttl })
    }

    /// Withdraws until the budget refuses (or a bound well past any case is hit) and counts the successes.
    fn drain(budget: &RetryBudget, now: Instant) -> u64 {
        let mut granted = 0;
        while granted < 10_000 && budget.try_withdraw(now) {
            granted += 1;
        }
        granted
    }

    #[tokio::test(start_paused = true)]
    async fn budget_allows_the_ratio_of_deposits_plus_the_floor() {
        // (ratio, min_retries_per_second, ttl, deposits, withdrawals that succeed)
        let cases = [
            (0.2, 0, 10 * SEC, 100, 20),
            (0.2, 1, 10 * SEC, 100, 30),
            // The defaults: 20 from the ratio and 10/s × 10 s from the floor.
            (0.2, 10, 10 * SEC, 100, 120),
            (0.2, 10, 10 * SEC, 0, 100),
            (0.0, 2, 5 * SEC, 100, 10),
            (0.0, 0, 10 * SEC, 100, 0),
            (0.25, 0, 10 * SEC, 3, 0),
            (0.25, 0, 10 * SEC, 4, 1),
            // In floating point 0.29 × 100 is 28.999…; the budget must still allow 29.
            (0.29, 0, 10 * SEC, 100, 29),
            (1.5, 0, 10 * SEC, 10, 15),
            // Below 1e-3 some ratios are a hair under their millionths in floating point (0.000249 × 10⁶ is
            // 248.99…); they must still count as 249 millionths.
            (0.000249, 0, 10 * SEC, 4017, 1),
            // The floor scales with a fractional ttl: floor(10 × 0.2 + 1 × 1.5) = 3.
            (0.2, 1, 1500 * MS, 10, 3),
            // Out of range: a negative or NaN ratio acts as 0, a zero ttl as 1 s.
            (-1.0, 1, 10 * SEC, 100, 10),
            (f64::NAN, 1, 10 * SEC, 100, 10),
            (0.2, 1, Duration::ZERO, 100, 21),
        ];
        for (ratio, min, ttl, deposits, expected) in cases {
            let case = format!("ratio {ratio}, floor {min}/s, ttl {ttl:?}, {deposits} deposits");
            let budget = budget(ratio, min, ttl);
            let now = Instant::now();
            for _ in 0..deposits {
                budget.deposit(now);
            }
            assert_eq!(budget.available(now), expected, "{case}");
            assert_eq!(drain(&budget, now), expected, "{case}");
            assert!(!budget.try_withdraw(now), "{case}: the next withdrawal must fail");
            assert_eq!(budget.available(now), 0, "{case}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_ttl() {
        // Ratio 0.2, floor 1/s over 10 s: 100 deposits are worth 20 retries on top of the floor of 10.
        let budget = budget(0.2, 1, 10 * SEC);
        let start = Instant::now();
        for _ in 0..100 {
            budget.deposit(start);
        }
        // (time since the deposits, available)
        let cases = [(Duration::ZERO, 30), (5 * SEC, 30), (10 * SEC - MS, 30), (10 * SEC, 10), (25 * SEC, 10)];
        for (elapsed, expected) in cases {
            advance(start + elapsed - Instant::now()).await;
            assert_eq!(budget.available(Instant::now()), expected, "after {elapsed:?}");
        }
        assert_eq!(drain(&budget, Instant::now()), 10, "only the floor is left");
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_spell_empties_the_whole_window() {
        // (time between the deposits and the next call, available): nothing is called in between, so one call
        // must empty every bucket that left the window, including the one the new bucket reuses.
        let cases = [(9 * SEC, 30), (10 * SEC, 10), (15 * SEC, 10), (19 * SEC, 10), (3600 * SEC, 10)];
        for (quiet, expected) in cases {
            let budget = budget(0.2, 1, 10 * SEC);
            budget.deposit(Instant::now());
            // Deposits in a later bucket than the epoch's, so that every slot position is exercised.
            advance(SEC).await;
            for _ in 0..100 {
                budget.deposit(Instant::now());
            }
            advance(quiet).await;
            assert_eq!(budget.available(Instant::now()), expected, "after {quiet:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides_bucket_by_bucket() {
        let budget = budget(0.2, 1, 10 * SEC);
        let start = Instant::now();
        for _ in 0..50 {
            budget.deposit(start);
        }
        advance(5 * SEC).await;
        for _ in 0..50 {
            budget.deposit(Instant::now());
        }
        // (time since the first deposits, available): each half stops counting 10 s after it was made.
        let cases = [(5 * SEC, 30), (10 * SEC - MS, 30), (10 * SEC, 20), (15 * SEC - MS, 20), (15 * SEC, 10)];
        for (elapsed, expected) in cases {
            advance(start + elapsed - Instant::now()).await;
            assert_eq!(budget.available(Instant::now()), expected, "after {elapsed:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn withdrawals_count_against_the_budget_until_they_expire() {
        let budget = budget(0.2, 1, 10 * SEC);
        let start = Instant::now();
        for _ in 0..100 {
            budget.deposit(start);
        }
        advance(5 * SEC).await;
        assert_eq!(drain(&budget, Instant::now()), 30);
        // At 10 s the deposits have gone but the 30 retries, made at 5 s, still use up the floor.
        let cases = [(10 * SEC, 0), (15 * SEC - MS, 0), (15 * SEC, 10)];
        for (elapsed, expected) in cases {
            advance(start + elapsed - Instant::now()).await;
            assert_eq!(budget.available(Instant::now()), expected, "after {elapsed:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_instant_older_than_one_seen_counts_as_the_newest() {
        let budget = budget(1.0, 0, 10 * SEC);
        let start = Instant::now();
        budget.deposit(start);
        advance(5 * SEC).await;
        budget.deposit(Instant::now());
        // Late: it lands in the 5 s bucket, not the expired one it belongs to.
        budget.deposit(start);
        advance(5 * SEC).await;
        assert_eq!(budget.available(Instant::now()), 2);
    }

    #[test]
    fn concurrent_withdrawals_never_exceed_the_budget() {
        const THREADS: usize = 8;
        // An over-withdrawal can only happen as the budget runs out, once per budget, so many rounds give a
        // check-then-act race many chances to show.
        const ROUNDS: usize = 200;
        // Ratio 0.2 and a floor of 10 over the window: 8 × 25 = 200 deposits allow 40 + 10 = 50 retries.
        let budgets: Vec<_> = (0..ROUNDS).map(|_| budget(0.2, 1, 10 * SEC)).collect();
        let now = Instant::now();
        let barrier = Barrier::new(THREADS);
        let per_thread: Vec<Vec<u64>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..THREADS)
                .map(|_| {
                    scope.spawn(|| {
                        let mut granted = Vec::with_capacity(ROUNDS);
                        for budget in &budgets {
                            for _ in 0..25 {
                                budget.deposit(now);
                            }
                            // Every deposit is in before any withdrawal, so the total is exact, and all threads
                            // then race for the same retries.
                            barrier.wait();
                            granted.push((0..20).map(|_| u64::from(budget.try_withdraw(now))).sum());
                        }
                        granted
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|worker| worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        });
        for (round, budget) in budgets.iter().enumerate() {
            let granted: u64 = per_thread.iter().map(|granted| granted[round]).sum();
            assert_eq!(granted, 50, "round {round}");
            assert_eq!(budget.available(now), 0, "round {round}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitters_below_it() {
        let full = Backoff::default();
        let equal = Backoff { jitter: Jitter::Equal, ..Backoff::default() };
        // (backoff, attempt, random, delay)
        let cases = [
            (&full, 1, 0.0, Duration::ZERO),
            (&full, 1, 0.5, Duration::from_micros(12_500)),
            (&full, 1, 0.999, Duration::from_micros(24_975)),
            (&full, 2, 0.5, 25 * MS),
            (&full, 3, 0.5, 50 * MS),
            (&full, 6, 0.5, 400 * MS),
            // 25 ms × 2^6 = 1.6 s, capped at 1 s.
            (&full, 7, 0.5, 500 * MS),
            (&full, 7, 0.999, 999 * MS),
            (&full, 40, 0.5, 500 * MS),
            (&full, u32::MAX, 0.5, 500 * MS),
            // Attempt 0 counts as the first retry.
            (&full, 0, 0.5, Duration::from_micros(12_500)),
            // Out-of-range randoms are clamped; NaN is 0.
            (&full, 1, 1.5, 25 * MS),
            (&full, 1, -1.0, Duration::ZERO),
            (&full, 1, f64::NAN, Duration::ZERO),
            (&equal, 1, 0.0, Duration::from_micros(12_500)),
            (&equal, 1, 0.5, Duration::from_micros(18_750)),
            (&equal, 3, 0.5, 75 * MS),
            (&equal, 7, 0.0, 500 * MS),
            (&equal, 7, 0.5, 750 * MS),
            (&equal, 30, 0.999, 999_500 * Duration::from_micros(1)),
        ];
        for (backoff, attempt, random, expected) in cases {
            assert_eq!(
                backoff.delay(attempt, random),
                expected,
                "{:?}, attempt {attempt}, random {random}",
                backoff.jitter
            );
        }
        // The ceilings with the defaults.
        let ceilings: Vec<_> = (1..=8).map(|attempt| full.ceiling(attempt).as_millis()).collect();
        assert_eq!(ceilings, [25, 50, 100, 200, 400, 800, 1000, 1000]);
    }

    #[tokio::test(start_paused = true)]
    async fn policy_applies_each_rule_in_order() {
        use Decision::{GiveUp, RetryAfter};
        use Failure::{ConnectFailed, DeadlineExceeded, Other, Refused, Unavailable};
        use GiveUpReason::*;

        // An idempotent call that got UNAVAILABLE on its first attempt: retried.
        let base = FailedAttempt {
            sent: true,
            idempotent: true,
            partial_stream: false,
            failure: Unavailable,
            attempts: 1,
            time_left: Some(SEC),
            delay: 25 * MS,
        };
        let policy = RetryPolicy::default();
        let cases = [
            ("idempotent UNAVAILABLE", base.clone(), RetryAfter(25 * MS)),
            // Rule 1: a partly sent stream, even one that no server processed.
            ("partial stream", FailedAttempt { partial_stream: true, ..base.clone() }, GiveUp(PartialStream)),
            (
                "partial stream, refused",
                FailedAttempt { partial_stream: true, failure: Refused, ..base.clone() },
                GiveUp(PartialStream),
            ),
            // Rule 2.
            ("DEADLINE_EXCEEDED", FailedAttempt { failure: DeadlineExceeded, ..base.clone() }, GiveUp(NotRetryable)),
            (
                "DEADLINE_EXCEEDED, never sent",
                FailedAttempt { failure: DeadlineExceeded, sent: false, ..base.clone() },
                GiveUp(NotRetryable),
            ),
            ("other status", FailedAttempt { failure: Other, ..base.clone() }, GiveUp(NotRetryable)),
            ("other, never sent", FailedAttempt { failure: Other, sent: false, ..base.clone() }, GiveUp(NotRetryable)),
            // Rule 3: never processed, so idempotency does not matter.
            (
                "connect failed, not idempotent",
                FailedAttempt { failure: ConnectFailed, sent: false, idempotent: false, ..base.clone() },
                RetryAfter(25 * MS),
            ),
            (
                "refused after sending, not idempotent",
                FailedAttempt { failure: Refused, idempotent: false, ..base.clone() },
                RetryAfter(25 * MS),
            ),
            (
                "UNAVAILABLE before sending, not idempotent",
                FailedAttempt { sent: false, idempotent: false, ..base.clone() },
                RetryAfter(25 * MS),
            ),
            (
                "UNAVAILABLE after sending, not idempotent",
                FailedAttempt { idempotent: false, ..base.clone() },
                GiveUp(NotIdempotent),
            ),
            // Rule 4: three attempts in all by default.
            ("second attempt failed", FailedAttempt { attempts: 2, ..base.clone() }, RetryAfter(25 * MS)),
            ("third attempt failed", FailedAttempt { attempts: 3, ..base.clone() }, GiveUp(AttemptsExhausted)),
            (
                "third connect failure",
                FailedAttempt { attempts: 3, failure: ConnectFailed, sent: false, ..base.clone() },
                GiveUp(AttemptsExhausted),
            ),
            // Rule 5: the retry must start before the deadline.
            (
                "backoff shorter than the time left",
                FailedAttempt { time_left: Some(26 * MS), ..base.clone() },
                RetryAfter(25 * MS),
            ),
            (
                "backoff reaching the deadline",
                FailedAttempt { time_left: Some(25 * MS), ..base.clone() },
                GiveUp(DeadlineTooClose),
            ),
            (
                "backoff past the deadline",
                FailedAttempt { time_left: Some(10 * MS), ..base.clone() },
                GiveUp(DeadlineTooClose),
            ),
            (
                "no backoff, no time left",
                FailedAttempt { time_left: Some(Duration::ZERO), delay: Duration::ZERO, ..base.clone() },
                GiveUp(DeadlineTooClose),
            ),
            ("no deadline", FailedAttempt { time_left: None, delay: 10 * SEC, ..base.clone() }, RetryAfter(10 * SEC)),
            // Earlier rules win over later ones.
            (
                "not idempotent and out of attempts",
                FailedAttempt { idempotent: false, attempts: 3, ..base.clone() },
                GiveUp(NotIdempotent),
            ),
            (
                "out of attempts and of time",
                FailedAttempt { attempts: 3, time_left: Some(Duration::ZERO), ..base.clone() },
                GiveUp(AttemptsExhausted),
            ),
        ];
        let now = Instant::now();
        // The floor alone: 100 retries, far more than the cases need.
        let budget = budget(0.0, 10, 10 * SEC);
        for (case, failed, expected) in cases {
            let before = budget.available(now);
            assert_eq!(policy.decide(&failed, &budget, now), expected, "{case}");
            // Rule 6: only a retry that every other rule allows is taken from the budget.
            let spent = u64::from(matches!(expected, RetryAfter(_)));
            assert_eq!(budget.available(now), before - spent, "{case}: budget");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn policy_consults_the_budget_last() {
        let policy = RetryPolicy::default();
        let retryable = FailedAttempt {
            sent: false,
            idempotent: false,
            partial_stream: false,
            failure: Failure::ConnectFailed,
            attempts: 1,
            time_left: None,
            delay: 25 * MS,
        };
        let refused = FailedAttempt { failure: Failure::Other, ..retryable.clone() };
        // A budget of exactly one retry: 5 deposits at ratio 0.2, no floor.
        let budget = budget(0.2, 0, 10 * SEC);
        let now = Instant::now();
        for _ in 0..5 {
            budget.deposit(now);
        }
        // (attempt, decision): the refused attempt leaves the one retry for the next retryable one.
        let cases = [
            (&refused, Decision::GiveUp(GiveUpReason::NotRetryable)),
            (&retryable, Decision::RetryAfter(25 * MS)),
            (&retryable, Decision::GiveUp(GiveUpReason::BudgetExhausted)),
            (&refused, Decision::GiveUp(GiveUpReason::NotRetryable)),
        ];
        for (step, (failed, expected)) in cases.into_iter().enumerate() {
            assert_eq!(policy.decide(failed, &budget, now), expected, "step {step}");
        }
        // Retries off: one attempt in all, and 0 acts as 1.
        for max_attempts in [0, 1] {
            let off = RetryPolicy { max_attempts };
            let decision = off.decide(&retryable, &RetryBudget::default(), now);
            assert_eq!(decision, Decision::GiveUp(GiveUpReason::AttemptsExhausted), "max_attempts {max_attempts}");
        }
    }

    #[test]
    fn validate_rejects_settings_out_of_range() {
        assert_eq!(RetryBudgetConfig::default().validate(), Ok(()));
        assert_eq!(Backoff::default().validate(), Ok(()));
        assert_eq!(RetryPolicy::default().validate(), Ok(()));
        let budget = |ratio, ttl| RetryBudgetConfig { ratio, ttl, ..RetryBudgetConfig::default() }.validate();
        assert_eq!(budget(1000.0, 60 * SEC), Ok(()));
        assert_eq!(budget(0.0, SEC), Ok(()));
        assert_eq!(budget(-0.1, SEC), Err(RetryConfigError::Ratio(-0.1)));
        assert_eq!(budget(1000.5, SEC), Err(RetryConfigError::Ratio(1000.5)));
        assert!(matches!(budget(f64::NAN, SEC), Err(RetryConfigError::Ratio(ratio)) if ratio.is_nan()));
        assert_eq!(budget(0.2, 999 * MS), Err(RetryConfigError::Ttl(999 * MS)));
        assert_eq!(budget(0.2, 61 * SEC), Err(RetryConfigError::Ttl(61 * SEC)));
        let backoff = |base, max| Backoff { base, max, jitter: Jitter::Full }.validate();
        assert_eq!(backoff(SEC, SEC), Ok(()));
        assert_eq!(backoff(Duration::ZERO, SEC), Err(RetryConfigError::Backoff { base: Duration::ZERO, max: SEC }));
        assert_eq!(backoff(2 * SEC, SEC), Err(RetryConfigError::Backoff { base: 2 * SEC, max: SEC }));
        assert_eq!(RetryPolicy { max_attempts: 0 }.validate(), Err(RetryConfigError::ZeroAttempts));
    }
}
