//! Attune's message protocol on RabbitMQ, as its own services speak it (checked against
//! Attune's sources: `docs/attune-protocol.md` names the files and commits).
//!
//! - Exchange `attune.executions` (topic, durable) carries every execution message; `attune.dlx`
//!   (direct, durable) receives what a worker queue dead-letters, kept in `attune.dlx.queue`.
//! - Each worker `{id}` (its `attune.worker` row) consumes `worker.{id}.executions` (routing
//!   key `execution.dispatch.worker.{id}`, arguments `x-dead-letter-exchange: attune.dlx` and
//!   `x-message-ttl: 300000` as a 32-bit integer) and `worker.{id}.cancel`
//!   (`execution.cancel.worker.{id}`, dead-lettering only). RabbitMQ refuses a re-declaration
//!   with other arguments, so these are exactly Attune's.
//! - Every message is a JSON envelope ([`Envelope`]) published persistent with
//!   `content_type: application/json`, under publisher confirms.

use lapin::message::Delivery;
use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::{Deserialize, Serialize};

use super::Error;

/// The exchange of every execution message (topic).
pub const EXECUTIONS_EXCHANGE: &str = "attune.executions";
/// The dead-letter exchange (direct).
pub const DEAD_LETTER_EXCHANGE: &str = "attune.dlx";
/// The queue bound to [`DEAD_LETTER_EXCHANGE`] with `#`.
pub const DEAD_LETTER_QUEUE: &str = "attune.dlx.queue";
/// `x-message-ttl` of a worker's execution queue (Attune's `worker_queue_ttl_ms`), ms.
pub const WORKER_QUEUE_TTL_MS: i32 = 300_000;
/// Routing key of `ExecutionStatusChanged`.
pub const STATUS_CHANGED_KEY: &str = "execution.status.changed";
/// Routing key of `ExecutionCompleted`.
pub const COMPLETED_KEY: &str = "execution.completed";
/// `message_type` of a dispatch.
pub const EXECUTION_REQUESTED: &str = "ExecutionRequested";
/// Service name in `headers.source_service`.
pub const SOURCE_SERVICE: &str = "attune-wasm-worker";
/// AMQP header of a dispatch that the worker put back in its queue after Attune's database
/// refused the execution's update (fault K5): the refusals so far. Attune's queues are
/// classic queues, which count no deliveries (`x-delivery-count` is a quorum-queue header),
/// so the count travels with the message itself and survives a restart of the worker.
pub const REFUSALS_HEADER: &str = "x-attune-wasm-refusals";

/// The dispatch queue of worker `id`.
pub fn executions_queue(id: i64) -> String {
    format!("worker.{id}.executions")
}

/// The routing key of dispatches to worker `id`.
pub fn dispatch_key(id: i64) -> String {
    format!("execution.dispatch.worker.{id}")
}

/// The cancel queue of worker `id`.
pub fn cancel_queue(id: i64) -> String {
    format!("worker.{id}.cancel")
}

/// The routing key of cancel requests to worker `id`.
pub fn cancel_key(id: i64) -> String {
    format!("execution.cancel.worker.{id}")
}

/// Attune's message envelope. Incoming: only `message_type` and `payload` are required
/// (missing ids and version are tolerated, unknown fields ignored, as Attune does).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Envelope<T> {
    /// UUID of this message.
    #[serde(default)]
    pub message_id: Option<String>,
    /// UUID shared by related messages.
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// PascalCase message type, e.g. `ExecutionRequested`.
    pub message_type: String,
    /// Envelope version, `"1.0"`.
    #[serde(default)]
    pub version: Option<String>,
    /// RFC 3339 creation time.
    #[serde(default)]
    pub timestamp: Option<String>,
    /// `retry_count`, `source_service`, `trace_id`, ….
    #[serde(default)]
    pub headers: serde_json::Value,
    /// The message itself.
    pub payload: T,
}

impl<T> Envelope<T> {
    /// A new envelope from this service: fresh message id, `correlation_id` as given (or the
    /// message id), version 1.0, now.
    pub fn new(message_type: &str, payload: T, correlation_id: Option<String>) -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        Self {
            correlation_id: Some(correlation_id.unwrap_or_else(|| id.clone())),
            message_id: Some(id),
            message_type: message_type.to_owned(),
            version: Some("1.0".to_owned()),
            timestamp: Some(now_rfc3339()),
            headers: serde_json::json!({ "retry_count": 0, "source_service": SOURCE_SERVICE }),
            payload,
        }
    }
}

