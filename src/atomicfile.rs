//! Writing a file by name in a directory that others may write (node_exporter's textfile
//! directory is often another user's): the new content goes to a temporary file created
//! exclusively (`O_CREAT|O_EXCL|O_NOFOLLOW`), with a random name and its mode set on that
//! descriptor only, then renamed over the target. Nothing here ever opens a path that a
//! planted symlink could redirect: a link at a temporary name makes the create fail (and
//! another name is drawn), and a link at the target is replaced, never written through.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// How many random names are tried before giving up (each clash means something else made
/// that name first: a planted file, or an astronomically unlikely collision).
const ATTEMPTS: usize = 16;

/// The directory a path's file lives in (`.` for a bare name).
pub fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// A temporary name beside `path`: `.NAME.RANDOM` + `tail` (a leading dot and a tail that
/// is not the target's extension keep globbing readers such as `*.prom` away from it).
pub fn temp_path(path: &Path, tail: &str) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(format!(".{}{tail}", crate::crypto::random_hex(8)));
    Ok(dir_of(path).join(temp))
}

/// Creates the file `path`, which must not exist: exclusively, never through a link,
/// close-on-exec, with exactly `mode` whatever the umask (set on the descriptor, which is
/// the file we created, not whatever the name points at by now).
pub fn create_exclusive(path: &Path, mode: u32) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    if let Err(e) = file.set_permissions(std::fs::Permissions::from_mode(mode)) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(file)
}

/// Creates a new file beside `path` under a random name, as `create_exclusive` does.
/// Returns it and its name.
pub fn create_temp(path: &Path, tail: &str, mode: u32) -> io::Result<(File, PathBuf)> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let temp = temp_path(path, tail)?;
        match create_exclusive(&temp, mode) {
            Ok(file) => return Ok((file, temp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no temporary name was free")))
}

/// Replaces `path` with `bytes`, atomically: readers see the old file or the new one, never
/// a part. A symlink at `path` is replaced by the file, not followed. The file is `mode`.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let (mut file, temp) = create_temp(path, ".tmp", mode)?;
    let result = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, path)?;
        // The rename itself is durable once the directory is synced.
        if let Ok(dir) = File::open(dir_of(path)) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("wxtoken-atomicfile-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn replaces_a_link_at_the_target_and_leaves_its_victim_alone() {
        let d = dir("link");
        let victim = d.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let target = d.join("out.prom");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        write(&target, b"new", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let meta = std::fs::symlink_metadata(&target).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.mode() & 0o777, 0o644);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        // Nothing but the target and the victim is left.
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn temporary_names_differ_and_hide_from_globs() {
        let p = Path::new("/x/m.prom");
        let (a, b) = (temp_path(p, ".tmp").unwrap(), temp_path(p, ".tmp").unwrap());
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(".m.prom.") && name.ends_with(".tmp"),
            "{name}"
        );
        assert_eq!(dir_of(Path::new("m.prom")), Path::new("."));
    }
}
