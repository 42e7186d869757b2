//! Export a Group as a FHIR R4 `Group` resource (`type = person`, `actual = true`, one
//! `member.entity` reference per IIS patient with `member.period.start`) or as CSV.

use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};

use crate::store::{GroupInfo, Member};

/// The FHIR `Group` for `group` with `members`. The resource id is the IIS-assigned id when it
/// has been recorded (so the file can update the server's Group), else absent.
pub fn to_fhir(group: &GroupInfo, members: &[Member]) -> Value {
    let mut g = json!({
        "resourceType": "Group",
        "type": "person",
        "actual": true,
        "name": group.name,
        "quantity": members.len(),
        "member": members.iter().map(|m| json!({
            "entity": { "reference": format!("Patient/{}", m.iis_id) },
            "period": { "start": m.since },
        })).collect::<Vec<_>>(),
    });
    if let (Some(id), Some(obj)) = (group.iis_group_id.as_deref(), g.as_object_mut()) {
        obj.insert("id".into(), Value::from(id));
    }
    g
}

/// Write the FHIR `Group` as pretty JSON.
pub fn write_fhir(path: &Path, group: &GroupInfo, members: &[Member]) -> std::io::Result<()> {
    let text =
        serde_json::to_string_pretty(&to_fhir(group, members)).map_err(std::io::Error::other)?;
    let mut f = std::fs::File::create(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// Write the members as CSV: IIS id, name, birth date, source row id, since, added by.
pub fn write_csv(path: &Path, members: &[Member]) -> std::io::Result<()> {
    let mut w = csv::Writer::from_path(path).map_err(std::io::Error::other)?;
    w.write_record([
        "iis_patient_id",
        "name",
        "birth_date",
        "source_id",
        "member_since",
        "added_by",
    ])
    .map_err(std::io::Error::other)?;
    for m in members {
        w.write_record([
            m.iis_id.as_str(),
            m.name.as_str(),
            m.birth_date.as_str(),
            m.source_id.as_deref().unwrap_or(""),
            m.since.as_str(),
            m.added_by.as_str(),
        ])
        .map_err(std::io::Error::other)?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fhir_group_is_r4_person_actual_with_references_and_periods() {
        let g = GroupInfo {
            id: 1,
            cohort_id: 1,
            name: "High-risk".into(),
            iis_group_id: Some("G-9".into()),
            created_at: "2026-01-01T00:00:00Z".into(),
            members: 2,
            pending: 0,
        };
        let m = |id: &str| Member {
            iis_id: id.into(),
            row_id: Some(1),
            source_id: Some("MRN1".into()),
            name: "DOE, JANE".into(),
            birth_date: "2001-02-03".into(),
            since: "2026-02-01T10:00:00.000Z".into(),
            added_by: "cora".into(),
        };
        let v = to_fhir(&g, &[m("IIS1"), m("IIS2")]);
        assert_eq!(v["resourceType"], "Group");
        assert_eq!(v["id"], "G-9");
        assert_eq!(v["type"], "person");
        assert_eq!(v["actual"], true);
        assert_eq!(v["quantity"], 2);
        assert_eq!(v["member"][1]["entity"]["reference"], "Patient/IIS2");
        assert_eq!(
            v["member"][0]["period"]["start"],
            "2026-02-01T10:00:00.000Z"
        );
        // No patient names in the resource: references only.
        assert!(!v.to_string().contains("JANE"));

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.json");
        write_fhir(&p, &g, &[m("IIS1")]).unwrap();
        let back: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(back["member"][0]["entity"]["reference"], "Patient/IIS1");
        let c = dir.path().join("g.csv");
        write_csv(&c, &[m("IIS1")]).unwrap();
        let text = std::fs::read_to_string(&c).unwrap();
        assert!(text.starts_with("iis_patient_id,name,birth_date"));
        assert!(text.contains("IIS1,\"DOE, JANE\",2001-02-03,MRN1"));
    }
}
