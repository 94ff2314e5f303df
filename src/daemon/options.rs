//! Mount options (`-o a,b=c`), shared by `graviton mount` and the `mount.graviton` helper.
//! Every option is validated: an unknown option or one missing its value is an error naming it.

use std::time::Duration;

use crate::vfs::Atime;

#[derive(Clone, Debug, PartialEq)]
pub struct MountOptions {
    pub allow_other: bool,
    pub read_only: bool,
    /// When opens for reading update access times (noatime, relatime, strictatime).
    pub atime: Atime,
    /// Device files and setuid/setgid bits do nothing on the mount unless `dev` / `suid` say
    /// otherwise: whoever can write the volume (another host, the database's or the bucket's
    /// administrator) could otherwise plant a setuid-root program or a device node.
    pub nodev: bool,
    pub nosuid: bool,
    pub noexec: bool,
    /// Kernel attribute and entry cache lifetime; by default 10 s on every volume (on a shared
    /// volume other mounts' changes are dropped from the kernel's caches as they arrive).
    pub ttl: Option<Duration>,
    pub cache_mb: Option<u64>,
    pub dirty_mb: Option<u64>,
    /// Largest read-ahead window of a sequential reader, in MiB.
    pub readahead_mb: Option<u64>,
    /// FUSE reader threads.
    pub threads: usize,
    /// Shared volumes: a mount silent for this long is dead to the others (its locks go).
    pub session_timeout: Duration,
    /// Shared volumes: keep a local RocksDB cache of the metadata.
    pub meta_cache: bool,
    /// Hand fetched blocks' other bytes to the kernel's page cache.
    pub page_fill: bool,
    /// Stage blocks locally and upload them in the background (`store::writeback`).
    pub writeback: bool,
    /// With `writeback`: the kernel buffers writes in its page cache (FUSE_WRITEBACK_CACHE).
    pub write_cache: bool,
    /// PostgreSQL volumes: how long operations wait for an unreachable server (then EIO).
    pub pg_wait: Duration,
    /// With `writeback`: how long an unmount waits for the staged blocks' uploads.
    pub upload_wait: Duration,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// An on-disk block cache (for remote block stores), and its size.
    pub cache_dir: Option<std::path::PathBuf>,
    pub cache_dir_mb: u64,
    /// An encrypted volume's passphrase is this file's content (`volume::unlock`).
    pub key_file: Option<std::path::PathBuf>,
    /// How often the mount collects garbage itself (`graviton gc`): `Some(None)` never; by
    /// default hourly on embedded volumes, never on PostgreSQL ones.
    pub gc_every: Option<Option<Duration>>,
    /// The grace period of those runs (`graviton gc --grace`).
    pub gc_grace: Duration,
    /// How often the mount reads the trash settings again and deletes what the trash has held
    /// longer than `trash_days` (`tree::trash`).
    pub trash_every: Duration,
    /// Options for mount(8) and systemd (`_netdev`, `nofail`, `x-systemd.*`…): nothing to the
    /// filesystem, kept in the mount table for them (`super::mount_table`).
    pub mount_table: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: false,
            read_only: false,
            atime: Atime::Relative,
            nodev: true,
            nosuid: true,
            noexec: false,
            ttl: None,
            cache_mb: None,
            dirty_mb: None,
            readahead_mb: None,
            threads: 4,
            session_timeout: Duration::from_secs(30),
            meta_cache: true,
            page_fill: true,
            writeback: false,
            write_cache: false,
            pg_wait: crate::volume::DEFAULT_PG_WAIT,
            upload_wait: Duration::from_secs(120),
            metrics: None,
            cache_dir: None,
            cache_dir_mb: 10240,
            key_file: None,
            gc_every: None,
            gc_grace: crate::maint::gc::DEFAULT_GRACE,
            trash_every: Duration::from_secs(60),
            mount_table: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("unknown mount option {0:?}")]
    Unknown(String),
    #[error("mount option {0:?} needs a value ({0}=…)")]
    MissingValue(String),
    #[error("mount option {name:?} has a bad value {value:?}: {why}")]
    BadValue {
        name: String,
        value: String,
        why: &'static str,
    },
}

fn bad(name: &str, value: impl ToString, why: &'static str) -> OptionError {
    OptionError::BadValue {
        name: name.into(),
        value: value.to_string(),
        why,
    }
}

