//! Pure domain types shared by every other module.
//!
//! This module owns the vocabulary of matchdesk: the demographic [`Field`]s a cohort column can map
//! to, the [`Demographics`] of one person (a cohort row, a registry patient or a candidate returned by
//! the IIS), match options, grades, candidates, triage outcomes and job/chunk states. It does no I/O
//! and depends on nothing but serde and chrono, so the store, the network client, the simulated IIS
//! and (later) the GUI all speak the same types.

use std::fmt;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// A demographic field that a cohort (or registry) column can be mapped to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    Given,
    Middle,
    Family,
    Suffix,
    BirthDate,
    Sex,
    Phone,
    Email,
    AddressLine1,
    AddressLine2,
    City,
    State,
    PostalCode,
    /// The source system's own id (MRN, member id). Becomes `Patient.id` in the kick-off.
    LocalId,
    MedicaidId,
    /// Full SSN (9 digits) or its last four digits.
    Ssn,
    MothersMaidenName,
    /// Multiple-birth indicator (Y/N, true/false, 1/0).
    MultipleBirth,
    /// Birth order in a multiple birth (1, 2, ...).
    MultipleBirthOrder,
    /// The registry's own patient id (only meaningful for a registry file given to the simulated IIS).
    IisId,
}

impl Field {
    /// Every field, in display order.
    pub const ALL: [Field; 20] = [
        Field::LocalId,
        Field::Given,
        Field::Middle,
        Field::Family,
        Field::Suffix,
        Field::BirthDate,
        Field::Sex,
        Field::Phone,
        Field::Email,
        Field::AddressLine1,
        Field::AddressLine2,
        Field::City,
        Field::State,
        Field::PostalCode,
        Field::MedicaidId,
        Field::Ssn,
        Field::MothersMaidenName,
        Field::MultipleBirth,
        Field::MultipleBirthOrder,
        Field::IisId,
    ];

    /// The stable key used in mapping files and JSON (`"birth_date"`, `"local_id"`, ...).
    pub fn key(self) -> &'static str {
        match self {
            Field::Given => "given",
            Field::Middle => "middle",
            Field::Family => "family",
            Field::Suffix => "suffix",
            Field::BirthDate => "birth_date",
            Field::Sex => "sex",
            Field::Phone => "phone",
            Field::Email => "email",
            Field::AddressLine1 => "address_line1",
            Field::AddressLine2 => "address_line2",
            Field::City => "city",
            Field::State => "state",
            Field::PostalCode => "postal_code",
            Field::LocalId => "local_id",
            Field::MedicaidId => "medicaid_id",
            Field::Ssn => "ssn",
            Field::MothersMaidenName => "mothers_maiden_name",
            Field::MultipleBirth => "multiple_birth",
            Field::MultipleBirthOrder => "multiple_birth_order",
            Field::IisId => "iis_id",
        }
    }

    /// Parse a key produced by [`Field::key`].
    pub fn from_key(key: &str) -> Option<Field> {
        Field::ALL.iter().copied().find(|f| f.key() == key)
    }

    /// A label a clinic user understands.
    pub fn label(self) -> &'static str {
        match self {
            Field::Given => "First name",
            Field::Middle => "Middle name",
            Field::Family => "Last name",
            Field::Suffix => "Suffix",
            Field::BirthDate => "Birth date",
            Field::Sex => "Sex",
            Field::Phone => "Phone",
            Field::Email => "Email",
            Field::AddressLine1 => "Address",
            Field::AddressLine2 => "Address line 2",
            Field::City => "City",
            Field::State => "State",
            Field::PostalCode => "ZIP code",
            Field::LocalId => "Local id / MRN",
            Field::MedicaidId => "Medicaid id",
            Field::Ssn => "SSN",
            Field::MothersMaidenName => "Mother's maiden name",
            Field::MultipleBirth => "Multiple birth",
            Field::MultipleBirthOrder => "Birth order",
            Field::IisId => "IIS patient id",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Administrative sex as FHIR `Patient.gender` knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sex {
    Male,
    Female,
    Other,
    Unknown,
}

impl Sex {
    /// The FHIR `AdministrativeGender` code.
    pub fn fhir_code(self) -> &'static str {
        match self {
            Sex::Male => "male",
            Sex::Female => "female",
            Sex::Other => "other",
            Sex::Unknown => "unknown",
        }
    }

    /// Parse the common spellings (`M`, `male`, `F`, `Female`, `U`, `O`, ...). Case-insensitive.
    pub fn parse(s: &str) -> Option<Sex> {
        match s.trim().to_ascii_lowercase().as_str() {
            "m" | "male" | "man" | "boy" => Some(Sex::Male),
            "f" | "female" | "woman" | "girl" => Some(Sex::Female),
            "o" | "other" | "x" | "nonbinary" | "non-binary" => Some(Sex::Other),
            "u" | "unknown" | "unk" | "" => Some(Sex::Unknown),
            _ => None,
        }
    }
}

