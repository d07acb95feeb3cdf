//! The key file: where it is, who may own it, creating it once, replacing it atomically.
//! Its file-mode rules live here, apart from the database's.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::crypto::{Key, Keyring};
use crate::process::{effective_uid, pid_alive};

/// A key file problem. `exit::of` maps it to its code: `Key` for a file that is missing,
/// unsafe or wrong, `Usage` for an empty name. Its Display is the message alone.
#[derive(Debug)]
pub enum KeyFileError {
    /// Exits `KEY`.
    Key(String),
    /// Exits `USAGE`.
    Usage(String),
}

impl std::fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyFileError::Key(message) | KeyFileError::Usage(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for KeyFileError {}

fn key_error(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(KeyFileError::Key(message.into()))
}

/// Where a key file path came from; it decides whether wxtoken may create the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--key-file` or `WXTOKEN_KEY_FILE`: the directory must exist.
    Named,
    /// `$CREDENTIALS_DIRECTORY/wxtoken.key`, provided by systemd: never created here.
    Credentials,
    /// `~/.config/wxtoken/key`: its directory is created (0700) when missing.
    Home,
}

#[derive(Debug, Clone)]
pub struct KeyFile {
    pub path: PathBuf,
    pub source: Source,
}

impl KeyFile {
    /// `--key-file` or `WXTOKEN_KEY_FILE` (clap reads both into `named`), else
    /// `$CREDENTIALS_DIRECTORY/wxtoken.key`, else `~/.config/wxtoken/key`.
    pub fn locate(named: Option<PathBuf>) -> Result<KeyFile> {
        let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let (path, source) = if let Some(path) = named {
            if path.as_os_str().is_empty() {
                return Err(anyhow::Error::new(KeyFileError::Usage(
                    "--key-file / WXTOKEN_KEY_FILE is empty".to_string(),
                )));
            }
            (path, Source::Named)
        } else if let Some(dir) = non_empty("CREDENTIALS_DIRECTORY") {
            (PathBuf::from(dir).join("wxtoken.key"), Source::Credentials)
        } else if let Some(home) = non_empty("HOME") {
            (
                PathBuf::from(home).join(".config/wxtoken/key"),
                Source::Home,
            )
        } else {
            return Err(key_error(
                "no key file: HOME is not set; pass --key-file or set WXTOKEN_KEY_FILE",
            ));
        };
        Ok(KeyFile { path, source })
    }

