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
    /// Rows of the previous version that are bad in this file: kept as they were (not counted as
    /// having left), so a typo in a new export does not propose a Group removal.
    pub now_bad_rows: u64,
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
    /// Bad rows of the current version.
    pub bad_rows: u64,
    /// How many times a file was imported into it.
    pub versions: u64,
    pub last_imported_at: Option<String>,
    /// The file the current version came from.
    pub file_path: Option<String>,
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

/// A good row encoded for storage. Building it is pure computation, so an importer can do it on
/// another thread while the writer inserts the previous batch.
#[derive(Clone, Debug)]
pub struct EncodedRow {
    pub line: u64,
    pub source_id: String,
    original: String,
    normalized: String,
    hash: i64,
}

impl EncodedRow {
    pub fn new(
        line: u64,
        source_id: String,
        original: &Demographics,
        normalized: &Demographics,
    ) -> EncodedRow {
        let mut o = String::with_capacity(160);
        let mut n = String::with_capacity(160);
        codec::encode_into(original, &mut o);
        codec::encode_into(normalized, &mut n);
        let hash = codec::hash(&n);
        EncodedRow {
            line,
            source_id,
            original: o,
            normalized: n,
            hash,
        }
    }
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
    /// The previous version's rows by [`id_key`] of their source id: `(row id, demographics hash)`.
    existing: HashMap<u128, (i64, i64)>,
    diff: ImportDiff,
    buf_orig: String,
    buf_norm: String,
    /// New rows waiting to be inserted [`INSERT_GROUP`] at a time.
    pending: Vec<EncodedRow>,
}

/// A 128-bit key for a source id, from two independent 64-bit hashes (SipHash-1-3 and
/// FNV-1a). Keeping a million of these instead of the ids themselves saves ~100 MB on a
/// re-import; a false match needs both hashes to collide (about 1 in 10^25 for a million ids).
fn id_key(id: &str) -> u128 {
    use std::hash::{Hash, Hasher};
    let mut sip = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut sip);
    (u128::from(sip.finish()) << 64) | u128::from(codec::hash(id) as u64)
}

/// New rows per multi-row `INSERT` (fewer statement executions; 8 parameters each).
const INSERT_GROUP: usize = 64;

