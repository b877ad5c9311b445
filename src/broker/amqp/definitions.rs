//! The durable AMQP definitions: exchanges, queues and bindings that survive a restart, in one
//! encoding used for the definitions snapshot in the metadata store, for a queue's declaration
//! in the catalog, and for the definition operations in the write-ahead log (see
//! [`super::vhost`]). Format (little endian; `storage-format.md` § AMQP definitions):
//!
//! ```text
//! magic u32 "PTKA" | version u8 | reserved [u8; 3] | next_queue_id u64 |
//! exchanges u32 | { name str | kind u8 | flags u8 | arguments table }*
//! queues u32    | { name str | id u64 | flags u8 | arguments table }*
//! bindings u32  | { source str | destination_kind u8 | destination str | routing_key str |
//!                   arguments table }*
//! crc u32 (CRC-32 of everything before it)
//! ```
//! `str` is `len u16 | bytes`; `table` is `len u32 | an AMQP field table as on the wire`.
//! Exchange flags: bit 0 auto-delete, bit 1 internal. Queue flags: bit 0 auto-delete.
//! Destination kind: 1 queue, 2 exchange.

use std::io;

use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::FieldTable;
use byteorder::{ByteOrder, LittleEndian as LE};

use super::exchange::{Binding, Destination, ExchangeKind};
const MAGIC: u32 = u32::from_le_bytes(*b"PTKA");
const VERSION: u8 = 1;

#[derive(Clone, Debug, PartialEq)]
pub struct ExchangeDef {
    pub name: String,
    pub kind: ExchangeKind,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

#[derive(Clone, Debug, PartialEq)]
pub struct QueueDef {
    pub name: String,
    pub id: u64,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BindingDef {
    pub source: String,
    pub binding: Binding,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Definitions {
    pub next_queue_id: u64,
    pub exchanges: Vec<ExchangeDef>,
    pub queues: Vec<QueueDef>,
    pub bindings: Vec<BindingDef>,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("AMQP definitions: {what}"),
    )
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_table(out: &mut Vec<u8>, table: &FieldTable) -> io::Result<()> {
    let bytes = cookie_factory::gen_simple(gen_field_table(table), Vec::new())
        .map_err(|e| invalid(&format!("cannot encode arguments: {e:?}")))?;
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&bytes);
    Ok(())
}

/// A cursor over the file's bytes; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(invalid("truncated"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(LE::read_u32(self.take(4)?))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(LE::read_u64(self.take(8)?))
    }
    fn str(&mut self) -> io::Result<String> {
        let len = LE::read_u16(self.take(2)?) as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| invalid("name is not UTF-8"))
    }
    fn table(&mut self) -> io::Result<FieldTable> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        match parse_field_table(bytes) {
            Ok(([], table)) => Ok(table),
            _ => Err(invalid("bad arguments table")),
        }
    }
    fn count(&mut self) -> io::Result<usize> {
        let n = self.u32()? as usize;
        // Every entry takes at least 4 bytes: a count beyond that is damage, not a reason to
        // allocate.
        if n > self.bytes.len() / 4 {
            return Err(invalid("count exceeds the file"));
        }
        Ok(n)
    }
}

