//! `train serve`: the real binary's HTTP server on 127.0.0.1, driven over real HTTP/1.1
//! connections; its answers checked against `train predict`'s for the same images.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::predict::predict_cmd;
use crate::util::{fixture, Job, Run, BIN};

const FASHION_TEST: &str = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";

/// One model trained on the small fixture, shared by the tests that only read it.
fn trained() -> &'static Job {
    static JOB: std::sync::OnceLock<Job> = std::sync::OnceLock::new();
    JOB.get_or_init(|| {
        let job = Job::small(&[("epochs", "3"), ("seed", "5")]);
        job.run().ok();
        job
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `train serve` and its log.
pub struct Server {
    child: Child,
    pub port: u16,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the server on a free port without waiting for it.
    pub fn spawn(model: &Path, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--model"]).arg(model);
        Self::launch(cmd, env)
    }

    /// Starts `cmd`, which runs `train serve` (or execs it), on a free port.
    fn launch(mut cmd: Command, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut child = cmd
            .env("SAGEMAKER_BIND_TO_PORT", port.to_string())
            .env("OMP_NUM_THREADS", "1")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self { child, port, log }
    }

    /// Starts the server and waits for `/ping` to answer 200.
    pub fn start(model: &Path, env: &[(&str, &str)]) -> Self {
        let s = Self::spawn(model, env);
        s.ping_statuses_until_ready();
        s
    }

    /// `/ping`'s answers until the first 200 (0 where no connection was taken yet).
    fn ping_statuses_until_ready(&self) -> Vec<u16> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            let status = try_request(self.port, "GET", "/ping", &[], b"").map_or(0, |r| r.0);
            seen.push(status);
            if status == 200 {
                return seen;
            }
            assert!(Instant::now() < deadline, "no 200 on /ping: {seen:?}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn post(&self, content_type: &str, accept: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut headers = vec![("Content-Type", content_type)];
        if !accept.is_empty() {
            headers.push(("Accept", accept));
        }
        request(self.port, "POST", "/invocations", &headers, body)
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }

    /// SIGTERM, then the exit status if the server exits within `within`.
    fn terminate_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The server's resident memory now and at its peak, in bytes.
    fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| -> u64 {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on its own connection; `(status, body)`.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    try_request(port, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn try_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    exchange(port, method, path, headers, body).map(|(status, _, payload)| (status, payload))
}

/// One HTTP/1.1 request on its own connection; `(status, response head, body)`.
fn exchange(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\nX-Unknown-Header: ignored\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    // A server may answer (413) before reading the whole body, and close.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| {
        std::io::Error::other(format!("no header end in {:?}", String::from_utf8_lossy(&raw)))
    })?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut payload = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        payload = unchunk(&payload);
    }
    Ok((status, head, payload))
}

fn unchunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let len =
            usize::from_str_radix(std::str::from_utf8(&b[..end]).unwrap().trim(), 16).unwrap();
        if len == 0 {
            return out;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + len]);
        b = &b[end + 4 + len..];
    }
}

/// The images of an IDX file, 784 bytes each.
fn images(path: &Path) -> Vec<Vec<u8>> {
    smtrain::data::read_idx(path).unwrap().data.chunks(784).map(<[u8]>::to_vec).collect()
}

fn json_body(imgs: &[Vec<u8>]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "instances": imgs })).unwrap()
}

fn csv_body(imgs: &[Vec<u8>]) -> Vec<u8> {
    let mut s = String::new();
    for img in imgs {
        let row: Vec<String> = img.iter().map(u8::to_string).collect();
        s.push_str(&row.join(","));
        s.push('\n');
    }
    s.into_bytes()
}

fn npy_body(imgs: &[Vec<u8>]) -> Vec<u8> {
    let mut h =
        format!("{{'descr': '|u1', 'fortran_order': False, 'shape': ({}, 28, 28), }}", imgs.len());
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((h.len() as u16).to_le_bytes());
    b.extend(h.as_bytes());
    for img in imgs {
        b.extend(img);
    }
    b
}

