//! Normalization of demographics for comparison.
//!
//! Cohort rows arrive already normalized by the importer; candidates from a server may not be.
//! Every `normalize_*_cow` function first checks, with one byte scan and no allocation, whether
//! its input is already in normal form and borrows it if so, so comparing normalized data costs
//! no heap traffic. [`normalize_for_compare`] is the owned, public version of the same rules.

use std::borrow::Cow;

use crate::domain::{Demographics, Sex};

/// Fold one non-ASCII character to ASCII letters (common Latin accents and ligatures).
fn fold(ch: char) -> Option<&'static str> {
    let up = match ch {
        'À'..='Å' | 'à'..='å' | 'Ā'..='ą' => "A",
        'Æ' | 'æ' => "AE",
        'Ç' | 'ç' | 'Ć'..='č' => "C",
        'È'..='Ë' | 'è'..='ë' | 'Ē'..='ě' => "E",
        'Ì'..='Ï' | 'ì'..='ï' | 'Ĩ'..='ı' => "I",
        'Ð' | 'ð' | 'Ď'..='đ' => "D",
        'Ñ' | 'ñ' | 'Ń'..='ŉ' => "N",
        'Ò'..='Ö' | 'ò'..='ö' | 'Ø' | 'ø' | 'Ō'..='ő' => "O",
        'Ù'..='Ü' | 'ù'..='ü' | 'Ũ'..='ų' => "U",
        'Ý' | 'ý' | 'ÿ' | 'Ŷ'..='Ÿ' => "Y",
        'Þ' | 'þ' => "TH",
        'ß' => "SS",
        'Ĝ'..='ģ' => "G",
        'Ĥ'..='ħ' => "H",
        'Ĳ' | 'ĳ' => "IJ",
        'Ĵ' | 'ĵ' => "J",
        'Ķ' | 'ķ' => "K",
        'Ĺ'..='ł' => "L",
        'Œ' | 'œ' => "OE",
        'Ŕ'..='ř' => "R",
        'Ś'..='š' => "S",
        'Ţ'..='ŧ' => "T",
        'Ŵ' | 'ŵ' => "W",
        'Ź'..='ž' => "Z",
        _ => return None,
    };
    Some(up)
}

/// Characters that separate words (become one space). Others (apostrophes, periods, ...) vanish.
fn is_separator(ch: char) -> bool {
    ch.is_whitespace() || matches!(ch, ',' | '/' | ';' | ':' | '&' | '(' | ')' | '_' | '+')
}

fn is_hyphen(ch: char) -> bool {
    matches!(
        ch,
        '-' | '\u{2010}' | '\u{2011}' | '\u{2012}' | '\u{2013}' | '\u{2014}'
    )
}

/// Shared normalizer for names and address lines: uppercase ASCII, accents folded, hyphens kept
/// (no spaces around them), `#` kept when `keep_hash`, separators collapsed to one space, other
/// punctuation dropped.
fn normalize_text(s: &str, keep_hash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    let push = |out: &mut String, piece: &str, pending: &mut bool| {
        if *pending && !out.is_empty() && !out.ends_with('-') {
            out.push(' ');
        }
        *pending = false;
        out.push_str(piece);
    };
    for ch in s.chars() {
        if ch.is_ascii_alphanumeric() {
            let up = ch.to_ascii_uppercase();
            push(&mut out, up.encode_utf8(&mut [0u8; 4]), &mut pending_space);
        } else if keep_hash && ch == '#' {
            push(&mut out, "#", &mut pending_space);
        } else if is_hyphen(ch) {
            while out.ends_with(' ') {
                out.pop();
            }
            if !out.is_empty() && !out.ends_with('-') {
                out.push('-');
            }
            pending_space = false;
        } else if is_separator(ch) {
            pending_space = true;
        } else if let Some(f) = fold(ch) {
            push(&mut out, f, &mut pending_space);
        } else if ch.is_alphanumeric() {
            // Letters outside the Latin folds (Greek, Cyrillic, CJK, ...) are kept, uppercased:
            // dropping them would empty a name and make the row look incomplete.
            let up: String = ch.to_uppercase().collect();
            push(&mut out, &up, &mut pending_space);
        }
    }
    while out.ends_with('-') || out.ends_with(' ') {
        out.pop();
    }
    out
}

