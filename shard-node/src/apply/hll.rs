//! HyperLogLog: PFADD, PFCOUNT and PFMERGE over strings in Redis's own HLL
//! format, so an HLL built here and one built by redis-server are the same
//! bytes (GET, DUMP and RESTORE carry them both ways) and count alike.
//!
//! The format (Redis 7.0's `hyperloglog.c`, re-implemented from its
//! description): a 16-byte header (`HYLL`, the encoding byte, three unused
//! bytes, a cached cardinality as 8 little-endian bytes whose top bit marks it
//! stale), then 16384 registers of 6 bits, either dense (12288 bytes) or
//! sparse (run-length opcodes ZERO, XZERO and VAL). A sparse HLL becomes dense
//! when a register exceeds 32 or it would outgrow 3000 bytes (Redis's
//! `hll-sparse-max-bytes` default). Elements are hashed with MurmurHash64A
//! (seed 0xadc83b19) and counted with Ertl's improved estimator, as Redis does.
//!
//! One difference: PFCOUNT is a read here, so it does not store what it
//! computed in the cache as Redis does (the bytes after a PFCOUNT differ in
//! the cache only; the counts do not).

use redraft_common::ops::Bytes;
use redraft_common::resp::Frame;

use super::collections::{error, Reply};
use super::Keyspace;
use crate::storage::Value;

const HEADER: usize = 16;
const P: u32 = 14;
const REGISTERS: usize = 1 << P;
const Q: usize = 64 - P as usize;
const DENSE_LEN: usize = HEADER + REGISTERS * 6 / 8;
const SPARSE_MAX_BYTES: usize = 3000;
const SPARSE_VAL_MAX: u8 = 32;
const SPARSE_VAL_MAX_LEN: usize = 4;
const SPARSE_ZERO_MAX_LEN: usize = 64;
const SPARSE_XZERO_MAX_LEN: usize = 16384;
const ENCODING_DENSE: u8 = 0;
const ENCODING_SPARSE: u8 = 1;

const NOT_HLL: &str = "WRONGTYPE Key is not a valid HyperLogLog string value.";
const CORRUPT: &str = "INVALIDOBJ Corrupted HLL object detected";

/// A sparse HLL whose opcodes do not add up to the registers.
#[derive(Debug, PartialEq, Eq)]
struct Corrupt;

