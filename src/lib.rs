//! Potok: a durable, disk-backed, log-structured message broker.
//!
//! # Layout
//!
//! Dependencies point downward only (see `DESIGN.md` in the shared docs):
//!
//! - `main.rs`: the `potok` command line (`serve`, `verify`, `inspect`).
//! - [`server`]: listeners, connection tasks, graceful shutdown.
//! - [`protocol`]: the RESP front end (AMQP to come), translating to broker calls.
//! - [`broker`]: the protocol-neutral model (catalog, streams) and the embeddable API.
//! - [`storage`]: segmented logs with indexes, group commit, recovery and retention.
//!
//! The broker layer and the RESP/AMQP front ends build on [`storage`].

pub mod broker;
pub mod protocol;
pub mod server;
pub mod storage;
