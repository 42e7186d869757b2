//! The Group of the current cohort: members (searchable), pending changes a coordinator approves
//! or rejects (one by one or in bulk, with a reason), the history of every change, export as a
//! FHIR `Group` or CSV, and the Group id the IIS assigned.

use std::collections::BTreeSet;
use std::sync::Arc;

use egui_extras::{Column, TableBuilder};

use super::{MatchdeskApp, Picked, labelled, tokens};
use crate::app::{Command, GroupView, Role};
use crate::store::{ChangeKind, ChangeState, GroupChange};

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Tab {
    #[default]
    Pending,
    Members,
    History,
}

#[derive(Default)]
pub struct GroupScreen {
    tab: Tab,
    search: String,
    checked: BTreeSet<i64>,
    reason: String,
    iis_group_id: Option<String>,
    remove: Option<(String, String)>,
    /// The members matching the search, kept until the Group snapshot or the search changes
    /// (filtering a large Group every frame would cost a frame's budget).
    shown: Option<(Arc<GroupView>, String, Vec<usize>)>,
}

/// Indices of the members whose name, IIS id or record id contains `needle` (upper case).
fn matching_members(g: &GroupView, needle: &str) -> Vec<usize> {
    g.members
        .iter()
        .enumerate()
        .filter(|(_, m)| {
            needle.is_empty()
                || m.name.to_uppercase().contains(needle)
                || m.iis_id.to_uppercase().contains(needle)
                || m.source_id
                    .as_deref()
                    .unwrap_or("")
                    .to_uppercase()
                    .contains(needle)
        })
        .map(|(i, _)| i)
        .collect()
}

