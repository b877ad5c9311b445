//! A published message as a queue keeps it, and how it maps onto a log record.
//!
//! Record layout (see `storage-format.md` § AMQP queues): key = routing key; headers
//! `e` = exchange name, `p` = the content header's property bytes exactly as the publisher sent
//! them (flags and list), `m` = one byte of flags (bit 0: persistent); body = the message body;
//! timestamp = when it was enqueued (ms).

use amq_protocol::protocol::basic::{gen_properties, parse_properties, AMQPProperties};
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
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
    /// When the queue took it (ms since the epoch): the start of its TTL.
    pub enqueued_ms: i64,
}

impl Message {
    /// Delivery mode 2.
    pub fn is_persistent(&self) -> bool {
        *self.properties.delivery_mode() == Some(2)
    }

    /// Per-message TTL from the `expiration` property (milliseconds, as a decimal string).
    pub fn expiration_ms(&self) -> Option<u64> {
        self.properties
            .expiration()
            .as_ref()
            .and_then(|e| e.as_str().parse().ok())
    }

    pub fn to_record(&self) -> Record {
        let timestamp_ms = self.enqueued_ms;
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
            enqueued_ms: record.timestamp_ms,
        })
    }

    /// A stream delivery of the record at `offset`: its raw properties with an
    /// `x-stream-offset` header spliced in, without decoding them (`properties` stays empty:
    /// nothing on the stream delivery path reads it). `None` if it is not a message record.
    pub fn stream_delivery(record: &RecordView<'_>) -> Option<Message> {
        let header = |name: &[u8]| record.headers().find(|(k, _)| *k == name).map(|(_, v)| v);
        let raw = with_offset_header(header(HEADER_PROPERTIES)?, record.offset)?;
        Some(Message {
            exchange: Bytes::copy_from_slice(header(HEADER_EXCHANGE)?),
            routing_key: Bytes::copy_from_slice(record.key.unwrap_or_default()),
            raw_properties: Bytes::from(raw),
            properties: AMQPProperties::default(),
            body: Bytes::copy_from_slice(record.body),
            enqueued_ms: record.timestamp_ms,
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

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes()))
}

/// `properties` with `headers` replaced and `expiration` removed (the setters cannot unset).
fn rebuilt(properties: &AMQPProperties, headers: FieldTable) -> AMQPProperties {
    let mut p = AMQPProperties::default().with_headers(headers);
    let copy = |v: &Option<ShortString>| v.clone();
    if let Some(v) = copy(properties.content_type()) {
        p = p.with_content_type(v);
    }
    if let Some(v) = copy(properties.content_encoding()) {
        p = p.with_content_encoding(v);
    }
    if let Some(v) = *properties.delivery_mode() {
        p = p.with_delivery_mode(v);
    }
    if let Some(v) = *properties.priority() {
        p = p.with_priority(v);
    }
    if let Some(v) = copy(properties.correlation_id()) {
        p = p.with_correlation_id(v);
    }
    if let Some(v) = copy(properties.reply_to()) {
        p = p.with_reply_to(v);
    }
    if let Some(v) = copy(properties.message_id()) {
        p = p.with_message_id(v);
    }
    if let Some(v) = *properties.timestamp() {
        p = p.with_timestamp(v);
    }
    if let Some(v) = copy(properties.kind()) {
        p = p.with_type(v);
    }
    if let Some(v) = copy(properties.user_id()) {
        p = p.with_user_id(v);
    }
    if let Some(v) = copy(properties.app_id()) {
        p = p.with_app_id(v);
    }
    if let Some(v) = copy(properties.cluster_id()) {
        p = p.with_cluster_id(v);
    }
    p
}

impl Message {
    /// The message as dead-lettered from `queue` for `reason`, to be published to
    /// `exchange` with `routing_key`: RabbitMQ's `x-death` history (one entry per queue and
    /// reason, newest first, with a count), the `x-first-death-*` headers, and the
    /// `expiration` property moved to the entry's `original-expiration`.
    pub fn dead_lettered(
        &self,
        queue: &str,
        reason: &str,
        exchange: &str,
        routing_key: &str,
        now_ms: i64,
    ) -> Message {
        let mut headers = self.properties.headers().clone().unwrap_or_default();
        let mut deaths: Vec<AMQPValue> = match headers.inner().get("x-death") {
            Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
            _ => Vec::new(),
        };
        let same = deaths.iter().position(|d| match d {
            AMQPValue::FieldTable(t) => {
                t.inner()
                    .get("queue")
                    .and_then(super::args::text)
                    .as_deref()
                    == Some(queue)
                    && t.inner()
                        .get("reason")
                        .and_then(super::args::text)
                        .as_deref()
                        == Some(reason)
            }
            _ => false,
        });
        let entry = match same.map(|i| deaths.remove(i)) {
            Some(AMQPValue::FieldTable(mut t)) => {
                let count = match t.inner().get("count") {
                    Some(AMQPValue::LongLongInt(n)) => *n,
                    _ => 0,
                };
                t.insert("count".into(), AMQPValue::LongLongInt(count + 1));
                t
            }
            _ => {
                let mut t = FieldTable::default();
                t.insert("count".into(), AMQPValue::LongLongInt(1));
                t.insert("reason".into(), long_string(reason));
                t.insert("queue".into(), long_string(queue));
                t.insert(
                    "time".into(),
                    AMQPValue::Timestamp(u64::try_from(now_ms / 1000).unwrap_or(0)),
                );
                t.insert(
                    "exchange".into(),
                    long_string(&String::from_utf8_lossy(&self.exchange)),
                );
                let key = long_string(&String::from_utf8_lossy(&self.routing_key));
                t.insert(
                    "routing-keys".into(),
                    AMQPValue::FieldArray(FieldArray::from(vec![key])),
                );
                if let Some(expiration) = self.properties.expiration() {
                    t.insert(
                        "original-expiration".into(),
                        long_string(expiration.as_str()),
                    );
                }
                t
            }
        };
        deaths.insert(0, AMQPValue::FieldTable(entry));
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(deaths)),
        );
        if !headers.contains_key("x-first-death-exchange") {
            let first_exchange = String::from_utf8_lossy(&self.exchange).into_owned();
            headers.insert(
                "x-first-death-exchange".into(),
                long_string(&first_exchange),
            );
            headers.insert("x-first-death-queue".into(), long_string(queue));
            headers.insert("x-first-death-reason".into(), long_string(reason));
        }
        let properties = rebuilt(&self.properties, headers);
        let raw =
            cookie_factory::gen_simple(gen_properties(&properties), Vec::new()).unwrap_or_default();
        Message {
            exchange: Bytes::from(exchange.to_string().into_bytes()),
            routing_key: Bytes::from(routing_key.to_string().into_bytes()),
            raw_properties: Bytes::from(raw),
            properties,
            body: self.body.clone(),
            enqueued_ms: now_ms,
        }
    }
}

