//! The multi-version key-value store: revisions, the key index, historical reads, compaction, and
//! the apply function that turns replicated commands into new revisions.
//!
//! Model (etcd's): every write transaction gets the next main revision; a txn with several writes
//! is one main revision with increasing sub-revisions. Each key keeps `create_revision`,
//! `mod_revision` and `version`; a delete writes a tombstone and resets the version. Compaction at
//! revision C drops every version of a key older than its newest version at or below C (and that
//! one too when it is a tombstone).
//!
//! Storage is one redb database (see `docs/design.md` for the byte layout):
//! - `latest`: live key -> its `KeyValue` without key and value (protobuf): what current reads
//!   scan; a value is read from the key's `history` record at its mod revision (`read.rs`);
//! - `history`: `history_key(key, revision)` -> record (put or tombstone + `KeyValue`): what
//!   historical reads and compaction scan;
//! - `by_revision`: `(main, sub)` -> key: the change log in revision order;
//! - `meta`: current revision, compacted revision;
//! - `leases`: lease id -> granted TTL (seconds); `lease_keys`: (lease id, key) for every key
//!   attached to a lease;
//! - `settings`: cluster settings outside the etcd keyspace (join tokens), name -> bytes;
//! - `consensus`: opaque bytes the write path stores with the data (its last applied log
//!   position), so data and position can never disagree after a crash.
//!
//! Invariants:
//! - `latest` holds exactly the keys whose newest `history` record is a put, with that record's
//!   revisions, version and lease.
//! - `meta.current_revision` is the highest main revision in `history` (or 1 on a new store), and
//!   the data and the `consensus` position change in the same redb transaction, so a restart
//!   resumes exactly after the last applied command. Applies are made durable at most
//!   [`FLUSH_INTERVAL`] late (the Raft log holds everything after the durable position, and is
//!   purged only behind a snapshot, which [`Store::write_snapshot`] makes durable first).
//! - Only [`Store::apply`] writes the keyspace (a snapshot restore replaces it whole); it is
//!   called in log order by the write path.
//! - Every read sees every apply that returned before it began. Consecutive applies share one
//!   open write transaction (as etcd's backend batches its own): committing a redb transaction
//!   per apply cost half of the apply's CPU. A read that finds applies not yet committed commits
//!   them first ([`Store::begin_read`]); so does every other writer, since redb has one write
//!   transaction at a time ([`Store::settled_writer`]).
//! - A store that lost applies it had reported done (a storage error or a panic with a batch
//!   open) refuses every read and write until it is reopened ([`MvccError::Failed`]).

mod apply;
mod compare;
mod defrag;
mod events;
pub mod keys;
mod read;
mod result;
mod snapshot;

pub use defrag::DefragmentReport;
pub use result::{decode_result, encode_result};
pub use snapshot::{verify_snapshot, SnapshotError};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use prost::Message;
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};

use crate::proto::bulwarkpb::{command, Command};
use crate::proto::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse, LeaseGrantResponse, LeaseRevokeResponse, PutResponse,
    RangeRequest, RangeResponse, TxnResponse,
};

/// A point in the store's history: `main` is etcd's revision, `sub` orders writes within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

/// The revision of a store that has never been written, as etcd's.
pub const FIRST_REVISION: i64 = 1;
/// How stale the durable state may be behind the applied one; the Raft log covers the
/// difference after a crash (a restart re-applies at most this much). Every apply waits while a
/// durable commit runs (15 to 100 ms: redb writes out the freed-page records of the non-durable
/// commits since the last one, the pages they touched, then fsyncs), so the interval sets how
/// often writes stall: at 1 s that was the puts' p99, at 10 s it is below it, with the same
/// throughput and file size (`docs/benchmarks.md`). etcd commits every 100 ms, but its bbolt is
/// keyed by revision and writes a few pages at its end; `latest` and `history` are keyed by key.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(10);
/// How old a shared write transaction may grow: the first apply after this commits it, if no
/// read or writer needed it sooner (an idle store keeps its batch until one does, or until it
/// closes). etcd's backend batch interval.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(100);
/// How many commands one batch may hold before it is committed, whatever its age (etcd's
/// backend batch limit).
pub const BATCH_COMMANDS: usize = 10_000;

