//! The real server over TCP, driven by the `redis` crate (RESP2 and RESP3) and by raw bytes:
//! streams, keyspace, pipelining, bad input, restart, and kill -9.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use redis::{Connection, RedisResult};

mod common;

/// A `potok serve` child process on a free port.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[]).expect("server starts")
    }

    fn start_with(data_dir: &Path, extra: &[&str]) -> Result<Server, String> {
        let spawned = common::server::spawn_server(data_dir, extra)?;
        let port = spawned.resp.rsplit(':').next().unwrap().parse().unwrap();
        Ok(Server {
            child: spawned.child,
            port,
        })
    }

    fn connect(&self) -> Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .unwrap()
            .get_connection()
            .unwrap()
    }

    fn connect_resp3(&self) -> Connection {
        let url = format!("redis://127.0.0.1:{}/?protocol=resp3", self.port);
        redis::Client::open(url).unwrap().get_connection().unwrap()
    }

    /// Send raw bytes on a fresh connection; return what came back before close or a pause.
    fn raw(&self, request: &[u8]) -> (Vec<u8>, bool) {
        let mut socket = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        socket.write_all(request).unwrap();
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match socket.read(&mut buf) {
                Ok(0) => return (reply, true),
                Ok(n) => reply.extend_from_slice(&buf[..n]),
                Err(_) => return (reply, false),
            }
        }
    }

    /// SIGTERM, and the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::mem::forget(self);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn xadd(con: &mut Connection, key: &str, id: &str, fields: &[(&str, &str)]) -> RedisResult<String> {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key).arg(id);
    for (f, v) in fields {
        cmd.arg(*f).arg(*v);
    }
    cmd.query(con)
}

type Entries = Vec<(String, Vec<String>)>;

fn xrange(con: &mut Connection, key: &str, start: &str, end: &str) -> Entries {
    redis::cmd("XRANGE")
        .arg(key)
        .arg(start)
        .arg(end)
        .query(con)
        .unwrap()
}

fn error_text(result: RedisResult<redis::Value>) -> String {
    let e = result.unwrap_err();
    format!("{} {}", e.code().unwrap_or(""), e.detail().unwrap_or(""))
        .trim()
        .to_string()
}

#[test]
fn streams_round_trip_over_resp2_and_resp3() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    for (i, mut con) in [server.connect(), server.connect_resp3()]
        .into_iter()
        .enumerate()
    {
        let key = format!("s{i}");
        assert_eq!(
            xadd(&mut con, &key, "1-1", &[("a", "1"), ("b", "2")]).unwrap(),
            "1-1"
        );
        assert_eq!(xadd(&mut con, &key, "1-*", &[("c", "3")]).unwrap(), "1-2");
        let auto = xadd(&mut con, &key, "*", &[("d", "4")]).unwrap();
        assert!(auto.ends_with("-0") && auto.len() > 10, "{auto}");
        let all = xrange(&mut con, &key, "-", "+");
        assert_eq!(all.len(), 3);
        assert_eq!(
            all[0],
            (
                "1-1".to_string(),
                vec!["a".into(), "1".into(), "b".into(), "2".into()]
            )
        );
        assert_eq!(
            xrange(&mut con, &key, "(1-1", "1"),
            vec![("1-2".to_string(), vec!["c".into(), "3".into()])]
        );
        let newest: Entries = redis::cmd("XREVRANGE")
            .arg(&key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(&mut con)
            .unwrap();
        assert_eq!(newest[0].0, auto);
        let len: i64 = redis::cmd("XLEN").arg(&key).query(&mut con).unwrap();
        assert_eq!(len, 3);
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut con).unwrap();
        assert_eq!(kind, "stream");
        let missing: Entries = xrange(&mut con, "nope", "-", "+");
        assert!(missing.is_empty());
        let nil: Option<String> = redis::cmd("XADD")
            .arg("nope")
            .arg("NOMKSTREAM")
            .arg("*")
            .arg("f")
            .arg("v")
            .query(&mut con)
            .unwrap();
        assert_eq!(nil, None);
    }
    let mut con = server.connect();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("s*").query(&mut con).unwrap();
    keys.sort();
    assert_eq!(keys, vec!["s0", "s1"]);
    let exists: i64 = redis::cmd("EXISTS")
        .arg("s0")
        .arg("s0")
        .arg("x")
        .query(&mut con)
        .unwrap();
    assert_eq!(exists, 2);
    let deleted: i64 = redis::cmd("DEL")
        .arg("s0")
        .arg("x")
        .query(&mut con)
        .unwrap();
    assert_eq!(deleted, 1);
    let size: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(size, 1);
    let _: () = redis::cmd("FLUSHALL").query(&mut con).unwrap();
    let size: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(size, 0);
}

#[test]
fn errors_match_redis_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut con = server.connect();
    xadd(&mut con, "s", "5-5", &[("f", "v")]).unwrap();
    let cases: [(&[&str], &str); 9] = [
        (
            &["XADD", "s", "0-0", "f", "v"],
            "ERR The ID specified in XADD must be greater than 0-0",
        ),
        (
            &["XADD", "s", "5-5", "f", "v"],
            "ERR The ID specified in XADD is equal or smaller than the target stream top item",
        ),
        (
            &["XADD", "s", "abc", "f", "v"],
            "ERR Invalid stream ID specified as stream command argument",
        ),
        (
            &["XADD", "s", "*", "f"],
            "ERR wrong number of arguments for 'xadd' command",
        ),
        (
            &["XADD", "s"],
            "ERR wrong number of arguments for 'xadd' command",
        ),
        (
            &["XRANGE", "s", "-", "+", "COUNT", "x"],
            "ERR value is not an integer or out of range",
        ),
        (&["XRANGE", "s", "-", "+", "FOO"], "ERR syntax error"),
        (&["SELECT", "1"], "ERR DB index is out of range"),
        (
            &["NOSUCH", "a", "b"],
            "ERR unknown command 'NOSUCH', with args beginning with: 'a' 'b'",
        ),
    ];
    for (args, expected) in cases {
        let mut cmd = redis::cmd(args[0]);
        args[1..].iter().for_each(|a| {
            cmd.arg(*a);
        });
        assert_eq!(error_text(cmd.query(&mut con)), expected, "{args:?}");
    }
    // A new key with a rejected ID is not created.
    assert!(xadd(&mut con, "fresh", "0-0", &[("f", "v")]).is_err());
    let exists: i64 = redis::cmd("EXISTS").arg("fresh").query(&mut con).unwrap();
    assert_eq!(exists, 0);
    // Nor by an entry too large for a batch (16 MiB), held back or not.
    let huge = vec![b'x'; 17 * 1024 * 1024];
    for id in ["*", "1-1"] {
        let refused: RedisResult<String> = redis::cmd("XADD")
            .arg("huge")
            .arg(id)
            .arg("f")
            .arg(&huge[..])
            .query(&mut con);
        let text = error_text(refused.map(redis::Value::SimpleString));
        assert!(text.contains("exceeds the limit"), "{text}");
        let exists: i64 = redis::cmd("EXISTS").arg("huge").query(&mut con).unwrap();
        assert_eq!(exists, 0, "XADD huge {id}");
    }
    assert_eq!(xrange(&mut con, "s", "-", "+").len(), 1);
}

