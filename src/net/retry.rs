//! Retry policy, jittered exponential backoff and `Retry-After` parsing.
//!
//! Modelled on `object_store`'s `client/retry.rs`: the *policy* ([`RetryConfig`]: how many retries,
//! how long in total, the backoff curve) is separate from the *state* of one request's retries
//! ([`Backoff`]). Backoff uses jitter so that many clients (or many chunks of one job) do not
//! retry in lockstep; the random source is injectable so tests are deterministic.

use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use reqwest::header::HeaderValue;

/// The longest `Retry-After` we honour: a server asking for more is treated as asking for this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How a request is retried after a transient failure (connection error, 5xx, 429).
#[derive(Clone, Debug, PartialEq)]
pub struct RetryConfig {
    /// Retries after the first attempt (so up to `max_retries + 1` attempts).
    pub max_retries: u32,
    /// The backoff ceiling of the first retry.
    pub initial_backoff: Duration,
    /// The largest backoff ceiling.
    pub max_backoff: Duration,
    /// Growth factor of the ceiling per retry.
    pub base: f64,
    /// Give up once this much time has passed since the first attempt, even with retries left.
    pub retry_timeout: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 6,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            base: 2.0,
            retry_timeout: Duration::from_secs(5 * 60),
        }
    }
}

/// How the random part of a backoff is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Jitter {
    /// Uniform in `[0, ceiling]` (AWS "full jitter"): best at spreading retries apart.
    Full,
    /// Uniform in `[ceiling/2, ceiling]`: never polls much faster than the curve says.
    Equal,
}

/// The backoff state of one request (or one polling loop).
pub struct Backoff {
    initial_secs: f64,
    max_secs: f64,
    base: f64,
    attempt: u32,
    jitter: Jitter,
    rng: Box<dyn RngCore + Send>,
}

impl std::fmt::Debug for Backoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backoff")
            .field("initial_secs", &self.initial_secs)
            .field("max_secs", &self.max_secs)
            .field("base", &self.base)
            .field("attempt", &self.attempt)
            .field("jitter", &self.jitter)
            .finish_non_exhaustive()
    }
}

impl Backoff {
    /// Full-jitter backoff following `cfg`, seeded from the thread RNG.
    pub fn new(cfg: &RetryConfig) -> Self {
        Self::new_with_rng(cfg, Box::new(StdRng::from_rng(&mut rand::rng())))
    }

    /// Full-jitter backoff following `cfg` with the given random source.
    pub fn new_with_rng(cfg: &RetryConfig, rng: Box<dyn RngCore + Send>) -> Self {
        Self::curve(
            cfg.initial_backoff,
            cfg.max_backoff,
            cfg.base,
            Jitter::Full,
            rng,
        )
    }

    /// A backoff with an explicit curve and jitter kind (used for polling intervals).
    pub fn curve(
        initial: Duration,
        max: Duration,
        base: f64,
        jitter: Jitter,
        rng: Box<dyn RngCore + Send>,
    ) -> Self {
        let initial_secs = initial.as_secs_f64();
        Backoff {
            initial_secs,
            max_secs: max.as_secs_f64().max(initial_secs),
            base: if base.is_finite() && base >= 1.0 {
                base
            } else {
                1.0
            },
            attempt: 0,
            jitter,
            rng,
        }
    }

    /// The ceiling of the next delay: `min(max, initial * base^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let exp = i32::try_from(self.attempt).unwrap_or(i32::MAX);
        let secs = (self.initial_secs * self.base.powi(exp)).min(self.max_secs);
        Duration::from_secs_f64(if secs.is_finite() {
            secs
        } else {
            self.max_secs
        })
    }

    /// The next delay, advancing the state.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling().as_secs_f64();
        self.attempt = self.attempt.saturating_add(1);
        // 53 random bits → uniform in [0, 1).
        let unit = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let secs = match self.jitter {
            Jitter::Full => ceiling * unit,
            Jitter::Equal => ceiling / 2.0 + ceiling / 2.0 * unit,
        };
        Duration::from_secs_f64(secs)
    }

    /// Start the curve again (after a success in a polling loop).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Parse a `Retry-After` header: delta-seconds (`120`) or an HTTP-date
/// (`Fri, 31 Dec 1999 23:59:59 GMT`, relative to `now`; a date in the past means zero).
/// Capped at [`MAX_RETRY_AFTER`]. `None` if the value is neither.
pub fn parse_retry_after(h: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let s = h.to_str().ok()?.trim();
    let d = if let Ok(secs) = s.parse::<u64>() {
        Duration::from_secs(secs)
    } else if let Ok(secs) = s.parse::<f64>() {
        // Not allowed by RFC 9110, but some servers send fractions.
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64()))
    } else {
        let at = httpdate::parse_http_date(s).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;

    fn cfg() -> RetryConfig {
        RetryConfig {
            max_retries: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            base: 2.0,
            retry_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn full_jitter_stays_under_a_growing_capped_ceiling() {
        let mut b = Backoff::new_with_rng(&cfg(), Box::new(ChaCha8Rng::seed_from_u64(7)));
        let ceilings = [100, 200, 400, 800, 1000, 1000, 1000];
        let mut delays = Vec::new();
        for c in ceilings {
            assert_eq!(b.ceiling(), Duration::from_millis(c));
            let d = b.next_delay();
            assert!(d <= Duration::from_millis(c), "{d:?} > {c}ms");
            delays.push(d);
        }
        // Jitter: not all the same fraction of the ceiling.
        assert!(delays.windows(2).any(|w| w[0] != w[1]));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn same_seed_same_delays() {
        let mut a = Backoff::new_with_rng(&cfg(), Box::new(ChaCha8Rng::seed_from_u64(1)));
        let mut b = Backoff::new_with_rng(&cfg(), Box::new(ChaCha8Rng::seed_from_u64(1)));
        for _ in 0..5 {
            assert_eq!(a.next_delay(), b.next_delay());
        }
    }

    #[test]
    fn equal_jitter_has_a_floor() {
        let mut b = Backoff::curve(
            Duration::from_secs(1),
            Duration::from_secs(60),
            2.0,
            Jitter::Equal,
            Box::new(ChaCha8Rng::seed_from_u64(3)),
        );
        for i in 0..10 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(d >= ceiling / 2 && d <= ceiling, "attempt {i}: {d:?}");
        }
        assert_eq!(b.ceiling(), Duration::from_secs(60));
    }

    #[test]
    fn retry_after_seconds_dates_and_garbage() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(
            parse_retry_after(&h("120"), now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(&h(" 0 "), now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(&h("1.5"), now),
            Some(Duration::from_millis(1500))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&h(&later), now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&h(&past), now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(&h("99999999"), now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after(&h("soon"), now), None);
        assert_eq!(parse_retry_after(&h("-5"), now), None);
    }
}
