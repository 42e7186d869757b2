//! Match jobs, their chunks, ingested candidates and triage outcomes.
//!
//! A job is a run of a cohort's unmatched rows against one server; it is split into chunks, one
//! kick-off each. Every chunk transition is a transaction with an audit entry, and ingest of a
//! file is done in batches that replace a row's candidates whole, so re-ingesting a file after a
//! crash never duplicates anything.

use rusqlite::{OptionalExtension, Transaction, params};

use crate::domain::{
    Candidate, ChunkState, Demographics, JobState, MatchGrade, MatchOptions, Outcome, ReviewReason,
    RowIssue,
};

use super::{Ctx, Store, StoreError, audit, codec, now_text};

/// A match job as stored.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct JobInfo {
    pub id: i64,
    pub cohort_id: i64,
    pub server_url: String,
    pub options: MatchOptions,
    pub chunk_size: usize,
    pub state: JobState,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
    pub last_error: Option<String>,
}

/// One output file of a chunk's manifest.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ChunkFile {
    pub seq: i64,
    pub url: String,
    pub done: bool,
    /// Lines ingested so far (a resumed download skips them).
    pub lines: u64,
}

/// A chunk (one kick-off) as stored.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ChunkInfo {
    pub id: i64,
    pub job_id: i64,
    pub state: ChunkState,
    pub status_url: Option<String>,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub progress: Option<String>,
    pub manifest_json: Option<String>,
    pub row_count: u64,
    pub files: Vec<ChunkFile>,
}

/// A row to submit in a chunk.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkPatient {
    pub row_id: i64,
    pub source_id: String,
    pub normalized: Demographics,
}

/// The ingested result for one row.
#[derive(Clone, Debug, PartialEq)]
pub struct RowResult {
    pub row_id: i64,
    pub candidates: Vec<Candidate>,
    pub issues: Vec<RowIssue>,
    pub outcome: Outcome,
}

pub(crate) fn outcome_to_db(o: Outcome) -> (&'static str, Option<&'static str>) {
    match o {
        Outcome::AutoMatch => ("auto_match", None),
        Outcome::Review(r) => ("review", Some(r.key())),
        Outcome::NoMatch => ("no_match", None),
        Outcome::Error => ("error", None),
    }
}

pub(crate) fn outcome_from_db(outcome: &str, reason: Option<&str>) -> Option<Outcome> {
    Some(match outcome {
        "auto_match" => Outcome::AutoMatch,
        "review" => Outcome::Review(ReviewReason::from_key(reason?)?),
        "no_match" => Outcome::NoMatch,
        "error" => Outcome::Error,
        _ => return None,
    })
}

fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobInfo> {
    let options: String = r.get(3)?;
    let state: String = r.get(5)?;
    Ok(JobInfo {
        id: r.get(0)?,
        cohort_id: r.get(1)?,
        server_url: r.get(2)?,
        options: serde_json::from_str(&options).unwrap_or_default(),
        chunk_size: r.get::<_, i64>(4)?.max(1) as usize,
        state: JobState::from_key(&state).unwrap_or(JobState::Failed),
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
        finished_at: r.get(8)?,
        last_error: r.get(9)?,
    })
}

const JOB_COLS: &str = "id, cohort_id, server_url, options_json, chunk_size, state, created_at, \
                        updated_at, finished_at, last_error";

