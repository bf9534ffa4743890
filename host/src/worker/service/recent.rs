//! [`Recent`]: entries by execution id that expire a time after they were (last) set and are
//! capped in number, the oldest dropped first; every operation is O(1) amortised (a map, and
//! the entries in arrival order in a queue, with lazy removal), so nothing is ever scanned
//! under the caller's lock. Used for cancel requests that arrived before their dispatch and
//! for the refusal counts of dispatches (fault K5): both are about dispatches that may never
//! come back (dead-lettered by the queue's message TTL), so they must not stay forever.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Values by execution id, each dropped [`Recent::ttl`] after it was set, and the oldest
/// dropped when more than [`Recent::cap`] are kept. Times passed in must not go backwards
/// (they are `Instant::now()`): the queue is in arrival order.
pub(super) struct Recent<V> {
    /// The value and the sequence number of its (latest) arrival.
    map: HashMap<i64, (V, u64)>,
    /// Arrivals, oldest first: (when, id, sequence number). One whose sequence number is no
    /// longer its id's in `map` is stale (removed or set again since) and skipped.
    order: VecDeque<(Instant, i64, u64)>,
    next: u64,
    ttl: Duration,
    cap: usize,
}

impl<V> Recent<V> {
    /// An empty set keeping each value `ttl`, at most `cap` (at least 1) of them.
    pub(super) fn new(ttl: Duration, cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
            ttl,
            cap: cap.max(1),
        }
    }

    /// The value of `id`, if kept (it may have outlived its time until the next
    /// [`Recent::insert`]: expiry happens there).
    pub(super) fn get(&self, id: i64) -> Option<&V> {
        self.map.get(&id).map(|(v, _)| v)
    }

    /// Removes and returns the value of `id`.
    pub(super) fn remove(&mut self, id: i64) -> Option<V> {
        self.map.remove(&id).map(|(v, _)| v)
    }

    /// Sets the value of `id` at `now` (its time starts again), after dropping the values
    /// whose time has passed and, at the cap, the oldest.
    pub(super) fn insert(&mut self, id: i64, value: V, now: Instant) {
        self.map.remove(&id);
        while let Some(&(since, _, _)) = self.order.front() {
            if now.saturating_duration_since(since) < self.ttl {
                break;
            }
            self.pop_front();
        }
        while self.map.len() >= self.cap && !self.order.is_empty() {
            self.pop_front();
        }
        // Stale arrivals (removed or set again) are dropped once they outnumber the live
        // ones: after at least `cap` arrivals since the last time, so O(1) amortised.
        if self.order.len() >= 2 * self.cap {
            let map = &self.map;
            self.order
                .retain(|(_, id, seq)| map.get(id).is_some_and(|(_, s)| s == seq));
        }
        let seq = self.next;
        self.next = self.next.wrapping_add(1);
        self.map.insert(id, (value, seq));
        self.order.push_back((now, id, seq));
    }

    /// Drops the oldest arrival, and its value when the arrival is still the value's latest.
    fn pop_front(&mut self) {
        if let Some((_, id, seq)) = self.order.pop_front() {
            if self.map.get(&id).is_some_and(|(_, s)| *s == seq) {
                self.map.remove(&id);
            }
        }
    }

    /// How many values are kept (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// The values kept.
    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values().map(|(v, _)| v)
    }

    /// The ids kept (tests).
    #[cfg(test)]
    pub(super) fn ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.map.keys().copied()
    }

    /// Arrivals queued, stale ones included (tests: the queue stays bounded).
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(600);

    /// The semantics the O(n) scan had (kept per id: the time it was set), as a reference.
    fn reference(model: &mut HashMap<i64, Instant>, id: i64, now: Instant, cap: usize) {
        model.remove(&id);
        model.retain(|_, since| now.saturating_duration_since(*since) < TTL);
        while model.len() >= cap {
            let oldest = model.iter().min_by_key(|(_, t)| **t).map(|(id, _)| *id);
            match oldest {
                Some(oldest) => model.remove(&oldest),
                None => break,
            };
        }
        model.insert(id, now);
    }

    #[test]
    fn values_expire_and_the_oldest_go_first_at_the_cap() {
        let t0 = Instant::now();
        let mut recent = Recent::new(TTL, 3);
        recent.insert(1, "a", t0);
        recent.insert(2, "b", t0 + Duration::from_secs(1));
        recent.insert(3, "c", t0 + Duration::from_secs(2));
        recent.insert(4, "d", t0 + Duration::from_secs(3));
        let mut ids: Vec<i64> = recent.ids().collect();
        ids.sort_unstable();
        assert_eq!(ids, [2, 3, 4], "the oldest dropped at the cap");
        // Set again: its time starts again, so it outlives the others.
        recent.insert(2, "b2", t0 + Duration::from_secs(4));
        recent.insert(5, "e", t0 + TTL + Duration::from_secs(3));
        let mut ids: Vec<i64> = recent.ids().collect();
        ids.sort_unstable();
        assert_eq!(ids, [2, 5], "3 and 4 expired; 2 was set again at 4 s");
        assert_eq!(recent.get(2), Some(&"b2"));
        assert_eq!(recent.remove(2), Some("b2"));
        assert_eq!(recent.get(2), None);
        assert_eq!(recent.len(), 1);
    }

    /// Against the reference on a long churn of sets, re-sets and removals, with time
    /// passing (strictly increasing, so the oldest is always one): the same ids kept, and
    /// the queue of arrivals never more than twice the cap.
    #[test]
    fn matches_the_scan_it_replaces_and_stays_bounded() {
        let cap = 50;
        let t0 = Instant::now();
        let mut recent = Recent::new(TTL, cap);
        let mut model = HashMap::new();
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for step in 0..20_000_u64 {
            // xorshift: a fixed pseudo-random sequence.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let id = i64::try_from(state % 120).unwrap_or(0);
            let now = t0 + Duration::from_millis(step * 250);
            if state.is_multiple_of(5) {
                recent.remove(id);
                model.remove(&id);
            } else {
                recent.insert(id, step, now);
                reference(&mut model, id, now, cap);
            }
            let mut got: Vec<i64> = recent.ids().collect();
            let mut want: Vec<i64> = model.keys().copied().collect();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "step {step}");
            assert!(
                recent.queued() <= 2 * cap,
                "step {step}: {}",
                recent.queued()
            );
        }
    }
}