fn number<T: std::str::FromStr>(
    name: &str,
    value: &str,
    why: &'static str,
) -> Result<T, OptionError> {
    value.parse().map_err(|_| bad(name, value, why))
}

/// A number (`unit` says what one looks like) within `range` (`why` says which, for errors).
fn number_in<T: std::str::FromStr + PartialOrd + ToString>(
    name: &str,
    value: &str,
    range: std::ops::RangeInclusive<T>,
    unit: &'static str,
    why: &'static str,
) -> Result<T, OptionError> {
    let n: T = number(name, value, unit)?;
    if !range.contains(&n) {
        return Err(bad(name, n, why));
    }
    Ok(n)
}

impl MountOptions {
    /// Applies a comma-separated option list (several `-o` add up).
    /// One match arm per option (long, and flat on purpose: an option is one place).
    pub fn apply(&mut self, list: &str) -> Result<(), OptionError> {
        for opt in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (name, value) = match opt.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (opt, None),
            };
            let need = || {
                value
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| OptionError::MissingValue(name.to_string()))
            };
            match name {
                "allow_other" => self.allow_other = true,
                "writeback" => self.writeback = true,
                "write_cache" => self.write_cache = true,
                "ro" => self.read_only = true,
                "rw" => self.read_only = false,
                "noatime" => self.atime = Atime::Never,
                "relatime" | "atime" => self.atime = Atime::Relative,
                "strictatime" => self.atime = Atime::Always,
                // directories' access times are not updated by listings
                "nodiratime" | "diratime" | "lazytime" | "nolazytime" => {}
                "nodev" => self.nodev = true,
                // mount(8) never hands `dev` and `suid` (its own defaults) to a helper: an
                // fstab line says `allow_dev` and `allow_suid` instead
                "dev" | "allow_dev" => self.nodev = false,
                "nosuid" => self.nosuid = true,
                "suid" | "allow_suid" => self.nosuid = false,
                "noexec" => self.noexec = true,
                "exec" => self.noexec = false,
                // Accepted as mount(8) users expect: permissions are always checked by the kernel
                "default_permissions" | "defaults" | "async" => {}
                // these concern mount(8) or systemd, not the filesystem
                n if matches!(
                    n,
                    "_netdev" | "nofail" | "auto" | "noauto" | "user" | "nouser"
                ) || n.starts_with("x-")
                    || n == "comment" =>
                {
                    self.mount_table.push(opt.to_string())
                }
                "attr_timeout" | "entry_timeout" => {
                    let secs: f64 = number_in(
                        name,
                        need()?,
                        0.0..=3600.0,
                        "seconds, like 1 or 0.5",
                        "0 to 3600 seconds",
                    )?;
                    self.ttl = Some(Duration::from_secs_f64(secs));
                }
                "cache_mb" => self.cache_mb = Some(number(name, need()?, "megabytes")?),
                "dirty_mb" => self.dirty_mb = Some(number(name, need()?, "megabytes")?),
                "readahead_mb" => {
                    self.readahead_mb = Some(number_in(
                        name,
                        need()?,
                        1..=1024,
                        "megabytes",
                        "1 to 1024 MiB",
                    )?)
                }
                "threads" => {
                    self.threads = number_in(name, need()?, 1..=64, "a thread count", "1 to 64")?
                }
                "cache_dir" | "cache-dir" => {
                    let dir = std::path::PathBuf::from(need()?);
                    if !dir.is_absolute() {
                        return Err(bad(name, dir.display(), "an absolute path"));
                    }
                    self.cache_dir = Some(dir);
                }
                "cache_dir_mb" => self.cache_dir_mb = number(name, need()?, "megabytes")?,
                "key_file" | "key-file" => {
                    let file = std::path::PathBuf::from(need()?);
                    if !file.is_absolute() {
                        return Err(bad(name, file.display(), "an absolute path"));
                    }
                    self.key_file = Some(file);
                }
                "metrics" => {
                    self.metrics = Some(number(name, need()?, "an address like 127.0.0.1:9100")?)
                }
                "pg_wait" => self.pg_wait = seconds(name, need()?, 86_400, "1 to 86400 seconds")?,
                "upload_wait" => {
                    self.upload_wait = seconds(name, need()?, 86_400, "1 to 86400 seconds")?
                }
                "session_timeout" => {
                    self.session_timeout = seconds(name, need()?, 3600, "1 to 3600 seconds")?
                }
                "gc_every" => {
                    self.gc_every = Some(match need()? {
                        "off" => None,
                        v => Some(duration(name, v, Duration::from_secs(1))?),
                    })
                }
                // a mount's volume is in use: a block may wait unreferenced between its upload
                // and its commit, and a grace shorter than that deletes it
                "gc_grace" => self.gc_grace = duration(name, need()?, Duration::from_secs(60))?,
                "trash_every" => {
                    self.trash_every = duration(name, need()?, Duration::from_secs(1))?
                }
                "meta_cache" | "page_fill" => {
                    let on = match need()? {
                        "on" => true,
                        "off" => false,
                        _ => {
                            return Err(bad(name, value.unwrap_or_default(), "on or off"));
                        }
                    };
                    match name {
                        "meta_cache" => self.meta_cache = on,
                        _ => self.page_fill = on,
                    }
                }
                _ => return Err(OptionError::Unknown(opt.to_string())),
            }
        }
        Ok(())
    }
}

