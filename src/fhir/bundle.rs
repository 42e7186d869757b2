//! Parsing match Bundles: one ndjson line of a `$bulk-match` output file.
//!
//! Each line is a `searchset` Bundle answering one submitted Patient. This module finds which
//! Patient it answers (the `match-resource` extension), the candidates (Patient entries with
//! score and match grade, re-sorted by score because servers send them out of order) and the
//! row-level messages (OperationOutcome entries). It also owns [`FhirError`], the error of every
//! FHIR parser in this crate. Lenient where real servers deviate (extension on the Bundle root,
//! the StructureDefinition spelling of the extension URL, numeric issue codes, relative
//! `fullUrl`s, a `total` that counts OperationOutcomes); precise about what is missing otherwise.

use std::cmp::Ordering;

use serde_json::{Map, Value};
use thiserror::Error;

use crate::domain::{Candidate, MatchGrade, RowIssue};
use crate::fhir::outcome::parse_issues;
use crate::fhir::patient::from_patient;

/// Why a FHIR document from the server could not be read. Messages name the document and the
/// element; they never quote resource content (which may be patient data).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FhirError {
    #[error(
        "the {what} is not valid JSON (line {line}, column {column}): {message}; the server sent something other than FHIR JSON"
    )]
    NotJson {
        what: &'static str,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("the {what} is a JSON {found}, but a JSON object was expected")]
    NotObject {
        what: &'static str,
        found: &'static str,
    },
    #[error("the {what} has resourceType {found:?}, but {expected} was expected")]
    WrongResourceType {
        what: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("the {what} is missing {missing}")]
    Missing { what: &'static str, missing: String },
    #[error("the {what} has an unusable {element}: {problem}")]
    Invalid {
        what: &'static str,
        element: String,
        problem: String,
    },
}

/// Parse `bytes` as a JSON object, naming the document `what` in errors.
pub(crate) fn parse_object(
    what: &'static str,
    bytes: &[u8],
) -> Result<Map<String, Value>, FhirError> {
    let bytes = trim_json_bytes(bytes);
    if bytes.is_empty() {
        return Err(FhirError::Missing {
            what,
            missing: "any content (it is empty)".to_string(),
        });
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| FhirError::NotJson {
        what,
        line: e.line(),
        column: e.column(),
        message: json_error_kind(&e).to_string(),
    })?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(FhirError::NotObject {
            what,
            found: json_type(&other),
        }),
    }
}

/// Strip a UTF-8 byte-order mark and surrounding ASCII whitespace (including a `\r` left by CRLF).
fn trim_json_bytes(mut b: &[u8]) -> &[u8] {
    if let Some(rest) = b.strip_prefix(b"\xEF\xBB\xBF") {
        b = rest;
    }
    b.trim_ascii()
}

fn json_error_kind(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io => "read error",
        Category::Syntax => "syntax error",
        Category::Data => "unexpected data",
        Category::Eof => "it ends in the middle of a value (truncated?)",
    }
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// One parsed match Bundle.
#[derive(Clone, Debug, PartialEq)]
pub struct MatchBundle {
    /// The id of the submitted Patient this Bundle answers (`Patient/1234` → `1234`).
    pub submitted_id: String,
    /// Candidates sorted by score, best first (missing scores last; ties by grade, then id),
    /// ranked 1, 2, ...
    pub candidates: Vec<Candidate>,
    /// Issues from OperationOutcome entries (row-level errors, warnings, advice).
    pub issues: Vec<RowIssue>,
    /// `Bundle.total` as sent. Informational only: some servers count OperationOutcomes in it.
    pub declared_total: Option<u64>,
}

const WHAT: &str = "match Bundle";