/// `predict`'s (class, probabilities) for each image of `file`.
fn predicted(model: &Path, file: &Path) -> Vec<(u64, Value)> {
    let run = Run(predict_cmd(model).arg(file).output().unwrap()).ok();
    run.stdout()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["class"].as_u64().unwrap(), v["probabilities"].clone())
        })
        .collect()
}

/// Fails, briefly, unless every answer is the same as predict's, bit for bit.
fn assert_same(got: &[(u64, Value)], want: &[(u64, Value)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let differ: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    if let Some(&i) = differ.first() {
        panic!(
            "{what}: {} of {} answers differ from predict's; first, image {i}: {:?} vs {:?}",
            differ.len(),
            got.len(),
            got[i],
            want[i]
        );
    }
}

/// The server's (class, probabilities) from a JSON answer.
fn served(body: &[u8]) -> Vec<(u64, Value)> {
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)));
    v["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["class"].as_u64().unwrap(), p["probabilities"].clone()))
        .collect()
}

#[test]
fn every_content_type_gives_predicts_answers() {
    let model = trained().path("model");
    let file = fixture("test").join("images-idx3-ubyte.gz");
    let want = predicted(&model, &file);
    let imgs = images(&file);
    let s = Server::start(&model, &[]);
    for (ct, body) in [
        ("application/json", json_body(&imgs)),
        ("text/csv", csv_body(&imgs)),
        ("application/x-npy", npy_body(&imgs)),
    ] {
        let (status, answer) = s.post(ct, "application/json", &body);
        assert_eq!(status, 200, "{ct}: {}", String::from_utf8_lossy(&answer));
        assert_same(&served(&answer), &want, ct);
    }
    // JSON lines in, JSON lines out; nested 28x28 lists. Each request is one batch, as predict
    // classifies each file as one: the same images in the same batch give the same bits.
    let lines: String = imgs.iter().map(|i| serde_json::to_string(i).unwrap() + "\n").collect();
    let (status, answer) =
        s.post("application/jsonlines", "application/jsonlines", lines.as_bytes());
    assert_eq!(status, 200);
    let got: Vec<(u64, Value)> = String::from_utf8(answer)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["class"].as_u64().unwrap(), v["probabilities"].clone())
        })
        .collect();
    assert_same(&got, &want, "jsonlines");
    let nested: Vec<Vec<&[u8]>> = imgs.iter().map(|i| i.chunks(28).collect()).collect();
    let (status, answer) = s.post("application/json", "", &serde_json::to_vec(&nested).unwrap());
    assert_eq!(status, 200);
    assert_same(&served(&answer), &want, "nested");
    let (status, answer) = s.post("text/csv", "text/csv", &csv_body(&imgs[..4]));
    assert_eq!(status, 200);
    let text = String::from_utf8(answer).unwrap();
    assert_eq!(text.lines().count(), 4);
    for (line, (class, _)) in text.lines().zip(&want) {
        assert_eq!(line.split(',').next().unwrap(), class.to_string(), "{line}");
        assert_eq!(line.split(',').count(), 11, "{line}");
    }
    // One picture per request, as predict classifies one picture per file.
    let d = tempfile::tempdir().unwrap();
    let png_path = d.path().join("x.png");
    {
        let mut enc = png::Encoder::new(std::fs::File::create(&png_path).unwrap(), 28, 28);
        enc.set_color(png::ColorType::Grayscale);
        enc.write_header().unwrap().write_image_data(&imgs[7]).unwrap();
    }
    let one = predicted(&model, &png_path);
    for ct in ["image/png", "application/x-image"] {
        let (status, answer) = s.post(ct, "", &std::fs::read(&png_path).unwrap());
        assert_eq!(status, 200, "{ct}");
        assert_same(&served(&answer), &one, ct);
    }
    let (status, body) = request(s.port, "GET", "/execution-parameters", &[], b"");
    assert_eq!(status, 200);
    let params: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(params["MaxPayloadInMB"], 6);
    assert_eq!(params["BatchStrategy"], "MULTI_RECORD");
}

