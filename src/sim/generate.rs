//! Deterministic synthetic data for the simulated IIS: a registry of patients and corrupted
//! clinic cohorts with known ground truth.
//!
//! This module owns the *shape* of the demo world. Everything is derived from a seed with
//! [`ChaCha8Rng`], so the same seed always yields the same registry, byte for byte. The registry
//! is built household by household (parents, children, twins and triplets sharing address,
//! phone and mother's maiden name), then sprinkled with the hard cases a real IIS has:
//! near-duplicate records of one person under two IIS ids, namesakes (same name and birth date,
//! different person), juniors living with their fathers. Names and places come from
//! [`super::names`] (one state: Oregon). A [`cohort`] is a clinic's view of some registry
//! patients (title case, fewer fields, realistic corruptions) plus people the IIS has never seen,
//! each with its truth, so matching quality can be measured.

use std::collections::HashSet;
use std::path::Path;

use chrono::{Datelike, Days, NaiveDate};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::names::{
    AREA_CODES, CITIES, DIRECTIONALS, EMAIL_DOMAINS, FAMILY, FEMALE_GIVEN, MALE_GIVEN, NICKNAMES,
    STATE, STREET_SUFFIXES, STREETS,
};
use crate::domain::{Demographics, Sex};

/// The reference date of the demo world ("today" for ages): 2026-01-01.
pub const REFERENCE_DATE: NaiveDate = match NaiveDate::from_ymd_opt(2026, 1, 1) {
    Some(d) => d,
    None => NaiveDate::MIN,
};

/// What registry to generate.
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// Exact number of registry patients.
    pub patients: usize,
    pub seed: u64,
    /// No one is born after this date; the oldest are 90 years older.
    pub reference_date: NaiveDate,
}

impl GenConfig {
    /// A config with the standard [`REFERENCE_DATE`].
    pub fn new(patients: usize, seed: u64) -> GenConfig {
        GenConfig {
            patients,
            seed,
            reference_date: REFERENCE_DATE,
        }
    }
}

/// What cohort to derive from a registry.
#[derive(Clone, Debug)]
pub struct CohortConfig {
    /// Number of cohort rows.
    pub size: usize,
    /// Share of rows for people the registry does not hold (default 0.1).
    pub not_in_registry_fraction: f64,
    /// Share of in-registry rows that carry at least one corruption (default 0.3).
    pub corruption_rate: f64,
    pub seed: u64,
}

impl Default for CohortConfig {
    fn default() -> Self {
        CohortConfig {
            size: 1000,
            not_in_registry_fraction: 0.1,
            corruption_rate: 0.3,
            seed: 1,
        }
    }
}

/// One cohort row with its ground truth.
#[derive(Clone, Debug, PartialEq)]
pub struct CohortEntry {
    /// The person as the clinic has them (title case, raw-ish); `local_id` is set ("MRN0000123"),
    /// `iis_id` is not. Run it through the importer's normalization before matching.
    pub record: Demographics,
    /// The `iis_id` of the true registry record; `None` when the person is not in the registry.
    pub truth: Option<String>,
    /// Names of the corruptions applied (see [`CORRUPTIONS`]), in order.
    pub corruptions: Vec<&'static str>,
}

/// Every corruption name [`cohort`] may report.
pub const CORRUPTIONS: &[&str] = &[
    "typo_family",
    "typo_given",
    "nickname",
    "dob_day_month_swap",
    "dob_digit",
    "moved",
    "new_phone",
    "missing_phone",
    "missing_address",
    "missing_middle",
    "hyphenated_family",
    "unhyphenated_family",
    "first_last_swap",
    "lowercase",
    "extra_spaces",
];

// ---------------------------------------------------------------------------------------------
// Weighted sampling

/// Cumulative weights for O(log n) sampling.
struct Weighted {
    cum: Vec<f64>,
}

impl Weighted {
    fn from_weights(weights: impl Iterator<Item = f64>) -> Weighted {
        let mut total = 0.0;
        let cum = weights
            .map(|w| {
                total += w;
                total
            })
            .collect();
        Weighted { cum }
    }

    /// Zipf-like weights by rank: `1 / (rank + offset)^s`.
    fn zipf(n: usize, offset: f64, s: f64) -> Weighted {
        Weighted::from_weights((0..n).map(|r| 1.0 / (r as f64 + offset).powf(s)))
    }

    fn sample(&self, rng: &mut ChaCha8Rng) -> usize {
        let total = self.cum.last().copied().unwrap_or(0.0);
        let r = rng.random::<f64>() * total;
        self.cum
            .partition_point(|&c| c <= r)
            .min(self.cum.len().saturating_sub(1))
    }
}

struct Pools {
    male: Weighted,
    female: Weighted,
    family: Weighted,
    street: Weighted,
    suffix: Weighted,
    city: Weighted,
    domain: Weighted,
}

impl Pools {
    fn new() -> Pools {
        Pools {
            male: Weighted::zipf(MALE_GIVEN.len(), 8.0, 1.0),
            female: Weighted::zipf(FEMALE_GIVEN.len(), 8.0, 1.0),
            family: Weighted::zipf(FAMILY.len(), 12.0, 0.95),
            street: Weighted::zipf(STREETS.len(), 5.0, 0.7),
            suffix: Weighted::from_weights(STREET_SUFFIXES.iter().map(|(_, w)| f64::from(*w))),
            city: Weighted::from_weights(CITIES.iter().map(|c| f64::from(c.weight))),
            domain: Weighted::from_weights(EMAIL_DOMAINS.iter().map(|(_, w)| f64::from(*w))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Registry generation

const DAYS_PER_YEAR: f64 = 365.25;
const MAX_AGE_DAYS: i64 = 90 * 365 + 22;

/// A household's shared contact data.
#[derive(Clone)]
struct Home {
    line1: String,
    line2: Option<String>,
    city: usize,
    zip: String,
    phone: Option<String>,
    medicaid: bool,
}

struct Gen<'a> {
    rng: ChaCha8Rng,
    pools: &'a Pools,
    reference: NaiveDate,
    medicaid_counter: u64,
}

impl Gen<'_> {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random::<f64>() < p
    }

    fn given(&mut self, sex: Sex) -> &'static str {
        if sex == Sex::Female {
            FEMALE_GIVEN[self.pools.female.sample(&mut self.rng)]
        } else {
            MALE_GIVEN[self.pools.male.sample(&mut self.rng)]
        }
    }

