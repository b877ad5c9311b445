//! One client connection: read what arrived, run every complete request in order, settle the
//! durability of appends, write all replies, repeat. Pipelined requests are thus answered in one
//! write and share one fsync. A blocking read (XREAD BLOCK) ends the round: replies so far go
//! out, the connection waits for data or the timeout, then carries on with later requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, Notify};

use super::cmd::{self, Blocked, PendingAcks, ReplyMode, Session};
use super::output::{Charge, ClientOutput};
use super::pubsub::{Queued, Subscriber};
use super::reply::{Protocol, Reply};
use super::request::{decode_request, ProtocolError};
use super::shared::{ClientActivity, ClientEntry, RespShared};

/// Requests run per round before replies are written, bounding the replies held in memory.
const ROUND_REQUESTS_MAX: usize = 1024;
/// Initial input buffer; it grows only as far as one request needs (bounded by the limits).
const INPUT_BUFFER_BYTES: usize = 16 * 1024;
/// Pub/Sub messages encoded per write: at most this many, and no more bytes than
/// [`DELIVERY_BATCH_BYTES`] beyond the first message.
const DELIVERY_BATCH_MAX: usize = 1024;
const DELIVERY_BATCH_BYTES: u64 = 1024 * 1024;

struct Connection {
    shared: Arc<RespShared>,
    session: Session,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    input: BytesMut,
    output: BytesMut,
    shutdown: broadcast::Receiver<()>,
    killed: Arc<AtomicBool>,
    kill: Arc<Notify>,
    /// What the server holds for this client (its output limits apply to it).
    account: Arc<ClientOutput>,
    /// Pub/Sub messages for this client, each charged to `output` when queued.
    messages: mpsc::UnboundedReceiver<Queued>,
    /// A request decoded but left for the next round (it had to wait for pending acks).
    carried: Option<Vec<bytes::Bytes>>,
    activity: Arc<ClientActivity>,
    /// A round's replies and pending acks, kept for the next round.
    replies: Vec<Reply>,
    pending: PendingAcks,
    /// The last command looked up: pipelines mostly repeat one command.
    last_command: Option<&'static cmd::CommandSpec>,
    /// XADDs held back within the round, to be appended together.
    deferred: cmd::DeferredAdds,
}

/// What ended a round of requests.
enum RoundEnd {
    NeedInput,
    Full,
    Close,
    Block(Blocked),
}

/// Serve one client until it disconnects, sends QUIT or a protocol error, is killed, or the
/// server stops.
pub async fn serve(
    socket: TcpStream,
    shared: Arc<RespShared>,
    client_id: u64,
    shutdown: broadcast::Receiver<()>,
) {
    let _ = socket.set_nodelay(true);
    let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
    let (addr, local_addr) = (
        socket.peer_addr().unwrap_or(unknown),
        socket.local_addr().unwrap_or(unknown),
    );
    let (reader, writer) = socket.into_split();
    let (killed, kill) = (Arc::new(AtomicBool::new(false)), Arc::new(Notify::new()));
    let activity = Arc::new(ClientActivity {
        last_active_ms: AtomicU64::new(0),
        last_command: AtomicU64::new(u64::MAX),
        protocol: AtomicU64::new(2),
    });
    let output = Arc::new(ClientOutput::new(Arc::clone(&killed), Arc::clone(&kill)));
    let now = Instant::now();
    shared.clients().insert(
        client_id,
        ClientEntry {
            addr,
            local_addr,
            name: None,
            lib_name: None,
            lib_ver: None,
            created: now,
            activity: Arc::clone(&activity),
            blocked: false,
            killed: Arc::clone(&killed),
            kill: Arc::clone(&kill),
            output: Arc::clone(&output),
        },
    );
    let authenticated = !shared.password_required();
    // Unbounded in messages: bounded in bytes by the output limits and the total budget.
    let (queue, messages) = mpsc::unbounded_channel();
    let subscriber = Subscriber {
        queue,
        output: Arc::clone(&output),
    };
    let mut connection = Connection {
        shared: Arc::clone(&shared),
        session: Session::new(client_id, authenticated, subscriber),
        reader,
        writer,
        input: BytesMut::with_capacity(INPUT_BUFFER_BYTES),
        output: BytesMut::new(),
        shutdown,
        killed,
        kill,
        account: Arc::clone(&output),
        messages,
        carried: None,
        activity,
        replies: Vec::new(),
        pending: PendingAcks::default(),
        last_command: None,
        deferred: cmd::DeferredAdds::default(),
    };
    connection.run().await;
    for channel in connection.session.subscriptions.iter() {
        shared.pubsub.unsubscribe(channel, client_id);
    }
    for pattern in connection.session.patterns.iter() {
        shared.pubsub.punsubscribe(pattern, client_id);
    }
    shared.clients().remove(&client_id);
    // Queued messages and buffers go with the connection; so does their charge.
    drop(connection);
    output.close(&shared.output_budget);
}

