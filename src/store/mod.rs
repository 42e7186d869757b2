//! The workspace: one SQLite file holding cohorts, match jobs, candidates, triage and the audit log.
//!
//! This is the only module that uses rusqlite. It owns the schema ([`schema`], migrations keyed on
//! `PRAGMA user_version`), the on-disk encoding of demographics, and every write. Each state change
//! is one transaction that also appends to the audit log, so a process killed at any point leaves
//! a consistent workspace from which the engine resumes. Writes that belong together take a
//! `&Transaction` internally; the public API is in terms of domain types.
//!
//! The file is created readable and writable by its owner only (mode 0600): it holds PHI.

mod codec;
mod cohorts;
mod group;
mod jobs;
mod report;
mod review;
pub mod schema;

use std::path::{Path, PathBuf};

use chrono::{SecondsFormat, Utc};
use rusqlite::{Connection, OpenFlags, Transaction, params};

pub use cohorts::{
    CohortInfo, EncodedRow, ImportDiff, ImportDone, ImportWriter, ProblemRow, VersionMeta,
};
pub use group::{ChangeKind, ChangeState, GroupChange, GroupInfo, Member};
pub use jobs::{ChunkFile, ChunkInfo, ChunkPatient, JobInfo, RowResult};
pub use report::{JobProgress, JobSummary, OutcomeCounts, Report, ResultRow};
pub use review::{BulkAcceptPreview, DecisionInfo, DecisionKind, QueueRow, RowDetail};

/// Everything that can go wrong in the store, with what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "could not open the workspace {path}: {source}. Check that the folder exists and that you may write to it."
    )]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("workspace database error while {doing}: {source}")]
    Sql {
        doing: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "this workspace was written by a newer matchdesk (schema v{found}; this version knows up to v{known}). \
         Open it with the newer matchdesk, or upgrade this one."
    )]
    TooNew { found: u32, known: u32 },
    #[error("{0}")]
    NotFound(String),
    /// The action is not allowed in the current state; the text says why and what to do.
    #[error("{0}")]
    Refused(String),
    #[error("could not write {path}: {source}")]
    Export {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub(crate) fn sql(doing: impl Into<String>, source: rusqlite::Error) -> StoreError {
        StoreError::Sql {
            doing: doing.into(),
            source,
        }
    }
}

/// Shorthand used throughout the store: attach what we were doing to a rusqlite error.
pub(crate) trait Ctx<T> {
    fn ctx(self, doing: &str) -> Result<T, StoreError>;
}

impl<T> Ctx<T> for rusqlite::Result<T> {
    fn ctx(self, doing: &str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::sql(doing, e))
    }
}

