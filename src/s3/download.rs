//! Channels from S3: list every object under each prefix first (so an empty prefix, a missing
//! bucket, bad credentials or an unsafe key fail before anything is written), then download with
//! bounded concurrency, streaming each body to disk.
//!
//! Nothing that looks complete is ever partial: a channel is downloaded into a fresh hidden
//! folder beside `input/data/<channel>/` and renamed into place only when every object is in;
//! inside it each file is written under a temporary name and renamed when its last byte is.
//! Objects at or above the multipart threshold are fetched as concurrent byte ranges.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::client::{describe, Action, S3};
use super::location::{find_conflict, human_bytes, place_key, Placement, S3Uri};
use crate::error::{user, Stopped};

/// One channel to fetch: `uri`'s objects into `dir`.
#[derive(Debug, Clone)]
pub struct ChannelDownload {
    pub name: String,
    pub uri: S3Uri,
    pub dir: PathBuf,
}

/// What a finished download moved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transferred {
    pub objects: usize,
    pub bytes: u64,
    pub seconds: f64,
}

#[derive(Debug)]
struct Object {
    key: String,
    size: u64,
    etag: Option<String>,
    rel: PathBuf,
}

#[derive(Debug)]
struct Plan {
    channel: ChannelDownload,
    objects: Vec<Object>,
    bytes: u64,
}

/// Lists every channel, then downloads them one after another.
pub async fn download_channels(
    s3: &S3,
    channels: &[ChannelDownload],
    stop: &AtomicBool,
) -> Result<Vec<Transferred>> {
    let mut plans = Vec::new();
    for c in channels {
        plans.push(list(s3, c).await?);
    }
    let mut done = Vec::new();
    for plan in plans {
        done.push(download(s3, plan, stop).await?);
    }
    Ok(done)
}

/// Lists `uri` and maps every key to its place, refusing unsafe keys and empty prefixes.
async fn list(s3: &S3, c: &ChannelDownload) -> Result<Plan> {
    let target = c.uri.to_string();
    let mut pages = s3
        .client
        .list_objects_v2()
        .bucket(&c.uri.bucket)
        .prefix(&c.uri.key)
        .into_paginator()
        .send();
    let (mut objects, mut unsafe_keys, mut outside, mut markers) =
        (Vec::new(), Vec::new(), Vec::new(), 0usize);
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| describe(Action::List, &c.uri, "", &e))?;
        for o in page.contents() {
            let Some(key) = o.key() else { continue };
            match place_key(&c.uri.key, key) {
                Ok(Placement::File(rel)) => objects.push(Object {
                    key: key.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: o.e_tag().map(str::to_string),
                    rel,
                }),
                Ok(Placement::FolderMarker) => markers += 1,
                Ok(Placement::Outside) => outside.push(key.to_string()),
                Err(why) => unsafe_keys.push(format!("{key:?} ({why})")),
            }
        }
    }
    let name = &c.name;
    if !unsafe_keys.is_empty() {
        return Err(user(format!(
            "channel \"{name}\": {} of the keys under {target} would land outside \
             input/data/{name}/, so nothing was downloaded: {}{}",
            unsafe_keys.len(),
            unsafe_keys.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
            if unsafe_keys.len() > 3 { ", …" } else { "" }
        )));
    }
    if objects.is_empty() {
        let mut msg = format!(
            "channel \"{name}\": no objects under {target} (the listing is empty); check the \
             prefix and that the data was uploaded there (the prefix is read as a folder)"
        );
        if let Some(k) = outside.first() {
            msg.push_str(&format!(
                ", and {} key(s) such as {k:?} only start with the same text: end the URI at \
                 the folder you mean",
                outside.len()
            ));
        }
        return Err(user(msg));
    }
    if let Some((a, b)) = find_conflict(objects.iter().map(|o| (o.rel.as_path(), o.key.as_str()))) {
        return Err(user(format!(
            "channel \"{name}\": keys {a:?} and {b:?} under {target} need the same path, as a \
             file and as a folder; a folder cannot hold both"
        )));
    }
    if !outside.is_empty() {
        warn!(channel = %name, count = outside.len(), example = %outside[0],
              "skipping keys that only share the prefix's text, not its folder");
    }
    let bytes = objects.iter().map(|o| o.size).sum();
    info!(channel = %name, uri = %target, objects = objects.len(), bytes = %human_bytes(bytes),
          folder_markers = markers, "listed");
    Ok(Plan { channel: c.clone(), objects, bytes })
}

/// Counters shared by the transfer tasks and the progress log.
#[derive(Default)]
struct Progress {
    bytes: AtomicU64,
    objects: AtomicUsize,
}

