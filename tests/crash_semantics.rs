//! What a reply promises survives `kill -9`, for every kind of change (RELIABILITY.md).
//!
//! The server runs with a failpoint that delays every write-ahead log sync by
//! [`SYNC_DELAY_MS`]: a change is then neither written nor durable for that long. Each test
//! makes a change, waits for its reply, kills the server at once, and checks the change after a
//! restart. A reply sent before its change is durable would be followed by the kill well inside
//! the delay, and the change would be gone: removing the wait for any of these commits makes
//! its test fail.

use std::path::Path;
use std::process::Child;

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use redis::Value;

mod common;

/// Long enough that a kill right after a reply always lands inside it.
const SYNC_DELAY_MS: &str = "400";

struct Server {
    child: Child,
    resp: String,
    amqp: String,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let spawned = common::server::spawn_server_env(
            dir,
            &[],
            &[("POTOK_FAILPOINT_SYNC_DELAY_MS", SYNC_DELAY_MS)],
        )
        .expect("server starts");
        Server {
            child: spawned.child,
            resp: spawned.resp,
            amqp: spawned.amqp,
        }
    }

    fn redis(&self) -> redis::Connection {
        redis::Client::open(format!("redis://{}/", self.resp))
            .unwrap()
            .get_connection()
            .unwrap()
    }

    fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp)
    }

    fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cmd(con: &mut redis::Connection, args: &[&str]) -> Value {
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command
        .query(con)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn int(con: &mut redis::Connection, args: &[&str]) -> i64 {
    match cmd(con, args) {
        Value::Int(n) => n,
        other => panic!("{args:?}: {other:?}"),
    }
}

/// XPENDING's extended rows as (id, consumer, delivery count).
fn pending(con: &mut redis::Connection, key: &str, group: &str) -> Vec<(String, String, i64)> {
    let rows: Vec<(String, String, i64, i64)> = redis::cmd("XPENDING")
        .arg(key)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(100)
        .query(con)
        .unwrap();
    rows.into_iter().map(|(id, c, _, n)| (id, c, n)).collect()
}

/// One stream's entries in an XREAD reply: (key, [(id, [(field, value)])]).
type StreamEntries = (String, Vec<(String, Vec<(String, String)>)>);

/// Run `setup` (each reply awaited), then `last`, kill -9 at once, restart, and `check`.
/// `last` is the only change whose reply has not been followed by another commit.
fn scenario(setup: &[&[&str]], last: &[&str], check: impl FnOnce(&mut redis::Connection)) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut con = server.redis();
    for command in setup {
        cmd(&mut con, command);
    }
    cmd(&mut con, last);
    server.kill_9();
    let server = Server::start(dir.path());
    check(&mut server.redis());
}

const STREAM: &[&[&str]] = &[
    &["XADD", "s", "1-1", "f", "1"],
    &["XADD", "s", "2-1", "f", "2"],
    &["XADD", "s", "3-1", "f", "3"],
    &["XADD", "s", "4-1", "f", "4"],
];

fn with(
    base: &[&'static [&'static str]],
    more: &[&'static [&'static str]],
) -> Vec<&'static [&'static str]> {
    base.iter().chain(more).copied().collect()
}

fn owners(con: &mut redis::Connection) -> Vec<(String, String, i64)> {
    pending(con, "s", "g")
}

fn p(id: &str, consumer: &str, count: i64) -> (String, String, i64) {
    (id.to_string(), consumer.to_string(), count)
}

#[test]
fn consumer_group_deliveries_survive_kill_9() {
    let setup = with(STREAM, &[&["XGROUP", "CREATE", "s", "g", "0"]]);
    let read = [
        "XREADGROUP",
        "GROUP",
        "g",
        "alice",
        "COUNT",
        "2",
        "STREAMS",
        "s",
        ">",
    ];
    scenario(&setup, &read, |con| {
        assert_eq!(
            owners(con),
            vec![p("1-1", "alice", 1), p("2-1", "alice", 1)]
        );
        // The last delivered ID moved: the next read gets the third entry.
        let next: Vec<StreamEntries> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("bob")
            .arg("STREAMS")
            .arg("s")
            .arg(">")
            .query(con)
            .unwrap();
        assert_eq!(next[0].1[0].0, "3-1");
    });
}