impl Store {
    /// Create a job for the cohort's rows that have no outcome yet and are not already in a
    /// running job, split into chunks of `chunk_size`. `None` when there is nothing to match.
    pub fn create_job(
        &mut self,
        cohort_id: i64,
        server_url: &str,
        options: &MatchOptions,
        chunk_size: usize,
        actor: &str,
    ) -> Result<Option<JobInfo>, StoreError> {
        let chunk_size = chunk_size.max(1);
        let tx = self.tx("creating a match job")?;
        let row_ids: Vec<i64> = {
            let mut stmt = tx
                .prepare(
                    "SELECT r.id FROM rows r
                     WHERE r.cohort_id = ?1 AND r.left_version IS NULL
                       AND NOT EXISTS (SELECT 1 FROM triage t WHERE t.row_id = r.id)
                       AND NOT EXISTS (SELECT 1 FROM chunk_rows cr
                            JOIN chunks c ON c.id = cr.chunk_id
                            JOIN jobs j ON j.id = c.job_id
                            WHERE cr.row_id = r.id AND j.state = 'running')
                     ORDER BY r.line, r.id",
                )
                .ctx("choosing rows to match")?;
            let ids = stmt
                .query_map([cohort_id], |r| r.get(0))
                .ctx("choosing rows to match")?;
            ids.collect::<rusqlite::Result<Vec<_>>>()
                .ctx("choosing rows to match")?
        };
        if row_ids.is_empty() {
            return Ok(None);
        }
        let now = now_text();
        let options_json = serde_json::to_string(options).unwrap_or_else(|_| "{}".to_string());
        tx.execute(
            "INSERT INTO jobs (cohort_id, server_url, options_json, chunk_size, state, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?5)",
            params![cohort_id, server_url, options_json, chunk_size as i64, now],
        )
        .ctx("creating a match job")?;
        let job_id = tx.last_insert_rowid();
        for part in row_ids.chunks(chunk_size) {
            tx.execute(
                "INSERT INTO chunks (job_id, state, row_count, updated_at) VALUES (?1, 'pending', ?2, ?3)",
                params![job_id, part.len() as i64, now],
            )
            .ctx("creating a chunk")?;
            let chunk_id = tx.last_insert_rowid();
            let mut ins = tx
                .prepare_cached("INSERT INTO chunk_rows (chunk_id, row_id) VALUES (?1, ?2)")
                .ctx("assigning rows to a chunk")?;
            for id in part {
                ins.execute(params![chunk_id, id])
                    .ctx("assigning rows to a chunk")?;
            }
        }
        let details = serde_json::json!({
            "cohort": cohort_id, "rows": row_ids.len(), "chunk_size": chunk_size,
            "chunks": row_ids.len().div_ceil(chunk_size), "options": options,
        })
        .to_string();
        audit(
            &tx,
            actor,
            "job_created",
            "job",
            Some(&job_id.to_string()),
            Some(&details),
            Some(server_url),
        )?;
        let job = tx
            .query_row(
                &format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1"),
                [job_id],
                job_from_row,
            )
            .ctx("reading the new job")?;
        tx.commit().ctx("creating a match job")?;
        Ok(Some(job))
    }

