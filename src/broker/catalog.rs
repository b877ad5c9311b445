//! The catalog: which named entities exist, of which kind, under which numeric id.
//!
//! Entity directories are named by the id (`streams/17`), never by the user-supplied name, so no
//! name can escape the data directory. Each kind has its own namespace (a Redis key, a Pub/Sub
//! channel and an AMQP queue may share a name).
//!
//! Changes are operations in the write-ahead log (owner = the entity's id, domain
//! [`domain::CATALOG`](super::store::domain::CATALOG)); a checkpoint writes only the entries
//! that changed into the metadata store, so creating or deleting an entity costs the same with
//! ten others or a million. Formats (little endian, `storage-format.md` § Catalog):
//!
//! - operation: `tag u8` then, for Create (1): `kind u8 | name bytes | config bytes`; Delete (2):
//!   nothing; Rename (3): `name bytes` (`bytes` = `len u32 | bytes`).
//! - metadata store item `c` + id (u64 big endian): `lsn u64 | kind u8 | name bytes | config
//!   bytes`; item `n`: `next_id u64`.
//!
//! Each entry remembers the LSN of the last operation applied to it, so replaying the
//! write-ahead log from the checkpoint skips what a snapshot already holds.

use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::{BTreeMap, HashMap};

use byteorder::{ByteOrder, LittleEndian as LE};
use bytes::Bytes;

use super::key::Key;
use super::store::{domain, Store};
use crate::storage::meta_store::MetaItem;
use crate::storage::{self, Commit};

/// Longest entity name accepted (Redis allows 512 MB keys; nobody needs that for a stream).
pub const NAME_BYTES_MAX: usize = 64 * 1024;

const KEY_ENTRY: u8 = b'c';
const KEY_NEXT_ID: &[u8] = b"n";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntityKind {
    Stream = 1,
    Topic = 2,
    Queue = 3,
}

impl EntityKind {
    const ALL: [EntityKind; 3] = [EntityKind::Stream, EntityKind::Topic, EntityKind::Queue];

    fn from_u8(value: u8) -> Option<EntityKind> {
        EntityKind::ALL.into_iter().find(|k| *k as u8 == value)
    }

    /// The subdirectory of the data directory holding entities of this kind.
    pub fn dir_name(self) -> &'static str {
        match self {
            EntityKind::Stream => "streams",
            EntityKind::Topic => "topics",
            EntityKind::Queue => "queues",
        }
    }

    fn slot(self) -> usize {
        self as usize - 1
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    pub id: u64,
    pub kind: EntityKind,
    pub name: Bytes,
    /// Kind-specific settings (an AMQP queue's declaration), opaque here.
    pub config: Bytes,
    /// LSN of the last operation applied.
    pub lsn: u64,
}

/// A change to the catalog, as recorded in the write-ahead log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatalogOp {
    Create {
        kind: EntityKind,
        name: Bytes,
        config: Bytes,
    },
    Delete,
    Rename {
        name: Bytes,
    },
}

const OP_CREATE: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_RENAME: u8 = 3;

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Take a `len u32 | bytes` field off the front of `rest`.
fn take_bytes(rest: &mut &[u8]) -> Option<Bytes> {
    take_slice(rest).map(Bytes::copy_from_slice)
}

fn take_slice<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    if rest.len() < 4 {
        return None;
    }
    let len = LE::read_u32(rest) as usize;
    let body = rest.get(4..4 + len)?;
    *rest = &rest[4 + len..];
    Some(body)
}

impl CatalogOp {
    // Format: { tag u8 | Create: kind u8, name bytes, config bytes | Rename: name bytes }
    pub fn encode(&self) -> Vec<u8> {
        self.encode_after(&[])
    }

