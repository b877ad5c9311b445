use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::storage::file_cache::FileCache;
use crate::storage::io::{CrashMode, FaultVfs};

fn open(vfs: &FaultVfs) -> Wal {
    Wal::open(
        Arc::new(vfs.clone()),
        Path::new("/data"),
        Durability::Always,
    )
    .unwrap()
}

fn entity(vfs: &FaultVfs, id: u64) -> EntityLog {
    let files = Arc::new(crate::storage::entity_log::LogShared::new(FileCache::new(
        Arc::new(vfs.clone()),
        4,
    )));
    EntityLog::open(
        files,
        id,
        format!("/data/e/{id}"),
        LogConfig::default(),
        Visibility::Durable,
    )
    .unwrap()
}

fn entries(wal: &Wal) -> Vec<(u64, WalEntry)> {
    wal.replay(wal.checkpoint_lsn())
        .collect::<Result<_>>()
        .unwrap()
}

#[test]
fn a_commit_is_one_batch_durable_whole_or_not_at_all() {
    for seed in 0..40 {
        let vfs = FaultVfs::new(seed);
        let wal = open(&vfs);
        let (a, b) = (entity(&vfs, 1), entity(&vfs, 2));
        let mut txn = WalTxn::new();
        txn.append(&a, vec![Record::new(1, "a0")]);
        txn.op(9, Bytes::from_static(b"first"));
        txn.append(&b, vec![Record::new(1, "b0")]);
        txn.append(&a, vec![Record::new(2, "a1")]);
        let first = wal.commit(txn).unwrap();
        assert_eq!(first.appends.len(), 2, "one batch per log");
        assert_eq!(first.appends[0].next_offset, 2);
        wal.wait(first.commit).unwrap();
        // A second commit that is never synced.
        let mut txn = WalTxn::new();
        txn.op(9, Bytes::from(vec![b'x'; 3000]));
        txn.append(&b, vec![Record::new(2, vec![b'y'; 3000])]);
        let second = wal.commit(txn).unwrap();
        assert!(second.commit > first.commit);
        assert_eq!(b.visible_next_offset(), 1, "not durable, not visible");
        drop((wal, a, b));
        vfs.crash(CrashMode::TornWrites);
        let wal = open(&vfs);
        let found = entries(&wal);
        let ops: Vec<&Bytes> = found
            .iter()
            .filter_map(|(_, e)| match e {
                WalEntry::Op { owner: 9, op } => Some(op),
                _ => None,
            })
            .collect();
        assert_eq!(ops[0], &Bytes::from_static(b"first"));
        let appends = found
            .iter()
            .filter(|(_, e)| matches!(e, WalEntry::Append { .. }))
            .count();
        // Either all of the second commit survived or none of it.
        assert!(
            (ops.len() == 1 && appends == 2) || (ops.len() == 2 && appends == 3),
            "seed {seed}: {} ops, {appends} appends",
            ops.len()
        );
    }
}

#[test]
fn a_checkpoint_moves_replay_on_and_drops_old_segments() {
    let vfs = FaultVfs::new(7);
    let wal = open(&vfs);
    let mut last = Commit::NONE;
    for i in 0..4000u32 {
        let mut txn = WalTxn::new();
        txn.op(1, Bytes::from(vec![(i % 251) as u8; 40_000]));
        last = wal.commit(txn).unwrap().commit;
    }
    wal.wait(last).unwrap();
    let size = wal.size_bytes();
    assert!(size > 2 * WAL_SEGMENT_BYTES);
    wal.set_checkpoint(2500).unwrap();
    assert!(wal.size_bytes() < size);
    assert_eq!(entries(&wal).first().unwrap().0, 2500);
    drop(wal);
    vfs.crash(CrashMode::DropUnsynced);
    let wal = open(&vfs);
    assert_eq!(wal.checkpoint_lsn(), 2500);
    let found = entries(&wal);
    assert_eq!(found.len(), 1500);
    assert_eq!(found[0].0, 2500);
}