    /// Jobs, newest first; only those of one cohort when given.
    pub fn jobs(&self, cohort_id: Option<i64>) -> Result<Vec<JobInfo>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {JOB_COLS} FROM jobs WHERE ?1 IS NULL OR cohort_id = ?1 ORDER BY id DESC"
            ))
            .ctx("listing jobs")?;
        let rows = stmt
            .query_map([cohort_id], job_from_row)
            .ctx("listing jobs")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("listing jobs")
    }

    /// One job.
    pub fn job(&self, job_id: i64) -> Result<JobInfo, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1"),
                [job_id],
                job_from_row,
            )
            .optional()
            .ctx("reading a job")?
            .ok_or_else(|| {
                StoreError::NotFound(format!("there is no match job {job_id} in this workspace"))
            })
    }

    /// The chunks of a job with their files, in order.
    pub fn chunks(&self, job_id: i64) -> Result<Vec<ChunkInfo>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, job_id, state, status_url, attempts, last_error, progress, manifest_json, row_count
                 FROM chunks WHERE job_id = ?1 ORDER BY id",
            )
            .ctx("listing chunks")?;
        let rows = stmt
            .query_map([job_id], |r| {
                let state: String = r.get(2)?;
                Ok(ChunkInfo {
                    id: r.get(0)?,
                    job_id: r.get(1)?,
                    state: ChunkState::from_key(&state).unwrap_or(ChunkState::Failed),
                    status_url: r.get(3)?,
                    attempts: r.get::<_, i64>(4)?.max(0) as u32,
                    last_error: r.get(5)?,
                    progress: r.get(6)?,
                    manifest_json: r.get(7)?,
                    row_count: r.get::<_, i64>(8)?.max(0) as u64,
                    files: Vec::new(),
                })
            })
            .ctx("listing chunks")?;
        let mut chunks = rows
            .collect::<rusqlite::Result<Vec<_>>>()
            .ctx("listing chunks")?;
        let mut fstmt = self
            .conn
            .prepare_cached(
                "SELECT seq, url, done, lines FROM chunk_files WHERE chunk_id = ?1 ORDER BY seq",
            )
            .ctx("listing chunk files")?;
        for c in &mut chunks {
            let files = fstmt
                .query_map([c.id], |r| {
                    Ok(ChunkFile {
                        seq: r.get(0)?,
                        url: r.get(1)?,
                        done: r.get::<_, i64>(2)? != 0,
                        lines: r.get::<_, i64>(3)?.max(0) as u64,
                    })
                })
                .ctx("listing chunk files")?;
            c.files = files
                .collect::<rusqlite::Result<Vec<_>>>()
                .ctx("listing chunk files")?;
        }
        Ok(chunks)
    }

    /// The rows of a chunk with their normalized demographics.
    pub fn chunk_patients(&self, chunk_id: i64) -> Result<Vec<ChunkPatient>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT r.id, r.source_id, r.normalized FROM chunk_rows cr JOIN rows r ON r.id = cr.row_id
                 WHERE cr.chunk_id = ?1 ORDER BY r.line, r.id",
            )
            .ctx("reading a chunk's rows")?;
        let rows = stmt
            .query_map([chunk_id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .ctx("reading a chunk's rows")?;
        let mut out = Vec::new();
        for row in rows {
            let (row_id, source_id, norm) = row.ctx("reading a chunk's rows")?;
            out.push(ChunkPatient {
                row_id,
                source_id,
                normalized: codec::decode(&norm)?,
            });
        }
        Ok(out)
    }

    fn chunk_update(
        &mut self,
        chunk_id: i64,
        doing: &str,
        f: impl FnOnce(&Transaction<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let tx = self.tx(doing)?;
        f(&tx)?;
        tx.execute(
            "UPDATE chunks SET updated_at = ?2 WHERE id = ?1",
            params![chunk_id, now_text()],
        )
        .ctx(doing)?;
        tx.commit().ctx(doing)
    }

    /// The kick-off was accepted: remember where to poll.
    pub fn chunk_submitted(&mut self, chunk_id: i64, status_url: &str) -> Result<(), StoreError> {
        self.chunk_update(chunk_id, "recording a submitted chunk", |tx| {
            tx.execute(
                "UPDATE chunks SET state = 'submitted', status_url = ?2, submitted_at = ?3,
                    last_error = NULL, progress = NULL WHERE id = ?1",
                params![chunk_id, status_url, now_text()],
            )
            .ctx("recording a submitted chunk")?;
            audit(
                tx,
                "system",
                "chunk_submitted",
                "chunk",
                Some(&chunk_id.to_string()),
                None,
                None,
            )
        })
    }

    /// Record a failed attempt (the chunk stays in its state for a retry).
    pub fn chunk_attempt_failed(&mut self, chunk_id: i64, error: &str) -> Result<u32, StoreError> {
        let mut attempts = 0;
        self.chunk_update(chunk_id, "recording a failed attempt", |tx| {
            attempts = tx
                .query_row(
                    "UPDATE chunks SET attempts = attempts + 1, last_error = ?2 WHERE id = ?1 RETURNING attempts",
                    params![chunk_id, error],
                    |r| r.get::<_, i64>(0),
                )
                .ctx("recording a failed attempt")? as u32;
            Ok(())
        })?;
        Ok(attempts)
    }

    /// The server no longer knows the chunk's job (404 on status): submit it again.
    pub fn chunk_reset(&mut self, chunk_id: i64, why: &str) -> Result<(), StoreError> {
        self.chunk_update(chunk_id, "resetting a chunk", |tx| {
            tx.execute(
                "UPDATE chunks SET state = 'pending', status_url = NULL, manifest_json = NULL,
                    progress = NULL, last_error = ?2, attempts = attempts + 1 WHERE id = ?1",
                params![chunk_id, why],
            )
            .ctx("resetting a chunk")?;
            tx.execute("DELETE FROM chunk_files WHERE chunk_id = ?1", [chunk_id])
                .ctx("resetting a chunk")?;
            audit(
                tx,
                "system",
                "chunk_reset",
                "chunk",
                Some(&chunk_id.to_string()),
                None,
                Some(why),
            )
        })
    }

    /// The server said the chunk is too large (413): keep the first `keep` rows in this chunk and
    /// move the rest to a new pending chunk of the same job. Returns the new chunk's id.
    pub fn split_chunk(&mut self, chunk_id: i64, keep: usize) -> Result<i64, StoreError> {
        let keep = keep.max(1);
        let patients = self.chunk_patients(chunk_id)?;
        let tx = self.tx("splitting a chunk")?;
        let job_id: i64 = tx
            .query_row("SELECT job_id FROM chunks WHERE id = ?1", [chunk_id], |r| {
                r.get(0)
            })
            .ctx("splitting a chunk")?;
        let now = now_text();
        let moved = &patients[keep.min(patients.len())..];
        tx.execute(
            "INSERT INTO chunks (job_id, state, row_count, updated_at) VALUES (?1, 'pending', ?2, ?3)",
            params![job_id, moved.len() as i64, now],
        )
        .ctx("splitting a chunk")?;
        let new_id = tx.last_insert_rowid();
        for p in moved {
            tx.execute(
                "UPDATE chunk_rows SET chunk_id = ?1 WHERE chunk_id = ?2 AND row_id = ?3",
                params![new_id, chunk_id, p.row_id],
            )
            .ctx("splitting a chunk")?;
        }
        tx.execute(
            "UPDATE chunks SET row_count = ?2, updated_at = ?3 WHERE id = ?1",
            params![chunk_id, (patients.len() - moved.len()) as i64, now],
        )
        .ctx("splitting a chunk")?;
        audit(
            &tx,
            "system",
            "chunk_split",
            "chunk",
            Some(&chunk_id.to_string()),
            Some(&format!(
                "{{\"kept\":{},\"moved\":{},\"new_chunk\":{new_id}}}",
                patients.len() - moved.len(),
                moved.len()
            )),
            Some("the server answered 413 (request too large)"),
        )?;
        tx.commit().ctx("splitting a chunk")?;
        Ok(new_id)
    }

    /// Server progress text while polling (no audit entry: it changes often).
    pub fn chunk_progress(&mut self, chunk_id: i64, text: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE chunks SET progress = ?2, updated_at = ?3 WHERE id = ?1",
                params![chunk_id, text, now_text()],
            )
            .ctx("saving progress")?;
        Ok(())
    }

    /// The manifest arrived: record it and its files (a fresh manifest replaces file URLs but
    /// keeps how far each file was ingested).
    pub fn chunk_manifest(
        &mut self,
        chunk_id: i64,
        manifest_json: &str,
        urls: &[String],
    ) -> Result<(), StoreError> {
        self.chunk_update(chunk_id, "recording a manifest", |tx| {
            tx.execute(
                "UPDATE chunks SET state = 'downloading', manifest_json = ?2 WHERE id = ?1",
                params![chunk_id, manifest_json],
            )
            .ctx("recording a manifest")?;
            for (i, url) in urls.iter().enumerate() {
                tx.execute(
                    "INSERT INTO chunk_files (chunk_id, seq, url) VALUES (?1, ?2, ?3)
                     ON CONFLICT(chunk_id, seq) DO UPDATE SET url = excluded.url",
                    params![chunk_id, i as i64, url],
                )
                .ctx("recording a manifest")?;
            }
            audit(
                tx,
                "system",
                "chunk_manifest",
                "chunk",
                Some(&chunk_id.to_string()),
                Some(&format!("{{\"files\":{}}}", urls.len())),
                None,
            )
        })
    }

    /// Store a batch of ingested results and bad lines from one file, and how far the file got.
    /// A row's candidates, issues and outcome are replaced whole, so this is idempotent.
    pub fn ingest_batch(
        &mut self,
        job_id: i64,
        chunk_id: i64,
        file_seq: i64,
        lines_done: u64,
        results: &[RowResult],
        bad_lines: &[(u64, String)],
    ) -> Result<(), StoreError> {
        let tx = self.tx("saving match results")?;
        let now = now_text();
        write_results(&tx, job_id, results, &now)?;
        for (line, msg) in bad_lines {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO ingest_errors (chunk_id, file_seq, line, message) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![chunk_id, file_seq, *line as i64, msg]))
            .ctx("saving a bad line")?;
        }
        tx.prepare_cached(
            "UPDATE chunk_files SET lines = MAX(lines, ?3) WHERE chunk_id = ?1 AND seq = ?2",
        )
        .and_then(|mut s| s.execute(params![chunk_id, file_seq, lines_done as i64]))
        .ctx("saving download progress")?;
        tx.commit().ctx("saving match results")
    }

    /// A file was ingested completely.
    pub fn file_done(
        &mut self,
        chunk_id: i64,
        file_seq: i64,
        lines: u64,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE chunk_files SET done = 1, lines = ?3 WHERE chunk_id = ?1 AND seq = ?2",
                params![chunk_id, file_seq, lines as i64],
            )
            .ctx("marking a file ingested")?;
        Ok(())
    }

    /// All files of a chunk are in: rows the server said nothing about become errors; the chunk
    /// becomes `ingested`. Returns how many rows had no result.
    pub fn finish_chunk(&mut self, job_id: i64, chunk_id: i64) -> Result<u64, StoreError> {
        let tx = self.tx("finishing a chunk")?;
        let missing: Vec<i64> = {
            let mut stmt = tx
                .prepare(
                    "SELECT cr.row_id FROM chunk_rows cr
                     WHERE cr.chunk_id = ?1 AND NOT EXISTS
                        (SELECT 1 FROM triage t WHERE t.row_id = cr.row_id AND t.job_id = ?2)",
                )
                .ctx("finishing a chunk")?;
            let ids = stmt
                .query_map(params![chunk_id, job_id], |r| r.get(0))
                .ctx("finishing a chunk")?;
            ids.collect::<rusqlite::Result<Vec<_>>>()
                .ctx("finishing a chunk")?
        };
        let now = now_text();
        let missing_results: Vec<RowResult> = missing
            .iter()
            .map(|row_id| RowResult {
                row_id: *row_id,
                candidates: Vec::new(),
                issues: vec![RowIssue {
                    severity: "error".into(),
                    code: "not-found".into(),
                    text: "The server's results did not include this patient. Run the match again to resubmit it.".into(),
                }],
                outcome: Outcome::Error,
            })
            .collect();
        write_results(&tx, job_id, &missing_results, &now)?;
        tx.execute(
            "UPDATE chunks SET state = 'ingested', progress = NULL, updated_at = ?2 WHERE id = ?1",
            params![chunk_id, now],
        )
        .ctx("finishing a chunk")?;
        audit(
            &tx,
            "system",
            "chunk_ingested",
            "chunk",
            Some(&chunk_id.to_string()),
            Some(&format!("{{\"rows_without_result\":{}}}", missing.len())),
            None,
        )?;
        tx.commit().ctx("finishing a chunk")?;
        Ok(missing.len() as u64)
    }

    /// Move a chunk to `state` (done, failed, cancelled) with an optional error.
    pub fn set_chunk_state(
        &mut self,
        chunk_id: i64,
        state: ChunkState,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.chunk_update(chunk_id, "updating a chunk", |tx| {
            tx.execute(
                "UPDATE chunks SET state = ?2, last_error = COALESCE(?3, last_error) WHERE id = ?1",
                params![chunk_id, state.key(), error],
            )
            .ctx("updating a chunk")?;
            audit(
                tx,
                "system",
                &format!("chunk_{}", state.key()),
                "chunk",
                Some(&chunk_id.to_string()),
                None,
                error,
            )
        })
    }

    /// Decide a job's final state from its chunks and record it.
    pub fn finish_job(&mut self, job_id: i64) -> Result<JobState, StoreError> {
        let chunks = self.chunks(job_id)?;
        let any_failed = chunks.iter().any(|c| c.state == ChunkState::Failed);
        let any_cancelled = chunks.iter().any(|c| c.state == ChunkState::Cancelled);
        let all_terminal = chunks.iter().all(|c| c.state.is_terminal());
        let error_rows: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM triage WHERE job_id = ?1 AND outcome = 'error'",
                [job_id],
                |r| r.get(0),
            )
            .ctx("summarising a job")?;
        let state = if !all_terminal {
            JobState::Running
        } else if any_cancelled {
            JobState::Cancelled
        } else if chunks.iter().all(|c| c.state == ChunkState::Failed) {
            JobState::Failed
        } else if any_failed || error_rows > 0 {
            JobState::CompletedWithErrors
        } else {
            JobState::Completed
        };
        let last_error = chunks.iter().rev().find_map(|c| {
            (c.state == ChunkState::Failed)
                .then(|| c.last_error.clone())
                .flatten()
        });
        self.set_job_state(job_id, state, last_error.as_deref())?;
        Ok(state)
    }

    /// Record a job state.
    pub fn set_job_state(
        &mut self,
        job_id: i64,
        state: JobState,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let tx = self.tx("updating a job")?;
        let now = now_text();
        let old: String = tx
            .query_row("SELECT state FROM jobs WHERE id = ?1", [job_id], |r| {
                r.get(0)
            })
            .ctx("updating a job")?;
        let finished = (state != JobState::Running).then_some(now.clone());
        tx.execute(
            "UPDATE jobs SET state = ?2, updated_at = ?3, finished_at = ?4, last_error = ?5 WHERE id = ?1",
            params![job_id, state.key(), now, finished, error],
        )
        .ctx("updating a job")?;
        if old != state.key() {
            audit(
                &tx,
                "system",
                &format!("job_{}", state.key()),
                "job",
                Some(&job_id.to_string()),
                None,
                error,
            )?;
        }
        tx.commit().ctx("updating a job")
    }

    /// Mark a job and its unfinished chunks cancelled (the engine sends the DELETEs).
    pub fn cancel_job(
        &mut self,
        job_id: i64,
        actor: &str,
        why: Option<&str>,
    ) -> Result<(), StoreError> {
        let tx = self.tx("cancelling a job")?;
        let now = now_text();
        tx.execute(
            "UPDATE chunks SET state = 'cancelled', updated_at = ?2
             WHERE job_id = ?1 AND state IN ('pending', 'submitted', 'downloading')",
            params![job_id, now],
        )
        .ctx("cancelling a job")?;
        tx.execute(
            "UPDATE jobs SET state = 'cancelled', updated_at = ?2, finished_at = ?2 WHERE id = ?1",
            params![job_id, now],
        )
        .ctx("cancelling a job")?;
        audit(
            &tx,
            actor,
            "job_cancelled",
            "job",
            Some(&job_id.to_string()),
            None,
            why,
        )?;
        tx.commit().ctx("cancelling a job")
    }

    /// For each submitted id, the row `(id, normalized demographics)` if the id belongs to this
    /// chunk. Point lookups, so ingest memory does not grow with the chunk.
    pub fn chunk_rows_by_source(
        &self,
        chunk_id: i64,
        ids: &[&str],
    ) -> Result<Vec<Option<(i64, Demographics)>>, StoreError> {
        let cohort_id: i64 = self
            .conn
            .prepare_cached(
                "SELECT j.cohort_id FROM chunks c JOIN jobs j ON j.id = c.job_id WHERE c.id = ?1",
            )
            .and_then(|mut s| s.query_row([chunk_id], |r| r.get(0)))
            .ctx("looking up a chunk's cohort")?;
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT r.id, r.normalized FROM rows r
                 WHERE r.cohort_id = ?1 AND r.source_id = ?2
                   AND EXISTS (SELECT 1 FROM chunk_rows cr WHERE cr.chunk_id = ?3 AND cr.row_id = r.id)",
            )
            .ctx("looking up submitted rows")?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let found: Option<(i64, String)> = stmt
                .query_row(params![cohort_id, id, chunk_id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
                .ctx("looking up submitted rows")?;
            out.push(match found {
                Some((row_id, norm)) => Some((row_id, codec::decode(&norm)?)),
                None => None,
            });
        }
        Ok(out)
    }

    /// Candidates stored for a row, by rank.
    pub fn candidates(&self, row_id: i64) -> Result<Vec<Candidate>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT rank, iis_id, score, grade, full_url, demographics FROM candidates
                 WHERE row_id = ?1 ORDER BY rank",
            )
            .ctx("reading candidates")?;
        let rows = stmt
            .query_map([row_id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<f64>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })
            .ctx("reading candidates")?;
        let mut out = Vec::new();
        for row in rows {
            let (rank, iis_id, score, grade, full_url, demo) = row.ctx("reading candidates")?;
            out.push(Candidate {
                rank: rank.max(0) as u32,
                iis_id,
                score,
                grade: grade.as_deref().and_then(MatchGrade::parse),
                full_url,
                demographics: codec::decode(&demo)?,
            });
        }
        Ok(out)
    }

    /// The current outcome of a row, if it has one.
    pub fn outcome(&self, row_id: i64) -> Result<Option<Outcome>, StoreError> {
        let found: Option<(String, Option<String>)> = self
            .conn
            .query_row(
                "SELECT outcome, reason FROM triage WHERE row_id = ?1",
                [row_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .ctx("reading an outcome")?;
        Ok(found.and_then(|(o, r)| outcome_from_db(&o, r.as_deref())))
    }

    /// The server whose answer triaged the row (its job's base URL), if it was triaged.
    pub fn triaged_by(&self, row_id: i64) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT j.server_url FROM triage t JOIN jobs j ON j.id = t.job_id WHERE t.row_id = ?1",
                [row_id],
                |r| r.get(0),
            )
            .optional()
            .ctx("reading which server triaged a row")
    }

    /// Issues the server reported for a row.
    pub fn row_issues(&self, row_id: i64) -> Result<Vec<RowIssue>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT severity, code, text FROM row_issues WHERE row_id = ?1 ORDER BY id",
            )
            .ctx("reading row issues")?;
        let rows = stmt
            .query_map([row_id], |r| {
                Ok(RowIssue {
                    severity: r.get(0)?,
                    code: r.get(1)?,
                    text: r.get(2)?,
                })
            })
            .ctx("reading row issues")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("reading row issues")
    }

    /// Lines of downloaded files that could not be read, as `(chunk, file, line, message)`.
    pub fn ingest_errors(&self, job_id: i64) -> Result<Vec<(i64, i64, u64, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT e.chunk_id, e.file_seq, e.line, e.message FROM ingest_errors e
                 JOIN chunks c ON c.id = e.chunk_id WHERE c.job_id = ?1 ORDER BY e.id",
            )
            .ctx("reading ingest errors")?;
        let rows = stmt
            .query_map([job_id], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get::<_, i64>(2)?.max(0) as u64,
                    r.get(3)?,
                ))
            })
            .ctx("reading ingest errors")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("reading ingest errors")
    }
}

