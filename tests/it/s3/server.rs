//! A real S3-compatible server for the tests: `s3s-fs` (installed by `make`, path in
//! `SMTRAIN_S3S_FS`) on 127.0.0.1 with a free port, a temporary root and SigV4 credentials
//! enforced; a synchronous S3 client to fill and read it; and a TCP proxy that breaks uploads
//! partway, for faults the server itself cannot be made to produce.
//!
//! For denied requests, which s3s-fs never answers to a correctly signed request, the same
//! `Server` runs moto's standalone server instead (`Server::start_moto`; installed by `make`,
//! path in `SMTRAIN_MOTO_SERVER`), with IAM users and policies that moto enforces.
//!
//! Shared with the S3 benchmark (`bench/s3.rs`), so it depends on nothing test-specific.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use smtrain::s3::{TransferOptions, S3};

pub const ACCESS_KEY: &str = "SMTRAINTESTKEY";
pub const SECRET_KEY: &str = "smtrain-test-secret";
pub const REGION: &str = "us-east-1";
pub const SERVER_ENV: &str = "SMTRAIN_S3S_FS";
pub const MOTO_ENV: &str = "SMTRAIN_MOTO_SERVER";

/// An access key and its secret.
#[derive(Clone, Debug)]
pub struct Keys {
    pub access_key: String,
    pub secret_key: String,
}

impl Keys {
    /// The environment that makes `train` sign its requests with these keys.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
        ]
    }
}

pub struct Server {
    child: Option<Child>,
    pub port: u16,
    root: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    pub s3: S3,
    /// The keys `s3` and [`Server::env`] sign with: s3s-fs's only pair, or moto's
    /// administrator once its IAM checks are on.
    keys: Keys,
}

/// The s3s-fs binary (`SMTRAIN_S3S_FS`); a test that needs it cannot pass without it.
pub fn server_binary() -> PathBuf {
    binary(SERVER_ENV, "s3s-fs")
}

/// The program named by the environment variable `env`. Missing, the test fails: the S3 tests
/// are `#[ignore]`d under a plain `cargo test`, and `make test` installs their servers and runs
/// them.
pub fn binary(env: &str, what: &str) -> PathBuf {
    match std::env::var_os(env).map(PathBuf::from) {
        Some(p) if p.is_file() => p,
        Some(p) => panic!(
            "{env}={} does not exist: the S3 tests need {what} (`make test` installs it)",
            p.display()
        ),
        None => panic!("{env} is not set: the S3 tests need {what} (`make test` installs it)"),
    }
}

/// A port the kernel just handed out and released, for a server to bind itself.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something listens on `port`, failing after `secs` seconds.
fn wait_for_listener(what: &str, port: u16, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on port {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

impl Server {
    /// Starts a server.
    pub fn start() -> Self {
        let bin = server_binary();
        let root = tempfile::Builder::new().prefix("smtrain-s3-").tempdir().unwrap();
        let keys = Keys { access_key: ACCESS_KEY.into(), secret_key: SECRET_KEY.into() };
        let mut server = Self { child: None, port: 0, root, rt: runtime(), s3: dummy_s3(), keys };
        server.spawn(&bin);
        server
    }

    fn spawn(&mut self, bin: &Path) {
        let port = free_port();
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        self.child = Some(child);
        self.port = port;
        wait_for_listener("s3s-fs", port, 10);
        self.s3 = self.client(TransferOptions::default());
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The folder s3s-fs stores objects in (`root/bucket/key`).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// A client of this server with the given transfer settings.
    pub fn client(&self, opts: TransferOptions) -> S3 {
        self.client_at(&self.endpoint(), opts)
    }

    /// A client that talks to `endpoint` (e.g. a proxy in front of this server).
    pub fn client_at(&self, endpoint: &str, opts: TransferOptions) -> S3 {
        S3::for_endpoint(endpoint, REGION, &self.keys.access_key, &self.keys.secret_key, opts)
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Stops the server (SIGKILL), as a crash or a lost network would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections still open, as the kernel accepts them, but
    /// nothing is answered, as with a server or network that hangs.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("server running").id();
        // SAFETY: a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
    }

    /// The environment that points `train` at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.keys.env();
        env.push(("AWS_REGION", REGION.into()));
        env.push(("AWS_ENDPOINT_URL", self.endpoint()));
        env
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.block_on(self.s3.client.create_bucket().bucket(bucket).send())
            .unwrap_or_else(|e| panic!("create bucket {bucket}: {e:?}"));
    }

    pub fn put(&self, bucket: &str, key: &str, bytes: impl Into<Vec<u8>>) {
        let body = ByteStream::from(bytes.into());
        self.block_on(self.s3.client.put_object().bucket(bucket).key(key).body(body).send())
            .unwrap_or_else(|e| panic!("put {bucket}/{key}: {e:?}"));
    }

    /// Uploads many objects at once (16 in flight).
    pub fn put_many(&self, bucket: &str, objects: Vec<(String, Vec<u8>)>) {
        let client = self.s3.client.clone();
        self.block_on(async move {
            let permits = Arc::new(tokio::sync::Semaphore::new(16));
            let mut set = tokio::task::JoinSet::new();
            for (key, bytes) in objects {
                let (client, permits, bucket) =
                    (client.clone(), permits.clone(), bucket.to_string());
                set.spawn(async move {
                    let _p = permits.acquire_owned().await.unwrap();
                    client
                        .put_object()
                        .bucket(&bucket)
                        .key(&key)
                        .body(ByteStream::from(bytes))
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("put {bucket}/{key}: {e:?}"));
                });
            }
            while let Some(r) = set.join_next().await {
                r.unwrap();
            }
        });
    }

    pub fn put_file(&self, bucket: &str, key: &str, path: &Path) {
        let client = self.s3.client.clone();
        self.block_on(async move {
            let body = ByteStream::from_path(path).await.unwrap();
            client
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("put {bucket}/{key}: {e:?}"));
        });
    }

    /// The object's bytes, or `None` when it does not exist.
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        self.block_on(async {
            let out = self.s3.client.get_object().bucket(bucket).key(key).send().await.ok()?;
            Some(out.body.collect().await.unwrap().into_bytes().to_vec())
        })
    }

    /// The object's ETag.
    pub fn etag(&self, bucket: &str, key: &str) -> String {
        self.block_on(self.s3.client.head_object().bucket(bucket).key(key).send())
            .unwrap()
            .e_tag()
            .unwrap_or_default()
            .to_string()
    }

    /// Every key under `prefix`, sorted.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        self.block_on(async {
            let mut pages = self
                .s3
                .client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .into_paginator()
                .send();
            let mut keys = Vec::new();
            while let Some(page) = pages.next().await {
                for o in page.unwrap().contents() {
                    keys.push(o.key().unwrap().to_string());
                }
            }
            keys.sort();
            keys
        })
    }
}

