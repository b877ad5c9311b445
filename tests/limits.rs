//! Hostile clients against the real binary: input that would nest without bound, clients
//! that never read what they are sent, and bursts of connections. After each, the server is
//! still up and serving others, and its memory is back near where it started.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

mod common;

use common::raw_amqp::{
    frame, method_frame, nested_arrays, nested_tables, raw_connect, raw_handshake_with,
    read_close_frame, read_frame_type, short_string, start_ok,
};

/// The server process; killed when dropped.
struct Server {
    child: Child,
    resp: String,
    amqp: String,
}

impl Server {
    fn start(data_dir: &Path, extra: &[&str]) -> Server {
        let spawned = common::server::spawn_server(data_dir, extra).expect("server starts");
        Server {
            child: spawned.child,
            resp: spawned.resp,
            amqp: spawned.amqp,
        }
    }

    fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the server process is still running"
        );
    }

    /// Well-behaved clients get their work done: over AMQP declare, publish with a confirm and
    /// get; over RESP a PING.
    fn assert_serves_clients(&mut self) {
        self.assert_running();
        let uri = format!("amqp://guest:guest@{}/%2f", self.amqp);
        runtime().block_on(async {
            use lapin::options::*;
            use lapin::types::FieldTable;
            use lapin::{BasicProperties, Connection, ConnectionProperties};
            let connection = Connection::connect(&uri, ConnectionProperties::default())
                .await
                .expect("connect");
            let ch = connection.create_channel().await.unwrap();
            ch.queue_declare(
                "still-here".into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            ch.basic_publish(
                "".into(),
                "still-here".into(),
                BasicPublishOptions::default(),
                b"fine",
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
            let got = ch
                .basic_get("still-here".into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
                .expect("the message is there");
            assert_eq!(got.delivery.data, b"fine");
        });
        let mut resp = TcpStream::connect(&self.resp).unwrap();
        assert_eq!(resp_call(&mut resp, b"PING\r\n"), "+PONG\r\n");
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

/// Send `request` and read one reply's worth of bytes (small replies only).
fn resp_call(socket: &mut TcpStream, request: &[u8]) -> String {
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    socket.write_all(request).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The connection.close (10.50) that ends a raw connection: code, class id, method id.
fn connection_close(socket: &mut TcpStream) -> Option<(u16, u16, u16)> {
    read_close_frame(socket, 10, 50).map(|c| (c.code, c.class_id, c.method_id))
}

/// Tables and arrays nested 1,500 deep (about 10 KB; enough to overflow a worker's stack
/// when decoded recursively) in every place a client can put one, in every connection state:
/// each is refused with RabbitMQ's 501 for a frame it cannot decode, and nothing else is hurt.
#[test]
fn deeply_nested_tables_are_refused_without_hurting_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    const DEEP: usize = 1500;
    let deep_properties = {
        let mut table = vec![0, 0, 0, 0];
        let mut entry = short_string("k");
        entry.push(b'F');
        entry.extend_from_slice(&nested_tables(DEEP));
        table[..4].copy_from_slice(&(entry.len() as u32).to_be_bytes());
        table.extend_from_slice(&entry);
        table
    };

    // Before login, with wrong credentials: the 10 KB start-ok is over the 4 KB allowed before
    // tune, refused from its header (501 frame_too_large), and never decoded afterwards while
    // the server waits for close-ok.
    for password in ["wrong", "guest"] {
        let mut socket = raw_connect(&server.amqp);
        assert_eq!(read_frame_type(&mut socket), Some(1)); // start
        socket
            .write_all(&start_ok(&deep_properties, "guest", password))
            .unwrap();
        assert_eq!(connection_close(&mut socket).map(|c| c.0), Some(501));
    }
    // A start-ok under 4 KB whose properties nest 500 deep: refused for its nesting.
    let mut socket = raw_connect(&server.amqp);
    assert_eq!(read_frame_type(&mut socket), Some(1));
    socket
        .write_all(&start_ok(&nested_tables(500), "guest", "wrong"))
        .unwrap();
    assert_eq!(connection_close(&mut socket), Some((501, 10, 11)));
    server.assert_running();

    // After the handshake (frame_max 128 KiB): queue.declare arguments, nested tables or
    // nested arrays; exchange.declare and basic.consume arguments.
    let declare = |name: &str, arguments: &[u8]| {
        let mut args = vec![0, 0];
        args.extend_from_slice(&short_string(name));
        args.push(0);
        args.extend_from_slice(arguments);
        method_frame(1, 50, 10, &args)
    };
    let exchange_declare = {
        let mut args = vec![0, 0];
        args.extend_from_slice(&short_string("x"));
        args.extend_from_slice(&short_string("direct"));
        args.push(0);
        args.extend_from_slice(&nested_tables(DEEP));
        method_frame(1, 40, 10, &args)
    };
    let consume = {
        let mut args = vec![0, 0];
        args.extend_from_slice(&short_string("q"));
        args.extend_from_slice(&short_string("tag"));
        args.push(0);
        args.extend_from_slice(&nested_arrays(DEEP));
        method_frame(1, 60, 20, &args)
    };
    let cases: [(Vec<u8>, (u16, u16)); 4] = [
        (declare("deep-tables", &nested_tables(DEEP)), (50, 10)),
        (declare("deep-arrays", &nested_arrays(DEEP)), (50, 10)),
        (exchange_declare, (40, 10)),
        (consume, (60, 20)),
    ];
    for (method, (class, id)) in cases {
        let mut socket = raw_handshake_with(&server.amqp, 131_072, 0);
        socket.write_all(&method_frame(1, 20, 10, &[0])).unwrap(); // channel.open
        socket.write_all(&method).unwrap();
        assert_eq!(connection_close(&mut socket), Some((501, class, id)));
    }
    // Publish headers: basic.publish, then a content header whose `headers` property nests
    // 1,500 deep.
    let mut socket = raw_handshake_with(&server.amqp, 131_072, 0);
    socket.write_all(&method_frame(1, 20, 10, &[0])).unwrap();
    let mut publish = vec![0, 0];
    publish.extend_from_slice(&short_string(""));
    publish.extend_from_slice(&short_string("q"));
    publish.push(0);
    socket
        .write_all(&method_frame(1, 60, 40, &publish))
        .unwrap();
    let mut header = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0];
    header.extend_from_slice(&deep_properties);
    socket.write_all(&frame(2, 1, &header)).unwrap();
    assert_eq!(connection_close(&mut socket).map(|c| c.0), Some(501));

    server.assert_serves_clients();
}

/// RESP arrays nested 100,000 deep (a recursive decoder overflows on far fewer): Redis's
/// protocol error, the connection closes, and the server serves others.
#[test]
fn deeply_nested_resp_arrays_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let nested = b"*1\r\n".repeat(100_000);
    let mut echo_nested = b"*2\r\n$4\r\nECHO\r\n".to_vec();
    echo_nested.extend_from_slice(&nested);
    for request in [nested, echo_nested] {
        let mut socket = TcpStream::connect(&server.resp).unwrap();
        assert_eq!(
            resp_call(&mut socket, &request),
            "-ERR Protocol error: expected '$', got '*'\r\n"
        );
    }
    server.assert_serves_clients();
}

/// One line of reply (up to its CRLF), or what came before the socket closed or `wait` passed.
fn read_line(socket: &mut TcpStream, wait: Duration) -> Vec<u8> {
    socket.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n") {
        match socket.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    got
}

/// `CONFIG SET maxclients 100`, then 110 sockets opened in a tight loop (and 300 more): with
/// the admin connection still counted, exactly 99 new ones get PONG, as from Redis; the rest
/// are told the limit is reached. Closing connections frees their places.
#[test]
fn maxclients_is_exact_under_a_burst() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut admin = TcpStream::connect(&server.resp).unwrap();
    assert_eq!(
        resp_call(&mut admin, b"CONFIG SET maxclients 0\r\n"),
        "-ERR CONFIG SET failed (possibly related to argument 'maxclients') - argument must be between 1 and 4294967295 inclusive\r\n"
    );
    assert_eq!(
        resp_call(&mut admin, b"CONFIG SET maxclients 100\r\n"),
        "+OK\r\n"
    );
    for burst in [110, 400] {
        let mut sockets: Vec<TcpStream> = (0..burst)
            .map(|_| TcpStream::connect(&server.resp).unwrap())
            .collect();
        for socket in &mut sockets {
            let _ = socket.write_all(b"PING\r\n");
        }
        let (mut pong, mut refused) = (0, 0);
        for socket in &mut sockets {
            match &read_line(socket, Duration::from_secs(5))[..] {
                b"+PONG\r\n" => pong += 1,
                b"-ERR max number of clients reached\r\n" => refused += 1,
                other => panic!("unexpected {:?}", String::from_utf8_lossy(other)),
            }
        }
        assert_eq!((pong, refused), (99, burst - 99));
        drop(sockets);
        // The places come back once the connection tasks have ended.
        let mut again = None;
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(20));
            let mut probe = TcpStream::connect(&server.resp).unwrap();
            if resp_call(&mut probe, b"PING\r\n") == "+PONG\r\n" {
                again = Some(());
                break;
            }
        }
        assert!(again.is_some(), "places are freed");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(resp_call(&mut admin, b"INFO stats\r\n").contains("rejected_connections:"));
    server.assert_serves_clients();
}