/// Now, as an RFC 3339 instant with millisecond precision (sorts as text).
pub fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An open workspace.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Open (creating if needed) the workspace at `path`, upgrading its schema.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        create_private(path)?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .ctx("opening the database file")?;
        Self::setup(conn, path.to_path_buf())
    }

    fn setup(mut conn: Connection, path: PathBuf) -> Result<Store, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .ctx("setting the busy timeout")?;
        // 8 KiB pages (set before the first table exists; ignored afterwards): rows of a few
        // hundred bytes pack better and bulk imports touch fewer pages.
        conn.execute_batch("PRAGMA page_size = 8192;")
            .ctx("configuring the database")?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;
             PRAGMA cache_size = -65536;
             PRAGMA temp_store = MEMORY;",
        )
        .ctx("configuring the database")?;
        schema::migrate(&mut conn)?;
        Ok(Store { conn, path })
    }

    /// The file this workspace lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open file.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .ctx("reading the schema version")
    }

    pub(crate) fn tx(&mut self, doing: &str) -> Result<Transaction<'_>, StoreError> {
        self.conn.transaction().ctx(doing)
    }

    /// Append one entry to the audit log in its own transaction.
    pub fn audit(
        &mut self,
        actor: &str,
        action: &str,
        entity: &str,
        entity_id: Option<&str>,
        details: Option<&str>,
        why: Option<&str>,
    ) -> Result<(), StoreError> {
        let tx = self.tx("recording an audit entry")?;
        audit(&tx, actor, action, entity, entity_id, details, why)?;
        tx.commit().ctx("recording an audit entry")
    }

    /// The last `limit` audit entries, newest first.
    pub fn audit_entries(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, at, actor, action, entity, entity_id, details, why
                 FROM audit ORDER BY id DESC LIMIT ?1",
            )
            .ctx("reading the audit log")?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok(AuditEntry {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    entity: r.get(4)?,
                    entity_id: r.get(5)?,
                    details: r.get(6)?,
                    why: r.get(7)?,
                })
            })
            .ctx("reading the audit log")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("reading the audit log")
    }

    /// Audit entries matching `filter`, newest first.
    pub fn audit_search(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let like = |s: &str| {
            format!(
                "%{}%",
                s.replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            )
        };
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, at, actor, action, entity, entity_id, details, why FROM audit
                 WHERE (?1 IS NULL OR actor LIKE ?1 ESCAPE '\\')
                   AND (?2 IS NULL OR action LIKE ?2 ESCAPE '\\')
                   AND (?3 IS NULL OR (details LIKE ?3 ESCAPE '\\' OR why LIKE ?3 ESCAPE '\\'
                        OR entity_id LIKE ?3 ESCAPE '\\' OR entity LIKE ?3 ESCAPE '\\'))
                   AND (?4 IS NULL OR at >= ?4)
                 ORDER BY id DESC LIMIT ?5",
            )
            .ctx("searching the audit log")?;
        let nonempty = |s: &Option<String>| {
            s.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(like)
        };
        let rows = stmt
            .query_map(
                params![
                    nonempty(&filter.actor),
                    nonempty(&filter.action),
                    nonempty(&filter.text),
                    filter.since.as_deref().filter(|s| !s.is_empty()),
                    filter.limit.max(1) as i64
                ],
                |r| {
                    Ok(AuditEntry {
                        id: r.get(0)?,
                        at: r.get(1)?,
                        actor: r.get(2)?,
                        action: r.get(3)?,
                        entity: r.get(4)?,
                        entity_id: r.get(5)?,
                        details: r.get(6)?,
                        why: r.get(7)?,
                    })
                },
            )
            .ctx("searching the audit log")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx("searching the audit log")
    }

    /// The `Accept` fallback mode that worked last time for this server (0 = spec default).
    pub fn server_accept_mode(&self, base_url: &str) -> Result<u8, StoreError> {
        let mode: Option<i64> = self
            .conn
            .query_row(
                "SELECT accept_mode FROM servers WHERE base_url = ?1",
                [base_url],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .ctx("reading the server profile")?;
        Ok(mode.unwrap_or(0).clamp(0, u8::MAX as i64) as u8)
    }

    /// Remember which `Accept` mode this server accepts.
    pub fn set_server_accept_mode(&mut self, base_url: &str, mode: u8) -> Result<(), StoreError> {
        let tx = self.tx("saving the server profile")?;
        let old: Option<i64> = tx
            .query_row(
                "SELECT accept_mode FROM servers WHERE base_url = ?1",
                [base_url],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .ctx("saving the server profile")?;
        if old == Some(mode as i64) {
            return Ok(());
        }
        tx.execute(
            "INSERT INTO servers (base_url, accept_mode, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(base_url) DO UPDATE SET accept_mode = excluded.accept_mode, updated_at = excluded.updated_at",
            params![base_url, mode as i64, now_text()],
        )
        .ctx("saving the server profile")?;
        audit(
            &tx,
            "system",
            "server_accept_mode",
            "server",
            Some(base_url),
            Some(&format!("{{\"accept_mode\":{mode}}}")),
            Some("the server rejected the standard Accept header; remembered the one that worked"),
        )?;
        tx.commit().ctx("saving the server profile")
    }
}

/// What to show of the audit log. Text filters match anywhere (case-insensitive for ASCII).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Matched against the entity, its id, the details and the reason.
    pub text: Option<String>,
    /// RFC 3339 lower bound on the time.
    pub since: Option<String>,
    pub limit: usize,
}

/// One audit log entry.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub entity: String,
    pub entity_id: Option<String>,
    pub details: Option<String>,
    pub why: Option<String>,
}

/// Append to the audit log inside the caller's transaction.
pub(crate) fn audit(
    tx: &Transaction<'_>,
    actor: &str,
    action: &str,
    entity: &str,
    entity_id: Option<&str>,
    details: Option<&str>,
    why: Option<&str>,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO audit (at, actor, action, entity, entity_id, details, why)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            now_text(),
            actor,
            action,
            entity,
            entity_id,
            details,
            why
        ])
    })
    .ctx("recording an audit entry")?;
    Ok(())
}

/// Create the database file with mode 0600 if it does not exist; tighten it if it is looser.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(open_err)?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(open_err)?;
        let meta = std::fs::metadata(path).map_err(open_err)?;
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(open_err)?;
        }
    }
    #[cfg(not(unix))]
    {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(open_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_file_and_migrates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ws.matchdesk");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), schema::LATEST);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "mode was {mode:o}");
        }
        drop(store);
        // Re-opening is a no-op migration.
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), schema::LATEST);
    }

    #[test]
    fn refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ws.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", schema::LATEST + 5)
                .unwrap();
        }
        let err = Store::open(&path).err().expect("must refuse");
        let msg = err.to_string();
        assert!(msg.contains("newer matchdesk"), "{msg}");
        assert!(msg.contains(&format!("v{}", schema::LATEST + 5)), "{msg}");
    }

    #[test]
    fn tightens_loose_permissions() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("ws.db");
            std::fs::write(&path, b"").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let _store = Store::open(&path).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn audit_is_append_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("ws.db")).unwrap();
        store
            .audit("ana", "note", "row", Some("1"), None, Some("because"))
            .unwrap();
        let entries = store.audit_entries(10).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].actor, "ana");
        let upd = store.conn.execute("UPDATE audit SET actor = 'eve'", []);
        assert!(upd.is_err());
        let del = store.conn.execute("DELETE FROM audit", []);
        assert!(del.is_err());
        assert_eq!(store.audit_entries(10).unwrap()[0].actor, "ana");
    }

    #[test]
    fn remembers_accept_mode_per_server() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("ws.db")).unwrap();
        assert_eq!(store.server_accept_mode("https://a/fhir").unwrap(), 0);
        store.set_server_accept_mode("https://a/fhir", 2).unwrap();
        assert_eq!(store.server_accept_mode("https://a/fhir").unwrap(), 2);
        assert_eq!(store.server_accept_mode("https://b/fhir").unwrap(), 0);
    }
}
