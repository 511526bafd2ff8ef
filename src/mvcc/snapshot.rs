//! Whole-store snapshots: a consistent redb read of every table written as one stream, and its
//! restore, which replaces the whole store in one transaction.
//!
//! Format (all integers big-endian):
//! ```text
//! "BWSNAP02"                                   magic and version
//! { table: u8, key_len: u32, key, value_len: u32, value }*   one record per table row
//! 0xFF                                         end of records
//! zero bytes up to a multiple of 512            etcd's snapshot framing: etcdctl takes a
//!                                              stream whose length is 32 mod 512 to end in
//! sha256 of everything before it (32 bytes)    a checksum; a truncated or corrupt file is refused
//! ```
//! Version 02 differs from 01 only in the `latest` rows, which hold a key's metadata without its
//! key and value (see `read.rs`). A restore takes both: a 01 snapshot's `latest` rows are rewritten as
//! 02's. A Bulwark that knows only 01 refuses a 02 snapshot as not its own, rather than restoring
//! rows it would read as keys with empty values.
//!
//! Invariant: a restore either installs every row of a snapshot whose checksum matches, or
//! changes nothing.

use std::io::{Read, Seek, SeekFrom, Write};

use redb::{ReadableTable, TableDefinition};
use sha2::{Digest, Sha256};

#[cfg(test)]
use super::read::decode_latest_row;
use super::read::drop_values_from_latest;
use super::{
    MvccError, Store, BY_REVISION, CONSENSUS, HISTORY, LATEST, LEASES, LEASE_KEYS, META, SETTINGS,
};

const MAGIC: &[u8; 8] = b"BWSNAP02";
/// The version before `latest` rows lost their values.
const MAGIC_WITH_LATEST_VALUES: &[u8; 8] = b"BWSNAP01";
const END: u8 = 0xff;
const TABLE_LATEST: u8 = 0;
const TABLE_HISTORY: u8 = 1;
const TABLE_BY_REVISION: u8 = 2;
const TABLE_META: u8 = 3;
const TABLE_CONSENSUS: u8 = 4;
const TABLE_SETTINGS: u8 = 5;
const TABLE_LEASES: u8 = 6;
const TABLE_LEASE_KEYS: u8 = 7;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a Bulwark snapshot (bad magic)")]
    BadMagic,
    #[error("snapshot is corrupt or truncated: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] MvccError),
}

/// Writes into a digest as well as the output, so the checksum covers exactly what was written.
struct Hashing<W> {
    out: W,
    digest: Sha256,
    written: usize,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.out.write(buf)?;
        self.digest.update(&buf[..written]);
        self.written += written;
        Ok(written)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Writes every row of one table as records tagged `tag`, encoded by `encode`.
fn dump<K, V>(
    txn: &redb::ReadTransaction,
    out: &mut impl Write,
    tag: u8,
    definition: TableDefinition<K, V>,
    mut encode: impl FnMut(K::SelfType<'_>, V::SelfType<'_>) -> Option<(Vec<u8>, Vec<u8>)>,
) -> Result<(), SnapshotError>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
{
    let table = txn.open_table(definition).map_err(MvccError::from)?;
    for row in table.iter().map_err(MvccError::from)? {
        let (key, value) = row.map_err(MvccError::from)?;
        // `None`: a row left out of this snapshot.
        if let Some((key, value)) = encode(key.value(), value.value()) {
            write_record(out, tag, &key, &value)?;
        }
    }
    Ok(())
}

fn write_record(out: &mut impl Write, table: u8, key: &[u8], value: &[u8]) -> std::io::Result<()> {
    out.write_all(&[table])?;
    out.write_all(&(key.len() as u32).to_be_bytes())?;
    out.write_all(key)?;
    out.write_all(&(value.len() as u32).to_be_bytes())?;
    out.write_all(value)
}

impl Store {
    /// Writes a snapshot of the whole store as of one instant to `out`, and returns the
    /// `consensus` position that instant had. This is what Raft sends a member that is behind.
    pub fn write_snapshot(&self, out: impl Write) -> Result<Option<Vec<u8>>, SnapshotError> {
        self.write_snapshot_keeping(out, |_| true)
    }

