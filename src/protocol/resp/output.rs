//! Output buffer limits, as Redis's `client-output-buffer-limit`: per class of client (normal,
//! replica, pubsub), a hard limit in bytes and a soft limit in bytes held for longer than a
//! number of seconds. A client past either is closed at once, and what it held is released.
//!
//! What counts is what the server holds for a client and has not yet written to its socket:
//! Pub/Sub messages queued for it (charged when published) and replies encoded and waiting for
//! the socket. Every byte charged here is also charged to the server-wide
//! [`MemoryBudget`] (`maxmemory-clients`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::broker::budget::MemoryBudget;

/// One class's limits; 0 turns a limit off (Redis's meaning).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputLimit {
    /// Held at or past this many bytes, the client is closed at once.
    pub hard_bytes: u64,
    /// Held at or past this many bytes for longer than `soft_seconds`, the client is closed.
    pub soft_bytes: u64,
    pub soft_seconds: u64,
}

/// Which limits apply to a client (Redis's client classes; a client with any subscription is
/// `Pubsub`). Potok has no replicas: the replica class is kept so CONFIG reads and writes it as
/// Redis does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientClass {
    Normal,
    Replica,
    Pubsub,
}

/// The limits of every class: CONFIG's `client-output-buffer-limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputLimits {
    pub normal: OutputLimit,
    pub replica: OutputLimit,
    pub pubsub: OutputLimit,
}

impl Default for OutputLimits {
    /// Redis's defaults: `normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60`.
    fn default() -> OutputLimits {
        OutputLimits {
            normal: OutputLimit {
                hard_bytes: 0,
                soft_bytes: 0,
                soft_seconds: 0,
            },
            replica: OutputLimit {
                hard_bytes: 256 * 1024 * 1024,
                soft_bytes: 64 * 1024 * 1024,
                soft_seconds: 60,
            },
            pubsub: OutputLimit {
                hard_bytes: 32 * 1024 * 1024,
                soft_bytes: 8 * 1024 * 1024,
                soft_seconds: 60,
            },
        }
    }
}

const BAD_ARGUMENT_COUNT: &str = "Wrong number of arguments in buffer limit configuration.";
const BAD_CLASS: &str = "Invalid client class specified in buffer limit configuration.";
const BAD_VALUE: &str =
    "Error in hard, soft or soft_seconds setting in buffer limit configuration.";

impl OutputLimits {
    pub fn class(&self, class: ClientClass) -> OutputLimit {
        match class {
            ClientClass::Normal => self.normal,
            ClientClass::Replica => self.replica,
            ClientClass::Pubsub => self.pubsub,
        }
    }

    /// The CONFIG GET form: `normal 0 0 0 slave 268435456 67108864 60 pubsub ...`.
    pub fn to_config(&self) -> String {
        let one = |name: &str, l: OutputLimit| {
            format!(
                "{name} {} {} {}",
                l.hard_bytes, l.soft_bytes, l.soft_seconds
            )
        };
        format!(
            "{} {} {}",
            one("normal", self.normal),
            one("slave", self.replica),
            one("pubsub", self.pubsub)
        )
    }

