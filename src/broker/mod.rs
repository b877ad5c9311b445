//! The broker: the protocol-neutral message model and the embeddable API.
//!
//! # Layout
//!
//! - [`store`]: what every entity shares: the write-ahead log, descriptors, metadata store.
//! - [`catalog`]: durable names → numeric ids; entity directories are named by id.
//! - [`stream_id`], [`stream`], [`stream_groups`], [`stream_meta`], [`group`]: Redis-style
//!   streams with consumer groups.
//! - [`topic`]: Pub/Sub channels with replayable history.
//! - [`maintenance`]: checkpoints, memory and descriptor budgets, eviction of idle entities.
//! - [`amqp`]: the AMQP model (exchanges, queues, bindings).
//!
//! A data directory holds `LOCK` (held while a broker has it open), `wal/` (the write-ahead
//! log), `checkpoint`, `meta/` (the metadata store) and one directory per entity kind
//! (`streams/<id>/`, `topics/<id>/`), each entity a segmented log created when it is first
//! written. Every change is a commit in the write-ahead log: operations return a
//! [`Commit`] that the caller awaits ([`Broker::wait_async`]) before it replies, and one fsync
//! covers every commit made meanwhile, whatever entity it belongs to. Front ends (RESP, AMQP)
//! translate to calls here and keep only per-connection state.

pub mod amqp;
pub mod budget;
pub mod catalog;
pub mod group;
pub mod key;
pub mod maintenance;
pub mod store;
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
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use bytes::Bytes;

use crate::storage::io::{OsVfs, Vfs};
use crate::storage::wal::{WalEntry, WalTxn};
pub use crate::storage::{Commit, Durability};
use key::Key;
/// What storage operations of the broker's API fail with.
pub type StorageError = crate::storage::Error;

/// The wall clock in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    crate::storage::recovery::now_ms()
}
use crate::storage::{FileCache, LogConfig, LogShared, MetaStore, Wal};
use catalog::{Applied, Catalog, CatalogOp, EntityKind, NAME_BYTES_MAX};
use store::{domain, op_bytes, split_op, Store};
pub use stream::{
    Added, AutoAdded, AutoEntry, Entry, IdSpec, Stream, StreamError, StreamInfo, TrimStrategy,
};
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
    #[error("data directory {0} was written by an older Potok (format 1); this version reads format 2 (storage-format.md § Versions)")]
    OldFormat(PathBuf),
    #[error("damaged metadata: {0}")]
    Damaged(String),
    #[error(transparent)]
    Stream(#[from] StreamError),
}

impl From<crate::storage::Error> for BrokerError {
    fn from(e: crate::storage::Error) -> BrokerError {
        BrokerError::Stream(e.into())
    }
}

/// Settings of a broker.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// When a change counts as done: `always` (a reply waits for the write-ahead log's fsync),
    /// an interval, or `never`.
    pub durability: Durability,
    /// Template for every stream's log.
    pub stream_log: LogConfig,
    /// Template for every Pub/Sub topic's log: see [`BrokerConfig::default_topic_log`].
    pub topic_log: LogConfig,
    /// Open segment files kept at most (see [`FileCache`]); by default a quarter of the
    /// process's descriptor limit.
    pub open_files_max: usize,
    /// Checkpoint once the write-ahead log holds this many bytes (256 MiB: a checkpoint costs
    /// per entity it touches, so fewer are cheaper, and recovery replays ~150 MB/s).
    pub checkpoint_wal_bytes: u64,
    /// ... or this long after the last checkpoint, if anything changed (30 s).
    pub checkpoint_interval: Duration,
    /// Bytes the entity logs may hold in memory before a checkpoint writes them all out (256
    /// MiB); one log's tail is written once it reaches 1 MiB (at once, not on the next maintenance round).
    pub tail_bytes_max: u64,
    /// Evict entities unused this long (their memory and descriptors go; 60 s).
    pub idle_eviction: Duration,
    /// Fault injection (see [`LogConfig::sync_delay`]): every write-ahead log sync waits this
    /// long first. Zero in production; the server reads `POTOK_FAILPOINT_SYNC_DELAY_MS`.
    pub wal_sync_delay: Duration,
}

