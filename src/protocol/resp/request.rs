//! Decoding client requests: RESP multibulk arrays (decoded by `redis-protocol`) and inline
//! commands, with limits checked on the headers before any large frame is buffered. Requests
//! are flat arrays of bulk strings, as in Redis: a nested aggregate is refused by a
//! non-recursive header walk before any decoder sees it, so no input can nest deeper than one
//! level.
//!
//! One shortcut: a complete request in the canonical form every client sends (`*N`, then `$len`
//! and the bytes for each argument, lengths in plain digits) is sliced out by
//! [`split_plain_multibulk`], a single pass over the bytes. `redis-protocol`'s parser cost about
//! 3,000 instructions per XADD, nearly half of the server's user-space work on that path.
//! Anything else (incomplete, malformed, unusual spelling, over a limit) takes the
//! `redis-protocol` path, and a property test checks the shortcut against it.
//!
//! Errors are Redis's own protocol errors; after one, Redis replies and closes the connection,
//! and so do we.

use bytes::{Buf, Bytes, BytesMut};
use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::types::RangeFrame;

/// Limits on what one request may declare or buffer.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    /// Arguments in one multibulk request.
    pub args_max: u64,
    /// Bytes in one argument (Redis: `proto-max-bulk-len`, 512 MB).
    pub bulk_bytes_max: u64,
    /// Bytes of one inline request line (Redis: 64 KB).
    pub inline_bytes_max: usize,
    /// Bytes one request may declare in total (Redis: `client-query-buffer-limit`, 1 GB).
    pub request_bytes_max: u64,
}

impl Default for RequestLimits {
    fn default() -> RequestLimits {
        RequestLimits {
            args_max: 1024 * 1024,
            bulk_bytes_max: 512 * 1024 * 1024,
            inline_bytes_max: 64 * 1024,
            request_bytes_max: 1024 * 1024 * 1024,
        }
    }
}

/// A protocol error: the reply text (without the leading `-`), after which the connection closes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

fn error(text: &str) -> ProtocolError {
    ProtocolError(format!("ERR Protocol error: {text}"))
}

/// Take one request off the front of `buf`: `Ok(None)` until it is complete. An empty vector is
/// an empty request (blank line, `*0`, `*-1`), which Redis silently skips.
pub fn decode_request(
    buf: &mut BytesMut,
    limits: &RequestLimits,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => decode_multibulk(buf, limits),
        Some(_) => decode_inline(buf, limits),
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| from + p)
}

fn parse_length(line: &[u8]) -> Option<i64> {
    std::str::from_utf8(line).ok()?.parse().ok()
}

/// Check the multibulk header and every argument header present so far.
fn check_multibulk_headers(buf: &[u8], limits: &RequestLimits) -> Result<(), ProtocolError> {
    let Some(end) = find_crlf(buf, 1) else {
        return if buf.len() > limits.inline_bytes_max {
            Err(error("too big mbulk count string"))
        } else {
            Ok(())
        };
    };
    let count = parse_length(&buf[1..end]).ok_or_else(|| error("invalid multibulk length"))?;
    if count > limits.args_max as i64 {
        return Err(error("invalid multibulk length"));
    }
    let mut pos = end + 2;
    let mut declared = 0u64;
    for _ in 0..count.max(0) {
        match buf.get(pos) {
            None => return Ok(()),
            Some(b'$') => {}
            Some(&other) => {
                return Err(ProtocolError(format!(
                    "ERR Protocol error: expected '$', got '{}'",
                    other as char
                )))
            }
        }
        let Some(end) = find_crlf(buf, pos + 1) else {
            return if buf.len() - pos > limits.inline_bytes_max {
                Err(error("too big bulk count string"))
            } else {
                Ok(())
            };
        };
        let len = parse_length(&buf[pos + 1..end]).ok_or_else(|| error("invalid bulk length"))?;
        if len < 0 || len as u64 > limits.bulk_bytes_max {
            return Err(error("invalid bulk length"));
        }
        declared += len as u64;
        if declared > limits.request_bytes_max {
            return Err(error("request exceeds the query buffer limit"));
        }
        pos = end + 2 + len as usize + 2;
    }
    Ok(())
}

