//! Arbitrary bytes as the newest segment of a log (after a valid first batch, so both the
//! "torn tail" and "garbage from the start" paths run): recovery must not panic, must keep the
//! valid prefix, and the recovered log must read back and verify clean.
#![no_main]

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use potok::storage::batch::encode_batch;
use potok::storage::io::{CrashMode, FaultVfs, OpenMode, Vfs};
use potok::storage::segment::scan_segment;
use potok::storage::verify::verify_log_dir;
use potok::storage::{Durability, Log, LogConfig, Record};

fuzz_target!(|data: &[u8]| {
    let outcome = scan_segment(data, 0, 64);
    assert!(outcome.valid_bytes <= data.len() as u64);

    let vfs = FaultVfs::new(0);
    let dir = Path::new("/log");
    vfs.create_dir_all(dir).unwrap();
    let mut segment = Vec::new();
    let prefix = vec![Record::new(1, b"valid".to_vec()).with_key("k")];
    encode_batch(0, &prefix, &mut segment);
    let prefix_len = segment.len() as u64;
    segment.extend_from_slice(data);
    let file = vfs.open(&dir.join("00000000000000000000.log"), OpenMode::CreateNew).unwrap();
    file.write_at(&segment, 0).unwrap();
    file.sync_data().unwrap();
    vfs.sync_dir(dir).unwrap();
    vfs.crash(CrashMode::DropUnsynced);

    let config = LogConfig { durability: Durability::Always, ..LogConfig::default() };
    let log = Log::open_with(Arc::new(vfs.clone()), dir, config).expect("recovery never fails on bad bytes");
    let records: Vec<_> = log.iter(0).collect::<Result<_, _>>().expect("recovered log reads back");
    assert!(!records.is_empty(), "the valid first batch survives");
    assert_eq!(records[0].1, prefix[0]);
    assert!(log.size_bytes() >= prefix_len);
    log.append(&[Record::new(2, b"after".to_vec())]).unwrap();
    drop(log);
    assert!(verify_log_dir(&vfs, dir).unwrap().is_clean());
});