/// The whole Fashion-MNIST test set, in the batches predict uses, gets predict's exact bits.
#[test]
fn the_whole_test_set_is_answered_as_predict_answers_it() {
    let model = trained().path("model");
    let want = predicted(&model, Path::new(FASHION_TEST));
    let imgs = images(Path::new(FASHION_TEST));
    assert_eq!(imgs.len(), 10_000);
    let s = Server::start(&model, &[]);
    let mut got = Vec::new();
    for chunk in imgs.chunks(smtrain::train::EVAL_BATCH as usize) {
        let (status, answer) = s.post("application/x-npy", "", &npy_body(chunk));
        assert_eq!(status, 200);
        got.extend(served(&answer));
    }
    assert_eq!(got.len(), want.len());
    assert_same(&got, &want, "the test set");
}

#[test]
fn bad_requests_get_their_status_and_a_reason() {
    let model = trained().path("model");
    let s = Server::start(&model, &[("SAGEMAKER_MAX_PAYLOAD_IN_MB", "1")]);
    let mut imgs = images(&fixture("test").join("images-idx3-ubyte.gz"));
    imgs[3].pop();
    let (status, body) = s.post("application/json", "", &json_body(&imgs[..5]));
    assert_eq!(status, 400);
    let e: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e["error"], "image 3 has 783 values; expected 784");
    let (status, body) = s.post("text/csv", "", b"1,2,x\n");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("line 1 value 2 is \\\"x\\\""));
    let (status, _) = s.post("image/png", "", b"not a png");
    assert_eq!(status, 400);
    let (status, body) = s.post("text/plain", "", b"x");
    assert_eq!(status, 415);
    assert!(String::from_utf8_lossy(&body).contains("text/plain"));
    let (status, body) = s.post("text/csv", "image/png", &csv_body(&imgs[..1]));
    assert_eq!(status, 406, "{}", String::from_utf8_lossy(&body));
    let (status, body) = s.post("text/csv", "", &vec![b'0'; 2 << 20]);
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("1 MB limit"));
    // After all that, it still answers.
    let (status, _) = s.post("text/csv", "", &csv_body(&imgs[..1]));
    assert_eq!(status, 200);
    // A path or method the contract does not have gets a JSON reason too; 405 keeps Allow.
    let (status, head, body) = exchange(s.port, "GET", "/nowhere", &[], b"").unwrap();
    assert_eq!(status, 404);
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
    let e: Value = serde_json::from_slice(&body).unwrap();
    assert!(e["error"].as_str().unwrap().contains("\"/nowhere\""), "{e}");
    assert_eq!(e["status"], 404);
    let (status, head, body) = exchange(s.port, "GET", "/invocations", &[], b"").unwrap();
    assert_eq!(status, 405);
    assert!(head.to_ascii_lowercase().contains("\r\nallow: post"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
    let e: Value = serde_json::from_slice(&body).unwrap();
    assert!(e["error"].as_str().unwrap().contains("GET \"/invocations\""), "{e}");
    assert_eq!(e["status"], 405);
}

/// More requests than the queue holds: the excess is answered 503 at once, the rest 200.
#[test]
fn a_burst_beyond_the_queue_gets_503s_not_unbounded_memory() {
    let model = trained().path("model");
    let s = Server::start(&model, &[("SMTRAIN_SERVE_WORKERS", "1"), ("SMTRAIN_SERVE_QUEUE", "1")]);
    let imgs = images(Path::new(FASHION_TEST));
    let body = Arc::new(npy_body(&imgs[..5000]));
    let port = s.port;
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || {
                request(
                    port,
                    "POST",
                    "/invocations",
                    &[("Content-Type", "application/x-npy")],
                    &body,
                )
                .0
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|&c| c == 200 || c == 503), "{statuses:?}");
    assert!(statuses.contains(&503), "no request was turned away: {statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
}

/// `/ping` says 503 while the model loads, and 200 only once it has answered.
#[test]
fn ping_is_not_200_before_the_model_is_ready() {
    let d = tempfile::tempdir().unwrap();
    let sizes = smtrain::model::layer_sizes(784, &[6000, 6000], 10);
    let big = smtrain::model::Mlp::glorot(&sizes, 1, tch::Device::Cpu);
    let cfg = smtrain::config::TrainConfig::default();
    let image = smtrain::data::Input::Image(smtrain::data::Shape::new(28, 28, 1));
    let card = smtrain::artifacts::ModelCard::new(
        &cfg,
        &big,
        &image,
        None,
        Default::default(),
        "cpu".into(),
    );
    let metrics = smtrain::metrics::Metrics {
        epochs: vec![],
        test: None,
        early_stop: None,
        data_load_seconds: 0.0,
        train_seconds: 0.0,
    };
    smtrain::artifacts::write_model_dir(d.path(), &big, &card, &metrics).unwrap();
    drop(big);
    let s = Server::spawn(d.path(), &[]);
    let seen = s.ping_statuses_until_ready();
    let before: Vec<u16> = seen[..seen.len() - 1].iter().copied().filter(|&c| c != 0).collect();
    assert!(before.iter().all(|&c| c == 503), "{seen:?}");
    assert!(!before.is_empty(), "the model was ready before /ping could ask: {seen:?}");
    // The log is read by another thread: give it a moment to catch up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.log().contains("model ready") {
        assert!(Instant::now() < deadline, "no 'model ready' line:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, _) = s.post(
        "text/csv",
        "",
        &csv_body(&images(&fixture("test").join("images-idx3-ubyte.gz"))[..1]),
    );
    assert_eq!(status, 200);
}

/// SIGTERM while requests are in flight: every one of them is answered, and the server exits 0.
#[test]
fn sigterm_answers_what_is_in_flight_then_exits_0() {
    let model = trained().path("model");
    let mut s = Server::start(&model, &[("SMTRAIN_SERVE_WORKERS", "1")]);
    let imgs = images(Path::new(FASHION_TEST));
    let body = Arc::new(csv_body(&imgs[..1500]));
    let port = s.port;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || {
                request(port, "POST", "/invocations", &[("Content-Type", "text/csv")], &body).0
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(150));
    let sent = Instant::now();
    let status = s.terminate();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(statuses, [200; 4], "{}", s.log());
    assert_eq!(status.code(), Some(0), "{}", s.log());
    assert!(sent.elapsed() < Duration::from_secs(30));
    assert!(s.log().contains("every request in flight was answered"), "{}", s.log());
}

#[test]
fn a_model_that_cannot_be_loaded_ends_serve_at_once() {
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["serve", "--model", "/nonexistent/model"])
        .env("SAGEMAKER_BIND_TO_PORT", free_port().to_string())
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: loading model /nonexistent/model"), "{stderr}");
}

