//! The AMQP 0-9-1 model (one virtual host, `/`): exchanges that route into queues, queues that
//! are logs with an acknowledgement cursor, and the bindings between them. Protocol-neutral in
//! the sense that nothing here reads frames; errors carry RabbitMQ's reply codes and texts so a
//! front end can send them as they are.
//!
//! On disk, under `<data>/amqp/`: `definitions` (durable exchanges, queues, bindings; see
//! [`definitions`]) and `queues/<id>/` per queue (`messages/` log, `acks/` journal).

pub mod args;
pub mod definitions;
pub mod exchange;
pub mod message;
pub mod queue;
pub mod ranges;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::storage::io::Vfs;
use crate::storage::{Durability, LogConfig};
use definitions::{BindingDef, Definitions, ExchangeDef, QueueDef};
pub use exchange::{Binding, Destination, Exchange, ExchangeKind};
pub use message::Message;
pub use queue::{
    Backlog, ChannelLimit, ConsumerSpec, DeadLetter, DeadReason, Delivery, Queue, QueueError,
    QueueEvent,
};

/// AMQP reply codes (the spec's constants, as RabbitMQ uses them).
pub mod code {
    pub const CONTENT_TOO_LARGE: u16 = 311;
    pub const NO_ROUTE: u16 = 312;
    pub const CONNECTION_FORCED: u16 = 320;
    pub const INVALID_PATH: u16 = 402;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const RESOURCE_ERROR: u16 = 506;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;
}

/// An error as an AMQP close: code and text (`NOT_FOUND - no queue 'q' in vhost '/'`). Codes
/// below 500 close the channel, the rest the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpError {
    pub code: u16,
    pub text: String,
}

impl AmqpError {
    pub fn new(code: u16, text: impl Into<String>) -> AmqpError {
        let name = match code {
            code::NOT_FOUND => "NOT_FOUND",
            code::ACCESS_REFUSED => "ACCESS_REFUSED",
            code::RESOURCE_LOCKED => "RESOURCE_LOCKED",
            code::PRECONDITION_FAILED => "PRECONDITION_FAILED",
            code::FRAME_ERROR => "FRAME_ERROR",
            code::SYNTAX_ERROR => "SYNTAX_ERROR",
            code::COMMAND_INVALID => "COMMAND_INVALID",
            code::CHANNEL_ERROR => "CHANNEL_ERROR",
            code::UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
            code::RESOURCE_ERROR => "RESOURCE_ERROR",
            code::NOT_ALLOWED => "NOT_ALLOWED",
            code::NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
            code::INTERNAL_ERROR => "INTERNAL_ERROR",
            code::CONNECTION_FORCED => "CONNECTION_FORCED",
            code::INVALID_PATH => "INVALID_PATH",
            _ => "ERROR",
        };
        AmqpError {
            code,
            text: format!("{name} - {}", text.into()),
        }
    }

    pub fn closes_connection(&self) -> bool {
        self.code >= 500 || self.code == code::CONNECTION_FORCED
    }

    fn no_exchange(name: &str) -> AmqpError {
        AmqpError::new(
            code::NOT_FOUND,
            format!("no exchange '{name}' in vhost '/'"),
        )
    }

    pub fn no_queue(name: &str) -> AmqpError {
        AmqpError::new(code::NOT_FOUND, format!("no queue '{name}' in vhost '/'"))
    }

    fn internal(e: impl std::fmt::Display) -> AmqpError {
        AmqpError::new(code::INTERNAL_ERROR, e.to_string())
    }

    fn locked(name: &str) -> AmqpError {
        AmqpError::new(
            code::RESOURCE_LOCKED,
            format!(
                "cannot obtain exclusive access to locked queue '{name}' in vhost '/'. It could \
                 be originally declared on another connection or the exclusive property value \
                 does not match that of the original declaration."
            ),
        )
    }
}

