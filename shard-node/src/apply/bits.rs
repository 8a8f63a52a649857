//! Bitmaps and bit fields: SETBIT, GETBIT, BITCOUNT, BITPOS, BITOP, BITFIELD
//! and BITFIELD_RO over string values, as Redis 7.0 runs them (same replies,
//! same errors, same order of checks).
//!
//! A bitmap is a string, as in Redis: bit 0 is the most significant bit of
//! the first byte, and a write past the end grows the string with zero bytes.
//! The string is one record, so a write reads and rewrites all of it (Redis
//! edits in place); docs/commands.md lists that cost.

use redraft_common::ops::{parse_strict_i64, Bytes};
use redraft_common::resp::Frame;

use super::collections::{error, int, Reply, SYNTAX};
use super::{Keyspace, MAX_STRING};
use crate::storage::Value;

const BAD_OFFSET: &str = "ERR bit offset is not an integer or out of range";
const BAD_BIT: &str = "ERR bit is not an integer or out of range";
const BAD_TYPE: &str =
    "ERR Invalid bitfield type. Use something like i16 u8. Note that u64 is not supported but i64 is.";

/// A bit offset argument: `n`, or `#n` (n times the field width) where
/// `field_bits` allows it; below `proto-max-bulk-len` bytes.
fn bit_offset(arg: &[u8], field_bits: Option<u32>) -> Reply<u64> {
    let (digits, scale) = match (arg.first(), field_bits) {
        (Some(b'#'), Some(bits)) => (&arg[1..], i64::from(bits)),
        _ => (arg, 1),
    };
    let offset = parse_strict_i64(digits)
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| error(BAD_OFFSET))?;
    if offset < 0 || (offset as u64 >> 3) >= MAX_STRING {
        return Err(error(BAD_OFFSET));
    }
    Ok(offset as u64)
}

/// The bit at `offset` (0 past the end).
fn bit_at(bytes: &[u8], offset: u64) -> u8 {
    bytes
        .get((offset >> 3) as usize)
        .map_or(0, |byte| (byte >> (7 - (offset & 7))) & 1)
}

fn set_bit(bytes: &mut [u8], offset: u64, on: bool) {
    let mask = 1u8 << (7 - (offset & 7));
    let byte = &mut bytes[(offset >> 3) as usize];
    if on {
        *byte |= mask;
    } else {
        *byte &= !mask;
    }
}

/// The `bits` bits at `offset` as an unsigned number (zeros past the end).
fn unsigned_field(bytes: &[u8], offset: u64, bits: u32) -> u64 {
    (0..u64::from(bits)).fold(0, |value, i| (value << 1) | u64::from(bit_at(bytes, offset + i)))
}

/// The `bits` bits at `offset` as a two's complement number.
fn signed_field(bytes: &[u8], offset: u64, bits: u32) -> i64 {
    let value = unsigned_field(bytes, offset, bits);
    if bits < 64 && value & (1 << (bits - 1)) != 0 {
        (value | (u64::MAX << bits)) as i64
    } else {
        value as i64
    }
}

/// Writes the low `bits` bits of `value` at `offset` (the string is long enough).
fn write_field(bytes: &mut [u8], offset: u64, bits: u32, value: u64) {
    for i in 0..bits {
        set_bit(bytes, offset + u64::from(i), (value >> (bits - 1 - i)) & 1 == 1);
    }
}

/// Redis's inclusive `start..end` range over `len` units, negative indexes
/// from the end, clamped as GETRANGE clamps them; `None` when empty.
fn clamp_range(start: i64, end: i64, len: i64) -> Option<(i64, i64)> {
    let range = super::substring_range(len.max(0) as usize, start, end);
    (!range.is_empty()).then(|| (range.start as i64, range.end as i64 - 1))
}

/// `BYTE` or `BIT`: whether ranges count bits.
fn range_unit(arg: &[u8]) -> Reply<bool> {
    match arg.to_ascii_lowercase().as_slice() {
        b"bit" => Ok(true),
        b"byte" => Ok(false),
        _ => Err(error(SYNTAX)),
    }
}

/// How BITFIELD's SET and INCRBY handle a value that does not fit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Overflow {
    Wrap,
    Saturate,
    Fail,
}

/// One BITFIELD operation.
struct FieldOp {
    /// `None` for GET; SET's value or INCRBY's increment, and which.
    write: Option<(i64, bool)>,
    signed: bool,
    bits: u32,
    offset: u64,
    overflow: Overflow,
}