fn is_normal_text(s: &str, keep_hash: bool) -> bool {
    let b = s.as_bytes();
    let (Some(first), Some(last)) = (b.first(), b.last()) else {
        return false;
    };
    if matches!(first, b' ' | b'-') || matches!(last, b' ' | b'-') {
        return false;
    }
    let mut prev = 0u8;
    for &c in b {
        let ok = c.is_ascii_uppercase()
            || c.is_ascii_digit()
            || (keep_hash && c == b'#')
            || ((c == b' ' || c == b'-') && prev != b' ' && prev != b'-');
        if !ok {
            return false;
        }
        prev = c;
    }
    true
}

/// Normalize a person name: uppercase ASCII, common accents folded (`JOSÉ` → `JOSE`,
/// `MÜLLER` → `MULLER`), hyphens kept (`SMITH - JONES` → `SMITH-JONES`), other punctuation
/// dropped (`O'BRIEN` → `OBRIEN`), runs of spaces collapsed. Empty when nothing is left.
pub fn normalize_name(s: &str) -> String {
    normalize_text(s, false)
}

/// [`normalize_name`], borrowing when `s` is already normalized. `None` when empty.
pub(crate) fn name_cow(s: &str) -> Option<Cow<'_, str>> {
    if is_normal_text(s, false) {
        Some(Cow::Borrowed(s))
    } else {
        non_empty(normalize_text(s, false))
    }
}

/// Address line: like a name, but `#` survives (it means "apartment").
pub(crate) fn address_cow(s: &str) -> Option<Cow<'_, str>> {
    if is_normal_text(s, true) {
        Some(Cow::Borrowed(s))
    } else {
        non_empty(normalize_text(s, true))
    }
}

fn non_empty(s: String) -> Option<Cow<'static, str>> {
    (!s.is_empty()).then_some(Cow::Owned(s))
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// Phone: digits only; an 11-digit number starting with the US country code 1 loses it.
pub(crate) fn phone_cow(s: &str) -> Option<Cow<'_, str>> {
    if s.len() == 10 && s.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Cow::Borrowed(s));
    }
    let mut d = digits(s);
    if d.len() == 11 && d.starts_with('1') {
        d.remove(0);
    }
    non_empty(d)
}

/// ZIP: the first five digits (ZIP+4 loses its +4); a 4-digit ZIP (leading zero eaten by a
/// spreadsheet) gets its zero back.
pub(crate) fn postal_cow(s: &str) -> Option<Cow<'_, str>> {
    if s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Cow::Borrowed(s));
    }
    let mut d = digits(s);
    if d.len() == 4 {
        d.insert(0, '0');
    }
    d.truncate(5);
    non_empty(d)
}

/// Digits only (SSN).
pub(crate) fn digits_cow(s: &str) -> Option<Cow<'_, str>> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Cow::Borrowed(s));
    }
    non_empty(digits(s))
}

/// Uppercase letters and digits only (Medicaid id).
pub(crate) fn id_cow(s: &str) -> Option<Cow<'_, str>> {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return Some(Cow::Borrowed(s));
    }
    non_empty(
        s.chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_uppercase())
            .collect(),
    )
}

/// Email: trimmed, lowercase.
pub(crate) fn email_cow(s: &str) -> Option<Cow<'_, str>> {
    let t = s.trim();
    if t.is_empty() {
        return None;
    }
    if t.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        Some(Cow::Borrowed(t))
    } else {
        Some(Cow::Owned(t.to_lowercase()))
    }
}

