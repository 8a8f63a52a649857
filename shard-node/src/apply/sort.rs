//! SORT and SORT_RO over lists, sets and sorted sets, as Redis 7.0 runs them:
//! numeric or ALPHA order, BY and GET patterns (`*` replaced by the element,
//! `->field` for a hash field, `#` for the element itself), LIMIT, and STORE
//! into a list.
//!
//! The keys BY and GET patterns name must live in the sorted key's shard
//! (use a hash tag); a pattern that names a key of another shard gets an
//! error rather than a silent nil. ALPHA compares bytes (Redis's `strcoll`
//! in the C locale).

use std::cmp::Ordering;

use redraft_common::ops::Bytes;
use redraft_common::resp::Frame;

use super::collections::{error, int, Collection, Reply, SYNTAX};
use super::{Keyspace, Kind};

const ELSEWHERE: &str = "ERR SORT's BY and GET patterns must name keys in the sorted key's shard (use a hash tag)";

/// One element being sorted: itself, its numeric weight, its ALPHA BY value.
struct Item {
    element: Vec<u8>,
    score: f64,
    by: Option<Vec<u8>>,
}

/// What `pattern` names for `element`: the pattern with its first `*`
/// replaced, and the hash field after `->` if any; `None` without a `*`.
fn substitute(pattern: &[u8], element: &[u8]) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
    let star = pattern.iter().position(|&b| b == b'*')?;
    let rest = &pattern[star + 1..];
    let (postfix, field) = match rest.windows(2).position(|w| w == b"->") {
        Some(arrow) if arrow + 2 < rest.len() => (&rest[..arrow], Some(rest[arrow + 2..].to_vec())),
        _ => (rest, None),
    };
    let mut key = pattern[..star].to_vec();
    key.extend_from_slice(element);
    key.extend_from_slice(postfix);
    Some((key, field))
}

/// A weight as Redis's `strtod` reads it: leading spaces allowed, nothing
/// after the number, no NaN or overflow; `None` when it is not one.
fn weight(text: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(text).ok()?.trim_start();
    if text.is_empty() {
        return Some(0.0);
    }
    let value: f64 = text.parse().ok()?;
    let named_infinity = text.to_ascii_lowercase().contains("inf");
    (!value.is_nan() && (value.is_finite() || named_infinity)).then_some(value)
}

