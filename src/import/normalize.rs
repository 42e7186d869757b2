//! Normalization of demographics for matching, and the stable derived row id.
//!
//! Names and address text: uppercase, simple accents folded to ASCII (`é` → `E`), punctuation
//! other than hyphens removed, whitespace collapsed. Phone → 10 digits, ZIP → ZIP5, state →
//! 2-letter code, email → lowercase, SSN → digits. Malformed optional values are dropped from the
//! normalized copy with a plain-words reason.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::BuildHasherDefault;

use crate::domain::{Demographics, Field};

/// `str::trim`, with a fast path for the common already-trimmed ASCII value.
#[inline]
pub(crate) fn trim(s: &str) -> &str {
    match (s.as_bytes().first(), s.as_bytes().last()) {
        (None, _) | (_, None) => s,
        (Some(&a), Some(&b)) if a.is_ascii_graphic() && b.is_ascii_graphic() => s,
        _ => s.trim(),
    }
}

/// Uppercase, fold accents, keep letters/digits/hyphens, collapse whitespace. This is the one
/// definition in [`crate::matching::normalize_name`], so what is stored and submitted is exactly
/// what the comparators expect.
pub fn normalize_name(s: &str) -> String {
    crate::matching::normalize_name(s)
}

const STATES: &[(&str, &str)] = &[
    ("AL", "ALABAMA"),
    ("AK", "ALASKA"),
    ("AZ", "ARIZONA"),
    ("AR", "ARKANSAS"),
    ("CA", "CALIFORNIA"),
    ("CO", "COLORADO"),
    ("CT", "CONNECTICUT"),
    ("DE", "DELAWARE"),
    ("DC", "DISTRICT OF COLUMBIA"),
    ("FL", "FLORIDA"),
    ("GA", "GEORGIA"),
    ("HI", "HAWAII"),
    ("ID", "IDAHO"),
    ("IL", "ILLINOIS"),
    ("IN", "INDIANA"),
    ("IA", "IOWA"),
    ("KS", "KANSAS"),
    ("KY", "KENTUCKY"),
    ("LA", "LOUISIANA"),
    ("ME", "MAINE"),
    ("MD", "MARYLAND"),
    ("MA", "MASSACHUSETTS"),
    ("MI", "MICHIGAN"),
    ("MN", "MINNESOTA"),
    ("MS", "MISSISSIPPI"),
    ("MO", "MISSOURI"),
    ("MT", "MONTANA"),
    ("NE", "NEBRASKA"),
    ("NV", "NEVADA"),
    ("NH", "NEW HAMPSHIRE"),
    ("NJ", "NEW JERSEY"),
    ("NM", "NEW MEXICO"),
    ("NY", "NEW YORK"),
    ("NC", "NORTH CAROLINA"),
    ("ND", "NORTH DAKOTA"),
    ("OH", "OHIO"),
    ("OK", "OKLAHOMA"),
    ("OR", "OREGON"),
    ("PA", "PENNSYLVANIA"),
    ("RI", "RHODE ISLAND"),
    ("SC", "SOUTH CAROLINA"),
    ("SD", "SOUTH DAKOTA"),
    ("TN", "TENNESSEE"),
    ("TX", "TEXAS"),
    ("UT", "UTAH"),
    ("VT", "VERMONT"),
    ("VA", "VIRGINIA"),
    ("WA", "WASHINGTON"),
    ("WV", "WEST VIRGINIA"),
    ("WI", "WISCONSIN"),
    ("WY", "WYOMING"),
    ("PR", "PUERTO RICO"),
    ("VI", "VIRGIN ISLANDS"),
    ("GU", "GUAM"),
    ("AS", "AMERICAN SAMOA"),
    ("MP", "NORTHERN MARIANA ISLANDS"),
    ("AA", "ARMED FORCES AMERICAS"),
    ("AE", "ARMED FORCES EUROPE"),
    ("AP", "ARMED FORCES PACIFIC"),
];

/// The 2-letter code for a US state/territory code or full name (any case, punctuation ignored).
pub fn state_code(s: &str) -> Option<&'static str> {
    let t = s.trim();
    if t.len() == 2 {
        return STATES
            .iter()
            .find(|(code, _)| code.eq_ignore_ascii_case(t))
            .map(|(code, _)| *code);
    }
    let n = normalize_name(t);
    STATES
        .iter()
        .find(|(code, name)| *code == n || *name == n)
        .map(|(code, _)| *code)
}

