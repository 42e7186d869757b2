//! FHIR R4 `Patient` ↔ [`Demographics`].
//!
//! This module owns the one mapping between matchdesk's demographics and the FHIR `Patient`
//! resource: [`to_patient`] builds the resource a kick-off submits (and the simulated IIS
//! returns), [`from_patient`] reads a Patient back — leniently, because real servers and real
//! ndjson exports differ in which name they mark official, how they spell identifier types and
//! whether they send `multipleBirthBoolean` or `multipleBirthInteger`.
//!
//! Identifier conventions (shared by both directions):
//!
//! | field | `identifier.system` | `identifier.type` |
//! |---|---|---|
//! | local id | `urn:matchdesk:local-id` | v2-0203 `MR` |
//! | Medicaid id | `urn:matchdesk:medicaid` | v2-0203 `MA` |
//! | SSN (9 digits) | `http://hl7.org/fhir/sid/us-ssn` | v2-0203 `SS` |
//! | SSN last four | — | text `SSN last 4` |

use std::marker::PhantomData;

use chrono::NaiveDate;
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value, json};

use crate::domain::{Demographics, Sex};
use crate::fhir::FhirError;
use crate::fhir::bundle::lenient::{Arr, ExtIn, Json, Key, Obj};
use crate::fhir::bundle::{parse_object, trim_json_bytes};

/// `identifier.system` for the source system's local id (MRN).
pub const LOCAL_ID_SYSTEM: &str = "urn:matchdesk:local-id";
/// `identifier.system` for the Medicaid id.
pub const MEDICAID_SYSTEM: &str = "urn:matchdesk:medicaid";
/// `identifier.system` for a US Social Security number.
pub const SSN_SYSTEM: &str = "http://hl7.org/fhir/sid/us-ssn";
/// The HL7 v2 identifier-type code system.
pub const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
/// `Patient.extension` url for the mother's maiden name.
pub const MOTHERS_MAIDEN_NAME_URL: &str =
    "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName";
/// `identifier.type.text` used for the last four digits of an SSN.
pub const SSN_LAST4_TEXT: &str = "SSN last 4";

fn typed_identifier(code: &str, display: &str, system: &str, value: &str) -> Value {
    json!({
        "type": {"coding": [{"system": V2_0203, "code": code, "display": display}]},
        "system": system,
        "value": value,
    })
}

/// Build a FHIR R4 `Patient` with the given `id` from `d`. Absent fields are omitted entirely.
pub fn to_patient(id: &str, d: &Demographics) -> Value {
    let mut p = Map::new();
    p.insert("resourceType".into(), json!("Patient"));
    p.insert("id".into(), json!(id));

    let mut extensions = Vec::new();
    if let Some(m) = &d.mothers_maiden_name {
        extensions.push(json!({"url": MOTHERS_MAIDEN_NAME_URL, "valueString": m}));
    }
    if !extensions.is_empty() {
        p.insert("extension".into(), Value::Array(extensions));
    }

    let mut identifiers = Vec::new();
    if let Some(v) = &d.local_id {
        identifiers.push(typed_identifier(
            "MR",
            "Medical record number",
            LOCAL_ID_SYSTEM,
            v,
        ));
    }
    if let Some(v) = &d.medicaid_id {
        identifiers.push(typed_identifier(
            "MA",
            "Patient Medicaid number",
            MEDICAID_SYSTEM,
            v,
        ));
    }
    if let Some(ssn) = &d.ssn {
        let digits: String = ssn.chars().filter(|c| c.is_ascii_digit()).collect();
        if digits.len() == 9 {
            identifiers.push(typed_identifier(
                "SS",
                "Social Security number",
                SSN_SYSTEM,
                &digits,
            ));
        } else if digits.len() == 4 {
            identifiers.push(json!({"type": {"text": SSN_LAST4_TEXT}, "value": digits}));
        }
    }
    if !identifiers.is_empty() {
        p.insert("identifier".into(), Value::Array(identifiers));
    }

    let mut name = Map::new();
    if let Some(f) = &d.family {
        name.insert("family".into(), json!(f));
    }
    let given: Vec<&str> = d
        .given
        .iter()
        .chain(d.middle.iter())
        .map(String::as_str)
        .collect();
    if !given.is_empty() {
        name.insert("given".into(), json!(given));
    }
    if let Some(s) = &d.suffix {
        name.insert("suffix".into(), json!([s]));
    }
    if !name.is_empty() {
        name.insert("use".into(), json!("official"));
        p.insert("name".into(), json!([Value::Object(name)]));
    }

    let mut telecom = Vec::new();
    if let Some(ph) = &d.phone {
        telecom.push(json!({"system": "phone", "value": ph}));
    }
    if let Some(e) = &d.email {
        telecom.push(json!({"system": "email", "value": e}));
    }
    if !telecom.is_empty() {
        p.insert("telecom".into(), Value::Array(telecom));
    }

    if let Some(s) = d.sex {
        p.insert("gender".into(), json!(s.fhir_code()));
    }
    if let Some(b) = d.birth_date {
        p.insert("birthDate".into(), json!(b.format("%Y-%m-%d").to_string()));
    }

    let mut addr = Map::new();
    let lines: Vec<&str> = d
        .address_line1
        .iter()
        .chain(d.address_line2.iter())
        .map(String::as_str)
        .collect();
    if !lines.is_empty() {
        addr.insert("line".into(), json!(lines));
    }
    if let Some(c) = &d.city {
        addr.insert("city".into(), json!(c));
    }
    if let Some(s) = &d.state {
        addr.insert("state".into(), json!(s));
    }
    if let Some(z) = &d.postal_code {
        addr.insert("postalCode".into(), json!(z));
    }
    if !addr.is_empty() {
        p.insert("address".into(), json!([Value::Object(addr)]));
    }

    // multipleBirth[x] is a choice: an explicit "no" wins, then a birth order, then "yes".
    match (d.multiple_birth, d.multiple_birth_order) {
        (Some(false), _) => {
            p.insert("multipleBirthBoolean".into(), json!(false));
        }
        (_, Some(n)) => {
            p.insert("multipleBirthInteger".into(), json!(n));
        }
        (Some(true), None) => {
            p.insert("multipleBirthBoolean".into(), json!(true));
        }
        (None, None) => {}
    }

    Value::Object(p)
}

