//! `train serve`: SageMaker's hosting contract, for endpoints and batch transform, over the
//! model a training job wrote.
//!
//! The HTTP side runs on tokio (axum); forward passes run on a few worker threads of their own,
//! each with its own copy of the model (libtorch tensors may be sent between threads, not
//! shared). Requests reach the workers through a bounded queue, so a burst is answered 503
//! rather than held in memory. `/ping` is 200 only once the model is loaded and has answered a
//! forward pass.

mod http;
mod json;
pub mod payload;
mod table;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::oneshot;
use tracing::{debug, info};

use crate::evaluation::Predictions;
use crate::model::Mlp;
use crate::predict::{self, Loaded};
use payload::{Batch, Input, Output};

/// `serve --help`'s closing part.
pub const HELP: &str = "\
ENDPOINTS (SageMaker's hosting contract), on 0.0.0.0:8080 or SAGEMAKER_BIND_TO_PORT:
  GET  /ping                  200, empty, once the model is loaded and has run; 503 before
  POST /invocations           a batch of images in, one prediction per image out
  GET  /execution-parameters  batch transform's settings, as JSON

REQUEST (Content-Type; pixel values 0-255, light objects on black, as Fashion-MNIST):
  application/json            [IMAGE, ...] or {\"instances\": [IMAGE, ...]}; IMAGE is 784
                              numbers or 28 lists of 28 (the model's input size); other keys
                              are ignored, \"instances\" twice is a 400
  application/jsonlines       one IMAGE per line
  text/csv                    one image per line, 784 values, no header
  application/x-npy           a .npy array, uint8 or float32, (N,28,28) or (N,784), or
                              one image as (28,28) or (784,); no bytes after the data
  image/png, image/jpeg, application/x-image
                              one PNG or JPEG picture of any size and colour, converted to
                              the model's input as in training (grey or RGB, resized)
  An RGB model (model.json's input.shape [H, W, 3]) takes H*W*3 values per image, channels
  last: flat, H lists of W*3, or H lists of W [R, G, B]; .npy (N,H,W,3) or (N,H*W*3).
  A blank line in CSV or JSON lines is a 400 (each line gets one answer line); errors name
  lines 1-based, as editors count, and JSON list items by 0-based index. A UTF-8 byte order
  mark before text is skipped. Values that all lie between 0 and 1, some with fractions
  (images scaled to 0-1), are a 400: multiply by 255.

REQUEST FOR A TABLE MODEL (model.json's input.kind \"table\", F features): rows of features
  without the label, as sent (the model standardizes them as in training):
  text/csv                    one row per line, F numbers; a blank line is a 400
  application/json            [ROW, ...] or {\"instances\": [ROW, ...]}; ROW is F numbers or
                              {\"features\": [F numbers]}
  application/jsonlines       one ROW per line
  application/x-npy           a .npy array, float32 or float64, (N,F) or (F,)
  The log line \"model ready\" says which input the loaded model takes.

RESPONSE (Accept, weighed by q as RFC 9110 says; default application/json):
  application/json            {\"predictions\": [{\"class\": 9, \"class_name\": \"Ankle boot\",
                              \"probabilities\": [...one per class...]}, ...]}
  application/jsonlines       one {\"class\", \"class_name\", \"probabilities\"} object per line
  text/csv                    one line per image: class,p0,p1,...
  Ranges text/*, application/* and */* match too; q=0 refuses a type (an Accept of only
  application/json;q=0 is a 406).

ERRORS (a JSON body {\"error\": \"...\", \"status\": N}): 400 bad image (which one, what was
  expected) or a body that breaks off, 404 unknown path, 405 method not allowed (with an Allow
  header), 406 no acceptable Accept, 408 a body that stops arriving, 413 over the payload
  limit (from Content-Length, before the body is read) or needing more memory than
  SMTRAIN_SERVE_MEMORY_MB, 415 unknown Content-Type, 503 queue full, memory budget in use,
  too many connections, not ready, or no worker answered within 55 s (inside SageMaker's
  60 s). A request head that cannot be parsed: 400, 414 (URI) or 431 (over 64 KB).

LIMITS: a request head must arrive within SMTRAIN_SERVE_CLIENT_TIMEOUT_SECONDS of the
  connection's start or its last answer (idle keep-alive connections close then too); a body
  must keep arriving (no gap over that timeout) and end within 60 s. Memory: about the model
  times (workers + 5), plus 150 MB, plus SMTRAIN_SERVE_MEMORY_MB, plus 128 KB per open
  connection. The open-file limit is raised to its hard limit at start. SIGTERM stops
  accepting, answers what is in flight within 5 s, closes the rest and exits 0.

ENVIRONMENT:
  SAGEMAKER_BIND_TO_PORT              port (default 8080)
  SAGEMAKER_MAX_PAYLOAD_IN_MB         largest request body (default 6, at most 100); 0: no
                                      limit but SMTRAIN_SERVE_MEMORY_MB
  SAGEMAKER_BATCH                     true for batch transform (logged); true, 1 or yes,
                                      false, 0 or no; anything else stops serve
  SAGEMAKER_BATCH_STRATEGY            SINGLE_RECORD or MULTI_RECORD (default MULTI_RECORD)
  SAGEMAKER_MAX_CONCURRENT_TRANSFORMS parallel requests batch transform sends (default: the
                                      worker count); more than the workers wait in the
                                      queue, which holds at least this many
  SMTRAIN_SERVE_WORKERS               forward-pass threads (default: one per core, at most 8)
  SMTRAIN_SERVE_QUEUE                 requests waiting for a worker before 503 (default 64)
  SMTRAIN_SERVE_CONNECTIONS           open connections before 503 (default 1024)
  SMTRAIN_SERVE_MEMORY_MB             memory requests in flight may hold: bodies, images,
                                      forward passes, answers (default 256, or a quarter of
                                      the memory free at start if less; at least
                                      SAGEMAKER_MAX_PAYLOAD_IN_MB)
  SMTRAIN_SERVE_CLIENT_TIMEOUT_SECONDS
                                      client timeout, see LIMITS (default 5)
  SMTRAIN_SERVE_SUMMARY_SECONDS       seconds between the info-level summaries (default 60)";

/// How long a request may wait for its forward pass before it is answered 503: inside the 60 s
/// SageMaker gives an invocation. `HELP` states it.
const ANSWER_WITHIN: Duration = Duration::from_secs(55);
/// The most a request body may take to arrive, however steadily it comes. `HELP` states it.
const BODY_WITHIN: Duration = Duration::from_secs(60);
/// After SIGTERM, how long requests in flight have to finish: inside `docker stop`'s 10 s.
/// `HELP` states it.
const DRAIN_WITHIN: Duration = Duration::from_secs(5);
/// Requests whose forward pass takes at most this many multiply-adds (9 images of the default
/// model) run on the thread that received them: tens of microseconds, less than handing them to
/// a worker and back.
const INLINE_MACS: usize = 1_000_000;
/// SMTRAIN_SERVE_MEMORY_MB's default, unless a quarter of the memory left at start is less.
const MEMORY_MB: u64 = 256;

/// How the server runs, from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub port: u16,
    /// SAGEMAKER_MAX_PAYLOAD_IN_MB in bytes; 0 for no limit but the memory budget.
    pub max_payload: usize,
    pub workers: usize,
    pub queue: usize,
    pub batch: bool,
    pub batch_strategy: String,
    pub max_concurrent_transforms: usize,
    pub summary_every: Duration,
    /// Open connections at most.
    pub connections: usize,
    /// Bytes that requests in flight may hold: bodies, their images, forward passes, answers.
    pub memory: usize,
    /// The most a client may take to send a request head, or to send the next piece of a
    /// body; also how long an idle keep-alive connection stays open.
    pub client_timeout: Duration,
}

impl Settings {
    pub fn from_env() -> Result<Self> {
        let left = crate::budget::room().map(|r| r.free());
        Self::from_lookup(|k| std::env::var(k).ok(), left)
    }

    /// The settings from `get`; `left` is the memory this process may still use, if known.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>, left: Option<u64>) -> Result<Self> {
        let num = |key: &str, default: u64, lo: u64, hi: u64| -> Result<u64> {
            match get(key) {
                None => Ok(default),
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if (lo..=hi).contains(&n) => Ok(n),
                    _ => Err(crate::error::user(format!(
                        "{key}={}: expected a whole number from {lo} to {hi}",
                        crate::error::quote(&v)
                    ))),
                },
            }
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let workers = num("SMTRAIN_SERVE_WORKERS", cores.min(8), 1, 256)? as usize;
        let strategy = get("SAGEMAKER_BATCH_STRATEGY").unwrap_or_else(|| "MULTI_RECORD".into());
        if !matches!(strategy.as_str(), "SINGLE_RECORD" | "MULTI_RECORD") {
            return Err(crate::error::user(format!(
                "SAGEMAKER_BATCH_STRATEGY={}: expected SINGLE_RECORD or MULTI_RECORD",
                crate::error::quote(&strategy)
            )));
        }
        let payload_mb = num("SAGEMAKER_MAX_PAYLOAD_IN_MB", 6, 0, 100)?;
        let transforms = num("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", workers as u64, 1, 1024)?;
        // Not more than a quarter of what is left, so that the model and the runtime fit too.
        let fits = left.map_or(MEMORY_MB, |b| (b >> 20) / 4).min(MEMORY_MB);
        let memory_mb = num("SMTRAIN_SERVE_MEMORY_MB", fits.max(payload_mb).max(16), 16, 1 << 20)?;
        if memory_mb < payload_mb {
            return Err(crate::error::user(format!(
                "SMTRAIN_SERVE_MEMORY_MB={memory_mb} is below SAGEMAKER_MAX_PAYLOAD_IN_MB={payload_mb}: \
                 no request of the largest size could be read"
            )));
        }
        Ok(Self {
            port: num("SAGEMAKER_BIND_TO_PORT", 8080, 1, 65535)? as u16,
            max_payload: (payload_mb as usize) << 20,
            workers,
            // A transform job's parallel requests all wait their turn rather than get a 503.
            queue: (num("SMTRAIN_SERVE_QUEUE", 64, 1, 100_000)?).max(transforms) as usize,
            batch: flag(&get, "SAGEMAKER_BATCH")?,
            batch_strategy: strategy,
            max_concurrent_transforms: transforms as usize,
            summary_every: Duration::from_secs(num(
                "SMTRAIN_SERVE_SUMMARY_SECONDS",
                60,
                1,
                86_400,
            )?),
            connections: num("SMTRAIN_SERVE_CONNECTIONS", 1024, 1, 1 << 20)? as usize,
            memory: (memory_mb as usize) << 20,
            client_timeout: Duration::from_secs(num(
                "SMTRAIN_SERVE_CLIENT_TIMEOUT_SECONDS",
                5,
                1,
                3600,
            )?),
        })
    }

    /// The largest body read: SAGEMAKER_MAX_PAYLOAD_IN_MB, or the memory budget for 0.
    fn body_limit(&self) -> usize {
        if self.max_payload == 0 {
            self.memory
        } else {
            self.max_payload.min(self.memory)
        }
    }
}

/// A true/false variable: `true`, `1` or `yes`, `false`, `0` or `no` (any case), or unset.
fn flag(get: &impl Fn(&str) -> Option<String>, key: &str) -> Result<bool> {
    let Some(v) = get(key) else { return Ok(false) };
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        _ => Err(crate::error::user(format!(
            "{key}={}: expected true or false",
            crate::error::quote(&v)
        ))),
    }
}

/// One request's images on their way to a worker, and where the answer goes.
struct Job {
    batch: Batch,
    reply: oneshot::Sender<Predictions>,
}

/// What the handlers share.
struct Shared {
    ready: AtomicBool,
    jobs: std::sync::mpsc::SyncSender<Job>,
    /// What requests need of the model, set once it is loaded (before `ready`).
    model: std::sync::OnceLock<ModelInfo>,
    settings: Settings,
    stats: Stats,
    budget: Arc<Budget>,
}

/// The input and class names of the loaded model, and a copy for the HTTP threads to copy.
struct ModelInfo {
    input: crate::data::Input,
    class_names: Vec<String>,
    sizes: Vec<usize>,
    /// Multiply-adds of one input's forward pass.
    macs: usize,
    master: Mutex<Loaded>,
}

thread_local! {
    /// This thread's copy of the model, for requests small enough to run where they arrive.
    static LOCAL: std::cell::RefCell<Option<Loaded>> = const { std::cell::RefCell::new(None) };
}

/// Latency buckets: exact below 16 µs, then 16 per power of two up to 2^31 µs (36 min), each
/// within 1/16 of the latencies it holds. A fixed size, whatever the number of requests.
const SUB: usize = 16;
const BUCKETS: usize = 28 * SUB;

fn bucket(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros() as usize;
    let sub = ((us >> (octave - 4)) & 15) as usize;
    ((octave - 3) * SUB + sub).min(BUCKETS - 1)
}

/// The largest latency bucket `b` holds, in µs.
fn bucket_top(b: usize) -> u64 {
    if b < SUB {
        return b as u64;
    }
    let (octave, sub) = (b / SUB + 3, (b % SUB) as u64);
    ((16 + sub) << (octave - 4)) + (1 << (octave - 4)) - 1
}

/// Requests since the last summary.
struct Stats {
    requests: AtomicU64,
    errors: AtomicU64,
    max_us: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Stats {
    fn record(&self, started: Instant, ok: bool) {
        self.record_us(started.elapsed().as_micros() as u64, ok);
    }

    fn record_us(&self, us: u64, ok: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.max_us.fetch_max(us, Ordering::Relaxed);
        self.buckets[bucket(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// The (p50, p99, max) latencies in µs since the last call, and resets them; `None`
    /// without requests. Percentiles are their bucket's top, at most the maximum.
    fn take(&self) -> Option<(u64, u64, u64, u64, u64)> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.swap(0, Ordering::Relaxed)).collect();
        let max = self.max_us.swap(0, Ordering::Relaxed);
        let requests = self.requests.swap(0, Ordering::Relaxed);
        let errors = self.errors.swap(0, Ordering::Relaxed);
        let seen: u64 = counts.iter().sum();
        if requests == 0 || seen == 0 {
            return None;
        }
        let pct = |p: f64| {
            let rank = ((seen - 1) as f64 * p).round() as u64;
            let mut below = 0;
            for (b, &n) in counts.iter().enumerate() {
                below += n;
                if below > rank {
                    return bucket_top(b).min(max);
                }
            }
            max
        };
        Some((requests, errors, pct(0.5), pct(0.99), max))
    }

    /// Logs and resets the counts since the last call.
    fn summarise(&self) {
        let Some((requests, errors, p50, p99, max)) = self.take() else { return };
        let ms = |us: u64| format!("{:.3}", us as f64 / 1e3);
        info!(requests, errors, p50_ms = ms(p50), p99_ms = ms(p99), max_ms = ms(max), "serving");
    }
}

/// The bytes requests in flight may hold at once (SMTRAIN_SERVE_MEMORY_MB).
struct Budget {
    limit: usize,
    used: AtomicUsize,
}

/// What one request holds of the budget, given back when it is dropped: after its answer is
/// written.
struct Charge {
    budget: Arc<Budget>,
    held: usize,
}

impl Charge {
    fn new(budget: &Arc<Budget>) -> Self {
        Self { budget: budget.clone(), held: 0 }
    }

    /// Takes `bytes` more, or answers why not: 413 when the request could never fit, 503 when
    /// it does not fit now.
    fn take(&mut self, bytes: usize) -> Result<(), Refusal> {
        let limit = self.budget.limit;
        let total = self.held.saturating_add(bytes);
        if total > limit {
            return Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "a body this size may need up to {} MB to read and answer, over the {} MB \
                     that requests may hold (SMTRAIN_SERVE_MEMORY_MB); send fewer images per \
                     request",
                    total.div_ceil(1 << 20),
                    limit >> 20
                ),
            ));
        }
        let taken = self.budget.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            used.checked_add(bytes).filter(|&u| u <= limit)
        });
        if taken.is_err() {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "requests in flight hold all the memory SMTRAIN_SERVE_MEMORY_MB allows; retry \
                 shortly",
            ));
        }
        self.held += bytes;
        Ok(())
    }

    fn give_back(&mut self, bytes: usize) {
        let bytes = bytes.min(self.held);
        self.budget.used.fetch_sub(bytes, Ordering::AcqRel);
        self.held -= bytes;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::AcqRel);
    }
}