impl Default for BrokerConfig {
    /// `always`, default logs, budgets as documented on each field.
    fn default() -> BrokerConfig {
        BrokerConfig::with_durability(Durability::Always)
    }
}

impl BrokerConfig {
    /// Streams with this durability; topics with their own defaults.
    pub fn with_durability(durability: Durability) -> BrokerConfig {
        BrokerConfig {
            durability,
            stream_log: LogConfig {
                durability,
                ..LogConfig::default()
            },
            topic_log: BrokerConfig::default_topic_log(),
            open_files_max: crate::storage::file_cache::default_files_max(),
            checkpoint_wal_bytes: 256 * 1024 * 1024,
            checkpoint_interval: Duration::from_secs(30),
            tail_bytes_max: 256 * 1024 * 1024,
            idle_eviction: Duration::from_secs(60),
            wal_sync_delay: Duration::ZERO,
        }
    }

    /// Pub/Sub is fire-and-forget in Redis, so topic logs default to speed and bounded size:
    /// visible at once and never waited for, 16 MiB segments, and retention of 64 MiB or 24
    /// hours, whichever keeps less (whole segments go; a topic whose newest message is older
    /// than 24 hours is deleted).
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
    /// Open streams and topics (the rest are opened on first use).
    streams: HashMap<Key, Arc<Stream>>,
    topics: HashMap<Key, Arc<Topic>>,
    /// Readers blocked on names that do not exist yet.
    creation_waiters: HashMap<Bytes, Arc<Waiters>>,
    /// What the write-ahead log holds for entities not opened since the restart: (LSN, entry).
    replay: HashMap<u64, Vec<(u64, WalEntry)>>,
    /// Streams' metadata snapshots as the metadata store holds them, for opening them.
    stream_snapshots: HashMap<u64, Bytes>,
}

/// The message broker over one data directory.
pub struct Broker {
    dir: PathBuf,
    store: Arc<Store>,
    config: BrokerConfig,
    state: RwLock<State>,
    /// The AMQP model (exchanges, queues, bindings) under `<data>/amqp/`.
    vhost: Arc<amqp::VirtualHost>,
    maintenance: maintenance::Maintenance,
    /// Held for the broker's life: one process per data directory.
    _lock: Option<File>,
}

impl Broker {
    /// Open (or create) the data directory on the real file system, locking it, and start the
    /// background maintenance (checkpoints, budgets).
    pub fn open(dir: impl AsRef<Path>, config: BrokerConfig) -> Result<Arc<Broker>, BrokerError> {
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
        let broker = Arc::new(broker);
        maintenance::start(&broker);
        Ok(broker)
    }