#[test]
fn malformed_requests_get_protocol_errors_and_the_server_survives() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut con = server.connect();
    xadd(&mut con, "s", "1-1", &[("f", "v")]).unwrap();
    let cases: [(&[u8], &[u8]); 5] = [
        (
            b"*2\r\n$4\r\nPING\r\n$-5\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n:5\r\n",
            b"-ERR Protocol error: expected '$', got ':'\r\n",
        ),
        (
            b"*2\r\n$4\r\nECHO\r\n$999999999999\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*99999999\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"PING \"open\r\n",
            b"-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
    ];
    for (request, expected) in cases {
        let (reply, closed) = server.raw(request);
        assert_eq!(reply, expected, "{:?}", String::from_utf8_lossy(request));
        assert!(closed, "the connection closes after a protocol error");
    }
    let (reply, closed) = server.raw(&vec![b'x'; 100 * 1024]);
    assert_eq!(reply, b"-ERR Protocol error: too big inline request\r\n");
    assert!(closed);
    // Inline commands and pipelines, on one connection that stays open.
    let (reply, closed) = server.raw(b"PING\r\nECHO \"a b\"\r\n*1\r\n$4\r\nPING\r\n");
    assert_eq!(reply, b"+PONG\r\n$3\r\na b\r\n+PONG\r\n");
    assert!(!closed);
    let (reply, closed) = server.raw(b"QUIT\r\n");
    assert_eq!((reply.as_slice(), closed), (&b"+OK\r\n"[..], true));
    // The earlier connection and the data are unaffected.
    assert_eq!(xrange(&mut con, "s", "-", "+").len(), 1);
}

#[test]
fn pipelined_appends_are_acknowledged_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut con = server.connect();
    let mut pipe = redis::pipe();
    for n in 1..=500 {
        pipe.cmd("XADD")
            .arg("p")
            .arg(format!("{n}-0"))
            .arg("n")
            .arg(n);
    }
    pipe.cmd("XLEN").arg("p");
    let (ids, len): (Vec<String>, i64) = {
        let mut replies: Vec<redis::Value> = pipe.query(&mut con).unwrap();
        let len = redis::from_redis_value(replies.pop().unwrap()).unwrap();
        (
            replies
                .into_iter()
                .map(|v| redis::from_redis_value(v).unwrap())
                .collect(),
            len,
        )
    };
    assert_eq!(ids, (1..=500).map(|n| format!("{n}-0")).collect::<Vec<_>>());
    assert_eq!(len, 500, "a read after appends in one pipeline sees them");

    // Appends in one pipeline reuse their stream handle; deleting or renaming the key in the
    // same pipeline must not let a later append reach the old stream.
    let (_, deleted, _, _, renamed, _, len_a, len_b): (
        String,
        i64,
        String,
        String,
        String,
        String,
        i64,
        i64,
    ) = redis::pipe()
        .cmd("XADD")
        .arg("c")
        .arg("*")
        .arg("f")
        .arg("1")
        .cmd("DEL")
        .arg("c")
        .cmd("XADD")
        .arg("c")
        .arg("*")
        .arg("f")
        .arg("2")
        .cmd("XADD")
        .arg("c")
        .arg("*")
        .arg("f")
        .arg("3")
        .cmd("RENAME")
        .arg("c")
        .arg("d")
        .cmd("XADD")
        .arg("c")
        .arg("*")
        .arg("f")
        .arg("4")
        .cmd("XLEN")
        .arg("c")
        .cmd("XLEN")
        .arg("d")
        .query(&mut con)
        .unwrap();
    assert_eq!((deleted, renamed.as_str()), (1, "OK"));
    assert_eq!((len_a, len_b), (1, 2), "the new c holds 4; d holds 2 and 3");
    // Within one transaction too, where nothing ends a round in between.
    let (_, deleted, _, len): (String, i64, String, i64) = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg("t")
        .arg("*")
        .arg("f")
        .arg("1")
        .cmd("DEL")
        .arg("t")
        .cmd("XADD")
        .arg("t")
        .arg("*")
        .arg("f")
        .arg("2")
        .cmd("XLEN")
        .arg("t")
        .query(&mut con)
        .unwrap();
    assert_eq!((deleted, len), (1, 1));
}