/// A response body that keeps its request's charge until hyper has written it.
struct Charged {
    data: Option<Bytes>,
    _charge: Charge,
}

impl http_body::Body for Charged {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.data.take().map(|d| Ok(http_body::Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// Runs the server until SIGTERM or SIGINT; the model comes from `model`. Loading failures end
/// it at once with the reason.
pub fn main(model: &Path) -> Result<()> {
    let settings = Settings::from_env()?;
    tch::set_num_threads(1);
    let file_limit = http::raise_file_limit();
    let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(settings.queue);
    let shared = Arc::new(Shared {
        ready: AtomicBool::new(false),
        jobs,
        model: std::sync::OnceLock::new(),
        settings: settings.clone(),
        stats: Stats::default(),
        budget: Arc::new(Budget { limit: settings.memory, used: AtomicUsize::new(0) }),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.workers.clamp(1, 4))
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let addr = SocketAddr::from(([0, 0, 0, 0], settings.port));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let limits = http::Limits {
            connections: http::connection_cap(settings.connections, file_limit),
            head_within: settings.client_timeout,
            drain_within: DRAIN_WITHIN,
        };
        info!(
            %addr,
            batch = settings.batch,
            workers = settings.workers,
            connections = limits.connections,
            memory_mb = settings.memory >> 20,
            "listening"
        );
        // The model loads while connections are already accepted; /ping says 503 meanwhile.
        let loader = {
            let (shared, model) = (shared.clone(), model.to_path_buf());
            tokio::task::spawn_blocking(move || start_workers(&model, queue, &shared))
        };
        let app = router(shared.clone());
        let summary = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(shared.settings.summary_every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    shared.stats.summarise();
                }
            })
        };
        let server = tokio::spawn(http::serve(listener, app, limits, shutdown_signal()));
        loader.await.context("model loader")??;
        let drained = server.await.context("server task")?;
        summary.abort();
        shared.stats.summarise();
        if drained {
            info!("stopped: every request in flight was answered");
        } else {
            info!("stopped: requests still unanswered after the drain deadline were dropped");
        }
        Ok(())
    });
    // Whatever a client still holds open is dropped, not waited for.
    rt.shutdown_timeout(Duration::from_millis(100));
    result
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/ping", get(ping))
        .route("/invocations", post(invocations))
        .route("/execution-parameters", get(execution_parameters))
        // After the routes: it applies to those already added. axum keeps the Allow header.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(shared)
        // The body is read with our own limit, to answer 413 in JSON.
        .layer(axum::extract::DefaultBodyLimit::disable())
}

