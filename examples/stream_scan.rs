//! Load generator for stream reads over RESP: fill a stream to a size, then read it all back
//! with XRANGE and with XREAD, reporting MB/s. Works against Potok and Redis alike.
//!
//! Usage: cargo run --release --example stream_scan -- PORT [TOTAL_MB] [ENTRY_BYTES]

use std::time::Instant;

/// A stream entry as the client decodes it: ID and field/value pairs.
type Entry = (String, Vec<(String, Vec<u8>)>);
/// XREAD's reply: per stream, its entries.
type StreamsReply = Option<Vec<(String, Vec<Entry>)>>;

fn main() -> redis::RedisResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = args
        .get(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: stream_scan PORT [TOTAL_MB] [ENTRY_BYTES]");
    let total_mb: u64 = args.get(2).and_then(|p| p.parse().ok()).unwrap_or(1024);
    let entry_bytes: usize = args.get(3).and_then(|p| p.parse().ok()).unwrap_or(1024);
    let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?.get_connection()?;
    let key = "scan-bench";
    let _: () = redis::cmd("DEL").arg(key).query(&mut con)?;
    let value = vec![b'x'; entry_bytes];
    let entries = total_mb * 1024 * 1024 / entry_bytes as u64;

    let started = Instant::now();
    let mut written = 0;
    while written < entries {
        let batch = (entries - written).min(1000);
        let mut pipe = redis::pipe();
        for _ in 0..batch {
            pipe.cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("v")
                .arg(&value)
                .ignore();
        }
        let _: () = pipe.query(&mut con)?;
        written += batch;
    }
    let fill = started.elapsed().as_secs_f64();
    println!(
        "fill: {entries} entries of {entry_bytes} B in {fill:.1} s ({:.0} MB/s)",
        (entries * entry_bytes as u64) as f64 / fill / 1e6
    );

    for command in ["XRANGE", "XREAD"] {
        let started = Instant::now();
        let (mut cursor, mut bytes, mut read) = ("-".to_string(), 0u64, 0u64);
        loop {
            let page: Vec<Entry> = if command == "XRANGE" {
                redis::cmd("XRANGE")
                    .arg(key)
                    .arg(&cursor)
                    .arg("+")
                    .arg("COUNT")
                    .arg(1000)
                    .query(&mut con)?
            } else {
                let after = if cursor == "-" {
                    "0-0".to_string()
                } else {
                    cursor.clone()
                };
                let reply: StreamsReply = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(1000)
                    .arg("STREAMS")
                    .arg(key)
                    .arg(after)
                    .query(&mut con)?;
                reply
                    .and_then(|mut streams| streams.pop())
                    .map(|(_, entries)| entries)
                    .unwrap_or_default()
            };
            let Some((last, _)) = page.last() else { break };
            read += page.len() as u64;
            bytes += page
                .iter()
                .flat_map(|(_, fields)| fields.iter().map(|(_, v)| v.len() as u64))
                .sum::<u64>();
            cursor = if command == "XRANGE" {
                format!("({last}")
            } else {
                last.clone()
            };
            if read >= entries {
                break;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{command}: {read} entries, {:.0} MB in {secs:.2} s = {:.0} MB/s",
            bytes as f64 / 1e6,
            bytes as f64 / secs / 1e6
        );
    }
    let _: () = redis::cmd("DEL").arg(key).query(&mut con)?;
    Ok(())
}
