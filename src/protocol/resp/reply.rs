//! Replies, encoded for the connection's protocol: RESP2 or RESP3 (after `HELLO 3`).
//!
//! The differences handled here: nulls (`$-1` / `*-1` in RESP2, `_` in RESP3), maps (`%` in
//! RESP3, flattened to arrays in RESP2), and push frames (`>` in RESP3, arrays in RESP2).

use bytes::{BufMut, Bytes, BytesMut};

use crate::broker::StreamId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(&'static str),
    /// `-ERR ...`: the full text, including its code (`ERR`, `WRONGTYPE`, ...).
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    /// A stream ID as a bulk string, formatted straight into the output.
    Id(StreamId),
    /// A missing value: `$-1` in RESP2.
    Nil,
    /// A missing array: `*-1` in RESP2.
    NilArray,
    Array(Vec<Reply>),
    Map(Vec<(Reply, Reply)>),
    Push(Vec<Reply>),
    /// Nothing at all (CLIENT REPLY OFF/SKIP).
    Silent,
    /// Several replies to one command, back to back (SUBSCRIBE to many channels).
    Many(Vec<Reply>),
}

/// Which protocol a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Resp2,
    Resp3,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Status("OK")
    }

    pub fn error(text: impl Into<String>) -> Reply {
        Reply::Error(text.into())
    }

    pub fn bulk(bytes: impl Into<Bytes>) -> Reply {
        Reply::Bulk(bytes.into())
    }

    pub fn wrong_arity(command: &str) -> Reply {
        Reply::Error(format!(
            "ERR wrong number of arguments for '{}' command",
            command.to_ascii_lowercase()
        ))
    }

    pub fn syntax_error() -> Reply {
        Reply::error("ERR syntax error")
    }

    pub fn not_an_integer() -> Reply {
        Reply::error("ERR value is not an integer or out of range")
    }

    pub fn wrong_type() -> Reply {
        Reply::error("WRONGTYPE Operation against a key holding the wrong kind of value")
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// About how many bytes this reply takes, encoded (16 per element for framing and its
    /// place in memory): what output limits count while a round's replies are built.
    /// Recursion is bounded as in [`Reply::encode`].
    pub fn size_estimate(&self) -> u64 {
        const ELEMENT_BYTES: u64 = 16;
        ELEMENT_BYTES
            + match self {
                Reply::Silent | Reply::Nil | Reply::NilArray | Reply::Integer(_) => 0,
                Reply::Status(s) => s.len() as u64,
                Reply::Error(e) => e.len() as u64,
                Reply::Bulk(b) => b.len() as u64,
                Reply::Id(_) => 24,
                Reply::Array(items) | Reply::Push(items) | Reply::Many(items) => {
                    items.iter().map(Reply::size_estimate).sum()
                }
                Reply::Map(pairs) => pairs
                    .iter()
                    .map(|(k, v)| k.size_estimate() + v.size_estimate())
                    .sum(),
            }
    }

    /// Append this reply's encoding to `out`. Nesting is bounded by how replies are built
    /// (stream entries are at most four levels deep), so recursion here is bounded too.
    pub fn encode(&self, protocol: Protocol, out: &mut BytesMut) {
        let resp3 = protocol == Protocol::Resp3;
        match self {
            Reply::Silent => {}
            Reply::Many(replies) => replies.iter().for_each(|r| r.encode(protocol, out)),
            Reply::Status(s) => line(out, b'+', s.as_bytes()),
            Reply::Error(e) => line(out, b'-', e.replace(['\r', '\n'], " ").as_bytes()),
            Reply::Integer(n) => line(out, b':', itoa::Buffer::new().format(*n).as_bytes()),
            Reply::Bulk(b) => {
                length_line(out, b'$', b.len());
                out.put_slice(b);
                out.put_slice(b"\r\n");
            }
            Reply::Id(id) => {
                let (mut ms, mut seq) = (itoa::Buffer::new(), itoa::Buffer::new());
                let (ms, seq) = (ms.format(id.ms).as_bytes(), seq.format(id.seq).as_bytes());
                length_line(out, b'$', ms.len() + 1 + seq.len());
                out.reserve(ms.len() + seq.len() + 3);
                out.put_slice(ms);
                out.put_u8(b'-');
                out.put_slice(seq);
                out.put_slice(b"\r\n");
            }
            Reply::Nil if resp3 => out.put_slice(b"_\r\n"),
            Reply::Nil => out.put_slice(b"$-1\r\n"),
            Reply::NilArray if resp3 => out.put_slice(b"_\r\n"),
            Reply::NilArray => out.put_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                length_line(out, b'*', items.len());
                items.iter().for_each(|i| i.encode(protocol, out));
            }
            Reply::Push(items) => {
                length_line(out, if resp3 { b'>' } else { b'*' }, items.len());
                items.iter().for_each(|i| i.encode(protocol, out));
            }
            Reply::Map(pairs) => {
                if resp3 {
                    length_line(out, b'%', pairs.len());
                } else {
                    length_line(out, b'*', pairs.len() * 2);
                }
                for (k, v) in pairs {
                    k.encode(protocol, out);
                    v.encode(protocol, out);
                }
            }
        }
    }
}

/// `$5\r\n`, `*3\r\n`: a length line, formatted without allocating.
fn length_line(out: &mut BytesMut, prefix: u8, len: usize) {
    line(out, prefix, itoa::Buffer::new().format(len).as_bytes());
}

fn line(out: &mut BytesMut, prefix: u8, body: &[u8]) {
    out.reserve(body.len() + 3);
    out.put_u8(prefix);
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(reply: &Reply, protocol: Protocol) -> String {
        let mut out = BytesMut::new();
        reply.encode(protocol, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn resp2_and_resp3_encodings() {
        let map = Reply::Map(vec![(Reply::bulk("a"), Reply::Integer(1))]);
        assert_eq!(encoded(&map, Protocol::Resp2), "*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(encoded(&map, Protocol::Resp3), "%1\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(encoded(&Reply::Nil, Protocol::Resp2), "$-1\r\n");
        assert_eq!(encoded(&Reply::NilArray, Protocol::Resp2), "*-1\r\n");
        assert_eq!(encoded(&Reply::NilArray, Protocol::Resp3), "_\r\n");
        assert_eq!(
            encoded(&Reply::Push(vec![Reply::bulk("x")]), Protocol::Resp3),
            ">1\r\n$1\r\nx\r\n"
        );
        assert_eq!(
            encoded(&Reply::error("ERR a\r\nb"), Protocol::Resp2),
            "-ERR a  b\r\n"
        );
        assert_eq!(encoded(&Reply::ok(), Protocol::Resp3), "+OK\r\n");
        assert_eq!(encoded(&Reply::Integer(-42), Protocol::Resp2), ":-42\r\n");
        let id = Reply::Id(StreamId::new(1_700_000_000_123, u64::MAX));
        assert_eq!(
            encoded(&id, Protocol::Resp3),
            "$34\r\n1700000000123-18446744073709551615\r\n"
        );
        assert_eq!(StreamId::new(5, 0).to_string(), "5-0");
    }
}
