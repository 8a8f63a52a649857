//! Snapshot files: a stream of key/value records with a checksum trailer.
//!
//! A snapshot is written record by record from a RocksDB snapshot to a file and read
//! back record by record, so neither side ever holds a shard's data in memory.
//! Openraft ships the file to followers in chunks (`InstallSnapshot`); the receiver
//! verifies the checksum before installing anything.
//!
//! FORMAT. `MAGIC`, then records `u32 BE key length, key, u32 BE value length,
//! value`, then a record with key length `u32::MAX` followed by the xxh3-64 of
//! everything before it (big-endian).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use xxhash_rust::xxh3::Xxh3;

const MAGIC: &[u8; 8] = b"RDSNAP01";
const END: u32 = u32::MAX;

/// Writes a snapshot file.
pub struct SnapshotWriter {
    out: BufWriter<File>,
    hash: Xxh3,
    /// Records written so far.
    pub records: u64,
}

impl SnapshotWriter {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path) -> Result<SnapshotWriter> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut writer = SnapshotWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            hash: Xxh3::new(),
            records: 0,
        };
        writer.raw(MAGIC)?;
        Ok(writer)
    }

    fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.hash.update(bytes);
        self.out.write_all(bytes)?;
        Ok(())
    }

    /// Appends one record.
    pub fn record(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.raw(&(key.len() as u32).to_be_bytes())?;
        self.raw(key)?;
        self.raw(&(value.len() as u32).to_be_bytes())?;
        self.raw(value)?;
        self.records += 1;
        Ok(())
    }

    /// Writes the trailer and fsyncs the file.
    pub fn finish(mut self) -> Result<()> {
        self.raw(&END.to_be_bytes())?;
        let digest = self.hash.digest();
        self.out.write_all(&digest.to_be_bytes())?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(())
    }
}

/// Checks a snapshot file's framing and checksum without keeping its records.
pub fn verify(path: &Path) -> Result<u64> {
    let mut count = 0;
    for_each_record(path, |_, _| {
        count += 1;
        Ok(())
    })?;
    Ok(count)
}

/// Calls `f` for every record of a snapshot file, then checks the checksum. Callers
/// that must not act on corrupt data call [`verify`] first.
pub fn for_each_record(path: &Path, mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut hash = Xxh3::new();
    let mut read = |buf: &mut Vec<u8>, len: usize, hash: &mut Xxh3| -> Result<()> {
        buf.resize(len, 0);
        input.read_exact(buf)?;
        hash.update(buf);
        Ok(())
    };
    let (mut key, mut value, mut len) = (Vec::new(), Vec::new(), Vec::new());
    read(&mut key, MAGIC.len(), &mut hash)?;
    if key != MAGIC {
        bail!("{} is not a snapshot file", path.display());
    }
    loop {
        read(&mut len, 4, &mut hash)?;
        let key_len = u32::from_be_bytes(len[..4].try_into().expect("4 bytes"));
        if key_len == END {
            break;
        }
        read(&mut key, key_len as usize, &mut hash)?;
        read(&mut len, 4, &mut hash)?;
        let value_len = u32::from_be_bytes(len[..4].try_into().expect("4 bytes"));
        read(&mut value, value_len as usize, &mut hash)?;
        f(&key, &value)?;
    }
    let expected = hash.digest();
    let mut trailer = [0u8; 8];
    input.read_exact(&mut trailer)?;
    if u64::from_be_bytes(trailer) != expected {
        bail!("snapshot {} has a bad checksum", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        let mut w = SnapshotWriter::create(&path).unwrap();
        for i in 0..1000u32 {
            w.record(&i.to_be_bytes(), format!("value-{i}").as_bytes()).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(verify(&path).unwrap(), 1000);
        let mut seen = Vec::new();
        for_each_record(&path, |k, v| {
            seen.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen[999].1, b"value-999");

        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(verify(&path).is_err());
        std::fs::write(&path, &bytes[..50]).unwrap();
        assert!(verify(&path).is_err());
    }
}
