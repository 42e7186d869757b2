//! The built-in table of common US English nicknames and the lookup used by the name comparator.
//!
//! The table is one const array of groups: a formal name and the nicknames commonly used for it.
//! Two names are nicknames of each other when they share a group (`BILL` and `WILLIAM`, and also
//! `BILL` and `WILL`, both short for `WILLIAM`). A nickname may belong to several groups (`ALEX`
//! is short for `ALEXANDER` and `ALEXANDRA`). The lookup index is built once, on first use.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::OnceLock;

use super::text::Fnv64;

type Index = HashMap<&'static str, Vec<u16>, BuildHasherDefault<Fnv64>>;

/// Formal name → common nicknames. Uppercase ASCII, as produced by `normalize_name`.
pub const NICKNAMES: &[(&str, &[&str])] = &[
    ("ABIGAIL", &["ABBY", "ABBIE", "GAIL"]),
    ("ALBERT", &["AL", "BERT", "BERTIE"]),
    ("ALEXANDER", &["ALEX", "AL", "XANDER", "SANDY", "ALEC"]),
    ("ALEXANDRA", &["ALEX", "ALEXA", "SANDRA", "SANDY", "LEXI"]),
    ("ALFRED", &["AL", "ALFIE", "FRED"]),
    ("ALLISON", &["ALLIE", "ALLY"]),
    ("AMANDA", &["MANDY", "MANDI"]),
    ("ANDREW", &["ANDY", "DREW"]),
    ("ANGELA", &["ANGIE"]),
    ("ANTHONY", &["TONY"]),
    ("ANNE", &["ANNIE", "NANCY", "ANN"]),
    ("ARTHUR", &["ART", "ARTIE"]),
    ("BARBARA", &["BARB", "BARBIE", "BABS"]),
    ("BENJAMIN", &["BEN", "BENNY", "BENJI"]),
    ("BERNARD", &["BERNIE"]),
    ("BEVERLY", &["BEV"]),
    ("BRADLEY", &["BRAD"]),
    ("CAMERON", &["CAM"]),
    ("CATHERINE", &["CATHY", "CATE", "KATE", "KATIE", "CAT"]),
    ("CHARLES", &["CHARLIE", "CHUCK", "CHAS", "CHAZ"]),
    ("CHARLOTTE", &["CHARLIE", "LOTTIE"]),
    ("CHRISTINA", &["CHRIS", "TINA", "CHRISSY"]),
    ("CHRISTINE", &["CHRIS", "TINA", "CHRISSY"]),
    ("CHRISTOPHER", &["CHRIS", "KIT", "TOPHER"]),
    ("CYNTHIA", &["CINDY"]),
    ("DANIEL", &["DAN", "DANNY"]),
    ("DANIELLE", &["DANI", "ELLE"]),
    ("DAVID", &["DAVE", "DAVEY"]),
    ("DEBORAH", &["DEB", "DEBBIE", "DEBRA"]),
    ("DONALD", &["DON", "DONNIE"]),
    ("DOROTHY", &["DOT", "DOTTIE", "DOLLY"]),
    ("DOUGLAS", &["DOUG"]),
    ("EDWARD", &["ED", "EDDIE", "TED", "TEDDY", "NED"]),
    ("ELEANOR", &["ELLIE", "NELL", "NORA"]),
    (
        "ELIZABETH",
        &[
            "LIZ", "LIZZIE", "BETH", "BETSY", "BETTY", "ELIZA", "LIZA", "LIBBY", "ELLIE",
        ],
    ),
    ("EMILY", &["EM", "EMMY", "MILLIE"]),
    ("EUGENE", &["GENE"]),
    ("FRANCES", &["FRAN", "FRANNIE"]),
    ("FRANCIS", &["FRANK"]),
    ("FRANKLIN", &["FRANK"]),
    ("FREDERICK", &["FRED", "FREDDIE", "FREDDY", "RICK"]),
    ("GABRIEL", &["GABE"]),
    ("GABRIELLA", &["GABBY", "ELLA"]),
    ("GEORGE", &["GEORGIE"]),
    ("GERALD", &["GERRY", "JERRY"]),
    ("GREGORY", &["GREG"]),
    ("HAROLD", &["HAL", "HARRY"]),
    ("HENRY", &["HANK", "HARRY"]),
    ("ISABELLA", &["BELLA", "IZZY", "ISABEL"]),
    ("JACOB", &["JAKE"]),
    ("JAMES", &["JIM", "JIMMY", "JAMIE", "JIMMIE"]),
    ("JANET", &["JAN"]),
    ("JEFFREY", &["JEFF"]),
    ("JENNIFER", &["JEN", "JENNY", "JENN"]),
    ("JESSICA", &["JESS", "JESSIE"]),
    ("JOHN", &["JACK", "JOHNNY", "JON"]),
    ("JONATHAN", &["JON", "JONNY", "JOHNNY"]),
    ("JOSEPH", &["JOE", "JOEY", "JOJO"]),
    ("JOSHUA", &["JOSH"]),
    ("JUDITH", &["JUDY", "JUDI"]),
    (
        "KATHERINE",
        &["KATE", "KATIE", "KATHY", "KAT", "KAY", "KITTY"],
    ),
    ("KATHLEEN", &["KATHY", "KATE"]),
    ("KENNETH", &["KEN", "KENNY"]),
    ("KIMBERLY", &["KIM"]),
    ("LAWRENCE", &["LARRY"]),
    ("LEONARD", &["LEO", "LEN", "LENNY"]),
    (
        "MARGARET",
        &["MAGGIE", "PEGGY", "MEG", "MARGE", "MADGE", "GRETA"],
    ),
    ("MATTHEW", &["MATT", "MATTY"]),
    ("MELISSA", &["MEL", "MISSY"]),
    ("MICHAEL", &["MIKE", "MICKEY", "MIKEY", "MICK"]),
    ("MICHELLE", &["SHELLY", "MICHE"]),
    ("NATHAN", &["NATE"]),
    ("NATHANIEL", &["NATE", "NAT"]),
    ("NICHOLAS", &["NICK", "NICKY", "NICO"]),
    ("NICOLE", &["NIKKI", "NICKY"]),
    ("OLIVIA", &["LIV", "LIVVY"]),
    ("PAMELA", &["PAM"]),
    ("PATRICIA", &["PAT", "PATTY", "TRISH", "TRICIA"]),
    ("PATRICK", &["PAT", "PADDY"]),
    ("PETER", &["PETE"]),
    ("PHILIP", &["PHIL"]),
    ("RACHEL", &["RACHIE"]),
    ("RAYMOND", &["RAY"]),
    ("REBECCA", &["BECKY", "BECCA"]),
    ("RICHARD", &["RICK", "RICKY", "DICK", "RICH", "RICHIE"]),
    ("ROBERT", &["BOB", "ROB", "BOBBY", "ROBBIE", "BERT"]),
    ("RONALD", &["RON", "RONNIE"]),
    ("SAMANTHA", &["SAM", "SAMMY"]),
    ("SAMUEL", &["SAM", "SAMMY"]),
    ("SANDRA", &["SANDY"]),
    ("STEPHANIE", &["STEPH"]),
    ("STEPHEN", &["STEVE", "STEVIE"]),
    ("STEVEN", &["STEVE", "STEVIE"]),
    ("SUSAN", &["SUE", "SUSIE", "SUZY"]),
    ("THEODORE", &["TED", "TEDDY", "THEO"]),
    ("THOMAS", &["TOM", "TOMMY"]),
    ("TIMOTHY", &["TIM", "TIMMY"]),
    ("VICTORIA", &["VICKY", "TORI"]),
    ("VINCENT", &["VINCE", "VINNY"]),
    ("VIRGINIA", &["GINNY", "GINGER"]),
    ("WALTER", &["WALT", "WALLY"]),
    (
        "WILLIAM",
        &["BILL", "BILLY", "WILL", "WILLIE", "LIAM", "WILLY"],
    ),
    ("ZACHARY", &["ZACH", "ZACK"]),
];

