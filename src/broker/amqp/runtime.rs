//! The queue runtime: what moves messages without a client asking. One task per consumed queue
//! hands ready messages to its consumers whenever something changes (new visible messages,
//! acknowledgements, consumers), and routes what the queue dropped to its dead-letter exchange;
//! the broker's maintenance round ([`VirtualHost::sweep`]) deletes idle queues past `x-expires`
//! and drops expired messages from queue heads (dead-lettering them).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Queue, VirtualHost};

impl VirtualHost {
    /// Make sure a task delivers `queue`'s messages to its consumers; wake it if it runs. The
    /// task needs a tokio runtime (the server's); it ends when the queue is deleted.
    pub fn ensure_dispatcher(self: &Arc<Self>, queue: &Arc<Queue>) {
        if queue.dispatcher_running.swap(true, Ordering::AcqRel) {
            queue.wake_dispatcher();
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            queue.dispatcher_running.store(false, Ordering::Release);
            tracing::error!(queue = %queue.name, "no async runtime to deliver messages on");
            return;
        };
        let (queue, vhost) = (Arc::clone(queue), Arc::downgrade(self));
        runtime.spawn(async move {
            loop {
                if queue.is_deleted() {
                    return;
                }
                if let Err(e) = queue.dispatch() {
                    tracing::error!(queue = %queue.name, error = %e, "dispatch failed");
                }
                let Some(vhost) = vhost.upgrade() else { return };
                vhost.dead_letters_of(&queue);
                drop(vhost);
                queue.dispatch_wanted().await;
            }
        });
    }

    /// Route `queue`'s dead letters, logging a failure (nothing waits for them; the intents
    /// stay recorded, so they are routed again after a restart).
    pub fn dead_letters_of(&self, queue: &Arc<Queue>) {
        if let Err(e) = self.route_dead_letters(queue) {
            tracing::warn!(queue = %queue.name, error = %e.text, "dead-lettering failed");
        }
    }

    /// One round of periodic work: queues idle past `x-expires` are deleted, and expired
    /// messages leave queue heads (dead-lettered where configured).
    pub fn sweep(&self) {
        self.expire_idle_queues();
        for queue in self.queues() {
            let ttl = queue.args.message_ttl_ms.is_some();
            let dead_letters = queue.args.dead_letter_exchange.is_some();
            if !ttl && !dead_letters {
                continue;
            }
            if let Err(e) = queue.expire_head() {
                tracing::warn!(queue = %queue.name, error = %e, "expiring messages failed");
            }
            if dead_letters {
                self.dead_letters_of(&queue);
            }
        }
    }
}
