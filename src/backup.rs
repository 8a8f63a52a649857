//! `redraft ctl backup`, `ctl backups`, `ctl backup verify` and `ctl restore`
//! (and `redraft up --restore`): the operator's side of online backups
//! (`redraft_placement::backup` takes the cut and writes the files).
//!
//! A restore builds the backup's keyspace in a cluster that holds no keys:
//! ACL users, function libraries and CONFIG parameters through the placement
//! driver, then every key through the proxy with `RESTORE ... ABSTTL`, so the
//! records are routed by the new cluster's ring whatever its shard count, and
//! keys whose absolute expiry has passed are left out.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use redraft_common::backup::tag_of;
use redraft_common::pd_client::PdClient;
use redraft_common::transport::Endpoint;
use redraft_common::wire::{PdRequest, PdResponse};
use redraft_placement::backup as files;

/// What `ctl backup` is asked for.
pub struct BackupOptions<'a> {
    pub to: &'a Path,
    pub tag: Option<String>,
    pub mib_per_sec: u32,
    pub hold_ms: u32,
}

/// Takes a backup of the running cluster into `options.to`.
pub async fn backup(endpoint: &Endpoint, pd: &PdClient, options: BackupOptions<'_>) -> Result<()> {
    if let Some(tag) = &options.tag {
        files::check_tag(tag)?;
    }
    let started = Instant::now();
    let started_ms = redraft_common::now_ms();
    std::fs::create_dir_all(options.to)?;
    let request = PdRequest::BackupCut {
        hold_ms: options.hold_ms,
    };
    let cut = match pd.call(&request, Duration::from_secs(60)).await? {
        PdResponse::BackupCut(cut) => *cut,
        PdResponse::Error(why) => bail!("{why}"),
        other => bail!("unexpected placement answer {other:?}"),
    };
    let tag = options.tag.unwrap_or_else(|| tag_of(cut.at_ms));
    eprintln!(
        "cut taken: {} shards, client answers held at most {:.1} ms",
        cut.indexes.len(),
        cut.hold_seconds * 1000.0
    );
    let write = files::WriteOptions {
        dir: options.to,
        tag: &tag,
        mib_per_sec: options.mib_per_sec,
        started_ms,
    };
    let written = files::write(endpoint, &cut, &write).await;
    let seconds = started.elapsed().as_secs_f64();
    let done = PdRequest::BackupDone {
        backup: cut.id,
        result: written.as_ref().ok().map(|m| (seconds, m.totals().1)),
    };
    if let Err(e) = pd.call(&done, Duration::from_secs(10)).await {
        eprintln!("could not tell the placement driver the backup ended ({e:#}); replicas drop its snapshots within 10 minutes");
    }
    let manifest = written?;
    let (keys, bytes) = manifest.totals();
    println!(
        "backup {tag} written to {}: {keys} keys, {bytes} bytes, {} shards in {seconds:.1} s",
        options.to.join(&tag).display(),
        manifest.shards.len()
    );
    Ok(())
}

/// `ctl backup --every`: the periodic job's settings, kept by the cluster.
pub async fn schedule(pd: &PdClient, every: &str, keep: usize, to: Option<&Path>) -> Result<()> {
    let pairs = if every == "off" {
        vec![(files::EVERY_KEY.to_string(), String::new())]
    } else {
        files::parse_period(every).map_err(anyhow::Error::msg)?;
        let to = to.ok_or_else(|| anyhow!("--every needs --to, a directory on the placement leader's machine"))?;
        let to = std::path::absolute(to)?;
        vec![
            (files::EVERY_KEY.to_string(), every.to_string()),
            (files::KEEP_KEY.to_string(), keep.to_string()),
            (files::DIR_KEY.to_string(), to.display().to_string()),
        ]
    };
    match pd
        .call(&PdRequest::SetConfig { pairs }, Duration::from_secs(10))
        .await?
    {
        PdResponse::Ack => {}
        PdResponse::Error(why) => bail!("{why}"),
        other => bail!("unexpected placement answer {other:?}"),
    }
    if every == "off" {
        println!("periodic backups off");
    } else {
        println!("a backup every {every}, the newest {keep} kept, written by the placement leader");
    }
    Ok(())
}

