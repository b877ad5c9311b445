//! The broker's background work, on one thread (`potok-maintenance`), every 100 ms:
//!
//! - **Deleted entities' files** go once their deletion is durable.
//! - **Tail memory**: a log whose tail passed 1 MiB is written to its segment files at once.
//! - **Checkpoints**, once the write-ahead log holds [`BrokerConfig::checkpoint_wal_bytes`], or
//!   all tails together hold [`BrokerConfig::tail_bytes_max`], or
//!   [`BrokerConfig::checkpoint_interval`] passed with changes ([`Broker::checkpoint`]): a
//!   checkpoint writes every tail out, so it is also what bounds their memory.
//! - **Eviction**: streams and topics unused for [`BrokerConfig::idle_eviction`], with nothing
//!   in memory that a checkpoint still needs, are closed (their memory and descriptor go; the
//!   next use opens them again).
//! - **Expired topics**: a topic whose newest message is older than its retention age is
//!   deleted (a few hundred topics examined per round).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::catalog::EntityKind;
use super::key::Key;
use super::{lock, Broker, BrokerConfig, BrokerError};
use crate::storage::meta_store::MetaItem;

/// How often the maintenance thread wakes.
const TICK: Duration = Duration::from_millis(100);
/// Evicting at least this many entities at once hands freed memory back to the OS.
const EVICTED_TRIM_MIN: usize = 1024;
/// Entities closed (eviction) or snapshots kept (checkpoints) per hold of the broker's write
/// lock: every lookup waits while it is held.
pub(super) const EVICTED_PER_LOCK: usize = 4096;

/// Give memory freed by the allocator back to the OS (glibc keeps it otherwise, and a server
/// that once held a million open streams would keep their footprint for good).
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Topics examined for expiry per round.
const TOPICS_PER_ROUND: usize = 256;

struct Clock {
    last_checkpoint: Instant,
    /// The write-ahead log's size right after the last checkpoint (what it could not drop).
    wal_bytes_after_checkpoint: u64,
    last_eviction: Instant,
    /// Where the expiry sweep over topics goes on from.
    topic_cursor: Option<Bytes>,
}

/// What wakes the background thread: a stop request, or a log whose tail wants writing out.
#[derive(Default)]
struct Signal {
    state: Mutex<Wanted>,
    wake: Condvar,
}

#[derive(Default)]
struct Wanted {
    stop: bool,
    write_out: bool,
}

/// The background thread's handle and its schedule.
pub struct Maintenance {
    signal: Arc<Signal>,
    thread: Mutex<Option<JoinHandle<()>>>,
    clock: Mutex<Clock>,
    /// One checkpoint at a time.
    checkpointing: Mutex<()>,
    /// A checkpoint failed: the next one rewrites every snapshot.
    failed: AtomicBool,
}

impl Maintenance {
    pub(super) fn new(_config: &BrokerConfig) -> Maintenance {
        let now = Instant::now();
        Maintenance {
            signal: Arc::default(),
            thread: Mutex::new(None),
            clock: Mutex::new(Clock {
                last_checkpoint: now,
                wal_bytes_after_checkpoint: 0,
                last_eviction: now,
                topic_cursor: None,
            }),
            checkpointing: Mutex::new(()),
            failed: AtomicBool::new(false),
        }
    }

