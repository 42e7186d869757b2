//! The field comparators and the weighted evaluation behind [`super::compare`] and
//! [`super::score`].
//!
//! [`evaluate`] runs every comparator on two normalized [`View`]s and returns one [`Raw`] result
//! per field, all on the stack: a verdict, a [`Note`] (an enum, rendered to words only when an
//! explanation is asked for), the signed weight and the field's contribution to the achievable
//! maximum. `score` sums those; `compare` also renders them.

use std::borrow::Cow;

use chrono::{Datelike, NaiveDate};

use super::Verdict;
use super::nicknames::are_nicknames;
use super::normalize::{
    address_cow, digits_cow, email_cow, id_cow, name_cow, phone_cow, postal_cow, state_cow,
};
use super::text::{StackVec, adjacent_transposition, one_substitution, osa_within, soundex, words};
use crate::domain::{Demographics, Field, Sex};

/// Agreement weight, disagreement weight and volatility of one field (see docs/MATCHING.md).
///
/// A *volatile* field (phone, email, address, city, state, ZIP) changes when a person moves: its
/// disagreement subtracts its (small) disagreement weight but only half of its agreement weight
/// counts toward the achievable maximum, so a move is not read as a different person.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FieldWeight {
    pub field: Field,
    pub agree: f64,
    pub disagree: f64,
    pub volatile: bool,
}

const fn fw(field: Field, agree: f64, disagree: f64, volatile: bool) -> FieldWeight {
    FieldWeight {
        field,
        agree,
        disagree,
        volatile,
    }
}

/// The scored fields, in display order, with their weights. Local id and IIS id are not compared.
pub const WEIGHTS: [FieldWeight; 18] = [
    fw(Field::Given, 4.0, -3.0, false),
    fw(Field::Middle, 1.0, -1.0, false),
    fw(Field::Family, 5.0, -4.0, false),
    fw(Field::Suffix, 0.5, -3.0, false),
    fw(Field::BirthDate, 6.0, -6.0, false),
    fw(Field::Sex, 1.0, -4.0, false),
    fw(Field::Phone, 2.0, -0.5, true),
    fw(Field::Email, 2.0, -0.3, true),
    fw(Field::AddressLine1, 2.0, -0.5, true),
    fw(Field::AddressLine2, 0.3, -0.1, true),
    fw(Field::City, 0.5, -0.2, true),
    fw(Field::State, 0.2, -0.2, true),
    fw(Field::PostalCode, 0.8, -0.3, true),
    fw(Field::MedicaidId, 6.0, -3.0, false),
    fw(Field::Ssn, 8.0, -6.0, false),
    fw(Field::MothersMaidenName, 1.5, -1.0, false),
    fw(Field::MultipleBirth, 0.2, -0.5, false),
    fw(Field::MultipleBirthOrder, 0.5, -12.0, false),
];

/// Share of a volatile field's agreement weight that still counts toward the maximum when it
/// disagrees.
pub const VOLATILE_DIFFER_SHARE: f64 = 0.5;

/// The score's denominator is never below this, so a record with almost nothing to compare
/// cannot reach `certain` (given + family + birth date alone weigh 15).
pub const MIN_EVIDENCE: f64 = 14.0;

/// Why a comparator decided what it did. Rendered to plain words by [`Note::render`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    Exact,
    SpacingDiffers,
    Abbreviations,
    Nickname,
    Initial,
    Compound,
    Typo(u8),
    SoundsAlike,
    NamesSwapped,
    Different,
    DayMonthSwapped,
    OneDigit,
    DigitsTransposed,
    YearOffByOne,
    AreaCodeDiffers,
    LastFourAgree,
    LastFourOnly,
    UnitDiffers,
    /// The same address, split differently over lines 1 and 2.
    LinesSplit,
    SimilarAddress {
        matched: u8,
        total: u8,
    },
    SameArea,
    LikelyTwin,
    SexUnknown,
    NotSubmitted,
    NotOnCandidate,
}

/// One comparator's answer: verdict, note and, for `Near`, the share of the agreement weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cmp {
    pub verdict: Verdict,
    pub note: Note,
    pub share: f64,
}

const fn agree(note: Note) -> Cmp {
    Cmp {
        verdict: Verdict::Agree,
        note,
        share: 1.0,
    }
}
const fn near(note: Note, share: f64) -> Cmp {
    Cmp {
        verdict: Verdict::Near,
        note,
        share,
    }
}
const fn differ(note: Note) -> Cmp {
    Cmp {
        verdict: Verdict::Differ,
        note,
        share: 0.0,
    }
}
const fn missing(note: Note) -> Cmp {
    Cmp {
        verdict: Verdict::Missing,
        note,
        share: 0.0,
    }
}