const STATES: &[(&str, &str)] = &[
    ("ALABAMA", "AL"),
    ("ALASKA", "AK"),
    ("AMERICAN SAMOA", "AS"),
    ("ARIZONA", "AZ"),
    ("ARKANSAS", "AR"),
    ("CALIFORNIA", "CA"),
    ("COLORADO", "CO"),
    ("CONNECTICUT", "CT"),
    ("DELAWARE", "DE"),
    ("DISTRICT OF COLUMBIA", "DC"),
    ("FLORIDA", "FL"),
    ("GEORGIA", "GA"),
    ("GUAM", "GU"),
    ("HAWAII", "HI"),
    ("IDAHO", "ID"),
    ("ILLINOIS", "IL"),
    ("INDIANA", "IN"),
    ("IOWA", "IA"),
    ("KANSAS", "KS"),
    ("KENTUCKY", "KY"),
    ("LOUISIANA", "LA"),
    ("MAINE", "ME"),
    ("MARYLAND", "MD"),
    ("MASSACHUSETTS", "MA"),
    ("MICHIGAN", "MI"),
    ("MINNESOTA", "MN"),
    ("MISSISSIPPI", "MS"),
    ("MISSOURI", "MO"),
    ("MONTANA", "MT"),
    ("NEBRASKA", "NE"),
    ("NEVADA", "NV"),
    ("NEW HAMPSHIRE", "NH"),
    ("NEW JERSEY", "NJ"),
    ("NEW MEXICO", "NM"),
    ("NEW YORK", "NY"),
    ("NORTH CAROLINA", "NC"),
    ("NORTH DAKOTA", "ND"),
    ("NORTHERN MARIANA ISLANDS", "MP"),
    ("OHIO", "OH"),
    ("OKLAHOMA", "OK"),
    ("OREGON", "OR"),
    ("PENNSYLVANIA", "PA"),
    ("PUERTO RICO", "PR"),
    ("RHODE ISLAND", "RI"),
    ("SOUTH CAROLINA", "SC"),
    ("SOUTH DAKOTA", "SD"),
    ("TENNESSEE", "TN"),
    ("TEXAS", "TX"),
    ("UTAH", "UT"),
    ("VERMONT", "VT"),
    ("VIRGIN ISLANDS", "VI"),
    ("VIRGINIA", "VA"),
    ("WASHINGTON", "WA"),
    ("WEST VIRGINIA", "WV"),
    ("WISCONSIN", "WI"),
    ("WYOMING", "WY"),
];

/// State: two uppercase letters; a full state name becomes its USPS code.
pub(crate) fn state_cow(s: &str) -> Option<Cow<'_, str>> {
    if s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase()) {
        return Some(Cow::Borrowed(s));
    }
    let n = normalize_text(s, false);
    if let Some((_, code)) = STATES.iter().find(|(name, _)| *name == n) {
        return Some(Cow::Borrowed(code));
    }
    non_empty(n)
}

fn owned(c: Option<Cow<'_, str>>) -> Option<String> {
    c.map(Cow::into_owned)
}

