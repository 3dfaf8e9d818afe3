//! S3 for runs outside SageMaker (`docker run`, CI): channels downloaded from `s3://` prefixes
//! before training, and `model.tar.gz`, `output.tar.gz` (or the failure reason) uploaded after,
//! in SageMaker's layout.
//!
//! The rest of the program stays synchronous: each S3 step builds its own tokio runtime and
//! drops it when done, so libtorch never runs on an async executor.
//!
//! | module       | what it does                                                          |
//! |--------------|-----------------------------------------------------------------------|
//! | [`location`] | pure: URIs, `--channel` arguments, key → path (and refused keys), names |
//! | [`client`]   | the client from aws-config's chains; errors with S3 codes and hints   |
//! | [`download`] | list, then concurrent streamed downloads into a staging folder        |
//! | [`upload`]   | tarballs on disk; single or multipart upload, aborted on failure      |

pub mod client;
pub mod download;
pub mod location;
pub mod upload;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use tracing::{info, warn};

pub use client::{TransferOptions, S3};
pub use download::ChannelDownload;
pub use location::{ChannelArg, Location, S3Uri};

use crate::contract::Paths;
use crate::error::user;
use client::{describe, Action};
use location::human_bytes;

/// Runs one S3 step on a runtime of its own, dropped when the step is done.
pub fn block_on<F: Future>(f: F) -> Result<F::Output> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(4);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("s3")
        .enable_all()
        .build()
        .context("starting the S3 runtime")?;
    Ok(rt.block_on(f))
}

/// Downloads each channel's objects into its folder (see [`download`]).
pub fn download_channels(channels: &[ChannelDownload], stop: &AtomicBool) -> Result<()> {
    block_on(async {
        let s3 = S3::from_env(TransferOptions::from_env()?).await?;
        download::download_channels(&s3, channels, stop).await.map(drop)
    })?
}

/// The job's name: `TRAINING_JOB_NAME`, else a generated one that sorts by start time.
pub fn job_name() -> Result<String> {
    match std::env::var("TRAINING_JOB_NAME") {
        Ok(name) if !name.is_empty() => {
            location::check_job_name(&name).map_err(|e| user(format!("TRAINING_JOB_NAME: {e}")))?;
            Ok(name)
        }
        _ => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            let salt = (now.subsec_nanos() ^ std::process::id().rotate_left(16)) as u16;
            Ok(location::generated_job_name(now.as_millis() as u64, salt))
        }
    }
}

/// Where a job's artifacts go: `<prefix>/<job-name>/output/` under `--output`.
#[derive(Debug, Clone)]
pub struct Output {
    pub job_name: String,
    /// `s3://bucket/prefix/<job-name>/output/`
    pub dir: S3Uri,
}

pub const MODEL_TARBALL: &str = "model.tar.gz";
pub const OUTPUT_TARBALL: &str = "output.tar.gz";
pub const FAILURE_OBJECT: &str = "failure";

impl Output {
    /// Resolves the job name and checks, before any training, that the destination can be
    /// reached: region, credentials, endpoint and bucket. A listing that is denied only warns,
    /// since a role may write a prefix it may not list.
    pub fn prepare(base: &S3Uri) -> Result<Self> {
        let job_name = job_name()?;
        let dir = base.join(&format!("{job_name}/output/"));
        block_on(async {
            let s3 = S3::from_env(TransferOptions::from_env()?).await?;
            let listed = s3
                .client
                .list_objects_v2()
                .bucket(&dir.bucket)
                .prefix(&dir.key)
                .max_keys(1)
                .send()
                .await;
            match listed {
                // A job name names one job, as on SageMaker: mixing two runs' objects under one
                // prefix would let a failure sit beside an earlier run's model.
                Ok(out) if out.key_count().unwrap_or(0) > 0 => {
                    let first = out.contents().first().and_then(|o| o.key()).unwrap_or_default();
                    return Err(user(format!(
                        "--output {base}: job name {job_name:?} already has artifacts at {dir} \
                         (s3://{}/{first}); job names are unique, as on SageMaker: set another \
                         TRAINING_JOB_NAME (or leave it unset for a generated one), or delete \
                         that prefix",
                        dir.bucket
                    )));
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.as_service_error()
                            .and_then(|s| aws_sdk_s3::error::ProvideErrorMetadata::code(s)),
                        Some("AccessDenied")
                    ) =>
                {
                    warn!(output = %dir, "cannot list the output prefix (AccessDenied); \
                          uploads may still be allowed, continuing");
                }
                Err(e) => {
                    return Err(describe(Action::List, &dir, "", &e)
                        .context("checking --output before training"));
                }
            }
            Ok(())
        })??;
        info!(job = %job_name, output = %dir, "artifacts will be uploaded after the job");
        Ok(Self { job_name, dir })
    }

    /// Packs `model/` and `output/data/` into `model.tar.gz` and `output.tar.gz` and uploads
    /// both. A failed upload fails the job, naming the object.
    pub fn upload_artifacts(&self, paths: &Paths) -> Result<()> {
        let staging = paths.output_dir().join(format!(".upload-{}", std::process::id()));
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("creating {}", staging.display()))?;
        let result = self.pack_and_upload(paths, &staging);
        let _ = std::fs::remove_dir_all(&staging);
        result
    }

    fn pack_and_upload(&self, paths: &Paths, staging: &Path) -> Result<()> {
        // model.tar.gz last: its presence means the job's artifacts are all there.
        let items = [(paths.output_data_dir(), OUTPUT_TARBALL), (paths.model_dir(), MODEL_TARBALL)];
        for (src, name) in &items {
            upload::pack_dir(src, &staging.join(name))?;
        }
        block_on(async {
            let s3 = S3::from_env(TransferOptions::from_env()?).await?;
            for (_, name) in &items {
                let dest = self.dir.join(name);
                let started = std::time::Instant::now();
                let bytes = upload::upload_file(&s3, &staging.join(name), &dest).await?;
                info!(object = %dest, size = %human_bytes(bytes),
                      seconds = format!("{:.2}", started.elapsed().as_secs_f64()), "uploaded");
            }
            Ok::<_, anyhow::Error>(())
        })?
    }

    /// Uploads the failure reason as `<…>/output/failure`, so CI can show it. Failing to is
    /// logged: the job has already failed for its own reason.
    pub fn upload_failure(&self, text: &str) {
        let dest = self.dir.join(FAILURE_OBJECT);
        let result = block_on(async {
            let s3 = S3::from_env(TransferOptions::from_env()?).await?;
            s3.client
                .put_object()
                .bucket(&dest.bucket)
                .key(&dest.key)
                .content_type("text/plain; charset=utf-8")
                .body(text.as_bytes().to_vec().into())
                .send()
                .await
                .map_err(|e| describe(Action::Put, &dest, "", &e))?;
            Ok::<_, anyhow::Error>(())
        })
        .and_then(|r| r);
        match result {
            Ok(()) => info!(object = %dest, "failure reason uploaded"),
            Err(e) => tracing::error!("could not upload the failure reason: {e:#}"),
        }
    }
}
