//! Masking a stream of output: the direct search while no form has occurred, the automaton
//! after, and the bytes held back in between writes.

use std::sync::Arc;

use zeroize::{Zeroize, Zeroizing};

use super::automaton::{Automaton, ROOT};
use super::{Forms, Patterns, LAZY_BUDGET_PER_FORM_BYTE, MASK, MIN_MASKED_LEN};

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
    /// Direct-search work spent so far (bytes of candidate forms compared).
    pub(super) spent: usize,
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
        let Some(shared) = &self.patterns.inner else {
            return bytes.to_vec();
        };
        let forms: &Forms = shared;
        let from = self.pending.len();
        if self.state.is_none() {
            // Nothing held back: search the new bytes where they are, without copying them.
            let hold = if from == 0 {
                direct_hold(forms, bytes, &mut self.spent)
            } else {
                extend_zeroizing(&mut self.pending, bytes);
                direct_hold(forms, &self.pending, &mut self.spent)
            };
            if let Some(hold) = hold {
                // No form occurs: emit all but what could begin one, unchanged.
                if from == 0 {
                    let upto = bytes.len() - hold;
                    if upto > 0 {
                        self.in_mask = false;
                    }
                    extend_zeroizing(&mut self.pending, &bytes[upto..]);
                    return bytes[..upto].to_vec();
                }
                let upto = self.pending.len() - hold;
                let out = self.pending[..upto].to_vec();
                if upto > 0 {
                    self.in_mask = false;
                }
                self.pending.drain(..upto);
                return out;
            }
            if from == 0 {
                extend_zeroizing(&mut self.pending, bytes);
            }
        } else {
            extend_zeroizing(&mut self.pending, bytes);
        }
        // The shared forms are cloned (an atomic count) only on this path: the direct search
        // above borrows them.
        let forms = Arc::clone(shared);
        if self.state.is_none() {
            // A form occurs, or near-matches have cost enough: from now on, the automaton
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

/// A stream's search without the automaton (`spent`: its work so far): `None` if a form
/// occurs in `hay` or the budget is spent; else how many bytes at its end could begin a form.
///
/// One pass over `hay`: at each position, the next four bytes are looked up in the table
/// of the forms' first four bytes ([`Forms::maybe`]); only on a hit are the forms that
/// start with them compared (an occurrence, or, near the end, a form that the rest of
/// `hay` begins). The last three positions, too short for the table, are checked against
/// the forms' first bytes. The held-back end is at least [`MIN_MASKED_LEN`] bytes only
/// when it shares a form's first four bytes, which the table finds.
fn direct_hold(forms: &Forms, hay: &[u8], spent: &mut usize) -> Option<usize> {
    let budget = LAZY_BUDGET_PER_FORM_BYTE.saturating_mul(forms.total);
    if *spent > budget {
        return None;
    }
    let n = hay.len();
    let window = n.saturating_sub(forms.longest.saturating_sub(1));
    let mut hold_from = None;
    for (i, four) in hay.windows(4).enumerate() {
        // `windows(4)` yields four bytes: one unaligned load.
        let Ok(word) = <[u8; 4]>::try_from(four) else {
            continue;
        };
        if !forms.maybe(word) {
            continue;
        }
        for f in forms.starting_with(four) {
            *spent = spent.saturating_add(f.len());
            let rest = &hay[i..];
            if rest.starts_with(f) {
                return None;
            }
            if hold_from.is_none() && i >= window && f.starts_with(rest) {
                hold_from = Some(i);
            }
        }
        if *spent > budget {
            return None;
        }
    }
    if hold_from.is_none() {
        // Ends of one to three bytes.
        for i in n.saturating_sub(3).max(window)..n {
            if forms.first[usize::from(hay[i])] && forms.starting_with(&hay[i..]).next().is_some() {
                hold_from = Some(i);
                break;
            }
        }
    }
    Some(hold_from.map_or(0, |i| n - i))
}

/// Appends `bytes` to `pending`. When it must grow, the held bytes move to a new buffer and
/// the old one is zeroized (all of its capacity, stale bytes of earlier writes included):
/// `Vec::extend` would free it as it is, a copy of output that may hold a secret.
fn extend_zeroizing(pending: &mut Zeroizing<Vec<u8>>, bytes: &[u8]) {
    let need = pending.len().saturating_add(bytes.len());
    if need > pending.capacity() {
        let mut grown = Zeroizing::new(Vec::with_capacity(
            need.max(pending.capacity().saturating_mul(2)),
        ));
        grown.extend_from_slice(pending);
        std::mem::swap(pending, &mut grown);
        // `grown`, now the old buffer, is zeroized as it drops.
    }
    pending.extend_from_slice(bytes);
}

/// The automaton of `forms`, built on first use.
pub(super) fn automaton(forms: &Forms) -> &Automaton {
    forms.automaton.get_or_init(|| Automaton::new(&forms.forms))
}
