//! Parsing match Bundles: one ndjson line of a `$bulk-match` output file.
//!
//! Each line is a `searchset` Bundle answering one submitted Patient. This module finds which
//! Patient it answers (the `match-resource` extension), the candidates (Patient entries with
//! score and match grade, re-sorted by score because servers send them out of order) and the
//! row-level messages (OperationOutcome entries). It also owns [`FhirError`], the error of every
//! FHIR parser in this crate. Lenient where real servers deviate (extension on the Bundle root,
//! the StructureDefinition spelling of the extension URL, numeric issue codes, relative
//! `fullUrl`s, a `total` that counts OperationOutcomes); precise about what is missing otherwise.

use std::cmp::Ordering;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::domain::{Candidate, Demographics, MatchGrade, RowIssue};
use crate::fhir::outcome::{IssuesIn, row_issues};
use crate::fhir::patient::PatientIn;
use lenient::{Arr, ExtIn, Json, Key, Obj};

/// Why a FHIR document from the server could not be read. Messages name the document and the
/// element; they never quote resource content (which may be patient data).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FhirError {
    #[error(
        "the {what} is not valid JSON (line {line}, column {column}): {message}; the server sent something other than FHIR JSON"
    )]
    NotJson {
        what: &'static str,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("the {what} is a JSON {found}, but a JSON object was expected")]
    NotObject {
        what: &'static str,
        found: &'static str,
    },
    #[error("the {what} has resourceType {found:?}, but {expected} was expected")]
    WrongResourceType {
        what: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("the {what} is missing {missing}")]
    Missing { what: &'static str, missing: String },
    #[error("the {what} has an unusable {element}: {problem}")]
    Invalid {
        what: &'static str,
        element: String,
        problem: String,
    },
}

/// Parse `bytes` as a JSON object, naming the document `what` in errors.
pub(crate) fn parse_object(
    what: &'static str,
    bytes: &[u8],
) -> Result<Map<String, Value>, FhirError> {
    let bytes = trim_json_bytes(bytes);
    if bytes.is_empty() {
        return Err(FhirError::Missing {
            what,
            missing: "any content (it is empty)".to_string(),
        });
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| FhirError::NotJson {
        what,
        line: e.line(),
        column: e.column(),
        message: json_error_kind(&e).to_string(),
    })?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(FhirError::NotObject {
            what,
            found: json_type(&other),
        }),
    }
}

/// Strip a UTF-8 byte-order mark and surrounding ASCII whitespace (including a `\r` left by CRLF).
pub(crate) fn trim_json_bytes(mut b: &[u8]) -> &[u8] {
    if let Some(rest) = b.strip_prefix(b"\xEF\xBB\xBF") {
        b = rest;
    }
    b.trim_ascii()
}

fn json_error_kind(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io => "read error",
        Category::Syntax => "syntax error",
        Category::Data => "unexpected data",
        Category::Eof => "it ends in the middle of a value (truncated?)",
    }
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// One parsed match Bundle.
#[derive(Clone, Debug, PartialEq)]
pub struct MatchBundle {
    /// The id of the submitted Patient this Bundle answers (`Patient/1234` → `1234`).
    pub submitted_id: String,
    /// Candidates sorted by score, best first (missing scores last; ties by grade, then id),
    /// ranked 1, 2, ...
    pub candidates: Vec<Candidate>,
    /// Issues from OperationOutcome entries (row-level errors, warnings, advice).
    pub issues: Vec<RowIssue>,
    /// `Bundle.total` as sent. Informational only: some servers count OperationOutcomes in it.
    pub declared_total: Option<u64>,
}

const WHAT: &str = "match Bundle";

/// The parts of a match Bundle this module reads; everything else is skipped unread.
#[derive(Default, Deserialize)]
#[serde(default)]
struct BundleIn<'a> {
    #[serde(borrow, rename = "resourceType")]
    resource_type: Json<'a>,
    #[serde(borrow)]
    meta: Obj<MetaIn<'a>>,
    /// Some servers put the match-resource extension on the Bundle root instead of `meta`.
    #[serde(borrow)]
    extension: Arr<Obj<ExtIn<'a>>>,
    #[serde(borrow)]
    total: Json<'a>,
    #[serde(borrow)]
    entry: Arr<Obj<EntryIn<'a>>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct MetaIn<'a> {
    #[serde(borrow)]
    extension: Arr<Obj<ExtIn<'a>>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct EntryIn<'a> {
    #[serde(borrow, rename = "fullUrl")]
    full_url: Json<'a>,
    #[serde(borrow)]
    resource: Obj<ResourceIn<'a>>,
    #[serde(borrow)]
    search: Obj<SearchIn<'a>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct SearchIn<'a> {
    #[serde(borrow)]
    mode: Json<'a>,
    #[serde(borrow)]
    score: Json<'a>,
    #[serde(borrow)]
    extension: Arr<Obj<ExtIn<'a>>>,
}

/// An entry's resource, read in one pass before its `resourceType` is known (servers and
/// serializers put `resourceType` anywhere in the object): the Patient elements and the
/// OperationOutcome `issue` list side by side.
#[derive(Default)]
struct ResourceIn<'a> {
    patient: PatientIn<'a>,
    issue: IssuesIn<'a>,
}

impl<'de: 'a, 'a> Deserialize<'de> for ResourceIn<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ResourceVisitor<'a>(PhantomData<ResourceIn<'a>>);
        impl<'de: 'a, 'a> Visitor<'de> for ResourceVisitor<'a> {
            type Value = ResourceIn<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a FHIR resource object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut r = ResourceIn::default();
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    if key.as_str() == "issue" {
                        r.issue = map.next_value()?;
                    } else if !r.patient.read_field(key.as_str(), &mut map)? {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(r)
            }
        }
        deserializer.deserialize_map(ResourceVisitor(PhantomData))
    }
}