/// The demographics of one person: a cohort row, a registry patient, or a candidate from the IIS.
///
/// Every field is optional: real files and real servers leave things out. For a cohort row the
/// store keeps two copies: the *original* values (trimmed, for display) and the *normalized* ones
/// (for matching and for the kick-off), both in this type.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Demographics {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub given: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub middle: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub birth_date: Option<NaiveDate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sex: Option<Sex>,
    /// Digits only once normalized (10 digits for a US number).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address_line1: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address_line2: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// Two-letter code once normalized.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// ZIP5 once normalized.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub medicaid_id: Option<String>,
    /// 9 digits, or 4 digits when only the last four are known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mothers_maiden_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiple_birth: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiple_birth_order: Option<u32>,
    /// The IIS's own patient id, when known (registry patients and candidates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iis_id: Option<String>,
}

impl Demographics {
    /// The value of one field rendered as text for display and comparison tables.
    pub fn get(&self, field: Field) -> Option<String> {
        match field {
            Field::Given => self.given.clone(),
            Field::Middle => self.middle.clone(),
            Field::Family => self.family.clone(),
            Field::Suffix => self.suffix.clone(),
            Field::BirthDate => self.birth_date.map(|d| d.format("%Y-%m-%d").to_string()),
            Field::Sex => self.sex.map(|s| s.fhir_code().to_string()),
            Field::Phone => self.phone.clone(),
            Field::Email => self.email.clone(),
            Field::AddressLine1 => self.address_line1.clone(),
            Field::AddressLine2 => self.address_line2.clone(),
            Field::City => self.city.clone(),
            Field::State => self.state.clone(),
            Field::PostalCode => self.postal_code.clone(),
            Field::LocalId => self.local_id.clone(),
            Field::MedicaidId => self.medicaid_id.clone(),
            Field::Ssn => self.ssn.clone(),
            Field::MothersMaidenName => self.mothers_maiden_name.clone(),
            Field::MultipleBirth => self
                .multiple_birth
                .map(|b| if b { "yes" } else { "no" }.to_string()),
            Field::MultipleBirthOrder => self.multiple_birth_order.map(|n| n.to_string()),
            Field::IisId => self.iis_id.clone(),
        }
    }

    /// The slot of a free-text field; `None` for the typed ones (birth date, sex, multiple birth
    /// and birth order).
    pub fn text_mut(&mut self, field: Field) -> Option<&mut Option<String>> {
        Some(match field {
            Field::Given => &mut self.given,
            Field::Middle => &mut self.middle,
            Field::Family => &mut self.family,
            Field::Suffix => &mut self.suffix,
            Field::Phone => &mut self.phone,
            Field::Email => &mut self.email,
            Field::AddressLine1 => &mut self.address_line1,
            Field::AddressLine2 => &mut self.address_line2,
            Field::City => &mut self.city,
            Field::State => &mut self.state,
            Field::PostalCode => &mut self.postal_code,
            Field::LocalId => &mut self.local_id,
            Field::MedicaidId => &mut self.medicaid_id,
            Field::Ssn => &mut self.ssn,
            Field::MothersMaidenName => &mut self.mothers_maiden_name,
            Field::IisId => &mut self.iis_id,
            Field::BirthDate | Field::Sex | Field::MultipleBirth | Field::MultipleBirthOrder => {
                return None;
            }
        })
    }