fn copy_of(loaded: &Loaded) -> Loaded {
    Loaded {
        model: Mlp::from_flat(loaded.model.sizes(), loaded.model.flat.copy()),
        card: loaded.card.clone(),
        input: loaded.input.clone(),
        small: loaded.small.clone(),
    }
}

/// Loads the model, checks it answers, then starts the workers, each with its own copy.
fn start_workers(
    model: &Path,
    queue: std::sync::mpsc::Receiver<Job>,
    shared: &Arc<Shared>,
) -> Result<()> {
    let started = Instant::now();
    let loaded =
        predict::load_model(model).with_context(|| format!("loading model {}", model.display()))?;
    // A forward pass before /ping says yes: a model that cannot answer must not go InService.
    let probe = forward(&loaded, &Batch { pixels: vec![0.0; loaded.input.features()], count: 1 });
    anyhow::ensure!(probe.len() == 1, "the model gave no prediction for a probe input");
    let queue = Arc::new(Mutex::new(queue));
    for i in 0..shared.settings.workers {
        let (copy, queue) = (copy_of(&loaded), queue.clone());
        std::thread::Builder::new()
            .name(format!("serve-worker-{i}"))
            .spawn(move || work(&copy, &queue))?;
    }
    let (sizes, input, layers) =
        (loaded.model.sizes().to_vec(), loaded.input.describe(), loaded.model.sizes().to_vec());
    let info = ModelInfo {
        input: loaded.input.clone(),
        class_names: loaded.card.class_names.clone(),
        macs: sizes.windows(2).map(|w| w[0] * w[1]).sum(),
        sizes,
        master: Mutex::new(loaded),
    };
    let _ = shared.model.set(info);
    shared.ready.store(true, Ordering::Release);
    info!(
        model = %model.display(),
        layers = ?layers,
        input = %input,
        seconds = format!("{:.3}", started.elapsed().as_secs_f64()),
        "model ready"
    );
    Ok(())
}

