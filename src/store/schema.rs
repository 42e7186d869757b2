//! Versioned schema migrations, keyed on `PRAGMA user_version`.
//!
//! Each entry of [`MIGRATIONS`] moves the schema from version `i` to `i + 1` and runs in one
//! transaction together with the `user_version` bump, so a crash mid-upgrade leaves the old
//! version intact. A database whose `user_version` is newer than [`LATEST`] is refused: this build
//! would not know how to read it safely.

use rusqlite::{Connection, Transaction};

use super::StoreError;

/// The schema version this build writes.
pub const LATEST: u32 = MIGRATIONS.len() as u32;

type Migration = fn(&Transaction<'_>) -> rusqlite::Result<()>;

const MIGRATIONS: [Migration; 2] = [v1, v2];

fn v1(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        r#"
        CREATE TABLE cohorts (
            id            INTEGER PRIMARY KEY,
            name          TEXT NOT NULL UNIQUE,
            created_at    TEXT NOT NULL,
            current_version INTEGER
        );
        CREATE TABLE cohort_versions (
            id            INTEGER PRIMARY KEY,
            cohort_id     INTEGER NOT NULL REFERENCES cohorts(id),
            imported_at   TEXT NOT NULL,
            file_path     TEXT NOT NULL,
            -- size and modification time of the file, to tell whether it changed since
            file_fingerprint TEXT NOT NULL DEFAULT '',
            format        TEXT NOT NULL,
            encoding      TEXT NOT NULL,
            mapping_json  TEXT NOT NULL,
            good_rows     INTEGER NOT NULL,
            bad_rows      INTEGER NOT NULL,
            warnings      INTEGER NOT NULL,
            new_rows      INTEGER NOT NULL DEFAULT 0,
            changed_rows  INTEGER NOT NULL DEFAULT 0,
            left_rows     INTEGER NOT NULL DEFAULT 0
        );
        -- One row per person in a cohort, keyed by the source id; re-imports update it in place.
        CREATE TABLE rows (
            id            INTEGER PRIMARY KEY,
            cohort_id     INTEGER NOT NULL REFERENCES cohorts(id),
            source_id     TEXT NOT NULL,
            line          INTEGER NOT NULL,
            first_version INTEGER NOT NULL,
            last_version  INTEGER NOT NULL,
            -- set when a re-import no longer contains the row: a candidate for Group removal
            left_version  INTEGER,
            demo_hash     INTEGER NOT NULL,
            original      TEXT NOT NULL,
            normalized    TEXT NOT NULL,
            UNIQUE (cohort_id, source_id)
        );
        CREATE TABLE import_problems (
            id            INTEGER PRIMARY KEY,
            version_id    INTEGER NOT NULL REFERENCES cohort_versions(id),
            line          INTEGER NOT NULL,
            column_name   TEXT,
            value         TEXT,
            reason        TEXT NOT NULL,
            severity      TEXT NOT NULL
        );
        CREATE INDEX import_problems_version ON import_problems(version_id, line);

        CREATE TABLE servers (
            base_url      TEXT PRIMARY KEY,
            accept_mode   INTEGER NOT NULL DEFAULT 0,
            updated_at    TEXT NOT NULL
        );
        CREATE TABLE jobs (
            id            INTEGER PRIMARY KEY,
            cohort_id     INTEGER NOT NULL REFERENCES cohorts(id),
            server_url    TEXT NOT NULL,
            options_json  TEXT NOT NULL,
            chunk_size    INTEGER NOT NULL,
            state         TEXT NOT NULL,
            created_at    TEXT NOT NULL,
            updated_at    TEXT NOT NULL,
            finished_at   TEXT,
            last_error    TEXT
        );
        CREATE TABLE chunks (
            id            INTEGER PRIMARY KEY,
            job_id        INTEGER NOT NULL REFERENCES jobs(id),
            state         TEXT NOT NULL,
            status_url    TEXT,
            attempts      INTEGER NOT NULL DEFAULT 0,
            last_error    TEXT,
            progress      TEXT,
            manifest_json TEXT,
            row_count     INTEGER NOT NULL,
            submitted_at  TEXT,
            updated_at    TEXT NOT NULL
        );
        CREATE INDEX chunks_job ON chunks(job_id);
        CREATE TABLE chunk_rows (
            chunk_id      INTEGER NOT NULL REFERENCES chunks(id),
            row_id        INTEGER NOT NULL REFERENCES rows(id),
            PRIMARY KEY (chunk_id, row_id)
        ) WITHOUT ROWID;
        CREATE INDEX chunk_rows_row ON chunk_rows(row_id);
        -- Output files of a chunk's manifest and how far each was ingested.
        CREATE TABLE chunk_files (
            chunk_id      INTEGER NOT NULL REFERENCES chunks(id),
            seq           INTEGER NOT NULL,
            url           TEXT NOT NULL,
            done          INTEGER NOT NULL DEFAULT 0,
            lines         INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (chunk_id, seq)
        ) WITHOUT ROWID;
        CREATE TABLE ingest_errors (
            id            INTEGER PRIMARY KEY,
            chunk_id      INTEGER NOT NULL REFERENCES chunks(id),
            file_seq      INTEGER NOT NULL,
            line          INTEGER NOT NULL,
            message       TEXT NOT NULL,
            UNIQUE (chunk_id, file_seq, line)
        );
        -- Candidates for a row from its latest match; replaced whole when new results arrive.
        CREATE TABLE candidates (
            row_id        INTEGER NOT NULL REFERENCES rows(id),
            rank          INTEGER NOT NULL,
            job_id        INTEGER NOT NULL REFERENCES jobs(id),
            iis_id        TEXT NOT NULL,
            score         REAL,
            grade         TEXT,
            full_url      TEXT,
            demographics  TEXT NOT NULL,
            PRIMARY KEY (row_id, rank)
        ) WITHOUT ROWID;
        CREATE TABLE row_issues (
            id            INTEGER PRIMARY KEY,
            row_id        INTEGER NOT NULL REFERENCES rows(id),
            job_id        INTEGER NOT NULL REFERENCES jobs(id),
            severity      TEXT NOT NULL,
            code          TEXT NOT NULL,
            text          TEXT NOT NULL
        );
        CREATE INDEX row_issues_row ON row_issues(row_id);
        -- The one current outcome of each submitted row.
        CREATE TABLE triage (
            row_id        INTEGER PRIMARY KEY REFERENCES rows(id),
            job_id        INTEGER NOT NULL REFERENCES jobs(id),
            outcome       TEXT NOT NULL,
            reason        TEXT,
            best_iis_id   TEXT,
            best_score    REAL,
            best_grade    TEXT,
            candidates    INTEGER NOT NULL,
            decided_at    TEXT NOT NULL
        );
        CREATE INDEX triage_outcome ON triage(outcome);

        CREATE TABLE audit (
            id            INTEGER PRIMARY KEY,
            at            TEXT NOT NULL,
            actor         TEXT NOT NULL,
            action        TEXT NOT NULL,
            entity        TEXT NOT NULL,
            entity_id     TEXT,
            details       TEXT,
            why           TEXT
        );
        CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
            BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
        CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
            BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
        "#,
    )
}

