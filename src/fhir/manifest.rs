//! Parsing the complete-status manifest of a `$bulk-match` job.
//!
//! When a job is done, its status URL answers `200 OK` with a JSON manifest listing the output
//! files. This module reads it leniently: optional or malformed informational fields
//! (`transactionTime`, `request`, `count`, `extension`) never fail the parse, `transactionTime` is
//! accepted as a FHIR instant or an HTTP-date, and a missing `output` means "no files". It fails
//! clearly on a body that is not a JSON object, on an OperationOutcome sent in place of a
//! manifest, and on an output entry without a `url` (the client could not fetch it).

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;

pub use crate::fhir::bundle::FhirError;
use crate::fhir::bundle::{as_u64_lenient, json_type, parse_object};
use crate::fhir::outcome::{parse_issues, summary};

/// One file listed in a manifest's `output` (or `error`) array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputFile {
    /// Where to download the file (absolute per spec).
    pub url: String,
    /// The resource type of the file's lines; `Bundle` for match output.
    pub type_: String,
    /// The number of resources in the file, when the server says.
    pub count: Option<u64>,
}

/// A complete-status manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub transaction_time: Option<DateTime<Utc>>,
    pub request: Option<String>,
    /// Whether downloading the files needs the same bearer token as the FHIR API.
    /// `false` when absent (the token is then never sent to file URLs).
    pub requires_access_token: bool,
    pub output: Vec<OutputFile>,
    pub error: Vec<OutputFile>,
    pub extension: Option<Value>,
}

const WHAT: &str = "job manifest";

/// Parse a manifest body.
pub fn parse_manifest(body: &[u8]) -> Result<Manifest, FhirError> {
    let root = parse_object(WHAT, body)?;
    if let Some(rt) = root.get("resourceType").and_then(Value::as_str) {
        let issues = if rt == "OperationOutcome" {
            format!(
                " ({})",
                summary(&parse_issues(&Value::Object(root.clone())))
            )
        } else {
            String::new()
        };
        return Err(FhirError::WrongResourceType {
            what: WHAT,
            expected: "a manifest (a JSON object without resourceType)",
            found: format!("{rt}{issues}"),
        });
    }
    let transaction_time = root
        .get("transactionTime")
        .and_then(Value::as_str)
        .and_then(parse_instant);
    let request = root
        .get("request")
        .and_then(Value::as_str)
        .map(str::to_string);
    let requires_access_token = match root.get("requiresAccessToken") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.trim().eq_ignore_ascii_case("true"),
        _ => false,
    };
    let output = files(root.get("output"), "output")?;
    let error = files(root.get("error"), "error")?;
    let extension = root.get("extension").cloned();
    Ok(Manifest {
        transaction_time,
        request,
        requires_access_token,
        output,
        error,
        extension,
    })
}

fn files(v: Option<&Value>, name: &str) -> Result<Vec<OutputFile>, FhirError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(FhirError::Invalid {
                what: WHAT,
                element: name.to_string(),
                problem: format!("it is a JSON {}, not an array", json_type(other)),
            });
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let url = item
                .get("url")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .ok_or_else(|| FhirError::Missing {
                    what: WHAT,
                    missing: format!("the url of {name}[{i}]"),
                })?;
            Ok(OutputFile {
                url: url.to_string(),
                type_: item
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("Bundle")
                    .to_string(),
                count: item.get("count").and_then(as_u64_lenient),
            })
        })
        .collect()
}

/// A FHIR instant (`2021-01-01T00:00:00Z`, with offset), a zone-less date-time (taken as UTC),
/// or an HTTP-date (`Fri, 31 Dec 1999 23:59:59 GMT`).
pub fn parse_instant(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.with_timezone(&Utc));
    }
    if let Ok(ndt) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
        return Some(ndt.and_utc());
    }
    httpdate::parse_http_date(s).ok().map(DateTime::<Utc>::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn parses_spec_example() {
        let body = br#"{
            "transactionTime": "2021-01-01T00:00:00Z",
            "request": "https://example.com/fhir/Patient/$bulk-match",
            "requiresAccessToken": true,
            "output": [{"type": "Bundle", "url": "https://example.com/output/match_file_1.ndjson"},
                       {"type": "Bundle", "url": "https://example.com/output/match_file_2.ndjson", "count": 10}],
            "error": [],
            "extension": {"https://example.com/extra-property": true}
        }"#;
        let m = parse_manifest(body).unwrap();
        assert_eq!(
            m.transaction_time,
            Some(Utc.with_ymd_and_hms(2021, 1, 1, 0, 0, 0).unwrap())
        );
        assert!(m.requires_access_token);
        assert_eq!(m.output.len(), 2);
        assert_eq!(m.output[1].count, Some(10));
        assert_eq!(m.output[0].count, None);
        assert_eq!(m.output[0].type_, "Bundle");
        assert!(m.error.is_empty());
        assert!(m.extension.is_some());
    }

    #[test]
    fn accepts_http_date_and_missing_optional_bits() {
        let body = br#"{"transactionTime": "Fri, 31 Dec 1999 23:59:59 GMT",
                        "output": [{"url": "http://127.0.0.1/f.ndjson", "count": "3"}]}"#;
        let m = parse_manifest(body).unwrap();
        assert_eq!(
            m.transaction_time,
            Some(Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).unwrap())
        );
        assert!(!m.requires_access_token);
        assert_eq!(m.output[0].count, Some(3));
        assert_eq!(m.output[0].type_, "Bundle");
        assert!(m.request.is_none());
        assert!(m.error.is_empty());

        let m =
            parse_manifest(br#"{"transactionTime": "yesterday", "requiresAccessToken": "true"}"#)
                .unwrap();
        assert_eq!(m.transaction_time, None);
        assert!(m.requires_access_token);
        assert!(m.output.is_empty());
    }

    #[test]
    fn offsets_and_zoneless_instants() {
        assert_eq!(
            parse_instant("2021-01-01T02:00:00+02:00"),
            Some(Utc.with_ymd_and_hms(2021, 1, 1, 0, 0, 0).unwrap())
        );
        assert_eq!(
            parse_instant("2021-01-01T00:00:00.123"),
            Utc.with_ymd_and_hms(2021, 1, 1, 0, 0, 0)
                .unwrap()
                .checked_add_signed(chrono::Duration::milliseconds(123))
        );
    }

    #[test]
    fn clear_errors() {
        let e = parse_manifest(b"<html>Bad gateway</html>").unwrap_err();
        assert!(matches!(e, FhirError::NotJson { .. }));
        assert!(e.to_string().contains("not valid JSON"), "{e}");

        let e = parse_manifest(br#"{"output": [{"type": "Bundle"}]}"#).unwrap_err();
        assert!(e.to_string().contains("url of output[0]"), "{e}");

        let e = parse_manifest(br#"{"output": {"url": "x"}}"#).unwrap_err();
        assert!(matches!(e, FhirError::Invalid { .. }));

        let e = parse_manifest(
            br#"{"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing", "diagnostics": "job failed"}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("job failed"), "{e}");
    }
}