/// A copy of `d` normalized the way [`super::compare`] sees it: names and address lines as
/// [`normalize_name`] (address lines keep `#`), phone digits (10 for a US number), ZIP5, state
/// as its 2-letter code, email lowercase, SSN digits, Medicaid id uppercase alphanumeric, sex
/// `unknown` dropped. Local id and IIS id are copied unchanged; empty values become `None`.
pub fn normalize_for_compare(d: &Demographics) -> Demographics {
    Demographics {
        given: owned(d.given.as_deref().and_then(name_cow)),
        middle: owned(d.middle.as_deref().and_then(name_cow)),
        family: owned(d.family.as_deref().and_then(name_cow)),
        suffix: owned(d.suffix.as_deref().and_then(name_cow)),
        birth_date: d.birth_date,
        sex: d.sex.filter(|s| *s != Sex::Unknown),
        phone: owned(d.phone.as_deref().and_then(phone_cow)),
        email: owned(d.email.as_deref().and_then(email_cow)),
        address_line1: owned(d.address_line1.as_deref().and_then(address_cow)),
        address_line2: owned(d.address_line2.as_deref().and_then(address_cow)),
        city: owned(d.city.as_deref().and_then(name_cow)),
        state: owned(d.state.as_deref().and_then(state_cow)),
        postal_code: owned(d.postal_code.as_deref().and_then(postal_cow)),
        local_id: d.local_id.clone(),
        medicaid_id: owned(d.medicaid_id.as_deref().and_then(id_cow)),
        ssn: owned(d.ssn.as_deref().and_then(digits_cow)),
        mothers_maiden_name: owned(d.mothers_maiden_name.as_deref().and_then(name_cow)),
        multiple_birth: d.multiple_birth,
        multiple_birth_order: d.multiple_birth_order,
        iis_id: d.iis_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fold_accents_and_punctuation() {
        assert_eq!(normalize_name("José"), "JOSE");
        assert_eq!(normalize_name("  o'Brien "), "OBRIEN");
        assert_eq!(normalize_name("Smith - Jones"), "SMITH-JONES");
        assert_eq!(normalize_name("Müller–Łukasz"), "MULLER-LUKASZ");
        assert_eq!(normalize_name("mary   ann"), "MARY ANN");
        assert_eq!(normalize_name("St. John"), "ST JOHN");
        assert_eq!(normalize_name("Strauß"), "STRAUSS");
        assert_eq!(normalize_name("Zoë Ærø"), "ZOE AERO");
        assert_eq!(normalize_name("-- ."), "");
        assert_eq!(normalize_name("Ωmega"), "ΩMEGA");
        assert_eq!(normalize_name("Иванов"), "ИВАНОВ");
    }

    #[test]
    fn normalized_names_are_borrowed() {
        assert!(matches!(name_cow("SMITH-JONES"), Some(Cow::Borrowed(_))));
        assert!(matches!(name_cow("MARY ANN"), Some(Cow::Borrowed(_))));
        assert!(matches!(name_cow("Mary"), Some(Cow::Owned(_))));
        assert!(matches!(name_cow("MARY  ANN"), Some(Cow::Owned(_))));
        assert_eq!(name_cow("'"), None);
    }

    #[test]
    fn contact_fields() {
        assert_eq!(
            phone_cow("+1 (555) 123-4567").as_deref(),
            Some("5551234567")
        );
        assert_eq!(phone_cow("5551234567").as_deref(), Some("5551234567"));
        assert_eq!(postal_cow("02134-1234").as_deref(), Some("02134"));
        assert_eq!(postal_cow("2134").as_deref(), Some("02134"));
        assert_eq!(state_cow("California").as_deref(), Some("CA"));
        assert_eq!(state_cow("ny").as_deref(), Some("NY"));
        assert_eq!(
            email_cow(" Ana@Example.ORG ").as_deref(),
            Some("ana@example.org")
        );
        assert_eq!(digits_cow("123-45-6789").as_deref(), Some("123456789"));
        assert_eq!(id_cow("ma-12 34x").as_deref(), Some("MA1234X"));
        assert_eq!(
            address_cow("123 Main St., Apt #4").as_deref(),
            Some("123 MAIN ST APT #4")
        );
    }

    #[test]
    fn normalize_for_compare_cleans_a_server_candidate() {
        let d = Demographics {
            given: Some("Zoë".into()),
            family: Some("García-López".into()),
            phone: Some("(555) 010-9999".into()),
            state: Some("Texas".into()),
            postal_code: Some("78701-0001".into()),
            email: Some("Z@X.COM".into()),
            sex: Some(Sex::Unknown),
            local_id: Some("mrn-1".into()),
            ..Default::default()
        };
        let n = normalize_for_compare(&d);
        assert_eq!(n.given.as_deref(), Some("ZOE"));
        assert_eq!(n.family.as_deref(), Some("GARCIA-LOPEZ"));
        assert_eq!(n.phone.as_deref(), Some("5550109999"));
        assert_eq!(n.state.as_deref(), Some("TX"));
        assert_eq!(n.postal_code.as_deref(), Some("78701"));
        assert_eq!(n.email.as_deref(), Some("z@x.com"));
        assert_eq!(n.sex, None);
        assert_eq!(n.local_id.as_deref(), Some("mrn-1"));
    }
}
