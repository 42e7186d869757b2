//! Tests for the cohort reader, on real files written to a temporary folder.

use super::*;
use std::collections::HashMap;
use std::io::Write;

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, 6, 15).unwrap()
}

fn ymd(y: i32, m: u32, d: u32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(y, m, d)
}

struct Run {
    summary: ImportSummary,
    items: Vec<ImportItem>,
    _dir: tempfile::TempDir,
}

impl Run {
    fn good(&self) -> Vec<&CohortRow> {
        self.items
            .iter()
            .filter_map(|i| match i {
                ImportItem::Good(r) => Some(r),
                ImportItem::Bad { .. } => None,
            })
            .collect()
    }
    fn bad(&self) -> Vec<(u64, &Vec<RowProblem>)> {
        self.items
            .iter()
            .filter_map(|i| match i {
                ImportItem::Bad { line, problems, .. } => Some((*line, problems)),
                ImportItem::Good(_) => None,
            })
            .collect()
    }
    fn all_problems(&self) -> Vec<&RowProblem> {
        self.items
            .iter()
            .flat_map(|i| match i {
                ImportItem::Good(r) => r.warnings.iter(),
                ImportItem::Bad { problems, .. } => problems.iter(),
            })
            .collect()
    }
}

fn write(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    (dir, path)
}

fn run_named(name: &str, bytes: &[u8], mapping: Option<&Mapping>) -> Run {
    let (dir, path) = write(name, bytes);
    let mut items = Vec::new();
    let summary = read_cohort_on(&path, mapping, today(), &mut |i| {
        items.push(i);
        Ok(())
    })
    .unwrap();
    Run {
        summary,
        items,
        _dir: dir,
    }
}

fn run(bytes: &[u8]) -> Run {
    run_named("cohort.csv", bytes, None)
}

fn err_of(bytes: &[u8], mapping: Option<&Mapping>) -> String {
    let (_dir, path) = write("cohort.csv", bytes);
    read_cohort_on(&path, mapping, today(), &mut |_| Ok(()))
        .unwrap_err()
        .to_string()
}

#[test]
fn detects_all_four_delimiters() {
    for d in [b',', b'\t', b';', b'|'] {
        let sep = d as char;
        let text = format!(
            "MRN{sep}First Name{sep}Last Name{sep}DOB\nA1{sep}Ana{sep}Doe{sep}2019-02-03\n\"A2\"{sep}\"Bo{sep}b\"{sep}Roe{sep}1/2/2018\n"
        );
        let r = run(text.as_bytes());
        assert_eq!(r.summary.delimiter, Some(d), "{sep:?}");
        assert_eq!(r.summary.format, "csv");
        assert_eq!(r.summary.good_rows, 2, "{sep:?}");
        let g = r.good();
        assert_eq!(g[0].original.given.as_deref(), Some("Ana"));
        assert_eq!(
            g[1].original.given.as_deref(),
            Some(format!("Bo{sep}b").as_str())
        );
        assert_eq!(g[1].source_id, "A2");
    }
}

#[test]
fn utf8_bom_is_skipped() {
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend_from_slice("MRN,First,Last,DOB\n1,José,Núñez,2019-02-03\n".as_bytes());
    let r = run(&bytes);
    assert_eq!(r.summary.encoding, "utf-8");
    assert_eq!(r.summary.headers[0], "MRN");
    let g = r.good();
    assert_eq!(g[0].source_id, "1");
    assert_eq!(g[0].original.family.as_deref(), Some("Núñez"));
    assert_eq!(g[0].normalized.family.as_deref(), Some("NUNEZ"));
    assert_eq!(g[0].normalized.given.as_deref(), Some("JOSE"));
}

#[test]
fn windows_1252_is_detected_and_decoded() {
    let r = run(b"id;first;last;dob;city\n7;Ren\xe9e;Mu\xf1oz;03/04/2015;Bogot\xe1\n");
    assert_eq!(r.summary.encoding, "windows-1252");
    assert_eq!(r.summary.delimiter, Some(b';'));
    let g = r.good();
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].original.family.as_deref(), Some("Muñoz"));
    assert_eq!(g[0].original.given.as_deref(), Some("Renée"));
    assert_eq!(g[0].original.city.as_deref(), Some("Bogotá"));
    assert_eq!(g[0].normalized.family.as_deref(), Some("MUNOZ"));
    assert_eq!(g[0].original.birth_date, ymd(2015, 3, 4));
}