/// Parse one ndjson line holding a match Bundle.
///
/// Candidate ids come from `resource.id`, else the last segment of `fullUrl` (which may be
/// relative); demographics via [`from_patient`], with `iis_id` set to that id. Entries that are
/// neither Patient nor OperationOutcome are ignored.
pub fn parse_match_bundle(line: &[u8]) -> Result<MatchBundle, FhirError> {
    let root = parse_object(WHAT, line)?;
    match root.get("resourceType").and_then(Value::as_str) {
        None | Some("Bundle") => {}
        Some(other) => {
            return Err(FhirError::WrongResourceType {
                what: WHAT,
                expected: "Bundle",
                found: other.to_string(),
            });
        }
    }
    let submitted_id = submitted_id(&root)?;
    let declared_total = root.get("total").and_then(as_u64_lenient);

    let mut candidates: Vec<Candidate> = Vec::new();
    let mut issues = Vec::new();
    let entries = match root.get("entry") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(other) => {
            return Err(FhirError::Invalid {
                what: WHAT,
                element: "entry".to_string(),
                problem: format!("it is a JSON {}, not an array", json_type(other)),
            });
        }
    };
    for (idx, entry) in entries.iter().enumerate() {
        let Some(resource) = entry.get("resource") else {
            continue;
        };
        let search = entry.get("search");
        let rtype = resource.get("resourceType").and_then(Value::as_str);
        let is_outcome = rtype == Some("OperationOutcome")
            || (rtype.is_none()
                && search.and_then(|s| s.get("mode")).and_then(Value::as_str) == Some("outcome"));
        if is_outcome {
            issues.extend(parse_issues(resource));
            continue;
        }
        if rtype != Some("Patient") {
            continue;
        }
        let full_url = entry
            .get("fullUrl")
            .and_then(Value::as_str)
            .map(str::to_string);
        let id = resource
            .get("id")
            .and_then(scalar_id)
            .or_else(|| full_url.as_deref().and_then(last_id_segment))
            .ok_or_else(|| FhirError::Missing {
                what: WHAT,
                missing: format!(
                    "the id of the Patient in entry {idx} (no resource.id and no usable fullUrl)"
                ),
            })?;
        let score = search.and_then(|s| s.get("score")).and_then(as_f64_lenient);
        let grade = search.and_then(match_grade);
        let mut demographics = from_patient(resource);
        demographics.iis_id = Some(id.clone());
        candidates.push(Candidate {
            rank: 0,
            iis_id: id,
            score,
            grade,
            full_url,
            demographics,
        });
    }
    // Best score first, missing scores last. Ties are broken by grade, then by id, so the
    // ranking does not depend on the order in which a server listed tied entries (servers send
    // them out of order).
    candidates.sort_by(|a, b| {
        let by_score = match (a.score, b.score) {
            (Some(x), Some(y)) => y.partial_cmp(&x).unwrap_or(Ordering::Equal),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        let grade_rank = |g: Option<MatchGrade>| g.map(|g| g as u8).unwrap_or(u8::MAX);
        by_score
            .then_with(|| grade_rank(a.grade).cmp(&grade_rank(b.grade)))
            .then_with(|| a.iis_id.cmp(&b.iis_id))
    });
    for (i, c) in candidates.iter_mut().enumerate() {
        c.rank = u32::try_from(i + 1).unwrap_or(u32::MAX);
    }
    Ok(MatchBundle {
        submitted_id,
        candidates,
        issues,
        declared_total,
    })
}

fn is_match_resource_url(url: &str) -> bool {
    // Spec: .../OperationDefinition/match-resource; seen in the wild: .../StructureDefinition/...
    url.trim_end_matches('/').rsplit('/').next() == Some("match-resource")
}

fn submitted_id(root: &Map<String, Value>) -> Result<String, FhirError> {
    let meta_ext = root
        .get("meta")
        .and_then(|m| m.get("extension"))
        .and_then(Value::as_array);
    let root_ext = root.get("extension").and_then(Value::as_array);
    let ext = meta_ext
        .into_iter()
        .chain(root_ext)
        .flatten()
        .find(|e| {
            e.get("url")
                .and_then(Value::as_str)
                .is_some_and(is_match_resource_url)
        })
        .ok_or_else(|| FhirError::Missing {
            what: WHAT,
            missing:
                "the meta.extension \"match-resource\" that says which submitted Patient it answers"
                    .to_string(),
        })?;
    let reference = ext
        .get("valueReference")
        .and_then(|r| r.get("reference"))
        .and_then(Value::as_str)
        .or_else(|| ext.get("valueString").and_then(Value::as_str))
        .or_else(|| ext.get("valueId").and_then(Value::as_str))
        .ok_or_else(|| FhirError::Missing {
            what: WHAT,
            missing: "valueReference.reference in the match-resource extension".to_string(),
        })?;
    last_id_segment(reference).ok_or_else(|| FhirError::Invalid {
        what: WHAT,
        element: "match-resource reference".to_string(),
        problem: "it does not end in a Patient id".to_string(),
    })
}

