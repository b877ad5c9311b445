//! AMQP by hand, for tests that send what no client library would: raw frames, the
//! handshake step by step, and the closes the server answers with.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// One frame: type, channel, payload, end marker.
pub fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(0xCE);
    out
}

/// A method frame: class and method ids, then the encoded arguments.
pub fn method_frame(channel: u16, class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut payload = class.to_be_bytes().to_vec();
    payload.extend_from_slice(&method.to_be_bytes());
    payload.extend_from_slice(args);
    frame(1, channel, &payload)
}

/// A short string: length octet, then the bytes.
pub fn short_string(text: &str) -> Vec<u8> {
    let mut out = vec![text.len() as u8];
    out.extend_from_slice(text.as_bytes());
    out
}

/// A field table holding tables nested `depth` deep (`"k" F <table>` in each), built in one
/// pass: the table at level `i` holds `7 * (depth - i)` bytes.
pub fn nested_tables(depth: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(7 * depth);
    for level in 1..=depth {
        bytes.extend_from_slice(&((7 * (depth - level)) as u32).to_be_bytes());
        if level < depth {
            bytes.extend_from_slice(&[1, b'k', b'F']);
        }
    }
    bytes
}

/// A field table whose one entry is an array of arrays nested `depth - 1` deep.
pub fn nested_arrays(depth: usize) -> Vec<u8> {
    // The array at level `i` (the table is level 1) holds `5 * (depth - i)` bytes.
    let mut bytes = ((7 + 5 * (depth - 2)) as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&[1, b'k', b'A']);
    for level in 2..=depth {
        bytes.extend_from_slice(&((5 * (depth - level)) as u32).to_be_bytes());
        if level < depth {
            bytes.push(b'A');
        }
    }
    bytes
}

/// `connection.start-ok` with these client properties and PLAIN credentials.
pub fn start_ok(client_properties: &[u8], user: &str, password: &str) -> Vec<u8> {
    let mut args = client_properties.to_vec();
    args.extend_from_slice(&short_string("PLAIN"));
    let response = format!("\0{user}\0{password}");
    args.extend_from_slice(&(response.len() as u32).to_be_bytes());
    args.extend_from_slice(response.as_bytes());
    args.extend_from_slice(&short_string("en_US"));
    method_frame(0, 10, 11, &args)
}

/// A connection.close or channel.close as received.
#[derive(Debug, PartialEq, Eq)]
pub struct Close {
    pub channel: u16,
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

/// Read frames until the method `class`.`method` (a close: 10.50 connection.close, 20.40
/// channel.close) arrives; `None` if the socket closes first.
pub fn read_close_frame(socket: &mut TcpStream, class: u8, method: u8) -> Option<Close> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while buf.len() >= 7 {
            let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
            if buf.len() < 8 + size {
                break;
            }
            let frame: Vec<u8> = buf.drain(..8 + size).collect();
            if frame[0] == 1 && frame[7..11] == [0, class, 0, method] {
                let text_len = frame[13] as usize;
                let after = 14 + text_len;
                return Some(Close {
                    channel: u16::from_be_bytes([frame[1], frame[2]]),
                    code: u16::from_be_bytes([frame[11], frame[12]]),
                    text: String::from_utf8_lossy(&frame[14..after]).into_owned(),
                    class_id: u16::from_be_bytes([frame[after], frame[after + 1]]),
                    method_id: u16::from_be_bytes([frame[after + 2], frame[after + 3]]),
                });
            }
        }
        match socket.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Read frames until the method `class`.`method` arrives; returns its channel and reply code.
pub fn read_close(socket: &mut TcpStream, class: u8, method: u8) -> Option<(u16, u16)> {
    read_close_frame(socket, class, method).map(|close| (close.channel, close.code))
}

/// The reply code of the connection.close that ends a raw connection.
pub fn read_connection_close(socket: &mut TcpStream) -> Option<u16> {
    read_close(socket, 10, 50).map(|(_, code)| code)
}

/// Read one frame; its type (1 method, 8 heartbeat...), or `None` once the socket closes.
pub fn read_frame_type(socket: &mut TcpStream) -> Option<u8> {
    let mut header = [0u8; 7];
    socket.read_exact(&mut header).ok()?;
    let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
    let mut rest = vec![0u8; size + 1];
    socket.read_exact(&mut rest).ok()?;
    Some(header[0])
}

/// Connect and send the protocol header; the server's connection.start is left unread.
pub fn raw_connect(addr: &str) -> TcpStream {
    let mut socket = TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    socket.write_all(PROTOCOL_HEADER).unwrap();
    socket
}

/// Perform the handshake by hand (PLAIN guest/guest), leaving the socket after open-ok.
pub fn raw_handshake(addr: &str) -> TcpStream {
    raw_handshake_with(addr, 4096, 0)
}

/// The handshake with the given tune-ok `frame_max` and `heartbeat` (seconds).
pub fn raw_handshake_with(addr: &str, frame_max: u32, heartbeat: u16) -> TcpStream {
    let mut socket = raw_connect(addr);
    assert_eq!(read_frame_type(&mut socket), Some(1)); // start
    socket
        .write_all(&start_ok(&[0, 0, 0, 0], "guest", "guest"))
        .unwrap();
    assert_eq!(read_frame_type(&mut socket), Some(1)); // tune
    let mut tune_ok = 0u16.to_be_bytes().to_vec();
    tune_ok.extend_from_slice(&frame_max.to_be_bytes());
    tune_ok.extend_from_slice(&heartbeat.to_be_bytes());
    socket
        .write_all(&method_frame(0, 10, 31, &tune_ok))
        .unwrap();
    socket
        .write_all(&method_frame(0, 10, 40, &[1, b'/', 0, 0]))
        .unwrap();
    assert_eq!(read_frame_type(&mut socket), Some(1)); // open-ok
    socket
}

/// `basic.publish` to the default exchange with routing key `queue`, its content header
/// (class 60, no properties) and one body frame (the body must fit the frame_max).
pub fn publish_frames(channel: u16, queue: &str, body: &[u8]) -> Vec<u8> {
    let mut args = vec![0, 0];
    args.extend_from_slice(&short_string(""));
    args.extend_from_slice(&short_string(queue));
    args.push(0);
    let mut out = method_frame(channel, 60, 40, &args);
    let mut header = vec![0, 60, 0, 0];
    header.extend_from_slice(&(body.len() as u64).to_be_bytes());
    header.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&frame(2, channel, &header));
    out.extend_from_slice(&frame(3, channel, body));
    out
}

/// `queue.declare` (not passive, no flags, no arguments).
pub fn queue_declare_frame(channel: u16, queue: &str) -> Vec<u8> {
    let mut args = vec![0, 0];
    args.extend_from_slice(&short_string(queue));
    args.extend_from_slice(&[0, 0, 0, 0, 0]);
    method_frame(channel, 50, 10, &args)
}

/// Read frames until a method frame `class`.`method` arrives; false if the socket closes.
pub fn read_until_method(socket: &mut TcpStream, class: u16, method: u16) -> bool {
    let mut header = [0u8; 7];
    loop {
        if socket.read_exact(&mut header).is_err() {
            return false;
        }
        let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
        let mut rest = vec![0u8; size + 1];
        if socket.read_exact(&mut rest).is_err() {
            return false;
        }
        if header[0] == 1
            && rest[..4]
                == [
                    (class >> 8) as u8,
                    class as u8,
                    (method >> 8) as u8,
                    method as u8,
                ]
        {
            return true;
        }
    }
}
