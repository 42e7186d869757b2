//! Calibration, explanation and triage tests for the matching module.

use std::borrow::Cow;

use chrono::NaiveDate;

use super::*;
use crate::domain::Sex;

fn date(y: i32, m: u32, d: u32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(y, m, d)
}

/// A complete, normalized cohort row.
fn william() -> Demographics {
    Demographics {
        given: Some("WILLIAM".into()),
        middle: Some("JAMES".into()),
        family: Some("JOHNSON".into()),
        birth_date: date(2012, 3, 9),
        sex: Some(Sex::Male),
        phone: Some("5551234567".into()),
        email: Some("wjohnson@example.org".into()),
        address_line1: Some("123 MAIN ST".into()),
        city: Some("SPRINGFIELD".into()),
        state: Some("IL".into()),
        postal_code: Some("62701".into()),
        local_id: Some("MRN-1".into()),
        ..Default::default()
    }
}

fn moved(mut d: Demographics) -> Demographics {
    d.address_line1 = Some("88 LAKESHORE DR APT 5".into());
    d.city = Some("CHICAGO".into());
    d.postal_code = Some("60611".into());
    d
}

fn g(s: f64) -> Option<MatchGrade> {
    grade(s, &GradeThresholds::default())
}

#[test]
fn identical_full_records_are_certain() {
    let s = score(&william(), &william());
    assert!(s >= 0.97, "{s}");
    assert_eq!(g(s), Some(MatchGrade::Certain));
    // The local id is the client's own: a different one changes nothing.
    let mut other = william();
    other.local_id = Some("IIS-77".into());
    other.iis_id = Some("IIS-77".into());
    assert_eq!(score(&william(), &other), s);
}

#[test]
fn nickname_and_moved_is_certain_or_probable() {
    let mut cand = moved(william());
    cand.given = Some("BILL".into());
    let s = score(&william(), &cand);
    assert!(
        matches!(g(s), Some(MatchGrade::Certain | MatchGrade::Probable)),
        "{s}"
    );
    // Moving often comes with a new phone number too.
    cand.phone = Some("3125550199".into());
    let s2 = score(&william(), &cand);
    assert!(
        matches!(g(s2), Some(MatchGrade::Certain | MatchGrade::Probable)),
        "{s2}"
    );
    assert!(s2 < s);
    let c = compare(&william(), &cand);
    let given = c.field(Field::Given).unwrap();
    assert_eq!(given.verdict, Verdict::Near);
    assert_eq!(given.note, "nickname: WILLIAM = BILL");
}

#[test]
fn family_typo_with_same_dob_is_probable() {
    let mut cand = william();
    cand.family = Some("JOHNSNO".into());
    let s = score(&william(), &cand);
    assert_eq!(g(s), Some(MatchGrade::Probable), "{s}");
    // Also on a sparse row (names, birth date, sex only).
    let sparse = |d: &Demographics| Demographics {
        given: d.given.clone(),
        family: d.family.clone(),
        birth_date: d.birth_date,
        sex: d.sex,
        ..Default::default()
    };
    let s2 = score(&sparse(&william()), &sparse(&cand));
    assert_eq!(g(s2), Some(MatchGrade::Probable), "{s2}");
    let c = compare(&william(), &cand);
    assert_eq!(c.field(Field::Family).unwrap().note, "typo (1 edit)");
}

#[test]
fn namesake_is_possible_or_below() {
    let mut cand = moved(william());
    cand.sex = Some(Sex::Female);
    cand.phone = Some("2175550123".into());
    cand.email = None;
    cand.middle = None;
    let s = score(&william(), &cand);
    assert!(matches!(g(s), None | Some(MatchGrade::Possible)), "{s}");
    // Even living in the same town.
    cand.city = william().city;
    cand.postal_code = william().postal_code;
    let s = score(&william(), &cand);
    assert!(matches!(g(s), None | Some(MatchGrade::Possible)), "{s}");
}

