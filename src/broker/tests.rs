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

fn add(broker: &Broker, stream: &Stream, ms: u64) {
    let added = stream
        .add(
            IdSpec::Explicit(StreamId::new(ms, 1)),
            vec![(Bytes::from("f"), Bytes::from("v"))],
        )
        .unwrap();
    broker.wait(added.commit).unwrap();
}

#[test]
fn streams_persist_and_deletes_free_their_directories() {
    let vfs = FaultVfs::new(1);
    let broker = open(&vfs);
    let s = broker.stream_or_create(b"../evil").unwrap();
    add(&broker, &s, 1);
    broker.stream_or_create(b"other").unwrap();
    broker.checkpoint().unwrap();
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
    let (existed, commit) = broker.delete(b"../evil").unwrap();
    assert!(existed);
    broker.wait(commit).unwrap();
    assert!(!broker.delete(b"../evil").unwrap().0);
    broker.tick();
    assert!(!vfs.exists(Path::new("/data/streams/1")));
    drop((s, broker));
    let broker = open(&vfs);
    assert_eq!(
        broker.names(),
        vec![(Bytes::from("other"), EntityKind::Stream)]
    );
}

#[test]
fn everything_waited_for_survives_a_crash_with_or_without_checkpoints() {
    for checkpoint in [false, true] {
        let vfs = FaultVfs::new(2);
        let broker = open(&vfs);
        for n in 0..50u64 {
            let name = format!("s{}", n % 7);
            let stream = broker.stream_or_create(name.as_bytes()).unwrap();
            add(&broker, &stream, n + 1);
            if checkpoint && n % 10 == 9 {
                broker.checkpoint().unwrap();
            }
        }
        let (_, commit) = broker.rename(b"s1", b"renamed").unwrap();
        broker.wait(commit).unwrap();
        let (_, commit) = broker.delete(b"s2").unwrap();
        broker.wait(commit).unwrap();
        // Not waited for: may or may not survive.
        let s3 = broker.stream(b"s3").unwrap();
        s3.add(IdSpec::Auto, vec![(Bytes::from("f"), Bytes::from("v"))])
            .unwrap();
        drop(s3);
        vfs.crash(CrashMode::TornWrites);
        drop(broker);
        let broker = open(&vfs);
        let names: Vec<Bytes> = broker.names().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["renamed", "s0", "s3", "s4", "s5", "s6"]
                .map(|n: &'static str| Bytes::from_static(n.as_bytes()))
                .to_vec(),
            "checkpoint {checkpoint}"
        );
        let s0 = broker.stream(b"s0").unwrap();
        let ids: Vec<u64> = s0
            .range(StreamId::MIN, StreamId::MAX, None)
            .unwrap()
            .iter()
            .map(|e| e.id.ms)
            .collect();
        assert_eq!(ids, vec![1, 8, 15, 22, 29, 36, 43, 50]);
        assert!(broker.stream(b"s3").unwrap().len() >= 7);
        // The restart's replay is itself checkpointed, and survives another crash.
        broker.checkpoint().unwrap();
        vfs.crash(CrashMode::DropUnsynced);
        drop((s0, broker));
        let broker = open(&vfs);
        assert_eq!(broker.stream(b"renamed").unwrap().len(), 7);
    }
}

