//! Sorted sets: two elements per member, in two families under the key's
//! element prefix:
//! - `0x00 | hashed(member) -> score` (f64 bits, BE): lookups by member and ZSCAN;
//! - `0x01 | ordered(score) | member -> empty`: the order by (score, member) that
//!   ranges, ranks and pops walk.
//!
//! The member count is in the key's metadata. Ranks are found by walking the
//! order (Redis keeps a skip list with spans instead), so ZRANK and rank ranges
//! cost the rank's size, not its logarithm.

use redraft_common::ops::Bytes;
use redraft_common::resp::Frame;

use super::collections::{
    double, error, format_double, int, offsets, positive_count, scan_options, scan_reply, Collection, Reply, SYNTAX,
};
use super::Keyspace;
use crate::storage::{hashed, unhashed, Kind};

pub(super) const BY_MEMBER: u8 = 0;
pub(super) const BY_SCORE: u8 = 1;

/// The score's bytes in an order that sorts like the numbers (-0 as 0).
pub(super) fn ordered(score: f64) -> [u8; 8] {
    let score = if score == 0.0 { 0.0 } else { score };
    let bits = score.to_bits();
    let bits = if bits >> 63 == 1 { !bits } else { bits | 1 << 63 };
    bits.to_be_bytes()
}

fn from_ordered(bytes: &[u8]) -> f64 {
    let bits = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
    f64::from_bits(if bits >> 63 == 1 { bits & !(1 << 63) } else { !bits })
}

fn member_sub(member: &[u8]) -> Vec<u8> {
    let mut sub = vec![BY_MEMBER];
    sub.extend_from_slice(&hashed(member));
    sub
}

fn score_sub(score: f64, member: &[u8]) -> Vec<u8> {
    let mut sub = vec![BY_SCORE];
    sub.extend_from_slice(&ordered(score));
    sub.extend_from_slice(member);
    sub
}

/// One end of a score range.
#[derive(Clone, Copy)]
pub(super) struct ScoreBound {
    value: f64,
    exclusive: bool,
}

fn score_bound(arg: &[u8]) -> Option<ScoreBound> {
    let (exclusive, text) = match arg.strip_prefix(b"(") {
        Some(rest) => (true, rest),
        None => (false, arg),
    };
    Some(ScoreBound {
        value: double(text)?,
        exclusive,
    })
}

/// One end of a lexicographic range (`-` and `+` are the extremes wherever
/// they appear, as in Redis).
#[derive(Clone)]
pub(super) enum LexBound {
    Lowest,
    Highest,
    Inclusive(Vec<u8>),
    Exclusive(Vec<u8>),
}

fn lex_bound(arg: &[u8]) -> Option<LexBound> {
    match arg {
        b"-" => Some(LexBound::Lowest),
        b"+" => Some(LexBound::Highest),
        [b'[', rest @ ..] => Some(LexBound::Inclusive(rest.to_vec())),
        [b'(', rest @ ..] => Some(LexBound::Exclusive(rest.to_vec())),
        _ => None,
    }
}

/// A score range, or Redis's error for a bad bound.
fn score_range(min: &[u8], max: &[u8]) -> Reply<Range> {
    match (score_bound(min), score_bound(max)) {
        (Some(min), Some(max)) => Ok(Range::Score(min, max)),
        _ => Err(error("ERR min or max is not a float")),
    }
}

/// A lexicographic range, or Redis's error for a bad bound.
fn lex_range(min: &[u8], max: &[u8]) -> Reply<Range> {
    match (lex_bound(min), lex_bound(max)) {
        (Some(min), Some(max)) => Ok(Range::Lex(min, max)),
        _ => Err(error("ERR min or max not valid string range item")),
    }
}

/// What a range selects.
pub(super) enum Range {
    Rank(i64, i64),
    Score(ScoreBound, ScoreBound),
    Lex(LexBound, LexBound),
}

fn above_min(score: f64, min: ScoreBound) -> bool {
    if min.exclusive {
        score > min.value
    } else {
        score >= min.value
    }
}

fn below_max(score: f64, max: ScoreBound) -> bool {
    if max.exclusive {
        score < max.value
    } else {
        score <= max.value
    }
}

