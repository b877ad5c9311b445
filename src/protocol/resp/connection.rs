//! One client connection: read what arrived, run every complete request in order, settle the
//! durability of appends, write all replies, repeat. Pipelined requests are thus answered in one
//! write and share one fsync. A blocking read (XREAD BLOCK) ends the round: replies so far go
//! out, the connection waits for data or the timeout, then carries on with later requests.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, Notify};

use super::cmd::{self, Blocked, PendingAck, Session};
use super::reply::Reply;
use super::request::{decode_request, ProtocolError, RequestLimits};
use crate::broker::Broker;

/// Requests run per round before replies are written, bounding the replies held in memory.
const ROUND_REQUESTS_MAX: usize = 1024;
/// Initial input buffer; it grows only as far as one request needs (bounded by the limits).
const INPUT_BUFFER_BYTES: usize = 16 * 1024;

struct Connection {
    broker: Arc<Broker>,
    limits: RequestLimits,
    session: Session,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    input: BytesMut,
    output: BytesMut,
    shutdown: broadcast::Receiver<()>,
}

/// What ended a round of requests.
enum RoundEnd {
    NeedInput,
    Full,
    Close,
    Block(Blocked),
}

/// Serve one client until it disconnects, sends QUIT or a protocol error, or the server stops.
pub async fn serve(
    socket: TcpStream,
    broker: Arc<Broker>,
    limits: RequestLimits,
    client_id: u64,
    shutdown: broadcast::Receiver<()>,
) {
    let _ = socket.set_nodelay(true);
    let (reader, writer) = socket.into_split();
    let mut connection = Connection {
        broker,
        limits,
        session: Session::new(client_id),
        reader,
        writer,
        input: BytesMut::with_capacity(INPUT_BUFFER_BYTES),
        output: BytesMut::new(),
        shutdown,
    };
    connection.run().await;
}

impl Connection {
    async fn run(&mut self) {
        loop {
            let mut replies: Vec<Reply> = Vec::new();
            let end = self.run_round(&mut replies);
            if !self.write(&replies).await {
                return;
            }
            let keep_going = match end {
                RoundEnd::Full => true,
                RoundEnd::NeedInput => self.read_more().await,
                RoundEnd::Close => {
                    let _ = self.writer.shutdown().await;
                    false
                }
                RoundEnd::Block(blocked) => match self.wait_for_data(blocked).await {
                    Some(reply) => self.write(&[reply]).await,
                    None => false,
                },
            };
            if !keep_going {
                return;
            }
        }
    }

    /// Run buffered requests until input runs out, the round is full, or one closes or blocks.
    fn run_round(&mut self, replies: &mut Vec<Reply>) -> RoundEnd {
        let mut pending: Vec<PendingAck> = Vec::new();
        let end = loop {
            if replies.len() >= ROUND_REQUESTS_MAX {
                break RoundEnd::Full;
            }
            match decode_request(&mut self.input, &self.limits) {
                Ok(Some(args)) if args.is_empty() => continue,
                Ok(Some(args)) => {
                    let mut blocked = None;
                    let reply = tokio::task::block_in_place(|| {
                        cmd::execute(
                            &self.broker,
                            &mut self.session,
                            args,
                            &mut pending,
                            replies,
                            &mut blocked,
                        )
                    });
                    if let Some(blocked) = blocked {
                        break RoundEnd::Block(blocked);
                    }
                    replies.push(reply);
                    if self.session.closing {
                        break RoundEnd::Close;
                    }
                }
                Ok(None) => break RoundEnd::NeedInput,
                Err(ProtocolError(text)) => {
                    replies.push(Reply::Error(text));
                    break RoundEnd::Close;
                }
            }
        };
        if !pending.is_empty() {
            tokio::task::block_in_place(|| cmd::settle(&mut pending, replies));
        }
        end
    }

    async fn write(&mut self, replies: &[Reply]) -> bool {
        for reply in replies {
            reply.encode(self.session.protocol, &mut self.output);
        }
        if self.output.is_empty() {
            return true;
        }
        let written = self.writer.write_all(&self.output).await.is_ok();
        self.output.clear();
        written
    }

    /// Read more input; false when the client is gone, the input is absurd, or the server stops.
    async fn read_more(&mut self) -> bool {
        tokio::select! {
            read = self.reader.read_buf(&mut self.input) => matches!(read, Ok(n) if n > 0),
            _ = self.shutdown.recv() => false,
        }
    }

    /// Wait until the blocked read finds data, or its timeout passes. `None` when the client
    /// disconnected or the server is stopping.
    async fn wait_for_data(&mut self, mut blocked: Blocked) -> Option<Reply> {
        let deadline = blocked.timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let notify = Arc::new(Notify::new());
            for key in &blocked.keys {
                self.broker.register_stream_waiter(key, &notify);
            }
            // Checked after registering, so an append in between still wakes us.
            match tokio::task::block_in_place(|| (blocked.retry)(&self.broker)) {
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
                    let too_big = self.input.len() as u64 > self.limits.request_bytes_max;
                    if !matches!(read, Ok(n) if n > 0) || too_big {
                        return None;
                    }
                }
                _ = self.shutdown.recv() => return None,
            }
        }
    }
}
