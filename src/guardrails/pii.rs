//! Personal data detectors for `block_pii`: e-mail addresses, US social security numbers and
//! payment card numbers.
//!
//! These are validators, not a regex engine: each scans the text once, byte by byte (e-mail
//! jumps between `@` with memchr), without allocating, and then applies the checks a regex
//! cannot express (SSN area/group/serial exclusions, the Luhn checksum). They work on ASCII;
//! a text in another script simply has no ASCII digits or `@` to look at.
//!
//! What counts:
//! - **email**: `local@domain.tld` with local part `[A-Za-z0-9._%+-]+`, domain
//!   `[A-Za-z0-9.-]+` and a final label of at least two letters (the original gateway's rule).
//! - **ssn**: `AAA-GG-SSSS` (dashes or single spaces, the same separator twice) on word
//!   boundaries, excluding area 000, 666 and 900-999, group 00 and serial 0000, which the SSA
//!   never issues. Nine bare digits are not reported: too many other numbers look like that.
//! - **card**: 13 to 19 digits, optionally grouped by single spaces or dashes, on word
//!   boundaries, starting with 2-6 (every major network: Mastercard 2-series and 5, Amex,
//!   Diners and JCB 3, Visa 4, Discover, UnionPay and Maestro 6), grouped in groups of at
//!   least 3 digits, and passing the Luhn check. The leading-digit and group rules keep 13-digit
//!   millisecond timestamps and lists of small numbers out; an id of 13-19 digits that starts
//!   with 2-6 still passes Luhn one time in ten, the price of not missing real cards.

/// The kind of personal data found; its name is the reason suffix (`pii:email`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pii {
    Email,
    Ssn,
    Card,
}

impl Pii {
    /// `email`, `ssn` or `card`.
    pub fn as_str(self) -> &'static str {
        match self {
            Pii::Email => "email",
            Pii::Ssn => "ssn",
            Pii::Card => "card",
        }
    }
}

