//! Arbitrary bytes from a client: request decoding must return requests, "incomplete" or a
//! protocol error, never panic, and never buffer past its limits.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use potok::protocol::resp::request::{decode_request, split_inline_args, RequestLimits};

fuzz_target!(|data: &[u8]| {
    let limits = RequestLimits { args_max: 64, bulk_bytes_max: 4096, inline_bytes_max: 1024, request_bytes_max: 16 * 1024 };
    let mut buf = BytesMut::from(data);
    // Every call consumes input or stops: a bounded loop.
    for _ in 0..=data.len() {
        let before = buf.len();
        match decode_request(&mut buf, &limits) {
            Ok(Some(args)) => {
                assert!(args.len() as u64 <= limits.args_max.max(1024 * 1024));
                assert!(buf.len() < before, "a decoded request consumes input");
            }
            Ok(None) | Err(_) => break,
        }
    }
    let _ = split_inline_args(data);
});