impl Definitions {
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[VERSION, 0, 0, 0]);
        out.extend_from_slice(&self.next_queue_id.to_le_bytes());
        out.extend_from_slice(&(self.exchanges.len() as u32).to_le_bytes());
        for e in &self.exchanges {
            put_str(&mut out, &e.name);
            out.push(match e.kind {
                ExchangeKind::Direct => 1,
                ExchangeKind::Fanout => 2,
                ExchangeKind::Topic => 3,
                ExchangeKind::Headers => 4,
            });
            out.push(u8::from(e.auto_delete) | (u8::from(e.internal) << 1));
            put_table(&mut out, &e.arguments)?;
        }
        out.extend_from_slice(&(self.queues.len() as u32).to_le_bytes());
        for q in &self.queues {
            put_str(&mut out, &q.name);
            out.extend_from_slice(&q.id.to_le_bytes());
            out.push(u8::from(q.auto_delete));
            put_table(&mut out, &q.arguments)?;
        }
        out.extend_from_slice(&(self.bindings.len() as u32).to_le_bytes());
        for b in &self.bindings {
            put_str(&mut out, &b.source);
            let (kind, name) = match &b.binding.destination {
                Destination::Queue(n) => (1, n),
                Destination::Exchange(n) => (2, n),
            };
            out.push(kind);
            put_str(&mut out, name);
            put_str(&mut out, &b.binding.routing_key);
            put_table(&mut out, &b.binding.arguments)?;
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> io::Result<Definitions> {
        if bytes.len() < 24 {
            return Err(invalid("too short"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body) != LE::read_u32(crc) {
            return Err(invalid("checksum mismatch"));
        }
        let mut r = Reader { bytes: body };
        if r.u32()? != MAGIC {
            return Err(invalid("bad magic"));
        }
        if r.u8()? != VERSION {
            return Err(invalid("unknown version"));
        }
        r.take(3)?;
        let mut defs = Definitions {
            next_queue_id: r.u64()?,
            ..Default::default()
        };
        for _ in 0..r.count()? {
            let name = r.str()?;
            let kind = match r.u8()? {
                1 => ExchangeKind::Direct,
                2 => ExchangeKind::Fanout,
                3 => ExchangeKind::Topic,
                4 => ExchangeKind::Headers,
                _ => return Err(invalid("unknown exchange kind")),
            };
            let flags = r.u8()?;
            defs.exchanges.push(ExchangeDef {
                name,
                kind,
                auto_delete: flags & 1 != 0,
                internal: flags & 2 != 0,
                arguments: r.table()?,
            });
        }
        for _ in 0..r.count()? {
            defs.queues.push(QueueDef {
                name: r.str()?,
                id: r.u64()?,
                auto_delete: r.u8()? & 1 != 0,
                arguments: r.table()?,
            });
        }
        for _ in 0..r.count()? {
            let source = r.str()?;
            let kind = r.u8()?;
            let name = r.str()?;
            let destination = match kind {
                1 => Destination::Queue(name),
                2 => Destination::Exchange(name),
                _ => return Err(invalid("unknown destination kind")),
            };
            defs.bindings.push(BindingDef {
                source,
                binding: Binding {
                    destination,
                    routing_key: r.str()?,
                    arguments: r.table()?,
                },
            });
        }
        if !r.bytes.is_empty() {
            return Err(invalid("trailing bytes"));
        }
        Ok(defs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{AMQPValue, LongString};

    #[test]
    fn definitions_round_trip_and_damage_is_refused() {
        let mut args = FieldTable::default();
        args.insert(
            "x-match".into(),
            AMQPValue::LongString(LongString::from(&b"any"[..])),
        );
        args.insert("n".into(), AMQPValue::LongLongInt(-5));
        let defs = Definitions {
            next_queue_id: 9,
            exchanges: vec![ExchangeDef {
                name: "logs".into(),
                kind: ExchangeKind::Headers,
                auto_delete: true,
                internal: false,
                arguments: args.clone(),
            }],
            queues: vec![QueueDef {
                name: "q1".into(),
                id: 3,
                auto_delete: false,
                arguments: FieldTable::default(),
            }],
            bindings: vec![BindingDef {
                source: "logs".into(),
                binding: Binding {
                    destination: Destination::Queue("q1".into()),
                    routing_key: "a.#".into(),
                    arguments: args,
                },
            }],
        };
        let bytes = defs.encode().unwrap();
        assert_eq!(Definitions::decode(&bytes).unwrap(), defs);
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x20;
            assert!(Definitions::decode(&damaged).is_err(), "flip at {i}");
        }
        for cut in 0..bytes.len() {
            assert!(Definitions::decode(&bytes[..cut]).is_err());
        }
    }
}