/// Near shares (fractions of the agreement weight), named so docs and tests can refer to them.
pub mod share {
    pub const NICKNAME: f64 = 0.85;
    pub const COMPOUND: f64 = 0.75;
    pub const SWAPPED: f64 = 0.7;
    pub const TYPO1: f64 = 0.3;
    pub const TYPO2: f64 = 0.2;
    pub const INITIAL: f64 = 0.35;
    pub const SOUNDS_ALIKE: f64 = 0.25;
    pub const DAY_MONTH: f64 = 0.5;
    pub const DATE_DIGIT: f64 = 0.5;
    pub const YEAR_OFF: f64 = 0.4;
    pub const AREA_CODE: f64 = 0.5;
    pub const PHONE_DIGIT: f64 = 0.6;
    pub const SSN_DIGIT: f64 = 0.4;
    pub const UNIT: f64 = 0.8;
    pub const ADDRESS: f64 = 0.6;
    pub const CITY_TYPO: f64 = 0.6;
    pub const ZIP3: f64 = 0.4;
}

// ---------------------------------------------------------------------------------------------
// Comparators
// ---------------------------------------------------------------------------------------------

fn is_sep(b: u8) -> bool {
    b == b' ' || b == b'-'
}

fn parts(s: &str) -> impl Iterator<Item = &str> {
    s.split([' ', '-']).filter(|p| !p.is_empty())
}

/// Compare two normalized names (given, middle, family or mother's maiden name).
pub fn name(a: &str, b: &str) -> Cmp {
    if a == b {
        return agree(Note::Exact);
    }
    let (ab, bb) = (a.as_bytes(), b.as_bytes());
    if ab
        .iter()
        .filter(|c| !is_sep(**c))
        .eq(bb.iter().filter(|c| !is_sep(**c)))
    {
        return agree(Note::SpacingDiffers);
    }
    if ab.len() == 1 || bb.len() == 1 {
        return if ab[0] == bb[0] {
            near(Note::Initial, share::INITIAL)
        } else {
            differ(Note::Different)
        };
    }
    if are_nicknames(a, b) {
        return near(Note::Nickname, share::NICKNAME);
    }
    if (ab.iter().any(|c| is_sep(*c)) || bb.iter().any(|c| is_sep(*c)))
        && shared_part(a, b).is_some()
    {
        return near(Note::Compound, share::COMPOUND);
    }
    let shortest = ab.len().min(bb.len());
    match osa_within(a, b, 2) {
        Some(1) if shortest >= 3 => return near(Note::Typo(1), share::TYPO1),
        Some(2) if shortest >= 6 => return near(Note::Typo(2), share::TYPO2),
        _ => {}
    }
    if ab.len().abs_diff(bb.len()) <= 2
        && let (Some(x), Some(y)) = (soundex(a), soundex(b))
        && x == y
    {
        return near(Note::SoundsAlike, share::SOUNDS_ALIKE);
    }
    differ(Note::Different)
}

/// A part (split on space or hyphen, 2+ letters) of `a` that is also a part of `b`.
fn shared_part<'a>(a: &'a str, b: &str) -> Option<&'a str> {
    parts(a).find(|p| p.len() >= 2 && parts(b).any(|q| q == *p))
}

fn date_digits(d: NaiveDate) -> [u8; 8] {
    let y = d.year().clamp(0, 9999) as u32;
    let (m, day) = (d.month(), d.day());
    let n = [
        y / 1000,
        y / 100 % 10,
        y / 10 % 10,
        y % 10,
        m / 10,
        m % 10,
        day / 10,
        day % 10,
    ];
    // Every element is a single digit.
    n.map(|v| b'0' + v as u8)
}

/// Compare two birth dates.
pub fn date(a: NaiveDate, b: NaiveDate) -> Cmp {
    if a == b {
        return agree(Note::Exact);
    }
    if a.year() == b.year() && a.month() == b.day() && a.day() == b.month() {
        return near(Note::DayMonthSwapped, share::DAY_MONTH);
    }
    let (da, db) = (date_digits(a), date_digits(b));
    if one_substitution(&da, &db) {
        return near(Note::OneDigit, share::DATE_DIGIT);
    }
    if adjacent_transposition(&da, &db) {
        return near(Note::DigitsTransposed, share::DATE_DIGIT);
    }
    if a.month() == b.month() && a.day() == b.day() && a.year().abs_diff(b.year()) == 1 {
        return near(Note::YearOffByOne, share::YEAR_OFF);
    }
    differ(Note::Different)
}