/// The `Patient.id`, if present and non-empty.
pub fn patient_id(v: &Value) -> Option<String> {
    let s = v.get("id")?.as_str()?.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// The elements of a FHIR `Patient` that [`Demographics`] needs, borrowed from the JSON they
/// were read from (strings without escapes are not copied). Every element is optional and an
/// element of the wrong JSON type counts as absent, so reading never fails on content; a
/// repeated key keeps its last value, as `serde_json::Value` does.
///
/// Read it with `serde_json::from_str`/`from_slice` (wrapped in nothing: a non-object is an
/// error) or from a `&Value`, then convert with `Demographics::from(&patient)`.
#[derive(Debug, Default)]
pub struct PatientIn<'a> {
    resource_type: Json<'a>,
    id: Json<'a>,
    name: Arr<Obj<NameIn<'a>>>,
    birth_date: Json<'a>,
    gender: Json<'a>,
    telecom: Arr<Obj<TelecomIn<'a>>>,
    address: Arr<Obj<AddressIn<'a>>>,
    identifier: Arr<Obj<IdentifierIn<'a>>>,
    extension: Arr<Obj<ExtIn<'a>>>,
    multiple_birth_boolean: Json<'a>,
    multiple_birth_integer: Json<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NameIn<'a> {
    #[serde(borrow, rename = "use")]
    use_: Json<'a>,
    #[serde(borrow)]
    family: Json<'a>,
    #[serde(borrow)]
    given: Json<'a>,
    #[serde(borrow)]
    suffix: Json<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TelecomIn<'a> {
    #[serde(borrow)]
    system: Json<'a>,
    #[serde(borrow)]
    value: Json<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AddressIn<'a> {
    #[serde(borrow, rename = "use")]
    use_: Json<'a>,
    #[serde(borrow)]
    line: Json<'a>,
    #[serde(borrow)]
    city: Json<'a>,
    #[serde(borrow)]
    state: Json<'a>,
    #[serde(borrow, rename = "postalCode")]
    postal_code: Json<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct IdentifierIn<'a> {
    #[serde(borrow)]
    system: Json<'a>,
    #[serde(borrow)]
    value: Json<'a>,
    #[serde(borrow, rename = "type")]
    type_: Obj<CodeableConceptIn<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CodeableConceptIn<'a> {
    #[serde(borrow)]
    text: Json<'a>,
    #[serde(borrow)]
    coding: Arr<Obj<CodingIn<'a>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CodingIn<'a> {
    #[serde(borrow)]
    code: Json<'a>,
}

impl<'a> PatientIn<'a> {
    /// Read a Patient from JSON text. The fast path borrows from `bytes`; input it cannot take
    /// (a key repeated inside a nested object) is read through a `serde_json::Value` instead,
    /// with the same result. Errors only when `bytes` is not a JSON object.
    pub fn from_json(bytes: &'a [u8]) -> Result<PatientIn<'a>, FhirError> {
        const WHAT: &str = "Patient";
        let trimmed = trim_json_bytes(bytes);
        if let Ok(text) = std::str::from_utf8(trimmed)
            && let Ok(Obj(Some(p))) = serde_json::from_str::<Obj<PatientIn<'a>>>(text)
        {
            return Ok(p);
        }
        let value = Value::Object(parse_object(WHAT, bytes)?);
        match Obj::<PatientIn<'static>>::deserialize(value) {
            Ok(Obj(Some(p))) => Ok(p),
            _ => Err(FhirError::Invalid {
                what: WHAT,
                element: "top-level object".to_string(),
                problem: "its structure could not be read; check that it is FHIR JSON".to_string(),
            }),
        }
    }

    /// `resourceType`, if it is a string.
    pub fn resource_type(&self) -> Option<&str> {
        self.resource_type.as_str()
    }

    /// The `Patient.id`, if present and non-empty (as [`patient_id`] reads it).
    pub fn id(&self) -> Option<String> {
        self.id.non_empty()
    }

    /// `id` as sent (callers that accept numeric ids read it themselves).
    pub(crate) fn id_json(&self) -> &Json<'a> {
        &self.id
    }

    /// Read the value of the Patient element `key` from `map` if it is one this type keeps.
    /// Returns `false` (and reads nothing) for any other key, so a caller reading a wider
    /// object can handle or skip the value itself.
    pub(crate) fn read_field<'de: 'a, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
    ) -> Result<bool, A::Error> {
        match key {
            "resourceType" => self.resource_type = map.next_value()?,
            "id" => self.id = map.next_value()?,
            "name" => self.name = map.next_value()?,
            "birthDate" => self.birth_date = map.next_value()?,
            "gender" => self.gender = map.next_value()?,
            "telecom" => self.telecom = map.next_value()?,
            "address" => self.address = map.next_value()?,
            "identifier" => self.identifier = map.next_value()?,
            "extension" => self.extension = map.next_value()?,
            "multipleBirthBoolean" => self.multiple_birth_boolean = map.next_value()?,
            "multipleBirthInteger" => self.multiple_birth_integer = map.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for PatientIn<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PatientVisitor<'a>(PhantomData<PatientIn<'a>>);
        impl<'de: 'a, 'a> Visitor<'de> for PatientVisitor<'a> {
            type Value = PatientIn<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a FHIR Patient object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut p = PatientIn::default();
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    if !p.read_field(key.as_str(), &mut map)? {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(p)
            }
        }
        deserializer.deserialize_map(PatientVisitor(PhantomData))
    }
}