fn insert_sql(n: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO rows (cohort_id, source_id, line, first_version, last_version, demo_hash, original, normalized) VALUES ",
    );
    for i in 0..n {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?,?,?)");
    }
    sql
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
                existing.insert(id_key(&k), v);
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
            pending: Vec::with_capacity(INSERT_GROUP),
        })
    }

    /// All cohorts, oldest first.
    pub fn cohorts(&self) -> Result<Vec<CohortInfo>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT c.id, c.name, c.current_version, c.created_at,
                    (SELECT COUNT(*) FROM rows r WHERE r.cohort_id = c.id AND r.left_version IS NULL),
                    v.bad_rows, v.imported_at, v.file_path,
                    (SELECT COUNT(*) FROM cohort_versions x WHERE x.cohort_id = c.id)
                 FROM cohorts c LEFT JOIN cohort_versions v ON v.id = c.current_version
                 ORDER BY c.id",
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
                    bad_rows: r.get::<_, Option<i64>>(5)?.unwrap_or(0).max(0) as u64,
                    last_imported_at: r.get(6)?,
                    file_path: r.get(7)?,
                    versions: r.get::<_, i64>(8)?.max(0) as u64,
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
        let orig = std::mem::take(&mut self.buf_orig);
        let norm = std::mem::take(&mut self.buf_norm);
        let res = self.insert_row(line, source_id, &orig, &norm, hash, warnings);
        self.buf_orig = orig;
        self.buf_norm = norm;
        res
    }

    /// Record a row encoded with [`EncodedRow::new`] (and its warnings). New rows are inserted
    /// in groups; everything is written by [`ImportWriter::finish`].
    pub fn add_encoded(
        &mut self,
        row: EncodedRow,
        warnings: &[ProblemRow],
    ) -> Result<(), StoreError> {
        if self.existing.contains_key(&id_key(&row.source_id)) {
            self.insert_row(
                row.line,
                &row.source_id,
                &row.original,
                &row.normalized,
                row.hash,
                warnings,
            )
        } else {
            self.pending.push(row);
            self.diff.new_rows += 1;
            for w in warnings {
                self.add_problem(w)?;
            }
            if self.pending.len() >= INSERT_GROUP {
                self.flush_pending()?;
            }
            Ok(())
        }
    }

    fn flush_pending(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let version = self.version_id;
        let cohort = self.cohort_id;
        for group in self.pending.chunks(INSERT_GROUP) {
            let lines: Vec<i64> = group.iter().map(|r| r.line as i64).collect();
            let mut values: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(group.len() * 8);
            for (r, line) in group.iter().zip(&lines) {
                values.push(&cohort);
                values.push(&r.source_id);
                values.push(line);
                values.push(&version);
                values.push(&version);
                values.push(&r.hash);
                values.push(&r.original);
                values.push(&r.normalized);
            }
            self.tx
                .prepare_cached(&insert_sql(group.len()))
                .and_then(|mut st| st.execute(rusqlite::params_from_iter(values)))
                .ctx("saving cohort rows")?;
        }
        self.pending.clear();
        Ok(())
    }

    fn insert_row(
        &mut self,
        line: u64,
        source_id: &str,
        orig: &str,
        norm: &str,
        hash: i64,
        warnings: &[ProblemRow],
    ) -> Result<(), StoreError> {
        match self.existing.get(&id_key(source_id)).copied() {
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
                            orig,
                            norm
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
                            orig,
                            norm
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
    /// Record a bad row's problems. `source_id` is the row's own id when the file has one: if
    /// the previous version holds that row, it is kept as it was and counted as now bad.
    pub fn add_bad(
        &mut self,
        problems: &[ProblemRow],
        source_id: Option<&str>,
    ) -> Result<(), StoreError> {
        for p in problems {
            self.add_problem(p)?;
        }
        if let Some(sid) = source_id
            && let Some(&(row_id, _)) = self.existing.get(&id_key(sid))
        {
            let kept = self
                .tx
                .prepare_cached(
                    "UPDATE rows SET last_version = ?2 WHERE id = ?1 AND last_version < ?2",
                )
                .and_then(|mut st| st.execute(params![row_id, self.version_id]))
                .ctx("keeping a row that is bad in the new file")?;
            if kept > 0 {
                self.diff.now_bad_rows += 1;
            }
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
    pub fn finish(self, meta: &VersionMeta, actor: &str) -> Result<ImportDone, StoreError> {
        self.finish_inner(meta, actor, true)
    }

    /// Compute everything [`Self::finish`] would (the difference to the previous version
    /// included), then roll back: the workspace is left exactly as it was. Used to show a
    /// re-import's difference before it is applied.
    pub fn finish_dry_run(self, meta: &VersionMeta, actor: &str) -> Result<ImportDone, StoreError> {
        self.finish_inner(meta, actor, false)
    }

    fn finish_inner(
        mut self,
        meta: &VersionMeta,
        actor: &str,
        commit: bool,
    ) -> Result<ImportDone, StoreError> {
        self.flush_pending()?;
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
        if commit {
            self.tx.commit().ctx("committing the import")?;
        } else {
            self.tx.rollback().ctx("discarding a trial import")?;
        }
        Ok(ImportDone {
            cohort_id,
            version_id,
            diff,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Demographics;

    fn person(i: usize) -> Demographics {
        Demographics {
            given: Some(format!("G{i}")),
            family: Some("FAMILY".into()),
            local_id: Some(format!("ID{i}")),
            ..Default::default()
        }
    }

    fn import(
        store: &mut Store,
        ids: impl Iterator<Item = usize>,
        change: Option<usize>,
    ) -> ImportDone {
        let mut w = store.begin_import("c", "file.csv").unwrap();
        for i in ids {
            let mut d = person(i);
            if Some(i) == change {
                d.given = Some("CHANGED".into());
            }
            w.add_encoded(EncodedRow::new(i as u64 + 1, format!("ID{i}"), &d, &d), &[])
                .unwrap();
        }
        w.finish(&VersionMeta::default(), "test").unwrap()
    }

    #[test]
    fn every_row_is_written_whatever_the_group_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("ws.db")).unwrap();
        // 150 = two full groups of 64 and a remainder of 22.
        let done = import(&mut store, 0..150, None);
        assert_eq!(done.diff.new_rows, 150);
        let c = store.cohort_by_name("c").unwrap().unwrap();
        assert_eq!(c.active_rows, 150);
        let (_, original, _) = store.row_by_source_id(c.id, "ID149").unwrap().unwrap();
        assert_eq!(original, person(149));
    }

    #[test]
    fn reimport_reports_new_changed_unchanged_and_left() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("ws.db")).unwrap();
        import(&mut store, 0..100, None);
        // Drop 0..10, change 50, add 100..105.
        let done = import(&mut store, 10..105, Some(50));
        assert!(done.diff.reimport);
        assert_eq!(done.diff.left_rows, 10);
        assert_eq!(done.diff.changed_rows, 1);
        assert_eq!(done.diff.new_rows, 5);
        assert_eq!(done.diff.unchanged_rows, 89);
        let c = store.cohort_by_name("c").unwrap().unwrap();
        assert_eq!(c.active_rows, 95);
        assert_eq!(store.left_rows(c.id).unwrap().len(), 10);
        // A row that left and comes back counts as new again.
        let done = import(&mut store, 0..105, None);
        assert_eq!(done.diff.new_rows, 10);
        assert_eq!(done.diff.changed_rows, 1, "row 50 changed back");
        assert_eq!(store.left_rows(c.id).unwrap().len(), 0);
    }

    #[test]
    fn a_row_that_turns_bad_is_kept_not_counted_as_left() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("ws.db")).unwrap();
        import(&mut store, 0..10, None);
        let mut w = store.begin_import("c", "v2.csv").unwrap();
        for i in 1..10 {
            let d = person(i);
            w.add_encoded(EncodedRow::new(i as u64, format!("ID{i}"), &d, &d), &[])
                .unwrap();
        }
        let problem = ProblemRow {
            line: 2,
            column: Some("DOB".into()),
            value: Some("02/30/2019".into()),
            reason: "not a real date".into(),
            severity: "error".into(),
        };
        w.add_bad(std::slice::from_ref(&problem), Some("ID0"))
            .unwrap();
        // A bad row with an unknown id changes nothing.
        w.add_bad(std::slice::from_ref(&problem), Some("NEW"))
            .unwrap();
        let done = w.finish(&VersionMeta::default(), "t").unwrap();
        assert_eq!(done.diff.now_bad_rows, 1);
        assert_eq!(done.diff.left_rows, 0);
        let c = store.cohort_by_name("c").unwrap().unwrap();
        assert_eq!(c.active_rows, 10);
        assert_eq!(store.import_problems(done.version_id).unwrap().len(), 2);
    }

    #[test]
    fn an_interrupted_import_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("ws.db")).unwrap();
        {
            let mut w = store.begin_import("c", "f.csv").unwrap();
            for i in 0..200 {
                let d = person(i);
                w.add_encoded(EncodedRow::new(i as u64, format!("ID{i}"), &d, &d), &[])
                    .unwrap();
            }
            // dropped without finish(): the transaction rolls back
        }
        assert!(store.cohorts().unwrap().is_empty());
    }
}
