//! What one execution may use ([`Limits`]) and the memory limiter that enforces the memory
//! part of it inside the store ([`Limiter`]). The deadline and fuel are installed by
//! [`Runtime::run`](super::Runtime::run); the `get-secret` budget is kept by
//! [`SecretDoor`](super::SecretDoor).

use std::time::Duration;

/// Resource limits of one execution.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Limits {
    /// Wall-clock deadline (default 30 s).
    pub timeout: Duration,
    /// Linear memory cap in bytes, all memories together (default 256 MiB).
    pub max_memory: usize,
    /// Fuel budget (roughly one unit per wasm instruction); `None` = unmetered. Needs a
    /// runtime built with [`RuntimeConfig::fuel`](super::RuntimeConfig::fuel).
    pub fuel: Option<u64>,
    /// Most secret requests per execution, `get-secret` and `wasi:config/store` together
    /// (default 10,000).
    pub secret_calls: u64,
    /// Most WASI resource handles (open files and directories, streams, pollables) a guest
    /// holds at once (default 10,000); each costs host memory the memory limit does not count.
    pub max_resources: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            max_memory: 256 * 1024 * 1024,
            fuel: None,
            secret_calls: 10_000,
            max_resources: 10_000,
        }
    }
}

/// Caps the linear memory of one execution (all memories together) and remembers whether the
/// cap was hit, so that the trap can be reported as a memory-limit error.
pub(crate) struct Limiter {
    max_memory: usize,
    used: usize,
    pub(crate) hit: bool,
}

/// Bytes of host memory one table element is counted as (a pointer and its metadata).
const TABLE_ELEMENT_BYTES: usize = 16;

impl Limiter {
    pub(crate) fn new(max_memory: usize) -> Self {
        Self {
            max_memory,
            used: 0,
            hit: false,
        }
    }
}

/// Most table elements one table may have (each costs a pointer of host memory).
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grown = self.used.saturating_add(desired.saturating_sub(current));
        if grown > self.max_memory {
            self.hit = true;
            return Err(wasmtime::Error::msg("memory limit exceeded"));
        }
        self.used = grown;
        Ok(true)
    }

    /// Tables count against the same budget as memories: a guest cannot trade memory for
    /// huge tables.
    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        let bytes = desired
            .saturating_sub(current)
            .saturating_mul(TABLE_ELEMENT_BYTES);
        let grown = self.used.saturating_add(bytes);
        if grown > self.max_memory {
            self.hit = true;
            return Err(wasmtime::Error::msg("memory limit exceeded (tables)"));
        }
        self.used = grown;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use wasmtime::ResourceLimiter;

    use super::*;

    #[test]
    fn memories_share_one_budget_and_the_hit_is_remembered() {
        let mut limiter = Limiter::new(3 * 65536);
        assert!(limiter.memory_growing(0, 2 * 65536, None).unwrap());
        assert!(!limiter.hit);
        // A second memory draws on the same budget: one more page fits, two do not.
        assert!(limiter.memory_growing(0, 65536, None).unwrap());
        assert!(limiter.memory_growing(65536, 2 * 65536, None).is_err());
        assert!(limiter.hit, "the trap is reported as the memory limit");
    }

    #[test]
    fn tables_count_against_the_memory_budget() {
        let mut limiter = Limiter::new(TABLE_ELEMENT_BYTES * 100);
        assert!(limiter.table_growing(0, 100, None).unwrap());
        assert!(limiter.table_growing(100, 101, None).is_err());
        assert!(limiter.hit);
        // Past the element cap a growth fails inside the guest (no trap, no hit).
        let mut limiter = Limiter::new(usize::MAX);
        assert!(!limiter
            .table_growing(0, MAX_TABLE_ELEMENTS + 1, None)
            .unwrap());
        assert!(!limiter.hit);
    }
}
