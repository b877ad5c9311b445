//! The server: listeners, connection tasks, limits and graceful shutdown.
//!
//! Shutdown follows mini-redis: a broadcast tells every connection to stop; each connection task
//! holds a clone of an mpsc sender it never uses, so when `recv` returns `None` every task has
//! finished. Then the broker syncs and closes every log cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

use crate::broker::budget::MemoryBudget;
use crate::broker::Durability;
use crate::broker::{Broker, BrokerConfig};
use crate::protocol::amqp::AmqpShared;
use crate::protocol::resp::output::OutputLimits;
use crate::protocol::resp::request::RequestLimits;
use crate::protocol::resp::shared::{RespShared, ServerFacts, Settings};

/// Default `maxmemory-clients`: 1 GiB held for clients at most. (Redis has no total by
/// default; one slow client per class is bounded by its own limit, but a thousand are not.)
pub const CLIENTS_OUTPUT_BYTES_MAX: u64 = 1024 * 1024 * 1024;

/// Everything `potok serve` can be told.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub resp_addr: String,
    pub amqp_addr: String,
    pub amqp_user: String,
    pub amqp_password: String,
    pub durability: Durability,
    /// RESP `maxclients`: connections served at once; the next is told
    /// `-ERR max number of clients reached` and closed, as by Redis (CONFIG SET changes it).
    pub clients_max: usize,
    /// AMQP connections served at once (RabbitMQ's `connection_max`); further ones wait
    /// unaccepted until one closes.
    pub amqp_connections_max: usize,
    /// Redis's `client-output-buffer-limit` (CONFIG SET changes it).
    pub output_limits: OutputLimits,
    /// Bytes held for all clients of both protocols and not yet written (RESP's
    /// `maxmemory-clients`; 0 = no total). Past it the RESP client holding the most is
    /// evicted and AMQP deliveries wait.
    pub clients_output_bytes_max: u64,
    pub request_limits: RequestLimits,
    /// `requirepass`: clients must AUTH with it.
    pub password: Option<String>,
    /// Segment files kept open at once ([`BrokerConfig::open_files_max`]); `None` for its
    /// default (a quarter of the process's descriptor limit).
    pub open_files_max: Option<usize>,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            data_dir: PathBuf::from("./data"),
            resp_addr: "127.0.0.1:6379".into(),
            amqp_addr: "127.0.0.1:5672".into(),
            amqp_user: "guest".into(),
            amqp_password: "guest".into(),
            durability: Durability::Always,
            clients_max: 10_000,
            amqp_connections_max: 10_000,
            output_limits: OutputLimits::default(),
            clients_output_bytes_max: CLIENTS_OUTPUT_BYTES_MAX,
            request_limits: RequestLimits::default(),
            password: None,
            open_files_max: None,
        }
    }
}

