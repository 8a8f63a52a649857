//! Hashes: one element per field, stored after the field's hash
//! (`hashed(field) -> value`), the field count in the key's metadata.

use redraft_common::ops::Bytes;
use redraft_common::resp::Frame;

use super::collections::{double, error, int, scan_options, Collection, Reply, Rng, SYNTAX};
use super::{format_float, parse_float, Keyspace};
use crate::storage::{hashed, unhashed, Kind};

impl Keyspace<'_> {
    /// Hash commands; `None` for a name that is not one.
    pub(super) fn hash_command(&mut self, name: &str, a: &[Bytes], seed: u64) -> Option<Frame> {
        let skey = self.owned_key(&a[1]);
        let reply = match name {
            "hset" | "hmset" => self.hset(&skey, name, &a[2..], false),
            "hsetnx" => self.hset(&skey, name, &a[2..], true),
            "hget" => self
                .hash(&skey)
                .map(|h| match h.and_then(|_| self.field(&skey, &a[2])) {
                    Some(v) => Frame::Bulk(v),
                    None => Frame::Null,
                }),
            "hmget" => self.hash(&skey).map(|h| {
                Frame::Array(
                    a[2..]
                        .iter()
                        .map(|f| h.and_then(|_| self.field(&skey, f)).map_or(Frame::Null, Frame::Bulk))
                        .collect(),
                )
            }),
            "hdel" => self.hdel(&skey, &a[2..]),
            "hgetall" => self
                .fields(&skey)
                .map(|all| Frame::Map(all.into_iter().map(|(f, v)| (Frame::Bulk(f), Frame::Bulk(v))).collect())),
            "hkeys" => self
                .fields(&skey)
                .map(|all| Frame::Array(all.into_iter().map(|(f, _)| Frame::Bulk(f)).collect())),
            "hvals" => self
                .fields(&skey)
                .map(|all| Frame::Array(all.into_iter().map(|(_, v)| Frame::Bulk(v)).collect())),
            "hlen" => self
                .hash(&skey)
                .map(|h| Frame::Integer(h.map_or(0, |h| h.meta.len as i64))),
            "hexists" => self
                .hash(&skey)
                .map(|h| Frame::Integer(i64::from(h.is_some() && self.field(&skey, &a[2]).is_some()))),
            "hstrlen" => self
                .hash(&skey)
                .map(|h| Frame::Integer(h.and_then(|_| self.field(&skey, &a[2])).map_or(0, |v| v.len() as i64))),
            "hincrby" => self.hincrby(&skey, &a[2], &a[3]),
            "hincrbyfloat" => self.hincrbyfloat(&skey, &a[2], &a[3]),
            "hrandfield" => self.hrandfield(&skey, &a[2..], seed),
            "hscan" => self.hscan(&skey, &a[2..]),
            _ => return None,
        };
        Some(reply.unwrap_or_else(|e| e))
    }

    fn hash(&self, skey: &[u8]) -> Reply<Option<Collection>> {
        self.collection(skey, Kind::Hash)
    }

    fn field(&self, skey: &[u8], field: &[u8]) -> Option<Vec<u8>> {
        self.element(skey, &hashed(field))
    }

    /// Every field and value, in storage (hash) order.
    fn fields(&self, skey: &[u8]) -> Reply<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(match self.hash(skey)? {
            None => Vec::new(),
            Some(_) => self
                .elements(skey, &[], None, false)
                .map(|(sub, value)| (unhashed(&sub).to_vec(), value))
                .collect(),
        })
    }

    /// Writes `field -> value`, creating the hash; returns whether the field is new.
    fn put_field(&mut self, skey: &[u8], hash: &mut Collection, field: &[u8], value: Vec<u8>) -> bool {
        let sub = hashed(field);
        let new = self.element(skey, &sub).is_none();
        self.put_element(skey, &sub, value);
        hash.meta.len += u64::from(new);
        new
    }

    fn hash_for_write(&mut self, skey: &[u8]) -> Reply<Collection> {
        Ok(self
            .collection_for_write(skey, Kind::Hash)?
            .unwrap_or_else(Collection::new))
    }

    fn hset(&mut self, skey: &[u8], name: &str, pairs: &[Bytes], only_new: bool) -> Reply<Frame> {
        if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
            return Err(error(&format!("ERR wrong number of arguments for '{name}' command")));
        }
        let mut hash = self.hash_for_write(skey)?;
        if only_new && self.field(skey, &pairs[0]).is_some() {
            return Ok(Frame::Integer(0));
        }
        let mut added = 0;
        for pair in pairs.chunks(2) {
            added += i64::from(self.put_field(skey, &mut hash, &pair[0], pair[1].clone()));
        }
        self.save_collection(skey, Kind::Hash, hash);
        Ok(match name {
            "hmset" => Frame::ok(),
            _ => Frame::Integer(added),
        })
    }

    fn hdel(&mut self, skey: &[u8], fields: &[Bytes]) -> Reply<Frame> {
        let Some(mut hash) = self.hash(skey)? else {
            return Ok(Frame::Integer(0));
        };
        let mut removed = 0;
        for field in fields {
            let sub = hashed(field);
            if self.element(skey, &sub).is_some() {
                self.delete_element(skey, &sub);
                hash.meta.len -= 1;
                removed += 1;
            }
        }
        self.save_collection(skey, Kind::Hash, hash);
        Ok(Frame::Integer(removed))
    }

    fn hincrby(&mut self, skey: &[u8], field: &[u8], delta: &[u8]) -> Reply<Frame> {
        let delta = int(delta)?;
        let mut hash = self.hash_for_write(skey)?;
        let current = match self.field(skey, field) {
            None => 0,
            Some(v) => {
                redraft_common::ops::parse_strict_i64(&v).ok_or_else(|| error("ERR hash value is not an integer"))?
            }
        };
        let next = current
            .checked_add(delta)
            .ok_or_else(|| error("ERR increment or decrement would overflow"))?;
        self.put_field(skey, &mut hash, field, next.to_string().into_bytes());
        self.save_collection(skey, Kind::Hash, hash);
        Ok(Frame::Integer(next))
    }

    fn hincrbyfloat(&mut self, skey: &[u8], field: &[u8], delta: &[u8]) -> Reply<Frame> {
        let delta = double(delta)
            .filter(|d| d.is_finite())
            .ok_or_else(|| error("ERR value is not a valid float"))?;
        let mut hash = self.hash_for_write(skey)?;
        let current = match self.field(skey, field) {
            None => 0.0,
            Some(v) => parse_float(&v).ok_or_else(|| error("ERR hash value is not a float"))?,
        };
        let next = current + delta;
        if !next.is_finite() {
            return Err(error("ERR increment would produce NaN or Infinity"));
        }
        let text = format_float(next);
        self.put_field(skey, &mut hash, field, text.clone().into_bytes());
        self.save_collection(skey, Kind::Hash, hash);
        Ok(Frame::Bulk(text.into_bytes()))
    }

    fn hrandfield(&self, skey: &[u8], args: &[Bytes], seed: u64) -> Reply<Frame> {
        let with_values = match args.len() {
            0 | 1 => false,
            2 if args[1].eq_ignore_ascii_case(b"withvalues") => true,
            _ => return Err(error(SYNTAX)),
        };
        let count = args.first().map(|c| int(c)).transpose()?;
        let hash = self.hash(skey)?;
        let mut rng = Rng::new(seed);
        let Some(count) = count else {
            return Ok(match hash {
                None => Frame::Null,
                Some(h) => {
                    let pick = rng.below(h.meta.len);
                    self.fields(skey)?
                        .into_iter()
                        .nth(pick as usize)
                        .map_or(Frame::Null, |(f, _)| Frame::Bulk(f))
                }
            });
        };
        let Some(hash) = hash else {
            return Ok(Frame::Array(vec![]));
        };
        if count == 0 {
            return Ok(Frame::Array(vec![]));
        }
        let all = self.fields(skey)?;
        let picks = rng.picks(hash.meta.len, count);
        let chosen = picks.into_iter().map(|p| all[p].clone());
        Ok(if with_values {
            Frame::Pairs(chosen.map(|(f, v)| (Frame::Bulk(f), Frame::Bulk(v))).collect())
        } else {
            Frame::Array(chosen.map(|(f, _)| Frame::Bulk(f)).collect())
        })
    }

    fn hscan(&self, skey: &[u8], args: &[Bytes]) -> Reply<Frame> {
        let (cursor, options) = scan_options(args)?;
        if self.hash(skey)?.is_none() {
            return Ok(super::collections::scan_reply(0, vec![]));
        }
        Ok(self.scan_elements(skey, &[], cursor, &options, |stored, value, out| {
            out.push(Frame::Bulk(unhashed(stored).to_vec()));
            out.push(Frame::Bulk(value.to_vec()));
        }))
    }
}