    /// The operation encoded after `prefix` (a write-ahead log operation's domain byte), in
    /// one allocation.
    pub fn encode_after(&self, prefix: &[u8]) -> Vec<u8> {
        let fields = match self {
            CatalogOp::Create { name, config, .. } => 8 + name.len() + config.len(),
            CatalogOp::Delete => 0,
            CatalogOp::Rename { name } => 4 + name.len(),
        };
        let mut out = Vec::with_capacity(prefix.len() + 2 + fields);
        out.extend_from_slice(prefix);
        match self {
            CatalogOp::Create { kind, name, config } => {
                out.push(OP_CREATE);
                out.push(*kind as u8);
                put_bytes(&mut out, name);
                put_bytes(&mut out, config);
            }
            CatalogOp::Delete => out.push(OP_DELETE),
            CatalogOp::Rename { name } => {
                out.push(OP_RENAME);
                put_bytes(&mut out, name);
            }
        }
        debug_assert_eq!(CatalogOp::decode(&out[prefix.len()..]).as_ref(), Some(self));
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<CatalogOp> {
        let (&tag, mut rest) = bytes.split_first()?;
        let op = match tag {
            OP_CREATE => {
                let (&kind, after) = rest.split_first()?;
                rest = after;
                CatalogOp::Create {
                    kind: EntityKind::from_u8(kind)?,
                    name: take_bytes(&mut rest)?,
                    config: take_bytes(&mut rest)?,
                }
            }
            OP_DELETE => CatalogOp::Delete,
            OP_RENAME => CatalogOp::Rename {
                name: take_bytes(&mut rest)?,
            },
            _ => return None,
        };
        rest.is_empty().then_some(op)
    }
}

/// Create an entity of `kind` called `name` with `config`: a fresh id, recorded through the
/// write-ahead log, then applied. Returns the id and the commit.
pub fn create(
    store: &Store,
    kind: EntityKind,
    name: &Bytes,
    config: Bytes,
) -> storage::Result<(u64, Commit)> {
    let id = store.catalog().reserve_id();
    let op = CatalogOp::Create {
        kind,
        name: name.clone(),
        config,
    };
    let commit = store.commit_op(id, domain::CATALOG, &op.encode())?;
    store.catalog().apply(id, commit.lsn(), op);
    Ok((id, commit))
}

/// [`create`] without a commit of its own: the operation is deferred to the write-ahead log's
/// next commit ([`Wal::defer_op`](crate::storage::Wal::defer_op)), which writes it ahead of
/// everything committed after this call, so no append to the new entity can be durable
/// without its creation. For an entity created because something is about to be written to it
/// (XADD to a new key): that write's commit makes the creation durable, and one commit instead
/// of two is the whole cost of a new stream under `always`.
///
/// `id` was taken earlier with [`Catalog::reserve_id`], so the caller can build the entity's
/// objects before it takes its own lock (an id reserved and not used is a gap; ids are never
/// reused anyway). The entry is applied with LSN 0 (its operation has no LSN yet): the entry's
/// LSN only decides which replayed operations it already reflects, and every operation on the
/// entity comes after its creation.
pub fn create_deferred(store: &Store, id: u64, kind: EntityKind, name: &Bytes, config: Bytes) {
    let op = CatalogOp::Create {
        kind,
        name: name.clone(),
        config,
    };
    let encoded = Bytes::from(op.encode_after(&[domain::CATALOG]));
    let mut catalog = store.catalog();
    // Under the catalog lock, so deferred creations reach the log in the order applied.
    store.wal().defer_op(id, encoded);
    catalog.apply(id, 0, op);
}

/// What applying an operation did, for the owner of the entity objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    Created,
    Deleted(CatalogEntry),
    Renamed {
        from: Bytes,
    },
    /// Already reflected (replay), or about an entity that no longer exists.
    Skipped,
}

/// The names of one kind of entity: sorted for listings (KEYS, SCAN) and hashed for lookups
/// (every command names a key; a sorted map costs a string comparison per level). The hashed
/// index keeps short names inline ([`Key`]), so a lookup does not follow a pointer to compare.
///
/// New names wait in `unsorted` until a listing or a removal needs the sorted map: creating a
/// stream costs a hash insert, and sorting happens in bulk (a listing reads every name anyway).
#[derive(Default)]
struct Names {
    sorted: BTreeMap<Bytes, u64>,
    /// Names added since the sorted map was last brought up to date, in no order.
    unsorted: Vec<(Bytes, u64)>,
    index: HashMap<Key, u64>,
}

impl Names {
    fn from_sorted(list: Vec<(Bytes, u64)>) -> Names {
        Names {
            index: list
                .iter()
                .map(|(name, id)| (Key::new(name), *id))
                .collect(),
            sorted: list.into_iter().collect(),
            unsorted: Vec::new(),
        }
    }

