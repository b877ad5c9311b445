//! The broker: the protocol-neutral message model and the embeddable API.
//!
//! # Layout
//!
//! - [`catalog`]: durable names → numeric ids; entity directories are named by id.
//! - [`stream_id`], [`stream`]: Redis-style streams on a log.
//!
//! A data directory holds `catalog`, `LOCK` (held while a broker has it open) and one directory
//! per entity kind (`streams/<id>/`), each a log. Front ends (RESP, AMQP) translate to calls here
//! and keep only per-connection state.

pub mod amqp;
pub mod budget;
pub mod catalog;
pub mod group;
pub mod journal;
pub mod stream;
pub mod stream_groups;
pub mod stream_id;
pub mod stream_meta;
pub mod topic;
pub mod waiters;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;

use crate::storage::io::{OsVfs, Vfs};
use crate::storage::{Durability, LogConfig};
use catalog::{Catalog, EntityKind, NAME_BYTES_MAX};
pub use stream::{Added, Entry, IdSpec, Stream, StreamError, StreamInfo, TrimStrategy};
pub use stream_groups::{
    AutoClaimed, ClaimOptions, ConsumerInfo, GroupInfo, GroupStart, PendingFilter, PendingRow,
    PendingSummary,
};
pub use stream_id::StreamId;
use tokio::sync::Notify;
use topic::Topic;
use waiters::Waiters;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("data directory {0} is in use by another process")]
    Locked(PathBuf),
    #[error("name longer than {NAME_BYTES_MAX} bytes")]
    NameTooLong,
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// Settings for the logs the broker creates.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Template for every stream's log.
    pub stream_log: LogConfig,
    /// Template for every Pub/Sub topic's log: see [`BrokerConfig::default_topic_log`].
    pub topic_log: LogConfig,
}

impl BrokerConfig {
    /// Streams with this durability; topics with their own defaults.
    pub fn with_durability(durability: Durability) -> BrokerConfig {
        BrokerConfig {
            stream_log: LogConfig {
                durability,
                ..LogConfig::default()
            },
            topic_log: BrokerConfig::default_topic_log(),
        }
    }

    /// Pub/Sub is fire-and-forget in Redis, so topic logs default to speed and bounded size:
    /// no fsync (the OS writes back), 16 MiB segments, and retention of 64 MiB or 24 hours,
    /// whichever keeps less (whole segments go; the newest segment always stays).
    pub fn default_topic_log() -> LogConfig {
        LogConfig {
            durability: Durability::Never,
            segment_bytes_max: 16 * 1024 * 1024,
            segment_age_max: Some(std::time::Duration::from_secs(3600)),
            retention: crate::storage::Retention {
                bytes_max: Some(64 * 1024 * 1024),
                age_max: Some(std::time::Duration::from_secs(24 * 3600)),
                records_max: None,
            },
            ..LogConfig::default()
        }
    }
}

struct State {
    catalog: Catalog,
    streams: HashMap<Bytes, Arc<Stream>>,
    topic_catalog: Catalog,
    topics: HashMap<Bytes, Arc<Topic>>,
    /// Readers blocked on names that do not exist yet.
    creation_waiters: HashMap<Bytes, Arc<Waiters>>,
}

/// The message broker over one data directory.
pub struct Broker {
    dir: PathBuf,
    vfs: Arc<dyn Vfs>,
    config: BrokerConfig,
    state: RwLock<State>,
    /// Moves on whenever `state` may change, so a caller may keep a stream handle while it
    /// stays the same (see [`Broker::generation`]).
    generation: AtomicU64,
    /// The AMQP model (exchanges, queues, bindings) under `<data>/amqp/`.
    vhost: amqp::VirtualHost,
    /// Held for the broker's life: one process per data directory.
    _lock: Option<File>,
}

