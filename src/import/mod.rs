//! Reading cohort files: CSV (any of `,` tab `;` `|`) and FHIR Patient ndjson.
//!
//! This module owns everything between a file on disk and validated, normalized cohort rows:
//! format/encoding/delimiter detection ([`sniff`]), column mapping ([`Mapping`]), date parsing
//! ([`parse_date`]), validation (required fields, real and past birth dates, duplicate ids,
//! malformed optional values) and normalization for matching ([`normalize`]). It streams: rows go
//! to a caller-supplied sink one at a time, so a 100 MB file is read in bounded memory (apart from
//! the set of ids seen, needed to reject duplicates). It does not touch the store; the engine's
//! sink does. Problems are phrased for a clinic user and carry the physical line and column.

mod dates;
mod mapping;
mod normalize;
mod sniff;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{Demographics, Field, Sex};
use crate::fhir::patient::{from_patient, patient_id};

pub use dates::parse_date;
pub use mapping::{DEFAULT_REQUIRED, Mapping, guess_field};
pub use normalize::{derived_id, fnv1a64, normalize, normalize_name, state_code};

/// How serious a [`RowProblem`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The row cannot be used.
    Error,
    /// The row is used; the value named was left out for matching.
    Warning,
}

impl Severity {
    pub fn key(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One problem with one row, in words a clinic user understands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RowProblem {
    /// Physical line in the file where the row starts (the header is line 1).
    pub line: u64,
    /// The header text of the column (for ndjson, the FHIR element).
    pub column: Option<String>,
    /// The value as typed.
    pub value: Option<String>,
    pub reason: String,
    pub severity: Severity,
}

/// A row that passed validation.
#[derive(Clone, Debug, PartialEq)]
pub struct CohortRow {
    pub line: u64,
    /// The local id, or a derived `row-<16 hex>` id when the file has none.
    pub source_id: String,
    /// Trimmed values as typed (dates parsed), for display.
    pub original: Demographics,
    /// Values normalized for matching and for the kick-off.
    pub normalized: Demographics,
    pub warnings: Vec<RowProblem>,
}

/// What the reader hands the sink for each data row.
#[derive(Clone, Debug, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "items go to the sink one at a time and are never stored in bulk; boxing would add an allocation per row"
)]
pub enum ImportItem {
    Good(CohortRow),
    Bad {
        line: u64,
        problems: Vec<RowProblem>,
        original: Demographics,
    },
}

/// What was read and how.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportSummary {
    /// `"csv"` or `"ndjson"`.
    pub format: String,
    /// `"utf-8"` or `"windows-1252"`.
    pub encoding: String,
    pub delimiter: Option<u8>,
    /// Every header in the file (mapped or not), trimmed; empty for ndjson.
    pub headers: Vec<String>,
    /// The mapping used (the given one, or the automapping).
    pub mapping: Mapping,
    pub good_rows: u64,
    pub bad_rows: u64,
    /// Number of warnings over all rows.
    pub warnings: u64,
}

/// The first rows of a file, for a mapping table.
#[derive(Clone, Debug, PartialEq)]
pub struct Preview {
    /// `"csv"` or `"ndjson"`.
    pub format: String,
    /// CSV headers; for ndjson, the field keys found in the previewed Patients.
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub delimiter: Option<u8>,
    pub encoding: String,
    pub automapping: Mapping,
}

/// Why a cohort file could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(
        "could not read {path}: {source} — check that the file exists and that you may open it"
    )]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is empty (no header line) — choose the file that holds the cohort")]
    Empty { path: PathBuf },
    #[error(
        "{path} line {line}: the file could not be read as CSV ({detail}) — check the quoting near that line"
    )]
    Csv {
        path: PathBuf,
        line: u64,
        detail: String,
    },
    #[error(
        "{path}: the mapping names column {missing}, but the file has no such header. Headers found: {found}. Fix the mapping or the file's header line"
    )]
    ColumnMissing {
        path: PathBuf,
        /// `"Last Name" (family)`, comma-separated when several.
        missing: String,
        found: String,
    },
    #[error(
        "{path}: no column is mapped to the required field {fields}. Headers found: {found}. Map a column to it (see docs/MAPPING.md) or remove it from \"required\""
    )]
    RequiredFieldUnmapped {
        path: PathBuf,
        /// `Birth date (birth_date)`, comma-separated when several.
        fields: String,
        found: String,
    },
    #[error(
        "{path}: columns {first:?} and {second:?} are both mapped to {field} — map only one of them"
    )]
    DuplicateField {
        path: PathBuf,
        field: String,
        first: String,
        second: String,
    },
    #[error("mapping file {path} is not valid: {detail} — see docs/MAPPING.md for the format")]
    MappingFile { path: PathBuf, detail: String },
    #[error("could not write {path}: {source} — check the folder exists and you may write there")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The sink (e.g. the store) refused a row; the import stopped there.
    #[error("import stopped at line {line}: {message}")]
    Sink { line: u64, message: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Csv,
    Ndjson,
}

