//! Output redaction: every delivered secret value in a guest's stdout/stderr becomes `***`.
//!
//! For each value of at least [`MIN_MASKED_LEN`] bytes the masked forms are: the value; each of
//! its lines of at least [`MIN_MASKED_LEN`] bytes (multi-line secrets such as PEM keys); its
//! standard base64 (RFC 4648 §4, padded and unpadded); its percent-encoding (RFC 3986, all but
//! unreserved characters encoded); and its JSON string escaping. Every byte covered by any
//! occurrence (overlapping ones included, Aho-Corasick) is masked, each run of masked bytes
//! becoming one `***`, on a stream: a value split across writes is still masked, because up to
//! twice the longest form is held back until more output or the end arrives. Cost is linear
//! in the output. Masking is best effort, like any CI runner's: a guest that transforms
//! a value in any other way (reverses it, prints it byte by byte with separators) is not
//! caught.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use zeroize::Zeroizing;

/// Values shorter than this (in bytes) are not masked: masking `ab` would mangle ordinary
/// output. The host warns about each one.
pub const MIN_MASKED_LEN: usize = 4;

/// What a masked value is replaced with.
pub const MASK: &[u8] = b"***";

/// RFC 3986 unreserved characters stay as they are; everything else is percent-encoded.
const URL_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Most bytes a pre-check may scan (forms × haystack bytes) before the automaton is built
/// instead: 1 MiB.
const PRECHECK_BUDGET: usize = 1 << 20;

/// The masked forms of a set of values, for one execution. Cheap to clone (shared).
///
/// The Aho-Corasick automaton over the forms is built on first need: while output is small
/// enough, each scan first looks for any form with a substring search (at most
/// [`PRECHECK_BUDGET`] bytes compared), and output that holds none is passed on without
/// building it. Most actions print no secret, and building the automaton is most of the
/// per-execution cost of masking (BENCHMARKS.md: `redact/automaton_3` vs `redact/patterns_3`).
#[derive(Clone)]
pub struct Patterns {
    inner: Option<std::sync::Arc<Forms>>,
    longest: usize,
}

struct Forms {
    forms: Vec<Zeroizing<Vec<u8>>>,
    matcher: std::sync::OnceLock<Option<AhoCorasick>>,
}

impl Patterns {
    /// Collects the masked forms of `values`; values shorter than [`MIN_MASKED_LEN`] are
    /// skipped (the caller warns about them).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut forms: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        let mut add = |form: &[u8]| {
            if form.len() >= MIN_MASKED_LEN && !forms.iter().any(|f| f.as_slice() == form) {
                forms.push(Zeroizing::new(form.to_vec()));
            }
        };
        for value in values {
            if value.len() < MIN_MASKED_LEN {
                continue;
            }
            add(value.as_bytes());
            for line in value.split('\n') {
                add(line.trim_end_matches('\r').as_bytes());
            }
            add(Zeroizing::new(STANDARD.encode(value)).as_bytes());
            add(Zeroizing::new(STANDARD_NO_PAD.encode(value)).as_bytes());
            add(Zeroizing::new(utf8_percent_encode(value, URL_ENCODE).to_string()).as_bytes());
            let json = Zeroizing::new(serde_json::Value::from(value).to_string());
            add(json[1..json.len() - 1].as_bytes());
        }
        let longest = forms.iter().map(|f| f.len()).max().unwrap_or(0);
        let inner = (!forms.is_empty()).then(|| {
            std::sync::Arc::new(Forms {
                forms,
                matcher: std::sync::OnceLock::new(),
            })
        });
        Self { inner, longest }
    }

    /// `true` when nothing is masked.
    pub fn is_empty(&self) -> bool {
        self.inner.is_none()
    }

    /// Masks everything in `bytes` at once (captured output).
    pub fn mask_all(&self, bytes: &[u8]) -> Vec<u8> {
        let mut stream = Stream::new(self.clone());
        let mut out = stream.push(bytes);
        out.extend(stream.finish());
        out
    }

    /// Every occurrence `(start, end)` of every form in `haystack`, overlapping ones
    /// included.
    fn occurrences(&self, haystack: &[u8]) -> Vec<(usize, usize)> {
        let Some(inner) = &self.inner else {
            return Vec::new();
        };
        let small = inner.forms.len().saturating_mul(haystack.len()) <= PRECHECK_BUDGET;
        if small
            && !inner
                .forms
                .iter()
                .any(|form| memchr::memmem::find(haystack, form).is_some())
        {
            return Vec::new();
        }
        let matcher = inner.matcher.get_or_init(|| {
            AhoCorasick::builder()
                // Standard semantics: every occurrence, overlapping ones included.
                .match_kind(MatchKind::Standard)
                // A DFA over long secrets is huge and slow to build; the noncontiguous NFA
                // builds fastest (BENCHMARKS.md: `redact/automaton_3`) and, like the
                // contiguous one, searches in time linear in the output.
                .kind(Some(AhoCorasickKind::NoncontiguousNFA))
                .build(inner.forms.iter().map(|f| f.as_slice()))
                .map_err(|e| tracing::warn!("output masking is off: {e}"))
                .ok()
        });
        match matcher {
            Some(m) => m
                .find_overlapping_iter(haystack)
                .map(|m| (m.start(), m.end()))
                .collect(),
            // Building fails only past aho-corasick's size limits (warned above).
            None => Vec::new(),
        }
    }
}

