//! Wake-ups for blocked readers (XREAD BLOCK): a reader registers a [`Notify`] on each stream it
//! waits for (or on the name, if the stream does not exist yet), then checks for data, then
//! awaits. Registering before checking means no wake-up can fall between the two.

use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

/// Readers waiting for one thing to happen.
#[derive(Default)]
pub struct Waiters {
    waiting: Mutex<Vec<Weak<Notify>>>,
}

impl Waiters {
    pub fn register(&self, notify: &Arc<Notify>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        // Readers that gave up (timeout, disconnect) leave dead entries; drop them here.
        waiting.retain(|w| w.strong_count() > 0);
        waiting.push(Arc::downgrade(notify));
    }

    /// Whether a reader is registered and still waiting.
    pub fn is_waited_on(&self) -> bool {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.iter().any(|w| w.strong_count() > 0)
    }

    /// Wake every registered reader once; each re-registers if it keeps waiting.
    pub fn wake_all(&self) {
        let woken = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()));
        for notify in woken.iter().filter_map(Weak::upgrade) {
            // `notify_one` keeps a permit if the reader is not awaiting yet.
            notify.notify_one();
        }
    }
}
