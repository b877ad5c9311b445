//! Property test: random sequences of append / read / roll / retention / truncate / close /
//! crash / reopen / timestamp lookups, run against the log on the fault-injecting file system and
//! against a plain in-memory model. Every read must agree with the model.

mod common;

use std::collections::VecDeque;

use common::{open_fault, small_config};
use potok::storage::io::{CrashMode, FaultVfs};
use potok::storage::{Durability, Log, LogConfig, Record, Retention};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Append {
        bodies: Vec<u16>,
        timestamp_ms: i64,
        keyed: bool,
    },
    Read {
        from: u16,
        max_bytes: u16,
    },
    Roll,
    TruncateBefore {
        from: u16,
    },
    EnforceRetention,
    OffsetForTimestamp {
        timestamp_ms: i64,
    },
    CloseReopen,
    DropReopen,
    CrashReopen {
        torn: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (prop::collection::vec(0u16..700, 1..5), -50i64..500, any::<bool>())
            .prop_map(|(bodies, timestamp_ms, keyed)| Op::Append { bodies, timestamp_ms, keyed }),
        5 => (any::<u16>(), 1u16..6000).prop_map(|(from, max_bytes)| Op::Read { from, max_bytes }),
        1 => Just(Op::Roll),
        1 => any::<u16>().prop_map(|from| Op::TruncateBefore { from }),
        1 => Just(Op::EnforceRetention),
        2 => (-100i64..600).prop_map(|timestamp_ms| Op::OffsetForTimestamp { timestamp_ms }),
        1 => Just(Op::CloseReopen),
        1 => Just(Op::DropReopen),
        1 => any::<bool>().prop_map(|torn| Op::CrashReopen { torn }),
    ]
}

/// The model: the records the log should hold, from `start`.
struct Model {
    start: u64,
    records: VecDeque<Record>,
}

impl Model {
    fn next(&self) -> u64 {
        self.start + self.records.len() as u64
    }

    fn get(&self, offset: u64) -> &Record {
        &self.records[(offset - self.start) as usize]
    }

    /// The log deleted whole segments: follow it, after checking it was allowed to.
    fn follow_start(&mut self, log: &Log, allowed_up_to: u64) -> Result<(), TestCaseError> {
        let start = log.start_offset();
        prop_assert!(
            start >= self.start,
            "start went back from {} to {}",
            self.start,
            start
        );
        prop_assert!(
            start <= allowed_up_to.max(self.start),
            "deleted past {allowed_up_to}: start {start}"
        );
        while self.start < start {
            self.records.pop_front();
            self.start += 1;
        }
        Ok(())
    }
}

fn config() -> LogConfig {
    LogConfig {
        retention: Retention {
            records_max: Some(40),
            ..Default::default()
        },
        ..small_config(Durability::Always)
    }
}

fn check_read(log: &Log, model: &Model, from: u64, max_bytes: u64) -> Result<(), TestCaseError> {
    let result = log
        .read(from, max_bytes)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let first = from.max(model.start);
    let got: Vec<_> = result.records().collect();
    if first >= model.next() {
        prop_assert!(got.is_empty());
        return Ok(());
    }
    prop_assert!(!got.is_empty(), "read at {} returned nothing", first);
    prop_assert!(
        result.bytes() <= max_bytes || result.batches.len() == 1,
        "read exceeded max_bytes"
    );
    for (i, r) in got.iter().enumerate() {
        let offset = first + i as u64;
        prop_assert_eq!(r.offset, offset);
        prop_assert_eq!(&r.to_record(), model.get(offset));
    }
    Ok(())
}

fn run(ops: Vec<Op>, seed: u64) -> Result<(), TestCaseError> {
    let vfs = FaultVfs::new(seed);
    let mut log = open_fault(&vfs, config()).unwrap();
    let mut model = Model {
        start: 0,
        records: VecDeque::new(),
    };
    let mut counter = 0u64;
    for op in ops {
        let reopen = |log: Log| -> Log {
            drop(log);
            open_fault(&vfs, config()).unwrap()
        };
        match op {
            Op::Append {
                bodies,
                timestamp_ms,
                keyed,
            } => {
                let batch: Vec<Record> = bodies
                    .iter()
                    .map(|&len| {
                        counter += 1;
                        let r = Record::new(
                            timestamp_ms + counter as i64 % 7,
                            vec![counter as u8; len as usize],
                        );
                        if keyed {
                            r.with_key(counter.to_string())
                                .with_header("n", counter.to_string())
                        } else {
                            r
                        }
                    })
                    .collect();
                let info = log.append(&batch).unwrap();
                prop_assert_eq!(info.base_offset, model.next());
                model.records.extend(batch);
                // An append can roll, and a roll enforces retention (keep at least 40 records).
                let keep_from = model.next().saturating_sub(40);
                model.follow_start(&log, keep_from)?;
            }
            Op::Read { from, max_bytes } => {
                let span = model.next() + 3;
                check_read(&log, &model, u64::from(from) % span, u64::from(max_bytes))?;
            }
            Op::Roll => {
                log.roll().unwrap();
                model.follow_start(&log, model.next().saturating_sub(40))?;
            }
            Op::TruncateBefore { from } => {
                let target = model.start + u64::from(from) % (model.records.len() as u64 + 1);
                log.truncate_before(target).unwrap();
                model.follow_start(&log, target)?;
            }
            Op::EnforceRetention => {
                log.enforce_retention().unwrap();
                model.follow_start(&log, model.next().saturating_sub(40))?;
            }
            Op::OffsetForTimestamp { timestamp_ms } => {
                let expected = model
                    .records
                    .iter()
                    .position(|r| r.timestamp_ms >= timestamp_ms)
                    .map(|i| model.start + i as u64);
                prop_assert_eq!(log.offset_for_timestamp(timestamp_ms).unwrap(), expected);
            }
            Op::CloseReopen => {
                log.close().unwrap();
                log = reopen(log);
                prop_assert!(log.recovery_report().clean);
            }
            Op::DropReopen => log = reopen(log),
            Op::CrashReopen { torn } => {
                vfs.crash(if torn {
                    CrashMode::TornWrites
                } else {
                    CrashMode::DropUnsynced
                });
                log = reopen(log);
            }
        }
        prop_assert_eq!(log.next_offset(), model.next());
        prop_assert_eq!(log.start_offset(), model.start);
    }
    // Finally everything, in one pass.
    check_read(&log, &model, 0, u64::MAX)?;
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(128)
}

proptest! {
    // PROPTEST_CASES raises the count for soak runs (tests/soak.sh).
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model(ops in prop::collection::vec(op(), 1..60), seed in any::<u64>()) {
        run(ops, seed)?;
    }
}