struct Opened {
    format: Format,
    /// File size in bytes.
    len: u64,
    utf8: bool,
    reader: Box<dyn Read>,
    /// The first bytes after any BOM, for delimiter sniffing.
    sample: Vec<u8>,
}

impl Opened {
    /// A guess at the number of rows, from the sample's line length (for pre-sizing the id set).
    fn estimated_rows(&self) -> usize {
        let lines = self.sample.iter().filter(|b| **b == b'\n').count().max(1) as u64;
        let per_line = (self.sample.len() as u64 / lines).max(1);
        usize::try_from((self.len / per_line).min(20_000_000)).unwrap_or(0)
    }

    fn encoding(&self) -> &'static str {
        if self.utf8 { "utf-8" } else { "windows-1252" }
    }
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn open(path: &Path) -> Result<Opened, ImportError> {
    let ioe = io_err(path);
    let mut file = File::open(path).map_err(&ioe)?;
    let mut sample = Vec::with_capacity(64 * 1024);
    (&mut file)
        .take(64 * 1024)
        .read_to_end(&mut sample)
        .map_err(&ioe)?;
    let bom = sample.starts_with(sniff::UTF8_BOM);
    if bom {
        sample.drain(..sniff::UTF8_BOM.len());
    }
    let first = sample.iter().copied().find(|b| !b.is_ascii_whitespace());
    let Some(first) = first else {
        return Err(ImportError::Empty {
            path: path.to_path_buf(),
        });
    };
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let format = if matches!(ext.as_deref(), Some("ndjson" | "jsonl")) || first == b'{' {
        Format::Ndjson
    } else {
        Format::Csv
    };
    file.seek(SeekFrom::Start(0)).map_err(&ioe)?;
    let utf8 = sniff::is_utf8(&mut file).map_err(&ioe)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = if bom { sniff::UTF8_BOM.len() as u64 } else { 0 };
    file.seek(SeekFrom::Start(start)).map_err(&ioe)?;
    let reader: Box<dyn Read> = if utf8 {
        Box::new(file)
    } else {
        Box::new(sniff::DecodingReader::new(file))
    };
    Ok(Opened {
        format,
        len,
        utf8,
        reader,
        sample,
    })
}

/// Which column names problems use, indexed by `Field as usize`.
type ColumnNames = [Option<String>; Field::ALL.len()];

const NDJSON_COLUMNS: [(Field, &str); 20] = [
    (Field::Given, "name.given"),
    (Field::Middle, "name.given"),
    (Field::Family, "name.family"),
    (Field::Suffix, "name.suffix"),
    (Field::BirthDate, "birthDate"),
    (Field::Sex, "gender"),
    (Field::Phone, "telecom (phone)"),
    (Field::Email, "telecom (email)"),
    (Field::AddressLine1, "address.line"),
    (Field::AddressLine2, "address.line"),
    (Field::City, "address.city"),
    (Field::State, "address.state"),
    (Field::PostalCode, "address.postalCode"),
    (Field::LocalId, "id"),
    (Field::MedicaidId, "identifier (Medicaid)"),
    (Field::Ssn, "identifier (SSN)"),
    (Field::MothersMaidenName, "extension (mother's maiden name)"),
    (Field::MultipleBirth, "multipleBirth"),
    (Field::MultipleBirthOrder, "multipleBirthInteger"),
    (Field::IisId, "identifier"),
];

/// Validation state shared by the CSV and ndjson readers.
struct Validator {
    today: NaiveDate,
    required: Vec<Field>,
    columns: ColumnNames,
    seen: normalize::IdSet,
    good: u64,
    bad: u64,
    warnings: u64,
}

