//! The record: the one unit of data every protocol maps onto (a stream entry, an AMQP message, a
//! published Pub/Sub payload), and its byte layout inside a batch.
//!
//! Format (little endian), see `storage-format.md` § Record:
//! `{ record_len u32 | timestamp_ms i64 | key_len u32 (0xFFFF_FFFF = none) | key |
//!    header_count u32 | { name_len u32 | name | value_len u32 | value }* | body_len u32 | body }`
//! `record_len` counts the bytes after itself.

use byteorder::{ByteOrder, LittleEndian as LE};
use bytes::Bytes;

use super::error::FormatError;

/// `key_len` value meaning "this record has no key" (an empty key is a different thing).
pub const NO_KEY: u32 = u32::MAX;
/// Bytes in a record before its key: record_len, timestamp, key_len.
pub const RECORD_PREFIX_BYTES: usize = 4 + 8 + 4;
/// The smallest possible record: prefix, header_count, body_len.
pub const RECORD_BYTES_MIN: usize = RECORD_PREFIX_BYTES + 4 + 4;

/// An owned record, as appended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// Milliseconds since the Unix epoch, chosen by the producer (or the broker).
    pub timestamp_ms: i64,
    /// Routing key, stream-entry id, or none.
    pub key: Option<Bytes>,
    /// Ordered name/value pairs: stream fields, AMQP properties and headers.
    pub headers: Vec<(Bytes, Bytes)>,
    pub body: Bytes,
}

impl Record {
    pub fn new(timestamp_ms: i64, body: impl Into<Bytes>) -> Record {
        Record {
            timestamp_ms,
            key: None,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn with_key(mut self, key: impl Into<Bytes>) -> Record {
        self.key = Some(key.into());
        self
    }

    pub fn with_header(mut self, name: impl Into<Bytes>, value: impl Into<Bytes>) -> Record {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Bytes this record takes inside a batch.
    pub fn encoded_len(&self) -> usize {
        let key = self.key.as_ref().map_or(0, Bytes::len);
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| 8 + n.len() + v.len())
            .sum();
        RECORD_BYTES_MIN + key + headers + self.body.len()
    }

    /// Append this record's encoding to `out`. Lengths must fit in u32 (the batch limit, far
    /// below 4 GiB, is checked by the caller before encoding).
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let len = self.encoded_len();
        out.resize(start + len, 0);
        let buf = &mut out[start..];
        LE::write_u32(&mut buf[0..4], (len - 4) as u32);
        LE::write_i64(&mut buf[4..12], self.timestamp_ms);
        let mut at = 12;
        match &self.key {
            None => {
                LE::write_u32(&mut buf[at..at + 4], NO_KEY);
                at += 4;
            }
            Some(key) => at = put_bytes(buf, at, key),
        }
        LE::write_u32(&mut buf[at..at + 4], self.headers.len() as u32);
        at += 4;
        for (name, value) in &self.headers {
            at = put_bytes(buf, at, name);
            at = put_bytes(buf, at, value);
        }
        at = put_bytes(buf, at, &self.body);
        debug_assert_eq!(at, len);
    }
}

fn put_bytes(buf: &mut [u8], at: usize, bytes: &[u8]) -> usize {
    LE::write_u32(&mut buf[at..at + 4], bytes.len() as u32);
    buf[at + 4..at + 4 + bytes.len()].copy_from_slice(bytes);
    at + 4 + bytes.len()
}

/// A record read back from a batch, borrowing the batch's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    header_count: u32,
    headers_raw: &'a [u8],
    pub body: &'a [u8],
}

impl<'a> RecordView<'a> {
    /// The record's headers, in the order they were appended.
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter {
            remaining: self.header_count,
            raw: self.headers_raw,
        }
    }

    pub fn header_count(&self) -> u32 {
        self.header_count
    }

    /// Copy into an owned [`Record`].
    pub fn to_record(&self) -> Record {
        Record {
            timestamp_ms: self.timestamp_ms,
            key: self.key.map(Bytes::copy_from_slice),
            headers: self
                .headers()
                .map(|(n, v)| (Bytes::copy_from_slice(n), Bytes::copy_from_slice(v)))
                .collect(),
            body: Bytes::copy_from_slice(self.body),
        }
    }
}

