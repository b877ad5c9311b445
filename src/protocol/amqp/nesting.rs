//! How deeply a client's field tables and arrays nest, measured before anything decodes them.
//!
//! `amq-protocol`'s parsers recurse once per nested table or array, and so do clone, drop,
//! `Debug` and encoding of the decoded `AMQPValue`. A 10 KB frame nesting 1,500 tables was
//! enough to overflow a tokio worker's stack and abort the whole server. So every place a
//! client's table can sit (method arguments, the `headers` content property, the AMQPLAIN
//! response) is walked here first, without recursion (an explicit stack of open containers,
//! at most [`NESTING_DEPTH_MAX`] deep), and a frame nesting deeper is refused before it is
//! decoded.
//!
//! The walk reads the bytes the way `amq-protocol` does (its type codes, including RabbitMQ's
//! `s` for a short int); where the bytes are malformed it stops and reports nothing: the decoder
//! then refuses them, having recursed no deeper than the walk did.

/// Deepest nesting of tables and arrays accepted (a top-level table is depth 1).
///
/// RabbitMQ's own deepest structure, `x-death`, is 3 deep, and clients send flat tables. The
/// recursive decoder uses about 10 KB of stack per level in an unoptimized build (about 2 KB
/// optimized), so 64 levels stay below 700 KB of a tokio worker's 2 MiB stack in any build.
/// RabbitMQ accepts any depth (its decoder does not recurse on the native stack); Potok refuses
/// deeper frames as malformed, with RabbitMQ's answer to a frame it cannot decode.
pub const NESTING_DEPTH_MAX: usize = 64;

/// A table or array nesting deeper than [`NESTING_DEPTH_MAX`] was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooDeep;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Container {
    Table,
    Array,
}

/// The fields a method carries before its one field table.
#[derive(Clone, Copy)]
enum Field {
    Octet,
    Short,
    ShortString,
}

/// Where the field table sits in each method that has one (AMQP 0-9-1 with RabbitMQ's
/// extensions, as `amq-protocol` decodes them); `None` for methods without a table. A flags
/// octet holds up to 8 bits, and no method here has more.
fn fields_before_table(class: u16, method: u16) -> Option<&'static [Field]> {
    use Field::{Octet, Short, ShortString};
    Some(match (class, method) {
        // connection.start: version-major, version-minor, server-properties.
        (10, 10) => &[Octet, Octet],
        // connection.start-ok: client-properties first.
        (10, 11) => &[],
        // exchange.declare: reserved, exchange, type, flags, arguments.
        (40, 10) => &[Short, ShortString, ShortString, Octet],
        // exchange.bind / exchange.unbind: reserved, destination, source, routing-key, flags.
        (40, 30) | (40, 40) => &[Short, ShortString, ShortString, ShortString, Octet],
        // queue.declare: reserved, queue, flags, arguments.
        (50, 10) => &[Short, ShortString, Octet],
        // queue.bind: reserved, queue, exchange, routing-key, flags, arguments.
        (50, 20) => &[Short, ShortString, ShortString, ShortString, Octet],
        // queue.unbind: reserved, queue, exchange, routing-key, arguments (no flags).
        (50, 50) => &[Short, ShortString, ShortString, ShortString],
        // basic.consume: reserved, queue, consumer-tag, flags, arguments.
        (60, 20) => &[Short, ShortString, ShortString, Octet],
        _ => return None,
    })
}

/// Check a method frame's payload (class id, method id, arguments).
pub fn check_method(payload: &[u8]) -> Result<(), TooDeep> {
    let (Some(class), Some(method)) = (read_u16(payload, 0), read_u16(payload, 2)) else {
        return Ok(());
    };
    let Some(fields) = fields_before_table(class, method) else {
        return Ok(());
    };
    let mut pos = 4;
    for field in fields {
        pos += match field {
            Field::Octet => 1,
            Field::Short => 2,
            Field::ShortString => match payload.get(pos) {
                Some(&len) => 1 + usize::from(len),
                None => return Ok(()),
            },
        };
    }
    match payload.get(pos..) {
        Some(table) => check_table(table),
        None => Ok(()),
    }
}

/// Check a content header's property list (property flags, then the properties): the
/// `headers` table (flag bit 13) follows `content-type` (bit 15) and `content-encoding`
/// (bit 14), both short strings.
pub fn check_properties(properties: &[u8]) -> Result<(), TooDeep> {
    let Some(flags) = read_u16(properties, 0) else {
        return Ok(());
    };
    if flags & (1 << 13) == 0 {
        return Ok(());
    }
    let mut pos = 2;
    for bit in [15, 14] {
        if flags & (1 << bit) != 0 {
            match properties.get(pos) {
                Some(&len) => pos += 1 + usize::from(len),
                None => return Ok(()),
            }
        }
    }
    match properties.get(pos..) {
        Some(table) => check_table(table),
        None => Ok(()),
    }
}