    /// Open through any [`Vfs`] (tests use the fault-injecting one). Does not lock and starts
    /// no background thread: call [`Broker::checkpoint`] and friends directly.
    pub fn open_with(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        config: BrokerConfig,
    ) -> Result<Broker, BrokerError> {
        vfs.create_dir_all(dir)?;
        if vfs.exists(&dir.join("catalog")) && !vfs.exists(&dir.join("meta")) {
            return Err(BrokerError::OldFormat(dir.to_path_buf()));
        }
        let logs = Arc::new(LogShared::new(FileCache::new(
            Arc::clone(&vfs),
            config.open_files_max,
        )));
        let started = std::time::Instant::now();
        let (meta, items) = MetaStore::open(Arc::clone(&vfs), dir)?;
        let mut catalog = Catalog::from_meta(&items).map_err(BrokerError::Damaged)?;
        let mut stream_snapshots = HashMap::new();
        let mut amqp = amqp::VhostRecovery::default();
        for (key, value) in items {
            if key.len() == 9 && (key[0] == b's' || key[0] == b'q') {
                let id = u64::from_be_bytes(key[1..9].try_into().unwrap_or_default());
                let snapshots = if key[0] == b's' {
                    &mut stream_snapshots
                } else {
                    &mut amqp.queue_snapshots
                };
                snapshots.insert(id, value);
            } else if key.as_ref() == amqp::vhost::DEFINITIONS_KEY {
                amqp.definitions = Some(value);
            }
        }
        let wal_config = LogConfig {
            sync_delay: config.wal_sync_delay,
            ..crate::storage::wal::wal_log_config(config.durability)
        };
        let meta_loaded = started.elapsed();
        let wal = Wal::open_with(Arc::clone(&vfs), dir, wal_config)?;
        let mut replay: HashMap<u64, Vec<(u64, WalEntry)>> = HashMap::new();
        let mut deleted = Vec::new();
        for entry in wal.replay(wal.checkpoint_lsn()) {
            let (offset, entry) = entry?;
            // An entry's LSN is one past its record: the point at which it is durable.
            let lsn = offset + 1;
            let owner = match &entry {
                WalEntry::Append { log, .. } => *log,
                WalEntry::Op { owner, .. } => *owner,
            };
            if let WalEntry::Op { op, .. } = &entry {
                match split_op(op) {
                    Some((domain::CATALOG, body)) => {
                        let op = CatalogOp::decode(&body).ok_or_else(|| {
                            BrokerError::Damaged(format!("catalog operation at {offset}"))
                        })?;
                        if let Applied::Deleted(gone) = catalog.apply(owner, lsn, op) {
                            replay.remove(&gone.id);
                            stream_snapshots.remove(&gone.id);
                            amqp.queue_snapshots.remove(&gone.id);
                            deleted.push(gone);
                        }
                        continue;
                    }
                    Some((domain::AMQP, body)) => {
                        amqp.definition_ops.push((lsn, body));
                        continue;
                    }
                    _ => {}
                }
            }
            replay.entry(owner).or_default().push((lsn, entry));
        }
        // Deletions replayed are durable: their files may go now.
        for gone in deleted {
            let entity_dir = dir.join(gone.kind.dir_name()).join(gone.id.to_string());
            if vfs.exists(&entity_dir) {
                vfs.remove_dir_all(&entity_dir)?;
            }
        }
        replay.retain(|id, _| catalog.entry(*id).is_some());
        let queue_ids: Vec<u64> = replay
            .keys()
            .copied()
            .filter(|id| {
                catalog
                    .entry(*id)
                    .is_some_and(|e| e.kind == EntityKind::Queue)
            })
            .collect();
        for id in queue_ids {
            if let Some(entries) = replay.remove(&id) {
                amqp.replay.insert(id, entries);
            }
        }
        let wal_replayed = started.elapsed();
        let store = Arc::new(Store::new(Arc::clone(&vfs), dir, wal, logs, meta, catalog));
        let vhost = Arc::new(amqp::VirtualHost::open(
            Arc::clone(&store),
            config.stream_log.clone(),
            amqp,
        )?);
        vhost.recover_dead_letters()?;
        let (streams, queues) = {
            let catalog = store.catalog();
            (
                catalog.len(EntityKind::Stream),
                catalog.len(EntityKind::Queue),
            )
        };
        tracing::info!(
            streams,
            queues,
            metadata_ms = meta_loaded.as_millis() as u64,
            wal_replay_ms = (wal_replayed - meta_loaded).as_millis() as u64,
            queues_ms = (started.elapsed() - wal_replayed).as_millis() as u64,
            "broker opened"
        );
        Ok(Broker {
            dir: dir.to_path_buf(),
            store,
            vhost,
            maintenance: maintenance::Maintenance::new(&config),
            config,
            state: RwLock::new(State {
                streams: HashMap::new(),
                topics: HashMap::new(),
                creation_waiters: HashMap::new(),
                replay,
                stream_snapshots,
            }),
            _lock: None,
        })
    }

    /// Shared access: the per-command lookups (every XADD) take only this.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The durability policy of every commit.
    pub fn durability(&self) -> Durability {
        self.config.durability
    }

    /// The AMQP virtual host `/`.
    pub fn vhost(&self) -> &Arc<amqp::VirtualHost> {
        &self.vhost
    }

    /// Block until `commit` is durable (at once under policies that acknowledge before the
    /// fsync). An error means it may or may not be.
    pub fn wait(&self, commit: Commit) -> Result<(), BrokerError> {
        Ok(self.store.wal().wait(commit)?)
    }

    /// [`Broker::wait`] for async callers, holding no thread.
    pub async fn wait_async(&self, commit: Commit) -> Result<(), BrokerError> {
        Ok(self.store.wal().wait_async(commit).await?)
    }

