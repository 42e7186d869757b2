//! The local Group of each cohort: its members, the pending changes a coordinator approves or
//! rejects, and the history of every change.
//!
//! Changes are proposed from three places: an accepted review decision (see [`super::review`]),
//! an automatic match ([`Store::propose_group_changes`] after a run), and a row that left the
//! cohort on re-import or a manual removal. A member is only added or removed when a change is
//! approved; every proposal and decision is in the audit log.

use rusqlite::{OptionalExtension, Transaction, params};

use super::{Ctx, Store, StoreError, audit, codec, now_text};

/// A cohort's Group.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupInfo {
    pub id: i64,
    pub cohort_id: i64,
    pub name: String,
    /// The id the IIS assigned to the Group, once recorded.
    pub iis_group_id: Option<String>,
    pub created_at: String,
    pub members: u64,
    pub pending: u64,
}

/// One member of a Group.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub iis_id: String,
    pub row_id: Option<i64>,
    pub source_id: Option<String>,
    pub name: String,
    pub birth_date: String,
    pub since: String,
    pub added_by: String,
}

/// Whether a change adds or removes a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    Add,
    Remove,
}

impl ChangeKind {
    pub fn key(self) -> &'static str {
        match self {
            ChangeKind::Add => "add",
            ChangeKind::Remove => "remove",
        }
    }
}

/// Where a change stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeState {
    Pending,
    Approved,
    Rejected,
    /// The decision that proposed it was undone or replaced.
    Withdrawn,
}

impl ChangeState {
    pub fn key(self) -> &'static str {
        match self {
            ChangeState::Pending => "pending",
            ChangeState::Approved => "approved",
            ChangeState::Rejected => "rejected",
            ChangeState::Withdrawn => "withdrawn",
        }
    }
    fn from_key(s: &str) -> ChangeState {
        match s {
            "approved" => ChangeState::Approved,
            "rejected" => ChangeState::Rejected,
            "withdrawn" => ChangeState::Withdrawn,
            _ => ChangeState::Pending,
        }
    }
}

/// One proposed (or decided) change to a Group.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupChange {
    pub id: i64,
    pub group_id: i64,
    pub kind: ChangeKind,
    pub iis_id: String,
    pub row_id: Option<i64>,
    pub source_id: Option<String>,
    pub name: String,
    /// `auto_match`, `review`, `bulk`, `left_cohort` or `manual`.
    pub source: String,
    pub proposed_by: String,
    pub proposed_at: String,
    pub state: ChangeState,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub reason: Option<String>,
}

impl GroupChange {
    /// The origin of the change in words.
    pub fn source_label(&self) -> &'static str {
        match self.source.as_str() {
            "auto_match" => "automatic match",
            "review" => "accepted in review",
            "bulk" => "bulk accept",
            "left_cohort" => "left the cohort",
            "manual" => "manual",
            _ => "other",
        }
    }
}

fn display_name(normalized: Option<&str>) -> Result<(String, String), StoreError> {
    let Some(n) = normalized else {
        return Ok((String::new(), String::new()));
    };
    let d = codec::decode(n)?;
    let name = match (d.family.as_deref(), d.given.as_deref()) {
        (Some(f), Some(g)) => format!("{f}, {g}"),
        (Some(f), None) => f.to_string(),
        (None, Some(g)) => g.to_string(),
        (None, None) => String::new(),
    };
    Ok((
        name,
        d.birth_date.map(|b| b.to_string()).unwrap_or_default(),
    ))
}

/// The Group of `cohort_id`, created (named after the cohort) on first use.
pub(crate) fn group_id_for_cohort(tx: &Transaction<'_>, cohort_id: i64) -> Result<i64, StoreError> {
    let found: Option<i64> = tx
        .query_row(
            "SELECT id FROM groups WHERE cohort_id = ?1",
            [cohort_id],
            |r| r.get(0),
        )
        .optional()
        .ctx("reading the Group")?;
    if let Some(id) = found {
        return Ok(id);
    }
    let name: String = tx
        .query_row("SELECT name FROM cohorts WHERE id = ?1", [cohort_id], |r| {
            r.get(0)
        })
        .optional()
        .ctx("reading the cohort")?
        .ok_or_else(|| StoreError::NotFound(format!("cohort {cohort_id} does not exist")))?;
    tx.execute(
        "INSERT INTO groups (cohort_id, name, created_at) VALUES (?1, ?2, ?3)",
        params![cohort_id, name, now_text()],
    )
    .ctx("creating the Group")?;
    Ok(tx.last_insert_rowid())
}

