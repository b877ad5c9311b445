//! Embedding the broker: a stream with a consumer group, every change awaited until durable.
//! The README's "Embedding" section shows this file; `cargo test` builds it, and
//! `cargo run --example embed` runs it in a temporary directory.

use bytes::Bytes;
use potok::broker::{Broker, BrokerConfig, Durability, GroupStart, IdSpec, StreamId};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let broker = Broker::open(
        dir.path(),
        BrokerConfig::with_durability(Durability::Always),
    )?;

    let orders = broker.stream_or_create(b"orders")?;
    let added = orders.add(
        IdSpec::Auto,
        vec![(Bytes::from("item"), Bytes::from("book"))],
    )?;
    broker.wait(added.commit)?; // durable now: safe to acknowledge the producer

    let group = Bytes::from("shipping");
    broker.wait(orders.create_group(&group, GroupStart::Id(StreamId::MIN), None)?)?;
    let (entries, delivered) =
        orders.read_group_new(&group, &Bytes::from("worker-1"), Some(10), false, u64::MAX)?;
    broker.wait(delivered)?; // the delivery and its pending entry survive a crash
    for entry in &entries {
        println!("{} {:?}", entry.id, entry.fields);
    }
    let ids: Vec<StreamId> = entries.iter().map(|e| e.id).collect();
    let (acked, commit) = orders.ack(&group, &ids)?;
    broker.wait(commit)?;
    assert_eq!(acked, 1);
    broker.close()?; // syncs the write-ahead log and stops the background work
    Ok(())
}