/// Plain `XADD key * ...` requests in a pipeline are held back and appended together; anything
/// else (another key, an explicit ID, trimming, a read, a transaction, CLIENT REPLY) must see
/// them done first, and every reply must be the request's own.
#[test]
fn held_back_appends_keep_pipeline_order_and_replies() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut con = server.connect();
    let _: String = redis::cmd("XADD")
        .arg("a")
        .arg("*")
        .arg("n")
        .arg(0)
        .query(&mut con)
        .unwrap();
    let far = "99999999999999-0";
    let mut pipe = redis::pipe();
    for n in 1..=5 {
        pipe.cmd("XADD").arg("a").arg("*").arg("n").arg(n);
        pipe.cmd("XADD").arg("b").arg("*").arg("n").arg(n);
    }
    pipe.cmd("XADD").arg("a").arg("*").arg("n").arg(6);
    pipe.cmd("XADD").arg("a").arg(far).arg("n").arg(7);
    pipe.cmd("XADD").arg("a").arg("*").arg("n").arg(8);
    pipe.cmd("XLEN").arg("a");
    pipe.cmd("XADD").arg("a").arg("*").arg("n").arg(9);
    pipe.cmd("XADD")
        .arg("a")
        .arg("MAXLEN")
        .arg(3)
        .arg("*")
        .arg("n")
        .arg(10);
    pipe.cmd("XADD").arg("a").arg("*").arg("n").arg(11);
    let replies: Vec<redis::Value> = pipe.query(&mut con).unwrap();
    let text = |v: &redis::Value| -> String { redis::from_redis_value(v.clone()).unwrap() };
    let a_ids: Vec<String> = [0, 2, 4, 6, 8, 10, 11, 12]
        .iter()
        .map(|&i| text(&replies[i]))
        .chain([14, 15, 16].iter().map(|&i| text(&replies[i])))
        .collect();
    assert_eq!(a_ids[6], far);
    let parsed: Vec<(u64, u64)> = a_ids
        .iter()
        .map(|id| {
            let (ms, seq) = id.split_once('-').unwrap();
            (ms.parse().unwrap(), seq.parse().unwrap())
        })
        .collect();
    assert!(
        parsed.windows(2).all(|w| w[0] < w[1]),
        "IDs of one stream rise in request order: {a_ids:?}"
    );
    let len: i64 = redis::from_redis_value(replies[13].clone()).unwrap();
    assert_eq!(len, 9, "XLEN sees every earlier append (0 and 1..=8)");
    let entries = xrange(&mut con, "a", "-", "+");
    let values: Vec<&str> = entries.iter().map(|(_, f)| f[1].as_str()).collect();
    assert_eq!(
        values,
        ["8", "9", "10", "11"],
        "MAXLEN 3 kept 8, 9 and 10, and 11 came after it"
    );
    let b: Vec<String> = xrange(&mut con, "b", "-", "+")
        .into_iter()
        .map(|(_, f)| f[1].clone())
        .collect();
    assert_eq!(b, ["1", "2", "3", "4", "5"]);

    // Held-back appends and nothing pending yet: a keyspace command right after them (which
    // does not end the round) must still come after them.
    let _: String = redis::cmd("XADD")
        .arg("e")
        .arg("*")
        .arg("f")
        .arg(0)
        .query(&mut con)
        .unwrap();
    let (_, _, deleted, len): (String, String, i64, i64) = redis::pipe()
        .cmd("XADD")
        .arg("e")
        .arg("*")
        .arg("f")
        .arg(1)
        .cmd("XADD")
        .arg("e")
        .arg("*")
        .arg("f")
        .arg(2)
        .cmd("DEL")
        .arg("e")
        .cmd("XLEN")
        .arg("e")
        .query(&mut con)
        .unwrap();
    assert_eq!((deleted, len), (1, 0));
    let exists: i64 = redis::cmd("EXISTS").arg("e").query(&mut con).unwrap();
    assert_eq!(
        exists, 0,
        "the appends were deleted with the stream, not added after"
    );

    // In a transaction the replies are final when EXEC answers.
    let (x, y, len): (String, String, i64) = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg("t")
        .arg("*")
        .arg("f")
        .arg(1)
        .cmd("XADD")
        .arg("t")
        .arg("*")
        .arg("f")
        .arg(2)
        .cmd("XLEN")
        .arg("t")
        .query(&mut con)
        .unwrap();
    assert!(x.contains('-') && y.contains('-') && x != y);
    assert_eq!(len, 2);

    // CLIENT REPLY SKIP silences exactly the next reply, held back or not.
    let (reply, _) = server
        .raw(b"CLIENT REPLY SKIP\r\nXADD r * f 1\r\nXADD r * f 2\r\nXADD r * f 3\r\nXLEN r\r\n");
    let reply = String::from_utf8(reply).unwrap();
    assert_eq!(reply.matches("$15\r\n").count(), 2, "{reply}");
    assert!(reply.ends_with(":3\r\n"), "{reply}");
}

#[test]
fn data_survives_a_clean_restart_and_the_directory_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut con = server.connect();
    for n in 1..=50 {
        xadd(
            &mut con,
            "orders",
            &format!("{n}-1"),
            &[("n", &n.to_string())],
        )
        .unwrap();
    }
    drop(con);
    assert!(server.terminate().success(), "SIGTERM exits 0");
    let verify = Command::new(env!("CARGO_BIN_EXE_potok"))
        .arg("verify")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let server = Server::start(dir.path());
    let mut con = server.connect();
    let entries = xrange(&mut con, "orders", "-", "+");
    assert_eq!(entries.len(), 50);
    assert_eq!(entries[49].0, "50-1");
    assert!(
        xadd(&mut con, "orders", "50-1", &[("n", "dup")]).is_err(),
        "the last ID survived the restart"
    );
    assert_eq!(
        xadd(&mut con, "orders", "50-*", &[("n", "next")]).unwrap(),
        "50-2"
    );
}

#[test]
fn a_second_server_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _server = Server::start(dir.path());
    let err = Server::start_with(dir.path(), &[])
        .err()
        .expect("the second server must not start");
    assert!(err.contains("in use by another process"), "{err}");
}

