//! The AMQP 0-9-1 front end, so that RabbitMQ clients (pika, amqplib, lapin, kombu) use Potok
//! unmodified. `frame` reads and writes frames (codec: `amq-protocol`), `connection` runs one
//! client connection (handshake, heartbeats, channels, closes) and `channel` carries out the
//! methods on the broker's AMQP model (`broker::amqp`).

pub mod channel;
pub mod connection;
pub mod frame;
pub mod nesting;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::broker::budget::MemoryBudget;
use crate::broker::Broker;

/// What every AMQP connection shares.
pub struct AmqpShared {
    pub broker: Arc<Broker>,
    /// The one user (`guest`/`guest` by default, which may only connect over loopback, as in
    /// RabbitMQ).
    pub user: String,
    pub password: String,
    pub next_connection_id: AtomicU64,
    pub next_consumer_id: AtomicU64,
    /// Everything held for clients of either protocol (RESP's `maxmemory-clients`):
    /// connections' delivery backlogs are charged to it and wait while it is full.
    pub output_budget: Arc<MemoryBudget>,
}

impl AmqpShared {
    pub fn new(
        broker: Arc<Broker>,
        user: String,
        password: String,
        output_budget: Arc<MemoryBudget>,
    ) -> AmqpShared {
        AmqpShared {
            broker,
            user,
            password,
            next_connection_id: AtomicU64::new(1),
            next_consumer_id: AtomicU64::new(1),
            output_budget,
        }
    }
}
