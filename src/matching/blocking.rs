//! Blocking keys for the simulated IIS's candidate index.
//!
//! A registry indexes each patient under a handful of 64-bit keys; a query computes its own keys
//! with the same function and scores only the patients that share at least one. Each key is
//! built so that a typical single corruption (typo in the family name, swapped day and month,
//! year typo, nickname, moved address, first/last swapped) leaves at least one key intact.
//! Keys are FNV-1a 64 hashes (stable across runs and platforms) of a one-byte key kind followed
//! by its parts, so keys of different kinds never collide by construction of their input.

use chrono::Datelike;

use super::normalize::{digits_cow, email_cow, id_cow, name_cow, phone_cow};
use super::text::{Fnv64, soundex};
use crate::domain::Demographics;

/// Key kinds (the first byte hashed). Documented in docs/MATCHING.md.
mod kind {
    /// soundex(family part) + birth year + {month, day} unordered.
    pub const FAMILY_DOB: u8 = b'F';
    /// full birth date + first letter of given.
    pub const DOB_INITIAL: u8 = b'D';
    /// soundex(given) + {month, day} unordered (no year).
    pub const GIVEN_MONTH_DAY: u8 = b'G';
    /// {soundex(given), soundex(family)} unordered + birth year.
    pub const NAMES_YEAR: u8 = b'N';
    pub const PHONE: u8 = b'P';
    /// SSN last four + birth year.
    pub const SSN_YEAR: u8 = b'S';
    pub const MEDICAID: u8 = b'M';
    pub const EMAIL: u8 = b'E';
}

/// The blocking keys of `d` (deduplicated, in no particular order). Empty fields produce no key.
pub fn blocking_keys(d: &Demographics) -> Vec<u64> {
    let mut keys = Vec::with_capacity(10);
    blocking_keys_into(d, &mut keys);
    keys
}