#[test]
fn kill_9_loses_no_acknowledged_entry() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let port = server.port;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            std::thread::spawn(move || {
                let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                    .unwrap()
                    .get_connection()
                    .unwrap();
                let mut acked = Vec::new();
                for n in 0.. {
                    match xadd(
                        &mut con,
                        "k9",
                        "*",
                        &[("writer", &w.to_string()), ("n", &n.to_string())],
                    ) {
                        Ok(id) => acked.push((id, w, n)),
                        Err(_) => break,
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    server.kill9();
    let mut acked: Vec<(String, i32, i32)> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(acked.len() > 20, "the writers got going: {}", acked.len());
    let server = Server::start(dir.path());
    let mut con = server.connect();
    let stored = xrange(&mut con, "k9", "-", "+");
    let ids: Vec<&String> = stored.iter().map(|(id, _)| id).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "no entry is duplicated");
    let position: std::collections::HashMap<&String, usize> =
        ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    acked.sort();
    for (id, writer, n) in &acked {
        let at = *position
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged entry {id} lost"));
        assert_eq!(
            stored[at].1,
            vec![
                "writer".to_string(),
                writer.to_string(),
                "n".into(),
                n.to_string()
            ]
        );
    }
    // Each writer's entries are in the order it wrote them.
    for w in 0..4 {
        let ns: Vec<i32> = stored
            .iter()
            .filter(|(_, f)| f[1] == w.to_string())
            .map(|(_, f)| f[3].parse().unwrap())
            .collect();
        assert!(
            ns.windows(2).all(|p| p[0] < p[1]),
            "writer {w} out of order"
        );
    }
}

type StreamReply = Vec<(String, Entries)>;

#[test]
fn xread_returns_new_entries_and_blocks_until_they_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut con = server.connect();
    xadd(&mut con, "a", "1-1", &[("f", "1")]).unwrap();
    xadd(&mut con, "a", "2-1", &[("f", "2")]).unwrap();
    xadd(&mut con, "b", "5-1", &[("g", "5")]).unwrap();
    let got: StreamReply = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg("a")
        .arg("b")
        .arg("nope")
        .arg("1-1")
        .arg("0")
        .arg("0")
        .query(&mut con)
        .unwrap();
    assert_eq!(
        got,
        vec![
            (
                "a".to_string(),
                vec![("2-1".to_string(), vec!["f".to_string(), "2".to_string()])]
            ),
            (
                "b".to_string(),
                vec![("5-1".to_string(), vec!["g".to_string(), "5".to_string()])]
            ),
        ]
    );
    let none: Option<StreamReply> = redis::cmd("XREAD")
        .arg("STREAMS")
        .arg("a")
        .arg("$")
        .query(&mut con)
        .unwrap();
    assert_eq!(none, None, "nothing after $ without BLOCK: a nil reply");
    let timed_out: Option<StreamReply> = redis::cmd("XREAD")
        .arg("BLOCK")
        .arg(50)
        .arg("STREAMS")
        .arg("a")
        .arg("$")
        .query(&mut con)
        .unwrap();
    assert_eq!(timed_out, None);
    let unbalanced = redis::cmd("XREAD")
        .arg("STREAMS")
        .arg("a")
        .arg("b")
        .arg("0")
        .query::<redis::Value>(&mut con);
    assert!(error_text(unbalanced).starts_with("ERR Unbalanced 'xread' list of streams"));

    // BLOCK 0 on an existing stream and on a key that does not exist yet; another client
    // appends while they wait, and a third client is served meanwhile.
    let port = server.port;
    let blocked: Vec<_> = ["a", "later"]
        .into_iter()
        .map(|key| {
            std::thread::spawn(move || {
                let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                    .unwrap()
                    .get_connection()
                    .unwrap();
                let got: StreamReply = redis::cmd("XREAD")
                    .arg("BLOCK")
                    .arg(0)
                    .arg("STREAMS")
                    .arg(key)
                    .arg("$")
                    .query(&mut con)
                    .unwrap();
                got
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut other = server.connect();
    let pong: String = redis::cmd("PING").query(&mut other).unwrap();
    assert_eq!(pong, "PONG", "blocked readers do not stall other clients");
    xadd(&mut other, "a", "3-1", &[("f", "3")]).unwrap();
    xadd(&mut other, "later", "1-1", &[("h", "1")]).unwrap();
    let results: Vec<StreamReply> = blocked.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        results[0],
        vec![(
            "a".to_string(),
            vec![("3-1".to_string(), vec!["f".to_string(), "3".to_string()])]
        )]
    );
    assert_eq!(
        results[1],
        vec![(
            "later".to_string(),
            vec![("1-1".to_string(), vec!["h".to_string(), "1".to_string()])]
        )]
    );
}

#[test]
fn requests_after_a_blocking_read_wait_their_turn() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut socket = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    socket
        .write_all(b"XREAD BLOCK 100 STREAMS s $\r\nPING\r\n")
        .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reply = Vec::new();
    while !reply.ends_with(b"+PONG\r\n") {
        let mut buf = [0u8; 256];
        let n = socket.read(&mut buf).unwrap();
        assert!(n > 0);
        reply.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        reply, b"*-1\r\n+PONG\r\n",
        "the timeout's nil comes first, then PONG"
    );
}

#[test]
fn deletions_trims_and_setid_match_redis_and_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut con = server.connect();
    for n in 1..=10 {
        xadd(&mut con, "s", &format!("{n}-1"), &[("f", &n.to_string())]).unwrap();
    }
    let int = |con: &mut Connection, args: &[&str]| -> i64 {
        let mut cmd = redis::cmd(args[0]);
        args[1..].iter().for_each(|a| {
            cmd.arg(*a);
        });
        cmd.query(con).unwrap()
    };
    assert_eq!(int(&mut con, &["XDEL", "s", "2-1", "3-1", "99-1"]), 2);
    assert_eq!(int(&mut con, &["XLEN", "s"]), 8);
    assert_eq!(int(&mut con, &["XTRIM", "s", "MAXLEN", "5"]), 3);
    assert_eq!(xrange(&mut con, "s", "-", "+")[0].0, "6-1");
    assert_eq!(int(&mut con, &["XTRIM", "s", "MINID", "8"]), 2);
    let _: () = redis::cmd("XSETID")
        .arg("s")
        .arg("20-1")
        .query(&mut con)
        .unwrap();
    let id: String = redis::cmd("XADD")
        .arg("t")
        .arg("MAXLEN")
        .arg("2")
        .arg("*")
        .arg("a")
        .arg("b")
        .query(&mut con)
        .unwrap();
    assert!(!id.is_empty());
    for n in 0..5 {
        let _: String = redis::cmd("XADD")
            .arg("t")
            .arg("MAXLEN")
            .arg("=")
            .arg("2")
            .arg("*")
            .arg("n")
            .arg(n)
            .query(&mut con)
            .unwrap();
    }
    assert_eq!(int(&mut con, &["XLEN", "t"]), 2);
    let errors: [(&[&str], &str); 5] = [
        (
            &["XTRIM", "s", "MAXLEN", "=", "1", "LIMIT", "5"],
            "ERR syntax error, LIMIT cannot be used without the special ~ option",
        ),
        (
            &["XTRIM", "s", "LIMIT", "5"],
            "ERR syntax error, LIMIT cannot be used without specifying a trimming strategy",
        ),
        (
            &["XTRIM", "s", "MAXLEN", "-1"],
            "ERR The MAXLEN argument must be >= 0.",
        ),
        (
            &["XSETID", "s", "5-5"],
            "ERR The ID specified in XSETID is smaller than the target stream top item",
        ),
        (&["XSETID", "nosuch", "1-1"], "ERR no such key"),
    ];
    for (args, expected) in errors {
        let mut cmd = redis::cmd(args[0]);
        args[1..].iter().for_each(|a| {
            cmd.arg(*a);
        });
        assert_eq!(error_text(cmd.query(&mut con)), expected, "{args:?}");
    }
    let info: std::collections::HashMap<String, redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg("s")
        .query(&mut con)
        .unwrap();
    assert_eq!(
        redis::from_redis_value::<i64>(info["length"].clone()).unwrap(),
        3
    );
    assert_eq!(
        redis::from_redis_value::<String>(info["last-generated-id"].clone()).unwrap(),
        "20-1"
    );
    assert_eq!(
        redis::from_redis_value::<String>(info["max-deleted-entry-id"].clone()).unwrap(),
        "3-1"
    );
    assert_eq!(
        redis::from_redis_value::<i64>(info["entries-added"].clone()).unwrap(),
        10
    );

    // All of it is durable: kill -9 and look again.
    server.kill9();
    let server = Server::start(dir.path());
    let mut con = server.connect();
    let ids: Vec<String> = xrange(&mut con, "s", "-", "+")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, vec!["8-1", "9-1", "10-1"]);
    assert!(
        xadd(&mut con, "s", "20-1", &[("f", "v")]).is_err(),
        "XSETID's last ID survived"
    );
    assert_eq!(int(&mut con, &["XLEN", "t"]), 2);
}

fn run(con: &mut Connection, args: &[&str]) -> RedisResult<redis::Value> {
    let mut cmd = redis::cmd(args[0]);
    args[1..].iter().for_each(|a| {
        cmd.arg(*a);
    });
    cmd.query(con)
}

fn ids_of(reply: StreamReply) -> Vec<String> {
    reply
        .into_iter()
        .flat_map(|(_, entries)| entries.into_iter().map(|(id, _)| id))
        .collect()
}

#[test]
fn consumer_groups_deliver_ack_claim_and_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut con = server.connect();
    for n in 1..=5 {
        xadd(
            &mut con,
            "jobs",
            &format!("{n}-1"),
            &[("job", &n.to_string())],
        )
        .unwrap();
    }
    run(&mut con, &["XGROUP", "CREATE", "jobs", "workers", "0"]).unwrap();
    assert_eq!(
        error_text(run(&mut con, &["XGROUP", "CREATE", "jobs", "workers", "0"])),
        "BUSYGROUP Consumer Group name already exists"
    );
    let read = |con: &mut Connection, consumer: &str, count: usize| -> Vec<String> {
        let reply: Option<StreamReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("workers")
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg("jobs")
            .arg(">")
            .query(con)
            .unwrap();
        reply.map(ids_of).unwrap_or_default()
    };
    assert_eq!(read(&mut con, "alice", 2), vec!["1-1", "2-1"]);
    assert_eq!(read(&mut con, "bob", 10), vec!["3-1", "4-1", "5-1"]);
    assert!(read(&mut con, "bob", 10).is_empty(), "nothing new");
    let acked: i64 = redis::cmd("XACK")
        .arg("jobs")
        .arg("workers")
        .arg("1-1")
        .arg("4-1")
        .arg("9-9")
        .query(&mut con)
        .unwrap();
    assert_eq!(acked, 2);
    let summary: (i64, String, String, Vec<(String, String)>) = redis::cmd("XPENDING")
        .arg("jobs")
        .arg("workers")
        .query(&mut con)
        .unwrap();
    assert_eq!(
        summary,
        (
            3,
            "2-1".into(),
            "5-1".into(),
            vec![("alice".into(), "1".into()), ("bob".into(), "2".into())]
        )
    );
    let claimed: Vec<String> = redis::cmd("XCLAIM")
        .arg("jobs")
        .arg("workers")
        .arg("carol")
        .arg(0)
        .arg("2-1")
        .arg("JUSTID")
        .query(&mut con)
        .unwrap();
    assert_eq!(claimed, vec!["2-1"]);
    let auto: (String, Entries, Vec<String>) = redis::cmd("XAUTOCLAIM")
        .arg("jobs")
        .arg("workers")
        .arg("dave")
        .arg(0)
        .arg("0")
        .arg("COUNT")
        .arg(1)
        .query(&mut con)
        .unwrap();
    assert_eq!((auto.0.as_str(), auto.1.len()), ("3-1", 1));
    let history: StreamReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg("dave")
        .arg("STREAMS")
        .arg("jobs")
        .arg("0")
        .query(&mut con)
        .unwrap();
    assert_eq!(ids_of(history), vec!["2-1"]);
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg("jobs")
        .query(&mut con)
        .unwrap();
    assert_eq!(
        redis::from_redis_value::<i64>(groups[0]["pending"].clone()).unwrap(),
        3
    );
    assert_eq!(
        redis::from_redis_value::<String>(groups[0]["last-delivered-id"].clone()).unwrap(),
        "5-1"
    );
    assert_eq!(
        error_text(run(
            &mut con,
            &["XREADGROUP", "GROUP", "nope", "x", "STREAMS", "jobs", ">"]
        )),
        "NOGROUP No such key 'jobs' or consumer group 'nope' in XREADGROUP with GROUP option"
    );

    // kill -9: the group, its last delivered ID and every unacknowledged entry remain; acked
    // entries are not pending again.
    server.kill9();
    let server = Server::start(dir.path());
    let mut con = server.connect();
    let rows: Vec<(String, String, i64, i64)> = redis::cmd("XPENDING")
        .arg("jobs")
        .arg("workers")
        .arg("-")
        .arg("+")
        .arg(10)
        .query(&mut con)
        .unwrap();
    let pending: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert!(
        pending.contains(&"3-1") && pending.contains(&"5-1") && pending.contains(&"2-1"),
        "{pending:?}"
    );
    assert!(
        !pending.contains(&"1-1") && !pending.contains(&"4-1"),
        "acknowledged entries stay acknowledged: {pending:?}"
    );
    xadd(&mut con, "jobs", "6-1", &[("job", "6")]).unwrap();
    assert_eq!(
        read(&mut con, "alice", 10),
        vec!["6-1"],
        "only new entries: the last delivered ID survived"
    );
}

