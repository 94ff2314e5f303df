//! Where the passphrase of an encrypted volume comes from, in this order:
//!
//! 1. a key file named for this process (`--key-file PATH`, or the mount option
//!    `key_file=PATH`): its bytes, less one trailing newline. It must be readable by its owner
//!    only, like an ssh key: a key file others can read is refused.
//! 2. `GRAVITON_PASSPHRASE` in the environment;
//! 3. a question: on the terminal (without echo), or, for a mount daemon, to the `graviton
//!    mount` that started it, which asks on its terminal and hands the answer over a pipe.
//!
//! The passphrase never appears on a command line, in a log or in a file Graviton writes.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use zeroize::Zeroizing;

/// The environment variable that holds a passphrase.
pub const PASSPHRASE_ENV: &str = "GRAVITON_PASSPHRASE";
/// The environment variable that holds the new passphrase of `graviton key change`.
pub const NEW_PASSPHRASE_ENV: &str = "GRAVITON_NEW_PASSPHRASE";

pub type Passphrase = Zeroizing<Vec<u8>>;

/// Asks for a passphrase: the prompt, and whether to ask twice (a new passphrase).
pub type Ask = fn(&str, bool) -> Result<Passphrase, UnlockError>;

static KEY_FILE: OnceLock<PathBuf> = OnceLock::new();
static ASK: OnceLock<Ask> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum UnlockError {
    #[error(
        "{0} is encrypted: give its passphrase in {PASSPHRASE_ENV}, with --key-file PATH (-o key_file=PATH for a mount), or on a terminal"
    )]
    NoPassphrase(String),
    #[error("key file {path}: {message}")]
    KeyFile { path: String, message: String },
    #[error("the two passphrases differ")]
    Mismatch,
    #[error("reading the passphrase: {0}")]
    Io(#[from] std::io::Error),
}

/// Makes `path` this process's key file. The first one named wins.
pub fn use_key_file(path: &Path) {
    let _ = KEY_FILE.set(path.to_path_buf());
}

/// Whether a key file was named for this process: whoever names one expects an encrypted
/// volume, and a volume that says it is plain is refused (its settings may have been changed
/// to turn encryption off).
pub fn key_file_given() -> bool {
    KEY_FILE.get().is_some()
}

/// Makes `ask` the way this process asks for a passphrase no key file or environment gives
/// (a mount daemon asks its launcher). The first one set wins.
pub fn ask_with(ask: Ask) {
    let _ = ASK.set(ask);
}

/// The passphrase of the encrypted volume `volume` (its name, for messages).
pub fn passphrase(volume: &str) -> Result<Passphrase, UnlockError> {
    let ask = ASK.get().copied().unwrap_or(ask_terminal);
    first_given(
        KEY_FILE.get().map(PathBuf::as_path),
        PASSPHRASE_ENV,
        || ask(&format!("passphrase of {volume}: "), false),
        volume,
    )
}

/// The passphrase a new key is wrapped under (`format --encrypt`, `key change`): the key
/// file, else `env`, else asked twice on the terminal.
pub fn new_passphrase(
    env: &str,
    key_file: Option<&Path>,
    volume: &str,
) -> Result<Passphrase, UnlockError> {
    first_given(
        key_file,
        env,
        || ask_terminal(&format!("new passphrase of {volume}: "), true),
        volume,
    )
}

/// The key file's passphrase, else the environment's, else `ask`'s (an empty answer: none).
fn first_given(
    key_file: Option<&Path>,
    env: &str,
    ask: impl FnOnce() -> Result<Passphrase, UnlockError>,
    volume: &str,
) -> Result<Passphrase, UnlockError> {
    if let Some(path) = key_file {
        return read_key_file(path);
    }
    if let Some(p) = std::env::var_os(env) {
        return Ok(Zeroizing::new(p.into_encoded_bytes()));
    }
    match ask()? {
        p if p.is_empty() => Err(UnlockError::NoPassphrase(volume.to_string())),
        p => Ok(p),
    }
}

/// A key file's bytes, less one trailing newline; refused when others may read it.
pub fn read_key_file(path: &Path) -> Result<Passphrase, UnlockError> {
    let fail = |message: String| UnlockError::KeyFile {
        path: path.display().to_string(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    if meta.mode() & 0o077 != 0 {
        return Err(fail(format!(
            "others may read or write it (mode {:o}): chmod 600 it",
            meta.mode() & 0o777
        )));
    }
    let mut bytes = Zeroizing::new(Vec::new());
    std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(|e| fail(e.to_string()))?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(fail("it is empty".into()));
    }
    Ok(bytes)
}

/// Asks on the controlling terminal without echo (twice when `confirm`); an empty answer when
/// there is no terminal.
pub fn ask_terminal(prompt: &str, confirm: bool) -> Result<Passphrase, UnlockError> {
    let Ok(tty) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
    else {
        return Ok(Zeroizing::new(Vec::new()));
    };
    let first = ask_once(&tty, prompt)?;
    if confirm {
        let again = ask_once(&tty, "again: ")?;
        if again != first {
            return Err(UnlockError::Mismatch);
        }
    }
    Ok(first)
}

fn ask_once(tty: &std::fs::File, prompt: &str) -> Result<Passphrase, UnlockError> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let saved = tcgetattr(tty).map_err(std::io::Error::from)?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    (&*tty).write_all(prompt.as_bytes())?;
    tcsetattr(tty, SetArg::TCSAFLUSH, &quiet).map_err(std::io::Error::from)?;
    let line = read_line(tty);
    tcsetattr(tty, SetArg::TCSAFLUSH, &saved).map_err(std::io::Error::from)?;
    line
}

/// One line (without its newline) from `from`, a byte at a time (no buffer keeps a copy), into
/// memory that is wiped after use.
pub fn read_line(mut from: &std::fs::File) -> Result<Passphrase, UnlockError> {
    let mut line = Zeroizing::new(Vec::with_capacity(256));
    let mut byte = [0u8; 1];
    while from.read(&mut byte)? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_file_is_its_bytes_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, b"correct horse\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(&*read_key_file(&path).unwrap(), b"correct horse");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_key_file(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::write(&path, b"\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(
            read_key_file(&path)
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }
}
