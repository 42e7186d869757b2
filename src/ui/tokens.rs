//! Design tokens: every colour, size and symbol the workbench uses, in one place, for light and
//! dark themes. Views never write a colour literal; they ask here.
//!
//! Status is never told by colour alone: each verdict and outcome also has a symbol and a word.

use egui::Color32;

use crate::domain::{Outcome, ReviewReason};
use crate::matching::Verdict;

/// The palette of one theme.
#[derive(Clone, Copy, Debug)]
pub struct Tokens {
    pub agree: Color32,
    pub near: Color32,
    pub differ: Color32,
    pub missing: Color32,
    pub error: Color32,
    pub warning: Color32,
    pub ok: Color32,
    pub accent: Color32,
    pub muted: Color32,
    /// Background of an error banner.
    pub error_bg: Color32,
    /// Background of a notice banner.
    pub notice_bg: Color32,
    /// Background of the highlighted (selected) candidate column.
    pub highlight_bg: Color32,
}

pub const LIGHT: Tokens = Tokens {
    agree: Color32::from_rgb(0x1b, 0x6e, 0x20),
    near: Color32::from_rgb(0x8a, 0x5a, 0x00),
    differ: Color32::from_rgb(0xb3, 0x1b, 0x1b),
    missing: Color32::from_rgb(0x66, 0x66, 0x66),
    error: Color32::from_rgb(0xb3, 0x1b, 0x1b),
    warning: Color32::from_rgb(0x8a, 0x5a, 0x00),
    ok: Color32::from_rgb(0x1b, 0x6e, 0x20),
    accent: Color32::from_rgb(0x1f, 0x4e, 0xa8),
    muted: Color32::from_rgb(0x5f, 0x5f, 0x5f),
    error_bg: Color32::from_rgb(0xfd, 0xe8, 0xe8),
    notice_bg: Color32::from_rgb(0xe6, 0xf2, 0xe6),
    highlight_bg: Color32::from_rgb(0xe8, 0xef, 0xfb),
};

pub const DARK: Tokens = Tokens {
    agree: Color32::from_rgb(0x7c, 0xd6, 0x84),
    near: Color32::from_rgb(0xf0, 0xc0, 0x5a),
    differ: Color32::from_rgb(0xff, 0x8a, 0x80),
    missing: Color32::from_rgb(0xa0, 0xa0, 0xa0),
    error: Color32::from_rgb(0xff, 0x8a, 0x80),
    warning: Color32::from_rgb(0xf0, 0xc0, 0x5a),
    ok: Color32::from_rgb(0x7c, 0xd6, 0x84),
    accent: Color32::from_rgb(0x8a, 0xb4, 0xf8),
    muted: Color32::from_rgb(0xb0, 0xb0, 0xb0),
    error_bg: Color32::from_rgb(0x4a, 0x1e, 0x1e),
    notice_bg: Color32::from_rgb(0x1e, 0x3a, 0x22),
    highlight_bg: Color32::from_rgb(0x24, 0x30, 0x48),
};

/// The tokens of the theme `ui` is drawn in.
pub fn of(ui: &egui::Ui) -> &'static Tokens {
    if ui.visuals().dark_mode {
        &DARK
    } else {
        &LIGHT
    }
}

impl Tokens {
    pub fn verdict(&self, v: Verdict) -> Color32 {
        match v {
            Verdict::Agree => self.agree,
            Verdict::Near => self.near,
            Verdict::Differ => self.differ,
            Verdict::Missing => self.missing,
        }
    }

    pub fn outcome(&self, o: Outcome) -> Color32 {
        match o {
            Outcome::AutoMatch => self.ok,
            Outcome::Review(_) => self.near,
            Outcome::NoMatch => self.muted,
            Outcome::Error => self.error,
        }
    }
}

/// Row height of tables.
pub const ROW_HEIGHT: f32 = 22.0;
/// Width of the left navigation.
pub const NAV_WIDTH: f32 = 170.0;
/// How long a notice banner stays.
pub const NOTICE_SECS: f64 = 8.0;

/// An outcome in words, with a symbol so it reads without colour.
pub fn outcome_label(o: Outcome) -> &'static str {
    match o {
        Outcome::AutoMatch => "✔ matched",
        Outcome::Review(ReviewReason::SeveralCandidates) => "⚑ several candidates",
        Outcome::Review(ReviewReason::Probable) => "? probable",
        Outcome::Review(ReviewReason::Possible) => "?? possible",
        Outcome::Review(ReviewReason::CertainDisagrees) => "⚠ certain, but disagrees",
        Outcome::NoMatch => "○ no match",
        Outcome::Error => "✖ error",
    }
}

/// A stored UTC timestamp (`2026-11-27T13:17:11.330Z`) as people read it:
/// `2026-11-27 13:17 UTC`, or with seconds for the audit log. Anything else is shown as is.
pub fn when(stamp: &str, seconds: bool) -> String {
    let b = stamp.as_bytes();
    let end = if seconds { 19 } else { 16 };
    if b.len() >= end && b.get(10) == Some(&b'T') && stamp.is_char_boundary(end) {
        format!("{} {} UTC", &stamp[..10], &stamp[11..end])
    } else {
        stamp.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::when;

    #[test]
    fn timestamps_read_as_date_time_utc() {
        assert_eq!(
            when("2026-11-27T13:17:11.330Z", false),
            "2026-11-27 13:17 UTC"
        );
        assert_eq!(
            when("2026-11-27T13:17:11.330Z", true),
            "2026-11-27 13:17:11 UTC"
        );
        assert_eq!(when("yesterday", false), "yesterday");
        assert_eq!(when("", true), "");
    }
}
