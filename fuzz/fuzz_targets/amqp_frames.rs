//! AMQP frame decoding on arbitrary client input: any frame size (checked against frame_max
//! before buffering), any method payload, any content header. Must never panic, and every
//! error must be one the connection can send as a close.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use potok::protocol::amqp::frame::{next_frame, FRAME_MAX, FRAME_MIN_SIZE};

fuzz_target!(|data: &[u8]| {
    for frame_max in [FRAME_MIN_SIZE, FRAME_MAX] {
        let mut buf = BytesMut::from(data);
        loop {
            match next_frame(&mut buf, frame_max) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(e) => {
                    assert!(
                        e.error.code >= 500,
                        "frame errors close the connection: {e:?}"
                    );
                    break;
                }
            }
        }
    }
});