    fn entity_dir(&self, kind: EntityKind, id: u64) -> PathBuf {
        let mut digits = itoa::Buffer::new();
        let id = digits.format(id);
        let kind = kind.dir_name();
        // One allocation: every new stream, topic and queue names its directory.
        let mut dir =
            PathBuf::with_capacity(self.dir.as_os_str().len() + kind.len() + id.len() + 2);
        dir.push(&self.dir);
        dir.push(kind);
        dir.push(id);
        dir
    }

    /// The stream called `name`, if it exists (opened on first use).
    pub fn stream(&self, name: &[u8]) -> Option<Arc<Stream>> {
        self.stream_bound(name).map(|(stream, _)| stream)
    }

    /// [`Broker::stream`] with the handle's [`Stream::binding`] as of the lookup: a caller may
    /// keep the handle for `name` as long as the binding stays the same.
    pub fn stream_bound(&self, name: &[u8]) -> Option<(Arc<Stream>, u64)> {
        {
            let state = self.read();
            if let Some(stream) = state.streams.get(name) {
                stream.mark_used();
                return Some((Arc::clone(stream), stream.binding()));
            }
            self.store.catalog().lookup(EntityKind::Stream, name)?;
        }
        let mut state = self.write();
        match self.open_stream(&mut state, name) {
            Ok(stream) => stream.map(|s| {
                let binding = s.binding();
                (s, binding)
            }),
            Err(e) => {
                tracing::error!(stream = %String::from_utf8_lossy(name), error = %e, "opening a stream failed");
                None
            }
        }
    }

    /// Open the existing stream `name` (with the write lock held).
    fn open_stream(
        &self,
        state: &mut State,
        name: &[u8],
    ) -> Result<Option<Arc<Stream>>, BrokerError> {
        if let Some(stream) = state.streams.get(name) {
            return Ok(Some(Arc::clone(stream)));
        }
        let Some((id, name)) = self.lookup(EntityKind::Stream, name) else {
            return Ok(None);
        };
        let replay = state.replay.remove(&id).unwrap_or_default();
        let stream = Stream::open(
            Arc::clone(&self.store),
            id,
            &self.entity_dir(EntityKind::Stream, id),
            self.config.stream_log.clone(),
            state.stream_snapshots.get(&id),
            replay,
        )?;
        let stream = Arc::new(stream);
        state.streams.insert(Key::new(&name), Arc::clone(&stream));
        Ok(Some(stream))
    }

    /// The stream called `name`, created if it does not exist. The creation has no commit of
    /// its own: the next commit (the append or group change that follows, whoever makes it)
    /// writes it first, so it is durable with that commit; a creation nothing follows is
    /// written by the next checkpoint or shutdown, and a crash before then forgets it.
    pub fn stream_or_create(&self, name: &[u8]) -> Result<Arc<Stream>, BrokerError> {
        self.stream_or_create_bound(name).map(|(stream, _)| stream)
    }

    /// Refuse an entry too large for a stream's batches (the error its XADD would get), before
    /// anything is created for it.
    pub fn check_entry_size(&self, fields: &[(Bytes, Bytes)]) -> Result<(), StreamError> {
        stream::check_entry_size(&self.config.stream_log, fields)
    }

