//! The review queue: tabs by outcome with counts, a sortable, searchable, virtualized table
//! (a million rows scroll without per-row work beyond the visible ones), and for the selected row
//! the submitted record and every candidate side by side, field by field, each cell marked with
//! a colour *and* a symbol. Keyboard first: 1–9 accept a candidate, N no match, S skip, U undo,
//! ⬆/⬇ or K/J move, / search. Every shortcut is also a visible button.
//!
//! Filtering and sorting happen only when the queue, a filter, the search or the sort changes
//! ([`QueueState::rebuild`]); a frame only draws the visible rows.

use std::sync::Arc;

use egui_extras::{Column, TableBuilder};
use serde::{Deserialize, Serialize};

use super::{MatchdeskApp, labelled, tokens};
use crate::app::{Command, DetailView};
use crate::domain::{Demographics, Field, Outcome, ReviewReason, Sex};
use crate::matching::Verdict;
use crate::store::{BulkAcceptPreview, DecisionKind, QueueRow};

/// The tabs of the queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReviewFilter {
    /// Everything that still needs a person: review, no match and error rows not yet decided
    /// (skipped rows included).
    #[default]
    Open,
    Several,
    Probable,
    Possible,
    CertainDisagrees,
    NoMatch,
    Error,
    /// Rows with a decision (accepted or no match).
    Decided,
    AutoMatched,
    All,
}

impl ReviewFilter {
    pub const ALL: [ReviewFilter; 10] = [
        ReviewFilter::Open,
        ReviewFilter::Several,
        ReviewFilter::Probable,
        ReviewFilter::Possible,
        ReviewFilter::CertainDisagrees,
        ReviewFilter::NoMatch,
        ReviewFilter::Error,
        ReviewFilter::Decided,
        ReviewFilter::AutoMatched,
        ReviewFilter::All,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ReviewFilter::Open => "To do",
            ReviewFilter::Several => "Several candidates",
            ReviewFilter::Probable => "Probable",
            ReviewFilter::Possible => "Possible",
            ReviewFilter::CertainDisagrees => "Certain but disagrees",
            ReviewFilter::NoMatch => "No match",
            ReviewFilter::Error => "Error",
            ReviewFilter::Decided => "Decided",
            ReviewFilter::AutoMatched => "Matched automatically",
            ReviewFilter::All => "All",
        }
    }

    fn index(self) -> usize {
        ReviewFilter::ALL
            .iter()
            .position(|f| *f == self)
            .unwrap_or(0)
    }

    /// Whether `r` belongs in this tab.
    pub fn accepts(self, r: &QueueRow) -> bool {
        let open = matches!(r.decision, None | Some(DecisionKind::Skip));
        match self {
            ReviewFilter::Open => open && r.outcome != Outcome::AutoMatch,
            ReviewFilter::Several => {
                open && r.outcome == Outcome::Review(ReviewReason::SeveralCandidates)
            }
            ReviewFilter::Probable => open && r.outcome == Outcome::Review(ReviewReason::Probable),
            ReviewFilter::Possible => open && r.outcome == Outcome::Review(ReviewReason::Possible),
            ReviewFilter::CertainDisagrees => {
                open && r.outcome == Outcome::Review(ReviewReason::CertainDisagrees)
            }
            ReviewFilter::NoMatch => open && r.outcome == Outcome::NoMatch,
            ReviewFilter::Error => open && r.outcome == Outcome::Error,
            ReviewFilter::Decided => !open,
            ReviewFilter::AutoMatched => r.outcome == Outcome::AutoMatch,
            ReviewFilter::All => true,
        }
    }
}

/// The table's sort order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortKey {
    #[default]
    Line,
    Name,
    Score,
    Candidates,
}

/// The queue of one cohort and the current view of it.
#[derive(Default)]
pub struct QueueState {
    pub cohort_id: i64,
    pub rows: Vec<QueueRow>,
    /// Indices into `rows` that pass the filter and search, in sort order.
    pub view: Vec<u32>,
    /// Rows per tab.
    pub counts: [usize; 10],
}