/// The periodic job's line for `ctl status`.
pub async fn status_line(pd: &PdClient) -> Result<String> {
    let config: std::collections::BTreeMap<String, String> =
        match pd.call(&PdRequest::Config, Duration::from_secs(10)).await? {
            PdResponse::Config(pairs) => pairs.into_iter().collect(),
            other => bail!("unexpected placement answer {other:?}"),
        };
    let every = config.get(files::EVERY_KEY).filter(|e| !e.is_empty());
    let mut line = match (every, config.get(files::DIR_KEY)) {
        (Some(every), Some(dir)) => format!(
            "backups every {every} into {dir}, newest {} kept",
            config.get(files::KEEP_KEY).map_or("7", String::as_str)
        ),
        _ => "backups not scheduled (redraft ctl backup --every)".to_string(),
    };
    if let Some(last) = config.get(files::LAST_KEY) {
        let parts: Vec<&str> = last.split(' ').collect();
        if let [tag, _, seconds, keys, bytes] = parts[..] {
            line += &format!("; last: {tag}, {keys} keys, {bytes} bytes in {seconds} s");
        }
    }
    Ok(line)
}

/// `ctl backups --in DIR`.
pub fn list(dir: &Path) -> Result<()> {
    let points = files::list(dir)?;
    if points.is_empty() {
        println!("no backups in {}", dir.display());
    }
    for point in points {
        match point.manifest {
            Ok(m) => {
                let (keys, bytes) = m.totals();
                let verified = point
                    .verified_ms
                    .map_or("not verified".to_string(), |at| format!("verified {}", tag_of(at)));
                println!(
                    "{:<24} cut {}  {keys} keys  {bytes} bytes  {} shards  {verified}",
                    point.name,
                    tag_of(m.cut_ms),
                    m.shards.len()
                );
            }
            Err(why) => println!("{:<24} unfinished: {why}", point.name),
        }
    }
    Ok(())
}

/// `ctl backup verify PATH`.
pub fn verify(path: &Path) -> Result<()> {
    let manifest = files::verify(path)?;
    let (keys, bytes) = manifest.totals();
    println!(
        "{}: {} files, {keys} keys, {bytes} bytes: every checksum holds",
        path.display(),
        manifest.shards.len()
    );
    Ok(())
}

/// Restores the backup at `path` into the (empty) cluster of `pd` and `proxy`.
pub async fn restore(pd: &PdClient, proxy: &str, path: &Path) -> Result<()> {
    let started = Instant::now();
    let manifest = files::manifest(path)?;
    // Every file checked before anything is written: a damaged backup is
    // refused whole.
    {
        let path = path.to_path_buf();
        let parts = manifest.shards.clone();
        tokio::task::spawn_blocking(move || parts.iter().try_for_each(|p| files::read_part(&path, p).map(drop)))
            .await??;
    }
    let keys_now = {
        let proxy = proxy.to_string();
        tokio::task::spawn_blocking(move || crate::migrate::dbsize(crate::migrate::Writers::open(&proxy)?.first()))
            .await??
    };
    if keys_now > 0 {
        bail!("the cluster holds {keys_now} keys: restore into a cluster started empty");
    }
    let call = |request: PdRequest| async move {
        match pd.call(&request, Duration::from_secs(30)).await? {
            PdResponse::Ack => Ok(()),
            PdResponse::Error(why) => Err(anyhow!("{why}")),
            other => Err(anyhow!("unexpected placement answer {other:?}")),
        }
    };
    for (name, user) in manifest.users.users.clone() {
        let rules = std::iter::once("reset".to_string())
            .chain(user.describe().split(' ').filter(|t| !t.is_empty()).map(str::to_string))
            .collect();
        call(PdRequest::SetUser { name, rules }).await?;
    }
    if !manifest.functions.0.is_empty() {
        let libraries = manifest.functions.0.values().cloned().collect();
        let change = redraft_common::lua::LibraryChange::Restore {
            libraries,
            policy: redraft_common::lua::RestorePolicy::Replace,
        };
        call(PdRequest::ChangeLibraries(change)).await?;
    }
    if !manifest.config.is_empty() {
        call(PdRequest::SetConfig {
            pairs: manifest.config.clone(),
        })
        .await?;
    }
    let (proxy, path_owned, parts) = (proxy.to_string(), path.to_path_buf(), manifest.shards.clone());
    let (loaded, expired) = tokio::task::spawn_blocking(move || -> Result<(u64, u64)> {
        let mut into = crate::migrate::Writers::open(&proxy)?;
        let (mut loaded, mut expired) = (0, 0);
        for part in &parts {
            let file = files::read_part(&path_owned, part)?;
            let entries: Vec<&redraft_common::rdb::Entry> = file.entries.iter().collect();
            let (l, e) = crate::migrate::load_entries(&mut into, &entries)?;
            eprintln!("shard {}: {l} keys restored", part.shard);
            loaded += l;
            expired += e;
        }
        Ok((loaded, expired))
    })
    .await??;
    println!(
        "restored {} ({}): {loaded} keys, {expired} already expired and left out, {} users, {} function libraries, in {:.1} s",
        manifest.tag,
        tag_of(manifest.cut_ms),
        manifest.users.users.len(),
        manifest.functions.0.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