/// RabbitMQ's equivalence check on redeclaration: the first property whose requested value
/// (`received`) differs from the existing one (`current`) is the error.
fn check_equivalent(
    what: &str,
    name: &str,
    properties: &[(&str, String, String)],
) -> Result<(), AmqpError> {
    match properties.iter().find(|(_, received, current)| received != current) {
        None => Ok(()),
        Some((arg, received, current)) => Err(AmqpError::new(
            code::PRECONDITION_FAILED,
            format!(
                "inequivalent arg '{arg}' for {what} '{name}' in vhost '/': received '{received}' but current is '{current}'"
            ),
        )),
    }
}

/// RabbitMQ's name for a field value's type in equivalence errors.
fn type_name(value: &AMQPValue) -> &'static str {
    match value {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) | AMQPValue::ShortInt(_) | AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::ShortShortUInt(_) | AMQPValue::ShortUInt(_) | AMQPValue::LongUInt(_) => {
            "unsignedint"
        }
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

fn value_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(v) => v.to_string(),
        AMQPValue::ShortInt(v) => v.to_string(),
        AMQPValue::LongInt(v) => v.to_string(),
        AMQPValue::LongLongInt(v) => v.to_string(),
        AMQPValue::ShortShortUInt(v) => v.to_string(),
        AMQPValue::ShortUInt(v) => v.to_string(),
        AMQPValue::LongUInt(v) => v.to_string(),
        AMQPValue::Timestamp(v) => v.to_string(),
        other => format!("{other:?}"),
    }
}

/// Queue arguments that must match on redeclaration (the ones RabbitMQ checks).
const EQUIVALENT_QUEUE_ARGS: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-message-ttl",
    "x-overflow",
    "x-queue-type",
    "x-single-active-consumer",
];

/// Numeric argument values compare by value whatever integer type carried them.
fn same_value(a: &AMQPValue, b: &AMQPValue) -> bool {
    match (args::integer(a), args::integer(b)) {
        (Some(x), Some(y)) => x == y,
        _ => value_text(a) == value_text(b) && type_name(a) == type_name(b),
    }
}

fn check_queue_args(
    name: &str,
    current: &FieldTable,
    received: &FieldTable,
) -> Result<(), AmqpError> {
    for arg in EQUIVALENT_QUEUE_ARGS {
        let (r, c) = (received.inner().get(*arg), current.inner().get(*arg));
        let same = match (r, c) {
            (None, None) => true,
            (Some(r), Some(c)) => same_value(r, c),
            _ => false,
        };
        if same {
            continue;
        }
        let describe = |v: Option<&AMQPValue>| match v {
            Some(v) => format!("the value '{}' of type '{}'", value_text(v), type_name(v)),
            None => "none".to_string(),
        };
        return Err(AmqpError::new(
            code::PRECONDITION_FAILED,
            format!(
                "inequivalent arg '{arg}' for queue '{name}' in vhost '/': received {} but current is {}",
                describe(r),
                describe(c)
            ),
        ));
    }
    Ok(())
}

/// What `queue.declare` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueDeclared {
    pub name: String,
    pub message_count: u32,
    pub consumer_count: u32,
}

