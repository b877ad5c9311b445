//! One AMQP connection: the handshake (protocol header, start/start-ok with PLAIN or AMQPLAIN,
//! tune/tune-ok, open/open-ok), then a loop over client frames, queue deliveries, confirm and
//! commit completions and heartbeats. Errors close the channel (4xx) or the connection (5xx)
//! with RabbitMQ's codes and texts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{channel, connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use super::channel::{Channel, Ctx, WaitDone};
use super::frame::{
    next_frame, put_heartbeat, put_method, reply_text, skip_frame, Frame, FrameError, Skipped,
    FRAME_MAX, FRAME_MIN_SIZE, PROTOCOL_HEADER,
};
use super::AmqpShared;
use crate::broker::amqp::{code, AmqpError, Backlog, QueueEvent};
use crate::broker::Commit;

/// Channels a connection may open (RabbitMQ's default `channel_max`).
const CHANNEL_MAX: u16 = 2047;
/// Heartbeat the server proposes, in seconds.
const HEARTBEAT_SECS: u16 = 60;
/// How long the handshake may take, and how long a closing peer has to answer close-ok.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Input read per round before output is flushed.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Output a round may produce before it is flushed: a round of client frames stops here
/// (the rest waits in the input buffer), and so does a round of queue deliveries. With one
/// message always allowed, the output held is this plus at most one message (basic.get and
/// mandatory returns carry whole messages too).
const ROUND_OUTPUT_BYTES: usize = 256 * 1024;

struct Connection {
    id: u64,
    shared: Arc<AmqpShared>,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    input: BytesMut,
    out: Vec<u8>,
    frame_max: u32,
    channel_max: u16,
    heartbeat: u16,
    channels: HashMap<u16, Channel>,
    events_tx: mpsc::UnboundedSender<QueueEvent>,
    events_rx: mpsc::UnboundedReceiver<QueueEvent>,
    done_tx: mpsc::UnboundedSender<WaitDone>,
    done_rx: mpsc::UnboundedReceiver<WaitDone>,
    consumer_channels: HashMap<u64, u16>,
    /// Deliveries queued for this connection and not yet handed to a channel.
    backlog: Arc<Backlog>,
    /// Complete frames wait in `input`: a round stopped once its output passed
    /// [`ROUND_OUTPUT_BYTES`].
    input_pending: bool,
    last_received: Instant,
    last_sent: Instant,
    /// The latest commit the output buffered so far reports: written once it is durable.
    pending_commit: Commit,
}

/// Why the main loop ended.
enum End {
    /// The peer closed or vanished.
    Gone,
    /// A connection-level error: send connection.close and wait briefly for close-ok.
    Error(AmqpError, u16, u16),
    /// The client sent connection.close (we answered close-ok).
    Closed,
    /// Server shutdown.
    Shutdown,
}

/// Serve one client until it goes.
pub async fn serve(
    socket: TcpStream,
    shared: Arc<AmqpShared>,
    mut shutdown: broadcast::Receiver<()>,
) {
    let _ = socket.set_nodelay(true);
    let peer = socket.peer_addr().ok();
    let (reader, writer) = socket.into_split();
    let id = shared.next_connection_id.fetch_add(1, Ordering::Relaxed);
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let backlog = Arc::new(Backlog::new(Arc::clone(&shared.output_budget)));
    let mut conn = Connection {
        id,
        shared,
        reader,
        writer,
        input: BytesMut::with_capacity(READ_BUFFER_BYTES),
        out: Vec::new(),
        frame_max: FRAME_MIN_SIZE,
        channel_max: CHANNEL_MAX,
        heartbeat: 0,
        channels: HashMap::new(),
        events_tx,
        events_rx,
        done_tx,
        done_rx,
        consumer_channels: HashMap::new(),
        backlog,
        input_pending: false,
        last_received: Instant::now(),
        last_sent: Instant::now(),
        pending_commit: Commit::NONE,
    };
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.handshake(peer)).await;
    let end = match handshake {
        Ok(Ok(true)) => conn.run(&mut shutdown).await,
        Ok(Ok(false)) | Err(_) => End::Gone,
        Ok(Err((error, class, method))) => End::Error(error, class, method),
    };
    match end {
        End::Error(error, class, method) => conn.close_with(error, class, method).await,
        End::Shutdown => {
            let error = AmqpError::new(
                code::CONNECTION_FORCED,
                "broker forced connection closure with reason 'shutdown'",
            );
            conn.close_with(error, 0, 0).await;
        }
        End::Gone | End::Closed => {}
    }
    conn.cleanup();
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes()))
}