/// MurmurHash2, 64-bit version (Austin Appleby's `MurmurHash64A`), reading
/// words little-endian as Redis does on every platform.
fn murmur64a(data: &[u8], seed: u64) -> u64 {
    const M: u64 = 0xc6a4_a793_5bd1_e995;
    const R: u32 = 47;
    let mut h = seed ^ (data.len() as u64).wrapping_mul(M);
    let mut words = data.chunks_exact(8);
    for word in &mut words {
        let mut k = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h ^= k;
        h = h.wrapping_mul(M);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        for (i, &byte) in tail.iter().enumerate() {
            h ^= u64::from(byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> R;
    h = h.wrapping_mul(M);
    h ^= h >> R;
    h
}

/// The register an element falls in and the length of its hash's `0...01`
/// pattern after the register bits (1 to Q + 1).
fn pattern(element: &[u8]) -> (usize, u8) {
    let hash = murmur64a(element, 0xadc8_3b19);
    let index = (hash as usize) & (REGISTERS - 1);
    let rest = (hash >> P) | (1 << Q);
    (index, rest.trailing_zeros() as u8 + 1)
}

/// An empty HLL: sparse, one XZERO over every register, cached count 0.
fn empty() -> Vec<u8> {
    let mut hll = b"HYLL".to_vec();
    hll.extend_from_slice(&[ENCODING_SPARSE, 0, 0, 0]);
    hll.extend_from_slice(&[0; 8]);
    push_zeros(&mut hll, REGISTERS);
    hll
}

/// Whether `bytes` is an HLL Redis would accept.
fn is_hll(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER
        && &bytes[..4] == b"HYLL"
        && bytes[4] <= ENCODING_SPARSE
        && (bytes[4] != ENCODING_DENSE || bytes.len() == DENSE_LEN)
}

fn invalidate_cache(hll: &mut [u8]) {
    hll[15] |= 0x80;
}

/// The cached count, when it is current.
fn cached_count(hll: &[u8]) -> Option<u64> {
    (hll[15] & 0x80 == 0).then(|| u64::from_le_bytes(hll[8..16].try_into().expect("eight bytes")))
}

// Dense registers: 6 bits each, from the least significant bit of each byte.

fn dense_get(registers: &[u8], index: usize) -> u8 {
    let (byte, shift) = (index * 6 / 8, (index * 6 % 8) as u32);
    let low = u32::from(registers[byte]) >> shift;
    let high = u32::from(registers.get(byte + 1).copied().unwrap_or(0)) << (8 - shift);
    ((low | high) & 63) as u8
}

fn dense_put(registers: &mut [u8], index: usize, value: u8) {
    let (byte, shift) = (index * 6 / 8, (index * 6 % 8) as u32);
    let value = u32::from(value);
    registers[byte] &= !(63u32 << shift) as u8;
    registers[byte] |= (value << shift) as u8;
    if let Some(next) = registers.get_mut(byte + 1) {
        *next &= !(63u32 >> (8 - shift)) as u8;
        *next |= (value >> (8 - shift)) as u8;
    }
}

/// Raises a dense register to `count`; whether it changed.
fn dense_raise(hll: &mut [u8], index: usize, count: u8) -> bool {
    let registers = &mut hll[HEADER..];
    if count > dense_get(registers, index) {
        dense_put(registers, index, count);
        true
    } else {
        false
    }
}

// Sparse opcodes: ZERO `00xxxxxx` (1-64 zero registers), XZERO `01xxxxxx
// yyyyyyyy` (1-16384), VAL `1vvvvvxx` (1-4 registers of value 1-32).

/// One decoded opcode at a position.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Zero(usize),
    XZero(usize),
    Val(u8, usize),
}

impl Op {
    fn at(sparse: &[u8], p: usize) -> Op {
        let byte = sparse[p];
        if byte & 0x80 != 0 {
            Op::Val(((byte >> 2) & 0x1f) + 1, (byte & 0x3) as usize + 1)
        } else if byte & 0x40 != 0 {
            let low = sparse.get(p + 1).copied().unwrap_or(0);
            Op::XZero(((((byte & 0x3f) as usize) << 8) | low as usize) + 1)
        } else {
            Op::Zero((byte & 0x3f) as usize + 1)
        }
    }

    /// Registers it covers.
    fn span(self) -> usize {
        match self {
            Op::Zero(n) | Op::XZero(n) | Op::Val(_, n) => n,
        }
    }

    /// Bytes it takes.
    fn size(self) -> usize {
        if matches!(self, Op::XZero(_)) {
            2
        } else {
            1
        }
    }
}

fn val(value: u8, len: usize) -> u8 {
    0x80 | ((value - 1) << 2) | (len - 1) as u8
}

/// Appends opcodes for a run of `len` zero registers (ZERO when it fits).
fn push_zeros(out: &mut Vec<u8>, mut len: usize) {
    while len > 0 {
        let run = len.min(SPARSE_XZERO_MAX_LEN);
        if run > SPARSE_ZERO_MAX_LEN {
            out.push(0x40 | ((run - 1) >> 8) as u8);
            out.push(((run - 1) & 0xff) as u8);
        } else {
            out.push((run - 1) as u8);
        }
        len -= run;
    }
}

/// Calls `each(first register, opcode)` for every opcode of a sparse HLL;
/// `Corrupt` unless they cover exactly the registers.
fn walk_sparse(hll: &[u8], mut each: impl FnMut(usize, Op) -> Result<(), Corrupt>) -> Result<(), Corrupt> {
    let (mut p, mut index) = (HEADER, 0);
    while p < hll.len() {
        let op = Op::at(hll, p);
        if matches!(op, Op::Val(..)) && index + op.span() > REGISTERS {
            return Err(Corrupt);
        }
        each(index, op)?;
        index += op.span();
        p += op.size();
    }
    if index == REGISTERS {
        Ok(())
    } else {
        Err(Corrupt)
    }
}

/// Rewrites a sparse HLL as dense (header and cache kept).
fn to_dense(hll: &mut Vec<u8>) -> Result<(), Corrupt> {
    if hll[4] == ENCODING_DENSE {
        return Ok(());
    }
    let mut dense = vec![0u8; DENSE_LEN];
    dense[..HEADER].copy_from_slice(&hll[..HEADER]);
    dense[4] = ENCODING_DENSE;
    walk_sparse(hll, |first, op| {
        if let Op::Val(value, len) = op {
            for index in first..first + len {
                dense_put(&mut dense[HEADER..], index, value);
            }
        }
        Ok(())
    })?;
    *hll = dense;
    Ok(())
}

/// Raises a sparse register to `count`, splitting the opcode that covers it
/// and merging equal neighbours as Redis does, or turning the HLL dense;
/// whether it changed.
fn sparse_raise(hll: &mut Vec<u8>, index: usize, count: u8) -> Result<bool, Corrupt> {
    if count > SPARSE_VAL_MAX {
        return promote(hll, index, count);
    }
    // The opcode covering `index`, where it starts, and the one before it.
    let (mut p, mut first, mut previous) = (HEADER, 0, None);
    let mut op = None;
    while p < hll.len() {
        let here = Op::at(hll, p);
        if index < first + here.span() {
            op = Some(here);
            break;
        }
        previous = Some(p);
        p += here.size();
        first += here.span();
    }
    let Some(op) = op else {
        return Err(Corrupt);
    };
    match op {
        Op::Val(old, _) if old >= count => return Ok(false),
        Op::Val(_, 1) | Op::Zero(1) => hll[p] = val(count, 1),
        _ => {
            let last = first + op.span() - 1;
            let mut replacement = Vec::with_capacity(5);
            match op {
                Op::Val(old, _) => {
                    if index != first {
                        replacement.push(val(old, index - first));
                    }
                    replacement.push(val(count, 1));
                    if index != last {
                        replacement.push(val(old, last - index));
                    }
                }
                _ => {
                    push_zeros(&mut replacement, index - first);
                    replacement.push(val(count, 1));
                    push_zeros(&mut replacement, last - index);
                }
            }
            if replacement.len() > op.size() && hll.len() + replacement.len() - op.size() > SPARSE_MAX_BYTES {
                return promote(hll, index, count);
            }
            hll.splice(p..p + op.size(), replacement);
        }
    }
    // Merge adjacent VALs of one value, looking at up to five opcodes from
    // the one before the change.
    let mut q = previous.unwrap_or(HEADER);
    let mut looked = 0;
    while q < hll.len() && looked < 5 {
        looked += 1;
        match Op::at(hll, q) {
            Op::XZero(_) => q += 2,
            Op::Zero(_) => q += 1,
            Op::Val(value, len) => {
                if let Some(Op::Val(next_value, next_len)) = (q + 1 < hll.len()).then(|| Op::at(hll, q + 1)) {
                    if value == next_value && len + next_len <= SPARSE_VAL_MAX_LEN {
                        hll[q + 1] = val(value, len + next_len);
                        hll.remove(q);
                        continue;
                    }
                }
                q += 1;
            }
        }
    }
    invalidate_cache(hll);
    Ok(true)
}

fn promote(hll: &mut Vec<u8>, index: usize, count: u8) -> Result<bool, Corrupt> {
    to_dense(hll)?;
    Ok(dense_raise(hll, index, count))
}

/// Raises register `index` to `count` in either encoding.
fn raise(hll: &mut Vec<u8>, index: usize, count: u8) -> Result<bool, Corrupt> {
    if hll[4] == ENCODING_DENSE {
        Ok(dense_raise(hll, index, count))
    } else {
        sparse_raise(hll, index, count)
    }
}

/// Raises every register of `max` to this HLL's value of it.
fn merge_into(max: &mut [u8], hll: &[u8]) -> Result<(), Corrupt> {
    if hll[4] == ENCODING_DENSE {
        for (index, slot) in max.iter_mut().enumerate() {
            *slot = (*slot).max(dense_get(&hll[HEADER..], index));
        }
        return Ok(());
    }
    walk_sparse(hll, |first, op| {
        if let Op::Val(value, len) = op {
            for slot in &mut max[first..first + len] {
                *slot = (*slot).max(value);
            }
        }
        Ok(())
    })
}

/// How many registers hold each value.
fn histogram(hll: &[u8]) -> Result<[u32; 64], Corrupt> {
    let mut counts = [0u32; 64];
    if hll[4] == ENCODING_DENSE {
        for index in 0..REGISTERS {
            counts[dense_get(&hll[HEADER..], index) as usize] += 1;
        }
    } else {
        walk_sparse(hll, |_, op| {
            match op {
                Op::Val(value, len) => counts[value as usize] += len as u32,
                zeros => counts[0] += zeros.span() as u32,
            }
            Ok(())
        })?;
    }
    Ok(counts)
}

/// Ertl's estimate ("New cardinality estimation algorithms for HyperLogLog
/// sketches", arXiv:1702.01284) from the register histogram.
fn estimate(counts: &[u32; 64]) -> u64 {
    fn sigma(mut x: f64) -> f64 {
        if x == 1.0 {
            return f64::INFINITY;
        }
        let (mut y, mut z) = (1.0, x);
        loop {
            x *= x;
            let before = z;
            z += x * y;
            y += y;
            if before == z {
                return z;
            }
        }
    }
    fn tau(mut x: f64) -> f64 {
        if x == 0.0 || x == 1.0 {
            return 0.0;
        }
        let (mut y, mut z) = (1.0, 1.0 - x);
        loop {
            x = x.sqrt();
            let before = z;
            y *= 0.5;
            z -= (1.0 - x) * (1.0 - x) * y;
            if before == z {
                return z / 3.0;
            }
        }
    }
    let m = REGISTERS as f64;
    let mut z = m * tau((m - f64::from(counts[Q + 1])) / m);
    for j in (1..=Q).rev() {
        z += f64::from(counts[j]);
        z *= 0.5;
    }
    z += m * sigma(f64::from(counts[0]) / m);
    const ALPHA_INF: f64 = 0.721_347_520_444_481_7;
    (ALPHA_INF * m * m / z).round() as u64
}

impl Keyspace<'_> {
    /// HyperLogLog commands; `None` for a name that is not one.
    pub(super) fn hll_command(&mut self, name: &str, a: &[Bytes]) -> Option<Frame> {
        let reply = match name {
            "pfadd" => self.pfadd(a),
            "pfcount" => self.pfcount(a),
            "pfmerge" => self.pfmerge(a),
            _ => return None,
        };
        Some(reply.unwrap_or_else(|e| e))
    }

    /// The HLL at `key`: `None` when absent, an error when not an HLL.
    fn hll(&self, key: &[u8]) -> Reply<Option<Value>> {
        match self.string(&self.owned_key(key))? {
            Some(v) if !is_hll(&v.payload) => Err(error(NOT_HLL)),
            other => Ok(other),
        }
    }

    fn pfadd(&mut self, a: &[Bytes]) -> Reply<Frame> {
        let (mut value, mut updated) = match self.hll(&a[1])? {
            Some(value) => (value, false),
            None => (Value::string(empty(), 0), true),
        };
        for element in &a[2..] {
            let (index, count) = pattern(element);
            updated |= raise(&mut value.payload, index, count).map_err(|_| error(CORRUPT))?;
        }
        if updated {
            invalidate_cache(&mut value.payload);
            value.edited = true;
            self.store(self.owned_key(&a[1]), &value);
            self.notify(b'$', "pfadd", &a[1]);
        }
        Ok(Frame::Integer(i64::from(updated)))
    }

    fn pfcount(&self, a: &[Bytes]) -> Reply<Frame> {
        if let [_, key] = a {
            let Some(value) = self.hll(key)? else {
                return Ok(Frame::Integer(0));
            };
            if let Some(count) = cached_count(&value.payload) {
                return Ok(Frame::Integer(count as i64));
            }
            let counts = histogram(&value.payload).map_err(|_| error(CORRUPT))?;
            return Ok(Frame::Integer(estimate(&counts) as i64));
        }
        let mut max = vec![0u8; REGISTERS];
        for key in &a[1..] {
            if let Some(value) = self.hll(key)? {
                merge_into(&mut max, &value.payload).map_err(|_| error(CORRUPT))?;
            }
        }
        let mut counts = [0u32; 64];
        for &register in &max {
            counts[register as usize] += 1;
        }
        Ok(Frame::Integer(estimate(&counts) as i64))
    }

    fn pfmerge(&mut self, a: &[Bytes]) -> Reply<Frame> {
        let mut max = vec![0u8; REGISTERS];
        let mut dense = false;
        let mut destination = None;
        for (i, key) in a[1..].iter().enumerate() {
            if let Some(value) = self.hll(key)? {
                dense |= value.payload[4] == ENCODING_DENSE;
                merge_into(&mut max, &value.payload).map_err(|_| error(CORRUPT))?;
                if i == 0 {
                    destination = Some(value);
                }
            }
        }
        let mut value = destination.unwrap_or_else(|| Value::string(empty(), 0));
        if dense {
            to_dense(&mut value.payload).map_err(|_| error(CORRUPT))?;
        }
        for (index, &register) in max.iter().enumerate() {
            if register != 0 {
                // A corrupt destination was refused above; raising cannot fail.
                let _ = raise(&mut value.payload, index, register);
            }
        }
        invalidate_cache(&mut value.payload);
        value.edited = true;
        self.store(self.owned_key(&a[1]), &value);
        // Redis notifies a merge as `pfadd`.
        self.notify(b'$', "pfadd", &a[1]);
        Ok(Frame::ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(hll: &[u8]) -> u64 {
        estimate(&histogram(hll).unwrap())
    }

    #[test]
    fn elements_land_where_redis_puts_them() {
        // redis-server 7.0: PFADD h a b c, then GET h.
        let redis = "48594c4c01000000000000000000008060f38050b1844bfb80425a";
        let mut hll = empty();
        for element in [&b"a"[..], b"b", b"c"] {
            let (index, count) = pattern(element);
            assert!(raise(&mut hll, index, count).unwrap());
        }
        invalidate_cache(&mut hll);
        let hex: String = hll.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, redis);
        assert_eq!(count(&hll), 3);
    }

    #[test]
    fn an_empty_hll_is_redis_bytes_and_counts_zero() {
        let hll = empty();
        assert_eq!(&hll[..], b"HYLL\x01\0\0\0\0\0\0\0\0\0\0\0\x7f\xff");
        assert_eq!(count(&hll), 0);
    }

    #[test]
    fn sparse_and_dense_agree_and_estimate_within_two_percent() {
        let mut sparse = empty();
        let mut changed = 0;
        for i in 0..20_000u32 {
            let (index, count) = pattern(format!("element:{i}").as_bytes());
            changed += u32::from(raise(&mut sparse, index, count).unwrap());
        }
        assert!(changed > 0);
        assert_eq!(sparse[4], ENCODING_DENSE, "20,000 elements outgrow the sparse form");
        let estimate = count(&sparse) as f64;
        assert!((estimate - 20_000.0).abs() / 20_000.0 < 0.02, "{estimate}");

        let mut small = empty();
        for i in 0..200u32 {
            let (index, count) = pattern(format!("e{i}").as_bytes());
            raise(&mut small, index, count).unwrap();
        }
        assert_eq!(small[4], ENCODING_SPARSE);
        let mut dense = small.clone();
        to_dense(&mut dense).unwrap();
        assert_eq!(histogram(&small), histogram(&dense));
        let mut max = vec![0u8; REGISTERS];
        merge_into(&mut max, &small).unwrap();
        let mut from_dense = vec![0u8; REGISTERS];
        merge_into(&mut from_dense, &dense).unwrap();
        assert_eq!(max, from_dense);
        assert!((count(&small) as i64 - 200).abs() <= 4, "{}", count(&small));
    }

    #[test]
    fn dense_registers_round_trip() {
        let mut registers = vec![0u8; REGISTERS * 6 / 8];
        for index in [0, 1, 2, 3, 4, 5, 16382, 16383] {
            dense_put(&mut registers, index, (index % 63) as u8 + 1);
        }
        for index in [0, 1, 2, 3, 4, 5, 16382, 16383] {
            assert_eq!(dense_get(&registers, index), (index % 63) as u8 + 1);
        }
        assert_eq!(dense_get(&registers, 6), 0);
    }

    #[test]
    fn a_corrupt_sparse_hll_is_detected() {
        let mut hll = empty();
        hll.truncate(HEADER + 1);
        hll.push(0x10);
        assert_eq!(histogram(&hll), Err(Corrupt));
        let mut max = vec![0u8; REGISTERS];
        assert_eq!(merge_into(&mut max, &hll), Err(Corrupt));
    }
}
