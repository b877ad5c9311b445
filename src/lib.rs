//! Potok: a durable, disk-backed, log-structured message broker.
//!
//! # Layout
//!
//! Dependencies point downward only (see `DESIGN.md` in the shared docs):
//!
//! - `main.rs`: the `potok` command line (`verify`, `inspect`; `serve` arrives with RESP).
//! - [`storage`]: segmented logs with indexes, group commit, recovery and retention.
//!
//! The broker layer and the RESP/AMQP front ends build on [`storage`].

pub mod storage;