    /// These limits with a CONFIG SET value applied: `<class> <hard> <soft> <soft seconds>`,
    /// repeated, split on single spaces; classes `normal`, `replica` or `slave`, `pubsub`
    /// (any case); sizes with Redis's units (`32mb`, `8mb`, `1k` = 1000, `1kb` = 1024). A bad
    /// value is refused whole, with Redis's message.
    pub fn with_config(&self, value: &[u8]) -> Result<OutputLimits, &'static str> {
        let mut limits = *self;
        if value.is_empty() {
            return Ok(limits);
        }
        let words: Vec<&[u8]> = value.split(|&b| b == b' ').collect();
        if !words.len().is_multiple_of(4) {
            return Err(BAD_ARGUMENT_COUNT);
        }
        for group in words.chunks_exact(4) {
            let class = match group[0].to_ascii_lowercase().as_slice() {
                b"normal" => ClientClass::Normal,
                b"replica" | b"slave" => ClientClass::Replica,
                b"pubsub" => ClientClass::Pubsub,
                _ => return Err(BAD_CLASS),
            };
            let limit = OutputLimit {
                hard_bytes: parse_memory(group[1]).ok_or(BAD_VALUE)?,
                soft_bytes: parse_memory(group[2]).ok_or(BAD_VALUE)?,
                soft_seconds: parse_seconds(group[3]).ok_or(BAD_VALUE)?,
            };
            match class {
                ClientClass::Normal => limits.normal = limit,
                ClientClass::Replica => limits.replica = limit,
                ClientClass::Pubsub => limits.pubsub = limit,
            }
        }
        Ok(limits)
    }
}

/// A size the way Redis's `memtoull` reads one: digits, then nothing or a unit (`b`, `k`
/// = 1000, `kb` = 1024, `m`, `mb`, `g`, `gb`, any case). Like Redis, a number too large
/// saturates and the multiplication wraps.
pub fn parse_memory(value: &[u8]) -> Option<u64> {
    let digits = value.iter().take_while(|b| b.is_ascii_digit()).count();
    let unit: u64 = match value[digits..].to_ascii_lowercase().as_slice() {
        b"" | b"b" => 1,
        b"k" => 1000,
        b"kb" => 1024,
        b"m" => 1000 * 1000,
        b"mb" => 1024 * 1024,
        b"g" => 1000 * 1000 * 1000,
        b"gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    let number = value[..digits].iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    Some(number.wrapping_mul(unit))
}

/// Soft seconds the way Redis reads them (`strtoll` into an `int`): an optional sign and
/// digits, nothing after; negative (after the cut to 32 bits) is refused.
fn parse_seconds(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let magnitude = digits.bytes().fold(0i64, |n, d| {
        n.saturating_mul(10).saturating_add(i64::from(d - b'0'))
    });
    let seconds = if negative { -magnitude } else { magnitude } as i32;
    u64::try_from(seconds).ok()
}

/// A client that held at least this much output hands the freed memory back when it goes.
const RETURN_MEMORY_AFTER_BYTES: u64 = 4 * 1024 * 1024;

/// Give memory freed inside the allocator's heaps back to the system. glibc's malloc keeps
/// freed chunks below a heap's top (a slow subscriber's 10 KB messages, say) resident, so a
/// closed client's memory would not show as returned; `malloc_trim` releases those pages.
/// Done off the async workers: it walks every arena.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let trim = || {
            // SAFETY: malloc_trim has no preconditions; it only returns free pages.
            unsafe { libc::malloc_trim(0) };
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(trim)),
            Err(_) => trim(),
        }
    }
}

/// What charging output decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charge {
    Within,
    /// The client passed its class's hard limit, or its soft limit for too long: it has been
    /// killed.
    OverClassLimit,
    /// The server-wide budget is exceeded: someone must be evicted.
    OverTotal,
}

/// One client's output account, shared by its connection and whoever queues messages for it.
pub struct ClientOutput {
    /// Bytes held for this client and not yet written.
    held: AtomicU64,
    /// The most it ever held.
    peak: AtomicU64,
    /// When `held` first reached the soft limit (ms on the server clock, plus one); 0 when
    /// under it.
    soft_since_ms: AtomicU64,
    /// Bytes held when the client was evicted, released from the budget's eviction count when
    /// it is gone.
    evicted_bytes: AtomicU64,
    /// Set (and `kill` notified) to close the connection: CLIENT KILL, limits, eviction.
    pub killed: Arc<AtomicBool>,
    pub kill: Arc<Notify>,
}

