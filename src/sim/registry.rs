//! The simulated IIS's patient registry: the patients, a blocking index and ranked search.
//!
//! This module owns "who does the IIS know, and which of them look like this person?". Patients
//! are held as [`Demographics`] in one `Vec`; the index is a flat, sorted posting list built from
//! [`matching::blocking_keys`] (three arrays, no per-key allocation), so a million patients
//! index in a few seconds and a query scores only the patients that share a key with it.
//! Scoring and grading are the shared [`matching::score`] and [`matching::grade`], so the
//! simulated IIS and the client's local check agree on what a match is. The HTTP front end
//! shares one [`Registry`] across worker threads behind an `Arc`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::domain::{Demographics, Field, MatchGrade, MatchOptions};
use crate::import::{self, ImportError, ImportItem, Mapping};
use crate::matching::{self, GradeThresholds};

use super::generate::{self, GenConfig};

/// A blocking key shared by more patients than this is too common to be useful (e.g. a
/// phone number typed as 000-000-0000); its block is skipped unless the query has no other.
pub const BLOCK_CAP: usize = 2000;

/// With `only_single_match`, a best hit that is not `certain` is returned only if the runner-up
/// scores at least this much lower; otherwise no single record is clearly the right one.
pub const SINGLE_MATCH_MARGIN: f64 = 0.05;

/// How to filter and cut the ranked hits (the `$bulk-match` parameters plus grade thresholds).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct SearchOptions {
    /// At most one hit: the best, and only if it is clearly the most appropriate.
    pub only_single_match: bool,
    /// Only `certain` hits.
    pub only_certain_matches: bool,
    /// Keep at most this many hits after ranking and filtering.
    pub count: Option<u32>,
    pub thresholds: GradeThresholds,
}

impl SearchOptions {
    /// The search options for a kick-off's match options and the IIS's thresholds.
    pub fn from_match_options(opts: &MatchOptions, thresholds: GradeThresholds) -> SearchOptions {
        SearchOptions {
            only_single_match: opts.only_single_match,
            only_certain_matches: opts.only_certain_matches,
            count: opts.count,
            thresholds,
        }
    }
}

/// One ranked candidate: the registry index of the patient, its score and grade.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    pub index: usize,
    pub score: f64,
    pub grade: MatchGrade,
}

/// Why a registry file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry file: {0}")]
    Import(#[from] ImportError),
    #[error(
        "{path}: no column holds the IIS patient id. Headers found: {headers}. Name the column \
         \"iis_id\" or map a column to iis_id in the mapping file (see docs/MAPPING.md)"
    )]
    NoIisIdColumn { path: PathBuf, headers: String },
    #[error(
        "{path}: no usable patient ({bad} rows rejected) — check the file is a registry export \
         with names and birth dates"
    )]
    NoPatients { path: PathBuf, bad: u64 },
}

/// Patients plus a blocking index. `Send + Sync`; read-only after construction.
pub struct Registry {
    patients: Vec<Demographics>,
    /// Distinct blocking keys, ascending.
    keys: Vec<u64>,
    /// `postings[starts[k]..starts[k + 1]]` are the patients under `keys[k]`.
    starts: Vec<u32>,
    postings: Vec<u32>,
    /// `(hash of iis_id, index)`, sorted, for [`Registry::by_iis_id`].
    ids: Vec<(u64, u32)>,
}

fn id_hash(id: &str) -> u64 {
    import::fnv1a64(id.as_bytes())
}

