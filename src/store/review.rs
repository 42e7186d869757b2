//! The review queue and the decisions made on it.
//!
//! A decision is saved the moment it is made, as one transaction that also appends to the audit
//! log and, for an accepted candidate, proposes the Group addition (see [`super::group`]). Undo
//! never deletes: it marks the decision undone, withdraws the Group change it proposed (unless a
//! coordinator already approved it) and restores the row's previous decision.

use rusqlite::{OptionalExtension, Transaction, params};

use super::{Ctx, Store, StoreError, audit, codec, group, jobs::outcome_from_db, now_text};
use crate::domain::{Candidate, Demographics, Outcome, RowIssue};

/// What a reviewer decided about one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// The candidate is the same person.
    Accept,
    /// None of the candidates (if any) is this person.
    NoMatch,
    /// Come back to it later.
    Skip,
}

impl DecisionKind {
    pub fn key(self) -> &'static str {
        match self {
            DecisionKind::Accept => "accept",
            DecisionKind::NoMatch => "no_match",
            DecisionKind::Skip => "skip",
        }
    }
    pub fn from_key(s: &str) -> Option<Self> {
        [
            DecisionKind::Accept,
            DecisionKind::NoMatch,
            DecisionKind::Skip,
        ]
        .into_iter()
        .find(|k| k.key() == s)
    }
    /// How the decision reads in the UI and the audit log.
    pub fn label(self) -> &'static str {
        match self {
            DecisionKind::Accept => "accepted",
            DecisionKind::NoMatch => "no match",
            DecisionKind::Skip => "skipped",
        }
    }
}

/// One row of the review queue, compact: the queue can hold a million of these.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueRow {
    pub row_id: i64,
    pub cohort_id: i64,
    pub line: u32,
    pub outcome: Outcome,
    pub best_score: Option<f32>,
    pub candidates: u16,
    /// The current decision, if any.
    pub decision: Option<DecisionKind>,
    pub source_id: Box<str>,
    /// "FAMILY, Given" for display and search.
    pub name: Box<str>,
    pub birth_date: Box<str>,
}

/// Everything the review screen shows for one row.
#[derive(Clone, Debug, PartialEq)]
pub struct RowDetail {
    pub row_id: i64,
    pub cohort_id: i64,
    pub source_id: String,
    pub line: u32,
    /// As it was in the file (trimmed).
    pub original: Demographics,
    /// As it was (or will be) submitted.
    pub submitted: Demographics,
    pub outcome: Option<Outcome>,
    pub candidates: Vec<Candidate>,
    pub issues: Vec<RowIssue>,
    /// Decisions on this row, newest first, undone ones included.
    pub decisions: Vec<DecisionInfo>,
}

/// One decision, for history lists.
#[derive(Clone, Debug, PartialEq)]
pub struct DecisionInfo {
    pub id: i64,
    pub row_id: i64,
    pub kind: DecisionKind,
    pub iis_id: Option<String>,
    pub rank: Option<u32>,
    pub note: Option<String>,
    pub actor: String,
    pub at: String,
    pub undone_at: Option<String>,
}

/// What a bulk accept would do (shown before it is applied).
#[derive(Clone, Debug, PartialEq)]
pub struct BulkAcceptPreview {
    pub min_score: f64,
    pub rows: u64,
    /// Up to `sample` rows to spot-check: (row id, source id, name, best candidate id, score).
    pub sample: Vec<(i64, String, String, String, f64)>,
}

fn display_name(d: &Demographics) -> String {
    match (d.family.as_deref(), d.given.as_deref()) {
        (Some(f), Some(g)) => format!("{f}, {g}"),
        (Some(f), None) => f.to_string(),
        (None, Some(g)) => g.to_string(),
        (None, None) => String::new(),
    }
}

/// The rows a bulk accept at `min_score` takes: open review rows with exactly one candidate
/// whose score reaches the threshold.
const BULK_WHERE: &str = "FROM triage t JOIN rows r ON r.id = t.row_id
     JOIN candidates c ON c.row_id = t.row_id AND c.rank = 1
     LEFT JOIN reviews v ON v.row_id = t.row_id
     WHERE r.cohort_id = ?1 AND t.outcome = 'review' AND t.candidates = 1
       AND r.left_version IS NULL AND c.score >= ?2 AND (v.kind IS NULL OR v.kind = 'skip')";

