//! The change log read back as etcd watch events: every put and delete from a revision on, in
//! revision order, from the `by_revision` and `history` tables.

use std::ops::Bound;

use redb::ReadableTable;

use super::keys::{history_key, history_prefix, KeyRange};
use super::read::Record;
use super::{MvccError, Revision, Store, BY_REVISION, HISTORY};
use crate::proto::mvccpb::{event::EventType, Event};

/// A batch of events read for one watcher.
#[derive(Debug, Clone, PartialEq)]
pub struct Events {
    pub events: Vec<Event>,
    /// The revision to read from next time: one past the last revision scanned.
    pub next_revision: i64,
}

impl Store {
    /// The events on keys in `range` from revision `from` through `to` (inclusive), at most about
    /// `max_revisions` revisions of them (whole revisions only, so a revision is never split).
    /// With `prev_kv`, each event carries the key's previous version when it had one. Fails with
    /// [`MvccError::Compacted`] when `from` is below the compacted revision.
    pub fn events(
        &self,
        range: &KeyRange,
        from: i64,
        to: i64,
        prev_kv: bool,
        max_revisions: i64,
    ) -> Result<Events, MvccError> {
        let txn = self.begin_read()?;
        let status = super::read_status(&txn.open_table(super::META)?)?;
        if from < status.compact_revision {
            return Err(MvccError::Compacted);
        }
        let to = to.min(from.saturating_add(max_revisions.max(1) - 1));
        let by_revision = txn.open_table(BY_REVISION)?;
        let history = txn.open_table(HISTORY)?;
        let mut events = Vec::new();
        for row in by_revision.range((from, i64::MIN)..=(to, i64::MAX))? {
            let (revision, key) = row?;
            let (main, sub) = revision.value();
            let key = key.value();
            if !range.contains(key) {
                continue;
            }
            let at = Revision { main, sub };
            let record = history
                .get(history_key(key, at).as_slice())?
                .ok_or_else(|| {
                    MvccError::Corrupt(format!("revision {main}.{sub} lacks history"))
                })?;
            let (kind, kv) = match Record::decode(record.value())? {
                Record::Put(kv) => (EventType::Put, kv),
                Record::Tombstone(kv) => (EventType::Delete, kv),
            };
            let prev = if prev_kv {
                previous_version(&history, key, at)?
            } else {
                None
            };
            events.push(Event {
                r#type: kind as i32,
                kv: Some(kv),
                prev_kv: prev,
            });
        }
        Ok(Events {
            events,
            next_revision: to.max(from - 1) + 1,
        })
    }
}

/// The version of `key` just before revision `at`, if it was live then.
fn previous_version<T>(
    history: &T,
    key: &[u8],
    at: Revision,
) -> Result<Option<crate::proto::mvccpb::KeyValue>, MvccError>
where
    T: ReadableTable<&'static [u8], &'static [u8]>,
{
    let lower = history_prefix(key);
    let upper = history_key(key, at);
    let mut before = history.range::<&[u8]>((
        Bound::Included(lower.as_slice()),
        Bound::Excluded(upper.as_slice()),
    ))?;
    match before.next_back() {
        Some(row) => match Record::decode(row?.1.value())? {
            Record::Put(kv) => Ok(Some(kv)),
            Record::Tombstone(_) => Ok(None),
        },
        None => Ok(None),
    }
}

impl Store {
    /// etcd's `HashKV`: a CRC-32 of every history record at or below `revision` (0: the current
    /// one), in key-then-revision order, and the compacted revision. Members that applied the
    /// same log agree on it; a mismatch means divergence.
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64), MvccError> {
        let txn = self.begin_read()?;
        let status = super::read_status(&txn.open_table(super::META)?)?;
        let revision = if revision <= 0 {
            status.current_revision
        } else if revision > status.current_revision {
            return Err(MvccError::FutureRevision);
        } else if revision < status.compact_revision {
            return Err(MvccError::Compacted);
        } else {
            revision
        };
        let mut hasher = crc32fast::Hasher::new();
        for row in txn.open_table(HISTORY)?.iter()? {
            let (key, value) = row?;
            let at = super::keys::revision_of_history_key(key.value())
                .ok_or_else(|| MvccError::Corrupt("short history key".into()))?;
            if at.main <= revision {
                hasher.update(key.value());
                hasher.update(value.value());
            }
        }
        Ok((hasher.finalize(), status.compact_revision, revision))
    }
}
