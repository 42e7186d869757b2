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
        // The IIS id column is read as the local id: the importer then checks it is present and
        // unique, and does not reject namesakes and near-duplicates (legitimate in a registry)
        // as duplicate rows.
        let mapping = if ndjson {
            mapping.cloned()
        } else {
            let mut m = match mapping {
                Some(m) => m.clone(),
                None => preview.automapping.clone(),
            };
            let id_column = match m.columns.iter().find(|(_, f)| *f == Field::IisId) {
                Some((c, _)) => c.clone(),
                None => match preview.headers.iter().find(|h| is_iis_id_header(h)) {
                    // A header the user mapped elsewhere is not taken over.
                    Some(h) if !m.columns.iter().any(|(c, _)| c == h) => h.clone(),
                    _ => {
                        return Err(RegistryError::NoIisIdColumn {
                            path: path.to_path_buf(),
                            headers: preview.headers.join(", "),
                        });
                    }
                },
            };
            m.columns
                .retain(|(c, f)| *c != id_column && !matches!(f, Field::IisId | Field::LocalId));
            m.columns.push((id_column, Field::LocalId));
            Some(m)
        };

        let mut patients = Vec::new();
        let mut bad = 0u64;
        let mut without_id = 0u64;
        let mut sink = |item: ImportItem| -> Result<(), ImportError> {
            match item {
                ImportItem::Good(row) => {
                    let mut d = row.normalized;
                    let id = d
                        .local_id
                        .take()
                        .or(row.original.local_id)
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty());
                    match id {
                        Some(id) => {
                            d.iis_id = Some(id);
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chrono::NaiveDate;

    use super::*;
    use crate::domain::Sex;
    use crate::sim::generate::{CohortConfig, cohort, write_registry_csv};

    fn person(iis: &str, given: &str, family: &str, dob: (i32, u32, u32)) -> Demographics {
        Demographics {
            given: Some(given.into()),
            family: Some(family.into()),
            birth_date: NaiveDate::from_ymd_opt(dob.0, dob.1, dob.2),
            sex: Some(Sex::Male),
            phone: Some("5035550123".into()),
            address_line1: Some("12 NE OAK ST".into()),
            city: Some("PORTLAND".into()),
            state: Some("OR".into()),
            postal_code: Some("97211".into()),
            iis_id: Some(iis.into()),
            ..Default::default()
        }
    }

    #[test]
    fn registry_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Registry>();
    }

    #[test]
    fn ids_are_assigned_and_found() {
        let mut a = person("X1", "JOHN", "SMITH", (2015, 1, 2));
        a.iis_id = None;
        let b = person("IIS1", "MARY", "JONES", (2014, 3, 4));
        let reg = Registry::new(vec![a, b]);
        assert_eq!(reg.len(), 2);
        let id0 = reg.patient(0).iis_id.clone().unwrap();
        assert_ne!(
            id0, "IIS1",
            "an assigned id never collides with an existing one"
        );
        assert_eq!(reg.by_iis_id(&id0).unwrap().given.as_deref(), Some("JOHN"));
        assert_eq!(
            reg.by_iis_id("IIS1").unwrap().given.as_deref(),
            Some("MARY")
        );
        assert!(reg.by_iis_id("IIS999").is_none());
    }

    #[test]
    fn search_ranks_and_options_cut() {
        let exact = person("A", "WILLIAM", "SMITH", (2015, 6, 1));
        let mut dup = exact.clone();
        dup.iis_id = Some("B".into());
        dup.phone = None;
        let mut other_place = exact.clone();
        other_place.iis_id = Some("C".into());
        other_place.phone = Some("5415559999".into());
        other_place.address_line1 = Some("900 SW PINE AVE".into());
        other_place.city = Some("BEND".into());
        other_place.postal_code = Some("97701".into());
        let stranger = person("D", "MARIA", "GARCIA", (1980, 2, 2));
        let reg = Registry::new(vec![stranger, other_place, dup, exact.clone()]);

        let mut query = exact.clone();
        query.iis_id = None;
        query.given = Some("Bill".into());
        query.family = Some("smith".into());
        let all = reg.search(&query, &SearchOptions::default());
        let ids: Vec<&str> = all
            .iter()
            .map(|h| reg.patient(h.index).iis_id.as_deref().unwrap())
            .collect();
        assert_eq!(ids.first(), Some(&"A"), "{ids:?}");
        assert!(!ids.contains(&"D"), "a stranger is not a candidate");
        assert!(all.windows(2).all(|w| w[0].score >= w[1].score));
        for h in &all {
            assert_eq!(
                Some(h.grade),
                matching::grade(h.score, &GradeThresholds::default())
            );
        }

        let count1 = reg.search(
            &query,
            &SearchOptions {
                count: Some(1),
                ..Default::default()
            },
        );
        assert_eq!(count1, all[..1].to_vec());

        let certain = reg.search(
            &query,
            &SearchOptions {
                only_certain_matches: true,
                ..Default::default()
            },
        );
        let expected: Vec<Hit> = all
            .iter()
            .copied()
            .filter(|h| h.grade == MatchGrade::Certain)
            .collect();
        assert_eq!(certain, expected);

        // Two equally good records: with strict thresholds (nothing certain) no single one is
        // clearly best, so onlySingleMatch returns nothing.
        let strict = GradeThresholds {
            certain: 1.01,
            probable: 0.5,
            possible: 0.1,
        };
        let twins = Registry::new(vec![exact.clone(), {
            let mut d = exact.clone();
            d.iis_id = Some("A2".into());
            d
        }]);
        let single = SearchOptions {
            only_single_match: true,
            thresholds: strict,
            ..Default::default()
        };
        assert!(twins.search(&query, &single).is_empty());
        // With default thresholds both are certain: the best one is returned anyway.
        let single_default = SearchOptions {
            only_single_match: true,
            ..Default::default()
        };
        let one = twins.search(&exact, &single_default);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].index, 0, "ties go to registry order");
        // A clear winner is returned even when not certain.
        let clear = Registry::new(vec![exact.clone(), stranger_like(&exact)]);
        let hits = clear.search(&query, &single);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].index, 0);
    }

    /// Same name and birth date, everything else different.
    fn stranger_like(p: &Demographics) -> Demographics {
        let mut d = p.clone();
        d.iis_id = Some("S".into());
        d.sex = Some(Sex::Female);
        d.phone = Some("4585550000".into());
        d.address_line1 = Some("1 MAIN ST".into());
        d.city = Some("BURNS".into());
        d.postal_code = Some("97720".into());
        d
    }

    #[test]
    fn oversized_blocks_are_sampled_not_scored_whole() {
        // 2,500 people share one phone and nothing else; a phone-only query must not score
        // them all, but still gets an answer.
        let people: Vec<Demographics> = (0..2500)
            .map(|i| Demographics {
                given: Some(format!("G{i}")),
                family: Some(format!("F{i}")),
                phone: Some("5035550000".into()),
                ..Default::default()
            })
            .collect();
        let reg = Registry::new(people);
        let q = Demographics {
            phone: Some("(503) 555-0000".into()),
            ..Default::default()
        };
        let loose = SearchOptions {
            thresholds: GradeThresholds {
                certain: 0.99,
                probable: 0.5,
                possible: 0.0,
            },
            ..Default::default()
        };
        let hits = reg.search(&q, &loose);
        assert!(hits.len() <= BLOCK_CAP, "{}", hits.len());
    }

    #[test]
    fn corrupted_cohort_finds_true_records() {
        let reg = Registry::generate(20_000, 11);
        let entries = cohort(
            reg.patients(),
            &CohortConfig {
                size: 2000,
                seed: 5,
                ..CohortConfig::default()
            },
        );
        let opts = SearchOptions::default();
        let (mut inside, mut top1, mut top5) = (0usize, 0usize, 0usize);
        let (mut outside, mut outside_certain) = (0usize, 0usize);
        let mut misses: HashMap<String, usize> = HashMap::new();
        for e in &entries {
            let hits = reg.search(&e.record, &opts);
            let id = |h: &Hit| reg.patient(h.index).iis_id.clone();
            match &e.truth {
                Some(t) => {
                    inside += 1;
                    if hits.first().and_then(id).as_ref() == Some(t) {
                        top1 += 1;
                    } else {
                        *misses.entry(e.corruptions.join("+")).or_default() += 1;
                    }
                    if hits.iter().take(5).any(|h| id(h).as_ref() == Some(t)) {
                        top5 += 1;
                    }
                }
                None => {
                    outside += 1;
                    if hits.iter().any(|h| h.grade == MatchGrade::Certain) {
                        outside_certain += 1;
                    }
                }
            }
        }
        let recall1 = top1 as f64 / inside as f64;
        let recall5 = top5 as f64 / inside as f64;
        let false_certain = outside_certain as f64 / outside as f64;
        let mut misses: Vec<_> = misses.into_iter().collect();
        misses.sort_by_key(|m| std::cmp::Reverse(m.1));
        println!(
            "recall@1 {recall1:.4}, recall@5 {recall5:.4} ({inside} in registry); \
             not in registry with a certain hit {false_certain:.4} ({outside}); misses by \
             corruption: {misses:?}"
        );
        assert!(recall1 >= 0.9, "recall@1 {recall1}");
        assert!(recall5 >= 0.95, "recall@5 {recall5}");
        assert!(false_certain <= 0.05, "false certain {false_certain}");
    }

    #[test]
    fn load_reads_registry_csv_and_requires_an_id_column() {
        let patients = generate::registry(&GenConfig::new(500, 3));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.csv");
        write_registry_csv(&path, &patients).unwrap();
        let reg = Registry::load(&path, None).unwrap();
        assert_eq!(reg.len(), 500);
        let p = &patients[17];
        let loaded = reg.by_iis_id(p.iis_id.as_deref().unwrap()).unwrap();
        assert_eq!(loaded.birth_date, p.birth_date);
        assert_eq!(
            matching::normalize_name(loaded.family.as_deref().unwrap()),
            matching::normalize_name(p.family.as_deref().unwrap())
        );
        let hits = reg.search(p, &SearchOptions::default());
        assert_eq!(reg.patient(hits[0].index).iis_id, p.iis_id);

        let no_id = dir.path().join("no_id.csv");
        std::fs::write(&no_id, "given,family,birth_date\nANA,LOPEZ,2019-01-02\n").unwrap();
        let err = Registry::load(&no_id, None).err().unwrap();
        assert!(matches!(err, RegistryError::NoIisIdColumn { .. }), "{err}");
        assert!(err.to_string().contains("iis_id"));
    }

    #[test]
    fn load_reads_fhir_patient_ndjson_with_id_as_iis_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.ndjson");
        let lines = [
            r#"{"resourceType":"Patient","id":"IIS77","name":[{"family":"Nguyen","given":["Linh"]}],"gender":"female","birthDate":"2018-05-06"}"#,
            r#"{"resourceType":"Patient","id":"IIS78","name":[{"family":"Tran","given":["Bao"]}],"gender":"male","birthDate":"2017-01-09"}"#,
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();
        let reg = Registry::load(&path, None).unwrap();
        assert_eq!(reg.len(), 2);
        let p = reg.by_iis_id("IIS78").unwrap();
        assert_eq!(p.birth_date, NaiveDate::from_ymd_opt(2017, 1, 9));
        assert!(p.local_id.is_none());
    }
}

