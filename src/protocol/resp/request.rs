//! Decoding client requests: RESP multibulk arrays (decoded by `redis-protocol`) and inline
//! commands, with limits checked on the headers before any large frame is buffered.
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
    // One parse for the common case: a complete, valid request becomes slices of the input.
    // Anything else (incomplete, malformed, over a limit) goes through the header check, which
    // names the problem the way Redis does and keeps an absurd frame from being buffered.
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
        Ok(None) => check_multibulk_headers(buf, limits).map(|()| None),
        Ok(Some(_)) => {
            check_multibulk_headers(buf, limits)?;
            Err(error("expected an array of bulk strings"))
        }
        Err(e) => {
            check_multibulk_headers(buf, limits)?;
            Err(ProtocolError(format!("ERR Protocol error: {e}")))
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
}
