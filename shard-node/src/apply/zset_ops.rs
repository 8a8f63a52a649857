//! Sorted-set commands over several keys or a random choice: ZUNION, ZINTER,
//! ZDIFF and their STORE forms, ZINTERCARD, ZRANGESTORE and ZRANDMEMBER, as
//! Redis 7.0 runs them (sets count as sorted sets whose scores are 1; the
//! keys were checked to be in this shard and their count by the proxy).

use std::collections::BTreeMap;

use redraft_common::ops::{parse_strict_i64, Bytes};
use redraft_common::resp::Frame;

use super::collections::{double, error, int, Collection, Reply, Rng, SYNTAX};
use super::zset::entries_frame;
use super::Keyspace;
use crate::storage::Kind;

/// A sorted set's entries: `(member, score)`.
type Entries = Vec<(Vec<u8>, f64)>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum SetOp {
    Union,
    Inter,
    Diff,
}

#[derive(Clone, Copy)]
enum Aggregate {
    Sum,
    Min,
    Max,
}

/// `weight * score`, with Redis's NaN (infinity times zero) read as 0.
fn weighted(weight: f64, score: f64) -> f64 {
    let value = weight * score;
    if value.is_nan() {
        0.0
    } else {
        value
    }
}

fn aggregate(into: &mut f64, value: f64, how: Aggregate) {
    match how {
        Aggregate::Sum => {
            *into += value;
            if into.is_nan() {
                *into = 0.0;
            }
        }
        Aggregate::Min => *into = into.min(value),
        Aggregate::Max => *into = into.max(value),
    }
}

/// Entries in Redis's sorted-set order: by score, then by member.
fn sorted(entries: BTreeMap<Vec<u8>, f64>) -> Vec<(Vec<u8>, f64)> {
    let mut entries: Vec<(Vec<u8>, f64)> = entries.into_iter().collect();
    entries.sort_by(|(m1, s1), (m2, s2)| s1.total_cmp(s2).then_with(|| m1.cmp(m2)));
    entries
}