fn work(loaded: &Loaded, queue: &Mutex<std::sync::mpsc::Receiver<Job>>) {
    loop {
        let job = match queue.lock().expect("queue lock").recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let _ = job.reply.send(forward(loaded, &job.batch));
    }
}

/// The forward pass `predict` runs, on float values: the same operations, so the same bits.
fn forward(loaded: &Loaded, batch: &Batch) -> Predictions {
    let mut standardized;
    let (values, scale) = if loaded.card.input.standardize.is_some() {
        standardized = batch.pixels.clone();
        let scale = loaded.prepare(&mut standardized);
        (&standardized[..], scale)
    } else {
        (&batch.pixels[..], loaded.card.input.scale)
    };
    predict::forward(loaded, values, batch.count, scale)
}

/// The forward pass on this thread, with its own copy of the model (made on first use).
fn forward_here(model: &ModelInfo, batch: &Batch) -> Predictions {
    LOCAL.with(|local| {
        let mut local = local.borrow_mut();
        let loaded =
            local.get_or_insert_with(|| copy_of(&model.master.lock().expect("model copy lock")));
        forward(loaded, batch)
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(
        signal = which,
        seconds = DRAIN_WITHIN.as_secs(),
        "stopping: no new connections; answering those in flight"
    );
}

async fn ping(State(shared): State<Arc<Shared>>) -> StatusCode {
    if shared.ready.load(Ordering::Acquire) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn execution_parameters(State(shared): State<Arc<Shared>>) -> Response {
    let s = &shared.settings;
    let body = serde_json::json!({
        "MaxConcurrentTransforms": s.max_concurrent_transforms,
        "BatchStrategy": s.batch_strategy,
        "MaxPayloadInMB": s.max_payload >> 20,
    });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// An error answer not rendered yet: small enough to pass along in a `Result`.
struct Refusal(StatusCode, String);

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self(status, message.into())
    }
}

impl From<Refusal> for Response {
    fn from(r: Refusal) -> Response {
        error(r.0, r.1)
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into(), "status": status.as_u16() });
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "{}: no such path; this server answers /ping, /invocations and /execution-parameters",
            crate::error::quote(uri.path())
        ),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} {}: not allowed; the Allow header lists the methods that are",
            crate::error::quote(uri.path())
        ),
    )
}