impl Store {
    /// Every matched row of a cohort (all outcomes; the UI filters), in file order.
    pub fn queue(&self, cohort_id: i64) -> Result<Vec<QueueRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT t.row_id, r.line, t.outcome, t.reason, t.best_score, t.candidates,
                        v.kind, r.source_id, r.normalized
                 FROM triage t JOIN rows r ON r.id = t.row_id
                 LEFT JOIN reviews v ON v.row_id = t.row_id
                 WHERE r.cohort_id = ?1 AND r.left_version IS NULL
                 ORDER BY r.line, r.id",
            )
            .ctx("reading the review queue")?;
        let mut rows = stmt.query([cohort_id]).ctx("reading the review queue")?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().ctx("reading the review queue")? {
            let outcome: String = r.get(2).ctx("reading the review queue")?;
            let reason: Option<String> = r.get(3).ctx("reading the review queue")?;
            let Some(outcome) = outcome_from_db(&outcome, reason.as_deref()) else {
                continue;
            };
            let decision: Option<String> = r.get(6).ctx("reading the review queue")?;
            let normalized: String = r.get(8).ctx("reading the review queue")?;
            let d = codec::decode(&normalized)?;
            out.push(QueueRow {
                row_id: r.get(0).ctx("reading the review queue")?,
                cohort_id,
                line: r.get::<_, i64>(1).ctx("reading the review queue")?.max(0) as u32,
                outcome,
                best_score: r
                    .get::<_, Option<f64>>(4)
                    .ctx("reading the review queue")?
                    .map(|s| s as f32),
                candidates: r
                    .get::<_, i64>(5)
                    .ctx("reading the review queue")?
                    .clamp(0, u16::MAX as i64) as u16,
                decision: decision.as_deref().and_then(DecisionKind::from_key),
                source_id: r
                    .get::<_, String>(7)
                    .ctx("reading the review queue")?
                    .into_boxed_str(),
                name: display_name(&d).into_boxed_str(),
                birth_date: d
                    .birth_date
                    .map(|b| b.to_string())
                    .unwrap_or_default()
                    .into_boxed_str(),
            });
        }
        Ok(out)
    }

    /// The submitted record, its candidates, issues and decisions.
    pub fn row_detail(&self, row_id: i64) -> Result<RowDetail, StoreError> {
        let (cohort_id, source_id, line, original, normalized): (i64, String, i64, String, String) =
            self.conn
                .query_row(
                    "SELECT cohort_id, source_id, line, original, normalized FROM rows WHERE id = ?1",
                    [row_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()
                .ctx("reading a row")?
                .ok_or_else(|| StoreError::NotFound(format!("row {row_id} is not in the workspace")))?;
        Ok(RowDetail {
            row_id,
            cohort_id,
            source_id,
            line: line.max(0) as u32,
            original: codec::decode(&original)?,
            submitted: codec::decode(&normalized)?,
            outcome: self.outcome(row_id)?,
            candidates: self.candidates(row_id)?,
            issues: self.row_issues(row_id)?,
            decisions: self.decisions_of_row(row_id)?,
        })
    }

    fn decisions_of_row(&self, row_id: i64) -> Result<Vec<DecisionInfo>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {DECISION_COLS} FROM decisions WHERE row_id = ?1 ORDER BY id DESC"
            ))
            .ctx("reading decisions")?;
        let rows = stmt
            .query_map([row_id], decision_from_row)
            .ctx("reading decisions")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("reading decisions")
    }

    /// The most recent decisions (undone ones included), newest first.
    pub fn recent_decisions(&self, limit: usize) -> Result<Vec<DecisionInfo>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {DECISION_COLS} FROM decisions ORDER BY id DESC LIMIT ?1"
            ))
            .ctx("reading decisions")?;
        let rows = stmt
            .query_map([limit as i64], decision_from_row)
            .ctx("reading decisions")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("reading decisions")
    }

    /// Record a decision. `Accept` needs the candidate's rank (1-based) and proposes the Group
    /// addition; any other decision withdraws a still-pending addition from an earlier accept.
    pub fn decide(
        &mut self,
        row_id: i64,
        kind: DecisionKind,
        rank: Option<u32>,
        note: Option<&str>,
        actor: &str,
    ) -> Result<DecisionInfo, StoreError> {
        let tx = self.tx("saving a review decision")?;
        let info = decide_in(&tx, row_id, kind, rank, note, actor, "review")?;
        tx.commit().ctx("saving a review decision")?;
        Ok(info)
    }

    /// Undo `actor`'s most recent decision that is not undone yet. `Ok(None)` when there is
    /// nothing to undo. Refused when the Group addition it proposed is already approved.
    pub fn undo_last_decision(&mut self, actor: &str) -> Result<Option<DecisionInfo>, StoreError> {
        let tx = self.tx("undoing a review decision")?;
        let last = tx
            .query_row(
                &format!(
                    "SELECT {DECISION_COLS} FROM decisions WHERE actor = ?1 AND undone_at IS NULL
                     ORDER BY id DESC LIMIT 1"
                ),
                [actor],
                decision_from_row,
            )
            .optional()
            .ctx("finding the decision to undo")?;
        let Some(last) = last else {
            return Ok(None);
        };
        let approved: Option<String> = tx
            .query_row(
                "SELECT decided_by FROM group_changes WHERE decision_id = ?1 AND state = 'approved'",
                [last.id],
                |r| r.get(0),
            )
            .optional()
            .ctx("checking the Group change of a decision")?;
        if let Some(by) = approved {
            return Err(StoreError::Refused(format!(
                "the match was already approved into the Group by {by}; ask a coordinator to remove the member on the Group screen instead"
            )));
        }
        let now = now_text();
        tx.execute(
            "UPDATE decisions SET undone_at = ?2, undone_by = ?3 WHERE id = ?1",
            params![last.id, now, actor],
        )
        .ctx("undoing a review decision")?;
        group::withdraw_for_decision(&tx, last.id, actor)?;
        // Restore the row's previous decision, if any.
        let prev = tx
            .query_row(
                "SELECT id, kind, iis_id FROM decisions WHERE row_id = ?1 AND undone_at IS NULL
                 ORDER BY id DESC LIMIT 1",
                [last.row_id],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                    ))
                },
            )
            .optional()
            .ctx("restoring the previous decision")?;
        match prev {
            Some((id, kind, iis)) => {
                tx.execute(
                    "UPDATE reviews SET decision_id = ?2, kind = ?3, iis_id = ?4 WHERE row_id = ?1",
                    params![last.row_id, id, kind, iis],
                )
                .ctx("restoring the previous decision")?;
                if kind == "accept" {
                    // The earlier accept's addition was withdrawn when it was overridden.
                    if let Some(iis) = iis {
                        group::propose_add(&tx, last.row_id, &iis, "review", Some(id), actor)?;
                    }
                }
            }
            None => {
                tx.execute("DELETE FROM reviews WHERE row_id = ?1", [last.row_id])
                    .ctx("restoring the previous decision")?;
            }
        }
        let details =
            serde_json::json!({ "decision": last.id, "kind": last.kind.key() }).to_string();
        audit(
            &tx,
            actor,
            "decision_undone",
            "row",
            Some(&last.row_id.to_string()),
            Some(&details),
            None,
        )?;
        tx.commit().ctx("undoing a review decision")?;
        Ok(Some(last))
    }

    /// How many rows a bulk accept at `min_score` would take, with a sample to spot-check.
    pub fn bulk_accept_preview(
        &self,
        cohort_id: i64,
        min_score: f64,
        sample: usize,
    ) -> Result<BulkAcceptPreview, StoreError> {
        let rows: i64 = self
            .conn
            .query_row(
                &format!("SELECT COUNT(*) {BULK_WHERE}"),
                params![cohort_id, min_score],
                |r| r.get(0),
            )
            .ctx("previewing a bulk accept")?;
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT t.row_id, r.source_id, r.normalized, c.iis_id, c.score {BULK_WHERE}
                 ORDER BY c.score ASC, r.line LIMIT ?3"
            ))
            .ctx("previewing a bulk accept")?;
        let mut q = stmt
            .query(params![cohort_id, min_score, sample as i64])
            .ctx("previewing a bulk accept")?;
        let mut out = Vec::new();
        while let Some(r) = q.next().ctx("previewing a bulk accept")? {
            let normalized: String = r.get(2).ctx("previewing a bulk accept")?;
            out.push((
                r.get(0).ctx("previewing a bulk accept")?,
                r.get(1).ctx("previewing a bulk accept")?,
                display_name(&codec::decode(&normalized)?),
                r.get(3).ctx("previewing a bulk accept")?,
                r.get::<_, Option<f64>>(4)
                    .ctx("previewing a bulk accept")?
                    .unwrap_or(0.0),
            ));
        }
        Ok(BulkAcceptPreview {
            min_score,
            rows: rows.max(0) as u64,
            sample: out,
        })
    }

    /// Accept the single candidate of every row the preview at `min_score` counted, in one
    /// transaction. Returns how many rows were accepted.
    pub fn bulk_accept(
        &mut self,
        cohort_id: i64,
        min_score: f64,
        actor: &str,
    ) -> Result<u64, StoreError> {
        let tx = self.tx("accepting matches in bulk")?;
        let ids: Vec<i64> = {
            let mut stmt = tx
                .prepare(&format!("SELECT t.row_id {BULK_WHERE} ORDER BY r.line"))
                .ctx("accepting matches in bulk")?;
            stmt.query_map(params![cohort_id, min_score], |r| r.get(0))
                .ctx("accepting matches in bulk")?
                .collect::<rusqlite::Result<Vec<_>>>()
                .ctx("accepting matches in bulk")?
        };
        let note = format!("bulk accept at score ≥ {min_score:.2}");
        for id in &ids {
            decide_in(
                &tx,
                *id,
                DecisionKind::Accept,
                Some(1),
                Some(&note),
                actor,
                "bulk",
            )?;
        }
        let details =
            serde_json::json!({ "cohort": cohort_id, "min_score": min_score, "rows": ids.len() })
                .to_string();
        audit(
            &tx,
            actor,
            "bulk_accept",
            "cohort",
            Some(&cohort_id.to_string()),
            Some(&details),
            None,
        )?;
        tx.commit().ctx("accepting matches in bulk")?;
        Ok(ids.len() as u64)
    }

    /// Correct a row's demographics (typically a no-match) and clear its outcome so the next
    /// run submits it again. The row keeps its original values; the decision history stays.
    pub fn edit_row_for_resubmit(
        &mut self,
        row_id: i64,
        corrected: &Demographics,
        why: Option<&str>,
        actor: &str,
    ) -> Result<(), StoreError> {
        let tx = self.tx("saving the corrected record")?;
        let encoded = codec::encode(corrected);
        let n = tx
            .execute(
                "UPDATE rows SET normalized = ?2, demo_hash = ?3 WHERE id = ?1",
                params![row_id, encoded, codec::hash(&encoded)],
            )
            .ctx("saving the corrected record")?;
        if n == 0 {
            return Err(StoreError::NotFound(format!(
                "row {row_id} is not in the workspace"
            )));
        }
        for sql in [
            "DELETE FROM triage WHERE row_id = ?1",
            "DELETE FROM candidates WHERE row_id = ?1",
            "DELETE FROM row_issues WHERE row_id = ?1",
        ] {
            tx.execute(sql, [row_id])
                .ctx("clearing the old match result")?;
        }
        // Fields only, never values: the audit log holds no patient data.
        let fields: Vec<&str> = crate::domain::Field::ALL
            .iter()
            .filter(|f| corrected.get(**f).is_some())
            .map(|f| f.key())
            .collect();
        let details = serde_json::json!({ "fields_present": fields }).to_string();
        audit(
            &tx,
            actor,
            "row_edited_for_resubmit",
            "row",
            Some(&row_id.to_string()),
            Some(&details),
            why,
        )?;
        tx.commit().ctx("saving the corrected record")
    }
}