/// A redacting stream over one output (stdout or stderr).
///
/// Every byte covered by any occurrence of any form is masked (overlapping occurrences of two
/// secrets are merged into one `***`). A byte is emitted once every occurrence that could
/// cover it has been seen, i.e. `longest - 1` bytes later.
pub struct Stream {
    patterns: Patterns,
    pending: Zeroizing<Vec<u8>>,
    /// Bytes at the start of `pending` covered by an occurrence seen in an earlier scan.
    carry: usize,
    /// The last emitted byte was masked (a run continuing it adds no second `***`).
    in_mask: bool,
}

impl Stream {
    /// A stream masking `patterns`.
    pub fn new(patterns: Patterns) -> Self {
        Self {
            patterns,
            pending: Zeroizing::new(Vec::new()),
            carry: 0,
            in_mask: false,
        }
    }

    /// Takes more output; returns what can be emitted now (masked).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        if self.patterns.is_empty() {
            return bytes.to_vec();
        }
        self.pending.extend_from_slice(bytes);
        // Scan only once twice the longest pattern has gathered: every scan then consumes at
        // least `longest` bytes, so the work is linear in the output even for many small
        // writes and a long secret (at most `2 × longest` bytes are held back).
        if self.pending.len() < 2 * self.patterns.longest {
            return Vec::new();
        }
        // Any occurrence covering a byte before `upto` starts at most `longest - 1` bytes
        // earlier and so lies wholly in `pending` (or was seen before: `carry`).
        let upto = self.pending.len() - (self.patterns.longest - 1);
        self.emit(upto)
    }

    /// Ends the stream: masks and returns what was held back.
    pub fn finish(&mut self) -> Vec<u8> {
        if self.patterns.is_empty() {
            return std::mem::take(&mut *self.pending);
        }
        let out = self.emit(self.pending.len());
        self.in_mask = false;
        out
    }

    /// Emits `pending[..upto]`, masked, and keeps the rest.
    fn emit(&mut self, upto: usize) -> Vec<u8> {
        if self.patterns.is_empty() {
            return Vec::new();
        }
        // depth[i] > 0 ⇔ byte i is covered (prefix sums of +1/-1 at range ends).
        let mut delta = vec![0i32; upto + 1];
        let mut carry_next = self.carry.saturating_sub(upto);
        if self.carry > 0 {
            delta[0] += 1;
            delta[self.carry.min(upto)] -= 1;
        }
        for (start, end) in self.patterns.occurrences(self.pending.as_slice()) {
            if start >= upto {
                continue;
            }
            delta[start] += 1;
            delta[end.min(upto)] -= 1;
            carry_next = carry_next.max(end.saturating_sub(upto));
        }
        let mut out = Vec::with_capacity(upto);
        let mut depth = 0;
        let mut in_mask = self.in_mask;
        for (i, byte) in self.pending[..upto].iter().enumerate() {
            depth += delta[i];
            if depth > 0 {
                if !in_mask {
                    out.extend_from_slice(MASK);
                }
                in_mask = true;
            } else {
                out.push(*byte);
                in_mask = false;
            }
        }
        if upto > 0 {
            self.in_mask = in_mask;
        }
        self.pending.drain(..upto);
        self.carry = carry_next;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(values: &[&str], text: &str) -> String {
        String::from_utf8(Patterns::new(values.iter().copied()).mask_all(text.as_bytes()))
            .unwrap_or_default()
    }

    #[test]
    fn the_automaton_is_built_only_when_a_form_occurs() {
        let patterns = Patterns::new(["lazy-secret-value"]);
        let built = |p: &Patterns| p.inner.as_ref().is_some_and(|i| i.matcher.get().is_some());
        let clean = patterns.mask_all(b"nothing to see here\n".repeat(100).as_slice());
        assert_eq!(clean, b"nothing to see here\n".repeat(100));
        assert!(!built(&patterns));
        // Large output (past the pre-check budget) with the value at the very end.
        let mut big = vec![b'x'; 2 << 20];
        big.extend_from_slice(b"lazy-secret-value");
        let out = patterns.mask_all(&big);
        assert!(out.ends_with(b"x***") && out.len() == (2 << 20) + 3);
        assert!(built(&patterns));
        // Small output, a secret split over writes: the pre-check sees the held-back bytes.
        let other = Patterns::new(["lazy-secret-value"]);
        let mut stream = Stream::new(other.clone());
        let mut out = stream.push(b"a lazy-sec");
        out.extend(stream.push(b"ret-value b"));
        out.extend(stream.finish());
        assert_eq!(out, b"a *** b");
        assert!(built(&other));
    }

    #[test]
    fn values_and_their_encodings_are_masked() {
        let v = "s3cr3t/val+ue=ü";
        let b64 = STANDARD.encode(v);
        let url = utf8_percent_encode(v, URL_ENCODE).to_string();
        let json = serde_json::Value::from("a\"quoted\\secret").to_string();
        let text = format!("plain {v} b64 {b64} url {url} json {json} end");
        let out = masked(&[v, "a\"quoted\\secret"], &text);
        assert_eq!(out, "plain *** b64 *** url *** json \"***\" end");
    }

    #[test]
    fn multi_line_values_are_masked_whole_and_line_by_line() {
        let pem = "-----BEGIN KEY-----\nMIIBOgIBAAJBAKj34GkxFhD9\n-----END KEY-----";
        let out = masked(
            &[pem],
            &format!("whole:{pem}\nline:MIIBOgIBAAJBAKj34GkxFhD9!"),
        );
        assert_eq!(out, "whole:***\nline:***!");
    }

    #[test]
    fn many_small_writes_against_a_long_secret_stay_linear() {
        // 60 KiB secret, 16 MiB of near-matches in 1 KiB writes: every byte is scanned a
        // bounded number of times (this took minutes when each write rescanned the tail).
        let secret = "x".repeat(60 * 1024) + "!";
        let mut s = Stream::new(Patterns::new([secret.as_str()]));
        let line = [b'x'; 1024];
        let started = std::time::Instant::now();
        let mut total = 0;
        for _ in 0..16 * 1024 {
            total += s.push(&line).len();
        }
        total += s.finish().len();
        assert_eq!(total, 16 * 1024 * 1024);
        // Not a timing test of speed, a guard against the quadratic case (minutes).
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
    }

    #[test]
    fn overlapping_values_of_two_secrets_are_masked_whole() {
        assert_eq!(
            masked(
                &["wxyz", "zTOPSECRETTOKEN-0123456789"],
                "xxwxyzTOPSECRETTOKEN-0123456789xx"
            ),
            "xx***xx"
        );
        assert_eq!(
            masked(&["ABCDEFGH", "CDEFGHIJKLMN"], "zzABCDEFGHIJKLMNzz"),
            "zz***zz"
        );
        // Runs of one value repeated are one mask, not one per occurrence.
        assert_eq!(masked(&["abcd"], "abcdabcd abcd"), "*** ***");
    }

    #[test]
    fn short_values_are_not_masked() {
        assert_eq!(masked(&["abc"], "abc abcd"), "abc abcd");
        assert!(Patterns::new(["abc"]).is_empty());
    }

    #[test]
    fn a_value_split_across_writes_is_masked() {
        let secret = "hunter2-but-longer";
        for split in 1..secret.len() {
            let mut s = Stream::new(Patterns::new([secret]));
            let mut out = s.push(format!("x{}", &secret[..split]).as_bytes());
            out.extend(s.push(format!("{}y", &secret[split..]).as_bytes()));
            out.extend(s.finish());
            assert_eq!(
                String::from_utf8(out).unwrap_or_default(),
                "x***y",
                "split {split}"
            );
        }
        // Byte by byte.
        let mut s = Stream::new(Patterns::new([secret]));
        let mut out = Vec::new();
        for b in format!("<{secret}>").bytes() {
            out.extend(s.push(&[b]));
        }
        out.extend(s.finish());
        assert_eq!(out, b"<***>");
    }

    #[test]
    fn output_without_secrets_passes_unchanged_and_streams() {
        let mut s = Stream::new(Patterns::new(["needle-value"]));
        let mut out = s.push(b"hello world, this is a long line of output\n");
        assert!(
            !out.is_empty(),
            "bytes that cannot start a match are emitted at once"
        );
        out.extend(s.finish());
        assert_eq!(out, b"hello world, this is a long line of output\n");
    }
}