/// The model the tests of this file serve, for the Docker test.
pub fn model_dir_of_trained() -> PathBuf {
    trained().path("model")
}

/// `/ping`'s status, or `None` while nothing answers.
pub fn try_ping(port: u16) -> Option<u16> {
    try_request(port, "GET", "/ping", &[], b"").ok().map(|r| r.0)
}

/// Everything the server sends on `s` until it closes the connection, and how long that took;
/// `None` if it was still open after 10 s.
fn until_closed(mut s: TcpStream) -> Option<(String, Duration)> {
    let started = Instant::now();
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) => Some((String::from_utf8_lossy(&raw).into_owned(), started.elapsed())),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Some((String::from_utf8_lossy(&raw).into_owned(), started.elapsed()))
        }
        Err(_) => None,
    }
}

/// A client that connects and says nothing, stops mid-head, stays idle after an answer or
/// stops mid-body is closed after SMTRAIN_SERVE_CLIENT_TIMEOUT_SECONDS; the stalled body is
/// answered 408 first, with a reason.
#[test]
fn clients_that_stall_are_closed_after_the_client_timeout() {
    let model = trained().path("model");
    let s = Server::start(&model, &[("SMTRAIN_SERVE_CLIENT_TIMEOUT_SECONDS", "1")]);
    let silent = s.connect();
    let mut half_head = s.connect();
    half_head.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut idle = s.connect();
    idle.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut half_body = s.connect();
    half_body
        .write_all(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n\
              Content-Length: 100\r\n\r\n0,1,2,3,4",
        )
        .unwrap();
    let within = Duration::from_secs(4);
    for (what, conn) in [("silent", silent), ("half a head", half_head), ("idle", idle)] {
        let (text, took) = until_closed(conn).unwrap_or_else(|| panic!("{what}: still open"));
        assert!(took < within, "{what}: closed after {took:?}");
        if what == "idle" {
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        }
    }
    let (text, took) = until_closed(half_body).expect("a stalled body: still open");
    assert!(took < within, "closed after {took:?}");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("the body stopped arriving"), "{text}");
    assert_eq!(try_ping(s.port), Some(200));
}

