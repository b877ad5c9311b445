//! Structure-aware AMQP fuzzing of field tables in every place a client can put one: the
//! table of each method that has one, the `headers` content property, the AMQPLAIN response,
//! and raw frames; values of every type, nested by hand and by `Deep` runs of thousands of
//! tables and arrays (built without recursion), then optionally corrupted.
//!
//! Oracles: nothing crashes (a recursive decode of deep input overflows the stack); a
//! well-formed frame nesting at most NESTING_DEPTH_MAX decodes, to exactly the depth it was
//! built with; one nesting deeper is refused with 501 before it is decoded; whatever decodes,
//! corrupted or not, nests no deeper than the limit (and is cloned, Debug-printed and dropped,
//! which recurse too).
#![no_main]

use amq_protocol::protocol::{basic, connection, exchange, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable};
use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use potok::protocol::amqp::connection::amqplain_credentials;
use potok::protocol::amqp::frame::{next_frame, skip_frame, Frame, Skipped, FRAME_MAX};
use potok::protocol::amqp::nesting::NESTING_DEPTH_MAX;

#[derive(Arbitrary, Debug)]
enum Value {
    Bool(bool),
    ShortShortInt(i8),
    ShortShortUInt(u8),
    ShortInt(i16),
    ShortUInt(u16),
    LongInt(i32),
    LongUInt(u32),
    LongLongInt(i64),
    Float(f32),
    Double(f64),
    Decimal(u8, u32),
    LongString(Vec<u8>),
    Timestamp(u64),
    ByteArray(Vec<u8>),
    Void,
    Table(Vec<(String, Value)>),
    Array(Vec<Value>),
    /// `depth` containers one inside the next around `leaf`.
    Deep {
        depth: u16,
        shape: Shape,
        leaf: Box<Value>,
    },
    /// A type code the decoder does not know, then some bytes.
    Unknown(u8, Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Shape {
    Tables,
    Arrays,
    Alternating,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum TableMethod {
    Start,
    StartOk,
    ExchangeDeclare,
    ExchangeBind,
    ExchangeUnbind,
    QueueDeclare,
    QueueBind,
    QueueUnbind,
    BasicConsume,
}

#[derive(Arbitrary, Debug)]
enum Site {
    Method {
        method: TableMethod,
        names: [String; 3],
        flags: u8,
        table: Vec<(String, Value)>,
    },
    Properties {
        content_type: Option<String>,
        content_encoding: Option<String>,
        headers: Option<Vec<(String, Value)>>,
        delivery_mode: Option<u8>,
        body_size: u64,
    },
    Amqplain(Vec<(String, Value)>),
    Raw {
        kind: u8,
        channel: u16,
        payload: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
enum Corruption {
    Truncate(u32),
    Flip { at: u32, xor: u8 },
    Insert { at: u32, bytes: Vec<u8> },
}

#[derive(Arbitrary, Debug)]
struct Input {
    sites: Vec<Site>,
    corruption: Option<Corruption>,
}

/// What encoding found: the deepest nesting (a table or array is 1) and whether every value
/// is one the decoder accepts.
#[derive(Clone, Copy)]
struct Shape2 {
    depth: usize,
    valid: bool,
}

const KNOWN_TYPES: &[u8] = b"tbBsUuIilLfdDSATFxV";

fn short_string(out: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&text.as_bytes()[..end]);
}

fn long_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A table's entries (duplicate keys dropped, as the decoder's map would merge them), with
/// its length prefix.
fn table(out: &mut Vec<u8>, entries: &[(String, Value)]) -> Shape2 {
    let mut body = Vec::new();
    let mut shape = Shape2 {
        depth: 1,
        valid: true,
    };
    let mut seen: Vec<&str> = Vec::new();
    for (key, value) in entries {
        let mut end = key.len().min(255);
        while !key.is_char_boundary(end) {
            end -= 1;
        }
        if seen.contains(&&key[..end]) {
            continue;
        }
        seen.push(&key[..end]);
        short_string(&mut body, key);
        let inner = value_bytes(&mut body, value);
        shape.depth = shape.depth.max(inner.depth + 1);
        shape.valid &= inner.valid;
    }
    long_bytes(out, &body);
    shape
}

/// A value with its type code; its depth is 0 for a scalar.
fn value_bytes(out: &mut Vec<u8>, value: &Value) -> Shape2 {
    let scalar = Shape2 {
        depth: 0,
        valid: true,
    };
    match value {
        Value::Bool(b) => out.extend_from_slice(&[b't', u8::from(*b)]),
        Value::ShortShortInt(n) => out.extend_from_slice(&[b'b', *n as u8]),
        Value::ShortShortUInt(n) => out.extend_from_slice(&[b'B', *n]),
        Value::ShortInt(n) => {
            out.push(b's');
            out.extend_from_slice(&n.to_be_bytes());
        }
        Value::ShortUInt(n) => {
            out.push(b'u');
            out.extend_from_slice(&n.to_be_bytes());
        }
        Value::LongInt(n) => {
            out.push(b'I');
            out.extend_from_slice(&n.to_be_bytes());
        }
        Value::LongUInt(n) => {
            out.push(b'i');
            out.extend_from_slice(&n.to_be_bytes());
        }
        Value::LongLongInt(n) => {
            out.push(b'l');
            out.extend_from_slice(&n.to_be_bytes());
        }
        Value::Float(f) => {
            out.push(b'f');
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::Double(f) => {
            out.push(b'd');
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::Decimal(scale, n) => {
            out.extend_from_slice(&[b'D', *scale]);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Value::LongString(bytes) => {
            out.push(b'S');
            long_bytes(out, bytes);
        }
        Value::Timestamp(t) => {
            out.push(b'T');
            out.extend_from_slice(&t.to_be_bytes());
        }
        Value::ByteArray(bytes) => {
            out.push(b'x');
            long_bytes(out, bytes);
        }
        Value::Void => out.push(b'V'),
        Value::Table(entries) => {
            out.push(b'F');
            return table(out, entries);
        }
        Value::Array(items) => {
            out.push(b'A');
            let mut body = Vec::new();
            let mut shape = Shape2 {
                depth: 1,
                valid: true,
            };
            for item in items {
                let inner = value_bytes(&mut body, item);
                shape.depth = shape.depth.max(inner.depth + 1);
                shape.valid &= inner.valid;
            }
            long_bytes(out, &body);
            return shape;
        }
        Value::Deep { depth, shape, leaf } => return deep(out, *depth as usize, *shape, leaf),
        Value::Unknown(code, bytes) => {
            let code = if KNOWN_TYPES.contains(code) {
                b'Z'
            } else {
                *code
            };
            out.push(code);
            out.extend_from_slice(bytes);
            return Shape2 {
                depth: 0,
                valid: false,
            };
        }
    }
    scalar
}

/// `depth` containers around `leaf`, written outside in without recursion: the content of
/// container `j` is its entry header (key "k" in a table) plus its child.
fn deep(out: &mut Vec<u8>, depth: usize, shape: Shape, leaf: &Value) -> Shape2 {
    let mut leaf_bytes = Vec::new();
    let inner = value_bytes(&mut leaf_bytes, leaf);
    if depth == 0 {
        out.extend_from_slice(&leaf_bytes);
        return inner;
    }
    let is_table = |j: usize| match shape {
        Shape::Tables => true,
        Shape::Arrays => false,
        Shape::Alternating => j % 2 == 0,
    };
    let header = |j: usize| if is_table(j) { 2 } else { 0 };
    // content[j]: bytes inside container j's length prefix.
    let mut content = vec![0usize; depth];
    content[depth - 1] = header(depth - 1) + leaf_bytes.len();
    for j in (0..depth - 1).rev() {
        content[j] = header(j) + 1 + 4 + content[j + 1];
    }
    for j in 0..depth {
        out.push(if is_table(j) { b'F' } else { b'A' });
        out.extend_from_slice(&(content[j] as u32).to_be_bytes());
        if is_table(j) {
            out.extend_from_slice(&[1, b'k']);
        }
    }
    out.extend_from_slice(&leaf_bytes);
    Shape2 {
        depth: depth + inner.depth,
        valid: inner.valid,
    }
}

fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(0xCE);
    out
}

/// A method frame carrying the table where `method` has it.
fn method_frame(
    method: TableMethod,
    names: &[String; 3],
    flags: u8,
    t: &[(String, Value)],
) -> (Vec<u8>, Shape2) {
    let (class, id) = match method {
        TableMethod::Start => (10u16, 10u16),
        TableMethod::StartOk => (10, 11),
        TableMethod::ExchangeDeclare => (40, 10),
        TableMethod::ExchangeBind => (40, 30),
        TableMethod::ExchangeUnbind => (40, 40),
        TableMethod::QueueDeclare => (50, 10),
        TableMethod::QueueBind => (50, 20),
        TableMethod::QueueUnbind => (50, 50),
        TableMethod::BasicConsume => (60, 20),
    };
    let mut p = class.to_be_bytes().to_vec();
    p.extend_from_slice(&id.to_be_bytes());
    let shape;
    match method {
        TableMethod::Start => {
            p.extend_from_slice(&[0, 9]);
            shape = table(&mut p, t);
            long_bytes(&mut p, b"PLAIN");
            long_bytes(&mut p, b"en_US");
        }
        TableMethod::StartOk => {
            shape = table(&mut p, t);
            short_string(&mut p, "PLAIN");
            long_bytes(&mut p, b"\0guest\0guest");
            short_string(&mut p, "en_US");
        }
        TableMethod::ExchangeDeclare => {
            p.extend_from_slice(&[0, 0]);
            short_string(&mut p, &names[0]);
            short_string(&mut p, &names[1]);
            p.push(flags & 0x1f);
            shape = table(&mut p, t);
        }
        TableMethod::ExchangeBind | TableMethod::ExchangeUnbind | TableMethod::QueueBind => {
            p.extend_from_slice(&[0, 0]);
            for name in names {
                short_string(&mut p, name);
            }
            p.push(flags & 1);
            shape = table(&mut p, t);
        }
        TableMethod::QueueDeclare => {
            p.extend_from_slice(&[0, 0]);
            short_string(&mut p, &names[0]);
            p.push(flags & 0x1f);
            shape = table(&mut p, t);
        }
        TableMethod::QueueUnbind => {
            p.extend_from_slice(&[0, 0]);
            for name in names {
                short_string(&mut p, name);
            }
            shape = table(&mut p, t);
        }
        TableMethod::BasicConsume => {
            p.extend_from_slice(&[0, 0]);
            short_string(&mut p, &names[0]);
            short_string(&mut p, &names[1]);
            p.push(flags & 0x0f);
            shape = table(&mut p, t);
        }
    }
    (frame(1, 1, &p), shape)
}

/// The deepest nesting in a decoded table, walked with an explicit stack.
fn decoded_depth(t: &FieldTable) -> usize {
    let mut deepest = 1;
    let mut stack: Vec<(&AMQPValue, usize)> = t.inner().values().map(|v| (v, 1)).collect();
    while let Some((value, depth)) = stack.pop() {
        match value {
            AMQPValue::FieldTable(t) => {
                deepest = deepest.max(depth + 1);
                stack.extend(t.inner().values().map(|v| (v, depth + 1)));
            }
            AMQPValue::FieldArray(a) => {
                deepest = deepest.max(depth + 1);
                stack.extend(a.as_slice().iter().map(|v| (v, depth + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// The table a decoded frame carries, if any.
fn frame_table(frame: &Frame) -> Option<&FieldTable> {
    match frame {
        Frame::Method(_, class) => match class {
            AMQPClass::Connection(connection::AMQPMethod::Start(m)) => Some(&m.server_properties),
            AMQPClass::Connection(connection::AMQPMethod::StartOk(m)) => Some(&m.client_properties),
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(m)) => Some(&m.arguments),
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(m)) => Some(&m.arguments),
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(m)) => Some(&m.arguments),
            AMQPClass::Queue(queue::AMQPMethod::Declare(m)) => Some(&m.arguments),
            AMQPClass::Queue(queue::AMQPMethod::Bind(m)) => Some(&m.arguments),
            AMQPClass::Queue(queue::AMQPMethod::Unbind(m)) => Some(&m.arguments),
            AMQPClass::Basic(basic::AMQPMethod::Consume(m)) => Some(&m.arguments),
            _ => None,
        },
        Frame::Header { properties, .. } => properties.headers().as_ref(),
        _ => None,
    }
}

/// Decode every frame in `bytes`: whatever decodes nests within the limit, and survives
/// clone, Debug and drop. Returns what each step gave, in order.
fn decode_all(bytes: &[u8]) -> Vec<Result<Option<usize>, u16>> {
    let mut buf = BytesMut::from(bytes);
    let mut results = Vec::new();
    loop {
        match next_frame(&mut buf, FRAME_MAX) {
            Ok(Some(frame)) => {
                let depth = frame_table(&frame).map(decoded_depth);
                assert!(
                    depth.is_none_or(|d| d <= NESTING_DEPTH_MAX),
                    "decoded {depth:?} deep"
                );
                let copy = frame_table(&frame).cloned();
                let text = format!("{frame:?}{copy:?}");
                assert!(!text.is_empty());
                results.push(Ok(depth));
            }
            Ok(None) => return results,
            Err(e) => {
                assert!(e.error.code >= 500, "{e:?}");
                results.push(Err(e.error.code));
                return results;
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let mut stream = Vec::new();
    for site in input.sites.iter().take(4) {
        let (bytes, shape) = match site {
            Site::Method {
                method,
                names,
                flags,
                table: t,
            } => method_frame(*method, names, *flags, t),
            Site::Properties {
                content_type,
                content_encoding,
                headers,
                delivery_mode,
                body_size,
            } => {
                let mut flags = 0u16;
                let mut props = Vec::new();
                if let Some(text) = content_type {
                    flags |= 1 << 15;
                    short_string(&mut props, text);
                }
                if let Some(text) = content_encoding {
                    flags |= 1 << 14;
                    short_string(&mut props, text);
                }
                let mut shape = Shape2 {
                    depth: 0,
                    valid: true,
                };
                if let Some(entries) = headers {
                    flags |= 1 << 13;
                    shape = table(&mut props, entries);
                }
                if let Some(mode) = delivery_mode {
                    flags |= 1 << 12;
                    props.push(*mode);
                }
                let mut payload = vec![0, 60, 0, 0];
                payload.extend_from_slice(&body_size.to_be_bytes());
                payload.extend_from_slice(&flags.to_be_bytes());
                payload.extend_from_slice(&props);
                (frame(2, 1, &payload), shape)
            }
            Site::Amqplain(entries) => {
                let mut t = Vec::new();
                let shape = table(&mut t, entries);
                let credentials = amqplain_credentials(&t[4..]);
                if shape.depth > NESTING_DEPTH_MAX {
                    assert!(
                        credentials.is_none(),
                        "a too-deep AMQPLAIN response is refused"
                    );
                }
                continue;
            }
            Site::Raw {
                kind,
                channel,
                payload,
            } => {
                stream.extend_from_slice(&frame(*kind, *channel, payload));
                continue;
            }
        };
        // Each well-built frame alone: decoded exactly, or refused for its depth or size.
        let results = decode_all(&bytes);
        let fits = bytes.len() as u64 <= u64::from(FRAME_MAX);
        match results.as_slice() {
            [Ok(Some(depth))] => {
                assert!(fits && shape.valid && shape.depth <= NESTING_DEPTH_MAX);
                assert_eq!(*depth, shape.depth.max(1), "decoded as deep as built");
            }
            [Ok(None)] => assert!(fits && shape.valid && shape.depth == 0),
            [Err(501)] => assert!(!fits || !shape.valid || shape.depth > NESTING_DEPTH_MAX),
            other => panic!("unexpected {other:?} for a frame {} deep", shape.depth),
        }
        stream.extend_from_slice(&bytes);
    }
    match input.corruption {
        None => {}
        Some(Corruption::Truncate(at)) => stream.truncate(at as usize % (stream.len() + 1)),
        Some(Corruption::Flip { at, xor }) if !stream.is_empty() => {
            let at = at as usize % stream.len();
            stream[at] ^= xor;
        }
        Some(Corruption::Insert { at, bytes }) => {
            let at = at as usize % (stream.len() + 1);
            stream.splice(at..at, bytes);
        }
        Some(_) => {}
    }
    decode_all(&stream);
    // Waiting for close-ok decodes nothing and always ends.
    let mut buf = BytesMut::from(&stream[..]);
    for _ in 0..=stream.len() {
        if matches!(
            skip_frame(&mut buf, FRAME_MAX),
            Skipped::Incomplete | Skipped::Broken
        ) {
            break;
        }
    }
});