impl QueueState {
    /// Recompute counts, then the view for `filter`, `search` (case-insensitive, name or
    /// source id) and `sort`.
    pub fn rebuild(&mut self, filter: ReviewFilter, search: &str, sort: SortKey, desc: bool) {
        let mut counts = [0usize; 10];
        for r in &self.rows {
            for (i, f) in ReviewFilter::ALL.iter().enumerate() {
                if f.accepts(r) {
                    counts[i] += 1;
                }
            }
        }
        self.counts = counts;
        let needle = search.trim().to_uppercase();
        let mut view: Vec<u32> = self
            .rows
            .iter()
            .enumerate()
            .filter(|(_, r)| filter.accepts(r))
            .filter(|(_, r)| {
                needle.is_empty()
                    || r.name.to_uppercase().contains(&needle)
                    || r.source_id.to_uppercase().contains(&needle)
                    || r.birth_date.contains(&needle)
            })
            .map(|(i, _)| i as u32)
            .collect();
        let rows = &self.rows;
        match sort {
            SortKey::Line => view.sort_by_key(|&i| rows[i as usize].line),
            SortKey::Name => {
                view.sort_by(|&a, &b| rows[a as usize].name.cmp(&rows[b as usize].name))
            }
            SortKey::Score => view.sort_by(|&a, &b| {
                let (x, y) = (rows[a as usize].best_score, rows[b as usize].best_score);
                x.unwrap_or(-1.0).total_cmp(&y.unwrap_or(-1.0))
            }),
            SortKey::Candidates => view.sort_by_key(|&i| rows[i as usize].candidates),
        }
        if desc {
            view.reverse();
        }
        self.view = view;
    }

    fn position_of(&self, row_id: i64) -> Option<usize> {
        self.view
            .iter()
            .position(|&i| self.rows[i as usize].row_id == row_id)
    }
}

/// Editing a row before resubmitting it.
struct EditState {
    row_id: i64,
    d: Demographics,
    birth: String,
    sex: String,
    why: String,
    error: Option<String>,
}

/// The review screen's state.
pub struct ReviewView {
    pub filter: ReviewFilter,
    pub search: String,
    sort: SortKey,
    desc: bool,
    pub queue: Option<QueueState>,
    /// The selected row (by id, so it survives re-sorting and patches).
    selected: Option<i64>,
    /// Scroll the table to the selection on the next frame.
    scroll_to: bool,
    detail: Option<Arc<DetailView>>,
    note: String,
    focus_search: bool,
    bulk: Option<(f64, Option<Arc<BulkAcceptPreview>>)>,
    edit: Option<EditState>,
    dirty: bool,
}

impl ReviewView {
    pub fn new(filter: ReviewFilter, search: String) -> Self {
        ReviewView {
            filter,
            search,
            sort: SortKey::Line,
            desc: false,
            queue: None,
            selected: None,
            scroll_to: false,
            detail: None,
            note: String::new(),
            focus_search: false,
            bulk: None,
            edit: None,
            dirty: false,
        }
    }

    pub fn has_queue(&self) -> bool {
        self.queue.is_some()
    }

    /// Rows still to do.
    pub fn open_count(&self) -> usize {
        self.queue
            .as_ref()
            .map(|q| q.counts[ReviewFilter::Open.index()])
            .unwrap_or(0)
    }

    pub fn selected_row_id(&self) -> Option<i64> {
        self.selected
    }

    pub fn clear_for(&mut self, cohort_id: i64) {
        if self
            .queue
            .as_ref()
            .is_some_and(|q| q.cohort_id != cohort_id)
        {
            self.queue = None;
            self.selected = None;
            self.detail = None;
        }
    }

    pub fn set_queue(&mut self, cohort_id: i64, rows: Arc<Vec<QueueRow>>) {
        let rows = Arc::try_unwrap(rows).unwrap_or_else(|a| (*a).clone());
        let mut q = QueueState {
            cohort_id,
            rows,
            ..QueueState::default()
        };
        q.rebuild(self.filter, &self.search, self.sort, self.desc);
        self.queue = Some(q);
        self.ensure_selection();
    }