    fn get(&self, name: &[u8]) -> Option<&u64> {
        self.index.get(name)
    }

    fn insert(&mut self, name: Bytes, id: u64) {
        self.index.insert(Key::new(&name), id);
        self.unsorted.push((name, id));
    }

    fn remove(&mut self, name: &[u8]) {
        self.settle();
        self.sorted.remove(name);
        self.index.remove(name);
    }

    /// Move the unsorted names into the sorted map: one by one when they are few beside it,
    /// else as one sorted merge.
    fn settle(&mut self) {
        if self.unsorted.is_empty() {
            return;
        }
        let added = std::mem::take(&mut self.unsorted);
        if added.len() * 8 < self.sorted.len() {
            self.sorted.extend(added);
        } else {
            // Built from a sort, then merged: linear in both, where inserts cost a log each.
            let mut added: BTreeMap<Bytes, u64> = added.into_iter().collect();
            self.sorted.append(&mut added);
        }
    }

    /// Every name with its id, sorted by name.
    fn sorted(&mut self) -> &BTreeMap<Bytes, u64> {
        self.settle();
        &self.sorted
    }

    fn len(&self) -> usize {
        self.index.len()
    }
}

/// The in-memory catalog; see the module documentation.
#[derive(Default)]
pub struct Catalog {
    next_id: u64,
    /// By id (ids are the broker's own, so a fast hash is safe; names keep SipHash).
    entries: FxHashMap<u64, CatalogEntry>,
    names: [Names; 3],
    /// Entries changed (or deleted) since the last checkpoint.
    dirty: FxHashSet<u64>,
}

/// The metadata store key of entity `id`'s entry.
pub fn entry_key(id: u64) -> Bytes {
    let mut key = Vec::with_capacity(9);
    key.push(KEY_ENTRY);
    key.extend_from_slice(&id.to_be_bytes());
    Bytes::from(key)
}

impl Catalog {
    /// The catalog as the metadata store holds it. A damaged entry is an error: starting
    /// without it would silently drop an entity.
    pub fn from_meta(items: &HashMap<Bytes, Bytes>) -> Result<Catalog, String> {
        let mut catalog = Catalog {
            next_id: 1,
            ..Catalog::default()
        };
        if let Some(value) = items.get(KEY_NEXT_ID) {
            if value.len() != 8 {
                return Err("damaged catalog counter".into());
            }
            catalog.next_id = LE::read_u64(value).max(1);
        }
        let mut names: [Vec<(Bytes, u64)>; 3] = Default::default();
        catalog.entries.reserve(items.len());
        for (key, value) in items {
            if key.first() != Some(&KEY_ENTRY) {
                continue;
            }
            let entry = (key.len() == 9)
                .then(|| u64::from_be_bytes(key[1..9].try_into().unwrap_or_default()))
                .and_then(|id| decode_entry(id, value))
                .ok_or_else(|| format!("damaged catalog entry {key:?}"))?;
            catalog.next_id = catalog.next_id.max(entry.id + 1);
            names[entry.kind.slot()].push((entry.name.clone(), entry.id));
            catalog.entries.insert(entry.id, entry);
        }
        // Built from sorted runs: much faster than a million inserts in hash order.
        for (slot, mut list) in names.into_iter().enumerate() {
            list.sort_unstable();
            catalog.names[slot] = Names::from_sorted(list);
        }
        Ok(catalog)
    }

    /// A fresh id, never used before.
    pub fn reserve_id(&mut self) -> u64 {
        let id = self.next_id.max(1);
        self.next_id = id + 1;
        id
    }

    pub fn lookup(&self, kind: EntityKind, name: &[u8]) -> Option<&CatalogEntry> {
        let id = self.names[kind.slot()].get(name)?;
        self.entries.get(id)
    }

    pub fn entry(&self, id: u64) -> Option<&CatalogEntry> {
        self.entries.get(&id)
    }

    /// Names of every entity of `kind` with their ids, sorted by name.
    pub fn names(&mut self, kind: EntityKind) -> impl Iterator<Item = (&Bytes, u64)> {
        self.names[kind.slot()]
            .sorted()
            .iter()
            .map(|(n, id)| (n, *id))
    }