    /// The keys, or `None` when the file does not exist. A file that another user owns,
    /// that group or others may read, or that is not a key file, is refused.
    pub fn load(&self) -> Result<Option<Keyring>> {
        let path = &self.path;
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error(format!("cannot be read: {e}"))),
        };
        check_safe(&meta).map_err(|why| self.error(why))?;
        let text =
            fs::read_to_string(path).map_err(|e| self.error(format!("cannot be read: {e}")))?;
        Keyring::parse(&text)
            .map(Some)
            .map_err(|why| self.error(format!("is not a wxtoken key file: {why}")))
    }

    /// Creates the key file with one new key, 0600 from its first byte. If another process
    /// created one meanwhile, that one is used instead. Says so on stderr, once.
    pub fn create(&self) -> Result<Keyring> {
        if self.source == Source::Credentials {
            return Err(self.error(
                "does not exist; systemd's LoadCredential= must provide it (wxtoken does not \
                 create keys in $CREDENTIALS_DIRECTORY)"
                    .to_string(),
            ));
        }
        let dir = self.dir();
        if self.source == Source::Home && !dir.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| self.error(format!("cannot be created: {e}")))?;
        }
        self.remove_stale_temps();
        let ring = Keyring::new(vec![Key::generate()]);
        let tmp = self.write_temp(&ring)?;
        // A hard link never replaces an existing file: the first creator wins.
        let linked = fs::hard_link(&tmp, &self.path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(dir);
                eprintln!(
                    "wxtoken: created the key file {} (key {}): it encrypts the secrets in the \
                     database. Back it up now, apart from the database: without it every \
                     secret must be set again",
                    self.path.display(),
                    ring.current().kid
                );
                Ok(ring)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => self
                .load()?
                .ok_or_else(|| self.error("vanished while being created".to_string())),
            Err(e) => Err(self.error(format!("cannot be created: {e}"))),
        }
    }

    /// Replaces the key file with `ring` atomically (a rename). With `keep_old`, the file
    /// it replaces stays as `KEYFILE.old`, mode 0600 like every key file.
    /// Neither step writes through a name that someone else may have planted: the new
    /// files are created under unpredictable names (see `write_temp`), and `KEYFILE.old`
    /// is a new link renamed over whatever was there, never opened.
    pub fn replace(&self, ring: &Keyring, keep_old: bool) -> Result<()> {
        self.remove_stale_temps();
        let tmp = self.write_temp(ring)?;
        if keep_old {
            let old = self.old_path();
            let old_tmp = self.temp_name(".old");
            let kept =
                fs::hard_link(&self.path, &old_tmp).and_then(|()| fs::rename(&old_tmp, &old));
            if let Err(e) = kept {
                let _ = fs::remove_file(&old_tmp);
                let _ = fs::remove_file(&tmp);
                return Err(self.error(format!(
                    "could not keep the old key as {}: {e}",
                    old.display()
                )));
            }
        }
        fs::rename(&tmp, &self.path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.error(format!("could not be replaced: {e}"))
        })?;
        sync_dir(self.dir());
        Ok(())
    }

    pub fn old_path(&self) -> PathBuf {
        self.sibling(".old")
    }

    /// A key problem: names the file, exits `KEY`.
    pub fn error(&self, why: String) -> anyhow::Error {
        key_error(format!("key file {} {why}", self.path.display()))
    }

    fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        }
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut name = self.path.as_os_str().to_os_string();
        name.push(suffix);
        PathBuf::from(name)
    }

    /// Writes `ring` to a new temporary file next to the key file, synced. The file is
    /// created, never opened: O_CREAT|O_EXCL|O_NOFOLLOW under a name nobody can guess, so
    /// a symbolic link or a file planted in the directory is never written through; 0600
    /// from its first byte, and set again on the descriptor whatever the umask.
    fn write_temp(&self, ring: &Keyring) -> Result<PathBuf> {
        let tmp = self.temp_name("");
        let mut file = crate::atomicfile::create_exclusive(&tmp, 0o600)
            .map_err(|e| self.error(format!("cannot be written: {e}")))?;
        let written = file
            .write_all(ring.to_text().as_bytes())
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(self.error(format!("cannot be written: {e}")));
        }
        Ok(tmp)
    }

    /// `KEYFILE{what}.tmp.PID.RANDOM`: this process's, and unpredictable.
    fn temp_name(&self, what: &str) -> PathBuf {
        self.sibling(&format!(
            "{what}.tmp.{}.{}",
            std::process::id(),
            crate::crypto::random_hex(8)
        ))
    }

    /// Removes the temporary files (they may hold keys) that a process killed while it
    /// wrote the key file left behind: `KEYFILE.tmp.PID…` and `KEYFILE.old.tmp…` of a
    /// process that is gone, and links planted under those names. Ours and those of
    /// processes still running are left alone.
    fn remove_stale_temps(&self) {
        let Some(name) = self.path.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        let Ok(entries) = fs::read_dir(self.dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let entry_name = entry.file_name();
            let Some(rest) = entry_name.to_str().and_then(|n| n.strip_prefix(name)) else {
                continue;
            };
            let (old, rest) = match rest.strip_prefix(".old.tmp") {
                Some(rest) => (true, rest),
                None => match rest.strip_prefix(".tmp") {
                    Some(rest) => (false, rest),
                    None => continue,
                },
            };
            // `.PID` or `.PID.RANDOM`; an older version's `.old.tmp` names no process.
            let pid = rest
                .strip_prefix('.')
                .and_then(|r| r.split('.').next())
                .and_then(|p| p.parse::<i64>().ok());
            let gone = match pid {
                Some(pid) => pid != i64::from(std::process::id()) && !pid_alive(pid),
                None => old && rest.is_empty(),
            };
            let ours = entry
                .metadata()
                .is_ok_and(|m| m.file_type().is_symlink() || m.uid() == effective_uid());
            if gone && ours {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Like ssh with its private keys: the file must belong to us (or root) and be closed to
/// group and others, or someone else could read our keys or plant their own.
fn check_safe(meta: &fs::Metadata) -> Result<(), String> {
    if !meta.is_file() {
        return Err("is not a regular file".to_string());
    }
    let me = effective_uid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "belongs to uid {}, not to this user (uid {me}); refusing to use it",
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "has mode {:04o}: group or others may read it; refusing to use it (chmod 600 it, \
             and consider the key exposed)",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Makes a rename or link in `dir` durable; failure only costs durability.
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("wxtoken-keyfile-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn create_load_replace_keep_old() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("cycle");
        let kf = KeyFile {
            path: dir.join("key"),
            source: Source::Named,
        };
        assert!(kf.load().unwrap().is_none());
        let ring = kf.create().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&kf.path), 0o600);
        assert_eq!(kf.load().unwrap().unwrap().kids(), ring.kids());
        // A second creator adopts the first one's key.
        assert_eq!(kf.create().unwrap().kids(), ring.kids());
        let next = ring.with_new_key();
        kf.replace(&next, true).unwrap();
        assert_eq!(kf.load().unwrap().unwrap().kids(), next.kids());
        assert_eq!(mode(&kf.old_path()), 0o600);
        assert_eq!(
            Keyring::parse(&fs::read_to_string(kf.old_path()).unwrap())
                .unwrap()
                .kids(),
            ring.kids()
        );
        // Only the key file and its .old remain: no temporary files.
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["key", "key.old"]);
        fs::set_permissions(&kf.path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = kf.load().unwrap_err().to_string();
        assert!(
            err.contains("mode 0640") && err.contains("refusing"),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn credentials_directory_keys_are_never_created() {
        let kf = KeyFile {
            path: temp_dir("creds").join("wxtoken.key"),
            source: Source::Credentials,
        };
        let err = kf.create().unwrap_err().to_string();
        assert!(err.contains("LoadCredential"), "{err}");
        assert!(!kf.path.exists());
        fs::remove_dir_all(kf.path.parent().unwrap()).unwrap();
    }
}