/// SIGTERM while one client holds a half-sent request and another an idle connection: the
/// server still exits 0, within its 5 s drain deadline (inside docker stop's 10 s).
#[test]
fn sigterm_exits_0_within_seconds_whatever_clients_hold() {
    let model = trained().path("model");
    let mut s = Server::start(&model, &[("SMTRAIN_SERVE_CLIENT_TIMEOUT_SECONDS", "60")]);
    let mut half_body = s.connect();
    half_body
        .write_all(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n\
              Content-Length: 100000\r\n\r\n0,1,2,3,4",
        )
        .unwrap();
    let _idle = s.connect();
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    let status = s.terminate_within(Duration::from_secs(9));
    let log = s.log();
    assert_eq!(status.and_then(|st| st.code()), Some(0), "{log}");
    assert!(sent.elapsed() < Duration::from_secs(8), "{:?}", sent.elapsed());
    drop(half_body);
}

/// The server raises its open-file limit to the hard limit, so that a low default soft limit
/// does not cap the clients it can hold.
#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let model = trained().path("model");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -Sn 256 && exec \"$0\" serve --model \"$1\"", BIN]).arg(&model);
    let s = Server::launch(cmd, &[]);
    s.ping_statuses_until_ready();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", s.child.id())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let values: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(values[0], values[1], "soft and hard limits: {line}");
    assert_ne!(values[0], "256", "{line}");
}