    fn family(&mut self) -> &'static str {
        FAMILY[self.pools.family.sample(&mut self.rng)]
    }

    fn sex(&mut self) -> Sex {
        if self.chance(0.51) {
            Sex::Male
        } else {
            Sex::Female
        }
    }

    fn date_from_age_days(&self, age_days: i64) -> NaiveDate {
        let age = age_days.clamp(0, MAX_AGE_DAYS) as u64;
        self.reference
            .checked_sub_days(Days::new(age))
            .unwrap_or(self.reference)
    }

    fn years_in_days(&mut self, lo: f64, hi: f64) -> i64 {
        (self.rng.random_range(lo..hi) * DAYS_PER_YEAR) as i64
    }

    fn street_line(&mut self) -> String {
        let number: u32 = if self.chance(0.7) {
            self.rng.random_range(100..9999)
        } else {
            self.rng.random_range(10000..39999)
        };
        let mut s = String::with_capacity(28);
        s.push_str(&number.to_string());
        s.push(' ');
        if self.chance(0.4) {
            s.push_str(DIRECTIONALS[self.rng.random_range(0..DIRECTIONALS.len())]);
            s.push(' ');
        }
        if self.chance(0.12) {
            let n: u32 = self.rng.random_range(1..=60);
            s.push_str(&ordinal(n));
        } else {
            s.push_str(STREETS[self.pools.street.sample(&mut self.rng)]);
        }
        s.push(' ');
        s.push_str(STREET_SUFFIXES[self.pools.suffix.sample(&mut self.rng)].0);
        s
    }

    fn line2(&mut self) -> Option<String> {
        if !self.chance(0.12) {
            return None;
        }
        let n: u32 = self.rng.random_range(1..400);
        Some(match self.rng.random_range(0..4) {
            0 => format!("APT {n}"),
            1 => format!("UNIT {}", (b'A' + (n % 6) as u8) as char),
            2 => format!("# {n}"),
            _ => format!("SPC {}", n % 90 + 1),
        })
    }

    fn zip(&mut self, city: usize) -> String {
        let c = &CITIES[city];
        format!("{:05}", self.rng.random_range(c.zip_lo..=c.zip_hi))
    }

    fn phone(&mut self, city: usize) -> String {
        let codes = AREA_CODES[CITIES[city].region.min(AREA_CODES.len() - 1)];
        let area = if self.chance(0.7) { codes[0] } else { codes[1] };
        let exchange: u32 = loop {
            let e = self.rng.random_range(200..1000);
            if e % 100 != 11 && e != 555 {
                break e;
            }
        };
        let line: u32 = self.rng.random_range(0..10000);
        format!("{area}{exchange}{line:04}")
    }

    fn medicaid_id(&mut self) -> String {
        self.medicaid_counter += 1;
        // Multiplying by a number coprime to 10 permutes 0..10^6, so ids stay unique.
        let n = (self.medicaid_counter.wrapping_mul(48271)) % 1_000_000;
        let a = (b'A' + self.rng.random_range(0..26u8)) as char;
        let b = (b'A' + self.rng.random_range(0..26u8)) as char;
        let c = (b'A' + ((self.medicaid_counter / 1_000_000) % 26) as u8) as char;
        format!("{a}{b}{n:06}{c}")
    }

    fn email(&mut self, given: &str, family: &str, birth: NaiveDate) -> String {
        let g = email_part(given);
        let f = email_part(family);
        let domain = EMAIL_DOMAINS[self.pools.domain.sample(&mut self.rng)].0;
        match self.rng.random_range(0..4) {
            0 => format!("{g}.{f}@{domain}"),
            1 => format!("{g}{f}{:02}@{domain}", birth.year() % 100),
            2 => format!(
                "{}{f}{}@{domain}",
                g.chars().next().unwrap_or('x'),
                self.rng.random_range(1..999)
            ),
            _ => format!("{f}.{g}{}@{domain}", self.rng.random_range(1..99)),
        }
    }

    fn new_home(&mut self) -> Home {
        let city = self.pools.city.sample(&mut self.rng);
        let zip = self.zip(city);
        let phone = if self.chance(0.92) {
            Some(self.phone(city))
        } else {
            None
        };
        Home {
            line1: self.street_line(),
            line2: self.line2(),
            city,
            zip,
            phone,
            medicaid: self.chance(0.3),
        }
    }

    fn middle(&mut self, sex: Sex) -> Option<String> {
        let r = self.rng.random::<f64>();
        if r < 0.72 {
            Some(self.given(sex).to_string())
        } else if r < 0.8 {
            Some(self.given(sex)[..1].to_string())
        } else {
            None
        }
    }

    /// One person living at `home`.
    #[allow(clippy::too_many_arguments)]
    fn person(
        &mut self,
        home: &Home,
        sex: Sex,
        given: &str,
        family: &str,
        birth: NaiveDate,
        child: bool,
        mothers_maiden: Option<&str>,
    ) -> Demographics {
        let middle = self.middle(sex);
        let phone = if !child && self.chance(0.45) {
            Some(self.phone(home.city))
        } else {
            home.phone.clone()
        };
        let email = if self.chance(if child { 0.1 } else { 0.35 }) {
            Some(self.email(given, family, birth))
        } else {
            None
        };
        let medicaid_id = if home.medicaid && self.chance(if child { 0.9 } else { 0.4 }) {
            Some(self.medicaid_id())
        } else {
            None
        };
        let ssn = if self.chance(0.3) {
            Some(format!("{:04}", self.rng.random_range(1..10000)))
        } else {
            None
        };
        let mothers_maiden_name = match mothers_maiden {
            Some(m) if self.chance(0.85) => Some(m.to_string()),
            Some(_) => None,
            None if self.chance(0.25) => Some(self.family().to_string()),
            None => None,
        };
        let multiple_birth = if child && self.chance(0.4) {
            Some(false)
        } else {
            None
        };
        Demographics {
            given: Some(given.to_string()),
            middle,
            family: Some(family.to_string()),
            suffix: None,
            birth_date: Some(birth),
            sex: Some(sex),
            phone,
            email,
            address_line1: Some(home.line1.clone()),
            address_line2: home.line2.clone(),
            city: Some(CITIES[home.city].name.to_string()),
            state: Some(STATE.to_string()),
            postal_code: Some(home.zip.clone()),
            local_id: None,
            medicaid_id,
            ssn,
            mothers_maiden_name,
            multiple_birth,
            multiple_birth_order: None,
            iis_id: None,
        }
    }

    /// A mother, maybe a father, and one to four birth events (some twins or triplets).
    fn family_household(&mut self, out: &mut Vec<Demographics>) {
        let home = self.new_home();
        let n_births = [
            1usize, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 4,
        ][self.rng.random_range(0..20)];
        let u: f64 = self.rng.random();
        let oldest_days = (u.powf(1.25) * 18.0 * DAYS_PER_YEAR) as i64;
        let mother_days = oldest_days + self.years_in_days(18.0, 40.0);
        let maiden = self.family();
        let mother_given = self.given(Sex::Female);

        let father = if self.chance(0.65) {
            let fam = self.family();
            let g = self.given(Sex::Male);
            let days = mother_days + self.rng.random_range(-3 * 365..6 * 365);
            Some((g, fam, days.max(oldest_days + 17 * 365)))
        } else {
            None
        };
        let married = father.is_some() && self.chance(0.8);
        let mother_family: String = match father {
            Some((_, ffam, _)) if married => {
                if self.chance(0.1) {
                    format!("{maiden}-{ffam}")
                } else if self.chance(0.85) {
                    ffam.to_string()
                } else {
                    maiden.to_string()
                }
            }
            _ => maiden.to_string(),
        };
        let kids_family: String = match father {
            Some((_, ffam, _)) if married => {
                if self.chance(0.04) {
                    format!("{maiden}-{ffam}")
                } else {
                    ffam.to_string()
                }
            }
            Some((_, ffam, _)) if self.chance(0.5) => ffam.to_string(),
            _ => mother_family.clone(),
        };

        let mother_birth = self.date_from_age_days(mother_days);
        out.push(self.person(
            &home,
            Sex::Female,
            mother_given,
            &mother_family,
            mother_birth,
            false,
            None,
        ));
        if let Some((g, fam, days)) = father {
            let birth = self.date_from_age_days(days);
            out.push(self.person(&home, Sex::Male, g, fam, birth, false, None));
        }

        let mut used: Vec<&'static str> = Vec::with_capacity(6);
        let mut age_days = oldest_days;
        for _ in 0..n_births {
            if age_days < 0 {
                break;
            }
            let r: f64 = self.rng.random();
            let n_babies = if r < 0.0015 {
                3
            } else if r < 0.027 {
                2
            } else {
                1
            };
            let birth = self.date_from_age_days(age_days);
            for order in 1..=n_babies {
                let sex = self.sex();
                let mut junior = false;
                let mut given = self.given(sex);
                if let Some((fg, _, _)) = father
                    && sex == Sex::Male
                    && n_babies == 1
                    && !used.contains(&fg)
                    && self.chance(0.04)
                {
                    given = fg;
                    junior = true;
                }
                for _ in 0..8 {
                    if !used.contains(&given) {
                        break;
                    }
                    given = self.given(sex);
                }
                used.push(given);
                let mut p = self.person(&home, sex, given, &kids_family, birth, true, Some(maiden));
                if junior {
                    p.suffix = Some("JR".to_string());
                }
                if n_babies > 1 {
                    p.multiple_birth = Some(true);
                    p.multiple_birth_order = Some(order);
                }
                out.push(p);
            }
            age_days -= self.rng.random_range(300..2200);
        }
    }

    /// One or two adults without children in the registry.
    fn adult_household(&mut self, out: &mut Vec<Demographics>, lo: f64, hi: f64, couple: bool) {
        let home = self.new_home();
        let sex = self.sex();
        let days = self.years_in_days(lo, hi);
        let family = self.family();
        let given = self.given(sex);
        let birth = self.date_from_age_days(days);
        let mut p = self.person(&home, sex, given, family, birth, false, None);
        if sex == Sex::Male && self.chance(0.025) {
            p.suffix = Some(["JR", "SR", "II", "III"][self.rng.random_range(0..4)].to_string());
        }
        out.push(p);
        if couple {
            let other = if self.chance(0.9) {
                if sex == Sex::Male {
                    Sex::Female
                } else {
                    Sex::Male
                }
            } else {
                sex
            };
            let days2 = (days + self.rng.random_range(-5 * 365..5 * 365)).max(18 * 365);
            let fam2 = if self.chance(0.7) {
                family
            } else {
                self.family()
            };
            let given2 = self.given(other);
            let birth2 = self.date_from_age_days(days2);
            out.push(self.person(&home, other, given2, fam2, birth2, false, None));
        }
    }

    /// A second record of the same person, entered elsewhere with small differences.
    fn near_duplicate(&mut self, p: &Demographics) -> Demographics {
        let mut d = p.clone();
        let n_changes = if self.chance(0.6) { 1 } else { 2 };
        for _ in 0..n_changes {
            match self.rng.random_range(0..6) {
                0 => {
                    if let Some(g) = &d.given {
                        d.given = Some(typo(&mut self.rng, g));
                    }
                }
                1 => d.middle = None,
                2 => {
                    let home = self.new_home();
                    d.address_line1 = Some(home.line1);
                    d.address_line2 = home.line2;
                    d.city = Some(CITIES[home.city].name.to_string());
                    d.postal_code = Some(home.zip);
                }
                3 => d.phone = None,
                4 => {
                    let nick = d.given.as_deref().and_then(|g| nickname(&mut self.rng, g));
                    match nick {
                        Some(n) => d.given = Some(n.to_string()),
                        None => d.email = None,
                    }
                }
                _ => {
                    d.medicaid_id = None;
                    d.ssn = None;
                    d.mothers_maiden_name = None;
                }
            }
        }
        d
    }

    /// Someone else with the same name, sex and birth date, living elsewhere.
    fn namesake(&mut self, p: &Demographics) -> Option<Demographics> {
        let sex = p.sex?;
        let birth = p.birth_date?;
        let given = p.given.as_deref()?;
        let family = p.family.as_deref()?;
        let home = self.new_home();
        let maiden = self.family();
        let child = (self.reference - birth).num_days() < 18 * 365;
        Some(self.person(&home, sex, given, family, birth, child, Some(maiden)))
    }
}

fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "TH",
        (1, _) => "ST",
        (2, _) => "ND",
        (3, _) => "RD",
        _ => "TH",
    };
    format!("{n}{suffix}")
}

fn email_part(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphabetic())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Generate a registry of exactly `cfg.patients` patients, each with a unique `iis_id`
/// (`IIS00000001`, ...). Deterministic in `cfg.seed`.
pub fn registry(cfg: &GenConfig) -> Vec<Demographics> {
    let pools = Pools::new();
    let mut g = Gen {
        rng: ChaCha8Rng::seed_from_u64(cfg.seed),
        pools: &pools,
        reference: cfg.reference_date,
        medicaid_counter: 0,
    };
    let n = cfg.patients;
    let mut out: Vec<Demographics> = Vec::with_capacity(n + 16);
    while out.len() < n {
        let start = out.len();
        let r: f64 = g.rng.random();
        if r < 0.55 {
            g.family_household(&mut out);
        } else if r < 0.77 {
            g.adult_household(&mut out, 18.0, 65.0, false);
        } else if r < 0.92 {
            g.adult_household(&mut out, 20.0, 80.0, true);
        } else {
            let couple = g.chance(0.5);
            g.adult_household(&mut out, 65.0, 90.0, couple);
        }
        let end = out.len();
        for i in start..end {
            if g.chance(0.012) {
                let dup = g.near_duplicate(&out[i]);
                out.push(dup);
            }
            if g.chance(0.004)
                && let Some(ns) = g.namesake(&out[i])
            {
                out.push(ns);
            }
        }
    }
    out.truncate(n);
    // Shuffle so ids do not reveal households (an IIS assigns ids in order of first report).
    for i in (1..out.len()).rev() {
        let j = g.rng.random_range(0..=i);
        out.swap(i, j);
    }
    for (i, p) in out.iter_mut().enumerate() {
        p.iis_id = Some(iis_id(i + 1));
    }
    out
}

/// The IIS id of the `n`th registry patient (1-based).
pub fn iis_id(n: usize) -> String {
    format!("IIS{n:08}")
}

// ---------------------------------------------------------------------------------------------
// Cohorts