#[test]
fn entries_decode_and_garbage_is_refused() {
    let record = entry_record(0, KIND_OP, 42, b"payload");
    assert_eq!(
        decode_entry(&record.body),
        Some(WalEntry::Op {
            owner: 42,
            op: Bytes::from_static(b"payload")
        })
    );
    assert_eq!(decode_entry(&Bytes::from_static(b"short")), None);
    let mut bad = record.body.to_vec();
    bad[0] = 77;
    assert_eq!(decode_entry(&Bytes::from(bad)), None);
}

#[test]
fn one_sync_shows_every_commit_it_covers_up_to_each_logs_last() {
    let vfs = FaultVfs::new(7);
    let wal = open(&vfs);
    let (a, b) = (entity(&vfs, 1), entity(&vfs, 2));
    // Three commits (a, b, a) synced by one fsync: `a` is shown through its later append.
    let mut last = Commit::NONE;
    for (log, body) in [(&a, "a0"), (&b, "b0"), (&a, "a1")] {
        let mut txn = WalTxn::new();
        txn.append(log, vec![Record::new(1, body)]);
        last = wal.commit(txn).unwrap().commit;
    }
    assert_eq!((a.visible_next_offset(), b.visible_next_offset()), (0, 0));
    wal.wait(last).unwrap();
    assert_eq!(a.visible_next_offset(), 2, "both of a's appends");
    assert_eq!(b.visible_next_offset(), 1);
}

#[test]
fn a_deferred_operation_is_written_by_the_next_commit_ahead_of_its_entries() {
    let vfs = FaultVfs::new(3);
    let wal = open(&vfs);
    let a = entity(&vfs, 1);
    wal.defer_op(1, Bytes::from_static(b"create a"));
    assert_eq!(wal.next_lsn(), 0, "nothing written yet");
    let mut txn = WalTxn::new();
    txn.append(&a, vec![Record::new(1, "a0")]);
    let commit = wal.commit(txn).unwrap().commit;
    wal.wait(commit).unwrap();
    // Deferred with nothing after it: written (and made durable) by a sync.
    wal.defer_op(2, Bytes::from_static(b"create b"));
    wal.sync().unwrap();
    drop((wal, a));
    vfs.crash(CrashMode::TornWrites);
    let wal = open(&vfs);
    let found: Vec<WalEntry> = entries(&wal).into_iter().map(|(_, e)| e).collect();
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(
        found[0],
        WalEntry::Op {
            owner: 1,
            op: Bytes::from_static(b"create a")
        },
        "the creation comes before the append it carries"
    );
    assert!(matches!(found[1], WalEntry::Append { log: 1, .. }));
    assert_eq!(
        found[2],
        WalEntry::Op {
            owner: 2,
            op: Bytes::from_static(b"create b")
        }
    );
}

#[test]
fn a_refused_commit_leaves_deferred_operations_for_the_next() {
    let vfs = FaultVfs::new(4);
    let wal = open(&vfs);
    let files = Arc::new(crate::storage::entity_log::LogShared::new(FileCache::new(
        Arc::new(vfs.clone()),
        4,
    )));
    let tiny = LogConfig {
        batch_bytes_max: 200,
        ..LogConfig::default()
    };
    let small = EntityLog::open(files, 1, "/data/e/1", tiny, Visibility::Durable).unwrap();
    let other = entity(&vfs, 2);
    wal.defer_op(2, Bytes::from_static(b"create other"));
    // Refused (the batch is over its log's limit): nothing written, the creation kept.
    let mut txn = WalTxn::new();
    txn.append(&small, vec![Record::new(1, vec![b'x'; 500])]);
    assert!(wal.commit(txn).is_err());
    assert_eq!(wal.next_lsn(), 0);
    let mut txn = WalTxn::new();
    txn.append(&other, vec![Record::new(1, "o0")]);
    let commit = wal.commit(txn).unwrap().commit;
    wal.wait(commit).unwrap();
    drop((wal, small, other));
    vfs.crash(CrashMode::TornWrites);
    let wal = open(&vfs);
    let found: Vec<WalEntry> = entries(&wal).into_iter().map(|(_, e)| e).collect();
    assert_eq!(
        found.first(),
        Some(&WalEntry::Op {
            owner: 2,
            op: Bytes::from_static(b"create other")
        }),
        "{found:?}"
    );
    assert!(matches!(
        found.get(1),
        Some(WalEntry::Append { log: 2, .. })
    ));
}