async fn invocations(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let response = answer(&shared, &headers, body).await.unwrap_or_else(Response::from);
    let ok = response.status().is_success();
    debug!(
        status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "invocation"
    );
    shared.stats.record(started, ok);
    response
}

/// The most memory a request of `input` with a body of `len` bytes may need to be read and
/// answered: the body, its floats (three copies: the batch, the tensor, the scaled tensor),
/// the forward pass (three floats per unit of every layer and image) and the answer. Taken
/// before the body is read, so that a request let in always has the memory to finish; the
/// difference is given back once the body is decoded. The image count is the most the body
/// could hold: one value per byte of `.npy` (uint8), one per two bytes of text.
fn request_cost(model: &ModelInfo, input: Input, len: usize) -> usize {
    let features = model.sizes[0].max(1);
    let values = match input {
        Input::Picture => features,
        Input::Npy => len,
        Input::Json | Input::JsonLines | Input::Csv => len / 2 + 1,
    };
    len + decoded_cost(model, values, values.div_ceil(features))
}

/// The memory a decoded request of `values` floats in `count` images needs to be answered.
fn decoded_cost(model: &ModelInfo, values: usize, count: usize) -> usize {
    let units: usize = model.sizes.iter().sum();
    let name = model.class_names.iter().map(String::len).max().unwrap_or(0);
    let answer = model.class_names.len() * 16 + 64 + name;
    values.saturating_mul(12).saturating_add(count.saturating_mul(units * 12 + answer))
}