/// `ExecutionRequested` payload. Only `execution_id` is relied on: the worker reloads the rest
/// from the database.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ExecutionRequested {
    /// `attune.execution.id`.
    pub execution_id: i64,
    /// The action's id, when known.
    #[serde(default)]
    pub action_id: Option<i64>,
    /// The action's ref.
    #[serde(default)]
    pub action_ref: Option<String>,
    /// Parent execution (workflows).
    #[serde(default)]
    pub parent_id: Option<i64>,
    /// Enforcement that created the execution.
    #[serde(default)]
    pub enforcement_id: Option<i64>,
    /// Parameters snapshot (the worker reads `execution.config` instead).
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

/// `ExecutionStatusChanged` payload (key [`STATUS_CHANGED_KEY`]).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct StatusChanged {
    /// Execution id.
    pub execution_id: i64,
    /// Action ref.
    pub action_ref: String,
    /// Status before, lowercase.
    pub previous_status: String,
    /// Status after, lowercase.
    pub new_status: String,
    /// RFC 3339.
    pub changed_at: String,
}

/// `ExecutionCompleted` payload (key [`COMPLETED_KEY`]): frees the scheduler's concurrency
/// slot and advances workflows.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Completed {
    /// Execution id.
    pub execution_id: i64,
    /// Action id.
    pub action_id: i64,
    /// Action ref.
    pub action_ref: String,
    /// Terminal status, lowercase.
    pub status: String,
    /// The `result` written to the execution row.
    pub result: Option<serde_json::Value>,
    /// RFC 3339.
    pub completed_at: String,
}

/// Now as RFC 3339 with microseconds, UTC (`Z`).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Connects to the broker at `url` (`message_queue.url`, checked when the configuration is
/// read: `amqp://` or `amqps://`); `amqps://` connects over TLS (rustls, the system's trusted
/// certificates).
///
/// # Errors
/// [`Error::Config`] when `url` is not an AMQP URL; [`Error::Broker`] when the connection
/// fails: the message names the setting, its scheme, host and port (never the user or the
/// password), and for `amqps://` says what a TLS failure usually means.
pub async fn connect(url: &str) -> Result<Connection, Error> {
    let uri: AMQPUri = url.parse().map_err(|_| {
        Error::Config("message_queue.url must be an AMQP URL (amqp://user:password@host:port/vhost, or amqps:// for TLS)".into())
    })?;
    let (tls, host, port) = (
        uri.scheme == AMQPScheme::AMQPS,
        uri.authority.host.clone(),
        uri.authority.port,
    );
    Connection::connect_uri(uri, ConnectionProperties::default())
        .await
        .map_err(|e| {
            if tls {
                Error::Broker(format!(
                    "cannot connect to message_queue.url (amqps://{host}:{port}, TLS): {e}; is that port a TLS listener (RabbitMQ's is usually 5671) with a certificate this host trusts?"
                ))
            } else {
                Error::Broker(format!(
                    "cannot connect to message_queue.url (amqp://{host}:{port}): {e}"
                ))
            }
        })
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        auto_delete: false,
        ..ExchangeDeclareOptions::default()
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        exclusive: false,
        auto_delete: false,
        ..QueueDeclareOptions::default()
    }
}

/// Declares `attune.executions` and the dead-letter exchange and queue, exactly as Attune's
/// `setup_common_infrastructure` does (idempotent; any service may run it).
///
/// # Errors
/// [`Error::Declare`] naming the exchange or queue.
pub async fn declare_common(channel: &Channel) -> Result<(), Error> {
    let declare_err = |what: &str| {
        let what = what.to_owned();
        move |e: lapin::Error| Error::Declare {
            what,
            reason: e.to_string(),
        }
    };
    channel
        .exchange_declare(
            EXECUTIONS_EXCHANGE.into(),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
        .map_err(declare_err("exchange attune.executions"))?;
    channel
        .exchange_declare(
            DEAD_LETTER_EXCHANGE.into(),
            ExchangeKind::Direct,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
        .map_err(declare_err("exchange attune.dlx"))?;
    channel
        .queue_declare(
            DEAD_LETTER_QUEUE.into(),
            durable_queue(),
            FieldTable::default(),
        )
        .await
        .map_err(declare_err("queue attune.dlx.queue"))?;
    channel
        .queue_bind(
            DEAD_LETTER_QUEUE.into(),
            DEAD_LETTER_EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(declare_err("binding of attune.dlx.queue"))?;
    Ok(())
}

/// Declares and binds worker `id`'s dispatch and cancel queues with Attune's arguments
/// (`setup_worker_infrastructure`, dead-lettering on).
///
/// # Errors
/// [`Error::Declare`] naming the queue; a queue that already exists with other arguments is
/// refused by RabbitMQ (PRECONDITION_FAILED) and reported once, never retried in a loop.
pub async fn declare_worker(channel: &Channel, id: i64) -> Result<(), Error> {
    let mut dispatch_args = FieldTable::default();
    dispatch_args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()),
    );
    dispatch_args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongInt(WORKER_QUEUE_TTL_MS),
    );
    let mut cancel_args = FieldTable::default();
    cancel_args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()),
    );
    for (queue, key, args, expected) in [
        (
            executions_queue(id),
            dispatch_key(id),
            dispatch_args,
            "x-dead-letter-exchange=attune.dlx, x-message-ttl=300000",
        ),
        (
            cancel_queue(id),
            cancel_key(id),
            cancel_args,
            "x-dead-letter-exchange=attune.dlx",
        ),
    ] {
        channel
            .queue_declare(queue.as_str().into(), durable_queue(), args)
            .await
            .map_err(|e| Error::Declare {
                what: format!("queue {queue} (durable, arguments {expected})"),
                reason: e.to_string(),
            })?;
        channel
            .queue_bind(
                queue.as_str().into(),
                EXECUTIONS_EXCHANGE.into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| Error::Declare {
                what: format!("binding of queue {queue} to {EXECUTIONS_EXCHANGE} with {key}"),
                reason: e.to_string(),
            })?;
    }
    // Dead letters keep their routing key, and `attune.dlx` is a direct exchange: Attune's
    // binding of `attune.dlx.queue` with `#` matches only the literal key `#`, so a dead-lettered
    // dispatch would be dropped. One more binding (no queue argument changes) keeps ours.
    let key = dispatch_key(id);
    channel
        .queue_bind(
            DEAD_LETTER_QUEUE.into(),
            DEAD_LETTER_EXCHANGE.into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| Error::Declare {
            what: format!("binding of {DEAD_LETTER_QUEUE} to {DEAD_LETTER_EXCHANGE} with {key}"),
            reason: e.to_string(),
        })?;
    Ok(())
}

