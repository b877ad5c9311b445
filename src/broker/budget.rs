//! One byte budget for everything the server holds for clients and has not yet written to
//! them: RESP replies and Pub/Sub messages, AMQP deliveries. Each front end charges what it
//! queues and releases it once written, so the total stays under one setting (RESP's
//! `maxmemory-clients`) whatever each client's own limit.
//!
//! The budget only counts; what happens at the limit is each front end's policy (RESP evicts
//! the client holding the most, as Redis 7 does; AMQP stops dispatching to a connection until
//! it catches up).

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes held for clients, against a maximum (0 = none).
#[derive(Debug, Default)]
pub struct MemoryBudget {
    held: AtomicU64,
    max: AtomicU64,
    /// Bytes held by clients already told to go, which are about to be released: not
    /// counted again when deciding whom else to evict.
    evicting: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `max` bytes (0 = unlimited).
    pub fn new(max: u64) -> MemoryBudget {
        MemoryBudget {
            held: AtomicU64::new(0),
            max: AtomicU64::new(max),
            evicting: AtomicU64::new(0),
        }
    }

    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    pub fn set_max(&self, max: u64) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Everything held now, including what evicted clients still hold.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Held and not already on its way out.
    fn effective(&self) -> u64 {
        self.held()
            .saturating_sub(self.evicting.load(Ordering::Relaxed))
    }

    /// Count `bytes` as held.
    pub fn charge(&self, bytes: u64) {
        self.held.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Count `bytes` as no longer held.
    pub fn release(&self, bytes: u64) {
        saturating_sub(&self.held, bytes);
    }

    /// More is held than the maximum allows (never with no maximum).
    pub fn is_over(&self) -> bool {
        let max = self.max();
        max > 0 && self.effective() > max
    }

    /// Whether `bytes` more would still fit.
    pub fn has_room_for(&self, bytes: u64) -> bool {
        let max = self.max();
        max == 0 || self.effective().saturating_add(bytes) <= max
    }

    /// How many more bytes fit (`u64::MAX` with no maximum).
    pub fn room(&self) -> u64 {
        match self.max() {
            0 => u64::MAX,
            max => max.saturating_sub(self.effective()),
        }
    }

    /// A client holding `bytes` was told to go: until it releases them, they do not count
    /// toward another eviction.
    pub fn evicting(&self, bytes: u64) {
        self.evicting.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The evicted client is gone (and has released what it held).
    pub fn evicted(&self, bytes: u64) {
        saturating_sub(&self.evicting, bytes);
    }
}

fn saturating_sub(counter: &AtomicU64, bytes: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
        Some(held.saturating_sub(bytes))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_releases_and_evictions_add_up() {
        let budget = MemoryBudget::new(100);
        budget.charge(60);
        assert!(budget.has_room_for(40) && !budget.has_room_for(41));
        assert_eq!(budget.room(), 40);
        budget.charge(50);
        assert!(budget.is_over());
        // The client holding 50 is evicted: no longer counted while it goes.
        budget.evicting(50);
        assert!(!budget.is_over());
        assert_eq!(budget.held(), 110);
        budget.release(50);
        budget.evicted(50);
        assert_eq!((budget.held(), budget.room()), (60, 40));
        budget.release(1000);
        assert_eq!(budget.held(), 0, "never below zero");
        let unlimited = MemoryBudget::new(0);
        unlimited.charge(u64::MAX / 2);
        assert!(!unlimited.is_over() && unlimited.has_room_for(u64::MAX / 4));
        assert_eq!(unlimited.room(), u64::MAX);
    }
}