impl Connection {
    async fn run(&mut self) {
        loop {
            if self.killed.load(Ordering::Acquire) {
                return;
            }
            // Reused across rounds, so a steady pipeline allocates neither.
            let mut replies = std::mem::take(&mut self.replies);
            let mut pending = std::mem::take(&mut self.pending);
            replies.clear();
            let (end, executed) = self.run_round(&mut replies, &mut pending);
            self.session.forget_stream();
            // Counted per round: one shared atomic add instead of one per command.
            self.shared.count_commands(executed);
            if !pending.is_empty() {
                pending.settle(&self.shared.broker, &mut replies).await;
            }
            let written = self.write(&mut replies, 0).await;
            (self.replies, self.pending) = (replies, pending);
            if !written {
                return;
            }
            let keep_going = match end {
                RoundEnd::Full => true,
                RoundEnd::NeedInput => self.read_more().await,
                RoundEnd::Close => {
                    let _ = self.writer.shutdown().await;
                    false
                }
                RoundEnd::Block(blocked) => {
                    self.set_blocked(true);
                    let reply = self.wait_for_data(blocked).await;
                    self.set_blocked(false);
                    match reply {
                        Some(reply) => self.write(&mut vec![reply], 0).await,
                        None => false,
                    }
                }
            };
            if !keep_going {
                return;
            }
        }
    }

    fn set_blocked(&self, blocked: bool) {
        if let Some(entry) = self.shared.clients().get_mut(&self.session.id) {
            entry.blocked = blocked;
        }
    }

    /// Record what the client just did, for CLIENT LIST (atomics: no shared lock per command).
    fn note_command(&self, spec: Option<&cmd::CommandSpec>, now_ms: u64) {
        let index = spec.map_or(u64::MAX, |spec| cmd::index_of(spec) as u64);
        self.activity.last_command.store(index, Ordering::Relaxed);
        self.activity
            .last_active_ms
            .store(now_ms, Ordering::Relaxed);
        let protocol = if self.session.protocol == Protocol::Resp3 {
            3
        } else {
            2
        };
        self.activity.protocol.store(protocol, Ordering::Relaxed);
    }

