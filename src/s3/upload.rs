//! Artifacts to S3: folders packed into gzipped tarballs on disk, then uploaded from disk in one
//! request, or in concurrent parts at or above the multipart threshold. A multipart upload that
//! fails is aborted, so no orphaned parts are left behind.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use flate2::write::GzEncoder;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::client::{describe, Action, S3};
use super::location::{human_bytes, S3Uri};

/// Packs the files under `src` (recursively, in name order, paths relative to `src`) into a
/// gzipped tarball at `out`, streaming: nothing is held whole in memory. A missing `src` gives
/// an empty archive, as SageMaker uploads one for an empty folder.
pub fn pack_dir(src: &Path, out: &Path) -> Result<()> {
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let gz =
        GzEncoder::new(BufWriter::with_capacity(1 << 20, file), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    if src.is_dir() {
        append_tree(&mut tar, src, Path::new(""))
            .with_context(|| format!("packing {}", src.display()))?;
    }
    let gz = tar.into_inner().with_context(|| format!("writing {}", out.display()))?;
    let buf = gz.finish().with_context(|| format!("writing {}", out.display()))?;
    let file = buf.into_inner().map_err(|e| anyhow!("writing {}: {}", out.display(), e.error()))?;
    file.sync_all().with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

fn append_tree<W: std::io::Write>(tar: &mut tar::Builder<W>, dir: &Path, rel: &Path) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = rel.join(e.file_name());
        if e.file_type()?.is_dir() {
            tar.append_dir(&name, &path)?;
            append_tree(tar, &path, &name)?;
        } else {
            tar.append_path_with_name(&path, &name)?;
        }
    }
    Ok(())
}

/// Uploads the file at `path` to `dest`, streaming it from disk. Returns its size.
pub async fn upload_file(s3: &S3, path: &Path, dest: &S3Uri) -> Result<u64> {
    let len = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    if len < s3.opts.multipart_threshold {
        let body = ByteStream::from_path(path)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        s3.client
            .put_object()
            .bucket(&dest.bucket)
            .key(&dest.key)
            .content_length(len as i64)
            .body(body)
            .send()
            .await
            .map_err(|e| describe(Action::Put, dest, "", &e))?;
    } else {
        upload_multipart(s3, path, dest, len).await?;
    }
    Ok(len)
}

async fn upload_multipart(s3: &S3, path: &Path, dest: &S3Uri, len: u64) -> Result<()> {
    let target = dest.to_string();
    let created = s3
        .client
        .create_multipart_upload()
        .bucket(&dest.bucket)
        .key(&dest.key)
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .send()
        .await
        .map_err(|e| describe(Action::Put, dest, "", &e))?;
    let upload_id = created
        .upload_id()
        .ok_or_else(|| anyhow!("uploading {target}: the server returned no upload id"))?
        .to_string();
    let part_size = s3.opts.part_size_for(len);
    let count = len.div_ceil(part_size);
    info!(object = %target, size = %human_bytes(len), parts = count,
          part_size = %human_bytes(part_size), "multipart upload");

    let result = async {
        let parts = upload_parts(s3, path, dest, &upload_id, len, part_size).await?;
        s3.client
            .complete_multipart_upload()
            .bucket(&dest.bucket)
            .key(&dest.key)
            .upload_id(&upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| describe(Action::Put, dest, " (completing)", &e))?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        let abort = s3
            .client
            .abort_multipart_upload()
            .bucket(&dest.bucket)
            .key(&dest.key)
            .upload_id(&upload_id)
            .send()
            .await;
        return Err(match abort {
            Ok(_) => {
                info!(object = %target, %upload_id, "multipart upload aborted; no parts left");
                e.context("the multipart upload was aborted")
            }
            Err(a) => {
                let a = describe(Action::Put, dest, &format!(" (aborting {upload_id})"), &a);
                warn!("{a:#}");
                e.context(format!(
                    "aborting multipart upload {upload_id} failed too, so its parts may stay \
                     until a lifecycle rule removes them ({a:#})"
                ))
            }
        });
    }
    Ok(())
}

async fn upload_parts(
    s3: &S3,
    path: &Path,
    dest: &S3Uri,
    upload_id: &str,
    len: u64,
    part_size: u64,
) -> Result<Vec<CompletedPart>> {
    let count = len.div_ceil(part_size);
    let permits = Arc::new(Semaphore::new(s3.opts.concurrency));
    let mut tasks = JoinSet::new();
    for i in 0..count {
        let (s3, permits, path, dest, upload_id) =
            (s3.clone(), permits.clone(), path.to_path_buf(), dest.clone(), upload_id.to_string());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            let number = (i + 1) as i32;
            let offset = i * part_size;
            let size = part_size.min(len - offset);
            let part = format!(" (part {number} of {count})");
            let body = ByteStream::read_from()
                .path(&path)
                .offset(offset)
                .length(Length::Exact(size))
                .build()
                .await
                .with_context(|| format!("reading {}", path.display()))?;
            let out = s3
                .client
                .upload_part()
                .bucket(&dest.bucket)
                .key(&dest.key)
                .upload_id(&upload_id)
                .part_number(number)
                .content_length(size as i64)
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .body(body)
                .send()
                .await
                .map_err(|e| describe(Action::Put, &dest, &part, &e))?;
            Ok::<_, anyhow::Error>(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
                    .build(),
            )
        });
    }
    let mut parts = Vec::with_capacity(count as usize);
    while let Some(next) = tasks.join_next().await {
        match next {
            Ok(Ok(part)) => parts.push(part),
            Ok(Err(e)) => {
                tasks.shutdown().await;
                return Err(e);
            }
            Err(join) => {
                tasks.shutdown().await;
                return Err(anyhow!("upload task failed: {join}"));
            }
        }
    }
    parts.sort_by_key(|p| p.part_number());
    Ok(parts)
}
