//! Date parsing for cohort files, without regexes or allocation.
//!
//! Accepted: `YYYY-MM-DD`, `YYYY/MM/DD`, `YYYYMMDD`, `MM/DD/YYYY`, `M/D/YYYY`, `M/D/YY`,
//! `MM-DD-YYYY` (and `M-D-YY`). A time part after a space or `T` (as spreadsheets add) is ignored.
//! Two-digit years take the century that keeps the date from being in the future: `yy` ≤ today's
//! `yy` → `20yy`, else `19yy`.

use chrono::{Datelike, NaiveDate};

/// Parse up to 4 ASCII digits; `None` for an empty or non-digit part.
fn num(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 4 {
        return None;
    }
    let mut n = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(c - b'0');
    }
    Some(n)
}

/// Split `s` on `sep` into exactly three parts.
fn three(s: &[u8], sep: u8) -> Option<(&[u8], &[u8], &[u8])> {
    let mut it = s.split(|&c| c == sep);
    let a = it.next()?;
    let b = it.next()?;
    let c = it.next()?;
    if it.next().is_some() {
        return None;
    }
    Some((a, b, c))
}

/// Parse a date in one of the accepted formats. The error is a plain-words reason (without the
/// field name) such as `"02/30/2019 is not a real date — check the month and day"`.
pub fn parse_date(s: &str, today: NaiveDate) -> Result<NaiveDate, String> {
    let t = s.trim();
    // Drop a time part: "2019-02-03T00:00:00", "2/3/2019 0:00".
    let date_part = t
        .split([' ', 'T'])
        .next()
        .unwrap_or(t)
        .trim_end_matches(',');
    let b = date_part.as_bytes();
    let unknown =
        || format!("{t} is not a date in a format we know — use YYYY-MM-DD or MM/DD/YYYY");
    let (y, m, d) = if b.len() == 8 && b.iter().all(u8::is_ascii_digit) {
        (num(&b[..4]), num(&b[4..6]), num(&b[6..]))
    } else if let Some(sep) = b.iter().copied().find(|c| *c == b'-' || *c == b'/') {
        let (p1, p2, p3) = three(b, sep).ok_or_else(unknown)?;
        if p1.len() == 4 {
            if p2.len() > 2 || p3.len() > 2 {
                return Err(unknown());
            }
            (num(p1), num(p2), num(p3))
        } else if p1.len() <= 2 && p2.len() <= 2 && (p3.len() == 4 || p3.len() == 2) {
            let year = num(p3).map(|yy| {
                if p3.len() == 2 {
                    let this_yy = (today.year().rem_euclid(100)) as u32;
                    let century = today.year() as u32 / 100;
                    if yy <= this_yy {
                        century * 100 + yy
                    } else {
                        (century - 1) * 100 + yy
                    }
                } else {
                    yy
                }
            });
            (year, num(p1), num(p2))
        } else {
            return Err(unknown());
        }
    } else {
        return Err(unknown());
    };
    let (Some(y), Some(m), Some(d)) = (y, m, d) else {
        return Err(unknown());
    };
    if !(1..=12).contains(&m) {
        return Err(format!(
            "{t} is not a real date — the month must be 1 to 12"
        ));
    }
    i32::try_from(y)
        .ok()
        .and_then(|y| NaiveDate::from_ymd_opt(y, m, d))
        .ok_or_else(|| format!("{t} is not a real date — check the month and day"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ymd(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn today() -> NaiveDate {
        ymd(2025, 6, 15)
    }

    #[test]
    fn every_format() {
        let want = ymd(2019, 2, 3);
        for s in [
            "2019-02-03",
            "2019-2-3",
            "2019/02/03",
            "20190203",
            "02/03/2019",
            "2/3/2019",
            "2/3/19",
            "02-03-2019",
            "2-3-2019",
            " 02/03/2019 ",
            "2019-02-03T00:00:00",
            "2/3/2019 0:00",
        ] {
            assert_eq!(parse_date(s, today()), Ok(want), "{s}");
        }
    }

    #[test]
    fn two_digit_year_century_rule() {
        assert_eq!(parse_date("1/1/25", today()), Ok(ymd(2025, 1, 1)));
        assert_eq!(parse_date("1/1/00", today()), Ok(ymd(2000, 1, 1)));
        assert_eq!(parse_date("1/1/26", today()), Ok(ymd(1926, 1, 1)));
        assert_eq!(parse_date("12/31/99", today()), Ok(ymd(1999, 12, 31)));
        // Same two-digit year as today but later in the year stays in this century; the future
        // check is the caller's job.
        assert_eq!(parse_date("12/31/25", today()), Ok(ymd(2025, 12, 31)));
        let y2099 = ymd(2099, 1, 1);
        assert_eq!(parse_date("1/1/99", y2099), Ok(ymd(2099, 1, 1)));
    }

    #[test]
    fn invalid_dates_say_why() {
        let e = parse_date("02/30/2019", today()).unwrap_err();
        assert_eq!(e, "02/30/2019 is not a real date — check the month and day");
        let e = parse_date("13/01/2019", today()).unwrap_err();
        assert!(e.contains("month must be 1 to 12"), "{e}");
        assert!(parse_date("2019-02-29", today()).is_err());
        assert_eq!(parse_date("2020-02-29", today()), Ok(ymd(2020, 2, 29)));
        for s in [
            "",
            "abc",
            "2019",
            "2019-02",
            "1/2/3/4",
            "1/2/345",
            "2019-003-01",
            "x/1/2019",
        ] {
            let e = parse_date(s, today()).unwrap_err();
            assert!(e.contains("format we know"), "{s}: {e}");
        }
    }
}
