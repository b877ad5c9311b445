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

/// A stream `s` with entries 1-1 .. n-1, durable.
fn stream_with(con: &mut redis::Connection, n: u64) {
    for i in 1..=n {
        cmd(con, &["XADD", "s", &format!("{i}-1"), "f", &i.to_string()]);
    }
}

#[test]
fn consumer_group_deliveries_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut con = server.redis();
    stream_with(&mut con, 3);
    cmd(&mut con, &["XGROUP", "CREATE", "s", "g", "0"]);
    let read = cmd(
        &mut con,
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "alice",
            "COUNT",
            "2",
            "STREAMS",
            "s",
            ">",
        ],
    );
    assert!(matches!(read, Value::Array(_)), "{read:?}");
    server.kill_9();
    let server = Server::start(dir.path());
    let mut con = server.redis();
    assert_eq!(
        pending(&mut con, "s", "g"),
        vec![
            ("1-1".to_string(), "alice".to_string(), 1),
            ("2-1".to_string(), "alice".to_string(), 1)
        ],
        "the delivery's pending entries"
    );
    // The last delivered ID moved: the next read gets the third entry.
    let next: Vec<StreamEntries> = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("bob")
        .arg("STREAMS")
        .arg("s")
        .arg(">")
        .query(&mut con)
        .unwrap();
    assert_eq!(next[0].1[0].0, "3-1");
}

#[test]
fn claims_and_acknowledgements_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut con = server.redis();
    stream_with(&mut con, 4);
    cmd(&mut con, &["XGROUP", "CREATE", "s", "g", "0"]);
    cmd(
        &mut con,
        &["XREADGROUP", "GROUP", "g", "alice", "STREAMS", "s", ">"],
    );
    assert_eq!(int(&mut con, &["XACK", "s", "g", "1-1"]), 1);
    cmd(&mut con, &["XCLAIM", "s", "g", "bob", "0", "2-1"]);
    cmd(
        &mut con,
        &["XAUTOCLAIM", "s", "g", "carol", "0", "3-1", "COUNT", "1"],
    );
    server.kill_9();
    let server = Server::start(dir.path());
    let mut con = server.redis();
    assert_eq!(
        pending(&mut con, "s", "g"),
        vec![
            ("2-1".to_string(), "bob".to_string(), 2),
            ("3-1".to_string(), "carol".to_string(), 2),
            ("4-1".to_string(), "alice".to_string(), 1)
        ]
    );
}

#[test]
fn group_and_consumer_changes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut con = server.redis();
    stream_with(&mut con, 2);
    cmd(&mut con, &["XGROUP", "CREATE", "s", "keep", "0"]);
    cmd(&mut con, &["XGROUP", "CREATE", "s", "gone", "0"]);
    cmd(&mut con, &["XGROUP", "SETID", "s", "keep", "1-1"]);
    assert_eq!(
        int(&mut con, &["XGROUP", "CREATECONSUMER", "s", "keep", "zed"]),
        1
    );
    assert_eq!(int(&mut con, &["XGROUP", "DESTROY", "s", "gone"]), 1);
    server.kill_9();
    let server = Server::start(dir.path());
    let mut con = server.redis();
    let groups: Vec<std::collections::HashMap<String, Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg("s")
        .query(&mut con)
        .unwrap();
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(
        groups[0]["last-delivered-id"],
        Value::BulkString(b"1-1".to_vec())
    );
    assert_eq!(groups[0]["consumers"], Value::Int(1));
}

