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
//! A data file that `current` does not name (a build or a transfer a crash interrupted) is
//! removed when the member starts, as is the single-file `snapshot.bin` of earlier versions
//! (openraft builds a new snapshot at start when its log was purged and none is kept).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::SnapshotMeta;
use serde::{Deserialize, Serialize};

use super::{MemberNode, NodeId};

const CURRENT: &str = "current";
const DATA_SUFFIX: &str = ".data";

/// The content of `current`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Current {
    pub meta: SnapshotMeta<NodeId, MemberNode>,
    /// The data file's name in the directory.
    pub data_file: String,
}

/// What the files' users know of `current` (read once, then kept up to date).
enum Known {
    Unread,
    Read(Option<Current>),
}

/// The snapshot directory, shared by a state machine and every snapshot builder cloned from it.
#[derive(Clone)]
pub struct SnapshotFiles {
    dir: PathBuf,
    current: Arc<Mutex<Known>>,
}

impl SnapshotFiles {
    /// Opens (creating) `dir`, removing data files `current` does not name and `legacy_files`.
    pub fn open(dir: PathBuf, legacy_files: &[PathBuf]) -> io::Result<SnapshotFiles> {
        std::fs::create_dir_all(&dir)?;
        let files = SnapshotFiles {
            dir,
            current: Arc::new(Mutex::new(Known::Unread)),
        };
        let current = files.current()?;
        for entry in std::fs::read_dir(&files.dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let named = current.as_ref().map(|current| &current.data_file) == Some(&name);
            if name != CURRENT && !named {
                remove_if_present(&files.dir.join(&name))?;
            }
        }
        for legacy in legacy_files {
            remove_if_present(legacy)?;
        }
        Ok(files)
    }

    /// A new, unused path for a data file.
    pub fn new_data_path(&self) -> PathBuf {
        self.dir
            .join(format!("{:016x}{DATA_SUFFIX}", rand::random::<u64>()))
    }

    /// Creates the data file `path` (0600), lets `write` fill it, and fsyncs it.
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
        Ok(result.expect("written"))
    }

    /// Makes the complete, fsynced data file `data` with `meta` the kept snapshot, unless the
    /// kept one is at least as new: then `data` is deleted and false returned. An equal one
    /// holds the same state (a build can read the store just after an install restored it), so
    /// either copy serves.
    pub fn keep(&self, meta: &SnapshotMeta<NodeId, MemberNode>, data: &Path) -> io::Result<bool> {
        let mut known = self.lock();
        let current = match &*known {
            Known::Read(current) => current.clone(),
            Known::Unread => self.read_current()?,
        };
        let kept_covers = current
            .as_ref()
            .and_then(|current| current.meta.last_log_id);
        if kept_covers.is_some() && kept_covers >= meta.last_log_id {
            *known = Known::Read(current);
            remove_if_present(data)?;
            return Ok(false);
        }
        let data_file = data
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| io::Error::other(format!("not a data file: {}", data.display())))?
            .to_string();
        let next = Current {
            meta: meta.clone(),
            data_file,
        };
        let encoded = bincode::serialize(&next).map_err(io::Error::other)?;
        // Also makes the data file's directory entry durable: same directory.
        crate::pki::replace_file(&self.dir.join(CURRENT), &encoded, true)?;
        if let Some(previous) = current {
            remove_if_present(&self.dir.join(previous.data_file))?;
        }
        *known = Known::Read(Some(next));
        Ok(true)
    }

    /// The kept snapshot's metadata.
    pub fn current(&self) -> io::Result<Option<Current>> {
        let mut known = self.lock();
        if let Known::Read(current) = &*known {
            return Ok(current.clone());
        }
        let current = self.read_current()?;
        *known = Known::Read(current.clone());
        Ok(current)
    }

    /// The kept snapshot's metadata and its data file, opened (under the lock, so a replacement
    /// cannot delete the file between the two; once open, the file stays readable if deleted).
    pub fn open_current(&self) -> io::Result<Option<(Current, std::fs::File)>> {
        let mut known = self.lock();
        let current = match &*known {
            Known::Read(current) => current.clone(),
            Known::Unread => self.read_current()?,
        };
        *known = Known::Read(current.clone());
        match current {
            Some(current) => {
                let data = std::fs::File::open(self.dir.join(&current.data_file))?;
                Ok(Some((current, data)))
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        // `Known` is only replaced after the files changed, so a panicked holder left it true.
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}
