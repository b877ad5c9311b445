//! Live Pub/Sub delivery: who is subscribed to which channel or pattern, and the fan-out of
//! published messages to their connections.
//!
//! Each subscribed connection has a bounded queue; a subscriber that falls that far behind is
//! disconnected (as Redis does past its pubsub output buffer limit) instead of growing memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use super::reply::Reply;
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

/// Messages a subscriber may have queued before it is disconnected.
pub const SUBSCRIBER_QUEUE_MAX: usize = 64 * 1024;

/// How to reach one connection.
#[derive(Clone)]
pub struct Subscriber {
    pub queue: mpsc::Sender<Reply>,
    pub killed: Arc<AtomicBool>,
    pub kill: Arc<Notify>,
}

impl Subscriber {
    /// Queue a message; a full queue disconnects the subscriber.
    fn deliver(&self, message: Reply) -> bool {
        if self.queue.try_send(message).is_ok() {
            return true;
        }
        self.killed.store(true, Ordering::Release);
        self.kill.notify_one();
        false
    }
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
        lock(&self.patterns).insert((pattern.clone(), client), subscriber.clone());
    }

    pub fn punsubscribe(&self, pattern: &Bytes, client: u64) {
        lock(&self.patterns).remove(&(pattern.clone(), client));
    }

    /// Deliver to channel subscribers and matching pattern subscribers; returns how many
    /// received it (a subscriber matching twice counts twice, as in Redis).
    pub fn publish(&self, channel: &Bytes, payload: &Bytes) -> u64 {
        let mut received = 0;
        if let Some(subscribers) = lock(&self.channels).get(channel) {
            for subscriber in subscribers.values() {
                let message = Reply::Push(vec![
                    Reply::bulk("message"),
                    Reply::Bulk(channel.clone()),
                    Reply::Bulk(payload.clone()),
                ]);
                received += u64::from(subscriber.deliver(message));
            }
        }
        for ((pattern, _), subscriber) in lock(&self.patterns).iter() {
            if glob_match(pattern, channel) {
                let message = Reply::Push(vec![
                    Reply::bulk("pmessage"),
                    Reply::Bulk(pattern.clone()),
                    Reply::Bulk(channel.clone()),
                    Reply::Bulk(payload.clone()),
                ]);
                received += u64::from(subscriber.deliver(message));
            }
        }
        received
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
