//! Live Pub/Sub delivery: who is subscribed to which channel or pattern, and the fan-out of
//! published messages to their connections.
//!
//! Each message queued for a subscriber is charged to its output account in bytes; a
//! subscriber past its pubsub output buffer limit is disconnected at once (as Redis does) and
//! taken out of the channel maps, instead of growing memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::output::{Charge, ClientOutput, OutputLimit};
use super::reply::Reply;
use crate::broker::budget::MemoryBudget;
use crate::protocol::glob::glob_match;

/// A connection's subscriptions, kept in the order they were made (Redis unsubscribes from
/// patterns in that order when told to leave them all). Lookups are linear: a client holds few.
#[derive(Clone, Debug, Default)]
pub struct Subscribed(Vec<Bytes>);

impl Subscribed {
    /// Add; false if already there.
    pub fn insert(&mut self, name: Bytes) -> bool {
        if self.0.contains(&name) {
            return false;
        }
        self.0.push(name);
        true
    }

    /// Remove; false if absent.
    pub fn remove(&mut self, name: &Bytes) -> bool {
        let before = self.0.len();
        self.0.retain(|n| n != name);
        self.0.len() != before
    }

    pub fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A message queued for a subscriber, with the bytes charged for it.
pub struct Queued {
    pub message: Reply,
    pub bytes: u64,
}

/// Bytes charged per queued message besides its channel, pattern and payload (its place in
/// the queue and its reply structure).
const MESSAGE_OVERHEAD_BYTES: u64 = 64;

/// How to reach one connection.
#[derive(Clone)]
pub struct Subscriber {
    pub queue: mpsc::UnboundedSender<Queued>,
    pub output: Arc<ClientOutput>,
}

/// What happened to a message offered to a subscriber.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Offer {
    Queued,
    /// Its connection is going (killed earlier).
    Refused,
    /// This message took it past its pubsub output limit: it has been killed.
    Closed,
    /// Queued, and the server-wide budget is now exceeded.
    QueuedOverTotal,
}

/// The output limit and budget a fan-out charges against, and the server clock.
pub struct Charging<'a> {
    pub limit: OutputLimit,
    pub budget: &'a MemoryBudget,
    pub now_ms: u64,
}

impl Subscriber {
    /// Queue a message, charging it to the subscriber's pubsub output limit (Redis's
    /// `client-output-buffer-limit pubsub`): past it the subscriber is killed instead.
    fn offer(&self, message: Reply, bytes: u64, charging: &Charging<'_>) -> Offer {
        if self.output.is_killed() {
            return Offer::Refused;
        }
        let charge = self
            .output
            .charge(bytes, charging.limit, charging.budget, charging.now_ms);
        if charge == Charge::OverClassLimit {
            self.output.release(bytes, charging.budget);
            return Offer::Closed;
        }
        if self.queue.send(Queued { message, bytes }).is_err() {
            // The connection is gone already.
            self.output.release(bytes, charging.budget);
            return Offer::Refused;
        }
        if charge == Charge::OverTotal {
            Offer::QueuedOverTotal
        } else {
            Offer::Queued
        }
    }
}

/// What a publish did: how many received it, who was closed for falling behind, and whether
/// the server-wide output budget needs an eviction.
#[derive(Debug, Default)]
pub struct Published {
    pub received: u64,
    pub closed: Vec<u64>,
    pub over_total: bool,
}