/// `queue.declare`'s request.
#[derive(Clone, Debug, Default)]
pub struct QueueDeclare {
    pub name: String,
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// `exchange.declare`'s request.
#[derive(Clone, Debug)]
pub struct ExchangeDeclare {
    pub name: String,
    pub kind: String,
    pub passive: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

struct VhostState {
    exchanges: HashMap<String, Exchange>,
    queues: HashMap<String, Arc<Queue>>,
    next_queue_id: u64,
}

/// The virtual host `/`.
pub struct VirtualHost {
    dir: PathBuf,
    vfs: Arc<dyn Vfs>,
    /// Template for durable queues' logs (non-durable ones never fsync).
    queue_log: LogConfig,
    state: Mutex<VhostState>,
}

/// Exchanges every vhost has; none can be deleted or redeclared differently.
const PREDECLARED: &[(&str, ExchangeKind)] = &[
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

impl VirtualHost {
    /// Open `<data>/amqp`: durable definitions and queues come back; anything else left from
    /// before (non-durable queues' directories) is removed.
    pub fn open(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        queue_log: LogConfig,
    ) -> std::io::Result<VirtualHost> {
        vfs.create_dir_all(&dir.join("queues"))?;
        let defs = Definitions::load(&*vfs, dir)?;
        let mut exchanges = HashMap::new();
        for (name, kind) in PREDECLARED {
            exchanges.insert(name.to_string(), Exchange::new(name, *kind, true));
        }
        for def in &defs.exchanges {
            let mut exchange = Exchange::new(&def.name, def.kind, true);
            exchange.auto_delete = def.auto_delete;
            exchange.internal = def.internal;
            exchange.arguments = def.arguments.clone();
            exchanges.insert(def.name.clone(), exchange);
        }
        let mut queues = HashMap::new();
        let mut kept = HashSet::new();
        for def in &defs.queues {
            let options = queue::QueueOptions {
                name: def.name.clone(),
                id: def.id,
                durable: true,
                auto_delete: def.auto_delete,
                exclusive_owner: None,
                arguments: def.arguments.clone(),
            };
            let queue_dir = dir.join("queues").join(def.id.to_string());
            let parsed = args::QueueArgs::parse(&def.name, &def.arguments).unwrap_or_default();
            let log = queue_log_config(&queue_log, true, &parsed);
            let queue = Queue::open(Arc::clone(&vfs), &queue_dir, log, options)
                .map_err(std::io::Error::other)?;
            kept.insert(def.id.to_string());
            queues.insert(def.name.clone(), Arc::new(queue));
        }
        for sub in vfs.list_subdirs(&dir.join("queues"))? {
            if !kept.contains(&sub) {
                vfs.remove_dir_all(&dir.join("queues").join(&sub))?;
            }
        }
        for def in &defs.bindings {
            if let Some(exchange) = exchanges.get_mut(&def.source) {
                exchange.bindings.push(def.binding.clone());
            }
        }
        Ok(VirtualHost {
            dir: dir.to_path_buf(),
            vfs,
            queue_log,
            state: Mutex::new(VhostState {
                exchanges,
                queues,
                next_queue_id: defs.next_queue_id.max(1),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, VhostState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rewrite the definitions file from the durable part of the state.
    fn save(&self, state: &VhostState) -> Result<(), AmqpError> {
        let predeclared = |name: &str| PREDECLARED.iter().any(|(n, _)| *n == name);
        let mut defs = Definitions {
            next_queue_id: state.next_queue_id,
            ..Default::default()
        };
        let mut names: Vec<&String> = state.exchanges.keys().collect();
        names.sort();
        for name in names {
            let e = &state.exchanges[name];
            if e.durable && !predeclared(name) {
                defs.exchanges.push(ExchangeDef {
                    name: name.clone(),
                    kind: e.kind,
                    auto_delete: e.auto_delete,
                    internal: e.internal,
                    arguments: e.arguments.clone(),
                });
            }
            for binding in &e.bindings {
                let destination_durable = match &binding.destination {
                    Destination::Queue(q) => state.queues.get(q).is_some_and(|q| q.durable),
                    Destination::Exchange(x) => state.exchanges.get(x).is_some_and(|x| x.durable),
                };
                if e.durable && destination_durable {
                    defs.bindings.push(BindingDef {
                        source: name.clone(),
                        binding: binding.clone(),
                    });
                }
            }
        }
        let mut queues: Vec<&Arc<Queue>> = state.queues.values().filter(|q| q.durable).collect();
        queues.sort_by_key(|q| q.id);
        for q in queues {
            defs.queues.push(QueueDef {
                name: q.name.clone(),
                id: q.id,
                auto_delete: q.auto_delete,
                arguments: q.arguments.clone(),
            });
        }
        defs.save(&*self.vfs, &self.dir)
            .map_err(AmqpError::internal)
    }

    pub fn declare_exchange(&self, d: ExchangeDeclare) -> Result<(), AmqpError> {
        let mut state = self.lock();
        if let Some(existing) = state.exchanges.get(&d.name) {
            if d.passive {
                return Ok(());
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
            return Ok(());
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
        let durable = exchange.durable;
        state.exchanges.insert(d.name.clone(), exchange);
        if durable {
            if let Err(e) = self.save(&state) {
                state.exchanges.remove(&d.name);
                return Err(e);
            }
        }
        Ok(())
    }

    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), AmqpError> {
        let mut state = self.lock();
        if name.is_empty() {
            return Err(AmqpError::new(
                code::ACCESS_REFUSED,
                "operation not permitted on the default exchange",
            ));
        }
        if PREDECLARED.iter().any(|(n, _)| *n == name) {
            return Err(AmqpError::new(
                code::ACCESS_REFUSED,
                format!("deletion of system exchange '{name}' in vhost '/' not allowed"),
            ));
        }
        let Some(exchange) = state.exchanges.get(name) else {
            // RabbitMQ answers delete-ok for an exchange that does not exist.
            return Ok(());
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
        state.exchanges.remove(name);
        unbind_everywhere(&mut state, &Destination::Exchange(name.to_string()));
        self.save(&state)
    }

    /// Bind `destination` to `source` (queue.bind and exchange.bind).
    pub fn bind(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), AmqpError> {
        self.change_binding(
            source,
            destination,
            routing_key,
            arguments,
            |exchange, binding| {
                if !exchange.bindings.contains(&binding) {
                    exchange.bindings.push(binding);
                }
            },
        )
    }

    /// Remove a binding (queue.unbind and exchange.unbind); an auto-delete exchange whose last
    /// binding goes is deleted.
    pub fn unbind(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), AmqpError> {
        self.change_binding(
            source,
            destination,
            routing_key,
            arguments,
            |exchange, binding| {
                exchange.bindings.retain(|b| *b != binding);
            },
        )
    }

    /// Check the source and destination, apply `change` to the source exchange, drop it if it
    /// is auto-delete and lost its last binding, save.
    fn change_binding(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: FieldTable,
        change: impl FnOnce(&mut Exchange, Binding),
    ) -> Result<(), AmqpError> {
        let mut state = self.lock();
        if source.is_empty() {
            return Err(AmqpError::new(
                code::ACCESS_REFUSED,
                "operation not permitted on the default exchange",
            ));
        }
        self.check_destination(&state, &destination)?;
        let exchange = state
            .exchanges
            .get_mut(source)
            .ok_or_else(|| AmqpError::no_exchange(source))?;
        let before = exchange.bindings.len();
        let binding = Binding {
            destination,
            routing_key: routing_key.to_string(),
            arguments,
        };
        change(exchange, binding);
        if exchange.auto_delete && before > 0 && exchange.bindings.is_empty() {
            state.exchanges.remove(source);
        }
        self.save(&state)
    }

    fn check_destination(
        &self,
        state: &VhostState,
        destination: &Destination,
    ) -> Result<(), AmqpError> {
        match destination {
            Destination::Queue(q) if !state.queues.contains_key(q) => Err(AmqpError::no_queue(q)),
            Destination::Exchange(x) if !state.exchanges.contains_key(x) => {
                Err(AmqpError::no_exchange(x))
            }
            _ => Ok(()),
        }
    }

    /// `queue.declare` by connection `connection`.
    pub fn declare_queue(
        &self,
        d: QueueDeclare,
        connection: u64,
    ) -> Result<QueueDeclared, AmqpError> {
        let mut state = self.lock();
        let name = if d.name.is_empty() {
            if d.passive {
                return Err(AmqpError::no_queue(""));
            }
            generated_name("amq.gen-")
        } else {
            d.name.clone()
        };
        if let Some(queue) = state.queues.get(&name) {
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
            return Ok(QueueDeclared {
                name,
                message_count: queue.message_count().min(u32::MAX as u64) as u32,
                consumer_count: queue.consumer_count() as u32,
            });
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
        let id = state.next_queue_id;
        state.next_queue_id += 1;
        let log = queue_log_config(&self.queue_log, d.durable, &parsed);
        let options = queue::QueueOptions {
            name: name.clone(),
            id,
            durable: d.durable,
            auto_delete: d.auto_delete,
            exclusive_owner: d.exclusive.then_some(connection),
            arguments: d.arguments,
        };
        let queue_dir = self.dir.join("queues").join(id.to_string());
        let queue = Queue::open(Arc::clone(&self.vfs), &queue_dir, log, options)
            .map_err(AmqpError::internal)?;
        let queue = Arc::new(queue);
        state.queues.insert(name.clone(), Arc::clone(&queue));
        // The default exchange routes by queue name: an implicit binding, not stored.
        if let Err(e) = self.save(&state) {
            state.queues.remove(&name);
            return Err(e);
        }
        Ok(QueueDeclared {
            name,
            message_count: 0,
            consumer_count: 0,
        })
    }

    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.lock().queues.get(name).cloned()
    }

    /// The queue `name` as connection `connection` may use it.
    pub fn queue_for(&self, name: &str, connection: u64) -> Result<Arc<Queue>, AmqpError> {
        let queue = self.queue(name).ok_or_else(|| AmqpError::no_queue(name))?;
        if queue.locked_for(connection) {
            return Err(AmqpError::locked(name));
        }
        Ok(queue)
    }

    /// Delete a queue; returns how many ready messages it held.
    pub fn delete_queue(
        &self,
        name: &str,
        connection: u64,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<u32, AmqpError> {
        let mut state = self.lock();
        let Some(queue) = state.queues.get(name).cloned() else {
            // RabbitMQ answers delete-ok with 0 for a queue that does not exist.
            return Ok(0);
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
        self.remove_queue(&mut state, &queue)?;
        Ok(count.min(u32::MAX as u64) as u32)
    }

    fn remove_queue(&self, state: &mut VhostState, queue: &Arc<Queue>) -> Result<(), AmqpError> {
        state.queues.remove(&queue.name);
        unbind_everywhere(state, &Destination::Queue(queue.name.clone()));
        let saved = self.save(state);
        queue.delete();
        let dir = self.dir.join("queues").join(queue.id.to_string());
        if let Err(e) = self
            .vfs
            .remove_dir_all(&dir)
            .and_then(|()| self.vfs.sync_dir(&self.dir.join("queues")))
        {
            tracing::warn!(queue = %queue.name, error = %e, "removing queue files failed");
        }
        saved
    }

    /// After a consumer left an auto-delete queue with no consumers.
    pub fn auto_delete_queue(&self, queue: &Arc<Queue>) {
        let mut state = self.lock();
        if state
            .queues
            .get(&queue.name)
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
        let owned: Vec<Arc<Queue>> = state
            .queues
            .values()
            .filter(|q| q.exclusive_owner == Some(connection))
            .cloned()
            .collect();
        for queue in owned {
            if let Err(e) = self.remove_queue(&mut state, &queue) {
                tracing::warn!(queue = %queue.name, error = %e.text, "removing exclusive queue failed");
            }
        }
    }

    pub fn purge_queue(&self, name: &str, connection: u64) -> Result<u32, AmqpError> {
        let queue = self.queue_for(name, connection)?;
        Ok(queue.purge().min(u32::MAX as u64) as u32)
    }

    /// The queues a message published to `exchange` with this key and headers reaches:
    /// following exchange-to-exchange bindings (each exchange once) and alternate exchanges.
    /// `Err` if the exchange does not exist or is internal.
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
    ) -> Result<Vec<Arc<Queue>>, AmqpError> {
        let state = self.lock();
        if exchange.is_empty() {
            return Ok(state.queues.get(routing_key).cloned().into_iter().collect());
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
        let mut visited = HashSet::new();
        let mut pending = vec![exchange.to_string()];
        while let Some(name) = pending.pop() {
            if !visited.insert(name.clone()) {
                continue;
            }
            let Some(x) = state.exchanges.get(&name) else {
                continue;
            };
            let before = queues.len();
            let mut routed_to_exchange = false;
            for destination in x.matching(routing_key, headers) {
                match destination {
                    Destination::Queue(q) => {
                        if let Some(queue) = state.queues.get(q) {
                            if seen_queues.insert(q.clone()) {
                                queues.push(Arc::clone(queue));
                            }
                        }
                    }
                    Destination::Exchange(next) => {
                        routed_to_exchange = true;
                        pending.push(next.clone());
                    }
                }
            }
            if queues.len() == before && !routed_to_exchange {
                if let Some(alternate) = x.alternate_exchange() {
                    pending.push(alternate);
                }
            }
        }
        Ok(queues)
    }

    /// Publish what `from` dropped to its dead-letter exchange (with the dead-letter routing
    /// key, else the original one). Returns the logs written, for the caller to ask for
    /// their fsync. A missing dead-letter exchange drops the messages, as in RabbitMQ.
    pub fn dead_letter(
        &self,
        from: &Queue,
        letters: Vec<DeadLetter>,
    ) -> Vec<(crate::storage::Log, u64)> {
        let Some(exchange) = from.args.dead_letter_exchange.clone() else {
            return Vec::new();
        };
        let now = crate::storage::recovery::now_ms();
        let mut waits = Vec::new();
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
            let Ok(queues) = self.route(&exchange, &key, message.properties.headers().as_ref())
            else {
                continue;
            };
            for queue in queues {
                match queue.publish(&message) {
                    Ok(Some(offset)) => waits.push((queue.log().clone(), offset)),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(queue = %queue.name, error = %e, "dead-lettering failed")
                    }
                }
            }
        }
        waits
    }

    /// Delete queues whose `x-expires` has passed unused.
    pub fn expire_idle_queues(&self) {
        let now = crate::storage::recovery::now_ms();
        let mut state = self.lock();
        let idle: Vec<Arc<Queue>> = state
            .queues
            .values()
            .filter(|q| q.idle_expired(now))
            .cloned()
            .collect();
        for queue in idle {
            if let Err(e) = self.remove_queue(&mut state, &queue) {
                tracing::warn!(queue = %queue.name, error = %e.text, "expiring an idle queue failed");
            }
        }
    }

    /// Every queue (for periodic work such as expiring messages).
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.lock().queues.values().cloned().collect()
    }

    /// Close every queue's logs cleanly (server shutdown).
    pub fn close(&self) {
        for queue in self.lock().queues.values() {
            queue.close();
        }
    }
}

/// Segment size of a classic queue's log.
const QUEUE_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// Remove every binding to `gone` (a deleted queue or exchange); auto-delete exchanges left
/// without bindings go too.
fn unbind_everywhere(state: &mut VhostState, gone: &Destination) {
    let mut emptied = Vec::new();
    for e in state.exchanges.values_mut() {
        let before = e.bindings.len();
        e.bindings.retain(|b| b.destination != *gone);
        if e.auto_delete && before > 0 && e.bindings.is_empty() {
            emptied.push(e.name.clone());
        }
    }
    for name in emptied {
        state.exchanges.remove(&name);
    }
}

/// A queue's log: the server's durability for durable queues, none for the others; a
/// stream's retention from `x-max-age` and `x-max-length-bytes`.
fn queue_log_config(template: &LogConfig, durable: bool, args: &args::QueueArgs) -> LogConfig {
    let mut config = LogConfig {
        durability: if durable {
            template.durability
        } else {
            Durability::Never
        },
        ..template.clone()
    };
    if !args.stream {
        // Acknowledged segments are dropped whole; smaller ones make disk use follow the
        // backlog more closely.
        config.segment_bytes_max = config.segment_bytes_max.min(QUEUE_SEGMENT_BYTES);
    }
    if args.stream {
        config.retention = crate::storage::Retention {
            bytes_max: args.max_length_bytes,
            age_max: args.max_age,
            records_max: None,
        };
        if args.max_age.is_some() || args.max_length_bytes.is_some() {
            // Retention drops whole segments: keep them small enough to follow the limits.
            config.segment_bytes_max = config.segment_bytes_max.min(16 * 1024 * 1024);
            config.segment_age_max = args.max_age.map(|a| a / 4);
        }
    }
    config
}

/// `prefix` and 22 URL-safe base64 characters, as RabbitMQ makes server-chosen names
/// (`amq.gen-` queues, `amq.ctag-` consumer tags).
pub fn generated_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let suffix: String = (0..22)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{suffix}")
}
