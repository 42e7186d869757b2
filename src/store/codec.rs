//! The on-disk encoding of [`Demographics`]: the values of [`Field::ALL`] in order, joined by the
//! ASCII unit separator (0x1F). It is about half the size of JSON and several times faster to
//! write, which matters when a million-row cohort is imported in seconds. Values never contain
//! the separator (it is replaced by a space on the way in).

use chrono::NaiveDate;

use crate::domain::{Demographics, Field, Sex};

use super::StoreError;

const SEP: char = '\u{1f}';

/// Encode demographics into `out` (cleared first).
pub fn encode_into(d: &Demographics, out: &mut String) {
    out.clear();
    for (i, f) in Field::ALL.iter().enumerate() {
        if i > 0 {
            out.push(SEP);
        }
        match f {
            Field::BirthDate => {
                if let Some(date) = d.birth_date {
                    use std::fmt::Write;
                    let _ = write!(out, "{}", date.format("%Y-%m-%d"));
                }
            }
            Field::Sex => {
                if let Some(s) = d.sex {
                    out.push_str(s.fhir_code());
                }
            }
            Field::MultipleBirth => {
                if let Some(b) = d.multiple_birth {
                    out.push(if b { 'Y' } else { 'N' });
                }
            }
            Field::MultipleBirthOrder => {
                if let Some(n) = d.multiple_birth_order {
                    use std::fmt::Write;
                    let _ = write!(out, "{n}");
                }
            }
            other => {
                if let Some(v) = text_field(d, *other) {
                    if v.contains(SEP) {
                        out.push_str(&v.replace(SEP, " "));
                    } else {
                        out.push_str(v);
                    }
                }
            }
        }
    }
}

/// Encode demographics as a new string.
#[cfg(test)]
pub fn encode(d: &Demographics) -> String {
    let mut s = String::with_capacity(128);
    encode_into(d, &mut s);
    s
}

/// Decode what [`encode`] wrote.
pub fn decode(s: &str) -> Result<Demographics, StoreError> {
    let mut d = Demographics::default();
    let mut n = 0;
    for (f, v) in Field::ALL.iter().zip(s.split(SEP)) {
        n += 1;
        if v.is_empty() {
            continue;
        }
        match f {
            Field::BirthDate => {
                d.birth_date = Some(
                    NaiveDate::parse_from_str(v, "%Y-%m-%d")
                        .map_err(|_| StoreError::Corrupt(format!("stored birth date {v:?}")))?,
                )
            }
            Field::Sex => d.sex = Sex::parse(v),
            Field::MultipleBirth => d.multiple_birth = Some(v == "Y"),
            Field::MultipleBirthOrder => d.multiple_birth_order = v.parse().ok(),
            other => *text_field_mut(&mut d, *other) = Some(v.to_string()),
        }
    }
    if n != Field::ALL.len() {
        return Err(StoreError::Corrupt(format!(
            "stored demographics have {n} fields, expected {}",
            Field::ALL.len()
        )));
    }
    Ok(d)
}

fn text_field(d: &Demographics, f: Field) -> Option<&str> {
    match f {
        Field::Given => d.given.as_deref(),
        Field::Middle => d.middle.as_deref(),
        Field::Family => d.family.as_deref(),
        Field::Suffix => d.suffix.as_deref(),
        Field::Phone => d.phone.as_deref(),
        Field::Email => d.email.as_deref(),
        Field::AddressLine1 => d.address_line1.as_deref(),
        Field::AddressLine2 => d.address_line2.as_deref(),
        Field::City => d.city.as_deref(),
        Field::State => d.state.as_deref(),
        Field::PostalCode => d.postal_code.as_deref(),
        Field::LocalId => d.local_id.as_deref(),
        Field::MedicaidId => d.medicaid_id.as_deref(),
        Field::Ssn => d.ssn.as_deref(),
        Field::MothersMaidenName => d.mothers_maiden_name.as_deref(),
        Field::IisId => d.iis_id.as_deref(),
        Field::BirthDate | Field::Sex | Field::MultipleBirth | Field::MultipleBirthOrder => None,
    }
}

fn text_field_mut(d: &mut Demographics, f: Field) -> &mut Option<String> {
    match f {
        Field::Given => &mut d.given,
        Field::Middle => &mut d.middle,
        Field::Family => &mut d.family,
        Field::Suffix => &mut d.suffix,
        Field::Phone => &mut d.phone,
        Field::Email => &mut d.email,
        Field::AddressLine1 => &mut d.address_line1,
        Field::AddressLine2 => &mut d.address_line2,
        Field::City => &mut d.city,
        Field::State => &mut d.state,
        Field::PostalCode => &mut d.postal_code,
        Field::LocalId => &mut d.local_id,
        Field::MedicaidId => &mut d.medicaid_id,
        Field::Ssn => &mut d.ssn,
        Field::MothersMaidenName => &mut d.mothers_maiden_name,
        // Non-text fields are handled by the caller; map them to a field that is always
        // overwritten last so this stays total without panicking.
        Field::IisId
        | Field::BirthDate
        | Field::Sex
        | Field::MultipleBirth
        | Field::MultipleBirthOrder => &mut d.iis_id,
    }
}

/// A stable 64-bit FNV-1a hash of the encoded demographics (change detection on re-import).
pub fn hash(encoded: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in encoded.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_field() {
        let d = Demographics {
            given: Some("ANA".into()),
            middle: Some("B".into()),
            family: Some("GARCIA-LOPEZ".into()),
            suffix: Some("JR".into()),
            birth_date: NaiveDate::from_ymd_opt(2019, 2, 28),
            sex: Some(Sex::Female),
            phone: Some("5551234567".into()),
            email: Some("a@b.org".into()),
            address_line1: Some("1 MAIN ST".into()),
            address_line2: Some("APT 2".into()),
            city: Some("SPRINGFIELD".into()),
            state: Some("IL".into()),
            postal_code: Some("62701".into()),
            local_id: Some("MRN1".into()),
            medicaid_id: Some("M1".into()),
            ssn: Some("1234".into()),
            mothers_maiden_name: Some("SMITH".into()),
            multiple_birth: Some(true),
            multiple_birth_order: Some(2),
            iis_id: Some("IIS9".into()),
        };
        assert_eq!(decode(&encode(&d)).unwrap(), d);
        assert_eq!(
            decode(&encode(&Demographics::default())).unwrap(),
            Demographics::default()
        );
    }

    #[test]
    fn separator_in_values_is_neutralised() {
        let d = Demographics {
            family: Some("A\u{1f}B".into()),
            ..Default::default()
        };
        assert_eq!(decode(&encode(&d)).unwrap().family.as_deref(), Some("A B"));
    }

    #[test]
    fn damaged_value_is_an_error() {
        assert!(decode("x").is_err());
        let d = Demographics {
            birth_date: NaiveDate::from_ymd_opt(2019, 2, 28),
            ..Default::default()
        };
        let damaged = encode(&d).replace("2019-02-28", "2019-02-30");
        let err = decode(&damaged).unwrap_err().to_string();
        assert!(err.contains("2019-02-30"), "{err}");
    }

    #[test]
    fn hash_is_stable_and_sensitive() {
        assert_eq!(hash("abc"), hash("abc"));
        assert_ne!(hash("abc"), hash("abd"));
        // FNV-1a 64 of "a" is a published constant.
        assert_eq!(hash("a") as u64, 0xaf63_dc4c_8601_ec8c);
    }
}
