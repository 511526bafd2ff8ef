//! Writing key material to disk, and the atomic file replacement and directory sync that durable
//! writes elsewhere share.

use std::fs::{OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

const PRIVATE_MODE: u32 = 0o600;

/// Writes a file readable only by its owner and fsyncs it. Fails if `path` exists, so a key is
/// never overwritten. The file is created with mode 0600 (the umask can only narrow that, never
/// widen it), so it is never readable by others, even briefly; the mode is then set to exactly
/// 0600 in case the umask took away the owner's bits. On failure the partial file is removed.
/// The caller fsyncs the directory.
pub fn write_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_new_file(path, true, |file| file.write_all(contents))
}

/// Creates `path` (failing if it exists; 0600 when `private`, as [`write_private_file`]), lets
/// `write` fill it, and fsyncs it. On failure the partial file is removed.
pub fn write_new_file(
    path: &Path,
    private: bool,
    write: impl FnOnce(&mut std::fs::File) -> io::Result<()>,
) -> io::Result<()> {
    let mut file = if private {
        create_private_file(path)?
    } else {
        OpenOptions::new().write(true).create_new(true).open(path)?
    };
    let written = write(&mut file).and_then(|()| file.sync_all());
    if written.is_err() {
        drop(file);
        let _ = std::fs::remove_file(path);
    }
    written
}

/// Creates `path` (failing if it exists), open for reading and writing, readable only by its
/// owner: created with mode 0600 (the umask can only narrow that, never widen it), so it is never
/// readable by others, even briefly; the mode is then set to exactly 0600 in case the umask took
/// away the owner's bits. The caller fsyncs it and the directory.
pub fn create_private_file(path: &Path) -> io::Result<std::fs::File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(PRIVATE_MODE)
        .open(path)?;
    if let Err(error) = file.set_permissions(Permissions::from_mode(PRIVATE_MODE)) {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(error);
    }
    Ok(file)
}

/// Replaces `path` with `contents` atomically: written beside it (0600 when `private`, else
/// 0644), fsynced, renamed over it, directory fsynced.
pub fn replace_file(path: &Path, contents: &[u8], private: bool) -> io::Result<()> {
    replace_file_with(path, private, |file| file.write_all(contents))
}

/// [`replace_file`], with the new contents written by `write` as they are produced (a large
/// file need not be in memory whole).
fn replace_file_with(
    path: &Path,
    private: bool,
    write: impl FnOnce(&mut std::fs::File) -> io::Result<()>,
) -> io::Result<()> {
    let temporary = pending(path);
    write_pending(&temporary, private, write)?;
    std::fs::rename(&temporary, path)?;
    sync_parent(path)
}

/// Replaces a certificate and its private key so that a crash at any point leaves a matching
/// pair once [`finish_interrupted_replace`] has run: both new files are written and made durable
/// beside their targets first, then the key is renamed into place, then the certificate.
pub fn replace_key_pair(
    key_path: &Path,
    key_pem: &str,
    cert_path: &Path,
    cert_pem: &str,
) -> io::Result<()> {
    // Each step durable before the next, so the files a crash leaves tell how far it got.
    write_pending(&pending(key_path), true, |file| {
        file.write_all(key_pem.as_bytes())
    })?;
    sync_parent(key_path)?;
    write_pending(&pending(cert_path), false, |file| {
        file.write_all(cert_pem.as_bytes())
    })?;
    sync_parent(cert_path)?;
    std::fs::rename(pending(key_path), key_path)?;
    sync_parent(key_path)?;
    std::fs::rename(pending(cert_path), cert_path)?;
    sync_parent(cert_path)
}

/// Completes or undoes a [`replace_key_pair`] a crash interrupted. A pending certificate without
/// a pending key means the new key is already in place, so the certificate follows it; both
/// pending means nothing was renamed yet (and they may be incomplete), so both go.
pub fn finish_interrupted_replace(key_path: &Path, cert_path: &Path) -> io::Result<()> {
    let (key_pending, cert_pending) = (pending(key_path), pending(cert_path));
    if !key_pending.exists() && !cert_pending.exists() {
        return Ok(());
    }
    if cert_pending.exists() && !key_pending.exists() {
        std::fs::rename(&cert_pending, cert_path)?;
    } else {
        for leftover in [key_pending, cert_pending] {
            remove_if_present(&leftover)?;
        }
    }
    sync_parent(cert_path)
}

/// Removes `path`; one already gone is no error.
pub fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Where [`replace_file`] writes `path`'s next contents before renaming them into place.
pub fn pending(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".pending");
    path.with_file_name(name)
}

fn write_pending(
    temporary: &Path,
    private: bool,
    write: impl FnOnce(&mut std::fs::File) -> io::Result<()>,
) -> io::Result<()> {
    remove_if_present(temporary)?;
    write_new_file(temporary, private, write)
}

/// Fsyncs the directory holding `path`, so that a file or directory just created or renamed
/// there survives a crash.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn creates_mode_0600_and_never_overwrites() {
        let dir = std::env::temp_dir().join(format!(
            "bulwark-pki-files-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("member.key");

        write_private_file(&path, b"secret").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");

        let again = write_private_file(&path, b"other").unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");

        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_interrupted_key_pair_replacement_ends_with_a_matching_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("c.key"), dir.path().join("c.crt"));
        std::fs::write(&key, "old key").unwrap();
        std::fs::write(&cert, "old cert").unwrap();
        replace_key_pair(&key, "new key", &cert, "new cert").unwrap();
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "new key");
        assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), "new cert");

        // Crash after the key was renamed: the certificate follows.
        std::fs::write(&key, "newer key").unwrap();
        std::fs::write(pending(&cert), "newer cert").unwrap();
        finish_interrupted_replace(&key, &cert).unwrap();
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), "newer cert");

        // Crash before any rename: the old pair stays, the leftovers go.
        std::fs::write(pending(&key), "partial").unwrap();
        std::fs::write(pending(&cert), "partial").unwrap();
        finish_interrupted_replace(&key, &cert).unwrap();
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "newer key");
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), "newer cert");
        assert!(!pending(&key).exists() && !pending(&cert).exists());

        replace_file(&cert, b"replaced", false).unwrap();
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), "replaced");
    }
}
