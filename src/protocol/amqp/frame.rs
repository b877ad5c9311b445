//! AMQP 0-9-1 frames on the wire: reading them (size checked before anything is buffered or
//! parsed) and writing them. Method payloads and content headers are decoded and encoded by
//! `amq-protocol`; content headers keep their property bytes as sent, so a message's
//! properties reach consumers byte for byte.

use amq_protocol::frame::{gen_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::basic::{parse_properties, AMQPProperties};
use amq_protocol::protocol::{parse_class, AMQPClass};
use byteorder::{BigEndian as BE, ByteOrder};
use bytes::{Buf, Bytes, BytesMut};

use crate::broker::amqp::{code, AmqpError};

pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// Frame size allowed before `connection.tune-ok` (the spec's frame-min-size).
pub const FRAME_MIN_SIZE: u32 = 4096;
/// The largest frame the server accepts and offers in `connection.tune`.
pub const FRAME_MAX: u32 = 131_072;
const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// type u8, channel u16, size u32.
const FRAME_HEADER_BYTES: usize = 7;

/// One decoded incoming frame. (Frames are handled one at a time, so the size of the header
/// variant costs nothing worth a box.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Frame {
    Method(u16, AMQPClass),
    /// Content header: class, body size, decoded properties and their raw bytes.
    Header {
        channel: u16,
        class_id: u16,
        body_size: u64,
        properties: AMQPProperties,
        raw_properties: Bytes,
    },
    Body(u16, Bytes),
    Heartbeat(u16),
}

fn frame_error(text: impl Into<String>) -> AmqpError {
    AmqpError::new(code::FRAME_ERROR, text)
}

/// Take one frame off the front of `buf`: `Ok(None)` until it is complete. A frame larger than
/// `frame_max` is refused from its 7-byte header, before its payload is buffered.
pub fn next_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, AmqpError> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = BE::read_u16(&buf[1..3]);
    let size = BE::read_u32(&buf[3..7]);
    if u64::from(size) + 8 > u64::from(frame_max) {
        return Err(frame_error(format!(
            "type {kind}, all octets = <<>>: {{frame_too_large,{size},{}}}",
            frame_max.saturating_sub(8)
        )));
    }
    let total = FRAME_HEADER_BYTES + size as usize + 1;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if buf[total - 1] != FRAME_END {
        return Err(frame_error("frame end marker missing"));
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(FRAME_HEADER_BYTES);
    let payload = frame.slice(..size as usize);
    let decoded = match kind {
        FRAME_METHOD => match parse_class(&payload[..]) {
            Ok(([], class)) => Frame::Method(channel, class),
            _ => return Err(method_error(&payload)),
        },
        FRAME_HEADER => {
            if payload.len() < 14 {
                return Err(frame_error("content header too short"));
            }
            let class_id = BE::read_u16(&payload[0..2]);
            let body_size = BE::read_u64(&payload[4..12]);
            let raw_properties = payload.slice(12..);
            let properties = match parse_properties(&raw_properties[..]) {
                Ok(([], p)) => p,
                _ => return Err(frame_error("malformed content header properties")),
            };
            Frame::Header {
                channel,
                class_id,
                body_size,
                properties,
                raw_properties,
            }
        }
        FRAME_BODY => Frame::Body(channel, payload),
        FRAME_HEARTBEAT => Frame::Heartbeat(channel),
        other => return Err(frame_error(format!("unknown frame type {other}"))),
    };
    Ok(Some(decoded))
}

/// A method frame that does not decode: an unknown class or method is "not implemented" (as
/// RabbitMQ answers), anything else a syntax error.
fn method_error(payload: &[u8]) -> AmqpError {
    if payload.len() < 4 {
        return AmqpError::new(code::SYNTAX_ERROR, "method frame too short");
    }
    let (class, method) = (BE::read_u16(&payload[0..2]), BE::read_u16(&payload[2..4]));
    let known = matches!(
        (class, method),
        (10, 10..=61)
            | (20, 10..=41)
            | (30, 10..=11)
            | (40, 10..=51)
            | (50, 10..=51)
            | (60, 10..=120)
            | (85, 10..=11)
            | (90, 10..=31)
    );
    if known {
        AmqpError::new(
            code::SYNTAX_ERROR,
            format!("malformed arguments for method {class}.{method}"),
        )
    } else {
        AmqpError::new(
            code::NOT_IMPLEMENTED,
            format!("unknown method {class}.{method}"),
        )
    }
}