impl Broker {
    /// Open (or create) the data directory on the real file system, locking it.
    pub fn open(dir: impl AsRef<Path>, config: BrokerConfig) -> Result<Broker, BrokerError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))?;
        if lock.try_lock().is_err() {
            return Err(BrokerError::Locked(dir.to_path_buf()));
        }
        let mut broker = Broker::open_with(Arc::new(OsVfs), dir, config)?;
        broker._lock = Some(lock);
        Ok(broker)
    }

    /// Open through any [`Vfs`] (tests use the fault-injecting one). Does not lock.
    pub fn open_with(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        config: BrokerConfig,
    ) -> Result<Broker, BrokerError> {
        vfs.create_dir_all(dir)?;
        let catalog = Catalog::load(&*vfs, dir)?;
        let streams = open_entities(&*vfs, dir, EntityKind::Stream, &catalog, |entity_dir| {
            Ok(Stream::open(
                Arc::clone(&vfs),
                entity_dir,
                config.stream_log.clone(),
            )?)
        })?;
        let topic_catalog = Catalog::load_file(&*vfs, &dir.join(catalog::TOPIC_CATALOG_FILE))?;
        let topics = open_entities(
            &*vfs,
            dir,
            EntityKind::Topic,
            &topic_catalog,
            |entity_dir| {
                Topic::open(Arc::clone(&vfs), entity_dir, config.topic_log.clone())
                    .map_err(|e| BrokerError::Stream(e.into()))
            },
        )?;
        let vhost = amqp::VirtualHost::open(
            Arc::clone(&vfs),
            &dir.join("amqp"),
            config.stream_log.clone(),
        )?;
        Ok(Broker {
            dir: dir.to_path_buf(),
            vhost,
            vfs,
            config,
            state: RwLock::new(State {
                catalog,
                streams,
                topic_catalog,
                topics,
                creation_waiters: HashMap::new(),
            }),
            generation: AtomicU64::new(0),
            _lock: None,
        })
    }

    /// Shared access: the per-command lookups (every XADD) take only this.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        let guard = self.state.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::Release);
        guard
    }

    /// A number that changes whenever a stream or topic may have been created, deleted or
    /// renamed. A handle looked up after reading generation `g` may be reused as long as the
    /// generation is still `g` (a per-connection cache for pipelines that repeat one key).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The AMQP virtual host `/`.
    pub fn vhost(&self) -> &amqp::VirtualHost {
        &self.vhost
    }

    pub fn stream(&self, name: &[u8]) -> Option<Arc<Stream>> {
        self.read().streams.get(name).cloned()
    }

    /// The stream called `name`, created (durably, in the catalog) if it does not exist.
    pub fn stream_or_create(&self, name: &[u8]) -> Result<Arc<Stream>, BrokerError> {
        if name.len() > NAME_BYTES_MAX {
            return Err(BrokerError::NameTooLong);
        }
        let mut guard = self.write();
        let state = &mut *guard;
        if let Some(stream) = state.streams.get(name) {
            return Ok(Arc::clone(stream));
        }
        let name = Bytes::copy_from_slice(name);
        let open = |dir: &Path| {
            Ok(Stream::open(
                Arc::clone(&self.vfs),
                dir,
                self.config.stream_log.clone(),
            )?)
        };
        let stream =
            Arc::new(self.create_entity(&mut state.catalog, EntityKind::Stream, &name, open)?);
        state.streams.insert(name.clone(), Arc::clone(&stream));
        if let Some(waiters) = state.creation_waiters.remove(&name) {
            waiters.wake_all();
        }
        Ok(stream)
    }

    /// Create an entity durably: its directory and log first, then the catalog entry naming
    /// it, so a crash in between leaves only an orphan directory (removed at the next open).
    /// On failure the catalog entry is withdrawn.
    fn create_entity<T>(
        &self,
        catalog: &mut Catalog,
        kind: EntityKind,
        name: &Bytes,
        open: impl FnOnce(&Path) -> Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        let entry = catalog.insert(name.clone(), kind);
        let created = open(&self.entity_dir(kind, entry.id)).and_then(|entity| {
            self.vfs.sync_dir(&self.dir.join(kind.dir_name()))?;
            catalog.save(&*self.vfs)?;
            Ok(entity)
        });
        if created.is_err() {
            catalog.remove(name);
        }
        created
    }

    /// The Pub/Sub topic for `channel`, if anything was ever published to it (and kept).
    pub fn topic(&self, channel: &[u8]) -> Option<Arc<Topic>> {
        self.read().topics.get(channel).cloned()
    }

    /// The topic for `channel`, created (durably, in the topic catalog) if needed.
    pub fn topic_or_create(&self, channel: &[u8]) -> Result<Arc<Topic>, BrokerError> {
        if channel.len() > NAME_BYTES_MAX {
            return Err(BrokerError::NameTooLong);
        }
        let mut guard = self.write();
        let state = &mut *guard;
        if let Some(topic) = state.topics.get(channel) {
            return Ok(Arc::clone(topic));
        }
        let name = Bytes::copy_from_slice(channel);
        let open = |dir: &Path| {
            Topic::open(Arc::clone(&self.vfs), dir, self.config.topic_log.clone())
                .map_err(|e| BrokerError::Stream(e.into()))
        };
        let topic = Arc::new(self.create_entity(
            &mut state.topic_catalog,
            EntityKind::Topic,
            &name,
            open,
        )?);
        state.topics.insert(name, Arc::clone(&topic));
        Ok(topic)
    }

    /// Wake `notify` once when the stream `name` gets new visible entries, or is created.
    pub fn register_stream_waiter(&self, name: &[u8], notify: &Arc<Notify>) {
        let mut state = self.write();
        match state.streams.get(name) {
            Some(stream) => stream.register_waiter(notify),
            None => {
                let key = Bytes::copy_from_slice(name);
                state
                    .creation_waiters
                    .entry(key)
                    .or_default()
                    .register(notify);
            }
        }
    }

    /// Remove an entity's directory durably (its catalog entry is already gone).
    fn remove_entity_files(&self, entry: &catalog::CatalogEntry) -> Result<(), BrokerError> {
        self.vfs
            .remove_dir_all(&self.entity_dir(entry.kind, entry.id))?;
        self.vfs.sync_dir(&self.dir.join(entry.kind.dir_name()))?;
        Ok(())
    }

    fn entity_dir(&self, kind: EntityKind, id: u64) -> PathBuf {
        self.dir.join(kind.dir_name()).join(id.to_string())
    }

    /// Names of every entity with its kind, sorted.
    pub fn names(&self) -> Vec<(Bytes, EntityKind)> {
        self.read()
            .catalog
            .entries()
            .map(|(n, e)| (n.clone(), e.kind))
            .collect()
    }

    pub fn kind_of(&self, name: &[u8]) -> Option<EntityKind> {
        self.read().catalog.get(name).map(|e| e.kind)
    }

    pub fn len(&self) -> usize {
        self.read().catalog.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Delete an entity and free its disk space. Returns whether it existed.
    pub fn delete(&self, name: &[u8]) -> Result<bool, BrokerError> {
        let mut state = self.write();
        let Some(entry) = state.catalog.remove(name) else {
            return Ok(false);
        };
        // Durably forget it first: a crash after this leaves only an orphan directory.
        state.catalog.save(&*self.vfs)?;
        if let Some(stream) = state.streams.remove(name) {
            // Readers holding the stream keep working on unlinked files; no marker is needed.
            let _ = stream.close();
            // Blocked readers re-check and, as in Redis, go on waiting for a new stream.
            stream.wake_waiters();
        }
        self.remove_entity_files(&entry)?;
        Ok(true)
    }

    /// Rename an entity, replacing any entity already called `to`. Returns false if `from`
    /// does not exist.
    pub fn rename(&self, from: &[u8], to: &[u8]) -> Result<bool, BrokerError> {
        if to.len() > NAME_BYTES_MAX {
            return Err(BrokerError::NameTooLong);
        }
        let mut state = self.write();
        if state.catalog.get(from).is_none() {
            return Ok(false);
        }
        if from == to {
            return Ok(true);
        }
        let to = Bytes::copy_from_slice(to);
        let replaced = state.catalog.rename(from, to.clone());
        state.catalog.save(&*self.vfs)?;
        if let Some(old) = state.streams.remove(&to) {
            let _ = old.close();
            old.wake_waiters();
        }
        if let Some(stream) = state.streams.remove(from) {
            state.streams.insert(to.clone(), stream);
        }
        if let Some(waiters) = state.creation_waiters.remove(&to) {
            waiters.wake_all();
        }
        if let Some(replaced) = replaced {
            self.remove_entity_files(&replaced)?;
        }
        Ok(true)
    }

    /// Delete every entity.
    pub fn delete_all(&self) -> Result<(), BrokerError> {
        for (name, _) in self.names() {
            self.delete(&name)?;
        }
        Ok(())
    }

    /// Sync and close every log cleanly.
    pub fn close(&self) -> Result<(), BrokerError> {
        self.vhost.close();
        let state = self.read();
        for stream in state.streams.values() {
            stream.close()?;
        }
        for topic in state.topics.values() {
            topic.close().map_err(|e| BrokerError::Stream(e.into()))?;
        }
        Ok(())
    }
}