/// `i1`..`i64` or `u1`..`u63`.
fn field_type(arg: &[u8]) -> Reply<(bool, u32)> {
    let signed = match arg.first().map(u8::to_ascii_lowercase) {
        Some(b'i') => true,
        Some(b'u') => false,
        _ => return Err(error(BAD_TYPE)),
    };
    match parse_strict_i64(&arg[1..]) {
        Some(bits) if bits >= 1 && bits <= if signed { 64 } else { 63 } => Ok((signed, bits as u32)),
        _ => Err(error(BAD_TYPE)),
    }
}

/// `value + increment` in an unsigned field of `bits`: `(result, overflowed)`;
/// the result follows `overflow` when it does not fit.
fn unsigned_add(value: u64, increment: i64, bits: u32, overflow: Overflow) -> (u64, bool) {
    let max = (1u64 << bits) - 1;
    let max_increment = max.wrapping_sub(value) as i64;
    let min_increment = value.wrapping_neg() as i64;
    let wrapped = value.wrapping_add(increment as u64) & max;
    if value > max || (increment > 0 && increment > max_increment) {
        (if overflow == Overflow::Saturate { max } else { wrapped }, true)
    } else if increment < 0 && increment < min_increment {
        (if overflow == Overflow::Saturate { 0 } else { wrapped }, true)
    } else {
        (value.wrapping_add(increment as u64), false)
    }
}

/// `value + increment` in a signed field of `bits`, like [`unsigned_add`].
fn signed_add(value: i64, increment: i64, bits: u32, overflow: Overflow) -> (i64, bool) {
    let max = if bits == 64 { i64::MAX } else { (1i64 << (bits - 1)) - 1 };
    let min = -max - 1;
    let max_increment = (max as u64).wrapping_sub(value as u64) as i64;
    let min_increment = min.wrapping_sub(value);
    let wrapped = {
        let sum = (value as u64).wrapping_add(increment as u64);
        if bits == 64 {
            sum as i64
        } else if sum & (1 << (bits - 1)) != 0 {
            (sum | (u64::MAX << bits)) as i64
        } else {
            (sum & !(u64::MAX << bits)) as i64
        }
    };
    if value > max
        || (bits != 64 && increment > max_increment)
        || (value >= 0 && increment > 0 && increment > max_increment)
    {
        (if overflow == Overflow::Saturate { max } else { wrapped }, true)
    } else if value < min
        || (bits != 64 && increment < min_increment)
        || (value < 0 && increment < 0 && increment < min_increment)
    {
        (if overflow == Overflow::Saturate { min } else { wrapped }, true)
    } else {
        (value.wrapping_add(increment), false)
    }
}

/// BITFIELD's operations, checked whole before anything runs.
fn field_ops(a: &[Bytes]) -> Reply<Vec<FieldOp>> {
    let mut ops = Vec::new();
    let mut overflow = Overflow::Wrap;
    let mut j = 2;
    while j < a.len() {
        let remaining = a.len() - j - 1;
        let write = match a[j].to_ascii_lowercase().as_slice() {
            b"get" if remaining >= 2 => None,
            b"set" if remaining >= 3 => Some(false),
            b"incrby" if remaining >= 3 => Some(true),
            b"overflow" if remaining >= 1 => {
                overflow = match a[j + 1].to_ascii_lowercase().as_slice() {
                    b"wrap" => Overflow::Wrap,
                    b"sat" => Overflow::Saturate,
                    b"fail" => Overflow::Fail,
                    _ => return Err(error("ERR Invalid OVERFLOW type specified")),
                };
                j += 2;
                continue;
            }
            _ => return Err(error(SYNTAX)),
        };
        let (signed, bits) = field_type(&a[j + 1])?;
        let offset = bit_offset(&a[j + 2], Some(bits))?;
        let write = match write {
            None => None,
            Some(increment) => Some((int(&a[j + 3])?, increment)),
        };
        ops.push(FieldOp {
            write,
            signed,
            bits,
            offset,
            overflow,
        });
        j += if write.is_some() { 4 } else { 3 };
    }
    Ok(ops)
}