const LATEST: TableDefinition<&[u8], &[u8]> = TableDefinition::new("latest");
const HISTORY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("history");
const BY_REVISION: TableDefinition<(i64, i64), &[u8]> = TableDefinition::new("by_revision");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const CONSENSUS: TableDefinition<&str, &[u8]> = TableDefinition::new("consensus");
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");
const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");
const LEASE_KEYS: TableDefinition<(i64, &[u8]), ()> = TableDefinition::new("lease_keys");

const META_CURRENT_REVISION: &str = "current_revision";
const META_COMPACT_REVISION: &str = "compact_revision";
/// The layout the store's tables follow, so that a Bulwark refuses a store laid out by a newer
/// one instead of misreading it.
const META_STORE_FORMAT: &str = "store_format";
/// 2: `latest` rows without values (see `read.rs`). 1 (or none): rows with them.
const STORE_FORMAT: i64 = 2;
const CONSENSUS_APPLIED: &str = "applied";

#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("key not found")]
    KeyNotFound,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("the setting changed since it was read")]
    SettingChanged,
    #[error("storage error: {0}")]
    Storage(#[from] redb::Error),
    #[error(
        "the store was written by a newer Bulwark (store format {found}; this one reads up to \
         {STORE_FORMAT})"
    )]
    NewerFormat { found: i64 },
    #[error("corrupt store: {0}")]
    Corrupt(String),
    #[error("defragmentation interrupted by a snapshot install; run it again")]
    DefragmentInterrupted,
    #[error("defragmentation: {0}")]
    DefragmentFile(#[from] std::io::Error),
    /// A write failed after earlier applies had been reported done but not yet committed: this
    /// process's view of the store went back in time, so it serves nothing more. A restart
    /// re-applies the lost applies from the Raft log.
    #[error("the store failed a write and must be reopened (restart the member): {0}")]
    Failed(String),
}

macro_rules! storage_errors {
    ($($error:ty),*) => {
        $(impl From<$error> for MvccError {
            fn from(error: $error) -> Self {
                MvccError::Storage(error.into())
            }
        })*
    };
}
storage_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What applying one command produced.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandResponse {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    SettingStored,
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
}

/// Revisions and positions a caller may report (`Status`, response headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStatus {
    pub current_revision: i64,
    pub compact_revision: i64,
}

/// A lease as the replicated state knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Granted TTL, seconds.
    pub ttl: i64,
    pub keys: Vec<Vec<u8>>,
}

pub struct Store {
    /// Replaced (never mutated in place) by a defragmentation; readers hold their own `Arc`.
    db: RwLock<Arc<Database>>,
    path: PathBuf,
    /// The newest applied revision, published after every apply (watchers wait on it, and read
    /// it through [`Store::begin_read`], which commits it if needed).
    applied: tokio::sync::watch::Sender<i64>,
    /// How many times `settings` changed (applies that wrote it, restores, `forget_cluster`),
    /// counted once the change is visible to readers: a caller may keep what it read of the
    /// settings until the count moves.
    settings_changes: AtomicU64,
    /// Serialises every writer (applies, flushes, restores, a defragmentation's switch to its
    /// new file); taken before a write transaction is begun.
    writer: Mutex<Writer>,
    /// What the writer's open batch holds that a read of the last commit would miss
    /// ([`UNSETTLED_APPLIES`], [`UNSETTLED_SETTINGS`]; both once the writer failed): readers
    /// that would miss it take the writer lock to commit it. Set under the lock before an apply
    /// returns; cleared under it by the commit.
    unsettled: AtomicU8,
    /// One defragmentation at a time.
    defragmenting: Mutex<()>,
}

struct Writer {
    /// When everything applied was last made durable (see [`Store::apply`]).
    last_flush: Instant,
    /// [`BATCH_INTERVAL`] and [`FLUSH_INTERVAL`] (tests set others).
    batch_interval: Duration,
    flush_interval: Duration,
    /// Applies done but not yet committed.
    batch: Option<Batch>,
    /// Why the store stopped serving, once a write failed with applies uncommitted.
    failed: Option<String>,
    journal: defrag::Journal,
}

/// The open write transaction applies share.
struct Batch {
    txn: WriteTransaction,
    began: Instant,
    commands: usize,
}