async fn answer(shared: &Shared, headers: &HeaderMap, body: Body) -> Result<Response, Refusal> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(output) = Output::from_accept(text(header::ACCEPT)) else {
        return Err(Refusal::new(
            StatusCode::NOT_ACCEPTABLE,
            format!(
                "Accept {:?}: this server answers application/json, application/jsonlines or text/csv",
                text(header::ACCEPT).unwrap_or_default()
            ),
        ));
    };
    let Some(input) = Input::from_content_type(text(header::CONTENT_TYPE)) else {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type {:?}: this server reads application/json, application/jsonlines, \
                 text/csv, application/x-npy, image/png, image/jpeg and application/x-image",
                text(header::CONTENT_TYPE).unwrap_or_default()
            ),
        ));
    };
    let Some(model) = shared.model.get().filter(|_| shared.ready.load(Ordering::Acquire)) else {
        return Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "the model is still loading"));
    };
    let mut charge = Charge::new(&shared.budget);
    let cost = |len| request_cost(model, input, len);
    let bytes = read_body(&shared.settings, headers, body, &mut charge, cost).await?;
    // Decoding is CPU work, but bounded by the payload limit: a few milliseconds at most.
    let decoded = match &model.input {
        crate::data::Input::Image(shape) => payload::decode(input, &bytes, *shape),
        crate::data::Input::Table { names } => table::decode(input, &bytes, names.len()),
    };
    let batch = decoded.map_err(|why| Refusal::new(StatusCode::BAD_REQUEST, why))?;
    drop(bytes);
    let needs = decoded_cost(model, batch.pixels.len(), batch.count);
    charge.give_back(charge.held.saturating_sub(needs));
    let predictions = if batch.count.saturating_mul(model.macs) <= INLINE_MACS {
        forward_here(model, &batch)
    } else {
        let (reply, answer) = oneshot::channel();
        if shared.jobs.try_send(Job { batch, reply }).is_err() {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many requests waiting; retry shortly",
            ));
        }
        match tokio::time::timeout(ANSWER_WITHIN, answer).await {
            Ok(Ok(p)) => p,
            _ => {
                return Err(Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no worker answered in time",
                ))
            }
        }
    };
    let body = payload::encode(output, &predictions, &model.class_names);
    let body = Body::new(Charged { data: Some(body.into()), _charge: charge });
    Ok(([(header::CONTENT_TYPE, output.content_type())], body).into_response())
}

