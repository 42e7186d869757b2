//! Cohorts, their imported versions, rows and import problems.
//!
//! A cohort is identified by name; each import of a file creates a new version. Rows are keyed
//! by `(cohort, source_id)` and updated in place on re-import, which yields the difference
//! between versions: new rows, rows whose demographics changed (their previous match results are
//! cleared so they are matched again) and rows that left (candidates for Group removal).

use std::collections::HashMap;

use rusqlite::{OptionalExtension, Transaction, params};

use crate::domain::Demographics;

use super::{Ctx, Store, StoreError, audit, codec, now_text};

/// One problem found while importing a row (an error makes the row bad; a warning does not).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ProblemRow {
    pub line: u64,
    pub column: Option<String>,
    pub value: Option<String>,
    pub reason: String,
    /// `error` or `warning`.
    pub severity: String,
}

/// What a re-import changed compared with the cohort's previous version.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportDiff {
    pub new_rows: u64,
    pub changed_rows: u64,
    pub unchanged_rows: u64,
    pub left_rows: u64,
    /// Whether a previous version existed.
    pub reimport: bool,
}

/// A cohort as listed in the workspace.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CohortInfo {
    pub id: i64,
    pub name: String,
    pub current_version: Option<i64>,
    /// Rows present in the current version.
    pub active_rows: u64,
    pub created_at: String,
}

/// Metadata of an import, recorded on the version when the import finishes.
#[derive(Clone, Debug, Default)]
pub struct VersionMeta {
    /// Size and modification time of the imported file (see `engine::file_fingerprint`).
    pub fingerprint: String,
    pub format: String,
    pub encoding: String,
    pub mapping_json: String,
    pub good_rows: u64,
    pub bad_rows: u64,
    pub warnings: u64,
}

/// What a finished import wrote.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ImportDone {
    pub cohort_id: i64,
    pub version_id: i64,
    pub diff: ImportDiff,
}

/// An import in progress: one transaction, so an interrupted import leaves nothing behind.
pub struct ImportWriter<'a> {
    tx: Transaction<'a>,
    cohort_id: i64,
    version_id: i64,
    existing: HashMap<String, (i64, i64)>,
    diff: ImportDiff,
    buf_orig: String,
    buf_norm: String,
}