fn decode_multibulk(
    buf: &mut BytesMut,
    limits: &RequestLimits,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    // `*-1` and `*0` are empty requests; redis-protocol reads `*-1` as a null frame.
    if buf.starts_with(b"*-1\r\n") || buf.starts_with(b"*0\r\n") {
        let len = if buf[1] == b'-' { 5 } else { 4 };
        buf.advance(len);
        return Ok(Some(Vec::new()));
    }
    let mut ranges = ArgRanges::default();
    if let Some(consumed) = split_plain_multibulk(buf, limits, &mut ranges) {
        let frame = buf.split_to(consumed).freeze();
        return Ok(Some(
            ranges
                .as_slice()
                .iter()
                .map(|&(start, end)| frame.slice(start..end))
                .collect(),
        ));
    }
    // The header check first: it walks the request without recursion and refuses any element
    // that is not a bulk string (a nested aggregate included, with Redis's "expected '$', got
    // '*'"), so redis-protocol, whose decoder recurses once per nesting level, only ever sees
    // a flat array. It also names a bad header the way Redis does and keeps an absurd frame
    // from being buffered.
    check_multibulk_headers(buf, limits)?;
    match decode_range(buf) {
        Ok(Some((RangeFrame::Array(items), consumed))) if within_limits(&items, limits) => {
            let frame = buf.split_to(consumed).freeze();
            let args = items
                .iter()
                .map(|item| match item {
                    RangeFrame::BulkString((start, end)) => frame.slice(*start..*end),
                    _ => Bytes::new(), // excluded by within_limits
                })
                .collect();
            Ok(Some(args))
        }
        Ok(None) => Ok(None),
        Ok(Some(_)) => Err(error("expected an array of bulk strings")),
        Err(e) => Err(ProtocolError(format!("ERR Protocol error: {e}"))),
    }
}

/// Where a request's arguments lie in the buffer: the first few on the stack (nearly every
/// command), the rest on the heap.
#[derive(Default)]
struct ArgRanges {
    inline: [(usize, usize); ARG_RANGES_INLINE],
    len: usize,
    more: Vec<(usize, usize)>,
}

const ARG_RANGES_INLINE: usize = 8;

impl ArgRanges {
    fn push(&mut self, range: (usize, usize)) {
        if self.len < ARG_RANGES_INLINE {
            self.inline[self.len] = range;
        } else {
            if self.more.is_empty() {
                self.more.extend_from_slice(&self.inline);
            }
            self.more.push(range);
        }
        self.len += 1;
    }

    fn as_slice(&self) -> &[(usize, usize)] {
        if self.len <= ARG_RANGES_INLINE {
            &self.inline[..self.len]
        } else {
            &self.more
        }
    }
}

/// Record the argument ranges of a complete request in canonical form within the limits in
/// `args`, and return its length; `None` for anything else, which the general path then
/// decodes (or rejects, or waits for).
fn split_plain_multibulk(
    buf: &[u8],
    limits: &RequestLimits,
    args: &mut ArgRanges,
) -> Option<usize> {
    let (count, mut pos) = plain_length(buf, 0, b'*')?;
    if count == 0 || count > limits.args_max {
        return None;
    }
    // Bounded by what the buffer could hold, so a huge count cannot reserve memory.
    if count as usize > ARG_RANGES_INLINE {
        args.more.reserve((count as usize).min(buf.len() / 4));
    }
    let mut total = 0u64;
    for _ in 0..count {
        let (len, start) = plain_length(buf, pos, b'$')?;
        total += len;
        if len > limits.bulk_bytes_max || total > limits.request_bytes_max {
            return None;
        }
        let end = start.checked_add(len as usize)?;
        if buf.get(end..end + 2)? != b"\r\n" {
            return None;
        }
        args.push((start, end));
        pos = end + 2;
    }
    Some(pos)
}

/// `<tag><digits>\r\n` at `pos`, digits without sign or leading zeros: the number and the
/// position after the line.
fn plain_length(buf: &[u8], pos: usize, tag: u8) -> Option<(u64, usize)> {
    if *buf.get(pos)? != tag {
        return None;
    }
    let digits_from = pos + 1;
    let mut value = 0u64;
    let mut i = digits_from;
    loop {
        match *buf.get(i)? {
            b @ b'0'..=b'9' => {
                // 18 digits cannot overflow a u64; longer is no length worth a shortcut.
                if i - digits_from == 18
                    || (b == b'0' && i == digits_from && buf.get(i + 1)? != &b'\r')
                {
                    return None;
                }
                value = value * 10 + u64::from(b - b'0');
                i += 1;
            }
            b'\r' if i > digits_from && *buf.get(i + 1)? == b'\n' => return Some((value, i + 2)),
            _ => return None,
        }
    }
}

/// A decoded request is acceptable: only bulk strings, and within every limit.
fn within_limits(items: &[RangeFrame], limits: &RequestLimits) -> bool {
    let mut total = 0u64;
    items.len() as u64 <= limits.args_max
        && items.iter().all(|item| match item {
            RangeFrame::BulkString((start, end)) => {
                let len = (end - start) as u64;
                total += len;
                len <= limits.bulk_bytes_max && total <= limits.request_bytes_max
            }
            _ => false,
        })
}

