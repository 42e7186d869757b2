//! Fault injection for the simulated IIS: which hostile behaviours are switched on, how they are
//! spelled on the command line, and the seeded dice that decide when they strike.
//!
//! Real `$bulk-match` providers misbehave in ways the client must survive: 5xx bursts, dropped
//! connections, slow responses, `429` storms, garbage ndjson lines, truncated downloads, odd
//! header and JSON spellings. [`Faults`] is the switchboard (parsed from a spec such as
//! `"5xx=0.1,drop=0.05,slow=200ms,truncate,seed=7"`), and [`FaultDice`] turns its rates into
//! deterministic decisions from the seed so a failing test run can be replayed exactly. The HTTP
//! layer in [`crate::sim::server`] applies them.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Every key [`Faults::from_str`] understands, with the shape of its value, for error messages
/// and `--help` texts.
pub const FAULT_KEYS: &[(&str, &str)] = &[
    ("5xx", "rate 0..1: 5xx on status and file requests"),
    (
        "drop",
        "rate 0..1: close the connection without a response (kick-off, status, files)",
    ),
    (
        "slow",
        "duration (200ms, 2s, or plain milliseconds): delay every response",
    ),
    ("429", "rate 0..1: 429 + Retry-After on kick-off and status"),
    ("malformed", "rate 0..1: ndjson lines replaced by garbage"),
    (
        "truncate",
        "flag: first download of each file is cut mid-line",
    ),
    (
        "accept-strict",
        "flag: kick-off with Accept: application/fhir+json gets 400",
    ),
    (
        "expired-first",
        "flag: first complete poll has an Expires in the past",
    ),
    (
        "http-date",
        "flag: manifest transactionTime as an HTTP date",
    ),
    (
        "numeric-codes",
        "flag: OperationOutcome issue.code as a number",
    ),
    (
        "total-outcomes",
        "flag: Bundle.total also counts OperationOutcome entries",
    ),
    (
        "relative-urls",
        "flag: entry.fullUrl relative (Patient/123)",
    ),
    ("shuffle", "flag: Bundle entries out of score order"),
    (
        "transient",
        "rate 0..1: 500 with OperationOutcome code \"transient\" on status",
    ),
    ("seed", "integer: seed of the fault dice"),
];

/// The fault switches of the simulated IIS. `Faults::default()` is a well-behaved server.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Probability of a `5xx` (500/502/503 with an OperationOutcome) on status and file requests.
    pub error_rate: f64,
    /// Probability of closing the connection without a response (kick-off, status, files).
    pub drop_rate: f64,
    /// Delay added to every response, in milliseconds.
    pub slow_ms: u64,
    /// Probability of `429 Too Many Requests` + `Retry-After` on kick-off and status.
    pub storm_429: f64,
    /// Probability that an ndjson line of an output file is replaced by garbage.
    pub malformed_rate: f64,
    /// The first download of each output file is cut in the middle of a line (status 200, shorter
    /// body, no final newline); later downloads are complete.
    pub truncate_files: bool,
    /// A kick-off with `Accept: application/fhir+json` gets `400` (a real-server deviation);
    /// `application/fhir+ndjson` or no `Accept` is accepted.
    pub accept_strict: bool,
    /// The first complete-status response of each job carries an `Expires` in the past.
    pub expired_first: bool,
    /// `transactionTime` in the manifest as an HTTP date instead of a FHIR instant.
    pub http_date_transaction_time: bool,
    /// OperationOutcome `issue.code` sent as a JSON number instead of a code string.
    pub numeric_issue_codes: bool,
    /// `Bundle.total` also counts OperationOutcome entries (it should count matches only).
    pub total_counts_outcomes: bool,
    /// `entry.fullUrl` relative (`Patient/123`) instead of absolute.
    pub relative_full_urls: bool,
    /// Bundle entries shuffled out of score order.
    pub shuffle_entries: bool,
    /// Probability of `500` with an OperationOutcome whose code is `transient` on status polls.
    pub transient_outcome_rate: f64,
    /// Seed of the fault dice; the same seed and the same request sequence give the same faults.
    pub seed: u64,
}

/// Why a fault spec could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FaultSpecError {
    #[error("unknown fault `{key}` in the fault spec; valid faults are: {valid}")]
    UnknownKey { key: String, valid: String },
    #[error(
        "fault `{key}` has the value `{value}`, which is not {expected}; write it like `{example}`"
    )]
    BadValue {
        key: String,
        value: String,
        expected: &'static str,
        example: &'static str,
    },
    #[error("fault `{key}` needs a value; write it like `{example}`")]
    MissingValue { key: String, example: &'static str },
}

impl Faults {
    /// Whether every switch is off (the seed alone does not count).
    pub fn is_benign(&self) -> bool {
        let seedless = Faults {
            seed: 0,
            ..self.clone()
        };
        seedless == Faults::default()
    }
}

