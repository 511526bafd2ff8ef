//! Key ranges as etcd defines them, and the order-preserving encoding of `(key, revision)` used by
//! the history table.
//!
//! Invariant: for user keys `a < b` (bytewise) and any revisions, `history_key(a, ..) <
//! history_key(b, ..)`, and the entries of one key are contiguous and ordered by revision. This
//! lets a range scan over history visit keys in order and each key's revisions oldest first.

use super::Revision;

/// The keys a request covers, from etcd's `key` / `range_end` pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    /// `range_end` empty: exactly one key.
    Single(Vec<u8>),
    /// `[start, end)`; `end == None` means "every key >= start" (etcd's `range_end == "\0"`).
    Span {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
}

impl KeyRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> Self {
        match range_end {
            [] => KeyRange::Single(key.to_vec()),
            [0] => KeyRange::Span {
                start: key.to_vec(),
                end: None,
            },
            end => KeyRange::Span {
                start: key.to_vec(),
                end: Some(end.to_vec()),
            },
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => k == key,
            KeyRange::Span { start, end } => {
                key >= start.as_slice() && end.as_deref().is_none_or(|end| key < end)
            }
        }
    }

    /// Whether two ranges share at least one key.
    pub fn intersects(&self, other: &KeyRange) -> bool {
        let (a_start, a_end) = self.bounds();
        let (b_start, b_end) = other.bounds();
        let starts_before = |start: &[u8], end: &Option<Vec<u8>>| match end {
            None => true,
            Some(end) => start < end.as_slice(),
        };
        // [a_start, a_end) and [b_start, b_end) overlap iff each starts before the other ends.
        starts_before(a_start, &b_end) && starts_before(b_start, &a_end)
    }

    /// Half-open bounds `[start, end)`, with a single key `k` as `[k, k\0)`.
    pub fn bounds(&self) -> (&[u8], Option<Vec<u8>>) {
        match self {
            KeyRange::Single(k) => {
                let mut next = k.clone();
                next.push(0);
                (k, Some(next))
            }
            KeyRange::Span { start, end } => (start, end.clone()),
        }
    }
}

/// The prefix-range end etcdctl computes for `--prefix`: the key with its last byte incremented,
/// dropping trailing 0xff bytes; `"\0"` (everything) when no byte can be incremented.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

const ESCAPE: u8 = 0x00;
const ESCAPED_ZERO: u8 = 0xff;
const TERMINATOR: u8 = 0x01;

/// The smallest history-table key of user key `key`: its escaped bytes and the terminator. Every
/// revision of `key` sorts at or after it, and every smaller user key sorts before it.
pub fn history_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2 + 16);
    for &byte in key {
        out.push(byte);
        if byte == ESCAPE {
            out.push(ESCAPED_ZERO);
        }
    }
    out.push(ESCAPE);
    out.push(TERMINATOR);
    out
}

/// History-table key of one revision of `key`.
pub fn history_key(key: &[u8], revision: Revision) -> Vec<u8> {
    let mut out = history_prefix(key);
    out.extend_from_slice(&revision.main.to_be_bytes());
    out.extend_from_slice(&revision.sub.to_be_bytes());
    out
}

/// The revision encoded at the end of a history-table key.
pub fn revision_of_history_key(encoded: &[u8]) -> Option<Revision> {
    let split = encoded.len().checked_sub(16)?;
    let (main, sub) = encoded[split..].split_at(8);
    Some(Revision {
        main: i64::from_be_bytes(main.try_into().ok()?),
        sub: i64::from_be_bytes(sub.try_into().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn range_end_forms() {
        assert_eq!(KeyRange::new(b"a", b""), KeyRange::Single(b"a".to_vec()));
        let all = KeyRange::new(b"a", b"\0");
        assert!(all.contains(b"zzzz") && !all.contains(b"0"));
        let span = KeyRange::new(b"a", b"c");
        assert!(span.contains(b"b") && !span.contains(b"c") && span.contains(b"a"));
    }

    #[test]
    fn prefix_end_like_etcdctl() {
        assert_eq!(prefix_end(b"abc"), b"abd");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn intersections() {
        let point = |k: &[u8]| KeyRange::new(k, b"");
        assert!(KeyRange::new(b"a", b"c").intersects(&point(b"b")));
        assert!(!KeyRange::new(b"a", b"c").intersects(&point(b"c")));
        assert!(KeyRange::new(b"a", b"\0").intersects(&point(b"zz")));
        assert!(point(b"a").intersects(&point(b"a")));
        assert!(!point(b"a").intersects(&point(b"a\0")));
    }

    proptest! {
        #[test]
        fn history_order_follows_key_then_revision(
            a in proptest::collection::vec(any::<u8>(), 0..6),
            b in proptest::collection::vec(any::<u8>(), 0..6),
            ra in 0i64..1000, rb in 0i64..1000,
        ) {
            let ea = history_key(&a, Revision { main: ra, sub: 0 });
            let eb = history_key(&b, Revision { main: rb, sub: 0 });
            prop_assert_eq!(ea.cmp(&eb), a.cmp(&b).then(ra.cmp(&rb)));
            prop_assert_eq!(revision_of_history_key(&ea), Some(Revision { main: ra, sub: 0 }));
            // Every revision of a key lies within [prefix(key), prefix(next key)).
            if a < b {
                prop_assert!(ea < history_prefix(&b));
            }
        }
    }
}