/// Choose the name to read: `use = official`, else the first that is not old/nickname/maiden,
/// else the first one. A name that is not an object has no `use`.
fn pick_name<'n, 'a>(names: &'n [Obj<NameIn<'a>>]) -> Option<&'n Obj<NameIn<'a>>> {
    fn use_of<'n>(n: &'n Obj<NameIn<'_>>) -> &'n str {
        n.get().and_then(|n| n.use_.as_str()).unwrap_or("")
    }
    names
        .iter()
        .find(|n| use_of(n) == "official")
        .or_else(|| {
            names
                .iter()
                .find(|n| !matches!(use_of(n), "old" | "nickname" | "maiden" | "anonymous"))
        })
        .or_else(|| names.first())
}

/// The non-blank strings of an array, trimmed (nothing if `v` is not an array).
fn non_empty_items<'j>(v: &'j Json<'_>) -> impl Iterator<Item = &'j str> {
    v.items()
        .unwrap_or_default()
        .iter()
        .filter_map(|x| Some(x.as_str()?.trim()).filter(|s| !s.is_empty()))
}

/// The items joined with single spaces; `None` when there are none.
fn join_rest<'j>(rest: impl Iterator<Item = &'j str>) -> Option<String> {
    let mut joined: Option<String> = None;
    for s in rest {
        match &mut joined {
            None => joined = Some(s.to_string()),
            Some(j) => {
                j.push(' ');
                j.push_str(s);
            }
        }
    }
    joined
}

/// [`Sex::parse`] without its lowercase copy for the four FHIR codes (same result).
fn parse_gender(s: &str) -> Option<Sex> {
    match s {
        "male" => Some(Sex::Male),
        "female" => Some(Sex::Female),
        "other" => Some(Sex::Other),
        "unknown" => Some(Sex::Unknown),
        _ => Sex::parse(s),
    }
}

