//! Crash torture of the whole broker: streams, consumer groups, deletions and trims through the
//! write-ahead log, with checkpoints and tails written out at random, and power lost at a
//! random operation (mid-commit, between a commit and its entity files, mid-checkpoint).
//!
//! The promise under test: after recovery, everything whose commit was waited for is there;
//! nothing whose removal was waited for comes back; nothing is served that was never written;
//! recovery never panics. A second pass flips a bit in a random file of the crashed directory:
//! recovery must still not panic, and nothing served may differ from what was written.
//! Seeds: `POTOK_CRASH_SEEDS` (default 150); `tests/soak.sh` runs many more.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use potok::broker::{Broker, BrokerConfig, GroupStart, IdSpec, StreamId};
use potok::storage::io::{CrashMode, FaultVfs, Vfs};

fn seeds() -> u64 {
    std::env::var("POTOK_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150)
}

fn config() -> BrokerConfig {
    let mut config = BrokerConfig::default();
    config.stream_log.segment_bytes_max = 1024;
    config.stream_log.index_interval_bytes = 128;
    config
}

fn open(vfs: &FaultVfs) -> Result<Broker, String> {
    Broker::open_with(Arc::new(vfs.clone()), Path::new("/data"), config())
        .map_err(|e| e.to_string())
}

/// What the test knows about one stream.
#[derive(Default)]
struct StreamModel {
    /// Every entry ever appended (by ID milliseconds; sequence 1), waited for or not.
    attempted: BTreeSet<u64>,
    /// Appends whose commit was waited for.
    durable: BTreeSet<u64>,
    /// Entries whose removal (XDEL, XTRIM) was waited for: never to be seen again.
    removed: BTreeSet<u64>,
    /// Removals attempted without waiting: may or may not have happened.
    maybe_removed: BTreeSet<u64>,
    /// Delivered to consumer `c` with the delivery waited for, and not acknowledged since.
    pending: BTreeSet<u64>,
    /// Acknowledged with the acknowledgement waited for.
    acked: BTreeSet<u64>,
    /// Deliveries or acknowledgements not waited for.
    maybe_pending: BTreeSet<u64>,
    next_ms: u64,
    /// The stream's creation (with its group) was waited for.
    created: bool,
}

#[derive(Default)]
struct Model {
    streams: BTreeMap<String, StreamModel>,
    /// Streams whose deletion was waited for / attempted.
    deleted: BTreeSet<String>,
    maybe_deleted: BTreeSet<String>,
}

fn fields(ms: u64) -> Vec<(Bytes, Bytes)> {
    vec![(Bytes::from("n"), Bytes::from(ms.to_string()))]
}

/// One random operation; `Err` once the power is out.
fn step(broker: &Broker, rng: &mut fastrand::Rng, model: &mut Model) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let names = ["a", "b", "c", "d", "e", "f"];
    let name = names[rng.usize(..names.len())];
    if model.deleted.contains(name) || model.maybe_deleted.contains(name) {
        return Ok(());
    }
    let wait = rng.u8(0..4) != 0;
    let exists = model.streams.contains_key(name);
    let op = rng.u8(0..20);
    if std::env::var("POTOK_CRASH_TRACE").is_ok() {
        eprintln!(
            "op {op} on {name} wait {wait} next_ms {:?}",
            model.streams.get(name).map(|m| m.next_ms)
        );
    }
    match op {
        0 => broker.checkpoint().map_err(|x| e(&x)),
        1 => {
            broker.tick();
            Ok(())
        }
        2 if exists => {
            let (_, commit) = broker.delete(name.as_bytes()).map_err(|x| e(&x))?;
            model.maybe_deleted.insert(name.to_string());
            broker.wait(commit).map_err(|x| e(&x))?;
            model.maybe_deleted.remove(name);
            model.deleted.insert(name.to_string());
            Ok(())
        }
        3 | 4 if exists => {
            let Some(stream) = broker.stream(name.as_bytes()) else {
                // Its creation was never waited for and a crash took it.
                return Ok(());
            };
            let m = model.streams.get_mut(name).unwrap();
            let live: Vec<u64> = m.attempted.difference(&m.removed).copied().collect();
            let Some(&victim) = live.get(rng.usize(..live.len().max(1))) else {
                return Ok(());
            };
            let (deleted, commit) = stream
                .delete(&[StreamId::new(victim, 1)])
                .map_err(|x| e(&x))?;
            if deleted == 0 {
                // Not visible yet (its append was not waited for): nothing to delete.
                return Ok(());
            }
            m.maybe_removed.insert(victim);
            if wait {
                broker.wait(commit).map_err(|x| e(&x))?;
                m.removed.insert(victim);
            }
            Ok(())
        }
        5 if exists => {
            let Some(stream) = broker.stream(name.as_bytes()) else {
                // Its creation was never waited for and a crash took it.
                return Ok(());
            };
            let m = model.streams.get_mut(name).unwrap();
            let keep = rng.u64(0..4);
            let before: BTreeSet<u64> = m.attempted.iter().copied().collect();
            let (trimmed, commit) = stream
                .trim(potok::broker::TrimStrategy::MaxLen(keep), false, None)
                .map_err(|x| e(&x))?;
            if trimmed == 0 {
                return Ok(());
            }
            // Until the wait succeeds, anything but the newest `keep` may be gone.
            let newest: BTreeSet<u64> = m
                .attempted
                .iter()
                .rev()
                .take(keep as usize)
                .copied()
                .collect();
            m.maybe_removed
                .extend(m.attempted.iter().filter(|ms| !newest.contains(ms)));
            // Waited for (with every append before it): what it removed is every entry older
            // than the oldest one left.
            broker.wait(commit).map_err(|x| e(&x))?;
            let live: Vec<u64> = stream
                .range(StreamId::MIN, StreamId::MAX, None)
                .map_err(|x| e(&x))?
                .iter()
                .map(|entry| entry.id.ms)
                .collect();
            // Every entry the stream holds now is durable (the trim's commit covers them).
            m.durable.extend(live.iter().copied());
            let gone: Vec<u64> = before
                .iter()
                .copied()
                .filter(|ms| live.first().is_none_or(|first| ms < first))
                .collect();
            m.maybe_removed.extend(&gone);
            m.removed.extend(&gone);
            Ok(())
        }
        6 | 7 if exists => {
            let Some(stream) = broker.stream(name.as_bytes()) else {
                // Its creation was never waited for and a crash took it.
                return Ok(());
            };
            let m = model.streams.get_mut(name).unwrap();
            let (entries, commit) = stream
                .read_group_new(
                    &Bytes::from("g"),
                    &Bytes::from("c"),
                    Some(3),
                    false,
                    u64::MAX,
                )
                .map_err(|x| e(&x))?;
            let ids: Vec<u64> = entries.iter().map(|entry| entry.id.ms).collect();
            m.maybe_pending.extend(&ids);
            if wait {
                broker.wait(commit).map_err(|x| e(&x))?;
                m.pending.extend(&ids);
            }
            Ok(())
        }
        8 if exists => {
            let Some(stream) = broker.stream(name.as_bytes()) else {
                // Its creation was never waited for and a crash took it.
                return Ok(());
            };
            let m = model.streams.get_mut(name).unwrap();
            let Some(&id) = m.pending.iter().next() else {
                return Ok(());
            };
            let (_, commit) = stream
                .ack(&Bytes::from("g"), &[StreamId::new(id, 1)])
                .map_err(|x| e(&x))?;
            m.pending.remove(&id);
            m.maybe_pending.insert(id);
            if wait {
                broker.wait(commit).map_err(|x| e(&x))?;
                m.acked.insert(id);
            }
            Ok(())
        }
        _ => {
            let stream = broker
                .stream_or_create(name.as_bytes())
                .map_err(|x| e(&x))?;
            let m = model.streams.entry(name.to_string()).or_default();
            if !m.created {
                let commit = match stream.create_group(
                    &Bytes::from("g"),
                    GroupStart::Id(StreamId::MIN),
                    None,
                ) {
                    Ok(commit) => commit,
                    Err(potok::broker::StreamError::BusyGroup) => potok::broker::Commit::NONE,
                    Err(x) => return Err(e(&x)),
                };
                broker.wait(commit).map_err(|x| e(&x))?;
                m.created = true;
            }
            m.next_ms += 1 + rng.u64(0..3);
            let ms = m.next_ms;
            let added = stream
                .add(IdSpec::Explicit(StreamId::new(ms, 1)), fields(ms))
                .map_err(|x| e(&x))?;
            m.attempted.insert(ms);
            if wait {
                broker.wait(added.commit).map_err(|x| e(&x))?;
                m.durable.insert(ms);
            }
            Ok(())
        }
    }
}