/// Append an encoded method frame.
pub fn put_method(out: &mut Vec<u8>, channel: u16, method: AMQPClass) {
    put_frame(out, &AMQPFrame::Method(channel, method));
}

pub fn put_heartbeat(out: &mut Vec<u8>) {
    out.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

fn put_frame(out: &mut Vec<u8>, frame: &AMQPFrame) {
    let buffer = std::mem::take(out);
    match gen_frame(frame)(WriteContext::from(buffer)) {
        Ok(context) => *out = context.write,
        // Generation only fails on a writer error; a Vec never has one.
        Err(e) => tracing::error!(error = ?e, "encoding an AMQP frame failed"),
    }
}

/// Append a message's content: a header frame carrying the properties exactly as published,
/// then body frames no larger than `frame_max`.
pub fn put_content(
    out: &mut Vec<u8>,
    channel: u16,
    raw_properties: &[u8],
    body: &[u8],
    frame_max: u32,
) {
    let header_size = 12 + raw_properties.len();
    out.push(FRAME_HEADER);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(header_size as u32).to_be_bytes());
    out.extend_from_slice(&60u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    out.extend_from_slice(raw_properties);
    out.push(FRAME_END);
    let chunk = (frame_max as usize).saturating_sub(8).max(1);
    for part in body.chunks(chunk) {
        out.push(FRAME_BODY);
        out.extend_from_slice(&channel.to_be_bytes());
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
        out.push(FRAME_END);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::channel;

    #[test]
    fn frames_round_trip_and_oversized_ones_are_refused_early() {
        let mut out = Vec::new();
        put_method(
            &mut out,
            3,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        );
        put_content(&mut out, 3, &[0, 0], b"hello world", 4096);
        put_heartbeat(&mut out);
        let mut buf = BytesMut::from(&out[..]);
        assert!(matches!(
            next_frame(&mut buf, 4096).unwrap(),
            Some(Frame::Method(3, AMQPClass::Channel(_)))
        ));
        match next_frame(&mut buf, 4096).unwrap() {
            Some(Frame::Header {
                channel: 3,
                body_size: 11,
                raw_properties,
                ..
            }) => assert_eq!(&raw_properties[..], &[0, 0]),
            other => panic!("{other:?}"),
        }
        match next_frame(&mut buf, 4096).unwrap() {
            Some(Frame::Body(3, body)) => assert_eq!(&body[..], b"hello world"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            next_frame(&mut buf, 4096).unwrap(),
            Some(Frame::Heartbeat(0))
        ));
        assert!(buf.is_empty());

        // A 7-byte header announcing a frame over the limit is refused at once.
        let mut huge = BytesMut::from(&[FRAME_BODY, 0, 1, 0x7f, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            next_frame(&mut huge, 4096).unwrap_err().code,
            code::FRAME_ERROR
        );
        // A missing end marker, an unknown type, an unknown method.
        let mut bad_end = BytesMut::from(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0][..]);
        assert_eq!(
            next_frame(&mut bad_end, 4096).unwrap_err().code,
            code::FRAME_ERROR
        );
        let mut bad_type = BytesMut::from(&[9, 0, 0, 0, 0, 0, 0, FRAME_END][..]);
        assert_eq!(
            next_frame(&mut bad_type, 4096).unwrap_err().code,
            code::FRAME_ERROR
        );
        let mut unknown =
            BytesMut::from(&[FRAME_METHOD, 0, 1, 0, 0, 0, 4, 0, 99, 0, 1, FRAME_END][..]);
        assert_eq!(
            next_frame(&mut unknown, 4096).unwrap_err().code,
            code::NOT_IMPLEMENTED
        );
    }
}
