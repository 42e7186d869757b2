//! Allocation-free string primitives for the hot path: American Soundex as a 4-byte code, a
//! bounded optimal-string-alignment (restricted Damerau–Levenshtein) distance on the stack, a
//! stable FNV-1a 64 hasher, and a word tokenizer.
//!
//! `score` runs millions of times in the simulated IIS, so these avoid the heap; the
//! rphonetic/strsim crates are the reference they are tested against.

/// American Soundex code (letter + 3 digits) of the ASCII letters of `s`, or `None` when `s` has
/// no ASCII letter. Same algorithm as `rphonetic::Soundex::default()` (H and W are transparent,
/// vowels separate equal codes).
pub fn soundex(s: &str) -> Option<[u8; 4]> {
    const MAP: &[u8; 26] = b"01230120022455012623010202";
    let mut letters = s
        .bytes()
        .filter(u8::is_ascii_alphabetic)
        .map(|b| b.to_ascii_uppercase());
    let first = letters.next()?;
    let mut code = [first, b'0', b'0', b'0'];
    let mut count = 1;
    let mut previous = MAP[usize::from(first - b'A')];
    for ch in letters {
        if count == 4 {
            break;
        }
        if ch == b'H' || ch == b'W' {
            continue;
        }
        let digit = MAP[usize::from(ch - b'A')];
        if digit != b'0' && digit != previous {
            code[count] = digit;
            count += 1;
        }
        previous = digit;
    }
    Some(code)
}

const MAX_STACK: usize = 48;

/// Optimal string alignment distance between `a` and `b` (byte-wise; inputs are normalized
/// ASCII), or `None` when it is greater than `max`. A letter-count lower bound rejects most
/// unrelated pairs before the dynamic program runs. Strings longer than 48 bytes fall back to
/// `strsim::osa_distance`.
pub fn osa_within(a: &str, b: &str, max: usize) -> Option<usize> {
    if a.len().abs_diff(b.len()) > max {
        return None;
    }
    // Every edit changes the byte histogram's L1 distance by at most 2, so L1/2 is a lower bound.
    // Bucketing by the low 5 bits merges some bytes, which only loosens the bound.
    let mut hist = [0i32; 32];
    for &c in a.as_bytes() {
        hist[usize::from(c & 31)] += 1;
    }
    for &c in b.as_bytes() {
        hist[usize::from(c & 31)] -= 1;
    }
    let l1: u32 = hist.iter().map(|h| h.unsigned_abs()).sum();
    if l1 as usize > 2 * max {
        return None;
    }
    let d = if a.len() > MAX_STACK || b.len() > MAX_STACK {
        strsim::osa_distance(a, b)
    } else {
        osa_stack(a.as_bytes(), b.as_bytes())
    };
    (d <= max).then_some(d)
}

fn osa_stack(a: &[u8], b: &[u8]) -> usize {
    let m = b.len();
    // Three rolling rows (two back, previous, current), selected by index to avoid copies.
    let mut rows = [[0u16; MAX_STACK + 1]; 3];
    for (j, cell) in rows[1].iter_mut().enumerate().take(m + 1) {
        // j ≤ 48: fits u16.
        *cell = j as u16;
    }
    let (mut two, mut prev, mut cur) = (0usize, 1usize, 2usize);
    for i in 0..a.len() {
        rows[cur][0] = (i + 1) as u16;
        for j in 0..m {
            let cost = u16::from(a[i] != b[j]);
            let mut v = (rows[cur][j] + 1)
                .min(rows[prev][j + 1] + 1)
                .min(rows[prev][j] + cost);
            if i > 0 && j > 0 && a[i] != b[j] && a[i] == b[j - 1] && a[i - 1] == b[j] {
                v = v.min(rows[two][j - 1] + 1);
            }
            rows[cur][j + 1] = v;
        }
        (two, prev, cur) = (prev, cur, two);
    }
    usize::from(rows[prev][m])
}

/// Whether two equal-length byte strings differ in exactly one position.
pub fn one_substitution(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).filter(|(x, y)| x != y).count() == 1
}

/// Whether two equal-length byte strings differ only by one swap of adjacent, different bytes.
pub fn adjacent_transposition(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) else {
        return false;
    };
    i + 1 < a.len() && a[i] == b[i + 1] && a[i + 1] == b[i] && a[i + 2..] == b[i + 2..]
}

/// FNV-1a, 64 bit: stable across runs, platforms and Rust versions (unlike `DefaultHasher`).
#[derive(Clone, Copy, Debug)]
pub struct Fnv64(u64);

impl Fnv64 {
    pub const fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
    pub fn bytes(mut self, bytes: &[u8]) -> Self {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }
    pub fn byte(self, b: u8) -> Self {
        self.bytes(&[b])
    }
    pub fn u32(self, v: u32) -> Self {
        self.bytes(&v.to_le_bytes())
    }
    pub fn finish(self) -> u64 {
        self.0
    }
}

impl std::hash::Hasher for Fnv64 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        *self = self.bytes(bytes);
    }
}