/// The open batch holds applies (any read of the keyspace must commit it first).
const UNSETTLED_APPLIES: u8 = 1;
/// The open batch wrote cluster settings (reads of settings must commit it first; the others
/// see the same settings in the last commit, and a check on every write's path reads them).
const UNSETTLED_SETTINGS: u8 = 2;
const UNSETTLED_ALL: u8 = UNSETTLED_APPLIES | UNSETTLED_SETTINGS;

impl Writer {
    fn check(&self) -> Result<(), MvccError> {
        match &self.failed {
            Some(reason) => Err(MvccError::Failed(reason.clone())),
            None => Ok(()),
        }
    }

    /// Commits the open batch, if any, so that a read of the last commit misses nothing; then,
    /// as asked, makes every commit so far durable. The durable commit comes after the readers
    /// are let go (it takes 15 to 100 ms), so only a reader that found the batch open just
    /// before waits for it.
    ///
    /// With [`Flush::IfDue`], a failed durable commit is logged, not returned: everything is
    /// committed and readable, and the next apply tries the durable commit again.
    fn settle(
        &mut self,
        db: &Database,
        unsettled: &AtomicU8,
        flush: Flush,
    ) -> Result<(), MvccError> {
        self.check()?;
        if let Some(batch) = self.batch.take() {
            if let Err(error) = batch.txn.commit() {
                return Err(self.fail(unsettled, error.to_string()));
            }
        }
        unsettled.store(0, Ordering::Release);
        let durable = match flush {
            Flush::Now => true,
            Flush::IfDue => self.flush_due(),
            Flush::Later => false,
        };
        if durable {
            // An empty durable commit: redb persists the non-durable commits before it with it.
            match db
                .begin_write()
                .map_err(MvccError::from)
                .and_then(|txn| Ok(txn.commit()?))
            {
                Ok(()) => self.last_flush = Instant::now(),
                Err(error) if matches!(flush, Flush::IfDue) => {
                    tracing::warn!(%error, "could not make the store durable; will try again");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    fn flush_due(&self) -> bool {
        self.last_flush.elapsed() >= self.flush_interval
    }

    /// Records that applies already reported done were lost: from now on the store refuses
    /// every read and write, until the member restarts and re-applies them from its log.
    fn fail(&mut self, unsettled: &AtomicU8, reason: String) -> MvccError {
        tracing::error!(
            %reason,
            "the store lost applies it had reported done; it refuses reads and writes until the member restarts"
        );
        self.batch = None;
        self.failed = Some(reason.clone());
        unsettled.store(UNSETTLED_ALL, Ordering::Release);
        MvccError::Failed(reason)
    }
}

/// When [`Writer::settle`] makes the commits durable.
#[derive(Clone, Copy)]
enum Flush {
    Now,
    /// When [`FLUSH_INTERVAL`] has passed since the last durable commit.
    IfDue,
    /// Only readers or another writer need the batch committed.
    Later,
}

impl Store {
    /// Opens the store at `path`, creating an empty one (revision 1) if there is none.
    pub fn open(path: &Path) -> Result<Self, MvccError> {
        defrag::remove_leftover(path)?;
        let db = open_database(path)?;
        let txn = db.begin_write()?;
        {
            txn.open_table(LATEST)?;
            txn.open_table(HISTORY)?;
            txn.open_table(BY_REVISION)?;
            txn.open_table(CONSENSUS)?;
            txn.open_table(SETTINGS)?;
            txn.open_table(LEASES)?;
            txn.open_table(LEASE_KEYS)?;
            let mut meta = txn.open_table(META)?;
            if meta.get(META_CURRENT_REVISION)?.is_none() {
                meta.insert(META_CURRENT_REVISION, FIRST_REVISION)?;
                meta.insert(META_COMPACT_REVISION, 0)?;
            }
            let format = meta.get(META_STORE_FORMAT)?.map(|format| format.value());
            if let Some(found) = format.filter(|&found| found > STORE_FORMAT) {
                return Err(MvccError::NewerFormat { found });
            }
            if format != Some(STORE_FORMAT) {
                // Once, at the first open after the upgrade, in the same transaction: members in
                // the same state then hold the same bytes (`Maintenance.Hash` compares them).
                read::drop_values_from_latest(&mut txn.open_table(LATEST)?)?;
                meta.insert(META_STORE_FORMAT, STORE_FORMAT)?;
            }
        }
        txn.commit()?;
        let store = Store {
            db: RwLock::new(Arc::new(db)),
            path: path.to_path_buf(),
            applied: tokio::sync::watch::Sender::new(FIRST_REVISION),
            writer: Mutex::new(Writer {
                last_flush: Instant::now(),
                batch_interval: BATCH_INTERVAL,
                flush_interval: FLUSH_INTERVAL,
                batch: None,
                failed: None,
                journal: defrag::Journal::Off,
            }),
            unsettled: AtomicU8::new(0),
            settings_changes: AtomicU64::new(0),
            defragmenting: Mutex::new(()),
        };
        store.publish()?;
        Ok(store)
    }

    /// Tells watchers the newest revision.
    fn publish(&self) -> Result<(), MvccError> {
        let current = self.status()?.current_revision;
        self.applied.send_replace(current);
        Ok(())
    }

    /// A receiver that sees the newest revision change (after each apply or restore).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<i64> {
        self.applied.subscribe()
    }

    /// Applies encoded [`Command`]s in order, and records `consensus` (the caller's log
    /// position) with them, in the same redb transaction. Returns one result per command; a
    /// command that fails changes nothing, and the others still apply.
    ///
    /// The transaction is shared with the applies before and after this one (see the module
    /// documentation) and committed by the first apply that finds it [`BATCH_INTERVAL`] old or
    /// holding [`BATCH_COMMANDS`], or when a read or another writer needs it. Commits are made
    /// durable by the first apply [`FLUSH_INTERVAL`] after the last durable one: the Raft log is
    /// the durable record of every applied command, so a crash loses nothing (openraft
    /// re-applies the log after the durable position); [`Store::flush`] makes everything
    /// applied so far durable.
    ///
    /// An `Err` (a storage failure) means nothing of this apply was written. If uncommitted
    /// applies before it were lost with it, the store then refuses everything
    /// ([`MvccError::Failed`]) until it is reopened.
    pub fn apply(
        &self,
        commands: &[&[u8]],
        consensus: &[u8],
    ) -> Result<Vec<Result<CommandResponse, MvccError>>, MvccError> {
        let mut writer = self.writer();
        writer.check()?;
        let had_uncommitted_applies = writer.batch.is_some();
        let mut batch = match writer.batch.take() {
            Some(batch) => batch,
            None => Batch {
                txn: begin_write_nondurable(&self.db())?,
                began: Instant::now(),
                commands: 0,
            },
        };
        let applied = match apply_commands(&batch.txn, commands, consensus) {
            Ok(applied) => applied,
            Err(error) => {
                // Dropping the transaction rolls back this apply, and every uncommitted one
                // before it: then the store's state is behind what was reported applied.
                drop(batch);
                if had_uncommitted_applies {
                    return Err(writer.fail(&self.unsettled, error.to_string()));
                }
                return Err(error);
            }
        };
        batch.commands += commands.len();
        let full =
            batch.began.elapsed() >= writer.batch_interval || batch.commands >= BATCH_COMMANDS;
        writer.batch = Some(batch);
        writer.journal.record(commands, consensus);
        // Readers may commit every batch before it is full: the durable interval is checked on
        // every apply.
        if full || writer.flush_due() {
            // An `Err` here means the commit failed and the store has failed with it.
            writer.settle(&self.db(), &self.unsettled, Flush::IfDue)?;
        } else {
            let settings = if applied.settings_written {
                UNSETTLED_SETTINGS
            } else {
                0
            };
            self.unsettled
                .fetch_or(UNSETTLED_APPLIES | settings, Ordering::Release);
        }
        if applied.settings_written {
            self.settings_changed();
        }
        drop(writer);
        // The transaction knew the revision it ended at: no read transaction to ask again.
        self.applied.send_replace(applied.current_revision);
        Ok(applied.results)
    }

    /// Makes everything applied so far durable.
    pub fn flush(&self) -> Result<(), MvccError> {
        self.writer()
            .settle(&self.db(), &self.unsettled, Flush::Now)
    }

    /// The current database (a defragmentation may replace it; a caller keeps the one it got).
    /// Read it through [`Store::begin_read`] and write it under [`Store::settled_writer`].
    fn db(&self) -> Arc<Database> {
        self.db.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        match self.writer.lock() {
            Ok(writer) => writer,
            Err(poisoned) => {
                // A panic under the lock lost applies reported done only if it dropped the batch
                // that held them (an apply or a commit that panicked midway).
                let mut writer = poisoned.into_inner();
                let lost = writer.batch.is_none()
                    && self.unsettled.load(Ordering::Acquire) & UNSETTLED_APPLIES != 0;
                if lost && writer.failed.is_none() {
                    writer.fail(&self.unsettled, "a write panicked".to_string());
                }
                writer
            }
        }
    }

    /// The writer lock, with every apply so far committed: for the writers that begin their own
    /// transaction (redb has one write transaction at a time, so beginning another while a batch
    /// is open would wait forever).
    fn settled_writer(&self) -> Result<std::sync::MutexGuard<'_, Writer>, MvccError> {
        let mut writer = self.writer();
        writer.settle(&self.db(), &self.unsettled, Flush::Later)?;
        Ok(writer)
    }

    /// A read transaction that sees every apply that returned before this call: an open batch
    /// is committed first.
    fn begin_read(&self) -> Result<ReadTransaction, MvccError> {
        self.begin_read_missing_nothing_of(UNSETTLED_APPLIES)
    }

    /// A read transaction whose `settings` table holds every setting applied before this call.
    /// It commits the open batch only if that wrote settings (rare), so the check of the alarms
    /// on every write's path never waits for an apply.
    fn begin_read_settings(&self) -> Result<ReadTransaction, MvccError> {
        self.begin_read_missing_nothing_of(UNSETTLED_SETTINGS)
    }

    fn begin_read_missing_nothing_of(&self, needed: u8) -> Result<ReadTransaction, MvccError> {
        if self.unsettled.load(Ordering::Acquire) & needed != 0 {
            drop(self.settled_writer()?);
        }
        Ok(self.db().begin_read()?)
    }

    /// Every lease: (id, granted TTL in seconds).
    pub fn leases(&self) -> Result<Vec<(i64, i64)>, MvccError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(LEASES)?;
        let mut leases = Vec::new();
        for row in table.iter()? {
            let (id, ttl) = row?;
            leases.push((id.value(), ttl.value()));
        }
        Ok(leases)
    }

    /// A lease's granted TTL and attached keys, if it exists.
    pub fn lease(&self, id: i64) -> Result<Option<LeaseInfo>, MvccError> {
        let txn = self.begin_read()?;
        let Some(ttl) = txn.open_table(LEASES)?.get(id)? else {
            return Ok(None);
        };
        let ttl = ttl.value();
        let mut keys = Vec::new();
        let attached = txn.open_table(LEASE_KEYS)?;
        for row in attached.range::<(i64, &[u8])>((id, &[][..])..)? {
            let (entry, _) = row?;
            let (lease, key) = entry.value();
            if lease != id {
                break;
            }
            keys.push(key.to_vec());
        }
        Ok(Some(LeaseInfo { ttl, keys }))
    }

    /// The count of changes to the settings so far (see [`Store::settings_with_prefix`]); `None`
    /// while a change is not committed yet or once the store failed: a caller must then read the
    /// store, which commits the change or reports the failure.
    pub fn settings_changes(&self) -> Option<u64> {
        let changes = self.settings_changes.load(Ordering::Acquire);
        (self.unsettled.load(Ordering::Acquire) & UNSETTLED_SETTINGS == 0).then_some(changes)
    }

    /// Called after a change to `settings` is visible to readers. Release: whoever sees the new
    /// count also sees what made the change visible (the commit, or `UNSETTLED_SETTINGS` set
    /// before it, which sends the reader to the store).
    fn settings_changed(&self) {
        self.settings_changes.fetch_add(1, Ordering::Release);
    }

    /// Every cluster setting whose name starts with `prefix`. A caller that read them when
    /// [`Store::settings_changes`] counted N may keep the answer while it still counts N.
    pub fn settings_with_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, MvccError> {
        let txn = self.begin_read_settings()?;
        let table = txn.open_table(SETTINGS)?;
        let mut found = Vec::new();
        for row in table.range(prefix..)? {
            let (name, value) = row?;
            if !name.value().starts_with(prefix) {
                break;
            }
            found.push((name.value().to_string(), value.value().to_vec()));
        }
        Ok(found)
    }

    /// A cluster setting stored by a `set_setting` command.
    pub fn setting(&self, name: &str) -> Result<Option<Vec<u8>>, MvccError> {
        let txn = self.begin_read_settings()?;
        let table = txn.open_table(SETTINGS)?;
        Ok(table.get(name)?.map(|v| v.value().to_vec()))
    }

    /// The `consensus` bytes of the last [`Store::apply`], if any.
    pub fn consensus_state(&self) -> Result<Option<Vec<u8>>, MvccError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(CONSENSUS)?;
        Ok(table.get(CONSENSUS_APPLIED)?.map(|v| v.value().to_vec()))
    }

