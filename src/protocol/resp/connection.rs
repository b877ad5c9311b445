//! One client connection: read what arrived, run every complete request in order, settle the
//! durability of appends, write all replies, repeat. Pipelined requests are thus answered in one
//! write and share one fsync.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;

use super::cmd::{self, PendingAck, Session};
use super::reply::Reply;
use super::request::{decode_request, ProtocolError, RequestLimits};
use crate::broker::Broker;

/// Requests run per round before replies are written, bounding the replies held in memory.
const ROUND_REQUESTS_MAX: usize = 1024;
/// Initial input buffer; it grows only as far as one request needs (bounded by the limits).
const INPUT_BUFFER_BYTES: usize = 16 * 1024;

/// Serve one client until it disconnects, sends QUIT or a protocol error, or the server stops.
pub async fn serve(
    socket: TcpStream,
    broker: Arc<Broker>,
    limits: RequestLimits,
    client_id: u64,
    mut shutdown: broadcast::Receiver<()>,
) {
    let _ = socket.set_nodelay(true);
    let (mut reader, mut writer) = socket.into_split();
    let mut session = Session::new(client_id);
    let mut input = BytesMut::with_capacity(INPUT_BUFFER_BYTES);
    let mut output = BytesMut::new();
    loop {
        let mut replies: Vec<Reply> = Vec::new();
        let mut pending: Vec<PendingAck> = Vec::new();
        let mut needs_input = false;
        let mut close = false;
        while replies.len() < ROUND_REQUESTS_MAX {
            match decode_request(&mut input, &limits) {
                Ok(Some(args)) if args.is_empty() => continue,
                Ok(Some(args)) => {
                    let reply = tokio::task::block_in_place(|| {
                        cmd::execute(&broker, &mut session, args, &mut pending, &mut replies)
                    });
                    replies.push(reply);
                    if session.closing {
                        close = true;
                        break;
                    }
                }
                Ok(None) => {
                    needs_input = true;
                    break;
                }
                Err(ProtocolError(text)) => {
                    replies.push(Reply::Error(text));
                    close = true;
                    break;
                }
            }
        }
        if !pending.is_empty() {
            tokio::task::block_in_place(|| cmd::settle(&mut pending, &mut replies));
        }
        for reply in &replies {
            reply.encode(session.protocol, &mut output);
        }
        if !output.is_empty() {
            if writer.write_all(&output).await.is_err() {
                return;
            }
            output.clear();
        }
        if close {
            let _ = writer.shutdown().await;
            return;
        }
        if needs_input {
            tokio::select! {
                read = reader.read_buf(&mut input) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                _ = shutdown.recv() => return,
            }
        }
    }
}