#[test]
fn blocked_group_reads_wake_on_new_entries_and_fail_when_the_group_or_key_goes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut con = server.connect();
    for key in ["a", "b", "c"] {
        run(&mut con, &["XGROUP", "CREATE", key, "g", "$", "MKSTREAM"]).unwrap();
    }
    let port = server.port;
    let waiter = |key: &'static str| {
        std::thread::spawn(move || {
            let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                .unwrap()
                .get_connection()
                .unwrap();
            run(
                &mut con,
                &[
                    "XREADGROUP",
                    "GROUP",
                    "g",
                    "c1",
                    "BLOCK",
                    "0",
                    "STREAMS",
                    key,
                    ">",
                ],
            )
        })
    };
    let (on_a, on_b, on_c) = (waiter("a"), waiter("b"), waiter("c"));
    std::thread::sleep(Duration::from_millis(200));
    xadd(&mut con, "a", "1-1", &[("f", "v")]).unwrap();
    run(&mut con, &["XGROUP", "DESTROY", "b", "g"]).unwrap();
    run(&mut con, &["DEL", "c"]).unwrap();
    let got: StreamReply = redis::from_redis_value(on_a.join().unwrap().unwrap()).unwrap();
    assert_eq!(ids_of(got), vec!["1-1"]);
    assert_eq!(
        error_text(on_b.join().unwrap()),
        "NOGROUP the consumer group this client was blocked on no longer exists"
    );
    assert_eq!(
        error_text(on_c.join().unwrap()),
        "UNBLOCKED the stream key no longer exists"
    );
}