pub fn show(app: &mut MatchdeskApp, ui: &mut egui::Ui) {
    let t = tokens::of(ui);
    let Some(cohort_id) = app.persisted.cohort_id else {
        ui.label("Import a cohort first.");
        return;
    };
    let Some(g) = app
        .snap
        .group
        .clone()
        .filter(|g| g.group.cohort_id == cohort_id)
    else {
        ui.spinner();
        return;
    };
    let coordinator = app.snap.reviewer.role == Role::Coordinator;
    ui.horizontal(|ui| {
        ui.strong(format!("Group \"{}\"", g.group.name));
        ui.label(format!(
            "{} members · {} pending changes",
            g.group.members, g.group.pending
        ));
    });
    ui.horizontal(|ui| {
        let id = app
            .group
            .iis_group_id
            .get_or_insert_with(|| g.group.iis_group_id.clone().unwrap_or_default());
        labelled(ui, "Group id at the IIS", |ui| {
            ui.add(
                egui::TextEdit::singleline(id)
                    .hint_text("not recorded yet")
                    .desired_width(180.0),
            )
        });
        if ui.button("Save id").clicked() {
            app.send(Command::SetIisGroupId {
                cohort_id,
                iis_group_id: app.group.iis_group_id.clone(),
            });
        }
        ui.separator();
        if ui
            .button("Export FHIR Group…")
            .on_hover_text("A FHIR R4 Group resource (type person, actual) to give to the IIS")
            .clicked()
        {
            app.pick(Some("group.json"), ("FHIR JSON", &["json"]), move |p| {
                Picked::SaveGroup(cohort_id, p, true)
            });
        }
        if ui.button("Export CSV…").clicked() {
            app.pick(Some("group-members.csv"), ("CSV", &["csv"]), move |p| {
                Picked::SaveGroup(cohort_id, p, false)
            });
        }
    });
    ui.add_space(4.0);
    ui.horizontal(|ui| {
        for (tab, label) in [
            (
                Tab::Pending,
                format!("Pending changes ({})", g.pending.len()),
            ),
            (Tab::Members, format!("Members ({})", g.members.len())),
            (Tab::History, "History".to_string()),
        ] {
            if ui
                .add(egui::Button::selectable(app.group.tab == tab, label))
                .clicked()
            {
                app.group.tab = tab;
            }
        }
    });
    ui.separator();
    match app.group.tab {
        Tab::Pending => {
            if !coordinator {
                ui.colored_label(t.warning, "⚠ Only a coordinator approves or rejects changes. Your role is Reviewer (Settings).");
            }
            if g.pending.is_empty() {
                ui.label("No pending changes. Accepted matches and automatic matches appear here for approval; rows that leave the cohort appear as removals.");
                return;
            }
            app.group
                .checked
                .retain(|id| g.pending.iter().any(|c| c.id == *id));
            let mut send = None;
            ui.horizontal(|ui| {
                labelled(ui, "Reason", |ui| {
                    ui.add(
                        egui::TextEdit::singleline(&mut app.group.reason)
                            .hint_text("optional, saved in the history")
                            .desired_width(220.0),
                    )
                });
                let sel: Vec<i64> = app.group.checked.iter().copied().collect();
                let reason = {
                    let r = app.group.reason.trim().to_string();
                    (!r.is_empty()).then_some(r)
                };
                if ui
                    .add_enabled(
                        coordinator && !sel.is_empty(),
                        egui::Button::new(format!("Approve selected ({})", sel.len())),
                    )
                    .clicked()
                {
                    send = Some(Command::DecideChanges {
                        cohort_id,
                        ids: sel.clone(),
                        approve: true,
                        reason: reason.clone(),
                    });
                }
                if ui
                    .add_enabled(
                        coordinator && !sel.is_empty(),
                        egui::Button::new(format!("Reject selected ({})", sel.len())),
                    )
                    .clicked()
                {
                    send = Some(Command::DecideChanges {
                        cohort_id,
                        ids: sel,
                        approve: false,
                        reason: reason.clone(),
                    });
                }
                let all: Vec<i64> = g.pending.iter().map(|c| c.id).collect();
                if ui
                    .add_enabled(
                        coordinator,
                        egui::Button::new(format!("Approve all ({})", all.len())),
                    )
                    .clicked()
                {
                    send = Some(Command::DecideChanges {
                        cohort_id,
                        ids: all,
                        approve: true,
                        reason,
                    });
                }
                if ui.small_button("Select all").clicked() {
                    app.group.checked = g.pending.iter().map(|c| c.id).collect();
                }
                if ui.small_button("Select none").clicked() {
                    app.group.checked.clear();
                }
            });
            if let Some(c) = send {
                app.group.checked.clear();
                app.group.reason.clear();
                app.send(c);
            }
            changes_table(ui, &g.pending, Some(&mut app.group.checked), "pending");
        }
        Tab::Members => {
            ui.horizontal(|ui| {
                labelled(ui, "Search members", |ui| {
                    ui.add(
                        egui::TextEdit::singleline(&mut app.group.search)
                            .hint_text("name, IIS id or record id")
                            .desired_width(240.0),
                    )
                });
            });
            let needle = app.group.search.trim().to_uppercase();
            let fresh = app
                .group
                .shown
                .as_ref()
                .is_some_and(|(sg, sn, _)| Arc::ptr_eq(sg, &g) && *sn == needle);
            if !fresh {
                let idx = matching_members(&g, &needle);
                app.group.shown = Some((g.clone(), needle, idx));
            }
            let shown: &[usize] = app
                .group
                .shown
                .as_ref()
                .map(|(_, _, i)| i.as_slice())
                .unwrap_or(&[]);
            let mut remove = None;
            TableBuilder::new(ui)
                .id_salt("members")
                .striped(true)
                .column(Column::initial(110.0))
                .column(Column::initial(200.0).resizable(true))
                .column(Column::exact(100.0))
                .column(Column::initial(110.0))
                .column(Column::initial(190.0))
                .column(Column::initial(100.0))
                .column(Column::remainder().at_least(130.0))
                .header(tokens::ROW_HEIGHT, |mut h| {
                    for title in [
                        "IIS patient id",
                        "Name",
                        "Birth date",
                        "Record id",
                        "Member since",
                        "Added by",
                        "",
                    ] {
                        h.col(|ui| {
                            ui.strong(title);
                        });
                    }
                })
                .body(|body| {
                    body.rows(tokens::ROW_HEIGHT, shown.len(), |mut row| {
                        let m = &g.members[shown[row.index()]];
                        row.col(|ui| {
                            ui.label(&m.iis_id);
                        });
                        row.col(|ui| {
                            ui.label(&m.name);
                        });
                        row.col(|ui| {
                            ui.label(&m.birth_date);
                        });
                        row.col(|ui| {
                            ui.label(m.source_id.as_deref().unwrap_or("—"));
                        });
                        row.col(|ui| {
                            ui.label(tokens::when(&m.since, false));
                        });
                        row.col(|ui| {
                            ui.label(&m.added_by);
                        });
                        row.col(|ui| {
                            if ui.small_button("Propose removal…").clicked() {
                                remove = Some(m.iis_id.clone());
                            }
                        });
                    });
                });
            if let Some(id) = remove {
                app.group.remove = Some((id, String::new()));
            }
        }
        Tab::History => {
            changes_table(ui, &g.history, None, "history");
        }
    }
    if let Some((iis_id, mut reason)) = app.group.remove.take() {
        let mut keep = true;
        egui::Modal::new(egui::Id::unique("propose_removal")).show(ui.ctx(), |ui| {
            ui.heading("Propose removal");
            ui.label(format!("Remove {iis_id} from the Group? A coordinator approves the removal under Pending changes."));
            labelled(ui, "Why", |ui| ui.text_edit_singleline(&mut reason));
            ui.horizontal(|ui| {
                if ui.add_enabled(!reason.trim().is_empty(), egui::Button::new("Propose removal")).clicked() {
                    app.send(Command::ProposeRemoval { cohort_id, iis_id: iis_id.clone(), reason: reason.trim().to_string() });
                    keep = false;
                }
                if ui.button("Cancel").clicked() {
                    keep = false;
                }
            });
        });
        if keep {
            app.group.remove = Some((iis_id, reason));
        }
    }
}