/// Propose adding `iis_id` (matched to `row_id`) unless it is a member or already pending.
pub(crate) fn propose_add(
    tx: &Transaction<'_>,
    row_id: i64,
    iis_id: &str,
    source: &str,
    decision_id: Option<i64>,
    actor: &str,
) -> Result<Option<i64>, StoreError> {
    let cohort_id: i64 = tx
        .query_row("SELECT cohort_id FROM rows WHERE id = ?1", [row_id], |r| {
            r.get(0)
        })
        .ctx("reading a row")?;
    let group_id = group_id_for_cohort(tx, cohort_id)?;
    let member: Option<i64> = tx
        .query_row(
            "SELECT 1 FROM group_members WHERE group_id = ?1 AND iis_id = ?2",
            params![group_id, iis_id],
            |r| r.get(0),
        )
        .optional()
        .ctx("reading the Group")?;
    if member.is_some() {
        return Ok(None);
    }
    let pending: Option<i64> = tx
        .query_row(
            "SELECT id FROM group_changes WHERE group_id = ?1 AND iis_id = ?2 AND kind = 'add' AND state = 'pending'",
            params![group_id, iis_id],
            |r| r.get(0),
        )
        .optional()
        .ctx("reading the Group")?;
    if let Some(id) = pending {
        // Attach the newer decision so undoing it withdraws this change.
        if decision_id.is_some() {
            tx.execute(
                "UPDATE group_changes SET decision_id = ?2 WHERE id = ?1",
                params![id, decision_id],
            )
            .ctx("updating a Group change")?;
        }
        return Ok(None);
    }
    tx.execute(
        "INSERT INTO group_changes (group_id, kind, iis_id, row_id, source, decision_id, proposed_by, proposed_at, state)
         VALUES (?1, 'add', ?2, ?3, ?4, ?5, ?6, ?7, 'pending')",
        params![group_id, iis_id, row_id, source, decision_id, actor, now_text()],
    )
    .ctx("proposing a Group addition")?;
    Ok(Some(tx.last_insert_rowid()))
}

/// Withdraw the pending change a decision proposed (no-op when there is none).
pub(crate) fn withdraw_for_decision(
    tx: &Transaction<'_>,
    decision_id: i64,
    actor: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE group_changes SET state = 'withdrawn', decided_by = ?2, decided_at = ?3,
             reason = 'the review decision was undone or replaced'
         WHERE decision_id = ?1 AND state = 'pending'",
        params![decision_id, actor, now_text()],
    )
    .ctx("withdrawing a Group change")?;
    Ok(())
}

const CHANGE_SELECT: &str =
    "SELECT g.id, g.group_id, g.kind, g.iis_id, g.row_id, r.source_id, r.normalized,
        g.source, g.proposed_by, g.proposed_at, g.state, g.decided_by, g.decided_at, g.reason
     FROM group_changes g LEFT JOIN rows r ON r.id = g.row_id";

fn change_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(GroupChange, Option<String>)> {
    let kind: String = r.get(2)?;
    let state: String = r.get(10)?;
    Ok((
        GroupChange {
            id: r.get(0)?,
            group_id: r.get(1)?,
            kind: if kind == "remove" {
                ChangeKind::Remove
            } else {
                ChangeKind::Add
            },
            iis_id: r.get(3)?,
            row_id: r.get(4)?,
            source_id: r.get(5)?,
            name: String::new(),
            source: r.get(7)?,
            proposed_by: r.get(8)?,
            proposed_at: r.get(9)?,
            state: ChangeState::from_key(&state),
            decided_by: r.get(11)?,
            decided_at: r.get(12)?,
            reason: r.get(13)?,
        },
        r.get(6)?,
    ))
}