/// The first kind of personal data in `text`: an e-mail address anywhere wins, then whichever
/// of SSN and card number comes first.
pub fn find_pii(text: &str) -> Option<Pii> {
    let b = text.as_bytes();
    if has_email(b) {
        return Some(Pii::Email);
    }
    find_number(b)
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn is_local(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-')
}

fn has_email(b: &[u8]) -> bool {
    for at in memchr::memchr_iter(b'@', b) {
        if at == 0 || !is_local(b[at - 1]) {
            continue;
        }
        let start = at + 1;
        let mut end = start;
        while end < b.len() && is_domain(b[end]) {
            end += 1;
        }
        // The address may end at the end of the domain run (if no word character is glued to
        // it) or at any `.`/`-` inside it ("mail a@b.com." ends at "com").
        let run_end_ok = end == b.len() || !is_word(b[end]);
        let mut k = end;
        while k > start {
            let ends_here = if k == end {
                run_end_ok
            } else {
                matches!(b[k], b'.' | b'-')
            };
            if ends_here && has_tld_before(&b[start..k]) {
                return true;
            }
            k -= 1;
        }
    }
    false
}

/// `domain` ends with `.` + two or more letters, with at least one character before the dot.
fn has_tld_before(domain: &[u8]) -> bool {
    let letters = domain
        .iter()
        .rev()
        .take_while(|c| c.is_ascii_alphabetic())
        .count();
    if letters < 2 || letters + 2 > domain.len() {
        return false;
    }
    domain[domain.len() - letters - 1] == b'.'
}

/// A run of digits inside a grouped number.
#[derive(Debug, Clone, Copy, Default)]
struct Group {
    start: usize,
    len: usize,
    /// The separator before this group (`0` for the first group of a run).
    sep: u8,
}

/// A card spans at most 19 digits, so at most 19 groups; an SSN 3. Older groups of a long run
/// ("1 2 3 4 ...") are dropped from this ring as new ones arrive.
const RING: usize = 20;

struct Run {
    groups: [Group; RING],
    /// Groups seen so far in this run (absolute count; the ring keeps the last `RING`).
    count: usize,
    /// The run's first digit is not glued to a preceding word character.
    first_ok: bool,
}

impl Run {
    fn get(&self, k: usize) -> Group {
        self.groups[k % RING]
    }
}

fn find_number(b: &[u8]) -> Option<Pii> {
    let n = b.len();
    let mut i = 0;
    while i < n {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let mut run = Run {
            groups: [Group::default(); RING],
            count: 0,
            first_ok: i == 0 || !is_word(b[i - 1]),
        };
        let mut sep = 0u8;
        loop {
            let start = i;
            while i < n && b[i].is_ascii_digit() {
                i += 1;
            }
            if run.count > 0 {
                // The previous group is followed by a separator: a boundary, so numbers may
                // end there.
                if let Some(p) = windows_ending_at(b, &run, run.count - 1) {
                    return Some(p);
                }
            }
            run.groups[run.count % RING] = Group {
                start,
                len: i - start,
                sep,
            };
            run.count += 1;
            if i + 1 < n && matches!(b[i], b' ' | b'-') && b[i + 1].is_ascii_digit() {
                sep = b[i];
                i += 1;
            } else {
                break;
            }
        }
        if i == n || !is_word(b[i]) {
            if let Some(p) = windows_ending_at(b, &run, run.count - 1) {
                return Some(p);
            }
        }
    }
    None
}

/// SSN or card numbers made of whole groups that end with group `last` (absolute index).
fn windows_ending_at(b: &[u8], run: &Run, last: usize) -> Option<Pii> {
    let may_start = |k: usize| k > 0 || run.first_ok;
    if last >= 2 && may_start(last - 2) {
        let (a, g, s) = (run.get(last - 2), run.get(last - 1), run.get(last));
        if a.len == 3 && g.len == 2 && s.len == 4 && g.sep == s.sep && is_ssn(b, a, g, s) {
            return Some(Pii::Ssn);
        }
    }
    let oldest = run.count.saturating_sub(RING);
    let mut digits = 0;
    let mut first = last;
    loop {
        let len = run.get(first).len;
        // Grouped card numbers come in groups of 3 or more digits (4-4-4-4, 4-6-5, ...); without
        // this, any 13 spaced single digits ("1 2 3 ...") would pass Luhn one time in ten.
        if first != last && (len < 3 || run.get(last).len < 3) {
            break;
        }
        digits += len;
        if digits > 19 || !may_start(first) {
            break;
        }
        if digits >= 13 && is_card(b, run, first, last, digits) {
            return Some(Pii::Card);
        }
        if first == 0 || first == oldest {
            break;
        }
        first -= 1;
    }
    None
}

fn number(b: &[u8], g: Group) -> u32 {
    b[g.start..g.start + g.len]
        .iter()
        .fold(0u32, |acc, c| acc * 10 + u32::from(c - b'0'))
}

fn is_ssn(b: &[u8], area: Group, group: Group, serial: Group) -> bool {
    let a = number(b, area);
    a != 0 && a != 666 && a < 900 && number(b, group) != 0 && number(b, serial) != 0
}

fn is_card(b: &[u8], run: &Run, first: usize, last: usize, digits: usize) -> bool {
    debug_assert!((13..=19).contains(&digits));
    if !(b'2'..=b'6').contains(&b[run.get(first).start]) {
        return false;
    }
    // Luhn: from the rightmost digit, double every second one.
    let mut sum = 0u32;
    let mut double = false;
    for k in (first..=last).rev() {
        let g = run.get(k);
        for &c in b[g.start..g.start + g.len].iter().rev() {
            let mut d = u32::from(c - b'0');
            if double {
                d *= 2;
                if d > 9 {
                    d -= 9;
                }
            }
            sum += d;
            double = !double;
        }
    }
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for yes in [
            "mail me at john.doe+x@example.com please",
            "a@b.co",
            "(x@y.example.org)",
            "end a@b.com.",
            "A_B%c@Sub-Domain.Example.IO",
            "x@a.b.cd-e",
        ] {
            assert_eq!(find_pii(yes), Some(Pii::Email), "{yes}");
        }
        for no in [
            "@user hi",
            "user@localhost",
            "a@b.c",
            "a@.com",
            "price: 5 @ 3.50",
            "a@b.comx_",
            "",
            "@",
            "x@",
        ] {
            assert_eq!(find_pii(no), None, "{no}");
        }
    }

    #[test]
    fn ssns_with_exclusions() {
        for yes in [
            "ssn 123-45-6789",
            "123 45 6789",
            "x:078-05-1120.",
            "1-123-45-6789",
        ] {
            assert_eq!(find_pii(yes), Some(Pii::Ssn), "{yes}");
        }
        for no in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "999-12-3456",
            "123-00-4567",
            "123-45-0000",
            "123-45 6789",
            "123456789",
            "a123-45-6789",
            "123-45-6789b",
            "1234-45-6789",
            "call 555-123-4567",
            "2024-01-15",
        ] {
            assert_eq!(find_pii(no), None, "{no}");
        }
    }

    #[test]
    fn cards_with_luhn() {
        for yes in [
            "4111111111111111",
            "card 4111 1111 1111 1111 exp 12/29",
            "5500-0000-0000-0004",
            "amex 3782 822463 10005",
            "6011111111111117",
            "4222222222222",               // 13-digit Visa
            "call 12 4111 1111 1111 1111", // a preceding number does not hide it
            "4111 1111 1111 1111 2024",    // nor a following one
            "4111111111111111.",
        ] {
            assert_eq!(find_pii(yes), Some(Pii::Card), "{yes}");
        }
        for no in [
            "4111111111111112", // Luhn fails
            "1700000000000",    // timestamp: leading 1
            "0000000000000000",
            "41111111111111111111", // 20 digits
            "x4111111111111111",
            "4111111111111111y",
            "4111  1111 1111 1111", // double space breaks the grouping
            "411111111111",         // 12 digits
            "4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1", // single-digit groups
        ] {
            assert_eq!(find_pii(no), None, "{no}");
        }
    }

    #[test]
    fn long_runs_of_small_numbers_are_bounded_and_still_scanned() {
        let mut s = String::new();
        for i in 0..10_000 {
            s.push_str(&format!("{} ", i % 10));
        }
        assert_eq!(find_pii(&s), None);
        s.push_str("4111 1111 1111 1111");
        assert_eq!(find_pii(&s), Some(Pii::Card));
    }

    #[test]
    fn never_panics_on_odd_text() {
        for t in [
            "9",
            "-",
            "1-",
            "1 ",
            "@@@",
            "é@ü.de",
            "\u{0}1-2",
            "99999999999999999999999",
        ] {
            let _ = find_pii(t);
        }
    }
}
