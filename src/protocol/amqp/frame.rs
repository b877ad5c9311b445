//! AMQP 0-9-1 frames on the wire: reading them (size checked before anything is buffered or
//! parsed) and writing them. Method payloads and content headers are decoded and encoded by
//! `amq-protocol`; content headers keep their property bytes as sent, so a message's
//! properties reach consumers byte for byte.

use amq_protocol::frame::{gen_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::basic::{parse_properties, AMQPProperties};
use amq_protocol::protocol::{parse_class, AMQPClass};
use amq_protocol::types::ShortString;
use byteorder::{BigEndian as BE, ByteOrder};
use bytes::{Buf, Bytes, BytesMut};

use super::nesting;
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

/// Why a frame was refused: the error, and the method it was (class and method id, 0 when
/// it was not a method frame), for the connection.close that answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameError {
    /// The code and text of the connection.close (501, 540...).
    pub error: AmqpError,
    pub class_id: u16,
    pub method_id: u16,
}

impl From<AmqpError> for FrameError {
    fn from(error: AmqpError) -> FrameError {
        FrameError {
            error,
            class_id: 0,
            method_id: 0,
        }
    }
}

fn frame_error(text: impl Into<String>) -> FrameError {
    AmqpError::new(code::FRAME_ERROR, text).into()
}

/// Take one frame off the front of `buf`: `Ok(None)` until it is complete. A frame larger than
/// `frame_max` is refused from its 7-byte header, before its payload is buffered. Field tables
/// nesting deeper than [`NESTING_DEPTH_MAX`](super::nesting::NESTING_DEPTH_MAX) are refused
/// before anything decodes them (see [`super::nesting`]).
pub fn next_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, FrameError> {
    let Some(total) = complete_frame_len(buf, frame_max)? else {
        return Ok(None);
    };
    let kind = buf[0];
    let channel = BE::read_u16(&buf[1..3]);
    let mut frame = buf.split_to(total).freeze();
    frame.advance(FRAME_HEADER_BYTES);
    let payload = frame.slice(..total - FRAME_HEADER_BYTES - 1);
    let decoded = match kind {
        FRAME_METHOD => {
            if nesting::check_method(&payload).is_err() {
                return Err(method_error(&payload));
            }
            match parse_class(&payload[..]) {
                Ok(([], class)) => Frame::Method(channel, class),
                _ => return Err(method_error(&payload)),
            }
        }
        FRAME_HEADER => {
            if payload.len() < 14 {
                return Err(frame_error("content header too short"));
            }
            let class_id = BE::read_u16(&payload[0..2]);
            let body_size = BE::read_u64(&payload[4..12]);
            let raw_properties = payload.slice(12..);
            if nesting::check_properties(&raw_properties).is_err() {
                return Err(properties_error(&raw_properties));
            }
            let properties = match parse_properties(&raw_properties[..]) {
                Ok(([], p)) => p,
                _ => return Err(properties_error(&raw_properties)),
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

/// The length of the complete frame at the front of `buf` (`None` while it is incomplete),
/// from its header alone: a frame over `frame_max` or without its end marker is an error.
fn complete_frame_len(buf: &mut BytesMut, frame_max: u32) -> Result<Option<usize>, FrameError> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let kind = buf[0];
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
    Ok(Some(total))
}

/// What [`skip_frame`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// Not a whole frame yet.
    Incomplete,
    /// `connection.close-ok` on channel 0.
    CloseOk,
    /// Any other frame, dropped unread.
    Other,
    /// Too large or without its end marker: nothing after it can be trusted.
    Broken,
}

/// Drop one frame off the front of `buf` without decoding it, noting whether it was
/// `connection.close-ok`. A connection that sent `connection.close` waits for close-ok this
/// way, so nothing the client sent after (or instead of) it is ever decoded; a frame refused
/// for its size stays refused.
pub fn skip_frame(buf: &mut BytesMut, frame_max: u32) -> Skipped {
    let total = match complete_frame_len(buf, frame_max) {
        Ok(Some(total)) => total,
        Ok(None) => return Skipped::Incomplete,
        Err(_) => return Skipped::Broken,
    };
    let close_ok = buf[0] == FRAME_METHOD
        && buf[1..3] == [0, 0]
        && buf.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + 4) == Some(&[0, 10, 0, 51][..]);
    buf.advance(total);
    if close_ok {
        Skipped::CloseOk
    } else {
        Skipped::Other
    }
}

/// At most this many of the refused bytes are quoted in an error: each takes at least two
/// characters, so a longer quote is past the 255 bytes a reply text may hold (and
/// [`reply_text`] cuts it there, as RabbitMQ does).
const QUOTED_BYTES_MAX: usize = 255;

/// The refused bytes as RabbitMQ quotes them (Erlang's `<<1,2,3>>`).
fn quoted(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(QUOTED_BYTES_MAX)];
    let list: Vec<String> = shown.iter().map(u8::to_string).collect();
    format!("<<{}>>", list.join(","))
}

