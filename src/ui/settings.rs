//! Settings: who is working (name and role, recorded in the audit log), the theme, and server
//! profiles (base URL, chunk size, concurrency, thresholds, default options, sign-in).

use super::{MatchdeskApp, labelled, tokens};
use crate::app::{Command, ProfileAuth, Reviewer, Role, ServerProfile};

#[derive(Default)]
pub struct SettingsView {
    reviewer: Option<Reviewer>,
    /// The profile being edited.
    form: Option<ServerProfile>,
    confirm_delete: Option<String>,
}

pub fn show(app: &mut MatchdeskApp, ui: &mut egui::Ui) {
    let t = tokens::of(ui);
    egui::ScrollArea::vertical()
        .id_salt("settings")
        .show(ui, |ui| {
            ui.strong("You");
            let r = app
                .settings
                .reviewer
                .get_or_insert_with(|| app.snap.reviewer.clone());
            egui::Grid::new("you").num_columns(2).show(ui, |ui| {
                labelled(ui, "Your name", |ui| ui.text_edit_singleline(&mut r.name));
                ui.end_row();
                ui.label("Role");
                ui.horizontal(|ui| {
                    ui.radio_value(&mut r.role, Role::Reviewer, "Reviewer")
                        .on_hover_text("Works the review queue");
                    ui.radio_value(&mut r.role, Role::Coordinator, "Coordinator")
                        .on_hover_text("Also approves or rejects Group changes");
                });
                ui.end_row();
            });
            let dirty = *r != app.snap.reviewer;
            if ui
                .add_enabled(dirty, egui::Button::new("Save name and role"))
                .clicked()
            {
                let r = r.clone();
                app.send(Command::SetReviewer(r));
            }
            ui.colored_label(
                t.muted,
                "Your name and role go into the audit log with everything you do.",
            );
            ui.add_space(8.0);
            ui.separator();
            ui.strong("Appearance");
            ui.horizontal(|ui| {
                ui.radio_value(&mut app.persisted.dark, false, "Light");
                ui.radio_value(&mut app.persisted.dark, true, "Dark");
            });
            ui.add_space(8.0);
            ui.separator();
            ui.strong("Servers");
            let profiles = app.snap.profiles.clone();
            egui::Grid::new("profiles").striped(true).show(ui, |ui| {
                ui.strong("Name");
                ui.strong("Address");
                ui.strong("Chunk");
                ui.strong("Parallel");
                ui.strong("");
                ui.end_row();
                for p in profiles.iter() {
                    ui.label(&p.name);
                    ui.label(&p.base_url);
                    ui.label(p.chunk_size.to_string());
                    ui.label(p.concurrency.to_string());
                    ui.horizontal(|ui| {
                        if ui.small_button(format!("Edit {}", p.name)).clicked() {
                            app.settings.form = Some(p.clone());
                        }
                        if ui.small_button("Delete").clicked() {
                            app.settings.confirm_delete = Some(p.name.clone());
                        }
                    });
                    ui.end_row();
                }
            });
            if ui.button("Add a server…").clicked() {
                app.settings.form = Some(ServerProfile {
                    name: "New server".into(),
                    base_url: "https://".into(),
                    ..ServerProfile::default()
                });
            }
            if let Some(form) = app.settings.form.as_mut() {
                ui.add_space(6.0);
                let mut save = false;
                let mut cancel = false;
                egui::Frame::group(ui.style()).show(ui, |ui| {
                    egui::Grid::new("profile_form")
                        .num_columns(2)
                        .spacing([12.0, 6.0])
                        .show(ui, |ui| {
                            labelled(ui, "Profile name", |ui| {
                                ui.text_edit_singleline(&mut form.name)
                            });
                            ui.end_row();
                            labelled(ui, "FHIR base URL", |ui| {
                                ui.add(
                                    egui::TextEdit::singleline(&mut form.base_url)
                                        .desired_width(360.0),
                                )
                            });
                            ui.end_row();
                            labelled(ui, "Patients per request (chunk size)", |ui| {
                                ui.add(
                                    egui::DragValue::new(&mut form.chunk_size).range(1..=100_000),
                                )
                            });
                            ui.end_row();
                            labelled(ui, "Requests in parallel", |ui| {
                                ui.add(egui::DragValue::new(&mut form.concurrency).range(1..=16))
                            });
                            ui.end_row();
                            labelled(ui, "Automatic match: local score at least", |ui| {
                                ui.add(
                                    egui::Slider::new(&mut form.rules.local_min_score, 0.5..=1.0)
                                        .step_by(0.01),
                                )
                            });
                            ui.end_row();
                            let mut server_min = form.rules.auto_min_server_score.unwrap_or(0.0);
                            let r = labelled(
                                ui,
                                "Automatic match: server score at least (0 = any)",
                                |ui| {
                                    ui.add(
                                        egui::Slider::new(&mut server_min, 0.0..=1.0).step_by(0.01),
                                    )
                                },
                            );
                            if r.changed() {
                                form.rules.auto_min_server_score =
                                    (server_min > 0.0).then_some(server_min);
                            }
                            ui.end_row();
                            ui.label("Sign-in");
                            ui.vertical(|ui| {
                                let mut env =
                                    matches!(form.auth, ProfileAuth::BearerFromEnv { .. });
                                ui.radio_value(&mut env, false, "None (demo and test servers)");
                                ui.radio_value(
                                    &mut env,
                                    true,
                                    "Access token from an environment variable",
                                );
                                match (&mut form.auth, env) {
                                    (ProfileAuth::BearerFromEnv { variable }, true) => {
                                        labelled(ui, "Variable name", |ui| {
                                            ui.text_edit_singleline(variable)
                                        });
                                    }
                                    (auth, true) => {
                                        *auth = ProfileAuth::BearerFromEnv {
                                            variable: "MATCHDESK_TOKEN".into(),
                                        }
                                    }
                                    (auth, false) => *auth = ProfileAuth::None,
                                }
                            });
                            ui.end_row();
                        });
                    for p in form.problems() {
                        ui.colored_label(t.error, format!("✖ {p}"));
                    }
                    ui.horizontal(|ui| {
                        if ui
                            .add_enabled(
                                form.problems().is_empty(),
                                egui::Button::new("Save profile"),
                            )
                            .clicked()
                        {
                            save = true;
                        }
                        if ui.button("Cancel").clicked() {
                            cancel = true;
                        }
                    });
                });
                if save && let Some(mut f) = app.settings.form.take() {
                    f.name = f.name.trim().to_string();
                    f.base_url = f.base_url.trim().trim_end_matches('/').to_string();
                    app.send(Command::SaveProfile(Box::new(f)));
                }
                if cancel {
                    app.settings.form = None;
                }
            }
            if let Some(name) = app.settings.confirm_delete.clone() {
                ui.horizontal(|ui| {
                    ui.colored_label(
                        t.warning,
                        format!(
                            "Delete the profile \"{name}\"? Runs made with it keep their results."
                        ),
                    );
                    if ui.button("Delete").clicked() {
                        app.send(Command::DeleteProfile(name.clone()));
                        app.settings.confirm_delete = None;
                    }
                    if ui.button("Keep").clicked() {
                        app.settings.confirm_delete = None;
                    }
                });
            }
        });
}