/// The request body, within the payload limit, the memory budget and the client timeouts;
/// `cost` says what a body of so many bytes may need, taken from `charge` up front (all of it
/// for a Content-Length, as the body grows for a chunked one). A Content-Length over the limit
/// is answered 413 before anything is read, so a client that sent `Expect: 100-continue` gets
/// no `100 Continue`.
async fn read_body(
    settings: &Settings,
    headers: &HeaderMap,
    mut body: Body,
    charge: &mut Charge,
    cost: impl Fn(usize) -> usize,
) -> Result<Bytes, Refusal> {
    use http_body_util::BodyExt;
    let limit = settings.body_limit();
    let over = || {
        let setting = if settings.max_payload == 0 {
            "SMTRAIN_SERVE_MEMORY_MB, as SAGEMAKER_MAX_PAYLOAD_IN_MB is 0"
        } else {
            "SAGEMAKER_MAX_PAYLOAD_IN_MB"
        };
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over the {} MB limit ({setting})", limit >> 20),
        )
    };
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(n) = length {
        if n > limit as u64 {
            return Err(over());
        }
        charge.take(cost(n as usize))?;
    }
    let mut data = Vec::with_capacity(length.unwrap_or(0) as usize);
    let deadline = tokio::time::Instant::now() + BODY_WITHIN;
    loop {
        let next = tokio::time::timeout(settings.client_timeout, body.frame());
        let frame = match tokio::time::timeout_at(deadline, next).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(_)) => {
                return Err(Refusal::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the body stopped arriving: nothing for {} s \
                         (SMTRAIN_SERVE_CLIENT_TIMEOUT_SECONDS)",
                        settings.client_timeout.as_secs()
                    ),
                ))
            }
            Err(_) => {
                return Err(Refusal::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the body took over {} s to arrive", BODY_WITHIN.as_secs()),
                ))
            }
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| {
            let mut why = String::new();
            let mut cause: Option<&dyn std::error::Error> = Some(&e);
            while let Some(c) = cause {
                let text = c.to_string();
                if !why.contains(&text) {
                    why += if why.is_empty() { "" } else { ": " };
                    why += &text;
                }
                cause = c.source();
            }
            Refusal::new(StatusCode::BAD_REQUEST, format!("the body could not be read: {why}"))
        })?;
        let Ok(chunk) = frame.into_data() else { continue };
        if data.len() + chunk.len() > limit {
            return Err(over());
        }
        data.extend_from_slice(&chunk);
        if length.is_none() {
            charge.take(cost(data.len()).saturating_sub(charge.held))?;
        }
    }
    Ok(Bytes::from(data))
}

/// What the model at `path` takes and answers, from its `model.json`, for `serve --help`.
pub fn describe_model(path: &Path) -> String {
    let loaded = match predict::load_model(path) {
        Ok(l) => l,
        Err(e) => return format!("THE MODEL: none loads from {} ({e:#})", path.display()),
    };
    let takes = match &loaded.input {
        crate::data::Input::Image(shape) => format!(
            "{} images ({}), pixel values 0-255 (REQUEST above); pictures of any size and \
             colour are converted to it",
            shape.describe(),
            match shape.channels {
                1 => format!("arrays of {}x{} values", shape.rows, shape.cols),
                c => format!("arrays of {}x{}x{c} values, channels last", shape.rows, shape.cols),
            }
        ),
        crate::data::Input::Table { names } => format!(
            "table rows of {} features, without the label (REQUEST FOR A TABLE MODEL above): {}",
            names.len(),
            crate::error::clip(&names.join(", "), 300)
        ),
    };
    format!(
        "THE MODEL at {}:\n  takes {takes}\n  answers one of {} classes: {}",
        path.display(),
        loaded.card.class_names.len(),
        crate::error::clip(&loaded.card.class_names.join(", "), 300)
    )
}