#[test]
fn windows_1252_byte_late_in_a_large_file_is_still_detected() {
    let mut bytes = b"MRN,First,Last,DOB\n".to_vec();
    for i in 0..20_000 {
        bytes.extend_from_slice(format!("{i},Ana,Doe,2019-02-03\n").as_bytes());
    }
    bytes.extend_from_slice(b"last,Zo\xeb,Bront\xeb,2019-02-03\n");
    let r = run(&bytes);
    assert_eq!(r.summary.encoding, "windows-1252");
    assert_eq!(r.summary.good_rows, 20_001);
    let last = *r.good().last().unwrap();
    assert_eq!(last.original.given.as_deref(), Some("Zoë"));
    assert_eq!(last.line, 20_002);
}

#[test]
fn ndjson_patients() {
    let lines = [
        r#"{"resourceType":"Patient","id":"p1","name":[{"family":"Doe","given":["Ana"]}],"birthDate":"2019-02-03","gender":"female"}"#,
        "",
        r#"{"resourceType":"Patient","identifier":[{"type":{"coding":[{"code":"MR"}]},"value":"M9"}],"name":[{"family":"Roe","given":["Bo"]}],"birthDate":"2018-01-02"}"#,
        r#"{"resourceType":"Patient", broken"#,
        r#"{"resourceType":"Observation","id":"o1"}"#,
        r#"{"resourceType":"Patient","id":"p5","name":[{"family":"Poe","given":["Cy"]}],"birthDate":"2030-01-01"}"#,
        r#"{"resourceType":"Patient","id":"p6","name":[{"family":"Loe"}],"birthDate":"2017-01-01","gender":"robot"}"#,
        r#"{"resourceType":"Patient","id":"p1","name":[{"family":"Doe","given":["Ana"]}],"birthDate":"2019-02-03"}"#,
    ];
    let text = lines.join("\n") + "\n";
    let r = run_named("patients.ndjson", text.as_bytes(), None);
    assert_eq!(r.summary.format, "ndjson");
    assert_eq!(r.summary.delimiter, None);
    let g = r.good();
    assert_eq!(g.len(), 2);
    assert_eq!(g[0].line, 1);
    assert_eq!(g[0].source_id, "p1");
    assert_eq!(g[0].normalized.family.as_deref(), Some("DOE"));
    assert_eq!(g[0].normalized.sex, Some(Sex::Female));
    assert_eq!(g[1].line, 3);
    assert_eq!(g[1].source_id, "M9");
    let bad = r.bad();
    let lines: Vec<u64> = bad.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, vec![4, 5, 6, 7, 8]);
    assert!(
        bad[0].1[0].reason.contains("not valid JSON"),
        "{:?}",
        bad[0].1
    );
    assert!(bad[1].1[0].reason.contains("Observation"), "{:?}", bad[1].1);
    assert!(
        bad[2].1[0].reason.contains("in the future"),
        "{:?}",
        bad[2].1
    );
    assert_eq!(bad[2].1[0].column.as_deref(), Some("birthDate"));
    // Line 7: missing given (error) and an unknown gender (warning).
    assert!(
        bad[3]
            .1
            .iter()
            .any(|p| p.severity == Severity::Error && p.column.as_deref() == Some("name.given"))
    );
    assert!(
        bad[3]
            .1
            .iter()
            .any(|p| p.severity == Severity::Warning && p.value.as_deref() == Some("robot"))
    );
    assert!(bad[4].1[0].reason.contains("line 1"), "{:?}", bad[4].1);
    assert_eq!(r.summary.good_rows, 2);
    assert_eq!(r.summary.bad_rows, 5);
}