/// Longest reply text a close can carry (a short string).
const REPLY_TEXT_BYTES_MAX: usize = 255;

/// A close's reply text, cut as RabbitMQ cuts a long one: the first 252 bytes and `...`. (A
/// longer short string could not be encoded at all, and the close would not go out.)
pub fn reply_text(text: &str) -> ShortString {
    if text.len() <= REPLY_TEXT_BYTES_MAX {
        return ShortString::from(text);
    }
    let mut cut = REPLY_TEXT_BYTES_MAX - 3;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    ShortString::from(format!("{}...", &text[..cut]))
}

/// A method frame that does not decode (or nests too deep): an unknown class or method is "not
/// implemented"; anything else is RabbitMQ's answer to arguments it cannot decode, 501
/// `FRAME_ERROR - cannot decode <<...>>` naming the method.
fn method_error(payload: &[u8]) -> FrameError {
    if payload.len() < 4 {
        return frame_error("method frame too short");
    }
    let (class, method) = (BE::read_u16(&payload[0..2]), BE::read_u16(&payload[2..4]));
    let known = matches!(
        (class, method),
        (10, 10..=71)
            | (20, 10..=41)
            | (30, 10..=11)
            | (40, 10..=51)
            | (50, 10..=51)
            | (60, 10..=120)
            | (85, 10..=11)
            | (90, 10..=31)
    );
    let error = if known {
        AmqpError::new(
            code::FRAME_ERROR,
            format!("cannot decode {}", quoted(&payload[4..])),
        )
    } else {
        AmqpError::new(
            code::NOT_IMPLEMENTED,
            format!("unknown method {class}.{method}"),
        )
    };
    FrameError {
        error,
        class_id: class,
        method_id: method,
    }
}