/// Whether the server's connection.start has arrived on `socket` (looked at without waiting).
fn got_start(socket: &TcpStream) -> bool {
    socket.set_nonblocking(true).unwrap();
    let mut first = [0u8; 1];
    let started = matches!(socket.peek(&mut first), Ok(1) if first[0] == 1);
    socket.set_nonblocking(false).unwrap();
    started
}

/// RabbitMQ's connection_max: with `--amqp-connection-max 5`, of 30 sockets opened at once
/// exactly 5 are served (connection.start); the others wait unaccepted, and one is served as
/// soon as a served connection closes.
#[test]
fn amqp_connection_max_is_exact_under_a_burst() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--amqp-connection-max", "5"]);
    let sockets: Vec<TcpStream> = (0..30).map(|_| raw_connect(&server.amqp)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let (mut served, mut waiting): (Vec<TcpStream>, Vec<TcpStream>) =
        sockets.into_iter().partition(got_start);
    assert_eq!(served.len(), 5, "exactly connection_max are served");
    // One served connection goes: exactly one waiting connection is served next.
    drop(served.remove(0));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(waiting.iter_mut().filter(|s| got_start(s)).count(), 1);
    drop((served, waiting));
    // Once the burst is gone, well-behaved clients are served again.
    let mut served_again = false;
    for _ in 0..50 {
        let mut socket = raw_connect(&server.amqp);
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if read_frame_type(&mut socket) == Some(1) {
            served_again = true;
            break;
        }
    }
    assert!(served_again);
    server.assert_serves_clients();
}