/// Check a parsed birth date is plausible; the error is a reason without the field name.
fn check_birth(raw: &str, today: NaiveDate) -> Result<NaiveDate, String> {
    let d = parse_date(raw, today)?;
    if d > today {
        Err(format!("{raw} is in the future — check the year"))
    } else if d.year() < 1900 {
        Err(format!("{raw} is before 1900 — check the year"))
    } else {
        Ok(d)
    }
}

fn parse_yes_no(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" | "true" | "t" | "1" | "x" => Some(true),
        "n" | "no" | "false" | "f" | "0" => Some(false),
        _ => None,
    }
}

fn text_slot(d: &mut Demographics, f: Field) -> Option<&mut Option<String>> {
    d.text_mut(f)
}

/// Whether `d` has a value for `field` (like `d.get(field).is_some()`, without allocating).
fn has_value(d: &Demographics, field: Field) -> bool {
    match field {
        Field::BirthDate => d.birth_date.is_some(),
        Field::Sex => d.sex.is_some(),
        Field::MultipleBirth => d.multiple_birth.is_some(),
        Field::MultipleBirthOrder => d.multiple_birth_order.is_some(),
        Field::Given => d.given.is_some(),
        Field::Middle => d.middle.is_some(),
        Field::Family => d.family.is_some(),
        Field::Suffix => d.suffix.is_some(),
        Field::Phone => d.phone.is_some(),
        Field::Email => d.email.is_some(),
        Field::AddressLine1 => d.address_line1.is_some(),
        Field::AddressLine2 => d.address_line2.is_some(),
        Field::City => d.city.is_some(),
        Field::State => d.state.is_some(),
        Field::PostalCode => d.postal_code.is_some(),
        Field::LocalId => d.local_id.is_some(),
        Field::MedicaidId => d.medicaid_id.is_some(),
        Field::Ssn => d.ssn.is_some(),
        Field::MothersMaidenName => d.mothers_maiden_name.is_some(),
        Field::IisId => d.iis_id.is_some(),
    }
}

impl Validator {
    fn problem(
        &self,
        line: u64,
        field: Option<Field>,
        value: Option<&str>,
        reason: String,
        severity: Severity,
    ) -> RowProblem {
        RowProblem {
            line,
            column: field.and_then(|f| self.columns[f as usize].clone()),
            value: value.map(str::to_string),
            reason,
            severity,
        }
    }

    /// Put one raw (trimmed, non-empty) value into `original`, recording problems.
    fn set_value(
        &self,
        line: u64,
        field: Field,
        raw: &str,
        original: &mut Demographics,
        problems: &mut Vec<RowProblem>,
    ) {
        match field {
            Field::BirthDate => match check_birth(raw, self.today) {
                Ok(d) => original.birth_date = Some(d),
                Err(why) => problems.push(self.problem(
                    line,
                    Some(field),
                    Some(raw),
                    format!("birth date {why}"),
                    Severity::Error,
                )),
            },
            Field::Sex => match Sex::parse(raw) {
                Some(s) => original.sex = Some(s),
                None => problems.push(self.problem(
                    line,
                    Some(field),
                    Some(raw),
                    format!(
                        "sex {raw} is not a value we know (use M, F, O or U) — it was left out for matching"
                    ),
                    Severity::Warning,
                )),
            },
            Field::MultipleBirth => match parse_yes_no(raw) {
                Some(b) => original.multiple_birth = Some(b),
                None => problems.push(self.problem(
                    line,
                    Some(field),
                    Some(raw),
                    format!(
                        "multiple birth {raw} is not yes or no (use Y/N, true/false or 1/0) — it was left out for matching"
                    ),
                    Severity::Warning,
                )),
            },
            Field::MultipleBirthOrder => match raw.parse::<u32>() {
                Ok(n) if (1..=20).contains(&n) => original.multiple_birth_order = Some(n),
                _ => problems.push(self.problem(
                    line,
                    Some(field),
                    Some(raw),
                    format!(
                        "birth order {raw} is not a number from 1 to 20 — it was left out for matching"
                    ),
                    Severity::Warning,
                )),
            },
            _ => {
                if let Some(slot) = text_slot(original, field) {
                    *slot = Some(raw.to_string());
                }
            }
        }
    }