    /// A range read at the current revision or at `req.revision`, with etcd's limit, sort and
    /// filter rules. Sees every command applied before the call.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        let txn = self.begin_read()?;
        let status = read_status(&txn.open_table(META)?)?;
        let latest = txn.open_table(LATEST)?;
        let history = txn.open_table(HISTORY)?;
        read::range_request(&latest, &history, req, &status)
    }

    pub fn status(&self) -> Result<StoreStatus, MvccError> {
        let txn = self.begin_read()?;
        read_status(&txn.open_table(META)?)
    }

    /// Size of the database file in bytes.
    pub fn file_size(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }
}

impl Drop for Store {
    /// A clean stop leaves nothing for the next start to re-apply.
    fn drop(&mut self) {
        if let Err(error) = self.flush() {
            tracing::warn!("could not flush the store on close: {error}");
        }
    }
}

/// redb's own page cache for the store. redb's default (1 GiB) would make the resident memory of
/// a large store mostly cache; pages outside it come from the OS page cache, which the kernel
/// gives back under pressure.
const CACHE_BYTES: usize = 128 * 1024 * 1024;

/// Opens (or creates) a store database file with Bulwark's settings.
fn open_database(path: &Path) -> Result<Database, redb::DatabaseError> {
    Database::builder().set_cache_size(CACHE_BYTES).create(path)
}