/// Derive a clinic cohort from `registry`: `size` rows, of which about
/// `not_in_registry_fraction` are people the registry does not hold (new siblings of registry
/// children and strangers), and about `corruption_rate` of the others carry one to three
/// corruptions. Every row is valid (has a name and a past birth date). Deterministic in
/// `cfg.seed`.
pub fn cohort(registry: &[Demographics], cfg: &CohortConfig) -> Vec<CohortEntry> {
    let pools = Pools::new();
    let mut g = Gen {
        rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ COHORT_SEED_MIX),
        pools: &pools,
        reference: REFERENCE_DATE,
        medicaid_counter: 900_000,
    };
    if let Some(latest) = registry.iter().filter_map(|p| p.birth_date).max() {
        g.reference = g.reference.max(latest);
    }
    let size = cfg.size;
    let frac = cfg.not_in_registry_fraction.clamp(0.0, 1.0);
    let n_out = if registry.is_empty() {
        size
    } else {
        ((size as f64) * frac).round() as usize
    };
    let mut outside = vec![false; size];
    for slot in outside.iter_mut().take(n_out.min(size)) {
        *slot = true;
    }
    for i in (1..size).rev() {
        let j = g.rng.random_range(0..=i);
        outside.swap(i, j);
    }

    let mut taken: HashSet<usize> = HashSet::with_capacity(size);
    let mut entries = Vec::with_capacity(size);
    for (row, &is_outside) in outside.iter().enumerate() {
        let mrn = format!("MRN{:07}", row + 1);
        if is_outside {
            let person = if !registry.is_empty() && g.chance(0.35) {
                let base = &registry[g.rng.random_range(0..registry.len())];
                new_sibling(&mut g, base)
            } else {
                None
            };
            let person = match person {
                Some(p) => p,
                None => stranger(&mut g),
            };
            let mut record = clinic_copy(&mut g, &person);
            record.local_id = Some(mrn);
            entries.push(CohortEntry {
                record,
                truth: None,
                corruptions: Vec::new(),
            });
            continue;
        }
        let mut idx = g.rng.random_range(0..registry.len());
        for _ in 0..20 {
            if !taken.contains(&idx) {
                break;
            }
            idx = g.rng.random_range(0..registry.len());
        }
        taken.insert(idx);
        let truth = &registry[idx];
        let mut record = clinic_copy(&mut g, truth);
        record.local_id = Some(mrn);
        let mut corruptions = Vec::new();
        if g.chance(cfg.corruption_rate) {
            let r: f64 = g.rng.random();
            let wanted = if r < 0.65 {
                1
            } else if r < 0.92 {
                2
            } else {
                3
            };
            for _ in 0..30 {
                if corruptions.len() >= wanted {
                    break;
                }
                let kind = CORRUPTIONS[g.rng.random_range(0..CORRUPTIONS.len())];
                if corruptions.contains(&kind) || conflicts(kind, &corruptions) {
                    continue;
                }
                if corrupt(&mut g, &mut record, kind) {
                    corruptions.push(kind);
                }
            }
        }
        entries.push(CohortEntry {
            record,
            truth: truth.iis_id.clone(),
            corruptions,
        });
    }
    entries
}

/// A constant mixed into the cohort seed so a cohort and a registry made from the same seed do
/// not share a random stream.
const COHORT_SEED_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// Pairs of corruptions that make no sense together on one row.
fn conflicts(kind: &str, applied: &[&str]) -> bool {
    let clash = |a: &str, b: &str| {
        (kind == a && applied.contains(&b)) || (kind == b && applied.contains(&a))
    };
    clash("moved", "missing_address")
        || clash("new_phone", "missing_phone")
        || clash("dob_day_month_swap", "dob_digit")
        || clash("hyphenated_family", "unhyphenated_family")
        || clash("nickname", "typo_given")
}

/// A not-yet-registered younger sibling of a registry child (same family, address, phone and
/// mother), or `None` when `base` is not a child.
fn new_sibling(g: &mut Gen<'_>, base: &Demographics) -> Option<Demographics> {
    let birth = base.birth_date?;
    let age = (g.reference - birth).num_days();
    if !(0..18 * 365).contains(&age) {
        return None;
    }
    let sex = g.sex();
    let mut given = g.given(sex);
    for _ in 0..8 {
        if Some(given) != base.given.as_deref() {
            break;
        }
        given = g.given(sex);
    }
    let new_age = g.rng.random_range(0..(age.max(400) - 300));
    let mut p = base.clone();
    p.given = Some(given.to_string());
    p.middle = g.middle(sex);
    p.sex = Some(sex);
    p.birth_date = Some(g.date_from_age_days(new_age));
    p.suffix = None;
    p.email = None;
    p.medicaid_id = None;
    p.ssn = None;
    p.multiple_birth = None;
    p.multiple_birth_order = None;
    p.iis_id = None;
    Some(p)
}

/// Someone unrelated to the registry (children more likely than adults).
fn stranger(g: &mut Gen<'_>) -> Demographics {
    let home = g.new_home();
    let sex = g.sex();
    let child = g.chance(0.6);
    let days = if child {
        g.years_in_days(0.0, 18.0)
    } else {
        g.years_in_days(18.0, 90.0)
    };
    let given = g.given(sex);
    let family = g.family();
    let maiden = g.family();
    let birth = g.date_from_age_days(days);
    g.person(&home, sex, given, family, birth, child, Some(maiden))
}

/// The clinic's copy of a person: title case, and some fields the clinic never collected.
fn clinic_copy(g: &mut Gen<'_>, p: &Demographics) -> Demographics {
    let keep = |g: &mut Gen<'_>, v: &Option<String>, p: f64| -> Option<String> {
        match v {
            Some(s) if g.chance(p) => Some(s.clone()),
            _ => None,
        }
    };
    Demographics {
        given: p.given.as_deref().map(title_case),
        middle: p.middle.as_deref().map(title_case),
        family: p.family.as_deref().map(title_case),
        suffix: p.suffix.as_deref().map(title_case),
        birth_date: p.birth_date,
        sex: p.sex,
        phone: p.phone.clone(),
        email: keep(g, &p.email, 0.6),
        address_line1: p.address_line1.as_deref().map(title_address),
        address_line2: p.address_line2.as_deref().map(title_address),
        city: p.city.as_deref().map(title_case),
        state: p.state.clone(),
        postal_code: p.postal_code.clone(),
        local_id: None,
        medicaid_id: keep(g, &p.medicaid_id, 0.75),
        ssn: keep(g, &p.ssn, 0.5),
        mothers_maiden_name: keep(g, &p.mothers_maiden_name, 0.6).map(|m| title_case(&m)),
        multiple_birth: p.multiple_birth,
        multiple_birth_order: p.multiple_birth_order,
        iis_id: None,
    }
}

