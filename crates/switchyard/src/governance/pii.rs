//! The PII guardrail: finds emails, phone numbers, payment cards (Luhn), IBANs (mod 97),
//! US social security numbers and custom patterns in prompt text, and redacts them with
//! typed placeholders (`[EMAIL_1]`, `[CARD_2]`…).
//!
//! Each detector is a cheap regular expression for candidates followed by a validator
//! that rejects look-alikes (order numbers, dates, prices, version strings): cards must
//! pass Luhn and start with a known issuer prefix, IBANs must have their country's length
//! and a valid mod-97 check, SSNs exclude never-issued areas and groups, and phone numbers
//! need either a `+country` form or the grouped shapes people write phone numbers in.
//! Precision and recall on `pii_corpus.tsv` are checked by a test and quoted in the README.

use std::borrow::Borrow;
use std::collections::HashMap;

use regex::Regex;

/// One kind of PII, named as in its placeholder.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PiiLabel(pub String);

/// A finding: byte range in the scanned text and its label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub start: usize,
    pub end: usize,
    pub label: &'static str,
    /// Index into the custom patterns, for custom findings.
    pub custom: Option<usize>,
}

pub struct PiiDetector {
    email: Regex,
    card: Regex,
    iban: Regex,
    ssn: Regex,
    ssn_bare: Regex,
    phone_intl: Regex,
    phone_nanp: Regex,
    phone_national: Regex,
    custom: Vec<(String, Regex)>,
}

