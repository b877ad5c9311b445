//! A published message as a queue keeps it, and how it maps onto a log record.
//!
//! Record layout (see `storage-format.md` § AMQP queues): key = routing key; headers
//! `e` = exchange name, `p` = the content header's property bytes exactly as the publisher sent
//! them (flags and list), `m` = one byte of flags (bit 0: persistent); body = the message body;
//! timestamp = when it was enqueued (ms).

use amq_protocol::protocol::basic::{parse_properties, AMQPProperties};
use bytes::Bytes;

use crate::storage::{Record, RecordView};

const HEADER_EXCHANGE: &[u8] = b"e";
const HEADER_PROPERTIES: &[u8] = b"p";
const HEADER_FLAGS: &[u8] = b"m";
const FLAG_PERSISTENT: u8 = 1;

#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub exchange: Bytes,
    pub routing_key: Bytes,
    /// The content header's property flags and values, byte for byte as published.
    pub raw_properties: Bytes,
    /// The same, decoded (for routing on headers, expiry, priority, persistence).
    pub properties: AMQPProperties,
    pub body: Bytes,
}

impl Message {
    /// Delivery mode 2.
    pub fn is_persistent(&self) -> bool {
        *self.properties.delivery_mode() == Some(2)
    }

    pub fn to_record(&self, timestamp_ms: i64) -> Record {
        let flags = if self.is_persistent() {
            FLAG_PERSISTENT
        } else {
            0
        };
        Record {
            timestamp_ms,
            key: Some(self.routing_key.clone()),
            headers: vec![
                (Bytes::from_static(HEADER_EXCHANGE), self.exchange.clone()),
                (
                    Bytes::from_static(HEADER_PROPERTIES),
                    self.raw_properties.clone(),
                ),
                (Bytes::from_static(HEADER_FLAGS), Bytes::from(vec![flags])),
            ],
            body: self.body.clone(),
        }
    }

    /// Decode a record written by [`Message::to_record`]; `None` if it is not one.
    pub fn from_record(record: &RecordView<'_>) -> Option<Message> {
        let header = |name: &[u8]| {
            record
                .headers()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| Bytes::copy_from_slice(v))
        };
        let raw_properties = header(HEADER_PROPERTIES)?;
        let properties = parse_properties(&raw_properties[..]).ok()?.1;
        Some(Message {
            exchange: header(HEADER_EXCHANGE)?,
            routing_key: Bytes::copy_from_slice(record.key.unwrap_or_default()),
            raw_properties,
            properties,
            body: Bytes::copy_from_slice(record.body),
        })
    }

    /// Whether the record was published persistent (read without decoding properties).
    pub fn record_is_persistent(record: &RecordView<'_>) -> bool {
        record
            .headers()
            .find(|(k, _)| *k == HEADER_FLAGS)
            .is_some_and(|(_, v)| v.first().is_some_and(|f| f & FLAG_PERSISTENT != 0))
    }
}