/// Apply one named corruption to a clinic record; false when it does not apply to this row.
fn corrupt(g: &mut Gen<'_>, rec: &mut Demographics, kind: &'static str) -> bool {
    match kind {
        "typo_family" => match &rec.family {
            Some(f) if f.chars().filter(|c| c.is_alphabetic()).count() >= 3 => {
                rec.family = Some(typo(&mut g.rng, f));
                true
            }
            _ => false,
        },
        "typo_given" => match &rec.given {
            Some(f) if f.chars().filter(|c| c.is_alphabetic()).count() >= 3 => {
                rec.given = Some(typo(&mut g.rng, f));
                true
            }
            _ => false,
        },
        "nickname" => {
            let nick = rec.given.as_deref().and_then(|n| nickname(&mut g.rng, n));
            match nick {
                Some(n) => {
                    rec.given = Some(title_case(n));
                    true
                }
                None => false,
            }
        }
        "dob_day_month_swap" => match rec.birth_date {
            Some(d) if d.day() <= 12 && d.day() != d.month() => {
                match NaiveDate::from_ymd_opt(d.year(), d.day(), d.month()) {
                    Some(s) if s <= g.reference => {
                        rec.birth_date = Some(s);
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        },
        "dob_digit" => match rec.birth_date.and_then(|d| dob_digit(g, d)) {
            Some(d) => {
                rec.birth_date = Some(d);
                true
            }
            None => false,
        },
        "moved" => {
            if rec.address_line1.is_none() {
                return false;
            }
            let home = g.new_home();
            rec.address_line1 = Some(title_address(&home.line1));
            rec.address_line2 = home.line2.as_deref().map(title_address);
            rec.city = Some(title_case(CITIES[home.city].name));
            rec.postal_code = Some(home.zip);
            true
        }
        "new_phone" => {
            let city = g.pools.city.sample(&mut g.rng);
            rec.phone = Some(g.phone(city));
            true
        }
        "missing_phone" => rec.phone.take().is_some(),
        "missing_address" => {
            let had = rec.address_line1.take().is_some();
            rec.address_line2 = None;
            rec.city = None;
            rec.postal_code = None;
            rec.state = None;
            had
        }
        "missing_middle" => rec.middle.take().is_some(),
        "hyphenated_family" => {
            let adult_woman = rec.sex == Some(Sex::Female)
                && rec
                    .birth_date
                    .is_some_and(|b| (g.reference - b).num_days() > 18 * 365);
            match &rec.family {
                Some(f) if adult_woman && !f.contains('-') => {
                    let other = title_case(g.family());
                    rec.family = Some(format!("{f}-{other}"));
                    true
                }
                _ => false,
            }
        }
        "unhyphenated_family" => match &rec.family {
            Some(f) if f.contains('-') => {
                let parts: Vec<&str> = f.split('-').filter(|s| !s.is_empty()).collect();
                if parts.len() < 2 {
                    return false;
                }
                let pick = parts[g.rng.random_range(0..parts.len())].to_string();
                rec.family = Some(pick);
                true
            }
            _ => false,
        },
        "first_last_swap" => {
            if rec.given.is_none() || rec.family.is_none() || rec.given == rec.family {
                return false;
            }
            std::mem::swap(&mut rec.given, &mut rec.family);
            true
        }
        "lowercase" => {
            for f in [
                &mut rec.given,
                &mut rec.middle,
                &mut rec.family,
                &mut rec.address_line1,
                &mut rec.city,
            ]
            .into_iter()
            .flatten()
            {
                *f = f.to_lowercase();
            }
            true
        }
        "extra_spaces" => {
            if let Some(gv) = &rec.given {
                rec.given = Some(format!(" {gv}  "));
            }
            if let Some(f) = &rec.family {
                rec.family = Some(format!("{}  ", f.replace(' ', "  ")));
            }
            if let Some(a) = &rec.address_line1 {
                rec.address_line1 = Some(format!("  {}", a.replacen(' ', "   ", 1)));
            }
            true
        }
        _ => false,
    }
}

/// Change one digit of the date as written YYYYMMDD, keeping it a valid past date.
fn dob_digit(g: &mut Gen<'_>, d: NaiveDate) -> Option<NaiveDate> {
    let text = d.format("%Y%m%d").to_string();
    for _ in 0..40 {
        // Year's last two digits, month and day are where clerks slip.
        let pos = g.rng.random_range(2..8);
        let mut bytes = text.clone().into_bytes();
        let old = bytes[pos];
        let new = if g.chance(0.6) {
            // Off by one.
            if old == b'9' || (old != b'0' && g.chance(0.5)) {
                old - 1
            } else {
                old + 1
            }
        } else {
            b'0' + g.rng.random_range(0..10u8)
        };
        if new == old {
            continue;
        }
        bytes[pos] = new;
        let s = String::from_utf8(bytes).ok()?;
        if let Ok(nd) = NaiveDate::parse_from_str(&s, "%Y%m%d")
            && nd <= g.reference
            && (g.reference - nd).num_days() <= MAX_AGE_DAYS + 3650
        {
            return Some(nd);
        }
    }
    None
}

const KEYBOARD_ROWS: [&str; 3] = ["qwertyuiop", "asdfghjkl", "zxcvbnm"];

/// A letter next to `c` on a QWERTY keyboard (same case).
fn neighbour_key(rng: &mut ChaCha8Rng, c: char) -> char {
    let lower = c.to_ascii_lowercase();
    for row in KEYBOARD_ROWS {
        if let Some(i) = row.find(lower) {
            let bytes = row.as_bytes();
            let j = if i == 0 {
                1
            } else if i + 1 >= bytes.len() || rng.random_bool(0.5) {
                i - 1
            } else {
                i + 1
            };
            let n = bytes[j] as char;
            return if c.is_ascii_uppercase() {
                n.to_ascii_uppercase()
            } else {
                n
            };
        }
    }
    c
}

/// One edit (substitution by a neighbouring key, deletion, doubling or transposition) at a
/// letter of `s`; never the first letter, so the name stays recognisable.
fn typo(rng: &mut ChaCha8Rng, s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    let letters: Vec<usize> = chars
        .iter()
        .enumerate()
        .filter(|(i, c)| *i > 0 && c.is_ascii_alphabetic())
        .map(|(i, _)| i)
        .collect();
    if letters.is_empty() {
        return s.to_string();
    }
    let original = chars.clone();
    for _ in 0..10 {
        chars.clone_from(&original);
        let i = letters[rng.random_range(0..letters.len())];
        match rng.random_range(0..4) {
            0 => chars[i] = neighbour_key(rng, chars[i]),
            1 => {
                chars.remove(i);
            }
            2 => chars.insert(i, chars[i]),
            _ => {
                if i + 1 < chars.len() && chars[i + 1].is_ascii_alphabetic() {
                    chars.swap(i, i + 1);
                } else {
                    chars.swap(i - 1, i);
                }
            }
        }
        if chars != original {
            break;
        }
    }
    chars.into_iter().collect()
}

/// A nickname for a formal given name (any case), if the table knows one.
fn nickname(rng: &mut ChaCha8Rng, given: &str) -> Option<&'static str> {
    let upper = given.trim().to_ascii_uppercase();
    let (_, nicks) = NICKNAMES.iter().find(|(formal, _)| *formal == upper)?;
    if nicks.is_empty() {
        return None;
    }
    Some(nicks[rng.random_range(0..nicks.len())])
}

/// "O'BRIEN" → "O'Brien", "MCDONALD" → "McDonald", "MAI-LEE" → "Mai-Lee".
pub fn title_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for ch in s.chars() {
        if ch.is_alphabetic() {
            if start {
                out.extend(ch.to_uppercase());
            } else {
                out.extend(ch.to_lowercase());
            }
            start = false;
        } else {
            out.push(ch);
            start = !ch.is_ascii_digit();
        }
    }
    // "Mc" prefixes: capitalise the letter after them at the start of each word.
    let mut fixed = String::with_capacity(out.len());
    let mut word_start = true;
    let mut chars = out.chars().peekable();
    while let Some(c) = chars.next() {
        fixed.push(c);
        if word_start && c == 'M' && chars.peek() == Some(&'c') {
            fixed.push('c');
            chars.next();
            if let Some(n) = chars.next() {
                fixed.extend(n.to_uppercase());
            }
        }
        word_start = !c.is_alphabetic();
    }
    fixed
}

/// Title case for an address line, keeping directionals (NE, SW) upper case and ordinals
/// ("1ST" → "1st").
fn title_address(s: &str) -> String {
    s.split(' ')
        .map(|tok| {
            if DIRECTIONALS.contains(&tok) || tok.len() <= 1 {
                tok.to_string()
            } else if tok.starts_with(|c: char| c.is_ascii_digit()) {
                tok.to_ascii_lowercase()
            } else {
                title_case(tok)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// CSV writers

const REGISTRY_HEADERS: [&str; 19] = [
    "iis_id",
    "given",
    "middle",
    "family",
    "suffix",
    "birth_date",
    "sex",
    "phone",
    "email",
    "address_line1",
    "address_line2",
    "city",
    "state",
    "postal_code",
    "medicaid_id",
    "ssn",
    "mothers_maiden_name",
    "multiple_birth",
    "multiple_birth_order",
];

const COHORT_HEADERS: [&str; 17] = [
    "MRN",
    "First Name",
    "Middle Name",
    "Last Name",
    "DOB",
    "Sex",
    "Phone",
    "Email",
    "Address",
    "City",
    "State",
    "Zip",
    "Medicaid ID",
    "SSN Last 4",
    "Mother Maiden Name",
    "Multiple Birth",
    "Birth Order",
];

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("")
}

fn sex_letter(s: Option<Sex>) -> &'static str {
    match s {
        Some(Sex::Male) => "M",
        Some(Sex::Female) => "F",
        Some(Sex::Other) => "O",
        Some(Sex::Unknown) => "U",
        None => "",
    }
}

fn yes_no(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "Y",
        Some(false) => "N",
        None => "",
    }
}

/// `(503) 555-1234` for 10 digits; anything else as is.
fn ehr_phone(p: &str) -> String {
    if p.len() == 10 && p.bytes().all(|b| b.is_ascii_digit()) {
        format!("({}) {}-{}", &p[0..3], &p[3..6], &p[6..10])
    } else {
        p.to_string()
    }
}

/// Write a registry as CSV with the `iis_id,given,...,multiple_birth_order` headers
/// (dates `YYYY-MM-DD`, sex `M`/`F`, multiple birth `Y`/`N`).
pub fn write_registry_csv(path: &Path, patients: &[Demographics]) -> std::io::Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record(REGISTRY_HEADERS)?;
    let mut date = String::with_capacity(10);
    let mut order = String::with_capacity(2);
    for p in patients {
        date.clear();
        if let Some(d) = p.birth_date {
            date.push_str(&d.format("%Y-%m-%d").to_string());
        }
        order.clear();
        if let Some(o) = p.multiple_birth_order {
            order.push_str(&o.to_string());
        }
        w.write_record([
            opt(&p.iis_id),
            opt(&p.given),
            opt(&p.middle),
            opt(&p.family),
            opt(&p.suffix),
            date.as_str(),
            sex_letter(p.sex),
            opt(&p.phone),
            opt(&p.email),
            opt(&p.address_line1),
            opt(&p.address_line2),
            opt(&p.city),
            opt(&p.state),
            opt(&p.postal_code),
            opt(&p.medicaid_id),
            opt(&p.ssn),
            opt(&p.mothers_maiden_name),
            yes_no(p.multiple_birth),
            order.as_str(),
        ])?;
    }
    w.flush()
}

/// Write a cohort the way an EHR export looks: `"MRN","First Name",...` headers, DOB as
/// `MM/DD/YYYY`, sex `M`/`F`, phone `(503) 555-1234`, address line 2 appended to "Address".
pub fn write_cohort_csv(path: &Path, entries: &[CohortEntry]) -> std::io::Result<()> {
    let mut w = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Always)
        .from_path(path)?;
    w.write_record(COHORT_HEADERS)?;
    for e in entries {
        let r = &e.record;
        let dob = r
            .birth_date
            .map(|d| d.format("%m/%d/%Y").to_string())
            .unwrap_or_default();
        let phone = r.phone.as_deref().map(ehr_phone).unwrap_or_default();
        let address = match (&r.address_line1, &r.address_line2) {
            (Some(a), Some(b)) => format!("{a} {b}"),
            (Some(a), None) => a.clone(),
            (None, Some(b)) => b.clone(),
            (None, None) => String::new(),
        };
        let order = r
            .multiple_birth_order
            .map(|o| o.to_string())
            .unwrap_or_default();
        w.write_record([
            opt(&r.local_id),
            opt(&r.given),
            opt(&r.middle),
            opt(&r.family),
            dob.as_str(),
            sex_letter(r.sex),
            phone.as_str(),
            opt(&r.email),
            address.as_str(),
            opt(&r.city),
            opt(&r.state),
            opt(&r.postal_code),
            opt(&r.medicaid_id),
            opt(&r.ssn),
            opt(&r.mothers_maiden_name),
            yes_no(r.multiple_birth),
            order.as_str(),
        ])?;
    }
    w.flush()
}