/// Whether `hay` contains `needle` (ASCII lowercase), ignoring ASCII case.
fn contains_ignore_ascii_case(hay: &str, needle: &str) -> bool {
    hay.as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// `YYYY-MM-DD` (also the date part of a dateTime). Plain ten-character dates, the usual
/// form, skip chrono's format parser; it gives the same answer for them.
fn parse_birth_date(s: &str) -> Option<NaiveDate> {
    let date = s.get(..10).unwrap_or(s);
    let b = date.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && digits(0..4)
        && digits(5..7)
        && digits(8..10)
    {
        let num = |r: std::ops::Range<usize>| {
            b[r].iter()
                .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'))
        };
        let year = i32::try_from(num(0..4)).ok()?;
        return NaiveDate::from_ymd_opt(year, num(5..7), num(8..10));
    }
    NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()
}

impl From<&PatientIn<'_>> for Demographics {
    /// Read a Patient leniently (see [`from_patient`]).
    fn from(p: &PatientIn<'_>) -> Demographics {
        let mut d = Demographics::default();

        if let Some(name) = p.name.items().and_then(pick_name) {
            // A name that is not an object reads as an empty one.
            let empty = NameIn::default();
            let name = name.get().unwrap_or(&empty);
            d.family = name.family.non_empty();
            let mut given = non_empty_items(&name.given);
            d.given = given.next().map(str::to_string);
            d.middle = join_rest(given);
            d.suffix = match &name.suffix {
                Json::Array(_) => join_rest(non_empty_items(&name.suffix)),
                other => other.non_empty(),
            };
        }

        d.birth_date = p.birth_date.as_str().and_then(parse_birth_date);
        d.sex = p.gender.as_str().and_then(parse_gender);

        for t in p
            .telecom
            .items()
            .unwrap_or_default()
            .iter()
            .filter_map(Obj::get)
        {
            match t.system.as_str() {
                Some("phone") | Some("sms") if d.phone.is_none() => d.phone = t.value.non_empty(),
                Some("email") if d.email.is_none() => d.email = t.value.non_empty(),
                _ => {}
            }
        }

        if let Some(addrs) = p.address.items() {
            let chosen = addrs
                .iter()
                .find(|a| a.get().and_then(|a| a.use_.as_str()) == Some("home"))
                .or_else(|| addrs.first());
            if let Some(a) = chosen {
                let empty = AddressIn::default();
                let a = a.get().unwrap_or(&empty);
                let mut lines = non_empty_items(&a.line);
                d.address_line1 = lines.next().map(str::to_string);
                d.address_line2 = join_rest(lines);
                d.city = a.city.non_empty();
                d.state = a.state.non_empty();
                d.postal_code = a.postal_code.non_empty();
            }
        }

        for ident in p
            .identifier
            .items()
            .unwrap_or_default()
            .iter()
            .filter_map(Obj::get)
        {
            let Some(value) = ident.value.non_empty() else {
                continue;
            };
            // Systems and type texts compare case-insensitively (the constants are lowercase).
            let system = ident.system.as_str().unwrap_or("");
            let concept = ident.type_.get();
            let text = concept.and_then(|t| t.text.as_str()).unwrap_or("");
            let has_type_code = |code: &str| {
                concept
                    .and_then(|t| t.coding.items())
                    .is_some_and(|codings| {
                        codings.iter().filter_map(Obj::get).any(|c| {
                            c.code
                                .as_str()
                                .is_some_and(|x| x.eq_ignore_ascii_case(code))
                        })
                    })
            };
            if system.eq_ignore_ascii_case(SSN_SYSTEM)
                || has_type_code("SS")
                || contains_ignore_ascii_case(text, "ssn")
                || contains_ignore_ascii_case(text, "social security")
            {
                if d.ssn.is_none() {
                    d.ssn = Some(value);
                }
            } else if system.eq_ignore_ascii_case(MEDICAID_SYSTEM)
                || has_type_code("MA")
                || contains_ignore_ascii_case(system, "medicaid")
                || contains_ignore_ascii_case(text, "medicaid")
            {
                if d.medicaid_id.is_none() {
                    d.medicaid_id = Some(value);
                }
            } else if (system.eq_ignore_ascii_case(LOCAL_ID_SYSTEM) || has_type_code("MR"))
                && d.local_id.is_none()
            {
                d.local_id = Some(value);
            }
        }

        if let Some(exts) = p.extension.items() {
            d.mothers_maiden_name = exts
                .iter()
                .filter_map(Obj::get)
                .find(|e| e.url.as_str() == Some(MOTHERS_MAIDEN_NAME_URL))
                .and_then(|e| e.value_string.non_empty());
        }

        if let Some(b) = p.multiple_birth_boolean.as_bool() {
            d.multiple_birth = Some(b);
        } else if let Some(n) = p.multiple_birth_integer.as_u64() {
            d.multiple_birth_order = u32::try_from(n).ok();
            d.multiple_birth = Some(true);
        }

        d
    }
}

/// Read a Patient leniently. Unknown or malformed elements are skipped; `id` is not read (see
/// [`patient_id`]) and `iis_id` is left empty. Anything that is not an object reads as an
/// empty Patient.
///
/// This is [`PatientIn`] read from the `Value`; for JSON text use [`from_patient_json`], which
/// skips building the `Value`.
pub fn from_patient(v: &Value) -> Demographics {
    match Obj::<PatientIn<'_>>::deserialize(v) {
        Ok(Obj(Some(p))) => Demographics::from(&p),
        // Reading from a `Value` cannot fail (every element is optional and any JSON type is
        // accepted); a non-object is an empty Patient.
        _ => Demographics::default(),
    }
}

