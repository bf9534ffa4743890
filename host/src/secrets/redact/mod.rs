//! Output redaction: every delivered secret value in a guest's stdout/stderr becomes `***`.
//!
//! # Which values
//! A value stored encrypted is masked from [`MIN_MASKED_LEN`] bytes; a value stored as plain
//! text (`secret set --plain`) is configuration, masked only from [`MIN_PLAIN_MASKED_LEN`]
//! bytes (GitLab's minimum for masked variables), so that `true` or `prod` in an action's JSON
//! result stays as it is. The host warns about each value it does not mask, naming the
//! secret (see [`Stored::min_masked_len`]).
//!
//! # Which forms
//! For each masked value, what CI runners' maskers cover (GitHub Actions, GitLab):
//! - the value itself;
//! - each line of a multi-line value that can stand as a secret on its own: at least
//!   [`MIN_LINE_LEN`] bytes once trimmed of surrounding whitespace, and not only punctuation
//!   (so the `},` or blank lines of a pretty-printed JSON secret do not mask unrelated output);
//! - base64 (RFC 4648 §4) and URL-safe base64 (§5), padded and unpadded, of the value alone
//!   and of the value *inside* longer data, at each of the three alignments (`user:` + value
//!   in a Basic auth header): the characters that depend only on the value's bytes;
//! - JSON string escapes: serde's (`\"`, `\\`, `\n`, other controls as `\u00XX`), with
//!   non-ASCII as `\uXXXX` (Python's `json.dumps`, lower- and upper-case hex, surrogate pairs
//!   beyond the BMP), with `&`, `<`, `>`, U+2028 and U+2029 as `\u0026`… (Go's
//!   `encoding/json`), with `/` as `\/` (PHP), and their combinations;
//! - percent-encodings (UTF-8): RFC 3986 (unreserved kept), JavaScript's
//!   `encodeURIComponent` and `encodeURI`, Python's `quote` (`/` kept), form encoding
//!   (`application/x-www-form-urlencoded`, `+` for space), each with upper- and lower-case hex.
//!
//! Every byte covered by any occurrence (overlapping ones included) is masked, each run of
//! masked bytes becoming one `***`, on a stream: a value split across writes is still masked.
//! The stream holds back only the longest end of the output seen so far that could begin a
//! form (often nothing), so output that cannot be part of a secret passes at once. Cost is
//! linear in the output.
//!
//! Files: `forms` (the encodings above), `stream` (the streaming masker: a direct search by
//! first bytes, falling back to the `automaton`, an Aho-Corasick automaton built only when
//! needed).
//!
//! # Best effort
//! Like any CI runner's masking, this is a guard against accidents, not against a guest that
//! means to leak: hex, reversed or otherwise transformed values, a value printed in pieces
//! with other text between them, split between stdout and stderr, or short enough to be left
//! unmasked, are shown as printed.

use std::sync::{Arc, OnceLock};

use zeroize::Zeroizing;

mod automaton;
mod forms;
mod stream;

use automaton::Automaton;
use forms::{base64_forms, json_forms, percent_forms};
pub use stream::Stream;

/// Values stored encrypted shorter than this (in bytes) are not masked: masking `ab` would
/// mangle ordinary output. The host warns about each one.
pub const MIN_MASKED_LEN: usize = 4;

/// Values stored as plain text shorter than this (in bytes) are not masked: they are
/// configuration (`true`, `prod`), not secrets. GitLab's minimum for masked variables.
pub const MIN_PLAIN_MASKED_LEN: usize = 8;

/// A line of a multi-line value is masked on its own only from this many bytes (trimmed).
pub const MIN_LINE_LEN: usize = 8;

/// What a masked value is replaced with.
pub const MASK: &[u8] = b"***";

/// How a value was stored, which sets the length from which it is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Encrypted at rest: a secret.
    Encrypted,
    /// Stored as plain text (`--plain`): configuration, masked only when long.
    Plain,
}

impl Stored {
    /// Bytes from which a value stored this way is masked: [`MIN_MASKED_LEN`] or
    /// [`MIN_PLAIN_MASKED_LEN`].
    pub fn min_masked_len(self) -> usize {
        match self {
            Self::Encrypted => MIN_MASKED_LEN,
            Self::Plain => MIN_PLAIN_MASKED_LEN,
        }
    }