impl Keyspace<'_> {
    /// The commands of this module; `None` for a name that is not one.
    pub(super) fn zset_ops_command(&mut self, name: &str, a: &[Bytes], seed: u64) -> Option<Frame> {
        let reply = match name {
            "zunion" | "zunionstore" => self.combine_zsets(a, SetOp::Union, name.ends_with("store"), false),
            "zinter" | "zinterstore" => self.combine_zsets(a, SetOp::Inter, name.ends_with("store"), false),
            "zdiff" | "zdiffstore" => self.combine_zsets(a, SetOp::Diff, name.ends_with("store"), false),
            "zintercard" => self.combine_zsets(a, SetOp::Inter, false, true),
            "zrangestore" => self.zrangestore(a),
            "zrandmember" => self.zrandmember(a, seed),
            _ => return None,
        };
        Some(reply.unwrap_or_else(|e| e))
    }

    /// The entries of a sorted set or set at `key` (`None` when absent).
    fn scored_entries(&self, key: &[u8]) -> Reply<Option<Entries>> {
        let skey = self.owned_key(key);
        match self.load(&skey).map(|v| v.kind) {
            None => Ok(None),
            Some(Kind::ZSet) => Ok(Some(self.in_order(&skey, None, false).collect())),
            Some(Kind::Set) => Ok(Some(self.set_members(&skey).into_iter().map(|m| (m, 1.0)).collect())),
            Some(_) => Err(error(super::WRONGTYPE)),
        }
    }

    /// Replaces `key` with a sorted set of `entries` (deleted when empty).
    fn store_zset(&mut self, key: &[u8], entries: &[(Vec<u8>, f64)]) {
        let skey = self.owned_key(key);
        if self.load(&skey).is_some() {
            self.delete_key(skey.clone());
        }
        let mut zset = Collection::new();
        for (member, score) in entries {
            let score = if *score == 0.0 { 0.0 } else { *score };
            self.put_entry(&skey, &mut zset, member, None, score);
        }
        self.save_collection(&skey, Kind::ZSet, zset);
    }

    fn combine_zsets(&mut self, a: &[Bytes], op: SetOp, store: bool, cardinality: bool) -> Reply<Frame> {
        let count_at = if store { 2 } else { 1 };
        let count = parse_strict_i64(&a[count_at]).unwrap_or(0).max(0) as usize;
        let keys = &a[count_at + 1..count_at + 1 + count];
        let mut sources = Vec::with_capacity(count);
        for key in keys {
            sources.push(self.scored_entries(key)?);
        }
        let mut weights = vec![1.0; count];
        let (mut how, mut with_scores, mut limit) = (Aggregate::Sum, false, 0u64);
        let mut j = count_at + 1 + count;
        while j < a.len() {
            let left = a.len() - j;
            match a[j].to_ascii_lowercase().as_slice() {
                b"weights" if op != SetOp::Diff && !cardinality && left > count => {
                    for (i, weight) in weights.iter_mut().enumerate() {
                        *weight = double(&a[j + 1 + i]).ok_or_else(|| error("ERR weight value is not a float"))?;
                    }
                    j += 1 + count;
                }
                b"aggregate" if op != SetOp::Diff && !cardinality && left >= 2 => {
                    how = match a[j + 1].to_ascii_lowercase().as_slice() {
                        b"sum" => Aggregate::Sum,
                        b"min" => Aggregate::Min,
                        b"max" => Aggregate::Max,
                        _ => return Err(error(SYNTAX)),
                    };
                    j += 2;
                }
                b"withscores" if !store && !cardinality => {
                    with_scores = true;
                    j += 1;
                }
                b"limit" if cardinality && left >= 2 => {
                    limit = parse_strict_i64(&a[j + 1])
                        .and_then(|n| u64::try_from(n).ok())
                        .ok_or_else(|| error("ERR LIMIT can't be negative"))?;
                    j += 2;
                }
                _ => return Err(error(SYNTAX)),
            }
        }
        let result = match op {
            SetOp::Union => {
                let mut all = BTreeMap::new();
                for (source, &weight) in sources.iter().zip(&weights) {
                    for (member, score) in source.iter().flatten() {
                        let value = weighted(weight, *score);
                        all.entry(member.clone())
                            .and_modify(|into| aggregate(into, value, how))
                            .or_insert(value);
                    }
                }
                all
            }
            SetOp::Inter => {
                // Smallest first, as Redis walks them; a missing key: nothing.
                let mut inputs: Vec<(Entries, f64)> = if sources.iter().any(Option::is_none) {
                    Vec::new()
                } else {
                    sources.into_iter().flatten().zip(weights.iter().copied()).collect()
                };
                inputs.sort_by_key(|(entries, _)| entries.len());
                let lookups: Vec<BTreeMap<&[u8], f64>> = inputs
                    .iter()
                    .skip(1)
                    .map(|(entries, _)| entries.iter().map(|(m, s)| (&m[..], *s)).collect())
                    .collect();
                let mut all = BTreeMap::new();
                if let Some((first, weight)) = inputs.first() {
                    'members: for (member, score) in first {
                        let mut value = weighted(*weight, *score);
                        for (lookup, (_, weight)) in lookups.iter().zip(&inputs[1..]) {
                            let Some(&other) = lookup.get(&member[..]) else {
                                continue 'members;
                            };
                            aggregate(&mut value, weighted(*weight, other), how);
                        }
                        all.insert(member.clone(), value);
                        if cardinality && limit > 0 && all.len() as u64 >= limit {
                            break;
                        }
                    }
                }
                all
            }
            SetOp::Diff => {
                let mut sources = sources.into_iter();
                let mut all: BTreeMap<Vec<u8>, f64> =
                    sources.next().flatten().unwrap_or_default().into_iter().collect();
                for source in sources.flatten() {
                    for (member, _) in source {
                        all.remove(&member);
                    }
                }
                all
            }
        };
        if cardinality {
            return Ok(Frame::Integer(result.len() as i64));
        }
        let entries = sorted(result);
        if store {
            self.store_zset(&a[1], &entries);
            return Ok(Frame::Integer(entries.len() as i64));
        }
        Ok(entries_frame(entries, with_scores))
    }

    fn zrangestore(&mut self, a: &[Bytes]) -> Reply<Frame> {
        let query = super::zset::parse_range(&a[3..], super::zset::RangeKind::Auto, None, true)?;
        let source = self.owned_key(&a[2]);
        let entries = match self.zset(&source)? {
            Some(zset) => self.select(&source, &zset, &query.range, query.reverse, query.limit),
            None => Vec::new(),
        };
        self.store_zset(&a[1], &entries);
        Ok(Frame::Integer(entries.len() as i64))
    }

    fn zrandmember(&self, a: &[Bytes], seed: u64) -> Reply<Frame> {
        let skey = self.owned_key(&a[1]);
        let mut rng = Rng::new(seed);
        let Some(count) = a.get(2) else {
            return Ok(match self.zset(&skey)? {
                None => Frame::Null,
                Some(zset) => {
                    let pick = rng.below(zset.meta.len) as usize;
                    self.in_order(&skey, None, false)
                        .nth(pick)
                        .map_or(Frame::Null, |(m, _)| Frame::Bulk(m))
                }
            });
        };
        let count = int(count)?;
        if count == i64::MIN {
            return Err(error(
                "ERR value is out of range, value must between -9223372036854775807 and 9223372036854775807",
            ));
        }
        let with_scores = match a.len() {
            3 => false,
            4 if a[3].eq_ignore_ascii_case(b"withscores") => true,
            _ => return Err(error(SYNTAX)),
        };
        let Some(zset) = self.zset(&skey)? else {
            return Ok(Frame::Array(vec![]));
        };
        if count == 0 {
            return Ok(Frame::Array(vec![]));
        }
        let all: Vec<(Vec<u8>, f64)> = self.in_order(&skey, None, false).collect();
        let picks = rng.picks(zset.meta.len, count);
        Ok(entries_frame(
            picks.into_iter().map(|p| all[p].clone()).collect(),
            with_scores,
        ))
    }
}
