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

/// The server's resident memory from /proc, in KiB: (VmRSS, RssAnon: the heap and other
/// anonymous memory, without mapped log files).
fn memory_kib(server: &Server) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

/// Read `count` CRLF-terminated lines of replies off `socket` (one line per integer or status
/// reply; an array of bulk strings takes a line for its header and two per element).
fn read_lines(socket: &mut TcpStream, count: usize) -> Vec<String> {
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    while replies.len() < count {
        while let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = buf.drain(..end + 2).collect();
            replies.push(String::from_utf8_lossy(&line[..end]).into_owned());
        }
        if replies.len() >= count {
            break;
        }
        let n = socket.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed after {} replies", replies.len());
        buf.extend_from_slice(&chunk[..n]);
    }
    replies
}

fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Whether the server closed `socket` (reading and discarding what was buffered for it).
fn closed_by_server(socket: &mut TcpStream) -> bool {
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match socket.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

/// A subscriber that never reads while 10 KB messages are published: with Redis's default
/// `pubsub 32mb 8mb 60` it is closed once about 32 MB is held for it (it held 1 GB before),
/// leaves PUBSUB NUMSUB at once, and the memory goes back.
#[test]
fn a_subscriber_that_never_reads_is_closed_at_its_limit_and_its_memory_released() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut publisher = TcpStream::connect(&server.resp).unwrap();
    let mut sleeper = TcpStream::connect(&server.resp).unwrap();
    sleeper
        .write_all(&command(&[b"SUBSCRIBE", b"news"]))
        .unwrap();
    assert_eq!(read_lines(&mut sleeper, 6)[5], ":1");
    // Warm up (allocator arenas, the topic log) before the baseline.
    let payload = vec![b'p'; 10 * 1024];
    let batch: Vec<u8> = (0..100)
        .flat_map(|_| command(&[b"PUBLISH", b"quiet", &payload]))
        .collect();
    publisher.write_all(&batch).unwrap();
    read_lines(&mut publisher, 100);
    let before = memory_kib(&server);
    // Publish in batches of 100 until the subscriber stops receiving.
    let batch: Vec<u8> = (0..100)
        .flat_map(|_| command(&[b"PUBLISH", b"news", &payload]))
        .collect();
    let (mut published, mut peak) = (0, before);
    loop {
        publisher.write_all(&batch).unwrap();
        let received = read_lines(&mut publisher, 100);
        published += 100;
        peak = peak.max(memory_kib(&server));
        if received.iter().any(|r| r == ":0") {
            break;
        }
        assert!(
            published < 8000,
            "still subscribed after {published} messages"
        );
    }
    // Closed at once: gone from NUMSUB, and its memory released while it still reads
    // nothing; then its socket turns out closed.
    publisher
        .write_all(&command(&[b"PUBSUB", b"NUMSUB", b"news"]))
        .unwrap();
    assert_eq!(read_lines(&mut publisher, 4)[3], ":0");
    let settled = |after: (u64, u64)| after.1 < before.1 + 16 * 1024;
    let mut after = memory_kib(&server);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !settled(after) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        after = memory_kib(&server);
    }
    assert!(closed_by_server(&mut sleeper));
    eprintln!(
        "slow subscriber: closed after {published} messages of 10 KB; RSS KiB before {:?} peak {:?} after {:?}",
        before, peak, after
    );
    assert!(
        published >= 3000,
        "not before its 32 MB limit ({published})"
    );
    assert!(
        settled(after),
        "anonymous memory back near its start: {before:?} -> {after:?}"
    );
    server.assert_serves_clients();
}

/// The most anonymous memory (KiB) the server uses while `work` runs, sampled every 2 ms.
fn peak_anon_kib_during<T>(pid: u32, work: impl FnOnce() -> T) -> (T, u64) {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = std::sync::Arc::clone(&done);
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    let anon = status
                        .lines()
                        .find_map(|l| l.strip_prefix("RssAnon:"))
                        .and_then(|r| r.split_whitespace().next()?.parse().ok())
                        .unwrap_or(0);
                    peak = peak.max(anon);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        })
    };
    let result = work();
    std::thread::sleep(Duration::from_millis(20));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    (result, sampler.join().unwrap())
}