fn valid_keys() -> String {
    FAULT_KEYS
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_rate(key: &str, value: Option<&str>) -> Result<f64, FaultSpecError> {
    let example = "5xx=0.1";
    let value = value.ok_or_else(|| FaultSpecError::MissingValue {
        key: key.to_string(),
        example,
    })?;
    match value.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(FaultSpecError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
            expected: "a probability between 0 and 1",
            example,
        }),
    }
}

fn parse_flag(key: &str, value: Option<&str>) -> Result<bool, FaultSpecError> {
    match value.map(|v| v.to_ascii_lowercase()) {
        None => Ok(true),
        Some(v) if matches!(v.as_str(), "true" | "1" | "yes" | "on") => Ok(true),
        Some(v) if matches!(v.as_str(), "false" | "0" | "no" | "off") => Ok(false),
        Some(v) => Err(FaultSpecError::BadValue {
            key: key.to_string(),
            value: v,
            expected: "a switch (no value, or true/false)",
            example: "truncate",
        }),
    }
}

fn parse_millis(key: &str, value: Option<&str>) -> Result<u64, FaultSpecError> {
    let example = "slow=200ms";
    let value = value.ok_or_else(|| FaultSpecError::MissingValue {
        key: key.to_string(),
        example,
    })?;
    let v = value.trim().to_ascii_lowercase();
    let parsed = if let Some(ms) = v.strip_suffix("ms") {
        ms.trim().parse::<u64>().ok()
    } else if let Some(s) = v.strip_suffix('s') {
        s.trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| (s * 1000.0).round() as u64)
    } else {
        v.parse::<u64>().ok()
    };
    parsed.ok_or_else(|| FaultSpecError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
        expected: "a duration",
        example,
    })
}

impl FromStr for Faults {
    type Err = FaultSpecError;

    /// Parse a comma-separated fault spec, e.g.
    /// `"5xx=0.1,drop=0.05,slow=200ms,429=0.2,malformed=0.01,truncate,accept-strict,expired-first,http-date,numeric-codes,total-outcomes,relative-urls,shuffle,transient=0.1,seed=7"`.
    /// An empty spec or `none` means no faults.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let mut f = Faults::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item.eq_ignore_ascii_case("none") {
                continue;
            }
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
                None => (item.to_ascii_lowercase(), None),
            };
            match key.as_str() {
                "5xx" => f.error_rate = parse_rate(&key, value)?,
                "drop" => f.drop_rate = parse_rate(&key, value)?,
                "slow" => f.slow_ms = parse_millis(&key, value)?,
                "429" => f.storm_429 = parse_rate(&key, value)?,
                "malformed" => f.malformed_rate = parse_rate(&key, value)?,
                "transient" => f.transient_outcome_rate = parse_rate(&key, value)?,
                "truncate" => f.truncate_files = parse_flag(&key, value)?,
                "accept-strict" => f.accept_strict = parse_flag(&key, value)?,
                "expired-first" => f.expired_first = parse_flag(&key, value)?,
                "http-date" => f.http_date_transaction_time = parse_flag(&key, value)?,
                "numeric-codes" => f.numeric_issue_codes = parse_flag(&key, value)?,
                "total-outcomes" => f.total_counts_outcomes = parse_flag(&key, value)?,
                "relative-urls" => f.relative_full_urls = parse_flag(&key, value)?,
                "shuffle" => f.shuffle_entries = parse_flag(&key, value)?,
                "seed" => {
                    let v = value.ok_or_else(|| FaultSpecError::MissingValue {
                        key: key.clone(),
                        example: "seed=7",
                    })?;
                    f.seed = v.parse().map_err(|_| FaultSpecError::BadValue {
                        key: key.clone(),
                        value: v.to_string(),
                        expected: "a non-negative integer",
                        example: "seed=7",
                    })?;
                }
                _ => {
                    return Err(FaultSpecError::UnknownKey {
                        key,
                        valid: valid_keys(),
                    });
                }
            }
        }
        Ok(f)
    }
}

