//! AMQP load generator: producers publish persistent messages with publisher confirms to one
//! durable queue while consumers acknowledge them; prints confirmed publishes per second,
//! deliveries per second and confirm latency percentiles. Works against Potok and RabbitMQ
//! alike (`benches/amqp-vs-rabbitmq.sh` runs both in one go).
//!
//! It speaks AMQP with raw frames (Potok's own codec helpers over `amq-protocol`) rather than
//! through a client library, so that on a small machine the generator is not what limits the
//! measurement: producers keep a window of unconfirmed publishes in flight, written in batches;
//! consumers acknowledge with `multiple` every half prefetch.
//!
//! Usage: `amqp_load HOST:PORT [--producers N] [--consumers N] [--size BYTES] [--seconds S]
//!         [--window N] [--prefetch N] [--queue NAME] [--queues N] [--stream]`
//!
//! `--queues N` spreads the load over N durable queues (`NAME-0` .. `NAME-{N-1}`): producers
//! publish to them in turn, and each consumer consumes from its share of them on one channel.
//!
//! `--rate N` caps the total publish rate at N messages/s (0 = as fast as confirms allow).
//! `--stream` declares a stream queue (`x-queue-type=stream`) and consumers read it from
//! `x-stream-offset=first`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::protocol::basic::{gen_properties, AMQPProperties};
use amq_protocol::protocol::{basic, channel, confirm, connection, queue, AMQPClass};
use amq_protocol::types::{FieldTable, LongString};
use bytes::BytesMut;
use potok::protocol::amqp::frame::{next_frame, put_content, put_method, Frame, PROTOCOL_HEADER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FRAME_MAX: u32 = 131_072;

struct Options {
    addr: String,
    producers: usize,
    consumers: usize,
    size: usize,
    seconds: u64,
    window: usize,
    prefetch: u16,
    queue: String,
    queues: usize,
    stream: bool,
    rate: u64,
}

impl Options {
    /// The name of queue `i` of `queues`.
    fn queue_name(&self, i: usize) -> String {
        if self.queues == 1 {
            self.queue.clone()
        } else {
            format!("{}-{i}", self.queue)
        }
    }

    /// The queues consumer `index` consumes from: every `consumers`-th one, or one shared
    /// queue when there are fewer queues than consumers.
    fn queues_of(&self, index: usize) -> Vec<String> {
        let mine: Vec<String> = (index..self.queues)
            .step_by(self.consumers.max(1))
            .map(|i| self.queue_name(i))
            .collect();
        if mine.is_empty() {
            vec![self.queue_name(index % self.queues)]
        } else {
            mine
        }
    }
}

fn parse() -> Options {
    let mut args = std::env::args().skip(1);
    let mut o = Options {
        addr: args.next().expect("usage: amqp_load HOST:PORT [options]"),
        producers: 4,
        consumers: 4,
        size: 100,
        seconds: 10,
        window: 256,
        prefetch: 500,
        queue: "load".into(),
        queues: 1,
        stream: false,
        rate: 0,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().expect("flag needs a value");
        match flag.as_str() {
            "--producers" => o.producers = value().parse().unwrap(),
            "--consumers" => o.consumers = value().parse().unwrap(),
            "--size" => o.size = value().parse().unwrap(),
            "--seconds" => o.seconds = value().parse().unwrap(),
            "--window" => o.window = value().parse().unwrap(),
            "--prefetch" => o.prefetch = value().parse().unwrap(),
            "--queue" => o.queue = value(),
            "--queues" => o.queues = value().parse::<usize>().unwrap().max(1),
            "--stream" => o.stream = true,
            "--rate" => o.rate = value().parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    o
}

/// A connection after the handshake, with channel 1 open.
struct Client {
    socket: TcpStream,
    input: BytesMut,
    out: Vec<u8>,
}

impl Client {
    async fn connect(addr: &str) -> Client {
        let mut socket = TcpStream::connect(addr).await.expect("connect");
        socket.set_nodelay(true).unwrap();
        socket.write_all(PROTOCOL_HEADER).await.unwrap();
        let mut client = Client {
            socket,
            input: BytesMut::with_capacity(1 << 16),
            out: Vec::new(),
        };
        client.expect("connection.start").await;
        client.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: LongString::from(&b"\0guest\0guest"[..]),
                locale: "en_US".into(),
            })),
        );
        client.flush().await;
        client.expect("connection.tune").await;
        client.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 16,
                frame_max: FRAME_MAX,
                heartbeat: 0,
            })),
        );
        client.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        );
        client.flush().await;
        client.expect("connection.open-ok").await;
        client.send(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        );
        client.flush().await;
        client.expect("channel.open-ok").await;
        client
    }

    fn send(&mut self, channel: u16, method: AMQPClass) {
        put_method(&mut self.out, channel, method);
    }

    async fn flush(&mut self) {
        self.socket.write_all(&self.out).await.expect("write");
        self.out.clear();
    }

    async fn next(&mut self) -> Frame {
        loop {
            if let Some(frame) = next_frame(&mut self.input, FRAME_MAX).expect("frame") {
                return frame;
            }
            let n = self.socket.read_buf(&mut self.input).await.expect("read");
            assert!(n > 0, "server closed the connection");
        }
    }

    /// Read the next method frame (the handshake and synchronous replies).
    async fn expect(&mut self, what: &str) -> AMQPClass {
        match self.next().await {
            Frame::Method(_, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
                panic!("server closed while waiting for {what}: {}", c.reply_text)
            }
            Frame::Method(_, method) => method,
            other => panic!("expected {what}, got {other:?}"),
        }
    }
}

