//! Reads: the current view from `latest`, past views from `history`, and etcd's rules for
//! `limit`, `count`, `more`, sorting and revision filters on top.
//!
//! A `latest` row holds a key's metadata only (create and mod revisions, version, lease): its value
//! is written once, in the key's `history` record at its mod revision, where [`fill_value`] finds
//! it. Every put rewrites its key's `latest` row and adds a `history` record: writing the value
//! once, not in both, cut a three-member cluster's CPU per put by 7 to 10% at 64 and 256 clients,
//! since small rows make `latest` a few pages that every batch copies once
//! (`docs/benchmarks.md`). Rows written before that change carried the key and value; a store
//! rewrites them at its first open after the upgrade ([`drop_values_from_latest`]), and a
//! restore rewrites those of an older snapshot.

use std::ops::Bound;

use prost::Message;
use redb::ReadableTable;

use super::keys::{history_key, history_prefix, revision_of_history_key, KeyRange};
use super::{MvccError, Revision, StoreStatus};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use crate::proto::mvccpb::KeyValue;

/// A history record: the key's state as of one revision.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Record {
    Put(KeyValue),
    /// A delete; the `KeyValue` carries the key and the deleting revision only.
    Tombstone(KeyValue),
}

const RECORD_PUT: u8 = 0;
const RECORD_TOMBSTONE: u8 = 1;

impl Record {
    pub(super) fn encode(&self) -> Vec<u8> {
        let (tag, kv) = match self {
            Record::Put(kv) => (RECORD_PUT, kv),
            Record::Tombstone(kv) => (RECORD_TOMBSTONE, kv),
        };
        let mut out = Vec::with_capacity(1 + kv.encoded_len());
        out.push(tag);
        kv.encode(&mut out).expect("Vec grows as needed");
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, MvccError> {
        let (tag, body) = bytes
            .split_first()
            .ok_or_else(|| MvccError::Corrupt("empty history record".into()))?;
        let kv = decode_kv(body)?;
        match *tag {
            RECORD_PUT => Ok(Record::Put(kv)),
            RECORD_TOMBSTONE => Ok(Record::Tombstone(kv)),
            other => Err(MvccError::Corrupt(format!("history record tag {other}"))),
        }
    }
}

pub(super) fn decode_kv(bytes: &[u8]) -> Result<KeyValue, MvccError> {
    KeyValue::decode(bytes).map_err(|e| MvccError::Corrupt(format!("key-value: {e}")))
}

/// Whether a scan of the newest revision reads each key's value too, or its metadata only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Values {
    Read,
    Skip,
}

impl Values {
    pub(super) fn read_if(needed: bool) -> Values {
        if needed {
            Values::Read
        } else {
            Values::Skip
        }
    }
}

/// The `latest` row of `kv`: everything but its key (the row's key) and its value (in `history`).
pub(super) fn latest_row(kv: &KeyValue) -> Vec<u8> {
    KeyValue {
        key: Vec::new(),
        value: Vec::new(),
        ..*kv
    }
    .encode_to_vec()
}

/// The key-value a `latest` row describes, without its value.
pub(super) fn decode_latest_row(key: &[u8], row: &[u8]) -> Result<KeyValue, MvccError> {
    let mut kv = decode_kv(row)?;
    kv.key = key.to_vec();
    kv.value.clear();
    Ok(kv)
}

/// Rewrites every `latest` row that still carries its key or value (the layout before values
/// left `latest`) as a metadata-only row.
pub(super) fn drop_values_from_latest(
    latest: &mut redb::Table<&'static [u8], &'static [u8]>,
) -> Result<(), MvccError> {
    let mut rewritten = Vec::new();
    for entry in latest.iter()? {
        let (key, row) = entry?;
        let kv = decode_kv(row.value())?;
        if !kv.key.is_empty() || !kv.value.is_empty() {
            rewritten.push((key.value().to_vec(), latest_row(&kv)));
        }
    }
    for (key, row) in rewritten {
        latest.insert(key.as_slice(), row.as_slice())?;
    }
    Ok(())
}

/// Reads the value of `kv`, a live key from `latest`, from its newest `history` record: the one
/// at its mod revision (the last, should one revision hold several changes of the key).
pub(super) fn fill_value<H>(history: &H, kv: &mut KeyValue) -> Result<(), MvccError>
where
    H: ReadableTable<&'static [u8], &'static [u8]>,
{
    let at = |sub| {
        history_key(
            &kv.key,
            Revision {
                main: kv.mod_revision,
                sub,
            },
        )
    };
    let (lower, upper) = (at(0), at(i64::MAX));
    let newest = history
        .range::<&[u8]>(lower.as_slice()..=upper.as_slice())?
        .next_back()
        .transpose()?;
    match newest {
        Some((_, record)) => match Record::decode(record.value())? {
            Record::Put(put) => {
                kv.value = put.value;
                Ok(())
            }
            Record::Tombstone(_) => Err(MvccError::Corrupt(format!(
                "a live key's newest history record (revision {}) is a tombstone",
                kv.mod_revision
            ))),
        },
        None => Err(MvccError::Corrupt(format!(
            "a live key has no history record at its mod revision {}",
            kv.mod_revision
        ))),
    }
}