    /// A snapshot for backups (`Maintenance.Snapshot`, `etcdctl snapshot save`): the whole store
    /// but the cluster's secrets, which a restore drops anyway ([`Store::forget_cluster`]): the
    /// join tokens and the CA rotation record (whose sealed key only a member needs).
    pub fn write_backup(&self, out: impl Write) -> Result<(), SnapshotError> {
        self.write_snapshot_keeping(out, |setting| !is_cluster_secret(setting))
            .map(|_| ())
    }

    fn write_snapshot_keeping(
        &self,
        out: impl Write,
        keep_setting: impl Fn(&str) -> bool,
    ) -> Result<Option<Vec<u8>>, SnapshotError> {
        let mut position = None;
        let txn = self.begin_read()?;
        // Raft purges its log behind a snapshot's position, so the store must not lose what the
        // snapshot holds: everything this read sees is made durable before it is dumped.
        self.flush()?;
        let mut out = Hashing {
            out,
            digest: Sha256::new(),
            written: 0,
        };
        out.write_all(MAGIC)?;
        let bytes = |k: &[u8], v: &[u8]| Some((k.to_vec(), v.to_vec()));
        dump(&txn, &mut out, TABLE_LATEST, LATEST, bytes)?;
        dump(&txn, &mut out, TABLE_HISTORY, HISTORY, bytes)?;
        dump(
            &txn,
            &mut out,
            TABLE_BY_REVISION,
            BY_REVISION,
            |(main, sub), key| {
                let mut encoded = main.to_be_bytes().to_vec();
                encoded.extend_from_slice(&sub.to_be_bytes());
                Some((encoded, key.to_vec()))
            },
        )?;
        dump(&txn, &mut out, TABLE_META, META, |name, value| {
            Some((name.as_bytes().to_vec(), value.to_be_bytes().to_vec()))
        })?;
        dump(&txn, &mut out, TABLE_CONSENSUS, CONSENSUS, |name, value| {
            if name == super::CONSENSUS_APPLIED {
                position = Some(value.to_vec());
            }
            Some((name.as_bytes().to_vec(), value.to_vec()))
        })?;
        dump(&txn, &mut out, TABLE_SETTINGS, SETTINGS, |name, value| {
            keep_setting(name).then(|| (name.as_bytes().to_vec(), value.to_vec()))
        })?;
        dump(&txn, &mut out, TABLE_LEASES, LEASES, |id, ttl| {
            Some((id.to_be_bytes().to_vec(), ttl.to_be_bytes().to_vec()))
        })?;
        // The lease id is the record's key and the attached user key its value.
        dump(
            &txn,
            &mut out,
            TABLE_LEASE_KEYS,
            LEASE_KEYS,
            |(id, key), ()| Some((id.to_be_bytes().to_vec(), key.to_vec())),
        )?;
        out.write_all(&[END])?;
        let written = out.written;
        out.write_all(&vec![0; (512 - written % 512) % 512])?;
        let digest = out.digest.finalize();
        out.out.write_all(&digest)?;
        out.out.flush()?;
        Ok(position)
    }