fn lex_above(member: &[u8], min: &LexBound) -> bool {
    match min {
        LexBound::Lowest => true,
        LexBound::Highest => false,
        LexBound::Inclusive(v) => member >= v.as_slice(),
        LexBound::Exclusive(v) => member > v.as_slice(),
    }
}

fn lex_below(member: &[u8], max: &LexBound) -> bool {
    match max {
        LexBound::Lowest => false,
        LexBound::Highest => true,
        LexBound::Inclusive(v) => member <= v.as_slice(),
        LexBound::Exclusive(v) => member < v.as_slice(),
    }
}

/// A parsed ZRANGE-family request.
pub(super) struct RangeQuery {
    pub range: Range,
    pub reverse: bool,
    /// LIMIT offset count (count < 0: no limit).
    pub limit: Option<(i64, i64)>,
    pub with_scores: bool,
}

#[derive(Clone, Copy, PartialEq)]
pub(super) enum RangeKind {
    Auto,
    Rank,
    Score,
    Lex,
}

/// Parses the ZRANGE family as Redis 7.0's `zrangeGenericCommand` does: `args`
/// start at the first bound; `kind` and `reverse` are fixed by the command name
/// (`None`: ZRANGE's options decide); `store` (ZRANGESTORE) refuses WITHSCORES.
pub(super) fn parse_range(
    args: &[Bytes],
    mut kind: RangeKind,
    mut reverse: Option<bool>,
    store: bool,
) -> Reply<RangeQuery> {
    let (mut with_scores, mut limit) = (false, None);
    let mut j = 2;
    while j < args.len() {
        let option = args[j].to_ascii_lowercase();
        let left = args.len() - j - 1;
        match option.as_slice() {
            b"withscores" if !store => with_scores = true,
            b"limit" if left >= 2 => {
                limit = Some((int(&args[j + 1])?, int(&args[j + 2])?));
                j += 2;
            }
            b"rev" if reverse.is_none() => reverse = Some(true),
            b"bylex" if kind == RangeKind::Auto => kind = RangeKind::Lex,
            b"byscore" if kind == RangeKind::Auto => kind = RangeKind::Score,
            _ => return Err(error(SYNTAX)),
        }
        j += 1;
    }
    let reverse = reverse.unwrap_or(false);
    if kind == RangeKind::Auto {
        kind = RangeKind::Rank;
    }
    if limit.is_some_and(|(_, count)| count != -1) && kind == RangeKind::Rank {
        return Err(error(
            "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX",
        ));
    }
    if with_scores && kind == RangeKind::Lex {
        return Err(error(
            "ERR syntax error, WITHSCORES not supported in combination with BYLEX",
        ));
    }
    let (low, high) = if reverse && kind != RangeKind::Rank {
        (&args[1], &args[0])
    } else {
        (&args[0], &args[1])
    };
    let range = match kind {
        RangeKind::Score => score_range(low, high)?,
        RangeKind::Lex => lex_range(low, high)?,
        _ => Range::Rank(int(low)?, int(high)?),
    };
    Ok(RangeQuery {
        range,
        reverse,
        limit,
        with_scores,
    })
}