#[test]
fn claims_and_acknowledgements_survive_kill_9() {
    let setup = with(
        STREAM,
        &[
            &["XGROUP", "CREATE", "s", "g", "0"],
            &["XREADGROUP", "GROUP", "g", "alice", "STREAMS", "s", ">"],
        ],
    );
    scenario(&setup, &["XACK", "s", "g", "1-1"], |con| {
        assert_eq!(owners(con).len(), 3, "acknowledged: no longer pending");
    });
    scenario(&setup, &["XCLAIM", "s", "g", "bob", "0", "2-1"], |con| {
        assert!(owners(con).contains(&p("2-1", "bob", 2)));
    });
    let autoclaim = ["XAUTOCLAIM", "s", "g", "carol", "0", "3-1", "COUNT", "1"];
    scenario(&setup, &autoclaim, |con| {
        assert!(owners(con).contains(&p("3-1", "carol", 2)));
    });
}

fn groups(con: &mut redis::Connection) -> Vec<std::collections::HashMap<String, Value>> {
    redis::cmd("XINFO")
        .arg("GROUPS")
        .arg("s")
        .query(con)
        .unwrap()
}

#[test]
fn group_and_consumer_changes_survive_kill_9() {
    let setup = with(STREAM, &[&["XGROUP", "CREATE", "s", "g", "0"]]);
    scenario(&setup, &["XGROUP", "CREATE", "s", "h", "$"], |con| {
        assert_eq!(groups(con).len(), 2);
    });
    scenario(&setup, &["XGROUP", "SETID", "s", "g", "2-1"], |con| {
        assert_eq!(
            groups(con)[0]["last-delivered-id"],
            Value::BulkString(b"2-1".to_vec())
        );
    });
    scenario(
        &setup,
        &["XGROUP", "CREATECONSUMER", "s", "g", "zed"],
        |con| {
            assert_eq!(groups(con)[0]["consumers"], Value::Int(1));
        },
    );
    let read = with(
        &setup,
        &[&["XREADGROUP", "GROUP", "g", "alice", "STREAMS", "s", ">"]],
    );
    scenario(
        &read,
        &["XGROUP", "DELCONSUMER", "s", "g", "alice"],
        |con| {
            assert_eq!(groups(con)[0]["consumers"], Value::Int(0));
            assert!(owners(con).is_empty(), "its pending entries went with it");
        },
    );
    scenario(&setup, &["XGROUP", "DESTROY", "s", "g"], |con| {
        assert!(groups(con).is_empty());
    });
}

fn ids(con: &mut redis::Connection, key: &str) -> Vec<String> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(con)
        .unwrap();
    entries.into_iter().map(|(id, _)| id).collect()
}

#[test]
fn deletions_trims_and_key_changes_survive_kill_9() {
    scenario(STREAM, &["XDEL", "s", "2-1"], |con| {
        assert_eq!(ids(con, "s"), vec!["1-1", "3-1", "4-1"]);
    });
    scenario(STREAM, &["XTRIM", "s", "MAXLEN", "1"], |con| {
        assert_eq!(ids(con, "s"), vec!["4-1"]);
    });
    scenario(STREAM, &["XSETID", "s", "9-9"], |con| {
        let added: String = redis::cmd("XADD")
            .arg("s")
            .arg("*")
            .arg("f")
            .arg("v")
            .query(con)
            .unwrap();
        let ms: u64 = added.split('-').next().unwrap().parse().unwrap();
        assert!(ms > 9, "XSETID moved the last ID: {added}");
    });
    scenario(STREAM, &["DEL", "s"], |con| {
        assert_eq!(int(con, &["EXISTS", "s"]), 0);
    });
    scenario(STREAM, &["RENAME", "s", "t"], |con| {
        assert_eq!(int(con, &["EXISTS", "s"]), 0);
        assert_eq!(ids(con, "t").len(), 4);
    });
    scenario(STREAM, &["FLUSHALL"], |con| {
        assert_eq!(int(con, &["DBSIZE"]), 0);
    });
}