#[test]
fn ndjson_detected_by_first_byte() {
    let r = run_named(
        "export.txt",
        br#"  {"resourceType":"Patient","id":"x","name":[{"family":"Doe","given":["A"]}],"birthDate":"2001-01-01"}"#,
        None,
    );
    assert_eq!(r.summary.format, "ndjson");
    assert_eq!(r.summary.good_rows, 1);
}

#[test]
fn date_formats_in_a_file() {
    let r = run(
        b"id,first,last,dob\n1,A,B,2019-02-03\n2,A,B,02/03/2019\n3,A,B,2/3/2019\n4,A,B,2/3/19\n5,A,B,20190203\n6,A,B,02-03-2019\n7,A,B,2/3/40\n",
    );
    let dates: Vec<_> = r.good().iter().map(|g| g.original.birth_date).collect();
    let want = ymd(2019, 2, 3);
    assert_eq!(dates[..6], [want; 6]);
    assert_eq!(dates[6], ymd(1940, 2, 3));
}

#[test]
fn every_validation_rule_with_line_numbers() {
    let text = "\
MRN,First Name,Last Name,DOB,Sex,Phone,Zip,Email,SSN,State,Twin,Birth Order
1,Ana,Doe,2019-02-03,F,(555) 123-4567,12345-6789,Ana@Example.org,123-45-6789,Texas,Y,2
2,Bo,Roe,02/30/2019,M,,,,,,,
3,,Poe,2019-02-03,M,,,,,,,
4,Cy,Loe,2099-01-01,M,,,,,,,
5,Di,Moe,not a date,M,,,,,,,
6,Ed,Noe,2019-02-03,robot,555-1234,1234,ed@example,12345,Ontario,maybe,0
7,Fa,Qoe,,F,,,,,,,
8,Gi,Soe,1850-01-01,F,,,,,,,
";
    let r = run(text.as_bytes());
    assert_eq!(r.summary.good_rows, 2);
    assert_eq!(r.summary.bad_rows, 6);
    let g = r.good();
    assert_eq!(g[0].line, 2);
    assert!(g[0].warnings.is_empty(), "{:?}", g[0].warnings);
    let n = &g[0].normalized;
    assert_eq!(n.phone.as_deref(), Some("5551234567"));
    assert_eq!(n.postal_code.as_deref(), Some("12345"));
    assert_eq!(n.email.as_deref(), Some("ana@example.org"));
    assert_eq!(n.ssn.as_deref(), Some("123456789"));
    assert_eq!(n.state.as_deref(), Some("TX"));
    assert_eq!(n.multiple_birth, Some(true));
    assert_eq!(n.multiple_birth_order, Some(2));
    assert_eq!(g[0].original.phone.as_deref(), Some("(555) 123-4567"));

    let bad = r.bad();
    let by_line: HashMap<u64, &Vec<RowProblem>> = bad.iter().map(|(l, p)| (*l, *p)).collect();
    let p = &by_line[&3][0];
    assert_eq!(p.column.as_deref(), Some("DOB"));
    assert_eq!(p.value.as_deref(), Some("02/30/2019"));
    assert_eq!(
        p.reason,
        "birth date 02/30/2019 is not a real date — check the month and day"
    );
    assert_eq!(p.severity, Severity::Error);
    assert_eq!(by_line[&3].len(), 1, "no second 'missing' problem");
    let p = &by_line[&4][0];
    assert_eq!(p.column.as_deref(), Some("First Name"));
    assert!(p.reason.contains("first name is missing"), "{}", p.reason);
    assert!(by_line[&5][0].reason.contains("in the future"));
    assert!(
        by_line[&6][0]
            .reason
            .contains("not a date in a format we know")
    );
    assert!(by_line[&8][0].reason.contains("birth date is missing"));
    assert_eq!(by_line[&8][0].column.as_deref(), Some("DOB"));
    assert!(by_line[&9][0].reason.contains("before 1900"));

    // Line 7: every optional field malformed → warnings, row stays good, values dropped.
    let w = g[1];
    assert_eq!(w.line, 7);
    let cols: Vec<&str> = w
        .warnings
        .iter()
        .map(|p| p.column.as_deref().unwrap())
        .collect();
    for c in [
        "Sex",
        "Phone",
        "Zip",
        "Email",
        "SSN",
        "State",
        "Twin",
        "Birth Order",
    ] {
        assert!(cols.contains(&c), "{c} missing from {cols:?}");
    }
    assert!(
        w.warnings
            .iter()
            .all(|p| p.line == 7 && p.severity == Severity::Warning)
    );
    let phone = w
        .warnings
        .iter()
        .find(|p| p.column.as_deref() == Some("Phone"))
        .unwrap();
    assert_eq!(phone.value.as_deref(), Some("555-1234"));
    assert!(phone.reason.contains("10-digit"));
    let n = &w.normalized;
    assert_eq!(
        (
            &n.phone,
            &n.postal_code,
            &n.email,
            &n.ssn,
            &n.state,
            n.sex,
            n.multiple_birth,
            n.multiple_birth_order
        ),
        (&None, &None, &None, &None, &None, None, None, None)
    );
    assert_eq!(w.original.phone.as_deref(), Some("555-1234"));
    assert_eq!(r.summary.warnings, 8);
}

