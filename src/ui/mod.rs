//! The egui workbench. It draws snapshots the backend sends ([`crate::app::Update`]) and sends
//! typed [`Command`]s; it never touches SQLite or the network and never waits on I/O in a frame.
//!
//! [`MatchdeskApp::logic`](eframe::App::logic) drains the backend's updates once per frame;
//! `ui` draws the left navigation and the current screen. Each screen lives in its own module
//! and keeps its own view state; what should survive a restart (screen, theme, filters, the
//! reviewer) is in [`Persisted`].

mod audit;
pub mod bench;
mod cohorts;
mod group;
mod review;
mod runs;
mod settings;
pub mod tokens;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use crate::app::{
    Backend, Command, GroupView, Place, Reviewer, RunView, ServerProfile, StartOptions, Update,
};
use crate::store::{AuditEntry, CohortInfo};

pub use review::{QueueState, ReviewFilter};

/// The screens of the left navigation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Screen {
    #[default]
    Cohorts,
    Runs,
    Review,
    Group,
    Audit,
    Settings,
}

impl Screen {
    pub const ALL: [Screen; 6] = [
        Screen::Cohorts,
        Screen::Runs,
        Screen::Review,
        Screen::Group,
        Screen::Audit,
        Screen::Settings,
    ];
    pub fn label(self) -> &'static str {
        match self {
            Screen::Cohorts => "Cohorts",
            Screen::Runs => "Match runs",
            Screen::Review => "Review queue",
            Screen::Group => "Group",
            Screen::Audit => "Audit log",
            Screen::Settings => "Settings",
        }
    }
    fn place(self) -> Place {
        match self {
            Screen::Cohorts => Place::Cohorts,
            Screen::Runs => Place::Runs,
            Screen::Review => Place::Review,
            Screen::Group => Place::Group,
            Screen::Audit => Place::Audit,
            Screen::Settings => Place::Settings,
        }
    }
}

/// What survives a restart (eframe storage; every field has a default).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Persisted {
    pub screen: Screen,
    pub dark: bool,
    pub reviewer: Option<Reviewer>,
    pub cohort_id: Option<i64>,
    pub profile: Option<String>,
    pub review_filter: ReviewFilter,
    pub review_search: String,
    pub workspace: Option<PathBuf>,
    pub dismissed_hint: bool,
}

/// A message shown at the top of the screen it belongs to.
#[derive(Clone, Debug)]
pub struct Message {
    pub error: bool,
    pub text: String,
    pub at: f64,
}

/// Everything the backend has told us: the immutable snapshots screens draw from.
#[derive(Default)]
pub struct Snapshots {
    pub ready: bool,
    pub workspace: Option<PathBuf>,
    pub demo: Option<(String, PathBuf)>,
    pub cohorts: Arc<Vec<CohortInfo>>,
    pub profiles: Arc<Vec<ServerProfile>>,
    pub reviewer: Reviewer,
    pub runs: Arc<Vec<RunView>>,
    pub group: Option<Arc<GroupView>>,
    pub audit: Arc<Vec<AuditEntry>>,
}

/// The workbench.
pub struct MatchdeskApp {
    backend: Backend,
    pub persisted: Persisted,
    pub snap: Snapshots,
    messages: HashMap<Place, Vec<Message>>,
    cohorts: cohorts::CohortsView,
    runs: runs::RunsView,
    pub review: review::ReviewView,
    group: group::GroupScreen,
    audit: audit::AuditView,
    settings: settings::SettingsView,
    /// Files picked in a native dialog arrive here (the dialog runs on its own thread).
    picked: (mpsc::Sender<Picked>, mpsc::Receiver<Picked>),
    title: String,
    applied_dark: Option<bool>,
}

/// A file chosen in a native dialog, and what it was chosen for.
pub enum Picked {
    OpenCohort(PathBuf),
    SaveBadRows(i64, PathBuf),
    SaveGroup(i64, PathBuf, bool),
    SaveAudit(PathBuf),
    /// A private key file for the profile being edited.
    KeyFile(PathBuf),
    /// The folder to write a new key pair to.
    KeyFolder(crate::net::SigningAlg, PathBuf),
}