#[cfg(test)]
mod perf {
    use std::time::Instant;

    use super::*;
    use crate::sim::generate::{CohortConfig, cohort};

    /// Throughput probe (numbers only mean something in an optimized build):
    /// `cargo test --lib sim::registry::perf -- --ignored --nocapture` with `MATCHDESK_PROBE_N`
    /// (registry size) and `MATCHDESK_PROBE_Q` (queries).
    #[test]
    #[ignore]
    fn probe() {
        let n: usize = std::env::var("MATCHDESK_PROBE_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        let t = Instant::now();
        let patients = generate::registry(&GenConfig::new(n, 1));
        let gen_time = t.elapsed();
        let t = Instant::now();
        let reg = Registry::new(patients);
        let index_time = t.elapsed();
        let queries = cohort(
            reg.patients(),
            &CohortConfig {
                size: std::env::var("MATCHDESK_PROBE_Q")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or((n / 10).max(1000)),
                seed: 2,
                ..CohortConfig::default()
            },
        );
        let t = Instant::now();
        let mut found = 0usize;
        for q in &queries {
            found += usize::from(!reg.search(&q.record, &SearchOptions::default()).is_empty());
        }
        let search_time = t.elapsed();
        eprintln!(
            "n={n}: generate {gen_time:?}, index {index_time:?} ({} keys, {} postings), \
             {} searches {search_time:?} ({found} with hits)",
            reg.keys.len(),
            reg.postings.len(),
            queries.len()
        );
    }
}
