//! `graviton scrub`: checks every referenced block in every block store of a volume against its
//! key, and repairs a missing or corrupt copy from a good one. What it finds and fixes is
//! recorded in the ReplicaIndex (see `volume::MetaReplicaIndex`).

use crate::store::StoreError;
use crate::store::replicated::{ReplicaIndex, ReplicaStatus};
use crate::volume::{MetaReplicaIndex, Volume};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    pub blocks: u64,
    pub bad_copies: u64,
    pub repaired: u64,
    /// Blocks with no good copy anywhere.
    pub lost: u64,
}

/// Scrubs (and with `repair`, repairs) and writes a summary; an error when a block has no good
/// copy left.
pub fn check(vol: &Volume, repair: bool, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let r = scrub(vol, repair)?;
    writeln!(
        out,
        "scrubbed {} blocks in {} stores: {} bad copies, {} repaired, {} lost",
        r.blocks,
        vol.replicas.len(),
        r.bad_copies,
        r.repaired,
        r.lost
    )?;
    if r.lost > 0 {
        anyhow::bail!("{} blocks have no good copy in any store", r.lost);
    }
    Ok(())
}

pub fn scrub(vol: &Volume, repair: bool) -> anyhow::Result<ScrubReport> {
    let index = MetaReplicaIndex(vol.meta.clone());
    let mut report = ScrubReport::default();
    let keys = vol.meta.referenced_blocks()?;
    let bar = super::progress::bar(keys.len() as u64, "blocks");
    bar.set_prefix("scrub");
    for key in keys {
        bar.inc(1);
        report.blocks += 1;
        let mut good = None;
        let mut bad = Vec::new();
        for (i, (url, store)) in vol.replicas.iter().enumerate() {
            match store.get(&key) {
                Ok(data) => {
                    good.get_or_insert(data);
                    index.record(i, &key, ReplicaStatus::Ok);
                }
                Err(e) => {
                    let status = match e {
                        StoreError::Corrupt(..) => ReplicaStatus::Corrupt,
                        StoreError::NotFound(..) => ReplicaStatus::Missing,
                        other => return Err(anyhow::anyhow!("{url}: {other}")),
                    };
                    tracing::warn!(block = %key, store = %url, "{status:?} copy");
                    index.record(i, &key, status);
                    bad.push(i);
                }
            }
        }
        report.bad_copies += bad.len() as u64;
        let Some(data) = good else {
            report.lost += 1;
            bar.suspend(|| eprintln!("block {key}: no good copy in any store"));
            continue;
        };
        if !repair {
            continue;
        }
        for i in bad {
            let (url, store) = &vol.replicas[i];
            // the bad copy goes first: a put-if-absent store would keep it
            store.delete(&key)?;
            store.put(&key, &data)?;
            store
                .get(&key)
                .map_err(|e| anyhow::anyhow!("{url}: still bad after repair: {e}"))?;
            index.record(i, &key, ReplicaStatus::Ok);
            report.repaired += 1;
        }
    }
    bar.finish_and_clear();
    for (_, store) in &vol.replicas {
        store.sync()?;
    }
    Ok(report)
}