impl Registry {
    /// Index `patients`. Every patient gets an `iis_id` (`IIS{n}`, n = position + 1, when it
    /// has none and that id is free).
    pub fn new(mut patients: Vec<Demographics>) -> Registry {
        if patients.iter().any(|p| p.iis_id.is_none()) {
            let taken: HashSet<String> = patients.iter().filter_map(|p| p.iis_id.clone()).collect();
            let mut n = 0usize;
            for (i, p) in patients.iter_mut().enumerate() {
                if p.iis_id.is_none() {
                    n = n.max(i + 1);
                    let mut id = format!("IIS{n}");
                    while taken.contains(&id) {
                        n += 1;
                        id = format!("IIS{n}");
                    }
                    n += 1;
                    p.iis_id = Some(id);
                }
            }
        }

        let mut pairs: Vec<(u64, u32)> = Vec::with_capacity(patients.len() * 8);
        let mut buf = Vec::with_capacity(16);
        for (i, p) in patients.iter().enumerate() {
            matching::blocking_keys_into(p, &mut buf);
            buf.sort_unstable();
            buf.dedup();
            pairs.extend(buf.iter().map(|&k| (k, i as u32)));
        }
        pairs.sort_unstable();
        let mut keys = Vec::new();
        let mut starts = Vec::new();
        let mut postings = Vec::with_capacity(pairs.len());
        for (k, i) in pairs {
            if keys.last() != Some(&k) {
                keys.push(k);
                starts.push(postings.len() as u32);
            }
            postings.push(i);
        }
        starts.push(postings.len() as u32);
        keys.shrink_to_fit();
        starts.shrink_to_fit();

        let mut ids: Vec<(u64, u32)> = patients
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.iis_id.as_deref().map(|id| (id_hash(id), i as u32)))
            .collect();
        ids.sort_unstable();
        let duplicate_ids = ids
            .windows(2)
            .filter(|w| {
                w[0].0 == w[1].0
                    && patients[w[0].1 as usize].iis_id == patients[w[1].1 as usize].iis_id
            })
            .count();
        let oversized = starts
            .windows(2)
            .filter(|w| (w[1] - w[0]) as usize > BLOCK_CAP)
            .count();
        tracing::info!(
            patients = patients.len(),
            keys = keys.len(),
            postings = postings.len(),
            oversized_blocks = oversized,
            duplicate_ids,
            "registry indexed"
        );
        Registry {
            patients,
            keys,
            starts,
            postings,
            ids,
        }
    }

    /// A synthetic registry of `n` patients (see [`generate::registry`]).
    pub fn generate(n: usize, seed: u64) -> Registry {
        Registry::new(generate::registry(&GenConfig::new(n, seed)))
    }

    /// Load a registry from a CSV file (with an IIS id column) or FHIR Patient ndjson (the
    /// `Patient.id` is the IIS id). Rows the importer rejects are skipped and counted in the
    /// log. Demographics are the importer's normalized values.
    pub fn load(path: &Path, mapping: Option<&Mapping>) -> Result<Registry, RegistryError> {
        let preview = import::preview(path, 0)?;
        let ndjson = preview.format == "ndjson";
        let mapping = if ndjson {
            mapping.cloned()
        } else {
            let mut m = match mapping {
                Some(m) => m.clone(),
                None => preview.automapping.clone(),
            };
            if !m.columns.iter().any(|(_, f)| *f == Field::IisId) {
                let guessed = preview.headers.iter().find(|h| is_iis_id_header(h));
                match guessed {
                    // A header the user mapped elsewhere is not taken over.
                    Some(h) if !m.columns.iter().any(|(c, _)| c == h) => {
                        m.columns.push((h.clone(), Field::IisId));
                    }
                    _ => {
                        return Err(RegistryError::NoIisIdColumn {
                            path: path.to_path_buf(),
                            headers: preview.headers.join(", "),
                        });
                    }
                }
            }
            Some(m)
        };

        let mut patients = Vec::new();
        let mut bad = 0u64;
        let mut without_id = 0u64;
        let mut sink = |item: ImportItem| -> Result<(), ImportError> {
            match item {
                ImportItem::Good(row) => {
                    let mut d = row.normalized;
                    let id = row
                        .original
                        .iis_id
                        .or(d.iis_id.take())
                        .or_else(|| if ndjson { d.local_id.clone() } else { None })
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty());
                    match id {
                        Some(id) => {
                            d.iis_id = Some(id);
                            d.local_id = None;
                            patients.push(d);
                        }
                        None => without_id += 1,
                    }
                }
                ImportItem::Bad { .. } => bad += 1,
            }
            Ok(())
        };
        import::read_cohort(path, mapping.as_ref(), &mut sink)?;
        tracing::info!(
            patients = patients.len(),
            rejected = bad,
            without_id,
            "registry file read"
        );
        if patients.is_empty() {
            return Err(RegistryError::NoPatients {
                path: path.to_path_buf(),
                bad: bad + without_id,
            });
        }
        Ok(Registry::new(patients))
    }

    pub fn len(&self) -> usize {
        self.patients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patients.is_empty()
    }

    /// The patient at `i` (an index from a [`Hit`]). Panics if out of range, like slice indexing.
    pub fn patient(&self, i: usize) -> &Demographics {
        &self.patients[i]
    }

    /// All patients, in registry order.
    pub fn patients(&self) -> &[Demographics] {
        &self.patients
    }

    /// The patient with this IIS id.
    pub fn by_iis_id(&self, id: &str) -> Option<&Demographics> {
        let h = id_hash(id);
        let start = self.ids.partition_point(|&(k, _)| k < h);
        self.ids[start..]
            .iter()
            .take_while(|&&(k, _)| k == h)
            .map(|&(_, i)| &self.patients[i as usize])
            .find(|p| p.iis_id.as_deref() == Some(id))
    }

    /// The patients under one blocking key.
    fn block(&self, key: u64) -> &[u32] {
        match self.keys.binary_search(&key) {
            Ok(k) => &self.postings[self.starts[k] as usize..self.starts[k + 1] as usize],
            Err(_) => &[],
        }
    }

    /// Rank the registry patients that look like `query`: candidates from the blocking index,
    /// scored with [`matching::score`], graded with [`matching::grade`] (those below `possible`
    /// dropped), best first (ties by registry order), then filtered and cut per `opts`.
    pub fn search(&self, query: &Demographics, opts: &SearchOptions) -> Vec<Hit> {
        let q = matching::normalize_for_compare(query);
        let mut keys = Vec::with_capacity(16);
        matching::blocking_keys_into(&q, &mut keys);
        let mut candidates: Vec<u32> = Vec::new();
        let mut smallest_oversized: Option<&[u32]> = None;
        for &k in &keys {
            let block = self.block(k);
            if block.len() <= BLOCK_CAP {
                candidates.extend_from_slice(block);
            } else if smallest_oversized.is_none_or(|s| block.len() < s.len()) {
                smallest_oversized = Some(block);
            }
        }
        if candidates.is_empty()
            && let Some(block) = smallest_oversized
        {
            // Only common keys: score an evenly spread sample rather than everyone.
            let step = block.len().div_ceil(BLOCK_CAP);
            candidates.extend(block.iter().step_by(step));
        }
        candidates.sort_unstable();
        candidates.dedup();

        let mut hits: Vec<Hit> = candidates
            .into_iter()
            .filter_map(|i| {
                let index = i as usize;
                let score = matching::score(&q, &self.patients[index]);
                matching::grade(score, &opts.thresholds)
                    .filter(|g| *g != MatchGrade::CertainlyNot)
                    .map(|grade| Hit {
                        index,
                        score,
                        grade,
                    })
            })
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));

        if opts.only_certain_matches {
            hits.retain(|h| h.grade == MatchGrade::Certain);
        }
        if opts.only_single_match && hits.len() > 1 {
            let clear = hits[0].grade == MatchGrade::Certain
                || hits[0].score - hits[1].score >= SINGLE_MATCH_MARGIN;
            hits.truncate(usize::from(clear));
        }
        if let Some(n) = opts.count {
            hits.truncate(n as usize);
        }
        hits
    }
}

/// Header names a registry export uses for its own patient id.
fn is_iis_id_header(h: &str) -> bool {
    let s: String = h
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    matches!(
        s.as_str(),
        "iisid" | "iispatientid" | "registryid" | "stateid" | "iisclientid" | "patientiisid"
    )
}