    /// [`Broker::stream_or_create`] with the handle's binding (see [`Broker::stream_bound`]).
    pub fn stream_or_create_bound(&self, name: &[u8]) -> Result<(Arc<Stream>, u64), BrokerError> {
        if name.len() > NAME_BYTES_MAX {
            return Err(BrokerError::NameTooLong);
        }
        if let Some(stream) = self.read().streams.get(name) {
            stream.mark_used();
            return Ok((Arc::clone(stream), stream.binding()));
        }
        // A new name: the stream's objects are built before the write lock is taken (both
        // connection threads create streams, and the lock is what they would queue on). The
        // catalog entry is made under the lock, after checking again, as before; a stream
        // built for a name someone else created meanwhile is dropped (it has written nothing).
        let build = || -> Result<(u64, Arc<Stream>, Bytes), BrokerError> {
            let id = self.store.catalog().reserve_id();
            let stream = Stream::create(
                Arc::clone(&self.store),
                id,
                &self.entity_dir(EntityKind::Stream, id),
                self.config.stream_log.clone(),
            )?;
            Ok((id, Arc::new(stream), Bytes::copy_from_slice(name)))
        };
        let fresh = if self
            .store
            .catalog()
            .lookup(EntityKind::Stream, name)
            .is_none()
        {
            Some(build()?)
        } else {
            None
        };
        let mut guard = self.write();
        let state = &mut *guard;
        if let Some(stream) = self.open_stream(state, name)? {
            let binding = stream.binding();
            return Ok((stream, binding));
        }
        let (id, stream, name) = match fresh {
            Some(fresh) => fresh,
            // It was in the catalog a moment ago and is gone now (deleted meanwhile).
            None => build()?,
        };
        // The caller is about to write to it (XADD, XGROUP CREATE MKSTREAM): that commit
        // carries the creation, which needs no commit of its own.
        catalog::create_deferred(&self.store, id, EntityKind::Stream, &name, Bytes::new());
        state.streams.insert(Key::new(&name), Arc::clone(&stream));
        // Checked first: hashing the name costs more than the usual answer (nobody waits).
        if !state.creation_waiters.is_empty() {
            if let Some(waiters) = state.creation_waiters.remove(&name) {
                waiters.wake_all();
            }
        }
        let binding = stream.binding();
        Ok((stream, binding))
    }

    /// The id and stored name of the entity of `kind` called `name`.
    fn lookup(&self, kind: EntityKind, name: &[u8]) -> Option<(u64, Bytes)> {
        let catalog = self.store.catalog();
        let entry = catalog.lookup(kind, name)?;
        Some((entry.id, entry.name.clone()))
    }

    /// Record a new entity in the catalog (through the write-ahead log); returns its id.
    fn create_entity(&self, kind: EntityKind, name: &Bytes) -> Result<u64, BrokerError> {
        Ok(catalog::create(&self.store, kind, name, Bytes::new())?.0)
    }

    /// The Pub/Sub topic for `channel`, if anything was ever published to it (and kept).
    pub fn topic(&self, channel: &[u8]) -> Option<Arc<Topic>> {
        {
            let state = self.read();
            if let Some(topic) = state.topics.get(channel) {
                topic.mark_used();
                return Some(Arc::clone(topic));
            }
            self.store.catalog().lookup(EntityKind::Topic, channel)?;
        }
        match self.open_topic(&mut self.write(), channel) {
            Ok(topic) => topic,
            Err(e) => {
                tracing::error!(channel = %String::from_utf8_lossy(channel), error = %e, "opening a topic failed");
                None
            }
        }
    }

    fn open_topic(
        &self,
        state: &mut State,
        channel: &[u8],
    ) -> Result<Option<Arc<Topic>>, BrokerError> {
        if let Some(topic) = state.topics.get(channel) {
            return Ok(Some(Arc::clone(topic)));
        }
        let Some((id, name)) = self.lookup(EntityKind::Topic, channel) else {
            return Ok(None);
        };
        let replay = state.replay.remove(&id).unwrap_or_default();
        let topic = Arc::new(Topic::open(
            Arc::clone(&self.store),
            id,
            &self.entity_dir(EntityKind::Topic, id),
            self.config.topic_log.clone(),
            replay,
        )?);
        state.topics.insert(Key::new(&name), Arc::clone(&topic));
        Ok(Some(topic))
    }

    /// The topic for `channel`, created if needed.
    pub fn topic_or_create(&self, channel: &[u8]) -> Result<Arc<Topic>, BrokerError> {
        if channel.len() > NAME_BYTES_MAX {
            return Err(BrokerError::NameTooLong);
        }
        if let Some(topic) = self.read().topics.get(channel) {
            topic.mark_used();
            return Ok(Arc::clone(topic));
        }
        let mut guard = self.write();
        let state = &mut *guard;
        if let Some(topic) = self.open_topic(state, channel)? {
            return Ok(topic);
        }
        let name = Bytes::copy_from_slice(channel);
        let id = self.create_entity(EntityKind::Topic, &name)?;
        let topic = Arc::new(Topic::open(
            Arc::clone(&self.store),
            id,
            &self.entity_dir(EntityKind::Topic, id),
            self.config.topic_log.clone(),
            Vec::new(),
        )?);
        state.topics.insert(Key::new(&name), Arc::clone(&topic));
        Ok(topic)
    }