/// Parse one ndjson line holding a match Bundle.
///
/// Candidate ids come from `resource.id`, else the last segment of `fullUrl` (which may be
/// relative); demographics as [`from_patient`](crate::fhir::patient::from_patient) reads them,
/// with `iis_id` set to that id. Entries that are neither Patient nor OperationOutcome are
/// ignored.
///
/// The line is read straight into borrowed, typed views of the few elements used. A line the
/// typed reader refuses (not JSON, not an object, a key repeated inside an object) is read
/// again as a `serde_json::Value`, which reports errors precisely and lets the last of
/// repeated keys win, so both readings give the same result.
pub fn parse_match_bundle(line: &[u8]) -> Result<MatchBundle, FhirError> {
    let bytes = trim_json_bytes(line);
    // Checking UTF-8 up front keeps the fast path as strict as the `Value` parse about bytes
    // inside elements it skips (the JSON reader does not validate strings it ignores).
    if let Ok(text) = std::str::from_utf8(bytes)
        && let Ok(Obj(Some(root))) = serde_json::from_str::<Obj<BundleIn<'_>>>(text)
    {
        return match_bundle_from(&root);
    }
    let root = Value::Object(parse_object(WHAT, line)?);
    match Obj::<BundleIn<'_>>::deserialize(&root) {
        Ok(Obj(Some(typed))) => match_bundle_from(&typed),
        _ => Err(FhirError::Invalid {
            what: WHAT,
            element: "top-level object".to_string(),
            problem: "its structure could not be read; check that the server sends FHIR JSON"
                .to_string(),
        }),
    }
}