/// Write the ground truth of a cohort: `local_id,iis_id,corruptions` (`iis_id` empty when the
/// person is not in the registry, corruptions `;`-joined).
pub fn write_truth_csv(path: &Path, entries: &[CohortEntry]) -> std::io::Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record(["local_id", "iis_id", "corruptions"])?;
    for e in entries {
        w.write_record([
            opt(&e.record.local_id),
            opt(&e.truth),
            e.corruptions.join(";").as_str(),
        ])?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn small() -> Vec<Demographics> {
        registry(&GenConfig::new(20_000, 7))
    }

    #[test]
    fn same_seed_same_registry_other_seed_other_registry() {
        let a = registry(&GenConfig::new(3000, 42));
        let b = registry(&GenConfig::new(3000, 42));
        let c = registry(&GenConfig::new(3000, 43));
        assert_eq!(a.len(), 3000);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let ids: HashSet<_> = a.iter().map(|p| p.iis_id.clone().unwrap()).collect();
        assert_eq!(ids.len(), 3000, "iis ids are unique");
        assert!(ids.contains("IIS00000001") && ids.contains("IIS00003000"));
    }

    #[test]
    fn registry_fields_are_plausible() {
        let reg = small();
        let oldest = REFERENCE_DATE
            .checked_sub_days(Days::new(91 * 366))
            .unwrap();
        let mut children = 0;
        for p in &reg {
            let b = p.birth_date.unwrap();
            assert!(b <= REFERENCE_DATE && b >= oldest, "{b}");
            if (REFERENCE_DATE - b).num_days() < 18 * 365 {
                children += 1;
            }
            assert!(p.given.as_deref().is_some_and(|g| !g.is_empty()));
            assert!(p.family.as_deref().is_some_and(|f| !f.is_empty()));
            assert_eq!(p.state.as_deref(), Some("OR"));
            let zip = p.postal_code.as_deref().unwrap();
            assert!(zip.len() == 5 && zip.starts_with("97"), "{zip}");
            if let Some(ph) = &p.phone {
                assert_eq!(ph.len(), 10);
                assert!(["503", "971", "541", "458"].contains(&&ph[..3]), "{ph}");
            }
            if let Some(s) = &p.ssn {
                assert_eq!(s.len(), 4);
            }
            assert!(matches!(p.sex, Some(Sex::Male | Sex::Female)));
        }
        let share = children as f64 / reg.len() as f64;
        println!("children share {share:.3}");
        assert!(share > 0.35 && share < 0.7, "children share {share}");
        let with_mmn = reg
            .iter()
            .filter(|p| p.mothers_maiden_name.is_some())
            .count();
        let with_medicaid = reg.iter().filter(|p| p.medicaid_id.is_some()).count();
        let with_email = reg.iter().filter(|p| p.email.is_some()).count();
        assert!(with_mmn > reg.len() / 4, "{with_mmn}");
        assert!(with_medicaid > reg.len() / 10, "{with_medicaid}");
        assert!(with_email > reg.len() / 10, "{with_email}");
        let medicaid: HashSet<_> = reg.iter().filter_map(|p| p.medicaid_id.as_ref()).collect();
        // Near-duplicate records may repeat an id; nothing else does.
        assert!(medicaid.len() as f64 > with_medicaid as f64 * 0.97);
        // Names are skewed: the most common family name is far more common than the median.
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for p in &reg {
            *counts.entry(p.family.as_deref().unwrap()).or_default() += 1;
        }
        let mut v: Vec<usize> = counts.values().copied().collect();
        v.sort_unstable();
        assert!(
            v[v.len() - 1] > 10 * v[v.len() / 2],
            "{} vs {}",
            v[v.len() - 1],
            v[v.len() / 2]
        );
    }

    #[test]
    fn registry_has_twins_duplicates_namesakes_and_households() {
        let reg = small();
        // Twins/triplets: same family, birth date, address and mother, different given names.
        let mut births: HashMap<(String, NaiveDate, String), Vec<&Demographics>> = HashMap::new();
        for p in reg.iter().filter(|p| p.multiple_birth == Some(true)) {
            births
                .entry((
                    p.family.clone().unwrap(),
                    p.birth_date.unwrap(),
                    p.address_line1.clone().unwrap(),
                ))
                .or_default()
                .push(p);
        }
        let sets: Vec<_> = births.values().filter(|v| v.len() >= 2).collect();
        assert!(sets.len() >= 20, "only {} multiple-birth sets", sets.len());
        for set in &sets {
            let orders: HashSet<_> = set.iter().map(|p| p.multiple_birth_order).collect();
            assert!(orders.len() >= 2, "birth orders differ within a set");
        }
        assert!(
            sets.iter()
                .any(|s| s.iter().map(|p| &p.given).collect::<HashSet<_>>().len() == s.len())
        );

        // Same family + birth date + sex under two ids.
        let mut by_person: HashMap<(String, NaiveDate, Option<Sex>), Vec<&Demographics>> =
            HashMap::new();
        for p in &reg {
            by_person
                .entry((p.family.clone().unwrap(), p.birth_date.unwrap(), p.sex))
                .or_default()
                .push(p);
        }
        let mut near_dups = 0;
        let mut namesakes = 0;
        for group in by_person.values().filter(|g| g.len() >= 2) {
            for (i, a) in group.iter().enumerate() {
                for b in &group[i + 1..] {
                    if a.multiple_birth == Some(true) && b.multiple_birth == Some(true) {
                        continue;
                    }
                    let same_given = a.given == b.given;
                    let same_place = a.address_line1 == b.address_line1;
                    if same_given && !same_place && a.mothers_maiden_name != b.mothers_maiden_name {
                        namesakes += 1;
                    } else if a.middle == b.middle || same_place || a.phone == b.phone {
                        near_dups += 1;
                    }
                }
            }
        }
        println!("near-duplicate pairs {near_dups}, namesake pairs {namesakes}");
        assert!(near_dups >= 100, "{near_dups}");
        assert!(namesakes >= 20, "{namesakes}");

        // Households: many addresses with several people, sharing a phone.
        let mut homes: HashMap<(&str, &str), usize> = HashMap::new();
        for p in &reg {
            *homes
                .entry((
                    p.address_line1.as_deref().unwrap(),
                    p.postal_code.as_deref().unwrap(),
                ))
                .or_default() += 1;
        }
        assert!(homes.values().filter(|&&n| n >= 3).count() > 1000);
        // Juniors.
        assert!(reg.iter().any(|p| p.suffix.as_deref() == Some("JR")));
    }

    #[test]
    fn cohort_has_requested_shape_and_truth() {
        let reg = small();
        let cfg = CohortConfig {
            size: 2000,
            seed: 3,
            ..CohortConfig::default()
        };
        let a = cohort(&reg, &cfg);
        assert_eq!(a, cohort(&reg, &cfg), "deterministic");
        assert_eq!(a.len(), 2000);
        let outside = a.iter().filter(|e| e.truth.is_none()).count();
        assert_eq!(outside, 200);
        let ids: HashSet<&str> = reg.iter().map(|p| p.iis_id.as_deref().unwrap()).collect();
        assert!(
            a.iter()
                .filter_map(|e| e.truth.as_deref())
                .all(|t| ids.contains(t))
        );
        let corrupted = a.iter().filter(|e| !e.corruptions.is_empty()).count();
        let share = corrupted as f64 / 1800.0;
        assert!((0.25..0.35).contains(&share), "corrupted share {share}");
        assert!(
            a.iter()
                .filter(|e| e.truth.is_none())
                .all(|e| e.corruptions.is_empty())
        );
        let mut seen_kinds = HashSet::new();
        for e in &a {
            for c in &e.corruptions {
                assert!(CORRUPTIONS.contains(c));
                seen_kinds.insert(*c);
            }
            let r = &e.record;
            assert!(r.iis_id.is_none());
            assert!(r.given.is_some() && r.family.is_some());
            assert!(r.birth_date.is_some_and(|b| b <= REFERENCE_DATE));
        }
        // Un-hyphenating needs a hyphenated name, which few rows have; it is tested on its own.
        for kind in CORRUPTIONS.iter().filter(|k| **k != "unhyphenated_family") {
            assert!(seen_kinds.contains(kind), "{kind} never occurs");
        }
        assert_eq!(a[0].record.local_id.as_deref(), Some("MRN0000001"));
        assert_eq!(a[1999].record.local_id.as_deref(), Some("MRN0002000"));
        // Clinic copies are title case.
        let uncorrupted = a
            .iter()
            .find(|e| e.truth.is_some() && e.corruptions.is_empty())
            .unwrap();
        let g = uncorrupted.record.given.as_deref().unwrap();
        assert!(g.chars().skip(1).any(|c| c.is_lowercase()), "{g}");
    }

    #[test]
    fn corruptions_do_what_they_say() {
        let pools = Pools::new();
        let mut g = Gen {
            rng: ChaCha8Rng::seed_from_u64(1),
            pools: &pools,
            reference: REFERENCE_DATE,
            medicaid_counter: 0,
        };
        let base = Demographics {
            given: Some("William".into()),
            middle: Some("Lee".into()),
            family: Some("Smith".into()),
            birth_date: NaiveDate::from_ymd_opt(1990, 3, 7),
            sex: Some(Sex::Female),
            phone: Some("5035550101".into()),
            address_line1: Some("12 NE Oak St".into()),
            city: Some("Portland".into()),
            state: Some("OR".into()),
            postal_code: Some("97211".into()),
            ..Default::default()
        };
        for _ in 0..50 {
            let mut r = base.clone();
            assert!(corrupt(&mut g, &mut r, "typo_family"));
            let f = r.family.unwrap();
            assert_eq!(strsim::osa_distance("Smith", &f), 1, "{f}");
        }
        let mut r = base.clone();
        assert!(corrupt(&mut g, &mut r, "nickname"));
        assert!(["Bill", "Will", "Billy", "Liam"].contains(&r.given.as_deref().unwrap()));
        let mut r = base.clone();
        assert!(corrupt(&mut g, &mut r, "dob_day_month_swap"));
        assert_eq!(r.birth_date, NaiveDate::from_ymd_opt(1990, 7, 3));
        for _ in 0..50 {
            let mut r = base.clone();
            assert!(corrupt(&mut g, &mut r, "dob_digit"));
            let a = base.birth_date.unwrap().format("%Y%m%d").to_string();
            let b = r.birth_date.unwrap().format("%Y%m%d").to_string();
            assert_eq!(
                a.bytes().zip(b.bytes()).filter(|(x, y)| x != y).count(),
                1,
                "{b}"
            );
        }
        let mut r = base.clone();
        assert!(corrupt(&mut g, &mut r, "hyphenated_family"));
        assert!(r.family.as_deref().unwrap().starts_with("Smith-"));
        assert!(corrupt(&mut g, &mut r, "unhyphenated_family"));
        assert!(!r.family.as_deref().unwrap().contains('-'));
        let mut r = base.clone();
        assert!(corrupt(&mut g, &mut r, "first_last_swap"));
        assert_eq!(
            (r.given.as_deref(), r.family.as_deref()),
            (Some("Smith"), Some("William"))
        );
        let mut r = base.clone();
        assert!(corrupt(&mut g, &mut r, "missing_address"));
        assert!(r.address_line1.is_none() && r.postal_code.is_none());
        assert!(!corrupt(&mut g, &mut r, "moved"), "nothing to move");
        let mut r = base.clone();
        assert!(corrupt(&mut g, &mut r, "lowercase"));
        assert_eq!(r.family.as_deref(), Some("smith"));
        let mut r = base.clone();
        assert!(corrupt(&mut g, &mut r, "extra_spaces"));
        assert_ne!(r.given.as_deref(), Some("William"));
        assert_eq!(r.given.as_deref().map(str::trim), Some("William"));
        // A man does not get a married name; a child's 31 April does not exist.
        let mut r = base.clone();
        r.sex = Some(Sex::Male);
        assert!(!corrupt(&mut g, &mut r, "hyphenated_family"));
        let mut r = base.clone();
        r.birth_date = NaiveDate::from_ymd_opt(2020, 4, 30);
        assert!(!corrupt(&mut g, &mut r, "dob_day_month_swap"));
    }

    #[test]
    fn title_case_handles_real_names() {
        assert_eq!(title_case("O'BRIEN"), "O'Brien");
        assert_eq!(title_case("MCDONALD"), "McDonald");
        assert_eq!(title_case("MAI-LEE"), "Mai-Lee");
        assert_eq!(title_case("DE LA CRUZ"), "De La Cruz");
        assert_eq!(title_address("1234 NE 21ST AVE"), "1234 NE 21st Ave");
        assert_eq!(title_address("APT 4B"), "Apt 4b");
    }

    #[test]
    fn csv_writers_produce_documented_headers() {
        let reg = registry(&GenConfig::new(300, 5));
        let entries = cohort(
            &reg,
            &CohortConfig {
                size: 100,
                seed: 9,
                ..CohortConfig::default()
            },
        );
        let dir = tempfile::tempdir().unwrap();
        let (rp, cp, tp) = (
            dir.path().join("registry.csv"),
            dir.path().join("cohort.csv"),
            dir.path().join("truth.csv"),
        );
        write_registry_csv(&rp, &reg).unwrap();
        write_cohort_csv(&cp, &entries).unwrap();
        write_truth_csv(&tp, &entries).unwrap();

        let mut r = csv::Reader::from_path(&rp).unwrap();
        assert_eq!(
            r.headers().unwrap().iter().collect::<Vec<_>>(),
            REGISTRY_HEADERS
        );
        let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 300);
        assert_eq!(&rows[0][0], reg[0].iis_id.as_deref().unwrap());
        assert_eq!(
            NaiveDate::parse_from_str(&rows[0][5], "%Y-%m-%d").ok(),
            reg[0].birth_date
        );
        assert!(rows.iter().all(|r| ["M", "F"].contains(&&r[6])));

        let raw = std::fs::read_to_string(&cp).unwrap();
        assert!(raw.starts_with("\"MRN\",\"First Name\",\"Middle Name\",\"Last Name\",\"DOB\""));
        let mut r = csv::Reader::from_path(&cp).unwrap();
        assert_eq!(
            r.headers().unwrap().iter().collect::<Vec<_>>(),
            COHORT_HEADERS
        );
        let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 100);
        for (row, e) in rows.iter().zip(&entries) {
            assert_eq!(&row[0], e.record.local_id.as_deref().unwrap());
            let dob = NaiveDate::parse_from_str(&row[4], "%m/%d/%Y").unwrap();
            assert_eq!(Some(dob), e.record.birth_date);
            if !row[6].is_empty() {
                assert!(row[6].starts_with('(') && row[6].len() == 14, "{}", &row[6]);
            }
        }

        let mut r = csv::Reader::from_path(&tp).unwrap();
        assert_eq!(
            r.headers().unwrap().iter().collect::<Vec<_>>(),
            ["local_id", "iis_id", "corruptions"]
        );
        let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 100);
        for (row, e) in rows.iter().zip(&entries) {
            assert_eq!(&row[1], e.truth.as_deref().unwrap_or(""));
            assert_eq!(&row[2], e.corruptions.join(";"));
        }
    }
}
