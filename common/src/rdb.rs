//! Pieces of Redis's RDB format that Redraft reads and writes: string
//! encoding (with LZF-compressed strings on reading), and the trailer of a
//! DUMP-style payload (RDB version, CRC64). FUNCTION DUMP and RESTORE use them
//! today, with Redis 7.0's layout byte for byte, so a payload moves between
//! Redis and Redraft both ways.

/// The RDB version Redraft writes (Redis 7.0's) and the newest it reads.
pub const RDB_VERSION: u16 = 10;
/// Opcode of one function library in a FUNCTION DUMP payload.
pub const OPCODE_FUNCTION2: u8 = 0xf5;
/// Redis's error for a payload that fails its checks.
pub const BAD_PAYLOAD: &str = "ERR DUMP payload version or checksum are wrong";

const CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_REDIS);

/// Appends `bytes` as an RDB string (length-prefixed, never compressed).
pub fn write_string(out: &mut Vec<u8>, bytes: &[u8]) {
    write_length(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn write_length(out: &mut Vec<u8>, len: u64) {
    if len < 1 << 6 {
        out.push(len as u8);
    } else if len < 1 << 14 {
        out.extend_from_slice(&[0x40 | (len >> 8) as u8, len as u8]);
    } else if len <= u64::from(u32::MAX) {
        out.push(0x80);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    } else {
        out.push(0x81);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// Seals a payload: the RDB version and the CRC64 of everything before it.
pub fn seal(mut payload: Vec<u8>) -> Vec<u8> {
    payload.extend_from_slice(&RDB_VERSION.to_le_bytes());
    let crc = CRC64.checksum(&payload);
    payload.extend_from_slice(&crc.to_le_bytes());
    payload
}

/// The body of a sealed payload, once its version and checksum are right.
pub fn unseal(payload: &[u8]) -> Result<&[u8], &'static str> {
    if payload.len() < 10 {
        return Err(BAD_PAYLOAD);
    }
    let (data, crc) = payload.split_at(payload.len() - 8);
    let version = u16::from_le_bytes([data[data.len() - 2], data[data.len() - 1]]);
    let crc = u64::from_le_bytes(crc.try_into().expect("eight bytes"));
    if version > RDB_VERSION || CRC64.checksum(data) != crc {
        return Err(BAD_PAYLOAD);
    }
    Ok(&data[..data.len() - 2])
}

/// Reads RDB values from a byte slice.
pub struct Reader<'a> {
    input: &'a [u8],
}

/// Why a payload could not be read.
pub const GARBAGE: &str = "ERR payload contains garbage";

impl<'a> Reader<'a> {
    pub fn new(input: &'a [u8]) -> Reader<'a> {
        Reader { input }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.input.is_empty()
    }

    pub fn byte(&mut self) -> Result<u8, &'static str> {
        let (&first, rest) = self.input.split_first().ok_or(GARBAGE)?;
        self.input = rest;
        Ok(first)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if n > self.input.len() {
            return Err(GARBAGE);
        }
        let (taken, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(taken)
    }

    /// A length, or the tag of a specially encoded string (`Err` inside).
    fn length(&mut self) -> Result<Result<u64, u8>, &'static str> {
        let first = self.byte()?;
        Ok(match first >> 6 {
            0 => Ok(u64::from(first & 0x3f)),
            1 => Ok(u64::from(first & 0x3f) << 8 | u64::from(self.byte()?)),
            2 if first == 0x80 => Ok(u64::from(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))),
            2 if first == 0x81 => Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8"))),
            2 => return Err(GARBAGE),
            _ => Err(first & 0x3f),
        })
    }

    fn plain_length(&mut self) -> Result<usize, &'static str> {
        match self.length()? {
            Ok(n) => usize::try_from(n).map_err(|_| GARBAGE),
            Err(_) => Err(GARBAGE),
        }
    }

    /// An RDB string: plain, an integer, or LZF-compressed.
    pub fn string(&mut self) -> Result<Vec<u8>, &'static str> {
        match self.length()? {
            Ok(n) => Ok(self.take(usize::try_from(n).map_err(|_| GARBAGE)?)?.to_vec()),
            Err(0) => Ok((self.byte()? as i8).to_string().into_bytes()),
            Err(1) => Ok(i16::from_le_bytes(self.take(2)?.try_into().expect("2"))
                .to_string()
                .into_bytes()),
            Err(2) => Ok(i32::from_le_bytes(self.take(4)?.try_into().expect("4"))
                .to_string()
                .into_bytes()),
            Err(3) => {
                let compressed = self.plain_length()?;
                let len = self.plain_length()?;
                lzf_decompress(self.take(compressed)?, len)
            }
            Err(_) => Err(GARBAGE),
        }
    }
}

/// LZF decompression (the format of Redis's compressed strings) into exactly
/// `len` bytes.
fn lzf_decompress(input: &[u8], len: usize) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::with_capacity(len.min(1 << 24));
    let mut i = 0;
    while i < input.len() {
        let ctrl = usize::from(input[i]);
        i += 1;
        if ctrl < 32 {
            let run = ctrl + 1;
            let literal = input.get(i..i + run).ok_or(GARBAGE)?;
            out.extend_from_slice(literal);
            i += run;
        } else {
            let mut run = ctrl >> 5;
            if run == 7 {
                run += usize::from(*input.get(i).ok_or(GARBAGE)?);
                i += 1;
            }
            let low = usize::from(*input.get(i).ok_or(GARBAGE)?);
            i += 1;
            let back = ((ctrl & 0x1f) << 8) + low + 1;
            if back > out.len() {
                return Err(GARBAGE);
            }
            let start = out.len() - back;
            for k in 0..run + 2 {
                let byte = out[start + k];
                out.push(byte);
            }
        }
        if out.len() > len {
            return Err(GARBAGE);
        }
    }
    if out.len() != len {
        return Err(GARBAGE);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_function_dump_is_redis_s_bytes() {
        // `redis-cli --no-raw FUNCTION DUMP` of redis-server 7.0 with no library.
        assert_eq!(seal(Vec::new()), b"\n\x00]\x9b\\@\x0f\x7f\xa2\xda".to_vec());
    }

    #[test]
    fn reads_a_compressed_library_dumped_by_redis() {
        // FUNCTION DUMP of redis-server 7.0.15 with one library.
        let payload = b"\xf5\xc3@V@[\x1f#!lua name=mylib\nredis.register_\x0bfunction('my@\x0b\x02', @\x06`\x12\x11keys, args) return`\x0c\x07[1] end)\n\x00\x8dY6\xad\xc6\xe7\x07\xda";
        let body = unseal(payload).expect("version and checksum");
        let mut reader = Reader::new(body);
        assert_eq!(reader.byte(), Ok(OPCODE_FUNCTION2));
        assert_eq!(
            String::from_utf8(reader.string().unwrap()).unwrap(),
            "#!lua name=mylib\nredis.register_function('myfunc', function(keys, args) return args[1] end)"
        );
        assert!(reader.is_empty());
        let mut corrupt = payload.to_vec();
        corrupt[5] ^= 1;
        assert_eq!(unseal(&corrupt), Err(BAD_PAYLOAD));
    }

    #[test]
    fn strings_round_trip_at_every_length_size() {
        for len in [0usize, 63, 64, 16383, 16384, 70000] {
            let text = vec![b'x'; len];
            let mut out = Vec::new();
            write_string(&mut out, &text);
            let mut reader = Reader::new(&out);
            assert_eq!(reader.string().unwrap(), text);
            assert!(reader.is_empty());
        }
    }
}