#[test]
fn idle_streams_are_evicted_and_reopened_on_demand() {
    let vfs = FaultVfs::new(3);
    let broker = open(&vfs);
    // More than one chunk of the sweep's write-lock holds.
    let count = super::maintenance::EVICTED_PER_LOCK as u64 + 904;
    for n in 0..count {
        let stream = broker.stream_or_create(format!("k{n}").as_bytes()).unwrap();
        add(&broker, &stream, n + 1);
    }
    broker.checkpoint().unwrap();
    broker.evict_idle();
    // Held by someone, or used since the first sweep: kept.
    let held = broker.stream(b"k7").unwrap();
    drop(broker.stream(b"k8").unwrap());
    broker.evict_idle();
    let open: Vec<Vec<u8>> = {
        let state = broker.read();
        let mut open: Vec<Vec<u8>> = state
            .streams
            .keys()
            .map(|k| k.as_bytes().to_vec())
            .collect();
        open.sort();
        open
    };
    assert_eq!(
        open,
        vec![b"k7".to_vec(), b"k8".to_vec()],
        "the rest idle and settled"
    );
    for n in [5, count - 1] {
        let stream = broker.stream(format!("k{n}").as_bytes()).unwrap();
        assert_eq!(stream.last_id(), StreamId::new(n + 1, 1));
    }
    assert_eq!(held.last_id(), StreamId::new(8, 1));
    assert_eq!(broker.len(), count as usize);
}

#[test]
fn old_data_directories_are_refused_with_a_clear_error() {
    let vfs = FaultVfs::new(4);
    vfs.create_dir_all(Path::new("/data")).unwrap();
    vfs.open(
        Path::new("/data/catalog"),
        crate::storage::io::OpenMode::CreateNew,
    )
    .unwrap();
    let error = Broker::open_with(
        Arc::new(vfs.clone()),
        Path::new("/data"),
        BrokerConfig::default(),
    )
    .err()
    .unwrap();
    assert!(error.to_string().contains("older Potok"), "{error}");
}

#[test]
fn one_commit_over_many_streams_takes_every_batch_even_for_a_stream_named_twice() {
    let vfs = FaultVfs::new(9);
    let broker = open(&vfs);
    let a = broker.stream_or_create(b"a").unwrap();
    let b = broker.stream_or_create(b"b").unwrap();
    let fields = |v: &str| vec![(Bytes::from("f"), Bytes::from(v.to_string()))];
    // `b` given twice (indices 0 and 2), with entries for it through both.
    let mut entries = vec![(0, fields("b1")), (1, fields("a1")), (2, fields("b2"))];
    let (added, commit) = Stream::add_auto_entries(&[&*b, &*a, &*b], &mut entries).unwrap();
    broker.wait(commit).unwrap();
    let ids: Vec<StreamId> = added
        .iter()
        .map(|a| match a {
            AutoAdded::Id(id) => *id,
            other => panic!("{other:?}"),
        })
        .collect();
    // The two entries to `b` keep their order.
    assert!(ids[0] < ids[2]);
    let values: Vec<Bytes> = b
        .range(StreamId::MIN, StreamId::MAX, None)
        .unwrap()
        .into_iter()
        .map(|e| e.fields[0].1.clone())
        .collect();
    assert_eq!(values, [Bytes::from("b1"), Bytes::from("b2")]);
    assert_eq!(a.len(), 1);
}

#[test]
fn a_stream_deleted_meanwhile_refuses_only_its_own_entries() {
    let vfs = FaultVfs::new(11);
    let broker = open(&vfs);
    let a = broker.stream_or_create(b"a").unwrap();
    let b = broker.stream_or_create(b"b").unwrap();
    let fields = |v: &str| vec![(Bytes::from("f"), Bytes::from(v.to_string()))];
    // `a` is deleted after its handle was taken (another client's DEL).
    let (deleted, commit) = broker.delete(b"a").unwrap();
    assert!(deleted);
    broker.wait(commit).unwrap();
    let mut entries = vec![(0, fields("a1")), (1, fields("b1")), (0, fields("a2"))];
    let (added, commit) = Stream::add_auto_entries(&[&*a, &*b], &mut entries).unwrap();
    broker.wait(commit).unwrap();
    assert_eq!(added[0], AutoAdded::Deleted);
    assert!(matches!(added[1], AutoAdded::Id(_)));
    assert_eq!(added[2], AutoAdded::Deleted);
    // The refused entries keep their fields, for the caller to add where the key points now.
    assert_eq!(entries[0].1, fields("a1"));
    assert_eq!(entries[2].1, fields("a2"));
    assert_eq!(b.len(), 1);
}