/// The workspace to reopen: the last one used, unless a workspace was named on the command line
/// (or in `MATCHDESK_DB`) or the last one is gone.
pub fn remembered_workspace(explicit_db: bool, last: Option<&std::path::Path>) -> Option<PathBuf> {
    if explicit_db {
        return None;
    }
    last.filter(|p| p.is_file())
        .map(std::path::Path::to_path_buf)
}

impl MatchdeskApp {
    /// Start the backend with `opts` and restore `persisted` state. `repaint` wakes the UI.
    pub fn new(
        opts: StartOptions,
        persisted: Persisted,
        repaint: crate::app::backend::Repaint,
    ) -> MatchdeskApp {
        let mut opts = opts;
        if let Some(r) = &persisted.reviewer {
            opts.reviewer = r.clone();
        }
        let backend = Backend::start(opts, repaint);
        let review =
            review::ReviewView::new(persisted.review_filter, persisted.review_search.clone());
        MatchdeskApp {
            backend,
            persisted,
            snap: Snapshots::default(),
            messages: HashMap::new(),
            cohorts: cohorts::CohortsView::default(),
            runs: runs::RunsView::default(),
            review,
            group: group::GroupScreen::default(),
            audit: audit::AuditView::default(),
            settings: settings::SettingsView::default(),
            picked: mpsc::channel(),
            title: String::new(),
            applied_dark: None,
        }
    }

    /// The eframe entry: restores persisted state from eframe storage.
    /// The app as eframe starts it. Without an explicit `--db` (`explicit_db` false), the
    /// workspace used last time is opened again when it still exists.
    pub fn from_creation_context(
        cc: &eframe::CreationContext<'_>,
        opts: StartOptions,
        explicit_db: bool,
    ) -> Self {
        let mut opts = opts;
        let mut persisted: Persisted = cc
            .storage
            .and_then(|s| eframe::get_value(s, eframe::APP_KEY))
            .unwrap_or_default();
        if let Some(last) = remembered_workspace(explicit_db, persisted.workspace.as_deref()) {
            if let Some(dir) = last.parent() {
                opts.data_dir = dir.to_path_buf();
            }
            opts.db = last;
        }
        persisted.workspace = Some(opts.db.clone());
        let ctx = cc.egui_ctx.clone();
        Self::new(opts, persisted, Arc::new(move || ctx.request_repaint()))
    }

    pub fn send(&self, cmd: Command) {
        self.backend.send(cmd);
    }

    /// Open a cohort file (from the dialog, a drop, or a test).
    pub fn open_file(&mut self, path: PathBuf) {
        self.persisted.screen = Screen::Cohorts;
        self.cohorts.opening(&path);
        self.send(Command::PreviewFile { path });
    }

    fn message(&mut self, place: Place, error: bool, text: String, now: f64) {
        let list = self.messages.entry(place).or_default();
        list.retain(|m| m.text != text);
        list.push(Message {
            error,
            text,
            at: now,
        });
        if list.len() > 4 {
            list.remove(0);
        }
    }

    /// Apply every waiting update. Called once per frame; cheap when nothing arrived.
    pub fn drain(&mut self, now: f64) {
        while let Some(u) = self.backend.try_recv() {
            self.apply(u, now);
        }
        while let Ok(p) = self.picked.1.try_recv() {
            match p {
                Picked::OpenCohort(path) => self.open_file(path),
                Picked::SaveBadRows(cohort_id, path) => {
                    self.send(Command::ExportBadRows { cohort_id, path })
                }
                Picked::SaveGroup(cohort_id, path, fhir) => self.send(Command::ExportGroup {
                    cohort_id,
                    path,
                    fhir,
                }),
                Picked::SaveAudit(path) => self.send(Command::ExportAudit {
                    filter: self.audit.filter(),
                    path,
                }),
                Picked::KeyFile(path) => settings::key_chosen(self, path, None),
                Picked::KeyFolder(alg, dir) => self.send(Command::GenerateKeys { alg, dir }),
            }
        }
    }