#[test]
fn auth_client_config_info_scan_rename_and_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--password", "sekret"]).unwrap();
    let url = |password: &str| format!("redis://:{password}@127.0.0.1:{}/", server.port);
    assert!(
        redis::Client::open(url("wrong"))
            .unwrap()
            .get_connection()
            .is_err(),
        "a wrong password is refused"
    );
    let (reply, _) = server.raw(b"PING\r\n");
    assert_eq!(reply, b"-NOAUTH Authentication required.\r\n");
    let mut con = redis::Client::open(url("sekret"))
        .unwrap()
        .get_connection()
        .unwrap();
    let mut other = redis::Client::open(url("sekret"))
        .unwrap()
        .get_connection()
        .unwrap();

    // CLIENT
    run(&mut con, &["CLIENT", "SETNAME", "worker-1"]).unwrap();
    let name: String = redis::cmd("CLIENT").arg("GETNAME").query(&mut con).unwrap();
    assert_eq!(name, "worker-1");
    let other_id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut other).unwrap();
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut con).unwrap();
    assert!(
        list.contains("name=worker-1") && list.contains(&format!("id={other_id} ")),
        "{list}"
    );
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(other_id)
        .query(&mut con)
        .unwrap();
    assert_eq!(killed, 1);
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        run(&mut other, &["PING"]).is_err(),
        "a killed client is disconnected"
    );

    // CONFIG and INFO
    let maxclients: std::collections::HashMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("max*")
        .query(&mut con)
        .unwrap();
    assert_eq!(maxclients["maxclients"], "10000");
    run(&mut con, &["CONFIG", "SET", "maxclients", "500"]).unwrap();
    let maxclients: std::collections::HashMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxclients")
        .query(&mut con)
        .unwrap();
    assert_eq!(maxclients["maxclients"], "500");
    assert_eq!(
        error_text(run(&mut con, &["CONFIG", "SET", "nosuch", "1"])),
        "ERR Unknown option or number of arguments for CONFIG SET - 'nosuch'"
    );
    for n in 0..25 {
        xadd(&mut con, &format!("key:{n:02}"), "1-1", &[("f", "v")]).unwrap();
    }
    let info: String = redis::cmd("INFO").query(&mut con).unwrap();
    for needle in [
        "# Server",
        "redis_version:7.0.15",
        "connected_clients:",
        "blocked_clients:0",
        "# Persistence",
        "total_commands_processed:",
        "db0:keys=25",
    ] {
        assert!(info.contains(needle), "INFO lacks {needle}: {info}");
    }
    // As in Redis, INFO counts every command before it, even pipelined in the same read.
    let processed = |info: &str| -> u64 {
        let line = info
            .lines()
            .find(|l| l.starts_with("total_commands_processed:"));
        line.unwrap().split(':').nth(1).unwrap().parse().unwrap()
    };
    let before = processed(
        &redis::cmd("INFO")
            .arg("stats")
            .query::<String>(&mut con)
            .unwrap(),
    );
    let (_, _, _, after): (String, String, String, String) = redis::pipe()
        .cmd("XADD")
        .arg("counted")
        .arg("*")
        .arg("f")
        .arg("v")
        .cmd("XADD")
        .arg("counted")
        .arg("*")
        .arg("f")
        .arg("v")
        .cmd("PING")
        .cmd("INFO")
        .arg("stats")
        .query(&mut con)
        .unwrap();
    assert_eq!(
        processed(&after),
        before + 4,
        "the first INFO and three commands"
    );
    let _: i64 = redis::cmd("DEL").arg("counted").query(&mut con).unwrap();

    // SCAN returns every key exactly once over a full iteration; MATCH and TYPE filter.
    let mut cursor = "0".to_string();
    let mut seen = Vec::new();
    loop {
        let (next, keys): (String, Vec<String>) = redis::cmd("SCAN")
            .arg(&cursor)
            .arg("COUNT")
            .arg(7)
            .query(&mut con)
            .unwrap();
        seen.extend(keys);
        if next == "0" {
            break;
        }
        cursor = next;
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..25).map(|n| format!("key:{n:02}")).collect::<Vec<_>>()
    );
    let (_, matched): (String, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("COUNT")
        .arg(100)
        .arg("MATCH")
        .arg("key:1?")
        .arg("TYPE")
        .arg("stream")
        .query(&mut con)
        .unwrap();
    assert_eq!(matched.len(), 10);

    // RENAME (durable), then MULTI/EXEC/DISCARD.
    run(&mut con, &["RENAME", "key:00", "renamed"]).unwrap();
    assert_eq!(
        error_text(run(&mut con, &["RENAME", "key:00", "x"])),
        "ERR no such key"
    );
    let (len, added): (i64, String) = redis::pipe()
        .atomic()
        .cmd("XLEN")
        .arg("renamed")
        .cmd("XADD")
        .arg("renamed")
        .arg("2-1")
        .arg("g")
        .arg("h")
        .query(&mut con)
        .unwrap();
    assert_eq!((len, added.as_str()), (1, "2-1"));
    // A queued read sees the queued write before it (durability is awaited inside EXEC).
    let (added, len): (String, i64) = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg("renamed")
        .arg("2-5")
        .arg("i")
        .arg("j")
        .cmd("XLEN")
        .arg("renamed")
        .query(&mut con)
        .unwrap();
    assert_eq!((added.as_str(), len), ("2-5", 3));
    run(&mut con, &["MULTI"]).unwrap();
    run(&mut con, &["XADD", "renamed", "3-1", "a", "b"]).unwrap();
    run(&mut con, &["DISCARD"]).unwrap();
    assert_eq!(
        xrange(&mut con, "renamed", "-", "+").len(),
        3,
        "a discarded transaction did nothing"
    );
    drop(con);
    assert!(server.terminate().success());
    let server = Server::start_with(dir.path(), &["--password", "sekret"]).unwrap();
    let mut con = redis::Client::open(format!("redis://:sekret@127.0.0.1:{}/", server.port))
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(
        xrange(&mut con, "renamed", "-", "+").len(),
        3,
        "the rename survived a restart"
    );
    let exists: i64 = redis::cmd("EXISTS").arg("key:00").query(&mut con).unwrap();
    assert_eq!(exists, 0);
}