/// XRANGE/XREVRANGE over a 40 MB stream with `maxmemory-clients 16mb`: refused with Redis-style
/// error text, sized before it is built (the server's memory barely moves); a small read
/// still works. With the client's own hard limit below the reply, the client is closed
/// instead, as Redis closes it.
#[test]
fn a_range_reply_over_the_budget_is_refused_before_it_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        dir.path(),
        &["--fsync", "never", "--maxmemory-clients", "16mb"],
    );
    let mut client = TcpStream::connect(&server.resp).unwrap();
    let value = vec![b'v'; 64 * 1024];
    let batch: Vec<u8> = (0..16)
        .flat_map(|_| command(&[b"XADD", b"big", b"*", b"f", &value]))
        .collect();
    for _ in 0..40 {
        client.write_all(&batch).unwrap();
        read_lines(&mut client, 32); // 16 bulk IDs
    }
    client
        .write_all(&command(&[b"XRANGE", b"big", b"-", b"+", b"COUNT", b"2"]))
        .unwrap();
    assert_eq!(read_lines(&mut client, 17)[0], "*2");
    let before = memory_kib(&server).1;
    for request in [
        command(&[b"XRANGE", b"big", b"-", b"+"]),
        command(&[b"XREVRANGE", b"big", b"+", b"-"]),
        command(&[b"XREAD", b"STREAMS", b"big", b"0"]),
    ] {
        let (reply, peak) = peak_anon_kib_during(server.child.id(), || {
            client.write_all(&request).unwrap();
            read_lines(&mut client, 1).remove(0)
        });
        assert!(
            reply.starts_with("-ERR reply would exceed "),
            "refused: {reply}"
        );
        eprintln!("refused range read: RssAnon KiB before {before}, peak {peak}");
        assert!(
            peak < before + 8 * 1024,
            "nothing big is built: {before} KiB -> {peak} KiB"
        );
    }
    // XPENDING's rows are sized before they are built too: 640 pending, then a 16 KB total.
    client
        .write_all(&command(&[b"XGROUP", b"CREATE", b"big", b"g", b"0"]))
        .unwrap();
    assert_eq!(read_lines(&mut client, 1)[0], "+OK");
    let read = command(&[
        b"XREADGROUP",
        b"GROUP",
        b"g",
        b"c",
        b"COUNT",
        b"64",
        b"STREAMS",
        b"big",
        b">",
    ]);
    for _ in 0..10 {
        client.write_all(&read).unwrap();
        read_lines(&mut client, 5 + 64 * 8);
    }
    let pending = command(&[b"XPENDING", b"big", b"g", b"-", b"+", b"1000"]);
    client.write_all(&pending).unwrap();
    assert_eq!(read_lines(&mut client, 1)[0], "*640");
    client
        .write_all(&command(&[
            b"CONFIG",
            b"SET",
            b"maxmemory-clients",
            b"16kb",
        ]))
        .unwrap();
    assert_eq!(read_lines(&mut client, 1)[0], "+OK");
    client.write_all(&pending).unwrap();
    assert!(read_lines(&mut client, 1)[0].starts_with("-ERR reply would exceed "));
    client
        .write_all(&command(&[
            b"CONFIG",
            b"SET",
            b"maxmemory-clients",
            b"16mb",
        ]))
        .unwrap();
    assert_eq!(read_lines(&mut client, 1)[0], "+OK");
    // Within its own hard limit of 4 MB, the reply closes the client, as in Redis.
    client
        .write_all(&command(&[
            b"CONFIG",
            b"SET",
            b"client-output-buffer-limit",
            b"normal 4mb 0 0",
        ]))
        .unwrap();
    assert_eq!(read_lines(&mut client, 1)[0], "+OK");
    client
        .write_all(&command(&[b"XRANGE", b"big", b"-", b"+"]))
        .unwrap();
    assert!(closed_by_server(&mut client));
    let mut other = TcpStream::connect(&server.resp).unwrap();
    other
        .write_all(&command(&[b"XRANGE", b"big", b"-", b"+", b"COUNT", b"1"]))
        .unwrap();
    assert_eq!(read_lines(&mut other, 1)[0], "*1");
    server.assert_serves_clients();
}

