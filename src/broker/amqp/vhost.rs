//! The virtual host `/`: exchanges, bindings and queues, and how their durable parts change.
//!
//! Durable queues are entities of the catalog (kind queue, their declaration as the entry's
//! configuration); durable exchanges and the bindings between durable ends are the
//! *definitions*. Every change is a commit in the write-ahead log, returned to the caller, who
//! answers (`declare-ok`, `bind-ok`, `delete-ok`, `purge-ok`) once it is durable. A change
//! records exactly what it did: deleting a queue commits its catalog deletion together with
//! the removal of every stored binding to it and of any auto-delete exchange left without
//! bindings, so replay never has to work out a cascade.
//!
//! Definition operations (owner 0, domain [`AMQP`](crate::broker::store::domain::AMQP)):
//! `tag u8` then, for DeclareExchange (1) and Bind (3) / Unbind (4), a [`Definitions`] holding
//! the one exchange or binding; for DeleteExchange (2) `name str`. A checkpoint stores the
//! whole definitions (`a`: `lsn u64 | Definitions`) when they changed. Non-durable queues are
//! not recorded anywhere; their logs live in `volatile/<id>/`, emptied at every start.
//!
//! After a restart a durable queue is opened (its log read, its backlog counted) on first use,
//! so startup costs the same with a hundred thousand idle queues as with one. Queues with
//! work of their own to do (message TTL, a dead-letter exchange, `x-expires`, stream
//! retention by age) are opened at once, and a checkpoint opens any queue whose changes are
//! still only in the write-ahead log.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use byteorder::{ByteOrder, LittleEndian as LE};
use bytes::Bytes;

use super::definitions::{BindingDef, Definitions, ExchangeDef, QueueDef};
use super::queue::{DeadLetter, Queue, QueueError, QueueOptions};
use super::{
    args, check_equivalent, check_queue_args, code, generated_name, queue_log_config, AmqpError,
    Binding, Destination, Exchange, ExchangeDeclare, ExchangeKind, QueueDeclare, QueueDeclared,
};
use crate::broker::catalog::{self, CatalogOp, EntityKind};
use crate::broker::store::{domain, op_bytes, Store};
use crate::storage::meta_store::MetaItem;
use crate::storage::wal::{WalEntry, WalTxn};
use crate::storage::{self, Commit, LogConfig};

/// The metadata store key of the definitions snapshot.
pub const DEFINITIONS_KEY: &[u8] = b"a";
/// Where non-durable queues keep what their memory cannot.
pub const VOLATILE_DIR: &str = "volatile";

const OP_DECLARE_EXCHANGE: u8 = 1;
const OP_DELETE_EXCHANGE: u8 = 2;
const OP_BIND: u8 = 3;
const OP_UNBIND: u8 = 4;

