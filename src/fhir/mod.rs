//! FHIR R4 JSON shapes used by the `$bulk-match` exchange.
//!
//! Pure conversion and parsing, no I/O: [`patient`] maps a FHIR `Patient` to and from
//! [`crate::domain::Demographics`]; [`bundle`] parses match Bundles (one ndjson line each);
//! [`manifest`] parses the complete-status manifest; [`outcome`] reads `OperationOutcome`s.
//! Parsers are lenient where real servers deviate from the spec, and say precisely what is wrong
//! when they must reject something.

pub mod bundle;
pub mod manifest;
pub mod outcome;
pub mod patient;

pub use bundle::FhirError;
