//! The apply function: each command becomes at most one new main revision, inside the caller's
//! redb write transaction. Every check that can reject a command runs before its first write, so
//! a rejected command leaves the store untouched.

use std::collections::BTreeSet;
use std::ops::Bound;

use redb::{ReadableTable, Table, WriteTransaction};

use super::keys::{history_key, history_prefix, revision_of_history_key, KeyRange};
use super::read::{
    decode_latest_row, fill_value, latest_row, range_request, scan_latest, Record, Values,
};
use super::{
    compare, CommandResponse, MvccError, Revision, StoreStatus, BY_REVISION, HISTORY, LATEST,
    LEASES, LEASE_KEYS, META, META_COMPACT_REVISION, META_CURRENT_REVISION, SETTINGS,
};
use crate::proto::bulwarkpb::{command::Kind, Command};
use crate::proto::etcdserverpb::{
    request_op, response_op, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, LeaseGrantResponse, LeaseRevokeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::KeyValue;

/// The revision a command writes at: `begin + 1`, with one sub-revision per change so far.
struct Writing {
    begin: i64,
    changes: i64,
}

impl Writing {
    fn next(&mut self) -> Revision {
        let revision = Revision {
            main: self.begin + 1,
            sub: self.changes,
        };
        self.changes += 1;
        revision
    }

    /// The revision a read inside this command sees (etcd's `storeTxnWrite.Range`).
    fn visible(&self) -> i64 {
        if self.changes > 0 {
            self.begin + 1
        } else {
            self.begin
        }
    }
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

pub(super) struct ApplyState<'txn> {
    latest: Table<'txn, &'static [u8], &'static [u8]>,
    history: Table<'txn, &'static [u8], &'static [u8]>,
    by_revision: Table<'txn, (i64, i64), &'static [u8]>,
    meta: Table<'txn, &'static str, i64>,
    settings: Table<'txn, &'static str, &'static [u8]>,
    leases: Table<'txn, i64, i64>,
    lease_keys: Table<'txn, (i64, &'static [u8]), ()>,
    status: StoreStatus,
    /// Whether a command wrote the `settings` table (readers of settings alone then need the
    /// transaction committed; see `Store::begin_read_settings`).
    pub(super) settings_written: bool,
}

impl<'txn> ApplyState<'txn> {
    /// The newest revision, counting what this transaction applied so far.
    pub(super) fn current_revision(&self) -> i64 {
        self.status.current_revision
    }

    pub(super) fn open(txn: &'txn WriteTransaction) -> Result<Self, MvccError> {
        let meta = txn.open_table(META)?;
        let status = super::read_status(&meta)?;
        Ok(ApplyState {
            latest: txn.open_table(LATEST)?,
            history: txn.open_table(HISTORY)?,
            by_revision: txn.open_table(BY_REVISION)?,
            settings: txn.open_table(SETTINGS)?,
            leases: txn.open_table(LEASES)?,
            lease_keys: txn.open_table(LEASE_KEYS)?,
            meta,
            status,
            settings_written: false,
        })
    }

    pub(super) fn apply(&mut self, command: Command) -> Result<CommandResponse, MvccError> {
        let mut writing = Writing {
            begin: self.status.current_revision,
            changes: 0,
        };
        let response = match command.kind {
            Some(Kind::Put(req)) => CommandResponse::Put(self.put(&mut writing, &req)?),
            Some(Kind::DeleteRange(req)) => {
                CommandResponse::DeleteRange(self.delete_range(&mut writing, &req)?)
            }
            Some(Kind::Txn(req)) => {
                let path = self.compare_path(&req)?;
                self.check_txn(&req, &path, &mut 0)?;
                let mut response = self.txn(&mut writing, &req, &path, &mut 0)?;
                response.header = header(writing.visible());
                CommandResponse::Txn(response)
            }
            Some(Kind::Compaction(req)) => CommandResponse::Compaction(self.compact(&req)?),
            Some(Kind::LeaseGrant(grant)) => {
                if self.leases.get(grant.id)?.is_some() {
                    return Err(MvccError::LeaseExists);
                }
                self.leases.insert(grant.id, grant.ttl)?;
                CommandResponse::LeaseGrant(LeaseGrantResponse {
                    header: header(writing.begin),
                    id: grant.id,
                    ttl: grant.ttl,
                    error: String::new(),
                })
            }
            Some(Kind::LeaseRevoke(revoke)) => {
                CommandResponse::LeaseRevoke(self.revoke_lease(&mut writing, revoke.id)?)
            }
            Some(Kind::SetSetting(setting)) => {
                if setting.compare {
                    let current = self.settings.get(setting.name.as_str())?;
                    let current = current.as_ref().map_or(&[][..], |value| value.value());
                    if current != setting.expected.as_slice() {
                        return Err(MvccError::SettingChanged);
                    }
                }
                self.settings_written = true;
                // An empty value removes the setting.
                if setting.value.is_empty() {
                    self.settings.remove(setting.name.as_str())?;
                } else {
                    self.settings
                        .insert(setting.name.as_str(), setting.value.as_slice())?;
                }
                CommandResponse::SettingStored
            }
            None => return Err(MvccError::Corrupt("command without a kind".into())),
        };
        if writing.changes > 0 {
            self.status.current_revision = writing.begin + 1;
            self.meta
                .insert(META_CURRENT_REVISION, self.status.current_revision)?;
        }
        Ok(response)
    }