/// Rows per multi-row statement in [`write_results`].
const GROUP: usize = 64;

/// Run `INSERT ... VALUES (..),(..)` for `values` (row-major, `cols` per row), 64 rows at a time.
fn insert_many(
    tx: &Transaction<'_>,
    head: &str,
    cols: usize,
    values: &[&dyn rusqlite::ToSql],
    doing: &str,
) -> Result<(), StoreError> {
    let row_tuple = format!("({})", vec!["?"; cols].join(","));
    for group in values.chunks(GROUP * cols) {
        let n = group.len() / cols;
        let sql = format!("{head} VALUES {}", vec![row_tuple.as_str(); n].join(","));
        tx.prepare_cached(&sql)
            .and_then(|mut st| st.execute(rusqlite::params_from_iter(group.iter())))
            .ctx(doing)?;
    }
    Ok(())
}

/// Store many rows' results in the caller's transaction: each row's previous candidates and
/// issues are replaced, its outcome set, and the decision appended to the audit log. Multi-row
/// statements keep this at a few statements per batch instead of several per row.
pub(crate) fn write_results(
    tx: &Transaction<'_>,
    job_id: i64,
    results: &[RowResult],
    now: &str,
) -> Result<(), StoreError> {
    if results.is_empty() {
        return Ok(());
    }
    for group in results.chunks(GROUP) {
        let ids: Vec<i64> = group.iter().map(|r| r.row_id).collect();
        let list = vec!["?"; ids.len()].join(",");
        for table in ["candidates", "row_issues"] {
            tx.prepare_cached(&format!("DELETE FROM {table} WHERE row_id IN ({list})"))
                .and_then(|mut st| st.execute(rusqlite::params_from_iter(ids.iter())))
                .ctx("replacing rows' results")?;
        }
    }
    // Owned values first, then borrowed parameter lists over them.
    struct CandRow {
        row_id: i64,
        rank: i64,
        iis_id: String,
        score: Option<f64>,
        grade: Option<&'static str>,
        full_url: Option<String>,
        demo: String,
    }
    let mut cands = Vec::new();
    for res in results {
        for c in &res.candidates {
            cands.push(CandRow {
                row_id: res.row_id,
                rank: c.rank as i64,
                iis_id: c.iis_id.clone(),
                score: c.score,
                grade: c.grade.map(|g| g.code()),
                full_url: c.full_url.clone(),
                demo: codec::encode(&c.demographics),
            });
        }
    }
    let mut v: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(cands.len() * 8);
    for c in &cands {
        v.extend_from_slice(&[
            &c.row_id,
            &c.rank,
            &job_id,
            &c.iis_id,
            &c.score,
            &c.grade,
            &c.full_url,
            &c.demo,
        ]);
    }
    insert_many(
        tx,
        "INSERT INTO candidates (row_id, rank, job_id, iis_id, score, grade, full_url, demographics)",
        8,
        &v,
        "saving candidates",
    )?;
    let issues: Vec<(i64, &RowIssue)> = results
        .iter()
        .flat_map(|r| r.issues.iter().map(move |i| (r.row_id, i)))
        .collect();
    let mut v: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(issues.len() * 5);
    for (row_id, i) in &issues {
        v.extend_from_slice(&[row_id, &job_id, &i.severity, &i.code, &i.text]);
    }
    insert_many(
        tx,
        "INSERT INTO row_issues (row_id, job_id, severity, code, text)",
        5,
        &v,
        "saving row issues",
    )?;
    struct TriageRow {
        outcome: &'static str,
        reason: Option<&'static str>,
        best_iis_id: Option<String>,
        best_score: Option<f64>,
        best_grade: Option<&'static str>,
        candidates: i64,
        row_key: String,
        details: String,
    }
    let job_note = format!("job {job_id}");
    let rows: Vec<TriageRow> = results
        .iter()
        .map(|res| {
            let (outcome, reason) = outcome_to_db(res.outcome);
            let best = res.candidates.first();
            let details = match reason {
                Some(r) => format!(
                    "{{\"outcome\":\"{outcome}\",\"reason\":\"{r}\",\"candidates\":{}}}",
                    res.candidates.len()
                ),
                None => format!(
                    "{{\"outcome\":\"{outcome}\",\"candidates\":{}}}",
                    res.candidates.len()
                ),
            };
            TriageRow {
                outcome,
                reason,
                best_iis_id: best.map(|c| c.iis_id.clone()),
                best_score: best.and_then(|c| c.score),
                best_grade: best.and_then(|c| c.grade).map(|g| g.code()),
                candidates: res.candidates.len() as i64,
                row_key: res.row_id.to_string(),
                details,
            }
        })
        .collect();
    let mut v: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(rows.len() * 9);
    for (res, t) in results.iter().zip(&rows) {
        v.extend_from_slice(&[
            &res.row_id,
            &job_id,
            &t.outcome,
            &t.reason,
            &t.best_iis_id,
            &t.best_score,
            &t.best_grade,
            &t.candidates,
            &now,
        ]);
    }
    insert_many(
        tx,
        "INSERT OR REPLACE INTO triage (row_id, job_id, outcome, reason, best_iis_id, best_score, best_grade, candidates, decided_at)",
        9,
        &v,
        "saving outcomes",
    )?;
    let (actor, action, entity) = ("system", "triage", "row");
    let mut v: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(rows.len() * 7);
    for t in &rows {
        v.extend_from_slice(&[
            &now, &actor, &action, &entity, &t.row_key, &t.details, &job_note,
        ]);
    }
    insert_many(
        tx,
        "INSERT INTO audit (at, actor, action, entity, entity_id, details, why)",
        7,
        &v,
        "recording decisions in the audit log",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EncodedRow, VersionMeta};

    fn setup(rows: usize) -> (tempfile::TempDir, Store, JobInfo) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("ws.db")).unwrap();
        let mut w = store.begin_import("c", "f.csv").unwrap();
        for i in 0..rows {
            let d = Demographics {
                family: Some(format!("F{i}")),
                ..Default::default()
            };
            w.add_encoded(EncodedRow::new(i as u64 + 2, format!("S{i}"), &d, &d), &[])
                .unwrap();
        }
        let done = w.finish(&VersionMeta::default(), "t").unwrap();
        let job = store
            .create_job(
                done.cohort_id,
                "http://127.0.0.1/fhir",
                &MatchOptions::default(),
                4,
                "t",
            )
            .unwrap()
            .unwrap();
        (dir, store, job)
    }

    fn cand(rank: u32, id: &str) -> Candidate {
        Candidate {
            rank,
            iis_id: id.into(),
            score: Some(0.9),
            grade: Some(MatchGrade::Certain),
            full_url: None,
            demographics: Demographics::default(),
        }
    }

    #[test]
    fn a_triaged_row_names_the_server_of_its_run() {
        let (_dir, mut store, job) = setup(3);
        let c = &store.chunks(job.id).unwrap()[0];
        let patients = store.chunk_patients(c.id).unwrap();
        let first = patients[0].row_id;
        assert_eq!(store.triaged_by(first).unwrap(), None);
        let results = vec![RowResult {
            row_id: first,
            candidates: vec![cand(1, "A")],
            issues: vec![],
            outcome: Outcome::AutoMatch,
        }];
        store
            .chunk_manifest(c.id, "{}", &["http://x/1".into()])
            .unwrap();
        store
            .ingest_batch(job.id, c.id, 0, 1, &results, &[])
            .unwrap();
        assert_eq!(
            store.triaged_by(first).unwrap().as_deref(),
            Some("http://127.0.0.1/fhir")
        );
        assert_eq!(store.triaged_by(patients[1].row_id).unwrap(), None);
    }

    #[test]
    fn jobs_are_chunked_and_reingesting_a_batch_never_duplicates() {
        let (_dir, mut store, job) = setup(10);
        let chunks = store.chunks(job.id).unwrap();
        assert_eq!(
            chunks.iter().map(|c| c.row_count).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        let c = &chunks[0];
        let patients = store.chunk_patients(c.id).unwrap();
        let ids: Vec<&str> = patients.iter().map(|p| p.source_id.as_str()).collect();
        let found = store.chunk_rows_by_source(c.id, &ids).unwrap();
        assert!(found.iter().all(Option::is_some));
        // An id of another chunk is not found in this one.
        assert_eq!(
            store.chunk_rows_by_source(c.id, &["S9"]).unwrap(),
            vec![None]
        );

        let results: Vec<RowResult> = patients
            .iter()
            .map(|p| RowResult {
                row_id: p.row_id,
                candidates: vec![cand(1, "A"), cand(2, "B")],
                issues: vec![],
                outcome: Outcome::Review(ReviewReason::SeveralCandidates),
            })
            .collect();
        store
            .chunk_manifest(c.id, "{}", &["http://x/1".into()])
            .unwrap();
        store
            .ingest_batch(job.id, c.id, 0, 4, &results, &[])
            .unwrap();
        store
            .ingest_batch(job.id, c.id, 0, 4, &results, &[(5, "bad".into())])
            .unwrap();
        store
            .ingest_batch(job.id, c.id, 0, 4, &results, &[(5, "bad".into())])
            .unwrap();
        for p in &patients {
            assert_eq!(store.candidates(p.row_id).unwrap().len(), 2);
            assert_eq!(
                store.outcome(p.row_id).unwrap(),
                Some(Outcome::Review(ReviewReason::SeveralCandidates))
            );
        }
        assert_eq!(store.ingest_errors(job.id).unwrap().len(), 1);
        assert_eq!(store.chunks(job.id).unwrap()[0].files[0].lines, 4);
        // Rows the server said nothing about become errors when the chunk finishes.
        let c2 = &chunks[1];
        assert_eq!(store.finish_chunk(job.id, c2.id).unwrap(), 4);
        let report = store.report().unwrap();
        assert_eq!(report.outcomes.review, 4);
        assert_eq!(report.outcomes.error, 4);
        assert_eq!(report.pending, 2);
    }

    #[test]
    fn split_moves_the_tail_to_a_new_pending_chunk() {
        let (_dir, mut store, job) = setup(4);
        let c = store.chunks(job.id).unwrap()[0].clone();
        let new_id = store.split_chunk(c.id, 1).unwrap();
        let chunks = store.chunks(job.id).unwrap();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].row_count, 1);
        assert_eq!(chunks[1].id, new_id);
        assert_eq!(chunks[1].row_count, 3);
        assert_eq!(store.chunk_patients(new_id).unwrap().len(), 3);
        assert_eq!(chunks[1].state, ChunkState::Pending);
    }
}