#[test]
fn twins_are_below_probable() {
    let mut a = william();
    a.multiple_birth = Some(true);
    a.multiple_birth_order = Some(1);
    let mut b = a.clone();
    b.given = Some("HENRY".into());
    b.middle = Some("JAMES".into());
    b.multiple_birth_order = Some(2);
    let s = score(&a, &b);
    assert!(s < GradeThresholds::default().probable, "{s}");
    let c = compare(&a, &b);
    let order = c.field(Field::MultipleBirthOrder).unwrap();
    assert_eq!(order.verdict, Verdict::Differ);
    assert_eq!(order.note, "different birth order: likely a twin");
    // Twin names that are one letter apart (JOHN / JOAN) too.
    b.given = Some("WILLIAN".into());
    assert!(score(&a, &b) < GradeThresholds::default().probable);
}

#[test]
fn different_people_score_low() {
    let other = Demographics {
        given: Some("MARIA".into()),
        family: Some("GARCIA".into()),
        birth_date: date(1988, 11, 30),
        sex: Some(Sex::Female),
        phone: Some("3125559876".into()),
        address_line1: Some("9 ELM CT".into()),
        city: Some("SPRINGFIELD".into()),
        state: Some("IL".into()),
        postal_code: Some("62704".into()),
        ..Default::default()
    };
    let s = score(&william(), &other);
    assert!(s < 0.55, "{s}");
    assert_eq!(g(s), None);
    // Same family and town, different person and birth date.
    let mut sibling = william();
    sibling.given = Some("EMMA".into());
    sibling.sex = Some(Sex::Female);
    sibling.birth_date = date(2015, 7, 21);
    sibling.middle = None;
    let s = score(&william(), &sibling);
    assert!(s < 0.55, "{s}");
}

#[test]
fn sparse_records_are_not_punished_but_need_some_evidence() {
    let names_dob = Demographics {
        given: Some("WILLIAM".into()),
        family: Some("JOHNSON".into()),
        birth_date: date(2012, 3, 9),
        ..Default::default()
    };
    assert_eq!(score(&names_dob, &william()), 1.0);
    let family_dob = Demographics {
        given: None,
        ..names_dob.clone()
    };
    let s = score(&family_dob, &william());
    assert_eq!(g(s), Some(MatchGrade::Probable), "{s}");
    assert_eq!(score(&Demographics::default(), &william()), 0.0);
}

#[test]
fn swapped_first_and_last_name() {
    let mut cand = william();
    cand.given = Some("JOHNSON".into());
    cand.family = Some("WILLIAM".into());
    let c = compare(&william(), &cand);
    for f in [Field::Given, Field::Family] {
        let r = c.field(f).unwrap();
        assert_eq!(r.verdict, Verdict::Near);
        assert_eq!(r.note, "first and last name swapped");
    }
    assert!(
        c.score >= GradeThresholds::default().probable,
        "{}",
        c.score
    );
}

#[test]
fn explanation_lists_fields_with_values_and_notes() {
    let mut cand = william();
    cand.birth_date = date(2012, 9, 3);
    cand.phone = Some("2171234567".into());
    cand.family = Some("SMITH-JOHNSON".into());
    cand.email = None;
    let c = compare(&william(), &cand);
    let dob = c.field(Field::BirthDate).unwrap();
    assert_eq!(dob.note, "day and month swapped");
    assert_eq!(dob.submitted.as_deref(), Some("2012-03-09"));
    assert_eq!(dob.candidate.as_deref(), Some("2012-09-03"));
    assert!(dob.weight > 0.0 && dob.weight < 6.0);
    assert_eq!(
        c.field(Field::Phone).unwrap().note,
        "same number, area code differs"
    );
    assert_eq!(
        c.field(Field::Family).unwrap().note,
        "hyphenated name contains JOHNSON"
    );
    let email = c.field(Field::Email).unwrap();
    assert_eq!(email.verdict, Verdict::Missing);
    assert_eq!(email.weight, 0.0);
    assert_eq!(email.note, "not on the candidate");
    // Not compared, and absent on both sides: not listed.
    assert!(c.field(Field::LocalId).is_none());
    assert!(c.field(Field::Ssn).is_none());
    assert_eq!(
        c.fields.iter().map(|f| f.weight).sum::<f64>() > 0.0,
        c.score > 0.0
    );
}