/// `{key: value}` when running against a stream queue, else no arguments.
fn stream_argument(o: &Options, key: &str, value: &str) -> FieldTable {
    let mut table = FieldTable::default();
    if o.stream {
        table.insert(
            key.into(),
            amq_protocol::types::AMQPValue::LongString(LongString::from(value.as_bytes())),
        );
    }
    table
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn producer(
    o: Arc<Options>,
    index: usize,
    stop: Arc<AtomicBool>,
    confirmed: Arc<AtomicU64>,
) -> Vec<u64> {
    let mut client = Client::connect(&o.addr).await;
    client.send(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    );
    client.flush().await;
    client.expect("confirm.select-ok").await;
    let properties = cookie_factory::gen_simple(
        gen_properties(&AMQPProperties::default().with_delivery_mode(2)),
        Vec::new(),
    )
    .unwrap();
    let body = vec![b'x'; o.size];
    let names: Vec<String> = (0..o.queues).map(|i| o.queue_name(i)).collect();
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut next_seq = 1u64;
    let mut latencies = Vec::new();
    let started = Instant::now();
    let per_producer = o.rate as f64 / o.producers as f64;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if !stopping {
            // With --rate, publish only what the schedule allows so far.
            let allowed = if o.rate == 0 {
                u64::MAX
            } else {
                (started.elapsed().as_secs_f64() * per_producer) as u64 + 1
            };
            if next_seq > allowed && in_flight.is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            while in_flight.len() < o.window && next_seq <= allowed {
                client.send(
                    1,
                    AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                        exchange: "".into(),
                        routing_key: names[(next_seq as usize + index) % names.len()]
                            .as_str()
                            .into(),
                        mandatory: false,
                        immediate: false,
                    })),
                );
                put_content(&mut client.out, 1, &properties, &body, FRAME_MAX);
                in_flight.push_back((next_seq, Instant::now()));
                next_seq += 1;
            }
            client.flush().await;
        }
        if in_flight.is_empty() {
            return latencies;
        }
        match client.next().await {
            Frame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Ack(ack))) => {
                let confirmed_now: Vec<(u64, Instant)> = if ack.multiple {
                    let n = in_flight
                        .iter()
                        .take_while(|(seq, _)| *seq <= ack.delivery_tag)
                        .count();
                    in_flight.drain(..n).collect()
                } else {
                    let at = in_flight
                        .iter()
                        .position(|(seq, _)| *seq == ack.delivery_tag);
                    at.and_then(|i| in_flight.remove(i)).into_iter().collect()
                };
                for (_, sent) in confirmed_now {
                    latencies.push(sent.elapsed().as_micros() as u64);
                    confirmed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Frame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Nack(_))) => {
                panic!("publish nacked")
            }
            other => panic!("unexpected frame for a producer: {other:?}"),
        }
    }
}