    /// Entities of `kind`.
    pub fn len(&self, kind: EntityKind) -> usize {
        self.names[kind.slot()].len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Apply an operation on entity `id` recorded at `lsn`. An operation the entry already
    /// reflects (its LSN is not older) is skipped, so replay may start before a snapshot.
    pub fn apply(&mut self, id: u64, lsn: u64, op: CatalogOp) -> Applied {
        self.next_id = self.next_id.max(id + 1);
        if self.entries.get(&id).is_some_and(|e| e.lsn >= lsn) {
            return Applied::Skipped;
        }
        let applied = match op {
            CatalogOp::Create { kind, name, config } => {
                if self.entries.contains_key(&id) {
                    return Applied::Skipped;
                }
                self.names[kind.slot()].insert(name.clone(), id);
                self.entries.insert(
                    id,
                    CatalogEntry {
                        id,
                        kind,
                        name,
                        config,
                        lsn,
                    },
                );
                Applied::Created
            }
            CatalogOp::Delete => {
                let Some(entry) = self.entries.remove(&id) else {
                    return Applied::Skipped;
                };
                let names = &mut self.names[entry.kind.slot()];
                if names.get(&entry.name) == Some(&id) {
                    names.remove(&entry.name);
                }
                Applied::Deleted(entry)
            }
            CatalogOp::Rename { name } => {
                let Some(entry) = self.entries.get_mut(&id) else {
                    return Applied::Skipped;
                };
                let names = &mut self.names[entry.kind.slot()];
                let from = std::mem::replace(&mut entry.name, name.clone());
                entry.lsn = lsn;
                if names.get(&from) == Some(&id) {
                    names.remove(&from);
                }
                names.insert(name, id);
                Applied::Renamed { from }
            }
        };
        self.dirty.insert(id);
        applied
    }

    /// The metadata store changes a checkpoint writes: every entry changed since the last one
    /// (deleted ones are removed), and the id counter; and the ids of the entries deleted.
    pub fn take_changes(&mut self) -> (Vec<MetaItem>, Vec<u64>) {
        let mut deleted = Vec::new();
        let mut items: Vec<MetaItem> = self
            .dirty
            .drain()
            .map(|id| {
                let value = self.entries.get(&id).map(encode_entry);
                if value.is_none() {
                    deleted.push(id);
                }
                (entry_key(id), value)
            })
            .collect();
        items.push((
            Bytes::from_static(KEY_NEXT_ID),
            Some(Bytes::copy_from_slice(&self.next_id.to_le_bytes())),
        ));
        (items, deleted)
    }

    /// Count every entry as changed (a checkpoint that took the changes failed).
    pub fn mark_all_dirty(&mut self, deleted: &[u64]) {
        self.dirty.extend(self.entries.keys().copied());
        self.dirty.extend(deleted.iter().copied());
    }

    /// Whether entries changed since the last checkpoint.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }
}

// Format: { lsn u64 | kind u8 | name bytes | config bytes }
fn encode_entry(entry: &CatalogEntry) -> Bytes {
    let mut out = Vec::with_capacity(8 + 1 + 8 + entry.name.len() + entry.config.len());
    out.extend_from_slice(&entry.lsn.to_le_bytes());
    out.push(entry.kind as u8);
    put_bytes(&mut out, &entry.name);
    put_bytes(&mut out, &entry.config);
    let out = Bytes::from(out);
    debug_assert_eq!(decode_entry(entry.id, &out).as_ref(), Some(entry));
    out
}

/// Decode an entry; its name and configuration share `value`'s buffer.
fn decode_entry(id: u64, value: &Bytes) -> Option<CatalogEntry> {
    if value.len() < 9 {
        return None;
    }
    let lsn = LE::read_u64(value);
    let kind = EntityKind::from_u8(value[8])?;
    let mut rest = &value[9..];
    let name = value.slice_ref(take_slice(&mut rest)?);
    let config = value.slice_ref(take_slice(&mut rest)?);
    rest.is_empty().then_some(CatalogEntry {
        id,
        kind,
        name,
        config,
        lsn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str) -> CatalogOp {
        CatalogOp::Create {
            kind: EntityKind::Stream,
            name: Bytes::copy_from_slice(name.as_bytes()),
            config: Bytes::new(),
        }
    }

    #[test]
    fn operations_round_trip_and_damage_is_refused() {
        for op in [
            create("orders"),
            CatalogOp::Delete,
            CatalogOp::Rename {
                name: Bytes::from_static(b"\0weird/../name"),
            },
        ] {
            let bytes = op.encode();
            assert_eq!(CatalogOp::decode(&bytes), Some(op));
            for len in 0..bytes.len() {
                assert_eq!(CatalogOp::decode(&bytes[..len]), None);
            }
        }
        assert_eq!(CatalogOp::decode(&[9]), None);
    }

    #[test]
    fn snapshots_and_replay_converge() {
        // Live history: create a (1) and b (2), rename a to c, delete b, create d (3).
        let history = [
            (1, 10, create("a")),
            (2, 11, create("b")),
            (
                1,
                12,
                CatalogOp::Rename {
                    name: Bytes::from_static(b"c"),
                },
            ),
            (2, 13, CatalogOp::Delete),
            (3, 14, create("d")),
        ];
        let mut live = Catalog::default();
        for (id, lsn, op) in history.clone() {
            live.apply(id, lsn, op);
        }
        // A snapshot taken part-way (after lsn 12), replayed from lsn 11 (a checkpoint before
        // some of what the snapshot holds), ends where the live catalog did.
        let mut partial = Catalog::default();
        for (id, lsn, op) in history[..3].iter().cloned() {
            partial.apply(id, lsn, op);
        }
        let items: HashMap<Bytes, Bytes> = partial
            .take_changes()
            .0
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        let mut replayed = Catalog::from_meta(&items).unwrap();
        for (id, lsn, op) in history[1..].iter().cloned() {
            replayed.apply(id, lsn, op);
        }
        for catalog in [&mut live, &mut replayed] {
            let names: Vec<_> = catalog.names(EntityKind::Stream).collect();
            assert_eq!(
                names,
                vec![
                    (&Bytes::from_static(b"c"), 1),
                    (&Bytes::from_static(b"d"), 3)
                ]
            );
        }
        assert_eq!(replayed.reserve_id(), 4, "ids are never reused");
    }

    #[test]
    fn names_are_listed_sorted_whatever_the_order_of_creations_and_removals() {
        let mut catalog = Catalog::default();
        // Each operation gets the next id (for a creation) and the next LSN.
        let mut next = 1;
        let mut apply = |catalog: &mut Catalog, op: CatalogOp, id: Option<u64>| {
            next += 1;
            let id = id.unwrap_or(next);
            catalog.apply(id, next, op);
            id
        };
        let names = |catalog: &mut Catalog| -> Vec<String> {
            catalog
                .names(EntityKind::Stream)
                .map(|(n, _)| String::from_utf8(n.to_vec()).unwrap())
                .collect()
        };
        // Many created, one removed while still unsorted, then listed.
        let mut ids = Vec::new();
        for i in (0..50).rev() {
            ids.push(apply(&mut catalog, create(&format!("k{i:02}")), None));
        }
        apply(&mut catalog, CatalogOp::Delete, Some(ids[0])); // k49
        let listed = names(&mut catalog);
        let expected: Vec<String> = (0..49).map(|i| format!("k{i:02}")).collect();
        assert_eq!(listed, expected);
        // A few more beside many sorted ones (inserted one by one), a rename among them.
        apply(&mut catalog, create("a"), None);
        let z = apply(&mut catalog, create("z"), None);
        apply(
            &mut catalog,
            CatalogOp::Rename {
                name: Bytes::from_static(b"b"),
            },
            Some(z),
        );
        let listed = names(&mut catalog);
        assert_eq!(listed.first().map(String::as_str), Some("a"));
        assert_eq!(listed.get(1).map(String::as_str), Some("b"));
        assert_eq!(listed.len(), 51);
        assert_eq!(catalog.len(EntityKind::Stream), 51);
        assert!(catalog.lookup(EntityKind::Stream, b"z").is_none());
        assert_eq!(
            catalog.lookup(EntityKind::Stream, b"b").map(|e| e.id),
            Some(z)
        );
    }
}
