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