/// `maxmemory-clients` bounds what all clients hold together: with per-client pubsub limits
/// off and a total of 8 MB, the subscriber that never reads is evicted (it holds the most, as
/// Redis 7 chooses) while a subscriber that keeps reading stays; nothing else is disturbed.
#[test]
fn the_total_over_all_clients_evicts_the_client_holding_the_most() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        dir.path(),
        &[
            "--client-output-buffer-limit",
            "pubsub 0 0 0",
            "--maxmemory-clients",
            "8mb",
        ],
    );
    let mut sleeper = TcpStream::connect(&server.resp).unwrap();
    let mut reader = TcpStream::connect(&server.resp).unwrap();
    for socket in [&mut sleeper, &mut reader] {
        socket
            .write_all(&command(&[b"SUBSCRIBE", b"feed"]))
            .unwrap();
        read_lines(socket, 6);
    }
    // The reader reads until it has what was published (told once publishing ends).
    let expected = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
    let reading = {
        let expected = std::sync::Arc::clone(&expected);
        std::thread::spawn(move || {
            let mut chunk = vec![0u8; 256 * 1024];
            let mut bytes = 0usize;
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            reader
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            while bytes < expected.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < deadline
            {
                match reader.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => bytes += n,
                    Err(_) => continue,
                }
            }
            bytes
        })
    };
    let mut publisher = TcpStream::connect(&server.resp).unwrap();
    let payload = vec![b'p'; 10 * 1024];
    let batch: Vec<u8> = (0..50)
        .flat_map(|_| command(&[b"PUBLISH", b"feed", &payload]))
        .collect();
    let mut published = 0;
    loop {
        publisher.write_all(&batch).unwrap();
        let received = read_lines(&mut publisher, 50);
        published += 50;
        if received.iter().any(|r| r == ":1") {
            break;
        }
        assert!(published < 10_000, "nobody evicted after {published}");
    }
    publisher
        .write_all(&command(&[b"PUBSUB", b"NUMSUB", b"feed"]))
        .unwrap();
    assert_eq!(read_lines(&mut publisher, 4)[3], ":1", "the reader stays");
    assert!(closed_by_server(&mut sleeper), "the sleeper is evicted");
    // The reader gets everything published.
    expected.store(published * 10 * 1024, std::sync::atomic::Ordering::Relaxed);
    let received = reading.join().unwrap();
    assert!(
        received >= published * 10 * 1024,
        "{received} bytes for {published} messages"
    );
    server.assert_serves_clients();
}

/// CONFIG GET/SET of the output limits, byte for byte as Redis 7.0.15 answers.
#[test]
fn output_limits_are_configured_as_in_redis() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut client = TcpStream::connect(&server.resp).unwrap();
    let failed = |why: &str| {
        format!("-ERR CONFIG SET failed (possibly related to argument 'client-output-buffer-limit') - {why}\r\n")
    };
    let set = |value: &str| {
        command(&[
            b"CONFIG",
            b"SET",
            b"client-output-buffer-limit",
            value.as_bytes(),
        ])
    };
    let cases: Vec<(Vec<u8>, String)> = vec![
        (
            command(&[b"CONFIG", b"GET", b"client-output-buffer-limit"]),
            "*2\r\n$26\r\nclient-output-buffer-limit\r\n$67\r\nnormal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60\r\n".into(),
        ),
        (set("pubsub 32mb 8mb"), failed("Wrong number of arguments in buffer limit configuration.")),
        (set("master 1 1 1"), failed("Invalid client class specified in buffer limit configuration.")),
        (set("pubsub x 2 3"), failed("Error in hard, soft or soft_seconds setting in buffer limit configuration.")),
        (set("normal 1gb 1gb 0 pubsub 1k 2KB 3"), "+OK\r\n".into()),
        (set("replica 1gb 2mb 30"), "+OK\r\n".into()),
        (
            command(&[b"CONFIG", b"GET", b"client-output-buffer-limit"]),
            "*2\r\n$26\r\nclient-output-buffer-limit\r\n$77\r\nnormal 1073741824 1073741824 0 slave 1073741824 2097152 30 pubsub 1000 2048 3\r\n".into(),
        ),
        (
            command(&[b"CONFIG", b"SET", b"maxmemory-clients", b"64mb"]),
            "+OK\r\n".into(),
        ),
        (
            command(&[b"CONFIG", b"GET", b"maxmemory-clients"]),
            "*2\r\n$17\r\nmaxmemory-clients\r\n$8\r\n67108864\r\n".into(),
        ),
    ];
    for (request, expected) in cases {
        assert_eq!(resp_call(&mut client, &request), expected);
    }
}

