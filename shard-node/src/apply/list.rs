//! Lists: one element per position (`position u64 BE -> value`), the first
//! position and the length in the key's metadata. Pushes and pops at either end
//! and LINDEX/LSET are one element each; inserting or removing in the middle
//! moves the elements after it, as Redis's own lists do.

use redraft_common::ops::Bytes;
use redraft_common::resp::Frame;

use super::collections::{error, int, offsets, positive_count, Collection, Reply, SYNTAX};
use super::Keyspace;
use crate::storage::Kind;

/// Which end of a list.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Left,
    Right,
}

fn end_arg(arg: &[u8]) -> Reply<End> {
    match arg.to_ascii_lowercase().as_slice() {
        b"left" => Ok(End::Left),
        b"right" => Ok(End::Right),
        _ => Err(error(SYNTAX)),
    }
}

impl Keyspace<'_> {
    /// List commands; `None` for a name that is not one.
    pub(super) fn list_command(&mut self, name: &str, a: &[Bytes]) -> Option<Frame> {
        let skey = self.owned_key(&a[1]);
        let reply = match name {
            "lpush" => self.push(&skey, End::Left, &a[2..], false),
            "rpush" => self.push(&skey, End::Right, &a[2..], false),
            "lpushx" => self.push(&skey, End::Left, &a[2..], true),
            "rpushx" => self.push(&skey, End::Right, &a[2..], true),
            "lpop" => self.pop_command(&skey, End::Left, name, &a[2..]),
            "rpop" => self.pop_command(&skey, End::Right, name, &a[2..]),
            "llen" => self
                .list(&skey)
                .map(|l| Frame::Integer(l.map_or(0, |l| l.meta.len as i64))),
            "lrange" => self.lrange(&skey, &a[2], &a[3]),
            "lindex" => self.lindex(&skey, &a[2]),
            "lset" => self.lset(&skey, &a[2], &a[3]),
            "linsert" => self.linsert(&skey, &a[2], &a[3], &a[4]),
            "lrem" => self.lrem(&skey, &a[2], &a[3]),
            "ltrim" => self.ltrim(&skey, &a[2], &a[3]),
            "lpos" => self.lpos(&skey, &a[2], &a[3..]),
            "lmove" => end_arg(&a[3])
                .and_then(|from| Ok((from, end_arg(&a[4])?)))
                .and_then(|(from, to)| self.lmove(&skey, &a[2], from, to)),
            "rpoplpush" => self.lmove(&skey, &a[2], End::Right, End::Left),
            _ => return None,
        };
        Some(reply.unwrap_or_else(|e| e))
    }

    fn list(&self, skey: &[u8]) -> Reply<Option<Collection>> {
        self.collection(skey, Kind::List)
    }

    fn item(&self, skey: &[u8], position: u64) -> Vec<u8> {
        self.element(skey, &position.to_be_bytes())
            .unwrap_or_else(|| panic!("list element missing at position {position}: storage corrupt"))
    }

    fn put_item(&mut self, skey: &[u8], position: u64, value: Vec<u8>) {
        self.put_element(skey, &position.to_be_bytes(), value);
    }

    fn items(&self, skey: &[u8], list: &Collection, range: std::ops::Range<u64>) -> Vec<Vec<u8>> {
        let from = (list.meta.head + range.start).to_be_bytes();
        self.elements(skey, &[], Some(&from), false)
            .take((range.end - range.start) as usize)
            .map(|(_, value)| value)
            .collect()
    }

    /// Replaces the whole list with `values` (after a removal in the middle).
    fn rewrite(&mut self, skey: &[u8], mut list: Collection, values: Vec<Vec<u8>>) {
        for offset in 0..list.meta.len {
            self.delete_element(skey, &(list.meta.head + offset).to_be_bytes());
        }
        list.meta.len = values.len() as u64;
        for (offset, value) in values.into_iter().enumerate() {
            self.put_item(skey, list.meta.head + offset as u64, value);
        }
        self.save_collection(skey, Kind::List, list);
    }

    fn push(&mut self, skey: &[u8], end: End, values: &[Bytes], only_existing: bool) -> Reply<Frame> {
        let list = self.collection_for_write(skey, Kind::List)?;
        if only_existing && list.is_none() {
            return Ok(Frame::Integer(0));
        }
        let mut list = list.unwrap_or_else(Collection::new);
        for value in values {
            self.push_one(skey, &mut list, end, value.clone());
        }
        self.save_collection(skey, Kind::List, list);
        Ok(Frame::Integer(list.meta.len as i64))
    }

    /// Appends `value` at the right end of `list` (stored at `skey`).
    pub(super) fn append_item(&mut self, skey: &[u8], list: &mut Collection, value: Vec<u8>) {
        self.push_one(skey, list, End::Right, value);
    }

    fn push_one(&mut self, skey: &[u8], list: &mut Collection, end: End, value: Vec<u8>) {
        let position = match end {
            End::Left => {
                list.meta.head -= 1;
                list.meta.head
            }
            End::Right => list.meta.tail(),
        };
        self.put_item(skey, position, value);
        list.meta.len += 1;
    }

    fn pop_one(&mut self, skey: &[u8], list: &mut Collection, end: End) -> Vec<u8> {
        let position = match end {
            End::Left => list.meta.head,
            End::Right => list.meta.tail() - 1,
        };
        let value = self.item(skey, position);
        self.delete_element(skey, &position.to_be_bytes());
        if end == End::Left {
            list.meta.head += 1;
        }
        list.meta.len -= 1;
        value
    }

    fn pop_command(&mut self, skey: &[u8], end: End, name: &str, args: &[Bytes]) -> Reply<Frame> {
        if args.len() > 1 {
            return Err(error(&format!("ERR wrong number of arguments for '{name}' command")));
        }
        let count = args.first().map(|c| positive_count(c)).transpose()?;
        let Some(mut list) = self.list(skey)? else {
            return Ok(if count.is_some() { Frame::NullArray } else { Frame::Null });
        };
        let wanted = count.unwrap_or(1).min(list.meta.len);
        let popped: Vec<Frame> = (0..wanted)
            .map(|_| Frame::Bulk(self.pop_one(skey, &mut list, end)))
            .collect();
        self.save_collection(skey, Kind::List, list);
        Ok(match count {
            None => popped.into_iter().next().unwrap_or(Frame::Null),
            Some(_) => Frame::Array(popped),
        })
    }

    fn lrange(&self, skey: &[u8], start: &[u8], stop: &[u8]) -> Reply<Frame> {
        let (start, stop) = (int(start)?, int(stop)?);
        let Some(list) = self.list(skey)? else {
            return Ok(Frame::Array(vec![]));
        };
        let range = offsets(start, stop, list.meta.len);
        Ok(Frame::Array(
            self.items(skey, &list, range).into_iter().map(Frame::Bulk).collect(),
        ))
    }

    /// The offset of a possibly negative index, if inside the list.
    fn offset(index: i64, len: u64) -> Option<u64> {
        let offset = if index < 0 { len as i64 + index } else { index };
        (0..len as i64).contains(&offset).then_some(offset as u64)
    }

    fn lindex(&self, skey: &[u8], index: &[u8]) -> Reply<Frame> {
        let index = int(index)?;
        let Some(list) = self.list(skey)? else {
            return Ok(Frame::Null);
        };
        Ok(match Self::offset(index, list.meta.len) {
            Some(offset) => Frame::Bulk(self.item(skey, list.meta.head + offset)),
            None => Frame::Null,
        })
    }

    fn lset(&mut self, skey: &[u8], index: &[u8], value: &[u8]) -> Reply<Frame> {
        let index = int(index)?;
        let list = self.list(skey)?.ok_or_else(|| error("ERR no such key"))?;
        let offset = Self::offset(index, list.meta.len).ok_or_else(|| error("ERR index out of range"))?;
        self.put_item(skey, list.meta.head + offset, value.to_vec());
        // The key's revision changes with any element (WATCH).
        self.save_collection(skey, Kind::List, list);
        Ok(Frame::ok())
    }

    fn linsert(&mut self, skey: &[u8], place: &[u8], pivot: &[u8], value: &[u8]) -> Reply<Frame> {
        let after = match place.to_ascii_lowercase().as_slice() {
            b"before" => false,
            b"after" => true,
            _ => return Err(error(SYNTAX)),
        };
        let Some(list) = self.list(skey)? else {
            return Ok(Frame::Integer(0));
        };
        let mut values = self.items(skey, &list, 0..list.meta.len);
        let Some(found) = values.iter().position(|v| v == pivot) else {
            return Ok(Frame::Integer(-1));
        };
        values.insert(found + usize::from(after), value.to_vec());
        let len = values.len() as i64;
        self.rewrite(skey, list, values);
        Ok(Frame::Integer(len))
    }

    fn lrem(&mut self, skey: &[u8], count: &[u8], value: &[u8]) -> Reply<Frame> {
        let count = int(count)?;
        let Some(list) = self.list(skey)? else {
            return Ok(Frame::Integer(0));
        };
        let mut values = self.items(skey, &list, 0..list.meta.len);
        let limit = if count == 0 { u64::MAX } else { count.unsigned_abs() };
        let mut removed = 0u64;
        let mut keep = vec![true; values.len()];
        let order: Box<dyn Iterator<Item = usize>> = if count < 0 {
            Box::new((0..values.len()).rev())
        } else {
            Box::new(0..values.len())
        };
        for i in order {
            if removed < limit && values[i] == value {
                keep[i] = false;
                removed += 1;
            }
        }
        if removed > 0 {
            let mut flags = keep.into_iter();
            values.retain(|_| flags.next().unwrap_or(true));
            self.rewrite(skey, list, values);
        }
        Ok(Frame::Integer(removed as i64))
    }

    fn ltrim(&mut self, skey: &[u8], start: &[u8], stop: &[u8]) -> Reply<Frame> {
        let (start, stop) = (int(start)?, int(stop)?);
        let Some(mut list) = self.list(skey)? else {
            return Ok(Frame::ok());
        };
        let keep = offsets(start, stop, list.meta.len);
        for offset in (0..keep.start).chain(keep.end.max(keep.start)..list.meta.len) {
            self.delete_element(skey, &(list.meta.head + offset).to_be_bytes());
        }
        list.meta.head += keep.start;
        list.meta.len = keep.end - keep.start;
        self.save_collection(skey, Kind::List, list);
        Ok(Frame::ok())
    }

    fn lpos(&self, skey: &[u8], element: &[u8], options: &[Bytes]) -> Reply<Frame> {
        let (mut rank, mut count, mut max_len) = (1i64, None, 0u64);
        let mut rest = options;
        while !rest.is_empty() {
            let Some(value) = rest.get(1) else {
                return Err(error(SYNTAX));
            };
            match rest[0].to_ascii_lowercase().as_slice() {
                b"rank" => {
                    rank = int(value)?;
                    if rank == 0 {
                        return Err(error("ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... or use negative to start from the end of the list"));
                    }
                    if rank == i64::MIN {
                        return Err(error("ERR value is out of range, value must between -9223372036854775807 and 9223372036854775807"));
                    }
                }
                b"count" => {
                    let n = int(value)?;
                    if n < 0 {
                        return Err(error("ERR COUNT can't be negative"));
                    }
                    count = Some(n as u64);
                }
                b"maxlen" => {
                    let n = int(value)?;
                    if n < 0 {
                        return Err(error("ERR MAXLEN can't be negative"));
                    }
                    max_len = n as u64;
                }
                _ => return Err(error(SYNTAX)),
            }
            rest = &rest[2..];
        }
        let Some(list) = self.list(skey)? else {
            return Ok(if count.is_some() {
                Frame::Array(vec![])
            } else {
                Frame::Null
            });
        };
        let len = list.meta.len;
        let scanned = if max_len == 0 { len } else { max_len.min(len) };
        let values = self.items(skey, &list, 0..len);
        let order: Box<dyn Iterator<Item = u64>> = if rank > 0 {
            Box::new(0..scanned)
        } else {
            Box::new((len - scanned..len).rev())
        };
        let wanted = match count {
            Some(0) => u64::MAX,
            Some(n) => n,
            None => 1,
        };
        let mut skip = rank.unsigned_abs() - 1;
        let mut found = Vec::new();
        for i in order {
            if values[i as usize] == element {
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                found.push(Frame::Integer(i as i64));
                if found.len() as u64 >= wanted {
                    break;
                }
            }
        }
        Ok(match count {
            Some(_) => Frame::Array(found),
            None => found.into_iter().next().unwrap_or(Frame::Null),
        })
    }

    fn lmove(&mut self, skey: &[u8], destination: &[u8], from: End, to: End) -> Reply<Frame> {
        let Some(mut source) = self.list(skey)? else {
            return Ok(Frame::Null);
        };
        let dkey = self.owned_key(destination);
        self.list(&dkey)?;
        let value = self.pop_one(skey, &mut source, from);
        self.save_collection(skey, Kind::List, source);
        let mut target = self
            .collection_for_write(&dkey, Kind::List)?
            .unwrap_or_else(Collection::new);
        self.push_one(&dkey, &mut target, to, value.clone());
        self.save_collection(&dkey, Kind::List, target);
        Ok(Frame::Bulk(value))
    }
}