/// Read from a raw socket until `expected` bytes have arrived (or fail after 5 s).
fn read_exactly(socket: &mut TcpStream, expected: usize) -> Vec<u8> {
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    while got.len() < expected {
        let mut buf = [0u8; 4096];
        let n = socket.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "connection closed after {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[test]
fn pubsub_delivers_live_messages_and_enforces_the_subscribed_context() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut subscriber = server.connect();
    let mut pubsub = subscriber.as_pubsub();
    pubsub.subscribe("news.tech").unwrap();
    pubsub.psubscribe("news.*").unwrap();
    let mut publisher = server.connect();
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg("news.tech")
        .arg("rust 2.0")
        .query(&mut publisher)
        .unwrap();
    assert_eq!(receivers, 2, "the channel and the pattern subscription");
    pubsub
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let first = pubsub.get_message().unwrap();
    let second = pubsub.get_message().unwrap();
    let mut got = [
        (
            first.get_channel_name().to_string(),
            first.get_payload::<String>().unwrap(),
        ),
        (
            second.get_channel_name().to_string(),
            second.get_payload::<String>().unwrap(),
        ),
    ];
    got.sort();
    assert_eq!(
        got,
        [
            ("news.tech".to_string(), "rust 2.0".to_string()),
            ("news.tech".to_string(), "rust 2.0".to_string())
        ]
    );
    let channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .query(&mut publisher)
        .unwrap();
    assert_eq!(channels, vec!["news.tech"]);
    let numpat: i64 = redis::cmd("PUBSUB")
        .arg("NUMPAT")
        .query(&mut publisher)
        .unwrap();
    assert_eq!(numpat, 1);
    drop(pubsub);

    // RESP2: only subscription commands in the subscribed context; RESP3: anything.
    let (reply, _) = server.raw(b"SUBSCRIBE a\r\nXLEN s\r\nPING\r\n");
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n-ERR Can't execute 'xlen': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n"
    );
    let mut socket = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    socket.write_all(b"HELLO 3\r\n").unwrap();
    let hello = read_exactly(&mut socket, 1);
    assert!(hello.starts_with(b"%7"));
    std::thread::sleep(Duration::from_millis(100));
    socket.write_all(b"SUBSCRIBE a\r\nXLEN s\r\n").unwrap();
    let expected = b">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n:0\r\n";
    let got = read_exactly(&mut socket, expected.len());
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected)
    );
    let _: i64 = redis::cmd("PUBLISH")
        .arg("a")
        .arg("x")
        .query(&mut publisher)
        .unwrap();
    let expected = b">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nx\r\n";
    assert_eq!(read_exactly(&mut socket, expected.len()), expected);
}

#[test]
fn topics_keep_history_that_survives_kill_9_and_replays_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut con = server.connect();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for n in 0..5 {
        let _: i64 = redis::cmd("PUBLISH")
            .arg("events")
            .arg(format!("m{n}"))
            .query(&mut con)
            .unwrap();
    }
    server.kill9();
    let server = Server::start(dir.path());
    let mut con = server.connect();
    let all: Vec<(i64, i64, String)> = redis::cmd("TOPIC.READ")
        .arg("events")
        .arg("-")
        .query(&mut con)
        .unwrap();
    assert_eq!(
        all.iter().map(|m| (m.0, m.2.as_str())).collect::<Vec<_>>(),
        vec![(0, "m0"), (1, "m1"), (2, "m2"), (3, "m3"), (4, "m4")]
    );
    assert!(
        all.iter().all(|m| m.1 >= before),
        "timestamps are publish times"
    );
    let page: Vec<(i64, i64, String)> = redis::cmd("TOPIC.READ")
        .arg("events")
        .arg(3)
        .arg("COUNT")
        .arg(1)
        .query(&mut con)
        .unwrap();
    assert_eq!(page[0].2, "m3");
    let by_time: Vec<(i64, i64, String)> = redis::cmd("TOPIC.READ")
        .arg("events")
        .arg(format!("@{}", all[2].1 + 100_000))
        .query(&mut con)
        .unwrap();
    assert!(by_time.is_empty(), "nothing published after that time");
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    assert!(keys.is_empty(), "channels are not keys");

    // TOPIC.SUBSCRIBE from offset 2: the stored m2..m4, then live messages, in order.
    let mut socket = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    socket.write_all(b"TOPIC.SUBSCRIBE events 2\r\n").unwrap();
    let mut expected = b"*3\r\n$9\r\nsubscribe\r\n$6\r\nevents\r\n:1\r\n".to_vec();
    for m in ["m2", "m3", "m4"] {
        expected.extend_from_slice(
            format!("*3\r\n$7\r\nmessage\r\n$6\r\nevents\r\n$2\r\n{m}\r\n").as_bytes(),
        );
    }
    assert_eq!(
        String::from_utf8_lossy(&read_exactly(&mut socket, expected.len())),
        String::from_utf8_lossy(&expected)
    );
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg("events")
        .arg("m5")
        .query(&mut con)
        .unwrap();
    assert_eq!(receivers, 1);
    let live = b"*3\r\n$7\r\nmessage\r\n$6\r\nevents\r\n$2\r\nm5\r\n";
    assert_eq!(read_exactly(&mut socket, live.len()), live);
}

