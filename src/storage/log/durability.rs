//! Durability: group commit, group write, visibility, and async waits.
//!
//! The first appender that needs durability becomes the leader: it writes what `always`
//! buffered (one system call), fsyncs once, and wakes everyone whose data that covered; appends
//! that arrive meanwhile wait for the next round. Async callers await a watch of the durable
//! offset instead of parking a thread; the leader then runs on the blocking pool.

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use super::*;

pub(super) fn spawn_flusher(log: Weak<LogInner>, period: Duration) {
    let spawned = crate::storage::background::spawn_essential("potok-flusher", move || loop {
        std::thread::sleep(period);
        let Some(log) = log.upgrade() else { return };
        if log.closed.load(Ordering::Acquire) || log.failed.load(Ordering::Acquire) {
            return;
        }
        let written = log.read_shared().active.written.next_offset;
        // A failure poisons the log; appends report it.
        let _ = log.wait_until_durable(written);
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the flusher thread; data syncs at roll and close only");
    }
}

/// Buffered batches taken out of the writer by the sync leader, on their way to the file.
struct TakenWrite {
    file: Arc<dyn VFile>,
    data: Vec<u8>,
    from: u64,
    /// Zeros to write after the data (preallocation).
    zero_fill: u64,
}

/// The background zero-fill writes back this much at a time.
const ZERO_FILL_STRETCH_BYTES: u64 = 256 * 1024;

type BackgroundJob = Box<dyn FnOnce() + Send>;

/// Run `job` on the process's one background I/O thread (started on first use), or right here
/// if that thread cannot be started.
fn run_in_background(job: BackgroundJob) {
    static QUEUE: OnceLock<Option<Mutex<mpsc::Sender<BackgroundJob>>>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<BackgroundJob>();
        crate::storage::background::spawn_essential("potok-zero-fill", move || {
            receiver.into_iter().for_each(|job| job())
        })
        .map_err(|e| tracing::warn!(error = %e, "no background I/O thread; zero-filling inline"))
        .ok()
        .map(|_| Mutex::new(sender))
    });
    match queue {
        Some(sender) => {
            if let Err(mpsc::SendError(job)) = lock(sender).send(job) {
                job();
            }
        }
        None => job(),
    }
}

/// Write `len` zero bytes at `pos`, from one small static buffer.
fn write_zeros(file: &dyn VFile, mut pos: u64, len: u64) -> std::io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let end = pos + len;
    while pos < end {
        let n = (end - pos).min(ZEROS.len() as u64);
        file.write_at(&ZEROS[..n as usize], pos)?;
        pos += n;
    }
    Ok(())
}

impl Flight {
    /// The background zero-fill of `from..to` in the active segment: zeros written back in
    /// stretches (so an fsync of the data meanwhile waits for at most one stretch), then synced
    /// with the allocation and file size they imply. A failure only means the writes catch up
    /// and zero-fill for themselves (in line, for the rest of the segment); what it left is
    /// zeros, which recovery reads as the end.
    fn zero_fill_in_background(&self, dir: &Path, file: &dyn VFile, from: u64, to: u64) {
        let mut pos = from;
        let mut outcome = Ok(());
        while pos < to && outcome.is_ok() {
            let len = (to - pos).min(ZERO_FILL_STRETCH_BYTES);
            outcome = write_zeros(file, pos, len).and_then(|()| file.write_back(pos, len));
            pos += len;
        }
        let outcome = outcome.and_then(|()| file.sync_data());
        if let Err(e) = &outcome {
            tracing::warn!(dir = %dir.display(), error = %e, "background zero-fill failed; zero-filling in line for the rest of this segment");
        }
        let mut flight = lock(&self.state);
        flight.zero_fill_to = None;
        match outcome {
            Ok(()) => flight.file_bytes = flight.file_bytes.max(to),
            Err(_) => flight.zero_fill_failed = true,
        }
        self.done.notify_all();
    }
}

