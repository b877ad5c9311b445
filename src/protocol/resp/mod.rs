//! The RESP front end: Redis clients speak to the broker through it.
//!
//! - [`request`]: request decoding (multibulk via `redis-protocol`, inline), with limits.
//! - [`reply`]: replies, encoded as RESP2 or RESP3.
//! - [`args`]: the argument cursor commands parse with.
//! - [`cmd`]: the command table and one file per command family.
//! - [`connection`]: one client's read → execute → reply loop.
//! - [`output`]: output buffer limits per client class (Redis's client-output-buffer-limit).
//! - [`pubsub`]: live Pub/Sub fan-out (the messages are also stored in topic logs).
//! - [`shared`]: what connections share: client registry, stats, settings, the EXEC lock.

pub mod args;
pub mod cmd;
pub mod connection;
pub mod output;
pub mod pubsub;
pub mod reply;
pub mod request;
pub mod shared;
