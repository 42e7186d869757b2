//! Reading FHIR `OperationOutcome`s.
//!
//! Servers explain failures (a rejected kick-off, a failed poll, a row that could not be matched)
//! with an `OperationOutcome`. This module turns one into [`RowIssue`]s, decides whether the
//! issues mean "try again later" (the `transient` family of the FHIR IssueType code system) and
//! renders a short summary for user-facing messages. It is lenient: deviant servers send numeric
//! codes, leave out `details`, or omit `severity`, and none of that is an error here.

use serde::Deserialize;
use serde_json::Value;

use crate::domain::RowIssue;
use crate::fhir::bundle::lenient::{Arr, Json, Obj};

/// Issue codes of the FHIR IssueType `transient` family: the request may succeed if repeated.
pub const TRANSIENT_CODES: [&str; 7] = [
    "transient",
    "lock-error",
    "no-store",
    "exception",
    "timeout",
    "incomplete",
    "throttled",
];

/// Longest summary [`summary`] produces, in characters (server texts can be very long).
const SUMMARY_MAX_CHARS: usize = 600;

/// The `issue` list of an `OperationOutcome`, read leniently (see [`row_issues`]).
pub(crate) type IssuesIn<'a> = Arr<Obj<IssueIn<'a>>>;

/// The parts of an `OperationOutcome` this module reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OutcomeIn<'a> {
    #[serde(borrow)]
    issue: IssuesIn<'a>,
}

/// One `OperationOutcome.issue`, borrowed from the JSON it was read from.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct IssueIn<'a> {
    #[serde(borrow)]
    severity: Json<'a>,
    #[serde(borrow)]
    code: Json<'a>,
    #[serde(borrow)]
    details: Obj<DetailsIn<'a>>,
    #[serde(borrow)]
    diagnostics: Json<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DetailsIn<'a> {
    #[serde(borrow)]
    text: Json<'a>,
    #[serde(borrow)]
    coding: Arr<Obj<DisplayIn<'a>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DisplayIn<'a> {
    #[serde(borrow)]
    display: Json<'a>,
}

/// The issues of an `OperationOutcome` (or of anything carrying an `issue` array).
///
/// `issue.code` may be a number on deviant servers: it is stringified. The text is taken from
/// `details.text`, else `diagnostics`, else the first `details.coding[].display`, else the code.
/// A missing severity is reported as `error` (the server bothered to send it, so assume it matters).
/// Anything that is not an object with an `issue` array yields no issues.
pub fn parse_issues(v: &Value) -> Vec<RowIssue> {
    match Obj::<OutcomeIn<'_>>::deserialize(v) {
        Ok(Obj(Some(outcome))) => row_issues(&outcome.issue),
        // Reading from a `Value` cannot fail; a non-object has no issues.
        _ => Vec::new(),
    }
}

/// [`parse_issues`] for an `issue` element read straight from JSON text: the same rules,
/// without building a `serde_json::Value`. Issues that are not objects are skipped.
pub(crate) fn row_issues(issues: &IssuesIn<'_>) -> Vec<RowIssue> {
    issues
        .items()
        .unwrap_or_default()
        .iter()
        .filter_map(Obj::get)
        .map(row_issue)
        .collect()
}

fn row_issue(issue: &IssueIn<'_>) -> RowIssue {
    let severity = issue
        .severity
        .scalar_text()
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "error".to_string());
    let code = issue
        .code
        .scalar_text()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    let details = issue.details.get();
    let text = details
        .and_then(|d| d.text.scalar_text())
        .or_else(|| issue.diagnostics.scalar_text())
        .or_else(|| {
            details.and_then(|d| d.coding.items()).and_then(|codings| {
                codings
                    .iter()
                    .filter_map(Obj::get)
                    .find_map(|c| c.display.scalar_text())
            })
        })
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| code.clone());
    RowIssue {
        severity,
        code,
        text,
    }
}

/// Whether the issues say the failure is temporary (any issue has a code of the `transient`
/// family), so the client should repeat the request later rather than give up.
pub fn is_transient(issues: &[RowIssue]) -> bool {
    issues.iter().any(|i| {
        TRANSIENT_CODES
            .iter()
            .any(|c| i.code.eq_ignore_ascii_case(c))
    })
}

/// A one-line summary for user messages: `"error (processing): text; warning (...): text"`,
/// errors first, cut at a few hundred characters. `"no details given"` when there are none.
pub fn summary(issues: &[RowIssue]) -> String {
    if issues.is_empty() {
        return "no details given".to_string();
    }
    let mut ordered: Vec<&RowIssue> = issues.iter().collect();
    ordered.sort_by_key(|i| severity_rank(&i.severity));
    let mut out = String::new();
    for issue in ordered {
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(&issue.severity);
        if issue.text != issue.code {
            out.push_str(" (");
            out.push_str(&issue.code);
            out.push(')');
        }
        out.push_str(": ");
        out.push_str(&issue.text);
    }
    truncate_chars(out, SUMMARY_MAX_CHARS)
}

fn severity_rank(s: &str) -> u8 {
    match s {
        "fatal" => 0,
        "error" => 1,
        "warning" => 2,
        "information" => 3,
        _ => 4,
    }
}

