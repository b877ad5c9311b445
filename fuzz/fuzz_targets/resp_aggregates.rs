//! Structure-aware RESP fuzzing of requests holding aggregates: pipelines of multibulk
//! requests whose elements are bulk strings, RESP2/RESP3 simple types, nested arrays, maps,
//! sets and pushes, and `Deep` runs of up to 200,000 nested aggregates; inline requests; raw
//! bytes; all fed in arbitrary chunks as reads would deliver them, then optionally corrupted.
//!
//! Decoding runs on a thread with a 128 KiB stack, so any recursion over the input's nesting
//! crashes. Oracles on well-formed input: a flat array of bulk strings decodes to exactly its
//! arguments; a request with a non-bulk element gets Redis's protocol error naming that
//! element's type byte, and nothing after it is decoded.
#![no_main]

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use potok::protocol::resp::request::{decode_request, ProtocolError, RequestLimits};

#[derive(Arbitrary, Debug)]
enum Element {
    Bulk(Vec<u8>),
    NullBulk,
    Simple {
        kind: SimpleKind,
        text: Vec<u8>,
    },
    Aggregate {
        kind: AggregateKind,
        items: Vec<Element>,
    },
    /// `depth` aggregates, one inside the next.
    Deep {
        depth: u32,
        kind: AggregateKind,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum SimpleKind {
    Status,
    Error,
    Integer,
    Null,
    Boolean,
    Double,
    BigNumber,
    BlobError,
    Verbatim,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum AggregateKind {
    Array,
    Map,
    Set,
    Push,
    Attribute,
}

#[derive(Arbitrary, Debug)]
enum Request {
    Multibulk(Vec<Element>),
    Inline(Vec<u8>),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    requests: Vec<Request>,
    /// Chunk sizes the bytes arrive in.
    chunks: Vec<u16>,
    /// XOR one byte (position, mask): the oracles then only ask for no crash.
    corruption: Option<(u32, u8)>,
}

impl SimpleKind {
    fn byte(self) -> u8 {
        match self {
            SimpleKind::Status => b'+',
            SimpleKind::Error => b'-',
            SimpleKind::Integer => b':',
            SimpleKind::Null => b'_',
            SimpleKind::Boolean => b'#',
            SimpleKind::Double => b',',
            SimpleKind::BigNumber => b'(',
            SimpleKind::BlobError => b'!',
            SimpleKind::Verbatim => b'=',
        }
    }
}

impl AggregateKind {
    fn byte(self) -> u8 {
        match self {
            AggregateKind::Array => b'*',
            AggregateKind::Map => b'%',
            AggregateKind::Set => b'~',
            AggregateKind::Push => b'>',
            AggregateKind::Attribute => b'|',
        }
    }
}

/// The most nesting a `Deep` element builds, and all of an input's `Deep` elements together
/// (4 bytes a level): the harness's own encoding stays a few MB, so runs stay fast.
const DEEP_MAX: u32 = 200_000;
const DEEP_TOTAL_MAX: u32 = 1_000_000;

/// Clamp every `Deep` depth so the input's total stays within [`DEEP_TOTAL_MAX`]; a nested
/// run stays at least one deep (so it still is what it was: nested, or a plain bulk).
fn clamp_depths(element: &mut Element, budget: &mut u32) {
    match element {
        Element::Deep { depth, .. } if *depth > 0 => {
            *depth = (*depth).min(DEEP_MAX).min(*budget).max(1);
            *budget = budget.saturating_sub(*depth);
        }
        Element::Aggregate { items, .. } => {
            for item in items {
                clamp_depths(item, budget);
            }
        }
        _ => {}
    }
}

fn encode_element(out: &mut Vec<u8>, element: &Element) {
    match element {
        Element::Bulk(bytes) => {
            out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
            out.extend_from_slice(bytes);
            out.extend_from_slice(b"\r\n");
        }
        Element::NullBulk => out.extend_from_slice(b"$-1\r\n"),
        Element::Simple { kind, text } => {
            out.push(kind.byte());
            out.extend(text.iter().filter(|b| **b != b'\r' && **b != b'\n'));
            out.extend_from_slice(b"\r\n");
        }
        Element::Aggregate { kind, items } => {
            out.extend_from_slice(format!("{}{}\r\n", kind.byte() as char, items.len()).as_bytes());
            for item in items {
                encode_element(out, item);
            }
        }
        Element::Deep { depth, kind } => {
            let header = format!("{}1\r\n", kind.byte() as char);
            for _ in 0..*depth {
                out.extend_from_slice(header.as_bytes());
            }
            out.extend_from_slice(b"$1\r\nx\r\n");
        }
    }
}

/// What a well-formed multibulk request must decode to: its arguments, or Redis's error for
/// its first element that is not a bulk string.
fn expected(elements: &[Element]) -> Result<Vec<Bytes>, ProtocolError> {
    let mut args = Vec::new();
    for element in elements {
        let other = match element {
            Element::Bulk(bytes) => {
                args.push(Bytes::copy_from_slice(bytes));
                continue;
            }
            // No nesting at all: just the bulk string inside.
            Element::Deep { depth: 0, .. } => {
                args.push(Bytes::from_static(b"x"));
                continue;
            }
            Element::NullBulk => {
                return Err(ProtocolError(
                    "ERR Protocol error: invalid bulk length".into(),
                ))
            }
            Element::Simple { kind, .. } => kind.byte(),
            Element::Aggregate { kind, .. } | Element::Deep { kind, .. } => kind.byte(),
        };
        return Err(ProtocolError(format!(
            "ERR Protocol error: expected '$', got '{}'",
            other as char
        )));
    }
    Ok(args)
}

fn run(mut input: Input) {
    let limits = RequestLimits::default();
    let mut deep_budget = DEEP_TOTAL_MAX;
    for request in input.requests.iter_mut() {
        if let Request::Multibulk(elements) = request {
            for element in elements {
                clamp_depths(element, &mut deep_budget);
            }
        }
    }
    let mut bytes = Vec::new();
    // What the requests up to the first inline or raw one must decode to.
    let mut oracle = Vec::new();
    let mut checkable = input.corruption.is_none();
    for request in input.requests.iter().take(8) {
        match request {
            Request::Multibulk(elements) => {
                bytes.extend_from_slice(format!("*{}\r\n", elements.len()).as_bytes());
                for element in elements {
                    encode_element(&mut bytes, element);
                }
                if checkable {
                    let want = expected(elements);
                    checkable = want.is_ok();
                    oracle.push(want);
                }
            }
            Request::Inline(line) => {
                bytes.extend(line.iter().filter(|b| **b != b'\n' && **b != b'*'));
                bytes.push(b'\n');
                checkable = false;
            }
            Request::Raw(raw) => {
                bytes.extend_from_slice(raw);
                checkable = false;
            }
        }
    }
    if let Some((at, mask)) = input.corruption {
        if !bytes.is_empty() {
            let at = at as usize % bytes.len();
            bytes[at] ^= mask;
        }
    }
    // Feed the bytes in chunks, decoding all that is complete after each.
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    let mut chunks = input.chunks.iter().map(|&c| usize::from(c).max(1)).cycle();
    let mut fed = 0;
    let mut failed = false;
    while fed < bytes.len() && !failed {
        let n = chunks.next().unwrap_or(bytes.len()).min(bytes.len() - fed);
        buf.extend_from_slice(&bytes[fed..fed + n]);
        fed += n;
        // Every call consumes input or stops: a bounded loop.
        for _ in 0..=buf.len() {
            let before = buf.len();
            match decode_request(&mut buf, &limits) {
                Ok(Some(args)) => {
                    assert!(buf.len() < before, "a decoded request consumes input");
                    if !args.is_empty() {
                        decoded.push(Ok(args));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    decoded.push(Err(e));
                    failed = true;
                    break;
                }
            }
        }
    }
    // Empty requests (`*0`) are skipped by the decoder.
    let oracle: Vec<_> = oracle
        .into_iter()
        .filter(|want| want.as_ref().map_or(true, |args| !args.is_empty()))
        .collect();
    let n = oracle.len().min(decoded.len());
    assert_eq!(decoded[..n], oracle[..n]);
    if input.corruption.is_none() && oracle.last().is_some_and(Result::is_err) {
        assert_eq!(
            decoded.len(),
            oracle.len(),
            "nothing decoded after an error"
        );
    }
}

fuzz_target!(|input: Input| {
    std::thread::Builder::new()
        .stack_size(128 * 1024)
        .spawn(move || run(input))
        .expect("spawn")
        .join()
        .expect("decoding panicked");
});