impl Keyspace<'_> {
    /// Bitmap commands; `None` for a name that is not one.
    pub(super) fn bits_command(&mut self, name: &str, a: &[Bytes]) -> Option<Frame> {
        let reply = match name {
            "setbit" => self.setbit(a),
            "getbit" => self.getbit(a),
            "bitcount" => self.bitcount(a),
            "bitpos" => self.bitpos(a),
            "bitop" => self.bitop(a),
            "bitfield" => self.bitfield(a, false),
            "bitfield_ro" => self.bitfield(a, true),
            _ => return None,
        };
        Some(reply.unwrap_or_else(|e| e))
    }

    /// The string at `key` for a bit write reaching bit `highest`: created or
    /// grown with zero bytes as needed; `(value, whether it was created or grown)`.
    fn string_for_bits(&self, skey: &[u8], highest: u64) -> Reply<(Value, bool)> {
        let needed = (highest >> 3) as usize + 1;
        let mut value = self.string(skey)?.unwrap_or_else(|| Value::string(Vec::new(), 0));
        let grown = value.payload.len() < needed;
        if grown {
            value.payload.resize(needed, 0);
        }
        value.edited = true;
        Ok((value, grown))
    }

    fn setbit(&mut self, a: &[Bytes]) -> Reply<Frame> {
        let offset = bit_offset(&a[2], None)?;
        let on = match parse_strict_i64(&a[3]) {
            Some(bit @ (0 | 1)) => bit == 1,
            _ => return Err(error(BAD_BIT)),
        };
        let skey = self.owned_key(&a[1]);
        let byte = (offset >> 3) as usize;
        let record = self
            .string_record(&skey)?
            .unwrap_or_else(|| Value::string(Vec::new(), 0));
        let old = self.string_bytes(&skey, &record, byte..byte + 1);
        let grown = old.is_empty();
        let mut new = old.first().copied().unwrap_or(0);
        let was = (new >> (7 - (offset & 7))) & 1;
        if grown || (was == 1) != on {
            set_bit(std::slice::from_mut(&mut new), offset & 7, on);
            self.notify_stored(b'$', "setbit", &skey);
            self.write_string_bytes(skey, &record, byte, &[new]);
        }
        Ok(Frame::Integer(i64::from(was)))
    }

    fn getbit(&self, a: &[Bytes]) -> Reply<Frame> {
        let offset = bit_offset(&a[2], None)?;
        let skey = self.owned_key(&a[1]);
        let Some(record) = self.string_record(&skey)? else {
            return Ok(Frame::Integer(0));
        };
        let byte = (offset >> 3) as usize;
        let bytes = self.string_bytes(&skey, &record, byte..byte + 1);
        Ok(Frame::Integer(i64::from(bit_at(&bytes, offset & 7))))
    }

    fn bitcount(&self, a: &[Bytes]) -> Reply<Frame> {
        let skey = self.owned_key(&a[1]);
        let Some(record) = self.string_record(&skey)? else {
            return Ok(Frame::Integer(0));
        };
        let len = super::chunks::stored_len(&record) as i64;
        let (first, last) = match a.len() {
            2 => (0, len * 8 - 1),
            4 | 5 => {
                let (start, end) = (int(&a[2])?, int(&a[3])?);
                let in_bits = a.len() == 5 && range_unit(&a[4])?;
                if start < 0 && end < 0 && start > end {
                    return Ok(Frame::Integer(0));
                }
                match clamp_range(start, end, len * if in_bits { 8 } else { 1 }) {
                    None => return Ok(Frame::Integer(0)),
                    Some((s, e)) if in_bits => (s, e),
                    Some((s, e)) => (s * 8, e * 8 + 7),
                }
            }
            _ => return Err(error(SYNTAX)),
        };
        if first > last {
            return Ok(Frame::Integer(0));
        }
        // Only the bytes the range covers are read.
        let base = (first >> 3) as usize;
        let bytes = self.string_bytes(&skey, &record, base..(last >> 3) as usize + 1);
        let shift = (base * 8) as i64;
        Ok(Frame::Integer(count_ones(&bytes, first - shift, last - shift)))
    }

    fn bitpos(&self, a: &[Bytes]) -> Reply<Frame> {
        let bit = match int(&a[2])? {
            bit @ (0 | 1) => bit as u8,
            _ => return Err(error("ERR The bit argument must be 1 or 0.")),
        };
        let Some(value) = self.string(&self.owned_key(&a[1]))? else {
            return Ok(Frame::Integer(if bit == 1 { -1 } else { 0 }));
        };
        let bytes = &value.payload;
        let (range, end_given, in_bits) = match a.len() {
            3 => (clamp_range(0, bytes.len() as i64 - 1, bytes.len() as i64), false, false),
            4..=6 => {
                let start = int(&a[3])?;
                let in_bits = a.len() == 6 && range_unit(&a[5])?;
                let len = bytes.len() as i64 * if in_bits { 8 } else { 1 };
                let end = if a.len() >= 5 { int(&a[4])? } else { len - 1 };
                (clamp_range(start, end, len), a.len() >= 5, in_bits)
            }
            _ => return Err(error(SYNTAX)),
        };
        let Some((start, end)) = range else {
            return Ok(Frame::Integer(-1));
        };
        let (first, last) = if in_bits {
            (start, end)
        } else {
            (start * 8, end * 8 + 7)
        };
        if let Some(found) = (first..=last).find(|&offset| bit_at(bytes, offset as u64) == bit) {
            return Ok(Frame::Integer(found));
        }
        // Looking for a clear bit without an end: the string continues with
        // zeros, so the first bit after it.
        Ok(Frame::Integer(if bit == 0 && !end_given { last + 1 } else { -1 }))
    }

    fn bitop(&mut self, a: &[Bytes]) -> Reply<Frame> {
        let op = a[1].to_ascii_lowercase();
        if !matches!(op.as_slice(), b"and" | b"or" | b"xor" | b"not") {
            return Err(error(SYNTAX));
        }
        if op == b"not" && a.len() != 4 {
            return Err(error("ERR BITOP NOT must be called with a single source key."));
        }
        let mut sources = Vec::with_capacity(a.len() - 3);
        for key in &a[3..] {
            sources.push(
                self.string(&self.owned_key(key))?
                    .map(|v| v.payload)
                    .unwrap_or_default(),
            );
        }
        let len = sources.iter().map(Vec::len).max().unwrap_or(0);
        let destination = self.owned_key(&a[2]);
        if len == 0 {
            if self.load(&destination).is_some() {
                self.notify(b'g', "del", &a[2]);
                self.delete_key(destination);
            }
            return Ok(Frame::Integer(0));
        }
        let byte = |source: &Vec<u8>, i: usize| source.get(i).copied().unwrap_or(0);
        let result: Vec<u8> = (0..len)
            .map(|i| {
                let first = byte(&sources[0], i);
                sources[1..]
                    .iter()
                    .fold(if op == b"not" { !first } else { first }, |acc, s| {
                        match op.as_slice() {
                            b"and" => acc & byte(s, i),
                            b"or" => acc | byte(s, i),
                            _ => acc ^ byte(s, i),
                        }
                    })
            })
            .collect();
        let mut value = Value::string(result, 0);
        value.edited = true;
        self.replace(destination, &value);
        self.notify(b'$', "set", &a[2]);
        Ok(Frame::Integer(len as i64))
    }

    fn bitfield(&mut self, a: &[Bytes], read_only: bool) -> Reply<Frame> {
        let ops = field_ops(a)?;
        let skey = self.owned_key(&a[1]);
        let highest = ops
            .iter()
            .filter(|op| op.write.is_some())
            .map(|op| op.offset + u64::from(op.bits) - 1)
            .max();
        let Some(highest) = highest else {
            let value = self.string(&skey)?;
            let bytes = value.map(|v| v.payload).unwrap_or_default();
            return Ok(Frame::Array(ops.iter().map(|op| read_field(&bytes, op)).collect()));
        };
        if read_only {
            return Err(error("ERR BITFIELD_RO only supports the GET subcommand"));
        }
        let (mut value, mut changed) = self.string_for_bits(&skey, highest)?;
        let mut replies = Vec::with_capacity(ops.len());
        for op in &ops {
            let Some((argument, increment)) = op.write else {
                replies.push(read_field(&value.payload, op));
                continue;
            };
            let (old, new, overflowed) = if op.signed {
                let old = signed_field(&value.payload, op.offset, op.bits);
                let (new, overflowed) = if increment {
                    signed_add(old, argument, op.bits, op.overflow)
                } else {
                    signed_add(argument, 0, op.bits, op.overflow)
                };
                (old as u64, new as u64, overflowed)
            } else {
                let old = unsigned_field(&value.payload, op.offset, op.bits);
                let (new, overflowed) = if increment {
                    unsigned_add(old, argument, op.bits, op.overflow)
                } else {
                    unsigned_add(argument as u64, 0, op.bits, op.overflow)
                };
                (old, new, overflowed)
            };
            if overflowed && op.overflow == Overflow::Fail {
                replies.push(Frame::Null);
                continue;
            }
            let shown = if increment { new } else { old };
            replies.push(Frame::Integer(shown as i64));
            write_field(&mut value.payload, op.offset, op.bits, new);
            changed |= old != new;
        }
        if changed {
            self.notify_stored(b'$', "setbit", &skey);
            self.store(skey, &value);
        }
        Ok(Frame::Array(replies))
    }
}