/// Open channel 1 and declare the queue "flood".
fn open_flood_channel(socket: &mut TcpStream) {
    use common::raw_amqp::{queue_declare_frame, read_until_method};
    socket.write_all(&method_frame(1, 20, 10, &[0])).unwrap();
    assert!(read_until_method(socket, 20, 11));
    socket.write_all(&queue_declare_frame(1, "flood")).unwrap();
    assert!(read_until_method(socket, 50, 11));
}

/// An AMQP consumer of "flood" (no prefetch limit) that reads nothing once consuming, and
/// `messages` of 64 KB published to it (all in the queue when this returns).
fn amqp_sleeper(addr: &str, messages: usize) -> TcpStream {
    use common::raw_amqp::{publish_frames, queue_declare_frame, read_until_method};
    let mut consumer = raw_handshake_with(addr, 131_072, 0);
    open_flood_channel(&mut consumer);
    let mut consume = vec![0, 0];
    consume.extend_from_slice(&short_string("flood"));
    consume.extend_from_slice(&short_string("sleeper"));
    consume.extend_from_slice(&[0, 0, 0, 0, 0]);
    consumer
        .write_all(&method_frame(1, 60, 20, &consume))
        .unwrap();
    assert!(read_until_method(&mut consumer, 60, 21));
    let mut publisher = raw_handshake_with(addr, 131_072, 0);
    open_flood_channel(&mut publisher);
    let body = vec![b'm'; 64 * 1024];
    let batch: Vec<u8> = (0..50)
        .flat_map(|_| publish_frames(1, "flood", &body))
        .collect();
    for _ in 0..messages / 50 {
        publisher.write_all(&batch).unwrap();
    }
    // Everything published is in the queue once a later declare on the channel returns.
    publisher
        .write_all(&queue_declare_frame(1, "flood"))
        .unwrap();
    assert!(read_until_method(&mut publisher, 50, 11));
    consumer
}

/// AMQP clients that do not read what they are sent: a consumer with no prefetch limit (its
/// deliveries were bounded by count only: 1,024 of them, 64 MB of these) and a client
/// pipelining basic.get (each round's output was unbounded). The server holds a few MB for
/// them, not the messages, and others are served meanwhile and after.
#[test]
fn amqp_clients_that_never_read_hold_a_bounded_amount() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--fsync", "never"]);
    let before = memory_kib(&server).1;
    let ((), peak) = peak_anon_kib_during(server.child.id(), || {
        let consumer = amqp_sleeper(&server.amqp, 2000);
        std::thread::sleep(Duration::from_millis(500));
        // 1,000 basic.get pipelined, never read.
        let mut getter = raw_handshake_with(&server.amqp, 131_072, 0);
        open_flood_channel(&mut getter);
        let mut get = vec![0, 0];
        get.extend_from_slice(&short_string("flood"));
        get.push(1); // no-ack
        let gets: Vec<u8> = (0..1000)
            .flat_map(|_| method_frame(1, 60, 70, &get))
            .collect();
        getter.write_all(&gets).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        server.assert_serves_clients();
        drop((getter, consumer));
    });
    eprintln!("non-reading AMQP clients: RssAnon KiB before {before}, peak {peak}");
    assert!(
        peak < before + 24 * 1024,
        "bounded: {before} KiB -> {peak} KiB for 128 MB published"
    );
    server.assert_serves_clients();
}

/// A subscriber that never reads, with its output limits turned off, and an AMQP consumer
/// that never reads leave the server blocked writing to them; SIGTERM still stops the server
/// cleanly and promptly.
#[test]
fn clients_that_never_read_do_not_hold_up_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        dir.path(),
        &["--client-output-buffer-limit", "pubsub 0 0 0"],
    );
    let mut sleeper = TcpStream::connect(&server.resp).unwrap();
    sleeper
        .write_all(&command(&[b"SUBSCRIBE", b"news"]))
        .unwrap();
    read_lines(&mut sleeper, 6);
    let mut publisher = TcpStream::connect(&server.resp).unwrap();
    let payload = vec![b'p'; 64 * 1024];
    let batch: Vec<u8> = (0..64)
        .flat_map(|_| command(&[b"PUBLISH", b"news", &payload]))
        .collect();
    for _ in 0..5 {
        publisher.write_all(&batch).unwrap();
        read_lines(&mut publisher, 64);
    }
    let consumer = amqp_sleeper(&server.amqp, 400);
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "clean shutdown");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "shutdown held up");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop((sleeper, consumer));
}