    /// Whether `value`, stored this way, is masked (an empty value masks nothing).
    pub fn masks(self, value: &str) -> bool {
        value.len() >= self.min_masked_len()
    }
}
/// Work (bytes compared against candidate forms) a stream may spend looking for forms without
/// the automaton, per byte of forms, before it builds the automaton. Output that holds no
/// secret costs one table lookup per byte and spends nothing; only near-matches (output that
/// shares a form's first four bytes) spend, so output built to look like a secret cannot make
/// the direct search cost more than about twice building the automaton.
const LAZY_BUDGET_PER_FORM_BYTE: usize = 16;

/// Bits of the table of forms' first four bytes ([`Forms::maybe`]): 4,096 bits, 512 bytes.
const PREFIX_BITS: u32 = 12;

/// Slot of four bytes in the prefix table (Fibonacci hashing of the little-endian word).
fn prefix_slot(four: [u8; 4]) -> usize {
    (u32::from_le_bytes(four).wrapping_mul(0x9E37_79B1) >> (32 - PREFIX_BITS)) as usize
}

/// The masked forms of a set of values, for one execution. Cheap to clone (shared).
///
/// The automaton over the forms is built on first need: until a form occurs in the output, or
/// near-matches have cost about as much as building it (`LAZY_BUDGET_PER_FORM_BYTE`), a
/// stream reads the output once, looking up each position's next four bytes in a table of
/// the forms' first four bytes, and compares only the forms that start that way. Most actions
/// print no secret: their output costs a lookup per byte (BENCHMARKS.md: `redact/*`).
#[derive(Clone)]
pub struct Patterns {
    inner: Option<Arc<Forms>>,
}

struct Forms {
    /// Sorted, distinct, each at least [`MIN_MASKED_LEN`] (4) bytes long.
    forms: Vec<Zeroizing<Vec<u8>>>,
    /// `first[b]`: some form starts with byte `b`.
    first: [bool; 256],
    /// Bit [`prefix_slot`] of each form's first four bytes (zeroed on drop).
    prefixes: Zeroizing<[u64; 1 << (PREFIX_BITS - 6)]>,
    longest: usize,
    total: usize,
    automaton: OnceLock<Automaton>,
}

impl Forms {
    /// Whether some form may start with `four` (no false negatives).
    fn maybe(&self, four: [u8; 4]) -> bool {
        let slot = prefix_slot(four);
        self.prefixes[slot >> 6] & (1 << (slot & 63)) != 0
    }

    /// The forms that start with `start` (they are contiguous: the forms are sorted).
    fn starting_with<'a>(&'a self, start: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let from = self.forms.partition_point(|f| f.as_slice() < start);
        self.forms[from..]
            .iter()
            .map(|f| f.as_slice())
            .take_while(move |f| f.starts_with(start))
    }
}