/// Compare two phone numbers (digits).
pub fn phone(a: &str, b: &str) -> Cmp {
    if a == b {
        return agree(Note::Exact);
    }
    let (ab, bb) = (a.as_bytes(), b.as_bytes());
    if ab.len() >= 7 && bb.len() >= 7 && ab[ab.len() - 7..] == bb[bb.len() - 7..] {
        return near(Note::AreaCodeDiffers, share::AREA_CODE);
    }
    if one_substitution(ab, bb) {
        return near(Note::OneDigit, share::PHONE_DIGIT);
    }
    if adjacent_transposition(ab, bb) {
        return near(Note::DigitsTransposed, share::PHONE_DIGIT);
    }
    differ(Note::Different)
}

/// Exact comparison (email, state, Medicaid id, suffix after canonicalization).
pub fn exact(a: &str, b: &str) -> Cmp {
    if a == b {
        agree(Note::Exact)
    } else {
        differ(Note::Different)
    }
}

fn canon_suffix(s: &str) -> &str {
    match s {
        "JUNIOR" => "JR",
        "SENIOR" => "SR",
        "2ND" | "SECOND" => "II",
        "3RD" | "THIRD" => "III",
        "4TH" | "FOURTH" => "IV",
        other => other,
    }
}

/// Compare suffixes (`JR` = `JUNIOR`, `III` = `3RD`).
pub fn suffix(a: &str, b: &str) -> Cmp {
    let (ca, cb) = (canon_suffix(a), canon_suffix(b));
    if ca != cb {
        differ(Note::Different)
    } else if a == b {
        agree(Note::Exact)
    } else {
        agree(Note::Abbreviations)
    }
}

/// Unit designators (apartment, suite, `#`): what follows is the unit.
fn is_unit_designator(w: &str) -> bool {
    matches!(
        w,
        // USPS secondary unit designators (Publication 28, appendix C2) that take a number.
        "APT"
            | "APARTMENT"
            | "UNIT"
            | "STE"
            | "SUITE"
            | "#"
            | "NO"
            | "RM"
            | "ROOM"
            | "SPC"
            | "SPACE"
            | "LOT"
            | "TRLR"
            | "BLDG"
            | "FL"
            | "FLOOR"
            | "DEPT"
            | "OFC"
            | "HNGR"
    )
}

fn canon_address_word(w: &str) -> &str {
    match w {
        "STREET" | "STR" => "ST",
        "AVENUE" | "AV" | "AVEN" => "AVE",
        "ROAD" => "RD",
        "DRIVE" | "DRV" => "DR",
        "LANE" => "LN",
        "BOULEVARD" | "BOUL" => "BLVD",
        "COURT" => "CT",
        "PLACE" => "PL",
        "TERRACE" => "TER",
        "CIRCLE" => "CIR",
        "HIGHWAY" => "HWY",
        "PARKWAY" => "PKWY",
        "SQUARE" => "SQ",
        "TRAIL" => "TRL",
        "ROUTE" => "RTE",
        "CENTER" => "CTR",
        "EXPRESSWAY" => "EXPY",
        "FLOOR" => "FL",
        "BUILDING" => "BLDG",
        "MOUNT" => "MT",
        "FORT" => "FT",
        "NORTH" => "N",
        "SOUTH" => "S",
        "EAST" => "E",
        "WEST" => "W",
        "NORTHEAST" => "NE",
        "NORTHWEST" => "NW",
        "SOUTHEAST" => "SE",
        "SOUTHWEST" => "SW",
        "FIRST" => "1ST",
        "SECOND" => "2ND",
        "THIRD" => "3RD",
        "FOURTH" => "4TH",
        "FIFTH" => "5TH",
        "SIXTH" => "6TH",
        "SEVENTH" => "7TH",
        "EIGHTH" => "8TH",
        "NINTH" => "9TH",
        "TENTH" => "10TH",
        other => other,
    }
}

type Words<'a> = StackVec<&'a str, 16>;

/// Street words (canonical) and unit words (after a designator, designators removed).
fn address_words(s: &str) -> (Words<'_>, Words<'_>) {
    let mut street = Words::new();
    let mut unit = Words::new();
    let mut in_unit = false;
    for w in words(s) {
        if is_unit_designator(w) {
            in_unit = true;
        } else if in_unit {
            unit.push(canon_address_word(w));
        } else {
            street.push(canon_address_word(w));
        }
    }
    (street, unit)
}

fn words_close(a: &str, b: &str) -> bool {
    a == b || (a.len().min(b.len()) >= 4 && osa_within(a, b, 1).is_some())
}