/// Exchanges every vhost has; none can be deleted or redeclared differently.
pub const PREDECLARED: &[(&str, ExchangeKind)] = &[
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

/// A queue that dead letters reached, with their body bytes.
type Arrival = (Arc<Queue>, u64);

/// Most dead-lettering rounds one call follows (a dead letter can make its target drop a
/// message, which is dead-lettered in turn).
const DEAD_LETTER_ROUNDS_MAX: usize = 64;

/// A durable queue as recovery found it, not opened yet.
struct ClosedQueue {
    options: QueueOptions,
    /// Its acknowledgement snapshot from the metadata store.
    snapshot: Option<Bytes>,
    /// What the write-ahead log holds for it since the checkpoint.
    replay: Vec<(u64, WalEntry)>,
}

enum Slot {
    Open(Arc<Queue>),
    Closed(Box<ClosedQueue>),
}

impl Slot {
    fn open(&self) -> Option<&Arc<Queue>> {
        match self {
            Slot::Open(queue) => Some(queue),
            Slot::Closed(_) => None,
        }
    }
}

struct VhostState {
    exchanges: HashMap<String, Exchange>,
    queues: HashMap<String, Slot>,
    /// LSN of the last definitions change applied.
    defs_lsn: u64,
    /// Definitions changed since the last checkpoint.
    defs_dirty: bool,
    /// Definition operations of the change under way, committed with it.
    changes: Vec<Vec<u8>>,
}

/// What the broker's recovery hands the virtual host.
#[derive(Default)]
pub struct VhostRecovery {
    /// The metadata store's definitions snapshot.
    pub definitions: Option<Bytes>,
    /// Queues' acknowledgement snapshots by id.
    pub queue_snapshots: HashMap<u64, Bytes>,
    /// What the write-ahead log holds for each queue since the checkpoint.
    pub replay: HashMap<u64, Vec<(u64, WalEntry)>>,
    /// Definition operations since the checkpoint: (LSN, operation body).
    pub definition_ops: Vec<(u64, Bytes)>,
}

/// The virtual host `/`.
pub struct VirtualHost {
    store: Arc<Store>,
    /// Template for durable queues' logs.
    queue_log: LogConfig,
    state: Mutex<VhostState>,
}

fn internal(e: impl std::fmt::Display) -> AmqpError {
    AmqpError::new(code::INTERNAL_ERROR, e.to_string())
}

fn predeclared(name: &str) -> bool {
    PREDECLARED.iter().any(|(n, _)| *n == name)
}

// Format: { tag u8 | Definitions with one exchange or binding, or name str }
fn encode_def_op(tag: u8, defs: &Definitions) -> Vec<u8> {
    let mut op = vec![tag];
    // Encoding a table only fails for values Potok never builds.
    match defs.encode() {
        Ok(bytes) => op.extend_from_slice(&bytes),
        Err(e) => tracing::error!(error = %e, "encoding a definition failed"),
    }
    op
}

fn binding_op(tag: u8, source: &str, binding: &Binding) -> Vec<u8> {
    let defs = Definitions {
        bindings: vec![BindingDef {
            source: source.to_string(),
            binding: binding.clone(),
        }],
        ..Definitions::default()
    };
    encode_def_op(tag, &defs)
}

fn exchange_def(exchange: &Exchange) -> ExchangeDef {
    ExchangeDef {
        name: exchange.name.clone(),
        kind: exchange.kind,
        auto_delete: exchange.auto_delete,
        internal: exchange.internal,
        arguments: exchange.arguments.clone(),
    }
}

fn new_exchange(def: &ExchangeDef) -> Exchange {
    let mut exchange = Exchange::new(&def.name, def.kind, true);
    exchange.auto_delete = def.auto_delete;
    exchange.internal = def.internal;
    exchange.arguments = def.arguments.clone();
    exchange
}

impl VhostState {
    /// Whether a binding from `source` to `destination` is stored (both ends durable).
    fn stored(&self, source: &str, destination: &Destination) -> bool {
        let source_durable = self.exchanges.get(source).is_some_and(|e| e.durable);
        let destination_durable = match destination {
            // Only durable queues are ever closed.
            Destination::Queue(q) => self
                .queues
                .get(q)
                .is_some_and(|slot| slot.open().is_none_or(|q| q.durable)),
            Destination::Exchange(x) => self.exchanges.get(x).is_some_and(|x| x.durable),
        };
        source_durable && destination_durable
    }

    /// Apply a recorded definition operation (replay); `false` for bytes that are not one.
    fn apply(&mut self, op: &[u8]) -> bool {
        let Some((&tag, body)) = op.split_first() else {
            return false;
        };
        if tag == OP_DELETE_EXCHANGE {
            let Ok(name) = String::from_utf8(body.to_vec()) else {
                return false;
            };
            self.exchanges.remove(&name);
            return true;
        }
        let Ok(defs) = Definitions::decode(body) else {
            return false;
        };
        match tag {
            OP_DECLARE_EXCHANGE => {
                for def in &defs.exchanges {
                    self.exchanges
                        .entry(def.name.clone())
                        .or_insert_with(|| new_exchange(def));
                }
            }
            OP_BIND | OP_UNBIND => {
                for def in defs.bindings {
                    if let Some(exchange) = self.exchanges.get_mut(&def.source) {
                        exchange.bindings.retain(|b| *b != def.binding);
                        if tag == OP_BIND {
                            exchange.bindings.push(def.binding);
                        }
                    }
                }
            }
            _ => return false,
        }
        true
    }

    /// Remove every binding to `gone` (a deleted queue or exchange); auto-delete exchanges
    /// left without bindings go too. Stored bindings and exchanges removed are recorded.
    fn unbind_everywhere(&mut self, gone: &Destination, was_stored: bool) {
        let mut emptied = Vec::new();
        let mut changes = Vec::new();
        for e in self.exchanges.values_mut() {
            let before = e.bindings.len();
            let stored_source = e.durable;
            e.bindings.retain(|b| {
                let keep = b.destination != *gone;
                if !keep && stored_source && was_stored {
                    changes.push(binding_op(OP_UNBIND, &e.name, b));
                }
                keep
            });
            if e.auto_delete && before > 0 && e.bindings.is_empty() {
                emptied.push(e.name.clone());
            }
        }
        self.changes.extend(changes);
        for name in emptied {
            self.delete_exchange(&name);
        }
    }

    /// Remove an exchange (recorded if durable) and every binding to it.
    fn delete_exchange(&mut self, name: &str) {
        let Some(exchange) = self.exchanges.remove(name) else {
            return;
        };
        if exchange.durable {
            let mut op = vec![OP_DELETE_EXCHANGE];
            op.extend_from_slice(name.as_bytes());
            self.changes.push(op);
        }
        self.unbind_everywhere(&Destination::Exchange(name.to_string()), exchange.durable);
    }

    /// The stored definitions: durable exchanges and bindings between durable ends.
    fn definitions(&self) -> Definitions {
        let mut defs = Definitions::default();
        let mut names: Vec<&String> = self.exchanges.keys().collect();
        names.sort();
        for name in names {
            let e = &self.exchanges[name];
            if e.durable && !predeclared(name) {
                defs.exchanges.push(exchange_def(e));
            }
            for binding in &e.bindings {
                if self.stored(name, &binding.destination) {
                    defs.bindings.push(BindingDef {
                        source: name.clone(),
                        binding: binding.clone(),
                    });
                }
            }
        }
        defs
    }
}

impl VirtualHost {
    /// Open the virtual host: stored definitions and durable queues come back (opened on first
    /// use, or now if they have timed work); what non-durable queues left is removed.
    pub fn open(
        store: Arc<Store>,
        queue_log: LogConfig,
        mut recovery: VhostRecovery,
    ) -> storage::Result<VirtualHost> {
        let volatile = store.dir().join(VOLATILE_DIR);
        if store.vfs().exists(&volatile) {
            store.vfs().remove_dir_all(&volatile)?;
        }
        let mut state = VhostState {
            exchanges: PREDECLARED
                .iter()
                .map(|(name, kind)| (name.to_string(), Exchange::new(name, *kind, true)))
                .collect(),
            queues: HashMap::new(),
            defs_lsn: 0,
            defs_dirty: false,
            changes: Vec::new(),
        };
        if let Some(value) = &recovery.definitions {
            let defs = value
                .get(8..)
                .and_then(|body| Definitions::decode(body).ok())
                .ok_or_else(|| {
                    storage::Error::InvalidArgument("damaged AMQP definitions".into())
                })?;
            state.defs_lsn = LE::read_u64(value);
            for def in &defs.exchanges {
                state.exchanges.insert(def.name.clone(), new_exchange(def));
            }
            for def in defs.bindings {
                if let Some(exchange) = state.exchanges.get_mut(&def.source) {
                    exchange.bindings.push(def.binding);
                }
            }
        }
        for (lsn, op) in std::mem::take(&mut recovery.definition_ops) {
            if lsn > state.defs_lsn {
                if !state.apply(&op) {
                    tracing::error!(lsn, "skipping an undecodable AMQP definition operation");
                }
                state.defs_lsn = lsn;
                state.defs_dirty = true;
            }
        }
        let entries: Vec<_> = {
            let mut catalog = store.catalog();
            let ids: Vec<u64> = catalog.names(EntityKind::Queue).map(|(_, id)| id).collect();
            ids.into_iter()
                .filter_map(|id| catalog.entry(id).cloned())
                .collect()
        };
        let vhost = VirtualHost {
            store,
            queue_log,
            state: Mutex::new(state),
        };
        let mut busy = Vec::new();
        {
            let mut state = vhost.lock();
            for entry in entries {
                let Some(def) = Definitions::decode(&entry.config)
                    .ok()
                    .and_then(|d| d.queues.into_iter().next())
                else {
                    tracing::error!(queue = %String::from_utf8_lossy(&entry.name), "skipping a queue with a damaged declaration");
                    continue;
                };
                let options = QueueOptions {
                    name: def.name.clone(),
                    id: entry.id,
                    durable: true,
                    auto_delete: def.auto_delete,
                    exclusive_owner: None,
                    arguments: def.arguments,
                };
                let parsed =
                    args::QueueArgs::parse(&options.name, &options.arguments).unwrap_or_default();
                if parsed.message_ttl_ms.is_some()
                    || parsed.dead_letter_exchange.is_some()
                    || parsed.expires_ms.is_some()
                    || parsed.max_age.is_some()
                {
                    busy.push(def.name.clone());
                }
                let closed = ClosedQueue {
                    options,
                    snapshot: recovery.queue_snapshots.remove(&entry.id),
                    replay: recovery.replay.remove(&entry.id).unwrap_or_default(),
                };
                state
                    .queues
                    .insert(def.name, Slot::Closed(Box::new(closed)));
            }
            for name in busy {
                vhost.open_in(&mut state, &name)?;
            }
        }
        Ok(vhost)
    }

    /// The queue `name`, opened now if it was not yet. An error opening it leaves it closed.
    fn open_in(&self, state: &mut VhostState, name: &str) -> storage::Result<Option<Arc<Queue>>> {
        let closed = match state.queues.get(name) {
            None => return Ok(None),
            Some(Slot::Open(queue)) => return Ok(Some(Arc::clone(queue))),
            Some(Slot::Closed(closed)) => closed,
        };
        let queue = Arc::new(self.open_queue(
            closed.options.clone(),
            closed.snapshot.as_ref(),
            closed.replay.clone(),
        )?);
        state
            .queues
            .insert(name.to_string(), Slot::Open(Arc::clone(&queue)));
        Ok(Some(queue))
    }

    /// [`VirtualHost::open_in`] with its error as the AMQP one.
    fn queue_in(
        &self,
        state: &mut VhostState,
        name: &str,
    ) -> Result<Option<Arc<Queue>>, AmqpError> {
        self.open_in(state, name).map_err(|e| {
            tracing::error!(queue = name, error = %e, "opening a queue failed");
            internal(e)
        })
    }

    /// The queues open now.
    fn open_queues(state: &VhostState) -> impl Iterator<Item = &Arc<Queue>> {
        state.queues.values().filter_map(Slot::open)
    }

    /// Route again the dead letters a crash left unrouted (recovery, once the broker is open).
    pub fn recover_dead_letters(&self) -> storage::Result<()> {
        for queue in self.queues() {
            queue.recover_dead_letters()?;
            if let Err(e) = self.route_dead_letters(&queue) {
                tracing::warn!(queue = %queue.name, error = %e.text, "routing recovered dead letters failed");
            }
        }
        Ok(())
    }

    fn open_queue(
        &self,
        options: QueueOptions,
        snapshot: Option<&Bytes>,
        replay: Vec<(u64, WalEntry)>,
    ) -> storage::Result<Queue> {
        let parsed = args::QueueArgs::parse(&options.name, &options.arguments).unwrap_or_default();
        let log = queue_log_config(&self.queue_log, options.durable, &parsed);
        let dir = self.queue_dir(options.id, options.durable);
        Queue::open(
            Arc::clone(&self.store),
            &dir,
            log,
            options,
            snapshot,
            replay,
        )
    }

    fn queue_dir(&self, id: u64, durable: bool) -> PathBuf {
        let kind = if durable {
            EntityKind::Queue.dir_name()
        } else {
            VOLATILE_DIR
        };
        self.store.dir().join(kind).join(id.to_string())
    }

    fn lock(&self) -> MutexGuard<'_, VhostState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commit the definition changes recorded in `state` with `txn`.
    fn commit_changes(&self, state: &mut VhostState, mut txn: WalTxn) -> Result<Commit, AmqpError> {
        for op in state.changes.drain(..) {
            txn.op(0, op_bytes(domain::AMQP, &op));
            state.defs_dirty = true;
        }
        let commit = self.store.commit(txn).map_err(internal)?.commit;
        if state.defs_dirty {
            state.defs_lsn = state.defs_lsn.max(commit.lsn());
        }
        Ok(commit)
    }

    pub fn declare_exchange(&self, d: ExchangeDeclare) -> Result<Commit, AmqpError> {
        let mut state = self.lock();
        if let Some(existing) = state.exchanges.get(&d.name) {
            if d.passive {
                return Ok(Commit::NONE);
            }
            // Predeclared exchanges too: an equivalent redeclaration is fine.
            check_equivalent(
                "exchange",
                &d.name,
                &[
                    ("type", d.kind.clone(), existing.kind.name().to_string()),
                    (
                        "durable",
                        d.durable.to_string(),
                        existing.durable.to_string(),
                    ),
                    (
                        "auto_delete",
                        d.auto_delete.to_string(),
                        existing.auto_delete.to_string(),
                    ),
                    (
                        "internal",
                        d.internal.to_string(),
                        existing.internal.to_string(),
                    ),
                ],
            )?;
            return Ok(Commit::NONE);
        }
        if d.passive {
            return Err(AmqpError::no_exchange(&d.name));
        }
        let Some(kind) = ExchangeKind::parse(&d.kind) else {
            return Err(AmqpError::new(
                code::COMMAND_INVALID,
                format!("unknown exchange type '{}'", d.kind),
            ));
        };
        if d.name.starts_with("amq.") {
            return Err(AmqpError::new(
                code::ACCESS_REFUSED,
                format!(
                    "exchange name '{}' contains reserved prefix 'amq.*'",
                    d.name
                ),
            ));
        }
        let mut exchange = Exchange::new(&d.name, kind, d.durable);
        exchange.auto_delete = d.auto_delete;
        exchange.internal = d.internal;
        exchange.arguments = d.arguments;
        if exchange.durable {
            let defs = Definitions {
                exchanges: vec![exchange_def(&exchange)],
                ..Definitions::default()
            };
            state
                .changes
                .push(encode_def_op(OP_DECLARE_EXCHANGE, &defs));
        }
        state.exchanges.insert(d.name.clone(), exchange);
        match self.commit_changes(&mut state, WalTxn::new()) {
            Ok(commit) => Ok(commit),
            Err(e) => {
                state.exchanges.remove(&d.name);
                Err(e)
            }
        }
    }

    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<Commit, AmqpError> {
        let mut state = self.lock();
        if name.is_empty() {
            return Err(AmqpError::new(
                code::ACCESS_REFUSED,
                "operation not permitted on the default exchange",
            ));
        }
        if predeclared(name) {
            return Err(AmqpError::new(
                code::ACCESS_REFUSED,
                format!("deletion of system exchange '{name}' in vhost '/' not allowed"),
            ));
        }
        let Some(exchange) = state.exchanges.get(name) else {
            // RabbitMQ answers delete-ok for an exchange that does not exist.
            return Ok(Commit::NONE);
        };
        let bound_as_destination = state.exchanges.values().any(|e| {
            e.bindings
                .iter()
                .any(|b| b.destination == Destination::Exchange(name.to_string()))
        });
        if if_unused && (!exchange.bindings.is_empty() || bound_as_destination) {
            return Err(AmqpError::new(
                code::PRECONDITION_FAILED,
                format!("exchange '{name}' in vhost '/' in use"),
            ));
        }
        state.delete_exchange(name);
        self.commit_changes(&mut state, WalTxn::new())
    }

    /// Bind `destination` to `source` (queue.bind and exchange.bind).
    pub fn bind(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: amq_protocol::types::FieldTable,
    ) -> Result<Commit, AmqpError> {
        self.change_binding(source, destination, routing_key, arguments, true)
    }

    /// Remove a binding (queue.unbind and exchange.unbind); an auto-delete exchange whose last
    /// binding goes is deleted.
    pub fn unbind(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: amq_protocol::types::FieldTable,
    ) -> Result<Commit, AmqpError> {
        self.change_binding(source, destination, routing_key, arguments, false)
    }

    fn change_binding(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: amq_protocol::types::FieldTable,
        bind: bool,
    ) -> Result<Commit, AmqpError> {
        let mut state = self.lock();
        if source.is_empty() {
            return Err(AmqpError::new(
                code::ACCESS_REFUSED,
                "operation not permitted on the default exchange",
            ));
        }
        match &destination {
            Destination::Queue(q) if !state.queues.contains_key(q) => {
                return Err(AmqpError::no_queue(q))
            }
            Destination::Exchange(x) if !state.exchanges.contains_key(x) => {
                return Err(AmqpError::no_exchange(x))
            }
            _ => {}
        }
        let stored = state.stored(source, &destination);
        let exchange = state
            .exchanges
            .get_mut(source)
            .ok_or_else(|| AmqpError::no_exchange(source))?;
        let binding = Binding {
            destination,
            routing_key: routing_key.to_string(),
            arguments,
        };
        let present = exchange.bindings.contains(&binding);
        let mut emptied = false;
        if bind && !present {
            exchange.bindings.push(binding.clone());
        } else if !bind && present {
            exchange.bindings.retain(|b| *b != binding);
            emptied = exchange.auto_delete && exchange.bindings.is_empty();
        }
        if stored && bind != present {
            let tag = if bind { OP_BIND } else { OP_UNBIND };
            state.changes.push(binding_op(tag, source, &binding));
        }
        if emptied {
            state.delete_exchange(source);
        }
        self.commit_changes(&mut state, WalTxn::new())
    }

    /// `queue.declare` by connection `connection`; returns the answer and the commit to wait
    /// for before sending it.
    pub fn declare_queue(
        &self,
        d: QueueDeclare,
        connection: u64,
    ) -> Result<(QueueDeclared, Commit), AmqpError> {
        let mut state = self.lock();
        let name = if d.name.is_empty() {
            if d.passive {
                return Err(AmqpError::no_queue(""));
            }
            generated_name("amq.gen-")
        } else {
            d.name.clone()
        };
        if let Some(queue) = self.queue_in(&mut state, &name)? {
            queue.touch();
            if queue.locked_for(connection) {
                return Err(AmqpError::locked(&name));
            }
            if !d.passive {
                // Exclusivity is checked between the two, in RabbitMQ's order.
                let durable = [("durable", d.durable.to_string(), queue.durable.to_string())];
                check_equivalent("queue", &name, &durable)?;
                if queue.exclusive_owner.is_some() != d.exclusive {
                    return Err(AmqpError::locked(&name));
                }
                let auto_delete = [(
                    "auto_delete",
                    d.auto_delete.to_string(),
                    queue.auto_delete.to_string(),
                )];
                check_equivalent("queue", &name, &auto_delete)?;
                check_queue_args(&name, &queue.arguments, &d.arguments)?;
            }
            let declared = QueueDeclared {
                name,
                message_count: queue.message_count().min(u32::MAX as u64) as u32,
                consumer_count: queue.consumer_count() as u32,
            };
            return Ok((declared, Commit::NONE));
        }
        if d.passive {
            return Err(AmqpError::no_queue(&name));
        }
        if name.starts_with("amq.") && !d.name.is_empty() {
            return Err(AmqpError::new(
                code::ACCESS_REFUSED,
                format!("queue name '{name}' contains reserved prefix 'amq.*'"),
            ));
        }
        let parsed = args::QueueArgs::parse(&name, &d.arguments)
            .map_err(|why| AmqpError::new(code::PRECONDITION_FAILED, why))?;
        if parsed.stream {
            // RabbitMQ's restrictions on streams.
            let invalid = |property: &str| {
                AmqpError::new(
                    code::PRECONDITION_FAILED,
                    format!("invalid property '{property}' for queue '{name}' in vhost '/'"),
                )
            };
            if !d.durable {
                return Err(invalid("non-durable"));
            }
            if d.exclusive {
                return Err(invalid("exclusive-owner"));
            }
            if d.auto_delete {
                return Err(invalid("auto-delete"));
            }
        }
        let (id, commit) = if d.durable {
            let config = Definitions {
                queues: vec![QueueDef {
                    name: name.clone(),
                    id: 0,
                    auto_delete: d.auto_delete,
                    arguments: d.arguments.clone(),
                }],
                ..Definitions::default()
            }
            .encode()
            .map_err(internal)?;
            let key = Bytes::copy_from_slice(name.as_bytes());
            catalog::create(&self.store, EntityKind::Queue, &key, Bytes::from(config))
                .map_err(internal)?
        } else {
            (self.store.catalog().reserve_id(), Commit::NONE)
        };
        let options = QueueOptions {
            name: name.clone(),
            id,
            durable: d.durable,
            auto_delete: d.auto_delete,
            exclusive_owner: d.exclusive.then_some(connection),
            arguments: d.arguments,
        };
        let queue = self
            .open_queue(options, None, Vec::new())
            .map_err(internal)?;
        // The default exchange routes by queue name: an implicit binding, not stored.
        state
            .queues
            .insert(name.clone(), Slot::Open(Arc::new(queue)));
        let declared = QueueDeclared {
            name,
            message_count: 0,
            consumer_count: 0,
        };
        Ok((declared, commit))
    }

    /// The queue `name`, opened if need be (`None` also when opening it failed: that is
    /// logged).
    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        let mut state = self.lock();
        self.queue_in(&mut state, name).ok().flatten()
    }

    /// The queue `name` as connection `connection` may use it.
    pub fn queue_for(&self, name: &str, connection: u64) -> Result<Arc<Queue>, AmqpError> {
        let queue = {
            let mut state = self.lock();
            self.queue_in(&mut state, name)?
        };
        let queue = queue.ok_or_else(|| AmqpError::no_queue(name))?;
        if queue.locked_for(connection) {
            return Err(AmqpError::locked(name));
        }
        Ok(queue)
    }

    /// Delete a queue; returns how many ready messages it held, and the commit to wait for.
    pub fn delete_queue(
        &self,
        name: &str,
        connection: u64,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<(u32, Commit), AmqpError> {
        let mut state = self.lock();
        let Some(queue) = self.queue_in(&mut state, name)? else {
            // RabbitMQ answers delete-ok with 0 for a queue that does not exist.
            return Ok((0, Commit::NONE));
        };
        if queue.locked_for(connection) {
            return Err(AmqpError::locked(name));
        }
        let count = queue.check_delete(if_unused, if_empty).map_err(|e| {
            let what = if matches!(e, QueueError::InUse) && if_unused && queue.consumer_count() > 0
            {
                "in use"
            } else {
                "not empty"
            };
            AmqpError::new(
                code::PRECONDITION_FAILED,
                format!("queue '{name}' in vhost '/' {what}"),
            )
        })?;
        let commit = self.remove_queue(&mut state, &queue)?;
        Ok((count.min(u32::MAX as u64) as u32, commit))
    }

    /// Remove a queue: its catalog entry, the stored bindings to it and exchanges left empty,
    /// in one commit; its files go once that is durable.
    fn remove_queue(
        &self,
        state: &mut VhostState,
        queue: &Arc<Queue>,
    ) -> Result<Commit, AmqpError> {
        state.queues.remove(&queue.name);
        state.unbind_everywhere(&Destination::Queue(queue.name.clone()), queue.durable);
        let mut txn = WalTxn::new();
        if queue.durable {
            txn.op(
                queue.id,
                op_bytes(domain::CATALOG, &CatalogOp::Delete.encode()),
            );
        }
        let commit = self.commit_changes(state, txn)?;
        if queue.durable {
            self.store
                .catalog()
                .apply(queue.id, commit.lsn(), CatalogOp::Delete);
        }
        queue.delete();
        self.store.doom(
            commit,
            self.queue_dir(queue.id, queue.durable),
            Some(queue.log().clone()),
        );
        Ok(commit)
    }

    /// After a consumer left an auto-delete queue with no consumers.
    pub fn auto_delete_queue(&self, queue: &Arc<Queue>) {
        let mut state = self.lock();
        if state
            .queues
            .get(&queue.name)
            .and_then(Slot::open)
            .is_some_and(|q| Arc::ptr_eq(q, queue))
            && queue.consumer_count() == 0
        {
            if let Err(e) = self.remove_queue(&mut state, queue) {
                tracing::warn!(queue = %queue.name, error = %e.text, "auto-delete failed");
            }
        }
    }

    /// A connection closed: its exclusive queues go.
    pub fn connection_closed(&self, connection: u64) {
        let mut state = self.lock();
        let owned: Vec<Arc<Queue>> = Self::open_queues(&state)
            .filter(|q| q.exclusive_owner == Some(connection))
            .cloned()
            .collect();
        for queue in owned {
            if let Err(e) = self.remove_queue(&mut state, &queue) {
                tracing::warn!(queue = %queue.name, error = %e.text, "removing exclusive queue failed");
            }
        }
    }

    /// Remove a queue's ready messages; returns how many, and the commit to wait for.
    pub fn purge_queue(&self, name: &str, connection: u64) -> Result<(u32, Commit), AmqpError> {
        let queue = self.queue_for(name, connection)?;
        let (count, commit) = queue.purge().map_err(internal)?;
        Ok((count.min(u32::MAX as u64) as u32, commit))
    }

    /// The queues a message published to `exchange` with this key and headers reaches:
    /// following exchange-to-exchange bindings (each exchange once) and alternate exchanges.
    /// `Err` if the exchange does not exist or is internal.
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&amq_protocol::types::FieldTable>,
    ) -> Result<Vec<Arc<Queue>>, AmqpError> {
        let mut state = self.lock();
        self.route_in(&mut state, exchange, routing_key, headers)
    }

    /// Route what `queue` dropped to its dead-letter exchange (with the dead-letter routing
    /// key, else the original one), and whatever that makes its targets drop in turn. Each
    /// round is one commit: the dead letters' arrival in their target queues together with
    /// the source's mark that they arrived. A missing dead-letter exchange drops them, as in
    /// RabbitMQ.
    pub fn route_dead_letters(&self, queue: &Arc<Queue>) -> Result<Commit, AmqpError> {
        let mut commit = Commit::NONE;
        let mut work = VecDeque::from([Arc::clone(queue)]);
        let mut rounds = 0;
        while let Some(from) = work.pop_front() {
            let letters = from.take_dead_letters();
            if letters.is_empty() {
                continue;
            }
            rounds += 1;
            if rounds > DEAD_LETTER_ROUNDS_MAX {
                tracing::warn!(queue = %from.name, "dead-lettering goes on too long; the rest waits for the next round");
                break;
            }
            let (done, targets) = self.dead_letter_round(&from, letters)?;
            commit = commit.max(done);
            for (target, bytes) in targets {
                commit = commit.max(target.received(bytes).map_err(internal)?);
                if !work.iter().any(|q| Arc::ptr_eq(q, &target)) {
                    work.push_back(target);
                }
            }
        }
        Ok(commit)
    }

    /// One commit of dead letters from `from`: returns it and the targets with the body bytes
    /// each received.
    fn dead_letter_round(
        &self,
        from: &Arc<Queue>,
        letters: Vec<DeadLetter>,
    ) -> Result<(Commit, Vec<Arrival>), AmqpError> {
        let now = crate::storage::recovery::now_ms();
        let offsets: Vec<u64> = letters.iter().map(|l| l.offset).collect();
        let mut txn = WalTxn::new();
        let mut targets: Vec<Arrival> = Vec::new();
        if let Some(exchange) = from.args.dead_letter_exchange.clone() {
            let mut state = self.lock();
            for letter in letters {
                let key = from
                    .args
                    .dead_letter_routing_key
                    .clone()
                    .unwrap_or_else(|| {
                        String::from_utf8_lossy(&letter.message.routing_key).into_owned()
                    });
                let message = letter.message.dead_lettered(
                    &from.name,
                    letter.reason.name(),
                    &exchange,
                    &key,
                    now,
                );
                let headers = message.properties.headers();
                let queues = match self.route_in(&mut state, &exchange, &key, headers.as_ref()) {
                    Ok(queues) => queues,
                    // A missing exchange drops them, as in RabbitMQ.
                    Err(e) if e.code != code::INTERNAL_ERROR => continue,
                    Err(e) => return Err(e),
                };
                for target in queues {
                    let size = message.body.len() as u64;
                    target
                        .append_dead_letters(&mut txn, vec![message.to_record()])
                        .map_err(internal)?;
                    match targets.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &target)) {
                        Some((_, bytes)) => *bytes += size,
                        None => targets.push((target, size)),
                    }
                }
            }
        }
        let commit = from.commit_dead_letters(txn, &offsets).map_err(internal)?;
        Ok((commit, targets))
    }

    /// Delete queues whose `x-expires` has passed unused.
    pub fn expire_idle_queues(&self) {
        let now = crate::storage::recovery::now_ms();
        let mut state = self.lock();
        let idle: Vec<Arc<Queue>> = Self::open_queues(&state)
            .filter(|q| q.idle_expired(now))
            .cloned()
            .collect();
        for queue in idle {
            if let Err(e) = self.remove_queue(&mut state, &queue) {
                tracing::warn!(queue = %queue.name, error = %e.text, "expiring an idle queue failed");
            }
        }
    }

    /// Every open queue (for periodic work such as expiring messages; a queue not opened
    /// since the restart has none).
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        Self::open_queues(&self.lock()).cloned().collect()
    }

    /// The checkpoint's share: queues with changes only in the write-ahead log opened, every
    /// queue's tail written to its files and acknowledged segments freed.
    pub fn write_out(&self) -> storage::Result<()> {
        {
            let mut state = self.lock();
            let replayed: Vec<String> = state
                .queues
                .iter()
                .filter(|(_, slot)| matches!(slot, Slot::Closed(c) if !c.replay.is_empty()))
                .map(|(name, _)| name.clone())
                .collect();
            for name in replayed {
                self.open_in(&mut state, &name)?;
            }
        }
        for queue in self.queues() {
            queue.log().materialize()?;
            if queue.durable {
                queue.free_acked()?;
            }
        }
        Ok(())
    }

    /// The metadata store items of a checkpoint: the definitions if they changed (all of them
    /// with `full`) and the acknowledgement state of every durable queue that changed.
    pub fn take_snapshots(&self, full: bool) -> Vec<MetaItem> {
        let mut state = self.lock();
        let mut items = Vec::new();
        if state.defs_dirty || full {
            state.defs_dirty = false;
            let mut value = state.defs_lsn.to_le_bytes().to_vec();
            match state.definitions().encode() {
                Ok(bytes) => {
                    value.extend_from_slice(&bytes);
                    items.push((
                        Bytes::from_static(DEFINITIONS_KEY),
                        Some(Bytes::from(value)),
                    ));
                }
                Err(e) => tracing::error!(error = %e, "encoding the AMQP definitions failed"),
            }
        }
        for queue in Self::open_queues(&state) {
            if full {
                queue.mark_dirty();
            }
            if let Some(item) = queue.take_snapshot() {
                items.push(item);
            }
        }
        items
    }

    /// A checkpoint that took the snapshots failed: they are written again next time.
    pub fn mark_dirty(&self) {
        let mut state = self.lock();
        state.defs_dirty = true;
        for queue in Self::open_queues(&state) {
            queue.mark_dirty();
        }
    }

    /// Let go of every queue's descriptor (server shutdown).
    pub fn close(&self) {
        for queue in Self::open_queues(&self.lock()) {
            queue.close();
        }
    }
}