impl std::fmt::Debug for PiiDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiiDetector")
            .field(
                "custom",
                &self.custom.iter().map(|c| &c.0).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn re(pattern: &str) -> Regex {
    // The built-in patterns are constants covered by the tests.
    #[allow(clippy::expect_used)]
    Regex::new(pattern).expect("built-in PII pattern compiles")
}

impl PiiDetector {
    /// `custom`: (label, pattern) pairs; the label becomes the placeholder's name
    /// (upper-cased). Fails with the offending label when a pattern does not compile.
    pub fn new(custom: &[(String, String)]) -> Result<PiiDetector, (usize, String)> {
        let mut compiled = Vec::with_capacity(custom.len());
        for (i, (label, pattern)) in custom.iter().enumerate() {
            let r = Regex::new(pattern).map_err(|e| (i, e.to_string()))?;
            compiled.push((label.to_ascii_uppercase(), r));
        }
        Ok(PiiDetector::with_custom(compiled))
    }

    fn with_custom(custom: Vec<(String, Regex)>) -> PiiDetector {
        // Digits are ASCII `[0-9]`, never `\d`: `\d` also matches other scripts'
        // digits (Arabic-Indic, Devanagari…), which are several bytes each, while the
        // validators below read a match byte by byte as ASCII digits.
        PiiDetector {
            email: re(
                r"(?i)\b[a-z0-9][a-z0-9._%+-]{0,63}@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24}\b",
            ),
            card: re(r"\b[0-9](?:[ -]?[0-9]){12,18}\b"),
            iban: re(r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b"),
            ssn: re(r"\b([0-9]{3})-([0-9]{2})-([0-9]{4})\b"),
            ssn_bare: re(
                r"(?i)\b(?:ssn|social security(?: number| no\.?)?)\s*(?:is|:|#)?\s*([0-9]{9})\b",
            ),
            phone_intl: re(r"\+[0-9]{1,3}(?:[ .-]?\(?[0-9]{1,5}\)?){2,6}"),
            phone_nanp: re(
                r"(?:\b1[-. ])?(?:\([0-9]{3}\) ?|\b[0-9]{3}[-. ])[0-9]{3}[-. ][0-9]{4}\b",
            ),
            phone_national: re(r"\b0[0-9]{2,4}[ -][0-9]{3,4}[ -]?[0-9]{3,4}\b"),
            custom,
        }
    }

    /// The built-in detectors only.
    pub fn builtin() -> PiiDetector {
        PiiDetector::with_custom(Vec::new())
    }

    /// The custom labels, in configuration order.
    pub fn custom_labels(&self) -> impl Iterator<Item = &str> {
        self.custom.iter().map(|(l, _)| l.as_str())
    }

    /// Non-overlapping findings in `text`, in order.
    pub fn find(&self, text: &str) -> Vec<Finding> {
        let mut out: Vec<Finding> = Vec::new();
        for (i, (_, r)) in self.custom.iter().enumerate() {
            for m in r.find_iter(text) {
                if !m.is_empty() {
                    out.push(Finding {
                        start: m.start(),
                        end: m.end(),
                        label: "",
                        custom: Some(i),
                    });
                }
            }
        }
        let bytes = text.as_bytes();
        let has_digit = bytes.iter().any(u8::is_ascii_digit);
        if bytes.contains(&b'@') {
            for m in self.email.find_iter(text) {
                out.push(found(m.start(), m.end(), "EMAIL"));
            }
        }
        if !has_digit {
            return settle_overlaps(out);
        }
        for m in self.iban.find_iter(text) {
            if let Some(end) = iban_end(text, m.start(), m.end()) {
                out.push(found(m.start(), end, "IBAN"));
            }
        }
        for m in self.card.find_iter(text) {
            if is_card(m.as_str()) && !glued(bytes, m.start(), m.end()) {
                out.push(found(m.start(), m.end(), "CARD"));
            }
        }
        for c in self.ssn.captures_iter(text) {
            let (Some(all), Some(a), Some(g), Some(s)) = (c.get(0), c.get(1), c.get(2), c.get(3))
            else {
                continue;
            };
            if ssn_valid(a.as_str(), g.as_str(), s.as_str())
                && !glued(bytes, all.start(), all.end())
            {
                out.push(found(all.start(), all.end(), "SSN"));
            }
        }
        for c in self.ssn_bare.captures_iter(text) {
            let Some(n) = c.get(1) else {
                continue;
            };
            let s = n.as_str();
            if let (Some(area), Some(group), Some(serial)) = (s.get(..3), s.get(3..5), s.get(5..)) {
                if ssn_valid(area, group, serial) {
                    out.push(found(n.start(), n.end(), "SSN"));
                }
            }
        }
        for m in self.phone_intl.find_iter(text) {
            let digits = m.as_str().bytes().filter(u8::is_ascii_digit).count();
            let end = trim_phone_end(text, m.start(), m.end());
            if (8..=15).contains(&digits) && !glued(bytes, m.start(), end) {
                out.push(found(m.start(), end, "PHONE"));
            }
        }
        for m in self.phone_nanp.find_iter(text) {
            if nanp_valid(m.as_str()) && !glued(bytes, m.start(), m.end()) {
                out.push(found(m.start(), m.end(), "PHONE"));
            }
        }
        for m in self.phone_national.find_iter(text) {
            let digits = m.as_str().bytes().filter(u8::is_ascii_digit).count();
            if (10..=11).contains(&digits) && !glued(bytes, m.start(), m.end()) {
                out.push(found(m.start(), m.end(), "PHONE"));
            }
        }
        settle_overlaps(out)
    }

    /// The placeholder name of a finding.
    pub fn label_of<'a>(&'a self, f: &'a Finding) -> &'a str {
        match f.custom {
            Some(i) => self.custom.get(i).map_or("CUSTOM", |(l, _)| l.as_str()),
            None => f.label,
        }
    }
}

fn found(start: usize, end: usize, label: &'static str) -> Finding {
    Finding {
        start,
        end,
        label,
        custom: None,
    }
}

/// Keeps the earliest of overlapping findings (the longest when they start together).
fn settle_overlaps(mut v: Vec<Finding>) -> Vec<Finding> {
    v.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    let mut out: Vec<Finding> = Vec::with_capacity(v.len());
    for f in v {
        if out.last().is_none_or(|last| f.start >= last.end) {
            out.push(f);
        }
    }
    out
}

/// Whether a number is glued to surrounding identifier characters (`#`, `-`, `/`, `.`
/// followed by a digit, letters): then it is part of an order number, a path, a date or
/// a version, not a free-standing card or phone number.
fn glued(text: &[u8], start: usize, end: usize) -> bool {
    let before = start.checked_sub(1).and_then(|i| text.get(i)).copied();
    let after = text.get(end).copied();
    let after2 = text.get(end + 1).copied();
    let bad_before = matches!(before, Some(b'#' | b'-' | b'/' | b'_' | b'.' | b'=' | b':'))
        || before.is_some_and(|b| b.is_ascii_alphanumeric());
    let bad_after = matches!(after, Some(b'-' | b'/' | b'_'))
        || after.is_some_and(|b| b.is_ascii_alphanumeric())
        || (matches!(after, Some(b'.' | b',')) && after2.is_some_and(|b| b.is_ascii_digit()));
    bad_before || bad_after
}

fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// 13–19 digits, grouped as cards are printed (no separators, or single spaces or
/// dashes between groups of four, or Amex's 4-6-5), a known issuer prefix, and Luhn.
fn is_card(s: &str) -> bool {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_digit).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let seps: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_digit()).collect();
    if let Some(&first) = seps.first() {
        if seps.iter().any(|&c| c != first) {
            return false;
        }
        let groups: Vec<usize> = s.split(first as char).map(str::len).collect();
        // 4-4-4-4(-3), 4-4-4-3, and Amex/Diners 4-6-5 / 4-6-4; a short tail group
        // (`… 0130 01`) is an account number's, not a card's.
        let wide = matches!(groups.as_slice(), [4, 6, _]);
        let fours = groups.iter().take(groups.len() - 1).all(|&g| g == 4);
        if !(wide || fours) || groups.last().is_some_and(|&g| g < 3) {
            return false;
        }
    }
    let prefix = |n: usize| -> u32 {
        digits
            .iter()
            .take(n)
            .fold(0, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    let known = match digits.first() {
        Some(b'4') => true,                                                  // Visa
        Some(b'5') => (51..=55).contains(&prefix(2)),                        // Mastercard
        Some(b'2') => (2221..=2720).contains(&prefix(4)),                    // Mastercard 2-series
        Some(b'3') => matches!(prefix(2), 34 | 37 | 35 | 36 | 38 | 39 | 30), // Amex, JCB, Diners
        Some(b'6') => {
            prefix(4) == 6011
                || prefix(2) == 65
                || (644..=649).contains(&prefix(3))
                || prefix(2) == 62
        } // Discover, UnionPay
        _ => false,
    };
    known && luhn(&digits)
}

/// IBAN lengths by country (the SWIFT registry).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BR", 29),
    ("BY", 28),
    ("CH", 21),
    ("CR", 22),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DK", 18),
    ("DO", 28),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GI", 23),
    ("GL", 18),
    ("GR", 27),
    ("GT", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IQ", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LC", 32),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MK", 19),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("NL", 18),
    ("NO", 15),
    ("PK", 24),
    ("PL", 28),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("RS", 22),
    ("SA", 24),
    ("SC", 31),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("ST", 25),
    ("SV", 28),
    ("TL", 23),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VA", 22),
    ("VG", 24),
    ("XK", 20),
];

/// Where a valid IBAN starting at `start` ends, within the candidate `start..end`: the
/// candidate may run on into a following upper-case word, so the country's length decides.
fn iban_end(text: &str, start: usize, end: usize) -> Option<usize> {
    let cand = text.get(start..end)?;
    let want = IBAN_LENGTHS
        .iter()
        .find(|(c, _)| cand.starts_with(c))
        .map(|&(_, n)| n)?;
    let mut chars = String::with_capacity(want);
    let mut cut = None;
    for (i, c) in cand.char_indices() {
        if c == ' ' {
            continue;
        }
        chars.push(c);
        if chars.len() == want {
            cut = Some(i + c.len_utf8());
            break;
        }
    }
    let cut = cut?;
    // The IBAN must end at a word boundary, not inside a group.
    if text
        .get(start + cut..)?
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return None;
    }
    // Mod 97 of the rearranged digits (letters as 10..35) must be 1.
    let rearranged = chars.get(4..)?.chars().chain(chars.get(..4)?.chars());
    let mut rem = 0u32;
    for c in rearranged {
        let v = c.to_digit(36)?;
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    (rem == 1).then_some(start + cut)
}

/// Areas 000, 666 and 900–999, group 00 and serial 0000 were never issued.
fn ssn_valid(area: &str, group: &str, serial: &str) -> bool {
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

/// NANP: area code and exchange start with 2–9; separators consistent.
fn nanp_valid(s: &str) -> bool {
    let mut digits: Vec<u8> = s.bytes().filter(u8::is_ascii_digit).collect();
    if digits.len() == 11 && digits.first() == Some(&b'1') {
        digits.remove(0);
    }
    let [area, _, _, exchange, ..] = digits.as_slice() else {
        return false;
    };
    if digits.len() != 10 || *area < b'2' || *exchange < b'2' {
        return false;
    }
    if s.contains('(') {
        return true;
    }
    let seps: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_digit()).collect();
    seps.first()
        .is_none_or(|first| seps.iter().all(|c| c == first))
}

/// An international match may swallow a trailing separator; end on a digit.
fn trim_phone_end(text: &str, start: usize, end: usize) -> usize {
    let b = text.as_bytes();
    let mut e = end;
    while e > start && !b.get(e - 1).is_some_and(u8::is_ascii_digit) {
        e -= 1;
    }
    e
}

/// Redacts texts of one request, numbering placeholders per type across all of them:
/// the same value gets the same placeholder everywhere in the request.
///
/// `D` is how the detector is held: borrowed (`&PiiDetector`) for a request's prompt,
/// or shared (`Arc<PiiDetector>`) by a guard that outlives the borrow, such as one
/// checking a streamed answer.
pub struct Redactor<D> {
    detector: D,
    seen: HashMap<(String, String), usize>,
    next: HashMap<String, usize>,
    /// Findings per label, in first-seen order.
    pub counts: Vec<(String, usize)>,
}

impl<D: Borrow<PiiDetector>> Redactor<D> {
    pub fn new(detector: D) -> Redactor<D> {
        Redactor {
            detector,
            seen: HashMap::new(),
            next: HashMap::new(),
            counts: Vec::new(),
        }
    }

    /// The detector this redactor uses.
    pub fn detector(&self) -> &PiiDetector {
        self.detector.borrow()
    }

    /// Counts one finding of `label` (for [`Redactor::summary`]).
    pub fn count(&mut self, label: &str) {
        match self.counts.iter_mut().find(|(l, _)| l == label) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((label.to_owned(), 1)),
        }
    }

    /// Counts the findings in `text` without changing it.
    pub fn scan(&mut self, text: &str) {
        let detector = self.detector.borrow();
        let labels: Vec<String> = detector
            .find(text)
            .iter()
            .map(|f| detector.label_of(f).to_owned())
            .collect();
        for label in labels {
            self.count(&label);
        }
    }

    /// The placeholder of finding `f`, whose text is `value`, counting it: `[EMAIL_2]`.
    /// The same label and value always get the same number.
    pub fn placeholder(&mut self, f: &Finding, value: &str) -> String {
        let label = self.detector.borrow().label_of(f).to_owned();
        self.count(&label);
        let n = match self.seen.get(&(label.clone(), value.to_owned())) {
            Some(&n) => n,
            None => {
                let n = self.next.entry(label.clone()).or_insert(0);
                *n += 1;
                let n = *n;
                self.seen.insert((label.clone(), value.to_owned()), n);
                n
            }
        };
        format!("[{label}_{n}]")
    }

    /// `text` with every finding replaced, or `None` when there was nothing to replace.
    pub fn redact(&mut self, text: &str) -> Option<String> {
        let findings = self.detector.borrow().find(text);
        if findings.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in &findings {
            // Findings are regex match bounds, so on char boundaries; a finding that is
            // not would be skipped rather than sliced.
            let (Some(before), Some(value)) = (text.get(at..f.start), text.get(f.start..f.end))
            else {
                continue;
            };
            let placeholder = self.placeholder(f, value);
            out.push_str(before);
            out.push_str(&placeholder);
            at = f.end;
        }
        out.push_str(text.get(at..).unwrap_or_default());
        Some(out)
    }

    /// `EMAIL=2,PHONE=1`, or `None` when nothing was found.
    pub fn summary(&self) -> Option<String> {
        if self.counts.is_empty() {
            return None;
        }
        Some(
            self.counts
                .iter()
                .map(|(l, n)| format!("{l}={n}"))
                .collect::<Vec<_>>()
                .join(","),
        )
    }
}

#[cfg(test)]
mod tests;
