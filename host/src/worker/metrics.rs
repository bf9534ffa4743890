//! The worker's metrics, served opt-in at `GET /metrics` on `worker.metrics_address`
//! (`ATTUNE__WORKER__METRICS_ADDRESS`; off by default) in the Prometheus text exposition format
//! as OpenMetrics 1.0 writes it (`application/openmetrics-text; version=1.0.0`, which
//! Prometheus scrapes; encoded by the `prometheus-client` crate).
//!
//! Series (names are stable; labels carry statuses, doors and outcomes only, never an id, a
//! name or a value):
//!
//! | series | type | meaning |
//! |--------|------|---------|
//! | `attune_wasm_executions_total{status}` | counter | executions this worker ended, by the terminal status it committed (`completed`, `failed`, `timeout`, `cancelled`) |
//! | `attune_wasm_execution_duration_seconds` | histogram | run time of the executions that ran a guest, seconds (buckets 0.5 ms × 2ⁿ up to ~65 s) |
//! | `attune_wasm_executions_in_flight` | gauge | executions running a guest now |
//! | `attune_wasm_secret_requests_total{door,outcome}` | counter | secret requests of ended runs: `door` `env` / `get-secret` / `wasi-config`, `outcome` `delivered`, `not-found`, `access-denied`, `invalid-name`, `unavailable` |
//! | `attune_wasm_dispatches_given_up_total` | counter | dispatches given up after the database refused them [`super::service::MAX_REFUSALS`] times |
//!
//! The endpoint is a minimal HTTP/1.1 responder (one request per connection, `Connection:
//! close`): `GET /metrics` answers 200, other paths 404, other methods 405.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Error;
use crate::store::audit::{Door, Outcome};

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Longest request head read, bytes.
const MAX_REQUEST: usize = 8 * 1024;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SecretLabels {
    door: &'static str,
    outcome: &'static str,
}

/// The worker's counters; cheap to update from any task.
pub struct Metrics {
    registry: Registry,
    executions: Family<StatusLabel, Counter>,
    duration: Histogram,
    in_flight: Gauge,
    secrets: Family<SecretLabels, Counter>,
    given_up: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every series registered, at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let executions = Family::<StatusLabel, Counter>::default();
        registry.register(
            "attune_wasm_executions",
            "Executions this worker ended, by the terminal status it committed",
            executions.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.0005, 2.0, 18));
        registry.register_with_unit(
            "attune_wasm_execution_duration",
            "Run time of the executions that ran a guest",
            Unit::Seconds,
            duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "attune_wasm_executions_in_flight",
            "Executions running a guest now",
            in_flight.clone(),
        );
        let secrets = Family::<SecretLabels, Counter>::default();
        registry.register(
            "attune_wasm_secret_requests",
            "Secret requests of ended runs, by door and outcome",
            secrets.clone(),
        );
        let given_up = Counter::default();
        registry.register(
            "attune_wasm_dispatches_given_up",
            "Dispatches given up after the database refused them repeatedly",
            given_up.clone(),
        );
        // Statuses start at zero, so a scrape shows every series from the start.
        for status in ["completed", "failed", "timeout", "cancelled"] {
            let _ = executions.get_or_create(&StatusLabel { status });
        }
        Self {
            registry,
            executions,
            duration,
            in_flight,
            secrets,
            given_up,
        }
    }

    /// One execution ended with the terminal `status` (lowercase, one of Attune's).
    pub fn ended(&self, status: &str) {
        let status = match status {
            "completed" => "completed",
            "failed" => "failed",
            "timeout" => "timeout",
            "cancelled" => "cancelled",
            _ => "other",
        };
        self.executions.get_or_create(&StatusLabel { status }).inc();
    }

    /// The run time of an execution that ran a guest.
    pub fn observe_duration(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// `count` secret requests through `door` ended with `outcome`.
    pub fn secrets(&self, door: Door, outcome: Outcome, count: u64) {
        self.secrets
            .get_or_create(&SecretLabels {
                door: door.as_str(),
                outcome: outcome.as_str(),
            })
            .inc_by(count);
    }

    /// A dispatch was given up (see [`super::service::MAX_REFUSALS`]).
    pub fn given_up(&self) {
        self.given_up.inc();
    }

    /// Counts a guest running until the guard is dropped.
    pub fn running(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(self)
    }

    /// The exposition text (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail (fmt::Error only comes from the writer).
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// A guest counted in `attune_wasm_executions_in_flight` until dropped.
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// Binds the metrics endpoint.
///
/// # Errors
/// [`Error::Config`] when the address cannot be bound (in use, not local).
pub async fn bind(address: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(address).await.map_err(|e| {
        Error::Config(format!(
            "cannot serve metrics on worker.metrics_address: {e}"
        ))
    })
}

/// Answers `GET /metrics` on `listener` until the task is aborted; each connection gets 5 s.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("metrics endpoint: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, &metrics)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0_u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        (b"GET", b"/metrics") => ("200 OK", CONTENT_TYPE, metrics.encode()),
        (b"GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: the metrics are at /metrics\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET /metrics is served\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_exposition_counts_and_carries_no_label_but_status_door_outcome() {
        let m = Metrics::new();
        m.ended("completed");
        m.ended("completed");
        m.ended("failed");
        m.observe_duration(Duration::from_millis(3));
        m.secrets(Door::GetSecret, Outcome::Delivered, 2);
        m.secrets(Door::Env, Outcome::AccessDenied, 1);
        {
            let _running = m.running();
            assert!(m.encode().contains("attune_wasm_executions_in_flight 1\n"));
        }
        let text = m.encode();
        assert!(
            text.contains("attune_wasm_executions_total{status=\"completed\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("attune_wasm_executions_total{status=\"failed\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("attune_wasm_executions_total{status=\"timeout\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("attune_wasm_execution_duration_seconds_count 1\n"),
            "{text}"
        );
        assert!(
            text.contains("attune_wasm_executions_in_flight 0\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "attune_wasm_secret_requests_total{door=\"get-secret\",outcome=\"delivered\"} 2\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
