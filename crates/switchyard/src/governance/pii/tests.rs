use std::collections::HashMap;

use super::*;

fn detector() -> PiiDetector {
    PiiDetector::new(&[]).expect("built-ins compile")
}

/// Entity-level scores over `pii_corpus.tsv`: a detected label counts as a true positive
/// when the line expects that label (as many times as it expects it).
#[derive(Debug, Default)]
pub(crate) struct Scores {
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
    pub misses: Vec<String>,
}

impl Scores {
    pub fn precision(&self) -> f64 {
        self.tp as f64 / (self.tp + self.fp).max(1) as f64
    }
    pub fn recall(&self) -> f64 {
        self.tp as f64 / (self.tp + self.fn_).max(1) as f64
    }
}

pub(crate) fn score_corpus(d: &PiiDetector) -> Scores {
    let corpus = include_str!("../pii_corpus.tsv");
    let mut s = Scores::default();
    for line in corpus
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (labels, text) = line.split_once('\t').expect("LABELS<TAB>TEXT");
        let mut want: HashMap<&str, usize> = HashMap::new();
        for l in labels.split(',').filter(|l| *l != "-") {
            *want.entry(l).or_default() += 1;
        }
        let mut got: HashMap<String, usize> = HashMap::new();
        for f in d.find(text) {
            *got.entry(d.label_of(&f).to_owned()).or_default() += 1;
        }
        for (label, &n) in &got {
            let w = want.get(label.as_str()).copied().unwrap_or(0);
            s.tp += n.min(w);
            if n > w {
                s.fp += n - w;
                s.misses.push(format!("false positive {label}: {text}"));
            }
        }
        for (label, &w) in &want {
            let n = got.get(*label).copied().unwrap_or(0);
            if w > n {
                s.fn_ += w - n;
                s.misses.push(format!("missed {label}: {text}"));
            }
        }
    }
    s
}

#[test]
fn corpus_precision_and_recall() {
    let s = score_corpus(&detector());
    println!(
        "PII corpus: {} true positives, {} false positives, {} missed; precision {:.3}, recall {:.3}",
        s.tp,
        s.fp,
        s.fn_,
        s.precision(),
        s.recall()
    );
    for m in &s.misses {
        println!("  {m}");
    }
    assert!(s.tp >= 60, "the corpus has its positives: {s:?}");
    assert!(
        s.precision() >= 0.97,
        "precision {:.3}: {:#?}",
        s.precision(),
        s.misses
    );
    assert!(
        s.recall() >= 0.95,
        "recall {:.3}: {:#?}",
        s.recall(),
        s.misses
    );
}

#[test]
fn redaction_numbers_placeholders_per_type_and_value() {
    let d = detector();
    let mut r = Redactor::new(&d);
    let a = r
        .redact("Mail a@example.com or b@example.com, card 4111 1111 1111 1111.")
        .expect("found");
    assert_eq!(a, "Mail [EMAIL_1] or [EMAIL_2], card [CARD_1].");
    // The same value in a later message keeps its placeholder.
    let b = r.redact("again: b@example.com").expect("found");
    assert_eq!(b, "again: [EMAIL_2]");
    assert_eq!(r.redact("nothing here, order 12345"), None);
    assert_eq!(r.summary().as_deref(), Some("EMAIL=3,CARD=1"));
}

#[test]
fn custom_patterns_get_their_own_placeholder() {
    let d = PiiDetector::new(&[("employee_id".into(), r"\bEMP-\d{6}\b".into())]).expect("ok");
    let mut r = Redactor::new(&d);
    assert_eq!(
        r.redact("EMP-123456 asked about EMP-654321").as_deref(),
        Some("[EMPLOYEE_ID_1] asked about [EMPLOYEE_ID_2]")
    );
    let bad = PiiDetector::new(&[("x".into(), "(".into())]).expect_err("bad regex");
    assert_eq!(bad.0, 0);
}

#[test]
fn validators_reject_look_alikes() {
    assert!(is_card("4111 1111 1111 1111"));
    assert!(!is_card("4111 1111 1111 1112")); // Luhn
    assert!(!is_card("4111-1111 1111-1111")); // mixed separators
    assert!(!is_card("41111 11111 111111")); // not grouped by four
    assert!(!is_card("9111111111111119")); // no issuer starts with 9
    assert!(ssn_valid("123", "45", "6789"));
    assert!(!ssn_valid("666", "45", "6789"));
    assert!(!ssn_valid("912", "45", "6789"));
    assert!(!ssn_valid("123", "00", "6789"));
    let t = "DE89 3704 0044 0532 0130 00 AND MORE";
    assert_eq!(iban_end(t, 0, t.len()), Some(27));
    let wrong = "DE89 3704 0044 0532 0130 01";
    assert_eq!(iban_end(wrong, 0, wrong.len()), None);
}

/// Digits of other scripts are several bytes each: none of them may reach a validator
/// that reads matches as ASCII (the IBAN, SSN and card checks once sliced them).
#[test]
fn non_ascii_digits_neither_panic_nor_count_as_digits() {
    let d = detector();
    let texts = [
        "account DE1٠12345678901234567 ok",
        "DE٨٩٣٧٠٤٠٠٤٤٠٥٣٢٠١٣٠٠٠",
        "SSN: ١٢٣٤٥٦٧٨٩",
        "ssn is ०१२३४५६७८",
        "card ٤١١١ ١١١١ ١١١١ ١١١١",
        "call +٤٤ ٢٠ ٧٩٤٦ ٠٠٠٠ now",
        "call (٢١٢) ٥٥٥-١٢٣٤",
        "tel 0٢٠ ٧٩٤٦ ٠٠٠٠",
        "mixed 4111١111111111111 and 123-45-٦789",
        "١٢٣-٤٥-٦٧٨٩",
    ];
    for text in texts {
        let _ = d.find(text);
        let mut r = Redactor::new(&d);
        assert_eq!(r.redact(text), None, "{text}");
    }
    // ASCII digits next to them are still found.
    let mut r = Redactor::new(&d);
    assert_eq!(
        r.redact("٣ SSN: 123-45-6789").as_deref(),
        Some("٣ SSN: [SSN_1]")
    );
}
