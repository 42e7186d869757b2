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

use chrono::NaiveDate;
use serde_json::{Map, Value, json};

use crate::domain::{Demographics, Sex};

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
    non_empty(v.get("id"))
}

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
pub fn from_patient(v: &Value) -> Demographics {
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

#[cfg(test)]
mod tests {
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
}