    /// A decision changed: patch the one row and rebuild the view.
    pub fn patch(&mut self, row_id: i64, decision: Option<DecisionKind>) {
        if let Some(q) = &mut self.queue {
            if let Some(r) = q.rows.iter_mut().find(|r| r.row_id == row_id) {
                r.decision = decision;
            }
            self.dirty = true;
        }
    }

    pub fn set_detail(&mut self, d: Arc<DetailView>) {
        if Some(d.detail.row_id) == self.selected {
            self.detail = Some(d);
        }
    }

    pub fn undone(&mut self, row_id: i64) {
        // Go back to the row whose decision was undone.
        self.selected = Some(row_id);
        self.scroll_to = true;
        self.dirty = true;
    }

    pub fn set_bulk_preview(&mut self, p: Arc<BulkAcceptPreview>) {
        if let Some((score, slot)) = &mut self.bulk
            && (*score - p.min_score).abs() < 1e-9
        {
            *slot = Some(p);
        }
    }

    fn rebuild(&mut self) {
        if let Some(q) = &mut self.queue {
            q.rebuild(self.filter, &self.search, self.sort, self.desc);
        }
        self.dirty = false;
    }

    /// Keep a selection on a visible row; returns whether it changed.
    fn ensure_selection(&mut self) -> bool {
        let Some(q) = &self.queue else { return false };
        if self.selected.is_some_and(|id| q.position_of(id).is_some()) {
            return false;
        }
        let new = q.view.first().map(|&i| q.rows[i as usize].row_id);
        let changed = new != self.selected;
        self.selected = new;
        self.detail = None;
        changed
    }

    fn select_pos(&mut self, pos: usize) -> Option<i64> {
        let q = self.queue.as_ref()?;
        let &i = q.view.get(pos)?;
        let id = q.rows[i as usize].row_id;
        if Some(id) != self.selected {
            self.selected = Some(id);
            self.detail = None;
            self.note.clear();
            self.scroll_to = true;
            return Some(id);
        }
        None
    }

    fn move_by(&mut self, delta: isize) -> Option<i64> {
        let q = self.queue.as_ref()?;
        let pos = self.selected.and_then(|id| q.position_of(id)).unwrap_or(0) as isize;
        let new = (pos + delta).clamp(0, q.view.len().saturating_sub(1) as isize) as usize;
        self.select_pos(new)
    }
}

/// What the user asked for this frame (keys or buttons).
enum Action {
    Accept(u32),
    NoMatch,
    Skip,
    Undo,
    Move(isize),
}