impl LogInner {
    /// Group commit: wait until `next_offset` is durable, leading an fsync if nobody is.
    pub(super) fn wait_until_durable(&self, next_offset: u64) -> Result<()> {
        let written = self.read_shared().active.written.next_offset;
        if next_offset > written {
            // No fsync could ever cover it; waiting would spin.
            return Err(Error::InvalidArgument(format!(
                "cannot wait for offset {next_offset}: the log is written up to {written}"
            )));
        }
        let mut sync = lock(&self.sync);
        loop {
            if sync.durable_next_offset >= next_offset {
                return Ok(());
            }
            if self.failed.load(Ordering::Acquire) {
                return Err(Error::PreviousIo);
            }
            if sync.leader_active {
                sync = self.synced.wait(sync).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            sync.leader_active = true;
            drop(sync);
            let outcome = self.sync_active();
            sync = lock(&self.sync);
            sync.leader_active = false;
            if let Ok(durable) = outcome {
                self.set_durable(&mut sync, durable);
            }
            self.synced.notify_all();
            self.durable_watch.send_modify(|_| {});
            outcome?;
        }
    }

    pub(super) fn sync_durable_next(&self) -> u64 {
        lock(&self.sync).durable_next_offset
    }

    pub(super) fn set_durable(&self, sync: &mut SyncState, durable: u64) {
        sync.durable_next_offset = sync.durable_next_offset.max(durable);
        let value = sync.durable_next_offset;
        self.durable_watch.send_if_modified(|d| {
            let changed = *d < value;
            *d = value;
            changed
        });
    }

    /// Become the sync leader if nobody is.
    pub(super) fn try_lead(&self) -> bool {
        let mut sync = lock(&self.sync);
        if sync.leader_active || self.failed.load(Ordering::Acquire) {
            return false;
        }
        sync.leader_active = true;
        true
    }

    /// As leader: sync until everything written is durable, then step down.
    pub(super) fn lead_sync_rounds(&self) {
        loop {
            let outcome = self.sync_active();
            let mut sync = lock(&self.sync);
            let done = match outcome {
                Ok(durable) => {
                    self.set_durable(&mut sync, durable);
                    sync.durable_next_offset >= self.read_shared().active.written.next_offset
                }
                Err(_) => true,
            };
            if done {
                sync.leader_active = false;
                self.synced.notify_all();
                drop(sync);
                // Wake async waiters even if nothing moved (a failure, or another round).
                self.durable_watch.send_modify(|_| {});
                return;
            }
            // Threads waiting on what this round covered go on now.
            self.synced.notify_all();
            drop(sync);
            // More was appended during that fsync: let the next one gather a little more.
            if !self.config.group_commit_delay.is_zero() {
                std::thread::sleep(self.config.group_commit_delay);
            }
        }
    }

    /// Write what `always` buffered, with the writer lock held (roll, close, a full buffer).
    /// A failure fails the log: those batches already have offsets.
    pub(super) fn flush_pending(&self, writer: &mut Writer) -> Result<()> {
        self.await_write_in_flight()?;
        if let Some(write) = self.take_pending(writer) {
            self.write_taken(write)?;
        }
        Ok(())
    }

    /// Move the buffered batches (and any zero-filling due) out of the writer, so they can be
    /// written without the writer lock; the caller holds it. Until [`Self::write_taken`]
    /// finishes, roll and close wait in [`Self::await_write_in_flight`].
    ///
    /// Zero-filling: the first write into a segment zero-fills ahead of itself; from then on,
    /// once half the zeros ahead are used up, the next stretch is zero-filled (and synced) in
    /// the background, off the path of the appends waiting for this sync. The data never goes
    /// where a background zero-fill is still writing: this waits for it first.
    fn take_pending(&self, writer: &mut Writer) -> Option<TakenWrite> {
        if writer.pending.is_empty() {
            return None;
        }
        let mut flight = lock(&self.flight.state);
        debug_assert!(!flight.active, "one write of buffered batches at a time");
        let from = writer.pending_from;
        let end = from + writer.pending.len() as u64;
        while flight.zero_fill_to.is_some() && end > flight.file_bytes {
            flight = self
                .flight
                .done
                .wait(flight)
                .unwrap_or_else(|e| e.into_inner());
        }
        let mut data = std::mem::take(&mut flight.spare);
        data.clear();
        std::mem::swap(&mut data, &mut writer.pending);
        flight.active = true;
        writer.pending_from = end;
        let ahead_max = self.config.preallocate_bytes_max;
        // As much as is written (so a small log wastes little), within the limits.
        let ahead = end.max(PREALLOCATE_BYTES_MIN).min(ahead_max);
        let zero_fill = if ahead_max > 0 && end > flight.file_bytes {
            flight.file_bytes = end + ahead;
            ahead
        } else {
            flight.file_bytes = flight.file_bytes.max(end);
            0
        };
        let file = Arc::clone(&self.read_shared().active.file);
        let background = ahead_max > 0
            && flight.zero_fill_to.is_none()
            && !flight.zero_fill_failed
            && flight.file_bytes - end < ahead / 2
            && self.vfs.background_io();
        if background {
            let (from, to) = (flight.file_bytes, flight.file_bytes + ahead);
            flight.zero_fill_to = Some(to);
            // Unlocked first: the job may run right here, and it takes the lock.
            drop(flight);
            let (flight, file) = (Arc::clone(&self.flight), Arc::clone(&file));
            let dir = self.dir.clone();
            run_in_background(Box::new(move || {
                flight.zero_fill_in_background(&dir, &*file, from, to)
            }));
        }
        Some(TakenWrite {
            file,
            data,
            from,
            zero_fill,
        })
    }

    /// Length of the active segment file, once no write or zero-fill is in flight (the writer
    /// lock, held by the caller, keeps new ones from starting).
    pub(super) fn file_bytes(&self) -> u64 {
        lock(&self.flight.state).file_bytes
    }

    /// Write what [`Self::take_pending`] took, then let roll and close go on.
    fn write_taken(&self, write: TakenWrite) -> Result<()> {
        let TakenWrite {
            file,
            data,
            from,
            zero_fill,
        } = write;
        let end = from + data.len() as u64;
        let result = file
            .write_at(&data, from)
            .and_then(|()| write_zeros(&*file, end, zero_fill));
        {
            let mut flight = lock(&self.flight.state);
            flight.active = false;
            // Keep a big buffer from pinning memory after a burst.
            if data.capacity() <= PENDING_BYTES_MAX {
                flight.spare = data;
            }
            self.flight.done.notify_all();
        }
        result.map_err(|e| self.fail(e))
    }

    /// Wait until no write of buffered batches and no zero-fill is in flight. Called with the
    /// writer lock held, which stops new ones from starting.
    pub(super) fn await_write_in_flight(&self) -> Result<()> {
        let mut flight = lock(&self.flight.state);
        while flight.active || flight.zero_fill_to.is_some() {
            flight = self
                .flight
                .done
                .wait(flight)
                .unwrap_or_else(|e| e.into_inner());
        }
        drop(flight);
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::PreviousIo);
        }
        Ok(())
    }

    /// fsync the active segment up to what is written now; make it visible. Returns the offset
    /// below which everything is durable. The buffered batches are written outside the writer
    /// lock, so appenders keep encoding meanwhile.
    pub(super) fn sync_active(&self) -> Result<u64> {
        if !self.config.sync_delay.is_zero() {
            std::thread::sleep(self.config.sync_delay);
        }
        let (file, base, written, taken) = {
            let mut writer = lock(&self.writer);
            let taken = self.take_pending(&mut writer);
            let shared = self.read_shared();
            (
                Arc::clone(&shared.active.file),
                shared.active.base_offset,
                shared.active.written,
                taken,
            )
        };
        if let Some(write) = taken {
            self.write_taken(write)?;
        }
        if let Err(e) = file.sync_data() {
            return Err(self.fail(e));
        }
        self.publish_visible(base, written);
        Ok(written.next_offset)
    }

    pub(super) fn publish_visible(&self, segment_base: u64, end: End) {
        let advanced = {
            let mut shared = self.write_shared();
            // A roll may have moved on; then the old segment was synced and published by it.
            let advanced = shared.active.base_offset == segment_base
                && end.next_offset > shared.active.visible.next_offset;
            if advanced {
                shared.active.visible = end;
            }
            advanced
        };
        if advanced {
            self.notify_visible();
        }
    }

    pub(super) fn notify_visible(&self) {
        let listener = lock(&self.visibility_listener).clone();
        if let Some(listener) = listener {
            listener();
        }
    }
}