/// Compare two address lines (street abbreviations and unit designators standardized).
pub fn address(a: &str, b: &str) -> Cmp {
    if a == b {
        return agree(Note::Exact);
    }
    let ((sa, ua), (sb, ub)) = (address_words(a), address_words(b));
    let (sa, sb) = (sa.as_slice(), sb.as_slice());
    if sa == sb {
        return if ua.as_slice() == ub.as_slice() {
            agree(Note::Abbreviations)
        } else {
            near(Note::UnitDiffers, share::UNIT)
        };
    }
    let numeric = |w: Option<&&str>| w.is_some_and(|w| w.as_bytes()[0].is_ascii_digit());
    if numeric(sa.first()) && numeric(sb.first()) && sa.first() != sb.first() {
        return differ(Note::Different);
    }
    let (short, long) = if sa.len() <= sb.len() {
        (sa, sb)
    } else {
        (sb, sa)
    };
    let matched = short
        .iter()
        .filter(|w| long.iter().any(|x| words_close(w, x)))
        .count();
    let total = long.len();
    if total > 0 && matched * 4 >= total * 3 {
        // Both are at most 16 (StackVec capacity).
        let (matched, total) = (matched as u8, total as u8);
        return near(Note::SimilarAddress { matched, total }, share::ADDRESS);
    }
    differ(Note::Different)
}

/// Compare second address lines: all words, designators dropped.
pub fn address2(a: &str, b: &str) -> Cmp {
    if a == b {
        return agree(Note::Exact);
    }
    let key = |s| {
        words(s)
            .filter(|w| !is_unit_designator(w))
            .map(canon_address_word)
    };
    if key(a).eq(key(b)) {
        agree(Note::Abbreviations)
    } else {
        differ(Note::Different)
    }
}

fn canon_city_word(w: &str) -> &str {
    match w {
        "SAINT" => "ST",
        "SAINTE" => "STE",
        "FORT" => "FT",
        "MOUNT" => "MT",
        "NORTH" => "N",
        "SOUTH" => "S",
        "EAST" => "E",
        "WEST" => "W",
        other => other,
    }
}

/// Compare two city names (`SAINT` = `ST`, one-letter typos near).
pub fn city(a: &str, b: &str) -> Cmp {
    if a == b {
        return agree(Note::Exact);
    }
    if words(a)
        .map(canon_city_word)
        .eq(words(b).map(canon_city_word))
    {
        return agree(Note::Abbreviations);
    }
    if a.len().min(b.len()) >= 4 && osa_within(a, b, 1).is_some() {
        return near(Note::Typo(1), share::CITY_TYPO);
    }
    differ(Note::Different)
}

/// Compare two ZIP5 codes.
pub fn postal(a: &str, b: &str) -> Cmp {
    if a == b {
        return agree(Note::Exact);
    }
    if a.len() >= 3 && b.len() >= 3 && a.as_bytes()[..3] == b.as_bytes()[..3] {
        return near(Note::SameArea, share::ZIP3);
    }
    differ(Note::Different)
}

fn last4(s: &str) -> &str {
    s.get(s.len().saturating_sub(4)..).unwrap_or(s)
}

/// Compare SSNs: full vs full, or the last four digits when one side only has those.
pub fn ssn(a: &str, b: &str) -> Cmp {
    let partial = a.len() == 4 || b.len() == 4;
    if partial {
        // Equal last four digits are agreement (a chance collision is 1 in 10,000); the note
        // tells the reviewer that only four digits were compared.
        return if last4(a) == last4(b) {
            if a.len() == 4 && b.len() == 4 {
                agree(Note::LastFourOnly)
            } else {
                agree(Note::LastFourAgree)
            }
        } else {
            differ(Note::Different)
        };
    }
    if a == b {
        return agree(Note::Exact);
    }
    if one_substitution(a.as_bytes(), b.as_bytes()) {
        return near(Note::OneDigit, share::SSN_DIGIT);
    }
    if adjacent_transposition(a.as_bytes(), b.as_bytes()) {
        return near(Note::DigitsTransposed, share::SSN_DIGIT);
    }
    differ(Note::Different)
}

/// Compare sexes; `unknown` on either side is missing.
pub fn sex(a: Sex, b: Sex) -> Cmp {
    if a == Sex::Unknown || b == Sex::Unknown {
        missing(Note::SexUnknown)
    } else if a == b {
        agree(Note::Exact)
    } else {
        differ(Note::Different)
    }
}

/// Compare birth orders in a multiple birth; a different order means a different twin.
pub fn birth_order(a: u32, b: u32) -> Cmp {
    if a == b {
        agree(Note::Exact)
    } else {
        differ(Note::LikelyTwin)
    }
}