/// Publishes `envelope` on `attune.executions` with `routing_key`, persistent JSON, and waits
/// for the broker's confirmation (the channel must be in confirm mode). `mandatory`: a message
/// no queue is bound for is returned, and that is an error.
///
/// # Errors
/// [`Error::Broker`] when the publish fails or the broker does not confirm it,
/// [`Error::NotRouted`] when a mandatory message was returned.
pub async fn publish<T: Serialize>(
    channel: &Channel,
    routing_key: &str,
    envelope: &Envelope<T>,
    mandatory: bool,
) -> Result<(), Error> {
    let confirm = send(channel, routing_key, envelope, mandatory).await?;
    confirmed(routing_key, confirm).await
}

/// [`publish`] without waiting for the confirmation: the message is sent, and
/// [`confirmed`] waits for the broker's answer later (messages on one channel keep their
/// order, so one published after it is delivered after it).
///
/// # Errors
/// [`Error::Broker`] when the message cannot be sent.
pub async fn send<T: Serialize>(
    channel: &Channel,
    routing_key: &str,
    envelope: &Envelope<T>,
    mandatory: bool,
) -> Result<lapin::PublisherConfirm, Error> {
    let body = serde_json::to_vec(envelope)
        .map_err(|e| Error::Broker(format!("cannot encode a message: {e}")))?;
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    if let Some(id) = &envelope.message_id {
        properties = properties.with_message_id(id.as_str().into());
    }
    channel
        .basic_publish(
            EXECUTIONS_EXCHANGE.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory,
                ..BasicPublishOptions::default()
            },
            &body,
            properties,
        )
        .await
        .map_err(|e| Error::Broker(format!("publish to {routing_key} failed: {e}")))
}

/// Waits for the broker's answer to a message [`send`] sent to `routing_key`.
///
/// # Errors
/// [`Error::Broker`] when the broker does not confirm it (a nack, or the channel closed),
/// [`Error::NotRouted`] when a mandatory message was returned.
pub async fn confirmed(routing_key: &str, confirm: lapin::PublisherConfirm) -> Result<(), Error> {
    let confirm = confirm
        .await
        .map_err(|e| Error::Broker(format!("publish to {routing_key} not confirmed: {e}")))?;
    if confirm.is_nack() {
        return Err(Error::Broker(format!(
            "the broker refused a message to {routing_key}"
        )));
    }
    if confirm.take_message().is_some() {
        return Err(Error::NotRouted(routing_key.to_owned()));
    }
    Ok(())
}

/// The refusal count a dispatch carries ([`REFUSALS_HEADER`]; 0 when it has none).
pub fn refusals(properties: &BasicProperties) -> u32 {
    let value = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(REFUSALS_HEADER).cloned());
    let count = match value {
        Some(AMQPValue::LongLongInt(n)) => n,
        Some(AMQPValue::LongInt(n)) => n.into(),
        Some(AMQPValue::LongUInt(n)) => n.into(),
        Some(AMQPValue::ShortInt(n)) => n.into(),
        Some(AMQPValue::ShortUInt(n)) => n.into(),
        Some(AMQPValue::ShortShortInt(n)) => n.into(),
        Some(AMQPValue::ShortShortUInt(n)) => n.into(),
        _ => 0,
    };
    u32::try_from(count).unwrap_or(0)
}