pub fn show(app: &mut MatchdeskApp, ui: &mut egui::Ui) {
    let Some(cohort_id) = app.persisted.cohort_id else {
        ui.label("Import a cohort and run a match first.");
        return;
    };
    let rv = &mut app.review;
    if rv.dirty {
        rv.rebuild();
    }
    if rv.ensure_selection()
        && let Some(id) = rv.selected
    {
        app.send(Command::LoadDetail { row_id: id });
    }
    let rv = &mut app.review;
    let Some(q) = &rv.queue else {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label("Loading the queue…");
        });
        return;
    };
    if q.rows.is_empty() {
        ui.label("No results yet for this cohort. Start a run on the Match runs screen; rows appear here as results arrive.");
        return;
    }

    // Tabs with counts.
    let mut changed = false;
    ui.horizontal_wrapped(|ui| {
        for f in ReviewFilter::ALL {
            let n = q.counts[f.index()];
            if n == 0 && !matches!(f, ReviewFilter::Open | ReviewFilter::All) && rv.filter != f {
                continue;
            }
            if ui
                .add(egui::Button::selectable(
                    rv.filter == f,
                    format!("{} ({n})", f.label()),
                ))
                .clicked()
            {
                rv.filter = f;
                changed = true;
            }
        }
    });
    ui.horizontal(|ui| {
        let r = labelled(ui, "Search (/)", |ui| {
            ui.add(
                egui::TextEdit::singleline(&mut rv.search)
                    .hint_text("name, record id or birth date")
                    .desired_width(240.0),
            )
        });
        if rv.focus_search {
            r.request_focus();
            rv.focus_search = false;
        }
        if r.changed() {
            changed = true;
        }
        if ui.button("Bulk accept…").on_hover_text("Accept, in one step, every single-candidate review row whose score reaches a threshold, after a preview").clicked() {
            rv.bulk = Some((0.85, None));
        }
    });
    if changed {
        rv.rebuild();
        if rv.ensure_selection()
            && let Some(id) = rv.selected
        {
            app.send(Command::LoadDetail { row_id: id });
        }
    }

    // Keyboard (not while typing in a field).
    let rv = &mut app.review;
    let mut actions = Vec::new();
    if !ui.ctx().egui_wants_keyboard_input() && rv.edit.is_none() && rv.bulk.is_none() {
        ui.input(|i| {
            use egui::Key;
            let nums = [
                Key::Num1,
                Key::Num2,
                Key::Num3,
                Key::Num4,
                Key::Num5,
                Key::Num6,
                Key::Num7,
                Key::Num8,
                Key::Num9,
            ];
            for (n, k) in nums.iter().enumerate() {
                if i.key_pressed(*k) {
                    actions.push(Action::Accept(n as u32 + 1));
                }
            }
            if i.key_pressed(Key::N) {
                actions.push(Action::NoMatch);
            }
            if i.key_pressed(Key::S) {
                actions.push(Action::Skip);
            }
            if i.key_pressed(Key::U) {
                actions.push(Action::Undo);
            }
            if i.key_pressed(Key::ArrowDown) || i.key_pressed(Key::J) {
                actions.push(Action::Move(1));
            }
            if i.key_pressed(Key::ArrowUp) || i.key_pressed(Key::K) {
                actions.push(Action::Move(-1));
            }
            if i.key_pressed(Key::Slash) {
                rv.focus_search = true;
            }
        });
    }

    let avail = ui.available_height();
    let table_h = (avail * 0.38).max(160.0);
    table_ui(app, ui, table_h);
    ui.separator();
    detail_ui(app, ui, &mut actions);

    for a in actions {
        run_action(app, a);
    }
    bulk_ui(app, ui, cohort_id);
    edit_ui(app, ui);
}

fn run_action(app: &mut MatchdeskApp, a: Action) {
    let rv = &mut app.review;
    let Some(row_id) = rv.selected else { return };
    let note = {
        let n = rv.note.trim().to_string();
        (!n.is_empty()).then_some(n)
    };
    let decide = |kind, rank| Command::Decide {
        row_id,
        kind,
        rank,
        note: note.clone(),
    };
    let cmd = match a {
        Action::Accept(n) => {
            let has = rv.detail.as_ref().is_some_and(|d| {
                d.detail.row_id == row_id && (n as usize) <= d.detail.candidates.len()
            });
            if !has {
                return;
            }
            Some(decide(DecisionKind::Accept, Some(n)))
        }
        Action::NoMatch => Some(decide(DecisionKind::NoMatch, None)),
        Action::Skip => Some(decide(DecisionKind::Skip, None)),
        Action::Undo => Some(Command::Undo),
        Action::Move(d) => {
            if let Some(id) = rv.move_by(d) {
                app.send(Command::LoadDetail { row_id: id });
            }
            None
        }
    };
    if let Some(cmd) = cmd {
        let is_decision = matches!(cmd, Command::Decide { .. });
        app.send(cmd);
        if is_decision {
            // Move on at once; the saved decision patches the row when it arrives.
            let rv = &mut app.review;
            rv.note.clear();
            if let Some(id) = rv.move_by(1) {
                app.send(Command::LoadDetail { row_id: id });
            }
        }
    }
}

