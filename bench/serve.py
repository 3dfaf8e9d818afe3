"""`make bench-serve`: `train serve` against the same model in Flask + gunicorn + PyTorch eager
(bench/serve_torch.py, the way AWS's bring-your-own-container example serves a model: gunicorn
sync workers, one per core, each with the model in PyTorch).

    serve.py --bin TRAIN --model DIR --python SERVE_VENV_PYTHON --torch-site TORCH_SITE
             [--threads 1] [--duration 10] [--cpus 1] [--client-cpus 0]
             [--servers both|ours|torch] [--json OUT]

`make bench-serve` installs everything (the serve venv of bench/serve-requirements.txt, wrk,
the release binary, a model trained with the defaults into .run/bench-serve/model) and runs
this; BENCH_SERVE_SECONDS, BENCH_SERVE_THREADS, BENCH_SERVE_CPUS, BENCH_SERVE_CLIENT_CPUS and
SERVE_MODEL set the options. Heavy: run it alone on a quiet machine.

Method, in one run:
1. Each server starts pinned to the same cores (taskset; default the upper half of the
   machine's) with the same OMP_NUM_THREADS (default 1), one worker per server core each: our
   SMTRAIN_SERVE_WORKERS, gunicorn's -w. Ours is `train serve --model DIR` with
   SAGEMAKER_BIND_TO_PORT; theirs is gunicorn on 127.0.0.1. The time from process start to the
   first 200 on /ping is taken for each (polled every 5 ms).
2. `train predict` classifies the 10,000 Fashion-MNIST test images; each server then classifies
   them too (text/csv, 1,000 images a request, JSON answers) and must agree with it image for
   image, or the run stops. This also warms both servers up.
3. With both servers up (the idle one costs nothing), wrk, pinned to the other cores, POSTs
   text/csv requests of 1 and of 100 test images (Accept: application/json) at 1 and at 16
   connections, for --duration seconds each, to one server and then the other, the order
   alternating, so that the shared machine's drift hits both alike: requests/s, and p50 and p99
   latency from wrk's --latency report. Any non-2xx
   answer or socket error fails the run. gunicorn's sync workers close the connection after each
   answer, so wrk reconnects for every request there; that is part of what is measured.
   Right before each server's 1-image, 1-connection run, wrk GETs /ping at 1 connection: a
   round trip that does no work, the ceiling of that row on these cores.
4. Peak RSS: VmHWM of our process, and the sum over gunicorn's master and workers (each worker
   loads its own torch; pages shared between them are counted in each).
Prints a Markdown table with both servers and the ratios (ours over theirs for requests/s; theirs
over ours for latency, start time and memory: above 1 means ours is better), and writes the
numbers as JSON (--json).

--servers torch runs only the PyTorch side (steps 1-4 without ours), e.g. while `train serve`
does not exist yet; --servers ours only ours. Without `serve` in the binary the run stops at once
with that reason.
"""
import argparse
import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

DATA = os.environ.get("SMTRAIN_DATA", "/usr/share/datasets/fashion-mnist")
TEST_IMAGES = os.path.join(DATA, "t10k-images-idx3-ubyte.gz")
HERE = os.path.dirname(os.path.abspath(__file__))
PER_REQUEST = (1, 100)
CONNECTIONS = (1, 16)
LABELS = {"ours": "train serve", "torch": "gunicorn + PyTorch"}


