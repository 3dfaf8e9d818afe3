//! `train serve`: SageMaker's hosting contract, for endpoints and batch transform, over the
//! model a training job wrote.
//!
//! The HTTP side runs on tokio (axum); forward passes run on a few worker threads of their own,
//! each with its own copy of the model (libtorch tensors may be sent between threads, not
//! shared). Requests reach the workers through a bounded queue, so a burst is answered 503
//! rather than held in memory. `/ping` is 200 only once the model is loaded and has answered a
//! forward pass.

pub mod payload;
mod table;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tch::Tensor;
use tokio::sync::oneshot;
use tracing::{debug, info};

use crate::evaluation::{self, Predictions};
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
                              numbers or 28 lists of 28 (the model's input size)
  application/jsonlines       one IMAGE per line
  text/csv                    one image per line, 784 values, no header
  application/x-npy           a .npy array, uint8 or float32, (N,28,28) or (N,784), or
                              one image as (28,28) or (784,)
  image/png, image/jpeg, application/x-image
                              one grayscale picture of the model's input size

REQUEST FOR A TABLE MODEL (model.json's input.kind \"table\", F features): rows of features
  without the label, as sent (the model standardizes them as in training):
  text/csv                    one row per line, F numbers; a blank line is a 400
  application/json            [ROW, ...] or {\"instances\": [ROW, ...]}; ROW is F numbers or
                              {\"features\": [F numbers]}
  application/jsonlines       one ROW per line
  application/x-npy           a .npy array, float32 or float64, (N,F) or (F,)
  The log line \"model ready\" says which input the loaded model takes.

RESPONSE (Accept; default application/json):
  application/json            {\"predictions\": [{\"class\": 9, \"class_name\": \"Ankle boot\",
                              \"probabilities\": [...one per class...]}, ...]}
  application/jsonlines       one {\"class\", \"class_name\", \"probabilities\"} object per line
  text/csv                    one line per image: class,p0,p1,...

ERRORS (a JSON body {\"error\": \"...\", \"status\": N}): 400 bad image (which one, what was
  expected), 404 unknown path, 405 method not allowed (with an Allow header), 406 unknown
  Accept, 413 over the payload limit, 415 unknown Content-Type, 503 queue full, not ready, or
  no worker answered within 55 s (inside SageMaker's 60 s). SIGTERM stops accepting, answers
  what is in flight and exits 0.

ENVIRONMENT:
  SAGEMAKER_BIND_TO_PORT              port (default 8080)
  SAGEMAKER_MAX_PAYLOAD_IN_MB         largest request body (default 6)
  SAGEMAKER_BATCH                     true for batch transform (logged)
  SAGEMAKER_BATCH_STRATEGY            SINGLE_RECORD or MULTI_RECORD (default MULTI_RECORD)
  SAGEMAKER_MAX_CONCURRENT_TRANSFORMS parallel requests batch transform sends (default:
                                      the worker count)
  SMTRAIN_SERVE_WORKERS               forward-pass threads (default: one per core, at most 8)
  SMTRAIN_SERVE_QUEUE                 requests waiting for a worker before 503 (default 64)
  SMTRAIN_SERVE_SUMMARY_SECONDS       seconds between the info-level summaries (default 60)";

/// How long a request may wait for its forward pass before it is answered 503: inside the 60 s
/// SageMaker gives an invocation. `HELP` states it.
const ANSWER_WITHIN: Duration = Duration::from_secs(55);

/// How the server runs, from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub port: u16,
    pub max_payload: usize,
    pub workers: usize,
    pub queue: usize,
    pub batch: bool,
    pub batch_strategy: String,
    pub max_concurrent_transforms: usize,
    pub summary_every: Duration,
}

impl Settings {
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
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
        Ok(Self {
            port: num("SAGEMAKER_BIND_TO_PORT", 8080, 1, 65535)? as u16,
            max_payload: (num("SAGEMAKER_MAX_PAYLOAD_IN_MB", 6, 1, 100)? as usize) << 20,
            workers,
            queue: num("SMTRAIN_SERVE_QUEUE", 64, 1, 100_000)? as usize,
            batch: get("SAGEMAKER_BATCH").is_some_and(|v| v.eq_ignore_ascii_case("true")),
            batch_strategy: strategy,
            max_concurrent_transforms: num(
                "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS",
                workers as u64,
                1,
                1024,
            )? as usize,
            summary_every: Duration::from_secs(num(
                "SMTRAIN_SERVE_SUMMARY_SECONDS",
                60,
                1,
                86_400,
            )?),
        })
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
}

/// The input and class names of the loaded model.
struct ModelInfo {
    input: crate::data::Input,
    class_names: Vec<String>,
}

/// Requests since the last summary.
#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    errors: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

impl Stats {
    fn record(&self, started: Instant, ok: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let us = started.elapsed().as_micros() as u64;
        self.latencies_us.lock().expect("stats lock").push(us);
    }

    /// Logs and resets the counts since the last call.
    fn summarise(&self) {
        let mut lat = std::mem::take(&mut *self.latencies_us.lock().expect("stats lock"));
        let requests = self.requests.swap(0, Ordering::Relaxed);
        let errors = self.errors.swap(0, Ordering::Relaxed);
        if requests == 0 {
            return;
        }
        lat.sort_unstable();
        let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize] as f64 / 1e3;
        info!(
            requests,
            errors,
            p50_ms = format!("{:.3}", pct(0.5)),
            p99_ms = format!("{:.3}", pct(0.99)),
            max_ms = format!("{:.3}", pct(1.0)),
            "serving"
        );
    }
}

/// Runs the server until SIGTERM or SIGINT; the model comes from `model`. Loading failures end
/// it at once with the reason.
pub fn main(model: &Path) -> Result<()> {
    let settings = Settings::from_env()?;
    tch::set_num_threads(1);
    let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(settings.queue);
    let shared = Arc::new(Shared {
        ready: AtomicBool::new(false),
        jobs,
        model: std::sync::OnceLock::new(),
        settings: settings.clone(),
        stats: Stats::default(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.workers.clamp(1, 4))
        .enable_all()
        .build()?;
    rt.block_on(async {
        let addr = SocketAddr::from(([0, 0, 0, 0], settings.port));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        info!(%addr, batch = settings.batch, workers = settings.workers, "listening");
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
        let server = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal());
        let server = tokio::spawn(async move { server.await });
        loader.await.context("model loader")??;
        server.await.context("server task")??;
        summary.abort();
        shared.stats.summarise();
        info!("stopped: every request in flight was answered");
        Ok(())
    })
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
    let info =
        ModelInfo { input: loaded.input.clone(), class_names: loaded.card.class_names.clone() };
    let _ = shared.model.set(info);
    let queue = Arc::new(Mutex::new(queue));
    for i in 0..shared.settings.workers {
        let copy = Loaded {
            model: Mlp::from_flat(loaded.model.sizes(), loaded.model.flat.copy()),
            card: loaded.card.clone(),
            input: loaded.input.clone(),
        };
        let queue = queue.clone();
        std::thread::Builder::new()
            .name(format!("serve-worker-{i}"))
            .spawn(move || work(&copy, &queue))?;
    }
    shared.ready.store(true, Ordering::Release);
    info!(
        model = %model.display(),
        layers = ?loaded.model.sizes(),
        input = %loaded.input.describe(),
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
    let features = loaded.model.sizes()[0] as i64;
    let (t, scale) = if loaded.card.input.standardize.is_some() {
        let mut values = batch.pixels.clone();
        let scale = loaded.prepare(&mut values);
        (Tensor::from_slice(&values), scale)
    } else {
        (Tensor::from_slice(&batch.pixels), loaded.card.input.scale)
    };
    evaluation::predict(&loaded.model, &t.view([batch.count as i64, features]), scale)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(signal = which, "stopping: no new connections; answering those in flight");
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
    let response = answer(&shared, &headers, body).await;
    let ok = response.status().is_success();
    debug!(
        status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "invocation"
    );
    shared.stats.record(started, ok);
    response
}

async fn answer(shared: &Shared, headers: &HeaderMap, body: Body) -> Response {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(output) = Output::from_accept(text(header::ACCEPT)) else {
        return error(
            StatusCode::NOT_ACCEPTABLE,
            format!(
                "Accept {:?}: this server answers application/json, application/jsonlines or text/csv",
                text(header::ACCEPT).unwrap_or_default()
            ),
        );
    };
    let Some(input) = Input::from_content_type(text(header::CONTENT_TYPE)) else {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type {:?}: this server reads application/json, application/jsonlines, \
                 text/csv, application/x-npy, image/png, image/jpeg and application/x-image",
                text(header::CONTENT_TYPE).unwrap_or_default()
            ),
        );
    };
    if !shared.ready.load(Ordering::Acquire) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the model is still loading");
    }
    let limit = shared.settings.max_payload;
    let bytes: Bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is over the {} MB limit (SAGEMAKER_MAX_PAYLOAD_IN_MB)",
                    limit >> 20
                ),
            )
        }
    };
    let Some(model) = shared.model.get() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the model is still loading");
    };
    // Decoding is CPU work, but bounded by the payload limit: a few milliseconds at most.
    let decoded = match &model.input {
        crate::data::Input::Image(shape) => payload::decode(input, &bytes, *shape),
        crate::data::Input::Table { names } => table::decode(input, &bytes, names.len()),
    };
    let batch = match decoded {
        Ok(b) => b,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let (reply, answer) = oneshot::channel();
    if shared.jobs.try_send(Job { batch, reply }).is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "too many requests waiting; retry shortly");
    }
    let predictions = match tokio::time::timeout(ANSWER_WITHIN, answer).await {
        Ok(Ok(p)) => p,
        _ => return error(StatusCode::SERVICE_UNAVAILABLE, "no worker answered in time"),
    };
    let body = payload::encode(output, &predictions, &model.class_names);
    ([(header::CONTENT_TYPE, output.content_type())], body).into_response()
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
        let s = Settings::from_lookup(env(&[])).unwrap();
        assert_eq!((s.port, s.max_payload, s.batch), (8080, 6 << 20, false));
        let s = Settings::from_lookup(env(&[
            ("SAGEMAKER_BIND_TO_PORT", "9001"),
            ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "20"),
            ("SAGEMAKER_BATCH", "true"),
            ("SAGEMAKER_BATCH_STRATEGY", "SINGLE_RECORD"),
        ]))
        .unwrap();
        assert_eq!((s.port, s.max_payload, s.batch), (9001, 20 << 20, true));
        assert_eq!(s.batch_strategy, "SINGLE_RECORD");
        let e = Settings::from_lookup(env(&[("SAGEMAKER_BIND_TO_PORT", "0")])).unwrap_err();
        assert!(e.to_string().contains("SAGEMAKER_BIND_TO_PORT=\"0\""), "{e}");
        assert!(Settings::from_lookup(env(&[("SAGEMAKER_BATCH_STRATEGY", "ALL")])).is_err());
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
    }
}