#[test]
fn score_equals_compare_score_and_normalizes_candidates() {
    let raw_candidate = Demographics {
        given: Some("William".into()),
        middle: Some("james".into()),
        family: Some("Johnson".into()),
        birth_date: date(2012, 3, 9),
        sex: Some(Sex::Male),
        phone: Some("(555) 123-4567".into()),
        email: Some("WJohnson@Example.org".into()),
        address_line1: Some("123 Main Street".into()),
        city: Some("Springfield".into()),
        state: Some("Illinois".into()),
        postal_code: Some("62701-1234".into()),
        ..Default::default()
    };
    let s = score(&william(), &raw_candidate);
    assert_eq!(s, 1.0);
    assert_eq!(compare(&william(), &raw_candidate).score, s);
    let mut twin = william();
    twin.given = Some("HENRY".into());
    let w = william();
    let prepared = prepare(&w);
    for cand in [
        moved(william()),
        twin,
        Demographics::default(),
        raw_candidate.clone(),
    ] {
        let s = score(&w, &cand);
        assert_eq!(compare(&w, &cand).score, s);
        assert_eq!(score_prepared(&prepared, &prepare(&cand)), s);
    }
    assert_eq!(
        normalize_for_compare(&raw_candidate)
            .address_line1
            .as_deref(),
        Some("123 MAIN STREET")
    );
}

#[test]
fn normalized_rows_are_borrowed_not_copied() {
    let w = william();
    let v = compare::View::new(&w);
    for c in [
        &v.given,
        &v.family,
        &v.phone,
        &v.email,
        &v.address_line1,
        &v.city,
        &v.state,
        &v.postal_code,
    ] {
        assert!(matches!(c, Some(Cow::Borrowed(_))), "{c:?}");
    }
}

#[test]
fn grades_follow_thresholds() {
    let t = GradeThresholds::default();
    assert_eq!(grade(0.90, &t), Some(MatchGrade::Certain));
    assert_eq!(grade(0.8999, &t), Some(MatchGrade::Probable));
    assert_eq!(grade(0.75, &t), Some(MatchGrade::Probable));
    assert_eq!(grade(0.60, &t), Some(MatchGrade::Possible));
    assert_eq!(grade(0.54, &t), None);
    assert_eq!(grade(f64::NAN, &t), None);
    let strict = GradeThresholds { certain: 0.99, ..t };
    assert_eq!(grade(0.95, &strict), Some(MatchGrade::Probable));
}

#[test]
fn verdict_symbols_and_labels() {
    assert_eq!(Verdict::Agree.symbol(), "=");
    assert_eq!(Verdict::Near.symbol(), "≈");
    assert_eq!(Verdict::Differ.symbol(), "≠");
    assert_eq!(Verdict::Missing.symbol(), "–");
    assert_eq!(Verdict::Near.label(), "close");
}

// ---------------------------------------------------------------------------------------------
// Triage
// ---------------------------------------------------------------------------------------------

fn cand(grade: Option<MatchGrade>, score: Option<f64>, d: Demographics) -> Candidate {
    Candidate {
        rank: 1,
        iis_id: "p1".into(),
        score,
        grade,
        full_url: None,
        demographics: d,
    }
}

fn issue(severity: &str) -> RowIssue {
    RowIssue {
        severity: severity.into(),
        code: "processing".into(),
        text: "x".into(),
    }
}

#[test]
fn triage_without_candidates() {
    let r = TriageRules::default();
    let w = william();
    assert_eq!(triage(&w, &[], &[], &r), Outcome::NoMatch);
    assert_eq!(
        triage(&w, &[], &[issue("information"), issue("warning")], &r),
        Outcome::NoMatch
    );
    assert_eq!(triage(&w, &[], &[issue("error")], &r), Outcome::Error);
    assert_eq!(triage(&w, &[], &[issue("fatal")], &r), Outcome::Error);
    let not = cand(Some(MatchGrade::CertainlyNot), Some(0.1), william());
    assert_eq!(triage(&w, &[not.clone(), not], &[], &r), Outcome::NoMatch);
}

