//! The S3 client from aws-config's standard chains, transfer settings from the environment, and
//! S3 errors turned into one-line messages with the S3 error code and a hint at the cause.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::time::Duration;

use anyhow::Result;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::StalledStreamProtectionConfig;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;
use aws_types::service_config::ServiceConfigKey;
use tracing::info;

use super::location::{human_bytes, parse_size, S3Uri};
use crate::error::user;

/// How transfers are split and how many run at once; `SMTRAIN_S3_*` variables override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferOptions {
    /// Requests in flight at once (objects, or parts of large ones).
    pub concurrency: usize,
    /// Files at or above this size are uploaded in parts, and objects at or above it are
    /// downloaded as concurrent ranges.
    pub multipart_threshold: u64,
    /// Size of those parts and ranges (S3 needs at least 5 MiB for every part but the last).
    pub part_size: u64,
    /// How long a request may go unanswered, or a transfer make no progress, before the attempt
    /// is abandoned (and retried): a server that stops answering must not hang the job.
    pub stall_timeout: Duration,
}

/// S3's smallest part, except for the last one.
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest number of parts in one upload.
pub const MAX_PARTS: u64 = 10_000;

impl Default for TransferOptions {
    fn default() -> Self {
        Self {
            concurrency: 16,
            multipart_threshold: 16 << 20,
            part_size: 8 << 20,
            stall_timeout: Duration::from_secs(60),
        }
    }
}

impl TransferOptions {
    pub const ENV_CONCURRENCY: &'static str = "SMTRAIN_S3_CONCURRENCY";
    pub const ENV_THRESHOLD: &'static str = "SMTRAIN_S3_MULTIPART_THRESHOLD";
    pub const ENV_PART_SIZE: &'static str = "SMTRAIN_S3_PART_SIZE";
    pub const ENV_STALL_TIMEOUT: &'static str = "SMTRAIN_S3_STALL_TIMEOUT";

    /// Defaults, overridden by the environment; a malformed value is a user error.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut o = Self::default();
        let bad = |k: &str, v: &str, why: String| user(format!("{k}={v:?}: {why}"));
        if let Some(v) = get(Self::ENV_CONCURRENCY) {
            o.concurrency = match v.trim().parse::<usize>() {
                Ok(n) if (1..=256).contains(&n) => n,
                _ => return Err(bad(Self::ENV_CONCURRENCY, &v, "expected 1 to 256".into())),
            };
        }
        if let Some(v) = get(Self::ENV_THRESHOLD) {
            o.multipart_threshold = match parse_size(&v) {
                Ok(n) if n >= 1 => n,
                Ok(_) => return Err(bad(Self::ENV_THRESHOLD, &v, "must be at least 1".into())),
                Err(e) => return Err(bad(Self::ENV_THRESHOLD, &v, e)),
            };
        }
        if let Some(v) = get(Self::ENV_PART_SIZE) {
            o.part_size = match parse_size(&v) {
                Ok(n) if (MIN_PART_SIZE..=5 << 30).contains(&n) => n,
                Ok(_) => {
                    return Err(bad(Self::ENV_PART_SIZE, &v, "S3 parts are 5 MiB to 5 GiB".into()))
                }
                Err(e) => return Err(bad(Self::ENV_PART_SIZE, &v, e)),
            };
        }
        if let Some(v) = get(Self::ENV_STALL_TIMEOUT) {
            o.stall_timeout = match v.trim().parse::<u64>() {
                Ok(n) if (1..=3600).contains(&n) => Duration::from_secs(n),
                _ => {
                    return Err(bad(
                        Self::ENV_STALL_TIMEOUT,
                        &v,
                        "expected 1 to 3600 seconds".into(),
                    ))
                }
            };
        }
        Ok(o)
    }

    /// The part size for a file of `len` bytes: the configured one, grown when the file would
    /// otherwise need more than S3's 10,000 parts.
    pub fn part_size_for(&self, len: u64) -> u64 {
        self.part_size.max(len.div_ceil(MAX_PARTS))
    }
}

/// A connected client and the transfer settings it runs with.
#[derive(Clone)]
pub struct S3 {
    pub client: aws_sdk_s3::Client,
    pub opts: TransferOptions,
}