impl fmt::Display for Faults {
    /// The canonical spec: only the switches that are on, in a fixed order; `none` when benign.
    /// `s.parse::<Faults>()` of the output gives back an equal value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        let rates = [
            ("5xx", self.error_rate),
            ("drop", self.drop_rate),
            ("429", self.storm_429),
            ("malformed", self.malformed_rate),
            ("transient", self.transient_outcome_rate),
        ];
        for (k, r) in rates {
            if r > 0.0 {
                parts.push(format!("{k}={r}"));
            }
        }
        if self.slow_ms > 0 {
            parts.push(format!("slow={}ms", self.slow_ms));
        }
        let flags = [
            ("truncate", self.truncate_files),
            ("accept-strict", self.accept_strict),
            ("expired-first", self.expired_first),
            ("http-date", self.http_date_transaction_time),
            ("numeric-codes", self.numeric_issue_codes),
            ("total-outcomes", self.total_counts_outcomes),
            ("relative-urls", self.relative_full_urls),
            ("shuffle", self.shuffle_entries),
        ];
        for (k, on) in flags {
            if on {
                parts.push(k.to_string());
            }
        }
        if self.seed != 0 {
            parts.push(format!("seed={}", self.seed));
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

/// Seeded dice that decide, request by request, whether a fault strikes.
///
/// One generator shared by all requests of a server (behind a mutex): with the same seed and the
/// same sequence of requests the same faults fire.
#[derive(Debug)]
pub struct FaultDice {
    rng: Mutex<ChaCha8Rng>,
}

impl FaultDice {
    pub fn new(seed: u64) -> FaultDice {
        FaultDice {
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    /// `true` with probability `p`. Never rolls (and so never advances the dice) for `p <= 0`,
    /// so switching one fault on does not change when the others strike.
    pub fn chance(&self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        if p >= 1.0 {
            return true;
        }
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        rng.random_bool(p)
    }

    /// A number in `0..n` (`0` when `n == 0`).
    pub fn below(&self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        rng.random_range(0..n)
    }

    /// A fresh generator seeded from these dice, for work that runs off the request path (for
    /// example building an output file) and should not hold the lock.
    pub fn fork(&self) -> ChaCha8Rng {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        ChaCha8Rng::seed_from_u64(rng.random())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "5xx=0.1,drop=0.05,slow=200ms,429=0.2,malformed=0.01,truncate,accept-strict,expired-first,http-date,numeric-codes,total-outcomes,relative-urls,shuffle,transient=0.1,seed=7";

    #[test]
    fn parses_every_switch_of_the_full_spec() {
        let f: Faults = FULL.parse().unwrap();
        assert_eq!(
            f,
            Faults {
                error_rate: 0.1,
                drop_rate: 0.05,
                slow_ms: 200,
                storm_429: 0.2,
                malformed_rate: 0.01,
                truncate_files: true,
                accept_strict: true,
                expired_first: true,
                http_date_transaction_time: true,
                numeric_issue_codes: true,
                total_counts_outcomes: true,
                relative_full_urls: true,
                shuffle_entries: true,
                transient_outcome_rate: 0.1,
                seed: 7,
            }
        );
        assert!(!f.is_benign());
    }

    #[test]
    fn display_round_trips() {
        let f: Faults = FULL.parse().unwrap();
        let again: Faults = f.to_string().parse().unwrap();
        assert_eq!(f, again);
        let partial: Faults = " slow=2s , shuffle, seed=3 ".parse().unwrap();
        assert_eq!(partial.slow_ms, 2000);
        assert_eq!(partial.to_string(), "slow=2000ms,shuffle,seed=3");
        assert_eq!(partial.to_string().parse::<Faults>().unwrap(), partial);
        assert_eq!(Faults::default().to_string(), "none");
        assert_eq!("none".parse::<Faults>().unwrap(), Faults::default());
        assert_eq!("".parse::<Faults>().unwrap(), Faults::default());
        assert!(Faults::default().is_benign());
        assert!("seed=9".parse::<Faults>().unwrap().is_benign());
    }

    #[test]
    fn flags_accept_explicit_values_and_slow_accepts_plain_millis() {
        let f: Faults = "truncate=false,shuffle=true,slow=150".parse().unwrap();
        assert!(!f.truncate_files);
        assert!(f.shuffle_entries);
        assert_eq!(f.slow_ms, 150);
    }

    #[test]
    fn unknown_key_lists_the_valid_ones() {
        let err = "5xx=0.1,explode=1".parse::<Faults>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`explode`"), "{msg}");
        for (k, _) in FAULT_KEYS {
            assert!(msg.contains(k), "{k} missing from: {msg}");
        }
    }

    #[test]
    fn bad_values_say_what_is_expected() {
        let msg = "5xx=1.5".parse::<Faults>().unwrap_err().to_string();
        assert!(
            msg.contains("between 0 and 1") && msg.contains("1.5"),
            "{msg}"
        );
        let msg = "slow=fast".parse::<Faults>().unwrap_err().to_string();
        assert!(
            msg.contains("duration") && msg.contains("slow=200ms"),
            "{msg}"
        );
        assert_eq!(
            "drop".parse::<Faults>().unwrap_err(),
            FaultSpecError::MissingValue {
                key: "drop".into(),
                example: "5xx=0.1"
            }
        );
        assert!("truncate=maybe".parse::<Faults>().is_err());
        assert!("seed=-1".parse::<Faults>().is_err());
    }

    #[test]
    fn dice_are_deterministic_and_respect_rates() {
        let a = FaultDice::new(42);
        let b = FaultDice::new(42);
        let ra: Vec<bool> = (0..200).map(|_| a.chance(0.3)).collect();
        let rb: Vec<bool> = (0..200).map(|_| b.chance(0.3)).collect();
        assert_eq!(ra, rb);
        let hits = ra.iter().filter(|x| **x).count();
        assert!((30..=90).contains(&hits), "{hits} hits of 200 at p=0.3");
        assert!(!a.chance(0.0));
        assert!(a.chance(1.0));
        let c = FaultDice::new(43);
        let rc: Vec<bool> = (0..200).map(|_| c.chance(0.3)).collect();
        assert_ne!(ra, rc);
        assert!(a.below(5) < 5);
        assert_eq!(a.below(0), 0);
    }
}