impl Patterns {
    /// The forms of `values`, each treated as stored encrypted (masked from
    /// [`MIN_MASKED_LEN`] bytes).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        Self::with_storage(values.into_iter().map(|v| (v, Stored::Encrypted)))
    }

    /// The forms of `values`, each masked from its [`Stored::min_masked_len`] (the caller
    /// warns about the others).
    pub fn with_storage<'a>(values: impl IntoIterator<Item = (&'a str, Stored)>) -> Self {
        let mut forms: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        for (value, stored) in values {
            if !stored.masks(value) {
                continue;
            }
            let min = stored.min_masked_len();
            let mut add = |form: &[u8]| {
                if form.len() >= min {
                    forms.push(Zeroizing::new(form.to_vec()));
                }
            };
            add(value.as_bytes());
            if value.contains('\n') {
                for line in value.split('\n') {
                    let line = line.trim();
                    if line.len() >= MIN_LINE_LEN.max(min)
                        && line.chars().any(char::is_alphanumeric)
                    {
                        add(line.as_bytes());
                    }
                }
            }
            base64_forms(value.as_bytes(), &mut add);
            for form in json_forms(value) {
                add(form.as_bytes());
            }
            for form in percent_forms(value) {
                add(form.as_bytes());
            }
        }
        // Sorting moves the buffers, it does not copy them.
        forms.sort_unstable_by(|a, b| a.as_slice().cmp(b.as_slice()));
        forms.dedup_by(|a, b| a.as_slice() == b.as_slice());
        if forms.is_empty() {
            return Self { inner: None };
        }
        let mut first = [false; 256];
        let mut prefixes = Zeroizing::new([0u64; 1 << (PREFIX_BITS - 6)]);
        for f in &forms {
            first[usize::from(f[0])] = true;
            // Every form has at least MIN_MASKED_LEN (4) bytes: `add` above keeps only those.
            if let Some(four) = f.get(..4).and_then(|p| <[u8; 4]>::try_from(p).ok()) {
                let slot = prefix_slot(four);
                prefixes[slot >> 6] |= 1 << (slot & 63);
            }
        }
        Self {
            inner: Some(Arc::new(Forms {
                longest: forms.iter().map(|f| f.len()).max().unwrap_or(0),
                total: forms.iter().map(|f| f.len()).sum(),
                forms,
                first,
                prefixes,
                automaton: OnceLock::new(),
            })),
        }
    }

    /// `true` when nothing is masked.
    pub fn is_empty(&self) -> bool {
        self.inner.is_none()
    }

    /// Number of distinct masked forms.
    pub fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.forms.len())
    }

    /// Masks everything in `bytes` at once (captured output).
    pub fn mask_all(&self, bytes: &[u8]) -> Vec<u8> {
        let mut stream = Stream::new(self.clone());
        let mut out = stream.push(bytes);
        out.extend(stream.finish());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::stream::automaton;
    use super::*;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine as _;

    fn masked(values: &[&str], text: &str) -> String {
        String::from_utf8(Patterns::new(values.iter().copied()).mask_all(text.as_bytes()))
            .unwrap_or_default()
    }

    fn built(p: &Patterns) -> bool {
        p.inner
            .as_ref()
            .is_some_and(|i| i.automaton.get().is_some())
    }

    #[test]
    fn the_automaton_is_built_only_when_needed() {
        let patterns = Patterns::new(["lazy-secret-value"]);
        let mut s = Stream::new(patterns.clone());
        for _ in 0..3 {
            assert_eq!(s.push(b"nothing to see here\n"), b"nothing to see here\n");
        }
        assert!(!built(&patterns));
        // A form occurs: built, and masked.
        assert_eq!(s.push(b"a lazy-secret-value b\n"), b"a *** b\n");
        assert!(built(&patterns));
        // Plenty of output without a form: never built.
        let other = Patterns::new(["lazy-secret-value"]);
        let out = other.mask_all(b"nothing to see here\n".repeat(10_000).as_slice());
        assert_eq!(out, b"nothing to see here\n".repeat(10_000));
        assert!(!built(&other));
        // Plenty of near-matches (a form's first bytes, then something else): built once
        // comparing them has cost about as much.
        let near = Patterns::new(["lazy-secret-value"]);
        let text = b"lazy-secret-valu!\n".repeat(10_000);
        assert_eq!(near.mask_all(&text), text);
        assert!(built(&near));
        // A secret split over writes, before the automaton exists.
        let third = Patterns::new(["lazy-secret-value"]);
        let mut stream = Stream::new(third.clone());
        let mut out = stream.push(b"a lazy-sec");
        out.extend(stream.push(b"ret-value b"));
        out.extend(stream.finish());
        assert_eq!(out, b"a *** b");
    }

    #[test]
    fn values_and_their_encodings_are_masked() {
        let v = "s3cr3t/val+ue=ü";
        let b64 = STANDARD.encode(v);
        let json = serde_json::Value::from("a\"quoted\\secret").to_string();
        let text = format!("plain {v} b64 {b64} url s3cr3t%2Fval%2Bue%3D%C3%BC json {json} end");
        let out = masked(&[v, "a\"quoted\\secret"], &text);
        assert_eq!(out, "plain *** b64 *** url *** json \"***\" end");
    }

    #[test]
    fn base64_is_masked_at_every_alignment_in_both_alphabets() {
        for v in ["my pass+wörd/x1!", "PureLettersAndDigits0123"] {
            for prefix in ["", "a", "ab", "user:", "user:x"] {
                let data = format!("{prefix}{v}");
                for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                    let encoded = engine.encode(&data);
                    let out = masked(&[v], &format!("<{encoded}>"));
                    // Only the characters of the prefix, the one mixing the prefix's and the
                    // value's bits, and the last group (mixing padding) may stay.
                    let visible = out.len() - 2 - 3;
                    let allowed = (prefix.len() * 4).div_ceil(3) + 1 + 4;
                    assert!(
                        out.contains("***") && visible <= allowed,
                        "{prefix} {encoded} {out}"
                    );
                }
            }
        }
    }

    #[test]
    fn json_and_percent_forms_are_masked() {
        let v = "my pass+wörd/x1!&<>";
        for form in [
            r"my pass+w\u00f6rd/x1!&<>",
            r"my pass+w\u00F6rd\/x1!&<>",
            r"my pass+wörd/x1!\u0026\u003c\u003e",
            "my%20pass%2Bw%C3%B6rd%2Fx1%21%26%3C%3E",
            "my%20pass%2bw%c3%b6rd%2fx1%21%26%3c%3e",
            "my+pass%2Bw%C3%B6rd%2Fx1%21%26%3C%3E",
            "my%20pass%2Bw%C3%B6rd/x1%21%26%3C%3E",
            "my%20pass+w%C3%B6rd/x1!&%3C%3E",
        ] {
            assert_eq!(masked(&[v], &format!("[{form}]")), "[***]", "{form}");
        }
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
    fn short_or_common_lines_of_a_secret_are_not_masked_on_their_own() {
        let secret = "{\n    \"token\": \"tok-0123456789\",\n    \"n\": 1\n    },\n        \n}";
        let unrelated = "fn main() {\n    },\n        \n    \"n\": 1\n}\n";
        assert_eq!(masked(&[secret], unrelated), unrelated);
        assert_eq!(
            masked(&[secret], "x \"token\": \"tok-0123456789\", y"),
            "x *** y"
        );
    }

    #[test]
    fn plain_values_are_masked_only_from_eight_bytes() {
        let p = Patterns::with_storage([("true", Stored::Plain), ("prod", Stored::Plain)]);
        assert!(p.is_empty());
        let json = r#"{"deployed":true,"target":"prod"}"#;
        assert_eq!(p.mask_all(json.as_bytes()), json.as_bytes());
        let p = Patterns::with_storage([("prod-eu-1", Stored::Plain), ("pin0", Stored::Encrypted)]);
        assert_eq!(p.mask_all(b"prod-eu-1 pin0"), b"*** ***");
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
        // What is held back at the end is the secret's first 60 KiB (all `x`): a value cut
        // there is masked, not shown.
        assert_eq!(total, 16 * 1024 * 1024 - 60 * 1024);
        assert_eq!(s.finish(), MASK);
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
            for warm in [false, true] {
                let patterns = Patterns::new([secret]);
                if warm {
                    automaton(patterns.inner.as_ref().unwrap_or_else(|| unreachable!()));
                }
                let mut s = Stream::new(patterns);
                if warm {
                    // Force the automaton path from the first byte.
                    s.spent = usize::MAX;
                }
                let mut out = s.push(format!("x{}", &secret[..split]).as_bytes());
                out.extend(s.push(format!("{}y", &secret[split..]).as_bytes()));
                out.extend(s.finish());
                assert_eq!(
                    String::from_utf8(out).unwrap_or_default(),
                    "x***y",
                    "split {split} warm {warm}"
                );
            }
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
    fn output_streams_promptly_holding_back_only_a_possible_start() {
        for warm in [false, true] {
            let mut s = Stream::new(Patterns::new(["needle-value-0123456789"]));
            if warm {
                s.spent = usize::MAX;
            }
            // A short line that cannot start a form is emitted at once, whole.
            assert_eq!(s.push(b"ok\n"), b"ok\n", "warm {warm}");
            // Only the end that could begin a form waits.
            assert_eq!(s.push(b"status: nee"), b"status: ", "warm {warm}");
            assert_eq!(s.push(b"d\n"), b"need\n", "warm {warm}");
            assert_eq!(s.push(b"needle-value-0123456789!"), b"***!", "warm {warm}");
            assert!(s.finish().is_empty());
        }
    }

    /// The fuzz target's property (`fuzz/fuzz_targets/redact.rs`) on pseudo-random cases
    /// over a small alphabet (many near-matches): output fed in pieces is masked exactly as at
    /// once, in both search modes, and no value survives.
    #[test]
    fn pieces_mask_exactly_as_the_whole() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            usize::try_from(seed % n as u64).unwrap_or(0)
        };
        let alphabet = b"ab=/+ \n";
        for case in 0..400 {
            let mut word = |len: usize| -> String {
                (0..len)
                    .map(|_| char::from(alphabet[next(alphabet.len())]))
                    .collect()
            };
            let secrets = [word(4 + case % 5), word(8 + case % 3)];
            let output = {
                let mut o = word(40);
                o.push_str(&secrets[case % 2]);
                o.push_str(&word(30));
                o.push_str(&STANDARD.encode(&secrets[0]));
                o
            };
            let patterns = Patterns::new(secrets.iter().map(String::as_str));
            let whole = patterns.mask_all(output.as_bytes());
            for warm in [false, true] {
                let mut s = Stream::new(patterns.clone());
                if warm {
                    s.spent = usize::MAX;
                }
                let mut pieced = Vec::new();
                let bytes = output.as_bytes();
                let mut at = 0;
                while at < bytes.len() {
                    let end = (at + 1 + next(9)).min(bytes.len());
                    pieced.extend(s.push(&bytes[at..end]));
                    at = end;
                }
                pieced.extend(s.finish());
                assert_eq!(pieced, whole, "case {case} warm {warm}");
            }
            for secret in &secrets {
                let masked = !secret.contains('*')
                    && whole.windows(secret.len()).any(|w| w == secret.as_bytes());
                assert!(!masked, "case {case}: {secret:?} survived");
            }
        }
    }

    #[test]
    fn a_value_cut_at_the_end_of_the_stream_is_not_shown_in_part() {
        let patterns = Patterns::new(["sk-live-SECRETVALUE-0123"]);
        let mut stream = Stream::new(patterns);
        let mut out = stream.push(b"split:sk-live-SECR");
        out.extend(stream.finish());
        assert_eq!(out, b"split:***");
        // A short tail (under the minimum) that merely could begin a form is shown.
        let mut stream = Stream::new(Patterns::new(["sk-live-SECRETVALUE-0123"]));
        let mut out = stream.push(b"done sk-");
        out.extend(stream.finish());
        assert_eq!(out, b"done sk-");
    }
}

