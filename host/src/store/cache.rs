//! An in-process cache of the rows each action may see ([`super::Store::visible_to`]): stored
//! text only (ciphertexts, and plain rows as the operator stored them), never a decrypted
//! value. Entries live for a short TTL and the whole cache is emptied by every write through
//! this store and, on PostgreSQL, by every change to the `secrets` table from any writer whose
//! statements fire triggers (a statement trigger sends `NOTIFY attune_secrets`, see migration
//! `0003`); while the listener is not connected, the cache is bypassed.
//!
//! A lookup that races a write cannot put stale rows back: each entry records the cache
//! *generation* read before its query, and an invalidation bumps the generation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Visible;

/// Most actions cached at once; past it, the cache is emptied before the next insert (a
/// worker with more live actions than this simply queries more often).
pub const MAX_CACHED_ACTIONS: usize = 10_000;

/// The rows of one action, shared by the lookups that hit them.
pub(super) type Rows = Arc<[Visible]>;

pub(crate) struct RowCache {
    ttl: Duration,
    generation: AtomicU64,
    /// Whether invalidations from other writers are being received (PostgreSQL listener
    /// connected). Lookups bypass the cache while this is `false`.
    live: AtomicBool,
    entries: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    at: Instant,
    rows: Rows,
}

impl RowCache {
    /// A cache whose entries expire after `ttl`; `live` says whether it may serve entries
    /// before [`RowCache::set_live`] is called.
    pub(super) fn new(ttl: Duration, live: bool) -> Self {
        Self {
            ttl,
            generation: AtomicU64::new(0),
            live: AtomicBool::new(live),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A poisoned lock means a panic while inserting or clearing: a map is still a map,
        // and at worst holds an entry that expires with its TTL.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached rows of `action`, if fresh; else the generation to pass to
    /// [`RowCache::insert`] after querying.
    pub(super) fn get(&self, action: &str) -> Result<Rows, u64> {
        let generation = self.generation.load(Ordering::Acquire);
        if !self.live.load(Ordering::Acquire) {
            return Err(generation);
        }
        match self.entries().get(action) {
            Some(entry) if entry.at.elapsed() < self.ttl => Ok(Arc::clone(&entry.rows)),
            _ => Err(generation),
        }
    }

    /// Keeps `rows` for `action` unless an invalidation happened since `generation` was read.
    pub(super) fn insert(&self, action: &str, rows: Rows, generation: u64) {
        let mut entries = self.entries();
        // Checked under the lock: `invalidate` bumps the generation before it takes the lock
        // to clear, so either this sees the new generation or the clear removes this entry.
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.len() >= MAX_CACHED_ACTIONS {
            entries.clear();
        }
        entries.insert(
            action.to_owned(),
            Entry {
                at: Instant::now(),
                rows,
            },
        );
    }

    /// Forgets every entry.
    pub(super) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries().clear();
    }

    /// Marks whether invalidations from other writers arrive; going down or coming back
    /// both empty the cache (notifications may have been missed in between).
    pub(super) fn set_live(&self, live: bool) {
        self.invalidate();
        self.live.store(live, Ordering::Release);
    }

    /// Number of cached actions (tests, metrics).
    pub(super) fn len(&self) -> usize {
        self.entries().len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rows() -> Rows {
        Arc::from(Vec::new())
    }

    #[test]
    fn hit_until_ttl_or_invalidation() {
        let cache = RowCache::new(Duration::from_secs(60), true);
        let generation = cache.get("p.a").unwrap_err();
        cache.insert("p.a", rows(), generation);
        assert!(cache.get("p.a").is_ok());
        assert!(cache.get("p.b").is_err());
        cache.invalidate();
        assert!(cache.get("p.a").is_err());

        let expired = RowCache::new(Duration::ZERO, true);
        let generation = expired.get("p.a").unwrap_err();
        expired.insert("p.a", rows(), generation);
        assert!(expired.get("p.a").is_err());
    }

    #[test]
    fn a_query_that_raced_a_write_is_not_kept() {
        let cache = RowCache::new(Duration::from_secs(60), true);
        let generation = cache.get("p.a").unwrap_err();
        cache.invalidate(); // a write lands while the query runs
        cache.insert("p.a", rows(), generation);
        assert!(cache.get("p.a").is_err());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn not_live_bypasses_and_clears() {
        let cache = RowCache::new(Duration::from_secs(60), false);
        let generation = cache.get("p.a").unwrap_err();
        cache.insert("p.a", rows(), generation);
        assert!(cache.get("p.a").is_err(), "must not serve while not live");
        cache.set_live(true);
        assert_eq!(cache.len(), 0);
        let generation = cache.get("p.a").unwrap_err();
        cache.insert("p.a", rows(), generation);
        assert!(cache.get("p.a").is_ok());
        cache.set_live(false);
        assert!(cache.get("p.a").is_err());
    }

    #[test]
    fn bounded() {
        let cache = RowCache::new(Duration::from_secs(60), true);
        for i in 0..=MAX_CACHED_ACTIONS {
            let generation = cache.get("x").unwrap_err();
            cache.insert(&format!("p.a{i}"), rows(), generation);
        }
        assert!(cache.len() <= MAX_CACHED_ACTIONS);
    }
}