/// Connections beyond SMTRAIN_SERVE_CONNECTIONS are answered 503 with a reason at once (not
/// left to time out), and new clients are served again once the others close.
#[test]
fn connections_beyond_the_cap_are_answered_503() {
    let model = trained().path("model");
    let s = Server::start(
        &model,
        &[("SMTRAIN_SERVE_CONNECTIONS", "4"), ("SMTRAIN_SERVE_CLIENT_TIMEOUT_SECONDS", "60")],
    );
    // Let the connections of the start's /ping close first.
    std::thread::sleep(Duration::from_millis(200));
    let held: Vec<TcpStream> = (0..4).map(|_| s.connect()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = request(s.port, "GET", "/ping", &[], b"");
    assert_eq!(status, 503);
    let e: Value = serde_json::from_slice(&body).unwrap();
    assert!(e["error"].as_str().unwrap().contains("SMTRAIN_SERVE_CONNECTIONS"), "{e}");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while try_ping(s.port) != Some(200) {
        assert!(Instant::now() < deadline, "no 200 after the held connections closed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Many clients sending large bodies at once: those beyond SMTRAIN_SERVE_MEMORY_MB are
/// answered 503 from their headers, so the server's memory does not grow with their number,
/// and those let in are answered.
#[test]
fn bodies_in_flight_are_bounded_by_the_memory_budget() {
    let model = trained().path("model");
    let s = Server::start(&model, &[("SMTRAIN_SERVE_MEMORY_MB", "200")]);
    let imgs = images(Path::new(FASHION_TEST));
    let body = Arc::new(csv_body(&imgs[..2000]));
    assert!((4 << 20..6 << 20).contains(&body.len()), "{}", body.len());
    let (rss_before, _) = s.memory();
    let clients = 24;
    let sent = Arc::new(std::sync::Barrier::new(clients + 1));
    let port = s.port;
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (body, sent) = (body.clone(), sent.clone());
            std::thread::spawn(move || -> (u16, String) {
                let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let head = format!(
                    "POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                c.write_all(head.as_bytes()).unwrap();
                // A request turned away is answered from its headers: no body is sent then.
                c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut first = [0u8; 1];
                let answered = matches!(c.peek(&mut first), Ok(1));
                if !answered {
                    c.write_all(&body[..body.len() - 1]).unwrap();
                }
                sent.wait();
                sent.wait();
                if !answered {
                    c.write_all(&body[body.len() - 1..]).unwrap();
                }
                c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let mut raw = Vec::new();
                c.read_to_end(&mut raw).unwrap();
                let text = String::from_utf8_lossy(&raw).into_owned();
                let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                (status, text)
            })
        })
        .collect();
    sent.wait();
    // Every client has sent what it will send but the last byte: what the server holds now.
    std::thread::sleep(Duration::from_millis(300));
    let (rss_held, _) = s.memory();
    sent.wait();
    let answers: Vec<(u16, String)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    let turned_away = answers.iter().filter(|a| a.0 == 503).count();
    assert!(ok >= 1, "{:?}", answers.iter().map(|a| a.0).collect::<Vec<_>>());
    assert_eq!(ok + turned_away, clients, "{:?}", answers.iter().map(|a| a.0).collect::<Vec<_>>());
    for (status, text) in &answers {
        if *status == 503 {
            assert!(text.contains("SMTRAIN_SERVE_MEMORY_MB"), "{text}");
        }
    }
    let grew = rss_held.saturating_sub(rss_before) >> 20;
    assert!(grew < 40, "{clients} bodies of 4.5 MB held: RSS grew by {grew} MB");
}

/// A legal JSON body of many tiny images costs a few times its size and fails at the first
/// image, not after building a tree of values fifty times its size.
#[test]
fn a_json_body_costs_a_small_multiple_of_its_size() {
    let model = trained().path("model");
    let s = Server::start(&model, &[]);
    let mut body = String::from("[");
    while body.len() < 5 << 20 {
        body.push_str("[0],");
    }
    body.push_str("[0]]");
    let (_, peak_before) = s.memory();
    let (status, answer) = s.post("application/json", "", body.as_bytes());
    assert_eq!(status, 400);
    let e: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(e["error"], "image 0 has 1 values; expected 784");
    let (_, peak_after) = s.memory();
    let grew = peak_after.saturating_sub(peak_before) >> 20;
    assert!(grew < 30, "a 5 MB JSON body raised the peak RSS by {grew} MB");
}

/// CSV and JSON lines get one answer line per input line: a blank line is a 400 naming it,
/// and errors name the line as an editor counts.
#[test]
fn line_formats_keep_one_answer_per_line() {
    let model = trained().path("model");
    let s = Server::start(&model, &[]);
    let imgs = images(&fixture("test").join("images-idx3-ubyte.gz"));
    let csv = String::from_utf8(csv_body(&imgs[..2])).unwrap();
    let lines: String =
        imgs[..2].iter().map(|i| serde_json::to_string(i).unwrap() + "\n").collect();
    for (ct, two) in [("text/csv", csv), ("application/jsonlines", lines)] {
        let (first, second) = two.split_once('\n').unwrap();
        let blank = format!("{first}\n\n{second}");
        let (status, body) = s.post(ct, "", blank.as_bytes());
        assert_eq!(status, 400, "{ct}: {}", String::from_utf8_lossy(&body));
        let e: Value = serde_json::from_slice(&body).unwrap();
        assert!(e["error"].as_str().unwrap().starts_with("line 2 is blank"), "{ct}: {e}");
        let bad = second.replacen('0', "300", 1);
        let third = format!("{first}\r\n{second}{bad}");
        let (status, body) = s.post(ct, "", third.as_bytes());
        assert_eq!(status, 400, "{ct}");
        let e: Value = serde_json::from_slice(&body).unwrap();
        assert!(e["error"].as_str().unwrap().starts_with("line 3 value "), "{ct}: {e}");
        let (status, body) = s.post(ct, "application/jsonlines", two.as_bytes());
        assert_eq!(status, 200, "{ct}");
        assert_eq!(String::from_utf8(body).unwrap().lines().count(), 2, "{ct}");
    }
}

/// A body that breaks off is a 400 saying so, not a 413; Accept's weights decide the format;
/// a Content-Length over the limit is refused from the headers, before `100 Continue`; heads
/// the HTTP layer cannot parse get a JSON reason.
#[test]
fn protocol_edge_cases_get_their_status_and_a_reason() {
    let model = trained().path("model");
    let s = Server::start(&model, &[]);
    let head = "POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n";
    let mut bad_chunk = s.connect();
    bad_chunk
        .write_all(
            format!("{head}Transfer-Encoding: chunked\r\n\r\nZZ\r\n0,1\r\n0\r\n\r\n").as_bytes(),
        )
        .unwrap();
    let mut short = s.connect();
    short.write_all(format!("{head}Content-Length: 100\r\n\r\n0,1,2").as_bytes()).unwrap();
    short.shutdown(std::net::Shutdown::Write).unwrap();
    for (what, conn) in [("a bad chunk size", bad_chunk), ("a short body", short)] {
        let (text, _) = until_closed(conn).unwrap_or_else(|| panic!("{what}: no answer"));
        assert!(text.starts_with("HTTP/1.1 400"), "{what}: {text}");
        assert!(text.contains("the body could not be read"), "{what}: {text}");
    }
    let imgs = images(&fixture("test").join("images-idx3-ubyte.gz"));
    let one = csv_body(&imgs[..1]);
    let (status, _) = s.post("text/csv", "application/json;q=0", &one);
    assert_eq!(status, 406);
    let (status, body) = s.post("text/csv", "text/csv;q=0.5, application/json;q=0.9", &one);
    assert_eq!(status, 200);
    assert!(body.starts_with(b"{\"predictions\""), "{}", String::from_utf8_lossy(&body));
    let mut expect = s.connect();
    expect
        .write_all(
            format!("{head}Content-Length: 104857600\r\nExpect: 100-continue\r\n\r\n").as_bytes(),
        )
        .unwrap();
    let mut first = [0u8; 12];
    expect.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 413", "{}", String::from_utf8_lossy(&first));
    // The HTTP layer's own answers to a head it cannot parse carry a JSON reason too. The
    // long head is exactly the 64 KB the server reads, so it closes with nothing unread.
    let start = "GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: ";
    let long = format!("{start}{}", "a".repeat((64 << 10) - start.len()));
    for (what, head, want) in [
        ("a header without a colon", "GET /ping HTTP/1.1\r\nno colon\r\n\r\n".to_string(), 400),
        ("a 64 KB head", long, 431),
    ] {
        let mut c = s.connect();
        c.write_all(head.as_bytes()).unwrap();
        let (text, _) = until_closed(c).unwrap_or_else(|| panic!("{what}: no answer"));
        assert!(text.starts_with(&format!("HTTP/1.1 {want} ")), "{what}: {text}");
        assert!(text.to_ascii_lowercase().contains("content-type: application/json"), "{text}");
        let body = text.split_once("\r\n\r\n").unwrap().1;
        let e: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
        assert_eq!(e["status"], want, "{what}");
    }
}

fn npy_f32_body(imgs: &[Vec<u8>], scale: f32) -> Vec<u8> {
    let mut b = npy_body(imgs);
    let data_at = b.len() - imgs.len() * 784;
    b.truncate(data_at);
    let header = String::from_utf8(b[10..].to_vec()).unwrap().replace("'|u1'", "'<f4'");
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    for img in imgs {
        out.extend(img.iter().flat_map(|&p| (f32::from(p) * scale).to_le_bytes()));
    }
    out
}

/// float32 images scaled to 0-1 (NumPy's usual) are refused with how to send them; the same
/// images as float32 0-255 get predict's answers.
#[test]
fn images_scaled_to_0_1_are_refused_and_0_255_floats_answered() {
    let model = trained().path("model");
    let file = fixture("test").join("images-idx3-ubyte.gz");
    let want = predicted(&model, &file);
    let imgs = images(&file);
    let s = Server::start(&model, &[]);
    let (status, body) = s.post("application/x-npy", "", &npy_f32_body(&imgs, 1.0 / 255.0));
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 400, "{}", &text[..text.len().min(300)]);
    let e: Value = serde_json::from_slice(&body).unwrap();
    assert!(e["error"].as_str().unwrap().contains("multiply by 255"), "{e}");
    let (status, body) = s.post("application/x-npy", "", &npy_f32_body(&imgs, 1.0));
    assert_eq!(status, 200);
    assert_same(&served(&body), &want, "float32 0-255");
}
