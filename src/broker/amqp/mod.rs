//! The AMQP 0-9-1 model (one virtual host, `/`): exchanges that route into queues, queues that
//! are logs with an acknowledgement cursor, and the bindings between them. Protocol-neutral in
//! the sense that nothing here reads frames; errors carry RabbitMQ's reply codes and texts so a
//! front end can send them as they are.
//!
//! On disk: durable queues are catalog entities (`queues/<id>/`, a log each), their
//! acknowledgement state and the definitions (durable exchanges and bindings) changes in the
//! write-ahead log and snapshots in the metadata store; see [`vhost`] and [`acks`].

pub mod acks;
pub mod args;
pub mod definitions;
pub mod exchange;
pub mod message;
pub mod queue;
pub mod ranges;
pub mod runtime;
pub mod vhost;

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::storage::{Durability, LogConfig};
pub use exchange::{Binding, Destination, Exchange, ExchangeKind};
pub use message::Message;
pub use queue::{
    Backlog, ChannelLimit, ConsumerSpec, DeadLetter, DeadReason, Delivery, Queue, QueueError,
    QueueEvent,
};
pub use vhost::{VhostRecovery, VirtualHost};

/// AMQP reply codes (the spec's constants, as RabbitMQ uses them).
pub mod code {
    pub const CONTENT_TOO_LARGE: u16 = 311;
    pub const NO_ROUTE: u16 = 312;
    pub const CONNECTION_FORCED: u16 = 320;
    pub const INVALID_PATH: u16 = 402;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const RESOURCE_ERROR: u16 = 506;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;
}

/// An error as an AMQP close: code and text (`NOT_FOUND - no queue 'q' in vhost '/'`). Codes
/// below 500 close the channel, the rest the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpError {
    pub code: u16,
    pub text: String,
}

impl AmqpError {
    pub fn new(code: u16, text: impl Into<String>) -> AmqpError {
        let name = match code {
            code::NOT_FOUND => "NOT_FOUND",
            code::ACCESS_REFUSED => "ACCESS_REFUSED",
            code::RESOURCE_LOCKED => "RESOURCE_LOCKED",
            code::PRECONDITION_FAILED => "PRECONDITION_FAILED",
            code::FRAME_ERROR => "FRAME_ERROR",
            code::SYNTAX_ERROR => "SYNTAX_ERROR",
            code::COMMAND_INVALID => "COMMAND_INVALID",
            code::CHANNEL_ERROR => "CHANNEL_ERROR",
            code::UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
            code::RESOURCE_ERROR => "RESOURCE_ERROR",
            code::NOT_ALLOWED => "NOT_ALLOWED",
            code::NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
            code::INTERNAL_ERROR => "INTERNAL_ERROR",
            code::CONNECTION_FORCED => "CONNECTION_FORCED",
            code::INVALID_PATH => "INVALID_PATH",
            _ => "ERROR",
        };
        AmqpError {
            code,
            text: format!("{name} - {}", text.into()),
        }
    }

    pub fn closes_connection(&self) -> bool {
        self.code >= 500 || self.code == code::CONNECTION_FORCED
    }

    fn no_exchange(name: &str) -> AmqpError {
        AmqpError::new(
            code::NOT_FOUND,
            format!("no exchange '{name}' in vhost '/'"),
        )
    }

    pub fn no_queue(name: &str) -> AmqpError {
        AmqpError::new(code::NOT_FOUND, format!("no queue '{name}' in vhost '/'"))
    }

    fn locked(name: &str) -> AmqpError {
        AmqpError::new(
            code::RESOURCE_LOCKED,
            format!(
                "cannot obtain exclusive access to locked queue '{name}' in vhost '/'. It could \
                 be originally declared on another connection or the exclusive property value \
                 does not match that of the original declaration."
            ),
        )
    }
}

/// RabbitMQ's equivalence check on redeclaration: the first property whose requested value
/// (`received`) differs from the existing one (`current`) is the error.
fn check_equivalent(
    what: &str,
    name: &str,
    properties: &[(&str, String, String)],
) -> Result<(), AmqpError> {
    match properties.iter().find(|(_, received, current)| received != current) {
        None => Ok(()),
        Some((arg, received, current)) => Err(AmqpError::new(
            code::PRECONDITION_FAILED,
            format!(
                "inequivalent arg '{arg}' for {what} '{name}' in vhost '/': received '{received}' but current is '{current}'"
            ),
        )),
    }
}

