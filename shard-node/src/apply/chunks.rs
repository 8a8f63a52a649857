//! Long strings in chunks: a string longer than [`CHUNKED_ABOVE`] bytes is
//! stored as its key record (marked chunked, holding only the length) and
//! 1 KiB elements numbered from 0, so a bit or range write rewrites the
//! chunks it touches instead of the whole string, and GETBIT, GETRANGE,
//! STRLEN and ranged BITCOUNT read only what they need. Shorter strings (most
//! values) stay whole in their key record.
//!
//! Everything that reads a value through the keyspace (`load`) sees it whole;
//! [`Keyspace::store`] chooses the layout and removes chunks a previous,
//! longer version left, and deleting the key removes its chunks with it.

use std::ops::Range;

use super::Keyspace;
use crate::storage::{Kind, Value};

/// Bytes per chunk.
pub(super) const CHUNK: usize = 1024;
/// Strings longer than this are stored in chunks.
pub(super) const CHUNKED_ABOVE: usize = 4096;

/// The sub-key of chunk `index`.
fn chunk_sub(index: usize) -> [u8; 4] {
    (index as u32).to_be_bytes()
}

/// The chunks that hold bytes `range`.
fn chunks_of(range: &Range<usize>) -> Range<usize> {
    if range.is_empty() {
        0..0
    } else {
        range.start / CHUNK..(range.end - 1) / CHUNK + 1
    }
}

/// The length of a string from its key record (whole or chunked).
pub(super) fn stored_len(record: &Value) -> usize {
    if record.chunked {
        u64::from_be_bytes(record.payload[..8].try_into().expect("chunked length")) as usize
    } else {
        record.payload.len()
    }
}

impl Keyspace<'_> {
    /// Bytes `range` of the string whose key record is `record` (clamped to
    /// its length).
    pub(super) fn string_bytes(&self, skey: &[u8], record: &Value, range: Range<usize>) -> Vec<u8> {
        let len = stored_len(record);
        let range = range.start.min(len)..range.end.min(len);
        if !record.chunked {
            return record.payload[range].to_vec();
        }
        let mut out = Vec::with_capacity(range.len());
        let wanted = chunks_of(&range);
        // One point read for one chunk, one ordered walk for several.
        let chunks: Vec<(usize, Vec<u8>)> = if wanted.len() == 1 {
            let chunk = self.element(skey, &chunk_sub(wanted.start)).unwrap_or_default();
            vec![(wanted.start, chunk)]
        } else {
            self.elements(skey, &[], Some(&chunk_sub(wanted.start)), false)
                .take(wanted.len())
                .map(|(sub, chunk)| {
                    (
                        u32::from_be_bytes(sub[..4].try_into().expect("chunk number")) as usize,
                        chunk,
                    )
                })
                .collect()
        };
        for (index, chunk) in chunks {
            let base = index * CHUNK;
            let from = range.start.max(base) - base;
            let to = (range.end.min(base + CHUNK) - base).min(chunk.len());
            if from < to {
                out.extend_from_slice(&chunk[from..to]);
            }
        }
        out
    }

    /// The whole string of a chunked key record.
    pub(super) fn whole_string(&self, skey: &[u8], record: &Value) -> Vec<u8> {
        self.string_bytes(skey, record, 0..stored_len(record))
    }

    /// Writes a string value in the layout its length calls for; chunks of a
    /// previous, longer chunked version (`previous`: its key record) go.
    pub(super) fn store_string(&mut self, skey: Vec<u8>, value: &Value, previous: Option<&Value>) {
        let old_chunks = previous
            .filter(|p| p.chunked)
            .map_or(0, |p| chunks_of(&(0..stored_len(p))).end);
        let len = value.payload.len();
        let new_chunks = if len > CHUNKED_ABOVE {
            chunks_of(&(0..len)).end
        } else {
            0
        };
        for index in new_chunks..old_chunks {
            self.delete_element(&skey, &chunk_sub(index));
        }
        if new_chunks == 0 {
            self.put_record(skey, value);
            return;
        }
        for index in 0..new_chunks {
            let part = &value.payload[index * CHUNK..((index + 1) * CHUNK).min(len)];
            self.put_element(&skey, &chunk_sub(index), part.to_vec());
        }
        self.put_chunked_record(skey, value, len);
    }

    fn put_chunked_record(&mut self, skey: Vec<u8>, value: &Value, len: usize) {
        let record = Value {
            kind: Kind::String,
            expires_at: value.expires_at,
            revision: 0,
            payload: (len as u64).to_be_bytes().to_vec(),
            edited: value.edited,
            chunked: true,
        };
        self.put_record(skey, &record);
    }

    /// Writes `bytes` at `offset` of the string whose live key record is
    /// `record` (or an empty string's, for a new key; zeros fill any gap), as
    /// SETRANGE does: only the chunks touched are rewritten when the string
    /// is and stays chunked.
    pub(super) fn write_string_bytes(&mut self, skey: Vec<u8>, record: &Value, offset: usize, bytes: &[u8]) {
        let len = stored_len(record);
        let new_len = len.max(offset + bytes.len());
        if !record.chunked || new_len <= CHUNKED_ABOVE {
            let mut whole = self.whole_string(&skey, record);
            whole.resize(new_len, 0);
            whole[offset..offset + bytes.len()].copy_from_slice(bytes);
            let value = Value {
                payload: whole,
                edited: true,
                chunked: false,
                ..record.clone()
            };
            // `store` finds what is really stored (an expired chunked
            // string's chunks go too).
            self.store(skey, &value);
            return;
        }
        let written = offset..offset + bytes.len();
        let grown = len..new_len;
        let mut touched: Vec<usize> = chunks_of(&written).chain(chunks_of(&grown)).collect();
        if offset > len {
            touched.extend(chunks_of(&(len..offset)));
        }
        touched.sort_unstable();
        touched.dedup();
        for index in touched {
            let base = index * CHUNK;
            let mut chunk = self.element(&skey, &chunk_sub(index)).unwrap_or_default();
            chunk.resize((new_len - base).min(CHUNK), 0);
            let from = written.start.max(base);
            let to = written.end.min(base + CHUNK);
            if from < to {
                chunk[from - base..to - base].copy_from_slice(&bytes[from - offset..to - offset]);
            }
            self.put_element(&skey, &chunk_sub(index), chunk);
        }
        let value = Value {
            edited: true,
            ..record.clone()
        };
        self.put_chunked_record(skey, &value, new_len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_map_to_the_chunks_that_hold_them() {
        assert_eq!(chunks_of(&(0..0)), 0..0);
        assert_eq!(chunks_of(&(0..1)), 0..1);
        assert_eq!(chunks_of(&(0..CHUNK)), 0..1);
        assert_eq!(chunks_of(&(CHUNK - 1..CHUNK + 1)), 0..2);
        assert_eq!(chunks_of(&(5000..5001)), 4..5);
    }
}
