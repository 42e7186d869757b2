//! The bundled simulated IIS: a conformant `$bulk-match` provider for the demo, staff training and
//! as the test peer of the client, with switches that make it hostile on request.
//!
//! [`generate`] makes deterministic synthetic registries and corrupted cohorts; [`registry`] holds
//! the patients with a blocking index and ranks candidates with the shared [`crate::matching`]
//! comparators; [`server`] is the axum HTTP front end; [`faults`] parses and applies fault
//! injection; [`auth`] is the optional SMART Backend Services mode (token endpoint, client
//! registration, bearer checks).

pub mod auth;
pub mod faults;
pub mod generate;
pub mod names;
pub mod registry;
pub mod server;