/// Downloads one listed channel into a staging folder and swaps it into place.
async fn download(s3: &S3, plan: Plan, stop: &AtomicBool) -> Result<Transferred> {
    let dir = plan.channel.dir.clone();
    let parent = dir.parent().context("channel folder has no parent")?.to_path_buf();
    fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = parent.join(format!(".{}.download-{}", plan.channel.name, std::process::id()));
    remove_if_exists(&staging)?;
    fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;

    let result = fetch_all(s3, &plan, &staging, stop).await;
    match result {
        Ok(t) => {
            if dir.exists() {
                info!(dir = %dir.display(), "replacing the existing channel folder");
                remove_if_exists(&dir)?;
            }
            fs::rename(&staging, &dir)
                .with_context(|| format!("renaming {} to {}", staging.display(), dir.display()))?;
            info!(
                channel = %plan.channel.name,
                objects = t.objects,
                bytes = %human_bytes(t.bytes),
                seconds = format!("{:.2}", t.seconds),
                rate = %format!("{}/s", human_bytes((t.bytes as f64 / t.seconds.max(1e-6)) as u64)),
                dir = %dir.display(),
                "channel downloaded"
            );
            Ok(t)
        }
        Err(e) => {
            if let Err(rm) = remove_if_exists(&staging) {
                warn!("cannot remove {}: {rm:#}", staging.display());
            }
            Err(e)
        }
    }
}