    fn apply(&mut self, u: Update, now: f64) {
        match u {
            Update::Ready { workspace, demo } => {
                self.snap.ready = true;
                self.snap.workspace = Some(workspace);
                self.snap.demo = demo;
            }
            Update::ConnectionTested { profile, report } => {
                settings::connection_tested(self, profile, report);
            }
            Update::KeysGenerated(g) => {
                settings::key_chosen(self, g.private_key, Some(g.kid));
            }
            Update::Cohorts(c) => {
                // Keep (or pick) a current cohort.
                let current = self
                    .persisted
                    .cohort_id
                    .filter(|id| c.iter().any(|x| x.id == *id))
                    .or_else(|| c.last().map(|x| x.id));
                self.snap.cohorts = c;
                if let Some(id) = current
                    && (current != self.persisted.cohort_id || !self.review.has_queue())
                {
                    self.select_cohort(id);
                }
            }
            Update::Profiles(p) => {
                if self
                    .persisted
                    .profile
                    .as_ref()
                    .is_none_or(|name| !p.iter().any(|x| &x.name == name))
                {
                    self.persisted.profile = p.first().map(|x| x.name.clone());
                }
                self.snap.profiles = p;
            }
            Update::Reviewer(r) => {
                self.persisted.reviewer = Some(r.clone());
                self.snap.reviewer = r;
            }
            Update::Preview { path, preview } => self.cohorts.set_preview(path, preview),
            Update::ImportChecked(c) => self.cohorts.set_check(c),
            Update::Imported { cohort_id, check } => {
                self.cohorts.imported(check);
                self.persisted.cohort_id = Some(cohort_id);
            }
            Update::Problems {
                cohort_id,
                problems,
            } => self.cohorts.set_problems(cohort_id, problems),
            Update::Runs(r) => self.snap.runs = r,
            Update::Queue { cohort_id, rows } => {
                self.review.set_queue(cohort_id, rows);
                if let Some(row_id) = self.review.selected_row_id() {
                    self.send(Command::LoadDetail { row_id });
                }
            }
            Update::RowDecision { row_id, decision } => self.review.patch(row_id, decision),
            Update::Detail(d) => self.review.set_detail(d),
            Update::Undone(d) => self.review.undone(d.row_id),
            Update::BulkPreview(p) => self.review.set_bulk_preview(p),
            Update::Group(g) => self.snap.group = Some(g),
            Update::Audit(a) => self.snap.audit = a,
            Update::Notice { place, text } => self.message(place, false, text, now),
            Update::Error { place, text } => self.message(place, true, text, now),
            Update::Event(_) => {}
        }
    }

    fn select_cohort(&mut self, cohort_id: i64) {
        self.persisted.cohort_id = Some(cohort_id);
        self.review.clear_for(cohort_id);
        self.send(Command::SelectCohort { cohort_id });
    }

