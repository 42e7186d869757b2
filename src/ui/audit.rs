//! The audit log: who did what, when and why. Append-only in the store; here it is filtered
//! (by person, action, or any text) and exported as CSV.

use egui_extras::{Column, TableBuilder};

use super::{MatchdeskApp, Picked, labelled, tokens};
use crate::app::Command;
use crate::store::AuditFilter;

pub struct AuditView {
    actor: String,
    action: String,
    text: String,
    limit: usize,
}

impl Default for AuditView {
    fn default() -> Self {
        AuditView {
            actor: String::new(),
            action: String::new(),
            text: String::new(),
            limit: 5000,
        }
    }
}

impl AuditView {
    pub fn filter(&self) -> AuditFilter {
        let opt = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
        AuditFilter {
            actor: opt(&self.actor),
            action: opt(&self.action),
            text: opt(&self.text),
            since: None,
            limit: self.limit,
        }
    }
}

pub fn show(app: &mut MatchdeskApp, ui: &mut egui::Ui) {
    let t = tokens::of(ui);
    let mut changed = false;
    ui.horizontal_wrapped(|ui| {
        let v = &mut app.audit;
        changed |= labelled(ui, "Who", |ui| {
            ui.add(egui::TextEdit::singleline(&mut v.actor).desired_width(120.0))
        })
        .changed();
        changed |= labelled(ui, "Action", |ui| {
            ui.add(
                egui::TextEdit::singleline(&mut v.action)
                    .hint_text("e.g. decision, group")
                    .desired_width(140.0),
            )
        })
        .changed();
        changed |= labelled(ui, "Contains", |ui| {
            ui.add(
                egui::TextEdit::singleline(&mut v.text)
                    .hint_text("row, id, reason…")
                    .desired_width(160.0),
            )
        })
        .changed();
        if ui.button("Refresh").clicked() {
            changed = true;
        }
        if ui.button("Export as CSV…").clicked() {
            app.pick(Some("audit.csv"), ("CSV", &["csv"]), Picked::SaveAudit);
        }
    });
    if changed {
        app.send(Command::LoadAudit(app.audit.filter()));
    }
    let entries = app.snap.audit.clone();
    ui.colored_label(
        t.muted,
        format!(
            "{} entries (newest first; the log cannot be edited or deleted)",
            entries.len()
        ),
    );
    TableBuilder::new(ui)
        .id_salt("audit")
        .striped(true)
        .column(Column::exact(60.0))
        .column(Column::initial(180.0))
        .column(Column::initial(100.0).resizable(true))
        .column(Column::initial(190.0).resizable(true))
        .column(Column::initial(130.0).resizable(true))
        .column(Column::initial(200.0).resizable(true))
        .column(Column::remainder().at_least(200.0))
        .header(tokens::ROW_HEIGHT, |mut h| {
            for title in ["#", "When", "Who", "What", "On", "Why", "Details"] {
                h.col(|ui| {
                    ui.strong(title);
                });
            }
        })
        .body(|body| {
            body.rows(tokens::ROW_HEIGHT, entries.len(), |mut row| {
                let a = &entries[row.index()];
                row.col(|ui| {
                    ui.label(a.id.to_string());
                });
                row.col(|ui| {
                    ui.label(tokens::when(&a.at, true));
                });
                row.col(|ui| {
                    ui.label(&a.actor);
                });
                row.col(|ui| {
                    ui.label(a.action.replace('_', " "));
                });
                row.col(|ui| {
                    ui.label(format!(
                        "{} {}",
                        a.entity,
                        a.entity_id.as_deref().unwrap_or("")
                    ));
                });
                row.col(|ui| {
                    ui.label(a.why.as_deref().unwrap_or(""));
                });
                row.col(|ui| {
                    let d = a.details.as_deref().unwrap_or("");
                    ui.label(d).on_hover_text(d);
                });
            });
        });
}