impl Keyspace<'_> {
    /// The value `pattern` names for `element` (SORT's `lookupKeyByPattern`):
    /// a string, or a hash field; `None` when absent or of another type.
    fn by_pattern(&self, pattern: &[u8], element: &[u8]) -> Reply<Option<Vec<u8>>> {
        if pattern == b"#" {
            return Ok(Some(element.to_vec()));
        }
        let Some((key, field)) = substitute(pattern, element) else {
            return Ok(None);
        };
        let skey = self.storage_key(&key).map_err(|_| error(ELSEWHERE))?;
        Ok(match (self.load(&skey), field) {
            (Some(v), None) if v.kind == Kind::String => Some(v.payload),
            (Some(v), Some(field)) if v.kind == Kind::Hash => self.element(&skey, &crate::storage::hashed(&field)),
            _ => None,
        })
    }

    pub(super) fn sort(&mut self, a: &[Bytes], read_only: bool) -> Reply<Frame> {
        let (mut descending, mut alpha, mut limit) = (false, false, (0i64, -1i64));
        let (mut store, mut by, mut gets, mut dont_sort) = (None, None, Vec::new(), false);
        let mut j = 2;
        while j < a.len() {
            let left = a.len() - j - 1;
            match a[j].to_ascii_lowercase().as_slice() {
                b"asc" => descending = false,
                b"desc" => descending = true,
                b"alpha" => alpha = true,
                b"limit" if left >= 2 => {
                    limit = (int(&a[j + 1])?, int(&a[j + 2])?);
                    j += 2;
                }
                b"store" if !read_only && left >= 1 => {
                    store = Some(a[j + 1].clone());
                    j += 1;
                }
                b"by" if left >= 1 => {
                    dont_sort = !a[j + 1].contains(&b'*');
                    by = Some(a[j + 1].clone());
                    j += 1;
                }
                b"get" if left >= 1 => {
                    gets.push(a[j + 1].clone());
                    j += 1;
                }
                _ => return Err(error(SYNTAX)),
            }
            j += 1;
        }
        let skey = self.owned_key(&a[1]);
        let (kind, length) = match self.load(&skey) {
            None => (None, 0),
            Some(v) if matches!(v.kind, Kind::List | Kind::Set | Kind::ZSet) => (
                Some(v.kind),
                crate::storage::CollectionMeta::decode(&v.payload).len as i64,
            ),
            Some(_) => return Err(error(super::WRONGTYPE)),
        };
        // A set has no order of its own: stored results are sorted, so that
        // every replica stores the same list.
        if dont_sort && kind == Some(Kind::Set) && store.is_some() {
            (dont_sort, alpha, by) = (false, true, None);
        }
        let mut start = limit.0.max(0);
        let mut end = if limit.1 < 0 { length - 1 } else { start + limit.1 - 1 };
        if start >= length {
            (start, end) = (length - 1, length - 2);
        }
        end = end.min(length - 1);
        let elements: Vec<Vec<u8>> = match kind {
            Some(Kind::List | Kind::ZSet) if dont_sort => {
                let wanted = if end >= start { (end - start + 1) as usize } else { 0 };
                let all = self.native_order(&skey, kind.expect("matched"), descending);
                let picked = all.into_iter().skip(start.max(0) as usize).take(wanted).collect();
                end -= start;
                start = 0;
                picked
            }
            Some(kind) => self.native_order(&skey, kind, false),
            None => Vec::new(),
        };
        let mut items: Vec<Item> = elements
            .into_iter()
            .map(|element| Item {
                element,
                score: 0.0,
                by: None,
            })
            .collect();
        let mut not_a_number = false;
        if !dont_sort {
            for item in &mut items {
                let value = match &by {
                    Some(pattern) => match self.by_pattern(pattern, &item.element)? {
                        Some(value) => value,
                        None => continue,
                    },
                    None => item.element.clone(),
                };
                if alpha {
                    if by.is_some() {
                        item.by = Some(value);
                    }
                } else {
                    match weight(&value) {
                        Some(score) => item.score = score,
                        None => not_a_number = true,
                    }
                }
            }
            let compare = |x: &Item, y: &Item| -> Ordering {
                let order = if !alpha {
                    x.score
                        .partial_cmp(&y.score)
                        .unwrap_or(Ordering::Equal)
                        .then_with(|| x.element.cmp(&y.element))
                } else if by.is_some() {
                    match (&x.by, &y.by) {
                        (Some(p), Some(q)) => p.cmp(q),
                        (p, q) => p.is_some().cmp(&q.is_some()),
                    }
                } else {
                    x.element.cmp(&y.element)
                };
                if descending {
                    order.reverse()
                } else {
                    order
                }
            };
            items.sort_by(compare);
        }
        if not_a_number {
            return Err(error("ERR One or more scores can't be converted into double"));
        }
        let selected = if end >= start {
            &items[start as usize..=end as usize]
        } else {
            &items[..0]
        };
        let mut output: Vec<Option<Vec<u8>>> = Vec::new();
        for item in selected {
            if gets.is_empty() {
                output.push(Some(item.element.clone()));
            }
            for pattern in &gets {
                output.push(self.by_pattern(pattern, &item.element)?);
            }
        }
        let Some(destination) = store else {
            return Ok(Frame::Array(
                output.into_iter().map(|v| v.map_or(Frame::Null, Frame::Bulk)).collect(),
            ));
        };
        let dkey = self.storage_key(&destination).map_err(|_| error(ELSEWHERE))?;
        let existed = self.load(&dkey).is_some();
        if existed {
            self.delete_key(dkey.clone());
        }
        let count = output.len();
        if count > 0 {
            self.notify(b'l', "sortstore", &destination);
        } else if existed {
            self.notify(b'g', "del", &destination);
        }
        if count > 0 {
            let mut list = Collection::new();
            for value in output {
                self.append_item(&dkey, &mut list, value.unwrap_or_default());
            }
            self.save_collection(&dkey, Kind::List, list);
        }
        Ok(Frame::Integer(count as i64))
    }

    /// A list's items, a set's members or a sorted set's members in their
    /// own order (reversed for a list or sorted set when `reverse`).
    fn native_order(&self, skey: &[u8], kind: Kind, reverse: bool) -> Vec<Vec<u8>> {
        match kind {
            Kind::ZSet => self.in_order(skey, None, reverse).map(|(m, _)| m).collect(),
            Kind::Set => self.set_members(skey),
            _ => {
                let mut items: Vec<Vec<u8>> = self.elements(skey, &[], None, false).map(|(_, v)| v).collect();
                if reverse {
                    items.reverse();
                }
                items
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_substitute_the_first_star() {
        assert_eq!(substitute(b"w_*", b"a"), Some((b"w_a".to_vec(), None)));
        assert_eq!(
            substitute(b"{t}h_*->f", b"a"),
            Some((b"{t}h_a".to_vec(), Some(b"f".to_vec())))
        );
        assert_eq!(substitute(b"h_*->", b"a"), Some((b"h_a->".to_vec(), None)));
        assert_eq!(substitute(b"nostar", b"a"), None);
    }

    #[test]
    fn weights_read_like_strtod() {
        assert_eq!(weight(b"1.5"), Some(1.5));
        assert_eq!(weight(b" 2"), Some(2.0));
        assert_eq!(weight(b""), Some(0.0));
        assert_eq!(weight(b"-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(weight(b"2 "), None);
        assert_eq!(weight(b"abc"), None);
        assert_eq!(weight(b"nan"), None);
        assert_eq!(weight(b"1e400"), None);
    }
}