    /// Replaces the whole store with the snapshot read from `input`; a snapshot that is not whole
    /// (bad magic, framing or checksum) changes nothing.
    pub fn restore_snapshot(&self, input: impl Read) -> Result<(), SnapshotError> {
        // Read as it is restored, not into memory first (a store can be gigabytes): the records
        // go into one write transaction, committed only once the checksum at the end matched.
        let mut records = RecordReader::open(input)?;
        let version = records.version;

        let mut writer = self.settled_writer()?;
        let txn = self.db().begin_write().map_err(MvccError::from)?;
        {
            txn.delete_table(LATEST).map_err(MvccError::from)?;
            txn.delete_table(HISTORY).map_err(MvccError::from)?;
            txn.delete_table(BY_REVISION).map_err(MvccError::from)?;
            txn.delete_table(META).map_err(MvccError::from)?;
            txn.delete_table(CONSENSUS).map_err(MvccError::from)?;
            txn.delete_table(SETTINGS).map_err(MvccError::from)?;
            txn.delete_table(LEASES).map_err(MvccError::from)?;
            txn.delete_table(LEASE_KEYS).map_err(MvccError::from)?;
            let mut latest = txn.open_table(LATEST).map_err(MvccError::from)?;
            let mut history = txn.open_table(HISTORY).map_err(MvccError::from)?;
            let mut by_revision = txn.open_table(BY_REVISION).map_err(MvccError::from)?;
            let mut meta = txn.open_table(META).map_err(MvccError::from)?;
            let mut consensus = txn.open_table(CONSENSUS).map_err(MvccError::from)?;
            let mut settings = txn.open_table(SETTINGS).map_err(MvccError::from)?;
            let mut leases = txn.open_table(LEASES).map_err(MvccError::from)?;
            let mut lease_keys = txn.open_table(LEASE_KEYS).map_err(MvccError::from)?;
            while let Some((table, key, value)) = records.next_record()? {
                let (key, value) = (key.as_slice(), value.as_slice());
                let corrupt = |what: &str| SnapshotError::Corrupt(what.to_string());
                match table {
                    TABLE_LATEST => {
                        latest.insert(key, value).map_err(MvccError::from)?;
                    }
                    TABLE_HISTORY => {
                        history.insert(key, value).map_err(MvccError::from)?;
                    }
                    TABLE_BY_REVISION => {
                        let revision: [u8; 16] =
                            key.try_into().map_err(|_| corrupt("revision key length"))?;
                        let main = i64::from_be_bytes(revision[..8].try_into().unwrap());
                        let sub = i64::from_be_bytes(revision[8..].try_into().unwrap());
                        by_revision
                            .insert((main, sub), value)
                            .map_err(MvccError::from)?;
                    }
                    TABLE_META => {
                        let name = std::str::from_utf8(key).map_err(|_| corrupt("meta name"))?;
                        let number: [u8; 8] =
                            value.try_into().map_err(|_| corrupt("meta value length"))?;
                        meta.insert(name, i64::from_be_bytes(number))
                            .map_err(MvccError::from)?;
                    }
                    TABLE_CONSENSUS => {
                        let name =
                            std::str::from_utf8(key).map_err(|_| corrupt("consensus name"))?;
                        consensus.insert(name, value).map_err(MvccError::from)?;
                    }
                    TABLE_SETTINGS => {
                        let name = std::str::from_utf8(key).map_err(|_| corrupt("setting name"))?;
                        settings.insert(name, value).map_err(MvccError::from)?;
                    }
                    TABLE_LEASES => {
                        let id: [u8; 8] = key.try_into().map_err(|_| corrupt("lease id"))?;
                        let ttl: [u8; 8] = value.try_into().map_err(|_| corrupt("lease ttl"))?;
                        leases
                            .insert(i64::from_be_bytes(id), i64::from_be_bytes(ttl))
                            .map_err(MvccError::from)?;
                    }
                    TABLE_LEASE_KEYS => {
                        // The lease id was written as the record's key and the user key as its
                        // value.
                        let id: [u8; 8] = key.try_into().map_err(|_| corrupt("lease id"))?;
                        lease_keys
                            .insert((i64::from_be_bytes(id), value), ())
                            .map_err(MvccError::from)?;
                    }
                    other => return Err(corrupt(&format!("unknown table {other}"))),
                }
            }
            // The rows are in this version's layout now, whichever version wrote them.
            if version == MAGIC_WITH_LATEST_VALUES {
                drop_values_from_latest(&mut latest)?;
            }
            meta.insert(super::META_STORE_FORMAT, super::STORE_FORMAT)
                .map_err(MvccError::from)?;
        }
        // A defragmentation copying the old contents must not switch to them afterwards (it
        // switches under the writer lock, held since before the transaction began).
        writer.journal.interrupt();
        txn.commit().map_err(MvccError::from)?;
        self.settings_changed();
        // A read under the writer lock: it must not need the lock (no batch is open: the lock
        // was taken settled and no apply ran since).
        self.publish()?;
        Ok(())
    }
}

/// Checks a snapshot whole (magic, checksum, record framing) without restoring it, reading
/// `input` (buffered by the caller) twice, never into memory whole. The checksum first, so that damage anywhere, a cut
/// included, is reported as a checksum mismatch (the records' reader would stop at the first
/// broken record).
pub fn verify_snapshot(mut input: impl Read + Seek) -> Result<(), SnapshotError> {
    let length = input.seek(SeekFrom::End(0))?;
    input.seek(SeekFrom::Start(0))?;
    RecordReader::open(&mut input)?;
    let body_length = length
        .checked_sub(32)
        .ok_or_else(|| SnapshotError::Corrupt("shorter than its checksum".into()))?;
    input.seek(SeekFrom::Start(0))?;
    let mut digest = Sha256::new();
    std::io::copy(&mut (&mut input).take(body_length), &mut digest)?;
    let mut checksum = [0; 32];
    input.read_exact(&mut checksum)?;
    check_checksum(digest, &checksum)?;
    input.seek(SeekFrom::Start(0))?;
    let mut records = RecordReader::open(input)?;
    while records.next_record()?.is_some() {}
    Ok(())
}

impl Store {
    /// Drops what ties the store to the cluster it came from: the Raft position and membership,
    /// the join tokens (they pin the old CA) and the CA rotation record
    /// (`identities::rotation::ROTATION_SETTING`). Used when a snapshot seeds a new cluster.
    pub fn forget_cluster(&self) -> Result<(), MvccError> {
        let mut writer = self.settled_writer()?;
        writer.journal.interrupt();
        let txn = self.db().begin_write()?;
        {
            txn.delete_table(CONSENSUS)?;
            txn.open_table(CONSENSUS)?;
            let mut settings = txn.open_table(SETTINGS)?;
            // Tokens pin the old cluster's secrets; a CA rotation record names roots the new
            // cluster may not have (a restore without `--keep-ca-from` makes a new CA).
            settings.retain(|name, _| !is_cluster_secret(name))?;
        }
        txn.commit()?;
        self.settings_changed();
        Ok(())
    }
}

/// Settings that tie a store to its cluster's secrets: the join tokens (they pin the CA and admit
/// whoever holds them) and the CA rotation record (`identities::rotation::ROTATION_SETTING`).
fn is_cluster_secret(setting: &str) -> bool {
    setting.starts_with("join-token/") || setting == "ca/rotation"
}

/// One row of a snapshot: table tag, key, value.
type Record = (u8, Vec<u8>, Vec<u8>);

/// No key or value is larger: requests are capped at 64 MiB (`--max-request-bytes`), so a longer
/// field is a damaged length, refused before it is read.
const MAX_FIELD_BYTES: u64 = 256 << 20;

/// A snapshot's records, read one at a time from `input` and hashed as they are read; the
/// checksum is checked when the end marker is reached, before the end is reported.
struct RecordReader<R> {
    input: R,
    digest: Sha256,
    version: &'static [u8; 8],
}

impl<R: Read> RecordReader<R> {
    fn open(mut input: R) -> Result<Self, SnapshotError> {
        let mut magic = [0; 8];
        input
            .read_exact(&mut magic)
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::UnexpectedEof => SnapshotError::BadMagic,
                _ => SnapshotError::Io(error),
            })?;
        let version = [MAGIC, MAGIC_WITH_LATEST_VALUES]
            .into_iter()
            .find(|known| *known == &magic)
            .ok_or(SnapshotError::BadMagic)?;
        let mut digest = Sha256::new();
        digest.update(magic);
        Ok(RecordReader {
            input,
            digest,
            version,
        })
    }

    /// The next record (table, key, value), or `None` after the end marker once the rest of the
    /// snapshot proved whole. Not to be called again after `None` or an error.
    fn next_record(&mut self) -> Result<Option<Record>, SnapshotError> {
        let mut table = [0];
        self.read_hashed(&mut table)?;
        if table[0] == END {
            self.check_end()?;
            return Ok(None);
        }
        let key = self.read_field()?;
        let value = self.read_field()?;
        Ok(Some((table[0], key, value)))
    }

    fn read_field(&mut self) -> Result<Vec<u8>, SnapshotError> {
        let mut length = [0; 4];
        self.read_hashed(&mut length)?;
        let length = u32::from_be_bytes(length) as u64;
        if length > MAX_FIELD_BYTES {
            return Err(SnapshotError::Corrupt(format!(
                "a field of {length} bytes (at most {MAX_FIELD_BYTES})"
            )));
        }
        // Grown as it is read: a damaged length allocates no more than the snapshot holds.
        let mut field = Vec::new();
        (&mut self.input).take(length).read_to_end(&mut field)?;
        if field.len() as u64 != length {
            return Err(truncated());
        }
        self.digest.update(&field);
        Ok(field)
    }

    fn read_hashed(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        self.input
            .read_exact(buf)
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::UnexpectedEof => truncated(),
                _ => SnapshotError::Io(error),
            })?;
        self.digest.update(&*buf);
        Ok(())
    }

    /// After the end marker: zero padding, then the checksum of everything before it.
    fn check_end(&mut self) -> Result<(), SnapshotError> {
        let mut rest = Vec::new();
        // Padding is under 512 bytes: anything much longer is not a snapshot's end.
        (&mut self.input)
            .take(512 + 32 + 1)
            .read_to_end(&mut rest)?;
        let padding_len = rest
            .len()
            .checked_sub(32)
            .ok_or_else(|| SnapshotError::Corrupt("shorter than its checksum".into()))?;
        let (padding, checksum) = rest.split_at(padding_len);
        if padding.iter().any(|&byte| byte != 0) || padding.len() >= 512 {
            return Err(SnapshotError::Corrupt("data after the end marker".into()));
        }
        self.digest.update(padding);
        check_checksum(self.digest.clone(), checksum)
    }
}