/// The ASCII digits of `s`, collected in `buf` without allocating; `None` if there are more
/// digits than fit (such a value is invalid for every caller).
fn digits<'a>(s: &str, buf: &'a mut [u8; 16]) -> Option<&'a str> {
    let mut n = 0;
    for b in s.bytes().filter(u8::is_ascii_digit) {
        *buf.get_mut(n)? = b;
        n += 1;
    }
    std::str::from_utf8(&buf[..n]).ok()
}

/// 10-digit US phone (a leading country code 1 is dropped).
fn norm_phone(s: &str) -> Option<String> {
    if s.bytes().any(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    let mut buf = [0u8; 16];
    let d = digits(s, &mut buf)?;
    match d.len() {
        10 => Some(d.to_string()),
        11 if d.starts_with('1') => Some(d[1..].to_string()),
        _ => None,
    }
}

/// ZIP5 from a 5- or 9-digit ZIP (`12345`, `12345-6789`, `123456789`).
fn norm_zip(s: &str) -> Option<String> {
    if !s
        .bytes()
        .all(|c| c.is_ascii_digit() || c == b'-' || c == b' ')
    {
        return None;
    }
    let mut buf = [0u8; 16];
    let d = digits(s, &mut buf)?;
    match d.len() {
        5 | 9 => Some(d[..5].to_string()),
        _ => None,
    }
}

fn norm_email(s: &str) -> Option<String> {
    let e = s.trim();
    let (local, domain) = e.split_once('@')?;
    let ok = !local.is_empty()
        && !domain.contains('@')
        && !e.contains(char::is_whitespace)
        && domain
            .split_once('.')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
        && !domain.ends_with('.');
    ok.then(|| {
        if e.is_ascii() {
            e.to_ascii_lowercase()
        } else {
            e.to_lowercase()
        }
    })
}

fn norm_ssn(s: &str) -> Option<String> {
    if !s
        .bytes()
        .all(|c| c.is_ascii_digit() || c == b'-' || c == b' ')
    {
        return None;
    }
    let mut buf = [0u8; 16];
    let d = digits(s, &mut buf)?;
    match d.len() {
        4 | 9 if d.bytes().any(|c| c != b'0') => Some(d.to_string()),
        _ => None,
    }
}

fn trimmed(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

fn name(s: &Option<String>) -> Option<String> {
    s.as_deref().map(normalize_name).filter(|t| !t.is_empty())
}

/// Normalize `original` for matching. Returns the normalized copy and, for each malformed
/// optional value that was dropped, the field and a plain-words reason.
pub fn normalize(original: &Demographics) -> (Demographics, Vec<(Field, String)>) {
    let mut out = Demographics::default();
    let mut warnings = Vec::new();
    normalize_into(original, &mut out, &mut warnings);
    (out, warnings)
}

/// [`normalize`] writing into `out` (avoids moving a large struct per row in the reader).
pub(crate) fn normalize_into(
    original: &Demographics,
    out: &mut Demographics,
    warnings: &mut Vec<(Field, String)>,
) {
    let mut checked = |field: Field,
                       v: &Option<String>,
                       f: fn(&str) -> Option<String>,
                       why: &str|
     -> Option<String> {
        let raw = v.as_deref().map(trim).filter(|t| !t.is_empty())?;
        let out = f(raw);
        if out.is_none() {
            warnings.push((
                field,
                format!("{} {raw} {why}", field.label().to_lowercase()),
            ));
        }
        out
    };
    let phone = checked(
        Field::Phone,
        &original.phone,
        norm_phone,
        "is not a 10-digit US phone number — it was left out for matching",
    );
    let email = checked(
        Field::Email,
        &original.email,
        norm_email,
        "is not an email address (it needs an @ and a domain with a dot) — it was left out for matching",
    );
    let postal_code = checked(
        Field::PostalCode,
        &original.postal_code,
        norm_zip,
        "is not a 5- or 9-digit ZIP code — it was left out for matching (a spreadsheet may have dropped a leading zero)",
    );
    let ssn = checked(
        Field::Ssn,
        &original.ssn,
        norm_ssn,
        "is not a 9-digit SSN or its last 4 digits — it was left out for matching",
    );
    let state = checked(
        Field::State,
        &original.state,
        |s| state_code(s).map(str::to_string),
        "is not a US state (use the 2-letter code or the full name) — it was left out for matching",
    );
    *out = Demographics {
        given: name(&original.given),
        middle: name(&original.middle),
        family: name(&original.family),
        suffix: name(&original.suffix),
        birth_date: original.birth_date,
        sex: original.sex,
        phone,
        email,
        address_line1: name(&original.address_line1),
        address_line2: name(&original.address_line2),
        city: name(&original.city),
        state,
        postal_code,
        local_id: trimmed(&original.local_id),
        medicaid_id: trimmed(&original.medicaid_id),
        ssn,
        mothers_maiden_name: name(&original.mothers_maiden_name),
        multiple_birth: original.multiple_birth,
        multiple_birth_order: original.multiple_birth_order,
        iis_id: trimmed(&original.iis_id),
    };
}

/// 64-bit FNV-1a: stable across runs, platforms and Rust versions (unlike `DefaultHasher`).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// FNV-1a as a [`std::hash::Hasher`], for the duplicate-id set (fast; ids are not adversarial).
#[derive(Default)]
pub(crate) struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// The set of source ids seen so far, for duplicate detection, without one allocation per id:
/// ids are appended to one arena string and indexed by their FNV-1a hash. A genuine hash
/// collision between two different ids falls back to an ordinary map, so it is never mistaken
/// for a duplicate.
#[derive(Default)]
pub(crate) struct IdSet {
    /// hash → (offset in `arena`, length, line of first occurrence)
    map: HashMap<u64, (usize, usize, u64), BuildHasherDefault<Fnv>>,
    arena: String,
    collided: HashMap<String, u64>,
}

impl IdSet {
    pub(crate) fn with_capacity(n: usize) -> IdSet {
        IdSet {
            map: HashMap::with_capacity_and_hasher(n, BuildHasherDefault::default()),
            arena: String::with_capacity(n.saturating_mul(8)),
            collided: HashMap::new(),
        }
    }

    /// Record `id` first seen on `line`; if it was seen before, return the line of the first.
    pub(crate) fn first_seen(&mut self, id: &str, line: u64) -> Option<u64> {
        self.first_seen_hashed(id, fnv1a64(id.as_bytes()), line)
    }

    fn first_seen_hashed(&mut self, id: &str, hash: u64, line: u64) -> Option<u64> {
        match self.map.entry(hash) {
            Entry::Occupied(e) => {
                let (off, len, first) = *e.get();
                if self.arena.get(off..off + len) == Some(id) {
                    Some(first)
                } else if let Some(&first) = self.collided.get(id) {
                    Some(first)
                } else {
                    self.collided.insert(id.to_string(), line);
                    None
                }
            }
            Entry::Vacant(e) => {
                let off = self.arena.len();
                self.arena.push_str(id);
                e.insert((off, id.len(), line));
                None
            }
        }
    }
}

/// The stable id of a row without a local id: `"row-"` + 16 hex digits of FNV-1a 64 over the
/// normalized `family|given|birth_date|sex`.
pub fn derived_id(n: &Demographics) -> String {
    let mut key = String::with_capacity(64);
    key.push_str(n.family.as_deref().unwrap_or(""));
    key.push('|');
    key.push_str(n.given.as_deref().unwrap_or(""));
    key.push('|');
    if let Some(d) = n.birth_date {
        key.push_str(&d.format("%Y-%m-%d").to_string());
    }
    key.push('|');
    key.push_str(n.sex.map(|s| s.fhir_code()).unwrap_or(""));
    format!("row-{:016x}", fnv1a64(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Sex;
    use chrono::NaiveDate;

    #[test]
    fn names() {
        assert_eq!(normalize_name("  O'Brien "), "OBRIEN");
        assert_eq!(normalize_name("José  María"), "JOSE MARIA");
        assert_eq!(normalize_name("Smith-Jones"), "SMITH-JONES");
        assert_eq!(normalize_name("St. John\t Jr."), "ST JOHN JR");
        assert_eq!(normalize_name("Muñoz Łukasz Æsa ß"), "MUNOZ LUKASZ AESA SS");
        assert_eq!(normalize_name("Zoë Brontë"), "ZOE BRONTE");
        assert_eq!(normalize_name("?!"), "");
        assert_eq!(normalize_name("Ωmega"), "ΩMEGA");
    }

    #[test]
    fn id_set_finds_duplicates_and_survives_hash_collisions() {
        let mut ids = IdSet::with_capacity(4);
        assert_eq!(ids.first_seen("A1", 2), None);
        assert_eq!(ids.first_seen("B2", 3), None);
        assert_eq!(ids.first_seen("A1", 4), Some(2));
        assert_eq!(ids.first_seen("A1", 5), Some(2));
        // Force a collision: a different id with the same hash is not a duplicate...
        let h = fnv1a64(b"A1");
        assert_eq!(ids.first_seen_hashed("ZZ", h, 6), None);
        // ...but is one when it comes again.
        assert_eq!(ids.first_seen_hashed("ZZ", h, 7), Some(6));
        assert_eq!(ids.first_seen("A1", 8), Some(2));
    }

    #[test]
    fn fnv_known_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn derived_id_is_stable_and_normalized() {
        let a = Demographics {
            family: Some("DOE".into()),
            given: Some("JANE".into()),
            birth_date: NaiveDate::from_ymd_opt(2019, 2, 3),
            sex: Some(Sex::Female),
            ..Default::default()
        };
        let id = derived_id(&a);
        assert_eq!(
            id,
            format!("row-{:016x}", fnv1a64(b"DOE|JANE|2019-02-03|female"))
        );
        assert_eq!(id.len(), 20);
        let mut b = a.clone();
        b.sex = Some(Sex::Male);
        assert_ne!(derived_id(&b), id);
    }

    #[test]
    fn normalize_valid_values() {
        let o = Demographics {
            given: Some("Zoë".into()),
            family: Some("O'Brien".into()),
            phone: Some("+1 (555) 123-4567".into()),
            postal_code: Some("62701-1234".into()),
            state: Some("illinois".into()),
            email: Some(" Ana@Example.ORG ".into()),
            ssn: Some("123-45-6789".into()),
            city: Some("St. Louis".into()),
            local_id: Some(" A1 ".into()),
            ..Default::default()
        };
        let (n, w) = normalize(&o);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(n.given.as_deref(), Some("ZOE"));
        assert_eq!(n.family.as_deref(), Some("OBRIEN"));
        assert_eq!(n.phone.as_deref(), Some("5551234567"));
        assert_eq!(n.postal_code.as_deref(), Some("62701"));
        assert_eq!(n.state.as_deref(), Some("IL"));
        assert_eq!(n.email.as_deref(), Some("ana@example.org"));
        assert_eq!(n.ssn.as_deref(), Some("123456789"));
        assert_eq!(n.city.as_deref(), Some("ST LOUIS"));
        assert_eq!(n.local_id.as_deref(), Some("A1"));
        let o = Demographics {
            ssn: Some("6789".into()),
            state: Some("ny".into()),
            postal_code: Some("021341234".into()),
            phone: Some("5551234567".into()),
            ..Default::default()
        };
        let (n, w) = normalize(&o);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(n.ssn.as_deref(), Some("6789"));
        assert_eq!(n.state.as_deref(), Some("NY"));
        assert_eq!(n.postal_code.as_deref(), Some("02134"));
    }

    #[test]
    fn malformed_optional_values_are_dropped_with_reasons() {
        let o = Demographics {
            phone: Some("555-1234".into()),
            postal_code: Some("2134".into()),
            email: Some("ana@example".into()),
            ssn: Some("12345".into()),
            state: Some("Ontario".into()),
            family: Some("Doe".into()),
            ..Default::default()
        };
        let (n, w) = normalize(&o);
        let fields: Vec<Field> = w.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            vec![
                Field::Phone,
                Field::Email,
                Field::PostalCode,
                Field::Ssn,
                Field::State
            ]
        );
        assert!(w[0].1.contains("555-1234"), "{}", w[0].1);
        assert!(w[0].1.contains("10-digit"), "{}", w[0].1);
        assert_eq!(n.phone, None);
        assert_eq!(n.postal_code, None);
        assert_eq!(n.email, None);
        assert_eq!(n.ssn, None);
        assert_eq!(n.state, None);
        assert_eq!(n.family.as_deref(), Some("DOE"));
        for bad in [
            "no-at.example.org",
            "a@.org",
            "a@b.",
            "a b@c.org",
            "a@b@c.org",
        ] {
            assert_eq!(norm_email(bad), None, "{bad}");
        }
        assert_eq!(norm_phone("25551234567"), None);
        assert_eq!(norm_phone("555123456x"), None);
        assert_eq!(norm_ssn("000-00-0000"), None);
        assert_eq!(norm_zip("1234A"), None);
    }
}