fn server_properties() -> FieldTable {
    let mut capabilities = FieldTable::default();
    for name in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        capabilities.insert(ShortString::from(name), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    props.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    props.insert("product".into(), text("Potok"));
    props.insert("version".into(), text(env!("CARGO_PKG_VERSION")));
    props.insert("platform".into(), text("Rust"));
    props.insert("cluster_name".into(), text("potok"));
    props.insert("copyright".into(), text("Potok contributors"));
    props.insert(
        "information".into(),
        text("A durable, log-structured message broker"),
    );
    props
}

impl Connection {
    /// Write all pending output. Cancel-safe: each write takes what it wrote off the front
    /// of `out`, so a flush interrupted (by shutdown) leaves exactly the unwritten rest, and a
    /// later close frame follows whole frames.
    async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let commit = std::mem::take(&mut self.pending_commit);
        if let Err(e) = self.shared.broker.wait_async(commit).await {
            // What the output reports may not be stored: say nothing rather than something
            // false, and let the client reconnect.
            tracing::error!(connection = self.id, error = %e, "a change is not durable; closing the connection");
            return false;
        }
        while !self.out.is_empty() {
            match self.writer.write(&self.out).await {
                Ok(n) if n > 0 => {
                    self.out.drain(..n);
                }
                _ => {
                    self.out.clear();
                    return false;
                }
            }
        }
        self.last_sent = Instant::now();
        true
    }

    /// Flush in the main loop, raced against server shutdown (a client that does not read
    /// must not hold it up): `Some` ends the connection.
    async fn flush_or_stop(&mut self, shutdown: &mut broadcast::Receiver<()>) -> Option<End> {
        tokio::select! {
            flushed = self.flush() => (!flushed).then_some(End::Gone),
            _ = shutdown.recv() => Some(End::Shutdown),
        }
    }

    /// Read until one frame is complete (handshake only).
    async fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some(frame) = next_frame(&mut self.input, self.frame_max)? {
                return Ok(Some(frame));
            }
            match self.reader.read_buf(&mut self.input).await {
                Ok(n) if n > 0 => {}
                _ => return Ok(None),
            }
        }
    }

    /// Expect a connection method on channel 0 during the handshake.
    async fn expect_connection_method(
        &mut self,
    ) -> Result<Option<connection::AMQPMethod>, (AmqpError, u16, u16)> {
        loop {
            let frame = self
                .read_frame()
                .await
                .map_err(|e| (e.error, e.class_id, e.method_id))?;
            match frame {
                None => return Ok(None),
                Some(Frame::Heartbeat(_)) => continue,
                Some(Frame::Method(0, AMQPClass::Connection(m))) => return Ok(Some(m)),
                Some(other) => {
                    let error = AmqpError::new(
                        code::COMMAND_INVALID,
                        format!("unexpected {} during the handshake", describe(&other)),
                    );
                    return Err((error, 0, 0));
                }
            }
        }
    }

    /// Protocol header, start, tune, open. `Ok(false)` if the client left or the header was
    /// not AMQP 0-9-1 (our header was sent back, as the spec asks).
    async fn handshake(&mut self, peer: Option<SocketAddr>) -> Result<bool, (AmqpError, u16, u16)> {
        while self.input.len() < PROTOCOL_HEADER.len() {
            match self.reader.read_buf(&mut self.input).await {
                Ok(n) if n > 0 => {}
                _ => return Ok(false),
            }
        }
        if self.input[..8] != PROTOCOL_HEADER[..] {
            let _ = self.writer.write_all(PROTOCOL_HEADER).await;
            return Ok(false);
        }
        let _ = self.input.split_to(8);
        put_method(
            &mut self.out,
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: server_properties(),
                mechanisms: LongString::from(&b"PLAIN AMQPLAIN"[..]),
                locales: LongString::from(&b"en_US"[..]),
            })),
        );
        if !self.flush().await {
            return Ok(false);
        }
        let Some(method) = self.expect_connection_method().await? else {
            return Ok(false);
        };
        let connection::AMQPMethod::StartOk(start_ok) = method else {
            return Err((
                AmqpError::new(code::COMMAND_INVALID, "expected 'connection.start-ok'"),
                10,
                11,
            ));
        };
        let credentials = match start_ok.mechanism.as_str() {
            "PLAIN" => plain_credentials(start_ok.response.as_bytes()),
            "AMQPLAIN" => amqplain_credentials(start_ok.response.as_bytes()),
            other => {
                let error = AmqpError::new(
                    code::ACCESS_REFUSED,
                    format!("unsupported authentication mechanism '{other}'"),
                );
                return Err((error, 10, 11));
            }
        };
        let loopback = peer.is_some_and(|p| p.ip().is_loopback());
        let accepted = credentials.as_ref().is_some_and(|(user, password)| {
            *user == self.shared.user
                && *password == self.shared.password
                && (loopback || self.shared.user != "guest")
        });
        if !accepted {
            let error = AmqpError::new(
                code::ACCESS_REFUSED,
                format!(
                    "Login was refused using authentication mechanism {}. For details see the broker logfile.",
                    start_ok.mechanism
                ),
            );
            return Err((error, 10, 11));
        }
        put_method(
            &mut self.out,
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: CHANNEL_MAX,
                frame_max: FRAME_MAX,
                heartbeat: HEARTBEAT_SECS,
            })),
        );
        if !self.flush().await {
            return Ok(false);
        }
        let Some(method) = self.expect_connection_method().await? else {
            return Ok(false);
        };
        let connection::AMQPMethod::TuneOk(tune) = method else {
            return Err((
                AmqpError::new(code::COMMAND_INVALID, "expected 'connection.tune-ok'"),
                10,
                31,
            ));
        };
        if tune.frame_max > FRAME_MAX || (tune.frame_max != 0 && tune.frame_max < FRAME_MIN_SIZE) {
            let error = AmqpError::new(
                code::NOT_ALLOWED,
                format!("frame_max={} > {FRAME_MAX} max size", tune.frame_max),
            );
            return Err((error, 10, 31));
        }
        self.frame_max = if tune.frame_max == 0 {
            FRAME_MAX
        } else {
            tune.frame_max
        };
        self.channel_max = if tune.channel_max == 0 {
            CHANNEL_MAX
        } else {
            tune.channel_max.min(CHANNEL_MAX)
        };
        self.heartbeat = tune.heartbeat;
        let Some(method) = self.expect_connection_method().await? else {
            return Ok(false);
        };
        let connection::AMQPMethod::Open(open) = method else {
            return Err((
                AmqpError::new(code::COMMAND_INVALID, "expected 'connection.open'"),
                10,
                40,
            ));
        };
        if open.virtual_host.as_str() != "/" {
            let error = AmqpError::new(
                code::NOT_ALLOWED,
                format!("vhost {} not found", open.virtual_host),
            );
            return Err((error, 10, 40));
        }
        put_method(
            &mut self.out,
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        );
        Ok(self.flush().await)
    }

    async fn run(&mut self, shutdown: &mut broadcast::Receiver<()>) -> End {
        // Heartbeats: send at half the interval when idle; give up after two silent ones.
        let period = if self.heartbeat > 0 {
            Duration::from_millis(u64::from(self.heartbeat) * 500)
        } else {
            Duration::from_secs(3600)
        };
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.last_received = Instant::now();
        // Frames the client pipelined behind the handshake are already buffered.
        if !self.input.is_empty() {
            let end = self.process_input();
            if let Some(stop) = self.flush_or_stop(shutdown).await {
                return stop;
            }
            if let Some(end) = end {
                return end;
            }
        }
        loop {
            if std::mem::take(&mut self.input_pending) {
                // The last round stopped at its output limit; that output is written.
                let end = self.process_input();
                if let Some(stop) = self.flush_or_stop(shutdown).await {
                    return stop;
                }
                if let Some(end) = end {
                    return end;
                }
                continue;
            }
            let end = tokio::select! {
                read = self.reader.read_buf(&mut self.input) => match read {
                    Ok(n) if n > 0 => {
                        self.last_received = Instant::now();
                        self.process_input()
                    }
                    _ => Some(End::Gone),
                },
                Some(event) = self.events_rx.recv() => {
                    self.handle_event(event);
                    while self.out.len() < ROUND_OUTPUT_BYTES {
                        let Ok(event) = self.events_rx.try_recv() else {
                            break;
                        };
                        self.handle_event(event);
                    }
                    None
                }
                Some(done) = self.done_rx.recv() => {
                    self.handle_done(done);
                    while let Ok(done) = self.done_rx.try_recv() {
                        self.handle_done(done);
                    }
                    None
                }
                _ = ticker.tick() => {
                    if self.heartbeat > 0 {
                        let silence = self.last_received.elapsed();
                        if silence > Duration::from_secs(u64::from(self.heartbeat) * 2) {
                            tracing::warn!(connection = self.id, "missed heartbeats from client; closing");
                            Some(End::Gone)
                        } else {
                            if self.last_sent.elapsed() >= period {
                                put_heartbeat(&mut self.out);
                            }
                            None
                        }
                    } else {
                        None
                    }
                }
                _ = shutdown.recv() => Some(End::Shutdown),
            };
            if let Some(stop) = self.flush_or_stop(shutdown).await {
                return stop;
            }
            if let Some(end) = end {
                return end;
            }
        }
    }

    fn ctx(&mut self) -> (Ctx<'_>, &mut HashMap<u16, Channel>) {
        (
            Ctx {
                shared: &self.shared,
                connection_id: self.id,
                out: &mut self.out,
                frame_max: self.frame_max,
                events: &self.events_tx,
                consumer_channels: &mut self.consumer_channels,
                done: &self.done_tx,
                pending: &mut self.pending_commit,
                backlog: &self.backlog,
            },
            &mut self.channels,
        )
    }

    /// Handle every complete frame in the input; then end the round on each channel.
    fn process_input(&mut self) -> Option<End> {
        let mut end = None;
        loop {
            if self.out.len() >= ROUND_OUTPUT_BYTES {
                self.input_pending = true;
                break;
            }
            let frame = match next_frame(&mut self.input, self.frame_max) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    end = Some(End::Error(e.error, e.class_id, e.method_id));
                    break;
                }
            };
            if let Some(e) = self.handle_frame(frame) {
                end = Some(e);
                break;
            }
        }
        let (_, channels) = self.ctx();
        for channel in channels.values_mut() {
            channel.end_round();
        }
        end
    }

    fn handle_frame(&mut self, frame: Frame) -> Option<End> {
        match frame {
            Frame::Heartbeat(0) => None,
            Frame::Heartbeat(_) => Some(End::Error(
                AmqpError::new(
                    code::FRAME_ERROR,
                    "heartbeat frame on a channel other than 0",
                ),
                0,
                0,
            )),
            Frame::Method(0, AMQPClass::Connection(m)) => self.connection_method(m),
            Frame::Method(0, other) => {
                let (class, method) = (other.get_amqp_class_id(), other.get_amqp_method_id());
                Some(End::Error(
                    AmqpError::new(
                        code::COMMAND_INVALID,
                        format!("method {class}.{method} on channel 0"),
                    ),
                    class,
                    method,
                ))
            }
            Frame::Method(id, AMQPClass::Channel(channel::AMQPMethod::Open(_)))
                if !self.channels.contains_key(&id) =>
            {
                if id > self.channel_max {
                    return Some(End::Error(
                        AmqpError::new(
                            code::NOT_ALLOWED,
                            format!("channel_max {} exceeded", self.channel_max),
                        ),
                        20,
                        10,
                    ));
                }
                self.channels.insert(id, Channel::new(id));
                put_method(
                    &mut self.out,
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
                );
                None
            }
            Frame::Method(id, method) => self.channel_method(id, method),
            Frame::Header {
                channel,
                class_id,
                body_size,
                properties,
                raw_properties,
            } => self.with_channel(channel, 60, 40, |ch, ctx| {
                ch.content_header(class_id, body_size, properties, raw_properties, ctx)
            }),
            Frame::Body(channel, body) => {
                self.with_channel(channel, 60, 40, |ch, ctx| ch.content_body(body, ctx))
            }
        }
    }

    fn connection_method(&mut self, m: connection::AMQPMethod) -> Option<End> {
        match m {
            connection::AMQPMethod::Close(_) => {
                put_method(
                    &mut self.out,
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                Some(End::Closed)
            }
            connection::AMQPMethod::CloseOk(_) => Some(End::Gone),
            connection::AMQPMethod::Blocked(_) | connection::AMQPMethod::Unblocked(_) => None,
            connection::AMQPMethod::UpdateSecret(_) => {
                put_method(
                    &mut self.out,
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                        connection::UpdateSecretOk {},
                    )),
                );
                None
            }
            other => {
                let class = AMQPClass::Connection(other);
                let (c, m) = (class.get_amqp_class_id(), class.get_amqp_method_id());
                Some(End::Error(
                    AmqpError::new(
                        code::COMMAND_INVALID,
                        format!("unexpected method {c}.{m} after the handshake"),
                    ),
                    c,
                    m,
                ))
            }
        }
    }

    fn channel_method(&mut self, id: u16, method: AMQPClass) -> Option<End> {
        let (class, method_id) = (method.get_amqp_class_id(), method.get_amqp_method_id());
        match method {
            AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                if let Some(mut ch) = self.channels.remove(&id) {
                    let (mut ctx, _) = self.ctx();
                    ch.close(&mut ctx);
                    put_method(
                        &mut self.out,
                        id,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    );
                    return None;
                }
                Some(self.unopened_channel(id, class, method_id))
            }
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {
                // Our channel.close was answered: the channel number is free again.
                match self.channels.get(&id) {
                    Some(ch) if ch.closing => {
                        self.channels.remove(&id);
                        None
                    }
                    _ => Some(self.unopened_channel(id, class, method_id)),
                }
            }
            method => self.with_channel(id, class, method_id, |ch, ctx| ch.handle(method, ctx)),
        }
    }

    fn unopened_channel(&self, id: u16, class: u16, method: u16) -> End {
        End::Error(
            AmqpError::new(
                code::CHANNEL_ERROR,
                format!("expected 'channel.open' on channel {id}"),
            ),
            class,
            method,
        )
    }

    /// Run `f` on an open channel; a channel-level error closes the channel, a
    /// connection-level one ends the connection.
    fn with_channel(
        &mut self,
        id: u16,
        class: u16,
        method: u16,
        f: impl FnOnce(&mut Channel, &mut Ctx<'_>) -> Result<(), AmqpError>,
    ) -> Option<End> {
        let (mut ctx, channels) = self.ctx();
        let Some(ch) = channels.get_mut(&id) else {
            return Some(End::Error(
                AmqpError::new(
                    code::CHANNEL_ERROR,
                    format!("expected 'channel.open' on channel {id}"),
                ),
                class,
                method,
            ));
        };
        if ch.closing {
            return None;
        }
        match f(ch, &mut ctx) {
            Ok(()) => None,
            Err(error) if error.closes_connection() => Some(End::Error(error, class, method)),
            Err(error) => {
                ch.close(&mut ctx);
                ch.closing = true;
                put_method(
                    ctx.out,
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                        reply_code: error.code,
                        reply_text: reply_text(&error.text),
                        class_id: class,
                        method_id: method,
                    })),
                );
                None
            }
        }
    }

    fn handle_event(&mut self, event: QueueEvent) {
        match event {
            QueueEvent::Deliver(delivery) => {
                self.backlog.remove(delivery.bytes());
                let queue = Arc::clone(&delivery.queue);
                let channel = self.consumer_channels.get(&delivery.consumer_id).copied();
                let (mut ctx, channels) = self.ctx();
                match channel.and_then(|c| channels.get_mut(&c)) {
                    Some(ch) => ch.deliver(delivery, &mut ctx),
                    None => {
                        if !delivery.no_ack {
                            queue.requeue(delivery.offset, delivery.consumer_id);
                        }
                    }
                }
                queue.wake_dispatcher();
            }
            QueueEvent::Cancelled {
                consumer_id,
                consumer_tag,
            } => {
                let channel = self.consumer_channels.get(&consumer_id).copied();
                let (mut ctx, channels) = self.ctx();
                if let Some(ch) = channel.and_then(|c| channels.get_mut(&c)) {
                    ch.consumer_cancelled(&consumer_tag, &mut ctx);
                }
            }
        }
    }

    fn handle_done(&mut self, done: WaitDone) {
        use amq_protocol::protocol::{basic, tx};
        match done {
            WaitDone::Confirmed {
                channel,
                first,
                seq,
                ok,
                nacked,
            } => {
                if self.channels.get(&channel).is_none_or(|c| c.closing) {
                    return;
                }
                if ok && nacked.is_empty() {
                    let ack = basic::Ack {
                        delivery_tag: seq,
                        multiple: true,
                    };
                    put_method(
                        &mut self.out,
                        channel,
                        AMQPClass::Basic(basic::AMQPMethod::Ack(ack)),
                    );
                    return;
                }
                // Some refused (or the writes failed): answer each publish on its own.
                for tag in first..=seq {
                    let method = if ok && !nacked.contains(&tag) {
                        basic::AMQPMethod::Ack(basic::Ack {
                            delivery_tag: tag,
                            multiple: false,
                        })
                    } else {
                        basic::AMQPMethod::Nack(basic::Nack {
                            delivery_tag: tag,
                            multiple: false,
                            requeue: false,
                        })
                    };
                    put_method(&mut self.out, channel, AMQPClass::Basic(method));
                }
            }
            WaitDone::Committed { channel, ok } => {
                if self.channels.get(&channel).is_none_or(|c| c.closing) {
                    return;
                }
                if ok {
                    put_method(
                        &mut self.out,
                        channel,
                        AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
                    );
                } else {
                    put_method(
                        &mut self.out,
                        channel,
                        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                            reply_code: code::INTERNAL_ERROR,
                            reply_text: "INTERNAL_ERROR - commit not durable".into(),
                            class_id: 90,
                            method_id: 20,
                        })),
                    );
                }
            }
        }
    }

    /// Send connection.close and wait (briefly) for close-ok. Frames meanwhile are dropped
    /// without being decoded (under the connection's own frame_max), so nothing sent after an
    /// error, such as the rest of a frame refused for its size, is ever parsed.
    async fn close_with(&mut self, error: AmqpError, class: u16, method: u16) {
        tracing::debug!(connection = self.id, code = error.code, text = %error.text, "closing AMQP connection");
        put_method(
            &mut self.out,
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: error.code,
                reply_text: reply_text(&error.text),
                class_id: class,
                method_id: method,
            })),
        );
        // A client that does not read gets no longer than it has to answer.
        if !matches!(
            tokio::time::timeout(CLOSE_TIMEOUT, self.flush()).await,
            Ok(true)
        ) {
            return;
        }
        let frame_max = self.frame_max;
        let wait = async {
            loop {
                match skip_frame(&mut self.input, frame_max) {
                    Skipped::CloseOk | Skipped::Broken => return,
                    Skipped::Other => continue,
                    Skipped::Incomplete => {}
                }
                match self.reader.read_buf(&mut self.input).await {
                    Ok(n) if n > 0 => {}
                    _ => return,
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, wait).await;
        let _ = self.writer.shutdown().await;
    }

    /// The connection is gone: channels give back their unacknowledged deliveries, consumers
    /// go, exclusive queues are deleted.
    fn cleanup(&mut self) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            if let Some(mut ch) = self.channels.remove(&id) {
                let (mut ctx, _) = self.ctx();
                ch.close(&mut ctx);
            }
        }
        self.shared.broker.vhost().connection_closed(self.id);
    }
}

