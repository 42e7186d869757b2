//! Field comparators, match scores, grades, explanations and triage rules.
//!
//! This module is shared by the simulated IIS, which ranks and grades its registry with
//! [`score`] and [`grade`] and finds candidates through [`blocking_keys`], and by the client,
//! which re-checks a server's `certain` candidate with [`compare`] before auto-matching it
//! ([`triage`]) and shows the field-by-field [`Comparison`] on its review screen.
//!
//! The score is a Fellegi–Sunter-like weighted sum: each field that both sides carry adds its
//! agreement weight, a part of it (near), or its (negative) disagreement weight; the sum is
//! divided by the achievable maximum for the fields present on both sides, so sparse records are
//! not punished. Weights, shares, thresholds and triage defaults are documented in
//! `docs/MATCHING.md`.
//!
//! Inputs need not be normalized: both sides go through the same normalization (see
//! [`normalize_for_compare`]), which borrows instead of allocating when a value is already in
//! normal form, so [`score`] on importer-normalized data does not touch the heap.

mod blocking;
mod compare;
mod nicknames;
mod normalize;
mod text;

use serde::{Deserialize, Serialize};

use crate::domain::{Candidate, Demographics, Field, MatchGrade, Outcome, ReviewReason, RowIssue};

pub use blocking::{blocking_keys, blocking_keys_into};
pub use compare::{FieldWeight, MIN_EVIDENCE, VOLATILE_DIFFER_SHARE, WEIGHTS};
pub use nicknames::{NICKNAMES, are_nicknames};
pub use normalize::{normalize_for_compare, normalize_name};

use compare::{Raw, View, evaluate, total};

/// How one field of a submitted row compares with the same field of a candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Same value (after normalization and standard abbreviations).
    Agree,
    /// Not the same, but plausibly the same person (nickname, typo, swapped day/month, ...).
    Near,
    /// Different values.
    Differ,
    /// One or both sides do not have the field.
    Missing,
}

impl Verdict {
    /// A one-character symbol for tables: `=`, `≈`, `≠`, `–`.
    pub fn symbol(self) -> &'static str {
        match self {
            Verdict::Agree => "=",
            Verdict::Near => "≈",
            Verdict::Differ => "≠",
            Verdict::Missing => "–",
        }
    }

    /// A word a clinic user understands.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Agree => "agrees",
            Verdict::Near => "close",
            Verdict::Differ => "differs",
            Verdict::Missing => "missing",
        }
    }
}

/// One line of the explanation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldResult {
    pub field: Field,
    pub verdict: Verdict,
    /// The submitted value as given (not normalized), for display.
    pub submitted: Option<String>,
    /// The candidate's value as given, for display.
    pub candidate: Option<String>,
    /// Plain words: "nickname: BILL = WILLIAM", "day and month swapped", "typo (1 edit)", ...
    pub note: String,
    /// Signed contribution to the score's numerator.
    pub weight: f64,
}

/// A field-by-field comparison and its score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// One entry per compared field present on at least one side, in display order.
    pub fields: Vec<FieldResult>,
    /// 0..=1; identical to [`score`] for the same inputs.
    pub score: f64,
}

impl Comparison {
    /// The result for one field, if it was present on either side.
    pub fn field(&self, field: Field) -> Option<&FieldResult> {
        self.fields.iter().find(|f| f.field == field)
    }
}

/// Compare a submitted row with a candidate, explaining every field. Allocates; for ranking use
/// [`score`].
pub fn compare(submitted: &Demographics, candidate: &Demographics) -> Comparison {
    let (va, vb) = (View::new(submitted), View::new(candidate));
    let raws = evaluate(&va, &vb);
    let fields = raws
        .iter()
        .flatten()
        .map(|r| FieldResult {
            field: r.field,
            verdict: r.cmp.verdict,
            submitted: submitted.get(r.field),
            candidate: candidate.get(r.field),
            note: r.cmp.note.render(va.text(r.field), vb.text(r.field)),
            weight: r.weight,
        })
        .collect();
    Comparison {
        fields,
        score: total(&raws),
    }
}

/// The score of [`compare`] without the explanation: no allocation when both sides are already
/// normalized.
pub fn score(submitted: &Demographics, candidate: &Demographics) -> f64 {
    total(&evaluate(&View::new(submitted), &View::new(candidate)))
}

/// One side of a comparison normalized once, for scoring it against many others (a registry
/// query against its blocked candidates). Borrows from the [`Demographics`] it was made from.
#[derive(Debug)]
pub struct Prepared<'a>(View<'a>);

/// Normalize `d` once for [`score_prepared`].
pub fn prepare(d: &Demographics) -> Prepared<'_> {
    Prepared(View::new(d))
}

/// [`score`] on prepared sides: the same value, without normalizing the same row again.
pub fn score_prepared(submitted: &Prepared<'_>, candidate: &Prepared<'_>) -> f64 {
    total(&evaluate(&submitted.0, &candidate.0))
}

/// Score thresholds for the match grades. A jurisdiction decides what a high-confidence match is.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GradeThresholds {
    pub certain: f64,
    pub probable: f64,
    pub possible: f64,
}

impl Default for GradeThresholds {
    /// 0.90 / 0.75 / 0.55.
    fn default() -> Self {
        GradeThresholds {
            certain: 0.90,
            probable: 0.75,
            possible: 0.55,
        }
    }
}