fn table_ui(app: &mut MatchdeskApp, ui: &mut egui::Ui, height: f32) {
    let t = tokens::of(ui);
    let rv = &mut app.review;
    let Some(q) = &rv.queue else { return };
    let selected_pos = rv.selected.and_then(|id| q.position_of(id));
    let mut clicked = None;
    let mut sort_by = None;
    ui.push_id("queue_table", |ui| {
        let mut tb = TableBuilder::new(ui)
            .striped(true)
            .sense(egui::Sense::click())
            .max_scroll_height(height)
            .min_scrolled_height(height)
            .column(Column::exact(60.0))
            .column(Column::initial(120.0).resizable(true))
            .column(Column::initial(220.0).resizable(true))
            .column(Column::exact(100.0))
            .column(Column::initial(190.0).resizable(true))
            .column(Column::exact(70.0))
            .column(Column::exact(70.0))
            .column(Column::remainder().at_least(90.0));
        if rv.scroll_to
            && let Some(p) = selected_pos
        {
            tb = tb.scroll_to_row(p, Some(egui::Align::Center));
        }
        rv.scroll_to = false;
        let arrow = |k: SortKey| {
            if rv.sort == k {
                if rv.desc { " ⏷" } else { " ⏶" }
            } else {
                ""
            }
        };
        tb.header(tokens::ROW_HEIGHT, |mut h| {
            let heads: [(&str, Option<SortKey>); 8] = [
                ("Line", Some(SortKey::Line)),
                ("Record id", None),
                ("Name", Some(SortKey::Name)),
                ("Birth date", None),
                ("Outcome", None),
                ("Cands", Some(SortKey::Candidates)),
                ("Score", Some(SortKey::Score)),
                ("Decision", None),
            ];
            for (title, key) in heads {
                h.col(|ui| match key {
                    Some(k) => {
                        if ui
                            .add(
                                egui::Button::new(
                                    egui::RichText::new(format!("{title}{}", arrow(k))).strong(),
                                )
                                .frame(false),
                            )
                            .on_hover_text("Sort by this column")
                            .clicked()
                        {
                            sort_by = Some(k);
                        }
                    }
                    None => {
                        ui.strong(title);
                    }
                });
            }
        })
        .body(|body| {
            body.rows(tokens::ROW_HEIGHT, q.view.len(), |mut row| {
                let pos = row.index();
                let r = &q.rows[q.view[pos] as usize];
                row.set_selected(Some(pos) == selected_pos);
                row.col(|ui| {
                    ui.label(r.line.to_string());
                });
                row.col(|ui| {
                    ui.label(&*r.source_id);
                });
                row.col(|ui| {
                    ui.label(&*r.name);
                });
                row.col(|ui| {
                    ui.label(&*r.birth_date);
                });
                row.col(|ui| {
                    ui.colored_label(t.outcome(r.outcome), tokens::outcome_label(r.outcome));
                });
                row.col(|ui| {
                    ui.label(r.candidates.to_string());
                });
                row.col(|ui| {
                    ui.label(
                        r.best_score
                            .map(|s| format!("{s:.2}"))
                            .unwrap_or_else(|| "—".into()),
                    );
                });
                row.col(|ui| {
                    match r.decision {
                        Some(DecisionKind::Accept) => ui.colored_label(t.ok, "✔ accepted"),
                        Some(DecisionKind::NoMatch) => ui.colored_label(t.muted, "○ no match"),
                        Some(DecisionKind::Skip) => ui.colored_label(t.warning, "⏭ skipped"),
                        None => ui.label(""),
                    };
                });
                if row.response().clicked() {
                    clicked = Some(pos);
                }
            });
        });
    });
    if let Some(k) = sort_by {
        if rv.sort == k {
            rv.desc = !rv.desc;
        } else {
            rv.sort = k;
            rv.desc = matches!(k, SortKey::Score | SortKey::Candidates);
        }
        rv.rebuild();
        rv.scroll_to = true;
    }
    if let Some(pos) = clicked
        && let Some(id) = app.review.select_pos(pos)
    {
        app.review.scroll_to = false;
        app.send(Command::LoadDetail { row_id: id });
    }
    if let Some(q) = &app.review.queue {
        ui.label(format!("{} rows shown of {}", q.view.len(), q.rows.len()));
    }
}