/// A frame named for an error message (never its contents: a body may be 128 KiB).
fn describe(frame: &Frame) -> String {
    match frame {
        Frame::Method(channel, class) => format!(
            "method {}.{} on channel {channel}",
            class.get_amqp_class_id(),
            class.get_amqp_method_id()
        ),
        Frame::Header { channel, .. } => format!("content header on channel {channel}"),
        Frame::Body(channel, _) => format!("content body on channel {channel}"),
        Frame::Heartbeat(channel) => format!("heartbeat on channel {channel}"),
    }
}

/// SASL PLAIN: `authzid NUL authcid NUL password`.
fn plain_credentials(response: &[u8]) -> Option<(String, String)> {
    let mut parts = response.split(|&b| b == 0);
    let _authzid = parts.next()?;
    let user = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let password = String::from_utf8(parts.next()?.to_vec()).ok()?;
    Some((user, password))
}

/// The user and password in an AMQPLAIN response: a field table (without its length
/// prefix) with LOGIN and PASSWORD, long or short strings. `None` if it has no such pair, does
/// not decode, or nests too deep to decode safely (see [`super::nesting`]).
pub fn amqplain_credentials(response: &[u8]) -> Option<(String, String)> {
    super::nesting::check_table_entries(response).ok()?;
    let mut framed = (response.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(response);
    let (_, table) = amq_protocol::types::parsing::parse_field_table(&framed[..]).ok()?;
    let get = |key: &str| match table.inner().get(key)? {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    };
    Some((get("LOGIN")?, get("PASSWORD")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_responses_parse() {
        assert_eq!(
            plain_credentials(b"\0guest\0secret"),
            Some(("guest".into(), "secret".into()))
        );
        assert_eq!(plain_credentials(b"guest"), None);
        let mut table = FieldTable::default();
        table.insert("LOGIN".into(), text("u"));
        table.insert("PASSWORD".into(), text("p"));
        let encoded = cookie_factory::gen_simple(
            amq_protocol::types::generation::gen_field_table(&table),
            Vec::new(),
        )
        .unwrap();
        assert_eq!(
            amqplain_credentials(&encoded[4..]),
            Some(("u".into(), "p".into()))
        );
    }
}