#[cfg(test)]
mod adversary {
    use super::*;

    /// Naive reference: every byte covered by an occurrence of a form is masked, plus the
    /// held-back end (the longest end that is a proper prefix of a form) from 4 bytes.
    fn naive(p: &Patterns, hay: &[u8]) -> Vec<u8> {
        let Some(forms) = &p.inner else {
            return hay.to_vec();
        };
        let mut cov = vec![false; hay.len()];
        for i in 0..hay.len() {
            for f in &forms.forms {
                if hay[i..].starts_with(f) {
                    for c in &mut cov[i..i + f.len()] {
                        *c = true;
                    }
                }
            }
        }
        for i in 0..hay.len() {
            let rest = &hay[i..];
            if forms
                .forms
                .iter()
                .any(|f| f.len() > rest.len() && f.starts_with(rest))
            {
                if rest.len() >= MIN_MASKED_LEN {
                    for c in &mut cov[i..] {
                        *c = true;
                    }
                }
                break;
            }
        }
        let mut out = Vec::new();
        let mut in_mask = false;
        for (i, &b) in hay.iter().enumerate() {
            if cov[i] {
                if !in_mask {
                    out.extend_from_slice(MASK);
                }
                in_mask = true;
            } else {
                out.push(b);
                in_mask = false;
            }
        }
        out
    }