fn show_value(field: Field, d: &Demographics) -> Option<String> {
    d.get(field).filter(|s| !s.is_empty())
}

fn detail_ui(app: &mut MatchdeskApp, ui: &mut egui::Ui, actions: &mut Vec<Action>) {
    let t = tokens::of(ui);
    let rv = &mut app.review;
    let Some(row_id) = rv.selected else {
        ui.label("Nothing to review in this tab.");
        return;
    };
    let Some(dv) = rv.detail.clone().filter(|d| d.detail.row_id == row_id) else {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label("Loading the record…");
        });
        return;
    };
    let d = &dv.detail;
    ui.horizontal_wrapped(|ui| {
        ui.strong(format!("Line {} · record {}", d.line, d.source_id));
        if let Some(o) = d.outcome {
            ui.colored_label(t.outcome(o), tokens::outcome_label(o));
        }
        if let Some(last) = d.decisions.iter().find(|x| x.undone_at.is_none()) {
            let what = match (last.kind, last.rank) {
                (DecisionKind::Accept, Some(r)) => format!("candidate {r} accepted"),
                (k, _) => k.label().to_string(),
            };
            ui.colored_label(
                t.accent,
                format!(
                    "Decision: {what} by {} at {}",
                    last.actor,
                    tokens::when(&last.at, false)
                ),
            );
        }
    });
    for issue in &d.issues {
        let color = if issue.is_error() { t.error } else { t.muted };
        ui.colored_label(
            color,
            format!("Server says ({}): {}", issue.severity, issue.text),
        );
    }
    if d.outcome == Some(Outcome::Error) && d.issues.is_empty() {
        ui.colored_label(t.error, "✖ The server's answer for this row could not be read. Correct and resubmit it, or start the run again.");
    }

    // Decision bar: every shortcut as a visible button.
    ui.horizontal_wrapped(|ui| {
        for (i, c) in d.candidates.iter().enumerate().take(9) {
            let n = i as u32 + 1;
            if ui
                .button(format!("✔ Accept {n}  [{n}]"))
                .on_hover_text(format!(
                    "This person is candidate {n} (IIS id {})",
                    c.iis_id
                ))
                .clicked()
            {
                actions.push(Action::Accept(n));
            }
        }
        if ui
            .button("○ No match  [N]")
            .on_hover_text("None of the candidates is this person")
            .clicked()
        {
            actions.push(Action::NoMatch);
        }
        if ui
            .button("⏭ Skip  [S]")
            .on_hover_text("Decide later")
            .clicked()
        {
            actions.push(Action::Skip);
        }
        if ui
            .button("↺ Undo  [U]")
            .on_hover_text("Undo your last decision")
            .clicked()
        {
            actions.push(Action::Undo);
        }
        if ui.button("⬆ Previous  [K]").clicked() {
            actions.push(Action::Move(-1));
        }
        if ui.button("⬇ Next  [J]").clicked() {
            actions.push(Action::Move(1));
        }
        labelled(ui, "Note", |ui| {
            ui.add(
                egui::TextEdit::singleline(&mut rv.note)
                    .hint_text("optional, saved with the decision")
                    .desired_width(220.0),
            )
        });
        if matches!(d.outcome, Some(Outcome::NoMatch) | Some(Outcome::Error))
            && ui
                .button("✏ Correct and resubmit…")
                .on_hover_text("Fix the record (a typo, a missing field) and match it again")
                .clicked()
        {
            let s = &d.submitted;
            rv.edit = Some(EditState {
                row_id: d.row_id,
                birth: s.birth_date.map(|b| b.to_string()).unwrap_or_default(),
                sex: s.sex.map(|x| x.fhir_code().to_string()).unwrap_or_default(),
                d: s.clone(),
                why: String::new(),
                error: None,
            });
        }
    });

    // Side by side.
    let fields: Vec<Field> = Field::ALL
        .iter()
        .copied()
        .filter(|f| *f != Field::IisId)
        .filter(|f| {
            show_value(*f, &d.submitted).is_some()
                || d.candidates
                    .iter()
                    .any(|c| show_value(*f, &c.demographics).is_some())
        })
        .collect();
    egui::ScrollArea::both().id_salt("side_by_side").show(ui, |ui| {
        egui::Grid::new(("sbs", d.row_id))
            .striped(true)
            .min_col_width(90.0)
            .spacing([16.0, 4.0])
            .show(ui, |ui| {
                ui.strong("Field");
                ui.strong("Submitted record");
                for (i, _) in d.candidates.iter().enumerate() {
                    ui.strong(format!("Candidate {}", i + 1));
                }
                ui.end_row();
                if !d.candidates.is_empty() {
                    ui.label("IIS patient id");
                    ui.label("");
                    for c in &d.candidates {
                        ui.label(&c.iis_id);
                    }
                    ui.end_row();
                    ui.label("Server score");
                    ui.label("");
                    for c in &d.candidates {
                        ui.label(format!(
                            "{} · {}",
                            c.score.map(|s| format!("{s:.2}")).unwrap_or_else(|| "—".into()),
                            c.grade.map(|g| g.code()).unwrap_or("no grade")
                        ));
                    }
                    ui.end_row();
                    ui.label("Local check");
                    ui.label("");
                    for chk in &dv.checks {
                        if chk.passed {
                            ui.colored_label(t.ok, format!("✔ {:.2} passes the rules", chk.comparison.score));
                        } else {
                            ui.colored_label(t.differ, format!("✖ {:.2}: {}", chk.comparison.score, chk.failures.join("; ")))
                                .on_hover_text(chk.failures.join("\n"));
                        }
                    }
                    ui.end_row();
                }
                for f in &fields {
                    ui.label(f.label());
                    ui.label(show_value(*f, &d.submitted).unwrap_or_else(|| "—".into()));
                    for chk in &dv.checks {
                        let cand = chk.comparison.field(*f);
                        match cand {
                            Some(fr) => {
                                let text = match fr.candidate.clone().filter(|s| !s.is_empty()) {
                                    Some(v) => format!("{} {v}", fr.verdict.symbol()),
                                    None => fr.verdict.symbol().to_string(),
                                };
                                let r = ui.colored_label(t.verdict(fr.verdict), text);
                                let mut hover = fr.verdict.label().to_string();
                                if !fr.note.is_empty() {
                                    hover = format!("{hover}: {}", fr.note);
                                }
                                r.on_hover_text(hover);
                            }
                            None => {
                                ui.colored_label(t.verdict(Verdict::Missing), "–");
                            }
                        }
                    }
                    ui.end_row();
                }
            });
        // The explanation in words, per candidate.
        for (i, chk) in dv.checks.iter().enumerate() {
            let notes: Vec<String> = chk
                .comparison
                .fields
                .iter()
                .filter(|f| matches!(f.verdict, Verdict::Near | Verdict::Differ) && !f.note.is_empty())
                .map(|f| format!("{} {}: {}", f.verdict.symbol(), f.field.label(), f.note))
                .collect();
            if !notes.is_empty() {
                ui.label(egui::RichText::new(format!("Candidate {}: {}", i + 1, notes.join(" · "))).color(t.muted));
            }
        }
        ui.add_space(4.0);
        ui.label(egui::RichText::new("= agrees   ≈ close (nickname, typo, swapped day/month)   ≠ differs   – missing").color(t.muted));
    });
}

