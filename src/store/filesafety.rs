//! The database holds secrets, and `get` hands out whatever token it finds there: the SQLite
//! file and its `-wal` / `-shm` companions must be ours alone. No SQL here; only file
//! metadata. PostgreSQL's client key follows the key file's rule (`key_too_open`).

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What the command will do with the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read tokens (`get`): the file may belong to the refresher's user when a group reads it.
    Read,
    /// Write (every other command): the file must be this user's.
    Write,
}

/// This process's effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// libpq's rule for a private key file (a TLS client key): refused if its owner is `me`
/// and group or others have any access, or if its owner is root and it is more open than
/// 0640 (a key a root-run package manager installs for a group).
pub fn key_too_open(mode: u32, owner: u32, me: u32) -> bool {
    (owner == me && mode & 0o077 != 0) || (owner == 0 && mode & 0o037 != 0)
}

/// The database file and its SQLite companions, in the order they are checked.
/// The bytes an unprivileged user may still write on the filesystem that holds `path`
/// (its directory, if it does not exist yet).
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = if path.exists() {
        path
    } else {
        path.parent().filter(|p| !p.as_os_str().is_empty())?
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: a NUL-terminated path and a zeroed statvfs for the call to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// `owner uid N, mode 0NNN` of `path`, or why it cannot be read, for messages about a
/// file that would not open.
pub fn owner_and_mode(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => format!("owner uid {}, mode {:04o}", m.uid(), m.mode() & 0o7777),
        Err(e) => format!("{e}"),
    }
}

pub fn companions(db: &Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [db.to_path_buf(), with("-wal"), with("-shm")]
}

/// Refuses the database if it, or a `-wal` / `-shm` beside it, belongs to another user
/// (when writing), is writable by group or others, or is readable by others. One line that
/// names the file, its owner and mode, and what to do.
pub fn check(db: &Path, access: Access) -> Result<(), String> {
    for file in companions(db) {
        // The database itself may be a symlink to an existing database (judged by what it
        // points at); its companions are created by SQLite and never are.
        let meta = if file == db {
            std::fs::metadata(&file)
        } else {
            std::fs::symlink_metadata(&file)
        };
        let Ok(meta) = meta else { continue };
        if let Some(problem) = problem(&meta, access, euid()) {
            return Err(format!(
                "refusing {} (owner uid {}, mode {:04o}): {problem}",
                file.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

/// What is wrong with a file's owner or mode for `access` by user `me`, if anything.
fn problem(meta: &Metadata, access: Access, me: u32) -> Option<String> {
    let mode = meta.mode() & 0o7777;
    if meta.file_type().is_symlink() || !meta.is_file() {
        return Some("it is not a regular file; move it away".to_string());
    }
    if access == Access::Write && meta.uid() != me {
        return Some(format!(
            "it belongs to another user, who could read the secrets and plant tokens; \
             if it is yours, `chown {me}` it, else move it away or choose another --db"
        ));
    }
    if mode & 0o022 != 0 {
        return Some(
            "group or others may write to it and plant tokens; `chmod 600` it \
             (or 640 to let a group read tokens)"
                .to_string(),
        );
    }
    if mode & 0o004 != 0 {
        return Some(
            "everyone may read it, and it holds secrets; `chmod 600` it \
             (or 640 to let a group read tokens)"
                .to_string(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn client_keys_follow_libpq() {
        let me = 1000;
        for (mode, owner, refused) in [
            (0o100600, me, false),
            (0o100400, me, false),
            (0o100640, me, true),
            (0o100604, me, true),
            (0o100640, 0, false),
            (0o100660, 0, true),
            (0o100644, 0, true),
            // Another owner: libpq does not judge it (the open may fail instead).
            (0o100644, 1001, false),
        ] {
            assert_eq!(key_too_open(mode, owner, me), refused, "{mode:o} {owner}");
        }
        assert!(
            key_too_open(0o100644, 0, 0),
            "root's own key, readable by all"
        );
    }

    #[test]
    fn modes_and_owners() {
        let dir = std::env::temp_dir().join(format!("wxtoken-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        let me = euid();
        let with_mode = |mode| {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            std::fs::metadata(&file).unwrap()
        };
        assert_eq!(problem(&with_mode(0o600), Access::Write, me), None);
        assert_eq!(problem(&with_mode(0o640), Access::Write, me), None);
        assert!(problem(&with_mode(0o660), Access::Write, me).is_some());
        assert!(problem(&with_mode(0o644), Access::Read, me).is_some());
        assert!(problem(&with_mode(0o602), Access::Read, me).is_some());
        let meta = with_mode(0o600);
        assert!(problem(&meta, Access::Write, me.wrapping_add(1)).is_some());
        assert_eq!(problem(&meta, Access::Read, me.wrapping_add(1)), None);
        let [db, wal, shm] = companions(&file);
        assert_eq!(db, file);
        assert!(wal.to_string_lossy().ends_with("f-wal"));
        assert!(shm.to_string_lossy().ends_with("f-shm"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