#[test]
fn appends_and_published_history_survive_kill_9() {
    scenario(STREAM, &["XADD", "s", "5-1", "f", "5"], |con| {
        assert_eq!(ids(con, "s").len(), 5);
    });
    scenario(&[], &["PUBLISH", "news", "first"], |con| {
        let history: Vec<(i64, i64, String)> = redis::cmd("TOPIC.READ")
            .arg("news")
            .arg("-")
            .query(con)
            .unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].2, "first");
    });
}

// AMQP

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn channel(server: &Server) -> (Connection, Channel) {
    let connection = Connection::connect(&server.uri(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

fn s(text: &str) -> ShortString {
    text.into()
}

async fn declare(channel: &Channel, name: &str, arguments: FieldTable) {
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(s(name), options, arguments)
        .await
        .unwrap();
}

/// Publish a persistent message and wait for its confirm.
async fn publish(channel: &Channel, exchange: &str, key: &str, body: &str) {
    channel
        .basic_publish(
            s(exchange),
            s(key),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn count(channel: &Channel, name: &str) -> Option<u32> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(s(name), passive, FieldTable::default())
        .await
        .ok()
        .map(|q| q.message_count())
}

async fn drain(channel: &Channel, name: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(got) = channel
        .basic_get(s(name), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        bodies.push(String::from_utf8(got.delivery.data.clone()).unwrap());
    }
    bodies
}

fn int_arg(name: &str, value: i64) -> FieldTable {
    let mut table = FieldTable::default();
    table.insert(s(name), AMQPValue::LongLongInt(value));
    table
}

/// What an AMQP scenario's last step is.
#[derive(Clone, Copy, Debug)]
enum Last {
    Purge,
    DeleteQueue,
    GetNoAck,
    DropHead,
    DeclareExchange,
    DeclareQueue,
    Bind,
    Unbind,
    TxCommitAck,
}

/// Declare durable queues `q` (two persistent messages) and `bounded` (x-max-length 1, one
/// message), a durable topic exchange `events` bound to `q` with `user.*`, each awaited; then
/// the `last` step, kill -9, restart, and check that step's effect.
fn amqp_scenario(last: Last) {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let server = Server::start(dir.path());
    rt.block_on(async {
        let (connection, channel) = channel(&server).await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        declare(&channel, "q", FieldTable::default()).await;
        declare(&channel, "bounded", int_arg("x-max-length", 1)).await;
        publish(&channel, "", "q", "m0").await;
        publish(&channel, "", "q", "m1").await;
        publish(&channel, "", "bounded", "old").await;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let topic = |name: &'static str| {
            channel.exchange_declare(s(name), ExchangeKind::Topic, durable, FieldTable::default())
        };
        topic("events").await.unwrap();
        let bind = || {
            channel.queue_bind(
                s("q"),
                s("events"),
                s("user.*"),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
        };
        if !matches!(last, Last::Bind) {
            bind().await.unwrap();
        }
        match last {
            Last::Purge => {
                let purged = channel
                    .queue_purge(s("q"), QueuePurgeOptions::default())
                    .await
                    .unwrap();
                assert_eq!(purged, 2);
            }
            Last::DeleteQueue => {
                channel
                    .queue_delete(s("q"), QueueDeleteOptions::default())
                    .await
                    .unwrap();
            }
            Last::GetNoAck => {
                let got = channel
                    .basic_get(s("q"), BasicGetOptions { no_ack: true })
                    .await
                    .unwrap();
                assert!(got.is_some());
            }
            // Its confirm reports that the old message was dropped from the head.
            Last::DropHead => publish(&channel, "", "bounded", "new").await,
            Last::DeclareExchange => topic("audit").await.unwrap(),
            Last::DeclareQueue => declare(&channel, "fresh", FieldTable::default()).await,
            Last::Bind => bind().await.unwrap(),
            Last::Unbind => channel
                .queue_unbind(s("q"), s("events"), s("user.*"), FieldTable::default())
                .await
                .unwrap(),
            Last::TxCommitAck => {
                let tx = connection.create_channel().await.unwrap();
                tx.tx_select().await.unwrap();
                let got = tx
                    .basic_get(s("q"), BasicGetOptions { no_ack: false })
                    .await
                    .unwrap()
                    .unwrap();
                tx.basic_ack(got.delivery.delivery_tag, BasicAckOptions::default())
                    .await
                    .unwrap();
                tx.tx_commit().await.unwrap();
            }
        }
    });
    server.kill_9();
    let server = Server::start(dir.path());
    rt.block_on(async {
        let (_connection, channel) = channel(&server).await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        match last {
            Last::Purge => assert_eq!(count(&channel, "q").await, Some(0)),
            Last::DeleteQueue => assert_eq!(count(&channel, "q").await, None),
            Last::GetNoAck => assert_eq!(drain(&channel, "q").await, vec!["m1"]),
            Last::DropHead => assert_eq!(drain(&channel, "bounded").await, vec!["new"]),
            Last::DeclareExchange => {
                channel
                    .exchange_declare(
                        s("audit"),
                        ExchangeKind::Topic,
                        passive,
                        FieldTable::default(),
                    )
                    .await
                    .expect("the exchange exists");
            }
            Last::DeclareQueue => assert_eq!(count(&channel, "fresh").await, Some(0)),
            Last::Bind | Last::Unbind => {
                publish(&channel, "events", "user.created", "routed?").await;
                let routed = drain(&channel, "q").await.contains(&"routed?".to_string());
                assert_eq!(routed, matches!(last, Last::Bind), "{last:?}");
            }
            Last::TxCommitAck => assert_eq!(drain(&channel, "q").await, vec!["m1"]),
        }
    });
}

#[test]
fn amqp_removals_survive_kill_9() {
    for last in [
        Last::Purge,
        Last::DeleteQueue,
        Last::GetNoAck,
        Last::DropHead,
    ] {
        amqp_scenario(last);
    }
}

#[test]
fn amqp_declarations_and_transactions_survive_kill_9() {
    for last in [
        Last::DeclareExchange,
        Last::DeclareQueue,
        Last::Bind,
        Last::Unbind,
        Last::TxCommitAck,
    ] {
        amqp_scenario(last);
    }
}

#[test]
fn expired_messages_are_dead_lettered_exactly_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let server = Server::start(dir.path());
    rt.block_on(async {
        let (_connection, channel) = channel(&server).await;
        declare(&channel, "dead", FieldTable::default()).await;
        let mut args = int_arg("x-message-ttl", 50);
        args.insert(
            s("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from(&b""[..])),
        );
        args.insert(
            s("x-dead-letter-routing-key"),
            AMQPValue::LongString(LongString::from(&b"dead"[..])),
        );
        declare(&channel, "delayed", args).await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for n in 0..5 {
            publish(&channel, "", "delayed", &format!("m{n}")).await;
        }
        // Expiry runs in the background; wait until all five arrived (each arrival is a
        // commit of its own, delayed by the failpoint).
        let mut consumer = channel
            .basic_consume(
                s("dead"),
                s("watcher"),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        for _ in 0..5 {
            let delivery = consumer.next().await.unwrap().unwrap();
            // Not acknowledged: they stay in `dead` for after the restart.
            let _ = delivery;
        }
    });
    server.kill_9();
    let server = Server::start(dir.path());
    rt.block_on(async {
        let (_connection, channel) = channel(&server).await;
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert_eq!(count(&channel, "delayed").await, Some(0));
        let mut dead = drain(&channel, "dead").await;
        dead.sort();
        assert_eq!(
            dead,
            vec!["m0", "m1", "m2", "m3", "m4"],
            "each exactly once"
        );
    });
}

#[test]
fn transient_messages_do_not_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let server = Server::start(dir.path());
    rt.block_on(async {
        let (_connection, channel) = channel(&server).await;
        declare(&channel, "q", FieldTable::default()).await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for (body, mode) in [("transient", 1), ("persistent", 2)] {
            channel
                .basic_publish(
                    s(""),
                    s("q"),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    BasicProperties::default().with_delivery_mode(mode),
                )
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
    server.kill_9();
    let server = Server::start(dir.path());
    rt.block_on(async {
        let (_connection, channel) = channel(&server).await;
        assert_eq!(drain(&channel, "q").await, vec!["persistent"]);
    });
}