    /// Stop the thread and wait for it.
    pub(super) fn stop(&self) {
        lock(&self.signal.state).stop = true;
        self.signal.wake.notify_all();
        if let Some(thread) = lock(&self.thread).take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// Start the maintenance thread of `broker`. Besides its rounds every [`TICK`], it writes a
/// log's tail out as soon as the tail passes 1 MiB, so a fast producer's tail stays near that
/// size instead of growing for a whole round.
pub(super) fn start(broker: &Arc<Broker>) {
    let signal = Arc::clone(&broker.maintenance.signal);
    let waker = Arc::clone(&signal);
    broker.store.logs().set_on_wanting_write(Arc::new(move || {
        lock(&waker.state).write_out = true;
        waker.wake.notify_all();
    }));
    let weak: Weak<Broker> = Arc::downgrade(broker);
    let spawned = crate::storage::background::spawn_essential("potok-maintenance", move || {
        let mut last_round = Instant::now();
        loop {
            let write_out = {
                let mut state = lock(&signal.state);
                loop {
                    let waited = last_round.elapsed();
                    if state.stop || state.write_out || waited >= TICK {
                        break;
                    }
                    state = signal
                        .wake
                        .wait_timeout(state, TICK - waited)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                if state.stop {
                    return;
                }
                std::mem::take(&mut state.write_out)
            };
            let Some(broker) = weak.upgrade() else { return };
            if write_out {
                if let Err(e) = broker.enforce_tail_budget() {
                    tracing::warn!(error = %e, "writing entity logs out failed");
                }
            }
            if last_round.elapsed() >= TICK {
                broker.tick();
                last_round = Instant::now();
            }
        }
    });
    match spawned {
        Ok(thread) => *lock(&broker.maintenance.thread) = Some(thread),
        Err(e) => tracing::error!(error = %e, "could not start the maintenance thread"),
    }
}

impl Broker {
    /// One round of background work (the maintenance thread runs it every 100 ms).
    pub fn tick(&self) {
        self.remove_doomed();
        self.vhost.sweep();
        if let Err(e) = self.enforce_tail_budget() {
            tracing::warn!(error = %e, "writing entity logs out failed");
        }
        if self.checkpoint_due() {
            if let Err(e) = self.checkpoint() {
                tracing::error!(error = %e, "checkpoint failed; the write-ahead log keeps everything until one succeeds");
            }
        }
        let evict = {
            let mut clock = lock(&self.maintenance.clock);
            let due = clock.last_eviction.elapsed() >= self.config.idle_eviction / 2;
            if due {
                clock.last_eviction = Instant::now();
            }
            due
        };
        if evict {
            self.evict_idle();
            if let Err(e) = self.expire_topics(TOPICS_PER_ROUND) {
                tracing::warn!(error = %e, "expiring topics failed");
            }
        }
    }

    fn checkpoint_due(&self) -> bool {
        let wal = self.store.wal();
        if wal.next_lsn() <= wal.checkpoint_lsn() {
            return false;
        }
        let (elapsed, base) = {
            let clock = lock(&self.maintenance.clock);
            (
                clock.last_checkpoint.elapsed(),
                clock.wal_bytes_after_checkpoint,
            )
        };
        wal.size_bytes().saturating_sub(base) >= self.config.checkpoint_wal_bytes
            || self.store.logs().tail_bytes() >= self.config.tail_bytes_max
            || elapsed >= self.config.checkpoint_interval
    }

    /// Remove the files of deleted entities whose deletion is durable.
    fn remove_doomed(&self) {
        let durable = self.store.wal().durable_lsn();
        for doomed in self.store.take_doomed(durable) {
            let removed = match &doomed.log {
                Some(log) => log.delete_files().map_err(std::io::Error::other),
                None if self.store.vfs().exists(&doomed.dir) => {
                    self.store.vfs().remove_dir_all(&doomed.dir)
                }
                None => Ok(()),
            };
            if let Err(e) = removed {
                tracing::warn!(dir = %doomed.dir.display(), error = %e, "removing a deleted entity's files failed");
            }
        }
    }

    /// Write out the tails that grew past 1 MiB.
    fn enforce_tail_budget(&self) -> Result<(), BrokerError> {
        for log in self.store.logs().take_wanting_write() {
            log.materialize()?;
        }
        Ok(())
    }

    /// Make everything the write-ahead log holds up to now durable elsewhere, then let it go:
    ///
    /// 1. note the LSN `c` the checkpoint will cover and make the write-ahead log durable up
    ///    to it (so everything before it is visible);
    /// 2. open every entity that still has changes only in the write-ahead log;
    /// 3. write every entity log's tail to its segment files, free trimmed segments;
    /// 4. take the snapshots of everything whose metadata changed (each with the LSN of the
    ///    last operation it reflects), make the write-ahead log durable up to them (a snapshot
    ///    must never hold a change the write-ahead log could lose), remove the files of
    ///    deleted entities, write the snapshots to the metadata store;
    /// 5. `syncfs`: every file written is durable;
    /// 6. write the `checkpoint` file (`c`) and drop write-ahead log segments before it.
    ///
    /// A crash anywhere leaves the previous checkpoint in force, and replay skips whatever the
    /// files and snapshots already hold.
    pub fn checkpoint(&self) -> Result<(), BrokerError> {
        let _only = lock(&self.maintenance.checkpointing);
        let wal = self.store.wal();
        let covered = wal.next_lsn();
        wal.sync()?;
        self.open_replayed()?;
        let (streams, topics) = {
            let state = self.read();
            let streams: Vec<_> = state.streams.values().cloned().collect();
            let topics: Vec<_> = state.topics.values().cloned().collect();
            (streams, topics)
        };
        for stream in &streams {
            stream.log().materialize()?;
            stream.free_trimmed()?;
        }
        for topic in &topics {
            topic.log().materialize()?;
        }
        self.vhost.write_out()?;
        let full = self.maintenance.failed.swap(false, Ordering::AcqRel);
        let (mut items, deleted) = self.take_snapshots(&streams, full);
        items.extend(self.vhost.take_snapshots(full));
        let written = (|| -> Result<(), BrokerError> {
            wal.sync()?;
            self.remove_doomed();
            self.store.meta().write(items)?;
            self.store.vfs().sync_all(&self.dir)?;
            wal.set_checkpoint(covered)?;
            Ok(())
        })();
        if written.is_err() {
            self.maintenance.failed.store(true, Ordering::Release);
            self.store.catalog().mark_all_dirty(&deleted);
            for stream in &streams {
                stream.mark_dirty();
            }
            self.vhost.mark_dirty();
            return written;
        }
        {
            let mut clock = lock(&self.maintenance.clock);
            clock.last_checkpoint = Instant::now();
            clock.wal_bytes_after_checkpoint = wal.size_bytes();
        }
        if self.store.meta().wants_compaction() {
            self.store.meta().compact()?;
        }
        Ok(())
    }

    /// Open every entity that has changes only in the write-ahead log (they must reach their
    /// files before the checkpoint moves past them).
    fn open_replayed(&self) -> Result<(), BrokerError> {
        let ids: Vec<u64> = self.read().replay.keys().copied().collect();
        for id in ids {
            let mut state = self.write();
            let Some(entry) = self.store.catalog().entry(id).cloned() else {
                state.replay.remove(&id);
                continue;
            };
            match entry.kind {
                EntityKind::Stream => {
                    self.open_stream(&mut state, &entry.name)?;
                }
                EntityKind::Topic => {
                    self.open_topic(&mut state, &entry.name)?;
                }
                EntityKind::Queue => {
                    state.replay.remove(&id);
                }
            }
        }
        Ok(())
    }

    /// The metadata store items of this checkpoint: catalog changes and changed stream
    /// metadata (all of it after a failed checkpoint), and the ids deleted since the last.
    fn take_snapshots(
        &self,
        streams: &[Arc<super::Stream>],
        full: bool,
    ) -> (Vec<MetaItem>, Vec<u64>) {
        if full {
            self.store.catalog().mark_all_dirty(&[]);
            for stream in streams {
                stream.mark_dirty();
            }
        }
        let (mut items, deleted) = self.store.catalog().take_changes();
        for id in &deleted {
            items.push((super::stream::meta_key(*id), None));
            items.push((super::amqp::queue::meta_key(*id), None));
        }
        let mut kept = Vec::new();
        for stream in streams {
            if let Some((key, value)) = stream.take_snapshot() {
                if let Some(value) = &value {
                    kept.push((stream.id(), value.clone()));
                }
                items.push((key, value));
            }
        }
        // What a stream reopened after eviction starts from. Kept under the broker's write lock
        // a chunk at a time (a million streams in one hold stalled every client for a second);
        // a stream deleted meanwhile has had its snapshot forgotten and is skipped.
        for chunk in kept.chunks(EVICTED_PER_LOCK) {
            let mut state = self.write();
            let catalog = self.store.catalog();
            for (id, value) in chunk {
                if catalog.entry(*id).is_some() {
                    state.stream_snapshots.insert(*id, value.clone());
                }
            }
        }
        (items, deleted)
    }

    /// Close streams and topics unused since the last sweep that hold nothing a checkpoint
    /// still needs and that nobody holds or waits for.
    pub fn evict_idle(&self) {
        let idle = |used: bool, strong: usize| !used && strong == 1;
        // Candidates are found under the read lock, so lookups go on meanwhile ...
        let (streams, topics): (Vec<Key>, Vec<Key>) = {
            let state = self.read();
            let streams = state
                .streams
                .iter()
                .filter(|(_, s)| {
                    idle(s.take_used(), Arc::strong_count(s)) && s.is_settled() && !s.has_waiters()
                })
                .map(|(name, _)| name.clone())
                .collect();
            let topics = state
                .topics
                .iter()
                .filter(|(_, t)| {
                    idle(t.take_used(), Arc::strong_count(t)) && t.log().tail_bytes() == 0
                })
                .map(|(name, _)| name.clone())
                .collect();
            (streams, topics)
        };
        // ... and closed under the write lock a chunk at a time, each checked again (a lookup
        // since marked it used or holds it); their memory is freed after the lock is let go.
        // With a million streams, one pass under the write lock held every client for seconds.
        let mut evicted = 0;
        for chunk in streams.chunks(EVICTED_PER_LOCK) {
            let closed: Vec<Arc<super::Stream>> = {
                let mut state = self.write();
                chunk
                    .iter()
                    .filter_map(|name| {
                        let s = state.streams.get(name.as_bytes())?;
                        if !idle(s.is_used(), Arc::strong_count(s))
                            || !s.is_settled()
                            || s.has_waiters()
                        {
                            return None;
                        }
                        let stream = state.streams.remove(name.as_bytes())?;
                        stream.detach();
                        stream.close();
                        Some(stream)
                    })
                    .collect()
            };
            evicted += closed.len();
        }
        for chunk in topics.chunks(EVICTED_PER_LOCK) {
            let closed: Vec<Arc<super::Topic>> = {
                let mut state = self.write();
                chunk
                    .iter()
                    .filter_map(|name| {
                        let t = state.topics.get(name.as_bytes())?;
                        if !idle(t.is_used(), Arc::strong_count(t)) || t.log().tail_bytes() != 0 {
                            return None;
                        }
                        let topic = state.topics.remove(name.as_bytes())?;
                        topic.close();
                        Some(topic)
                    })
                    .collect()
            };
            evicted += closed.len();
        }
        if evicted > 0 {
            tracing::debug!(evicted, "closed idle streams and topics");
        }
        if evicted >= EVICTED_TRIM_MIN {
            return_freed_memory();
        }
    }

    /// Delete up to `count` topics (from where the last sweep stopped) whose newest message is
    /// older than the topics' retention age.
    pub fn expire_topics(&self, count: usize) -> Result<usize, BrokerError> {
        let Some(age) = self.config.topic_log.retention.age_max else {
            return Ok(0);
        };
        let cutoff = crate::storage::recovery::now_ms() - age.as_millis() as i64;
        let names: Vec<Bytes> = {
            let mut catalog = self.store.catalog();
            let cursor = lock(&self.maintenance.clock).topic_cursor.clone();
            let names = catalog.names(EntityKind::Topic);
            match cursor {
                Some(after) => names
                    .skip_while(|(n, _)| **n <= after)
                    .take(count)
                    .map(|(n, _)| n.clone())
                    .collect(),
                None => names.take(count).map(|(n, _)| n.clone()).collect(),
            }
        };
        lock(&self.maintenance.clock).topic_cursor = names.last().cloned();
        let mut deleted = 0;
        for name in names {
            let Some(topic) = self.topic(&name) else {
                continue;
            };
            let expired = topic.newest_timestamp_ms()?.is_none_or(|ts| ts < cutoff);
            drop(topic);
            if expired && self.delete_topic(&name)?.0 {
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}