    #[test]
    fn stream_agrees_with_the_naive_reference() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            usize::try_from(seed % n as u64).unwrap_or(0)
        };
        let alphabet: Vec<char> = "ab/+= \n\"\\&<ü%".chars().collect();
        for case in 0..3000 {
            fn word(
                next: &mut impl FnMut(usize) -> usize,
                alphabet: &[char],
                len: usize,
            ) -> String {
                (0..len).map(|_| alphabet[next(alphabet.len())]).collect()
            }
            let secrets = [
                word(&mut next, &alphabet, 4 + case % 7),
                word(&mut next, &alphabet, 4 + case % 13),
            ];
            let patterns = Patterns::new(secrets.iter().map(String::as_str));
            let Some(forms) = patterns.inner.clone() else {
                continue;
            };
            let mut out: Vec<u8> = Vec::new();
            for _ in 0..(1 + next(6)) {
                let f = &forms.forms[next(forms.forms.len())];
                let cut = if next(2) == 0 {
                    f.len()
                } else {
                    next(f.len() + 1)
                };
                let from = if next(3) == 0 { next(cut + 1) } else { 0 };
                out.extend_from_slice(&f[from..cut]);
                let n = next(4);
                out.extend(word(&mut next, &alphabet, n).bytes());
            }
            let want = naive(&patterns, &out);
            for warm in [false, true] {
                for step in [0usize, 1, 2, 3, 5] {
                    let mut s = Stream::new(patterns.clone());
                    if warm {
                        s.spent = usize::MAX;
                    }
                    let mut got = Vec::new();
                    if step == 0 {
                        got.extend(s.push(&out));
                    } else {
                        let mut at = 0;
                        while at < out.len() {
                            let end = (at + 1 + next(step * 4)).min(out.len());
                            got.extend(s.push(&out[at..end]));
                            at = end;
                        }
                    }
                    got.extend(s.finish());
                    assert_eq!(
                        String::from_utf8_lossy(&got),
                        String::from_utf8_lossy(&want),
                        "case {case} warm {warm} step {step} secrets {secrets:?} out {:?}",
                        String::from_utf8_lossy(&out)
                    );
                }
            }
        }
    }
}