/// [`blocking_keys`] appending to a reused buffer (cleared first).
pub fn blocking_keys_into(d: &Demographics, out: &mut Vec<u64>) {
    out.clear();
    let given = d.given.as_deref().and_then(name_cow);
    let family = d.family.as_deref().and_then(name_cow);
    let sx_given = given.as_deref().and_then(soundex);
    let sx_family = family.as_deref().and_then(soundex);
    let dob = d.birth_date.map(|b| {
        let (m, day) = (b.month(), b.day());
        // Years are stored as their bit pattern; negative years are not a concern for patients.
        (b.year() as u32, m, day, m.min(day), m.max(day))
    });

    if let Some((year, _, _, lo, hi)) = dob {
        if let Some(family) = family.as_deref() {
            let mut emit = |sx: [u8; 4]| {
                out.push(
                    Fnv64::new()
                        .byte(kind::FAMILY_DOB)
                        .bytes(&sx)
                        .u32(year)
                        .u32(lo)
                        .u32(hi)
                        .finish(),
                );
            };
            if let Some(sx) = sx_family {
                emit(sx);
            }
            // Each part of a hyphenated or compound family name, so SMITH-JONES finds SMITH.
            if family.contains(['-', ' ']) {
                for part in family.split(['-', ' ']).filter(|p| p.len() >= 2).take(3) {
                    if let Some(sx) = soundex(part) {
                        emit(sx);
                    }
                }
            }
        }
        if let Some(sx) = sx_given {
            out.push(
                Fnv64::new()
                    .byte(kind::GIVEN_MONTH_DAY)
                    .bytes(&sx)
                    .u32(lo)
                    .u32(hi)
                    .finish(),
            );
        }
    }
    // The soundex code starts with the first letter of the (normalized) given name.
    if let (Some((year, m, day, _, _)), Some(sx)) = (dob, sx_given) {
        out.push(
            Fnv64::new()
                .byte(kind::DOB_INITIAL)
                .u32(year)
                .u32(m)
                .u32(day)
                .byte(sx[0])
                .finish(),
        );
    }
    if let (Some((year, ..)), Some(g), Some(f)) = (dob, sx_given, sx_family) {
        let (lo, hi) = if g <= f { (g, f) } else { (f, g) };
        out.push(
            Fnv64::new()
                .byte(kind::NAMES_YEAR)
                .bytes(&lo)
                .bytes(&hi)
                .u32(year)
                .finish(),
        );
    }
    if let Some(p) = d.phone.as_deref().and_then(phone_cow)
        && p.len() >= 7
    {
        out.push(Fnv64::new().byte(kind::PHONE).bytes(p.as_bytes()).finish());
    }
    if let (Some(ssn), Some((year, ..))) = (d.ssn.as_deref().and_then(digits_cow), dob)
        && ssn.len() >= 4
    {
        let last4 = &ssn.as_bytes()[ssn.len() - 4..];
        out.push(
            Fnv64::new()
                .byte(kind::SSN_YEAR)
                .bytes(last4)
                .u32(year)
                .finish(),
        );
    }
    if let Some(m) = d.medicaid_id.as_deref().and_then(id_cow) {
        out.push(
            Fnv64::new()
                .byte(kind::MEDICAID)
                .bytes(m.as_bytes())
                .finish(),
        );
    }
    if let Some(e) = d.email.as_deref().and_then(email_cow) {
        out.push(Fnv64::new().byte(kind::EMAIL).bytes(e.as_bytes()).finish());
    }
    out.sort_unstable();
    out.dedup();
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn person() -> Demographics {
        Demographics {
            given: Some("WILLIAM".into()),
            family: Some("JOHNSON".into()),
            birth_date: NaiveDate::from_ymd_opt(2012, 3, 9),
            phone: Some("5551234567".into()),
            ssn: Some("123456789".into()),
            ..Default::default()
        }
    }

    fn shares_key(a: &Demographics, b: &Demographics) -> bool {
        let kb = blocking_keys(b);
        blocking_keys(a).iter().any(|k| kb.contains(k))
    }

    #[test]
    fn keys_are_stable_and_deduplicated() {
        let k = blocking_keys(&person());
        assert_eq!(k, blocking_keys(&person()));
        assert!(k.len() >= 6, "{k:?}");
        let mut sorted = k.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), k.len());
        // Unnormalized input gives the same keys.
        let mut raw = person();
        raw.given = Some("William".into());
        raw.phone = Some("(555) 123-4567".into());
        raw.ssn = Some("123-45-6789".into());
        assert_eq!(blocking_keys(&raw), k);
        assert!(blocking_keys(&Demographics::default()).is_empty());
    }

    #[test]
    fn single_corruptions_keep_a_shared_key() {
        let base = person();
        let no_contact = |mut d: Demographics| {
            d.phone = None;
            d.ssn = None;
            d
        };
        let truth = no_contact(base.clone());
        let mut typo = truth.clone();
        typo.family = Some("JOHNSNO".into());
        let mut swapped = truth.clone();
        swapped.birth_date = NaiveDate::from_ymd_opt(2012, 9, 3);
        let mut year = truth.clone();
        year.birth_date = NaiveDate::from_ymd_opt(2011, 3, 9);
        let mut nick = truth.clone();
        nick.given = Some("BILL".into());
        let mut names = truth.clone();
        names.given = Some("JOHNSON".into());
        names.family = Some("WILLIAM".into());
        let mut day_digit = truth.clone();
        day_digit.birth_date = NaiveDate::from_ymd_opt(2012, 3, 8);
        let mut hyphen = truth.clone();
        hyphen.family = Some("JOHNSON-SMITH".into());
        for (what, q) in [
            ("family typo", typo),
            ("day/month swapped", swapped),
            ("year typo", year),
            ("nickname", nick),
            ("names swapped", names),
            ("day digit", day_digit),
            ("hyphenated", hyphen),
        ] {
            assert!(shares_key(&q, &truth), "{what}");
        }
    }

    #[test]
    fn different_people_share_no_key() {
        let other = Demographics {
            given: Some("MARIA".into()),
            family: Some("GARCIA".into()),
            birth_date: NaiveDate::from_ymd_opt(1990, 11, 30),
            phone: Some("6175550000".into()),
            ..Default::default()
        };
        assert!(!shares_key(&other, &person()));
    }

    #[test]
    fn phone_or_ids_alone_block() {
        let a = Demographics {
            phone: Some("5551234567".into()),
            ..Default::default()
        };
        assert!(shares_key(&a, &person()));
        let m = Demographics {
            medicaid_id: Some("MA123".into()),
            ..Default::default()
        };
        let mut p = person();
        p.medicaid_id = Some("ma-123".into());
        assert!(shares_key(&m, &p));
    }
}