impl Default for Fnv64 {
    fn default() -> Self {
        Self::new()
    }
}

/// Words of an uppercase text: maximal runs of ASCII letters/digits; `#` is a word of its own.
pub fn words(s: &str) -> impl Iterator<Item = &str> {
    let bytes = s.as_bytes();
    let mut pos = 0;
    std::iter::from_fn(move || {
        while pos < bytes.len() && !(bytes[pos].is_ascii_alphanumeric() || bytes[pos] == b'#') {
            pos += 1;
        }
        if pos >= bytes.len() {
            return None;
        }
        let start = pos;
        if bytes[pos] == b'#' {
            pos += 1;
        } else {
            while pos < bytes.len() && bytes[pos].is_ascii_alphanumeric() {
                pos += 1;
            }
        }
        s.get(start..pos)
    })
}

/// Up to `N` items collected on the stack; extra items are dropped.
pub struct StackVec<T: Copy + Default, const N: usize> {
    items: [T; N],
    len: usize,
}

impl<T: Copy + Default, const N: usize> StackVec<T, N> {
    pub fn new() -> Self {
        StackVec {
            items: [T::default(); N],
            len: 0,
        }
    }
    pub fn push(&mut self, item: T) {
        if self.len < N {
            self.items[self.len] = item;
            self.len += 1;
        }
    }
    pub fn as_slice(&self) -> &[T] {
        &self.items[..self.len]
    }
}

impl<T: Copy + Default, const N: usize> Default for StackVec<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rphonetic::Encoder;

    #[test]
    fn soundex_matches_rphonetic() {
        let reference = rphonetic::Soundex::default();
        for name in [
            "ROBERT",
            "RUPERT",
            "RUBIN",
            "ASHCRAFT",
            "ASHCROFT",
            "TYMCZAK",
            "PFISTER",
            "HONEYMAN",
            "SMITH",
            "SMYTHE",
            "SCHMIDT",
            "JOHNSON",
            "JONSON",
            "LEE",
            "A",
            "WASHINGTON",
            "GUTIERREZ",
            "OCONNOR",
            "MCDONALD",
            "SMITH-JONES",
        ] {
            let mine = soundex(name).map(|c| String::from_utf8_lossy(&c).into_owned());
            assert_eq!(
                mine.as_deref(),
                Some(reference.encode(name).as_str()),
                "{name}"
            );
        }
        assert_eq!(soundex("123 -"), None);
        assert_eq!(soundex("Robert"), soundex("ROBERT"));
    }

    #[test]
    fn osa_matches_strsim() {
        let pairs = [
            ("SMITH", "SMIHT"),
            ("SMITH", "SMYTH"),
            ("JOHNSON", "JONSON"),
            ("CA", "ABC"),
            ("", "ABC"),
            ("KATHERINE", "CATHERINE"),
            ("MARTHA", "MARHTA"),
            ("GONZALEZ", "GONZALES"),
            ("ABCDEF", "FEDCBA"),
            ("WILLIAMS", "WILIAMS"),
        ];
        for (a, b) in pairs {
            let want = strsim::osa_distance(a, b);
            assert_eq!(osa_within(a, b, 10), Some(want), "{a} / {b}");
            assert_eq!(osa_within(b, a, 10), Some(want), "{b} / {a}");
        }
        assert_eq!(osa_within("SMITH", "SMITHSONIAN", 2), None);
        assert_eq!(osa_within("SMITH", "JONES", 2), None);
        let long_a = "A".repeat(60);
        let long_b = format!("{}B", "A".repeat(59));
        assert_eq!(osa_within(&long_a, &long_b, 1), Some(1));
    }

    #[test]
    fn digit_edits() {
        assert!(one_substitution(b"20100513", b"20100518"));
        assert!(!one_substitution(b"20100513", b"20100513"));
        assert!(!one_substitution(b"20100513", b"20100581"));
        assert!(adjacent_transposition(b"20100513", b"20100531"));
        assert!(!adjacent_transposition(b"20100513", b"20100513"));
        assert!(!adjacent_transposition(b"12345", b"21354"));
    }

    #[test]
    fn fnv_is_the_published_function() {
        // Reference values of FNV-1a 64.
        assert_eq!(Fnv64::new().finish(), 0xcbf2_9ce4_8422_2325);
        assert_eq!(Fnv64::new().bytes(b"a").finish(), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            Fnv64::new().bytes(b"foobar").finish(),
            0x8594_4171_f739_67e8
        );
    }

    #[test]
    fn words_split_on_punctuation_and_hash() {
        let w: Vec<&str> = words("123 MAIN ST, APT#4-B").collect();
        assert_eq!(w, ["123", "MAIN", "ST", "APT", "#", "4", "B"]);
        assert_eq!(words("  ").count(), 0);
    }

    #[test]
    fn stack_vec_drops_overflow() {
        let mut v: StackVec<u8, 2> = StackVec::new();
        v.push(1);
        v.push(2);
        v.push(3);
        assert_eq!(v.as_slice(), &[1, 2]);
    }
}
