//! What all RESP connections share: the broker, the client registry (CLIENT LIST/KILL, INFO
//! clients), counters (INFO stats), the settings CONFIG SET may change, and the lock that makes
//! MULTI/EXEC run without interleaving.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Notify;

use super::output::{ClientOutput, OutputLimits};
use super::pubsub::Charging;
use super::request::RequestLimits;
use crate::broker::budget::MemoryBudget;
use crate::broker::Broker;
use crate::broker::Durability;

/// Settings CONFIG SET may change at run time.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `requirepass`: when set, clients must AUTH.
    pub password: Option<String>,
    pub clients_max: usize,
    /// `client-output-buffer-limit`.
    pub output_limits: OutputLimits,
}

/// Facts fixed at start, reported by INFO and CONFIG GET.
#[derive(Clone, Debug)]
pub struct ServerFacts {
    pub resp_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub durability: Durability,
    pub limits: RequestLimits,
}

/// One connected client, as CLIENT LIST shows it.
pub struct ClientEntry {
    pub addr: SocketAddr,
    pub local_addr: SocketAddr,
    pub name: Option<Bytes>,
    pub lib_name: Option<Bytes>,
    pub lib_ver: Option<Bytes>,
    pub created: Instant,
    /// Updated by the connection on every command without taking the registry lock.
    pub activity: Arc<ClientActivity>,
    pub blocked: bool,
    /// CLIENT KILL sets this and wakes the connection.
    pub killed: Arc<AtomicBool>,
    pub kill: Arc<Notify>,
    /// What the server holds for this client and has not yet written.
    pub output: Arc<ClientOutput>,
}

/// One admitted connection's place under `maxclients`; dropping it frees the place.
pub struct ClientSlot(Arc<AtomicUsize>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a connection records per command, lock-free.
#[derive(Default)]
pub struct ClientActivity {
    /// Milliseconds since the server started.
    pub last_active_ms: AtomicU64,
    /// Index of the last command in the command table, or `u64::MAX`.
    pub last_command: AtomicU64,
    /// 2 or 3.
    pub protocol: AtomicU64,
}

#[derive(Default)]
pub struct Stats {
    pub connections_received: AtomicU64,
    pub commands_processed: AtomicU64,
    pub rejected_connections: AtomicU64,
}

pub struct RespShared {
    pub broker: Arc<Broker>,
    pub settings: RwLock<Settings>,
    pub facts: ServerFacts,
    pub clients: Mutex<BTreeMap<u64, ClientEntry>>,
    /// Connections admitted and not yet finished (see [`RespShared::admit`]); the registry
    /// above lags behind it while a new connection task starts.
    admitted: Arc<AtomicUsize>,
    pub stats: Stats,
    pub started: Instant,
    pub pubsub: super::pubsub::PubSub,
    /// Everything held for clients and not yet written, RESP and AMQP
    /// (`maxmemory-clients`).
    pub output_budget: Arc<MemoryBudget>,
    /// Commands run holding it shared; EXEC holds it exclusively, so a transaction's commands
    /// run with nothing in between.
    pub exec_lock: RwLock<()>,
}

impl RespShared {
    pub fn new(
        broker: Arc<Broker>,
        settings: Settings,
        facts: ServerFacts,
        output_budget: Arc<MemoryBudget>,
    ) -> RespShared {
        RespShared {
            output_budget,
            broker,
            settings: RwLock::new(settings),
            facts,
            clients: Mutex::new(BTreeMap::new()),
            admitted: Arc::new(AtomicUsize::new(0)),
            stats: Stats::default(),
            started: Instant::now(),
            pubsub: super::pubsub::PubSub::default(),
            exec_lock: RwLock::new(()),
        }
    }

    /// Take a connection slot if fewer than `maxclients` connections are admitted; the slot
    /// is given back when the returned guard drops (when the connection task ends). Counting
    /// here, at accept time and atomically, keeps the limit exact under a burst of connects,
    /// as Redis's is: a registry filled in later by each new task let 129 of a 2,000-socket
    /// burst in past `maxclients 100`.
    pub fn admit(&self) -> Option<ClientSlot> {
        let max = self.settings().clients_max;
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(ClientSlot(Arc::clone(&self.admitted)))
    }

    pub fn clients(&self) -> MutexGuard<'_, BTreeMap<u64, ClientEntry>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The output buffer limits (read without copying the other settings: this is on every
    /// publish).
    pub fn output_limits(&self) -> OutputLimits {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .output_limits
    }

    /// Milliseconds since the server started: the clock of soft output limits.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// PUBLISH's fan-out under the pubsub output limit; subscribers it closes leave every
    /// channel at once, and an exceeded total evicts clients. Returns how many received it.
    pub fn publish(&self, channel: &Bytes, payload: &Bytes) -> u64 {
        let charging = Charging {
            limit: self.output_limits().pubsub,
            budget: &self.output_budget,
            now_ms: self.now_ms(),
        };
        let published = self.pubsub.publish(channel, payload, &charging);
        for &client in &published.closed {
            tracing::warn!(
                client,
                "closing subscriber over its pubsub output buffer limit"
            );
        }
        if published.over_total {
            self.evict_over_budget();
        }
        published.received
    }

    /// While more is held for clients than `maxmemory-clients` allows, close the RESP client
    /// holding the most, as Redis 7's client eviction does (what AMQP holds is bounded by its
    /// own back-pressure, not evicted). An evicted subscriber leaves its channels at once.
    pub fn evict_over_budget(&self) {
        while self.output_budget.is_over() {
            let largest = self
                .clients()
                .iter()
                .filter(|(_, c)| !c.output.is_killed())
                .max_by_key(|(_, c)| c.output.held())
                .map(|(&id, c)| (id, Arc::clone(&c.output)));
            let Some((id, output)) = largest.filter(|(_, o)| o.held() > 0) else {
                return;
            };
            if output.evict(&self.output_budget) {
                tracing::warn!(
                    client = id,
                    bytes = output.held(),
                    "evicting the client holding the most output (maxmemory-clients)"
                );
                self.pubsub.remove_client(id);
            }
        }
    }

    pub fn password_required(&self) -> bool {
        self.settings().password.is_some()
    }

    pub fn count_commands(&self, n: u64) {
        if n > 0 {
            self.stats
                .commands_processed
                .fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Kill clients matching `pred`; returns how many.
    pub fn kill_clients(&self, pred: impl Fn(u64, &ClientEntry) -> bool) -> u64 {
        let clients = self.clients();
        let mut killed = 0;
        for (id, client) in clients.iter() {
            if pred(*id, client) {
                client.killed.store(true, Ordering::Release);
                client.kill.notify_one();
                killed += 1;
            }
        }
        killed
    }
}
