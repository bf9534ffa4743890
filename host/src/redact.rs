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
//! # Best effort
//! Like any CI runner's masking, this is a guard against accidents, not against a guest that
//! means to leak: hex, reversed or otherwise transformed values, a value printed in pieces
//! with other text between them, split between stdout and stderr, or short enough to be left
//! unmasked, are shown as printed.

use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use zeroize::{Zeroize, Zeroizing};

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

/// Work (forms × bytes compared) a stream may spend looking for forms without the automaton,
/// per byte of forms, before it builds the automaton: the automaton costs about as much to
/// build as this much direct searching, so output that holds no secret never costs more than
/// twice the cheaper of the two.
const LAZY_BUDGET_PER_FORM_BYTE: usize = 16;

/// The masked forms of a set of values, for one execution. Cheap to clone (shared).
///
/// The automaton over the forms is built on first need: until a form occurs in the output, or
/// the direct searches have cost about as much as building it, a stream searches each form
/// directly ([`LAZY_BUDGET_PER_FORM_BYTE`]). Most actions print no secret, and building the
/// automaton is most of the per-execution cost of masking (BENCHMARKS.md: `redact/*`).
#[derive(Clone)]
pub struct Patterns {
    inner: Option<Arc<Forms>>,
}

struct Forms {
    forms: Vec<Zeroizing<Vec<u8>>>,
    /// `first[b]`: some form starts with byte `b`.
    first: [bool; 256],
    longest: usize,
    total: usize,
    automaton: OnceLock<Automaton>,
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
        for f in &forms {
            first[usize::from(f[0])] = true;
        }
        Self {
            inner: Some(Arc::new(Forms {
                longest: forms.iter().map(|f| f.len()).max().unwrap_or(0),
                total: forms.iter().map(|f| f.len()).sum(),
                forms,
                first,
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

/// Base64 forms of `value`, passed to `add`: standard and URL-safe alphabets; the whole value
/// padded and unpadded; and, for each of the three offsets at which the value can start inside
/// longer encoded data, the characters that depend only on the value's bytes. One encoding per
/// offset, into one buffer (this runs for every execution).
fn base64_forms(value: &[u8], add: &mut impl FnMut(&[u8])) {
    let mut data = Zeroizing::new(Vec::with_capacity(value.len() + 2));
    let mut encoded = Zeroizing::new(String::with_capacity(value.len() * 4 / 3 + 8));
    for offset in 0..3usize {
        data.clear();
        data.resize(offset, 0);
        data.extend_from_slice(value);
        encoded.clear();
        STANDARD_NO_PAD.encode_string(data.as_slice(), &mut encoded);
        // Characters mixing bits of the bytes before the value: 0, 2 or 3.
        let lead = [0, 2, 3][offset];
        // The last character of a partial group mixes bits of the bytes after it.
        let trail = usize::from(data.len() % 3 != 0);
        let mut both = |form: &[u8]| {
            add(form);
            if form.iter().any(|b| matches!(b, b'+' | b'/')) {
                // URL-safe base64 (RFC 4648 §5) differs in these two characters only.
                let url: Zeroizing<Vec<u8>> = Zeroizing::new(
                    form.iter()
                        .map(|&b| match b {
                            b'+' => b'-',
                            b'/' => b'_',
                            b => b,
                        })
                        .collect(),
                );
                add(&url);
            }
        };
        if encoded.len() > lead + trail {
            both(&encoded.as_bytes()[lead..encoded.len() - trail]);
        }
        if offset == 0 {
            both(encoded.as_bytes());
            let pad = (3 - value.len() % 3) % 3;
            if pad > 0 {
                encoded.push_str(&"=="[..pad]);
                both(encoded.as_bytes());
            }
        }
    }
}

/// JSON string escapes of `value` (without the quotes), every combination of: non-ASCII raw,
/// `\u` lower-case, `\u` upper-case; `&<>` and U+2028/9 raw or escaped (Go); `/` raw or `\/`.
/// Only the variants that differ are made: a value of letters and digits has none.
fn json_forms(value: &str) -> Vec<Zeroizing<String>> {
    let mut out = Vec::new();
    if !value
        .chars()
        .any(|c| matches!(c, '"' | '\\' | '/' | '&' | '<' | '>') || !(' '..='~').contains(&c))
    {
        return out;
    }
    let non_ascii: &[Option<bool>] = if value.is_ascii() {
        &[None]
    } else {
        &[None, Some(false), Some(true)]
    };
    let html: &[bool] = if value.contains(['&', '<', '>', '\u{2028}', '\u{2029}']) {
        &[false, true]
    } else {
        &[false]
    };
    let slash: &[bool] = if value.contains('/') {
        &[false, true]
    } else {
        &[false]
    };
    for &u in non_ascii {
        for &h in html {
            for &s in slash {
                out.push(json_escape(value, u, h, s));
            }
        }
    }
    out
}

/// One JSON escaping: `unicode` is `None` for raw non-ASCII, else `Some(upper-case hex)`.
fn json_escape(value: &str, unicode: Option<bool>, html: bool, slash: bool) -> Zeroizing<String> {
    use std::fmt::Write as _;
    let upper = unicode.unwrap_or(false);
    let mut out = Zeroizing::new(String::with_capacity(value.len() + 8));
    let u = |out: &mut String, unit: u16| {
        // Writing to a String cannot fail.
        let _ = if upper {
            write!(out, "\\u{unit:04X}")
        } else {
            write!(out, "\\u{unit:04x}")
        };
    };
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '/' if slash => out.push_str("\\/"),
            '&' | '<' | '>' | '\u{2028}' | '\u{2029}' if html => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    u(&mut out, *unit);
                }
            }
            c if (c as u32) < 0x20 || (c as u32 > 0x7f && unicode.is_some()) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    u(&mut out, *unit);
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Which ASCII characters a percent-encoder leaves as they are (besides letters and digits).
const PERCENT_SAFE: &[&[u8]] = &[
    b"-._~",                 // RFC 3986 unreserved
    b"-._~!'()*",            // JavaScript encodeURIComponent
    b"-._~!'()*;,/?:@&=+$#", // JavaScript encodeURI
    b"-._~/",                // Python urllib.parse.quote
    b"-._*",                 // application/x-www-form-urlencoded (WHATWG, Java)
];

/// Percent-encodings of `value` (UTF-8): each safe set of [`PERCENT_SAFE`], space as `%20`
/// or `+`, upper- or lower-case hex.
fn percent_forms(value: &str) -> Vec<Zeroizing<String>> {
    const UPPER: &[u8; 16] = b"0123456789ABCDEF";
    const LOWER: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::new();
    // Letters, digits and `-._` are kept by every encoder.
    if value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return out;
    }
    let pluses: &[bool] = if value.contains(' ') {
        &[false, true]
    } else {
        &[false]
    };
    for safe in PERCENT_SAFE {
        for &plus in pluses {
            for hex in [UPPER, LOWER] {
                let mut s = Zeroizing::new(String::with_capacity(value.len() * 3));
                for &b in value.as_bytes() {
                    if b.is_ascii_alphanumeric() || safe.contains(&b) {
                        s.push(char::from(b));
                    } else if b == b' ' && plus {
                        s.push('+');
                    } else {
                        s.push('%');
                        s.push(char::from(hex[usize::from(b >> 4)]));
                        s.push(char::from(hex[usize::from(b & 15)]));
                    }
                }
                out.push(s);
            }
        }
    }
    out
}

/// Aho-Corasick automaton over the forms that also knows, in each state, the longest end of
/// the input that could still begin a form: what a stream must hold back.
struct Automaton {
    /// Transitions from the root, dense (0 is the root).
    root: Box<[u32; 256]>,
    nodes: Vec<Node>,
    edges: Vec<Edge>,
}

#[derive(Clone, Copy, Zeroize)]
struct Node {
    /// First outgoing edge ([`NONE`] for a leaf); siblings are chained by `Edge::next`.
    first_edge: u32,
    /// Longest proper suffix of this node's string that is a node too.
    fail: u32,
    /// Length of this node's string.
    depth: u32,
    /// Longest form that ends here (the node's own or one along its fail chain); 0 for none.
    longest_match: u32,
    /// Longest suffix of this node's string that is a proper prefix of some form.
    hold: u32,
}

#[derive(Clone, Copy, Zeroize)]
struct Edge {
    byte: u8,
    target: u32,
    next: u32,
}

const NONE: u32 = u32::MAX;
const ROOT: u32 = 0;

impl Automaton {
    fn new(forms: &[Zeroizing<Vec<u8>>]) -> Self {
        let mut a = Self {
            root: Box::new([ROOT; 256]),
            nodes: vec![Node {
                first_edge: NONE,
                fail: ROOT,
                depth: 0,
                longest_match: 0,
                hold: 0,
            }],
            edges: Vec::new(),
        };
        for form in forms {
            let mut s = ROOT;
            for &b in form.iter() {
                s = match a.child(s, b) {
                    Some(t) => t,
                    None => a.add_child(s, b),
                };
            }
            let node = &mut a.nodes[s as usize];
            node.longest_match = node.depth;
        }
        // Breadth-first: a node's fail link is shallower, so already final.
        let mut queue = std::collections::VecDeque::new();
        queue.push_back(ROOT);
        while let Some(u) = queue.pop_front() {
            let mut e = a.nodes[u as usize].first_edge;
            while e != NONE {
                let Edge { byte, target, next } = a.edges[e as usize];
                let fail = if u == ROOT {
                    ROOT
                } else {
                    a.next(a.nodes[u as usize].fail, byte)
                };
                let f = a.nodes[fail as usize];
                let v = &mut a.nodes[target as usize];
                v.fail = fail;
                if v.longest_match == 0 {
                    v.longest_match = f.longest_match;
                }
                v.hold = if v.first_edge != NONE {
                    v.depth
                } else {
                    f.hold
                };
                queue.push_back(target);
                e = next;
            }
        }
        a
    }

    fn child(&self, s: u32, b: u8) -> Option<u32> {
        if s == ROOT {
            let t = self.root[usize::from(b)];
            return (t != ROOT).then_some(t);
        }
        let mut e = self.nodes[s as usize].first_edge;
        while e != NONE {
            let edge = &self.edges[e as usize];
            if edge.byte == b {
                return Some(edge.target);
            }
            e = edge.next;
        }
        None
    }

    fn add_child(&mut self, s: u32, b: u8) -> u32 {
        // Node and edge counts are bounded by the total length of the forms (a few copies of
        // the secrets), far below u32::MAX.
        let t = u32::try_from(self.nodes.len()).unwrap_or(NONE);
        let depth = self.nodes[s as usize].depth + 1;
        self.nodes.push(Node {
            first_edge: NONE,
            fail: ROOT,
            depth,
            longest_match: 0,
            hold: 0,
        });
        let e = u32::try_from(self.edges.len()).unwrap_or(NONE);
        let parent = &mut self.nodes[s as usize];
        self.edges.push(Edge {
            byte: b,
            target: t,
            next: parent.first_edge,
        });
        parent.first_edge = e;
        if s == ROOT {
            self.root[usize::from(b)] = t;
        }
        t
    }

    /// The state after reading `b` in state `s`.
    fn next(&self, mut s: u32, b: u8) -> u32 {
        loop {
            if let Some(t) = self.child(s, b) {
                return t;
            }
            if s == ROOT {
                return ROOT;
            }
            s = self.nodes[s as usize].fail;
        }
    }
}

impl Drop for Automaton {
    fn drop(&mut self) {
        // The edges spell the forms.
        self.edges.zeroize();
        self.nodes.zeroize();
        (*self.root).zeroize();
    }
}

/// A redacting stream over one output (stdout or stderr).
///
/// Every byte covered by any occurrence of any form is masked (overlapping occurrences of two
/// secrets are merged into one `***`). A byte is emitted as soon as no form can cover it:
/// only the longest end of the output seen so far that is a proper prefix of some form is
/// held back.
pub struct Stream {
    patterns: Patterns,
    pending: Zeroizing<Vec<u8>>,
    /// Automaton state after all the output so far; `None` until the automaton is used.
    state: Option<u32>,
    /// Coverage changes at each byte of `pending` (+1 where an occurrence starts, -1 after it
    /// ends); one longer than `pending`.
    delta: Vec<i32>,
    /// Occurrences covering `pending[0]` that started before it.
    cover: i32,
    /// Direct-search work spent so far (forms × bytes).
    spent: usize,
    /// Occurrences recorded in `delta` (0: nothing in `pending` is covered).
    marks: usize,
    /// The last emitted byte was masked (a run continuing it adds no second `***`).
    in_mask: bool,
}

impl Stream {
    /// A stream masking `patterns`.
    pub fn new(patterns: Patterns) -> Self {
        Self {
            patterns,
            pending: Zeroizing::new(Vec::new()),
            state: None,
            delta: vec![0],
            cover: 0,
            spent: 0,
            marks: 0,
            in_mask: false,
        }
    }

    /// Takes more output; returns what can be emitted now (masked).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        let Some(forms) = self.patterns.inner.clone() else {
            return bytes.to_vec();
        };
        let from = self.pending.len();
        self.pending.extend_from_slice(bytes);
        if self.state.is_none() {
            if let Some(hold) = self.direct_hold(&forms) {
                // No form occurs in `pending`: emit all but what could begin one, unchanged.
                let upto = self.pending.len() - hold;
                let out = self.pending[..upto].to_vec();
                if upto > 0 {
                    self.in_mask = false;
                }
                self.pending.drain(..upto);
                return out;
            }
            // A form occurs, or direct searching has cost enough: from now on, the automaton
            // reads everything, starting with what is held back.
            self.state = Some(ROOT);
            self.delta = vec![0; 1];
            self.feed(&forms, 0);
        } else {
            self.feed(&forms, from);
        }
        let hold = self
            .state
            .map_or(0, |s| automaton(&forms).nodes[s as usize].hold as usize);
        self.emit(self.pending.len().saturating_sub(hold))
    }

    /// Ends the stream: masks and returns what was held back.
    ///
    /// What is held back at the end could begin a form: a stream cut there (the guest exited,
    /// hit the output cap or the timeout mid-value) may have printed the first part of a
    /// secret. From [`MIN_MASKED_LEN`] bytes on, that part is masked rather than shown (a
    /// harmless tail that happens to equal the start of a secret's form is masked too).
    pub fn finish(&mut self) -> Vec<u8> {
        if self.patterns.is_empty() {
            return std::mem::take(&mut *self.pending);
        }
        let out = if self.pending.len() >= MIN_MASKED_LEN {
            self.pending.zeroize();
            self.delta = vec![0];
            self.marks = 0;
            if self.in_mask {
                Vec::new()
            } else {
                MASK.to_vec()
            }
        } else {
            self.emit(self.pending.len())
        };
        if self.state.is_some() {
            self.state = Some(ROOT);
        }
        self.cover = 0;
        self.in_mask = false;
        out
    }

    /// Without the automaton: `None` if a form occurs in `pending` or the budget is spent;
    /// else how many bytes at its end could begin a form.
    fn direct_hold(&mut self, forms: &Forms) -> Option<usize> {
        let hay = self.pending.as_slice();
        let budget = LAZY_BUDGET_PER_FORM_BYTE.saturating_mul(forms.total);
        self.spent = self
            .spent
            .saturating_add(forms.forms.len().saturating_mul(hay.len()));
        if self.spent > budget {
            return None;
        }
        if forms
            .forms
            .iter()
            .any(|f| memchr::memmem::find(hay, f).is_some())
        {
            return None;
        }
        let window = hay.len().saturating_sub(forms.longest.saturating_sub(1));
        for start in window..hay.len() {
            if !forms.first[usize::from(hay[start])] {
                continue;
            }
            let tail = &hay[start..];
            for f in &forms.forms {
                if f.len() > tail.len() && f[0] == tail[0] {
                    self.spent = self.spent.saturating_add(tail.len());
                    if f.starts_with(tail) {
                        return Some(tail.len());
                    }
                }
            }
            if self.spent > budget {
                return None;
            }
        }
        Some(0)
    }

    /// Runs the automaton over `pending[from..]`, recording occurrences in `delta`.
    fn feed(&mut self, forms: &Forms, from: usize) {
        let a = automaton(forms);
        let mut s = self.state.unwrap_or(ROOT);
        self.delta.resize(self.pending.len() + 1, 0);
        let mut i = from;
        while i < self.pending.len() {
            if s == ROOT {
                // Fast path: skip bytes that start no form.
                match self.pending[i..]
                    .iter()
                    .position(|&b| a.root[usize::from(b)] != ROOT)
                {
                    Some(skip) => i += skip,
                    None => break,
                }
            }
            s = a.next(s, self.pending[i]);
            let len = a.nodes[s as usize].longest_match as usize;
            if len > 0 {
                // Every occurrence ending here lies within the longest one, which starts in
                // `pending`: nothing it covers has been emitted (it was held back).
                let end = i + 1;
                self.delta[end.saturating_sub(len)] += 1;
                self.delta[end] -= 1;
                self.marks += 1;
            }
            i += 1;
        }
        self.state = Some(s);
    }

    /// Emits `pending[..upto]`, masked, and keeps the rest.
    fn emit(&mut self, upto: usize) -> Vec<u8> {
        if self.cover == 0 && self.marks == 0 {
            // Nothing covered: the bytes as they are.
            let out = self.pending[..upto].to_vec();
            if upto > 0 {
                self.in_mask = false;
            }
            self.pending.drain(..upto);
            self.delta.truncate(self.pending.len() + 1);
            return out;
        }
        let mut out = Vec::with_capacity(upto);
        let mut depth = self.cover;
        let mut in_mask = self.in_mask;
        self.delta.resize(self.pending.len() + 1, 0);
        for (i, byte) in self.pending[..upto].iter().enumerate() {
            depth += self.delta[i];
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
        self.cover = depth;
        self.pending.drain(..upto);
        self.delta.drain(..upto);
        self.marks = usize::from(self.delta.iter().any(|&d| d != 0));
        out
    }
}

/// The automaton of `forms`, built on first use.
fn automaton(forms: &Forms) -> &Automaton {
    forms.automaton.get_or_init(|| Automaton::new(&forms.forms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};

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
        // Plenty of output without a form: built once the direct searches cost as much.
        let other = Patterns::new(["lazy-secret-value"]);
        let out = other.mask_all(b"nothing to see here\n".repeat(10_000).as_slice());
        assert_eq!(out, b"nothing to see here\n".repeat(10_000));
        assert!(built(&other));
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
