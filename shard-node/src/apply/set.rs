//! Sets: one element per member, stored after the member's hash
//! (`hashed(member) -> empty`), the member count in the key's metadata.

use std::collections::BTreeSet;

use redraft_common::ops::Bytes;
use redraft_common::resp::Frame;

use super::collections::{error, int, positive_count, scan_options, scan_reply, Collection, Reply, Rng, SYNTAX};
use super::Keyspace;
use crate::storage::{hashed, unhashed, Kind};

/// Members in their stored (hashed) form: iteration order is storage order.
type Members = BTreeSet<Vec<u8>>;

impl Keyspace<'_> {
    /// Set commands; `None` for a name that is not one.
    pub(super) fn set_command(&mut self, name: &str, a: &[Bytes], seed: u64) -> Option<Frame> {
        let skey = self.owned_key(&a[1]);
        let reply = match name {
            "sadd" => self.sadd(&skey, &a[2..]),
            "srem" => self.srem(&skey, &a[2..]),
            "smembers" => self.members(&skey).map(|m| members_frame(&m)),
            "sismember" => self.sismember(&skey, &a[2]).map(|b| Frame::Integer(i64::from(b))),
            "smismember" => self.set_at(&skey).map(|s| {
                Frame::Array(
                    a[2..]
                        .iter()
                        .map(|m| Frame::Integer(i64::from(s.is_some() && self.element(&skey, &hashed(m)).is_some())))
                        .collect(),
                )
            }),
            "scard" => self
                .set_at(&skey)
                .map(|s| Frame::Integer(s.map_or(0, |s| s.meta.len as i64))),
            "spop" => self.spop(&skey, &a[2..], seed),
            "srandmember" => self.srandmember(&skey, &a[2..], seed),
            "smove" => self.smove(&a[1], &a[2], &a[3]),
            "sinter" | "sunion" | "sdiff" => self.combine(name, &a[1..]).map(|m| members_frame(&m)),
            "sinterstore" | "sunionstore" | "sdiffstore" => {
                let op = name.trim_end_matches("store");
                self.combine(op, &a[2..]).map(|members| {
                    let len = members.len() as i64;
                    self.delete_key(skey.clone());
                    self.store_members(&skey, &members);
                    Frame::Integer(len)
                })
            }
            "sscan" => self.sscan(&skey, &a[2..]),
            "sintercard" => self.sintercard(a),
            _ => return None,
        };
        Some(reply.unwrap_or_else(|e| e))
    }

    fn set_at(&self, skey: &[u8]) -> Reply<Option<Collection>> {
        self.collection(skey, Kind::Set)
    }

    fn sismember(&self, skey: &[u8], member: &[u8]) -> Reply<bool> {
        Ok(self.set_at(skey)?.is_some() && self.element(skey, &hashed(member)).is_some())
    }

    fn members(&self, skey: &[u8]) -> Reply<Members> {
        Ok(match self.set_at(skey)? {
            None => Members::new(),
            Some(_) => self.elements(skey, &[], None, false).map(|(sub, _)| sub).collect(),
        })
    }

    /// The members of the set at `skey` (checked to be one), in storage order.
    pub(super) fn set_members(&self, skey: &[u8]) -> Vec<Vec<u8>> {
        self.elements(skey, &[], None, false)
            .map(|(sub, _)| unhashed(&sub).to_vec())
            .collect()
    }

    /// Adds stored members to the set at `skey` (created when absent); returns how
    /// many were new.
    fn add_members<'m>(&mut self, skey: &[u8], members: impl Iterator<Item = &'m Vec<u8>>) -> Reply<i64> {
        let mut set = self
            .collection_for_write(skey, Kind::Set)?
            .unwrap_or_else(Collection::new);
        let mut added = 0;
        for sub in members {
            if self.element(skey, sub).is_none() {
                self.put_element(skey, sub, Vec::new());
                set.meta.len += 1;
                added += 1;
            }
        }
        self.save_collection(skey, Kind::Set, set);
        Ok(added)
    }

    fn store_members(&mut self, skey: &[u8], members: &Members) {
        self.add_members(skey, members.iter())
            .expect("the destination was just deleted");
    }

    fn sadd(&mut self, skey: &[u8], members: &[Bytes]) -> Reply<Frame> {
        let stored: Vec<Vec<u8>> = members.iter().map(|m| hashed(m)).collect();
        self.add_members(skey, stored.iter()).map(Frame::Integer)
    }

    /// Removes stored members; returns how many were there.
    fn remove_members<'m>(&mut self, skey: &[u8], members: impl Iterator<Item = &'m Vec<u8>>) -> Reply<i64> {
        let Some(mut set) = self.set_at(skey)? else {
            return Ok(0);
        };
        let mut removed = 0;
        for sub in members {
            if self.element(skey, sub).is_some() {
                self.delete_element(skey, sub);
                set.meta.len -= 1;
                removed += 1;
            }
        }
        self.save_collection(skey, Kind::Set, set);
        Ok(removed)
    }

    fn srem(&mut self, skey: &[u8], members: &[Bytes]) -> Reply<Frame> {
        let stored: Vec<Vec<u8>> = members.iter().map(|m| hashed(m)).collect();
        self.remove_members(skey, stored.iter()).map(Frame::Integer)
    }

    /// Members at the given positions of storage order.
    fn members_at(&self, skey: &[u8], positions: &[u64]) -> Vec<Vec<u8>> {
        let all: Vec<Vec<u8>> = self.elements(skey, &[], None, false).map(|(sub, _)| sub).collect();
        positions.iter().map(|&p| all[p as usize].clone()).collect()
    }

    fn spop(&mut self, skey: &[u8], args: &[Bytes], seed: u64) -> Reply<Frame> {
        if args.len() > 1 {
            return Err(error(super::collections::SYNTAX));
        }
        let count = args.first().map(|c| positive_count(c)).transpose()?;
        let set = self.set_at(skey)?;
        let mut rng = Rng::new(seed);
        let (Some(set), wanted) = (set, count.unwrap_or(1)) else {
            return Ok(if count.is_some() {
                Frame::Set(vec![])
            } else {
                Frame::Null
            });
        };
        let positions = rng.distinct(set.meta.len, wanted);
        let chosen = self.members_at(skey, &positions);
        self.remove_members(skey, chosen.iter())?;
        let frames: Vec<Frame> = chosen.iter().map(|m| Frame::Bulk(unhashed(m).to_vec())).collect();
        Ok(match count {
            None => frames.into_iter().next().unwrap_or(Frame::Null),
            Some(_) => Frame::Set(frames),
        })
    }

    fn srandmember(&self, skey: &[u8], args: &[Bytes], seed: u64) -> Reply<Frame> {
        if args.len() > 1 {
            return Err(error(super::collections::SYNTAX));
        }
        let count = args.first().map(|c| int(c)).transpose()?;
        let set = self.set_at(skey)?;
        let mut rng = Rng::new(seed);
        let Some(set) = set else {
            return Ok(if count.is_some() {
                Frame::Array(vec![])
            } else {
                Frame::Null
            });
        };
        let positions: Vec<u64> = match count {
            None => vec![rng.below(set.meta.len)],
            Some(n) if n >= 0 => rng.distinct(set.meta.len, n as u64),
            Some(n) => (0..n.unsigned_abs()).map(|_| rng.below(set.meta.len)).collect(),
        };
        let frames: Vec<Frame> = self
            .members_at(skey, &positions)
            .into_iter()
            .map(|m| Frame::Bulk(unhashed(&m).to_vec()))
            .collect();
        Ok(match count {
            None => frames.into_iter().next().unwrap_or(Frame::Null),
            Some(_) => Frame::Array(frames),
        })
    }

    fn smove(&mut self, source: &[u8], destination: &[u8], member: &[u8]) -> Reply<Frame> {
        let dkey = self.owned_key(destination);
        let skey = self.owned_key(source);
        let Some(_) = self.set_at(&skey)? else {
            return Ok(Frame::Integer(0));
        };
        self.set_at(&dkey)?;
        let sub = hashed(member);
        if self.element(&skey, &sub).is_none() {
            return Ok(Frame::Integer(0));
        }
        if skey != dkey {
            self.remove_members(&skey, std::iter::once(&sub))?;
            self.add_members(&dkey, std::iter::once(&sub))?;
        }
        Ok(Frame::Integer(1))
    }

    /// SINTER, SUNION or SDIFF of the sets at `keys` (missing keys are empty sets).
    fn combine(&self, op: &str, keys: &[Bytes]) -> Reply<Members> {
        let mut sets = Vec::with_capacity(keys.len());
        for key in keys {
            let skey = self.owned_key(key);
            // Redis stops at the first missing key of an intersection.
            if op == "sinter" && self.set_at(&skey)?.is_none() {
                return Ok(Members::new());
            }
            sets.push(self.members(&skey)?);
        }
        let mut sets = sets.into_iter();
        let first = sets.next().unwrap_or_default();
        Ok(sets.fold(first, |acc, next| match op {
            "sinter" => acc.intersection(&next).cloned().collect(),
            "sunion" => acc.union(&next).cloned().collect(),
            _ => acc.difference(&next).cloned().collect(),
        }))
    }

    /// SINTERCARD numkeys key... [LIMIT n] (the count checked by the proxy):
    /// options first, then the keys, as Redis checks them.
    fn sintercard(&self, a: &[Bytes]) -> Reply<Frame> {
        let count = redraft_common::ops::parse_strict_i64(&a[1]).unwrap_or(0).max(0) as usize;
        let mut limit = 0u64;
        let mut j = 2 + count;
        while j < a.len() {
            if a[j].eq_ignore_ascii_case(b"limit") && j + 1 < a.len() {
                limit = redraft_common::ops::parse_strict_i64(&a[j + 1])
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(|| error("ERR LIMIT can't be negative"))?;
                j += 2;
            } else {
                return Err(error(SYNTAX));
            }
        }
        let common = self.combine("sinter", &a[2..2 + count])?.len() as u64;
        Ok(Frame::Integer(if limit > 0 { common.min(limit) } else { common } as i64))
    }

    fn sscan(&self, skey: &[u8], args: &[Bytes]) -> Reply<Frame> {
        let (cursor, options) = scan_options(args)?;
        if self.set_at(skey)?.is_none() {
            return Ok(scan_reply(0, vec![]));
        }
        Ok(self.scan_elements(skey, &[], cursor, &options, |stored, _, out| {
            out.push(Frame::Bulk(unhashed(stored).to_vec()));
        }))
    }
}

fn members_frame(members: &Members) -> Frame {
    Frame::Set(members.iter().map(|m| Frame::Bulk(unhashed(m).to_vec())).collect())
}