/// A test allocator that looks for a watched value in every block freed on the watching
/// thread: a copy of a secret's form freed without being zeroized (a `Vec` that grew) is
/// counted.
// Test-only: a global allocator is unsafe to implement; it only passes calls on and reads
// the block being freed.
#[cfg(test)]
#[allow(unsafe_code)]
pub(crate) mod freed {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Watching;

    thread_local! {
        static NEEDLE: Cell<Option<(&'static [u8], usize)>> = const { Cell::new(None) };
        static FOUND: Cell<usize> = const { Cell::new(0) };
    }

    // SAFETY: every call is passed on to the system allocator unchanged; `dealloc` only
    // reads the block before freeing it.
    unsafe impl GlobalAlloc for Watching {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract, passed on.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            let _ = NEEDLE.try_with(|n| {
                if let Some((needle, stride)) = n.get() {
                    // SAFETY: `ptr` is a live block of `layout.size()` bytes until freed below.
                    let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
                    if holds(block, needle, stride) {
                        let _ = FOUND.try_with(|f| f.set(f.get() + 1));
                    }
                }
            });
            // SAFETY: the caller's contract, passed on.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: Watching = Watching;

    /// `needle`'s bytes at `stride` apart somewhere in `block`.
    fn holds(block: &[u8], needle: &[u8], stride: usize) -> bool {
        let span = (needle.len() - 1) * stride + 1;
        (0..block.len().saturating_sub(span - 1)).any(|at| {
            needle
                .iter()
                .enumerate()
                .all(|(k, &b)| block[at + k * stride] == b)
        })
    }

    /// Runs `f` while counting the blocks freed on this thread that hold `needle` (its bytes
    /// `stride` apart).
    pub(crate) fn count(needle: &'static [u8], stride: usize, f: impl FnOnce()) -> usize {
        FOUND.with(|c| c.set(0));
        NEEDLE.with(|n| n.set(Some((needle, stride))));
        f();
        NEEDLE.with(|n| n.set(None));
        FOUND.with(Cell::get)
    }
}

#[cfg(test)]
mod no_copy_left {
    use super::*;

    const NEEDLE: &[u8] = b"needle-0123456789abcdef";

    #[test]
    fn building_the_forms_and_the_automaton_frees_no_copy_of_a_form() {
        // Escapes grow the JSON form past its first allocation; many forms grow the
        // automaton's edges (the edges of the first form inserted spell it, an edge apart).
        let value = format!(
            "{}{}",
            "\u{1}".repeat(40),
            std::str::from_utf8(NEEDLE).unwrap_or("")
        );
        let plain = freed::count(NEEDLE, 1, || {
            let p = Patterns::new([value.as_str()]);
            drop(p);
        });
        assert_eq!(plain, 0, "copies of a form freed without zeroizing");
        let sorted_first = freed::count(
            b"\x01\x01\x01\x01\x01\x01needle-0",
            std::mem::size_of::<automaton::Edge>(),
            || {
                let p = Patterns::new([value.as_str()]);
                if let Some(forms) = &p.inner {
                    stream::automaton(forms);
                }
                drop(p);
            },
        );
        assert_eq!(sorted_first, 0, "automaton edges freed without zeroizing");
    }

    #[test]
    fn a_stream_frees_no_copy_of_the_output_it_held() {
        let secret = std::str::from_utf8(NEEDLE).unwrap_or("");
        let patterns = Patterns::new([secret]);
        let big = vec![b'.'; 4096];
        for warm in [false, true] {
            let found = freed::count(NEEDLE, 1, || {
                let mut s = Stream::new(patterns.clone());
                if warm {
                    s.spent = usize::MAX;
                }
                // The secret split over writes, then more output than was ever held.
                let _ = s.push(&NEEDLE[..12]);
                let _ = s.push(&NEEDLE[12..]);
                let _ = s.push(b" and ");
                let _ = s.push(NEEDLE);
                let _ = s.push(&big);
                let _ = s.finish();
            });
            assert_eq!(found, 0, "warm {warm}: held output freed without zeroizing");
        }
    }
}