    /// Normalize `row.original` into `row.normalized`, check required fields and duplicate ids,
    /// and set `row.source_id`. Problems go to `row.warnings`; returns whether the row is good.
    /// Works in place so the large row is not moved around per call.
    fn finish(&mut self, row: &mut CohortRow) -> bool {
        let line = row.line;
        let mut warns = Vec::new();
        normalize::normalize_into(&row.original, &mut row.normalized, &mut warns);
        for (field, reason) in warns {
            let value = row.original.get(field);
            row.warnings.push(self.problem(
                line,
                Some(field),
                value.as_deref(),
                reason,
                Severity::Warning,
            ));
        }
        for &field in &self.required {
            if has_value(&row.normalized, field) {
                continue;
            }
            let col = self.columns[field as usize].clone();
            if row
                .warnings
                .iter()
                .any(|p| p.severity == Severity::Error && p.column.is_some() && p.column == col)
            {
                continue; // already explained (e.g. an impossible birth date)
            }
            let value = row.original.get(field);
            let reason = match &value {
                Some(v) => format!(
                    "{} {v} is required but not usable for matching — correct it",
                    field.label().to_lowercase()
                ),
                None => format!(
                    "{} is missing — it is required, fill it in",
                    field.label().to_lowercase()
                ),
            };
            row.warnings.push(RowProblem {
                line,
                column: col,
                value,
                reason,
                severity: Severity::Error,
            });
        }
        let has_errors = row.warnings.iter().any(|p| p.severity == Severity::Error);
        let explicit_id = row.normalized.local_id.is_some();
        match &row.normalized.local_id {
            Some(id) => row.source_id.clone_from(id),
            None if !has_errors => row.source_id = derived_id(&row.normalized),
            None => row.source_id.clear(),
        }
        if !row.source_id.is_empty()
            && let Some(first) = self.seen.first_seen(&row.source_id, line)
        {
            let id = &row.source_id;
            let p = if explicit_id {
                self.problem(
                    line,
                    Some(Field::LocalId),
                    Some(id),
                    format!(
                        "id {id} is already used on line {first} — each row needs its own id; remove the duplicate row or correct the id"
                    ),
                    Severity::Error,
                )
            } else {
                self.problem(
                    line,
                    None,
                    None,
                    format!(
                        "same last name, first name, birth date and sex as line {first}, and the file has no id column — remove the duplicate row or add an id column"
                    ),
                    Severity::Error,
                )
            };
            row.warnings.push(p);
        }
        self.warnings += row
            .warnings
            .iter()
            .filter(|p| p.severity == Severity::Warning)
            .count() as u64;
        if row.warnings.iter().any(|p| p.severity == Severity::Error) {
            self.bad += 1;
            false
        } else {
            self.good += 1;
            true
        }
    }
}

use normalize::trim;

fn new_row(line: u64) -> CohortRow {
    CohortRow {
        line,
        source_id: String::new(),
        original: Demographics::default(),
        normalized: Demographics::default(),
        warnings: Vec::new(),
    }
}

/// Turn a `Good` item into `Bad` after [`Validator::finish`] rejected it. Rows are built inside
/// the item from the start, so the (large) good path never moves them.
fn reject(item: &mut ImportItem) {
    if let ImportItem::Good(row) = item {
        *item = ImportItem::Bad {
            line: row.line,
            problems: std::mem::take(&mut row.warnings),
            original: std::mem::take(&mut row.original),
        };
    }
}

fn csv_error(path: &Path, e: csv::Error) -> ImportError {
    let line = e.position().map(|p| p.line()).unwrap_or(0);
    match e.into_kind() {
        csv::ErrorKind::Io(source) => ImportError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => ImportError::Csv {
            path: path.to_path_buf(),
            line,
            detail: format!("{other:?}"),
        },
    }
}

fn header_text(h: &[u8]) -> String {
    String::from_utf8_lossy(h)
        .trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}')
        .to_string()
}