impl S3 {
    /// Loads region, credentials and endpoint through aws-config's standard chains
    /// (environment, profile files, container credentials, instance metadata) and checks the
    /// two things every request needs, so their absence fails with a hint rather than later.
    pub async fn from_env(opts: TransferOptions) -> Result<Self> {
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client())
            .timeout_config(timeouts(&opts))
            .stalled_stream_protection(stall_protection(&opts))
            .load()
            .await;
        if sdk.region().is_none() {
            return Err(user(
                "S3: no AWS region is configured; set AWS_REGION (or `region` in the AWS \
                 profile). A region is needed even with a custom endpoint",
            ));
        }
        if let Some(provider) = sdk.credentials_provider() {
            use aws_sdk_s3::config::ProvideCredentials;
            if let Err(e) = provider.provide_credentials().await {
                return Err(user(format!(
                    "S3: no AWS credentials found ({}); set AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with a container or \
                     instance role",
                    chain(&e)
                )));
            }
        }
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk);
        // The endpoint the S3 client will use, resolved as aws-sdk-s3 does it:
        // AWS_ENDPOINT_URL_S3 (or the profile's s3 endpoint_url), else AWS_ENDPOINT_URL.
        let key = ServiceConfigKey::builder()
            .service_id("S3")
            .env("AWS_ENDPOINT_URL")
            .profile("endpoint_url")
            .build()
            .expect("every field of the key is set");
        let endpoint = sdk
            .service_config()
            .and_then(|c| c.load_config(key))
            .or_else(|| sdk.endpoint_url().map(str::to_string));
        // Custom endpoints (S3-compatible servers, localhost) rarely resolve
        // bucket.host names: address them path-style.
        if endpoint.is_some() {
            conf = conf.force_path_style(true);
        }
        info!(
            region = %sdk.region().map(|r| r.to_string()).unwrap_or_default(),
            endpoint = endpoint.as_deref().unwrap_or("AWS"),
            concurrency = opts.concurrency,
            multipart_threshold = %human_bytes(opts.multipart_threshold),
            part_size = %human_bytes(opts.part_size),
            stall_timeout_s = opts.stall_timeout.as_secs(),
            "S3 client"
        );
        Ok(Self { client: aws_sdk_s3::Client::from_conf(conf.build()), opts })
    }

    /// A client for one endpoint with static credentials, addressed path-style: for tests and
    /// benchmarks against a local server, without touching the process environment.
    pub fn for_endpoint(
        endpoint: &str,
        region: &str,
        access_key: &str,
        secret_key: &str,
        opts: TransferOptions,
    ) -> Self {
        let creds =
            aws_sdk_s3::config::Credentials::new(access_key, secret_key, None, None, "static");
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http_client())
            .region(aws_sdk_s3::config::Region::new(region.to_string()))
            .credentials_provider(creds)
            .endpoint_url(endpoint)
            .force_path_style(true)
            .timeout_config(timeouts(&opts))
            .stalled_stream_protection(stall_protection(&opts))
            .build();
        Self { client: aws_sdk_s3::Client::from_conf(conf), opts }
    }
}

/// A connection that does not open, or a request whose answer does not begin, within the stall
/// timeout fails that attempt; the SDK's standard retries (three attempts) follow.
fn timeouts(opts: &TransferOptions) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(opts.stall_timeout)
        .read_timeout(opts.stall_timeout)
        .build()
}

/// A body, up or down, that moves no byte for the stall timeout is broken off.
fn stall_protection(opts: &TransferOptions) -> StalledStreamProtectionConfig {
    StalledStreamProtectionConfig::enabled().grace_period(opts.stall_timeout).build()
}

/// Hyper with rustls on ring: the one TLS stack built in (see Cargo.toml).
fn http_client() -> aws_sdk_s3::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https()
}

/// What a request was for, to pick the hint for a permission error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    List,
    Get,
    Put,
}

