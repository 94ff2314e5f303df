//! Where a volume's metadata lives, as named on a command line or in fstab, and how a
//! PostgreSQL URL's password is kept out of sight (process list, logs, mount tables).

use std::path::{Path, PathBuf};

/// Where a volume's metadata lives, as named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// An embedded volume directory (RocksDB).
    Dir(PathBuf),
    /// A PostgreSQL URL (`postgres://…` or `postgresql://…`).
    Postgres(String),
}

/// Prefix of a command-line argument naming an environment variable that holds the source
/// (`env:GRAVITON_SOURCE`): how a URL with a password travels without showing in the process
/// list (`hide_passwords_from_the_process_list`).
pub const FROM_ENV: &str = "env:";

/// Whether `s` is a PostgreSQL URL.
fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// Whether `url` carries a password (in its user part or as a query parameter).
pub fn has_password(url: &str) -> bool {
    is_postgres_url(url) && redact(url) != url
}

/// Every local user can read a process's command line (`/proc/PID/cmdline`). When one of
/// this process's arguments is a PostgreSQL URL with a password, the process runs itself
/// again with that URL moved into its environment (readable by the same user only) and
/// `env:GRAVITON_SOURCE_<n>` in its place, and warns: the URL was visible for a moment, and
/// wherever it came from (a shell history, fstab) may be readable too. Returns only when
/// nothing needs hiding (or the new program could not start).
pub fn hide_passwords_from_the_process_list() {
    use std::os::unix::process::CommandExt;
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if !args.iter().any(|a| a.to_str().is_some_and(has_password)) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    for (i, arg) in args.iter().enumerate().skip(1) {
        match arg.to_str().filter(|a| has_password(a)) {
            Some(url) => {
                let var = format!("GRAVITON_SOURCE_{i}");
                eprintln!(
                    "graviton: warning: {} carries a password, which other local users can read while it is on a command line or in /etc/fstab; put it in ~/.pgpass (or PGPASSFILE, or PGPASSWORD) instead",
                    redact(url)
                );
                cmd.env(&var, url).arg(format!("{FROM_ENV}{var}"));
            }
            None => {
                cmd.arg(arg);
            }
        }
    }
    if let Some(name) = args.first() {
        cmd.arg0(name);
    }
    let e = cmd.exec();
    eprintln!("graviton: could not run itself again without the password in its arguments: {e}");
}

impl Source {
    /// A volume folder, a PostgreSQL URL, or `env:NAME` for a PostgreSQL URL in the
    /// environment variable `NAME` (`GRAVITON_…` only).
    pub fn parse(s: &str) -> Source {
        if let Some(var) = s
            .strip_prefix(FROM_ENV)
            .filter(|v| v.starts_with("GRAVITON_"))
            && let Ok(url) = std::env::var(var)
            && is_postgres_url(&url)
        {
            return Source::Postgres(url);
        }
        if is_postgres_url(s) {
            Source::Postgres(s.to_string())
        } else {
            Source::Dir(PathBuf::from(s))
        }
    }

    /// For logs, messages and mount tables: a URL's password is never shown.
    pub fn display(&self) -> String {
        match self {
            Source::Dir(d) => d.display().to_string(),
            Source::Postgres(url) => redact(url),
        }
    }

    /// Where the mount daemon keeps its pid file, status socket and log: the volume folder,
    /// or for PostgreSQL `<state home>/graviton/<id>` (`crate::state::home`: `/var/lib` for
    /// root, `~/.local/state` for others, unless `XDG_STATE_HOME` says otherwise).
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir_in(&crate::state::home())
    }

    /// `state_dir` with `base` standing for `$XDG_STATE_HOME`.
    pub fn state_dir_in(&self, base: &Path) -> PathBuf {
        match self {
            Source::Dir(d) => d.clone(),
            Source::Postgres(url) => {
                let id = blake3::hash(redact(url).as_bytes()).to_hex();
                base.join("graviton").join(&id[..16])
            }
        }
    }

    /// Where a mount daemon keeps its state: for a shared (PostgreSQL) volume one folder per
    /// mountpoint, as several mounts of one volume may share a machine.
    pub fn mount_state_dir(&self, mountpoint: &Path) -> PathBuf {
        self.for_mountpoint(self.state_dir(), mountpoint)
    }

    /// `mount_state_dir` with `base` standing for `$XDG_STATE_HOME`.
    pub fn mount_state_dir_in(&self, base: &Path, mountpoint: &Path) -> PathBuf {
        self.for_mountpoint(self.state_dir_in(base), mountpoint)
    }

    fn for_mountpoint(&self, state: PathBuf, mountpoint: &Path) -> PathBuf {
        match self {
            Source::Dir(_) => state,
            Source::Postgres(_) => {
                let id = blake3::hash(mountpoint.as_os_str().as_encoded_bytes()).to_hex();
                state.join(&id[..12])
            }
        }
    }
}

/// `postgres://user:secret@host/db?password=x` → `postgres://user:***@host/db?password=***`:
/// a password in the user part or in a query parameter (`password`, `sslpassword`) is hidden.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // the user part first (a password may hold any character but '@'), then the query
    let (auth, host) = rest
        .rsplit_once('@')
        .map_or((None, rest), |(a, h)| (Some(a), h));
    let (host, query) = host
        .split_once('?')
        .map_or((host, None), |(h, q)| (h, Some(q)));
    let mut out = format!("{scheme}://");
    match auth {
        Some(auth) => match auth.split_once(':') {
            Some((user, _)) => out.push_str(&format!("{user}:***@{host}")),
            None => out.push_str(&format!("{auth}@{host}")),
        },
        None => out.push_str(host),
    }
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if is_password_key(&percent_decoded(k)) => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// Query parameters that carry a password (libpq's names; case does not matter to us).
fn is_password_key(k: &str) -> bool {
    k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword")
}

/// `s` with `%XX` escapes decoded (`pass%77ord` is `password` to the driver too).
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let s = Source::parse("postgres://graviton:hunter2@db.example:5432/vol");
        assert_eq!(s.display(), "postgres://graviton:***@db.example:5432/vol");
        assert!(!s.state_dir().to_string_lossy().contains("hunter2"));
        assert_eq!(redact("postgres://db/vol"), "postgres://db/vol");
        let q = Source::parse("postgres://u@db/vol?sslmode=disable&password=hunter2&sslpassword=x");
        assert_eq!(
            q.display(),
            "postgres://u@db/vol?sslmode=disable&password=***&sslpassword=***"
        );
        assert!(!q.state_dir().to_string_lossy().contains("hunter2"));
        assert_eq!(redact("postgres://u:pa?ss@db/v"), "postgres://u:***@db/v");
        assert_eq!(Source::parse("/srv/vol"), Source::Dir("/srv/vol".into()));
    }

    #[test]
    fn a_percent_encoded_password_key_is_hidden_too() {
        let url = "postgres://u@db/vol?pass%77ord=hunter2&SSLPASSWORD=x&user=u";
        let shown = redact(url);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("=x"), "{shown}");
        assert!(shown.contains("user=u"), "{shown}");
        assert!(has_password(url));
        assert!(!has_password("postgres://u@db/vol?sslmode=disable"));
        assert!(has_password("postgres://u:p@db/vol"));
    }
}