/// Content header properties that do not decode (or nest too deep). (RabbitMQ decodes them
/// lazily and answers a bad one with 541 INTERNAL_ERROR from the crash; a frame error says
/// what happened.)
fn properties_error(properties: &[u8]) -> FrameError {
    frame_error(format!(
        "cannot decode content header properties {}",
        quoted(properties)
    ))
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
            next_frame(&mut huge, 4096).unwrap_err().error.code,
            code::FRAME_ERROR
        );
        // A missing end marker, an unknown type, an unknown method.
        let mut bad_end = BytesMut::from(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0][..]);
        assert_eq!(
            next_frame(&mut bad_end, 4096).unwrap_err().error.code,
            code::FRAME_ERROR
        );
        let mut bad_type = BytesMut::from(&[9, 0, 0, 0, 0, 0, 0, FRAME_END][..]);
        assert_eq!(
            next_frame(&mut bad_type, 4096).unwrap_err().error.code,
            code::FRAME_ERROR
        );
        let mut unknown =
            BytesMut::from(&[FRAME_METHOD, 0, 1, 0, 0, 0, 4, 0, 99, 0, 1, FRAME_END][..]);
        assert_eq!(
            next_frame(&mut unknown, 4096).unwrap_err().error.code,
            code::NOT_IMPLEMENTED
        );
    }

    fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&channel.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out.push(FRAME_END);
        out
    }

    /// A field table nesting `depth` tables (`"k" F <len> <table>`), built in one pass.
    fn nested_table(depth: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for level in 1..=depth {
            bytes.extend_from_slice(&((7 * (depth - level)) as u32).to_be_bytes());
            if level < depth {
                bytes.extend_from_slice(&[1, b'k', b'F']);
            }
        }
        bytes
    }

    #[test]
    fn deep_tables_are_refused_before_decoding_as_rabbitmq_refuses_bad_arguments() {
        // queue.declare "q" with arguments nested 1,500 deep: a 501 naming 50.10, no decoding
        // (which would overflow the stack of this test's thread).
        let mut declare = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
        declare.extend_from_slice(&nested_table(1500));
        let mut buf = BytesMut::from(&frame(FRAME_METHOD, 1, &declare)[..]);
        let refused = next_frame(&mut buf, FRAME_MAX).unwrap_err();
        assert_eq!((refused.class_id, refused.method_id), (50, 10));
        assert_eq!(refused.error.code, code::FRAME_ERROR);
        assert!(
            refused
                .error
                .text
                .starts_with("FRAME_ERROR - cannot decode <<0,0,1,113,0,0,0,"),
            "{}",
            refused.error.text
        );
        assert!(buf.is_empty(), "the refused frame is consumed");
        // The same at the deepest accepted depth decodes.
        let mut declare = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
        declare.extend_from_slice(&nested_table(super::nesting::NESTING_DEPTH_MAX));
        let mut buf = BytesMut::from(&frame(FRAME_METHOD, 1, &declare)[..]);
        assert!(matches!(
            next_frame(&mut buf, FRAME_MAX),
            Ok(Some(Frame::Method(1, AMQPClass::Queue(_))))
        ));
        // Publish headers: content-type, then the headers table.
        let mut header = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0xA0, 0, 4];
        header.extend_from_slice(b"text");
        header.extend_from_slice(&nested_table(1500));
        let mut buf = BytesMut::from(&frame(FRAME_HEADER, 1, &header)[..]);
        assert_eq!(
            next_frame(&mut buf, FRAME_MAX).unwrap_err().error.code,
            code::FRAME_ERROR
        );
    }

    #[test]
    fn malformed_arguments_get_rabbitmqs_answer_cut_to_a_short_string() {
        // queue.declare whose table claims 100 bytes but holds 3: RabbitMQ 3.10.8 answers
        // exactly this.
        let declare = [
            0, 50, 0, 10, 0, 0, 2, b'q', b'1', 0, 0, 0, 0, 100, b'a', b'b', b'c',
        ];
        let mut buf = BytesMut::from(&frame(FRAME_METHOD, 1, &declare)[..]);
        let refused = next_frame(&mut buf, FRAME_MAX).unwrap_err();
        assert_eq!(
            refused.error.text,
            "FRAME_ERROR - cannot decode <<0,0,2,113,49,0,0,0,0,100,97,98,99>>"
        );
        // A long one is cut at 255 bytes, as RabbitMQ 3.10.8 cut this very frame.
        let mut long = vec![0, 50, 0, 10, 0, 0, 2, b'q', b'1', 0, 0, 1, 134, 160];
        long.extend_from_slice(&[b'a'; 1000]);
        let mut buf = BytesMut::from(&frame(FRAME_METHOD, 1, &long)[..]);
        let text = reply_text(&next_frame(&mut buf, FRAME_MAX).unwrap_err().error.text);
        let rabbitmq = format!(
            "FRAME_ERROR - cannot decode <<0,0,2,113,49,0,0,1,134,160,{}",
            ["97"; 100].join(",")
        );
        assert_eq!(text.as_str(), format!("{}...", &rabbitmq[..252]));
    }

    #[test]
    fn skipping_frames_while_closing_decodes_nothing() {
        let mut deep = vec![0, 10, 0, 11];
        deep.extend_from_slice(&nested_table(1500));
        let mut input = frame(FRAME_METHOD, 0, &deep);
        input.extend_from_slice(&frame(FRAME_METHOD, 0, &[0, 10, 0, 51]));
        let mut buf = BytesMut::from(&input[..]);
        assert_eq!(skip_frame(&mut buf, FRAME_MAX), Skipped::Other);
        assert_eq!(skip_frame(&mut buf, FRAME_MAX), Skipped::CloseOk);
        assert_eq!(skip_frame(&mut buf, FRAME_MAX), Skipped::Incomplete);
        // Too large for the connection's frame_max: nothing after it is read.
        let mut buf = BytesMut::from(&frame(FRAME_METHOD, 0, &deep)[..]);
        assert_eq!(skip_frame(&mut buf, FRAME_MIN_SIZE), Skipped::Broken);
    }
}