/// Renders a failed request about `uri` as one line: what was attempted (`detail`, such as
/// `" (part 2 of 5)"`, follows the URI), the S3 error code and message, the HTTP status, and a
/// hint. Client-side faults (4xx: wrong bucket, key, secret, permissions) become user errors;
/// server faults, timeouts and broken connections do not.
pub fn describe<E>(
    action: Action,
    uri: &S3Uri,
    detail: &str,
    err: &SdkError<E, HttpResponse>,
) -> anyhow::Error
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let target = format!("{uri}{detail}");
    let verb = match action {
        Action::List => "listing",
        Action::Get => "downloading",
        Action::Put => "uploading",
    };
    match err {
        SdkError::ServiceError(_) => {
            let status = err.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
            // HEAD responses carry no body, hence no code: name the status instead.
            let code = err.code().map(str::to_string).unwrap_or_else(|| match status {
                403 => "Forbidden".into(),
                404 => "NotFound".into(),
                s => format!("HTTP{s}"),
            });
            let message = err.message().filter(|m| !m.is_empty()).map(|m| format!(": {m}"));
            let text = format!(
                "{verb} {target}: S3 error {code} (HTTP {status}){}; {}",
                message.unwrap_or_default(),
                hint(action, &code, uri)
            );
            if (400..500).contains(&status) && status != 408 && status != 429 {
                user(text)
            } else {
                anyhow::anyhow!(text)
            }
        }
        SdkError::ConstructionFailure(_) => {
            user(format!("{verb} {target}: the request could not be built: {}", chain(err)))
        }
        SdkError::TimeoutError(_) => anyhow::anyhow!(
            "{verb} {target}: timed out after the SDK's retries ({}); check the network and \
             AWS_ENDPOINT_URL",
            chain(err)
        ),
        SdkError::DispatchFailure(_) => anyhow::anyhow!(
            "{verb} {target}: could not reach S3 after the SDK's retries ({}); check the \
             network and AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3",
            chain(err)
        ),
        _ => anyhow::anyhow!("{verb} {target}: {}", chain(err)),
    }
}

/// An error and its sources on one line, like `DisplayErrorContext` but without its `Debug`
/// dump, and skipping a source whose text its parent already shows.
pub fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let text = e.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = e.source();
    }
    out
}

/// The likely cause behind an S3 error code, for a request about `uri`.
pub fn hint(action: Action, code: &str, uri: &S3Uri) -> Cow<'static, str> {
    if matches!(code, "AccessDenied" | "Forbidden" | "AllAccessDisabled") {
        return denied(action, uri).into();
    }
    let text = match code {
        // NotSignedUp: what some S3-compatible servers answer for an unknown key.
        "InvalidAccessKeyId" | "NotSignedUp" => {
            "the access key is unknown to this endpoint: check AWS_ACCESS_KEY_ID (or AWS_PROFILE) \
             and AWS_ENDPOINT_URL"
        }
        "SignatureDoesNotMatch" => {
            "the request signature was rejected: check AWS_SECRET_ACCESS_KEY (it must belong to \
             AWS_ACCESS_KEY_ID)"
        }
        "ExpiredToken" | "InvalidToken" | "TokenRefreshRequired" => {
            "the session token is expired or invalid: refresh the credentials (AWS_SESSION_TOKEN)"
        }
        "NoSuchBucket" => {
            "the bucket does not exist: check its name, and AWS_REGION and the endpoint"
        }
        "NoSuchKey" | "NotFound" => {
            "no such object: check the bucket and key (an object may have been deleted while \
             the job ran)"
        }
        "PermanentRedirect"
        | "AuthorizationHeaderMalformed"
        | "IllegalLocationConstraintException" => {
            "the bucket is in another region: set AWS_REGION to the bucket's region"
        }
        "RequestTimeTooSkewed" => "this machine's clock is off: fix its time",
        "InvalidBucketName" => "the bucket name is not valid",
        "SlowDown" | "ServiceUnavailable" | "InternalError" => {
            "the server is overloaded or failing and the SDK's retries ran out: try again later"
        }
        _ => "see the S3 error code",
    };
    text.into()
}