/// Iterates the name/value pairs of a decoded record.
pub struct HeaderIter<'a> {
    remaining: u32,
    raw: &'a [u8],
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // The record was fully validated when decoded, so these cannot fail; if they somehow
        // did, ending the iteration is safer than panicking.
        let (name, rest) = take_bytes(self.raw).ok()?;
        let (value, rest) = take_bytes(rest).ok()?;
        self.raw = rest;
        Some((name, value))
    }
}

fn take_u32(buf: &[u8]) -> Result<(u32, &[u8]), FormatError> {
    if buf.len() < 4 {
        return Err(FormatError::RecordTruncated);
    }
    Ok((LE::read_u32(&buf[..4]), &buf[4..]))
}

fn take_bytes(buf: &[u8]) -> Result<(&[u8], &[u8]), FormatError> {
    let (len, rest) = take_u32(buf)?;
    let len = len as usize;
    if rest.len() < len {
        return Err(FormatError::RecordTruncated);
    }
    Ok(rest.split_at(len))
}

/// Decode one record from the front of `buf`; returns it and the bytes after it. Every length
/// is checked against the enclosing record, so hostile input yields an error, never a panic.
pub(crate) fn decode_record(
    buf: &[u8],
    offset: u64,
) -> Result<(RecordView<'_>, &[u8]), FormatError> {
    let (record_len, rest) = take_u32(buf)?;
    let record_len = record_len as usize;
    if record_len + 4 < RECORD_BYTES_MIN || rest.len() < record_len {
        return Err(FormatError::RecordTruncated);
    }
    let (mut body_of_record, after) = rest.split_at(record_len);
    let timestamp_ms = LE::read_i64(&body_of_record[..8]);
    body_of_record = &body_of_record[8..];
    let (key_len, r) = take_u32(body_of_record)?;
    let key = if key_len == NO_KEY {
        body_of_record = r;
        None
    } else {
        let (key, r) = take_bytes(body_of_record)?;
        body_of_record = r;
        Some(key)
    };
    let (header_count, r) = take_u32(body_of_record)?;
    let headers_start = r;
    let mut cursor = r;
    for _ in 0..header_count {
        // Each header needs at least 8 bytes, so a huge count fails fast on short input.
        let (_, r) = take_bytes(cursor)?;
        let (_, r) = take_bytes(r)?;
        cursor = r;
    }
    let headers_raw = &headers_start[..headers_start.len() - cursor.len()];
    let (body, r) = take_bytes(cursor)?;
    if !r.is_empty() {
        return Err(FormatError::RecordLengthMismatch);
    }
    let view = RecordView {
        offset,
        timestamp_ms,
        key,
        header_count,
        headers_raw,
        body,
    };
    Ok((view, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_and_without_key() {
        let records = [
            Record::new(5, "body"),
            Record::new(-1, "").with_key(""),
            Record::new(i64::MAX, vec![0u8; 300])
                .with_key("k")
                .with_header("a", "1")
                .with_header("", "")
                .with_header("a", "2"),
        ];
        for record in &records {
            let mut buf = Vec::new();
            record.encode_into(&mut buf);
            assert_eq!(buf.len(), record.encoded_len());
            let (view, rest) = decode_record(&buf, 9).unwrap();
            assert!(rest.is_empty());
            assert_eq!(view.offset, 9);
            assert_eq!(&view.to_record(), record);
        }
    }

    #[test]
    fn truncated_input_is_an_error_at_every_length() {
        let record = Record::new(1, "hello").with_key("k").with_header("h", "v");
        let mut buf = Vec::new();
        record.encode_into(&mut buf);
        for len in 0..buf.len() {
            assert!(decode_record(&buf[..len], 0).is_err(), "len {len}");
        }
    }
}
