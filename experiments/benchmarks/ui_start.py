"""What opening the MLflow UI on a run's store costs: `mlflow ui` with its defaults against the command rnnlab
prints (``rnnlab.tracking.ui_command``: one worker, no job runner).

    python experiments/benchmarks/ui_start.py              # each variant 3 times, in turn
    python experiments/benchmarks/ui_start.py --repeats 5

For each start: the seconds until the UI answers (/health), then — after it has settled for a few seconds —
the processes of its session, their CPU seconds and their resident memory (RSS summed). Variants:
``defaults`` (`mlflow ui`: 4 workers and MLflow's job runner, which serves its GenAI features), ``one
worker`` (``--workers 1``), ``printed`` (``--workers 1`` and MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false).
Linux (reads /proc).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from rnnlab.tracking.store import UI_ARGS, UI_ENV     # what the printed command adds to `mlflow ui`

VARIANTS = {"defaults": ([], {}), "one worker": (["--workers", "1"], {}), "printed": (list(UI_ARGS), UI_ENV)}


def session_usage(sid: int) -> tuple[int, float, float]:
    """(processes, CPU seconds, RSS MiB) of the processes of session ``sid``."""
    n, ticks, pages = 0, 0, 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:        # after the command: state, ppid, pgrp, session, …
            n, ticks, pages = n + 1, ticks + int(fields[11]) + int(fields[12]), pages + int(fields[21])
    return n, ticks / os.sysconf("SC_CLK_TCK"), pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(store: str, args: list[str], extra_env: dict, settle: float) -> dict:
    port = free_port()
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    ui = subprocess.Popen([mlflow, "ui", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", str(port),
                           *args], env={**os.environ, **extra_env}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.perf_counter()
    try:
        while True:
            if ui.poll() is not None:
                raise SystemExit(f"mlflow ui {' '.join(args)} ended with exit code {ui.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.1)
        up = time.perf_counter() - t0
        time.sleep(settle)
        n, cpu, rss = session_usage(ui.pid)
        return {"up_s": up, "processes": n, "cpu_s": cpu, "rss_mib": rss}
    finally:
        os.killpg(ui.pid, signal.SIGKILL)
        ui.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after the UI answers before it is measured")
    a = ap.parse_args(argv)
    if a.repeats < 1:
        ap.error("--repeats must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        subprocess.run([sys.executable, "-c", f"import mlflow; mlflow.MlflowClient({store!r}).search_experiments()"],
                       check=True, capture_output=True)      # the store made first: no start pays for it
        results = {name: [] for name in VARIANTS}
        for _ in range(a.repeats):
            for name, (args, extra_env) in VARIANTS.items():
                results[name].append(start(store, args, extra_env, a.settle))
    print(f"| variant | up in s | processes | CPU s | RSS MiB |   (medians of {a.repeats}; CPU and RSS "
          f"{a.settle:g} s after it answers)")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"| {name} | {med['up_s']:.1f} | {med['processes']:.0f} | {med['cpu_s']:.1f} | {med['rss_mib']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