/// The resource id at the end of a reference or URL: `Patient/1234` → `1234`,
/// `https://x/fhir/Patient/1234/_history/2` → `1234`, `1234` → `1234`.
fn last_id_segment(reference: &str) -> Option<String> {
    let r = reference.split(['?', '#']).next().unwrap_or_default();
    let mut segs: Vec<&str> = r.split('/').filter(|s| !s.trim().is_empty()).collect();
    if let Some(pos) = segs.iter().position(|s| *s == "_history") {
        segs.truncate(pos);
    }
    segs.last().map(|s| s.trim().to_string())
}

fn scalar_id(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn match_grade(search: &Value) -> Option<MatchGrade> {
    search
        .get("extension")
        .and_then(Value::as_array)?
        .iter()
        .filter(|e| {
            e.get("url")
                .and_then(Value::as_str)
                .is_some_and(|u| u.trim_end_matches('/').ends_with("match-grade"))
        })
        .find_map(|e| {
            e.get("valueCode")
                .or_else(|| e.get("valueString"))
                .and_then(Value::as_str)
                .and_then(MatchGrade::parse)
        })
}

pub(crate) fn as_f64_lenient(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|f| f.is_finite())
}

pub(crate) fn as_u64_lenient(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn entry(id: &str, score: f64, grade: &str) -> Value {
        json!({
            "fullUrl": format!("http://server/fhir/Patient/{id}"),
            "resource": {"resourceType": "Patient", "id": id,
                         "name": [{"family": "DOE", "given": ["JANE"]}], "birthDate": "2001-02-03"},
            "search": {"mode": "match", "score": score,
                       "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/match-grade",
                                      "valueCode": grade}]}
        })
    }

    #[test]
    fn parses_spec_example_with_operation_definition_url() {
        let b = line(json!({
            "resourceType": "Bundle", "type": "searchset",
            "meta": {"extension": [{"url": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/match-resource",
                                    "valueReference": {"reference": "Patient/1234"}}]},
            "entry": [entry("5678", 0.9, "certain")]
        }));
        let mb = parse_match_bundle(&b).unwrap();
        assert_eq!(mb.submitted_id, "1234");
        assert_eq!(mb.candidates.len(), 1);
        let c = &mb.candidates[0];
        assert_eq!((c.rank, c.iis_id.as_str()), (1, "5678"));
        assert_eq!(c.score, Some(0.9));
        assert_eq!(c.grade, Some(MatchGrade::Certain));
        assert_eq!(
            c.full_url.as_deref(),
            Some("http://server/fhir/Patient/5678")
        );
        assert_eq!(c.demographics.iis_id.as_deref(), Some("5678"));
        assert!(mb.issues.is_empty());
    }

    #[test]
    fn accepts_structure_definition_url_on_bundle_root() {
        let b = line(json!({
            "resourceType": "Bundle",
            "extension": [{"url": "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/match-resource",
                           "valueReference": {"reference": "http://client/Patient/row-7/_history/1"}}],
            "entry": []
        }));
        let mb = parse_match_bundle(&b).unwrap();
        assert_eq!(mb.submitted_id, "row-7");
        assert!(mb.candidates.is_empty());
    }

    #[test]
    fn sorts_out_of_order_entries_and_handles_relative_full_url() {
        let mut no_id = entry("ignored", 0.95, "probable");
        no_id["resource"].as_object_mut().unwrap().remove("id");
        no_id["fullUrl"] = json!("Patient/from-url");
        let b = line(json!({
            "resourceType": "Bundle",
            "meta": {"extension": [{"url": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/match-resource",
                                    "valueReference": {"reference": "Patient/9"}}]},
            "entry": [entry("low", 0.2, "possible"), no_id, entry("mid", 0.5, "possible"),
                      {"resource": {"resourceType": "Patient", "id": "noscore"}}]
        }));
        let mb = parse_match_bundle(&b).unwrap();
        let ids: Vec<_> = mb.candidates.iter().map(|c| c.iis_id.as_str()).collect();
        assert_eq!(ids, ["from-url", "mid", "low", "noscore"]);
        let ranks: Vec<_> = mb.candidates.iter().map(|c| c.rank).collect();
        assert_eq!(ranks, [1, 2, 3, 4]);
        assert_eq!(mb.candidates[0].grade, Some(MatchGrade::Probable));
        assert_eq!(mb.candidates[3].score, None);
    }

    #[test]
    fn outcome_entries_become_issues_and_total_is_informational() {
        let b = line(json!({
            "resourceType": "Bundle", "total": 2,
            "meta": {"extension": [{"url": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/match-resource",
                                    "valueReference": {"reference": "Patient/3"}}]},
            "entry": [
                {"resource": {"resourceType": "OperationOutcome",
                              "issue": [{"severity": "error", "code": 400,
                                         "details": {"text": "birthDate is required"}}]},
                 "search": {"mode": "outcome"}},
                entry("only", 0.7, "probable")
            ]
        }));
        let mb = parse_match_bundle(&b).unwrap();
        assert_eq!(mb.declared_total, Some(2));
        assert_eq!(mb.candidates.len(), 1);
        assert_eq!(mb.issues.len(), 1);
        assert_eq!(mb.issues[0].code, "400");
        assert_eq!(mb.issues[0].text, "birthDate is required");
    }

    #[test]
    fn errors_say_what_is_missing() {
        let no_ref = line(json!({"resourceType": "Bundle", "entry": []}));
        let e = parse_match_bundle(&no_ref).unwrap_err();
        assert!(matches!(e, FhirError::Missing { .. }));
        assert!(e.to_string().contains("match-resource"), "{e}");

        let no_id = line(json!({
            "resourceType": "Bundle",
            "meta": {"extension": [{"url": "x/match-resource", "valueReference": {"reference": "Patient/1"}}]},
            "entry": [{"resource": {"resourceType": "Patient"}}]
        }));
        let e = parse_match_bundle(&no_id).unwrap_err();
        assert!(e.to_string().contains("entry 0"), "{e}");

        let e = parse_match_bundle(b"{\"resourceType\": \"Bundle\", ").unwrap_err();
        assert!(matches!(e, FhirError::NotJson { line: 1, .. }), "{e:?}");
        let e = parse_match_bundle(b"[1,2]").unwrap_err();
        assert!(matches!(e, FhirError::NotObject { found: "array", .. }));
        let e = parse_match_bundle(b"{\"resourceType\":\"OperationOutcome\"}").unwrap_err();
        assert!(matches!(e, FhirError::WrongResourceType { .. }));
        let e = parse_match_bundle(b"  \r").unwrap_err();
        assert!(matches!(e, FhirError::Missing { .. }));
    }

    #[test]
    fn tolerates_bom_and_crlf() {
        let mut b = b"\xEF\xBB\xBF".to_vec();
        b.extend(line(json!({
            "meta": {"extension": [{"url": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/match-resource",
                                    "valueReference": {"reference": "Patient/42"}}]}
        })));
        b.extend(b"\r");
        assert_eq!(parse_match_bundle(&b).unwrap().submitted_id, "42");
    }

    #[test]
    fn last_segment_rules() {
        assert_eq!(last_id_segment("Patient/1234").as_deref(), Some("1234"));
        assert_eq!(last_id_segment("1234").as_deref(), Some("1234"));
        assert_eq!(
            last_id_segment("https://x/fhir/Patient/5/_history/3").as_deref(),
            Some("5")
        );
        assert_eq!(last_id_segment("Patient/7/").as_deref(), Some("7"));
        assert_eq!(last_id_segment("/"), None);
    }
}