// ---------------------------------------------------------------------------------------------
// Views and evaluation
// ---------------------------------------------------------------------------------------------

/// Normalized, borrowed-where-possible view of one [`Demographics`].
#[derive(Debug, Default)]
pub struct View<'a> {
    pub given: Option<Cow<'a, str>>,
    pub middle: Option<Cow<'a, str>>,
    pub family: Option<Cow<'a, str>>,
    pub suffix: Option<Cow<'a, str>>,
    pub birth_date: Option<NaiveDate>,
    pub sex: Option<Sex>,
    pub phone: Option<Cow<'a, str>>,
    pub email: Option<Cow<'a, str>>,
    pub address_line1: Option<Cow<'a, str>>,
    pub address_line2: Option<Cow<'a, str>>,
    pub city: Option<Cow<'a, str>>,
    pub state: Option<Cow<'a, str>>,
    pub postal_code: Option<Cow<'a, str>>,
    pub medicaid_id: Option<Cow<'a, str>>,
    pub ssn: Option<Cow<'a, str>>,
    pub mothers_maiden_name: Option<Cow<'a, str>>,
    pub multiple_birth: Option<bool>,
    pub multiple_birth_order: Option<u32>,
}

impl<'a> View<'a> {
    pub fn new(d: &'a Demographics) -> Self {
        View {
            given: d.given.as_deref().and_then(name_cow),
            middle: d.middle.as_deref().and_then(name_cow),
            family: d.family.as_deref().and_then(name_cow),
            suffix: d.suffix.as_deref().and_then(name_cow),
            birth_date: d.birth_date,
            sex: d.sex,
            phone: d.phone.as_deref().and_then(phone_cow),
            email: d.email.as_deref().and_then(email_cow),
            address_line1: d.address_line1.as_deref().and_then(address_cow),
            address_line2: d.address_line2.as_deref().and_then(address_cow),
            city: d.city.as_deref().and_then(name_cow),
            state: d.state.as_deref().and_then(state_cow),
            postal_code: d.postal_code.as_deref().and_then(postal_cow),
            medicaid_id: d.medicaid_id.as_deref().and_then(id_cow),
            ssn: d.ssn.as_deref().and_then(digits_cow),
            mothers_maiden_name: d.mothers_maiden_name.as_deref().and_then(name_cow),
            multiple_birth: d.multiple_birth,
            multiple_birth_order: d.multiple_birth_order,
        }
    }

    /// The normalized text of a string field (for rendering notes).
    pub fn text(&self, field: Field) -> Option<&str> {
        let v = match field {
            Field::Given => &self.given,
            Field::Middle => &self.middle,
            Field::Family => &self.family,
            Field::Suffix => &self.suffix,
            Field::Phone => &self.phone,
            Field::Email => &self.email,
            Field::AddressLine1 => &self.address_line1,
            Field::AddressLine2 => &self.address_line2,
            Field::City => &self.city,
            Field::State => &self.state,
            Field::PostalCode => &self.postal_code,
            Field::MedicaidId => &self.medicaid_id,
            Field::Ssn => &self.ssn,
            Field::MothersMaidenName => &self.mothers_maiden_name,
            _ => return None,
        };
        v.as_deref()
    }
}

/// One field's evaluated result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Raw {
    pub field: Field,
    pub cmp: Cmp,
    /// Signed contribution to the score's numerator.
    pub weight: f64,
    /// Contribution to the achievable maximum (the score's denominator).
    pub max: f64,
}

fn pair<T, U>(
    a: &Option<T>,
    b: &Option<T>,
    f: impl FnOnce(&T, &T) -> U,
) -> Result<U, Option<Note>> {
    match (a, b) {
        (Some(x), Some(y)) => Ok(f(x, y)),
        (None, Some(_)) => Err(Some(Note::NotSubmitted)),
        (Some(_), None) => Err(Some(Note::NotOnCandidate)),
        (None, None) => Err(None),
    }
}

fn pair_str(
    a: &Option<Cow<'_, str>>,
    b: &Option<Cow<'_, str>>,
    f: fn(&str, &str) -> Cmp,
) -> Result<Cmp, Option<Note>> {
    pair(a, b, |x, y| f(x, y))
}

fn as_cmp(r: Result<Cmp, Option<Note>>) -> Option<Cmp> {
    match r {
        Ok(c) => Some(c),
        Err(Some(note)) => Some(missing(note)),
        Err(None) => None,
    }
}