impl ClientOutput {
    /// An empty account for the connection that `killed` and `kill` close.
    pub fn new(killed: Arc<AtomicBool>, kill: Arc<Notify>) -> ClientOutput {
        ClientOutput {
            held: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            soft_since_ms: AtomicU64::new(0),
            evicted_bytes: AtomicU64::new(0),
            killed,
            kill,
        }
    }

    /// Bytes held for the client now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// The connection has been told to close.
    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// Close the connection (it notices at once, even while blocked writing).
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.kill.notify_one();
    }

    /// Count `bytes` as held for this client and in `budget`, then apply `limit` as Redis
    /// does: past the hard limit, or at or past the soft limit for longer than its seconds,
    /// the client is killed. `now_ms` is the server clock.
    pub fn charge(
        &self,
        bytes: u64,
        limit: OutputLimit,
        budget: &MemoryBudget,
        now_ms: u64,
    ) -> Charge {
        let held = self.held.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(held, Ordering::Relaxed);
        budget.charge(bytes);
        if self.over_limit(held, limit, now_ms) {
            self.kill();
            return Charge::OverClassLimit;
        }
        if budget.is_over() {
            return Charge::OverTotal;
        }
        Charge::Within
    }

    /// Redis's `checkClientOutputBufferLimits`, with the soft limit's clock in milliseconds.
    fn over_limit(&self, held: u64, limit: OutputLimit, now_ms: u64) -> bool {
        if limit.hard_bytes > 0 && held >= limit.hard_bytes {
            return true;
        }
        if limit.soft_bytes == 0 || held < limit.soft_bytes {
            self.soft_since_ms.store(0, Ordering::Relaxed);
            return false;
        }
        match self.soft_since_ms.load(Ordering::Relaxed) {
            0 => {
                self.soft_since_ms.store(now_ms + 1, Ordering::Relaxed);
                false
            }
            since => now_ms + 1 - since.min(now_ms + 1) > limit.soft_seconds * 1000,
        }
    }

    /// When a client holding at least its soft limit must be gone (server clock, ms), if it
    /// is over its soft limit now.
    pub fn soft_deadline_ms(&self, limit: OutputLimit) -> Option<u64> {
        if limit.soft_bytes == 0 || self.held() < limit.soft_bytes {
            return None;
        }
        match self.soft_since_ms.load(Ordering::Relaxed) {
            0 => None,
            since => Some(since - 1 + limit.soft_seconds * 1000),
        }
    }

    /// `bytes` charged earlier were written (or dropped).
    pub fn release(&self, bytes: u64, budget: &MemoryBudget) {
        let _ = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                Some(held.saturating_sub(bytes))
            });
        budget.release(bytes);
    }

    /// Evict this client to bring the budget back under its maximum: kill it, and count what
    /// it holds as leaving. Returns false if it was already killed.
    pub fn evict(&self, budget: &MemoryBudget) -> bool {
        if self.killed.swap(true, Ordering::AcqRel) {
            return false;
        }
        let held = self.held();
        self.evicted_bytes.store(held, Ordering::Relaxed);
        budget.evicting(held);
        self.kill.notify_one();
        true
    }

    /// The connection is over (its buffers dropped): release everything it still held. After
    /// a client that held much, hand the freed memory back to the system (see
    /// [`return_freed_memory`]).
    pub fn close(&self, budget: &MemoryBudget) {
        budget.release(self.held.swap(0, Ordering::Relaxed));
        budget.evicted(self.evicted_bytes.swap(0, Ordering::Relaxed));
        if self.peak.load(Ordering::Relaxed) >= RETURN_MEMORY_AFTER_BYTES {
            return_freed_memory();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> ClientOutput {
        ClientOutput::new(Arc::new(AtomicBool::new(false)), Arc::new(Notify::new()))
    }

    #[test]
    fn config_reads_and_writes_like_redis() {
        let defaults = OutputLimits::default();
        assert_eq!(
            defaults.to_config(),
            "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60"
        );
        let set = defaults.with_config(b"pubsub 32mb 8mb 60").unwrap();
        assert_eq!(set, defaults);
        let set = defaults
            .with_config(b"PUBSUB 1k 2KB 3 replica 1gb 2mb 30 normal 01 2 +4294967296")
            .unwrap();
        assert_eq!(
            set.to_config(),
            "normal 1 2 0 slave 1073741824 2097152 30 pubsub 1000 2048 3"
        );
        assert_eq!(defaults.with_config(b"").unwrap(), defaults);
        assert_eq!(
            defaults.with_config(b"pubsub 99999999999999999999 20 1"),
            Ok(OutputLimits {
                pubsub: OutputLimit {
                    hard_bytes: u64::MAX,
                    soft_bytes: 20,
                    soft_seconds: 1
                },
                ..defaults
            })
        );
        for (bad, why) in [
            (&b"pubsub 32mb 8mb"[..], BAD_ARGUMENT_COUNT),
            (b"pubsub  1   2 3", BAD_ARGUMENT_COUNT),
            (b"master 1 1 1", BAD_CLASS),
            (b"foo 1 2 3", BAD_CLASS),
            (b"pubsub x 2 3", BAD_VALUE),
            (b"pubsub -1 2 3", BAD_VALUE),
            (b"pubsub +1 2 3", BAD_VALUE),
            (b"pubsub 1.5mb 2 3", BAD_VALUE),
            (b"pubsub 1 2 -3", BAD_VALUE),
            (b"pubsub 1 2 1.5", BAD_VALUE),
            (b"pubsub 1 2 99999999999999999999", BAD_VALUE),
        ] {
            assert_eq!(defaults.with_config(bad), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn hard_and_soft_limits_close_as_redis_does() {
        let budget = MemoryBudget::new(0);
        let limit = OutputLimit {
            hard_bytes: 100,
            soft_bytes: 50,
            soft_seconds: 2,
        };
        let client = account();
        assert_eq!(client.charge(40, limit, &budget, 0), Charge::Within);
        // At the soft limit: the clock starts; still there after 2 s is allowed...
        assert_eq!(client.charge(10, limit, &budget, 1000), Charge::Within);
        assert_eq!(client.soft_deadline_ms(limit), Some(3000));
        assert_eq!(client.charge(1, limit, &budget, 3000), Charge::Within);
        // ... longer is not.
        assert_eq!(
            client.charge(1, limit, &budget, 3001),
            Charge::OverClassLimit
        );
        assert!(client.is_killed());
        // Dropping below the soft limit resets its clock; the hard limit closes at once.
        let client = account();
        client.charge(60, limit, &budget, 0);
        client.release(30, &budget);
        assert_eq!(client.charge(1, limit, &budget, 10_000), Charge::Within);
        assert_eq!(client.soft_deadline_ms(limit), None);
        assert_eq!(
            client.charge(69, limit, &budget, 10_001),
            Charge::OverClassLimit
        );
        // Zero turns limits off.
        let client = account();
        let none = OutputLimit {
            hard_bytes: 0,
            soft_bytes: 0,
            soft_seconds: 0,
        };
        assert_eq!(client.charge(1 << 40, none, &budget, 0), Charge::Within);
        client.close(&budget);
    }

    #[test]
    fn the_total_budget_is_shared_and_released_on_close() {
        let budget = MemoryBudget::new(100);
        let none = OutputLimits::default().normal;
        let (a, b) = (account(), account());
        assert_eq!(a.charge(70, none, &budget, 0), Charge::Within);
        assert_eq!(b.charge(40, none, &budget, 0), Charge::OverTotal);
        assert!(a.evict(&budget));
        assert!(!a.evict(&budget), "once");
        assert!(!budget.is_over(), "what a holds is on its way out");
        a.close(&budget);
        assert_eq!(budget.held(), 40);
        b.release(40, &budget);
        assert_eq!(budget.held(), 0);
    }
}