fn changes_table(
    ui: &mut egui::Ui,
    changes: &[GroupChange],
    mut checked: Option<&mut BTreeSet<i64>>,
    salt: &str,
) {
    let t = tokens::of(ui);
    let with_check = checked.is_some();
    let mut tb = TableBuilder::new(ui).id_salt(salt).striped(true);
    if with_check {
        tb = tb.column(Column::exact(28.0));
    }
    tb.column(Column::exact(80.0))
        .column(Column::initial(200.0).resizable(true))
        .column(Column::initial(100.0))
        .column(Column::initial(140.0))
        .column(Column::initial(170.0))
        .column(Column::initial(100.0))
        .column(Column::remainder().at_least(200.0))
        .header(tokens::ROW_HEIGHT, |mut h| {
            if with_check {
                h.col(|_| {});
            }
            for title in [
                "Change",
                "Name",
                "IIS id",
                "Because",
                "Proposed",
                "State",
                "Decided / reason",
            ] {
                h.col(|ui| {
                    ui.strong(title);
                });
            }
        })
        .body(|body| {
            body.rows(tokens::ROW_HEIGHT, changes.len(), |mut row| {
                let c = &changes[row.index()];
                if let Some(set) = checked.as_deref_mut() {
                    row.col(|ui| {
                        let mut on = set.contains(&c.id);
                        if ui.checkbox(&mut on, "").on_hover_text("Select").changed() {
                            if on {
                                set.insert(c.id);
                            } else {
                                set.remove(&c.id);
                            }
                        }
                    });
                }
                row.col(|ui| {
                    match c.kind {
                        ChangeKind::Add => ui.colored_label(t.ok, "+ add"),
                        ChangeKind::Remove => ui.colored_label(t.differ, "− remove"),
                    };
                });
                row.col(|ui| {
                    ui.label(&c.name);
                });
                row.col(|ui| {
                    ui.label(&c.iis_id);
                });
                row.col(|ui| {
                    ui.label(c.source_label());
                });
                row.col(|ui| {
                    ui.label(format!(
                        "{} {}",
                        c.proposed_by,
                        tokens::when(&c.proposed_at, false)
                    ));
                });
                row.col(|ui| {
                    let (color, word) = match c.state {
                        ChangeState::Pending => (t.warning, "pending"),
                        ChangeState::Approved => (t.ok, "✔ approved"),
                        ChangeState::Rejected => (t.differ, "✖ rejected"),
                        ChangeState::Withdrawn => (t.muted, "withdrawn"),
                    };
                    ui.colored_label(color, word);
                });
                row.col(|ui| {
                    let mut s = String::new();
                    if let (Some(by), Some(at)) = (&c.decided_by, &c.decided_at) {
                        s = format!("{by} {}", tokens::when(at, false));
                    }
                    if let Some(r) = &c.reason {
                        s = if s.is_empty() {
                            r.clone()
                        } else {
                            format!("{s} — {r}")
                        };
                    }
                    ui.label(s);
                });
            });
        });
}