impl Store {
    /// The Group of a cohort (created on first use).
    pub fn group_for_cohort(&mut self, cohort_id: i64) -> Result<GroupInfo, StoreError> {
        let tx = self.tx("opening the Group")?;
        let id = group_id_for_cohort(&tx, cohort_id)?;
        tx.commit().ctx("opening the Group")?;
        self.group(id)
    }

    /// One Group with its counts.
    pub fn group(&self, group_id: i64) -> Result<GroupInfo, StoreError> {
        self.conn
            .query_row(
                "SELECT id, cohort_id, name, iis_group_id, created_at,
                    (SELECT COUNT(*) FROM group_members m WHERE m.group_id = groups.id),
                    (SELECT COUNT(*) FROM group_changes c WHERE c.group_id = groups.id AND c.state = 'pending')
                 FROM groups WHERE id = ?1",
                [group_id],
                |r| {
                    Ok(GroupInfo {
                        id: r.get(0)?,
                        cohort_id: r.get(1)?,
                        name: r.get(2)?,
                        iis_group_id: r.get(3)?,
                        created_at: r.get(4)?,
                        members: r.get::<_, i64>(5)?.max(0) as u64,
                        pending: r.get::<_, i64>(6)?.max(0) as u64,
                    })
                },
            )
            .optional()
            .ctx("reading the Group")?
            .ok_or_else(|| StoreError::NotFound(format!("Group {group_id} does not exist")))
    }

