//! The Raft snapshot a member keeps on disk, in `DATA/state/snapshot/`: `current` names it
//! (bincode [`Current`]: its metadata and the name of its data file) and `<name>.data` holds its
//! data, in the store's snapshot format (`mvcc::Store::write_snapshot`). Data is written straight
//! to its file and read from it, never held in memory whole: a store of gigabytes is snapshotted
//! every `--snapshot-count` entries.
//!
//! Invariants:
//! - `current` names a data file that is complete and durable: a data file is written and
//!   fsynced before `current` is atomically replaced to name it, and deleted only after;
//! - the kept snapshot only moves forward: one not newer than the kept one is dropped, not kept
//!   (openraft builds a snapshot beside the installation of a newer one from the leader, and its
//!   log is already purged up to the newer one). Replacements take turns on one lock;
//! - files are 0600: unlike a backup, a Raft snapshot holds the cluster's secrets (join tokens).
//!
//! At start, data files that `current` does not name (a build or a transfer a crash interrupted)
//! and a `current.pending` are removed, as is the single-file `snapshot.bin` of earlier
//! versions. When that file is there, `current` goes too: it is older than the snapshot an earlier
//! version wrote after it (a downgrade, then an upgrade). A `current` naming a missing data file
//! goes as well. Without a kept snapshot, openraft builds one at start if its log was purged.

use std::io::{self, Seek};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::SnapshotMeta;
use serde::{Deserialize, Serialize};

use super::{MemberNode, NodeId};
use crate::pki::remove_if_present;

const CURRENT: &str = "current";
const DATA_SUFFIX: &str = ".data";

/// The content of `current`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Current {
    pub meta: SnapshotMeta<NodeId, MemberNode>,
    /// The data file's name in the directory.
    pub data_file: String,
}

/// The snapshot directory, shared by a state machine and every snapshot builder cloned from it.
#[derive(Clone)]
pub struct SnapshotFiles {
    dir: PathBuf,
    /// What `current` holds: read at open, then kept up to date by [`SnapshotFiles::keep`].
    current: Arc<Mutex<Option<Current>>>,
}

impl SnapshotFiles {
    /// Opens (creating) `dir`, tidied as the module says; `legacy_files` are removed.
    pub fn open(dir: PathBuf, legacy_files: &[PathBuf]) -> io::Result<SnapshotFiles> {
        std::fs::create_dir_all(&dir)?;
        let files = SnapshotFiles {
            dir,
            current: Arc::new(Mutex::new(None)),
        };
        let mut current = files.read_current()?;
        let legacy_present = legacy_files.iter().any(|legacy| legacy.exists());
        let data_missing = current
            .as_ref()
            .is_some_and(|current| !files.dir.join(&current.data_file).exists());
        if current.is_some() && (legacy_present || data_missing) {
            remove_if_present(&files.dir.join(CURRENT))?;
            crate::pki::sync_parent(&files.dir.join(CURRENT))?;
            current = None;
        }
        let pending_current = crate::pki::pending(&files.dir.join(CURRENT));
        for entry in std::fs::read_dir(&files.dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            let named = current.as_ref().map(|current| current.data_file.as_str()) == Some(name);
            let leftover = name.ends_with(DATA_SUFFIX) || files.dir.join(name) == pending_current;
            if leftover && !named {
                remove_if_present(&files.dir.join(name))?;
            }
        }
        for legacy in legacy_files {
            remove_if_present(legacy)?;
        }
        *files.lock() = current;
        Ok(files)
    }

    /// A new, unused path for a data file.
    pub fn new_data_path(&self) -> PathBuf {
        self.dir
            .join(format!("{:016x}{DATA_SUFFIX}", rand::random::<u64>()))
    }

    /// Creates the data file `path` (0600), lets `write` fill it, and makes it durable (the file
    /// and its directory entry).
    pub fn write_data<T>(
        path: &Path,
        write: impl FnOnce(&mut io::BufWriter<&mut std::fs::File>) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut result = None;
        crate::pki::write_new_file(path, true, |file| {
            let mut out = io::BufWriter::new(file);
            result = Some(write(&mut out)?);
            io::Write::flush(&mut out)
        })?;
        crate::pki::sync_parent(path)?;
        Ok(result.expect("written"))
    }

    /// The data file to keep for a snapshot received into `received`, made durable: the file
    /// `begun` (the last one made for receiving) when `received` is that file, otherwise a copy
    /// of `received` in a new data file. In that case `begun` belongs to another transfer,
    /// still being written through its own handle, and is unlinked (that transfer's install
    /// then copies its file in turn).
    pub fn adopt_received(
        &self,
        received: &mut std::fs::File,
        begun: Option<PathBuf>,
    ) -> io::Result<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let identity = |metadata: &std::fs::Metadata| (metadata.dev(), metadata.ino());
        let received_identity = identity(&received.metadata()?);
        if let Some(begun) = begun {
            match std::fs::metadata(&begun) {
                Ok(metadata) if identity(&metadata) == received_identity => {
                    received.sync_all()?;
                    crate::pki::sync_parent(&begun)?;
                    return Ok(begun);
                }
                _ => remove_if_present(&begun)?,
            }
        }
        let copy = self.new_data_path();
        received.seek(io::SeekFrom::Start(0))?;
        Self::write_data(&copy, |out| io::copy(received, out))?;
        Ok(copy)
    }

    /// Makes the complete, fsynced data file `data` with `meta` the kept snapshot, unless the
    /// kept one is at least as new: then `data` is deleted and false returned. An equal one
    /// holds the same state (a build can read the store just after an install restored it), so
    /// either copy serves.
    pub fn keep(&self, meta: &SnapshotMeta<NodeId, MemberNode>, data: &Path) -> io::Result<bool> {
        let mut current = self.lock();
        let kept_covers = current
            .as_ref()
            .and_then(|current| current.meta.last_log_id);
        if kept_covers.is_some() && kept_covers >= meta.last_log_id {
            remove_if_present(data)?;
            return Ok(false);
        }
        let data_file = data
            .file_name()
            .and_then(|name| name.to_str())
            .filter(|_| data.parent() == Some(self.dir.as_path()))
            .ok_or_else(|| io::Error::other(format!("not a data file here: {}", data.display())))?
            .to_string();
        let next = Current {
            meta: meta.clone(),
            data_file,
        };
        let encoded = bincode::serialize(&next).map_err(io::Error::other)?;
        crate::pki::replace_file(&self.dir.join(CURRENT), &encoded, true)?;
        if let Some(previous) = current.replace(next) {
            remove_if_present(&self.dir.join(previous.data_file))?;
        }
        Ok(true)
    }

    /// The kept snapshot's metadata.
    #[cfg(test)]
    pub fn current(&self) -> Option<Current> {
        self.lock().clone()
    }

    /// The kept snapshot's metadata and its data file, opened (under the lock, so a replacement
    /// cannot delete the file between the two; once open, the file stays readable if deleted).
    pub fn open_current(&self) -> io::Result<Option<(Current, std::fs::File)>> {
        let current = self.lock();
        match &*current {
            Some(current) => {
                let data = std::fs::File::open(self.dir.join(&current.data_file))?;
                Ok(Some((current.clone(), data)))
            }
            None => Ok(None),
        }
    }

    fn read_current(&self) -> io::Result<Option<Current>> {
        match std::fs::read(self.dir.join(CURRENT)) {
            Ok(bytes) => bincode::deserialize(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Current>> {
        // Only replaced once the files changed, so a panicked holder left it true.
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