fn decode_inline(
    buf: &mut BytesMut,
    limits: &RequestLimits,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(newline) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > limits.inline_bytes_max {
            Err(error("too big inline request"))
        } else {
            Ok(None)
        };
    };
    let line = buf.split_to(newline + 1);
    let line = line.strip_suffix(b"\n").unwrap_or(&line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    split_inline_args(line)
        .map(Some)
        .ok_or_else(|| error("unbalanced quotes in request"))
}

/// Split an inline command line the way Redis's `sdssplitargs` does: whitespace separates
/// arguments; "double quotes" understand `\n \r \t \b \a \\ \" \xHH`; 'single quotes' only `\'`.
/// A closing quote must be followed by whitespace or the end. `None` on unbalanced quotes.
pub fn split_inline_args(line: &[u8]) -> Option<Vec<Bytes>> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            return Some(args);
        }
        let mut arg = Vec::new();
        let mut quote: Option<u8> = None;
        loop {
            let Some(&c) = line.get(i) else {
                if quote.is_some() {
                    return None;
                }
                break;
            };
            match quote {
                None if c.is_ascii_whitespace() => break,
                None if c == b'"' || c == b'\'' => quote = Some(c),
                None => arg.push(c),
                Some(q) if c == q => {
                    // The closing quote must end the argument.
                    if line.get(i + 1).is_some_and(|n| !n.is_ascii_whitespace()) {
                        return None;
                    }
                    i += 1;
                    break;
                }
                Some(b'"')
                    if c == b'\\'
                        && line.get(i + 1) == Some(&b'x')
                        && hex_pair(line.get(i + 2..i + 4)).is_some() =>
                {
                    arg.push(hex_pair(line.get(i + 2..i + 4))?);
                    i += 3;
                }
                Some(b'"') if c == b'\\' && i + 1 < line.len() => {
                    i += 1;
                    arg.push(match line[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                }
                Some(b'\'') if c == b'\\' && line.get(i + 1) == Some(&b'\'') => {
                    arg.push(b'\'');
                    i += 1;
                }
                Some(_) => arg.push(c),
            }
            i += 1;
        }
        args.push(Bytes::from(arg));
    }
}