/// The default model folder for `serve`: where SageMaker unpacks `model.tar.gz`.
pub fn default_model(base: &Path) -> PathBuf {
    base.join("model")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_the_environment_and_are_checked() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let s = Settings::from_lookup(env(&[]), None).unwrap();
        assert_eq!((s.port, s.max_payload, s.batch), (8080, 6 << 20, false));
        let s = Settings::from_lookup(
            env(&[
                ("SAGEMAKER_BIND_TO_PORT", "9001"),
                ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "20"),
                ("SAGEMAKER_BATCH", "true"),
                ("SAGEMAKER_BATCH_STRATEGY", "SINGLE_RECORD"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!((s.port, s.max_payload, s.batch), (9001, 20 << 20, true));
        assert_eq!(s.batch_strategy, "SINGLE_RECORD");
        let e = Settings::from_lookup(env(&[("SAGEMAKER_BIND_TO_PORT", "0")]), None).unwrap_err();
        assert!(e.to_string().contains("SAGEMAKER_BIND_TO_PORT=\"0\""), "{e}");
        assert!(Settings::from_lookup(env(&[("SAGEMAKER_BATCH_STRATEGY", "ALL")]), None).is_err());
    }

    #[test]
    fn the_ambiguous_settings_are_decided() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        // SAGEMAKER_BATCH: the usual spellings of true and false; anything else stops serve.
        for (v, want) in [("yes", true), ("TRUE", true), ("1", true), ("no", false), ("0", false)] {
            let pairs: &'static [(&str, &str)] = Box::leak(Box::new([("SAGEMAKER_BATCH", v)]));
            assert_eq!(Settings::from_lookup(env(pairs), None).unwrap().batch, want, "{v}");
        }
        let e = Settings::from_lookup(env(&[("SAGEMAKER_BATCH", "maybe")]), None).unwrap_err();
        assert!(e.to_string().contains("SAGEMAKER_BATCH=\"maybe\": expected true or false"));
        // Payload 0: no limit but the memory budget.
        let s = Settings::from_lookup(env(&[("SAGEMAKER_MAX_PAYLOAD_IN_MB", "0")]), None).unwrap();
        assert_eq!((s.max_payload, s.body_limit()), (0, s.memory));
        // More concurrent transforms than workers: the queue holds them all.
        let s = Settings::from_lookup(
            env(&[
                ("SMTRAIN_SERVE_WORKERS", "2"),
                ("SMTRAIN_SERVE_QUEUE", "4"),
                ("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", "100"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!((s.workers, s.queue, s.max_concurrent_transforms), (2, 100, 100));
        // The memory budget: a quarter of what is free, and room for one largest body.
        let s = Settings::from_lookup(env(&[]), Some(256 << 20)).unwrap();
        assert_eq!(s.memory, 64 << 20);
        let s =
            Settings::from_lookup(env(&[("SAGEMAKER_MAX_PAYLOAD_IN_MB", "80")]), Some(256 << 20))
                .unwrap();
        assert_eq!(s.memory, 80 << 20);
        let e = Settings::from_lookup(
            env(&[("SAGEMAKER_MAX_PAYLOAD_IN_MB", "20"), ("SMTRAIN_SERVE_MEMORY_MB", "19")]),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("below SAGEMAKER_MAX_PAYLOAD_IN_MB=20"), "{e}");
    }

    /// The summary's latencies come from a histogram of fixed size, and the percentiles stay
    /// within a bucket (1/16) of the truth.
    #[test]
    fn latency_percentiles_come_from_a_fixed_histogram() {
        let stats = Stats::default();
        for i in 0..1_000_000u64 {
            stats.record_us(100 + i % 1000, i % 100 != 0);
        }
        let (requests, errors, p50, p99, max) = stats.take().unwrap();
        assert_eq!((requests, errors, max), (1_000_000, 10_000, 1099));
        assert!((600..=600 + 600 / 16).contains(&p50), "{p50}");
        assert!((1090..=1099).contains(&p99), "{p99}");
        assert_eq!(stats.take(), None, "take resets");
        for us in [0, 1, 15, 16, 17, 31, 32, 33, 1000, 123_456, u64::MAX / 2] {
            let b = bucket(us);
            assert!(bucket_top(b) >= us.min(bucket_top(BUCKETS - 1)), "{us}");
            assert!(b == 0 || bucket_top(b - 1) < us, "{us}");
        }
    }

    /// docs/serving.md says `train serve --help` lists everything it describes: every
    /// variable, status, content type and `.npy` shape it names, and the time limit.
    #[test]
    fn help_lists_what_the_serving_doc_describes() {
        let doc =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/serving.md"))
                .unwrap();
        let doc = &doc[..doc.find("## Logs").expect("a Logs section")];
        let mut named: Vec<String> = Vec::new();
        for code in doc.split('`').skip(1).step_by(2) {
            let is_var = code.starts_with("SAGEMAKER_") || code.starts_with("SMTRAIN_SERVE_");
            let is_type = ["application/", "text/", "image/"].iter().any(|p| code.starts_with(p));
            if is_var || is_type {
                named.push(code.split('=').next().unwrap().to_string());
            }
            if code.starts_with('(') {
                named.push(code.replace(", ", ","));
            }
        }
        for line in doc.lines().filter(|l| l.starts_with("| 4") || l.starts_with("| 5")) {
            named.push(line[2..5].to_string());
        }
        assert!(named.len() > 20, "{named:?}");
        for n in named {
            assert!(HELP.contains(&n), "serve --help lacks {n}, which docs/serving.md names");
        }
        assert!(HELP.contains(&format!("within {} s", ANSWER_WITHIN.as_secs())));
        assert!(HELP.contains(&format!("end within {} s", BODY_WITHIN.as_secs())));
        assert!(HELP.contains(&format!("in flight within {} s", DRAIN_WITHIN.as_secs())));
    }
}