impl Keyspace<'_> {
    /// Sorted-set commands; `None` for a name that is not one.
    pub(super) fn zset_command(&mut self, name: &str, a: &[Bytes]) -> Option<Frame> {
        let skey = self.owned_key(&a[1]);
        let reply = match name {
            "zadd" => self.zadd(&skey, &a[2..], false),
            "zincrby" => self.zadd(&skey, &[b"incr".to_vec(), a[2].clone(), a[3].clone()], true),
            "zrem" => self.zrem(&skey, &a[2..]),
            "zscore" => self
                .zset(&skey)
                .map(|z| match z.and_then(|_| self.score(&skey, &a[2])) {
                    Some(s) => Frame::Double(format_double(s)),
                    None => Frame::Null,
                }),
            "zmscore" => self.zset(&skey).map(|z| {
                Frame::Array(
                    a[2..]
                        .iter()
                        .map(|m| match z.and_then(|_| self.score(&skey, m)) {
                            Some(s) => Frame::Double(format_double(s)),
                            None => Frame::Null,
                        })
                        .collect(),
                )
            }),
            "zcard" => self
                .zset(&skey)
                .map(|z| Frame::Integer(z.map_or(0, |z| z.meta.len as i64))),
            "zcount" => score_range(&a[2], &a[3]).and_then(|r| self.count_range(&skey, r)),
            "zlexcount" => lex_range(&a[2], &a[3]).and_then(|r| self.count_range(&skey, r)),
            "zrange" => self.zrange(&skey, &a[2..], RangeKind::Auto, None),
            "zrangebyscore" => self.zrange(&skey, &a[2..], RangeKind::Score, Some(false)),
            "zrevrangebyscore" => self.zrange(&skey, &a[2..], RangeKind::Score, Some(true)),
            "zrangebylex" => self.zrange(&skey, &a[2..], RangeKind::Lex, Some(false)),
            "zrevrangebylex" => self.zrange(&skey, &a[2..], RangeKind::Lex, Some(true)),
            "zrevrange" => self.zrange(&skey, &a[2..], RangeKind::Rank, Some(true)),
            "zrank" | "zrevrank" => self.zrank(&skey, &a[2], name == "zrevrank"),
            "zpopmin" | "zpopmax" => self.zpop(&skey, &a[2..], name == "zpopmax"),
            "zremrangebyscore" => score_range(&a[2], &a[3]).and_then(|r| self.remove_range(&skey, r)),
            "zremrangebylex" => lex_range(&a[2], &a[3]).and_then(|r| self.remove_range(&skey, r)),
            "zremrangebyrank" => int(&a[2])
                .and_then(|start| Ok((start, int(&a[3])?)))
                .and_then(|(start, stop)| self.remove_range(&skey, Range::Rank(start, stop))),
            "zscan" => self.zscan(&skey, &a[2..]),
            _ => return None,
        };
        Some(reply.unwrap_or_else(|e| e))
    }

    pub(super) fn zset(&self, skey: &[u8]) -> Reply<Option<Collection>> {
        self.collection(skey, Kind::ZSet)
    }

    pub(super) fn score(&self, skey: &[u8], member: &[u8]) -> Option<f64> {
        self.element(skey, &member_sub(member))
            .map(|bytes| f64::from_be_bytes(bytes[..8].try_into().expect("8-byte score")))
    }

    pub(super) fn put_entry(
        &mut self,
        skey: &[u8],
        zset: &mut Collection,
        member: &[u8],
        old: Option<f64>,
        score: f64,
    ) {
        match old {
            Some(old) => self.delete_element(skey, &score_sub(old, member)),
            None => zset.meta.len += 1,
        }
        self.put_element(skey, &member_sub(member), score.to_be_bytes().to_vec());
        self.put_element(skey, &score_sub(score, member), Vec::new());
    }

    fn delete_entry(&mut self, skey: &[u8], zset: &mut Collection, member: &[u8], score: f64) {
        self.delete_element(skey, &member_sub(member));
        self.delete_element(skey, &score_sub(score, member));
        zset.meta.len -= 1;
    }

    /// `(member, score)` in score order, from the start (or the end).
    pub(super) fn in_order(
        &self,
        skey: &[u8],
        from: Option<&[u8]>,
        reverse: bool,
    ) -> impl Iterator<Item = (Vec<u8>, f64)> + '_ {
        self.elements(skey, &[BY_SCORE], from, reverse)
            .map(|(sub, _)| (sub[9..].to_vec(), from_ordered(&sub[1..9])))
    }

    /// The entries a range selects, in the query's direction, after LIMIT.
    pub(super) fn select(
        &self,
        skey: &[u8],
        zset: &Collection,
        range: &Range,
        reverse: bool,
        limit: Option<(i64, i64)>,
    ) -> Vec<(Vec<u8>, f64)> {
        let (offset, count) = limit.unwrap_or((0, -1));
        if offset < 0 {
            return Vec::new();
        }
        let take = if count < 0 { usize::MAX } else { count as usize };
        match range {
            Range::Rank(start, stop) => {
                let wanted = offsets(*start, *stop, zset.meta.len);
                self.in_order(skey, None, reverse)
                    .skip(wanted.start as usize)
                    .take((wanted.end - wanted.start) as usize)
                    .collect()
            }
            Range::Score(min, max) => {
                let (seek, min, max) = (if reverse { max.value } else { min.value }, *min, *max);
                let mut from = vec![BY_SCORE];
                from.extend_from_slice(&ordered(seek));
                self.in_order(skey, Some(&from), reverse)
                    .skip_while(move |(_, s)| {
                        if reverse {
                            !below_max(*s, max)
                        } else {
                            !above_min(*s, min)
                        }
                    })
                    .take_while(move |(_, s)| {
                        if reverse {
                            above_min(*s, min)
                        } else {
                            below_max(*s, max)
                        }
                    })
                    .skip(offset as usize)
                    .take(take)
                    .collect()
            }
            Range::Lex(min, max) => self
                .in_order(skey, None, reverse)
                .filter(|(m, _)| lex_above(m, min) && lex_below(m, max))
                .skip(offset as usize)
                .take(take)
                .collect(),
        }
    }

    fn zrange(&self, skey: &[u8], args: &[Bytes], kind: RangeKind, reverse: Option<bool>) -> Reply<Frame> {
        let query = parse_range(args, kind, reverse, false)?;
        let Some(zset) = self.zset(skey)? else {
            return Ok(Frame::Array(vec![]));
        };
        let entries = self.select(skey, &zset, &query.range, query.reverse, query.limit);
        Ok(entries_frame(entries, query.with_scores))
    }

    fn count_range(&self, skey: &[u8], range: Range) -> Reply<Frame> {
        let Some(zset) = self.zset(skey)? else {
            return Ok(Frame::Integer(0));
        };
        Ok(Frame::Integer(
            self.select(skey, &zset, &range, false, None).len() as i64
        ))
    }

    fn remove_range(&mut self, skey: &[u8], range: Range) -> Reply<Frame> {
        let Some(mut zset) = self.zset(skey)? else {
            return Ok(Frame::Integer(0));
        };
        let doomed = self.select(skey, &zset, &range, false, None);
        for (member, score) in &doomed {
            self.delete_entry(skey, &mut zset, member, *score);
        }
        self.save_collection(skey, Kind::ZSet, zset);
        Ok(Frame::Integer(doomed.len() as i64))
    }

    pub(super) fn zadd(&mut self, skey: &[u8], args: &[Bytes], is_zincrby: bool) -> Reply<Frame> {
        let (mut nx, mut xx, mut gt, mut lt, mut ch, mut incr) = (false, false, false, false, false, false);
        let mut i = 0;
        while i < args.len() {
            match args[i].to_ascii_lowercase().as_slice() {
                b"nx" => nx = true,
                b"xx" => xx = true,
                b"gt" => gt = true,
                b"lt" => lt = true,
                b"ch" => ch = true,
                b"incr" => incr = true,
                _ => break,
            }
            i += 1;
        }
        let pairs = &args[i..];
        if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
            return Err(error(SYNTAX));
        }
        if nx && xx {
            return Err(error("ERR XX and NX options at the same time are not compatible"));
        }
        if (nx && (gt || lt)) || (gt && lt) {
            return Err(error(
                "ERR GT, LT, and/or NX options at the same time are not compatible",
            ));
        }
        if incr && pairs.len() > 2 {
            return Err(error("ERR INCR option supports a single increment-element pair"));
        }
        let scores = pairs
            .chunks(2)
            .map(|p| double(&p[0]).ok_or_else(|| error("ERR value is not a valid float")))
            .collect::<Reply<Vec<f64>>>()?;
        let existing = self.collection_for_write(skey, Kind::ZSet)?;
        let no_reply = || if incr { Frame::Null } else { Frame::Integer(0) };
        if existing.is_none() && xx {
            return Ok(no_reply());
        }
        let mut zset = existing.unwrap_or_else(Collection::new);
        let (mut added, mut updated, mut last) = (0, 0, None);
        for (pair, &score) in pairs.chunks(2).zip(&scores) {
            let member = &pair[1];
            let old = self.score(skey, member);
            let new = match old {
                Some(_) if nx => continue,
                None if xx => continue,
                Some(current) if incr => current + score,
                _ => score,
            };
            // Redis stores small sorted sets' scores as text, where -0 reads back as 0.
            let new = if new == 0.0 { 0.0 } else { new };
            if new.is_nan() {
                self.save_collection(skey, Kind::ZSet, zset);
                return Err(error("ERR resulting score is not a number (NaN)"));
            }
            if let Some(current) = old {
                if (gt && new <= current) || (lt && new >= current) {
                    continue;
                }
                if new != current {
                    self.put_entry(skey, &mut zset, member, old, new);
                    updated += 1;
                }
            } else {
                self.put_entry(skey, &mut zset, member, None, new);
                added += 1;
            }
            last = Some(new);
        }
        self.save_collection(skey, Kind::ZSet, zset);
        if added + updated > 0 || (incr && last.is_some()) {
            let event = if incr || is_zincrby { "zincr" } else { "zadd" };
            self.notify_stored(b'z', event, skey);
        }
        Ok(if incr || is_zincrby {
            last.map_or(Frame::Null, |s| Frame::Double(format_double(s)))
        } else {
            Frame::Integer(if ch { added + updated } else { added })
        })
    }

    fn zrem(&mut self, skey: &[u8], members: &[Bytes]) -> Reply<Frame> {
        let Some(mut zset) = self.zset(skey)? else {
            return Ok(Frame::Integer(0));
        };
        let mut removed = 0;
        for member in members {
            if let Some(score) = self.score(skey, member) {
                self.delete_entry(skey, &mut zset, member, score);
                removed += 1;
            }
        }
        self.save_collection(skey, Kind::ZSet, zset);
        Ok(Frame::Integer(removed))
    }

    fn zrank(&self, skey: &[u8], member: &[u8], reverse: bool) -> Reply<Frame> {
        let Some(_) = self.zset(skey)? else {
            return Ok(Frame::Null);
        };
        Ok(match self.score(skey, member) {
            None => Frame::Null,
            Some(_) => self
                .in_order(skey, None, reverse)
                .position(|(m, _)| m == member)
                .map_or(Frame::Null, |rank| Frame::Integer(rank as i64)),
        })
    }

    fn zpop(&mut self, skey: &[u8], args: &[Bytes], max: bool) -> Reply<Frame> {
        if args.len() > 1 {
            return Err(error(SYNTAX));
        }
        let count = args.first().map(|c| positive_count(c)).transpose()?;
        let Some(mut zset) = self.zset(skey)? else {
            return Ok(Frame::Array(vec![]));
        };
        let popped: Vec<(Vec<u8>, f64)> = self
            .in_order(skey, None, max)
            .take(count.unwrap_or(1) as usize)
            .collect();
        for (member, score) in &popped {
            self.delete_entry(skey, &mut zset, member, *score);
        }
        self.save_collection(skey, Kind::ZSet, zset);
        Ok(match count {
            Some(_) => entries_frame(popped, true),
            None => Frame::Array(
                popped
                    .into_iter()
                    .flat_map(|(m, s)| [Frame::Bulk(m), Frame::Double(format_double(s))])
                    .collect(),
            ),
        })
    }

    fn zscan(&self, skey: &[u8], args: &[Bytes]) -> Reply<Frame> {
        let (cursor, options) = scan_options(args)?;
        if self.zset(skey)?.is_none() {
            return Ok(scan_reply(0, vec![]));
        }
        Ok(
            self.scan_elements(skey, &[BY_MEMBER], cursor, &options, |stored, value, out| {
                let score = f64::from_be_bytes(value[..8].try_into().expect("8-byte score"));
                out.push(Frame::Bulk(unhashed(stored).to_vec()));
                out.push(Frame::Bulk(format_double(score).into_bytes()));
            }),
        )
    }
}

pub(super) fn entries_frame(entries: Vec<(Vec<u8>, f64)>, with_scores: bool) -> Frame {
    if with_scores {
        Frame::Pairs(
            entries
                .into_iter()
                .map(|(m, s)| (Frame::Bulk(m), Frame::Double(format_double(s))))
                .collect(),
        )
    } else {
        Frame::Array(entries.into_iter().map(|(m, _)| Frame::Bulk(m)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_scores_sort_like_numbers() {
        let scores = [
            f64::NEG_INFINITY,
            -1e300,
            -2.5,
            -1.0,
            0.0,
            1e-300,
            1.0,
            2.5,
            1e300,
            f64::INFINITY,
        ];
        for pair in scores.windows(2) {
            assert!(ordered(pair[0]) < ordered(pair[1]), "{} < {}", pair[0], pair[1]);
        }
        for s in scores {
            assert_eq!(from_ordered(&ordered(s)), s);
        }
        assert_eq!(ordered(-0.0), ordered(0.0));
    }
}