#[test]
fn quoted_multiline_fields_keep_physical_line_numbers() {
    let text = "id,first,last,dob,address\n\
                1,Ana,Doe,2019-02-03,\"1 Main St\nApt 4\nBack door\"\n\
                2,Bo,Roe,2019-02-30,x\n\
                3,Cy,Poe,2019-02-03,y\n";
    let r = run(text.as_bytes());
    let g = r.good();
    assert_eq!(g[0].line, 2);
    assert_eq!(
        g[0].normalized.address_line1.as_deref(),
        Some("1 MAIN ST APT 4 BACK DOOR")
    );
    assert_eq!(r.bad()[0].0, 5);
    assert_eq!(r.bad()[0].1[0].line, 5);
    assert_eq!(g[1].line, 6);
}

#[test]
fn duplicate_ids_name_the_first_line() {
    let text = "id,first,last,dob\nA,Ana,Doe,2019-02-03\nB,Bo,Roe,2019-02-03\nA,Cy,Poe,2019-02-03\nA,Di,Moe,2019-02-03\n";
    let r = run(text.as_bytes());
    assert_eq!(r.summary.good_rows, 2);
    let bad = r.bad();
    assert_eq!(bad.len(), 2);
    for (line, problems) in &bad {
        assert!([4, 5].contains(line));
        assert_eq!(problems[0].column.as_deref(), Some("id"));
        assert_eq!(problems[0].value.as_deref(), Some("A"));
        assert!(
            problems[0].reason.contains("already used on line 2"),
            "{}",
            problems[0].reason
        );
    }
}

#[test]
fn derived_ids_are_stable_and_duplicates_rejected() {
    let text = "first,last,dob,sex\nAna,Doe,2019-02-03,F\nBo,Roe,2019-02-03,M\n ana ,DOE,02/03/2019,female\n";
    let r = run(text.as_bytes());
    let g = r.good();
    assert_eq!(g.len(), 2);
    assert!(g[0].source_id.starts_with("row-") && g[0].source_id.len() == 20);
    assert_eq!(g[0].source_id, derived_id(&g[0].normalized));
    assert_eq!(
        g[0].source_id,
        format!("row-{:016x}", fnv1a64(b"DOE|ANA|2019-02-03|female"))
    );
    let bad = r.bad();
    assert_eq!(bad[0].0, 4);
    assert!(
        bad[0].1[0].reason.contains("as line 2"),
        "{}",
        bad[0].1[0].reason
    );
    // Same file read again → same ids.
    let again = run(text.as_bytes());
    assert_eq!(again.good()[0].source_id, g[0].source_id);
}