/// Read a Patient straight from JSON text, as [`from_patient`] would read it from the parsed
/// `Value`. Errors only when `bytes` is not a JSON object.
pub fn from_patient_json(bytes: &[u8]) -> Result<Demographics, FhirError> {
    PatientIn::from_json(bytes).map(|p| Demographics::from(&p))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn full() -> Demographics {
        Demographics {
            given: Some("ANA".into()),
            middle: Some("MARIA".into()),
            family: Some("MUNOZ".into()),
            suffix: Some("JR".into()),
            birth_date: NaiveDate::from_ymd_opt(2019, 2, 28),
            sex: Some(Sex::Female),
            phone: Some("5551234567".into()),
            email: Some("ana@example.org".into()),
            address_line1: Some("1 MAIN ST".into()),
            address_line2: Some("APT 4".into()),
            city: Some("SPRINGFIELD".into()),
            state: Some("IL".into()),
            postal_code: Some("62701".into()),
            local_id: Some("MRN-1".into()),
            medicaid_id: Some("MA123".into()),
            ssn: Some("123456789".into()),
            mothers_maiden_name: Some("GARCIA".into()),
            multiple_birth: Some(true),
            multiple_birth_order: Some(2),
            iis_id: None,
        }
    }

    #[test]
    fn round_trip_full() {
        let d = full();
        let p = to_patient("p1", &d);
        assert_eq!(p["resourceType"], "Patient");
        assert_eq!(p["id"], "p1");
        assert_eq!(p["birthDate"], "2019-02-28");
        assert_eq!(p["gender"], "female");
        assert_eq!(p["name"][0]["given"], json!(["ANA", "MARIA"]));
        assert_eq!(p["name"][0]["suffix"], json!(["JR"]));
        assert_eq!(p["address"][0]["line"], json!(["1 MAIN ST", "APT 4"]));
        assert_eq!(p["address"][0]["postalCode"], "62701");
        assert_eq!(p["multipleBirthInteger"], 2);
        assert_eq!(p["extension"][0]["url"], MOTHERS_MAIDEN_NAME_URL);
        assert_eq!(patient_id(&p).as_deref(), Some("p1"));
        assert_eq!(from_patient(&p), d);
    }

    #[test]
    fn absent_fields_are_omitted() {
        let d = Demographics {
            family: Some("DOE".into()),
            ..Default::default()
        };
        let p = to_patient("x", &d);
        let obj = p.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, vec!["id", "name", "resourceType"]);
        assert_eq!(p["name"][0], json!({"use": "official", "family": "DOE"}));
        assert_eq!(from_patient(&p), d);
    }

    #[test]
    fn ssn_last4_and_malformed_ssn() {
        let mut d = Demographics {
            ssn: Some("6789".into()),
            ..Default::default()
        };
        let p = to_patient("x", &d);
        assert_eq!(p["identifier"][0]["type"]["text"], SSN_LAST4_TEXT);
        assert_eq!(from_patient(&p).ssn.as_deref(), Some("6789"));
        d.ssn = Some("12345".into());
        assert!(to_patient("x", &d).get("identifier").is_none());
    }

    #[test]
    fn multiple_birth_boolean_forms() {
        let d = Demographics {
            multiple_birth: Some(false),
            ..Default::default()
        };
        let p = to_patient("x", &d);
        assert_eq!(p["multipleBirthBoolean"], false);
        assert_eq!(from_patient(&p), d);
        let d = Demographics {
            multiple_birth: Some(true),
            ..Default::default()
        };
        assert_eq!(from_patient(&to_patient("x", &d)), d);
    }

    #[test]
    fn lenient_reading() {
        let p = json!({
            "resourceType": "Patient",
            "id": "  ",
            "name": [
                {"use": "nickname", "given": ["Annie"]},
                {"use": "official", "family": "Smith", "given": ["Ann", "B", "C"], "suffix": "III"}
            ],
            "birthDate": "2001-02-03T00:00:00Z",
            "gender": "MALE",
            "telecom": [{"system": "fax", "value": "1"}, {"system": "sms", "value": "555"}],
            "address": [{"use": "work", "city": "A"}, {"use": "home", "city": "B"}],
            "identifier": [
                {"type": {"coding": [{"code": "mr"}]}, "system": "urn:other", "value": "L1"},
                {"system": "https://state.example/medicaid", "value": "M1"},
                {"type": {"coding": [{"code": "SS"}]}, "value": "123-45-6789"}
            ]
        });
        let d = from_patient(&p);
        assert_eq!(patient_id(&p), None);
        assert_eq!(d.family.as_deref(), Some("Smith"));
        assert_eq!(d.given.as_deref(), Some("Ann"));
        assert_eq!(d.middle.as_deref(), Some("B C"));
        assert_eq!(d.suffix.as_deref(), Some("III"));
        assert_eq!(d.birth_date, NaiveDate::from_ymd_opt(2001, 2, 3));
        assert_eq!(d.sex, Some(Sex::Male));
        assert_eq!(d.phone.as_deref(), Some("555"));
        assert_eq!(d.city.as_deref(), Some("B"));
        assert_eq!(d.local_id.as_deref(), Some("L1"));
        assert_eq!(d.medicaid_id.as_deref(), Some("M1"));
        assert_eq!(d.ssn.as_deref(), Some("123-45-6789"));
        assert_eq!(d.iis_id, None);
    }

    #[test]
    fn multiple_birth_integer_reads_order() {
        let d = from_patient(&json!({"resourceType": "Patient", "multipleBirthInteger": 3}));
        assert_eq!(d.multiple_birth_order, Some(3));
        assert_eq!(d.multiple_birth, Some(true));
    }

    /// The `serde_json::Value`-based reader this module used before [`PatientIn`], kept
    /// verbatim as the oracle the typed reader must agree with.
    pub(crate) mod reference {
        use super::super::{LOCAL_ID_SYSTEM, MEDICAID_SYSTEM, MOTHERS_MAIDEN_NAME_URL, SSN_SYSTEM};
        use crate::domain::{Demographics, Sex};
        use chrono::NaiveDate;
        use serde_json::Value;

        fn non_empty(v: Option<&Value>) -> Option<String> {
            let s = v?.as_str()?.trim();
            if s.is_empty() {
                None
            } else {
                Some(s.to_string())
            }
        }

        /// Choose the name to read: `use = official`, else the first that is not old/nickname/maiden,
        /// else the first one.
        fn pick_name(names: &[Value]) -> Option<&Value> {
            fn use_of(n: &Value) -> &str {
                n.get("use").and_then(Value::as_str).unwrap_or("")
            }
            names
                .iter()
                .find(|n| use_of(n) == "official")
                .or_else(|| {
                    names
                        .iter()
                        .find(|n| !matches!(use_of(n), "old" | "nickname" | "maiden" | "anonymous"))
                })
                .or_else(|| names.first())
        }

        /// Whether an identifier's `type` carries the v2-0203 `code` (any system, case-insensitive).
        fn has_type_code(ident: &Value, code: &str) -> bool {
            ident
                .get("type")
                .and_then(|t| t.get("coding"))
                .and_then(Value::as_array)
                .is_some_and(|codings| {
                    codings.iter().any(|c| {
                        c.get("code")
                            .and_then(Value::as_str)
                            .is_some_and(|x| x.eq_ignore_ascii_case(code))
                    })
                })
        }

        fn type_text(ident: &Value) -> String {
            ident
                .get("type")
                .and_then(|t| t.get("text"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_ascii_lowercase()
        }

        /// Read a Patient leniently. Unknown or malformed elements are skipped; `id` is not read (see
        /// [`patient_id`]) and `iis_id` is left empty.
        pub(crate) fn from_patient(v: &Value) -> Demographics {
            let mut d = Demographics::default();

            if let Some(name) = v
                .get("name")
                .and_then(Value::as_array)
                .and_then(|n| pick_name(n))
            {
                d.family = non_empty(name.get("family"));
                let given: Vec<String> = name
                    .get("given")
                    .and_then(Value::as_array)
                    .map(|g| g.iter().filter_map(|x| non_empty(Some(x))).collect())
                    .unwrap_or_default();
                let mut it = given.into_iter();
                d.given = it.next();
                let rest: Vec<String> = it.collect();
                if !rest.is_empty() {
                    d.middle = Some(rest.join(" "));
                }
                d.suffix = match name.get("suffix") {
                    Some(Value::Array(a)) => {
                        let s: Vec<String> = a.iter().filter_map(|x| non_empty(Some(x))).collect();
                        if s.is_empty() {
                            None
                        } else {
                            Some(s.join(" "))
                        }
                    }
                    other => non_empty(other),
                };
            }

            d.birth_date = v
                .get("birthDate")
                .and_then(Value::as_str)
                .and_then(|s| NaiveDate::parse_from_str(s.get(..10).unwrap_or(s), "%Y-%m-%d").ok());
            d.sex = v.get("gender").and_then(Value::as_str).and_then(Sex::parse);

            if let Some(telecom) = v.get("telecom").and_then(Value::as_array) {
                for t in telecom {
                    let value = non_empty(t.get("value"));
                    match t.get("system").and_then(Value::as_str) {
                        Some("phone") | Some("sms") if d.phone.is_none() => d.phone = value,
                        Some("email") if d.email.is_none() => d.email = value,
                        _ => {}
                    }
                }
            }

            if let Some(addrs) = v.get("address").and_then(Value::as_array) {
                let chosen = addrs
                    .iter()
                    .find(|a| a.get("use").and_then(Value::as_str) == Some("home"))
                    .or_else(|| addrs.first());
                if let Some(a) = chosen {
                    let lines: Vec<String> = a
                        .get("line")
                        .and_then(Value::as_array)
                        .map(|l| l.iter().filter_map(|x| non_empty(Some(x))).collect())
                        .unwrap_or_default();
                    let mut it = lines.into_iter();
                    d.address_line1 = it.next();
                    let rest: Vec<String> = it.collect();
                    if !rest.is_empty() {
                        d.address_line2 = Some(rest.join(" "));
                    }
                    d.city = non_empty(a.get("city"));
                    d.state = non_empty(a.get("state"));
                    d.postal_code = non_empty(a.get("postalCode"));
                }
            }

            if let Some(idents) = v.get("identifier").and_then(Value::as_array) {
                for ident in idents {
                    let Some(value) = non_empty(ident.get("value")) else {
                        continue;
                    };
                    let system = ident
                        .get("system")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_ascii_lowercase();
                    let text = type_text(ident);
                    if system == SSN_SYSTEM
                        || has_type_code(ident, "SS")
                        || text.contains("ssn")
                        || text.contains("social security")
                    {
                        if d.ssn.is_none() {
                            d.ssn = Some(value);
                        }
                    } else if system == MEDICAID_SYSTEM
                        || has_type_code(ident, "MA")
                        || system.contains("medicaid")
                        || text.contains("medicaid")
                    {
                        if d.medicaid_id.is_none() {
                            d.medicaid_id = Some(value);
                        }
                    } else if (system == LOCAL_ID_SYSTEM || has_type_code(ident, "MR"))
                        && d.local_id.is_none()
                    {
                        d.local_id = Some(value);
                    }
                }
            }

            if let Some(exts) = v.get("extension").and_then(Value::as_array) {
                d.mothers_maiden_name = exts
                    .iter()
                    .find(|e| e.get("url").and_then(Value::as_str) == Some(MOTHERS_MAIDEN_NAME_URL))
                    .and_then(|e| non_empty(e.get("valueString")));
            }

            if let Some(b) = v.get("multipleBirthBoolean").and_then(Value::as_bool) {
                d.multiple_birth = Some(b);
            } else if let Some(n) = v.get("multipleBirthInteger").and_then(Value::as_u64) {
                d.multiple_birth_order = u32::try_from(n).ok();
                d.multiple_birth = Some(true);
            }

            d
        }
    }

    /// Patients as real exports and servers send them, including every deviation the reader
    /// tolerates, as raw JSON text (so repeated keys and escapes survive).
    fn deviant_patients() -> Vec<String> {
        let mut out: Vec<String> = [
            r#"{"resourceType":"Patient","name":["x",{"use":"usual","family":"A"}]}"#,
            r#"{"name":{"family":"A"}}"#,
            r#"{"name":[{"use":"old","family":"OLD"},{"use":"nickname","family":"NICK"}]}"#,
            r#"{"name":[{"use":"maiden","family":"M"},null,{"use":"official","family":"O"}]}"#,
            r#"{"name":[{"use":5,"family":5,"given":"ANN","suffix":3}]}"#,
            r#"{"name":[{"family":"  X  ","given":[null,5," ","ANN","B",{"x":1},"C"],"suffix":[]}]}"#,
            r#"{"name":[{"family":"","given":[],"suffix":[""," "]}]}"#,
            r#"{"name":[{"family":"\u00c9LISE","given":["Jos\u00e9"],"suffix":[1,"II"," III "]}]}"#,
            r#"{"name":[{"suffix":"  JR "}]}"#,
            r#"{"name":[{"suffix":null,"given":null}]}"#,
            r#"{"name":[{"family":"A","family":"B"}]}"#,
            r#"{"name":[{"fam\u0069ly":"ESC"}],"gend\u0065r":"f"}"#,
            r#"{"name":[]}"#,
            r#"{"birthDate":"2001-2-3"}"#,
            r#"{"birthDate":"2001-02-30"}"#,
            r#"{"birthDate":"20010203"}"#,
            r#"{"birthDate":"2001-02-03T10:00:00-05:00"}"#,
            r#"{"birthDate":"+2001-02-03"}"#,
            r#"{"birthDate":" 2001-02-03"}"#,
            r#"{"birthDate":"2001-02-1\u00e9"}"#,
            r#"{"birthDate":"2001-02-\u00e9"}"#,
            r#"{"birthDate":"0000-01-01"}"#,
            r#"{"birthDate":"2001"}"#,
            r#"{"birthDate":20010203}"#,
            r#"{"birthDate":"2001-13-01"}"#,
            r#"{"gender":"F"}"#,
            r#"{"gender":1}"#,
            r#"{"gender":"Female "}"#,
            r#"{"gender":"q"}"#,
            r#"{"gender":""}"#,
            r#"{"gender":"male","gender":"female"}"#,
            r#"{"telecom":[{"system":"phone"},{"system":"phone","value":"1"},{"system":"email"},{"system":"email","value":" e@x "}]}"#,
            r#"{"telecom":[{"system":"sms","value":" 2 "},"x",{"system":"email","value":5},{"system":"phone","value":"3"}]}"#,
            r#"{"telecom":{"system":"phone","value":"1"}}"#,
            r#"{"telecom":[{"system":"PHONE","value":"1"},{"system":"fax","value":"2"}]}"#,
            r#"{"address":["str",{"use":"home","city":"H"}]}"#,
            r#"{"address":[{"use":"work","line":"1 MAIN","city":"W"},{"use":"temp","city":"T"}]}"#,
            r#"{"address":[{"line":[" A ",null,"B","  ","C"],"city":" C ","state":"il","postalCode":62701}]}"#,
            r#"{"address":["x"]}"#,
            r#"{"address":{"city":"X"}}"#,
            r#"{"identifier":[{"system":"HTTP://HL7.ORG/FHIR/SID/US-SSN","value":"1"},{"system":"urn:matchdesk:ssn","value":"2"}]}"#,
            r#"{"identifier":[{"system":"urn:State:MEDICAID:x","value":"M"},{"type":{"text":"Social Security Number"},"value":"S"}]}"#,
            r#"{"identifier":[{"type":{"text":"SSN last 4"},"value":"6789"},{"type":{"text":"Medicaid ID"},"value":"M2"}]}"#,
            r#"{"identifier":[{"type":{"coding":[{"code":"ma"}]},"value":"M"},{"type":{"coding":[{"code":"Mr"}]},"value":"L"},{"type":{"coding":[{"code":"ss"}]},"value":"S"}]}"#,
            r#"{"identifier":[{"type":{"coding":{"code":"MR"}},"value":"L"},{"type":"MR","value":"L2"},{"type":null,"system":"urn:matchdesk:local-id","value":"L3"}]}"#,
            r#"{"identifier":[{"system":"urn:matchdesk:local-id","value":""},{"system":"urn:matchdesk:local-id","value":5},{"system":"urn:matchdesk:local-id","value":" L "}]}"#,
            r#"{"identifier":[{"system":"URN:MATCHDESK:LOCAL-ID","value":"L1"},{"system":"urn:matchdesk:local-id","value":"L2"}]}"#,
            r#"{"identifier":[{"type":{"coding":[null,"x",{"code":5},{"code":"SS"}]},"value":"S"},{"system":5,"value":"X"}]}"#,
            r#"{"identifier":[{"type":{"text":"\u00e9 medicaid"},"value":"M"},{"system":"urn:\u00e9:medicaid","value":"M2"}]}"#,
            r#"{"identifier":[{"value":"orphan"},"x",null]}"#,
            r#"{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName","valueString":" "},{"url":"http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName","valueString":"X"}]}"#,
            r#"{"extension":[{"url":"other","valueString":"Y"},{"url":"http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName","valueString":" GARCIA "}]}"#,
            r#"{"extension":{"url":"http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName","valueString":"X"}}"#,
            r#"{"extension":[5,{"url":5}]}"#,
            r#"{"multipleBirthBoolean":"true","multipleBirthInteger":2}"#,
            r#"{"multipleBirthBoolean":false,"multipleBirthInteger":2}"#,
            r#"{"multipleBirthInteger":-1}"#,
            r#"{"multipleBirthInteger":2.0}"#,
            r#"{"multipleBirthInteger":"2"}"#,
            r#"{"multipleBirthInteger":4294967296}"#,
            r#"{"multipleBirthInteger":0}"#,
            r#"{"multipleBirthBoolean":null}"#,
            r#"{"id":" 12 ","resourceType":"Patient","unknown":{"deep":[[[{"a":1e300}]]]}}"#,
            r#"{"id":12}"#,
            r#"{}"#,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Complete Patients as `to_patient` writes them.
        for i in 0..60u32 {
            let d = Demographics {
                given: (i % 5 != 0).then(|| format!("G{i}")),
                middle: (i % 3 == 0).then(|| "M N".to_string()),
                family: (i % 7 != 0).then(|| format!("F{i}")),
                suffix: (i % 4 == 0).then(|| "JR".to_string()),
                birth_date: NaiveDate::from_ymd_opt(1990 + i as i32, 1 + i % 12, 1 + i % 28),
                sex: [None, Some(Sex::Male), Some(Sex::Female), Some(Sex::Unknown)][i as usize % 4],
                phone: (i % 2 == 0).then(|| format!("555{i:07}")),
                email: (i % 3 == 1).then(|| format!("p{i}@example.org")),
                address_line1: (i % 6 != 0).then(|| format!("{i} MAIN ST")),
                address_line2: (i % 5 == 1).then(|| "UNIT 2".to_string()),
                city: Some("SPRINGFIELD".to_string()),
                state: (i % 2 == 1).then(|| "IL".to_string()),
                postal_code: Some(format!("{:05}", 60000 + i)),
                local_id: (i % 3 != 2).then(|| format!("MRN{i}")),
                medicaid_id: (i % 4 == 1).then(|| format!("MA{i}")),
                ssn: [None, Some("123456789"), Some("6789")][i as usize % 3].map(str::to_string),
                mothers_maiden_name: (i % 2 == 0).then(|| "GARCIA".to_string()),
                multiple_birth: [None, Some(true), Some(false)][i as usize % 3],
                multiple_birth_order: (i % 5 == 2).then_some(i % 3 + 1),
                iis_id: None,
            };
            out.push(to_patient(&format!("p{i}"), &d).to_string());
        }
        out
    }

    #[test]
    fn typed_reader_agrees_with_value_reader() {
        for text in deviant_patients() {
            let v: Value = serde_json::from_str(&text).unwrap();
            let expected = reference::from_patient(&v);
            assert_eq!(from_patient(&v), expected, "from_patient: {text}");
            assert_eq!(
                from_patient_json(text.as_bytes()).as_ref(),
                Ok(&expected),
                "from_patient_json: {text}"
            );
            let typed = PatientIn::from_json(text.as_bytes()).unwrap();
            assert_eq!(typed.id(), patient_id(&v), "id: {text}");
            assert_eq!(
                typed.resource_type(),
                v.get("resourceType").and_then(Value::as_str)
            );
        }
    }

    #[test]
    fn deviant_patients_read_as_documented() {
        // Spot checks of what the equivalence test covers, so a change in both readers at once
        // still shows up.
        let read = |s: &str| from_patient_json(s.as_bytes()).unwrap();
        let d = read(
            r#"{"name":[{"family":"\u00c9LISE","given":["Jos\u00e9"],"suffix":[1,"II"," III "]}]}"#,
        );
        assert_eq!(d.family.as_deref(), Some("ÉLISE"));
        assert_eq!(d.given.as_deref(), Some("José"));
        assert_eq!(d.suffix.as_deref(), Some("II III"));
        let d = read(r#"{"name":["x",{"use":"usual","family":"A"}]}"#);
        assert_eq!(
            d.family, None,
            "a non-object name still counts as the first name"
        );
        assert_eq!(
            read(r#"{"name":[{"family":"A","family":"B"}]}"#)
                .family
                .as_deref(),
            Some("B")
        );
        assert_eq!(
            read(r#"{"birthDate":"2001-2-3"}"#).birth_date,
            NaiveDate::from_ymd_opt(2001, 2, 3)
        );
        assert_eq!(read(r#"{"birthDate":"2001-02-30"}"#).birth_date, None);
        let d = read(
            r#"{"identifier":[{"system":"urn:State:MEDICAID:x","value":"M"},{"type":{"text":"Social Security Number"},"value":"S"}]}"#,
        );
        assert_eq!(
            (d.medicaid_id.as_deref(), d.ssn.as_deref()),
            (Some("M"), Some("S"))
        );
        let d = read(r#"{"multipleBirthInteger":4294967296}"#);
        assert_eq!(
            (d.multiple_birth, d.multiple_birth_order),
            (Some(true), None)
        );
        let d = read(r#"{"telecom":[{"system":"phone"},{"system":"phone","value":"1"}]}"#);
        assert_eq!(d.phone.as_deref(), Some("1"));
    }

    #[test]
    fn non_objects() {
        for v in [json!("x"), json!([]), json!(null), json!(5)] {
            assert_eq!(from_patient(&v), Demographics::default());
            assert_eq!(reference::from_patient(&v), Demographics::default());
        }
        assert!(matches!(
            from_patient_json(b"[1]"),
            Err(FhirError::NotObject { found: "array", .. })
        ));
        assert!(matches!(
            from_patient_json(b"{\"name\":"),
            Err(FhirError::NotJson { .. })
        ));
        assert!(matches!(
            from_patient_json(b" "),
            Err(FhirError::Missing { .. })
        ));
    }
}