fn bulk_ui(app: &mut MatchdeskApp, ui: &mut egui::Ui, cohort_id: i64) {
    let Some((mut score, preview)) = app.review.bulk.clone() else {
        return;
    };
    let mut close = false;
    let mut send = Vec::new();
    egui::Modal::new(egui::Id::unique("bulk_accept")).show(ui.ctx(), |ui| {
        ui.heading("Bulk accept");
        ui.label("Accept the single candidate of every review row whose server score is at least:");
        let r = ui.add(
            egui::Slider::new(&mut score, 0.5..=1.0)
                .step_by(0.01)
                .text("minimum score"),
        );
        if r.changed() {
            app.review.bulk = Some((score, None));
        }
        match &preview {
            None => {
                if ui.button("Preview").clicked() {
                    send.push(Command::BulkPreview {
                        cohort_id,
                        min_score: score,
                    });
                }
            }
            Some(p) => {
                ui.strong(format!("{} rows would be accepted.", p.rows));
                if !p.sample.is_empty() {
                    ui.label("Spot-check these (lowest scores first):");
                    egui::Grid::new("bulk_sample").striped(true).show(ui, |ui| {
                        ui.strong("Record");
                        ui.strong("Name");
                        ui.strong("IIS id");
                        ui.strong("Score");
                        ui.end_row();
                        for (_, src, name, iis, s) in &p.sample {
                            ui.label(src);
                            ui.label(name);
                            ui.label(iis);
                            ui.label(format!("{s:.2}"));
                            ui.end_row();
                        }
                    });
                }
                if p.rows > 0 && ui.button(format!("Accept {} rows", p.rows)).clicked() {
                    send.push(Command::BulkAccept {
                        cohort_id,
                        min_score: score,
                    });
                    close = true;
                }
            }
        }
        if ui.button("Close").clicked() {
            close = true;
        }
    });
    for c in send {
        app.send(c);
    }
    if close {
        app.review.bulk = None;
    }
}