/// Run every comparator. `None` for a field absent on both sides.
pub fn evaluate(a: &View<'_>, b: &View<'_>) -> [Option<Raw>; 18] {
    let mut given = as_cmp(pair_str(&a.given, &b.given, name));
    let mut family = as_cmp(pair_str(&a.family, &b.family, name));
    if given.is_some_and(|c| c.verdict == Verdict::Differ)
        && family.is_some_and(|c| c.verdict == Verdict::Differ)
        && names_swapped(a, b)
    {
        given = Some(near(Note::NamesSwapped, share::SWAPPED));
        family = given;
    }
    let mut line1 = as_cmp(pair_str(&a.address_line1, &b.address_line1, address));
    let mut line2 = as_cmp(pair_str(&a.address_line2, &b.address_line2, address2));
    if line1.is_some_and(|c| c.verdict != Verdict::Agree)
        && line2.is_some_and(|c| c.verdict != Verdict::Agree)
        && address_lines_joined_agree(a, b)
    {
        line1 = Some(agree(Note::LinesSplit));
        // A second line present on one side only carries no weight either way; one that
        // differs only because of the split agrees.
        line2 = line2.map(|c| {
            if c.verdict == Verdict::Differ {
                agree(Note::LinesSplit)
            } else {
                Cmp {
                    note: Note::LinesSplit,
                    ..c
                }
            }
        });
    }
    let cmps: [Option<Cmp>; 18] = [
        given,
        as_cmp(pair_str(&a.middle, &b.middle, name)),
        family,
        as_cmp(pair_str(&a.suffix, &b.suffix, suffix)),
        as_cmp(pair(&a.birth_date, &b.birth_date, |x, y| date(*x, *y))),
        as_cmp(pair(&a.sex, &b.sex, |x, y| sex(*x, *y))),
        as_cmp(pair_str(&a.phone, &b.phone, phone)),
        as_cmp(pair_str(&a.email, &b.email, exact)),
        line1,
        line2,
        as_cmp(pair_str(&a.city, &b.city, city)),
        as_cmp(pair_str(&a.state, &b.state, exact)),
        as_cmp(pair_str(&a.postal_code, &b.postal_code, postal)),
        as_cmp(pair_str(&a.medicaid_id, &b.medicaid_id, exact)),
        as_cmp(pair_str(&a.ssn, &b.ssn, ssn)),
        as_cmp(pair_str(
            &a.mothers_maiden_name,
            &b.mothers_maiden_name,
            name,
        )),
        as_cmp(pair(&a.multiple_birth, &b.multiple_birth, |x, y| {
            if x == y {
                agree(Note::Exact)
            } else {
                differ(Note::Different)
            }
        })),
        as_cmp(pair(
            &a.multiple_birth_order,
            &b.multiple_birth_order,
            |x, y| birth_order(*x, *y),
        )),
    ];
    let mut out = [None; 18];
    for ((slot, cmp), w) in out.iter_mut().zip(cmps).zip(WEIGHTS) {
        *slot = cmp.map(|cmp| {
            let (weight, max) = match cmp.verdict {
                Verdict::Agree => (w.agree, w.agree),
                Verdict::Near => (w.agree * cmp.share, w.agree),
                Verdict::Differ if w.volatile => (w.disagree, w.agree * VOLATILE_DIFFER_SHARE),
                Verdict::Differ => (w.disagree, w.agree),
                Verdict::Missing => (0.0, 0.0),
            };
            Raw {
                field: w.field,
                cmp,
                weight,
                max,
            }
        });
    }
    out
}

/// Whether the submitted given/family match the candidate's family/given (clearly, not just by
/// sound).
/// Whether lines 1 and 2 read together agree on both sides ("12 OAK RD APT 3" against
/// "12 OAK RD" + "APT 3"). Only called when the lines disagree one by one.
fn address_lines_joined_agree(a: &View<'_>, b: &View<'_>) -> bool {
    let joined = |v: &View<'_>| match (&v.address_line1, &v.address_line2) {
        (Some(l1), Some(l2)) => Some(format!("{l1} {l2}")),
        (Some(l1), None) => Some(l1.to_string()),
        (None, Some(l2)) => Some(l2.to_string()),
        (None, None) => None,
    };
    match (joined(a), joined(b)) {
        (Some(x), Some(y)) => address(&x, &y).verdict == Verdict::Agree,
        _ => false,
    }
}

fn names_swapped(a: &View<'_>, b: &View<'_>) -> bool {
    let strong = |x: &Option<Cow<'_, str>>, y: &Option<Cow<'_, str>>| {
        pair_str(x, y, name).is_ok_and(|c| {
            c.verdict == Verdict::Agree || (c.verdict == Verdict::Near && c.share >= share::TYPO1)
        })
    };
    strong(&a.given, &b.family) && strong(&a.family, &b.given)
}