#[test]
fn deletions_trims_and_key_changes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut con = server.redis();
    stream_with(&mut con, 6);
    assert_eq!(int(&mut con, &["XDEL", "s", "5-1"]), 1);
    assert_eq!(int(&mut con, &["XTRIM", "s", "MAXLEN", "3"]), 2);
    cmd(&mut con, &["XADD", "doomed", "*", "f", "v"]);
    cmd(&mut con, &["XADD", "old", "*", "f", "v"]);
    assert_eq!(int(&mut con, &["DEL", "doomed"]), 1);
    cmd(&mut con, &["RENAME", "old", "new"]);
    server.kill_9();
    let server = Server::start(dir.path());
    let mut con = server.redis();
    let ids: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("s")
        .arg("-")
        .arg("+")
        .query(&mut con)
        .unwrap();
    let ids: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, vec!["3-1", "4-1", "6-1"]);
    assert_eq!(int(&mut con, &["EXISTS", "doomed", "old", "new"]), 1);
}

#[test]
fn published_history_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut con = server.redis();
    int(&mut con, &["PUBLISH", "news", "first"]);
    server.kill_9();
    let server = Server::start(dir.path());
    let mut con = server.redis();
    let history: Vec<(i64, i64, String)> = redis::cmd("TOPIC.READ")
        .arg("news")
        .arg("-")
        .query(&mut con)
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].2, "first");
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

#[test]
fn amqp_removals_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let server = Server::start(dir.path());
    rt.block_on(async {
        let (_connection, channel) = channel(&server).await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for name in ["purged", "deleted", "got"] {
            declare(&channel, name, FieldTable::default()).await;
        }
        declare(&channel, "bounded", int_arg("x-max-length", 1)).await;
        for name in ["purged", "deleted", "got", "got"] {
            publish(&channel, "", name, name).await;
        }
        // purge-ok and delete-ok report removals.
        let purged = channel
            .queue_purge(s("purged"), QueuePurgeOptions::default())
            .await
            .unwrap();
        assert_eq!(purged, 1);
        channel
            .queue_delete(s("deleted"), QueueDeleteOptions::default())
            .await
            .unwrap();
        // get-ok of an automatically acknowledged message reports its removal.
        let got = channel
            .basic_get(s("got"), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        assert!(got.is_some());
        // The second publish's confirm reports that the first was dropped from the head.
        publish(&channel, "", "bounded", "old").await;
        publish(&channel, "", "bounded", "new").await;
    });
    server.kill_9();
    let server = Server::start(dir.path());
    rt.block_on(async {
        let (_connection, channel) = channel(&server).await;
        assert_eq!(count(&channel, "purged").await, Some(0));
        assert_eq!(drain(&channel, "got").await, vec!["got"]);
        assert_eq!(drain(&channel, "bounded").await, vec!["new"]);
        // Last: the 404 closes the channel.
        assert_eq!(count(&channel, "deleted").await, None, "stays deleted");
    });
}

#[test]
fn amqp_declarations_and_transactions_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let server = Server::start(dir.path());
    rt.block_on(async {
        let (_connection, channel) = channel(&server).await;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                s("events"),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .unwrap();
        declare(&channel, "audit", FieldTable::default()).await;
        channel
            .queue_bind(
                s("audit"),
                s("events"),
                s("user.*"),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        declare(&channel, "work", FieldTable::default()).await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        publish(&channel, "", "work", "done").await;
        publish(&channel, "", "work", "todo").await;
        // Acknowledge inside a transaction: commit-ok reports the removal.
        let tx = _connection.create_channel().await.unwrap();
        tx.tx_select().await.unwrap();
        let got = tx
            .basic_get(s("work"), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .unwrap();
        tx.basic_ack(got.delivery.delivery_tag, BasicAckOptions::default())
            .await
            .unwrap();
        tx.tx_commit().await.unwrap();
    });
    server.kill_9();
    let server = Server::start(dir.path());
    rt.block_on(async {
        let (_connection, channel) = channel(&server).await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        // The exchange, queue and binding are all there: this reaches `audit`.
        publish(&channel, "events", "user.created", "hello").await;
        assert_eq!(drain(&channel, "audit").await, vec!["hello"]);
        assert_eq!(drain(&channel, "work").await, vec!["todo"]);
    });
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