/// Open every entity of `kind` the catalog names, first removing directories it does not name
/// (left by a crash between creating an entity and saving the catalog, or during a delete).
fn open_entities<T>(
    vfs: &dyn Vfs,
    dir: &Path,
    kind: EntityKind,
    catalog: &Catalog,
    open: impl Fn(&Path) -> Result<T, BrokerError>,
) -> Result<HashMap<Bytes, Arc<T>>, BrokerError> {
    let kind_dir = dir.join(kind.dir_name());
    vfs.create_dir_all(&kind_dir)?;
    let live: Vec<String> = catalog.entries().map(|(_, e)| e.id.to_string()).collect();
    for orphan in vfs
        .list_subdirs(&kind_dir)?
        .into_iter()
        .filter(|d| !live.contains(d))
    {
        tracing::info!(dir = %kind_dir.join(&orphan).display(), "removing orphaned entity directory");
        vfs.remove_dir_all(&kind_dir.join(orphan))?;
    }
    vfs.sync_dir(&kind_dir)?;
    let mut entities = HashMap::new();
    for (name, entry) in catalog.entries() {
        entities.insert(
            name.clone(),
            Arc::new(open(&kind_dir.join(entry.id.to_string()))?),
        );
    }
    Ok(entities)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::io::{CrashMode, FaultVfs};

    fn open(vfs: &FaultVfs) -> Broker {
        Broker::open_with(
            Arc::new(vfs.clone()),
            Path::new("/data"),
            BrokerConfig::with_durability(Durability::Always),
        )
        .unwrap()
    }

    #[test]
    fn streams_persist_and_deletes_free_their_directories() {
        let vfs = FaultVfs::new(1);
        let broker = open(&vfs);
        let s = broker.stream_or_create(b"../evil").unwrap();
        let added = s
            .add(
                IdSpec::Explicit(StreamId::new(1, 1)),
                vec![(Bytes::from("f"), Bytes::from("v"))],
            )
            .unwrap();
        s.wait_durable(added.next_offset).unwrap();
        broker.stream_or_create(b"other").unwrap();
        assert!(
            vfs.exists(Path::new("/data/streams/1")),
            "directories are named by id"
        );
        vfs.crash(CrashMode::DropUnsynced);
        drop((s, broker));
        let broker = open(&vfs);
        assert_eq!(broker.names().len(), 2);
        let s = broker.stream(b"../evil").unwrap();
        assert_eq!(s.last_id(), StreamId::new(1, 1));
        assert!(broker.delete(b"../evil").unwrap());
        assert!(!broker.delete(b"../evil").unwrap());
        assert!(!vfs.exists(Path::new("/data/streams/1")));
        drop((s, broker));
        let broker = open(&vfs);
        assert_eq!(
            broker.names(),
            vec![(Bytes::from("other"), EntityKind::Stream)]
        );
    }

    #[test]
    fn orphaned_directories_are_removed_on_open() {
        let vfs = FaultVfs::new(2);
        vfs.create_dir_all(Path::new("/data/streams/77")).unwrap();
        let broker = open(&vfs);
        assert!(!vfs.exists(Path::new("/data/streams/77")));
        assert!(broker.is_empty());
    }
}