/// The live keys of `range` at the newest revision, in key order: at most `limit` of them
/// (0: no limit) and how many there are in all.
pub(super) fn scan_latest<L, H>(
    latest: &L,
    history: &H,
    range: &KeyRange,
    limit: usize,
    values: Values,
) -> Result<(Vec<KeyValue>, usize), MvccError>
where
    L: ReadableTable<&'static [u8], &'static [u8]>,
    H: ReadableTable<&'static [u8], &'static [u8]>,
{
    let mut kvs = Vec::new();
    let mut count = 0;
    let mut visit = |key: &[u8], row: &[u8]| -> Result<(), MvccError> {
        count += 1;
        if limit == 0 || kvs.len() < limit {
            let mut kv = decode_latest_row(key, row)?;
            if values == Values::Read {
                fill_value(history, &mut kv)?;
            }
            kvs.push(kv);
        }
        Ok(())
    };
    match range {
        KeyRange::Single(key) => {
            if let Some(row) = latest.get(key.as_slice())? {
                visit(key, row.value())?;
            }
        }
        KeyRange::Span { start, end } => {
            let upper = match end {
                Some(end) => Bound::Excluded(end.as_slice()),
                None => Bound::Unbounded,
            };
            if end.as_deref().is_none_or(|end| start.as_slice() < end) {
                for entry in latest.range::<&[u8]>((Bound::Included(start.as_slice()), upper))? {
                    let (key, row) = entry?;
                    visit(key.value(), row.value())?;
                }
            }
        }
    }
    Ok((kvs, count))
}

/// The keys of `range` live at past revision `revision`, as [`scan_latest`] does for now.
pub(super) fn scan_history<T>(
    history: &T,
    range: &KeyRange,
    revision: i64,
    limit: usize,
) -> Result<(Vec<KeyValue>, usize), MvccError>
where
    T: ReadableTable<&'static [u8], &'static [u8]>,
{
    let (start, end) = range.bounds();
    if end.as_deref().is_some_and(|end| end <= start) {
        return Ok((Vec::new(), 0));
    }
    let lower = history_prefix(start);
    let upper = end.as_deref().map(history_prefix);
    let upper_bound = match &upper {
        Some(upper) => Bound::Excluded(upper.as_slice()),
        None => Bound::Unbounded,
    };

    let mut kvs = Vec::new();
    let mut count = 0;
    // The newest record at or below `revision` of the key being scanned, by its encoded prefix.
    let mut group: Option<(Vec<u8>, Option<Record>)> = None;
    let mut finish = |newest: Option<Record>| {
        if let Some(Record::Put(kv)) = newest {
            count += 1;
            if limit == 0 || kvs.len() < limit {
                kvs.push(kv);
            }
        }
    };
    for entry in history.range::<&[u8]>((Bound::Included(lower.as_slice()), upper_bound))? {
        let (encoded_key, value) = entry?;
        let encoded_key = encoded_key.value();
        let at = revision_of_history_key(encoded_key)
            .ok_or_else(|| MvccError::Corrupt("short history key".into()))?;
        let prefix = &encoded_key[..encoded_key.len() - 16];
        if group.as_ref().is_none_or(|(p, _)| p.as_slice() != prefix) {
            if let Some((_, newest)) = group.take() {
                finish(newest);
            }
            group = Some((prefix.to_vec(), None));
        }
        if at.main <= revision {
            let (_, newest) = group.as_mut().expect("group set above");
            *newest = Some(Record::decode(value.value())?);
        }
    }
    if let Some((_, newest)) = group {
        finish(newest);
    }
    Ok((kvs, count))
}

/// etcd's Range semantics over a view whose newest revision is `current` (the view of `latest`).
/// The response header carries only the revision; the API layer fills in the rest.
pub(super) fn range_request<L, H>(
    latest: &L,
    history: &H,
    req: &RangeRequest,
    status: &StoreStatus,
) -> Result<RangeResponse, MvccError>
where
    L: ReadableTable<&'static [u8], &'static [u8]>,
    H: ReadableTable<&'static [u8], &'static [u8]>,
{
    let current = status.current_revision;
    let revision = if req.revision <= 0 {
        current
    } else if req.revision > current {
        return Err(MvccError::FutureRevision);
    } else if req.revision < status.compact_revision {
        return Err(MvccError::Compacted);
    } else {
        req.revision
    };

    let sort_order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    let sort_target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // Sorting and filtering need every key; otherwise fetch one past the limit to know `more`.
    let fetch_limit = if sort_order != SortOrder::None || filtered || req.limit <= 0 {
        0
    } else {
        req.limit as usize + 1
    };
    let range = KeyRange::new(&req.key, &req.range_end);
    // The current view reads values last, for the keys it returns, unless it sorts by them.
    let values_first = sort_target == SortTarget::Value && !req.count_only;
    let values_last = revision == current && !values_first && !req.count_only && !req.keys_only;
    let (mut kvs, count) = if revision == current {
        scan_latest(
            latest,
            history,
            &range,
            fetch_limit,
            Values::read_if(values_first),
        )?
    } else {
        scan_history(history, &range, revision, fetch_limit)?
    };

    let header = Some(ResponseHeader {
        revision: current,
        ..Default::default()
    });
    if req.count_only {
        return Ok(RangeResponse {
            header,
            kvs: Vec::new(),
            more: false,
            count: count as i64,
        });
    }

    kvs.retain(|kv| {
        (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
            && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
            && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
            && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
    });

    // Results come sorted by key; etcd sorts ascending by default only for other targets.
    let sort_order = match (sort_order, sort_target) {
        (SortOrder::None, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, _) => SortOrder::Ascend,
        (order, _) => order,
    };
    if sort_order != SortOrder::None {
        kvs.sort_by(|a, b| {
            let ordering = match sort_target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            };
            if sort_order == SortOrder::Descend {
                ordering.reverse()
            } else {
                ordering
            }
        });
    }

    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    if values_last {
        for kv in &mut kvs {
            fill_value(history, kv)?;
        }
    }
    Ok(RangeResponse {
        header,
        kvs,
        more,
        count: count as i64,
    })
}