    /// Propose what a finished run or a re-import implies for the cohort's Group: additions for
    /// automatic matches not yet in it, removals for members whose row left the cohort.
    /// Returns `(additions, removals)` newly proposed.
    pub fn propose_group_changes(
        &mut self,
        cohort_id: i64,
        actor: &str,
    ) -> Result<(u64, u64), StoreError> {
        let tx = self.tx("proposing Group changes")?;
        let group_id = group_id_for_cohort(&tx, cohort_id)?;
        let now = now_text();
        let adds = tx
            .execute(
                "INSERT INTO group_changes (group_id, kind, iis_id, row_id, source, proposed_by, proposed_at, state)
                 SELECT ?1, 'add', t.best_iis_id, t.row_id, 'auto_match', ?2, ?3, 'pending'
                 FROM triage t JOIN rows r ON r.id = t.row_id
                 WHERE r.cohort_id = ?4 AND r.left_version IS NULL AND t.outcome = 'auto_match'
                   AND t.best_iis_id IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM group_members m WHERE m.group_id = ?1 AND m.iis_id = t.best_iis_id)
                   AND NOT EXISTS (SELECT 1 FROM group_changes c WHERE c.group_id = ?1 AND c.iis_id = t.best_iis_id
                                   AND c.kind = 'add' AND (c.state = 'pending'
                                        OR (c.state = 'rejected' AND c.row_id = t.row_id)))
                 GROUP BY t.best_iis_id",
                params![group_id, actor, now, cohort_id],
            )
            .ctx("proposing Group additions")? as u64;
        let removes = tx
            .execute(
                "INSERT INTO group_changes (group_id, kind, iis_id, row_id, source, proposed_by, proposed_at, state, reason)
                 SELECT ?1, 'remove', m.iis_id, m.row_id, 'left_cohort', ?2, ?3, 'pending',
                        'the row is not in the latest import of the cohort file'
                 FROM group_members m JOIN rows r ON r.id = m.row_id
                 WHERE m.group_id = ?1 AND r.left_version IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM group_changes c WHERE c.group_id = ?1 AND c.iis_id = m.iis_id
                                   AND c.kind = 'remove' AND c.state = 'pending')",
                params![group_id, actor, now],
            )
            .ctx("proposing Group removals")? as u64;
        // A pending addition whose row has left is moot.
        tx.execute(
            "UPDATE group_changes SET state = 'withdrawn', decided_by = ?2, decided_at = ?3,
                 reason = 'the row left the cohort before the addition was approved'
             WHERE group_id = ?1 AND kind = 'add' AND state = 'pending'
               AND row_id IN (SELECT id FROM rows WHERE cohort_id = ?4 AND left_version IS NOT NULL)",
            params![group_id, actor, now, cohort_id],
        )
        .ctx("withdrawing moot Group additions")?;
        if adds + removes > 0 {
            let details =
                serde_json::json!({ "group": group_id, "additions": adds, "removals": removes })
                    .to_string();
            audit(
                &tx,
                actor,
                "group_changes_proposed",
                "group",
                Some(&group_id.to_string()),
                Some(&details),
                None,
            )?;
        }
        tx.commit().ctx("proposing Group changes")?;
        Ok((adds, removes))
    }

    /// Propose removing a member by hand.
    pub fn propose_removal(
        &mut self,
        group_id: i64,
        iis_id: &str,
        reason: &str,
        actor: &str,
    ) -> Result<i64, StoreError> {
        let tx = self.tx("proposing a Group removal")?;
        let row_id: Option<Option<i64>> = tx
            .query_row(
                "SELECT row_id FROM group_members WHERE group_id = ?1 AND iis_id = ?2",
                params![group_id, iis_id],
                |r| r.get(0),
            )
            .optional()
            .ctx("reading the Group")?;
        let Some(row_id) = row_id else {
            return Err(StoreError::Refused(format!(
                "{iis_id} is not a member of this Group"
            )));
        };
        let pending: Option<i64> = tx
            .query_row(
                "SELECT id FROM group_changes WHERE group_id = ?1 AND iis_id = ?2 AND kind = 'remove' AND state = 'pending'",
                params![group_id, iis_id],
                |r| r.get(0),
            )
            .optional()
            .ctx("reading the Group")?;
        if let Some(id) = pending {
            return Ok(id);
        }
        tx.execute(
            "INSERT INTO group_changes (group_id, kind, iis_id, row_id, source, proposed_by, proposed_at, state, reason)
             VALUES (?1, 'remove', ?2, ?3, 'manual', ?4, ?5, 'pending', ?6)",
            params![group_id, iis_id, row_id, actor, now_text(), reason],
        )
        .ctx("proposing a Group removal")?;
        let id = tx.last_insert_rowid();
        audit(
            &tx,
            actor,
            "group_removal_proposed",
            "group_change",
            Some(&id.to_string()),
            Some(&serde_json::json!({ "group": group_id, "iis_id": iis_id }).to_string()),
            Some(reason),
        )?;
        tx.commit().ctx("proposing a Group removal")?;
        Ok(id)
    }

    /// Approve or reject pending changes. Approving an addition makes the patient a member;
    /// approving a removal ends the membership. Changes no longer pending are skipped. Returns
    /// how many changes were decided.
    pub fn decide_group_changes(
        &mut self,
        change_ids: &[i64],
        approve: bool,
        reason: Option<&str>,
        actor: &str,
    ) -> Result<u64, StoreError> {
        let tx = self.tx("deciding Group changes")?;
        let now = now_text();
        let state = if approve { "approved" } else { "rejected" };
        let mut decided = 0u64;
        for &id in change_ids {
            let change: Option<(i64, String, String, Option<i64>)> = tx
                .query_row(
                    "SELECT group_id, kind, iis_id, row_id FROM group_changes WHERE id = ?1 AND state = 'pending'",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()
                .ctx("reading a Group change")?;
            let Some((group_id, kind, iis_id, row_id)) = change else {
                continue;
            };
            tx.execute(
                "UPDATE group_changes SET state = ?2, decided_by = ?3, decided_at = ?4,
                     reason = COALESCE(?5, reason) WHERE id = ?1",
                params![id, state, actor, now, reason],
            )
            .ctx("deciding a Group change")?;
            if approve {
                if kind == "add" {
                    tx.execute(
                        "INSERT INTO group_members (group_id, iis_id, row_id, since, added_by, change_id)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT(group_id, iis_id) DO NOTHING",
                        params![group_id, iis_id, row_id, now, actor, id],
                    )
                    .ctx("adding a Group member")?;
                } else {
                    tx.execute(
                        "DELETE FROM group_members WHERE group_id = ?1 AND iis_id = ?2",
                        params![group_id, iis_id],
                    )
                    .ctx("removing a Group member")?;
                }
            }
            let details = serde_json::json!({ "group": group_id, "kind": kind, "iis_id": iis_id })
                .to_string();
            audit(
                &tx,
                actor,
                &format!("group_{kind}_{state}"),
                "group_change",
                Some(&id.to_string()),
                Some(&details),
                reason,
            )?;
            decided += 1;
        }
        tx.commit().ctx("deciding Group changes")?;
        Ok(decided)
    }

    /// Members of a Group, by name.
    pub fn members(&self, group_id: i64) -> Result<Vec<Member>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT m.iis_id, m.row_id, r.source_id, r.normalized, m.since, m.added_by
                 FROM group_members m LEFT JOIN rows r ON r.id = m.row_id
                 WHERE m.group_id = ?1",
            )
            .ctx("reading Group members")?;
        let mut rows = stmt.query([group_id]).ctx("reading Group members")?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().ctx("reading Group members")? {
            let normalized: Option<String> = r.get(3).ctx("reading Group members")?;
            let (name, birth_date) = display_name(normalized.as_deref())?;
            out.push(Member {
                iis_id: r.get(0).ctx("reading Group members")?,
                row_id: r.get(1).ctx("reading Group members")?,
                source_id: r.get(2).ctx("reading Group members")?,
                name,
                birth_date,
                since: r.get(4).ctx("reading Group members")?,
                added_by: r.get(5).ctx("reading Group members")?,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.iis_id.cmp(&b.iis_id)));
        Ok(out)
    }

    /// Changes of a Group: only pending ones, or every change newest first (the history).
    pub fn group_changes(
        &self,
        group_id: i64,
        pending_only: bool,
        limit: usize,
    ) -> Result<Vec<GroupChange>, StoreError> {
        let sql = if pending_only {
            format!(
                "{CHANGE_SELECT} WHERE g.group_id = ?1 AND g.state = 'pending' ORDER BY g.id LIMIT ?2"
            )
        } else {
            format!("{CHANGE_SELECT} WHERE g.group_id = ?1 ORDER BY g.id DESC LIMIT ?2")
        };
        let mut stmt = self
            .conn
            .prepare_cached(&sql)
            .ctx("reading Group changes")?;
        let rows = stmt
            .query_map(params![group_id, limit as i64], change_from_row)
            .ctx("reading Group changes")?;
        let mut out = Vec::new();
        for row in rows {
            let (mut change, normalized) = row.ctx("reading Group changes")?;
            change.name = display_name(normalized.as_deref())?.0;
            out.push(change);
        }
        Ok(out)
    }

    /// Record the id the IIS assigned to the Group.
    pub fn set_iis_group_id(
        &mut self,
        group_id: i64,
        iis_group_id: Option<&str>,
        actor: &str,
    ) -> Result<(), StoreError> {
        let tx = self.tx("recording the IIS Group id")?;
        let n = tx
            .execute(
                "UPDATE groups SET iis_group_id = ?2 WHERE id = ?1",
                params![group_id, iis_group_id],
            )
            .ctx("recording the IIS Group id")?;
        if n == 0 {
            return Err(StoreError::NotFound(format!(
                "Group {group_id} does not exist"
            )));
        }
        audit(
            &tx,
            actor,
            "group_iis_id_recorded",
            "group",
            Some(&group_id.to_string()),
            Some(&serde_json::json!({ "iis_group_id": iis_group_id }).to_string()),
            None,
        )?;
        tx.commit().ctx("recording the IIS Group id")
    }

    /// Saved server profiles as `(name, json)`.
    pub fn profiles(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name, json FROM profiles ORDER BY name")
            .ctx("reading server profiles")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .ctx("reading server profiles")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("reading server profiles")
    }

    /// Save (insert or replace) a server profile.
    pub fn save_profile(&mut self, name: &str, json: &str, actor: &str) -> Result<(), StoreError> {
        let tx = self.tx("saving a server profile")?;
        tx.execute(
            "INSERT INTO profiles (name, json, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET json = excluded.json, updated_at = excluded.updated_at",
            params![name, json, now_text()],
        )
        .ctx("saving a server profile")?;
        audit(
            &tx,
            actor,
            "profile_saved",
            "profile",
            Some(name),
            Some(json),
            None,
        )?;
        tx.commit().ctx("saving a server profile")
    }

    /// Delete a server profile.
    pub fn delete_profile(&mut self, name: &str, actor: &str) -> Result<(), StoreError> {
        let tx = self.tx("deleting a server profile")?;
        tx.execute("DELETE FROM profiles WHERE name = ?1", [name])
            .ctx("deleting a server profile")?;
        audit(
            &tx,
            actor,
            "profile_deleted",
            "profile",
            Some(name),
            None,
            None,
        )?;
        tx.commit().ctx("deleting a server profile")
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::{Candidate, Demographics, MatchGrade, MatchOptions, Outcome, ReviewReason};
    use crate::store::{
        ChangeKind, ChangeState, DecisionKind, EncodedRow, RowResult, Store, StoreError,
        VersionMeta,
    };

    fn cand(rank: u32, id: &str, score: f64) -> Candidate {
        Candidate {
            rank,
            iis_id: id.into(),
            score: Some(score),
            grade: Some(MatchGrade::Probable),
            full_url: None,
            demographics: Demographics::default(),
        }
    }

    /// A cohort of four rows matched as: S0 auto (P0), S1 review with two candidates (P1a, P1b),
    /// S2 review with one candidate (P2, 0.85), S3 no match. Returns the row ids.
    fn setup() -> (tempfile::TempDir, Store, i64, Vec<i64>) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("ws.db")).unwrap();
        let mut w = store.begin_import("clinic", "f.csv").unwrap();
        for i in 0..4 {
            let d = Demographics {
                family: Some(format!("FAM{i}")),
                given: Some("ANN".into()),
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
                10,
                "t",
            )
            .unwrap()
            .unwrap();
        let chunk = store.chunks(job.id).unwrap()[0].id;
        let patients = store.chunk_patients(chunk).unwrap();
        let ids: Vec<i64> = patients.iter().map(|p| p.row_id).collect();
        let results = vec![
            RowResult {
                row_id: ids[0],
                candidates: vec![cand(1, "P0", 0.99)],
                issues: vec![],
                outcome: Outcome::AutoMatch,
            },
            RowResult {
                row_id: ids[1],
                candidates: vec![cand(1, "P1a", 0.8), cand(2, "P1b", 0.7)],
                issues: vec![],
                outcome: Outcome::Review(ReviewReason::SeveralCandidates),
            },
            RowResult {
                row_id: ids[2],
                candidates: vec![cand(1, "P2", 0.85)],
                issues: vec![],
                outcome: Outcome::Review(ReviewReason::Probable),
            },
            RowResult {
                row_id: ids[3],
                candidates: vec![],
                issues: vec![],
                outcome: Outcome::NoMatch,
            },
        ];
        store
            .ingest_batch(job.id, chunk, 0, 4, &results, &[])
            .unwrap();
        store
            .set_job_state(job.id, crate::domain::JobState::Completed, None)
            .unwrap();
        (dir, store, done.cohort_id, ids)
    }

    #[test]
    fn accept_proposes_an_addition_that_a_coordinator_approves_into_the_group() {
        let (_d, mut store, cohort, ids) = setup();
        let queue = store.queue(cohort).unwrap();
        assert_eq!(queue.len(), 4);
        assert_eq!(&*queue[1].name, "FAM1, ANN");
        assert_eq!(queue[1].candidates, 2);

        let d = store
            .decide(
                ids[1],
                DecisionKind::Accept,
                Some(2),
                Some("same address"),
                "rita",
            )
            .unwrap();
        assert_eq!(d.iis_id.as_deref(), Some("P1b"));
        let group = store.group_for_cohort(cohort).unwrap();
        assert_eq!((group.members, group.pending), (0, 1));
        let pending = store.group_changes(group.id, true, 100).unwrap();
        assert_eq!(pending[0].iis_id, "P1b");
        assert_eq!(pending[0].kind, ChangeKind::Add);
        assert_eq!(pending[0].name, "FAM1, ANN");

        assert_eq!(
            store
                .decide_group_changes(&[pending[0].id], true, Some("checked"), "cora")
                .unwrap(),
            1
        );
        let members = store.members(group.id).unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].iis_id, "P1b");
        assert_eq!(members[0].added_by, "cora");
        assert_eq!(members[0].source_id.as_deref(), Some("S1"));
        // Deciding again is a no-op: it is no longer pending.
        assert_eq!(
            store
                .decide_group_changes(&[pending[0].id], false, None, "cora")
                .unwrap(),
            0
        );
        let audit = store.audit_entries(50).unwrap();
        let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
        assert!(actions.contains(&"decision_accept"), "{actions:?}");
        assert!(actions.contains(&"group_add_approved"), "{actions:?}");
        // The queue shows the decision.
        assert_eq!(
            store.queue(cohort).unwrap()[1].decision,
            Some(DecisionKind::Accept)
        );
    }

    #[test]
    fn undo_withdraws_the_pending_addition_and_restores_the_previous_decision() {
        let (_d, mut store, cohort, ids) = setup();
        store
            .decide(ids[1], DecisionKind::Skip, None, None, "rita")
            .unwrap();
        store
            .decide(ids[1], DecisionKind::Accept, Some(1), None, "rita")
            .unwrap();
        let group = store.group_for_cohort(cohort).unwrap();
        assert_eq!(store.group(group.id).unwrap().pending, 1);

        // Another reviewer's undo does not touch rita's decisions.
        assert!(store.undo_last_decision("someone_else").unwrap().is_none());

        let undone = store.undo_last_decision("rita").unwrap().unwrap();
        assert_eq!(undone.kind, DecisionKind::Accept);
        assert_eq!(store.group(group.id).unwrap().pending, 0);
        assert_eq!(
            store.queue(cohort).unwrap()[1].decision,
            Some(DecisionKind::Skip)
        );
        let history = store.group_changes(group.id, false, 10).unwrap();
        assert_eq!(history[0].state, ChangeState::Withdrawn);

        // Undo again: the skip goes too, the row is open again.
        store.undo_last_decision("rita").unwrap().unwrap();
        assert_eq!(store.queue(cohort).unwrap()[1].decision, None);
        let detail = store.row_detail(ids[1]).unwrap();
        assert_eq!(detail.decisions.len(), 2);
        assert!(detail.decisions.iter().all(|d| d.undone_at.is_some()));
    }

    #[test]
    fn undo_after_approval_is_refused_with_what_to_do() {
        let (_d, mut store, cohort, ids) = setup();
        store
            .decide(ids[2], DecisionKind::Accept, Some(1), None, "rita")
            .unwrap();
        let group = store.group_for_cohort(cohort).unwrap();
        let pending = store.group_changes(group.id, true, 10).unwrap();
        store
            .decide_group_changes(&[pending[0].id], true, None, "cora")
            .unwrap();
        let err = store.undo_last_decision("rita").unwrap_err();
        assert!(matches!(err, StoreError::Refused(_)));
        assert!(err.to_string().contains("Group screen"), "{err}");
        // Nothing changed.
        assert_eq!(store.members(group.id).unwrap().len(), 1);
        assert_eq!(
            store.queue(cohort).unwrap()[2].decision,
            Some(DecisionKind::Accept)
        );
    }

    #[test]
    fn auto_matches_and_left_rows_become_pending_changes_once() {
        let (_d, mut store, cohort, _ids) = setup();
        assert_eq!(
            store.propose_group_changes(cohort, "system").unwrap(),
            (1, 0)
        );
        assert_eq!(
            store.propose_group_changes(cohort, "system").unwrap(),
            (0, 0)
        );
        let group = store.group_for_cohort(cohort).unwrap();
        let pending = store.group_changes(group.id, true, 10).unwrap();
        assert_eq!(pending[0].source, "auto_match");
        store
            .decide_group_changes(&[pending[0].id], true, None, "cora")
            .unwrap();

        // Re-import without S0: its member is proposed for removal.
        let mut w = store.begin_import("clinic", "f2.csv").unwrap();
        for i in 1..4 {
            let d = Demographics {
                family: Some(format!("FAM{i}")),
                given: Some("ANN".into()),
                ..Default::default()
            };
            w.add_encoded(EncodedRow::new(i as u64 + 2, format!("S{i}"), &d, &d), &[])
                .unwrap();
        }
        w.finish(&VersionMeta::default(), "t").unwrap();
        assert_eq!(
            store.propose_group_changes(cohort, "system").unwrap(),
            (0, 1)
        );
        let pending = store.group_changes(group.id, true, 10).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(
            (pending[0].kind, pending[0].source.as_str()),
            (ChangeKind::Remove, "left_cohort")
        );
        store
            .decide_group_changes(&[pending[0].id], true, Some("moved away"), "cora")
            .unwrap();
        assert!(store.members(group.id).unwrap().is_empty());
    }

    #[test]
    fn bulk_accept_previews_then_applies_exactly_the_previewed_rows() {
        let (_d, mut store, cohort, ids) = setup();
        let preview = store.bulk_accept_preview(cohort, 0.80, 10).unwrap();
        // Only S2 has a single candidate at ≥ 0.80 (S1 has two candidates).
        assert_eq!(preview.rows, 1);
        assert_eq!(preview.sample[0].0, ids[2]);
        assert_eq!(preview.sample[0].3, "P2");
        assert_eq!(store.bulk_accept_preview(cohort, 0.90, 10).unwrap().rows, 0);
        assert_eq!(store.bulk_accept(cohort, 0.80, "rita").unwrap(), 1);
        assert_eq!(
            store.queue(cohort).unwrap()[2].decision,
            Some(DecisionKind::Accept)
        );
        // Applied rows are no longer offered.
        assert_eq!(store.bulk_accept_preview(cohort, 0.80, 10).unwrap().rows, 0);
    }

    #[test]
    fn a_corrected_no_match_row_is_matched_again_by_the_next_job() {
        let (_d, mut store, cohort, ids) = setup();
        let mut d = store.row_detail(ids[3]).unwrap().submitted;
        d.family = Some("CORRECTED".into());
        store
            .edit_row_for_resubmit(ids[3], &d, Some("typo in surname"), "rita")
            .unwrap();
        let detail = store.row_detail(ids[3]).unwrap();
        assert_eq!(detail.submitted.family.as_deref(), Some("CORRECTED"));
        assert_eq!(detail.original.family.as_deref(), Some("FAM3"));
        assert_eq!(detail.outcome, None);
        let job = store
            .create_job(
                cohort,
                "http://127.0.0.1/fhir",
                &MatchOptions::default(),
                10,
                "t",
            )
            .unwrap()
            .unwrap();
        let chunk = store.chunks(job.id).unwrap()[0].id;
        let rows = store.chunk_patients(chunk).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].row_id, ids[3]);
    }

    #[test]
    fn manual_removal_and_iis_group_id_are_audited() {
        let (_d, mut store, cohort, ids) = setup();
        store
            .decide(ids[2], DecisionKind::Accept, Some(1), None, "rita")
            .unwrap();
        let group = store.group_for_cohort(cohort).unwrap();
        let p = store.group_changes(group.id, true, 10).unwrap();
        store
            .decide_group_changes(&[p[0].id], true, None, "cora")
            .unwrap();
        let err = store
            .propose_removal(group.id, "NOPE", "x", "cora")
            .unwrap_err();
        assert!(matches!(err, StoreError::Refused(_)));
        let id = store
            .propose_removal(group.id, "P2", "deceased", "cora")
            .unwrap();
        assert_eq!(
            store
                .propose_removal(group.id, "P2", "again", "cora")
                .unwrap(),
            id
        );
        store
            .set_iis_group_id(group.id, Some("G-77"), "cora")
            .unwrap();
        assert_eq!(
            store.group(group.id).unwrap().iis_group_id.as_deref(),
            Some("G-77")
        );
        let found = store
            .audit_search(&crate::store::AuditFilter {
                action: Some("group_removal".into()),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].why.as_deref(), Some("deceased"));
        // Audit stays append-only.
        let n = store.audit_entries(1000).unwrap().len();
        assert!(n > 5);
    }
}
