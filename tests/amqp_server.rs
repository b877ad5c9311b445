//! The AMQP 0-9-1 front end against the real binary, driven by the `lapin` client (and raw
//! bytes for malformed input): routing by every exchange type, queues, acknowledgements and
//! requeue order, prefetch, publisher confirms, mandatory returns, transactions, the error
//! codes RabbitMQ sends, restart and kill -9.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

mod common;

use common::raw_amqp::{
    raw_handshake, raw_handshake_with, read_close, read_connection_close, read_frame_type,
};

struct Server {
    child: Child,
    amqp: String,
}

impl Server {
    fn start(data_dir: &Path) -> Server {
        let spawned = common::server::spawn_server(data_dir, &[]).expect("server starts");
        Server {
            child: spawned.child,
            amqp: spawned.amqp,
        }
    }

    fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp)
    }

    fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "clean shutdown exits 0");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(server: &Server) -> (Connection, Channel) {
    let connection = Connection::connect(&server.uri(), ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

fn s(text: &str) -> ShortString {
    text.into()
}

/// The AMQP reply code of a protocol error.
fn code(error: lapin::Error) -> u16 {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => e.get_id(),
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

async fn publish(
    channel: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    channel
        .basic_publish(
            s(exchange),
            s(key),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
}

async fn get_body(channel: &Channel, queue: &str) -> Option<Vec<u8>> {
    let got = channel
        .basic_get(s(queue), BasicGetOptions { no_ack: true })
        .await
        .expect("get")?;
    Some(got.delivery.data.clone())
}

async fn declare_queue(channel: &Channel, name: &str) {
    declare_queue_with(
        channel,
        name,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
}

async fn declare_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
    arguments: FieldTable,
) {
    channel
        .exchange_declare(s(name), kind, ExchangeDeclareOptions::default(), arguments)
        .await
        .expect("exchange.declare");
}

async fn bind_queue(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
    arguments: FieldTable,
) {
    channel
        .queue_bind(
            s(queue),
            s(exchange),
            s(key),
            QueueBindOptions::default(),
            arguments,
        )
        .await
        .expect("queue.bind");
}

async fn declare_queue_with(
    channel: &Channel,
    name: &str,
    options: QueueDeclareOptions,
    arguments: FieldTable,
) -> lapin::Queue {
    channel
        .queue_declare(s(name), options, arguments)
        .await
        .expect("queue.declare")
}

/// Drain a queue with basic.get, returning bodies as strings.
async fn drain(channel: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(body) = get_body(channel, queue).await {
        bodies.push(String::from_utf8(body).unwrap());
    }
    bodies
}

#[test]
fn every_exchange_type_routes_like_rabbitmq() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    runtime().block_on(async {
        let (_connection, ch) = connect(&server).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for q in ["d1", "d2", "f1", "f2", "t1", "t2", "h_all", "h_any", "e2e"] {
            declare_queue(&ch, q).await;
        }
        declare_exchange(&ch, "xd", ExchangeKind::Direct, FieldTable::default()).await;
        declare_exchange(&ch, "xf", ExchangeKind::Fanout, FieldTable::default()).await;
        declare_exchange(&ch, "xt", ExchangeKind::Topic, FieldTable::default()).await;
        declare_exchange(&ch, "xh", ExchangeKind::Headers, FieldTable::default()).await;
        declare_exchange(&ch, "xsrc", ExchangeKind::Fanout, FieldTable::default()).await;
        bind_queue(&ch, "d1", "xd", "red", FieldTable::default()).await;
        bind_queue(&ch, "d2", "xd", "blue", FieldTable::default()).await;
        bind_queue(&ch, "f1", "xf", "", FieldTable::default()).await;
        bind_queue(&ch, "f2", "xf", "ignored", FieldTable::default()).await;
        bind_queue(&ch, "t1", "xt", "*.orange.*", FieldTable::default()).await;
        bind_queue(&ch, "t2", "xt", "lazy.#", FieldTable::default()).await;
        let mut all = FieldTable::default();
        all.insert(
            s("x-match"),
            AMQPValue::LongString(LongString::from(&b"all"[..])),
        );
        all.insert(
            s("format"),
            AMQPValue::LongString(LongString::from(&b"pdf"[..])),
        );
        all.insert(
            s("type"),
            AMQPValue::LongString(LongString::from(&b"report"[..])),
        );
        bind_queue(&ch, "h_all", "xh", "", all).await;
        let mut any = FieldTable::default();
        any.insert(
            s("x-match"),
            AMQPValue::LongString(LongString::from(&b"any"[..])),
        );
        any.insert(
            s("format"),
            AMQPValue::LongString(LongString::from(&b"zip"[..])),
        );
        any.insert(
            s("type"),
            AMQPValue::LongString(LongString::from(&b"report"[..])),
        );
        bind_queue(&ch, "h_any", "xh", "", any).await;
        // Exchange-to-exchange: xsrc fans out into xd, which routes "red" to d1.
        ch.exchange_bind(
            s("xd"),
            s("xsrc"),
            s(""),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

        publish(&ch, "xd", "red", b"direct-red", persistent()).await;
        publish(&ch, "xd", "green", b"direct-green", persistent()).await;
        publish(&ch, "xf", "any", b"fanout", persistent()).await;
        for key in [
            "quick.orange.rabbit",
            "lazy.orange.elephant",
            "lazy",
            "quick.orange.fox.jumps",
            "orange",
        ] {
            publish(&ch, "xt", key, key.as_bytes(), persistent()).await;
        }
        let headers = |pairs: &[(&str, &str)]| {
            let mut t = FieldTable::default();
            for (k, v) in pairs {
                t.insert(s(k), AMQPValue::LongString(LongString::from(v.as_bytes())));
            }
            BasicProperties::default().with_headers(t)
        };
        publish(
            &ch,
            "xh",
            "",
            b"pdf-report",
            headers(&[("format", "pdf"), ("type", "report")]),
        )
        .await;
        publish(
            &ch,
            "xh",
            "",
            b"pdf-log",
            headers(&[("format", "pdf"), ("type", "log")]),
        )
        .await;
        publish(&ch, "xsrc", "red", b"via-e2e", persistent()).await;
        publish(&ch, "", "e2e", b"default-exchange", persistent()).await;

        assert_eq!(drain(&ch, "d1").await, ["direct-red", "via-e2e"]);
        assert!(drain(&ch, "d2").await.is_empty());
        assert_eq!(drain(&ch, "f1").await, ["fanout"]);
        assert_eq!(drain(&ch, "f2").await, ["fanout"]);
        assert_eq!(
            drain(&ch, "t1").await,
            ["quick.orange.rabbit", "lazy.orange.elephant"]
        );
        assert_eq!(drain(&ch, "t2").await, ["lazy.orange.elephant", "lazy"]);
        assert_eq!(drain(&ch, "h_all").await, ["pdf-report"]);
        assert_eq!(drain(&ch, "h_any").await, ["pdf-report"]);
        assert_eq!(drain(&ch, "e2e").await, ["default-exchange"]);
    });
}

#[test]
fn acks_nacks_and_requeue_keep_order_with_prefetch() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    runtime().block_on(async {
        let (_connection, ch) = connect(&server).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        declare_queue(&ch, "work").await;
        for i in 0..10 {
            publish(&ch, "", "work", format!("m{i}").as_bytes(), persistent()).await;
        }
        let consumer_channel = _connection.create_channel().await.unwrap();
        consumer_channel
            .basic_qos(3, BasicQosOptions::default())
            .await
            .unwrap();
        let mut consumer = consumer_channel
            .basic_consume(
                s("work"),
                s("c1"),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            let d = tokio::time::timeout(Duration::from_secs(5), consumer.next())
                .await
                .expect("delivery within prefetch")
                .unwrap()
                .unwrap();
            got.push(d);
        }
        // Prefetch 3: no fourth delivery until one is acknowledged.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), consumer.next())
                .await
                .is_err()
        );
        let bodies: Vec<_> = got
            .iter()
            .map(|d| String::from_utf8(d.data.clone()).unwrap())
            .collect();
        assert_eq!(bodies, ["m0", "m1", "m2"]);
        // Nack m1 with requeue: it comes back before m3, marked redelivered. Ack m0 and m2.
        got[1]
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await
            .unwrap();
        got[0].ack(BasicAckOptions::default()).await.unwrap();
        got[2].ack(BasicAckOptions::default()).await.unwrap();
        let mut next = Vec::new();
        for _ in 0..3 {
            let d = tokio::time::timeout(Duration::from_secs(5), consumer.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            next.push((String::from_utf8(d.data.clone()).unwrap(), d.redelivered));
            d.ack(BasicAckOptions::default()).await.unwrap();
        }
        assert_eq!(
            next,
            [
                ("m1".to_string(), true),
                ("m3".to_string(), false),
                ("m4".to_string(), false)
            ]
        );
        // Reject without requeue drops the message; the rest arrive in order.
        let d = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(d.data, b"m5");
        d.reject(BasicRejectOptions { requeue: false })
            .await
            .unwrap();
        let mut rest = Vec::new();
        for _ in 0..4 {
            let d = tokio::time::timeout(Duration::from_secs(5), consumer.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            rest.push(String::from_utf8(d.data.clone()).unwrap());
            d.ack(BasicAckOptions::default()).await.unwrap();
        }
        assert_eq!(rest, ["m6", "m7", "m8", "m9"]);
        consumer_channel
            .basic_cancel(s("c1"), BasicCancelOptions::default())
            .await
            .unwrap();
        // Closing a channel returns its unacknowledged deliveries to the queue.
        publish(&ch, "", "work", b"again", persistent()).await;
        let c2 = _connection.create_channel().await.unwrap();
        let got = c2
            .basic_get(s("work"), BasicGetOptions::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (got.delivery.data.as_slice(), got.delivery.redelivered),
            (&b"again"[..], false)
        );
        c2.close(200, s("bye")).await.unwrap();
        let got = ch
            .basic_get(s("work"), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (got.delivery.data.as_slice(), got.delivery.redelivered),
            (&b"again"[..], true)
        );
        assert!(get_body(&ch, "work").await.is_none());
    });
}

#[test]
fn confirms_returns_and_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    runtime().block_on(async {
        let (connection, ch) = connect(&server).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        // Mandatory and unroutable: returned (312 NO_ROUTE) and then acknowledged.
        let confirm = ch
            .basic_publish(
                s(""),
                s("nowhere"),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                b"lost",
                persistent(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        let returned = confirm
            .take_message()
            .expect("a basic.return before the ack");
        assert_eq!(returned.reply_code, 312);
        assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
        assert_eq!(returned.data, b"lost");
        // Properties travel byte for byte.
        declare_queue(&ch, "props").await;
        let mut headers = FieldTable::default();
        headers.insert(s("n"), AMQPValue::LongLongInt(-7));
        let props = BasicProperties::default()
            .with_content_type(s("text/plain"))
            .with_correlation_id(s("abc"))
            .with_priority(3)
            .with_headers(headers)
            .with_delivery_mode(2);
        publish(&ch, "", "props", b"p", props.clone()).await;
        let got = ch
            .basic_get(s("props"), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.delivery.properties, props);

        // Transactions: nothing is visible before commit; rollback discards.
        let tx = connection.create_channel().await.unwrap();
        declare_queue(&tx, "txq").await;
        tx.tx_select().await.unwrap();
        tx.basic_publish(
            s(""),
            s("txq"),
            BasicPublishOptions::default(),
            b"t1",
            persistent(),
        )
        .await
        .unwrap();
        assert!(
            get_body(&ch, "txq").await.is_none(),
            "uncommitted publish is invisible"
        );
        tx.tx_commit().await.unwrap();
        assert_eq!(get_body(&ch, "txq").await.as_deref(), Some(&b"t1"[..]));
        tx.basic_publish(
            s(""),
            s("txq"),
            BasicPublishOptions::default(),
            b"t2",
            persistent(),
        )
        .await
        .unwrap();
        tx.tx_rollback().await.unwrap();
        tx.tx_commit().await.unwrap();
        assert!(get_body(&ch, "txq").await.is_none(), "rolled back");
    });
}

#[test]
fn errors_carry_rabbitmq_codes_and_close_only_the_channel() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    runtime().block_on(async {
        let (connection, ch) = connect(&server).await;
        declare_queue(&ch, "q").await;
        // 406: inequivalent redeclaration.
        let err = ch
            .queue_declare(
                s("q"),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(code(err), 406);
        // 404: passive declare of a missing queue, publish to a missing exchange (via confirm).
        let ch = connection.create_channel().await.unwrap();
        let err = ch
            .queue_declare(
                s("missing"),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(code(err), 404);
        let ch = connection.create_channel().await.unwrap();
        let err = ch
            .exchange_declare(
                s("missing-x"),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(code(err), 404);
        // 403: binding to the default exchange; reserved names.
        let ch = connection.create_channel().await.unwrap();
        let err = ch
            .queue_bind(
                s("q"),
                s(""),
                s("k"),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(code(err), 403);
        let ch = connection.create_channel().await.unwrap();
        let err = ch
            .queue_declare(
                s("amq.mine"),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(code(err), 403);
        // 405: another connection's exclusive queue.
        let ch = connection.create_channel().await.unwrap();
        declare_queue_with(
            &ch,
            "mine",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
        let (other, other_ch) = connect(&server).await;
        let err = other_ch
            .queue_declare(
                s("mine"),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(code(err), 405);
        // The connection survived every channel error.
        let ch = connection.create_channel().await.unwrap();
        declare_queue(&ch, "still-fine").await;
        // An exclusive queue goes with its connection.
        connection.close(200, s("bye")).await.unwrap();
        // Until the server has cleaned up, the queue is still another connection's (405).
        let mut found = true;
        for _ in 0..100 {
            let probe = other.create_channel().await.unwrap();
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            match probe
                .queue_declare(s("mine"), passive, FieldTable::default())
                .await
            {
                Err(e) if code(e.clone()) == 404 => {
                    found = false;
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        assert!(!found, "exclusive queue deleted with its connection");
    });
}

#[test]
fn confirmed_persistent_messages_survive_kill_9_and_definitions_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    runtime().block_on(async {
        let (_connection, ch) = connect(&server).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        ch.exchange_declare(
            s("orders"),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        declare_queue_with(
            &ch,
            "eu",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
        bind_queue(&ch, "eu", "orders", "eu.#", FieldTable::default()).await;
        declare_queue_with(
            &ch,
            "temp",
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
        let mut confirms = Vec::new();
        for i in 0..500 {
            confirms.push(
                ch.basic_publish(
                    s("orders"),
                    s("eu.de"),
                    BasicPublishOptions::default(),
                    format!("o{i}").as_bytes(),
                    persistent(),
                )
                .await
                .unwrap(),
            );
        }
        for c in confirms {
            assert!(c.await.unwrap().is_ack());
        }
        publish(
            &ch,
            "orders",
            "eu.fr",
            b"transient",
            BasicProperties::default().with_delivery_mode(1),
        )
        .await;
        // Consume and ack the first 100. Acks are journaled without anyone waiting, and synced
        // in the background within milliseconds: give that time before the crash.
        for _ in 0..100 {
            let got = ch
                .basic_get(s("eu"), BasicGetOptions::default())
                .await
                .unwrap()
                .unwrap();
            got.delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    server.kill_9();
    let server = Server::start(dir.path());
    runtime().block_on(async {
        let (_connection, ch) = connect(&server).await;
        // The durable exchange and binding came back; the non-durable queue did not.
        let err = ch
            .queue_declare(
                s("temp"),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(code(err), 404);
        let ch = _connection.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        publish(&ch, "orders", "eu.it", b"after", persistent()).await;
        let bodies = drain(&ch, "eu").await;
        let expected_tail: Vec<String> = (100..500).map(|i| format!("o{i}")).collect();
        // Every confirmed message is there, in order, and the acknowledged ones are gone.
        assert_eq!(bodies.len(), 401, "{bodies:?}");
        let tail: Vec<String> = bodies[bodies.len() - 401..bodies.len() - 1].to_vec();
        assert_eq!(tail, expected_tail);
        assert_eq!(bodies.last().unwrap(), "after");
        assert!(
            !bodies.contains(&"transient".to_string()),
            "transient messages do not survive"
        );
    });
    server.stop();
    // After a clean restart, the acknowledged ones are gone for good.
    let server = Server::start(dir.path());
    runtime().block_on(async {
        let (_connection, ch) = connect(&server).await;
        assert!(drain(&ch, "eu").await.is_empty());
    });
}

#[test]
fn malformed_input_gets_the_right_close_and_others_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    // A wrong protocol header is answered with ours, then the socket closes.
    let mut socket = TcpStream::connect(&server.amqp).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket.write_all(b"AMQP\x01\x01\x00\x0a").unwrap();
    let mut header = [0u8; 8];
    socket.read_exact(&mut header).unwrap();
    assert_eq!(&header, b"AMQP\x00\x00\x09\x01");
    // A frame larger than the negotiated frame_max: 501, refused from its header alone.
    let mut socket = raw_handshake(&server.amqp);
    socket.write_all(&[3, 0, 1, 0, 0x10, 0, 0]).unwrap();
    assert_eq!(read_connection_close(&mut socket), Some(501));
    // An ack of an unknown delivery tag closes the channel with 406 (not the connection).
    let mut socket = raw_handshake(&server.amqp);
    socket
        .write_all(&[1, 0, 1, 0, 0, 0, 5, 0, 20, 0, 10, 0, 0xCE])
        .unwrap(); // channel.open
    let mut ack = vec![1, 0, 1, 0, 0, 0, 13, 0, 60, 0, 80];
    ack.extend_from_slice(&99u64.to_be_bytes());
    ack.extend_from_slice(&[0, 0xCE]);
    socket.write_all(&ack).unwrap();
    assert_eq!(read_close(&mut socket, 20, 40), Some((1, 406)));
    // A method on a channel that was never opened: 504.
    let mut socket = raw_handshake(&server.amqp);
    socket
        .write_all(&[1, 0, 7, 0, 0, 0, 5, 0, 85, 0, 10, 0, 0xCE]) // confirm.select
        .unwrap();
    assert_eq!(read_connection_close(&mut socket), Some(504));
    // An unknown method: 540.
    let mut socket = raw_handshake(&server.amqp);
    socket
        .write_all(&[1, 0, 0, 0, 0, 0, 4, 0, 99, 0, 1, 0xCE])
        .unwrap();
    assert_eq!(read_connection_close(&mut socket), Some(540));
    // A bad frame end: 501.
    let mut socket = raw_handshake(&server.amqp);
    socket.write_all(&[8, 0, 0, 0, 0, 0, 0, 0x00]).unwrap();
    assert_eq!(read_connection_close(&mut socket), Some(501));
    // Meanwhile a well-behaved client works.
    runtime().block_on(async {
        let (_connection, ch) = connect(&server).await;
        declare_queue(&ch, "ok").await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        publish(&ch, "", "ok", b"fine", persistent()).await;
        assert_eq!(get_body(&ch, "ok").await.as_deref(), Some(&b"fine"[..]));
    });
    // Wrong credentials: 403 and the connection ends.
    runtime().block_on(async {
        let uri = format!("amqp://guest:wrong@{}/%2f", server.amqp);
        let err = Connection::connect(&uri, ConnectionProperties::default())
            .await
            .unwrap_err();
        assert!(
            format!("{err}").contains("ACCESS_REFUSED") || format!("{err:?}").contains("403"),
            "{err:?}"
        );
    });
}

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(s(k), v.clone());
    }
    t
}

fn text(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v.as_bytes()))
}

/// The `x-death` entries of a message: (reason, queue, count).
fn deaths(properties: &BasicProperties) -> Vec<(String, String, i64)> {
    let headers = properties.headers().as_ref().expect("headers");
    let Some(AMQPValue::FieldArray(entries)) = headers.inner().get("x-death") else {
        panic!("no x-death: {headers:?}");
    };
    let field = |t: &FieldTable, k: &str| match t.inner().get(k) {
        Some(AMQPValue::LongString(s)) => String::from_utf8(s.as_bytes().to_vec()).unwrap(),
        other => panic!("{k}: {other:?}"),
    };
    entries
        .as_slice()
        .iter()
        .map(|e| match e {
            AMQPValue::FieldTable(t) => {
                let count = match t.inner().get("count") {
                    Some(AMQPValue::LongLongInt(n)) => *n,
                    other => panic!("count: {other:?}"),
                };
                (field(t, "reason"), field(t, "queue"), count)
            }
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn ttl_dead_lettering_and_single_active_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    runtime().block_on(async {
        let (connection, ch) = connect(&server).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        declare_exchange(&ch, "dlx", ExchangeKind::Fanout, FieldTable::default()).await;
        declare_queue(&ch, "dead").await;
        bind_queue(&ch, "dead", "dlx", "", FieldTable::default()).await;
        // A TTL queue with no consumer feeds the dead-letter exchange (delayed retry).
        declare_queue_with(
            &ch,
            "delay",
            QueueDeclareOptions::default(),
            args(&[
                ("x-message-ttl", AMQPValue::LongInt(150)),
                ("x-dead-letter-exchange", text("dlx")),
            ]),
        )
        .await;
        publish(&ch, "", "delay", b"later", persistent()).await;
        assert_eq!(get_body(&ch, "dead").await, None, "not before the TTL");
        tokio::time::sleep(Duration::from_millis(600)).await;
        let got = ch
            .basic_get(s("dead"), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("dead-lettered");
        assert_eq!(got.delivery.data, b"later");
        assert_eq!(got.delivery.exchange.as_str(), "dlx");
        assert_eq!(
            deaths(&got.delivery.properties),
            [("expired".to_string(), "delay".to_string(), 1)]
        );
        assert!(get_body(&ch, "delay").await.is_none());

        // Per-message expiration, and rejection, with a dead-letter routing key.
        declare_exchange(&ch, "dlx2", ExchangeKind::Direct, FieldTable::default()).await;
        declare_queue(&ch, "parking").await;
        bind_queue(&ch, "parking", "dlx2", "park", FieldTable::default()).await;
        declare_queue_with(
            &ch,
            "jobs",
            QueueDeclareOptions::default(),
            args(&[
                ("x-dead-letter-exchange", text("dlx2")),
                ("x-dead-letter-routing-key", text("park")),
            ]),
        )
        .await;
        publish(
            &ch,
            "",
            "jobs",
            b"short-lived",
            BasicProperties::default().with_expiration(s("50")),
        )
        .await;
        publish(&ch, "", "jobs", b"bad", persistent()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let job = ch
            .basic_get(s("jobs"), BasicGetOptions::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(job.delivery.data, b"bad", "the expired one is gone");
        job.delivery
            .reject(BasicRejectOptions { requeue: false })
            .await
            .unwrap();
        let mut parked = Vec::new();
        for _ in 0..50 {
            if let Some(m) = ch
                .basic_get(s("parking"), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                parked.push((
                    String::from_utf8(m.delivery.data.clone()).unwrap(),
                    deaths(&m.delivery.properties)[0].0.clone(),
                    m.delivery.routing_key.to_string(),
                ));
                if parked.len() == 2 {
                    break;
                }
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(
            parked,
            [
                (
                    "short-lived".to_string(),
                    "expired".to_string(),
                    "park".to_string()
                ),
                (
                    "bad".to_string(),
                    "rejected".to_string(),
                    "park".to_string()
                )
            ]
        );
        // Invalid arguments are refused as RabbitMQ does.
        let err = ch
            .queue_declare(
                s("neg"),
                QueueDeclareOptions::default(),
                args(&[("x-message-ttl", AMQPValue::LongInt(-1))]),
            )
            .await
            .unwrap_err();
        assert_eq!(code(err), 406);

        // Single active consumer: only the first consumer receives until it goes.
        let ch = connection.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        declare_queue_with(
            &ch,
            "sac",
            QueueDeclareOptions::default(),
            args(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
        )
        .await;
        let c1 = connection.create_channel().await.unwrap();
        let c2 = connection.create_channel().await.unwrap();
        let mut first = c1
            .basic_consume(
                s("sac"),
                s("first"),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut second = c2
            .basic_consume(
                s("sac"),
                s("second"),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        for i in 0..4 {
            publish(&ch, "", "sac", format!("s{i}").as_bytes(), persistent()).await;
        }
        for i in 0..4 {
            let d = tokio::time::timeout(Duration::from_secs(5), first.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(d.data, format!("s{i}").as_bytes());
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(200), second.next())
                .await
                .is_err()
        );
        c1.basic_cancel(s("first"), BasicCancelOptions::default())
            .await
            .unwrap();
        publish(&ch, "", "sac", b"to-second", persistent()).await;
        let d = tokio::time::timeout(Duration::from_secs(5), second.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(d.data, b"to-second");
    });
}

#[test]
fn length_limits_drop_head_or_reject_publish() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    runtime().block_on(async {
        let (_connection, ch) = connect(&server).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        declare_exchange(&ch, "overflow", ExchangeKind::Fanout, FieldTable::default()).await;
        declare_queue(&ch, "dropped").await;
        bind_queue(&ch, "dropped", "overflow", "", FieldTable::default()).await;
        declare_queue_with(
            &ch,
            "last-two",
            QueueDeclareOptions::default(),
            args(&[
                ("x-max-length", AMQPValue::LongInt(2)),
                ("x-dead-letter-exchange", text("overflow")),
            ]),
        )
        .await;
        for i in 0..4 {
            publish(
                &ch,
                "",
                "last-two",
                format!("n{i}").as_bytes(),
                persistent(),
            )
            .await;
        }
        assert_eq!(drain(&ch, "last-two").await, ["n2", "n3"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut dropped = Vec::new();
        while let Some(m) = ch
            .basic_get(s("dropped"), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            dropped.push((
                String::from_utf8(m.delivery.data.clone()).unwrap(),
                deaths(&m.delivery.properties)[0].0.clone(),
            ));
        }
        assert_eq!(
            dropped,
            [
                ("n0".to_string(), "maxlen".to_string()),
                ("n1".to_string(), "maxlen".to_string())
            ]
        );

        // Bytes: a 10-byte limit keeps only the newest 6-byte body.
        declare_queue_with(
            &ch,
            "bytes",
            QueueDeclareOptions::default(),
            args(&[("x-max-length-bytes", AMQPValue::LongInt(10))]),
        )
        .await;
        for body in ["aaaaaa", "bbbbbb", "cccccc"] {
            publish(&ch, "", "bytes", body.as_bytes(), persistent()).await;
        }
        assert_eq!(drain(&ch, "bytes").await, ["cccccc"]);

        // reject-publish: the publish that does not fit is nacked and not stored.
        declare_queue_with(
            &ch,
            "one",
            QueueDeclareOptions::default(),
            args(&[
                ("x-max-length", AMQPValue::LongInt(1)),
                ("x-overflow", text("reject-publish")),
            ]),
        )
        .await;
        let first = ch
            .basic_publish(
                s(""),
                s("one"),
                BasicPublishOptions::default(),
                b"fits",
                persistent(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        let second = ch
            .basic_publish(
                s(""),
                s("one"),
                BasicPublishOptions::default(),
                b"refused",
                persistent(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(first.is_ack());
        assert!(second.is_nack());
        assert_eq!(drain(&ch, "one").await, ["fits"]);
    });
}

/// Consume `n` deliveries from a stream starting at `offset`; returns (body, x-stream-offset).
async fn read_stream(
    connection: &Connection,
    queue: &str,
    offset: AMQPValue,
    n: usize,
) -> Vec<(String, i64)> {
    let ch = connection.create_channel().await.unwrap();
    ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            s(queue),
            s(""),
            BasicConsumeOptions::default(),
            args(&[("x-stream-offset", offset)]),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < n {
        let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await
        else {
            break;
        };
        let headers = d.properties.headers().clone().unwrap_or_default();
        let offset = match headers.inner().get("x-stream-offset") {
            Some(AMQPValue::LongLongInt(o)) => *o,
            other => panic!("x-stream-offset: {other:?}"),
        };
        got.push((String::from_utf8(d.data.clone()).unwrap(), offset));
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    ch.close(200, s("done")).await.unwrap();
    got
}

#[test]
fn stream_queues_replay_from_any_offset_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let stream = args(&[("x-queue-type", text("stream")), ("x-max-age", text("7D"))]);
    runtime().block_on(async {
        let (connection, ch) = connect(&server).await;
        // RabbitMQ's restrictions.
        let err = ch
            .queue_declare(s("events"), QueueDeclareOptions::default(), stream.clone())
            .await
            .unwrap_err();
        assert_eq!(code(err), 406, "streams must be durable");
        let ch = connection.create_channel().await.unwrap();
        declare_queue_with(
            &ch,
            "events",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            stream.clone(),
        )
        .await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for i in 0..6 {
            publish(&ch, "", "events", format!("e{i}").as_bytes(), persistent()).await;
        }
        let first = read_stream(&connection, "events", text("first"), 6).await;
        assert_eq!(
            first,
            (0..6).map(|i| (format!("e{i}"), i)).collect::<Vec<_>>()
        );
        // Reading does not consume: another consumer reads the same from offset 4.
        assert_eq!(
            read_stream(&connection, "events", AMQPValue::LongLongInt(4), 2).await,
            [("e4".to_string(), 4), ("e5".to_string(), 5)]
        );
        assert_eq!(
            read_stream(&connection, "events", text("last"), 1).await,
            [("e5".to_string(), 5)]
        );
        // A timestamp in the past and an interval reach back to the start.
        assert_eq!(
            read_stream(&connection, "events", AMQPValue::Timestamp(1), 1).await[0].1,
            0
        );
        assert_eq!(
            read_stream(&connection, "events", text("1h"), 1).await[0].1,
            0
        );
        // basic.get is refused with 540 (it closes the connection).
        let (other, other_ch) = connect(&server).await;
        let err = other_ch
            .basic_get(s("events"), BasicGetOptions::default())
            .await
            .unwrap_err();
        assert_eq!(code(err), 540);
        drop(other);
        // "next" waits for new messages.
        let next = connection.create_channel().await.unwrap();
        next.basic_qos(10, BasicQosOptions::default())
            .await
            .unwrap();
        let mut consumer = next
            .basic_consume(
                s("events"),
                s("tail"),
                BasicConsumeOptions::default(),
                args(&[("x-stream-offset", text("next"))]),
            )
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), consumer.next())
                .await
                .is_err()
        );
        publish(&ch, "", "events", b"e6", persistent()).await;
        let d = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(d.data, b"e6");
    });
    server.kill_9();
    let server = Server::start(dir.path());
    runtime().block_on(async {
        let (connection, _ch) = connect(&server).await;
        let all = read_stream(&connection, "events", text("first"), 7).await;
        assert_eq!(all.len(), 7, "confirmed stream messages survive kill -9");
        assert_eq!(all[6], ("e6".to_string(), 6));
    });
}

#[test]
fn idle_queues_expire_and_consumer_priorities_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    runtime().block_on(async {
        let (connection, ch) = connect(&server).await;
        declare_queue_with(
            &ch,
            "ephemeral",
            QueueDeclareOptions::default(),
            args(&[("x-expires", AMQPValue::LongInt(300))]),
        )
        .await;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        // A declaration (passive too) renews the lease, so look only once, after it ran out.
        tokio::time::sleep(Duration::from_millis(900)).await;
        let probe = connection.create_channel().await.unwrap();
        let err = probe
            .queue_declare(s("ephemeral"), passive, FieldTable::default())
            .await
            .unwrap_err();
        assert_eq!(code(err), 404, "an unused queue with x-expires is deleted");
        let err = ch
            .queue_declare(
                s("bad-expires"),
                QueueDeclareOptions::default(),
                args(&[("x-expires", AMQPValue::LongInt(0))]),
            )
            .await
            .unwrap_err();
        assert_eq!(code(err), 406);

        // The higher-priority consumer gets every message while it has room.
        let ch = connection.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        declare_queue(&ch, "prio-consumers").await;
        let low = connection.create_channel().await.unwrap();
        let high = connection.create_channel().await.unwrap();
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let mut low_consumer = low
            .basic_consume(
                s("prio-consumers"),
                s("low"),
                no_ack,
                args(&[("x-priority", AMQPValue::LongInt(1))]),
            )
            .await
            .unwrap();
        let mut high_consumer = high
            .basic_consume(
                s("prio-consumers"),
                s("high"),
                no_ack,
                args(&[("x-priority", AMQPValue::LongInt(10))]),
            )
            .await
            .unwrap();
        for i in 0..5 {
            publish(
                &ch,
                "",
                "prio-consumers",
                format!("p{i}").as_bytes(),
                persistent(),
            )
            .await;
        }
        for _ in 0..5 {
            tokio::time::timeout(Duration::from_secs(5), high_consumer.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(200), low_consumer.next())
                .await
                .is_err()
        );
    });
}

#[test]
fn priority_queues_deliver_highest_priority_first() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    runtime().block_on(async {
        let (_connection, ch) = connect(&server).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        declare_queue_with(
            &ch,
            "prio",
            QueueDeclareOptions::default(),
            args(&[("x-max-priority", AMQPValue::ShortShortUInt(10))]),
        )
        .await;
        for (body, priority) in [
            ("p1", Some(1)),
            ("p5", Some(5)),
            ("p3a", Some(3)),
            ("none", None),
            ("p9", Some(9)),
            ("p3b", Some(3)),
            ("p200", Some(200)),
        ] {
            let props = match priority {
                Some(p) => persistent().with_priority(p),
                None => persistent(),
            };
            publish(&ch, "", "prio", body.as_bytes(), props).await;
        }
        // 200 counts as the maximum (10); equal priorities keep publish order.
        let first = ch
            .basic_get(s("prio"), BasicGetOptions::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.delivery.data, b"p200");
        first
            .delivery
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await
            .unwrap();
        let again = ch
            .basic_get(s("prio"), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (again.delivery.data.as_slice(), again.delivery.redelivered),
            (&b"p200"[..], true)
        );
        assert_eq!(
            drain(&ch, "prio").await,
            ["p9", "p5", "p3a", "p3b", "p1", "none"]
        );
        let err = ch
            .queue_declare(
                s("bad-prio"),
                QueueDeclareOptions::default(),
                args(&[("x-max-priority", AMQPValue::LongInt(-1))]),
            )
            .await
            .unwrap_err();
        assert_eq!(code(err), 406);
    });
}

#[test]
fn alternate_exchanges_server_named_and_auto_delete_queues_cancel_notify_and_global_qos() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    runtime().block_on(async {
        let (connection, ch) = connect(&server).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        // Unroutable messages on "main" go to its alternate exchange.
        declare_exchange(&ch, "alt", ExchangeKind::Fanout, FieldTable::default()).await;
        declare_exchange(
            &ch,
            "main",
            ExchangeKind::Direct,
            args(&[("alternate-exchange", text("alt"))]),
        )
        .await;
        // A server-named queue: amq.gen-..., exclusive to this connection.
        let named = declare_queue_with(
            &ch,
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
        let name = named.name().to_string();
        assert!(name.starts_with("amq.gen-") && name.len() == 30, "{name}");
        bind_queue(&ch, &name, "alt", "", FieldTable::default()).await;
        publish(&ch, "main", "nobody-binds-this", b"caught", persistent()).await;
        assert_eq!(get_body(&ch, &name).await.as_deref(), Some(&b"caught"[..]));

        // Deleting a queue cancels its consumers, telling the client (basic.cancel).
        declare_queue(&ch, "doomed").await;
        let consumer_channel = connection.create_channel().await.unwrap();
        let mut consumer = consumer_channel
            .basic_consume(
                s("doomed"),
                s("watcher"),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        ch.queue_delete(s("doomed"), QueueDeleteOptions::default())
            .await
            .unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .expect("cancel arrives");
        assert!(
            end.is_none(),
            "the consumer stream ends on basic.cancel: {end:?}"
        );

        // An auto-delete queue goes when its last consumer cancels.
        declare_queue_with(
            &ch,
            "auto",
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
        let c = connection.create_channel().await.unwrap();
        c.basic_consume(
            s("auto"),
            s("only"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        c.basic_cancel(s("only"), BasicCancelOptions::default())
            .await
            .unwrap();
        let probe = connection.create_channel().await.unwrap();
        let err = probe
            .queue_declare(
                s("auto"),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(code(err), 404);

        // Global prefetch is shared by every consumer on the channel.
        declare_queue(&ch, "g1").await;
        declare_queue(&ch, "g2").await;
        for q in ["g1", "g2"] {
            for i in 0..3 {
                publish(&ch, "", q, format!("{q}-{i}").as_bytes(), persistent()).await;
            }
        }
        let shared = connection.create_channel().await.unwrap();
        shared
            .basic_qos(2, BasicQosOptions { global: true })
            .await
            .unwrap();
        let mut a = shared
            .basic_consume(
                s("g1"),
                s("a"),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut b = shared
            .basic_consume(
                s("g2"),
                s("b"),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut received = 0;
        loop {
            let next = tokio::time::timeout(Duration::from_millis(300), async {
                futures_lite::future::or(async { a.next().await }, async { b.next().await }).await
            })
            .await;
            match next {
                Ok(Some(Ok(_))) => received += 1,
                _ => break,
            }
        }
        assert_eq!(
            received, 2,
            "two unacknowledged deliveries across both consumers"
        );
    });
}

/// A raw connection that asks for 1-second heartbeats gets heartbeat frames while idle, and
/// is closed when it sends nothing for two intervals.
#[test]
fn heartbeats_flow_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut socket = raw_handshake_with(&server.amqp, 131_072, 1); // heartbeat: 1 s
                                                                   // Idle: the server sends heartbeats (type 8).
    let started = std::time::Instant::now();
    assert_eq!(read_frame_type(&mut socket), Some(8));
    assert!(started.elapsed() < Duration::from_secs(2));
    // Silent client: the server gives up after two missed intervals and closes the socket.
    let mut closed = false;
    for _ in 0..10 {
        if read_frame_type(&mut socket).is_none() {
            closed = true;
            break;
        }
    }
    assert!(closed, "a silent client is disconnected");
}

#[test]
fn messages_delivered_before_a_crash_come_back_marked_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    runtime().block_on(async {
        let (_connection, ch) = connect(&server).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        declare_queue_with(
            &ch,
            "handed-out",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
        for body in ["a", "b", "c"] {
            publish(&ch, "", "handed-out", body.as_bytes(), persistent()).await;
        }
        for expected in ["a", "b"] {
            let got = ch
                .basic_get(s("handed-out"), BasicGetOptions::default())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.delivery.data, expected.as_bytes());
            assert!(!got.delivery.redelivered);
        }
        // Not acknowledged; the delivery mark reaches disk in the background.
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    server.kill_9();
    let server = Server::start(dir.path());
    runtime().block_on(async {
        let (_connection, ch) = connect(&server).await;
        let mut got = Vec::new();
        while let Some(m) = ch
            .basic_get(s("handed-out"), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            got.push((
                String::from_utf8(m.delivery.data.clone()).unwrap(),
                m.delivery.redelivered,
            ));
        }
        assert_eq!(
            got,
            [
                ("a".to_string(), true),
                ("b".to_string(), true),
                ("c".to_string(), false)
            ]
        );
    });
}