/// Check a field table given with its 4-byte length prefix (only the table's own bytes are
/// walked; whatever follows it is not looked at).
pub fn check_table(bytes: &[u8]) -> Result<(), TooDeep> {
    let Some(len) = read_u32(bytes, 0) else {
        return Ok(());
    };
    match 4usize.checked_add(len as usize) {
        Some(end) if end <= bytes.len() => walk(&bytes[..end], 4, Container::Table),
        _ => Ok(()),
    }
}

/// Check the entries of a field table given without its length prefix (the AMQPLAIN
/// response).
pub fn check_table_entries(entries: &[u8]) -> Result<(), TooDeep> {
    walk(entries, 0, Container::Table)
}

/// Walk the container that starts at `start` and ends at `bytes.len()`, and everything nested
/// in it, keeping the open containers on an explicit stack.
fn walk(bytes: &[u8], start: usize, outer: Container) -> Result<(), TooDeep> {
    // (kind, end) of each open container; the outermost is depth 1.
    let mut open: Vec<(Container, usize)> = Vec::with_capacity(8);
    open.push((outer, bytes.len()));
    let mut pos = start;
    while let Some(&(kind, end)) = open.last() {
        if pos == end {
            open.pop();
            continue;
        }
        if kind == Container::Table {
            let Some(&key_len) = bytes.get(pos) else {
                return Ok(());
            };
            pos += 1 + usize::from(key_len);
        }
        if pos >= end {
            return Ok(());
        }
        let code = bytes[pos];
        pos += 1;
        let size = match code {
            b'V' => 0,
            b't' | b'b' | b'B' => 1,
            b's' | b'U' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'D' => 5,
            b'l' | b'L' | b'd' | b'T' => 8,
            b'S' | b'x' => match read_u32(bytes, pos) {
                Some(len) => 4 + len as usize,
                None => return Ok(()),
            },
            b'F' | b'A' => {
                let Some(len) = read_u32(bytes, pos) else {
                    return Ok(());
                };
                let inner_end = pos + 4 + len as usize;
                if inner_end > end {
                    return Ok(());
                }
                if open.len() == NESTING_DEPTH_MAX {
                    return Err(TooDeep);
                }
                let inner = if code == b'F' {
                    Container::Table
                } else {
                    Container::Array
                };
                open.push((inner, inner_end));
                pos += 4;
                continue;
            }
            // An unknown type: the decoder refuses it.
            _ => return Ok(()),
        };
        pos += size;
        if pos > end {
            return Ok(());
        }
    }
    Ok(())
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at + 2)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::{gen_frame, AMQPFrame, WriteContext};
    use amq_protocol::protocol::basic::{gen_properties, AMQPProperties};
    use amq_protocol::protocol::{basic, connection, exchange, queue, AMQPClass};
    use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};

    /// A table nesting `depth` containers: tables, or tables and arrays in turn when `arrays`.
    fn nested(depth: usize, arrays: bool) -> FieldTable {
        let mut value = AMQPValue::LongString(LongString::from("leaf"));
        for level in 1..depth {
            value = if arrays && level % 2 == 1 {
                AMQPValue::FieldArray(FieldArray::from(vec![value]))
            } else {
                let mut table = FieldTable::default();
                table.insert("k".into(), value);
                AMQPValue::FieldTable(table)
            };
        }
        let mut top = FieldTable::default();
        top.insert("top".into(), value);
        top
    }

    fn method_payload(class: AMQPClass) -> Vec<u8> {
        let frame = gen_frame(&AMQPFrame::Method(0, class))(WriteContext::from(Vec::new()))
            .unwrap()
            .write;
        frame[7..frame.len() - 1].to_vec()
    }

    /// Every method with a table, encoded by `amq-protocol` itself: the walk finds the table
    /// where the decoder will look for it.
    fn methods_with(arguments: FieldTable) -> Vec<AMQPClass> {
        vec![
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: arguments.clone(),
                mechanisms: "PLAIN".into(),
                locales: "en_US".into(),
            })),
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: arguments.clone(),
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            })),
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: "some-exchange".into(),
                kind: "topic".into(),
                passive: false,
                durable: true,
                auto_delete: false,
                internal: false,
                nowait: false,
                arguments: arguments.clone(),
            })),
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                destination: "d".into(),
                source: "src".into(),
                routing_key: "rk".into(),
                nowait: true,
                arguments: arguments.clone(),
            })),
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
                destination: "d".into(),
                source: "src".into(),
                routing_key: "rk".into(),
                nowait: false,
                arguments: arguments.clone(),
            })),
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "some-queue".into(),
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: true,
                nowait: false,
                arguments: arguments.clone(),
            })),
            AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: "q".into(),
                exchange: "x".into(),
                routing_key: "a.b".into(),
                nowait: false,
                arguments: arguments.clone(),
            })),
            AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                queue: "q".into(),
                exchange: "x".into(),
                routing_key: "a.b".into(),
                arguments: arguments.clone(),
            })),
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "q".into(),
                consumer_tag: "ctag".into(),
                no_local: false,
                no_ack: true,
                exclusive: false,
                nowait: false,
                arguments,
            })),
        ]
    }

    #[test]
    fn every_method_table_is_found_and_measured() {
        for arrays in [false, true] {
            for method in methods_with(nested(NESTING_DEPTH_MAX, arrays)) {
                let payload = method_payload(method);
                assert_eq!(check_method(&payload), Ok(()), "{:?}", &payload[..4]);
            }
            for method in methods_with(nested(NESTING_DEPTH_MAX + 1, arrays)) {
                let payload = method_payload(method);
                assert_eq!(check_method(&payload), Err(TooDeep), "{:?}", &payload[..4]);
            }
        }
        // Methods without a table are never refused.
        let publish = method_payload(AMQPClass::Basic(basic::AMQPMethod::Publish(
            basic::Publish {
                exchange: "".into(),
                routing_key: "q".into(),
                mandatory: false,
                immediate: false,
            },
        )));
        assert_eq!(check_method(&publish), Ok(()));
    }

    #[test]
    fn the_headers_property_is_found_behind_content_type_and_encoding() {
        for depth in [NESTING_DEPTH_MAX, NESTING_DEPTH_MAX + 1] {
            let expected = if depth > NESTING_DEPTH_MAX {
                Err(TooDeep)
            } else {
                Ok(())
            };
            let all = AMQPProperties::default()
                .with_content_type("text/plain".into())
                .with_content_encoding("gzip".into())
                .with_headers(nested(depth, true))
                .with_delivery_mode(2);
            let headers_only = AMQPProperties::default().with_headers(nested(depth, false));
            for properties in [all, headers_only] {
                let bytes =
                    cookie_factory::gen_simple(gen_properties(&properties), Vec::new()).unwrap();
                assert_eq!(check_properties(&bytes), expected);
            }
        }
        let plain = AMQPProperties::default().with_content_type("x".into());
        let bytes = cookie_factory::gen_simple(gen_properties(&plain), Vec::new()).unwrap();
        assert_eq!(check_properties(&bytes), Ok(()));
    }

    /// `"k" F <len> <table>` nested `depth` tables deep, by hand and in one pass (no
    /// recursion to build or drop): the table at level `i` holds `7 * (depth - i)` bytes.
    fn raw_nested(depth: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(7 * depth);
        for level in 1..=depth {
            bytes.extend_from_slice(&((7 * (depth - level)) as u32).to_be_bytes());
            if level < depth {
                bytes.extend_from_slice(&[1, b'k', b'F']);
            }
        }
        bytes
    }

    #[test]
    fn depth_is_exact_and_very_deep_input_costs_no_stack() {
        let deepest = raw_nested(NESTING_DEPTH_MAX);
        let parsed = amq_protocol::types::parsing::parse_field_table(&deepest[..]);
        assert!(matches!(parsed, Ok(([], _))), "the input is a valid table");
        assert_eq!(check_table(&deepest), Ok(()));
        assert_eq!(
            check_table(&raw_nested(NESTING_DEPTH_MAX + 1)),
            Err(TooDeep)
        );
        assert_eq!(check_table(&raw_nested(100_000)), Err(TooDeep));
        assert_eq!(check_table_entries(&raw_nested(100_000)[4..]), Err(TooDeep));
    }

    #[test]
    fn malformed_input_is_left_to_the_decoder() {
        let deep = raw_nested(NESTING_DEPTH_MAX + 1);
        // Truncated anywhere, a deep table is either refused or too broken for the decoder
        // to get that deep; the walk itself never reads out of bounds.
        for cut in 0..deep.len() {
            let _ = check_table(&deep[..cut]);
        }
        // A length past the end, an unknown type, a key running past the table.
        assert_eq!(check_table(&[0, 0, 0, 9, 1, b'k', b'F']), Ok(()));
        assert_eq!(check_table(&[0, 0, 0, 3, 1, b'k', b'Z']), Ok(()));
        assert_eq!(check_table(&[0, 0, 0, 2, 9, b'k']), Ok(()));
        // Long strings and byte arrays are skipped whole, whatever they contain.
        let mut text = vec![1, b's', b'S'];
        text.extend_from_slice(&(deep.len() as u32).to_be_bytes());
        text.extend_from_slice(&deep);
        let mut table = (text.len() as u32).to_be_bytes().to_vec();
        table.extend_from_slice(&text);
        assert_eq!(check_table(&table), Ok(()));
    }
}
