//! Cohorts: open a file (dialog or drag-and-drop), map its columns with a preview, check it
//! (counts, bad rows, and for a re-import the difference) before importing, and see the
//! validation report of the current cohort with every bad row's line, column, value and reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use egui_extras::{Column, TableBuilder};

use super::{MatchdeskApp, Picked, Screen, labelled, tokens};
use crate::app::{Command, ImportCheck};
use crate::domain::Field;
use crate::import::{Mapping, Preview};
use crate::store::ProblemRow;

#[derive(Default)]
pub struct CohortsView {
    /// The file being opened, until its preview arrives.
    opening: Option<PathBuf>,
    draft: Option<Draft>,
    problems: Option<(i64, Arc<Vec<ProblemRow>>)>,
    last_import: Option<Arc<ImportCheck>>,
}

/// A file being mapped before import.
struct Draft {
    path: PathBuf,
    preview: Arc<Preview>,
    /// Per header: the field it maps to (`None`: ignored).
    fields: Vec<Option<Field>>,
    name: String,
    check: Option<Arc<ImportCheck>>,
    checking: bool,
}

impl Draft {
    fn mapping(&self) -> Mapping {
        let mut m = self.preview.automapping.clone();
        m.columns = self
            .preview
            .headers
            .iter()
            .zip(&self.fields)
            .filter_map(|(h, f)| f.map(|f| (h.clone(), f)))
            .collect();
        m
    }

    /// Required fields no column maps to.
    fn missing_required(&self) -> Vec<Field> {
        let m = self.mapping();
        if self.preview.format == "ndjson" {
            return Vec::new();
        }
        m.required
            .iter()
            .copied()
            .filter(|f| !m.columns.iter().any(|(_, g)| g == f))
            .collect()
    }
}

impl CohortsView {
    pub fn opening(&mut self, path: &Path) {
        self.opening = Some(path.to_path_buf());
        self.draft = None;
    }

    pub fn set_preview(&mut self, path: PathBuf, preview: Arc<Preview>) {
        self.opening = None;
        let fields = preview
            .headers
            .iter()
            .map(|h| {
                preview
                    .automapping
                    .columns
                    .iter()
                    .find(|(c, _)| c == h)
                    .map(|(_, f)| *f)
            })
            .collect();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "cohort".into());
        self.draft = Some(Draft {
            path,
            preview,
            fields,
            name,
            check: None,
            checking: false,
        });
    }

    pub fn set_check(&mut self, c: Arc<ImportCheck>) {
        if let Some(d) = &mut self.draft
            && d.path == c.path
        {
            d.check = Some(c);
            d.checking = false;
        }
    }

    pub fn imported(&mut self, c: Arc<ImportCheck>) {
        self.draft = None;
        self.last_import = Some(c);
    }

    pub fn set_problems(&mut self, cohort_id: i64, p: Arc<Vec<ProblemRow>>) {
        self.problems = Some((cohort_id, p));
    }
}

pub fn show(app: &mut MatchdeskApp, ui: &mut egui::Ui) {
    let t = tokens::of(ui);
    ui.horizontal(|ui| {
        if ui
            .button("Open cohort file…")
            .on_hover_text("CSV (comma, tab, pipe or semicolon) or FHIR Patient ndjson. You can also drop a file on the window.")
            .clicked()
        {
            app.pick(None, ("Cohort files", &["csv", "tsv", "txt", "ndjson", "json"]), Picked::OpenCohort);
        }
        if let Some((_, sample)) = app.snap.demo.clone()
            && ui
                .button("Use the sample cohort")
                .on_hover_text(sample.display().to_string())
                .clicked()
        {
            app.open_file(sample);
        }
        ui.colored_label(t.muted, "or drag a file onto this window");
    });
    ui.add_space(6.0);

    if app.snap.cohorts.is_empty() && app.cohorts.draft.is_none() && !app.persisted.dismissed_hint {
        first_run_hint(app, ui);
    }

    if let Some(p) = &app.cohorts.opening {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label(format!("Reading {}…", p.display()));
        });
    }

    if app.cohorts.draft.is_some() {
        draft_ui(app, ui);
        return;
    }

    if let Some(c) = app.cohorts.last_import.clone() {
        ui.horizontal(|ui| {
            ui.label(format!(
                "Last import: \"{}\" — {} rows ready, {} bad rows kept aside, {} warnings.",
                c.name, c.good_rows, c.bad_rows, c.warnings
            ));
            if ui.button("Match it now »").clicked() {
                app.persisted.screen = Screen::Runs;
            }
        });
        ui.add_space(6.0);
    }

    cohort_list(app, ui);
    ui.add_space(8.0);
    problems_ui(app, ui);
}

