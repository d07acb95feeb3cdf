//! Readers in a group: services running as other users that read tokens from a database
//! made group-readable (0640) by its operator. Their file-mode rules live here.
//!
//! What SQLite's WAL mode needs from such a reader: read access to the database, its
//! `-wal` and its `-shm`, and those two must exist, because a reader cannot create files
//! in the directory. It does not need to write the `-shm`: SQLite (3.22+) maps a read-only
//! `-shm` read-only while a writer has the database open, and otherwise rebuilds the
//! index in its own memory from the `-wal`. So nothing a reader can write changes what
//! anyone reads. The writer keeps both files in place (a persistent WAL, see
//! `Sqlite::configure`) and, here, gives them the database's group and permission bits
//! (SQLite creates them with the database's bits but the writer's own group).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The `-wal` and `-shm` of a database.
pub fn sidecars(db: &Path) -> [PathBuf; 2] {
    ["-wal", "-shm"].map(|suffix| {
        let mut name = db.as_os_str().to_os_string();
        name.push(suffix);
        PathBuf::from(name)
    })
}

/// Gives the `-wal` and `-shm` the database's group and permission bits, where they
/// differ and we own them. Never touches the database itself; a failure only warns,
/// since the writer works either way and only readers in the group would miss out.
pub fn align_sidecars(db: &Path) {
    let Ok(db_meta) = fs::metadata(db) else {
        return;
    };
    let me = crate::process::effective_uid();
    let mode = db_meta.mode() & 0o666;
    for file in sidecars(db) {
        let Ok(meta) = fs::metadata(&file) else {
            continue;
        };
        if meta.uid() != me {
            continue;
        }
        if meta.gid() != db_meta.gid()
            && let Err(e) = std::os::unix::fs::chown(&file, None, Some(db_meta.gid()))
        {
            log::warn!(
                "could not give {} the database's group (gid {}): {e}; readers in that group \
                 cannot open the database until it has it",
                file.display(),
                db_meta.gid()
            );
        }
        if meta.mode() & 0o7777 != mode
            && let Err(e) = fs::set_permissions(&file, fs::Permissions::from_mode(mode))
        {
            log::warn!("could not give {} mode {mode:04o}: {e}", file.display());
        }
    }
}

/// Why a reader could not open a database whose `-wal` or `-shm` is missing, if that is
/// the reason: it cannot create them.
pub fn missing_sidecars_hint(db: &Path) -> Option<String> {
    let missing: Vec<String> = sidecars(db)
        .iter()
        .filter(|f| !f.exists())
        .map(|f| f.display().to_string())
        .collect();
    if missing.is_empty() {
        return None;
    }
    Some(format!(
        "{} {} missing, and this user cannot create {}; run any writing wxtoken command \
         (wxtoken status) once as the database's owner, which leaves both in place",
        missing.join(" and "),
        if missing.len() == 1 { "is" } else { "are" },
        if missing.len() == 1 { "it" } else { "them" }
    ))
}

/// SQLITE_FCNTL_PERSIST_WAL on `conn`: the last connection to close keeps the `-wal`
/// (emptied: see `empty_wal_on_close`) and the `-shm` instead of deleting them, so that
/// readers in the database's group, who cannot create them, can still open it. Returns
/// SQLite's result code when it refuses.
pub fn persist_wal(conn: &rusqlite::Connection) -> Result<(), std::os::raw::c_int> {
    let mut on: std::os::raw::c_int = 1;
    // SAFETY: the handle is this open connection's, "main" is a NUL-terminated name, and
    // PERSIST_WAL reads and writes one int through the pointer, which outlives the call.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&raw mut on).cast(),
        )
    };
    if rc == rusqlite::ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rc)
    }
}

/// With a persistent WAL, a size limit of 0 makes the last connection to close truncate
/// the `-wal` to nothing, so that a reader rebuilding the WAL index in its own memory has
/// nothing to read. Called only when a writer closes: during a run, the limit would
/// truncate and regrow the `-wal` at every checkpoint.
pub fn empty_wal_on_close(conn: &rusqlite::Connection) {
    let _ = conn.pragma_update(None, "journal_size_limit", 0);
}

/// Why a writing command cannot use `db`, if this user may only read it (a reader in the
/// database's group, say), or it is on a read-only mount: said at once, before any other
/// check on the file, rather than at the first write (SQLite quietly opens such a file
/// read-only). Opening for writing without creating or truncating changes nothing.
pub fn read_only_refusal(db: &Path) -> Option<String> {
    use std::io::ErrorKind;
    // Only a regular file: opening a FIFO for writing would wait for a reader.
    if !fs::metadata(db).is_ok_and(|m| m.is_file()) {
        return None;
    }
    match fs::OpenOptions::new().write(true).open(db) {
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            Some(format!(
                "database {} is read-only for this user: only its owner runs writing \
                 commands; readers use `wxtoken get`",
                db.display()
            ))
        }
        _ => None,
    }
}

/// A reader's open error, with what to do when the reason is a missing `-wal` or `-shm`.
/// SQLite's "locking protocol": another process holds locks in the `-shm` file that SQLite
/// needs, and it gave up after its retries. Any process that can read the `-shm` (a reader
/// in the group, a `sqlite3` shell) can do that, for as long as it likes: name the likely
/// cause and how to find it.
pub fn explain_shm_locks(text: &str, db: &Path) -> String {
    let shm = crate::text::escaped(&format!("{}-shm", db.display()));
    format!(
        "{text}: another process holds locks on {shm} (any process that can read it, a \
         reader in the group included, can stop writes this way): find it with \
         `fuser -v {shm}` or `lsof {shm}`, and stop it"
    )
}

pub fn explain_open_error(text: &str, db: &Path) -> Option<String> {
    if !(text.contains("unable to open database file") || text.contains("readonly database")) {
        return None;
    }
    missing_sidecars_hint(db).map(|hint| format!("could not use database {}: {hint}", db.display()))
}
