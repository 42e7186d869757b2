//! Column mapping: which header of a cohort file feeds which [`Field`].
//!
//! A [`Mapping`] is either guessed from the headers ([`Mapping::automap`], by common synonyms,
//! ignoring case, spaces and punctuation) or loaded from a JSON mapping file the user keeps next to
//! their exports (format documented in `docs/MAPPING.md`).

use std::fmt;
use std::path::Path;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ImportError;
use crate::domain::Field;

/// Fields a row must have unless a mapping says otherwise.
pub const DEFAULT_REQUIRED: [Field; 3] = [Field::Family, Field::Given, Field::BirthDate];

/// How the columns of a cohort file map to demographic fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// `(header as in the file, field)`, in file order for an automapping.
    pub columns: Vec<(String, Field)>,
    /// Fields every row must have; a row without one is rejected.
    pub required: Vec<Field>,
    /// The CSV delimiter; `None` = detect from the file.
    pub delimiter: Option<u8>,
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping {
            columns: Vec::new(),
            required: DEFAULT_REQUIRED.to_vec(),
            delimiter: None,
        }
    }
}

/// Header synonyms, already squashed (lowercase ASCII letters and digits only).
const SYNONYMS: &[(&str, Field)] = &[
    // given
    ("firstname", Field::Given),
    ("first", Field::Given),
    ("fname", Field::Given),
    ("firstnm", Field::Given),
    ("given", Field::Given),
    ("givenname", Field::Given),
    ("forename", Field::Given),
    ("namefirst", Field::Given),
    // middle
    ("middlename", Field::Middle),
    ("middle", Field::Middle),
    ("mname", Field::Middle),
    ("mi", Field::Middle),
    ("middleinitial", Field::Middle),
    ("namemiddle", Field::Middle),
    // family
    ("lastname", Field::Family),
    ("last", Field::Family),
    ("lname", Field::Family),
    ("lastnm", Field::Family),
    ("surname", Field::Family),
    ("family", Field::Family),
    ("familyname", Field::Family),
    ("namelast", Field::Family),
    // suffix
    ("suffix", Field::Suffix),
    ("namesuffix", Field::Suffix),
    ("sfx", Field::Suffix),
    // birth date
    ("dob", Field::BirthDate),
    ("birthdate", Field::BirthDate),
    ("dateofbirth", Field::BirthDate),
    ("birthdt", Field::BirthDate),
    ("bdate", Field::BirthDate),
    ("birthday", Field::BirthDate),
    ("dobmmddyyyy", Field::BirthDate),
    ("dobyyyymmdd", Field::BirthDate),
    // sex
    ("sex", Field::Sex),
    ("gender", Field::Sex),
    ("birthsex", Field::Sex),
    ("administrativegender", Field::Sex),
    // phone
    ("phone", Field::Phone),
    ("phonenumber", Field::Phone),
    ("telephone", Field::Phone),
    ("tel", Field::Phone),
    ("homephone", Field::Phone),
    ("cellphone", Field::Phone),
    ("mobile", Field::Phone),
    ("mobilephone", Field::Phone),
    ("primaryphone", Field::Phone),
    ("contactphone", Field::Phone),
    // email
    ("email", Field::Email),
    ("emailaddress", Field::Email),
    // address
    ("address", Field::AddressLine1),
    ("address1", Field::AddressLine1),
    ("addressline1", Field::AddressLine1),
    ("addr", Field::AddressLine1),
    ("addr1", Field::AddressLine1),
    ("street", Field::AddressLine1),
    ("street1", Field::AddressLine1),
    ("streetaddress", Field::AddressLine1),
    ("homeaddress", Field::AddressLine1),
    ("line1", Field::AddressLine1),
    ("address2", Field::AddressLine2),
    ("addressline2", Field::AddressLine2),
    ("addr2", Field::AddressLine2),
    ("street2", Field::AddressLine2),
    ("line2", Field::AddressLine2),
    ("apt", Field::AddressLine2),
    ("unit", Field::AddressLine2),
    ("city", Field::City),
    ("town", Field::City),
    ("state", Field::State),
    ("st", Field::State),
    ("statecode", Field::State),
    ("province", Field::State),
    ("zip", Field::PostalCode),
    ("zipcode", Field::PostalCode),
    ("zip5", Field::PostalCode),
    ("postal", Field::PostalCode),
    ("postalcode", Field::PostalCode),
    ("postcode", Field::PostalCode),
    // ids
    ("mrn", Field::LocalId),
    ("patientid", Field::LocalId),
    ("memberid", Field::LocalId),
    ("localid", Field::LocalId),
    ("id", Field::LocalId),
    ("medicalrecordnumber", Field::LocalId),
    ("recordnumber", Field::LocalId),
    ("chartnumber", Field::LocalId),
    ("sourceid", Field::LocalId),
    ("clientid", Field::LocalId),
    ("personid", Field::LocalId),
    ("medicaidid", Field::MedicaidId),
    ("medicaid", Field::MedicaidId),
    ("medicaidnumber", Field::MedicaidId),
    ("medicaidno", Field::MedicaidId),
    ("ssn", Field::Ssn),
    ("ssn4", Field::Ssn),
    ("last4", Field::Ssn),
    ("ssnlast4", Field::Ssn),
    ("last4ssn", Field::Ssn),
    ("socialsecuritynumber", Field::Ssn),
    ("socialsecurity", Field::Ssn),
    ("mothermaidenname", Field::MothersMaidenName),
    ("mothersmaidenname", Field::MothersMaidenName),
    ("maidenname", Field::MothersMaidenName),
    ("mmn", Field::MothersMaidenName),
    ("multiplebirth", Field::MultipleBirth),
    ("multiplebirthindicator", Field::MultipleBirth),
    ("twin", Field::MultipleBirth),
    ("twins", Field::MultipleBirth),
    ("birthorder", Field::MultipleBirthOrder),
    ("multiplebirthorder", Field::MultipleBirthOrder),
    ("iisid", Field::IisId),
    ("iispatientid", Field::IisId),
    ("registryid", Field::IisId),
    ("registrypatientid", Field::IisId),
    ("stateregistryid", Field::IisId),
];