def fail(message):
    sys.exit(f"bench/serve.py: {message}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_list(spec):
    """The cores of a taskset list such as 1, 2-3 or 0,2."""
    cores = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cores += range(int(lo), int(hi or lo) + 1)
    return cores


def images():
    raw = gzip.open(TEST_IMAGES).read()
    if raw[:4] != b"\0\0\x08\x03":
        fail(f"{TEST_IMAGES}: not an IDX image file")
    n, rows, cols = (int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(3))
    size = rows * cols
    return [raw[16 + i * size:16 + (i + 1) * size] for i in range(n)]


def csv(imgs):
    return "".join(",".join(map(str, img)) + "\n" for img in imgs).encode()


def post(port, body, proc, what):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                 headers={"Content-Type": "text/csv",
                                          "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        fail(f"{what}: /invocations answered {e.code}: {e.read()[:300]!r}")
    except OSError as e:
        state = "running" if proc.poll() is None else f"exited with {proc.returncode}"
        fail(f"{what} ({state}): /invocations failed: {e}")


def check_serve(binary):
    """Stops the run unless the binary has a `serve` subcommand."""
    if not os.access(binary, os.X_OK):
        fail(f"{binary}: no such program (make build builds it)")
    try:
        out = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True,
                             timeout=30)
    except subprocess.TimeoutExpired:
        fail(f"`{binary} serve --help` did not answer within 30 s")
    if out.returncode != 0:
        why = (out.stderr or out.stdout).strip().splitlines()[:3]
        fail(f"`{binary} serve` is not there (serve --help exited {out.returncode}: "
             f"{' / '.join(why)}); build a tree that has `train serve`, or pass --servers torch "
             "to measure the PyTorch side alone")


def reference_classes(binary, model):
    """`train predict`'s class for every test image, in order."""
    out = subprocess.run([binary, "predict", "--model", model, TEST_IMAGES],
                         capture_output=True, text=True, env=dict(os.environ, RUST_LOG="warn"))
    if out.returncode != 0:
        fail(f"train predict failed ({out.returncode}): {out.stderr[-1000:]}")
    return [json.loads(line)["class"] for line in out.stdout.splitlines() if line.strip()]


def wait_ready(port, started, proc, what):
    while True:
        if proc.poll() is not None:
            fail(f"{what} exited with {proc.returncode} before answering /ping")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as r:
                if r.status == 200:
                    return time.perf_counter() - started
        except OSError:
            pass
        if time.perf_counter() - started > 120:
            fail(f"{what}: no 200 on /ping after 120 s")
        time.sleep(0.005)


def vmhwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            m = re.search(r"VmHWM:\s+(\d+)", f.read())
    except FileNotFoundError:
        return 0
    return int(m.group(1)) if m else 0


def children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    # pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    return kids


def tree_rss_mb(pid):
    return (vmhwm_kib(pid) + sum(vmhwm_kib(c) for c in children(pid))) / 1024


WRK_TIME = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def wrk(port, body_file, connections, duration, client_cpus):
    """POSTs `body_file` to /invocations; with no body file, GETs /ping (the round trip alone)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if body_file:
            script.write('wrk.method = "POST"\n'
                         'wrk.headers["Content-Type"] = "text/csv"\n'
                         'wrk.headers["Accept"] = "application/json"\n'
                         f'local f = io.open("{body_file}", "rb"); wrk.body = f:read("*a"); '
                         'f:close()\n')
    threads = max(1, min(connections, len(cpu_list(client_cpus))))
    path = "invocations" if body_file else "ping"
    cmd = ["taskset", "-c", client_cpus, "wrk", f"-t{threads}", f"-c{connections}",
           f"-d{duration}s", "--timeout", "30s", "--latency", "-s", script.name,
           f"http://127.0.0.1:{port}/{path}"]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    finally:
        os.unlink(script.name)
    out = run.stdout
    if run.returncode != 0:
        fail(f"wrk failed ({run.returncode}): {run.stderr[-500:]}{out[-500:]}")

    def ms(label):
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s|m|h)\s*$", out, re.M)
        if not m:
            fail(f"no {label} latency in wrk's report:\n{out}")
        return float(m.group(1)) * WRK_TIME[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                        out)
    # A sync gunicorn worker closes each connection, which wrk may count as a read error even
    # though the answer came; connect, write and timeout errors and non-2xx answers are real.
    errors = {"non2xx": int(non2xx.group(1)) if non2xx else 0}
    if sockets:
        errors.update(zip(("connect", "read", "write", "timeout"), map(int, sockets.groups())))
    if errors["non2xx"] or any(errors.get(k) for k in ("connect", "write", "timeout")):
        fail(f"wrk saw errors against port {port}: {errors}\n{out}")
    return {"rps": rps, "requests": requests, "p50_ms": ms("50%"), "p99_ms": ms("99%"),
            "errors": errors}


def start(name, a, cores, port):
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), RUST_LOG="warn")
    if name == "ours":
        cmd = [a.bin, "serve", "--model", a.model]
        env.update(SAGEMAKER_BIND_TO_PORT=str(port), SMTRAIN_SERVE_WORKERS=str(len(cores)))
    else:
        cmd = [a.python, "-m", "gunicorn", "--workers", str(len(cores)), "--worker-class",
               "sync", "--timeout", "60", "--bind", f"127.0.0.1:{port}", "--chdir", HERE,
               "--log-level", "warning", "serve_torch:app"]
        env.update(PYTHONPATH=a.torch_site, SMTRAIN_MODEL_DIR=os.path.abspath(a.model))
    started = time.perf_counter()
    proc = subprocess.Popen(["taskset", "-c", ",".join(map(str, cores)), *cmd], env=env,
                            start_new_session=True)
    return proc, started


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def ready_and_right(name, a, cores, imgs, reference):
    """Starts a server, times its start, checks its classes; (process, port, result)."""
    port = free_port()
    proc, started = start(name, a, cores, port)
    try:
        ready = wait_ready(port, started, proc, LABELS[name])
        print(f"{LABELS[name]}: first /ping 200 after {ready:.3f} s", flush=True)
        classes = []
        for i in range(0, len(imgs), 1000):
            answer = post(port, csv(imgs[i:i + 1000]), proc, LABELS[name])
            classes += [p["class"] for p in answer["predictions"]]
        differ = sum(x != y for x, y in zip(classes, reference)) + abs(len(classes) - len(reference))
        if differ:
            fail(f"{LABELS[name]} and `train predict` differ on {differ} of {len(reference)} "
                 "test images")
        print(f"{LABELS[name]}: the same class as `train predict` for all {len(reference)} "
              "test images", flush=True)
    except BaseException:
        stop(proc)
        raise
    return proc, port, {"start_s": ready, "agrees_with_predict": len(reference)}


def measure(names, a, cores, client, imgs, reference, bodies):
    """Both servers up at once (the idle one costs nothing), each load run on one and then the
    other, the order alternating, so that a drift in the machine's speed hits both alike."""
    procs, ports, results = {}, {}, {}
    try:
        # One at a time: the start time of each is taken with the machine otherwise idle.
        for name in names:
            procs[name], ports[name], results[name] = ready_and_right(name, a, cores, imgs,
                                                                      reference)
        turn = 0
        for per in PER_REQUEST:
            for conns in CONNECTIONS:
                order = names if turn % 2 == 0 else names[::-1]
                turn += 1
                for name in order:
                    if procs[name].poll() is not None:
                        fail(f"{LABELS[name]} exited with {procs[name].returncode}")
                    if (per, conns) == (1, 1):
                        # Right before: the floor of this row, a round trip doing no work.
                        r = wrk(ports[name], None, 1, a.duration, client)
                        results[name]["ping_rps"] = r["rps"]
                        print(f"{LABELS[name]}: GET /ping, 1 connection: {r['rps']:.0f} req/s",
                              flush=True)
                    r = wrk(ports[name], bodies[per], conns, a.duration, client)
                    results[name][f"{per}x{conns}"] = r
                    print(f"{LABELS[name]}: {per} image(s)/request, {conns} connection(s): "
                          f"{r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, "
                          f"p99 {r['p99_ms']:.2f} ms", flush=True)
        for name in names:
            results[name]["peak_rss_mb"] = tree_rss_mb(procs[name].pid)
        return results
    finally:
        for proc in procs.values():
            stop(proc)


def table(results):
    names = [n for n in ("ours", "torch") if n in results]
    both = len(names) == 2
    head = ["images/request", "connections"]
    for n in names:
        head += [f"{LABELS[n]} req/s", "p50 ms", "p99 ms"]
    if both:
        head += ["req/s ours/theirs", "p50 theirs/ours", "p99 theirs/ours"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for per in PER_REQUEST:
        for conns in CONNECTIONS:
            key = f"{per}x{conns}"
            row = [str(per), str(conns)]
            for n in names:
                r = results[n][key]
                row += [f"{r['rps']:.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}"]
            if both:
                o, t = results["ours"][key], results["torch"][key]
                row += [f"{o['rps'] / t['rps']:.1f}x", f"{t['p50_ms'] / o['p50_ms']:.1f}x",
                        f"{t['p99_ms'] / o['p99_ms']:.1f}x"]
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    head = ["", *(LABELS[n] for n in names)] + (["ours better by"] if both else [])
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for key, label, fmt, higher_better in (
            ("start_s", "start to first /ping 200, s", "{:.3f}", False),
            ("peak_rss_mb", "peak RSS, MB", "{:.0f}", False),
            ("ping_rps", "GET /ping at 1 connection, req/s", "{:.0f}", True)):
        row = [label, *(fmt.format(results[n][key]) for n in names)]
        if both:
            o, t = results["ours"][key], results["torch"][key]
            row.append(f"{(o / t if higher_better else t / o):.1f}x")
        lines.append("| " + " | ".join(row) + " |")
    if "ours" in names and "torch" in names:
        lines += ["", f"`train serve`'s GET /ping at 1 connection is "
                  f"{results['ours']['ping_rps'] / results['torch']['1x1']['rps']:.1f}x the "
                  "PyTorch server's requests/s for 1 image at 1 connection: the most any "
                  "server could reach on this client and these cores."]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", required=True, help="the train binary")
    p.add_argument("--model", required=True, help="a model folder: model.json, model.safetensors")
    p.add_argument("--python", required=True, help="the serve venv's python (flask, gunicorn)")
    p.add_argument("--torch-site", required=True, help="the folder holding the torch package")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of both servers")
    p.add_argument("--duration", type=int, default=10, help="seconds of each wrk run")
    p.add_argument("--cpus", help="the servers' cores (default: the upper half)")
    p.add_argument("--client-cpus", help="wrk's cores (default: the others)")
    p.add_argument("--servers", choices=["both", "ours", "torch"], default="both")
    p.add_argument("--json", help="where to write the results")
    a = p.parse_args()

    n = os.cpu_count()
    upper, lower = range(n // 2, n), range(n // 2) if n > 1 else range(1)
    cpus = a.cpus or ",".join(map(str, upper))
    client = a.client_cpus or ",".join(map(str, lower))
    cores = cpu_list(cpus)
    if set(cores) & set(cpu_list(client)):
        print(f"warning: servers ({cpus}) and wrk ({client}) share cores", file=sys.stderr)
    for f in ("model.json", "model.safetensors"):
        if not os.path.isfile(os.path.join(a.model, f)):
            fail(f"{a.model}: no {f} (a model folder as training writes it)")
    if subprocess.run(["sh", "-c", "command -v wrk"], capture_output=True).returncode != 0:
        fail("wrk is not installed (make bench-serve installs Debian's wrk)")
    names = {"both": ["ours", "torch"], "ours": ["ours"], "torch": ["torch"]}[a.servers]
    if "ours" in names:
        check_serve(a.bin)

    imgs = images()
    reference = reference_classes(a.bin, a.model)
    if len(reference) != len(imgs):
        fail(f"train predict classified {len(reference)} of {len(imgs)} test images")
    print(f"servers on cores {cpus} ({len(cores)} worker(s) each, OMP_NUM_THREADS={a.threads}), "
          f"wrk on {client}, {a.duration} s per load run", flush=True)
    results = {"cpus": cpus, "client_cpus": client, "workers": len(cores),
               "threads": a.threads, "duration_s": a.duration,
               "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as d:
        bodies = {}
        for per in PER_REQUEST:
            bodies[per] = os.path.join(d, f"{per}.csv")
            with open(bodies[per], "wb") as f:
                f.write(csv(imgs[:per]))
        results.update(measure(names, a, cores, client, imgs, reference, bodies))
    print()
    print(table(results))
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nresults: {a.json}")


if __name__ == "__main__":
    main()