/// moto's server: the one server here that denies correctly signed requests.
///
/// It starts with its IAM checks off, so a test creates buckets, objects (with the usual
/// helpers) and IAM users, each with a policy and an access key ([`Server::iam_user`]), without
/// signing anything, and then calls [`Server::enforce_iam`]. From then on moto checks every
/// request: the signature against the secret of the IAM user that owns the access key, and that
/// user's policies against the action (`s3:ListBucket`, `s3:GetObject`, `s3:PutObject`…) on the
/// resource's ARN, as AWS evaluates an IAM user's policies: `AccessDenied` unless a statement
/// allows it and none denies it. The helpers then sign as an administrator, a user allowed
/// everything.
impl Server {
    /// Starts moto, or returns `None` when it is not installed outside CI.
    pub fn start_moto() -> Self {
        let bin = binary(MOTO_ENV, "moto");
        // moto keeps everything in memory; the folder is only its working directory.
        let root = tempfile::Builder::new().prefix("smtrain-moto-").tempdir().unwrap();
        let port = free_port();
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .current_dir(root.path())
            // IAM checks off until enforce_iam switches them on.
            .env_remove("INITIAL_NO_AUTH_ACTION_COUNT")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        // Before the checks are on, any keys do.
        let keys = Keys { access_key: "setup".into(), secret_key: "setup".into() };
        let mut server =
            Self { child: Some(child), port, root, rt: runtime(), s3: dummy_s3(), keys };
        // A Python program: slower to start than s3s-fs, more so on a busy machine.
        wait_for_listener("moto", port, 60);
        server.s3 = server.client(TransferOptions::default());
        server
    }

