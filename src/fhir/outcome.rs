//! Reading FHIR `OperationOutcome`s.
//!
//! Servers explain failures (a rejected kick-off, a failed poll, a row that could not be matched)
//! with an `OperationOutcome`. This module turns one into [`RowIssue`]s, decides whether the
//! issues mean "try again later" (the `transient` family of the FHIR IssueType code system) and
//! renders a short summary for user-facing messages. It is lenient: deviant servers send numeric
//! codes, leave out `details`, or omit `severity`, and none of that is an error here.

use serde_json::Value;

use crate::domain::RowIssue;

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

/// The issues of an `OperationOutcome` (or of anything carrying an `issue` array).
///
/// `issue.code` may be a number on deviant servers: it is stringified. The text is taken from
/// `details.text`, else `diagnostics`, else the first `details.coding[].display`, else the code.
/// A missing severity is reported as `error` (the server bothered to send it, so assume it matters).
/// Anything that is not an object with an `issue` array yields no issues.
pub fn parse_issues(v: &Value) -> Vec<RowIssue> {
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
mod tests {
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
}