#[derive(Default)]
pub struct PubSub {
    channels: Mutex<HashMap<Bytes, BTreeMap<u64, Subscriber>>>,
    patterns: Mutex<BTreeMap<(Bytes, u64), Subscriber>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PubSub {
    pub fn subscribe(&self, channel: &Bytes, client: u64, subscriber: &Subscriber) {
        if subscriber.output.is_killed() {
            return;
        }
        lock(&self.channels)
            .entry(channel.clone())
            .or_default()
            .insert(client, subscriber.clone());
    }

    pub fn unsubscribe(&self, channel: &[u8], client: u64) {
        let mut channels = lock(&self.channels);
        if let Some(subscribers) = channels.get_mut(channel) {
            subscribers.remove(&client);
            if subscribers.is_empty() {
                channels.remove(channel);
            }
        }
    }

    pub fn psubscribe(&self, pattern: &Bytes, client: u64, subscriber: &Subscriber) {
        if subscriber.output.is_killed() {
            return;
        }
        lock(&self.patterns).insert((pattern.clone(), client), subscriber.clone());
    }

    pub fn punsubscribe(&self, pattern: &Bytes, client: u64) {
        lock(&self.patterns).remove(&(pattern.clone(), client));
    }

    /// Deliver to channel subscribers and matching pattern subscribers, counting how many
    /// received it (a subscriber matching twice counts twice, as in Redis). A subscriber past
    /// its output limit is killed and left out of the maps at once (see [`Published`]).
    pub fn publish(&self, channel: &Bytes, payload: &Bytes, charging: &Charging<'_>) -> Published {
        let mut published = Published::default();
        let note = |client: u64, offer: Offer, published: &mut Published| match offer {
            Offer::Queued => published.received += 1,
            Offer::QueuedOverTotal => {
                published.received += 1;
                published.over_total = true;
            }
            Offer::Refused => {}
            Offer::Closed => published.closed.push(client),
        };
        let bytes = (channel.len() + payload.len()) as u64 + MESSAGE_OVERHEAD_BYTES;
        if let Some(subscribers) = lock(&self.channels).get(channel) {
            for (&client, subscriber) in subscribers {
                let message = Reply::Push(vec![
                    Reply::bulk("message"),
                    Reply::Bulk(channel.clone()),
                    Reply::Bulk(payload.clone()),
                ]);
                note(
                    client,
                    subscriber.offer(message, bytes, charging),
                    &mut published,
                );
            }
        }
        for ((pattern, client), subscriber) in lock(&self.patterns).iter() {
            if glob_match(pattern, channel) {
                let message = Reply::Push(vec![
                    Reply::bulk("pmessage"),
                    Reply::Bulk(pattern.clone()),
                    Reply::Bulk(channel.clone()),
                    Reply::Bulk(payload.clone()),
                ]);
                let bytes = bytes + pattern.len() as u64;
                note(
                    *client,
                    subscriber.offer(message, bytes, charging),
                    &mut published,
                );
            }
        }
        for &client in &published.closed {
            self.remove_client(client);
        }
        published
    }

    /// Take a client out of every channel and pattern at once (it is being closed), so
    /// `PUBSUB NUMSUB` and `NUMPAT` stop counting it before its connection has wound down.
    pub fn remove_client(&self, client: u64) {
        lock(&self.channels).retain(|_, subscribers| {
            subscribers.remove(&client);
            !subscribers.is_empty()
        });
        lock(&self.patterns).retain(|(_, id), _| *id != client);
    }

    /// Channels with at least one subscriber, optionally matching a pattern.
    pub fn channels(&self, pattern: Option<&[u8]>) -> Vec<Bytes> {
        let channels = lock(&self.channels);
        let mut names: Vec<Bytes> = channels
            .keys()
            .filter(|c| pattern.is_none_or(|p| glob_match(p, c)))
            .cloned()
            .collect();
        names.sort();
        names
    }

    pub fn subscriber_count(&self, channel: &[u8]) -> usize {
        lock(&self.channels).get(channel).map_or(0, BTreeMap::len)
    }

    /// Distinct patterns subscribed to.
    pub fn pattern_count(&self) -> usize {
        let patterns = lock(&self.patterns);
        let mut distinct: Vec<&Bytes> = patterns.keys().map(|(p, _)| p).collect();
        distinct.dedup();
        distinct.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use tokio::sync::Notify;

    use super::*;

    fn subscriber() -> (Subscriber, mpsc::UnboundedReceiver<Queued>) {
        let (queue, messages) = mpsc::unbounded_channel();
        let output = ClientOutput::new(Arc::new(AtomicBool::new(false)), Arc::new(Notify::new()));
        let subscriber = Subscriber {
            queue,
            output: Arc::new(output),
        };
        (subscriber, messages)
    }

    #[test]
    fn a_subscriber_past_its_limit_is_closed_and_leaves_every_map_at_once() {
        let pubsub = PubSub::default();
        let budget = MemoryBudget::new(0);
        let (slow, _slow_queue) = subscriber();
        let (fast, mut fast_queue) = subscriber();
        let (news, other) = (Bytes::from("news"), Bytes::from("other"));
        pubsub.subscribe(&news, 1, &slow);
        pubsub.subscribe(&other, 1, &slow);
        pubsub.psubscribe(&Bytes::from("n*"), 1, &slow);
        pubsub.subscribe(&news, 2, &fast);
        let charging = Charging {
            limit: OutputLimit {
                hard_bytes: 1000,
                soft_bytes: 0,
                soft_seconds: 0,
            },
            budget: &budget,
            now_ms: 0,
        };
        let payload = Bytes::from(vec![b'x'; 300]);
        let mut closed_after = None;
        for n in 1..=10 {
            let published = pubsub.publish(&news, &payload, &charging);
            // The fast subscriber reads everything (and its charge is released).
            while let Ok(queued) = fast_queue.try_recv() {
                fast.output.release(queued.bytes, &budget);
            }
            if !published.closed.is_empty() {
                assert_eq!(published.closed, vec![1]);
                closed_after = Some(n);
                break;
            }
        }
        // 368 bytes per message, twice (channel and pattern): over 1000 on the second.
        assert_eq!(closed_after, Some(2));
        assert!(slow.output.is_killed() && !fast.output.is_killed());
        assert_eq!(pubsub.subscriber_count(b"news"), 1);
        assert_eq!(pubsub.subscriber_count(b"other"), 0);
        assert_eq!(pubsub.pattern_count(), 0);
        assert_eq!(pubsub.channels(None), vec![news.clone()]);
        // A killed client cannot subscribe again.
        pubsub.subscribe(&other, 1, &slow);
        assert_eq!(pubsub.subscriber_count(b"other"), 0);
        assert_eq!(pubsub.publish(&news, &payload, &charging).received, 1);
    }
}