/// A write transaction whose commit is not fsynced (made durable later by a durable one).
fn begin_write_nondurable(db: &Database) -> Result<WriteTransaction, MvccError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(redb::Durability::None)
        .map_err(|e| MvccError::Storage(e.into()))?;
    Ok(txn)
}

/// What [`apply_commands`] did.
struct Applied {
    /// One per command.
    results: Vec<Result<CommandResponse, MvccError>>,
    /// The revision the store is at afterwards.
    current_revision: i64,
    settings_written: bool,
}

/// Applies `commands` in order in `txn`, recording `consensus` with them (see
/// [`Store::apply`]).
fn apply_commands(
    txn: &WriteTransaction,
    commands: &[&[u8]],
    consensus: &[u8],
) -> Result<Applied, MvccError> {
    let mut results = Vec::with_capacity(commands.len());
    let current_revision;
    let settings_written;
    {
        let mut state = apply::ApplyState::open(txn)?;
        for payload in commands {
            let result = match Command::decode(*payload) {
                Ok(command) => state.apply(command),
                Err(error) => Err(MvccError::Corrupt(format!(
                    "a log entry does not decode as a command: {error}"
                ))),
            };
            // Storage failures abort the batch; command-level errors are answers.
            if let Err(MvccError::Storage(_)) = result {
                return Err(result.unwrap_err());
            }
            results.push(result);
        }
        txn.open_table(CONSENSUS)?
            .insert(CONSENSUS_APPLIED, consensus)?;
        current_revision = state.current_revision();
        settings_written = state.settings_written;
    }
    Ok(Applied {
        results,
        current_revision,
        settings_written,
    })
}

/// Encodes a command as the bytes a log entry carries.
pub fn encode_command(kind: command::Kind) -> Vec<u8> {
    Command { kind: Some(kind) }.encode_to_vec()
}

fn read_status(
    meta: &impl redb::ReadableTable<&'static str, i64>,
) -> Result<StoreStatus, MvccError> {
    let get = |name: &str| -> Result<i64, MvccError> {
        meta.get(name)?
            .map(|v| v.value())
            .ok_or_else(|| MvccError::Corrupt(format!("meta table lacks {name}")))
    };
    Ok(StoreStatus {
        current_revision: get(META_CURRENT_REVISION)?,
        compact_revision: get(META_COMPACT_REVISION)?,
    })
}

#[cfg(test)]
mod tests;