async fn consumer(
    o: Arc<Options>,
    index: usize,
    stop: Arc<AtomicBool>,
    consumed: Arc<AtomicU64>,
    ready: Arc<tokio::sync::Barrier>,
) {
    let mut client = Client::connect(&o.addr).await;
    client.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: o.prefetch,
            global: false,
        })),
    );
    let queues = o.queues_of(index);
    for (n, queue) in queues.iter().enumerate() {
        client.send(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: queue.as_str().into(),
                consumer_tag: format!("load-{index}-{n}").into(),
                no_local: false,
                no_ack: false,
                exclusive: false,
                nowait: false,
                arguments: stream_argument(&o, "x-stream-offset", "first"),
            })),
        );
    }
    client.flush().await;
    client.expect("basic.qos-ok").await;
    for _ in &queues {
        client.expect("basic.consume-ok").await;
    }
    // Producers start once every consumer is in place.
    ready.wait().await;
    let ack_every = (u64::from(o.prefetch) / 2).max(1);
    let mut unacked = 0u64;
    // The tag of the delivery being received, and of the last one received whole: only
    // those are acknowledged (a tag acknowledged twice closes the channel).
    let (mut receiving, mut last_tag) = (0u64, 0u64);
    loop {
        let frame = tokio::time::timeout(Duration::from_millis(200), client.next()).await;
        match frame {
            Ok(Frame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Deliver(d)))) => {
                receiving = d.delivery_tag;
            }
            Ok(Frame::Header { body_size: 0, .. }) | Ok(Frame::Body(..)) => {
                last_tag = receiving;
                unacked += 1;
                consumed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Frame::Header { .. }) => {}
            Ok(other) => panic!("unexpected frame for a consumer: {other:?}"),
            Err(_) if stop.load(Ordering::Relaxed) => return,
            Err(_) => {}
        }
        // Acknowledge in batches; also whenever the stream pauses.
        if unacked >= ack_every || (unacked > 0 && client.input.is_empty()) {
            client.send(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: last_tag,
                    multiple: true,
                })),
            );
            client.flush().await;
            unacked = 0;
        }
    }
}

#[tokio::main]
async fn main() {
    let o = Arc::new(parse());
    {
        let mut setup = Client::connect(&o.addr).await;
        for chunk in (0..o.queues).collect::<Vec<_>>().chunks(100) {
            for &i in chunk {
                let name = o.queue_name(i);
                setup.send(
                    1,
                    AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                        queue: name.as_str().into(),
                        if_unused: false,
                        if_empty: false,
                        nowait: false,
                    })),
                );
                setup.send(
                    1,
                    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                        queue: name.as_str().into(),
                        passive: false,
                        durable: true,
                        exclusive: false,
                        auto_delete: false,
                        nowait: false,
                        arguments: stream_argument(&o, "x-queue-type", "stream"),
                    })),
                );
            }
            setup.flush().await;
            for _ in chunk {
                setup.expect("queue.delete-ok").await;
                setup.expect("queue.declare-ok").await;
            }
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let confirmed = Arc::new(AtomicU64::new(0));
    let consumed = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(tokio::sync::Barrier::new(o.consumers + 1));
    let consumers: Vec<_> = (0..o.consumers)
        .map(|i| {
            tokio::spawn(consumer(
                Arc::clone(&o),
                i,
                Arc::clone(&stop),
                Arc::clone(&consumed),
                Arc::clone(&ready),
            ))
        })
        .collect();
    ready.wait().await;
    let start = Instant::now();
    let producers: Vec<_> = (0..o.producers)
        .map(|i| {
            tokio::spawn(producer(
                Arc::clone(&o),
                i,
                Arc::clone(&stop),
                Arc::clone(&confirmed),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(o.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for p in producers {
        latencies.extend(p.await.unwrap());
    }
    let publish_elapsed = start.elapsed().as_secs_f64();
    let total = confirmed.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    // On a stream every consumer reads every message.
    let expected = if o.stream {
        total * o.consumers as u64
    } else {
        total
    };
    while consumed.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let consume_elapsed = start.elapsed().as_secs_f64();
    for c in consumers {
        let _ = c.await;
    }
    latencies.sort_unstable();
    let consumed = consumed.load(Ordering::Relaxed);
    println!(
        "producers {} consumers {} queues {} size {} B: confirmed {:.0} msg/s ({total} in {publish_elapsed:.1} s), consumed {:.0} msg/s ({consumed} in {consume_elapsed:.1} s), confirm latency p50 {:.2} ms p99 {:.2} ms",
        o.producers,
        o.consumers,
        o.queues,
        o.size,
        total as f64 / publish_elapsed,
        consumed as f64 / consume_elapsed,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
    );
}
