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
                    push_date(out, date);
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
                    push_u32(out, n);
                }
            }
            other => {
                if let Some(v) = d.text(*other) {
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

/// `YYYY-MM-DD` without going through chrono's formatter (this runs a million times per import).
fn push_date(out: &mut String, date: NaiveDate) {
    use chrono::Datelike;
    let y = date.year();
    if (0..=9999).contains(&y) {
        let y = y as u32;
        for d in [y / 1000, y / 100 % 10, y / 10 % 10, y % 10] {
            out.push(char::from(b'0' + d as u8));
        }
    } else {
        out.push_str(&format!("{y:04}"));
    }
    for v in [date.month(), date.day()] {
        out.push('-');
        out.push(char::from(b'0' + (v / 10) as u8));
        out.push(char::from(b'0' + (v % 10) as u8));
    }
}

fn push_u32(out: &mut String, n: u32) {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for b in &buf[i..] {
        out.push(char::from(*b));
    }
}

/// Encode demographics as a new string.
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
            other => {
                if let Some(slot) = d.text_mut(*other) {
                    *slot = Some(v.to_string());
                }
            }
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
    fn dates_and_numbers_are_written_like_chrono_would() {
        for (y, m, d) in [(1900, 1, 1), (2019, 2, 28), (2026, 12, 31), (987, 7, 4)] {
            let date = NaiveDate::from_ymd_opt(y, m, d).unwrap();
            let mut s = String::new();
            push_date(&mut s, date);
            assert_eq!(s, date.format("%Y-%m-%d").to_string());
        }
        for n in [0, 7, 10, 4_294_967_295] {
            let mut s = String::new();
            push_u32(&mut s, n);
            assert_eq!(s, n.to_string());
        }
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