    /// The value of a free-text field, borrowed; `None` when absent or for a typed field.
    pub fn text(&self, field: Field) -> Option<&str> {
        match field {
            Field::Given => self.given.as_deref(),
            Field::Middle => self.middle.as_deref(),
            Field::Family => self.family.as_deref(),
            Field::Suffix => self.suffix.as_deref(),
            Field::Phone => self.phone.as_deref(),
            Field::Email => self.email.as_deref(),
            Field::AddressLine1 => self.address_line1.as_deref(),
            Field::AddressLine2 => self.address_line2.as_deref(),
            Field::City => self.city.as_deref(),
            Field::State => self.state.as_deref(),
            Field::PostalCode => self.postal_code.as_deref(),
            Field::LocalId => self.local_id.as_deref(),
            Field::MedicaidId => self.medicaid_id.as_deref(),
            Field::Ssn => self.ssn.as_deref(),
            Field::MothersMaidenName => self.mothers_maiden_name.as_deref(),
            Field::IisId => self.iis_id.as_deref(),
            Field::BirthDate | Field::Sex | Field::MultipleBirth | Field::MultipleBirthOrder => {
                None
            }
        }
    }

    /// A short, non-identifying description for logs: which fields are present, never their values.
    pub fn shape(&self) -> String {
        Field::ALL
            .iter()
            .filter(|f| self.get(**f).is_some())
            .map(|f| f.key())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Options sent with a `$bulk-match` kick-off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MatchOptions {
    pub only_single_match: bool,
    pub only_certain_matches: bool,
    /// Maximum candidates per submitted patient; `None` lets the server decide.
    pub count: Option<u32>,
    /// `_outputFormat`; `None` sends nothing (server default, ndjson).
    pub output_format: Option<String>,
}

impl Default for MatchOptions {
    fn default() -> Self {
        MatchOptions {
            only_single_match: false,
            only_certain_matches: false,
            count: Some(5),
            output_format: Some("application/fhir+ndjson".to_string()),
        }
    }
}

/// The FHIR match-grade value set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatchGrade {
    Certain,
    Probable,
    Possible,
    CertainlyNot,
}

impl MatchGrade {
    pub fn code(self) -> &'static str {
        match self {
            MatchGrade::Certain => "certain",
            MatchGrade::Probable => "probable",
            MatchGrade::Possible => "possible",
            MatchGrade::CertainlyNot => "certainly-not",
        }
    }

    pub fn parse(code: &str) -> Option<MatchGrade> {
        match code.trim().to_ascii_lowercase().as_str() {
            "certain" => Some(MatchGrade::Certain),
            "probable" => Some(MatchGrade::Probable),
            "possible" => Some(MatchGrade::Possible),
            "certainly-not" | "certainly_not" => Some(MatchGrade::CertainlyNot),
            _ => None,
        }
    }
}

impl fmt::Display for MatchGrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One patient the IIS returned for a submitted row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// 1-based rank after sorting by score (servers may send entries out of order).
    pub rank: u32,
    /// The IIS's `Patient.id`.
    pub iis_id: String,
    pub score: Option<f64>,
    pub grade: Option<MatchGrade>,
    pub full_url: Option<String>,
    pub demographics: Demographics,
}

/// A message the server attached to a row's match Bundle (an `OperationOutcome` issue).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RowIssue {
    /// `fatal`, `error`, `warning` or `information`.
    pub severity: String,
    /// The issue code as the server sent it (some send numbers).
    pub code: String,
    pub text: String,
}

impl RowIssue {
    /// Whether this issue means the row could not be matched (as opposed to advice).
    pub fn is_error(&self) -> bool {
        matches!(self.severity.as_str(), "fatal" | "error")
    }
}

/// Why a row needs a person to look at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewReason {
    /// More than one candidate came back.
    SeveralCandidates,
    /// The best candidate is graded `probable`.
    Probable,
    /// The best candidate is graded `possible` (or has no grade).
    Possible,
    /// One `certain` candidate, but the local field-by-field check disagrees.
    CertainDisagrees,
}