    /// Delete the topic for `channel` and its stored messages. Returns whether it existed.
    pub fn delete_topic(&self, channel: &[u8]) -> Result<(bool, Commit), BrokerError> {
        let mut state = self.write();
        self.delete_entity(&mut state, EntityKind::Topic, channel)
    }

    /// Channels with stored messages, sorted.
    pub fn topic_names(&self) -> Vec<Bytes> {
        self.store
            .catalog()
            .names(EntityKind::Topic)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Wake `notify` once when the stream `name` gets new visible entries, or is created.
    pub fn register_stream_waiter(&self, name: &[u8], notify: &Arc<Notify>) {
        if let Some(stream) = self.stream(name) {
            stream.register_waiter(notify);
            return;
        }
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

    /// Names of every stream with its kind, sorted (the Redis keyspace).
    pub fn names(&self) -> Vec<(Bytes, EntityKind)> {
        self.store
            .catalog()
            .names(EntityKind::Stream)
            .map(|(n, _)| (n.clone(), EntityKind::Stream))
            .collect()
    }

    pub fn kind_of(&self, name: &[u8]) -> Option<EntityKind> {
        self.store
            .catalog()
            .lookup(EntityKind::Stream, name)
            .map(|e| e.kind)
    }

    /// Streams in the keyspace.
    pub fn len(&self) -> usize {
        self.store.catalog().len(EntityKind::Stream)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Delete a stream. Returns whether it existed, and the commit to wait for. Its files go
    /// once the deletion is durable.
    pub fn delete(&self, name: &[u8]) -> Result<(bool, Commit), BrokerError> {
        let mut state = self.write();
        self.delete_entity(&mut state, EntityKind::Stream, name)
    }

    fn delete_entity(
        &self,
        state: &mut State,
        kind: EntityKind,
        name: &[u8],
    ) -> Result<(bool, Commit), BrokerError> {
        let Some((id, _)) = self.lookup(kind, name) else {
            return Ok((false, Commit::NONE));
        };
        let mut txn = WalTxn::new();
        txn.op(id, op_bytes(domain::CATALOG, &CatalogOp::Delete.encode()));
        let doomed = match kind {
            EntityKind::Stream => state.streams.get(name).cloned().into_iter().collect(),
            _ => Vec::new(),
        };
        let commit = self.commit_deletion(txn, doomed)?;
        self.store
            .catalog()
            .apply(id, commit.lsn(), CatalogOp::Delete);
        self.forget_entity(state, kind, name, id, commit);
        Ok((true, commit))
    }

    /// Commit `txn`, which deletes the open streams `doomed` (among other things), with no
    /// append to them in flight: their state locks are held (taken in id order, as appends
    /// take them) from before the commit until their logs are marked deleted. An append that
    /// got a stream's lock first is in the log before the deletion; one that comes after sees
    /// the stream deleted and goes where its key points now. So an XADD acknowledged after a
    /// DEL's reply is never in the deleted stream.
    fn commit_deletion(
        &self,
        txn: WalTxn,
        mut doomed: Vec<Arc<Stream>>,
    ) -> Result<Commit, BrokerError> {
        doomed.sort_by_key(|stream| stream.id());
        doomed.dedup_by_key(|stream| stream.id());
        let guards: Vec<_> = doomed.iter().map(|stream| stream.lock()).collect();
        let commit = self.store.commit(txn)?.commit;
        for stream in &doomed {
            stream.log().mark_deleted();
        }
        drop(guards);
        Ok(commit)
    }

    /// Drop a deleted entity from memory and schedule its files' removal.
    fn forget_entity(
        &self,
        state: &mut State,
        kind: EntityKind,
        name: &[u8],
        id: u64,
        commit: Commit,
    ) {
        let log = match kind {
            EntityKind::Stream => state.streams.remove(name).map(|stream| {
                stream.detach();
                // Blocked readers re-check and, as in Redis, go on waiting for a new stream.
                stream.wake_waiters();
                stream.log().clone()
            }),
            EntityKind::Topic => state.topics.remove(name).map(|t| t.log().clone()),
            EntityKind::Queue => None,
        };
        state.replay.remove(&id);
        state.stream_snapshots.remove(&id);
        self.store.doom(commit, self.entity_dir(kind, id), log);
    }

    /// Rename a stream, replacing any stream already called `to` (one commit for both).
    /// Returns false if `from` does not exist.
    pub fn rename(&self, from: &[u8], to: &[u8]) -> Result<(bool, Commit), BrokerError> {
        if to.len() > NAME_BYTES_MAX {
            return Err(BrokerError::NameTooLong);
        }
        let mut state = self.write();
        let Some((from_id, _)) = self.lookup(EntityKind::Stream, from) else {
            return Ok((false, Commit::NONE));
        };
        if from == to {
            return Ok((true, Commit::NONE));
        }
        // Both open (or both not), so the rename can move the handle.
        self.open_stream(&mut state, from)?;
        let to = Bytes::copy_from_slice(to);
        let replaced = self.lookup(EntityKind::Stream, &to).map(|(id, _)| id);
        let rename = CatalogOp::Rename { name: to.clone() };
        let mut txn = WalTxn::new();
        if let Some(replaced) = replaced {
            txn.op(
                replaced,
                op_bytes(domain::CATALOG, &CatalogOp::Delete.encode()),
            );
        }
        txn.op(from_id, op_bytes(domain::CATALOG, &rename.encode()));
        let doomed = match replaced {
            Some(_) => state.streams.get(&to[..]).cloned().into_iter().collect(),
            None => Vec::new(),
        };
        let commit = self.commit_deletion(txn, doomed)?;
        if let Some(replaced) = replaced {
            self.store
                .catalog()
                .apply(replaced, commit.lsn(), CatalogOp::Delete);
            self.forget_entity(&mut state, EntityKind::Stream, &to, replaced, commit);
        }
        self.store.catalog().apply(from_id, commit.lsn(), rename);
        if let Some(stream) = state.streams.remove(from) {
            stream.detach();
            state.streams.insert(Key::new(&to), stream);
        }
        if let Some(waiters) = state.creation_waiters.remove(&to) {
            waiters.wake_all();
        }
        Ok((true, commit))
    }

    /// Delete every stream (FLUSHALL): one commit per thousand.
    pub fn delete_all(&self) -> Result<Commit, BrokerError> {
        let mut commit = Commit::NONE;
        loop {
            let ids: Vec<(Bytes, u64)> = self
                .store
                .catalog()
                .names(EntityKind::Stream)
                .take(1000)
                .map(|(n, id)| (n.clone(), id))
                .collect();
            if ids.is_empty() {
                return Ok(commit);
            }
            let mut state = self.write();
            let mut txn = WalTxn::new();
            for (_, id) in &ids {
                txn.op(*id, op_bytes(domain::CATALOG, &CatalogOp::Delete.encode()));
            }
            let doomed = ids
                .iter()
                .filter_map(|(name, _)| state.streams.get(&name[..]).cloned())
                .collect();
            let done = self.commit_deletion(txn, doomed)?;
            for (name, id) in ids {
                self.store
                    .catalog()
                    .apply(id, done.lsn(), CatalogOp::Delete);
                self.forget_entity(&mut state, EntityKind::Stream, &name, id, done);
            }
            commit = commit.max(done);
        }
    }

    /// Make everything durable and stop the background work; the write-ahead log holds every
    /// change, so nothing per entity needs writing and shutdown does not depend on how many
    /// entities exist. The next open replays what the last checkpoint did not cover.
    pub fn close(&self) -> Result<(), BrokerError> {
        self.maintenance.stop();
        self.vhost.close();
        self.store.wal().sync()?;
        let state = self.read();
        for stream in state.streams.values() {
            stream.close();
        }
        for topic in state.topics.values() {
            topic.close();
        }
        Ok(())
    }
}

/// Lock a std mutex, carrying on after a panic elsewhere (the data is kept consistent by the
/// code that mutates it).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