fn first_run_hint(app: &mut MatchdeskApp, ui: &mut egui::Ui) {
    let t = tokens::of(ui);
    egui::Frame::new()
        .fill(t.highlight_bg)
        .inner_margin(12.0)
        .corner_radius(6.0)
        .show(ui, |ui| {
            ui.strong("Welcome to matchdesk");
            ui.label("1. Open your cohort file (or click \"Use the sample cohort\" to try matchdesk with the built-in demo IIS).");
            ui.label("2. Check the column mapping and the bad rows, then import.");
            ui.label("3. On Match runs, start a run. Rows the IIS matches with certainty are matched automatically.");
            ui.label("4. Work through the Review queue; a coordinator approves the Group changes on the Group screen.");
            if ui.small_button("Hide this").clicked() {
                app.persisted.dismissed_hint = true;
            }
        });
    ui.add_space(8.0);
}

fn draft_ui(app: &mut MatchdeskApp, ui: &mut egui::Ui) {
    let t = tokens::of(ui);
    let Some(d) = app.cohorts.draft.as_mut() else {
        return;
    };
    ui.label(format!(
        "{} — {} ({}{})",
        d.path.display(),
        d.preview.format.to_uppercase(),
        d.preview.encoding,
        d.preview
            .delimiter
            .map(|c| format!(", separated by {}", delimiter_name(c)))
            .unwrap_or_default()
    ));
    ui.horizontal(|ui| {
        labelled(ui, "Cohort name", |ui| {
            ui.add(egui::TextEdit::singleline(&mut d.name).desired_width(260.0))
        });
        let exists = app.snap.cohorts.iter().any(|c| c.name == d.name);
        if exists {
            ui.colored_label(
                t.warning,
                "⚠ a cohort with this name exists: this will be a re-import (a new version)",
            );
        }
    });
    ui.add_space(4.0);
    ui.label(format!(
        "Columns: check what each of the file's {} columns holds (scroll sideways for more). Columns set to \"(ignore)\" are not imported.",
        d.preview.headers.len()
    ));
    let headers = d.preview.headers.clone();
    let rows = d.preview.rows.clone();
    let mut changed = false;
    egui::ScrollArea::horizontal()
        .id_salt("mapping")
        .max_height(260.0)
        .scroll_bar_visibility(egui::scroll_area::ScrollBarVisibility::AlwaysVisible)
        .show(ui, |ui| {
            egui::Grid::new("mapping_grid")
                .striped(true)
                .min_col_width(110.0)
                .show(ui, |ui| {
                    ui.strong("Column in file");
                    for h in &headers {
                        ui.strong(h);
                    }
                    ui.end_row();
                    ui.strong("Holds");
                    for (i, h) in headers.iter().enumerate() {
                        let current = d.fields[i];
                        egui::ComboBox::from_id_salt(("map", i))
                            .selected_text(current.map(|f| f.label()).unwrap_or("(ignore)"))
                            .show_ui(ui, |ui| {
                                if ui.selectable_label(current.is_none(), "(ignore)").clicked() {
                                    d.fields[i] = None;
                                    changed = true;
                                }
                                for f in Field::ALL {
                                    if ui.selectable_label(current == Some(f), f.label()).clicked()
                                    {
                                        // One column per field.
                                        for g in d.fields.iter_mut() {
                                            if *g == Some(f) {
                                                *g = None;
                                            }
                                        }
                                        d.fields[i] = Some(f);
                                        changed = true;
                                    }
                                }
                            })
                            .response
                            .on_hover_text(format!("What the column \"{h}\" holds"));
                    }
                    ui.end_row();
                    for (n, row) in rows.iter().take(8).enumerate() {
                        ui.label(format!("row {}", n + 1));
                        for v in row {
                            ui.label(v);
                        }
                        ui.end_row();
                    }
                });
        });
    if changed {
        d.check = None;
    }
    let missing = d.missing_required();
    if !missing.is_empty() {
        ui.colored_label(
            t.error,
            format!(
                "✖ No column is mapped to {}. Every row needs it: choose the column that holds it.",
                missing
                    .iter()
                    .map(|f| f.label())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    ui.add_space(6.0);
    let mut send = None;
    let mut cancel = false;
    ui.horizontal(|ui| {
        let ok = missing.is_empty() && !d.name.trim().is_empty();
        if ui
            .add_enabled(ok && !d.checking, egui::Button::new("Check file"))
            .on_hover_text(
                "Read the whole file and count good and bad rows without importing anything",
            )
            .clicked()
        {
            d.checking = true;
            send = Some(Command::CheckImport {
                path: d.path.clone(),
                mapping: d.mapping(),
                name: d.name.trim().to_string(),
            });
        }
        let label = if d.check.as_ref().is_some_and(|c| c.reimport) {
            "Apply re-import"
        } else {
            "Import"
        };
        if ui
            .add_enabled(ok && d.check.is_some(), egui::Button::new(label))
            .on_disabled_hover_text("Check the file first")
            .clicked()
        {
            send = Some(Command::Import {
                path: d.path.clone(),
                mapping: d.mapping(),
                name: d.name.trim().to_string(),
            });
        }
        if ui.button("Cancel").clicked() {
            cancel = true;
        }
        if d.checking {
            ui.spinner();
        }
    });
    if let Some(c) = &d.check {
        check_ui(ui, c);
    }
    if let Some(cmd) = send {
        app.send(cmd);
    }
    if cancel {
        app.cohorts.draft = None;
    }
}

fn check_ui(ui: &mut egui::Ui, c: &ImportCheck) {
    let t = tokens::of(ui);
    ui.add_space(6.0);
    egui::Frame::group(ui.style()).show(ui, |ui| {
        ui.strong("What this import will do");
        ui.label(format!("{} rows are good and will be matched.", c.good_rows));
        if c.bad_rows > 0 {
            ui.colored_label(
                t.warning,
                format!(
                    "⚠ {} rows have problems and are kept aside (not matched). After the import they are listed with line, column and reason, and can be exported.",
                    c.bad_rows
                ),
            );
        }
        if c.warnings > 0 {
            ui.label(format!("{} values were dropped with a warning (the rows are kept).", c.warnings));
        }
        if c.reimport {
            ui.separator();
            ui.strong("Difference to the current version");
            ui.label(format!("New rows: {}", c.diff.new_rows));
            ui.label(format!("Changed rows (will be matched again): {}", c.diff.changed_rows));
            ui.label(format!("Unchanged rows: {}", c.diff.unchanged_rows));
            let left = c.diff.left_rows;
            if left > 0 {
                ui.colored_label(
                    t.warning,
                    format!("⚠ Rows no longer in the file: {left}. Their Group members will be proposed for removal."),
                );
            } else {
                ui.label("Rows no longer in the file: 0");
            }
            if c.diff.now_bad_rows > 0 {
                ui.label(format!(
                    "Rows that became bad (kept as they were): {}",
                    c.diff.now_bad_rows
                ));
            }
        }
    });
}

fn cohort_list(app: &mut MatchdeskApp, ui: &mut egui::Ui) {
    if app.snap.cohorts.is_empty() {
        return;
    }
    ui.strong("Cohorts in this workspace");
    let cohorts = app.snap.cohorts.clone();
    let mut select = None;
    egui::Grid::new("cohorts_grid")
        .striped(true)
        .show(ui, |ui| {
            ui.strong("");
            ui.strong("Name");
            ui.strong("Rows");
            ui.strong("Bad rows");
            ui.strong("Versions");
            ui.strong("Last imported");
            ui.end_row();
            for c in cohorts.iter() {
                let current = app.persisted.cohort_id == Some(c.id);
                if ui
                    .add(egui::Button::selectable(
                        current,
                        if current { "• current" } else { "Select" },
                    ))
                    .on_hover_text(format!(
                        "Make \"{}\" the cohort the other screens show",
                        c.name
                    ))
                    .clicked()
                {
                    select = Some(c.id);
                }
                ui.label(&c.name);
                ui.label(c.active_rows.to_string());
                ui.label(c.bad_rows.to_string());
                ui.label(c.versions.to_string());
                ui.label(tokens::when(
                    c.last_imported_at.as_deref().unwrap_or(""),
                    false,
                ));
                ui.end_row();
            }
        });
    if let Some(id) = select {
        app.select_cohort(id);
    }
}

fn problems_ui(app: &mut MatchdeskApp, ui: &mut egui::Ui) {
    let t = tokens::of(ui);
    let Some(cohort_id) = app.persisted.cohort_id else {
        return;
    };
    let Some((pid, problems)) = app.cohorts.problems.clone() else {
        return;
    };
    if pid != cohort_id {
        return;
    }
    ui.horizontal(|ui| {
        ui.strong("Validation report");
        if problems.is_empty() {
            ui.colored_label(t.ok, "✔ every row of the current version is good");
        } else {
            ui.label(format!("{} problems", problems.len()));
            if ui.button("Export bad rows as CSV…").clicked() {
                let tx = app.picked.0.clone();
                std::thread::spawn(move || {
                    if let Some(p) = rfd::FileDialog::new()
                        .add_filter("CSV", &["csv"])
                        .set_file_name("bad_rows.csv")
                        .save_file()
                    {
                        let _ = tx.send(Picked::SaveBadRows(cohort_id, p));
                    }
                });
            }
        }
    });
    if problems.is_empty() {
        return;
    }
    TableBuilder::new(ui)
        .id_salt("problems")
        .striped(true)
        .column(Column::exact(70.0))
        .column(Column::initial(140.0).resizable(true))
        .column(Column::initial(160.0).resizable(true))
        .column(Column::remainder().at_least(200.0))
        .column(Column::exact(80.0))
        .min_scrolled_height(200.0)
        .header(tokens::ROW_HEIGHT, |mut h| {
            for title in ["Line", "Column", "Value", "Reason", "Severity"] {
                h.col(|ui| {
                    ui.strong(title);
                });
            }
        })
        .body(|body| {
            body.rows(tokens::ROW_HEIGHT, problems.len(), |mut row| {
                let p = &problems[row.index()];
                row.col(|ui| {
                    ui.label(p.line.to_string());
                });
                row.col(|ui| {
                    ui.label(p.column.as_deref().unwrap_or("—"));
                });
                row.col(|ui| {
                    ui.label(p.value.as_deref().unwrap_or("(empty)"));
                });
                row.col(|ui| {
                    ui.label(&p.reason);
                });
                row.col(|ui| {
                    let color = if p.severity == "error" {
                        t.error
                    } else {
                        t.warning
                    };
                    ui.colored_label(color, &p.severity);
                });
            });
        });
}

fn delimiter_name(c: u8) -> &'static str {
    match c {
        b',' => "commas",
        b'\t' => "tabs",
        b'|' => "pipes",
        b';' => "semicolons",
        _ => "another character",
    }
}