/// Check a recovered broker against the model.
fn check(broker: &Broker, model: &Model, context: &str) {
    if std::env::var("POTOK_CRASH_TRACE").is_ok() {
        for name in model.streams.keys() {
            if let Some(stream) = broker.stream(name.as_bytes()) {
                let entries: Vec<u64> = stream
                    .range(StreamId::MIN, StreamId::MAX, None)
                    .unwrap()
                    .iter()
                    .map(|e| e.id.ms)
                    .collect();
                eprintln!(
                    "{context}: {name} = {entries:?} next {}",
                    stream.log().next_offset()
                );
            }
        }
    }
    for name in &model.deleted {
        assert!(
            broker.stream(name.as_bytes()).is_none(),
            "{context}: deleted stream {name} came back"
        );
    }
    for (name, m) in &model.streams {
        let Some(stream) = broker.stream(name.as_bytes()) else {
            assert!(
                model.maybe_deleted.contains(name)
                    || model.deleted.contains(name)
                    || (!m.created && m.durable.is_empty()),
                "{context}: stream {name} lost"
            );
            continue;
        };
        let entries = stream
            .range(StreamId::MIN, StreamId::MAX, None)
            .unwrap_or_else(|e| panic!("{context}: reading {name}: {e}"));
        let seen: BTreeSet<u64> = entries.iter().map(|entry| entry.id.ms).collect();
        for entry in &entries {
            let ms = entry.id.ms;
            assert!(
                m.attempted.contains(&ms),
                "{context}: {name} {ms} never written"
            );
            assert!(
                !m.removed.contains(&ms),
                "{context}: {name} {ms} was removed"
            );
            assert_eq!(entry.fields, fields(ms), "{context}: {name} {ms} differs");
        }
        for ms in &m.durable {
            assert!(
                seen.contains(ms) || m.maybe_removed.contains(ms),
                "{context}: {name} lost acknowledged entry {ms}; seen {seen:?}, durable {:?}, removed {:?}, log {}..{} visible {}",
                m.durable, m.removed, stream.log().start_offset(), stream.log().next_offset(), stream.log().visible_next_offset()
            );
        }
        if !m.created {
            continue;
        }
        let pending: BTreeSet<u64> = match stream.pending_range(
            b"g",
            &potok::broker::PendingFilter {
                min_idle_ms: 0,
                start: StreamId::MIN,
                end: StreamId::MAX,
                count: usize::MAX,
                consumer: None,
            },
        ) {
            Ok(rows) => rows.iter().map(|r| r.id.ms).collect(),
            Err(e) => panic!("{context}: {name}'s group is gone: {e}"),
        };
        for ms in &m.pending {
            assert!(
                pending.contains(ms) || m.maybe_removed.contains(ms),
                "{context}: {name} lost pending entry {ms}"
            );
        }
        for ms in &m.acked {
            assert!(
                !pending.contains(ms),
                "{context}: {name} acknowledged entry {ms} is pending again"
            );
        }
        for ms in &pending {
            assert!(
                m.pending.contains(ms) || m.maybe_pending.contains(ms),
                "{context}: {name} {ms} pending but never delivered"
            );
        }
    }
}