/// Whole seconds from 1 to `max` (`why` says so, for errors).
fn seconds(name: &str, value: &str, max: u64, why: &'static str) -> Result<Duration, OptionError> {
    let secs = number_in(name, value, 1..=max, "whole seconds", why)?;
    Ok(Duration::from_secs(secs))
}

/// A duration like `1h` or `30m` of at least `min`.
fn duration(name: &str, value: &str, min: Duration) -> Result<Duration, OptionError> {
    match humantime::parse_duration(value) {
        Ok(d) if d >= min => Ok(d),
        _ => Err(bad(
            name,
            value,
            "a duration like 1h or 30m (gc_every: at least 1s, or off; gc_grace: at least 1m; trash_every: at least 1s)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_style_lists_parse() {
        let mut o = MountOptions::default();
        o.apply("rw,allow_other,_netdev,nofail,x-systemd.automount,attr_timeout=0.5,cache_mb=64")
            .unwrap();
        assert!(o.allow_other && !o.read_only);
        assert_eq!(o.ttl, Some(Duration::from_millis(500)));
        assert_eq!(o.cache_mb, Some(64));
        assert_eq!(o.mount_table, ["_netdev", "nofail", "x-systemd.automount"]);
    }

    #[test]
    fn bad_options_name_themselves() {
        let mut o = MountOptions::default();
        assert_eq!(
            o.apply("allow_other,bogus"),
            Err(OptionError::Unknown("bogus".into()))
        );
        assert_eq!(
            o.apply("cache_mb"),
            Err(OptionError::MissingValue("cache_mb".into()))
        );
        assert_eq!(
            o.apply("cache_mb="),
            Err(OptionError::MissingValue("cache_mb".into()))
        );
        let e = o.apply("threads=0").unwrap_err().to_string();
        assert!(e.contains("threads"), "{e}");
        let e = o.apply("readahead_mb=0").unwrap_err().to_string();
        assert!(e.contains("readahead_mb") && e.contains("1 to 1024"), "{e}");
        o.apply("readahead_mb=64").unwrap();
        assert_eq!(o.readahead_mb, Some(64));
    }

    #[test]
    fn gc_runs_take_durations_or_off() {
        let mut o = MountOptions::default();
        assert_eq!(o.gc_every, None, "the volume's kind decides");
        o.apply("gc_every=30m,gc_grace=2h").unwrap();
        assert_eq!(o.gc_every, Some(Some(Duration::from_secs(1800))));
        assert_eq!(o.gc_grace, Duration::from_secs(7200));
        o.apply("gc_every=off,gc_grace=1m").unwrap();
        assert_eq!(
            (o.gc_every, o.gc_grace),
            (Some(None), Duration::from_secs(60))
        );
        for bad in [
            "gc_every=soon",
            "gc_every=0s",
            "gc_grace=-1h",
            "gc_grace=0s",
        ] {
            let e = o.apply(bad).unwrap_err().to_string();
            assert!(e.contains(bad.split('=').next().unwrap()), "{e}");
        }
    }
}
