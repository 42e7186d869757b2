//! Settings: who is working (name and role, recorded in the audit log), the theme, and server
//! profiles (base URL, chunk size, concurrency, thresholds, default options, sign-in).

use std::path::PathBuf;

use super::{MatchdeskApp, Picked, labelled, tokens};
use crate::app::{Command, ProfileAuth, Reviewer, Role, ServerProfile};
use crate::net::auth::ConnectionReport;
use crate::net::{SigningAlg, SmartConfig};

#[derive(Default)]
pub struct SettingsView {
    reviewer: Option<Reviewer>,
    /// The profile being edited.
    form: Option<ServerProfile>,
    confirm_delete: Option<String>,
    /// The last connection test: the profile's name and its report (`None` while it runs).
    test: Option<(String, Option<ConnectionReport>)>,
    /// The algorithm for "Generate a key pair…" (ES384 when unset).
    keygen_alg: Option<SigningAlg>,
}

/// Which kind of sign-in the form shows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AuthKind {
    None,
    Env,
    Smart,
}

/// A key file was chosen (or generated): put it, and its key id when known, into the form.
pub fn key_chosen(app: &mut MatchdeskApp, path: PathBuf, kid: Option<String>) {
    if let Some(form) = app.settings.form.as_mut() {
        if !matches!(form.auth, ProfileAuth::Smart(_)) {
            form.auth = ProfileAuth::Smart(SmartConfig::default());
        }
        if let ProfileAuth::Smart(s) = &mut form.auth {
            s.key_path = path;
            if let Some(k) = kid {
                s.kid = k;
            }
        }
    }
}

/// A connection test finished.
pub fn connection_tested(app: &mut MatchdeskApp, profile: String, report: ConnectionReport) {
    app.settings.test = Some((profile, Some(report)));
}

/// The sign-in part of the profile form. Returns whether a connection test was asked for.
fn sign_in_ui(
    ui: &mut egui::Ui,
    auth: &mut ProfileAuth,
    keygen_alg: &mut Option<SigningAlg>,
    picks: &mut Vec<Pick>,
) {
    let mut kind = match auth {
        ProfileAuth::None => AuthKind::None,
        ProfileAuth::BearerFromEnv { .. } => AuthKind::Env,
        ProfileAuth::Smart(_) => AuthKind::Smart,
    };
    let before = kind;
    ui.radio_value(&mut kind, AuthKind::None, "None (demo and test servers)");
    ui.radio_value(
        &mut kind,
        AuthKind::Smart,
        "SMART Backend Services (client id and private key — what production IIS servers use)",
    );
    ui.radio_value(
        &mut kind,
        AuthKind::Env,
        "Access token from an environment variable",
    );
    if kind != before {
        *auth = match kind {
            AuthKind::None => ProfileAuth::None,
            AuthKind::Env => ProfileAuth::BearerFromEnv {
                variable: "MATCHDESK_TOKEN".into(),
            },
            AuthKind::Smart => ProfileAuth::Smart(SmartConfig::default()),
        };
    }
    match auth {
        ProfileAuth::None => {}
        ProfileAuth::BearerFromEnv { variable } => {
            labelled(ui, "Variable name", |ui| ui.text_edit_singleline(variable));
        }
        ProfileAuth::Smart(s) => {
            egui::Grid::new("smart_form")
                .num_columns(2)
                .spacing([10.0, 4.0])
                .show(ui, |ui| {
                    labelled(ui, "Client id", |ui| {
                        ui.add(
                            egui::TextEdit::singleline(&mut s.client_id)
                                .hint_text("given by the IIS at registration")
                                .desired_width(300.0),
                        )
                    });
                    ui.end_row();
                    ui.label("Private key file");
                    ui.horizontal(|ui| {
                        let shown = if s.key_path.as_os_str().is_empty() {
                            "none chosen".to_string()
                        } else {
                            s.key_path.display().to_string()
                        };
                        ui.monospace(shown);
                        if ui
                            .button("Choose key file…")
                            .on_hover_text("A PEM or JWK private key file (ES384, RS384, ES512 or RS512). Only its location is saved, never the key.")
                            .clicked()
                        {
                            picks.push(Pick::KeyFile);
                        }
                    });
                    ui.end_row();
                    ui.label("New key pair");
                    ui.horizontal(|ui| {
                        let alg = keygen_alg.get_or_insert(SigningAlg::Es384);
                        egui::ComboBox::from_id_salt("keygen_alg")
                            .selected_text(alg.as_str())
                            .show_ui(ui, |ui| {
                                for a in [SigningAlg::Es384, SigningAlg::Rs384] {
                                    ui.selectable_value(alg, a, a.as_str());
                                }
                            });
                        if ui
                            .button("Generate a key pair…")
                            .on_hover_text("Choose a folder: matchdesk writes a private key there (readable only by you) and the public key set (JWKS) to give the IIS")
                            .clicked()
                        {
                            picks.push(Pick::KeyFolder(*alg));
                        }
                    });
                    ui.end_row();
                    labelled(ui, "Key id (kid)", |ui| {
                        ui.add(
                            egui::TextEdit::singleline(&mut s.kid)
                                .hint_text("empty: taken from the key files")
                                .desired_width(220.0),
                        )
                    });
                    ui.end_row();
                    labelled(ui, "Scopes", |ui| {
                        ui.add(egui::TextEdit::singleline(&mut s.scopes).desired_width(300.0))
                    });
                    ui.end_row();
                    let mut endpoint = s.token_endpoint.clone().unwrap_or_default();
                    let r = labelled(ui, "Token endpoint", |ui| {
                        ui.add(
                            egui::TextEdit::singleline(&mut endpoint)
                                .hint_text("empty: found on the server (.well-known/smart-configuration)")
                                .desired_width(360.0),
                        )
                    });
                    if r.changed() {
                        let e = endpoint.trim().to_string();
                        s.token_endpoint = (!e.is_empty()).then_some(e);
                    }
                    ui.end_row();
                });
        }
    }
}