fn edit_ui(app: &mut MatchdeskApp, ui: &mut egui::Ui) {
    let Some(mut e) = app.review.edit.take() else {
        return;
    };
    let mut close = false;
    let mut submit = false;
    egui::Modal::new(egui::Id::unique("edit_row")).show(ui.ctx(), |ui| {
        ui.heading("Correct and resubmit");
        ui.label(
            "The file's original values are kept; the corrected record is what is sent to the IIS.",
        );
        egui::Grid::new("edit_grid").num_columns(2).show(ui, |ui| {
            for f in [
                Field::Given,
                Field::Middle,
                Field::Family,
                Field::Phone,
                Field::AddressLine1,
                Field::City,
                Field::State,
                Field::PostalCode,
            ] {
                ui.label(f.label());
                if let Some(slot) = e.d.text_mut(f) {
                    let mut s = slot.clone().unwrap_or_default();
                    if ui.text_edit_singleline(&mut s).changed() {
                        *slot = (!s.trim().is_empty()).then(|| s.trim().to_uppercase());
                    }
                }
                ui.end_row();
            }
            ui.label("Birth date (YYYY-MM-DD)");
            ui.text_edit_singleline(&mut e.birth);
            ui.end_row();
            ui.label("Sex (male, female, other, unknown)");
            ui.text_edit_singleline(&mut e.sex);
            ui.end_row();
            ui.label("Why (for the audit log)");
            ui.text_edit_singleline(&mut e.why);
            ui.end_row();
        });
        if let Some(err) = &e.error {
            ui.colored_label(tokens::of(ui).error, err);
        }
        ui.horizontal(|ui| {
            if ui.button("Save and match again").clicked() {
                submit = true;
            }
            if ui.button("Cancel").clicked() {
                close = true;
            }
        });
    });
    if submit {
        match chrono::NaiveDate::parse_from_str(e.birth.trim(), "%Y-%m-%d") {
            Ok(b) => {
                e.d.birth_date = Some(b);
                e.d.sex = if e.sex.trim().is_empty() {
                    None
                } else {
                    Sex::parse(e.sex.trim())
                };
                if e.why.trim().is_empty() {
                    e.error =
                        Some("Say briefly what you corrected (it goes into the audit log).".into());
                } else if let Some(profile) = app.persisted.profile.clone() {
                    app.send(Command::Resubmit {
                        row_id: e.row_id,
                        corrected: Box::new(e.d.clone()),
                        why: e.why.trim().to_string(),
                        profile,
                    });
                    close = true;
                } else {
                    e.error = Some("Choose a server on the Match runs screen first.".into());
                }
            }
            Err(_) => {
                e.error = Some(format!(
                    "\"{}\" is not a date like 2014-03-27.",
                    e.birth.trim()
                ));
            }
        }
    }
    if !close {
        app.review.edit = Some(e);
    }
}