    /// Run buffered requests until input runs out, the round is full, one closes or blocks, or
    /// one must see writes whose acks are still pending (it then opens the next round).
    fn lookup(&mut self, name: &[u8]) -> Option<&'static cmd::CommandSpec> {
        let last = self.last_command;
        if let Some(spec) = last.filter(|s| s.name.as_bytes().eq_ignore_ascii_case(name)) {
            return Some(spec);
        }
        let spec = cmd::lookup(name);
        self.last_command = spec.or(last);
        spec
    }

    /// Also returns how many commands ran.
    fn run_round(
        &mut self,
        replies: &mut Vec<Reply>,
        pending: &mut PendingAcks,
    ) -> (RoundEnd, u64) {
        let mut executed = 0;
        let end = self.run_requests(replies, pending, &mut executed);
        self.deferred.flush(&self.shared.broker, pending);
        self.deferred.settle_into(replies);
        (end, executed)
    }

    fn run_requests(
        &mut self,
        replies: &mut Vec<Reply>,
        pending: &mut PendingAcks,
        executed: &mut u64,
    ) -> RoundEnd {
        let limits = self.shared.facts.limits;
        // One clock read per round is precise enough for CLIENT LIST's idle time.
        let now_ms = self.shared.started.elapsed().as_millis() as u64;
        // What this round's replies take, as commands building large replies must know.
        let mut round_bytes = 0;
        loop {
            if replies.len() >= ROUND_REQUESTS_MAX {
                return RoundEnd::Full;
            }
            let args = match self.carried.take() {
                Some(args) => args,
                None => match decode_request(&mut self.input, &limits) {
                    Ok(Some(args)) if args.is_empty() => continue,
                    Ok(Some(args)) => args,
                    Ok(None) => return RoundEnd::NeedInput,
                    Err(ProtocolError(text)) => {
                        replies.push(Reply::Error(text));
                        return RoundEnd::Close;
                    }
                },
            };
            let spec = self.lookup(&args[0]);
            if !self.deferred.is_empty() && spec.is_none_or(|spec| spec.name != "xadd") {
                // Whatever comes next sees the held-back XADDs done.
                self.deferred.flush(&self.shared.broker, pending);
                self.deferred.settle_into(replies);
            }
            if !pending.is_empty() && cmd::needs_settled_writes(spec) {
                self.carried = Some(args);
                return RoundEnd::Full;
            }
            self.note_command(spec, now_ms);
            if !spec.is_some_and(|spec| spec.defers_ack) {
                // Anything but the hot XADD/XACK may be INFO, which must see earlier commands.
                self.shared.count_commands(std::mem::take(executed));
            }
            *executed += 1;
            let mode_before = self.session.reply_mode;
            let mut blocked = None;
            let reply_index = replies.len();
            self.session.reply_bytes = round_bytes;
            let off_worker = cmd::may_block(spec, &args);
            let run = || {
                let turn = cmd::Turn {
                    pending,
                    reply_index,
                    blocked: &mut blocked,
                    deferred: Some(&mut self.deferred),
                };
                cmd::execute(&self.shared, &mut self.session, spec, args, turn)
            };
            let reply = if off_worker {
                tokio::task::block_in_place(run)
            } else {
                run()
            };
            if let Some(blocked) = blocked {
                return RoundEnd::Block(blocked);
            }
            let reply = self.filter_reply(mode_before, reply);
            round_bytes += reply.size_estimate();
            replies.push(reply);
            self.deferred.settle_into(replies);
            // Closing, or closed by its output limit while building a reply.
            if self.session.closing || self.killed.load(Ordering::Acquire) {
                return RoundEnd::Close;
            }
        }
    }

    /// CLIENT REPLY: OFF silences replies (including its own), SKIP silences its own and the
    /// next command's, ON answers again.
    fn filter_reply(&mut self, mode_before: ReplyMode, reply: Reply) -> Reply {
        match (mode_before, self.session.reply_mode) {
            (ReplyMode::Skip, _) => {
                if self.session.reply_mode == ReplyMode::Skip {
                    self.session.reply_mode = ReplyMode::On;
                }
                Reply::Silent
            }
            (_, ReplyMode::Off | ReplyMode::Skip) => Reply::Silent,
            (_, ReplyMode::On) => reply,
        }
    }

    /// Encode `replies` (emptying the vector) and write them, charged to the client's output
    /// account while they wait for the socket. The write is raced against a kill and, when
    /// the client is at its soft limit, against that limit's deadline, so a client that does
    /// not read is closed on time even while blocked here. `precharged`: what these replies
    /// were charged when queued (Pub/Sub messages), released once they are encoded. False
    /// when the client must go.
    async fn write(&mut self, replies: &mut Vec<Reply>, precharged: u64) -> bool {
        let budget = Arc::clone(&self.shared.output_budget);
        for reply in replies.drain(..) {
            reply.encode(self.session.protocol, &mut self.output);
        }
        self.account.release(precharged, &budget);
        if self.killed.load(Ordering::Acquire) {
            return false;
        }
        if self.output.is_empty() {
            return true;
        }
        let bytes = self.output.len() as u64;
        let limit = self
            .shared
            .output_limits()
            .class(self.session.output_class());
        match self
            .account
            .charge(bytes, limit, &budget, self.shared.now_ms())
        {
            Charge::Within => {}
            Charge::OverClassLimit => {
                tracing::warn!(
                    client = self.session.id,
                    bytes = self.account.held(),
                    "closing client over its output buffer limit"
                );
            }
            Charge::OverTotal => self.shared.evict_over_budget(),
        }
        let written = !self.killed.load(Ordering::Acquire) && self.write_out(limit).await;
        self.account.release(bytes, &budget);
        self.output.clear();
        written
    }

    /// Write the output buffer, unless the client is killed, stays at its soft limit past
    /// the soft seconds, or the server stops first (a client that does not read must not hold
    /// up a graceful shutdown).
    async fn write_out(&mut self, limit: super::output::OutputLimit) -> bool {
        let deadline = self.account.soft_deadline_ms(limit);
        let soft_expiry = async {
            match deadline {
                Some(ms) => {
                    let wait = ms.saturating_sub(self.shared.now_ms());
                    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            written = self.writer.write_all(&self.output) => written.is_ok(),
            _ = self.kill.notified() => false,
            _ = self.shutdown.recv() => false,
            _ = soft_expiry => {
                tracing::warn!(
                    client = self.session.id,
                    "closing client over its soft output buffer limit for too long"
                );
                self.account.kill();
                false
            }
        }
    }

    /// Read more input, delivering Pub/Sub messages meanwhile; false when the client is gone
    /// or killed, or the server stops.
    async fn read_more(&mut self) -> bool {
        loop {
            tokio::select! {
                read = self.reader.read_buf(&mut self.input) => return matches!(read, Ok(n) if n > 0),
                Some(message) = self.messages.recv() => {
                    if !self.deliver(message).await {
                        return false;
                    }
                }
                _ = self.kill.notified() => return false,
                _ = self.shutdown.recv() => return false,
            }
        }
    }

    /// Write a Pub/Sub message and whatever else is queued behind it (a bounded batch).
    async fn deliver(&mut self, first: Queued) -> bool {
        let mut bytes = first.bytes;
        let mut batch = vec![first.message];
        while batch.len() < DELIVERY_BATCH_MAX && bytes < DELIVERY_BATCH_BYTES {
            match self.messages.try_recv() {
                Ok(next) => {
                    bytes += next.bytes;
                    batch.push(next.message);
                }
                Err(_) => break,
            }
        }
        self.write(&mut batch, bytes).await
    }

    /// Wait until the blocked read finds data, or its timeout passes. `None` when the client
    /// disconnected or was killed, or the server is stopping.
    async fn wait_for_data(&mut self, mut blocked: Blocked) -> Option<Reply> {
        let deadline = blocked.timeout.map(|t| tokio::time::Instant::now() + t);
        let limits = self.shared.facts.limits;
        loop {
            let notify = Arc::new(Notify::new());
            for key in &blocked.keys {
                self.shared.broker.register_stream_waiter(key, &notify);
            }
            // Checked after registering, so an append in between still wakes us.
            match tokio::task::block_in_place(|| (blocked.retry)(&self.shared.broker)) {
                Ok(Some(reply)) | Err(reply) => return Some(reply),
                Ok(None) => {}
            }
            let timeout = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = notify.notified() => {}
                _ = timeout => return Some(blocked.timeout_reply),
                // Requests sent meanwhile wait in the buffer, as in Redis; a closed socket or
                // an oversized buffer ends the connection.
                read = self.reader.read_buf(&mut self.input) => {
                    let too_big = self.input.len() as u64 > limits.request_bytes_max;
                    if !matches!(read, Ok(n) if n > 0) || too_big {
                        return None;
                    }
                }
                Some(message) = self.messages.recv() => {
                    if !self.deliver(message).await {
                        return None;
                    }
                }
                _ = self.kill.notified() => return None,
                _ = self.shutdown.recv() => return None,
            }
        }
    }
}