/// Publishes a copy of `delivery` (same body, properties, exchange and routing key) with
/// [`REFUSALS_HEADER`] set to `refusals`, mandatory, and waits for the broker's confirmation
/// (the channel must be in confirm mode). The caller then acknowledges the original.
///
/// # Errors
/// [`Error::Broker`] when the publish fails or is not confirmed, [`Error::NotRouted`] when no
/// queue took it.
pub async fn republish(channel: &Channel, delivery: &Delivery, refusals: u32) -> Result<(), Error> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        REFUSALS_HEADER.into(),
        AMQPValue::LongLongInt(refusals.into()),
    );
    let properties = delivery.properties.clone().with_headers(headers);
    let key = delivery.routing_key.as_str();
    let confirm = channel
        .basic_publish(
            delivery.exchange.clone(),
            delivery.routing_key.clone(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &delivery.data,
            properties,
        )
        .await
        .map_err(|e| Error::Broker(format!("publish to {key} failed: {e}")))?
        .await
        .map_err(|e| Error::Broker(format!("publish to {key} not confirmed: {e}")))?;
    if confirm.is_nack() {
        return Err(Error::Broker(format!(
            "the broker refused a message to {key}"
        )));
    }
    if confirm.take_message().is_some() {
        return Err(Error::NotRouted(key.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn dispatch_of_attunes_shape_parses_and_unknown_fields_are_ignored() {
        let text = r#"{"message_id":"6f1c1d5e-9a4e-4a53-8f0e-0d3f6c1b2a11","correlation_id":null,
            "message_type":"ExecutionRequested","version":"1.0","timestamp":"2026-09-01T10:00:00Z",
            "headers":{"retry_count":0,"source_service":"executor"},
            "payload":{"execution_id":42,"action_id":7,"action_ref":"p.a","parent_id":null,
            "enforcement_id":null,"config":{"x":1},"release_id":3}}"#;
        let e: Envelope<ExecutionRequested> = serde_json::from_str(text).unwrap();
        assert_eq!(e.message_type, "ExecutionRequested");
        assert_eq!(e.payload.execution_id, 42);
        let minimal: Envelope<ExecutionRequested> = serde_json::from_str(
            r#"{"message_type":"ExecutionRequested","payload":{"execution_id":1}}"#,
        )
        .unwrap();
        assert_eq!(minimal.payload.execution_id, 1);
    }

    #[test]
    fn the_refusal_count_is_read_from_any_integer_header() {
        assert_eq!(refusals(&BasicProperties::default()), 0);
        for (value, expected) in [
            (AMQPValue::LongLongInt(3), 3),
            (AMQPValue::LongInt(4), 4),
            (AMQPValue::ShortShortUInt(2), 2),
            (AMQPValue::LongLongInt(-1), 0),
            (AMQPValue::LongString("7".into()), 0),
        ] {
            let mut headers = FieldTable::default();
            headers.insert(REFUSALS_HEADER.into(), value);
            let properties = BasicProperties::default().with_headers(headers);
            assert_eq!(refusals(&properties), expected);
        }
    }

    /// A TLS connection to a port that speaks plain AMQP (as RabbitMQ's 5672 answers a TLS
    /// hello: its protocol header, then close) fails with an error naming the setting and
    /// TLS, never the password.
    #[tokio::test]
    async fn amqps_to_a_plain_amqp_port_is_a_clear_error_without_the_password() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut hello = [0_u8; 512];
            let _ = socket.read(&mut hello).await;
            let _ = socket.write_all(b"AMQP\x00\x00\x09\x01").await;
            let _ = socket.shutdown().await;
            hello[0]
        });
        let url = format!("amqps://guest:tls-pw-0123456789@127.0.0.1:{port}/%2f");
        let e = connect(&url).await.err().unwrap().to_string();
        assert!(
            e.contains("message_queue.url") && e.contains("TLS") && e.contains(&port.to_string()),
            "{e}"
        );
        assert!(!e.contains("tls-pw-0123456789"), "{e}");
        // What the client sent first was a TLS handshake record (0x16), not AMQP.
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), server)
            .await
            .expect("the client connected to the port")
            .unwrap();
        assert_eq!(first, 0x16);
    }

    #[test]
    fn names_follow_attune() {
        assert_eq!(executions_queue(3), "worker.3.executions");
        assert_eq!(dispatch_key(3), "execution.dispatch.worker.3");
        assert_eq!(cancel_queue(3), "worker.3.cancel");
        assert_eq!(cancel_key(3), "execution.cancel.worker.3");
        let e = Envelope::new("ExecutionCompleted", 1, None);
        assert_eq!(e.correlation_id, e.message_id);
        assert!(e.timestamp.unwrap().ends_with('Z'));
    }
}
