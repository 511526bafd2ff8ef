//! Writing key material to disk.

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
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_MODE)
        .open(path)?;
    let written = file
        .set_permissions(Permissions::from_mode(PRIVATE_MODE))
        .and_then(|()| file.write_all(contents))
        .and_then(|()| file.sync_all());
    if written.is_err() {
        drop(file);
        let _ = std::fs::remove_file(path);
    }
    written
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
}
