//! matchdesk: the Authorized User's side of FHIR `Patient/$bulk-match` against a state
//! Immunization Information System (IIS).
//!
//! Data flows one way: **file → cohort rows in SQLite → match jobs (network) → candidates in
//! SQLite → review decisions → Group changes**. Each module owns one concern:
//!
//! | module | owns |
//! |---|---|
//! | [`domain`] | pure types shared by everything else |
//! | [`import`] | reading cohort files (CSV, FHIR Patient ndjson), column mapping, validation, normalization |
//! | [`fhir`] | FHIR JSON shapes: Patient ↔ demographics, match Bundles, manifests, OperationOutcome |
//! | [`net`] | HTTP: retry/backoff, the `$bulk-match` async protocol, token scoping, streaming downloads |
//! | [`matching`] | field comparators, scores, grades, explanations, triage rules (shared with [`sim`]) |
//! | [`store`] | the workspace SQLite file; the only module that uses rusqlite |
//! | [`engine`] | jobs: chunking, submit, poll, ingest, triage, resume after restart |
//! | [`sim`] | the bundled simulated IIS (`$bulk-match` provider with fault injection) |

pub mod app;
pub mod domain;
pub mod engine;
pub mod fhir;
pub mod import;
pub mod matching;
pub mod net;
pub mod sim;
pub mod store;
pub mod ui;
