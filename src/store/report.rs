//! Read-side summaries of a workspace: outcome counts, job summaries and CSV exports.

use std::path::Path;

use super::{Ctx, Store, StoreError};

/// Rows per triage outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutcomeCounts {
    pub auto_match: u64,
    pub review: u64,
    pub no_match: u64,
    pub error: u64,
}

/// One job in a report.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct JobSummary {
    pub id: i64,
    pub cohort: String,
    pub server: String,
    pub state: String,
    pub rows: u64,
    pub chunks: u64,
    pub chunks_done: u64,
    pub chunks_failed: u64,
    pub outcomes: OutcomeCounts,
    pub bad_lines: u64,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub last_error: Option<String>,
}

/// The whole workspace at a glance (`matchdesk report --json` prints this).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Report {
    /// Rows present in the current version of every cohort.
    pub rows: u64,
    /// Rows of the current versions that could not be imported.
    pub bad_rows: u64,
    /// Import warnings of the current versions (rows kept, a value dropped).
    pub warnings: u64,
    pub outcomes: OutcomeCounts,
    /// Review rows by reason.
    pub review_reasons: std::collections::BTreeMap<String, u64>,
    /// Rows not yet matched.
    pub pending: u64,
    /// Rows that left their cohort on re-import.
    pub left_rows: u64,
    pub jobs: Vec<JobSummary>,
}

/// One line of `results.csv`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ResultRow {
    pub source_id: String,
    pub outcome: String,
    pub best_candidate_id: Option<String>,
    pub best_score: Option<f64>,
    pub best_grade: Option<String>,
    pub candidates: u64,
}

fn count_outcomes(
    store: &Store,
    sql: &str,
    param: Option<i64>,
) -> Result<(OutcomeCounts, Vec<(String, u64)>), StoreError> {
    let mut stmt = store.conn.prepare_cached(sql).ctx("counting outcomes")?;
    let rows = stmt
        .query_map([param], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .ctx("counting outcomes")?;
    let mut counts = OutcomeCounts::default();
    let mut reasons = Vec::new();
    for row in rows {
        let (outcome, reason, n) = row.ctx("counting outcomes")?;
        let n = n.max(0) as u64;
        match outcome.as_str() {
            "auto_match" => counts.auto_match += n,
            "review" => {
                counts.review += n;
                reasons.push((reason.unwrap_or_default(), n));
            }
            "no_match" => counts.no_match += n,
            _ => counts.error += n,
        }
    }
    Ok((counts, reasons))
}

/// How far a job has come.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobProgress {
    pub total_rows: u64,
    /// Rows whose current outcome came from this job.
    pub done_rows: u64,
    pub outcomes: OutcomeCounts,
    /// Rows per best-score bin of width 0.05 (20 bins).
    pub histogram: Vec<u64>,
}