/// A file dialog the form asked for (opened after the form is drawn).
enum Pick {
    KeyFile,
    KeyFolder(SigningAlg),
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
                ui.strong("Sign-in");
                ui.strong("");
                ui.end_row();
                for p in profiles.iter() {
                    ui.label(&p.name);
                    ui.label(&p.base_url);
                    ui.label(p.chunk_size.to_string());
                    ui.label(p.concurrency.to_string());
                    ui.label(match &p.auth {
                        ProfileAuth::None => "none".to_string(),
                        ProfileAuth::BearerFromEnv { variable } => format!("token from {variable}"),
                        ProfileAuth::Smart(s) => format!("SMART, client {}", s.client_id),
                    });
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
            let mut picks = Vec::new();
            let mut test = false;
            let keygen_alg = &mut app.settings.keygen_alg;
            let last_test = app.settings.test.clone();
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
                                sign_in_ui(ui, &mut form.auth, keygen_alg, &mut picks);
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
                        if ui
                            .add_enabled(
                                form.problems().is_empty(),
                                egui::Button::new("Test connection"),
                            )
                            .on_hover_text("Sign in (for SMART: find the token endpoint, ask for a token) and send one request to the server. Nothing is saved.")
                            .clicked()
                        {
                            test = true;
                        }
                    });
                    if let Some((name, report)) = last_test.as_ref().filter(|(n, _)| *n == form.name) {
                        let _ = name;
                        match report {
                            None => {
                                ui.horizontal(|ui| {
                                    ui.spinner();
                                    ui.label("Testing the connection…");
                                });
                            }
                            Some(r) => {
                                if r.ok() {
                                    ui.colored_label(t.ok, "✔ Connection test passed: matchdesk can sign in and talk to this server.");
                                } else {
                                    ui.colored_label(t.error, "✖ Connection test failed — see the step marked ✖ for what to check.");
                                }
                                for step in &r.steps {
                                    let (sym, color) = if step.ok { ("✔", t.ok) } else { ("✖", t.error) };
                                    ui.horizontal(|ui| {
                                        ui.colored_label(color, format!("{sym} {}", step.what));
                                        ui.add(egui::Label::new(&step.detail).wrap());
                                    });
                                }
                            }
                        }
                    }
                });
                if test {
                    app.settings.test = Some((form.name.clone(), None));
                    let mut f = form.clone();
                    f.base_url = f.base_url.trim().trim_end_matches('/').to_string();
                    app.send(Command::TestConnection(Box::new(f)));
                }
                if save && let Some(mut f) = app.settings.form.take() {
                    f.name = f.name.trim().to_string();
                    f.base_url = f.base_url.trim().trim_end_matches('/').to_string();
                    app.send(Command::SaveProfile(Box::new(f)));
                }
                if cancel {
                    app.settings.form = None;
                }
            }
            for p in picks {
                match p {
                    Pick::KeyFile => app.pick(None, ("Private key", &["pem", "key", "json", "jwk"]), Picked::KeyFile),
                    Pick::KeyFolder(alg) => app.pick_folder(move |dir| Picked::KeyFolder(alg, dir)),
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