impl ReviewReason {
    pub fn key(self) -> &'static str {
        match self {
            ReviewReason::SeveralCandidates => "several_candidates",
            ReviewReason::Probable => "probable",
            ReviewReason::Possible => "possible",
            ReviewReason::CertainDisagrees => "certain_disagrees",
        }
    }
    pub fn from_key(s: &str) -> Option<Self> {
        [
            ReviewReason::SeveralCandidates,
            ReviewReason::Probable,
            ReviewReason::Possible,
            ReviewReason::CertainDisagrees,
        ]
        .into_iter()
        .find(|r| r.key() == s)
    }
}

/// The one outcome every submitted row gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "reason")]
pub enum Outcome {
    AutoMatch,
    Review(ReviewReason),
    NoMatch,
    Error,
}

impl Outcome {
    /// The outcome class key used in reports: `auto_match`, `review`, `no_match`, `error`.
    pub fn class_key(self) -> &'static str {
        match self {
            Outcome::AutoMatch => "auto_match",
            Outcome::Review(_) => "review",
            Outcome::NoMatch => "no_match",
            Outcome::Error => "error",
        }
    }
}

/// Lifecycle of one chunk (one kick-off) of a match job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkState {
    /// Not yet accepted by the server.
    Pending,
    /// Kick-off accepted; the status URL is known and is being polled.
    Submitted,
    /// The manifest arrived; files are being downloaded and ingested.
    Downloading,
    /// All files ingested; the job may still need a DELETE on the server.
    Ingested,
    /// Ingested and cleaned up on the server.
    Done,
    /// Gave up; `last_error` says why.
    Failed,
    /// Cancelled by the user.
    Cancelled,
}

impl ChunkState {
    pub fn key(self) -> &'static str {
        match self {
            ChunkState::Pending => "pending",
            ChunkState::Submitted => "submitted",
            ChunkState::Downloading => "downloading",
            ChunkState::Ingested => "ingested",
            ChunkState::Done => "done",
            ChunkState::Failed => "failed",
            ChunkState::Cancelled => "cancelled",
        }
    }
    pub fn from_key(s: &str) -> Option<Self> {
        [
            ChunkState::Pending,
            ChunkState::Submitted,
            ChunkState::Downloading,
            ChunkState::Ingested,
            ChunkState::Done,
            ChunkState::Failed,
            ChunkState::Cancelled,
        ]
        .into_iter()
        .find(|c| c.key() == s)
    }
    /// Whether no more work will happen on this chunk.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ChunkState::Ingested | ChunkState::Done | ChunkState::Failed | ChunkState::Cancelled
        )
    }
}

/// Lifecycle of a match job (a run of a cohort against a server).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Completed,
    /// Finished, but some chunks or rows failed.
    CompletedWithErrors,
    Cancelled,
    Failed,
}

impl JobState {
    pub fn key(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::CompletedWithErrors => "completed_with_errors",
            JobState::Cancelled => "cancelled",
            JobState::Failed => "failed",
        }
    }
    pub fn from_key(s: &str) -> Option<Self> {
        [
            JobState::Running,
            JobState::Completed,
            JobState::CompletedWithErrors,
            JobState::Cancelled,
            JobState::Failed,
        ]
        .into_iter()
        .find(|c| c.key() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_keys_round_trip() {
        for f in Field::ALL {
            assert_eq!(Field::from_key(f.key()), Some(f));
        }
    }

    #[test]
    fn sex_parses_common_spellings() {
        assert_eq!(Sex::parse(" F "), Some(Sex::Female));
        assert_eq!(Sex::parse("Male"), Some(Sex::Male));
        assert_eq!(Sex::parse("q"), None);
    }

    #[test]
    fn shape_names_fields_not_values() {
        let d = Demographics {
            given: Some("ANA".into()),
            birth_date: NaiveDate::from_ymd_opt(2001, 2, 3),
            ..Default::default()
        };
        let s = d.shape();
        assert_eq!(s, "given,birth_date");
        assert!(!s.contains("ANA"));
    }
}
