//! The catalog: which named entities exist, of which kind, under which numeric id.
//!
//! Entity directories are named by the id (`streams/17`), never by the user-supplied name, so no
//! name can escape the data directory. The catalog is one small file rewritten atomically on every
//! change. Format (little endian, see `storage-format.md` § Catalog):
//! `{ magic u32 "PTKG" | version u8 | reserved [u8; 3] | next_id u64 | count u32 |
//!    { id u64 | kind u8 | name_len u32 | name }* | crc u32 }`, CRC-32 over everything before it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use byteorder::{ByteOrder, LittleEndian as LE};
use bytes::Bytes;

use crate::storage::io::{write_atomically, OpenMode, Vfs};

pub const CATALOG_FILE: &str = "catalog";
/// Pub/Sub channels are not keys, so their topics have a catalog of their own.
pub const TOPIC_CATALOG_FILE: &str = "topics.catalog";
pub const CATALOG_MAGIC: u32 = u32::from_le_bytes(*b"PTKG");
pub const CATALOG_VERSION: u8 = 1;
/// Longest entity name accepted (Redis allows 512 MB keys; nobody needs that for a stream).
pub const NAME_BYTES_MAX: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EntityKind {
    Stream = 1,
    Topic = 2,
}

impl EntityKind {
    fn from_u8(value: u8) -> Option<EntityKind> {
        match value {
            1 => Some(EntityKind::Stream),
            2 => Some(EntityKind::Topic),
            _ => None,
        }
    }

    /// The subdirectory of the data directory holding entities of this kind.
    pub fn dir_name(self) -> &'static str {
        match self {
            EntityKind::Stream => "streams",
            EntityKind::Topic => "topics",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    pub id: u64,
    pub kind: EntityKind,
}

/// The in-memory catalog; [`Catalog::save`] makes a change durable.
pub struct Catalog {
    path: PathBuf,
    next_id: u64,
    entries: BTreeMap<Bytes, CatalogEntry>,
}

impl Catalog {
    /// Load the catalog in `data_dir`; a missing file is an empty catalog, a damaged one is an
    /// error (starting empty would silently orphan every entity).
    pub fn load(vfs: &dyn Vfs, data_dir: &Path) -> io::Result<Catalog> {
        Catalog::load_file(vfs, &data_dir.join(CATALOG_FILE))
    }

    /// Load a catalog kept in another file (topics have their own, outside the keyspace).
    pub fn load_file(vfs: &dyn Vfs, path: &Path) -> io::Result<Catalog> {
        let path = path.to_path_buf();
        let mut catalog = Catalog {
            path,
            next_id: 1,
            entries: BTreeMap::new(),
        };
        if !vfs.exists(&catalog.path) {
            return Ok(catalog);
        }
        let bytes = (*vfs.open(&catalog.path, OpenMode::Read)?).read_all()?;
        let (next_id, entries) = decode(&bytes).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is damaged", catalog.path.display()),
            )
        })?;
        catalog.next_id = next_id;
        catalog.entries = entries;
        Ok(catalog)
    }

    pub fn save(&self, vfs: &dyn Vfs) -> io::Result<()> {
        write_atomically(vfs, &self.path, &encode(self.next_id, &self.entries))
    }

    pub fn get(&self, name: &[u8]) -> Option<&CatalogEntry> {
        self.entries.get(name)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&Bytes, &CatalogEntry)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reserve a new id for `name` (not yet saved).
    pub fn insert(&mut self, name: Bytes, kind: EntityKind) -> CatalogEntry {
        let entry = CatalogEntry {
            id: self.next_id,
            kind,
        };
        self.next_id += 1;
        self.entries.insert(name, entry.clone());
        entry
    }

    /// Give `from`'s entry the name `to` (not yet saved); returns the entry `to` had, which the
    /// caller must dispose of.
    pub fn rename(&mut self, from: &[u8], to: Bytes) -> Option<CatalogEntry> {
        let entry = self.entries.remove(from)?;
        self.entries.insert(to, entry)
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<CatalogEntry> {
        self.entries.remove(name)
    }
}

fn encode(next_id: u64, entries: &BTreeMap<Bytes, CatalogEntry>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&CATALOG_MAGIC.to_le_bytes());
    out.extend_from_slice(&[CATALOG_VERSION, 0, 0, 0]);
    out.extend_from_slice(&next_id.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (name, entry) in entries {
        out.extend_from_slice(&entry.id.to_le_bytes());
        out.push(entry.kind as u8);
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<(u64, BTreeMap<Bytes, CatalogEntry>)> {
    let (body, crc) = bytes.split_at(bytes.len().checked_sub(4)?);
    if crc32fast::hash(body) != LE::read_u32(crc) || body.len() < 20 {
        return None;
    }
    if LE::read_u32(&body[0..4]) != CATALOG_MAGIC || body[4] != CATALOG_VERSION {
        return None;
    }
    let next_id = LE::read_u64(&body[8..16]);
    let count = LE::read_u32(&body[16..20]);
    let mut rest = &body[20..];
    let mut entries = BTreeMap::new();
    for _ in 0..count {
        if rest.len() < 13 {
            return None;
        }
        let id = LE::read_u64(&rest[0..8]);
        let kind = EntityKind::from_u8(rest[8])?;
        let name_len = LE::read_u32(&rest[9..13]) as usize;
        rest = &rest[13..];
        if rest.len() < name_len || id >= next_id {
            return None;
        }
        entries.insert(
            Bytes::copy_from_slice(&rest[..name_len]),
            CatalogEntry { id, kind },
        );
        rest = &rest[name_len..];
    }
    rest.is_empty().then_some((next_id, entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::io::FaultVfs;

    #[test]
    fn round_trip_and_damage_is_an_error() {
        let vfs = FaultVfs::new(1);
        let dir = Path::new("/data");
        vfs.create_dir_all(dir).unwrap();
        let mut catalog = Catalog::load(&vfs, dir).unwrap();
        assert!(catalog.is_empty());
        catalog.insert(Bytes::from("orders"), EntityKind::Stream);
        catalog.insert(Bytes::from_static(b"\0weird/../name"), EntityKind::Stream);
        catalog.remove(b"orders");
        catalog.insert(Bytes::from("orders"), EntityKind::Stream);
        catalog.save(&vfs).unwrap();
        let loaded = Catalog::load(&vfs, dir).unwrap();
        assert_eq!(
            loaded.get(b"orders"),
            Some(&CatalogEntry {
                id: 3,
                kind: EntityKind::Stream
            })
        );
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded.next_id, 4);
        vfs.flip_bit(&dir.join(CATALOG_FILE), 25, 1).unwrap();
        assert!(Catalog::load(&vfs, dir).is_err());
    }
}
