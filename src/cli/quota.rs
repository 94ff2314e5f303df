//! `graviton quota set|get|list|remove` (`maint::quota`).

use clap::{Args, Subcommand};

use crate::daemon::control::{QuotaRequest, QuotaTarget, Request};

#[derive(Args, Debug)]
pub struct QuotaArgs {
    #[command(subcommand)]
    pub action: Action,
}

/// What a quota limits: exactly one of these.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// The whole volume (its capacity and inode count, as `df` shows them).
    #[arg(long)]
    volume: bool,
    /// The tree below a directory, from the volume's root (`/` is the volume).
    #[arg(long)]
    path: Option<String>,
    /// A user's files, by name or number.
    #[arg(long)]
    user: Option<String>,
    /// A group's files, by name or number.
    #[arg(long)]
    group: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Action {
    /// Set a quota's limits (making the quota, which counts what is there already, if it is
    /// new). Root only.
    Set {
        #[command(flatten)]
        target: Target,
        /// Most bytes, counted as `du` counts them (4 KiB units); 0 for no limit. Suffixes
        /// k, m, g, t (powers of 1024).
        #[arg(long, default_value = "0", value_parser = parse_bytes)]
        bytes: u64,
        /// Most files, directories and other inodes; 0 for no limit.
        #[arg(long, default_value_t = 0)]
        inodes: u64,
        /// Volume directory, postgres:// URL, or a directory on a mounted volume, which any
        /// user may name (default: the default volume).
        source: Option<String>,
    },
    /// One quota's limits and usage.
    Get {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
        source: Option<String>,
    },
    /// Every quota: what it limits, limits and usage.
    List {
        #[arg(long)]
        json: bool,
        source: Option<String>,
    },
    /// Remove a quota. Root only.
    Remove {
        #[command(flatten)]
        target: Target,
        source: Option<String>,
    },
}

/// `1048576`, `512k`, `100m`, `2g`, `1t` as bytes.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let shift = match s.as_bytes().last() {
        Some(b'k' | b'K') => 10,
        Some(b'm' | b'M') => 20,
        Some(b'g' | b'G') => 30,
        Some(b't' | b'T') => 40,
        _ => 0,
    };
    let digits = if shift > 0 { &s[..s.len() - 1] } else { s };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{s:?} is not a size (like 1048576, 512k, 100m, 2g)"))
}

/// A user or group id: a number, or a name the system knows.
fn id_of(name: &str, group: bool) -> anyhow::Result<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let c = std::ffi::CString::new(name)?;
    // SAFETY: getpwnam/getgrnam read a NUL-terminated name and return a pointer to static
    // storage or null; the id is copied out before any other call.
    let id = unsafe {
        match group {
            false => libc::getpwnam(c.as_ptr()).as_ref().map(|p| p.pw_uid),
            true => libc::getgrnam(c.as_ptr()).as_ref().map(|g| g.gr_gid),
        }
    };
    let what = if group { "group" } else { "user" };
    id.ok_or_else(|| anyhow::anyhow!("no {what} named {name}"))
}

impl Target {
    fn resolve(self) -> anyhow::Result<QuotaTarget> {
        Ok(match self {
            Target { volume: true, .. } => QuotaTarget::Volume,
            Target { path: Some(p), .. } => QuotaTarget::Path(p),
            Target { user: Some(u), .. } => QuotaTarget::User(id_of(&u, false)?),
            Target { group: Some(g), .. } => QuotaTarget::Group(id_of(&g, true)?),
            _ => anyhow::bail!("name what the quota limits: --volume, --path, --user or --group"),
        })
    }
}

pub fn run(args: QuotaArgs) -> anyhow::Result<()> {
    let (req, source) = match args.action {
        Action::Set {
            target,
            bytes,
            inodes,
            source,
        } => {
            let target = target.resolve()?;
            (
                QuotaRequest::Set {
                    target,
                    bytes,
                    inodes,
                },
                source,
            )
        }
        Action::Get {
            target,
            json,
            source,
        } => (
            QuotaRequest::Get {
                target: target.resolve()?,
                json,
            },
            source,
        ),
        Action::List { json, source } => (QuotaRequest::List { json }, source),
        Action::Remove { target, source } => (
            QuotaRequest::Remove {
                target: target.resolve()?,
            },
            source,
        ),
    };
    super::run_named(source, &Request::Quota(req))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes_and_refuse_the_rest() {
        assert_eq!(parse_bytes("100m"), Ok(100 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert!(parse_bytes("1e").is_err());
        assert!(parse_bytes("99999999999t").is_err(), "overflow is refused");
    }
}