impl VirtualHost {
    /// [`VirtualHost::route`] on locked state (opening the queues reached).
    fn route_in(
        &self,
        state: &mut VhostState,
        exchange: &str,
        routing_key: &str,
        headers: Option<&amq_protocol::types::FieldTable>,
    ) -> Result<Vec<Arc<Queue>>, AmqpError> {
        if exchange.is_empty() {
            return Ok(self.queue_in(state, routing_key)?.into_iter().collect());
        }
        let x = state
            .exchanges
            .get(exchange)
            .ok_or_else(|| AmqpError::no_exchange(exchange))?;
        if x.internal {
            return Err(AmqpError::new(
                code::ACCESS_REFUSED,
                format!("cannot publish to internal exchange '{exchange}' in vhost '/'"),
            ));
        }
        let mut queues: Vec<Arc<Queue>> = Vec::new();
        let mut seen_queues = HashSet::new();
        let mut reached: Vec<String> = Vec::new();
        let mut visited = HashSet::new();
        let mut pending = vec![exchange.to_string()];
        while let Some(name) = pending.pop() {
            if !visited.insert(name.clone()) {
                continue;
            }
            let Some(x) = state.exchanges.get(&name) else {
                continue;
            };
            let before = reached.len();
            let mut routed_to_exchange = false;
            for destination in x.matching(routing_key, headers) {
                match destination {
                    Destination::Queue(q) => {
                        if state.queues.contains_key(q) && seen_queues.insert(q.clone()) {
                            reached.push(q.clone());
                        }
                    }
                    Destination::Exchange(next) => {
                        routed_to_exchange = true;
                        pending.push(next.clone());
                    }
                }
            }
            if reached.len() == before && !routed_to_exchange {
                if let Some(alternate) = x.alternate_exchange() {
                    pending.push(alternate);
                }
            }
        }
        for name in reached {
            queues.extend(self.queue_in(state, &name)?);
        }
        Ok(queues)
    }
}