/// The score from evaluated fields: Σ weight / max(Σ max, MIN_EVIDENCE), clamped to 0..=1.
pub fn total(raws: &[Option<Raw>]) -> f64 {
    let (num, den) = raws
        .iter()
        .flatten()
        .fold((0.0, 0.0), |(n, d), r| (n + r.weight, d + r.max));
    (num / f64::max(den, MIN_EVIDENCE)).clamp(0.0, 1.0)
}

impl Note {
    /// Plain words for the review screen. `a`/`b` are the normalized submitted/candidate texts.
    pub fn render(self, a: Option<&str>, b: Option<&str>) -> String {
        let (a, b) = (a.unwrap_or(""), b.unwrap_or(""));
        match self {
            Note::Exact => "same".into(),
            Note::SpacingDiffers => "same name; spacing or hyphen differs".into(),
            Note::Abbreviations => "same after standard abbreviations".into(),
            Note::Nickname => format!("nickname: {a} = {b}"),
            Note::Initial => {
                let (i, full) = if a.len() == 1 { (a, b) } else { (b, a) };
                format!("initial only: {i} = {full}")
            }
            Note::Compound => {
                let part = shared_part(a, b).unwrap_or("");
                let compound = if a.len() > b.len() { a } else { b };
                if compound.contains('-') {
                    format!("hyphenated name contains {part}")
                } else {
                    format!("compound name contains {part}")
                }
            }
            Note::Typo(1) => "typo (1 edit)".into(),
            Note::Typo(n) => format!("typo ({n} edits)"),
            Note::SoundsAlike => {
                let code = soundex(a).map(|c| String::from_utf8_lossy(&c).into_owned());
                format!("sounds alike (Soundex {})", code.unwrap_or_default())
            }
            Note::NamesSwapped => "first and last name swapped".into(),
            Note::Different => "different".into(),
            Note::DayMonthSwapped => "day and month swapped".into(),
            Note::OneDigit => "one digit differs".into(),
            Note::DigitsTransposed => "two digits transposed".into(),
            Note::YearOffByOne => "year off by one".into(),
            Note::AreaCodeDiffers => "same number, area code differs".into(),
            Note::LastFourAgree => "last four digits agree".into(),
            Note::LastFourOnly => "only the last four digits are known; they agree".into(),
            Note::UnitDiffers => "same street address, apartment or unit differs".into(),
            Note::LinesSplit => "same address, split differently over two lines".into(),
            Note::SimilarAddress { matched, total } => {
                format!("similar address ({matched} of {total} words agree)")
            }
            Note::SameArea => "same first three digits".into(),
            Note::LikelyTwin => "different birth order: likely a twin".into(),
            Note::SexUnknown => "sex unknown".into(),
            Note::NotSubmitted => "not in the submitted row".into(),
            Note::NotOnCandidate => "not on the candidate".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn names_exact_spacing_and_nicknames() {
        assert_eq!(name("SMITH", "SMITH"), agree(Note::Exact));
        assert_eq!(name("DE LA CRUZ", "DELACRUZ").verdict, Verdict::Agree);
        let c = name("BILL", "WILLIAM");
        assert_eq!((c.verdict, c.note), (Verdict::Near, Note::Nickname));
        assert_eq!(name("PEGGY", "MARGARET").note, Note::Nickname);
        assert_eq!(
            c.note.render(Some("BILL"), Some("WILLIAM")),
            "nickname: BILL = WILLIAM"
        );
    }

    #[test]
    fn names_initials() {
        let c = name("J", "JOHN");
        assert_eq!((c.verdict, c.note), (Verdict::Near, Note::Initial));
        assert_eq!(
            c.note.render(Some("J"), Some("JOHN")),
            "initial only: J = JOHN"
        );
        assert_eq!(name("JOHN", "K").verdict, Verdict::Differ);
    }

    #[test]
    fn names_compound_family() {
        let c = name("SMITH-JONES", "SMITH");
        assert_eq!((c.verdict, c.note), (Verdict::Near, Note::Compound));
        assert_eq!(
            c.note.render(Some("SMITH-JONES"), Some("SMITH")),
            "hyphenated name contains SMITH"
        );
        assert_eq!(name("JONES", "SMITH-JONES").note, Note::Compound);
        assert_eq!(name("GARCIA LOPEZ", "LOPEZ").note, Note::Compound);
        assert_eq!(name("SMITH-JONES", "BROWN").verdict, Verdict::Differ);
    }

    #[test]
    fn names_typos_and_sound() {
        let c = name("JOHNSON", "JOHNSNO");
        assert_eq!((c.verdict, c.note), (Verdict::Near, Note::Typo(1)));
        assert_eq!(c.note.render(None, None), "typo (1 edit)");
        assert_eq!(name("WILLIAMS", "WILIAMS").note, Note::Typo(1));
        assert_eq!(name("MACDONALD", "MCDONNALD").note, Note::Typo(2));
        // Two edits in a short name is a different name.
        assert_eq!(name("ANNA", "ERIN").verdict, Verdict::Differ);
        assert_eq!(name("ANNA", "EMMA").verdict, Verdict::Differ);
        let s = name("SMITH", "SMYTHE");
        assert_eq!(s.note, Note::SoundsAlike);
        assert_eq!(
            s.note.render(Some("SMITH"), None),
            "sounds alike (Soundex S530)"
        );
        assert_eq!(name("GARCIA", "NGUYEN").verdict, Verdict::Differ);
    }

    #[test]
    fn dates() {
        assert_eq!(date(d(2010, 5, 13), d(2010, 5, 13)).verdict, Verdict::Agree);
        assert_eq!(
            date(d(2010, 5, 7), d(2010, 7, 5)).note,
            Note::DayMonthSwapped
        );
        assert_eq!(date(d(2010, 5, 13), d(2010, 5, 18)).note, Note::OneDigit);
        assert_eq!(
            date(d(2010, 5, 13), d(2001, 5, 13)).note,
            Note::DigitsTransposed
        );
        assert_eq!(
            date(d(2010, 5, 13), d(2009, 5, 13)).note,
            Note::YearOffByOne
        );
        assert_eq!(date(d(2010, 5, 13), d(2012, 9, 1)).verdict, Verdict::Differ);
    }

    #[test]
    fn phones_and_ids() {
        assert_eq!(phone("5551234567", "5551234567").verdict, Verdict::Agree);
        assert_eq!(
            phone("5551234567", "6171234567").note,
            Note::AreaCodeDiffers
        );
        assert_eq!(phone("5551234567", "5551234568").note, Note::OneDigit);
        assert_eq!(phone("5551234567", "5559876543").verdict, Verdict::Differ);
        assert_eq!(ssn("123456789", "123456789").verdict, Verdict::Agree);
        assert_eq!(ssn("123456789", "6789").note, Note::LastFourAgree);
        assert_eq!(ssn("6789", "6789").note, Note::LastFourOnly);
        assert_eq!(ssn("123456789", "1234").verdict, Verdict::Differ);
        assert_eq!(ssn("123456789", "123456780").note, Note::OneDigit);
        assert_eq!(ssn("123456789", "987654321").verdict, Verdict::Differ);
        assert_eq!(sex(Sex::Male, Sex::Unknown).verdict, Verdict::Missing);
        assert_eq!(sex(Sex::Male, Sex::Female).verdict, Verdict::Differ);
        assert_eq!(birth_order(1, 2).note, Note::LikelyTwin);
        assert_eq!(suffix("JR", "JUNIOR").verdict, Verdict::Agree);
        assert_eq!(suffix("JR", "SR").verdict, Verdict::Differ);
    }

    #[test]
    fn addresses() {
        assert_eq!(
            address("123 MAIN ST", "123 MAIN STREET"),
            agree(Note::Abbreviations)
        );
        assert_eq!(
            address("45 NORTH OAK AVENUE APT 4", "45 N OAK AVE #4").verdict,
            Verdict::Agree
        );
        assert_eq!(
            address("123 MAIN ST", "123 MAIN ST APT 2").note,
            Note::UnitDiffers
        );
        assert_eq!(
            address("123 MAIN ST", "124 MAIN ST").verdict,
            Verdict::Differ
        );
        let c = address("123 N MAIN ST", "123 MAIN ST");
        assert_eq!(c.verdict, Verdict::Near);
        assert_eq!(
            c.note.render(None, None),
            "similar address (3 of 4 words agree)"
        );
        assert_eq!(
            address("123 MAPLE RD", "123 MAPEL RD").verdict,
            Verdict::Near
        );
        assert_eq!(address("9 ELM CT", "77 BIRCH LN").verdict, Verdict::Differ);
        assert_eq!(address2("APT 4", "# 4").verdict, Verdict::Agree);
        assert_eq!(city("SAINT LOUIS", "ST LOUIS").verdict, Verdict::Agree);
        assert_eq!(city("SPRINGFIELD", "SPRINGFELD").verdict, Verdict::Near);
        assert_eq!(city("BOSTON", "AUSTIN").verdict, Verdict::Differ);
        assert_eq!(postal("02134", "02134").verdict, Verdict::Agree);
        assert_eq!(postal("02134", "02199").note, Note::SameArea);
        assert_eq!(postal("02134", "90210").verdict, Verdict::Differ);
    }
}