/// Prefixes that often stand in front of a synonym ("Patient First", "Member DOB").
const PREFIXES: &[&str] = &["patient", "pt", "member", "child", "client", "person"];

/// Lowercase ASCII letters and digits only: "First Name" / "first_name" / "FIRST-NAME" → "firstname".
pub(crate) fn squash(header: &str) -> String {
    header
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn lookup(squashed: &str) -> Option<Field> {
    SYNONYMS
        .iter()
        .find(|(s, _)| *s == squashed)
        .map(|(_, f)| *f)
        .or_else(|| {
            Field::ALL
                .iter()
                .copied()
                .find(|f| squash(f.key()) == squashed)
        })
}

/// The field a header most likely means, if any.
pub fn guess_field(header: &str) -> Option<Field> {
    let s = squash(header);
    if s.is_empty() {
        return None;
    }
    lookup(&s).or_else(|| {
        PREFIXES.iter().find_map(|p| {
            s.strip_prefix(p)
                .filter(|rest| !rest.is_empty())
                .and_then(lookup)
        })
    })
}

fn delimiter_to_text(d: u8) -> String {
    (d as char).to_string()
}

fn delimiter_from_text(s: &str) -> Result<Option<u8>, String> {
    match s {
        "" | "auto" | "detect" => Ok(None),
        "," | "comma" => Ok(Some(b',')),
        "\t" | "tab" | "\\t" => Ok(Some(b'\t')),
        ";" | "semicolon" => Ok(Some(b';')),
        "|" | "pipe" => Ok(Some(b'|')),
        other => Err(format!(
            "delimiter {other:?} is not one of \",\", \"\\t\", \";\", \"|\" (or null to detect it)"
        )),
    }
}

/// `columns` as a JSON object that keeps file order both ways.
struct Columns(Vec<(String, Option<String>)>);

impl Serialize for Columns {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Columns {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Columns;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of \"header\": \"field key\"")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Columns, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = a.next_entry::<String, Option<String>>()? {
                    v.push((k, val));
                }
                Ok(Columns(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    version: u32,
    #[serde(default)]
    delimiter: Option<String>,
    #[serde(default)]
    required: Option<Vec<String>>,
    columns: Columns,
}

impl Mapping {
    /// Guess a mapping from a file's headers. The first header that maps to a field wins; later
    /// headers meaning the same field are left unmapped.
    pub fn automap(headers: &[String]) -> Mapping {
        let mut columns: Vec<(String, Field)> = Vec::new();
        for h in headers {
            if let Some(f) = guess_field(h)
                && !columns.iter().any(|(_, g)| *g == f)
            {
                columns.push((h.trim().to_string(), f));
            }
        }
        Mapping {
            columns,
            ..Mapping::default()
        }
    }

    /// The column mapped to `field`, if any.
    pub fn column_for(&self, field: Field) -> Option<&str> {
        self.columns
            .iter()
            .find(|(_, f)| *f == field)
            .map(|(h, _)| h.as_str())
    }

    /// Read a JSON mapping file (see `docs/MAPPING.md`).
    pub fn load(path: &Path) -> Result<Mapping, ImportError> {
        let bad = |detail: String| ImportError::MappingFile {
            path: path.to_path_buf(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|source| ImportError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file: MappingFile = serde_json::from_str(&text)
            .map_err(|e| bad(format!("it is not valid mapping JSON ({e})")))?;
        if file.version != 1 {
            return Err(bad(format!(
                "version {} is not supported (this program reads version 1)",
                file.version
            )));
        }
        let delimiter =
            delimiter_from_text(file.delimiter.as_deref().unwrap_or("")).map_err(bad)?;
        let field = |key: &str, context: &str| {
            Field::from_key(key.trim()).ok_or_else(|| {
                bad(format!(
                    "{context}: {key:?} is not a field; use one of {}",
                    Field::ALL.map(Field::key).join(", ")
                ))
            })
        };
        let required = match file.required {
            None => DEFAULT_REQUIRED.to_vec(),
            Some(keys) => keys
                .iter()
                .map(|k| field(k, "in \"required\""))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let mut columns: Vec<(String, Field)> = Vec::new();
        for (header, key) in file.columns.0 {
            let Some(key) = key else { continue };
            let f = field(&key, &format!("column {header:?}"))?;
            if let Some((other, _)) = columns.iter().find(|(_, g)| *g == f) {
                return Err(bad(format!(
                    "columns {other:?} and {header:?} both map to {}; keep only one",
                    f.key()
                )));
            }
            columns.push((header, f));
        }
        Ok(Mapping {
            columns,
            required,
            delimiter,
        })
    }

    /// Write this mapping as a JSON mapping file.
    pub fn save(&self, path: &Path) -> Result<(), ImportError> {
        let file = MappingFile {
            version: 1,
            delimiter: self.delimiter.map(delimiter_to_text),
            required: Some(self.required.iter().map(|f| f.key().to_string()).collect()),
            columns: Columns(
                self.columns
                    .iter()
                    .map(|(h, f)| (h.clone(), Some(f.key().to_string())))
                    .collect(),
            ),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| ImportError::MappingFile {
            path: path.to_path_buf(),
            detail: format!("it could not be encoded ({e})"),
        })?;
        std::fs::write(path, text + "\n").map_err(|source| ImportError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(h: &str) -> Option<Field> {
        guess_field(h)
    }

    #[test]
    fn automap_synonyms() {
        for h in [
            "First Name",
            "FNAME",
            "given_name",
            "Patient First",
            "first",
        ] {
            assert_eq!(g(h), Some(Field::Given), "{h}");
        }
        for h in [
            "Last Name",
            "LNAME",
            "Surname",
            "family_name",
            "Patient Last Name",
        ] {
            assert_eq!(g(h), Some(Field::Family), "{h}");
        }
        for h in [
            "DOB",
            "Birth Date",
            "date_of_birth",
            "Patient DOB",
            "BirthDate",
        ] {
            assert_eq!(g(h), Some(Field::BirthDate), "{h}");
        }
        for h in ["Gender", "Sex", "patient_sex"] {
            assert_eq!(g(h), Some(Field::Sex), "{h}");
        }
        for h in ["MRN", "Patient ID", "Member ID", "local_id", "ID"] {
            assert_eq!(g(h), Some(Field::LocalId), "{h}");
        }
        for h in ["Zip", "ZIP Code", "postal", "postal_code"] {
            assert_eq!(g(h), Some(Field::PostalCode), "{h}");
        }
        for h in ["Address", "Street", "addr1", "Address Line 1"] {
            assert_eq!(g(h), Some(Field::AddressLine1), "{h}");
        }
        for h in ["SSN", "SSN4", "Last4", "SSN Last 4"] {
            assert_eq!(g(h), Some(Field::Ssn), "{h}");
        }
        assert_eq!(g("Mother Maiden Name"), Some(Field::MothersMaidenName));
        assert_eq!(g("Mother's Maiden Name"), Some(Field::MothersMaidenName));
        assert_eq!(g("Multiple Birth"), Some(Field::MultipleBirth));
        assert_eq!(g("Twin"), Some(Field::MultipleBirth));
        assert_eq!(g("Birth Order"), Some(Field::MultipleBirthOrder));
        assert_eq!(g("Medicaid ID"), Some(Field::MedicaidId));
        assert_eq!(g("IIS ID"), Some(Field::IisId));
        assert_eq!(g("Registry ID"), Some(Field::IisId));
        assert_eq!(g("Phone Number"), Some(Field::Phone));
        assert_eq!(g("E-mail"), Some(Field::Email));
        assert_eq!(g("Middle Initial"), Some(Field::Middle));
        assert_eq!(g("City"), Some(Field::City));
        assert_eq!(g("ST"), Some(Field::State));
        assert_eq!(g("Favourite colour"), None);
        assert_eq!(g("  "), None);
    }

    #[test]
    fn automap_first_header_wins() {
        let headers: Vec<String> = ["MRN", "First", "Last", "DOB", "Patient ID", "Notes"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let m = Mapping::automap(&headers);
        assert_eq!(
            m.columns,
            vec![
                ("MRN".to_string(), Field::LocalId),
                ("First".to_string(), Field::Given),
                ("Last".to_string(), Field::Family),
                ("DOB".to_string(), Field::BirthDate),
            ]
        );
        assert_eq!(m.required, DEFAULT_REQUIRED.to_vec());
        assert_eq!(m.delimiter, None);
    }

    #[test]
    fn save_load_round_trip_keeps_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        for delimiter in [None, Some(b','), Some(b'\t'), Some(b';'), Some(b'|')] {
            let m = Mapping {
                columns: vec![
                    ("Last Name".into(), Field::Family),
                    ("DOB".into(), Field::BirthDate),
                    ("A first".into(), Field::Given),
                ],
                required: vec![Field::Family, Field::BirthDate],
                delimiter,
            };
            m.save(&path).unwrap();
            assert_eq!(Mapping::load(&path).unwrap(), m);
        }
    }

    #[test]
    fn load_documented_example_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        std::fs::write(
            &path,
            r#"{"version":1,"delimiter":",","required":["family","given","birth_date"],"columns":{"Last Name":"family","DOB":"birth_date","Notes":null}}"#,
        )
        .unwrap();
        let m = Mapping::load(&path).unwrap();
        assert_eq!(m.delimiter, Some(b','));
        assert_eq!(
            m.columns,
            vec![
                ("Last Name".to_string(), Field::Family),
                ("DOB".to_string(), Field::BirthDate)
            ]
        );

        std::fs::write(&path, r#"{"version":1,"columns":{"Last":"surname"}}"#).unwrap();
        let e = Mapping::load(&path).unwrap_err().to_string();
        assert!(e.contains("\"surname\" is not a field"), "{e}");
        assert!(e.contains("birth_date"), "{e}");
        assert!(e.contains("m.json"), "{e}");

        std::fs::write(
            &path,
            r#"{"version":1,"columns":{"Last":"family","Surname":"family"}}"#,
        )
        .unwrap();
        let e = Mapping::load(&path).unwrap_err().to_string();
        assert!(e.contains("both map to family"), "{e}");

        std::fs::write(&path, r#"{"version":1,"delimiter":"x","columns":{}}"#).unwrap();
        assert!(Mapping::load(&path).is_err());
        std::fs::write(&path, r#"{"version":2,"columns":{}}"#).unwrap();
        assert!(Mapping::load(&path).is_err());
    }
}