/// Splice `x-stream-offset: long(offset)` into raw basic properties (flags, then the property
/// list in flag order: content-type and content-encoding as short strings, then the headers
/// table). Adds a headers table if there is none. `None` if the bytes are malformed.
fn with_offset_header(raw: &[u8], offset: u64) -> Option<Vec<u8>> {
    const CONTENT_TYPE: u16 = 1 << 15;
    const CONTENT_ENCODING: u16 = 1 << 14;
    const HEADERS: u16 = 1 << 13;
    let mut entry = Vec::with_capacity(25);
    entry.push(15);
    entry.extend_from_slice(b"x-stream-offset");
    entry.push(b'l');
    entry.extend_from_slice(&i64::try_from(offset).unwrap_or(i64::MAX).to_be_bytes());
    let flags = u16::from_be_bytes([*raw.first()?, *raw.get(1)?]);
    let mut pos = 2;
    for bit in [CONTENT_TYPE, CONTENT_ENCODING] {
        if flags & bit != 0 {
            pos += 1 + usize::from(*raw.get(pos)?);
        }
    }
    let mut out = Vec::with_capacity(raw.len() + 29);
    if flags & HEADERS != 0 {
        let len_bytes = raw.get(pos..pos + 4)?;
        let len = u32::from_be_bytes(len_bytes.try_into().ok()?) as usize;
        let table_end = pos.checked_add(4)?.checked_add(len)?;
        if table_end > raw.len() {
            return None;
        }
        out.extend_from_slice(&raw[..pos]);
        out.extend_from_slice(&((len + entry.len()) as u32).to_be_bytes());
        out.extend_from_slice(&raw[pos + 4..table_end]);
        out.extend_from_slice(&entry);
        out.extend_from_slice(&raw[table_end..]);
    } else {
        if pos > raw.len() {
            return None;
        }
        out.extend_from_slice(&(flags | HEADERS).to_be_bytes());
        out.extend_from_slice(&raw[2..pos]);
        out.extend_from_slice(&(entry.len() as u32).to_be_bytes());
        out.extend_from_slice(&entry);
        out.extend_from_slice(&raw[pos..]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(p: &AMQPProperties) -> Vec<u8> {
        cookie_factory::gen_simple(gen_properties(p), Vec::new()).unwrap()
    }

    #[test]
    fn the_stream_offset_header_is_spliced_into_any_properties() {
        let mut headers = FieldTable::default();
        headers.insert(
            "a".into(),
            AMQPValue::LongString(LongString::from(&b"b"[..])),
        );
        let cases = [
            AMQPProperties::default(),
            AMQPProperties::default()
                .with_delivery_mode(2)
                .with_priority(4),
            AMQPProperties::default()
                .with_content_type("text/plain".into())
                .with_content_encoding("gzip".into())
                .with_headers(headers.clone())
                .with_correlation_id("c".into()),
            AMQPProperties::default()
                .with_headers(headers)
                .with_app_id("x".into()),
        ];
        for original in cases {
            let raw = with_offset_header(&encode(&original), 42).unwrap();
            let (rest, parsed) = parse_properties(&raw[..]).unwrap();
            assert!(rest.is_empty());
            let mut expected_headers = original.headers().clone().unwrap_or_default();
            expected_headers.insert("x-stream-offset".into(), AMQPValue::LongLongInt(42));
            assert_eq!(parsed.headers().as_ref(), Some(&expected_headers));
            assert_eq!(parsed.delivery_mode(), original.delivery_mode());
            assert_eq!(parsed.content_type(), original.content_type());
            assert_eq!(parsed.correlation_id(), original.correlation_id());
            assert_eq!(parsed.app_id(), original.app_id());
        }
        assert_eq!(with_offset_header(&[0x20], 1), None);
        assert_eq!(with_offset_header(&[0x20, 0, 0, 0, 0, 9], 1), None);
    }
}