    /// Open a native file dialog on its own thread; the answer arrives through `picked`.
    fn pick(
        &self,
        save: Option<&str>,
        filter: (&'static str, &'static [&'static str]),
        make: impl FnOnce(PathBuf) -> Picked + Send + 'static,
    ) {
        let tx = self.picked.0.clone();
        let save = save.map(str::to_string);
        let spawned = std::thread::Builder::new()
            .name("matchdesk-file-dialog".into())
            .spawn(move || {
                let dialog = rfd::FileDialog::new().add_filter(filter.0, filter.1);
                let path = match save {
                    Some(name) => dialog.set_file_name(name).save_file(),
                    None => dialog.pick_file(),
                };
                if let Some(p) = path {
                    let _ = tx.send(make(p));
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("could not open a file dialog: {e}");
        }
    }

    /// Ask for a folder with the native dialog, off the UI thread.
    fn pick_folder(&self, make: impl FnOnce(PathBuf) -> Picked + Send + 'static) {
        let tx = self.picked.0.clone();
        let spawned = std::thread::Builder::new()
            .name("matchdesk-folder-dialog".into())
            .spawn(move || {
                if let Some(p) = rfd::FileDialog::new().pick_folder() {
                    let _ = tx.send(make(p));
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("could not open a folder dialog: {e}");
        }
    }

    fn messages_ui(&mut self, ui: &mut egui::Ui, place: Place) {
        let t = tokens::of(ui);
        let now = ui.input(|i| i.time);
        let Some(list) = self.messages.get_mut(&place) else {
            return;
        };
        list.retain(|m| m.error || now - m.at < tokens::NOTICE_SECS);
        let mut dismiss = None;
        // Errors stay in place until dismissed. Notices ("Saved …", "Approved …") float at the
        // bottom right and fade: shown inline they would push the screen down under the
        // pointer, and the next click would land on a different button.
        for (i, m) in list.iter().enumerate().filter(|(_, m)| m.error) {
            egui::Frame::new()
                .fill(t.error_bg)
                .inner_margin(8.0)
                .corner_radius(4.0)
                .show(ui, |ui| {
                    ui.horizontal(|ui| {
                        ui.colored_label(t.error, "✖");
                        // Wrap the text in what is left after the Dismiss button: an overlong
                        // row would widen everything below it past the window's edge.
                        let width = (ui.available_width() - 80.0).max(120.0);
                        ui.allocate_ui(egui::vec2(width, 0.0), |ui| {
                            ui.add(egui::Label::new(&m.text).wrap());
                        });
                        if ui.small_button("Dismiss").clicked() {
                            dismiss = Some(i);
                        }
                    });
                });
            ui.add_space(4.0);
        }
        let notices: Vec<&Message> = list.iter().filter(|m| !m.error).collect();
        if !notices.is_empty() {
            egui::Area::new(egui::Id::unique(("notices", place)))
                .anchor(egui::Align2::RIGHT_BOTTOM, egui::vec2(-16.0, -16.0))
                .order(egui::Order::Foreground)
                .interactable(false)
                .show(ui.ctx(), |ui| {
                    ui.set_max_width(520.0);
                    for m in notices {
                        egui::Frame::new()
                            .fill(t.notice_bg)
                            .stroke(egui::Stroke::new(1.0, t.ok))
                            .inner_margin(10.0)
                            .corner_radius(6.0)
                            .show(ui, |ui| {
                                ui.horizontal(|ui| {
                                    ui.colored_label(t.ok, "✔");
                                    ui.add(egui::Label::new(&m.text).wrap());
                                });
                            });
                        ui.add_space(4.0);
                    }
                });
        }
        if let Some(i) = dismiss {
            list.remove(i);
        }
        if list.iter().any(|m| !m.error) {
            ui.ctx()
                .request_repaint_after(std::time::Duration::from_secs(1));
        }
    }

    fn nav_ui(&mut self, ui: &mut egui::Ui) {
        ui.add_space(8.0);
        ui.heading("matchdesk");
        ui.add_space(8.0);
        for s in Screen::ALL {
            let mut label = s.label().to_string();
            if s == Screen::Review {
                let open = self.review.open_count();
                if open > 0 {
                    label = format!("{label} ({open})");
                }
            }
            if s == Screen::Group
                && let Some(g) = &self.snap.group
                && g.group.pending > 0
            {
                label = format!("{label} ({} pending)", g.group.pending);
            }
            if s == Screen::Runs && self.snap.runs.iter().any(|r| r.active) {
                label = format!("{label} •");
            }
            let errors = self
                .messages
                .get(&s.place())
                .is_some_and(|m| m.iter().any(|m| m.error));
            if errors {
                label = format!("{label} ✖");
            }
            let r = ui.add_sized(
                [tokens::NAV_WIDTH - 16.0, 28.0],
                egui::Button::selectable(self.persisted.screen == s, label),
            );
            if r.clicked() {
                self.persisted.screen = s;
                if s == Screen::Audit {
                    self.send(Command::LoadAudit(self.audit.filter()));
                }
            }
        }
        ui.add_space(16.0);
        ui.separator();
        let t = tokens::of(ui);
        ui.colored_label(t.muted, format!("Signed in as {}", self.snap.reviewer.name));
        ui.colored_label(t.muted, self.snap.reviewer.role.label());
        if let Some(c) = self
            .persisted
            .cohort_id
            .and_then(|id| self.snap.cohorts.iter().find(|c| c.id == id))
        {
            ui.colored_label(t.muted, format!("Cohort: {}", c.name));
        }
    }

    fn apply_theme(&mut self, ctx: &egui::Context) {
        if self.applied_dark != Some(self.persisted.dark) {
            ctx.set_theme(if self.persisted.dark {
                egui::Theme::Dark
            } else {
                egui::Theme::Light
            });
            self.applied_dark = Some(self.persisted.dark);
        }
    }

    fn update_title(&mut self, ctx: &egui::Context) {
        let ws = self
            .snap
            .workspace
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "opening…".into());
        let title = format!("matchdesk — {ws}");
        if title != self.title {
            ctx.send_viewport_cmd(egui::ViewportCommand::Title(title.clone()));
            self.title = title;
        }
    }

    /// Files dropped on the window open like "Open file…".
    fn dropped_files(&mut self, ctx: &egui::Context) {
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        });
        if let Some(p) = dropped.into_iter().next() {
            self.open_file(p);
        }
    }

    /// Draw one frame into `ui` (the whole window).
    pub fn frame_ui(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        self.apply_theme(&ctx);
        self.update_title(&ctx);
        self.dropped_files(&ctx);
        egui::Panel::left("nav")
            .exact_size(tokens::NAV_WIDTH)
            .resizable(false)
            .show(ui, |ui| self.nav_ui(ui));
        egui::CentralPanel::default().show(ui, |ui| {
            if !self.snap.ready {
                self.messages_ui(ui, Place::App);
                if self.messages.get(&Place::App).is_none_or(|m| m.is_empty()) {
                    ui.spinner();
                    ui.label("Opening the workspace…");
                }
                return;
            }
            self.messages_ui(ui, Place::App);
            let screen = self.persisted.screen;
            ui.heading(screen.label());
            ui.add_space(4.0);
            self.messages_ui(ui, screen.place());
            match screen {
                Screen::Cohorts => cohorts::show(self, ui),
                Screen::Runs => runs::show(self, ui),
                Screen::Review => review::show(self, ui),
                Screen::Group => group::show(self, ui),
                Screen::Audit => audit::show(self, ui),
                Screen::Settings => settings::show(self, ui),
            }
        });
    }
}

impl eframe::App for MatchdeskApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        let now = ctx.input(|i| i.time);
        self.drain(now);
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.frame_ui(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        self.persisted.review_filter = self.review.filter;
        self.persisted.review_search = self.review.search.clone();
        eframe::set_value(storage, eframe::APP_KEY, &self.persisted);
    }
}

/// A label for the next widget, so screen readers and tests find the widget by this text.
pub(crate) fn labelled(
    ui: &mut egui::Ui,
    label: &str,
    add: impl FnOnce(&mut egui::Ui) -> egui::Response,
) -> egui::Response {
    let l = ui.label(label);
    add(ui).labelled_by(l.id)
}

#[cfg(test)]
mod tests {
    use super::remembered_workspace;

    #[test]
    fn the_last_workspace_is_reopened_unless_one_is_named_or_it_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("clinic.matchdesk");
        std::fs::write(&ws, b"").unwrap();
        assert_eq!(remembered_workspace(false, Some(&ws)), Some(ws.clone()));
        // `--db` (or MATCHDESK_DB) wins.
        assert_eq!(remembered_workspace(true, Some(&ws)), None);
        // Nothing remembered, or the file was moved away: the default workspace.
        assert_eq!(remembered_workspace(false, None), None);
        let gone = dir.path().join("moved.matchdesk");
        assert_eq!(remembered_workspace(false, Some(&gone)), None);
    }
}