/// Removes the staging folders (`.<channel>.download-<pid>`) that a killed run left in
/// `data_dir`. Only safe while this process holds the base folder's lock: then no other run
/// can be filling one.
pub fn remove_stale_staging(data_dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(data_dir) else { return 0 };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.')
            && name.contains(".download-")
            && remove_if_exists(&e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// `dir/.name.part`: where a file is written before it is complete.
fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.part"))
}

/// One GET: a whole object, or one byte range of a large one.
struct Piece {
    key: Arc<str>,
    etag: Option<Arc<str>>,
    tmp: Arc<Path>,
    dest: Arc<Path>,
    size: u64,
    start: u64,
    len: u64,
    /// Pieces of this object still to finish; whoever finishes the last renames the file.
    left: Arc<AtomicUsize>,
}

async fn fetch_all(s3: &S3, plan: &Plan, staging: &Path, stop: &AtomicBool) -> Result<Transferred> {
    let started = Instant::now();
    let progress = Arc::new(Progress::default());
    let tasks = spawn_pieces(s3, plan, staging, &progress)?;
    await_pieces(tasks, plan, &progress, started, stop).await?;
    // A signal that came after the last tick still stops the job before training.
    if stop.load(Ordering::Relaxed) {
        return Err(
            Stopped(" while downloading channels from S3; nothing was trained".into()).into()
        );
    }
    Ok(Transferred {
        objects: plan.objects.len(),
        bytes: progress.bytes.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Creates the plan's folders and empty files, and starts one task per piece (a whole object,
/// or a part of a large one), at most `concurrency` of them transferring at once.
fn spawn_pieces(
    s3: &S3,
    plan: &Plan,
    staging: &Path,
    progress: &Arc<Progress>,
) -> Result<JoinSet<Result<()>>> {
    let opts = s3.opts;
    let dirs: BTreeSet<PathBuf> = plan
        .objects
        .iter()
        .filter_map(|o| staging.join(&o.rel).parent().map(Path::to_path_buf))
        .collect();
    for d in &dirs {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let permits = Arc::new(Semaphore::new(opts.concurrency));
    let mut tasks = JoinSet::new();
    for o in &plan.objects {
        let dest: Arc<Path> = staging.join(&o.rel).into();
        if o.size == 0 {
            File::create(&dest).with_context(|| format!("creating {}", dest.display()))?;
            progress.objects.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let ranges: Vec<(u64, u64)> = if o.size >= opts.multipart_threshold {
            let part = opts.part_size;
            (0..o.size.div_ceil(part)).map(|i| (i * part, part.min(o.size - i * part))).collect()
        } else {
            vec![(0, o.size)]
        };
        let left = Arc::new(AtomicUsize::new(ranges.len()));
        let (key, etag, tmp): (Arc<str>, Option<Arc<str>>, Arc<Path>) =
            (o.key.as_str().into(), o.etag.as_deref().map(Into::into), temp_path(&dest).into());
        for (start, len) in ranges {
            let piece = Piece {
                key: key.clone(),
                etag: etag.clone(),
                tmp: tmp.clone(),
                dest: dest.clone(),
                size: o.size,
                start,
                len,
                left: left.clone(),
            };
            let (s3, permits, progress, bucket) =
                (s3.clone(), permits.clone(), progress.clone(), plan.channel.uri.bucket.clone());
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await.expect("semaphore open");
                fetch_piece(&s3, &bucket, &piece, &progress).await
            });
        }
    }
    Ok(tasks)
}

/// Waits for every piece, logging progress every two seconds; the first failure, or a stop,
/// cancels the rest.
async fn await_pieces(
    mut tasks: JoinSet<Result<()>>,
    plan: &Plan,
    progress: &Progress,
    started: Instant,
    stop: &AtomicBool,
) -> Result<()> {
    let total_objects = plan.objects.len();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last_log = Instant::now();
    let log_every = Duration::from_secs(2);
    loop {
        tokio::select! {
            next = tasks.join_next() => match next {
                None => return Ok(()),
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => {
                    tasks.shutdown().await;
                    return Err(e.context(format!("channel \"{}\"", plan.channel.name)));
                }
                Some(Err(join)) => {
                    tasks.shutdown().await;
                    return Err(anyhow!("download task failed: {join}"));
                }
            },
            _ = tick.tick() => {
                if stop.load(Ordering::Relaxed) {
                    tasks.shutdown().await;
                    return Err(Stopped(" while downloading channels from S3; nothing was trained".into()).into());
                }
                if last_log.elapsed() >= log_every {
                    last_log = Instant::now();
                    let (b, n) = (progress.bytes.load(Ordering::Relaxed), progress.objects.load(Ordering::Relaxed));
                    let secs = started.elapsed().as_secs_f64();
                    info!(
                        channel = %plan.channel.name,
                        objects = %format!("{n}/{total_objects}"),
                        bytes = %format!("{}/{}", human_bytes(b), human_bytes(plan.bytes)),
                        rate = %format!("{}/s", human_bytes((b as f64 / secs.max(1e-6)) as u64)),
                        "downloading"
                    );
                }
            }
        }
    }
}

/// A body that breaks after the GET succeeded is not retried by the SDK; the rest of the
/// range is requested again this many times before the download fails.
const BODY_RETRIES: u32 = 2;

async fn fetch_piece(s3: &S3, bucket: &str, p: &Piece, progress: &Progress) -> Result<()> {
    let uri = S3Uri { bucket: bucket.to_string(), key: p.key.to_string() };
    let target = uri.to_string();
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p.tmp)
        .with_context(|| format!("creating {}", p.tmp.display()))?;
    let end = p.start + p.len;
    let mut offset = p.start;
    let mut broken = 0;
    'request: while offset < end {
        let mut req = s3.client.get_object().bucket(bucket).key(&*p.key);
        if offset > 0 || end < p.size {
            req = req.range(format!("bytes={offset}-{}", end - 1));
        }
        // The object must not change between the listing and the last range.
        if let Some(etag) = &p.etag {
            req = req.if_match(&**etag);
        }
        let resp = req.send().await.map_err(|e| describe(Action::Get, &uri, "", &e))?;
        let mut body = resp.body;
        loop {
            match next_chunk(s3, &mut body).await {
                Ok(Some(bytes)) => {
                    let bytes = bytes.as_ref();
                    let n = bytes.len() as u64;
                    if offset + n > end {
                        return Err(anyhow!(
                            "downloading {target}: the server sent more than the {} bytes listed \
                             (the object changed while downloading?)",
                            p.size
                        ));
                    }
                    file.write_all_at(bytes, offset)
                        .with_context(|| format!("writing {}", p.tmp.display()))?;
                    offset += n;
                    progress.bytes.fetch_add(n, Ordering::Relaxed);
                }
                Ok(None) if offset < end => {
                    return Err(anyhow!(
                        "downloading {target}: the body ended at byte {offset} of {} (the \
                         object changed while downloading?)",
                        p.size
                    ));
                }
                Ok(None) => break 'request,
                Err(e) if broken < BODY_RETRIES => {
                    broken += 1;
                    warn!(object = %target, at = offset, "download broke ({e}); resuming");
                    continue 'request;
                }
                Err(e) => {
                    return Err(anyhow!(
                        "downloading {target}: the connection broke at byte {offset} of {} \
                         after {BODY_RETRIES} resumptions: {e}",
                        p.size
                    ));
                }
            }
        }
    }
    if p.left.fetch_sub(1, Ordering::AcqRel) == 1 {
        finish_object(file, p, &target, progress)?;
    }
    Ok(())
}

/// The body's next bytes. The SDK's stall protection watches throughput; the timeout here
/// catches a body that sends nothing at all, whatever the SDK makes of it.
async fn next_chunk(
    s3: &S3,
    body: &mut aws_sdk_s3::primitives::ByteStream,
) -> std::result::Result<Option<impl AsRef<[u8]>>, String> {
    match tokio::time::timeout(s3.opts.stall_timeout, body.try_next()).await {
        Ok(next) => next.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "no data for {} s (SMTRAIN_S3_STALL_TIMEOUT)",
            s3.opts.stall_timeout.as_secs()
        )),
    }
}

/// Run by whichever piece of an object ends last: checks the whole object arrived, then gives
/// it its real name.
fn finish_object(file: File, p: &Piece, target: &str, progress: &Progress) -> Result<()> {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len != p.size {
        return Err(anyhow!("downloading {target}: wrote {len} bytes of {}", p.size));
    }
    drop(file);
    fs::rename(&p.tmp, &p.dest)
        .with_context(|| format!("renaming {} to {}", p.tmp.display(), p.dest.display()))?;
    progress.objects.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