/// What a denied request needed: the permission, and the resource ARN that an IAM policy
/// grants it on (the bucket's for a listing, the object's otherwise; the commonest slips are
/// s3:ListBucket granted on `bucket/*` and s3:GetObject on `bucket`).
fn denied(action: Action, uri: &S3Uri) -> String {
    let bucket = &uri.bucket;
    let object = format!("arn:aws:s3:::{bucket}/{}", uri.key);
    let (permission, on, also) = match action {
        Action::List => {
            ("s3:ListBucket", format!("arn:aws:s3:::{bucket} (the bucket's ARN, no /*)"), "")
        }
        Action::Get => (
            "s3:GetObject",
            format!("{object} (a PREFIX/* ARN covers it)"),
            "; SSE-KMS objects also need kms:Decrypt",
        ),
        Action::Put => (
            "s3:PutObject",
            format!("{object} (a PREFIX/* ARN covers it; large files also need s3:AbortMultipartUpload)"),
            "; SSE-KMS buckets also need kms:GenerateDataKey",
        ),
    };
    format!(
        "access denied: these credentials need {permission} on {on}, from their IAM policy and \
         not denied by a bucket policy{also}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error;
    use aws_sdk_s3::primitives::SdkBody;
    use aws_smithy_runtime_api::http::StatusCode;

    fn service_error(code: &str, status: u16) -> SdkError<ListObjectsV2Error, HttpResponse> {
        let meta =
            aws_sdk_s3::error::ErrorMetadata::builder().code(code).message("the message").build();
        let raw = HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        SdkError::service_error(ListObjectsV2Error::generic(meta), raw)
    }

    #[test]
    fn service_errors_name_code_status_and_hint() {
        let uri = |s: &str| s.parse::<S3Uri>().unwrap();
        let e = describe(Action::List, &uri("s3://b/p/"), "", &service_error("AccessDenied", 403));
        let text = e.to_string();
        assert!(crate::error::is_user_error(&e));
        assert!(
            text.contains("listing s3://b/p/: S3 error AccessDenied (HTTP 403): the message"),
            "{text}"
        );
        assert!(text.contains("need s3:ListBucket on arn:aws:s3:::b (the bucket's"), "{text}");
        let e = describe(Action::Get, &uri("s3://b/p/x"), "", &service_error("AccessDenied", 403));
        assert!(e.to_string().contains("need s3:GetObject on arn:aws:s3:::b/p/x"), "{e}");
        let put = uri("s3://b/k/model.tar.gz");
        let e = describe(Action::Put, &put, " (part 2 of 3)", &service_error("AccessDenied", 403));
        let text = e.to_string();
        assert!(text.starts_with("uploading s3://b/k/model.tar.gz (part 2 of 3): S3 error"), "{e}");
        assert!(text.contains("need s3:PutObject on arn:aws:s3:::b/k/model.tar.gz"), "{e}");
        assert!(text.contains("s3:AbortMultipartUpload"), "{e}");
        let e = describe(
            Action::Get,
            &uri("s3://b/k"),
            "",
            &service_error("SignatureDoesNotMatch", 403),
        );
        assert!(e.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{e}");
        let e = describe(Action::Get, &uri("s3://b/k"), "", &service_error("InternalError", 500));
        assert!(!crate::error::is_user_error(&e), "a server fault is not the user's: {e}");
        assert!(!e.to_string().contains("service error"), "{e}");
    }

    #[test]
    fn transfer_options_come_from_the_environment_and_are_checked() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(TransferOptions::from_lookup(env(&[])).unwrap(), TransferOptions::default());
        let o = TransferOptions::from_lookup(env(&[
            ("SMTRAIN_S3_CONCURRENCY", "4"),
            ("SMTRAIN_S3_MULTIPART_THRESHOLD", "5MiB"),
            ("SMTRAIN_S3_PART_SIZE", "5MiB"),
        ]))
        .unwrap();
        assert_eq!((o.concurrency, o.multipart_threshold, o.part_size), (4, 5 << 20, 5 << 20));
        for bad in [
            ("SMTRAIN_S3_CONCURRENCY", "0"),
            ("SMTRAIN_S3_PART_SIZE", "1MiB"),
            ("SMTRAIN_S3_MULTIPART_THRESHOLD", "lots"),
        ] {
            let pairs: &'static [(&str, &str)] = Box::leak(Box::new([bad]));
            let err = TransferOptions::from_lookup(env(pairs)).unwrap_err();
            assert!(crate::error::is_user_error(&err));
            assert!(err.to_string().starts_with(bad.0), "{err}");
        }
        // 10,000 parts at most: a 100 GiB file needs parts above 8 MiB.
        let o = TransferOptions::default();
        assert_eq!(o.part_size_for(1 << 30), 8 << 20);
        assert!(o.part_size_for(100 << 30) * MAX_PARTS >= 100 << 30);
    }
}