/// BITFIELD GET of `op` (zeros past the end).
fn read_field(bytes: &[u8], op: &FieldOp) -> Frame {
    Frame::Integer(if op.signed {
        signed_field(bytes, op.offset, op.bits)
    } else {
        unsigned_field(bytes, op.offset, op.bits) as i64
    })
}

/// Set bits from bit `first` to bit `last`, inclusive (within `bytes`).
fn count_ones(bytes: &[u8], first: i64, last: i64) -> i64 {
    if first > last {
        return 0;
    }
    let (first_byte, last_byte) = ((first >> 3) as usize, (last >> 3) as usize);
    let whole: u32 = bytes[first_byte..=last_byte].iter().map(|b| b.count_ones()).sum();
    // Bits of the edge bytes outside the range.
    let before = match first & 7 {
        0 => 0,
        skipped => (bytes[first_byte] >> (8 - skipped)).count_ones(),
    };
    let after = (u32::from(bytes[last_byte]) & ((1u32 << (7 - (last & 7))) - 1)).count_ones();
    i64::from(whole - before - after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_counted_from_the_most_significant_bit() {
        let bytes = [0b1000_0001u8, 0xff];
        assert_eq!(bit_at(&bytes, 0), 1);
        assert_eq!(bit_at(&bytes, 1), 0);
        assert_eq!(bit_at(&bytes, 7), 1);
        assert_eq!(bit_at(&bytes, 100), 0);
        assert_eq!(count_ones(&bytes, 0, 15), 10);
        assert_eq!(count_ones(&bytes, 1, 6), 0);
        assert_eq!(count_ones(&bytes, 7, 9), 3);
        assert_eq!(count_ones(&bytes, 9, 8), 0);
    }

    #[test]
    fn fields_read_and_write_like_redis() {
        let mut bytes = vec![0u8; 3];
        write_field(&mut bytes, 4, 8, 0xab);
        assert_eq!(bytes, [0x0a, 0xb0, 0]);
        assert_eq!(unsigned_field(&bytes, 4, 8), 0xab);
        assert_eq!(signed_field(&bytes, 4, 8), 0xab_u8 as i8 as i64);
        assert_eq!(
            signed_field(&bytes, 0, 64),
            i64::from_be_bytes([0x0a, 0xb0, 0, 0, 0, 0, 0, 0])
        );
    }

    #[test]
    fn overflow_wraps_saturates_or_fails() {
        assert_eq!(unsigned_add(250, 10, 8, Overflow::Wrap), (4, true));
        assert_eq!(unsigned_add(250, 10, 8, Overflow::Saturate), (255, true));
        assert_eq!(unsigned_add(5, -10, 8, Overflow::Saturate), (0, true));
        assert_eq!(unsigned_add(5, -3, 8, Overflow::Fail), (2, false));
        assert_eq!(signed_add(120, 10, 8, Overflow::Wrap), (-126, true));
        assert_eq!(signed_add(-120, -10, 8, Overflow::Saturate), (-128, true));
        assert_eq!(signed_add(i64::MAX, 1, 64, Overflow::Saturate), (i64::MAX, true));
        assert_eq!(signed_add(i64::MIN, -1, 64, Overflow::Wrap), (i64::MAX, true));
        assert_eq!(signed_add(300, 0, 8, Overflow::Wrap), (44, true));
    }

    #[test]
    fn offsets_and_types_are_checked() {
        assert_eq!(bit_offset(b"#3", Some(8)), Ok(24));
        assert!(bit_offset(b"#3", None).is_err());
        assert!(bit_offset(b"-1", None).is_err());
        assert!(bit_offset(b"4294967296", None).is_err());
        assert_eq!(bit_offset(b"4294967295", None), Ok(4294967295));
        assert_eq!(field_type(b"i64").ok(), Some((true, 64)));
        assert!(field_type(b"u64").is_err());
        assert!(field_type(b"i0").is_err());
        assert!(field_type(b"x8").is_err());
    }
}