#[test]
fn triage_single_certain_is_verified_locally() {
    let r = TriageRules::default();
    let w = william();
    let certain = |d| cand(Some(MatchGrade::Certain), Some(0.97), d);
    assert_eq!(
        triage(&w, &[certain(william())], &[], &r),
        Outcome::AutoMatch
    );
    let mut nick = moved(william());
    nick.given = Some("BILL".into());
    assert_eq!(triage(&w, &[certain(nick)], &[], &r), Outcome::AutoMatch);
    // A certainly-not next to it is ignored.
    let not = cand(
        Some(MatchGrade::CertainlyNot),
        Some(0.1),
        Demographics::default(),
    );
    assert_eq!(
        triage(&w, &[certain(william()), not], &[], &r),
        Outcome::AutoMatch
    );
    // Server says certain, but the local demographics disagree.
    let mut namesake = moved(william());
    namesake.sex = Some(Sex::Female);
    namesake.phone = Some("2175550123".into());
    assert_eq!(
        triage(&w, &[certain(namesake)], &[], &r),
        Outcome::Review(ReviewReason::CertainDisagrees)
    );
    // Birth date must agree (or be near).
    let mut other_dob = william();
    other_dob.birth_date = date(2014, 8, 1);
    assert_eq!(
        triage(&w, &[certain(other_dob)], &[], &r),
        Outcome::Review(ReviewReason::CertainDisagrees)
    );
    // A candidate without a birth date cannot be verified.
    let mut no_dob = william();
    no_dob.birth_date = None;
    assert_eq!(
        triage(&w, &[certain(no_dob.clone())], &[], &r),
        Outcome::Review(ReviewReason::CertainDisagrees)
    );
    // ... but a row that did not send one is not held to it.
    let mut row_no_dob = william();
    row_no_dob.birth_date = None;
    assert_eq!(
        triage(&row_no_dob, &[certain(no_dob)], &[], &r),
        Outcome::AutoMatch
    );
}

#[test]
fn triage_review_reasons() {
    let r = TriageRules::default();
    let w = william();
    let two = [
        cand(Some(MatchGrade::Certain), Some(0.95), william()),
        cand(Some(MatchGrade::Possible), Some(0.6), moved(william())),
    ];
    assert_eq!(
        triage(&w, &two, &[], &r),
        Outcome::Review(ReviewReason::SeveralCandidates)
    );
    let probable = cand(Some(MatchGrade::Probable), Some(0.8), william());
    assert_eq!(
        triage(&w, &[probable], &[issue("error")], &r),
        Outcome::Review(ReviewReason::Probable)
    );
    for grade in [Some(MatchGrade::Possible), None] {
        assert_eq!(
            triage(&w, &[cand(grade, None, william())], &[], &r),
            Outcome::Review(ReviewReason::Possible)
        );
    }
}

#[test]
fn triage_server_score_bar() {
    let r = TriageRules {
        auto_min_server_score: Some(0.95),
        ..Default::default()
    };
    let w = william();
    let ok = cand(Some(MatchGrade::Certain), Some(0.96), william());
    let low = cand(Some(MatchGrade::Certain), Some(0.91), william());
    let none = cand(Some(MatchGrade::Certain), None, william());
    assert_eq!(triage(&w, &[ok], &[], &r), Outcome::AutoMatch);
    assert_eq!(
        triage(&w, &[low], &[], &r),
        Outcome::Review(ReviewReason::Probable)
    );
    assert_eq!(
        triage(&w, &[none], &[], &r),
        Outcome::Review(ReviewReason::Probable)
    );
}