    /// Creates an IAM user whose only permissions are `policy` (an IAM policy document), with
    /// an access key. Only before [`Server::enforce_iam`].
    pub fn iam_user(&self, name: &str, policy: &serde_json::Value) -> Keys {
        self.iam(&[("Action", "CreateUser"), ("UserName", name)]);
        let policy = policy.to_string();
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", name),
            ("PolicyName", "smtrain-test"),
            ("PolicyDocument", &policy),
        ]);
        let out = self.iam(&[("Action", "CreateAccessKey"), ("UserName", name)]);
        Keys {
            access_key: xml_text(&out, "AccessKeyId"),
            secret_key: xml_text(&out, "SecretAccessKey"),
        }
    }

    /// Switches moto's IAM checks on (its `/moto-api/reset-auth` with a count of 0 unchecked
    /// requests) after creating an administrator for the helpers to sign with.
    pub fn enforce_iam(&mut self) {
        let everything = serde_json::json!({"Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]});
        let admin = self.iam_user("smtrain-admin", &everything);
        let (status, body) = self.post("/moto-api/reset-auth", "text/plain", &[], "0");
        assert_eq!(status, 200, "switching moto's IAM checks on: {body}");
        self.keys = admin;
        self.s3 = self.client(TransferOptions::default());
    }

    /// One call of IAM's query API; panics unless it succeeds. moto picks the service from
    /// the credential scope of the Authorization header; while its IAM checks are off it does
    /// not verify the signature, so the header only names the service.
    fn iam(&self, params: &[(&str, &str)]) -> String {
        let mut body: Vec<String> =
            params.iter().map(|(k, v)| format!("{k}={}", form_encode(v))).collect();
        body.push("Version=2010-05-08".into());
        let auth = "AWS4-HMAC-SHA256 Credential=setup/20260101/us-east-1/iam/aws4_request, \
                    SignedHeaders=host, Signature=unsigned";
        let (status, out) = self.post(
            "/",
            "application/x-www-form-urlencoded; charset=utf-8",
            &[("Authorization", auth)],
            &body.join("&"),
        );
        assert_eq!(status, 200, "IAM {params:?}: {out}");
        out
    }

    /// A plain HTTP/1.1 POST to the server; returns the status and the body.
    fn post(
        &self,
        path: &str,
        content_type: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        conn.write_all(req.as_bytes()).unwrap();
        let mut resp = String::new();
        conn.read_to_string(&mut resp).unwrap();
        let status = resp.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
        (status, body)
    }
}

/// `application/x-www-form-urlencoded`'s encoding of one value.
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The text of the first `<tag>…</tag>` in `xml`; panics when there is none.
fn xml_text(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = xml.find(&open).unwrap_or_else(|| panic!("no <{tag}> in {xml}")) + open.len();
    let len = xml[start..].find(&format!("</{tag}>")).unwrap_or_else(|| panic!("{xml}"));
    xml[start..start + len].to_string()
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn dummy_s3() -> S3 {
    S3::for_endpoint("http://127.0.0.1:9", REGION, "x", "y", TransferOptions::default())
}

/// What a [`BreakingProxy`] breaks.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Lets the first N bytes sent towards the server through, then breaks every open
    /// connection and lets each new one send only 64 KiB: large request bodies (upload parts)
    /// fail from then on, small requests (an abort) still pass.
    UploadsAfter(u64),
    /// Breaks the first connection that has received N bytes from the server, once; everything
    /// after that passes.
    OneDownloadAfter(u64),
}

/// A TCP proxy in front of `upstream` that injects a network fault.
pub struct BreakingProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    state: Arc<ProxyState>,
}

impl BreakingProxy {
    pub fn start(upstream: u16, fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(ProxyState {
            fault,
            sent: AtomicU64::new(0),
            tripped: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
        });
        let (stop2, state2) = (stop.clone(), state.clone());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            continue;
                        };
                        let born_tripped = state2.tripped.load(Ordering::SeqCst);
                        state2.open.lock().unwrap().push(client.try_clone().unwrap());
                        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                        let (st, st2) = (state2.clone(), state2.clone());
                        std::thread::spawn(move || st.pump_up(client, server, born_tripped));
                        std::thread::spawn(move || st2.pump_down(s2, c2));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self { port, stop, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Whether the fault has happened.
    pub fn tripped(&self) -> bool {
        self.state.tripped.load(Ordering::SeqCst)
    }
}

impl Drop for BreakingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct ProxyState {
    fault: Fault,
    sent: AtomicU64,
    tripped: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
}

impl ProxyState {
    /// Client → server.
    fn pump_up(&self, mut from: TcpStream, mut to: TcpStream, born_tripped: bool) {
        let mut buf = vec![0u8; 64 << 10];
        let mut mine = 0u64;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n as u64,
            };
            mine += n;
            let total = self.sent.fetch_add(n, Ordering::SeqCst) + n;
            if let Fault::UploadsAfter(limit) = self.fault {
                if !self.tripped.load(Ordering::SeqCst) && total > limit {
                    self.tripped.store(true, Ordering::SeqCst);
                    for s in self.open.lock().unwrap().iter() {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                    break;
                }
                if born_tripped && mine > 64 << 10 {
                    break;
                }
            }
            if to.write_all(&buf[..n as usize]).is_err() {
                break;
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    }

    /// Server → client.
    fn pump_down(&self, mut from: TcpStream, mut to: TcpStream) {
        let mut buf = vec![0u8; 64 << 10];
        let mut mine = 0u64;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n as u64,
            };
            mine += n;
            if let Fault::OneDownloadAfter(limit) = self.fault {
                if mine > limit && !self.tripped.swap(true, Ordering::SeqCst) {
                    break;
                }
            }
            if to.write_all(&buf[..n as usize]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    }
}