    /// The live `key`'s metadata, without its value.
    fn get_latest(&self, key: &[u8]) -> Result<Option<KeyValue>, MvccError> {
        match self.latest.get(key)? {
            Some(row) => Ok(Some(decode_latest_row(key, row.value())?)),
            None => Ok(None),
        }
    }

    /// etcd's `checkPut`: the lease must exist, and `ignore_value`/`ignore_lease` need a key.
    fn check_put(&self, req: &PutRequest) -> Result<Option<KeyValue>, MvccError> {
        let previous = self.get_latest(&req.key)?;
        if (req.ignore_value || req.ignore_lease) && previous.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        let lease = match (&previous, req.ignore_lease) {
            (Some(previous), true) => previous.lease,
            _ => req.lease,
        };
        if lease != 0 && self.leases.get(lease)?.is_none() {
            return Err(MvccError::LeaseNotFound);
        }
        Ok(previous)
    }

    fn check_range(&self, req: &RangeRequest) -> Result<(), MvccError> {
        if req.revision > self.status.current_revision {
            Err(MvccError::FutureRevision)
        } else if req.revision > 0 && req.revision < self.status.compact_revision {
            Err(MvccError::Compacted)
        } else {
            Ok(())
        }
    }

    fn put(&mut self, writing: &mut Writing, req: &PutRequest) -> Result<PutResponse, MvccError> {
        let mut previous = self.check_put(req)?;
        if let Some(previous) = previous
            .as_mut()
            .filter(|_| req.prev_kv || req.ignore_value)
        {
            fill_value(&self.history, previous)?;
        }
        let revision = writing.next();
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: previous
                .as_ref()
                .map_or(revision.main, |p| p.create_revision),
            mod_revision: revision.main,
            version: previous.as_ref().map_or(1, |p| p.version + 1),
            value: match (&previous, req.ignore_value) {
                (Some(previous), true) => previous.value.clone(),
                _ => req.value.clone(),
            },
            lease: match (&previous, req.ignore_lease) {
                (Some(previous), true) => previous.lease,
                _ => req.lease,
            },
        };
        let previous_lease = previous.as_ref().map_or(0, |p| p.lease);
        if previous_lease != 0 && previous_lease != kv.lease {
            self.lease_keys
                .remove((previous_lease, kv.key.as_slice()))?;
        }
        if kv.lease != 0 {
            self.lease_keys.insert((kv.lease, kv.key.as_slice()), ())?;
        }
        self.latest
            .insert(kv.key.as_slice(), latest_row(&kv).as_slice())?;
        self.record(revision, Record::Put(kv))?;
        Ok(PutResponse {
            header: header(revision.main),
            prev_kv: previous.filter(|_| req.prev_kv),
        })
    }

    fn delete_range(
        &mut self,
        writing: &mut Writing,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, MvccError> {
        let (deleted, _) = scan_latest(
            &self.latest,
            &self.history,
            &KeyRange::new(&req.key, &req.range_end),
            0,
            Values::read_if(req.prev_kv),
        )?;
        for kv in &deleted {
            let revision = writing.next();
            if kv.lease != 0 {
                self.lease_keys.remove((kv.lease, kv.key.as_slice()))?;
            }
            self.latest.remove(kv.key.as_slice())?;
            let tombstone = KeyValue {
                key: kv.key.clone(),
                mod_revision: revision.main,
                ..Default::default()
            };
            self.record(revision, Record::Tombstone(tombstone))?;
        }
        Ok(DeleteRangeResponse {
            header: header(writing.visible()),
            deleted: deleted.len() as i64,
            prev_kvs: if req.prev_kv { deleted } else { Vec::new() },
        })
    }

    /// Ends lease `id`: every attached key is deleted, all in this command's revision.
    fn revoke_lease(
        &mut self,
        writing: &mut Writing,
        id: i64,
    ) -> Result<LeaseRevokeResponse, MvccError> {
        if self.leases.remove(id)?.is_none() {
            return Err(MvccError::LeaseNotFound);
        }
        let mut keys = Vec::new();
        for row in self.lease_keys.range::<(i64, &[u8])>((id, &[][..])..)? {
            let (entry, _) = row?;
            let (lease, key) = entry.value();
            if lease != id {
                break;
            }
            keys.push(key.to_vec());
        }
        for key in keys {
            let request = DeleteRangeRequest {
                key,
                range_end: Vec::new(),
                prev_kv: false,
            };
            self.delete_range(writing, &request)?;
        }
        Ok(LeaseRevokeResponse {
            header: header(writing.visible()),
        })
    }

    fn record(&mut self, revision: Revision, record: Record) -> Result<(), MvccError> {
        let key = match &record {
            Record::Put(kv) | Record::Tombstone(kv) => kv.key.as_slice(),
        };
        self.history.insert(
            history_key(key, revision).as_slice(),
            record.encode().as_slice(),
        )?;
        self.by_revision
            .insert((revision.main, revision.sub), key)?;
        Ok(())
    }

    fn range(&self, writing: &Writing, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        let view = StoreStatus {
            current_revision: writing.visible(),
            ..self.status
        };
        range_request(&self.latest, &self.history, req, &view)
    }

    /// Every compare of the txn and its nested txns, evaluated up front against the state before
    /// the txn, in pre-order (etcd's `compareToPath`).
    fn compare_path(&self, req: &TxnRequest) -> Result<Vec<bool>, MvccError> {
        let mut succeeded = true;
        for compare in &req.compare {
            let range = KeyRange::new(&compare.key, &compare.range_end);
            let values = Values::read_if(compare::compares_values(compare));
            let (kvs, _) = scan_latest(&self.latest, &self.history, &range, 0, values)?;
            if !compare::holds(compare, &kvs) {
                succeeded = false;
                break;
            }
        }
        let mut path = vec![succeeded];
        for op in branch(req, succeeded) {
            if let Some(request_op::Request::RequestTxn(nested)) = &op.request {
                path.extend(self.compare_path(nested)?);
            }
        }
        Ok(path)
    }

    fn check_txn(
        &self,
        req: &TxnRequest,
        path: &[bool],
        position: &mut usize,
    ) -> Result<(), MvccError> {
        let succeeded = path[*position];
        *position += 1;
        for op in branch(req, succeeded) {
            match &op.request {
                Some(request_op::Request::RequestPut(put)) => {
                    self.check_put(put)?;
                }
                Some(request_op::Request::RequestRange(range)) => self.check_range(range)?,
                Some(request_op::Request::RequestTxn(nested)) => {
                    self.check_txn(nested, path, position)?
                }
                Some(request_op::Request::RequestDeleteRange(_)) | None => {}
            }
        }
        Ok(())
    }

    fn txn(
        &mut self,
        writing: &mut Writing,
        req: &TxnRequest,
        path: &[bool],
        position: &mut usize,
    ) -> Result<TxnResponse, MvccError> {
        let succeeded = path[*position];
        *position += 1;
        let mut responses = Vec::new();
        for op in branch(req, succeeded) {
            let response = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    response_op::Response::ResponseRange(self.range(writing, r)?)
                }
                Some(request_op::Request::RequestPut(r)) => {
                    response_op::Response::ResponsePut(self.put(writing, r)?)
                }
                Some(request_op::Request::RequestDeleteRange(r)) => {
                    response_op::Response::ResponseDeleteRange(self.delete_range(writing, r)?)
                }
                Some(request_op::Request::RequestTxn(r)) => {
                    response_op::Response::ResponseTxn(self.txn(writing, r, path, position)?)
                }
                None => continue,
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        Ok(TxnResponse {
            // Nested txn responses carry an empty header, as etcd's do.
            header: Some(ResponseHeader::default()),
            succeeded,
            responses,
        })
    }

    fn compact(&mut self, req: &CompactionRequest) -> Result<CompactionResponse, MvccError> {
        let target = req.revision;
        if target <= self.status.compact_revision {
            return Err(MvccError::Compacted);
        }
        if target > self.status.current_revision {
            return Err(MvccError::FutureRevision);
        }
        let mut touched = BTreeSet::new();
        for entry in self
            .by_revision
            .range((i64::MIN, i64::MIN)..=(target, i64::MAX))?
        {
            let (_, key) = entry?;
            touched.insert(key.value().to_vec());
        }
        for key in touched {
            self.compact_key(&key, target)?;
        }
        self.status.compact_revision = target;
        self.meta.insert(META_COMPACT_REVISION, target)?;
        Ok(CompactionResponse {
            header: header(self.status.current_revision),
        })
    }

    /// Drops every record of `key` at or below `target` except the newest, and that one too when
    /// it is a tombstone: reads at `target` and later see the same result as before.
    fn compact_key(&mut self, key: &[u8], target: i64) -> Result<(), MvccError> {
        let lower = history_prefix(key);
        let upper = history_key(
            key,
            Revision {
                main: target,
                sub: i64::MAX,
            },
        );
        let mut records = Vec::new();
        for entry in self.history.range::<&[u8]>((
            Bound::Included(lower.as_slice()),
            Bound::Included(upper.as_slice()),
        ))? {
            let (encoded, value) = entry?;
            let tombstone = matches!(Record::decode(value.value())?, Record::Tombstone(_));
            records.push((encoded.value().to_vec(), tombstone));
        }
        let keep_newest = records.last().is_some_and(|(_, tombstone)| !tombstone);
        if keep_newest {
            records.pop();
        }
        for (encoded, _) in records {
            let revision = revision_of_history_key(&encoded)
                .ok_or_else(|| MvccError::Corrupt("short history key".into()))?;
            self.history.remove(encoded.as_slice())?;
            self.by_revision.remove((revision.main, revision.sub))?;
        }
        Ok(())
    }
}

fn branch(req: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &req.success
    } else {
        &req.failure
    }
}
