//! `graviton daemon-pid MOUNTPOINT` (hidden; for `umount.graviton`): prints the pid of the
//! daemon serving a Graviton mount, read from its pid file and checked, so that the unmount
//! helper waits for that daemon and no other process. A process found through its command
//! line alone could be anyone's: any user can start one that looks like a daemon.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use crate::volume::Source;

#[derive(Args, Debug)]
pub struct DaemonPidArgs {
    pub mountpoint: PathBuf,
}

pub fn run(args: DaemonPidArgs) -> anyhow::Result<()> {
    let mp = args
        .mountpoint
        .canonicalize()
        .with_context(|| format!("mountpoint {}", args.mountpoint.display()))?;
    println!("{}", daemon_of(&mp)?);
    Ok(())
}

/// The source a Graviton mount on `mp` shows in the mount table.
fn mounted_source(mp: &Path) -> anyhow::Result<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let escaped = mp.to_string_lossy().replace(' ', "\\040");
    mounts
        .lines()
        .rev()
        .find_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            (f.len() > 2 && f[1] == escaped && f[2] == "fuse.graviton")
                .then(|| f[0].replace("\\040", " "))
        })
        .with_context(|| format!("no Graviton mount on {}", mp.display()))
}

/// The daemon's pid, from the pid file in its state folder; it must run this program and
/// belong to the pid file's owner.
fn daemon_of(mp: &Path) -> anyhow::Result<i32> {
    let source = Source::parse(&mounted_source(mp)?);
    let pid_file = match &source {
        Source::Postgres(_) => source.mount_state_dir(mp).join("graviton.pid"),
        Source::Dir(d) => d.join("graviton.pid"),
    };
    let owner =
        std::fs::symlink_metadata(&pid_file).with_context(|| format!("{}", pid_file.display()))?;
    if !owner.is_file() {
        bail!("{} is not a file", pid_file.display());
    }
    let pid: i32 = std::fs::read_to_string(&pid_file)?
        .trim()
        .parse()
        .with_context(|| format!("{} holds no pid", pid_file.display()))?;
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let runs_as = std::fs::metadata(&proc)
        .with_context(|| format!("process {pid} from {}", pid_file.display()))?
        .uid();
    if runs_as != owner.uid() {
        bail!(
            "process {pid} belongs to user {runs_as}, its pid file to {}",
            owner.uid()
        );
    }
    // the same program (by name: an upgrade may have replaced the file since it started)
    let name = |p: &Path| {
        let n = p.file_name().map(|n| n.to_string_lossy().into_owned());
        n.map(|n| n.trim_end_matches(" (deleted)").to_string())
    };
    let exe = std::fs::read_link(proc.join("exe"))?;
    let me = std::env::current_exe()?;
    if name(&exe) != name(&me) {
        bail!("process {pid} runs {}, not {}", exe.display(), me.display());
    }
    Ok(pid)
}
