//! The log's two small metadata files, each written atomically (tmp, fsync, rename, fsync dir).
//!
//! - `recovery-point`: the base offset of the first segment that recovery must scan. Every
//!   segment before it was fsynced, with its index files, before the file was written.
//!   Format: `{ magic u32 "PTKR" | version u8 | reserved [u8; 3] | recovery_offset u64 | crc u32 }`
//! - `clean-shutdown`: written by a clean close after the final fsync; describes the active
//!   segment exactly. Removed (durably) when the log is opened, before anything is written.
//!   Format: `{ magic u32 "PTKC" | version u8 | reserved [u8; 3] | next_offset u64 |
//!   active_base_offset u64 | active_bytes u64 | crc u32 }`
//!
//! - `checkpoint` (in the data directory, beside `wal/`): where replay of the write-ahead log
//!   starts. Every change recorded before it is durable in the entity logs and the metadata
//!   store. Format: `{ magic u32 "PTKP" | version u8 | reserved [u8; 3] | lsn u64 | crc u32 }`
//!
//! The CRC covers every byte before it.

use byteorder::{ByteOrder, LittleEndian as LE};

pub const RECOVERY_POINT_FILE: &str = "recovery-point";
pub const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";
pub const RECOVERY_POINT_MAGIC: u32 = u32::from_le_bytes(*b"PTKR");
pub const CLEAN_SHUTDOWN_MAGIC: u32 = u32::from_le_bytes(*b"PTKC");
pub const CHECKPOINT_FILE: &str = "checkpoint";
pub const CHECKPOINT_MAGIC: u32 = u32::from_le_bytes(*b"PTKP");
pub const META_VERSION: u8 = 1;

const PREFIX_BYTES: usize = 4 + 1 + 3;
pub const RECOVERY_POINT_BYTES: usize = PREFIX_BYTES + 8 + 4;
pub const CLEAN_SHUTDOWN_BYTES: usize = PREFIX_BYTES + 8 + 8 + 8 + 4;
pub const CHECKPOINT_BYTES: usize = PREFIX_BYTES + 8 + 4;

/// Where replay of the write-ahead log starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub lsn: u64,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        seal(CHECKPOINT_MAGIC, &[self.lsn])
    }

    /// `None` for anything damaged: replay then starts from the oldest record the write-ahead
    /// log still holds, which is safe because replay skips what is already applied.
    pub fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        let fields = open(bytes, CHECKPOINT_MAGIC, 1)?;
        Some(Checkpoint { lsn: fields[0] })
    }
}

/// Where recovery starts scanning after an unclean stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryPoint {
    pub offset: u64,
}

/// The state a clean close left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CleanShutdown {
    pub next_offset: u64,
    pub active_base_offset: u64,
    pub active_bytes: u64,
}

fn seal(magic: u32, fields: &[u64]) -> Vec<u8> {
    let mut out = vec![0u8; PREFIX_BYTES + fields.len() * 8 + 4];
    LE::write_u32(&mut out[0..4], magic);
    out[4] = META_VERSION;
    for (i, field) in fields.iter().enumerate() {
        LE::write_u64(&mut out[PREFIX_BYTES + i * 8..], *field);
    }
    let crc_at = out.len() - 4;
    let crc = crc32fast::hash(&out[..crc_at]);
    LE::write_u32(&mut out[crc_at..], crc);
    out
}

/// The u64 fields of a metadata file, if its size, magic, version and CRC are right.
fn open(bytes: &[u8], magic: u32, field_count: usize) -> Option<Vec<u64>> {
    if bytes.len() != PREFIX_BYTES + field_count * 8 + 4
        || LE::read_u32(&bytes[0..4]) != magic
        || bytes[4] != META_VERSION
    {
        return None;
    }
    let crc_at = bytes.len() - 4;
    if crc32fast::hash(&bytes[..crc_at]) != LE::read_u32(&bytes[crc_at..]) {
        return None;
    }
    Some(
        (0..field_count)
            .map(|i| LE::read_u64(&bytes[PREFIX_BYTES + i * 8..]))
            .collect(),
    )
}

impl RecoveryPoint {
    pub fn encode(&self) -> Vec<u8> {
        seal(RECOVERY_POINT_MAGIC, &[self.offset])
    }

    /// `None` for anything damaged: recovery then scans every segment.
    pub fn decode(bytes: &[u8]) -> Option<RecoveryPoint> {
        let fields = open(bytes, RECOVERY_POINT_MAGIC, 1)?;
        Some(RecoveryPoint { offset: fields[0] })
    }
}

impl CleanShutdown {
    pub fn encode(&self) -> Vec<u8> {
        seal(
            CLEAN_SHUTDOWN_MAGIC,
            &[self.next_offset, self.active_base_offset, self.active_bytes],
        )
    }

    /// `None` for anything damaged: the stop is then treated as unclean.
    pub fn decode(bytes: &[u8]) -> Option<CleanShutdown> {
        let fields = open(bytes, CLEAN_SHUTDOWN_MAGIC, 3)?;
        Some(CleanShutdown {
            next_offset: fields[0],
            active_base_offset: fields[1],
            active_bytes: fields[2],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_reject_damage() {
        let rp = RecoveryPoint { offset: 42 };
        let bytes = rp.encode();
        assert_eq!(bytes.len(), RECOVERY_POINT_BYTES);
        assert_eq!(RecoveryPoint::decode(&bytes), Some(rp));
        let cs = CleanShutdown {
            next_offset: 9,
            active_base_offset: 3,
            active_bytes: 1000,
        };
        let bytes = cs.encode();
        assert_eq!(bytes.len(), CLEAN_SHUTDOWN_BYTES);
        assert_eq!(CleanShutdown::decode(&bytes), Some(cs));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert_eq!(CleanShutdown::decode(&bad), None);
        }
        assert_eq!(CleanShutdown::decode(&bytes[..10]), None);
        assert_eq!(RecoveryPoint::decode(&bytes), None);
        let checkpoint = Checkpoint { lsn: 77 };
        let bytes = checkpoint.encode();
        assert_eq!(bytes.len(), CHECKPOINT_BYTES);
        assert_eq!(Checkpoint::decode(&bytes), Some(checkpoint));
        assert_eq!(RecoveryPoint::decode(&bytes), None);
    }
}