fn match_bundle_from(root: &BundleIn<'_>) -> Result<MatchBundle, FhirError> {
    match root.resource_type.as_str() {
        None | Some("Bundle") => {}
        Some(other) => {
            return Err(FhirError::WrongResourceType {
                what: WHAT,
                expected: "Bundle",
                found: other.to_string(),
            });
        }
    }
    let submitted_id = submitted_id(root)?;
    let declared_total = root.total.u64_lenient();

    let mut candidates: Vec<Candidate> = Vec::new();
    let mut issues = Vec::new();
    let entries = match &root.entry {
        Arr::Absent | Arr::Null => &[][..],
        Arr::Items(a) => a.as_slice(),
        Arr::Other(kind) => {
            return Err(FhirError::Invalid {
                what: WHAT,
                element: "entry".to_string(),
                problem: format!("it is a JSON {kind}, not an array"),
            });
        }
    };
    for (idx, entry) in entries.iter().enumerate() {
        let Some(entry) = entry.get() else {
            continue;
        };
        // A resource that is missing, null or not an object yields nothing either way.
        let Some(resource) = entry.resource.get() else {
            continue;
        };
        let search = entry.search.get();
        let rtype = resource.patient.resource_type();
        let is_outcome = rtype == Some("OperationOutcome")
            || (rtype.is_none() && search.and_then(|s| s.mode.as_str()) == Some("outcome"));
        if is_outcome {
            issues.extend(row_issues(&resource.issue));
            continue;
        }
        if rtype != Some("Patient") {
            continue;
        }
        let full_url = entry.full_url.as_str().map(str::to_string);
        let id = scalar_id(resource.patient.id_json())
            .or_else(|| full_url.as_deref().and_then(last_id_segment))
            .ok_or_else(|| FhirError::Missing {
                what: WHAT,
                missing: format!(
                    "the id of the Patient in entry {idx} (no resource.id and no usable fullUrl)"
                ),
            })?;
        let score = search.and_then(|s| s.score.f64_lenient());
        let grade = search.and_then(match_grade);
        let mut demographics = Demographics::from(&resource.patient);
        demographics.iis_id = Some(id.clone());
        candidates.push(Candidate {
            rank: 0,
            iis_id: id,
            score,
            grade,
            full_url,
            demographics,
        });
    }
    // Best score first, missing scores last. Ties are broken by grade, then by id, so the
    // ranking does not depend on the order in which a server listed tied entries (servers send
    // them out of order).
    candidates.sort_by(|a, b| {
        let by_score = match (a.score, b.score) {
            (Some(x), Some(y)) => y.partial_cmp(&x).unwrap_or(Ordering::Equal),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        let grade_rank = |g: Option<MatchGrade>| g.map(|g| g as u8).unwrap_or(u8::MAX);
        by_score
            .then_with(|| grade_rank(a.grade).cmp(&grade_rank(b.grade)))
            .then_with(|| a.iis_id.cmp(&b.iis_id))
    });
    for (i, c) in candidates.iter_mut().enumerate() {
        c.rank = u32::try_from(i + 1).unwrap_or(u32::MAX);
    }
    Ok(MatchBundle {
        submitted_id,
        candidates,
        issues,
        declared_total,
    })
}

fn is_match_resource_url(url: &str) -> bool {
    // Spec: .../OperationDefinition/match-resource; seen in the wild: .../StructureDefinition/...
    url.trim_end_matches('/').rsplit('/').next() == Some("match-resource")
}

fn submitted_id(root: &BundleIn<'_>) -> Result<String, FhirError> {
    let meta_ext = root.meta.get().and_then(|m| m.extension.items());
    let root_ext = root.extension.items();
    let ext = meta_ext
        .into_iter()
        .chain(root_ext)
        .flatten()
        .filter_map(Obj::get)
        .find(|e| e.url.as_str().is_some_and(is_match_resource_url))
        .ok_or_else(|| FhirError::Missing {
            what: WHAT,
            missing:
                "the meta.extension \"match-resource\" that says which submitted Patient it answers"
                    .to_string(),
        })?;
    let reference = ext
        .value_reference
        .get()
        .and_then(|r| r.reference.as_str())
        .or_else(|| ext.value_string.as_str())
        .or_else(|| ext.value_id.as_str())
        .ok_or_else(|| FhirError::Missing {
            what: WHAT,
            missing: "valueReference.reference in the match-resource extension".to_string(),
        })?;
    last_id_segment(reference).ok_or_else(|| FhirError::Invalid {
        what: WHAT,
        element: "match-resource reference".to_string(),
        problem: "it does not end in a Patient id".to_string(),
    })
}

/// The resource id at the end of a reference or URL: `Patient/1234` → `1234`,
/// `https://x/fhir/Patient/1234/_history/2` → `1234`, `1234` → `1234`.
fn last_id_segment(reference: &str) -> Option<String> {
    let r = reference.split(['?', '#']).next().unwrap_or_default();
    let mut segs: Vec<&str> = r.split('/').filter(|s| !s.trim().is_empty()).collect();
    if let Some(pos) = segs.iter().position(|s| *s == "_history") {
        segs.truncate(pos);
    }
    segs.last().map(|s| s.trim().to_string())
}

/// A resource id given as a non-blank string (trimmed) or as a number.
fn scalar_id(v: &Json<'_>) -> Option<String> {
    match v {
        Json::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn match_grade(search: &SearchIn<'_>) -> Option<MatchGrade> {
    search
        .extension
        .items()?
        .iter()
        .filter_map(Obj::get)
        .filter(|e| {
            e.url
                .as_str()
                .is_some_and(|u| u.trim_end_matches('/').ends_with("match-grade"))
        })
        .find_map(|e| {
            // valueCode wins whenever it is present, even when it is not a string.
            e.value_code
                .present()
                .or_else(|| e.value_string.present())
                .and_then(Json::as_str)
                .and_then(MatchGrade::parse)
        })
}

pub(crate) fn as_u64_lenient(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
}

/// Typed, borrowing, never-failing views of FHIR JSON elements, shared by the FHIR readers.
///
/// The readers in this crate are lenient: an element of the wrong JSON type is treated as
/// absent rather than failing the document. These wrappers give `#[derive(Deserialize)]`
/// structs that leniency while reading straight from the input bytes (or from a
/// `&serde_json::Value`) without building a `Value` tree: [`Json`] keeps a scalar (strings
/// borrowed unless they contain escapes) or an array of them, [`Arr`] a list of typed items,
/// [`Obj`] a typed object (or `None` for anything that is not an object). Whatever a reader
/// does not name is skipped with [`IgnoredAny`].
pub(crate) mod lenient {
    use std::borrow::Cow;
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::value::MapAccessDeserializer;
    use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde_json::Number;

    /// Skip the rest of a JSON array.
    fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }

    /// Skip the rest of a JSON object.
    fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }

    /// A JSON element as far as the readers look at it: scalars and arrays are kept, objects
    /// only noted. `Absent` (the key was not there) differs from `Null` (it was, with `null`).
    #[derive(Clone, Debug, Default, PartialEq)]
    pub(crate) enum Json<'a> {
        #[default]
        Absent,
        Null,
        Bool(bool),
        Number(Number),
        String(Cow<'a, str>),
        Array(Vec<Json<'a>>),
        Object,
    }

    impl<'a> Json<'a> {
        /// `Some(self)` unless the key was absent (like `Value::get` returning `Some`).
        pub(crate) fn present(&self) -> Option<&Self> {
            (!matches!(self, Json::Absent)).then_some(self)
        }

        pub(crate) fn as_str(&self) -> Option<&str> {
            match self {
                Json::String(s) => Some(s),
                _ => None,
            }
        }

        pub(crate) fn as_bool(&self) -> Option<bool> {
            match self {
                Json::Bool(b) => Some(*b),
                _ => None,
            }
        }

        pub(crate) fn as_u64(&self) -> Option<u64> {
            match self {
                Json::Number(n) => n.as_u64(),
                _ => None,
            }
        }

        /// The elements if this is an array.
        pub(crate) fn items(&self) -> Option<&[Json<'a>]> {
            match self {
                Json::Array(a) => Some(a),
                _ => None,
            }
        }

        /// A string, trimmed, if it is not blank.
        pub(crate) fn non_empty(&self) -> Option<String> {
            let s = self.as_str()?.trim();
            (!s.is_empty()).then(|| s.to_string())
        }

        /// A string, number or boolean as text; `None` for anything else.
        pub(crate) fn scalar_text(&self) -> Option<String> {
            match self {
                Json::String(s) => Some(s.to_string()),
                Json::Number(n) => Some(n.to_string()),
                Json::Bool(b) => Some(b.to_string()),
                _ => None,
            }
        }

        /// A finite number, or a string holding one.
        pub(crate) fn f64_lenient(&self) -> Option<f64> {
            match self {
                Json::Number(n) => n.as_f64(),
                Json::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            }
            .filter(|f| f.is_finite())
        }

        /// A non-negative integer, or a string holding one.
        pub(crate) fn u64_lenient(&self) -> Option<u64> {
            match self {
                Json::Number(n) => n.as_u64(),
                Json::String(s) => s.trim().parse::<u64>().ok(),
                _ => None,
            }
        }
    }

    impl<'de: 'a, 'a> Deserialize<'de> for Json<'a> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct JsonVisitor<'a>(PhantomData<Json<'a>>);
            impl<'de: 'a, 'a> Visitor<'de> for JsonVisitor<'a> {
                type Value = Json<'a>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("any JSON value")
                }
                fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                    Ok(Json::Bool(v))
                }
                fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                    Ok(Json::Number(v.into()))
                }
                fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                    Ok(Json::Number(v.into()))
                }
                fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                    // As serde_json::Value does: a non-finite float becomes null.
                    Ok(Number::from_f64(v).map_or(Json::Null, Json::Number))
                }
                fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                    Ok(Json::String(Cow::Borrowed(v)))
                }
                fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                    Ok(Json::String(Cow::Owned(v.to_string())))
                }
                fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                    Ok(Json::String(Cow::Owned(v)))
                }
                fn visit_unit<E>(self) -> Result<Self::Value, E> {
                    Ok(Json::Null)
                }
                fn visit_none<E>(self) -> Result<Self::Value, E> {
                    Ok(Json::Null)
                }
                fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                    Json::deserialize(d)
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                    let mut items = Vec::new();
                    while let Some(item) = seq.next_element()? {
                        items.push(item);
                    }
                    Ok(Json::Array(items))
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                    drain_map(map)?;
                    Ok(Json::Object)
                }
            }
            deserializer.deserialize_any(JsonVisitor(PhantomData))
        }
    }

    /// A JSON array of typed items. `Other` records the JSON type of a non-array.
    #[derive(Debug, Default)]
    pub(crate) enum Arr<T> {
        #[default]
        Absent,
        Null,
        Items(Vec<T>),
        Other(&'static str),
    }

    impl<T> Arr<T> {
        /// The items if this is an array (like `Value::as_array`).
        pub(crate) fn items(&self) -> Option<&[T]> {
            match self {
                Arr::Items(v) => Some(v),
                _ => None,
            }
        }
    }

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Arr<T> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct ArrVisitor<T>(PhantomData<T>);
            impl<'de, T: Deserialize<'de>> Visitor<'de> for ArrVisitor<T> {
                type Value = Arr<T>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("any JSON value")
                }
                fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                    Ok(Arr::Other("boolean"))
                }
                fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                    Ok(Arr::Other("number"))
                }
                fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                    Ok(Arr::Other("number"))
                }
                fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                    Ok(if v.is_finite() {
                        Arr::Other("number")
                    } else {
                        Arr::Null
                    })
                }
                fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                    Ok(Arr::Other("string"))
                }
                fn visit_unit<E>(self) -> Result<Self::Value, E> {
                    Ok(Arr::Null)
                }
                fn visit_none<E>(self) -> Result<Self::Value, E> {
                    Ok(Arr::Null)
                }
                fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                    Arr::deserialize(d)
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                    let mut items = Vec::new();
                    while let Some(item) = seq.next_element()? {
                        items.push(item);
                    }
                    Ok(Arr::Items(items))
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                    drain_map(map)?;
                    Ok(Arr::Other("object"))
                }
            }
            deserializer.deserialize_any(ArrVisitor(PhantomData))
        }
    }

    /// A JSON object read as `T`; `None` when the element is anything but an object.
    #[derive(Debug)]
    pub(crate) struct Obj<T>(pub(crate) Option<T>);

    impl<T> Default for Obj<T> {
        fn default() -> Self {
            Obj(None)
        }
    }

    impl<T> Obj<T> {
        pub(crate) fn get(&self) -> Option<&T> {
            self.0.as_ref()
        }
    }

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct ObjVisitor<T>(PhantomData<T>);
            impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjVisitor<T> {
                type Value = Obj<T>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("any JSON value")
                }
                fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                    Ok(Obj(None))
                }
                fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                    Ok(Obj(None))
                }
                fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                    Ok(Obj(None))
                }
                fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                    Ok(Obj(None))
                }
                fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                    Ok(Obj(None))
                }
                fn visit_unit<E>(self) -> Result<Self::Value, E> {
                    Ok(Obj(None))
                }
                fn visit_none<E>(self) -> Result<Self::Value, E> {
                    Ok(Obj(None))
                }
                fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                    Obj::deserialize(d)
                }
                fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                    drain_seq(seq)?;
                    Ok(Obj(None))
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                    T::deserialize(MapAccessDeserializer::new(map)).map(|t| Obj(Some(t)))
                }
            }
            deserializer.deserialize_any(ObjVisitor(PhantomData))
        }
    }

    /// An object key, borrowed from the input unless it contains escapes.
    pub(crate) struct Key<'a>(Cow<'a, str>);

    impl Key<'_> {
        pub(crate) fn as_str(&self) -> &str {
            &self.0
        }
    }

    impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct KeyVisitor<'a>(PhantomData<Key<'a>>);
            impl<'de: 'a, 'a> Visitor<'de> for KeyVisitor<'a> {
                type Value = Key<'a>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("an object key")
                }
                fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                    Ok(Key(Cow::Borrowed(v)))
                }
                fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                    Ok(Key(Cow::Owned(v.to_string())))
                }
                fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                    Ok(Key(Cow::Owned(v)))
                }
            }
            deserializer.deserialize_str(KeyVisitor(PhantomData))
        }
    }

    /// An `extension` element: the url and the value types the readers use.
    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default)]
    pub(crate) struct ExtIn<'a> {
        #[serde(borrow)]
        pub(crate) url: Json<'a>,
        #[serde(borrow, rename = "valueString")]
        pub(crate) value_string: Json<'a>,
        #[serde(borrow, rename = "valueCode")]
        pub(crate) value_code: Json<'a>,
        #[serde(borrow, rename = "valueId")]
        pub(crate) value_id: Json<'a>,
        #[serde(borrow, rename = "valueReference")]
        pub(crate) value_reference: Obj<ReferenceIn<'a>>,
    }

    /// A FHIR `Reference`: only `reference` is read.
    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default)]
    pub(crate) struct ReferenceIn<'a> {
        #[serde(borrow)]
        pub(crate) reference: Json<'a>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn entry(id: &str, score: f64, grade: &str) -> Value {
        json!({
            "fullUrl": format!("http://server/fhir/Patient/{id}"),
            "resource": {"resourceType": "Patient", "id": id,
                         "name": [{"family": "DOE", "given": ["JANE"]}], "birthDate": "2001-02-03"},
            "search": {"mode": "match", "score": score,
                       "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/match-grade",
                                      "valueCode": grade}]}
        })
    }

    #[test]
    fn parses_spec_example_with_operation_definition_url() {
        let b = line(json!({
            "resourceType": "Bundle", "type": "searchset",
            "meta": {"extension": [{"url": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/match-resource",
                                    "valueReference": {"reference": "Patient/1234"}}]},
            "entry": [entry("5678", 0.9, "certain")]
        }));
        let mb = parse_match_bundle(&b).unwrap();
        assert_eq!(mb.submitted_id, "1234");
        assert_eq!(mb.candidates.len(), 1);
        let c = &mb.candidates[0];
        assert_eq!((c.rank, c.iis_id.as_str()), (1, "5678"));
        assert_eq!(c.score, Some(0.9));
        assert_eq!(c.grade, Some(MatchGrade::Certain));
        assert_eq!(
            c.full_url.as_deref(),
            Some("http://server/fhir/Patient/5678")
        );
        assert_eq!(c.demographics.iis_id.as_deref(), Some("5678"));
        assert!(mb.issues.is_empty());
    }

    #[test]
    fn accepts_structure_definition_url_on_bundle_root() {
        let b = line(json!({
            "resourceType": "Bundle",
            "extension": [{"url": "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/match-resource",
                           "valueReference": {"reference": "http://client/Patient/row-7/_history/1"}}],
            "entry": []
        }));
        let mb = parse_match_bundle(&b).unwrap();
        assert_eq!(mb.submitted_id, "row-7");
        assert!(mb.candidates.is_empty());
    }

    #[test]
    fn sorts_out_of_order_entries_and_handles_relative_full_url() {
        let mut no_id = entry("ignored", 0.95, "probable");
        no_id["resource"].as_object_mut().unwrap().remove("id");
        no_id["fullUrl"] = json!("Patient/from-url");
        let b = line(json!({
            "resourceType": "Bundle",
            "meta": {"extension": [{"url": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/match-resource",
                                    "valueReference": {"reference": "Patient/9"}}]},
            "entry": [entry("low", 0.2, "possible"), no_id, entry("mid", 0.5, "possible"),
                      {"resource": {"resourceType": "Patient", "id": "noscore"}}]
        }));
        let mb = parse_match_bundle(&b).unwrap();
        let ids: Vec<_> = mb.candidates.iter().map(|c| c.iis_id.as_str()).collect();
        assert_eq!(ids, ["from-url", "mid", "low", "noscore"]);
        let ranks: Vec<_> = mb.candidates.iter().map(|c| c.rank).collect();
        assert_eq!(ranks, [1, 2, 3, 4]);
        assert_eq!(mb.candidates[0].grade, Some(MatchGrade::Probable));
        assert_eq!(mb.candidates[3].score, None);
    }

    #[test]
    fn outcome_entries_become_issues_and_total_is_informational() {
        let b = line(json!({
            "resourceType": "Bundle", "total": 2,
            "meta": {"extension": [{"url": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/match-resource",
                                    "valueReference": {"reference": "Patient/3"}}]},
            "entry": [
                {"resource": {"resourceType": "OperationOutcome",
                              "issue": [{"severity": "error", "code": 400,
                                         "details": {"text": "birthDate is required"}}]},
                 "search": {"mode": "outcome"}},
                entry("only", 0.7, "probable")
            ]
        }));
        let mb = parse_match_bundle(&b).unwrap();
        assert_eq!(mb.declared_total, Some(2));
        assert_eq!(mb.candidates.len(), 1);
        assert_eq!(mb.issues.len(), 1);
        assert_eq!(mb.issues[0].code, "400");
        assert_eq!(mb.issues[0].text, "birthDate is required");
    }

    #[test]
    fn errors_say_what_is_missing() {
        let no_ref = line(json!({"resourceType": "Bundle", "entry": []}));
        let e = parse_match_bundle(&no_ref).unwrap_err();
        assert!(matches!(e, FhirError::Missing { .. }));
        assert!(e.to_string().contains("match-resource"), "{e}");

        let no_id = line(json!({
            "resourceType": "Bundle",
            "meta": {"extension": [{"url": "x/match-resource", "valueReference": {"reference": "Patient/1"}}]},
            "entry": [{"resource": {"resourceType": "Patient"}}]
        }));
        let e = parse_match_bundle(&no_id).unwrap_err();
        assert!(e.to_string().contains("entry 0"), "{e}");

        let e = parse_match_bundle(b"{\"resourceType\": \"Bundle\", ").unwrap_err();
        assert!(matches!(e, FhirError::NotJson { line: 1, .. }), "{e:?}");
        let e = parse_match_bundle(b"[1,2]").unwrap_err();
        assert!(matches!(e, FhirError::NotObject { found: "array", .. }));
        let e = parse_match_bundle(b"{\"resourceType\":\"OperationOutcome\"}").unwrap_err();
        assert!(matches!(e, FhirError::WrongResourceType { .. }));
        let e = parse_match_bundle(b"  \r").unwrap_err();
        assert!(matches!(e, FhirError::Missing { .. }));
    }

    #[test]
    fn tolerates_bom_and_crlf() {
        let mut b = b"\xEF\xBB\xBF".to_vec();
        b.extend(line(json!({
            "meta": {"extension": [{"url": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/match-resource",
                                    "valueReference": {"reference": "Patient/42"}}]}
        })));
        b.extend(b"\r");
        assert_eq!(parse_match_bundle(&b).unwrap().submitted_id, "42");
    }

    #[test]
    fn last_segment_rules() {
        assert_eq!(last_id_segment("Patient/1234").as_deref(), Some("1234"));
        assert_eq!(last_id_segment("1234").as_deref(), Some("1234"));
        assert_eq!(
            last_id_segment("https://x/fhir/Patient/5/_history/3").as_deref(),
            Some("5")
        );
        assert_eq!(last_id_segment("Patient/7/").as_deref(), Some("7"));
        assert_eq!(last_id_segment("/"), None);
    }

    /// The `serde_json::Value`-based reader this module used before the typed one, kept
    /// verbatim as the oracle the typed reader must agree with.
    mod reference {
        use super::super::{
            FhirError, MatchBundle, WHAT, as_u64_lenient, is_match_resource_url, json_type,
            last_id_segment, parse_object,
        };
        use crate::domain::{Candidate, MatchGrade};
        // The previous readers throughout, so this oracle is the code as it was.
        use crate::fhir::outcome::tests::reference::parse_issues;
        use crate::fhir::patient::tests::reference::from_patient;
        use serde_json::{Map, Value};
        use std::cmp::Ordering;

        pub fn parse_match_bundle(line: &[u8]) -> Result<MatchBundle, FhirError> {
            let root = parse_object(WHAT, line)?;
            match root.get("resourceType").and_then(Value::as_str) {
                None | Some("Bundle") => {}
                Some(other) => {
                    return Err(FhirError::WrongResourceType {
                        what: WHAT,
                        expected: "Bundle",
                        found: other.to_string(),
                    });
                }
            }
            let submitted_id = submitted_id(&root)?;
            let declared_total = root.get("total").and_then(as_u64_lenient);

            let mut candidates: Vec<Candidate> = Vec::new();
            let mut issues = Vec::new();
            let entries = match root.get("entry") {
                None | Some(Value::Null) => &[][..],
                Some(Value::Array(a)) => a.as_slice(),
                Some(other) => {
                    return Err(FhirError::Invalid {
                        what: WHAT,
                        element: "entry".to_string(),
                        problem: format!("it is a JSON {}, not an array", json_type(other)),
                    });
                }
            };
            for (idx, entry) in entries.iter().enumerate() {
                let Some(resource) = entry.get("resource") else {
                    continue;
                };
                let search = entry.get("search");
                let rtype = resource.get("resourceType").and_then(Value::as_str);
                let is_outcome = rtype == Some("OperationOutcome")
                    || (rtype.is_none()
                        && search.and_then(|s| s.get("mode")).and_then(Value::as_str)
                            == Some("outcome"));
                if is_outcome {
                    issues.extend(parse_issues(resource));
                    continue;
                }
                if rtype != Some("Patient") {
                    continue;
                }
                let full_url = entry
                    .get("fullUrl")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let id = resource
                .get("id")
                .and_then(scalar_id)
                .or_else(|| full_url.as_deref().and_then(last_id_segment))
                .ok_or_else(|| FhirError::Missing {
                    what: WHAT,
                    missing: format!(
                        "the id of the Patient in entry {idx} (no resource.id and no usable fullUrl)"
                    ),
                })?;
                let score = search.and_then(|s| s.get("score")).and_then(as_f64_lenient);
                let grade = search.and_then(match_grade);
                let mut demographics = from_patient(resource);
                demographics.iis_id = Some(id.clone());
                candidates.push(Candidate {
                    rank: 0,
                    iis_id: id,
                    score,
                    grade,
                    full_url,
                    demographics,
                });
            }
            // Best score first, missing scores last. Ties are broken by grade, then by id, so the
            // ranking does not depend on the order in which a server listed tied entries (servers send
            // them out of order).
            candidates.sort_by(|a, b| {
                let by_score = match (a.score, b.score) {
                    (Some(x), Some(y)) => y.partial_cmp(&x).unwrap_or(Ordering::Equal),
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (None, None) => Ordering::Equal,
                };
                let grade_rank = |g: Option<MatchGrade>| g.map(|g| g as u8).unwrap_or(u8::MAX);
                by_score
                    .then_with(|| grade_rank(a.grade).cmp(&grade_rank(b.grade)))
                    .then_with(|| a.iis_id.cmp(&b.iis_id))
            });
            for (i, c) in candidates.iter_mut().enumerate() {
                c.rank = u32::try_from(i + 1).unwrap_or(u32::MAX);
            }
            Ok(MatchBundle {
                submitted_id,
                candidates,
                issues,
                declared_total,
            })
        }

        fn submitted_id(root: &Map<String, Value>) -> Result<String, FhirError> {
            let meta_ext = root
                .get("meta")
                .and_then(|m| m.get("extension"))
                .and_then(Value::as_array);
            let root_ext = root.get("extension").and_then(Value::as_array);
            let ext = meta_ext
            .into_iter()
            .chain(root_ext)
            .flatten()
            .find(|e| {
                e.get("url")
                    .and_then(Value::as_str)
                    .is_some_and(is_match_resource_url)
            })
            .ok_or_else(|| FhirError::Missing {
                what: WHAT,
                missing:
                    "the meta.extension \"match-resource\" that says which submitted Patient it answers"
                        .to_string(),
            })?;
            let reference = ext
                .get("valueReference")
                .and_then(|r| r.get("reference"))
                .and_then(Value::as_str)
                .or_else(|| ext.get("valueString").and_then(Value::as_str))
                .or_else(|| ext.get("valueId").and_then(Value::as_str))
                .ok_or_else(|| FhirError::Missing {
                    what: WHAT,
                    missing: "valueReference.reference in the match-resource extension".to_string(),
                })?;
            last_id_segment(reference).ok_or_else(|| FhirError::Invalid {
                what: WHAT,
                element: "match-resource reference".to_string(),
                problem: "it does not end in a Patient id".to_string(),
            })
        }

        fn scalar_id(v: &Value) -> Option<String> {
            match v {
                Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        }

        fn match_grade(search: &Value) -> Option<MatchGrade> {
            search
                .get("extension")
                .and_then(Value::as_array)?
                .iter()
                .filter(|e| {
                    e.get("url")
                        .and_then(Value::as_str)
                        .is_some_and(|u| u.trim_end_matches('/').ends_with("match-grade"))
                })
                .find_map(|e| {
                    e.get("valueCode")
                        .or_else(|| e.get("valueString"))
                        .and_then(Value::as_str)
                        .and_then(MatchGrade::parse)
                })
        }

        fn as_f64_lenient(v: &Value) -> Option<f64> {
            match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            }
            .filter(|f| f.is_finite())
        }
    }

    const MR: &str = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/match-resource";

    /// Lines a deviant server might send, as raw text (so repeated keys, escapes and invalid
    /// bytes survive), each checked against the `Value`-based reference reader.
    fn deviant_lines() -> Vec<Vec<u8>> {
        let ok_meta = format!(
            r#""meta":{{"extension":[{{"url":"{MR}","valueReference":{{"reference":"Patient/1"}}}}]}}"#
        );
        let with_entries = |entries: &str| {
            format!(r#"{{"resourceType":"Bundle",{ok_meta},"entry":[{entries}]}}"#).into_bytes()
        };
        let patient =
            r#"{"resourceType":"Patient","id":"p","name":[{"family":"DOE","given":["JANE"]}]}"#;
        let mut lines: Vec<Vec<u8>> = vec![
            // Root-level shapes and errors.
            b"".to_vec(),
            b"   \r\n".to_vec(),
            b"{".to_vec(),
            b"[1,2]".to_vec(),
            b"\"Bundle\"".to_vec(),
            b"null".to_vec(),
            b"{} trailing".to_vec(),
            b"{}".to_vec(),
            format!(r#"{{"resourceType":5,{ok_meta}}}"#).into_bytes(),
            format!(r#"{{"resourceType":"Patient",{ok_meta}}}"#).into_bytes(),
            format!(r#"{{"resourceType":"Patient","resourceType":"Bundle",{ok_meta}}}"#).into_bytes(),
            format!("\u{feff}{{{ok_meta}}}\r").into_bytes(),
            // The match-resource extension in its many spellings.
            r#"{"meta":{"extension":{"url":"x/match-resource"}}}"#.as_bytes().to_vec(),
            r#"{"meta":"x","extension":[{"url":"a/StructureDefinition/match-resource/","valueString":"Patient/7"}]}"#.as_bytes().to_vec(),
            r#"{"meta":{"extension":[{"url":5},{"url":"match-resource","valueId":"8"}]}}"#.as_bytes().to_vec(),
            r#"{"meta":{"extension":[{"url":"match-resource","valueReference":"Patient/1","valueString":"Patient/2"}]}}"#.as_bytes().to_vec(),
            r#"{"meta":{"extension":[{"url":"match-resource","valueReference":{"reference":5}}]}}"#.as_bytes().to_vec(),
            r#"{"meta":{"extension":[{"url":"match-resource","valueReference":{"reference":"/"}}]}}"#.as_bytes().to_vec(),
            r#"{"meta":{"extension":[{"url":"match-resource","valueReference":{"reference":"Patient\/r\u00e9-9?x=1"}}]}}"#.as_bytes().to_vec(),
            r#"{"meta":{"extension":[null,"x",{"url":"other"}]},"extension":[{"url":"match-resource","valueString":"3"}]}"#.as_bytes().to_vec(),
            // total.
            format!(r#"{{{ok_meta},"total":"3"}}"#).into_bytes(),
            format!(r#"{{{ok_meta},"total":-1}}"#).into_bytes(),
            format!(r#"{{{ok_meta},"total":2.5}}"#).into_bytes(),
            format!(r#"{{{ok_meta},"total":" 4 ","total":7}}"#).into_bytes(),
            // entry shapes.
            format!(r#"{{{ok_meta},"entry":{{"resource":{patient}}}}}"#).into_bytes(),
            format!(r#"{{{ok_meta},"entry":"x"}}"#).into_bytes(),
            format!(r#"{{{ok_meta},"entry":true}}"#).into_bytes(),
            format!(r#"{{{ok_meta},"entry":3}}"#).into_bytes(),
            format!(r#"{{{ok_meta},"entry":null}}"#).into_bytes(),
            format!(r#"{{{ok_meta},"entry":[{{"resource":{patient}}}],"entry":[]}}"#).into_bytes(),
            with_entries(r#""x",null,5,[],{},{"resource":null},{"resource":"x","search":{"mode":"outcome"}}"#),
            with_entries(r#"{"resource":{"resourceType":"Observation","id":"o"}}"#),
            with_entries(r#"{"resource":{"id":"noType","issue":[{"code":"x"}]},"search":{"mode":"outcome"}}"#),
            with_entries(r#"{"resource":{"id":"noType","issue":[{"code":"x"}]},"search":{"mode":"match"}}"#),
            with_entries(r#"{"resource":{"resourceType":"OperationOutcome","issue":[{"severity":" WARNING ","code":4.5,"details":{"text":"","coding":[null,{"display":7}]}},{"code":true},"bad",{"severity":null,"code":"","diagnostics":"  d  "}]}}"#),
            with_entries(r#"{"resource":{"resourceType":"OperationOutcome","issue":{"code":"x"}}}"#),
            with_entries(r#"{"resource":{"resourceType":"OperationOutcome","issue":[{"code":"a","code":"b"}]}}"#),
            // Ids, full URLs and scores.
            with_entries(r#"{"resource":{"resourceType":"Patient","id":42},"search":{"score":"0.9"}},{"resource":{"resourceType":"Patient","id":" "},"fullUrl":"urn:uuid:abc","search":{"score":" 0.5 "}}"#),
            with_entries(r#"{"resource":{"resourceType":"Patient"},"fullUrl":5}"#),
            with_entries(r#"{"resource":{"resourceType":"Patient"}},{"resource":{"resourceType":"Patient"}}"#),
            with_entries(r#"{"resource":{"resourceType":"Patient","id":"a"},"search":{"score":"abc"}},{"resource":{"resourceType":"Patient","id":"b"},"search":{"score":"NaN"}},{"resource":{"resourceType":"Patient","id":"c"},"search":{"score":true}},{"resource":{"resourceType":"Patient","id":"d"},"search":{"score":1e308}},{"resource":{"resourceType":"Patient","id":"e"},"search":"x"},{"resource":{"resourceType":"Patient","id":"f"},"search":{"score":"inf"}}"#),
            with_entries(r#"{"resource":{"resourceType":"Patient","id":"a"},"search":{"score":0.5,"score":0.7}},{"resource":{"resourceType":"Patient","id":"b"},"search":{"score":0.6}}"#),
            // Grades: valueCode wins when present, even as a non-string; ties by grade then id.
            with_entries(r#"{"resource":{"resourceType":"Patient","id":"z"},"search":{"score":0.5,"extension":[{"url":"match-grade/","valueCode":5,"valueString":"certain"}]}},{"resource":{"resourceType":"Patient","id":"y"},"search":{"score":0.5,"extension":[{"url":"x/match-grade","valueString":"Probable"}]}},{"resource":{"resourceType":"Patient","id":"x"},"search":{"score":0.5,"extension":[{"url":"match-grade","valueCode":"bogus"},"s",{"url":"match-grade","valueCode":"certainly_not"}]}},{"resource":{"resourceType":"Patient","id":"w"},"search":{"score":0.5,"extension":[{"url":"match-grade","valueCode":null,"valueString":"certain"}]}}"#),
            // Patients read inside a Bundle: escapes, repeated keys, odd types.
            with_entries(r#"{"resource":{"name":[{"family":"CAF\u00c9","given":["Jos\u00e9","  ","B"]}],"resourceType":"Patient","id":"e1","gender":"F","birthDate":"2001-02-03T00:00:00Z"}}"#),
            with_entries(r#"{"resource":{"resourceType":"Patient","id":"d1","gender":"male","gender":"female","name":[{"family":"A","family":"B"}]}}"#),
            with_entries(r#"{"resource":{"resourceType":"Patient","id":"d2","name":"x","telecom":{"system":"phone"},"address":"x","identifier":{},"extension":5}}"#),
            with_entries(r#"{"resource":{"resourceType":"Patient","id":"d3","gend\u0065r":"female","multipleBirthInteger":"2"}}"#),
        ];
        // Invalid UTF-8 and a lone surrogate inside elements that are read.
        let mut bad = format!(r#"{{{ok_meta},"entry":[{{"resource":{{"resourceType":"Patient","id":"p","name":[{{"family":""#).into_bytes();
        bad.extend(b"\xff\"}]}}]}");
        lines.push(bad);
        lines.push(with_entries(
            r#"{"resource":{"resourceType":"Patient","id":"p","name":[{"family":"\ud800"}]}}"#,
        ));
        // Invalid UTF-8 in an element that is skipped: still rejected, as before.
        let mut bad = format!(r#"{{{ok_meta},"type":""#).into_bytes();
        bad.extend(b"\xc3(\"}");
        lines.push(bad);
        lines
    }

    #[test]
    fn typed_reader_agrees_with_value_reader_on_deviant_lines() {
        for (i, l) in deviant_lines().iter().enumerate() {
            let typed = parse_match_bundle(l);
            let reference = reference::parse_match_bundle(l);
            assert_eq!(typed, reference, "line {i}: {}", String::from_utf8_lossy(l));
        }
    }

    #[test]
    fn typed_reader_agrees_with_value_reader_on_realistic_lines() {
        for l in bench_lines(400) {
            let typed = parse_match_bundle(&l).unwrap();
            assert_eq!(typed, reference::parse_match_bundle(&l).unwrap());
            assert!(!typed.candidates.is_empty());
        }
    }

    #[test]
    fn deviant_values_are_read_as_before() {
        // Spot checks of what the equivalence test covers, so a change in both readers at once
        // still shows up.
        let l = deviant_lines();
        let find = |needle: &str| {
            l.iter()
                .find(|x| String::from_utf8_lossy(x).contains(needle))
                .map(|x| parse_match_bundle(x))
                .unwrap()
        };
        let mb = find(r#""id":42"#).unwrap();
        let got: Vec<_> = mb
            .candidates
            .iter()
            .map(|c| (c.iis_id.as_str(), c.score))
            .collect();
        assert_eq!(got, [("42", Some(0.9)), ("urn:uuid:abc", Some(0.5))]);
        let mb = find(r#""valueCode":5"#).unwrap();
        let got: Vec<_> = mb
            .candidates
            .iter()
            .map(|c| (c.iis_id.as_str(), c.grade))
            .collect();
        assert_eq!(
            got,
            [
                ("y", Some(MatchGrade::Probable)),
                ("x", Some(MatchGrade::CertainlyNot)),
                ("w", None),
                ("z", None)
            ]
        );
        let mb = find("CAF").unwrap();
        let d = &mb.candidates[0].demographics;
        assert_eq!(d.family.as_deref(), Some("CAFÉ"));
        assert_eq!(d.given.as_deref(), Some("José"));
        assert_eq!(d.middle.as_deref(), Some("B"));
        let mb = find(r#""id":"d1""#).unwrap();
        let d = &mb.candidates[0].demographics;
        assert_eq!(d.family.as_deref(), Some("B"), "the last repeated key wins");
        assert_eq!(d.sex, Some(crate::domain::Sex::Female));
        let e = find(r#""entry":true"#).unwrap_err();
        assert!(e.to_string().contains("JSON boolean, not an array"), "{e}");
        let mb = find(r#""total":" 4 ","total":7"#).unwrap();
        assert_eq!(mb.declared_total, Some(7));
        let mb = find(r#""issue":[{"severity":" WARNING ""#).unwrap();
        let got: Vec<_> = mb
            .issues
            .iter()
            .map(|i| (i.severity.as_str(), i.code.as_str(), i.text.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("warning", "4.5", "4.5"),
                ("error", "true", "true"),
                ("error", "unknown", "d")
            ]
        );
    }

    #[test]
    fn skipped_elements_are_not_range_checked() {
        // The one known difference from the `Value` reader: numbers and string escapes inside
        // elements this reader skips are not decoded, so an out-of-range number or a lone
        // surrogate there no longer rejects the whole line (the `Value` reader said "not valid
        // JSON"). Elements that are read are still checked.
        let meta = format!(
            r#""meta":{{"extension":[{{"url":"{MR}","valueReference":{{"reference":"Patient/1"}}}}]}}"#
        );
        for skipped in [r#""x":1e400"#, r#""x":"\udc00""#] {
            let l = format!("{{{meta},{skipped}}}");
            assert!(reference::parse_match_bundle(l.as_bytes()).is_err());
            assert_eq!(parse_match_bundle(l.as_bytes()).unwrap().submitted_id, "1");
        }
        let read = format!(r#"{{{meta},"total":1e400}}"#);
        assert!(matches!(
            parse_match_bundle(read.as_bytes()),
            Err(FhirError::NotJson { .. })
        ));
    }

    /// ~20,000 realistic match-Bundle lines (1–2 full Patient entries, sometimes an
    /// OperationOutcome), as a `$bulk-match` output file holds them.
    fn bench_lines(n: usize) -> Vec<Vec<u8>> {
        use crate::domain::{Demographics, Sex};
        use crate::fhir::patient::to_patient;
        use chrono::NaiveDate;
        let given = [
            "ANA", "JOSÉ", "MARY", "LIAM", "NOAH", "OLIVIA", "EMMA", "AVA",
        ];
        let family = ["MUNOZ", "SMITH", "NGUYEN", "GARCIA", "O'BRIEN", "JOHNSON"];
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let demo = |k: usize| Demographics {
                given: Some(given[(i + k) % given.len()].to_string()),
                middle: (i % 3 == 0).then(|| "MARIA".to_string()),
                family: Some(family[(i * 7 + k) % family.len()].to_string()),
                suffix: (i % 11 == 0).then(|| "JR".to_string()),
                birth_date: NaiveDate::from_ymd_opt(
                    2000 + (i % 24) as i32,
                    1 + (i % 12) as u32,
                    1 + (i % 28) as u32,
                ),
                sex: Some(if i % 2 == 0 { Sex::Female } else { Sex::Male }),
                phone: Some(format!("555{:07}", i)),
                email: (i % 4 == 0).then(|| format!("person{i}@example.org")),
                address_line1: Some(format!("{} MAIN ST", i % 900)),
                address_line2: (i % 5 == 0).then(|| "APT 4".to_string()),
                city: Some("SPRINGFIELD".to_string()),
                state: Some("IL".to_string()),
                postal_code: Some(format!("62{:03}", i % 1000)),
                local_id: Some(format!("MRN-{i}")),
                medicaid_id: (i % 2 == 0).then(|| format!("MA{i}")),
                ssn: (i % 3 == 0).then(|| format!("{:09}", 100_000_000 + i)),
                mothers_maiden_name: Some("GARCIA".to_string()),
                multiple_birth: Some(i % 10 == 0),
                multiple_birth_order: (i % 10 == 0).then_some(1 + k as u32),
                iis_id: None,
            };
            let n_entries = 1 + i % 2;
            let mut entries: Vec<Value> = (0..n_entries)
                .map(|k| {
                    let id = format!("iis-{i}-{k}");
                    json!({
                        "fullUrl": format!("https://iis.example.org/fhir/Patient/{id}"),
                        "resource": to_patient(&id, &demo(k)),
                        "search": {"mode": "match", "score": 0.95 - 0.3 * k as f64,
                                   "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/match-grade",
                                                  "valueCode": if k == 0 { "certain" } else { "possible" }}]}
                    })
                })
                .collect();
            if i % 50 == 0 {
                entries.push(json!({"resource": {"resourceType": "OperationOutcome",
                    "issue": [{"severity": "warning", "code": "informational",
                               "details": {"text": "multiple candidates"}}]},
                    "search": {"mode": "outcome"}}));
            }
            out.push(line(json!({
                "resourceType": "Bundle", "id": format!("b{i}"), "type": "searchset",
                "total": n_entries,
                "meta": {"extension": [{"url": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/match-resource",
                                        "valueReference": {"reference": format!("Patient/row-{i}")}}]},
                "entry": entries
            })));
        }
        out
    }

    #[test]
    #[ignore = "benchmark: run in release with --ignored --nocapture"]
    fn bench_parse_match_bundle() {
        let lines = bench_lines(20_000);
        let bytes: usize = lines.iter().map(Vec::len).sum();
        // µs per line for one pass of `parse` over all lines.
        let pass = |parse: fn(&[u8]) -> Result<MatchBundle, FhirError>| {
            let start = std::time::Instant::now();
            let mut candidates = 0usize;
            for l in &lines {
                candidates += parse(l).unwrap().candidates.len();
            }
            assert_eq!(candidates, 30_000);
            start.elapsed().as_secs_f64() * 1e6 / lines.len() as f64
        };
        // Alternate typed and `Value` passes so both see the same machine load; keep the best.
        let (mut typed, mut value) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            typed = typed.min(pass(parse_match_bundle));
            value = value.min(pass(reference::parse_match_bundle));
        }
        println!(
            "parse_match_bundle: {} lines, avg {} bytes/line: typed {typed:.2} µs/line, \
             Value-based (previous) {value:.2} µs/line, {:.1}x",
            lines.len(),
            bytes / lines.len(),
            value / typed
        );
    }
}