/// Run until `shutdown` completes; then stop accepting, let connections finish their current
/// round, and close the broker cleanly.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut broker_config = BrokerConfig::with_durability(config.durability);
    if let Some(files) = config.open_files_max {
        broker_config.open_files_max = files;
    }
    // A failpoint for the crash-semantics tests (storage-format.md § Write-ahead log).
    if let Some(ms) = std::env::var("POTOK_FAILPOINT_SYNC_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tracing::warn!(ms, "failpoint: every write-ahead log sync is delayed");
        broker_config.wal_sync_delay = std::time::Duration::from_millis(ms);
    }
    let data_dir = config.data_dir.clone();
    let broker: Arc<Broker> =
        tokio::task::spawn_blocking(move || Broker::open(data_dir, broker_config)).await??;
    let listener = TcpListener::bind(&config.resp_addr).await?;
    let local: SocketAddr = listener.local_addr()?;
    tracing::info!(addr = %local, data_dir = %config.data_dir.display(), fsync = %config.durability, "RESP listening");
    let amqp_listener = TcpListener::bind(&config.amqp_addr).await?;
    let amqp_local: SocketAddr = amqp_listener.local_addr()?;
    tracing::info!(addr = %amqp_local, "AMQP listening");
    // Tests and scripts wait for these lines to learn the ports. One write, and errors ignored:
    // a reader that took the first line and closed the pipe must not bring the server down.
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = write!(
            stdout,
            "potok: RESP listening on {local}\npotok: AMQP listening on {amqp_local}\n"
        );
        let _ = stdout.flush();
    }

    let settings = Settings {
        password: config.password.clone(),
        clients_max: config.clients_max,
        output_limits: config.output_limits,
    };
    let facts = ServerFacts {
        resp_addr: local,
        data_dir: config.data_dir.clone(),
        durability: config.durability,
        limits: config.request_limits,
    };
    let output_budget = Arc::new(MemoryBudget::new(config.clients_output_bytes_max));
    let shared = Arc::new(RespShared::new(
        Arc::clone(&broker),
        settings,
        facts,
        Arc::clone(&output_budget),
    ));
    let (notify_shutdown, _) = broadcast::channel::<()>(1);
    let (tasks_done_tx, mut tasks_done_rx) = mpsc::channel::<()>(1);
    let next_client_id = AtomicU64::new(1);
    let accept_loop = async {
        loop {
            let (mut socket, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            shared
                .stats
                .connections_received
                .fetch_add(1, Ordering::Relaxed);
            // CONFIG SET maxclients applies to new connections.
            let Some(slot) = shared.admit() else {
                use tokio::io::AsyncWriteExt;
                shared
                    .stats
                    .rejected_connections
                    .fetch_add(1, Ordering::Relaxed);
                let _ = socket
                    .write_all(b"-ERR max number of clients reached\r\n")
                    .await;
                continue;
            };
            let shared = Arc::clone(&shared);
            let shutdown_rx = notify_shutdown.subscribe();
            let done = tasks_done_tx.clone();
            let id = next_client_id.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                crate::protocol::resp::connection::serve(socket, shared, id, shutdown_rx).await;
                drop(slot);
                drop(done);
            });
        }
    };
    let amqp_shared = Arc::new(AmqpShared::new(
        Arc::clone(&broker),
        config.amqp_user.clone(),
        config.amqp_password.clone(),
        output_budget,
    ));
    // RabbitMQ's connection_max: at the limit no more connections are accepted (they wait in
    // the listen backlog) until one closes. A permit is taken before each accept, so the
    // count is exact under any burst (RabbitMQ's acceptor pool can overshoot it).
    let amqp_slots = Arc::new(tokio::sync::Semaphore::new(
        config
            .amqp_connections_max
            .min(tokio::sync::Semaphore::MAX_PERMITS),
    ));
    let amqp_accept_loop = async {
        loop {
            let Ok(slot) = Arc::clone(&amqp_slots).acquire_owned().await else {
                return;
            };
            let socket = match amqp_listener.accept().await {
                Ok((socket, _)) => socket,
                Err(e) => {
                    tracing::warn!(error = %e, "AMQP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let shared = Arc::clone(&amqp_shared);
            let shutdown_rx = notify_shutdown.subscribe();
            let done = tasks_done_tx.clone();
            tokio::spawn(async move {
                crate::protocol::amqp::connection::serve(socket, shared, shutdown_rx).await;
                drop(slot);
                drop(done);
            });
        }
    };
    tokio::select! {
        _ = accept_loop => {}
        _ = amqp_accept_loop => {}
        _ = shutdown => tracing::info!("shutting down"),
    }
    drop(listener);
    drop(amqp_listener);
    drop(notify_shutdown);
    drop(tasks_done_tx);
    let _ = tasks_done_rx.recv().await;
    let closing = Arc::clone(&broker);
    tokio::task::spawn_blocking(move || closing.close()).await??;
    tracing::info!("clean shutdown complete");
    // Everything is durable now. Freeing the in-memory catalog of a million entities takes
    // seconds; a thread of its own does it, so a process that exits next need not wait.
    let _ = std::thread::Builder::new()
        .name("potok-free".into())
        .spawn(move || drop(broker));
    Ok(())
}