#[test]
fn missing_required_column_is_one_clear_error() {
    let e = err_of(b"MRN,First Name,Notes\n1,Ana,x\n", None);
    assert!(e.contains("Last name (family)"), "{e}");
    assert!(e.contains("Birth date (birth_date)"), "{e}");
    assert!(e.contains("\"MRN\", \"First Name\", \"Notes\""), "{e}");
    assert!(e.contains("cohort.csv"), "{e}");
    assert!(e.contains("MAPPING.md"), "{e}");

    let m = Mapping {
        columns: vec![
            ("Surname".into(), Field::Family),
            ("First Name".into(), Field::Given),
            ("Born".into(), Field::BirthDate),
        ],
        ..Mapping::default()
    };
    let e = err_of(
        b"MRN,First Name,Last Name,DOB\n1,Ana,Doe,2019-02-03\n",
        Some(&m),
    );
    assert!(e.contains("\"Surname\" (family)"), "{e}");
    assert!(e.contains("\"Born\" (birth_date)"), "{e}");
    assert!(
        e.contains("Headers found: \"MRN\", \"First Name\", \"Last Name\", \"DOB\""),
        "{e}"
    );

    let m = Mapping {
        columns: vec![("A".into(), Field::Family), ("B".into(), Field::Family)],
        ..Mapping::default()
    };
    let e = err_of(b"A,B\n1,2\n", Some(&m));
    assert!(e.contains("both mapped to family"), "{e}");

    let e = err_of(b"", None);
    assert!(e.contains("is empty"), "{e}");
}

#[test]
fn user_mapping_overrides_automap() {
    let m = Mapping {
        columns: vec![
            ("apellido".into(), Field::Family),
            ("NOMBRE".into(), Field::Given),
            ("nacimiento".into(), Field::BirthDate),
            ("expediente".into(), Field::LocalId),
        ],
        required: vec![Field::Family, Field::BirthDate],
        delimiter: Some(b';'),
    };
    // "nombre" matches case-insensitively; "First Name" is not mapped so it is ignored.
    let r = run_named(
        "c.csv",
        b"expediente;nombre;apellido;nacimiento;First Name\nX1;Ana;Doe;03/04/2015;Zed\nX2;;Roe;03/04/2015;Zed\n",
        Some(&m),
    );
    assert_eq!(r.summary.good_rows, 2);
    let g = r.good();
    assert_eq!(g[0].source_id, "X1");
    assert_eq!(g[0].original.given.as_deref(), Some("Ana"));
    assert_eq!(g[1].original.given, None);
    assert_eq!(r.summary.mapping, m);
    assert_eq!(r.summary.headers.len(), 5);
}

#[test]
fn rows_with_extra_values_are_bad_and_blank_rows_skipped() {
    let r = run(b"id,first,last,dob\n1,Ana,Doe,2019-02-03,\n,,,\n2,Ana,Doe,Jr,2019-02-03\n3,Bo,Roe,2019-02-03\n");
    assert_eq!(r.summary.good_rows, 2);
    assert_eq!(r.items.len(), 3);
    let bad = r.bad();
    assert_eq!(bad[0].0, 4);
    assert!(
        bad[0]
            .1
            .iter()
            .any(|p| p.reason.contains("5 values but the header has 4"))
    );
}

#[test]
fn sink_error_stops_the_import() {
    let (_dir, path) = write(
        "c.csv",
        b"id,first,last,dob\n1,A,B,2019-02-03\n2,A,B,2019-02-03\n",
    );
    let mut seen = 0;
    let e = read_cohort_on(&path, None, today(), &mut |_| {
        seen += 1;
        Err(ImportError::Sink {
            line: 2,
            message: "disk full".into(),
        })
    })
    .unwrap_err();
    assert_eq!(seen, 1);
    assert!(e.to_string().contains("disk full"));
}

#[test]
fn problems_csv_round_trips() {
    let r =
        run(b"id,first,last,dob,phone\n1,Ana,Doe,2019-02-30,\n2,\"Bo, Jr\",Roe,2019-02-03,123\n");
    let (_dir, out) = write("problems.csv", b"");
    let problems = r.all_problems();
    write_problems_csv(&out, problems.iter().copied()).unwrap();
    let mut rdr = csv::Reader::from_path(&out).unwrap();
    assert_eq!(
        rdr.headers().unwrap(),
        vec!["line", "column", "value", "reason", "severity"]
    );
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(&rows[0][0], "2");
    assert_eq!(&rows[0][1], "dob");
    assert_eq!(&rows[0][2], "2019-02-30");
    assert_eq!(&rows[0][4], "error");
    assert_eq!(&rows[1][0], "3");
    assert_eq!(&rows[1][1], "phone");
    assert_eq!(&rows[1][4], "warning");
}