/// Review decisions, the local Group with its pending changes, and server profiles.
fn v2(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        r#"
        -- Every review decision ever made; undo marks one undone instead of deleting it.
        CREATE TABLE decisions (
            id            INTEGER PRIMARY KEY,
            row_id        INTEGER NOT NULL REFERENCES rows(id),
            kind          TEXT NOT NULL,      -- accept | no_match | skip
            iis_id        TEXT,               -- the accepted candidate
            rank          INTEGER,
            note          TEXT,
            actor         TEXT NOT NULL,
            at            TEXT NOT NULL,
            undone_at     TEXT,
            undone_by     TEXT
        );
        CREATE INDEX decisions_row ON decisions(row_id, id);
        CREATE INDEX decisions_actor ON decisions(actor, id);
        -- The current (latest not undone) decision of each reviewed row.
        CREATE TABLE reviews (
            row_id        INTEGER PRIMARY KEY REFERENCES rows(id),
            decision_id   INTEGER NOT NULL REFERENCES decisions(id),
            kind          TEXT NOT NULL,
            iis_id        TEXT
        );
        -- One local Group per cohort.
        CREATE TABLE groups (
            id            INTEGER PRIMARY KEY,
            cohort_id     INTEGER NOT NULL UNIQUE REFERENCES cohorts(id),
            name          TEXT NOT NULL,
            iis_group_id  TEXT,
            created_at    TEXT NOT NULL
        );
        CREATE TABLE group_changes (
            id            INTEGER PRIMARY KEY,
            group_id      INTEGER NOT NULL REFERENCES groups(id),
            kind          TEXT NOT NULL,      -- add | remove
            iis_id        TEXT NOT NULL,
            row_id        INTEGER REFERENCES rows(id),
            source        TEXT NOT NULL,      -- auto_match | review | left_cohort | manual
            decision_id   INTEGER REFERENCES decisions(id),
            proposed_by   TEXT NOT NULL,
            proposed_at   TEXT NOT NULL,
            state         TEXT NOT NULL,      -- pending | approved | rejected | withdrawn
            decided_by    TEXT,
            decided_at    TEXT,
            reason        TEXT
        );
        CREATE INDEX group_changes_state ON group_changes(group_id, state);
        CREATE INDEX group_changes_iis ON group_changes(group_id, iis_id);
        CREATE TABLE group_members (
            group_id      INTEGER NOT NULL REFERENCES groups(id),
            iis_id        TEXT NOT NULL,
            row_id        INTEGER REFERENCES rows(id),
            since         TEXT NOT NULL,
            added_by      TEXT NOT NULL,
            change_id     INTEGER NOT NULL REFERENCES group_changes(id),
            PRIMARY KEY (group_id, iis_id)
        ) WITHOUT ROWID;
        CREATE INDEX triage_job ON triage(job_id, outcome);
        -- Server profiles, as JSON owned by the engine (never secrets: key files stay paths).
        CREATE TABLE profiles (
            name          TEXT PRIMARY KEY,
            json          TEXT NOT NULL,
            updated_at    TEXT NOT NULL
        );
        "#,
    )
}

/// Bring `conn` up to [`LATEST`], or refuse a schema newer than this build knows.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| StoreError::sql("reading the schema version", e))?;
    if current > LATEST {
        return Err(StoreError::TooNew {
            found: current,
            known: LATEST,
        });
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let to = i as u32 + 1;
        let tx = conn
            .transaction()
            .map_err(|e| StoreError::sql("starting a schema upgrade", e))?;
        migration(&tx).map_err(|e| StoreError::sql(format!("upgrading the schema to v{to}"), e))?;
        tx.pragma_update(None, "user_version", to)
            .map_err(|e| StoreError::sql("recording the schema version", e))?;
        tx.commit()
            .map_err(|e| StoreError::sql("committing a schema upgrade", e))?;
    }
    Ok(())
}