/// The grade of a score; `None` below `possible` (and for NaN).
pub fn grade(score: f64, t: &GradeThresholds) -> Option<MatchGrade> {
    if score >= t.certain {
        Some(MatchGrade::Certain)
    } else if score >= t.probable {
        Some(MatchGrade::Probable)
    } else if score >= t.possible {
        Some(MatchGrade::Possible)
    } else {
        None
    }
}

/// When the client may trust a server's single `certain` candidate without a person looking.
/// Every field has a default, so a per-server JSON file only names what it changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TriageRules {
    /// If set, the server's own score must be at least this (a `certain` with a lower or no
    /// score is reviewed as probable). Default: none.
    pub auto_min_server_score: Option<f64>,
    /// The local [`compare`] score the candidate needs. Default 0.80.
    pub local_min_score: f64,
    /// Fields that must be Agree or Near. A field the submitted row lacks is skipped; a field
    /// the candidate lacks fails. Default: birth date.
    pub must_agree: Vec<Field>,
    /// Fields that must not Differ (missing is fine). Default: sex, SSN, birth order, suffix.
    pub must_not_differ: Vec<Field>,
}

impl Default for TriageRules {
    fn default() -> Self {
        TriageRules {
            auto_min_server_score: None,
            local_min_score: 0.80,
            must_agree: vec![Field::BirthDate],
            must_not_differ: vec![
                Field::Sex,
                Field::Ssn,
                Field::MultipleBirthOrder,
                Field::Suffix,
            ],
        }
    }
}

/// The local verification of one candidate against the rules, with reasons when it fails.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalCheck {
    pub comparison: Comparison,
    pub passed: bool,
    /// Why it did not pass, in plain words (no patient values). Empty when it passed.
    pub failures: Vec<String>,
}

/// Check a candidate field by field as [`triage`] does, explaining any failure.
pub fn local_check(
    submitted: &Demographics,
    candidate: &Demographics,
    rules: &TriageRules,
) -> LocalCheck {
    let comparison = compare(submitted, candidate);
    let raws = evaluate(&View::new(submitted), &View::new(candidate));
    let mut failures = Vec::new();
    check_rules(&raws, comparison.score, rules, |msg| failures.push(msg));
    LocalCheck {
        passed: failures.is_empty(),
        comparison,
        failures,
    }
}

/// Apply the rules; calls `fail` for each broken rule, formatting only then.
fn check_rules(
    raws: &[Option<Raw>],
    score: f64,
    rules: &TriageRules,
    mut fail: impl FnMut(String),
) {
    if score < rules.local_min_score {
        fail(format!(
            "local score {score:.2} is below the {:.2} needed",
            rules.local_min_score
        ));
    }
    let find = |f: Field| raws.iter().flatten().find(|r| r.field == f);
    for &f in &rules.must_agree {
        if let Some(r) = find(f) {
            use compare::Note;
            match (r.cmp.verdict, r.cmp.note) {
                (Verdict::Agree | Verdict::Near, _) | (Verdict::Missing, Note::NotSubmitted) => {}
                (Verdict::Missing, Note::NotOnCandidate) => {
                    fail(format!("{}: not on the candidate", f.label()));
                }
                (Verdict::Missing, _) => fail(format!("{}: unknown", f.label())),
                (Verdict::Differ, _) => fail(format!("{}: differs", f.label())),
            }
        }
    }
    for &f in &rules.must_not_differ {
        if find(f).is_some_and(|r| r.cmp.verdict == Verdict::Differ) {
            fail(format!("{}: differs", f.label()));
        }
    }
}

fn passes(submitted: &Demographics, candidate: &Demographics, rules: &TriageRules) -> bool {
    let raws = evaluate(&View::new(submitted), &View::new(candidate));
    let mut ok = true;
    check_rules(&raws, total(&raws), rules, |_| ok = false);
    ok
}

/// The one outcome of a submitted row, from the candidates and issues its match Bundle held.
///
/// * Candidates graded `certainly-not` are ignored.
/// * No candidate left: `Error` if any issue is `error`/`fatal`, else `NoMatch`.
/// * Several: `Review(SeveralCandidates)`.
/// * One `certain`: `AutoMatch` if it clears `auto_min_server_score` (else `Review(Probable)`)
///   and passes the local check (else `Review(CertainDisagrees)`).
/// * One `probable`: `Review(Probable)`; one `possible` or ungraded: `Review(Possible)`.
pub fn triage(
    submitted: &Demographics,
    candidates: &[Candidate],
    issues: &[RowIssue],
    rules: &TriageRules,
) -> Outcome {
    let mut live = candidates
        .iter()
        .filter(|c| c.grade != Some(MatchGrade::CertainlyNot));
    let (first, second) = (live.next(), live.next());
    let Some(c) = first else {
        return if issues.iter().any(RowIssue::is_error) {
            Outcome::Error
        } else {
            Outcome::NoMatch
        };
    };
    if second.is_some() {
        return Outcome::Review(ReviewReason::SeveralCandidates);
    }
    match c.grade {
        Some(MatchGrade::Certain) => {
            if let Some(bar) = rules.auto_min_server_score
                && !c.score.is_some_and(|s| s >= bar)
            {
                return Outcome::Review(ReviewReason::Probable);
            }
            if passes(submitted, &c.demographics, rules) {
                Outcome::AutoMatch
            } else {
                Outcome::Review(ReviewReason::CertainDisagrees)
            }
        }
        Some(MatchGrade::Probable) => Outcome::Review(ReviewReason::Probable),
        _ => Outcome::Review(ReviewReason::Possible),
    }
}

#[cfg(test)]
mod tests;