#[test]
fn preview_shows_first_rows_and_automapping() {
    let (_dir, path) = write(
        "c.csv",
        b"Patient ID\tFNAME\tLNAME\tDate of Birth\tColour\n1\tAna\tDoe\t2019-02-03\tred\n2\tBo\tRoe\t2019-02-03\tblue\n3\tCy\tPoe\t2019-02-03\tgreen\n",
    );
    let p = preview(&path, 2).unwrap();
    assert_eq!(p.delimiter, Some(b'\t'));
    assert_eq!(p.encoding, "utf-8");
    assert_eq!(p.rows.len(), 2);
    assert_eq!(p.rows[1], vec!["2", "Bo", "Roe", "2019-02-03", "blue"]);
    assert_eq!(
        p.automapping.columns,
        vec![
            ("Patient ID".to_string(), Field::LocalId),
            ("FNAME".to_string(), Field::Given),
            ("LNAME".to_string(), Field::Family),
            ("Date of Birth".to_string(), Field::BirthDate),
        ]
    );

    let (_dir2, path) = write(
        "p.ndjson",
        br#"{"resourceType":"Patient","id":"p1","name":[{"family":"Doe"}],"birthDate":"2019-02-03"}"#,
    );
    let p = preview(&path, 5).unwrap();
    assert_eq!(p.format, "ndjson");
    assert_eq!(p.headers, vec!["local_id", "family", "birth_date"]);
    assert_eq!(p.rows, vec![vec!["p1", "Doe", "2019-02-03"]]);
}

#[test]
fn fixture_files_read() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import");
    let mut n = 0;
    let s = read_cohort_on(&dir.join("latin1_semicolon.csv"), None, today(), &mut |i| {
        if let ImportItem::Good(_) = i {
            n += 1;
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(s.encoding, "windows-1252");
    assert_eq!(s.delimiter, Some(b';'));
    assert_eq!(n, 3);
    let m = Mapping::load(&dir.join("mapping.json")).unwrap();
    assert_eq!(m.column_for(Field::Family), Some("Apellido"));
}

/// Speed check for the 1,000,000-row target (12 populated columns). Meaningful only in release:
/// `cargo test --release --lib import::tests::speed -- --ignored --nocapture`. Measured on the
/// shared 2-core build VM: 1.6–1.9 s wall including dropping every item (CSV parsing alone
/// ≈ 0.15 s; the rest is mostly the ~24 owned strings per row and the duplicate-id set).
#[test]
#[ignore]
fn speed_one_million_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.csv");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        writeln!(
            w,
            "MRN,First Name,Middle,Last Name,DOB,Sex,Phone,Email,Address,City,State,Zip"
        )
        .unwrap();
        for i in 0..1_000_000u32 {
            writeln!(
                w,
                "M{i},Ana{},Q,O'Doe{},{:02}/{:02}/{},F,(555) 123-{:04},ana{i}@example.org,{} Main St.,Springfield,IL,{:05}",
                i % 977,
                i % 1013,
                1 + i % 12,
                1 + i % 28,
                1950 + i % 70,
                i % 10_000,
                i % 9999,
                i % 99_999
            )
            .unwrap();
        }
    }
    let start = std::time::Instant::now();
    let mut good = 0u64;
    let s = read_cohort_on(&path, None, today(), &mut |i| {
        if let ImportItem::Good(_) = i {
            good += 1;
        }
        Ok(())
    })
    .unwrap();
    let took = start.elapsed();
    eprintln!(
        "1,000,000 rows: {took:?} ({} good, {} warnings)",
        s.good_rows, s.warnings
    );
    assert_eq!(good, 1_000_000);
    assert!(took.as_secs_f64() < 2.0, "took {took:?}");
}