#[test]
fn topic_delete_removes_a_channels_log_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut con = server.connect();
    for n in 0..3 {
        let _: i64 = redis::cmd("PUBLISH")
            .arg("gone")
            .arg(format!("m{n}"))
            .query(&mut con)
            .unwrap();
    }
    let _: i64 = redis::cmd("PUBLISH")
        .arg("kept")
        .arg("k")
        .query(&mut con)
        .unwrap();
    let deleted: i64 = redis::cmd("TOPIC.DELETE")
        .arg("gone")
        .arg("never-published")
        .query(&mut con)
        .unwrap();
    assert_eq!(deleted, 1, "only channels with a log count");
    let err = redis::cmd("TOPIC.DELETE")
        .query::<i64>(&mut con)
        .unwrap_err();
    assert!(
        err.to_string().contains("wrong number of arguments"),
        "{err}"
    );
    // The deletion was acknowledged, so it survives kill -9, and the other channel is intact.
    server.kill9();
    let server = Server::start(dir.path());
    let mut con = server.connect();
    let read = |con: &mut redis::Connection, channel: &str| -> Vec<(i64, i64, String)> {
        redis::cmd("TOPIC.READ")
            .arg(channel)
            .arg("-")
            .query(con)
            .unwrap()
    };
    assert!(read(&mut con, "gone").is_empty());
    assert_eq!(read(&mut con, "kept").len(), 1);
    // A new PUBLISH starts a new log from offset 0.
    let _: i64 = redis::cmd("PUBLISH")
        .arg("gone")
        .arg("again")
        .query(&mut con)
        .unwrap();
    let again = read(&mut con, "gone");
    assert_eq!((again[0].0, again[0].2.as_str()), (0, "again"));
}

#[test]
fn xinfo_stream_full_shows_entries_groups_and_pending() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut con = server.connect();
    for n in 1..=3 {
        xadd(&mut con, "s", &format!("{n}-1"), &[("f", "v")]).unwrap();
    }
    run(&mut con, &["XGROUP", "CREATE", "s", "g", "0"]).unwrap();
    run(
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
    )
    .unwrap();
    let full: std::collections::HashMap<String, redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg("s")
        .arg("FULL")
        .arg("COUNT")
        .arg(2)
        .query(&mut con)
        .unwrap();
    let entries: Entries = redis::from_redis_value(full["entries"].clone()).unwrap();
    assert_eq!(
        entries.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        vec!["1-1", "2-1"],
        "COUNT bounds the entries"
    );
    let groups: Vec<std::collections::HashMap<String, redis::Value>> =
        redis::from_redis_value(full["groups"].clone()).unwrap();
    assert_eq!(
        redis::from_redis_value::<i64>(groups[0]["pel-count"].clone()).unwrap(),
        2
    );
    let consumers: Vec<std::collections::HashMap<String, redis::Value>> =
        redis::from_redis_value(groups[0]["consumers"].clone()).unwrap();
    assert_eq!(
        redis::from_redis_value::<String>(consumers[0]["name"].clone()).unwrap(),
        "alice"
    );
}

#[test]
fn pipelined_xadds_to_many_streams_all_land_while_other_clients_create_streams() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut con = server.connect();
    let keys: Vec<String> = (0..20).map(|n| format!("k{n}")).collect();
    for key in &keys {
        xadd(&mut con, key, "*", &[("f", "0")]).unwrap();
    }
    // Another client keeps creating streams, so the broker's generation keeps moving while
    // the pipelines below are held back and flushed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let creator = {
        let stop = std::sync::Arc::clone(&stop);
        let mut other = server.connect();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                xadd(&mut other, &format!("new{n}"), "*", &[("f", "v")]).unwrap();
                n += 1;
            }
        })
    };
    for round in 0..100 {
        let mut pipe = redis::pipe();
        for n in 0..64 {
            pipe.cmd("XADD")
                .arg(&keys[(n * 7 + round) % keys.len()])
                .arg("*")
                .arg("f")
                .arg(n);
        }
        let replies: Vec<redis::Value> = pipe.query(&mut con).unwrap();
        for reply in replies {
            assert!(
                matches!(
                    reply,
                    redis::Value::BulkString(_) | redis::Value::SimpleString(_)
                ),
                "every XADD gets an ID: {reply:?}"
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    creator.join().unwrap();
    let total: i64 = keys
        .iter()
        .map(|k| redis::cmd("XLEN").arg(k).query::<i64>(&mut con).unwrap())
        .sum();
    assert_eq!(total, 20 + 100 * 64);
}

/// A server whose log output cannot be written (stderr on a full disk: here `/dev/full`) keeps
/// serving and stops on SIGTERM: a failed log write is dropped. It used to panic the thread
/// that logged: connections closed at their first event, and a panic in the write-ahead log's
/// sync thread left every later commit and shutdown waiting forever.
#[test]
fn a_log_that_cannot_be_written_neither_stops_commands_nor_shutdown() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_potok"))
        .env("RUST_LOG", "trace")
        .args([
            "serve",
            "--resp-addr",
            "127.0.0.1:0",
            "--amqp-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--fsync", "always"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create("/dev/full").unwrap())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let port: u16 = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    let mut server = Server { child, port };
    for round in 0..3 {
        let mut con = server.connect();
        let id = xadd(&mut con, "logged", "*", &[("round", &round.to_string())]).unwrap();
        assert!(id.contains('-'), "{id}");
        let pong: String = redis::cmd("PING").query(&mut con).unwrap();
        assert_eq!(pong, "PONG");
    }
    assert_eq!(xrange(&mut server.connect(), "logged", "-", "+").len(), 3);
    // SAFETY: signals our own child process.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let started = std::time::Instant::now();
    while server.child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "SIGTERM did not stop the server"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pipelined `XADD key * ...` (held back and flushed as one commit) to a stream whose last ID
/// is the largest possible: each gets Redis's error, the entries before it in the same flush
/// to other streams land, and nothing is added to the full stream.
#[test]
fn pipelined_xadds_past_the_last_possible_id_each_get_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut con = server.connect();
    let max = "18446744073709551615-18446744073709551615";
    assert_eq!(xadd(&mut con, "full", max, &[("f", "v")]).unwrap(), max);
    let mut pipe = redis::pipe();
    for key in ["other", "full", "full", "other"] {
        pipe.cmd("XADD").arg(key).arg("*").arg("f").arg("v");
    }
    // The crate reports a pipeline with failed entries as one error naming them.
    let failure = pipe
        .query::<Vec<redis::Value>>(&mut con)
        .unwrap_err()
        .to_string();
    let exhausted = "The stream has exhausted the last possible ID, unable to add more items";
    for index in [1, 2] {
        assert!(
            failure.contains(&format!(
                "(Index {index}, error: ResponseError: {exhausted})"
            )),
            "{failure}"
        );
    }
    assert!(
        !failure.contains("Index 0") && !failure.contains("Index 3"),
        "{failure}"
    );
    assert_eq!(xrange(&mut con, "full", "-", "+").len(), 1);
    assert_eq!(xrange(&mut con, "other", "-", "+").len(), 2);
}
