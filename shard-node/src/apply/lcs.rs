//! LCS: the longest common subsequence of two strings, as Redis 7.0 computes
//! and reports it (the same dynamic-programming table walked back from the
//! end, so IDX lists the same matches in the same order).

use redraft_common::ops::{parse_strict_i64, Bytes};
use redraft_common::resp::Frame;

use super::collections::{error, Reply, SYNTAX};
use super::{Keyspace, Kind, MAX_STRING, NOT_INTEGER};

/// A run of matching bytes: inclusive ranges in each string.
struct Match {
    a: (usize, usize),
    b: (usize, usize),
}

/// The table's answer: the subsequence and its matches, last first.
fn longest_common(a: &[u8], b: &[u8]) -> (Vec<u8>, Vec<Match>) {
    let width = b.len() + 1;
    let mut table = vec![0u32; (a.len() + 1) * width];
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            table[i * width + j] = if a[i - 1] == b[j - 1] {
                table[(i - 1) * width + j - 1] + 1
            } else {
                table[(i - 1) * width + j].max(table[i * width + j - 1])
            };
        }
    }
    let mut common = Vec::with_capacity(table[a.len() * width + b.len()] as usize);
    let mut matches = Vec::new();
    let mut current: Option<Match> = None;
    let (mut i, mut j) = (a.len(), b.len());
    while i > 0 && j > 0 {
        let mut close = false;
        if a[i - 1] == b[j - 1] {
            common.push(a[i - 1]);
            match &mut current {
                None => {
                    current = Some(Match {
                        a: (i - 1, i - 1),
                        b: (j - 1, j - 1),
                    })
                }
                Some(run) if run.a.0 == i && run.b.0 == j => {
                    run.a.0 -= 1;
                    run.b.0 -= 1;
                }
                Some(_) => close = true,
            }
            if current.as_ref().is_some_and(|run| run.a.0 == 0 || run.b.0 == 0) {
                close = true;
            }
            i -= 1;
            j -= 1;
        } else {
            if table[(i - 1) * width + j] > table[i * width + j - 1] {
                i -= 1;
            } else {
                j -= 1;
            }
            close = current.is_some();
        }
        if close {
            matches.extend(current.take());
        }
    }
    common.reverse();
    (common, matches)
}

impl Keyspace<'_> {
    /// LCS key1 key2 [LEN] [IDX] [MINMATCHLEN n] [WITHMATCHLEN].
    pub(super) fn lcs(&self, a: &[Bytes]) -> Frame {
        self.lcs_reply(a).unwrap_or_else(|e| e)
    }

    fn lcs_reply(&self, a: &[Bytes]) -> Reply<Frame> {
        let mut strings = Vec::with_capacity(2);
        for key in &a[1..3] {
            match self.load(&self.owned_key(key)) {
                Some(v) if v.kind != Kind::String => {
                    return Err(error("ERR The specified keys must contain string values"))
                }
                value => strings.push(value.map(|v| v.payload).unwrap_or_default()),
            }
        }
        let (mut length_only, mut indexes, mut with_lengths, mut shortest) = (false, false, false, 0usize);
        let mut j = 3;
        while j < a.len() {
            match a[j].to_ascii_lowercase().as_slice() {
                b"idx" => indexes = true,
                b"len" => length_only = true,
                b"withmatchlen" => with_lengths = true,
                b"minmatchlen" if j + 1 < a.len() => {
                    shortest = parse_strict_i64(&a[j + 1]).ok_or_else(|| error(NOT_INTEGER))?.max(0) as usize;
                    j += 1;
                }
                _ => return Err(error(SYNTAX)),
            }
            j += 1;
        }
        if indexes && length_only {
            return Err(error(
                "ERR If you want both the length and indexes, please just use IDX.",
            ));
        }
        let (x, y) = (&strings[0], &strings[1]);
        if (x.len() as u64 + 1) * (y.len() as u64 + 1) * 4 > MAX_STRING {
            return Err(error(
                "ERR Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len",
            ));
        }
        let (common, matches) = longest_common(x, y);
        if length_only {
            return Ok(Frame::Integer(common.len() as i64));
        }
        if !indexes {
            return Ok(Frame::Bulk(common));
        }
        let pair =
            |(start, end): (usize, usize)| Frame::Array(vec![Frame::Integer(start as i64), Frame::Integer(end as i64)]);
        let listed = matches
            .into_iter()
            .filter(|m| m.a.1 - m.a.0 + 1 >= shortest)
            .map(|m| {
                let mut item = vec![pair(m.a), pair(m.b)];
                if with_lengths {
                    item.push(Frame::Integer((m.a.1 - m.a.0 + 1) as i64));
                }
                Frame::Array(item)
            })
            .collect();
        Ok(Frame::Map(vec![
            (Frame::Bulk(b"matches".to_vec()), Frame::Array(listed)),
            (Frame::Bulk(b"len".to_vec()), Frame::Integer(common.len() as i64)),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_redis_example_matches() {
        // The example of Redis's LCS documentation.
        let (common, matches) = longest_common(b"ohmytext", b"mynewtext");
        assert_eq!(common, b"mytext");
        let ranges: Vec<_> = matches.iter().map(|m| (m.a, m.b)).collect();
        assert_eq!(ranges, vec![((4, 7), (5, 8)), ((2, 3), (0, 1))]);
        assert_eq!(longest_common(b"", b"abc").0, b"");
    }
}