fn hex_pair(pair: Option<&[u8]>) -> Option<u8> {
    let pair = std::str::from_utf8(pair?).ok()?;
    u8::from_str_radix(pair, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortcut's argument ranges as a vector, and the request's length.
    fn split_ranges(buf: &[u8], limits: &RequestLimits) -> Option<(Vec<(usize, usize)>, usize)> {
        let mut ranges = ArgRanges::default();
        let consumed = split_plain_multibulk(buf, limits, &mut ranges)?;
        Some((ranges.as_slice().to_vec(), consumed))
    }

    fn decode_all(input: &[u8]) -> (Vec<Vec<Bytes>>, Option<ProtocolError>, usize) {
        let mut buf = BytesMut::from(input);
        let mut requests = Vec::new();
        loop {
            match decode_request(&mut buf, &RequestLimits::default()) {
                Ok(Some(r)) => requests.push(r),
                Ok(None) => return (requests, None, buf.len()),
                Err(e) => return (requests, Some(e), buf.len()),
            }
        }
    }

    #[test]
    fn multibulk_inline_and_pipelines() {
        let (requests, err, left) =
            decode_all(b"*2\r\n$4\r\nECHO\r\n$3\r\na b\r\nPING\r\n*-1\r\n  \r\n*1\r\n$4\r\nPI");
        assert!(err.is_none());
        assert_eq!(left, 10, "the incomplete request waits");
        assert_eq!(
            requests,
            vec![
                vec![Bytes::from("ECHO"), Bytes::from("a b")],
                vec![Bytes::from("PING")],
                vec![],
                vec![]
            ]
        );
    }

    #[test]
    fn inline_quoting_matches_redis() {
        let args = split_inline_args(br#"ECHO "a\x41b\n" 'c d' 'it\'s' plain"#).unwrap();
        assert_eq!(
            args,
            vec![
                Bytes::from("ECHO"),
                Bytes::from("aAb\n"),
                Bytes::from("c d"),
                Bytes::from("it's"),
                Bytes::from("plain")
            ]
        );
        assert_eq!(split_inline_args(br#"PING "unbalanced"#), None);
        assert_eq!(split_inline_args(br#"PING "a"b"#), None);
        assert_eq!(split_inline_args(b"   "), Some(vec![]));
    }

    #[test]
    fn redis_protocol_errors_for_bad_or_absurd_headers() {
        let cases: [(&[u8], &str); 6] = [
            (
                b"*2\r\n$4\r\nPING\r\n$-5\r\n",
                "ERR Protocol error: invalid bulk length",
            ),
            (b"*1\r\n:5\r\n", "ERR Protocol error: expected '$', got ':'"),
            (
                b"*2\r\n$4\r\nECHO\r\n$999999999999\r\n",
                "ERR Protocol error: invalid bulk length",
            ),
            (
                b"*99999999\r\n",
                "ERR Protocol error: invalid multibulk length",
            ),
            (b"*x\r\n", "ERR Protocol error: invalid multibulk length"),
            (
                b"PING \"unbalanced\r\n",
                "ERR Protocol error: unbalanced quotes in request",
            ),
        ];
        for (input, expected) in cases {
            let (_, err, _) = decode_all(input);
            assert_eq!(
                err,
                Some(ProtocolError(expected.into())),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let (_, err, _) = decode_all(&vec![b'A'; 70 * 1024]);
        assert_eq!(
            err,
            Some(ProtocolError(
                "ERR Protocol error: too big inline request".into()
            ))
        );
    }

    #[test]
    fn nested_aggregates_are_refused_without_recursion() {
        // 100,000 nested arrays, decoded on a thread with a 64 KiB stack: a recursive decoder
        // would overflow it.
        let nested: Vec<u8> = b"*1\r\n".repeat(100_000);
        let mixed = b"*2\r\n$4\r\nECHO\r\n%1\r\n*1\r\n*1\r\n".to_vec();
        let decoded = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || [decode_all(&nested).1, decode_all(&mixed).1])
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(
            decoded,
            [
                Some(ProtocolError(
                    "ERR Protocol error: expected '$', got '*'".into()
                )),
                Some(ProtocolError(
                    "ERR Protocol error: expected '$', got '%'".into()
                )),
            ]
        );
    }

    fn encode_request(args: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// What `redis-protocol` makes of `buf`, in the shortcut's terms.
    fn reference_split(buf: &[u8]) -> Option<(Vec<(usize, usize)>, usize)> {
        match decode_range(&BytesMut::from(buf)) {
            Ok(Some((RangeFrame::Array(items), consumed))) => {
                let ranges = items
                    .iter()
                    .map(|item| match item {
                        RangeFrame::BulkString(range) => Some(*range),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some((ranges, consumed))
            }
            _ => None,
        }
    }

    proptest::proptest! {
        /// The shortcut agrees with `redis-protocol` on whatever it accepts (canonical requests,
        /// then the same bytes truncated or with one byte changed), and it does accept every
        /// complete canonical request.
        #[test]
        fn plain_multibulk_shortcut_agrees_with_redis_protocol(
            args in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 1..12),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            byte in proptest::sample::select(b"0123456789\r\n$*-+ a".to_vec()),
            how in 0..3u8,
        ) {
            let whole = encode_request(&args);
            let limits = RequestLimits::default();
            let (ranges, consumed) = split_ranges(&whole, &limits).expect("canonical");
            proptest::prop_assert_eq!(consumed, whole.len());
            proptest::prop_assert_eq!(Some((ranges, consumed)), reference_split(&whole));
            let mut input = whole.clone();
            match how {
                0 => input.truncate(cut.index(whole.len())),
                1 => input[at.index(whole.len())] = byte,
                _ => input.extend_from_slice(b"*1\r\n$4\r\nPING\r\n"),
            }
            if let Some(split) = split_ranges(&input, &limits) {
                proptest::prop_assert_eq!(Some(split), reference_split(&input));
            }
        }
    }

    #[test]
    fn shortcut_leaves_odd_spellings_and_limits_to_the_general_path() {
        let limits = RequestLimits::default();
        for odd in [
            &b"*01\r\n$4\r\nPING\r\n"[..],
            b"*1\r\n$04\r\nPING\r\n",
            b"*+1\r\n$4\r\nPING\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\n$4\r\nPINGXX",
            b"*1\n$4\r\nPING\r\n",
        ] {
            assert_eq!(split_ranges(odd, &limits), None, "{odd:?}");
        }
        let tight = RequestLimits {
            args_max: 1,
            ..limits
        };
        assert_eq!(split_ranges(b"*2\r\n$1\r\na\r\n$1\r\nb\r\n", &tight), None);
        let mut buf = BytesMut::from(&b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"[..]);
        assert_eq!(
            decode_request(&mut buf, &tight),
            Err(error("invalid multibulk length"))
        );
    }
}
