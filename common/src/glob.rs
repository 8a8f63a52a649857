//! Redis's glob-style pattern matching (`stringmatchlen`), for KEYS, SCAN MATCH,
//! the collection scans, PSUBSCRIBE and ACL key and channel patterns: `*`, `?`,
//! `[abc]`, `[^a]`, `[a-z]` and `\` escapes, on bytes, case-sensitive.
//!
//! COST. Every element but `*` consumes exactly one byte, so when the text
//! stops matching only the most recent `*` needs to take one more byte: an
//! earlier `*` could only give the later one less to do. The matcher keeps that
//! one backtrack point instead of recursing per `*`, so a match costs at most
//! (pattern length + 1) x (text length + 1) steps whatever the pattern. A
//! recursive matcher is exponential on patterns like `a*a*a*...a*b`, which a
//! client must not be able to send to stall a node.

/// Whether `text` matches `pattern`.
pub fn matches(pattern: &[u8], text: &[u8]) -> bool {
    matches_counting(pattern, text).0
}

/// [`matches`], with the number of pattern elements it compared (for the bound
/// test).
fn matches_counting(pattern: &[u8], text: &[u8]) -> (bool, usize) {
    let mut steps = 0;
    let (mut p, mut s) = (0, 0);
    // After the last `*` seen: where the pattern resumes, and the text
    // position that `*` has consumed up to.
    let mut backtrack: Option<(usize, usize)> = None;
    while s < text.len() {
        steps += 1;
        if let Some(&c) = pattern.get(p) {
            if c == b'*' {
                p += 1;
                backtrack = Some((p, s));
                continue;
            }
            if let Some(next) = one_byte(pattern, p, text[s]) {
                p = next;
                s += 1;
                continue;
            }
        }
        match backtrack.as_mut() {
            Some((resume, consumed)) => {
                *consumed += 1;
                p = *resume;
                s = *consumed;
            }
            None => return (false, steps),
        }
    }
    while pattern.get(p) == Some(&b'*') {
        p += 1;
    }
    (p == pattern.len(), steps)
}

/// Matches `ch` against the (non-`*`) element of `pattern` at `p`; the position
/// after the element when it matched.
fn one_byte(pattern: &[u8], p: usize, ch: u8) -> Option<usize> {
    match pattern[p] {
        b'?' => Some(p + 1),
        b'[' => {
            let (matched, rest) = class(&pattern[p + 1..], ch);
            matched.then(|| pattern.len() - rest.len())
        }
        b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == ch).then_some(p + 2),
        c => (c == ch).then_some(p + 1),
    }
}

/// Matches `ch` against a class whose body starts at `p` (after `[`); returns
/// whether it matched and the pattern after the closing `]`.
fn class(mut p: &[u8], ch: u8) -> (bool, &[u8]) {
    let negate = p.first() == Some(&b'^');
    if negate {
        p = &p[1..];
    }
    let mut matched = false;
    loop {
        match p {
            [] => break,
            [b']', rest @ ..] => {
                p = rest;
                break;
            }
            [b'\\', escaped, rest @ ..] => {
                matched |= *escaped == ch;
                p = rest;
            }
            [low, b'-', high, rest @ ..] if *high != b']' => {
                let (low, high) = if low <= high { (*low, *high) } else { (*high, *low) };
                matched |= (low..=high).contains(&ch);
                p = rest;
            }
            [c, rest @ ..] => {
                matched |= *c == ch;
                p = rest;
            }
        }
    }
    (matched != negate, p)
}

#[cfg(test)]
mod tests {
    use super::{matches, matches_counting};

    #[test]
    fn redis_glob_rules() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "anything", true),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "heeeello", true),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hallo", true),
            ("h[a-b]llo", "hcllo", false),
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hello", false),
            ("user:*:name", "user:42:name", true),
            ("user:*:name", "user:42:age", false),
            ("a*b*c", "abxbxc", true),
            ("a*b*c", "abxbx", false),
            ("[", "x", false),
            ("", "", true),
            ("", "a", false),
            ("a", "", false),
            ("**", "", true),
            ("a**", "a", true),
            ("*a", "ba", true),
            ("*a", "ab", false),
            ("*?", "", false),
            ("*?*", "x", true),
            ("a*", "a", true),
            ("*b*", "abc", true),
            ("*c", "abcbc", true),
            ("a*bc", "abcbc", true),
            ("a*b?d", "axbxbcd", true),
            ("[a-c]*[x-z]", "bqqz", true),
            ("[a-c]*[x-z]", "bqqa", false),
            ("[\\]]x", "]x", true),
            ("[abc", "b", true),
            ("h[^a-z]llo", "h1llo", true),
            ("\\", "\\", true),
            ("a\\", "a\\", true),
            ("\\?", "?", true),
            ("\\?", "x", false),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(
                matches(pattern.as_bytes(), text.as_bytes()),
                *want,
                "{pattern} ~ {text}"
            );
        }
    }

    /// Patterns that make a recursive matcher exponential take at most
    /// (pattern + 1) x (text + 1) steps here, matched or not.
    #[test]
    fn cost_is_bounded_by_pattern_times_text() {
        let hostile = format!("{}b", "a*".repeat(20));
        let long_a = "a".repeat(200);
        for (pattern, text, want) in [
            (hostile.as_str(), long_a.as_str(), false),
            (hostile.as_str(), &format!("{long_a}b"), true),
            ("*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*c", long_a.as_str(), false),
            (
                "*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*[b]",
                long_a.as_str(),
                false,
            ),
        ] {
            let (matched, steps) = matches_counting(pattern.as_bytes(), text.as_bytes());
            assert_eq!(matched, want, "{pattern} ~ {} bytes", text.len());
            let bound = (pattern.len() + 1) * (text.len() + 1);
            assert!(steps <= bound, "{pattern}: {steps} steps, bound {bound}");
        }
    }
}