fn list_headers(headers: &[String]) -> String {
    if headers.is_empty() {
        "(none)".to_string()
    } else {
        headers
            .iter()
            .map(|h| format!("{h:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Resolve mapped columns to header indices; one error naming every missing column or field.
fn resolve(
    path: &Path,
    headers: &[String],
    mapping: &Mapping,
) -> Result<Vec<(usize, Field)>, ImportError> {
    let mut cols: Vec<(usize, Field)> = Vec::new();
    let mut missing = Vec::new();
    for (i, (col, field)) in mapping.columns.iter().enumerate() {
        if let Some((other, _)) = mapping.columns[..i].iter().find(|(_, f)| f == field) {
            return Err(ImportError::DuplicateField {
                path: path.to_path_buf(),
                field: field.key().to_string(),
                first: other.clone(),
                second: col.clone(),
            });
        }
        let want = col.trim();
        let idx = headers
            .iter()
            .position(|h| h == want)
            .or_else(|| headers.iter().position(|h| h.eq_ignore_ascii_case(want)));
        match idx {
            Some(idx) => cols.push((idx, *field)),
            None => missing.push(format!("{want:?} ({})", field.key())),
        }
    }
    if !missing.is_empty() {
        return Err(ImportError::ColumnMissing {
            path: path.to_path_buf(),
            missing: missing.join(", "),
            found: list_headers(headers),
        });
    }
    let unmapped: Vec<String> = mapping
        .required
        .iter()
        .filter(|f| !cols.iter().any(|(_, g)| g == *f))
        .map(|f| format!("{} ({})", f.label(), f.key()))
        .collect();
    if !unmapped.is_empty() {
        return Err(ImportError::RequiredFieldUnmapped {
            path: path.to_path_buf(),
            fields: unmapped.join(", "),
            found: list_headers(headers),
        });
    }
    Ok(cols)
}

fn csv_reader(opened: Opened, delimiter: u8) -> csv::Reader<Box<dyn Read>> {
    csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .flexible(true)
        .buffer_capacity(256 * 1024)
        .from_reader(opened.reader)
}

/// Read a cohort file, calling `sink` once per data row in file order. Uses today's date for
/// the future-birth-date check. See [`read_cohort_on`].
pub fn read_cohort(
    path: &Path,
    mapping: Option<&Mapping>,
    sink: &mut dyn FnMut(ImportItem) -> Result<(), ImportError>,
) -> Result<ImportSummary, ImportError> {
    read_cohort_on(path, mapping, chrono::Local::now().date_naive(), sink)
}

/// [`read_cohort`] with an explicit "today" (for two-digit years and future dates).
///
/// With `mapping = None` the columns are auto-mapped from the headers. Rows whose every cell is
/// empty are skipped silently. Memory is bounded apart from the set of ids seen.
pub fn read_cohort_on(
    path: &Path,
    mapping: Option<&Mapping>,
    today: NaiveDate,
    sink: &mut dyn FnMut(ImportItem) -> Result<(), ImportError>,
) -> Result<ImportSummary, ImportError> {
    let opened = open(path)?;
    let summary = match opened.format {
        Format::Csv => read_csv(path, opened, mapping, today, sink)?,
        Format::Ndjson => read_ndjson(path, opened, mapping, today, sink)?,
    };
    tracing::info!(
        format = %summary.format,
        encoding = %summary.encoding,
        good = summary.good_rows,
        bad = summary.bad_rows,
        warnings = summary.warnings,
        "cohort file read"
    );
    Ok(summary)
}

/// The caller's per-row callback.
type Sink<'a> = dyn FnMut(ImportItem) -> Result<(), ImportError> + 'a;

fn read_csv(
    path: &Path,
    opened: Opened,
    mapping: Option<&Mapping>,
    today: NaiveDate,
    sink: &mut Sink<'_>,
) -> Result<ImportSummary, ImportError> {
    let encoding = opened.encoding().to_string();
    let delimiter = mapping
        .and_then(|m| m.delimiter)
        .unwrap_or_else(|| sniff::sniff_delimiter(&opened.sample));
    let estimated_rows = opened.estimated_rows();
    let mut rdr = csv_reader(opened, delimiter);
    let headers: Vec<String> = rdr
        .byte_headers()
        .map_err(|e| csv_error(path, e))?
        .iter()
        .map(header_text)
        .collect();
    if headers.iter().all(String::is_empty) {
        return Err(ImportError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mapping = match mapping {
        Some(m) => m.clone(),
        None => Mapping::automap(&headers),
    };
    let cols = resolve(path, &headers, &mapping)?;
    let mut columns: ColumnNames = Default::default();
    for &(idx, field) in &cols {
        columns[field as usize] = Some(headers[idx].clone());
    }
    let mut v = Validator {
        today,
        required: mapping.required.clone(),
        columns,
        seen: normalize::IdSet::with_capacity(estimated_rows),
        good: 0,
        bad: 0,
        warnings: 0,
    };
    let width = headers.len();
    // StringRecord validates UTF-8 once per record (the stream is UTF-8 by construction).
    let mut rec = csv::StringRecord::new();
    while rdr.read_record(&mut rec).map_err(|e| csv_error(path, e))? {
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        if rec.iter().all(|f| trim(f).is_empty()) {
            continue;
        }
        let mut item = ImportItem::Good(new_row(line));
        let ImportItem::Good(row) = &mut item else {
            continue;
        };
        if rec.len() > width && rec.iter().skip(width).any(|f| !trim(f).is_empty()) {
            row.warnings.push(RowProblem {
                line,
                column: None,
                value: None,
                reason: format!(
                    "this row has {} values but the header has {width} — a value probably contains the delimiter without quotes; quote that value or fix the row",
                    rec.len()
                ),
                severity: Severity::Error,
            });
        }
        for &(idx, field) in &cols {
            let Some(raw) = rec.get(idx).map(trim) else {
                continue;
            };
            if raw.is_empty() {
                continue;
            }
            v.set_value(line, field, raw, &mut row.original, &mut row.warnings);
        }
        if !v.finish(row) {
            reject(&mut item);
        }
        sink(item)?;
    }
    Ok(ImportSummary {
        format: "csv".into(),
        encoding,
        delimiter: Some(delimiter),
        headers,
        mapping,
        good_rows: v.good,
        bad_rows: v.bad,
        warnings: v.warnings,
    })
}

/// Turn one ndjson Patient into original demographics plus problems found on the way.
fn ndjson_row(v: &Validator, line: u64, text: &[u8]) -> (Demographics, Vec<RowProblem>, bool) {
    let mut problems = Vec::new();
    let json: Value = match serde_json::from_slice(text) {
        Ok(j) => j,
        Err(e) => {
            problems.push(RowProblem {
                line,
                column: None,
                value: None,
                reason: format!(
                    "this line is not valid JSON ({e}) — each line must be one FHIR Patient"
                ),
                severity: Severity::Error,
            });
            return (Demographics::default(), problems, false);
        }
    };
    let rtype = json.get("resourceType").and_then(Value::as_str);
    if rtype != Some("Patient") {
        problems.push(RowProblem {
            line,
            column: Some("resourceType".into()),
            value: rtype.map(str::to_string),
            reason: format!(
                "this line is a {}, not a Patient — each line must be one FHIR Patient",
                rtype.unwrap_or("JSON value without resourceType")
            ),
            severity: Severity::Error,
        });
        return (Demographics::default(), problems, false);
    }
    let mut original = from_patient(&json);
    if let Some(id) = patient_id(&json) {
        original.local_id = Some(id);
    }
    // Re-check the birth date with the same rules as CSV.
    original.birth_date = None;
    if let Some(raw) = json.get("birthDate").and_then(Value::as_str) {
        let raw = raw.trim();
        if !raw.is_empty() {
            v.set_value(line, Field::BirthDate, raw, &mut original, &mut problems);
        }
    }
    if original.sex.is_none()
        && let Some(raw) = json.get("gender").and_then(Value::as_str)
        && !raw.trim().is_empty()
    {
        v.set_value(line, Field::Sex, raw.trim(), &mut original, &mut problems);
    }
    (original, problems, true)
}

fn read_ndjson(
    path: &Path,
    opened: Opened,
    mapping: Option<&Mapping>,
    today: NaiveDate,
    sink: &mut Sink<'_>,
) -> Result<ImportSummary, ImportError> {
    let encoding = opened.encoding().to_string();
    let estimated_rows = opened.estimated_rows();
    let mapping = mapping.cloned().unwrap_or_default();
    let mut columns: ColumnNames = Default::default();
    for (f, name) in NDJSON_COLUMNS {
        columns[f as usize] = Some(name.to_string());
    }
    let mut v = Validator {
        today,
        required: mapping.required.clone(),
        columns,
        seen: normalize::IdSet::with_capacity(estimated_rows),
        good: 0,
        bad: 0,
        warnings: 0,
    };
    let mut reader = BufReader::with_capacity(256 * 1024, opened.reader);
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        line += 1;
        let text = buf.trim_ascii();
        if text.is_empty() {
            continue;
        }
        let (original, problems, parsed) = ndjson_row(&v, line, text);
        let item = if parsed {
            let mut row = new_row(line);
            row.original = original;
            row.warnings = problems;
            let good = v.finish(&mut row);
            let mut item = ImportItem::Good(row);
            if !good {
                reject(&mut item);
            }
            item
        } else {
            v.bad += 1;
            ImportItem::Bad {
                line,
                problems,
                original,
            }
        };
        sink(item)?;
    }
    Ok(ImportSummary {
        format: "ndjson".into(),
        encoding,
        delimiter: None,
        headers: Vec::new(),
        mapping,
        good_rows: v.good,
        bad_rows: v.bad,
        warnings: v.warnings,
    })
}

/// The headers and first `max_rows` rows of a file, with the detected delimiter and encoding and
/// the automapping, for a mapping table.
pub fn preview(path: &Path, max_rows: usize) -> Result<Preview, ImportError> {
    let opened = open(path)?;
    let encoding = opened.encoding().to_string();
    match opened.format {
        Format::Csv => {
            let delimiter = sniff::sniff_delimiter(&opened.sample);
            let mut rdr = csv_reader(opened, delimiter);
            let headers: Vec<String> = rdr
                .byte_headers()
                .map_err(|e| csv_error(path, e))?
                .iter()
                .map(header_text)
                .collect();
            let mut rows = Vec::new();
            let mut rec = csv::ByteRecord::new();
            while rows.len() < max_rows
                && rdr
                    .read_byte_record(&mut rec)
                    .map_err(|e| csv_error(path, e))?
            {
                rows.push(
                    rec.iter()
                        .map(|f| String::from_utf8_lossy(f).trim().to_string())
                        .collect(),
                );
            }
            Ok(Preview {
                format: "csv".into(),
                automapping: Mapping::automap(&headers),
                headers,
                rows,
                delimiter: Some(delimiter),
                encoding,
            })
        }
        Format::Ndjson => {
            let mut reader = BufReader::new(opened.reader);
            let mut people = Vec::new();
            let mut buf = Vec::new();
            while people.len() < max_rows {
                buf.clear();
                if reader.read_until(b'\n', &mut buf).map_err(io_err(path))? == 0 {
                    break;
                }
                let text = buf.trim_ascii();
                if text.is_empty() {
                    continue;
                }
                let mut d = match serde_json::from_slice::<Value>(text) {
                    Ok(j) => {
                        let mut d = from_patient(&j);
                        if let Some(id) = patient_id(&j) {
                            d.local_id = Some(id);
                        }
                        d
                    }
                    Err(_) => Demographics::default(),
                };
                d.iis_id = None;
                people.push(d);
            }
            let fields: Vec<Field> = Field::ALL
                .iter()
                .copied()
                .filter(|f| people.iter().any(|d| d.get(*f).is_some()))
                .collect();
            let rows = people
                .iter()
                .map(|d| {
                    fields
                        .iter()
                        .map(|f| d.get(*f).unwrap_or_default())
                        .collect()
                })
                .collect();
            Ok(Preview {
                format: "ndjson".into(),
                headers: fields.iter().map(|f| f.key().to_string()).collect(),
                rows,
                delimiter: None,
                encoding,
                automapping: Mapping::default(),
            })
        }
    }
}

/// Write problems as CSV with columns `line,column,value,reason,severity`.
pub fn write_problems_csv<'a>(
    path: &Path,
    problems: impl Iterator<Item = &'a RowProblem>,
) -> Result<(), ImportError> {
    let werr = |e: csv::Error| ImportError::Write {
        path: path.to_path_buf(),
        source: match e.into_kind() {
            csv::ErrorKind::Io(io) => io,
            other => io::Error::other(format!("{other:?}")),
        },
    };
    let mut w = csv::Writer::from_path(path).map_err(werr)?;
    w.write_record(["line", "column", "value", "reason", "severity"])
        .map_err(werr)?;
    for p in problems {
        let line = p.line.to_string();
        w.write_record([
            line.as_str(),
            p.column.as_deref().unwrap_or(""),
            p.value.as_deref().unwrap_or(""),
            p.reason.as_str(),
            p.severity.key(),
        ])
        .map_err(werr)?;
    }
    w.flush().map_err(|source| ImportError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests;