fn check_checksum(digest: Sha256, checksum: &[u8]) -> Result<(), SnapshotError> {
    if digest.finalize().as_slice() != checksum {
        return Err(SnapshotError::Corrupt("checksum mismatch".into()));
    }
    Ok(())
}

fn truncated() -> SnapshotError {
    SnapshotError::Corrupt("record runs past the end".into())
}

/// `snapshot` (this version's) as the version before would have written it: `latest` rows with
/// their keys and values.
#[cfg(test)]
pub(super) fn as_version_with_latest_values(snapshot: &[u8]) -> Vec<u8> {
    use prost::Message;
    use std::collections::HashMap;

    let mut reader = RecordReader::open(snapshot).expect("a valid snapshot");
    let mut records = Vec::new();
    while let Some(record) = reader.next_record().expect("a valid snapshot") {
        records.push(record);
    }
    let mut values = HashMap::new();
    for (table, _, value) in &records {
        if *table == TABLE_HISTORY {
            if let super::read::Record::Put(kv) = super::read::Record::decode(value).unwrap() {
                values.insert((kv.key, kv.mod_revision), kv.value);
            }
        }
    }
    let mut out = MAGIC_WITH_LATEST_VALUES.to_vec();
    for (table, key, value) in records {
        if table == TABLE_LATEST {
            let mut kv = decode_latest_row(&key, &value).unwrap();
            kv.value = values[&(key.clone(), kv.mod_revision)].clone();
            write_record(&mut out, table, &key, &kv.encode_to_vec()).unwrap();
        } else {
            write_record(&mut out, table, &key, &value).unwrap();
        }
    }
    out.push(END);
    out.resize(out.len().next_multiple_of(512), 0);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}
