//! Protocol front ends. Each translates its wire protocol into broker calls and holds only
//! per-connection state; none knows about storage.

pub mod amqp;
pub mod glob;
pub mod resp;