const DECISION_COLS: &str = "id, row_id, kind, iis_id, rank, note, actor, at, undone_at";

fn decision_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DecisionInfo> {
    let kind: String = r.get(2)?;
    Ok(DecisionInfo {
        id: r.get(0)?,
        row_id: r.get(1)?,
        kind: DecisionKind::from_key(&kind).unwrap_or(DecisionKind::Skip),
        iis_id: r.get(3)?,
        rank: r.get::<_, Option<i64>>(4)?.map(|v| v.max(0) as u32),
        note: r.get(5)?,
        actor: r.get(6)?,
        at: r.get(7)?,
        undone_at: r.get(8)?,
    })
}

/// Record one decision inside `tx` (see [`Store::decide`]).
fn decide_in(
    tx: &Transaction<'_>,
    row_id: i64,
    kind: DecisionKind,
    rank: Option<u32>,
    note: Option<&str>,
    actor: &str,
    source: &str,
) -> Result<DecisionInfo, StoreError> {
    let iis_id: Option<String> = match kind {
        DecisionKind::Accept => {
            let rank = rank.ok_or_else(|| {
                StoreError::Refused("choose which candidate to accept".to_string())
            })?;
            let found: Option<String> = tx
                .query_row(
                    "SELECT iis_id FROM candidates WHERE row_id = ?1 AND rank = ?2",
                    params![row_id, rank as i64],
                    |r| r.get(0),
                )
                .optional()
                .ctx("reading the accepted candidate")?;
            Some(found.ok_or_else(|| {
                StoreError::Refused(format!(
                    "this row has no candidate {rank}; it may have been matched again since the screen was drawn"
                ))
            })?)
        }
        _ => None,
    };
    let exists: Option<i64> = tx
        .query_row("SELECT 1 FROM rows WHERE id = ?1", [row_id], |r| r.get(0))
        .optional()
        .ctx("reading a row")?;
    if exists.is_none() {
        return Err(StoreError::NotFound(format!(
            "row {row_id} is not in the workspace"
        )));
    }
    let now = now_text();
    let rank = if kind == DecisionKind::Accept {
        rank
    } else {
        None
    };
    tx.execute(
        "INSERT INTO decisions (row_id, kind, iis_id, rank, note, actor, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            row_id,
            kind.key(),
            iis_id,
            rank.map(|r| r as i64),
            note,
            actor,
            now
        ],
    )
    .ctx("saving a review decision")?;
    let id = tx.last_insert_rowid();
    // An earlier accept's pending addition no longer stands.
    let previous: Option<i64> = tx
        .query_row(
            "SELECT decision_id FROM reviews WHERE row_id = ?1",
            [row_id],
            |r| r.get(0),
        )
        .optional()
        .ctx("reading the previous decision")?;
    if let Some(prev) = previous {
        group::withdraw_for_decision(tx, prev, actor)?;
    }
    tx.execute(
        "INSERT INTO reviews (row_id, decision_id, kind, iis_id) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(row_id) DO UPDATE SET decision_id = excluded.decision_id,
             kind = excluded.kind, iis_id = excluded.iis_id",
        params![row_id, id, kind.key(), iis_id],
    )
    .ctx("saving a review decision")?;
    if let Some(iis) = &iis_id {
        group::propose_add(tx, row_id, iis, source, Some(id), actor)?;
    }
    let details = serde_json::json!({
        "decision": id, "kind": kind.key(), "candidate_rank": rank, "iis_id": iis_id,
    })
    .to_string();
    audit(
        tx,
        actor,
        &format!("decision_{}", kind.key()),
        "row",
        Some(&row_id.to_string()),
        Some(&details),
        note,
    )?;
    Ok(DecisionInfo {
        id,
        row_id,
        kind,
        iis_id,
        rank,
        note: note.map(str::to_string),
        actor: actor.to_string(),
        at: now,
        undone_at: None,
    })
}