/// Name → indexes of the groups it belongs to (as formal name or as nickname).
fn index() -> &'static Index {
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut map = Index::default();
        for (i, (formal, nicks)) in NICKNAMES.iter().enumerate() {
            // The table has far fewer than 65,536 groups; the cast cannot truncate.
            let group = i as u16;
            for name in std::iter::once(formal).chain(nicks.iter()) {
                let groups = map.entry(*name).or_default();
                if !groups.contains(&group) {
                    groups.push(group);
                }
            }
        }
        map
    })
}

/// Whether `a` and `b` are different names that the table links (share a group).
/// Both must be uppercase single names.
pub fn are_nicknames(a: &str, b: &str) -> bool {
    if a == b {
        return false;
    }
    let idx = index();
    match (idx.get(a), idx.get(b)) {
        (Some(ga), Some(gb)) => ga.iter().any(|g| gb.contains(g)),
        _ => false,
    }
}

/// Number of (formal, nickname) pairs in the table.
#[cfg(test)]
pub fn pair_count() -> usize {
    NICKNAMES.iter().map(|(_, n)| n.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_large_and_clean() {
        assert!(pair_count() >= 150, "only {} pairs", pair_count());
        for (formal, nicks) in NICKNAMES {
            for n in std::iter::once(formal).chain(nicks.iter()) {
                assert!(
                    n.bytes().all(|b| b.is_ascii_uppercase()),
                    "{n} is not uppercase ASCII"
                );
            }
            assert!(!nicks.contains(formal), "{formal} lists itself");
        }
    }

    #[test]
    fn links_nickname_to_formal_and_siblings() {
        assert!(are_nicknames("BILL", "WILLIAM"));
        assert!(are_nicknames("WILLIAM", "LIAM"));
        assert!(are_nicknames("BILL", "WILL"));
        assert!(are_nicknames("PEGGY", "MARGARET"));
        assert!(are_nicknames("ALEX", "ALEXANDRA"));
        assert!(are_nicknames("ALEX", "ALEXANDER"));
        assert!(are_nicknames("JACK", "JOHN"));
    }

    #[test]
    fn unrelated_or_identical_names_are_not_nicknames() {
        assert!(!are_nicknames("WILLIAM", "WILLIAM"));
        assert!(!are_nicknames("BILL", "ROBERT"));
        assert!(!are_nicknames("ALEXANDER", "ALEXANDRA"));
        assert!(!are_nicknames("ZZZ", "WILLIAM"));
    }
}