impl Store {
    /// Start importing `file_path` as a new version of the cohort `name` (created if new).
    pub fn begin_import(
        &mut self,
        name: &str,
        file_path: &str,
    ) -> Result<ImportWriter<'_>, StoreError> {
        let tx = self.tx("starting an import")?;
        let now = now_text();
        let existing_id: Option<i64> = tx
            .query_row("SELECT id FROM cohorts WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .ctx("looking up the cohort")?;
        let cohort_id = match existing_id {
            Some(id) => id,
            None => {
                tx.execute(
                    "INSERT INTO cohorts (name, created_at) VALUES (?1, ?2)",
                    params![name, now],
                )
                .ctx("creating the cohort")?;
                tx.last_insert_rowid()
            }
        };
        tx.execute(
            "INSERT INTO cohort_versions (cohort_id, imported_at, file_path, format, encoding,
                 mapping_json, good_rows, bad_rows, warnings)
             VALUES (?1, ?2, ?3, '', '', '', 0, 0, 0)",
            params![cohort_id, now, file_path],
        )
        .ctx("creating the cohort version")?;
        let version_id = tx.last_insert_rowid();
        let mut existing = HashMap::new();
        if existing_id.is_some() {
            let mut stmt = tx
                .prepare("SELECT source_id, id, demo_hash FROM rows WHERE cohort_id = ?1")
                .ctx("reading the previous version")?;
            let rows = stmt
                .query_map([cohort_id], |r| {
                    Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?)))
                })
                .ctx("reading the previous version")?;
            for row in rows {
                let (k, v) = row.ctx("reading the previous version")?;
                existing.insert(k, v);
            }
        }
        let reimport = existing_id.is_some();
        Ok(ImportWriter {
            tx,
            cohort_id,
            version_id,
            existing,
            diff: ImportDiff {
                reimport,
                ..Default::default()
            },
            buf_orig: String::with_capacity(256),
            buf_norm: String::with_capacity(256),
        })
    }

    /// All cohorts, oldest first.
    pub fn cohorts(&self) -> Result<Vec<CohortInfo>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT c.id, c.name, c.current_version, c.created_at,
                    (SELECT COUNT(*) FROM rows r WHERE r.cohort_id = c.id AND r.left_version IS NULL)
                 FROM cohorts c ORDER BY c.id",
            )
            .ctx("listing cohorts")?;
        let rows = stmt
            .query_map([], |r| {
                Ok(CohortInfo {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    current_version: r.get(2)?,
                    created_at: r.get(3)?,
                    active_rows: r.get::<_, i64>(4)? as u64,
                })
            })
            .ctx("listing cohorts")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("listing cohorts")
    }

    /// The cohort with this name, if any.
    pub fn cohort_by_name(&self, name: &str) -> Result<Option<CohortInfo>, StoreError> {
        Ok(self.cohorts()?.into_iter().find(|c| c.name == name))
    }

    /// Problems recorded for one cohort version, by line.
    pub fn import_problems(&self, version_id: i64) -> Result<Vec<ProblemRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT line, column_name, value, reason, severity FROM import_problems
                 WHERE version_id = ?1 ORDER BY line, id",
            )
            .ctx("reading import problems")?;
        let rows = stmt
            .query_map([version_id], |r| {
                Ok(ProblemRow {
                    line: r.get::<_, i64>(0)? as u64,
                    column: r.get(1)?,
                    value: r.get(2)?,
                    reason: r.get(3)?,
                    severity: r.get(4)?,
                })
            })
            .ctx("reading import problems")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("reading import problems")
    }

    /// The file fingerprint recorded by the cohort's current version.
    pub fn current_fingerprint(&self, cohort_id: i64) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT v.file_fingerprint FROM cohorts c JOIN cohort_versions v ON v.id = c.current_version
                 WHERE c.id = ?1",
                [cohort_id],
                |r| r.get(0),
            )
            .optional()
            .ctx("reading the cohort's last import")
    }

    /// Rows that left the cohort (absent from its current version), as `(source_id, version)`.
    pub fn left_rows(&self, cohort_id: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT source_id, left_version FROM rows
                 WHERE cohort_id = ?1 AND left_version IS NOT NULL ORDER BY id",
            )
            .ctx("reading rows that left")?;
        let rows = stmt
            .query_map([cohort_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .ctx("reading rows that left")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("reading rows that left")
    }

    /// The original (as typed) and normalized demographics of a row by source id.
    pub fn row_by_source_id(
        &self,
        cohort_id: i64,
        source_id: &str,
    ) -> Result<Option<(i64, Demographics, Demographics)>, StoreError> {
        let found: Option<(i64, String, String)> = self
            .conn
            .query_row(
                "SELECT id, original, normalized FROM rows WHERE cohort_id = ?1 AND source_id = ?2",
                params![cohort_id, source_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .ctx("reading a row")?;
        match found {
            None => Ok(None),
            Some((id, o, n)) => Ok(Some((id, codec::decode(&o)?, codec::decode(&n)?))),
        }
    }
}

impl ImportWriter<'_> {
    /// The version being written.
    pub fn version_id(&self) -> i64 {
        self.version_id
    }

    /// Record a good row (and its warnings).
    pub fn add_good(
        &mut self,
        line: u64,
        source_id: &str,
        original: &Demographics,
        normalized: &Demographics,
        warnings: &[ProblemRow],
    ) -> Result<(), StoreError> {
        codec::encode_into(original, &mut self.buf_orig);
        codec::encode_into(normalized, &mut self.buf_norm);
        let hash = codec::hash(&self.buf_norm);
        match self.existing.get(source_id).copied() {
            None => {
                self.tx
                    .prepare_cached(
                        "INSERT INTO rows (cohort_id, source_id, line, first_version, last_version,
                            demo_hash, original, normalized)
                         VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            self.cohort_id,
                            source_id,
                            line as i64,
                            self.version_id,
                            hash,
                            self.buf_orig,
                            self.buf_norm
                        ])
                    })
                    .ctx("saving a cohort row")?;
                self.diff.new_rows += 1;
            }
            Some((row_id, old_hash)) => {
                let left: Option<i64> = self
                    .tx
                    .prepare_cached("SELECT left_version FROM rows WHERE id = ?1")
                    .and_then(|mut s| s.query_row([row_id], |r| r.get(0)))
                    .ctx("reading a cohort row")?;
                self.tx
                    .prepare_cached(
                        "UPDATE rows SET line = ?2, last_version = ?3, left_version = NULL,
                            demo_hash = ?4, original = ?5, normalized = ?6 WHERE id = ?1",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            row_id,
                            line as i64,
                            self.version_id,
                            hash,
                            self.buf_orig,
                            self.buf_norm
                        ])
                    })
                    .ctx("updating a cohort row")?;
                if old_hash != hash {
                    // Demographics changed: the old match result no longer describes this row.
                    for sql in [
                        "DELETE FROM triage WHERE row_id = ?1",
                        "DELETE FROM candidates WHERE row_id = ?1",
                        "DELETE FROM row_issues WHERE row_id = ?1",
                    ] {
                        self.tx
                            .prepare_cached(sql)
                            .and_then(|mut s| s.execute([row_id]))
                            .ctx("clearing a changed row's match result")?;
                    }
                    audit(
                        &self.tx,
                        "system",
                        "row_changed",
                        "row",
                        Some(source_id),
                        Some(&format!("{{\"version\":{}}}", self.version_id)),
                        Some("demographics differ from the previous import; will be matched again"),
                    )?;
                    self.diff.changed_rows += 1;
                } else if left.is_some() {
                    self.diff.new_rows += 1;
                } else {
                    self.diff.unchanged_rows += 1;
                }
            }
        }
        for w in warnings {
            self.add_problem(w)?;
        }
        Ok(())
    }

    /// Record a bad row's problems.
    pub fn add_bad(&mut self, problems: &[ProblemRow]) -> Result<(), StoreError> {
        for p in problems {
            self.add_problem(p)?;
        }
        Ok(())
    }

    fn add_problem(&mut self, p: &ProblemRow) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO import_problems (version_id, line, column_name, value, reason, severity)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    self.version_id,
                    p.line as i64,
                    p.column,
                    p.value,
                    p.reason,
                    p.severity
                ])
            })
            .ctx("saving an import problem")?;
        Ok(())
    }

    /// Finish the import: mark rows that left, record the version, commit.
    pub fn finish(mut self, meta: &VersionMeta, actor: &str) -> Result<ImportDone, StoreError> {
        if self.diff.reimport {
            let left = self
                .tx
                .execute(
                    "UPDATE rows SET left_version = ?2
                     WHERE cohort_id = ?1 AND last_version < ?2 AND left_version IS NULL",
                    params![self.cohort_id, self.version_id],
                )
                .ctx("marking rows that left the cohort")?;
            self.diff.left_rows = left as u64;
        }
        self.tx
            .execute(
                "UPDATE cohort_versions SET format = ?2, encoding = ?3, mapping_json = ?4,
                    good_rows = ?5, bad_rows = ?6, warnings = ?7, new_rows = ?8,
                    changed_rows = ?9, left_rows = ?10, file_fingerprint = ?11 WHERE id = ?1",
                params![
                    self.version_id,
                    meta.format,
                    meta.encoding,
                    meta.mapping_json,
                    meta.good_rows as i64,
                    meta.bad_rows as i64,
                    meta.warnings as i64,
                    self.diff.new_rows as i64,
                    self.diff.changed_rows as i64,
                    self.diff.left_rows as i64,
                    meta.fingerprint
                ],
            )
            .ctx("recording the import")?;
        self.tx
            .execute(
                "UPDATE cohorts SET current_version = ?2 WHERE id = ?1",
                params![self.cohort_id, self.version_id],
            )
            .ctx("recording the import")?;
        let details = serde_json::json!({
            "version": self.version_id,
            "good_rows": meta.good_rows,
            "bad_rows": meta.bad_rows,
            "warnings": meta.warnings,
            "new_rows": self.diff.new_rows,
            "changed_rows": self.diff.changed_rows,
            "left_rows": self.diff.left_rows,
        })
        .to_string();
        audit(
            &self.tx,
            actor,
            if self.diff.reimport {
                "cohort_reimported"
            } else {
                "cohort_imported"
            },
            "cohort",
            Some(&self.cohort_id.to_string()),
            Some(&details),
            None,
        )?;
        let cohort_id = self.cohort_id;
        let version_id = self.version_id;
        let diff = self.diff.clone();
        self.tx.commit().ctx("committing the import")?;
        Ok(ImportDone {
            cohort_id,
            version_id,
            diff,
        })
    }
}