/// Cut `s` to at most `max` characters, marking the cut with an ellipsis.
pub(crate) fn truncate_chars(mut s: String, max: usize) -> String {
    if let Some((idx, _)) = s.char_indices().nth(max) {
        s.truncate(idx);
        s.push('…');
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_details_text_diagnostics_and_numeric_codes() {
        let oo = json!({
            "resourceType": "OperationOutcome",
            "issue": [
                {"severity": "error", "code": "processing", "details": {"text": "Insufficient data"}},
                {"severity": "warning", "code": 4001, "diagnostics": "odd code"},
                {"code": "not-found"},
                {"severity": "information", "code": "informational",
                 "details": {"coding": [{"code": "X", "display": "from coding"}]}},
                "not an object"
            ]
        });
        let issues = parse_issues(&oo);
        assert_eq!(issues.len(), 4);
        assert_eq!(issues[0].text, "Insufficient data");
        assert_eq!(issues[1].code, "4001");
        assert_eq!(issues[1].text, "odd code");
        assert_eq!(issues[2].severity, "error");
        assert_eq!(issues[2].text, "not-found");
        assert_eq!(issues[3].text, "from coding");
        assert!(issues[0].is_error());
        assert!(!issues[1].is_error());
    }

    #[test]
    fn non_outcomes_give_no_issues() {
        assert!(parse_issues(&json!({"resourceType": "Patient"})).is_empty());
        assert!(parse_issues(&json!("text")).is_empty());
        assert!(parse_issues(&json!({"issue": {"code": "x"}})).is_empty());
    }

    #[test]
    fn transient_family_is_recognised() {
        let mk = |code: &str| RowIssue {
            severity: "error".into(),
            code: code.into(),
            text: "t".into(),
        };
        assert!(is_transient(&[mk("processing"), mk("Throttled")]));
        assert!(is_transient(&[mk("lock-error")]));
        assert!(!is_transient(&[mk("processing"), mk("not-found")]));
        assert!(!is_transient(&[]));
    }

    #[test]
    fn summary_orders_by_severity_and_truncates() {
        let issues = vec![
            RowIssue {
                severity: "warning".into(),
                code: "informational".into(),
                text: "minor".into(),
            },
            RowIssue {
                severity: "error".into(),
                code: "too-costly".into(),
                text: "too many patients".into(),
            },
        ];
        assert_eq!(
            summary(&issues),
            "error (too-costly): too many patients; warning (informational): minor"
        );
        assert_eq!(summary(&[]), "no details given");
        let long = vec![RowIssue {
            severity: "error".into(),
            code: "x".into(),
            text: "é".repeat(2000),
        }];
        let s = summary(&long);
        assert_eq!(s.chars().count(), SUMMARY_MAX_CHARS + 1);
        assert!(s.ends_with('…'));
    }

    /// The `serde_json::Value`-based reader this module used before the typed one, kept
    /// verbatim as the oracle the typed reader must agree with.
    pub(crate) mod reference {
        use crate::domain::RowIssue;
        use serde_json::Value;

        /// The issues of an `OperationOutcome` (or of anything carrying an `issue` array).
        ///
        /// `issue.code` may be a number on deviant servers: it is stringified. The text is taken from
        /// `details.text`, else `diagnostics`, else the first `details.coding[].display`, else the code.
        /// A missing severity is reported as `error` (the server bothered to send it, so assume it matters).
        /// Anything that is not an object with an `issue` array yields no issues.
        pub(crate) fn parse_issues(v: &Value) -> Vec<RowIssue> {
            let Some(issues) = v.get("issue").and_then(Value::as_array) else {
                return Vec::new();
            };
            issues.iter().filter_map(parse_issue).collect()
        }

        fn parse_issue(issue: &Value) -> Option<RowIssue> {
            let obj = issue.as_object()?;
            let severity = obj
                .get("severity")
                .and_then(scalar_text)
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "error".to_string());
            let code = obj
                .get("code")
                .and_then(scalar_text)
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "unknown".to_string());
            let details = obj.get("details");
            let text = details
                .and_then(|d| d.get("text"))
                .and_then(scalar_text)
                .or_else(|| obj.get("diagnostics").and_then(scalar_text))
                .or_else(|| {
                    details
                        .and_then(|d| d.get("coding"))
                        .and_then(Value::as_array)
                        .and_then(|codings| {
                            codings
                                .iter()
                                .find_map(|c| c.get("display").and_then(scalar_text))
                        })
                })
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| code.clone());
            Some(RowIssue {
                severity,
                code,
                text,
            })
        }

        /// A JSON string, number or boolean as text; `None` for null, arrays and objects.
        fn scalar_text(v: &Value) -> Option<String> {
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            }
        }
    }

    #[test]
    fn typed_reader_agrees_with_value_reader() {
        let cases = [
            json!({"issue": [
                {"severity": " WARNING ", "code": 4.5, "details": {"text": "", "coding": [null, {"display": 7}]}},
                {"code": true}, "bad", null, 5,
                {"severity": null, "code": "", "diagnostics": "  d  "},
                {"severity": 3, "code": -2, "details": "x", "diagnostics": ["no"]},
                {"code": "c", "details": {"coding": {"display": "not an array"}}},
                {"code": "c", "details": {"coding": [{"display": "  "}, {"display": "second"}]}},
                {"code": "c", "details": {"text": null}, "diagnostics": "diag"},
                {"code": "c", "details": {"text": "  t  "}, "diagnostics": "diag"},
                {"severity": "Fatal", "code": "  exception  "}
            ]}),
            json!({"issue": []}),
            json!({"issue": null}),
            json!({"issue": "x"}),
            json!({"resourceType": "OperationOutcome"}),
            json!([{"issue": [{"code": "x"}]}]),
            json!(null),
        ];
        for v in &cases {
            assert_eq!(parse_issues(v), reference::parse_issues(v), "{v}");
        }
        assert_eq!(parse_issues(&cases[0]).len(), 9);
    }
}