fn crash_cycle(seed: u64, mode: CrashMode) {
    let vfs = FaultVfs::new(seed);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut model = Model::default();
    let broker = open(&vfs).unwrap();
    for _ in 0..rng.usize(0..40) {
        step(&broker, &mut rng, &mut model).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
    vfs.power_loss_after(rng.u64(1..400));
    for _ in 0..200 {
        if step(&broker, &mut rng, &mut model).is_err() {
            break;
        }
    }
    drop(broker);
    vfs.crash(mode);
    let context = format!("seed {seed} {mode:?}");
    let broker = open(&vfs).unwrap_or_else(|e| panic!("{context}: recovery failed: {e}"));
    check(&broker, &model, &context);
    if std::env::var("POTOK_CRASH_TRACE").is_ok() {
        eprintln!("--- phase 2");
    }
    // The recovered broker carries on, checkpoints, and survives another crash.
    for _ in 0..20 {
        step(&broker, &mut rng, &mut model).unwrap_or_else(|e| panic!("{context}: {e}"));
    }
    broker.checkpoint().unwrap();
    drop(broker);
    vfs.crash(CrashMode::DropUnsynced);
    let broker = open(&vfs).unwrap_or_else(|e| panic!("{context}, second recovery: {e}"));
    check(&broker, &model, &format!("{context}, second crash"));
    drop(broker);
    // Media damage: recovery must not panic, and what is served was written.
    let damaged = vfs.durable_copy(seed);
    let files = all_files(&damaged, Path::new("/data"));
    if !files.is_empty() {
        let path = &files[rng.usize(..files.len())];
        let len = damaged.file_len(path).unwrap_or(0);
        if len > 0 {
            damaged.flip_bit(path, rng.u64(..len), rng.u8(..8)).unwrap();
        }
        if let Ok(broker) = open(&damaged) {
            for (name, m) in &model.streams {
                let Some(stream) = broker.stream(name.as_bytes()) else {
                    continue;
                };
                if let Ok(entries) = stream.range(StreamId::MIN, StreamId::MAX, None) {
                    for entry in entries {
                        assert!(
                            m.attempted.contains(&entry.id.ms),
                            "{context}: a damaged file served {} that was never written",
                            entry.id
                        );
                        assert_eq!(entry.fields, fields(entry.id.ms));
                    }
                }
            }
        }
    }
}

fn all_files(vfs: &FaultVfs, dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = vfs
        .list_dir(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|n| dir.join(n))
        .collect();
    for sub in vfs.list_subdirs(dir).unwrap_or_default() {
        out.extend(all_files(vfs, &dir.join(sub)));
    }
    out
}

#[test]
fn acknowledged_changes_survive_power_loss_anywhere() {
    if let Ok(seed) = std::env::var("POTOK_CRASH_SEED") {
        return crash_cycle(seed.parse().unwrap(), CrashMode::TornWrites);
    }
    for seed in 0..seeds() {
        crash_cycle(seed, CrashMode::TornWrites);
    }
}

#[test]
fn acknowledged_changes_survive_dropped_unsynced_data() {
    for seed in 0..seeds() {
        crash_cycle(seed + 1_000_000, CrashMode::DropUnsynced);
    }
}