/// RabbitMQ's name for a field value's type in equivalence errors.
fn type_name(value: &AMQPValue) -> &'static str {
    match value {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) | AMQPValue::ShortInt(_) | AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::ShortShortUInt(_) | AMQPValue::ShortUInt(_) | AMQPValue::LongUInt(_) => {
            "unsignedint"
        }
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

fn value_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(v) => v.to_string(),
        AMQPValue::ShortInt(v) => v.to_string(),
        AMQPValue::LongInt(v) => v.to_string(),
        AMQPValue::LongLongInt(v) => v.to_string(),
        AMQPValue::ShortShortUInt(v) => v.to_string(),
        AMQPValue::ShortUInt(v) => v.to_string(),
        AMQPValue::LongUInt(v) => v.to_string(),
        AMQPValue::Timestamp(v) => v.to_string(),
        other => format!("{other:?}"),
    }
}

/// Queue arguments that must match on redeclaration (the ones RabbitMQ checks).
const EQUIVALENT_QUEUE_ARGS: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-message-ttl",
    "x-overflow",
    "x-queue-type",
    "x-single-active-consumer",
];

/// Numeric argument values compare by value whatever integer type carried them.
fn same_value(a: &AMQPValue, b: &AMQPValue) -> bool {
    match (args::integer(a), args::integer(b)) {
        (Some(x), Some(y)) => x == y,
        _ => value_text(a) == value_text(b) && type_name(a) == type_name(b),
    }
}

fn check_queue_args(
    name: &str,
    current: &FieldTable,
    received: &FieldTable,
) -> Result<(), AmqpError> {
    for arg in EQUIVALENT_QUEUE_ARGS {
        let (r, c) = (received.inner().get(*arg), current.inner().get(*arg));
        let same = match (r, c) {
            (None, None) => true,
            (Some(r), Some(c)) => same_value(r, c),
            _ => false,
        };
        if same {
            continue;
        }
        let describe = |v: Option<&AMQPValue>| match v {
            Some(v) => format!("the value '{}' of type '{}'", value_text(v), type_name(v)),
            None => "none".to_string(),
        };
        return Err(AmqpError::new(
            code::PRECONDITION_FAILED,
            format!(
                "inequivalent arg '{arg}' for queue '{name}' in vhost '/': received {} but current is {}",
                describe(r),
                describe(c)
            ),
        ));
    }
    Ok(())
}

/// What `queue.declare` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueDeclared {
    pub name: String,
    pub message_count: u32,
    pub consumer_count: u32,
}

/// `queue.declare`'s request.
#[derive(Clone, Debug, Default)]
pub struct QueueDeclare {
    pub name: String,
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// `exchange.declare`'s request.
#[derive(Clone, Debug)]
pub struct ExchangeDeclare {
    pub name: String,
    pub kind: String,
    pub passive: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

/// Segment size of a classic queue's log.
const QUEUE_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// A queue's log: the server's durability for durable queues, none for the others; a
/// stream's retention from `x-max-age` and `x-max-length-bytes`.
fn queue_log_config(template: &LogConfig, durable: bool, args: &args::QueueArgs) -> LogConfig {
    let mut config = LogConfig {
        durability: if durable {
            template.durability
        } else {
            Durability::Never
        },
        ..template.clone()
    };
    if !args.stream {
        // Acknowledged segments are dropped whole; smaller ones make disk use follow the
        // backlog more closely.
        config.segment_bytes_max = config.segment_bytes_max.min(QUEUE_SEGMENT_BYTES);
    }
    if args.stream {
        config.retention = crate::storage::Retention {
            bytes_max: args.max_length_bytes,
            age_max: args.max_age,
            records_max: None,
        };
        if args.max_age.is_some() || args.max_length_bytes.is_some() {
            // Retention drops whole segments: keep them small enough to follow the limits.
            config.segment_bytes_max = config.segment_bytes_max.min(16 * 1024 * 1024);
            config.segment_age_max = args.max_age.map(|a| a / 4);
        }
    }
    config
}

/// `prefix` and 22 URL-safe base64 characters, as RabbitMQ makes server-chosen names
/// (`amq.gen-` queues, `amq.ctag-` consumer tags).
pub fn generated_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let suffix: String = (0..22)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{suffix}")
}