impl Store {
    /// Progress, outcome counts and the best-score histogram of one job.
    pub fn job_progress(&self, job_id: i64) -> Result<JobProgress, StoreError> {
        let total: i64 = self
            .conn
            .query_row(
                "SELECT COALESCE(SUM(row_count), 0) FROM chunks WHERE job_id = ?1",
                [job_id],
                |r| r.get(0),
            )
            .ctx("reading job progress")?;
        let (outcomes, _) = count_outcomes(
            self,
            "SELECT outcome, NULL, COUNT(*) FROM triage WHERE job_id = ?1 GROUP BY outcome",
            Some(job_id),
        )?;
        let mut histogram = vec![0u64; 20];
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT MIN(19, MAX(0, CAST(best_score * 20 AS INTEGER))), COUNT(*) FROM triage
                 WHERE job_id = ?1 AND best_score IS NOT NULL GROUP BY 1",
            )
            .ctx("reading the score histogram")?;
        let rows = stmt
            .query_map([job_id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .ctx("reading the score histogram")?;
        for row in rows {
            let (bin, n) = row.ctx("reading the score histogram")?;
            if let Some(slot) = histogram.get_mut(bin.clamp(0, 19) as usize) {
                *slot = n.max(0) as u64;
            }
        }
        let done = outcomes.auto_match + outcomes.review + outcomes.no_match + outcomes.error;
        Ok(JobProgress {
            total_rows: total.max(0) as u64,
            done_rows: done,
            outcomes,
            histogram,
        })
    }

    /// Counts per outcome and per job.
    pub fn report(&self) -> Result<Report, StoreError> {
        let q = |sql: &str| -> Result<u64, StoreError> {
            self.conn
                .query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
                .ctx("summarising the workspace")
        };
        let rows = q("SELECT COUNT(*) FROM rows WHERE left_version IS NULL")?;
        let left_rows = q("SELECT COUNT(*) FROM rows WHERE left_version IS NOT NULL")?;
        let bad_rows = q(
            "SELECT COUNT(DISTINCT p.version_id || ':' || p.line) FROM import_problems p
             JOIN cohorts c ON c.current_version = p.version_id WHERE p.severity = 'error'",
        )?;
        let warnings = q("SELECT COUNT(*) FROM import_problems p
             JOIN cohorts c ON c.current_version = p.version_id WHERE p.severity = 'warning'")?;
        let (outcomes, reasons) = count_outcomes(
            self,
            "SELECT t.outcome, t.reason, COUNT(*) FROM triage t JOIN rows r ON r.id = t.row_id
             WHERE r.left_version IS NULL AND ?1 IS NULL GROUP BY t.outcome, t.reason",
            None,
        )?;
        let pending = q("SELECT COUNT(*) FROM rows r WHERE r.left_version IS NULL
             AND NOT EXISTS (SELECT 1 FROM triage t WHERE t.row_id = r.id)")?;
        let mut jobs = Vec::new();
        for job in self.jobs(None)? {
            let chunks = self.chunks(job.id)?;
            let (job_outcomes, _) = count_outcomes(
                self,
                "SELECT outcome, reason, COUNT(*) FROM triage WHERE job_id = ?1 GROUP BY outcome, reason",
                Some(job.id),
            )?;
            let cohort: String = self
                .conn
                .query_row(
                    "SELECT name FROM cohorts WHERE id = ?1",
                    [job.cohort_id],
                    |r| r.get(0),
                )
                .ctx("summarising a job")?;
            let bad_lines = self.ingest_errors(job.id)?.len() as u64;
            jobs.push(JobSummary {
                id: job.id,
                cohort,
                server: job.server_url.clone(),
                state: job.state.key().to_string(),
                rows: chunks.iter().map(|c| c.row_count).sum(),
                chunks: chunks.len() as u64,
                chunks_done: chunks
                    .iter()
                    .filter(|c| {
                        matches!(
                            c.state,
                            crate::domain::ChunkState::Done | crate::domain::ChunkState::Ingested
                        )
                    })
                    .count() as u64,
                chunks_failed: chunks
                    .iter()
                    .filter(|c| c.state == crate::domain::ChunkState::Failed)
                    .count() as u64,
                outcomes: job_outcomes,
                bad_lines,
                created_at: job.created_at,
                finished_at: job.finished_at,
                last_error: job.last_error,
            });
        }
        let mut review_reasons = std::collections::BTreeMap::new();
        for (r, n) in reasons {
            *review_reasons.entry(r).or_insert(0) += n;
        }
        Ok(Report {
            rows,
            bad_rows,
            warnings,
            outcomes,
            review_reasons,
            pending,
            left_rows,
            jobs,
        })
    }

    /// One line per submitted row of the current cohort versions, in file order.
    pub fn results(&self) -> Result<Vec<ResultRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT r.source_id, t.outcome, t.best_iis_id, t.best_score, t.best_grade, t.candidates
                 FROM triage t JOIN rows r ON r.id = t.row_id
                 WHERE r.left_version IS NULL ORDER BY r.cohort_id, r.line, r.id",
            )
            .ctx("reading results")?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ResultRow {
                    source_id: r.get(0)?,
                    outcome: r.get(1)?,
                    best_candidate_id: r.get(2)?,
                    best_score: r.get(3)?,
                    best_grade: r.get(4)?,
                    candidates: r.get::<_, i64>(5)?.max(0) as u64,
                })
            })
            .ctx("reading results")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("reading results")
    }

    /// Write `results.csv` and `bad_rows.csv` into `dir`.
    pub fn export(&self, dir: &Path) -> Result<(), StoreError> {
        let err = |path: &Path, e: std::io::Error| StoreError::Export {
            path: path.to_path_buf(),
            source: e,
        };
        std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
        let results_path = dir.join("results.csv");
        let mut w = csv::Writer::from_path(&results_path)
            .map_err(|e| err(&results_path, std::io::Error::other(e)))?;
        w.write_record([
            "source_id",
            "outcome",
            "best_candidate_id",
            "best_score",
            "best_grade",
            "candidates",
        ])
        .map_err(|e| err(&results_path, std::io::Error::other(e)))?;
        for r in self.results()? {
            w.write_record([
                r.source_id.as_str(),
                r.outcome.as_str(),
                r.best_candidate_id.as_deref().unwrap_or(""),
                &r.best_score.map(|s| format!("{s:.4}")).unwrap_or_default(),
                r.best_grade.as_deref().unwrap_or(""),
                &r.candidates.to_string(),
            ])
            .map_err(|e| err(&results_path, std::io::Error::other(e)))?;
        }
        w.flush().map_err(|e| err(&results_path, e))?;

        let bad_path = dir.join("bad_rows.csv");
        let mut w = csv::Writer::from_path(&bad_path)
            .map_err(|e| err(&bad_path, std::io::Error::other(e)))?;
        w.write_record(["cohort", "line", "column", "value", "reason", "severity"])
            .map_err(|e| err(&bad_path, std::io::Error::other(e)))?;
        for c in self.cohorts()? {
            let Some(v) = c.current_version else { continue };
            for p in self.import_problems(v)? {
                w.write_record([
                    c.name.as_str(),
                    &p.line.to_string(),
                    p.column.as_deref().unwrap_or(""),
                    p.value.as_deref().unwrap_or(""),
                    p.reason.as_str(),
                    p.severity.as_str(),
                ])
                .map_err(|e| err(&bad_path, std::io::Error::other(e)))?;
            }
        }
        w.flush().map_err(|e| err(&bad_path, e))?;
        Ok(())
    }
}