#[test]
fn triage_rules_from_partial_json() {
    let r: TriageRules =
        serde_json::from_str(r#"{"local_min_score":0.95,"must_agree":["birth_date","family"]}"#)
            .unwrap();
    assert_eq!(r.local_min_score, 0.95);
    assert_eq!(r.must_agree, vec![Field::BirthDate, Field::Family]);
    assert_eq!(r.must_not_differ, TriageRules::default().must_not_differ);
    assert_eq!(r.auto_min_server_score, None);
    let empty: TriageRules = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, TriageRules::default());
    let back: TriageRules = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(back, r);
    let t: GradeThresholds = serde_json::from_str(r#"{"certain":0.97}"#).unwrap();
    assert_eq!(t.certain, 0.97);
    assert_eq!(t.probable, 0.75);

    // The stricter rule now sends a family typo to review.
    let mut typo = william();
    typo.family = Some("JOHNSNO".into());
    let c = cand(Some(MatchGrade::Certain), Some(0.97), typo);
    assert_eq!(
        triage(
            &william(),
            std::slice::from_ref(&c),
            &[],
            &TriageRules::default()
        ),
        Outcome::AutoMatch
    );
    assert_eq!(
        triage(&william(), &[c], &[], &r),
        Outcome::Review(ReviewReason::CertainDisagrees)
    );
}

#[test]
fn local_check_explains_failures_without_values() {
    let mut namesake = moved(william());
    namesake.sex = Some(Sex::Female);
    namesake.birth_date = None;
    let check = local_check(&william(), &namesake, &TriageRules::default());
    assert!(!check.passed);
    assert!(
        check
            .failures
            .iter()
            .any(|f| f == "Birth date: not on the candidate"),
        "{:?}",
        check.failures
    );
    assert!(check.failures.iter().any(|f| f == "Sex: differs"));
    assert!(check.failures.iter().any(|f| f.starts_with("local score")));
    assert!(check.failures.iter().all(|f| !f.contains("JOHNSON")));
    let ok = local_check(&william(), &william(), &TriageRules::default());
    assert!(ok.passed && ok.failures.is_empty());
    assert_eq!(ok.comparison.score, 1.0);
}

#[test]
fn one_clear_error_on_a_full_row_lands_in_probable() {
    let mut given_typo = william();
    given_typo.given = Some("WILIAM".into());
    let mut day_month = william();
    day_month.birth_date = date(2012, 9, 3);
    let mut year = william();
    year.birth_date = date(2011, 3, 9);
    let mut swapped = william();
    swapped.given = Some("JOHNSON".into());
    swapped.family = Some("WILLIAM".into());
    for (what, cand) in [
        ("given typo", given_typo),
        ("day/month swapped", day_month),
        ("year off by one", year),
        ("names swapped", swapped),
    ] {
        let s = score(&william(), &cand);
        assert_eq!(g(s), Some(MatchGrade::Probable), "{what}: {s}");
    }
}

#[test]
fn an_address_split_over_two_lines_agrees() {
    // The cohort has the space number on line 1; the IIS keeps it on line 2.
    let mut submitted = william();
    submitted.address_line1 = Some("39799 RALEIGH RD SPC 87".into());
    let mut candidate = william();
    candidate.address_line1 = Some("39799 RALEIGH RD".into());
    candidate.address_line2 = Some("SPC 87".into());
    let c = compare(&submitted, &candidate);
    let line1 = c.field(Field::AddressLine1).unwrap();
    assert_eq!(line1.verdict, Verdict::Agree, "{line1:?}");
    assert_eq!(line1.note, "same address, split differently over two lines");
    // Line 2 is on one side only: no weight either way, and the note says why.
    let line2 = c.field(Field::AddressLine2).unwrap();
    assert_eq!(line2.verdict, Verdict::Missing);
    assert_eq!(line2.weight, 0.0);
    assert_eq!(c.score, score(&william(), &william()));
    assert_eq!(score(&submitted, &candidate), c.score);

    // Both sides have a second line, split differently.
    submitted.address_line1 = Some("12 OAK RD APT".into());
    submitted.address_line2 = Some("3".into());
    candidate.address_line1 = Some("12 OAK RD".into());
    candidate.address_line2 = Some("APT 3".into());
    let c = compare(&submitted, &candidate);
    assert_eq!(
        c.field(Field::AddressLine1).unwrap().verdict,
        Verdict::Agree
    );
    assert_eq!(
        c.field(Field::AddressLine2).unwrap().verdict,
        Verdict::Agree
    );

    // A different space number is not hidden by the split.
    submitted.address_line1 = Some("39799 RALEIGH RD SPC 88".into());
    submitted.address_line2 = None;
    candidate.address_line1 = Some("39799 RALEIGH RD".into());
    candidate.address_line2 = Some("SPC 87".into());
    let c = compare(&submitted, &candidate);
    assert_ne!(
        c.field(Field::AddressLine1).unwrap().verdict,
        Verdict::Agree
    );
}
