"""Serving: runs sharing one base, micro-batching, the HTTP API contract and a real server process, on tiny
random BERT runs trained for a few steps."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
import torch

from emotune import api
from emotune.errors import ConfigError
from emotune.inference.predictor import Predictor

from .conftest import EMOTIONS, tiny_config, write_emotion_folder

SENTIMENT = {"positive": "great lovely wonderful superb fine", "negative": "awful terrible horrid bad poor"}


def write_sentiment_csv(path: Path, n: int = 96, seed: int = 1) -> Path:
    rng = random.Random(seed)
    rows = ["text,label"]
    for i in range(n):
        label = ("positive", "negative")[i % 2]
        rows.append(f"the film was {rng.choice(SENTIMENT[label].split())} overall,{label}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def train_serving_runs(root: Path, tiny_model: str) -> dict[str, Path]:
    """Two LoRA runs on the same tiny base (different labels, poolings and LayerNorms) and a full run."""
    emotion = write_emotion_folder(root / "data")
    runs = {}
    cfg = tiny_config(tiny_model, emotion, "lora", max_steps=12, seed=1)
    runs["emo-lora"] = root / "emo-lora"
    api.train(cfg, runs["emo-lora"], progress=False)
    cfg = tiny_config(tiny_model, emotion, "lora", max_steps=12, seed=2)
    cfg.data.name = str(write_sentiment_csv(root / "sentiment.csv"))
    cfg.model.pooling = "cls"
    runs["senti-lora"] = root / "senti-lora"
    api.train(cfg, runs["senti-lora"], progress=False)
    cfg = tiny_config(tiny_model, emotion, "full", max_steps=12, seed=3)
    runs["emo-full"] = root / "emo-full"
    api.train(cfg, runs["emo-full"], progress=False)
    return runs


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory) -> dict[str, Path]:
    return train_serving_runs(tmp_path_factory.mktemp("serve"), tiny_model)


TEXTS = ["i feel happy today", "i am so scared right now", "the film was awful overall",
         "i feel loving and tender", "what a surprise, i am amazed"]


# ---- one base, many adapters -----------------------------------------------------------------------
def test_lora_runs_share_one_base_and_predict_as_alone(runs):
    from emotune.inference.engines import ModelRegistry

    reg = ModelRegistry.load([f"a={runs['emo-lora']}", f"b={runs['senti-lora']}", f"full={runs['emo-full']}"],
                             precision="fp32")
    assert reg.names == ["a", "b", "full"]
    assert reg["a"].engine is reg["b"].engine and reg["full"].engine is not reg["a"].engine
    assert reg["a"].shared_with == ["b"] and reg["full"].shared_with == []
    assert reg["b"].labels == ["negative", "positive"] or set(reg["b"].labels) == {"negative", "positive"}
    alone = {k: Predictor(runs[r], precision="fp32") for k, r in (("a", "emo-lora"), ("b", "senti-lora"))}
    for name in ("a", "b", "a", "b"):  # switching adapters back and forth restores each run's weights
        assert torch.allclose(reg[name].probabilities(TEXTS), alone[name].probabilities(TEXTS), atol=1e-5)


def test_a_second_adapter_adds_only_its_own_size(runs):
    from emotune.inference.engines import SharedLoraEngine
    from emotune.inference.predictor import resolve_mode
    from emotune.runs import Run

    a, b = Run.open(runs["emo-lora"]), Run.open(runs["senti-lora"])
    mode = resolve_mode("fp32", a, torch.device("cpu"))
    one = SharedLoraEngine([a], mode, torch.device("cpu"), 8).nbytes()
    two = SharedLoraEngine([a, b], mode, torch.device("cpu"), 8).nbytes()
    adapter_file = (b.path / "model.safetensors").stat().st_size
    assert 0 < two - one <= adapter_file * 1.1 + 4096, (one, two, adapter_file)
    assert one > 20 * (two - one)  # the base dominates and is held once


def test_shared_engine_in_bf16_and_int8(runs):
    from emotune.inference.engines import ModelRegistry

    ref = ModelRegistry.load([f"a={runs['emo-lora']}", f"b={runs['senti-lora']}"], precision="fp32")
    for precision in ("bf16", "int8"):
        reg = ModelRegistry.load([f"a={runs['emo-lora']}", f"b={runs['senti-lora']}"], precision=precision)
        for name in ("a", "b"):
            assert (reg[name].probabilities(TEXTS) - ref[name].probabilities(TEXTS)).abs().max() < 0.05


@pytest.mark.parametrize("spec", ["../x=/tmp", "a/b=/tmp", "=/tmp"])
def test_model_names_are_plain_words(runs, spec):
    from emotune.inference.engines import ModelRegistry

    with pytest.raises(ConfigError):
        ModelRegistry.load([spec, str(runs["emo-full"])])


def test_duplicate_names_are_refused(runs):
    from emotune.inference.engines import ModelRegistry

    with pytest.raises(ConfigError, match="two models"):
        ModelRegistry.load([f"x={runs['emo-full']}", f"x={runs['emo-lora']}"])


# ---- micro-batching --------------------------------------------------------------------------------
def test_concurrent_requests_are_batched_and_answered_in_order(runs):
    from emotune.inference.engines import ModelRegistry
    from emotune.serve.batcher import MicroBatcher

    reg = ModelRegistry.load([f"a={runs['emo-lora']}", f"b={runs['senti-lora']}"], precision="fp32")
    sizes = []

    async def main():
        batcher = MicroBatcher(reg, max_batch=16, max_wait_ms=50, on_batch=lambda m, n, s: sizes.append((m, n)))
        await batcher.start()
        jobs = [(("a", "b")[i % 2], [TEXTS[i % len(TEXTS)]] * (1 + i % 3)) for i in range(12)]
        results = await asyncio.gather(*[batcher.submit(m, t) for m, t in jobs])
        await batcher.close()
        return jobs, results

    jobs, results = asyncio.run(main())
    for (model, texts), probs in zip(jobs, results):
        assert torch.allclose(probs, reg[model].probabilities(texts), atol=1e-5)
    assert max(n for _, n in sizes) > 1 and len(sizes) < len(jobs)  # gathered, not one by one
    assert all(n <= 16 for _, n in sizes)


async def until(condition, timeout: float = 30) -> None:
    """Wait (yielding to the event loop) until ``condition()`` holds; the timeout only bounds a failure."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("timed out waiting for a condition")
        await asyncio.sleep(0.001)


def test_close_finishes_in_flight_requests(runs):
    from emotune.inference.engines import ModelRegistry
    from emotune.serve.batcher import Closed, MicroBatcher

    reg = ModelRegistry.load([f"a={runs['emo-full']}"], precision="fp32")

    async def main():
        batcher = MicroBatcher(reg, max_batch=64, max_wait_ms=200)
        await batcher.start()
        pending = [asyncio.create_task(batcher.submit("a", TEXTS)) for _ in range(3)]
        await until(lambda: batcher.pending == 3)  # queued, waiting in the batch window
        closing = asyncio.create_task(batcher.close())
        await until(lambda: batcher.closing)
        assert not any(p.done() for p in pending)  # still in flight when the close began
        with pytest.raises(Closed):
            await batcher.submit("a", TEXTS)
        done = await asyncio.gather(*pending)
        await closing
        return done

    assert all(r.shape == (len(TEXTS), len(EMOTIONS)) for r in asyncio.run(main()))


# ---- the HTTP API ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(runs):
    from fastapi.testclient import TestClient

    from emotune.inference.engines import ModelRegistry
    from emotune.serve import BatchConfig, Limits, create_app

    reg = ModelRegistry.load([f"emo={runs['emo-lora']}", f"senti={runs['senti-lora']}", f"full={runs['emo-full']}"],
                             precision="fp32")
    app = create_app(reg, limits=Limits(max_texts=8, max_chars=300, max_body_bytes=20_000),
                     batching=BatchConfig(max_batch=16, max_wait_ms=1))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_predict_contract(client):
    r = client.post("/v1/predict", json={"texts": TEXTS, "model": "emo"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "emo" and len(body["predictions"]) == len(TEXTS)
    for p in body["predictions"]:
        assert list(p["probabilities"]) == EMOTIONS
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-5
        assert all(0 <= v <= 1 for v in p["probabilities"].values())
        assert p["label"] == max(p["probabilities"], key=p["probabilities"].get)
    r = client.post("/v1/predict", json={"texts": ["the film was great overall"], "model": "senti"})
    assert set(r.json()["predictions"][0]["probabilities"]) == {"positive", "negative"}
    r = client.post("/v1/predict", json={"texts": ["i feel happy"]})  # no model: the first one
    assert r.status_code == 200 and r.json()["model"] == "emo"


def test_predictions_match_the_library(client, runs):
    body = client.post("/v1/predict", json={"texts": TEXTS, "model": "full"}).json()
    lib = Predictor(runs["emo-full"], precision="fp32").predict(TEXTS)
    for p, q in zip(body["predictions"], lib):
        assert p["label"] == q["label"]
        assert all(abs(p["probabilities"][k] - v) < 1e-5 for k, v in q["probabilities"].items())


def test_models_health_metrics_docs_page(client, runs):
    models = client.get("/v1/models").json()
    assert models["default"] == "emo" and [m["name"] for m in models["models"]] == ["emo", "senti", "full"]
    emo = models["models"][0]
    assert emo["labels"] == EMOTIONS and emo["method"] == "lora" and emo["shares_base_with"] == ["senti"]
    assert "accuracy" in emo["metrics"]["validation"] and models["limits"]["max_texts"] == 8
    assert str(runs["emo-lora"].parents[1]) not in json.dumps(models)  # no local paths leak
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    client.post("/v1/predict", json={"texts": ["i feel happy"]})
    metrics = client.get("/metrics").text
    assert 'emotune_requests_total{method="POST",path="/v1/predict",status="200"}' in metrics
    assert "emotune_request_duration_seconds_bucket" in metrics and "emotune_batch_size_bucket" in metrics
    spec = client.get("/openapi.json").json()
    assert "/v1/predict" in spec["paths"] and "/v1/models" in spec["paths"]
    assert "texts" in json.dumps(spec["paths"]["/v1/predict"]["post"]["requestBody"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
    # rendered on the server from the schema: every operation, nothing loaded from another site
    assert "/v1/predict" in docs.text and "/v1/models" in docs.text and "Content-Type: application/json" in docs.text
    assert "<script" not in docs.text and "cdn" not in docs.text.lower() and 'src="http' not in docs.text
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "/v1/predict" in page.text


def raw(body: bytes) -> dict:
    """A request body sent as is, declared as JSON."""
    return {"content": body, "headers": {"content-type": "application/json"}}


BAD = [
    ("empty list", {"json": {"texts": []}}, 422, "no_texts"),
    ("too many texts", {"json": {"texts": ["i feel happy"] * 9}}, 413, "too_many_texts"),
    ("huge text", {"json": {"texts": ["happy " * 100]}}, 413, "text_too_long"),
    ("huge body", {"json": {"texts": ["x" * 30_000]}}, 413, "body_too_large"),
    ("blank text", {"json": {"texts": ["   "]}}, 422, "empty_text"),
    ("texts not a list", {"json": {"texts": "i feel happy"}}, 422, "invalid_request"),
    ("numbers for texts", {"json": {"texts": [1, 2]}}, 422, "invalid_request"),
    ("null text", {"json": {"texts": [None]}}, 422, "invalid_request"),
    ("nested list", {"json": {"texts": [["i feel happy"]]}}, 422, "invalid_request"),
    ("number for model", {"json": {"texts": ["hi"], "model": 3}}, 422, "invalid_request"),
    ("unknown field", {"json": {"texts": ["hi"], "mode": "emo"}}, 422, "invalid_request"),
    ("no texts key", {"json": {"model": "emo"}}, 422, "invalid_request"),
    ("array body", {"json": ["i feel happy"]}, 422, "invalid_request"),
    ("malformed JSON", raw(b'{"texts": ["a",'), 400, "invalid_json"),
    ("empty body", raw(b""), 400, "invalid_json"),
    ("deep nesting", raw(b"[" * 15_000 + b"]" * 15_000), 413, "body_too_large"),
    ("deep nesting under the limit", raw(b"[" * 5_000 + b"]" * 5_000), 400, "invalid_json"),
    ("invalid UTF-8", raw(b'{"texts": ["caf\xe9 \xff"]}'), 400, "invalid_utf8"),
    ("lone surrogate", raw(b'{"texts": ["\\ud800 happy"]}'), 422, "invalid_text"),
    ("form body", {"content": b"texts=hi", "headers": {"content-type": "application/x-www-form-urlencoded"}}, 415,
     "unsupported_media_type"),
    ("JSON sent as text/plain", {"content": b'{"texts": ["hi"]}', "headers": {"content-type": "text/plain"}}, 415,
     "unsupported_media_type"),
    ("no Content-Type", {"content": b'{"texts": ["hi"]}'}, 415, "unsupported_media_type"),
    ("unknown model", {"json": {"texts": ["hi"], "model": "nope"}}, 404, "unknown_model"),
    ("path name", {"json": {"texts": ["hi"], "model": "../../etc/passwd"}}, 422, "invalid_model_name"),
    ("absolute path", {"json": {"texts": ["hi"], "model": "/tmp/run"}}, 422, "invalid_model_name"),
    ("dot dot", {"json": {"texts": ["hi"], "model": ".."}}, 422, "invalid_model_name"),
    ("windows path", {"json": {"texts": ["hi"], "model": "C:\\runs\\x"}}, 422, "invalid_model_name"),
    ("empty name", {"json": {"texts": ["hi"], "model": ""}}, 422, "invalid_model_name"),
]


@pytest.mark.parametrize("case,kwargs,status,kind", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_a_json_4xx(client, case, kwargs, status, kind):
    r = client.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == kind and r.json()["error"]["message"]


def test_streamed_body_over_the_limit(client):
    def chunks():
        yield b'{"texts": ["'
        for _ in range(30):
            yield b"x" * 1000
        yield b'"]}'

    r = client.post("/v1/predict", content=chunks())  # chunked: no Content-Length to check up front
    assert r.status_code == 413 and r.json()["error"]["type"] == "body_too_large"


def test_wrong_method_and_path_are_json_too(client):
    r = client.get("/v1/predict")
    assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


EXPLAIN_BAD = [
    ("unknown target", {"text": "i feel happy", "model": "emo", "target": "nope"}, 422, "unknown_target"),
    ("bad method", {"text": "i feel happy", "method": "shap"}, 422, "invalid_request"),
    ("too many steps", {"text": "i feel happy", "steps": 10_000}, 422, "invalid_request"),
    ("too long", {"text": "x" * 301}, 413, "text_too_long"),
    ("blank", {"text": "  "}, 422, "empty_text"),
    ("path as model", {"text": "hi", "model": "../runs/x"}, 422, "invalid_model_name"),
    ("unknown model", {"text": "hi", "model": "nope"}, 404, "unknown_model"),
    ("texts instead of text", {"texts": ["hi"]}, 422, "invalid_request"),
]


@pytest.mark.parametrize("case,body,status,kind", EXPLAIN_BAD, ids=[b[0] for b in EXPLAIN_BAD])
def test_explain_refuses_bad_requests(client, case, body, status, kind):
    r = client.post("/v1/explain", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == kind


def test_explain_answers_word_scores_like_the_library(client, runs):
    from emotune.inference.explain import Explainer

    r = client.post("/v1/explain", json={"text": "i feel happy today", "model": "full", "target": "joy"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "full" and body["target"] == "joy" and body["method"] == "ig"
    assert [w["word"] for w in body["words"]] == ["i", "feel", "happy", "today"]
    want = Explainer(runs["emo-full"]).explain("i feel happy today", "joy")
    assert [w["score"] for w in body["words"]] == pytest.approx([w["score"] for w in want.words], rel=1e-4,
                                                                 abs=1e-7)


def test_no_bad_request_ever_became_a_500(client):
    for _, kwargs, _, _ in BAD:
        client.post("/v1/predict", **kwargs)
    metrics = client.get("/metrics").text
    assert 'status="5' not in metrics
    assert client.get("/health").status_code == 200


# ---- the command line ------------------------------------------------------------------------------
def test_cli_predict_options(runs):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "emotune.cli", "predict", str(runs["emo-full"]), "i feel happy",
                        "--json", "--precision", "int8", "--threads", "1", "--batch-size", "4"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out[0]["label"] in EMOTIONS and abs(sum(out[0]["probabilities"].values()) - 1) < 1e-5


def test_cli_serve_refuses_a_bad_run(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "emotune.cli", "serve", str(tmp_path / "missing"), "--port", "0"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "not a run folder" in r.stderr


# ---- a real server process -------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`emotune serve` in a subprocess on 127.0.0.1 and a free port; ready once /health answers."""

    def __init__(self, *args: str, timeout: float = 180):
        import os
        import subprocess
        import sys
        import time

        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "emotune.cli", "serve", *args, "--host", "127.0.0.1",
                                      "--port", str(self.port), "--threads", "1"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"emotune serve exited: {self.proc.stdout.read()}")  # type: ignore[union-attr]
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)  # poll interval
        self.stop()
        raise RuntimeError("emotune serve did not become healthy in time")

    def wait_for(self, condition, timeout: float = 60) -> None:
        """Poll ``condition()`` until it holds; the timeout only bounds a failure."""
        import time

        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError("timed out waiting for the server")
            time.sleep(0.02)

    def stop(self, timeout: float = 60) -> int:
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def output(self) -> str:
        return self.proc.stdout.read() if self.proc.stdout else ""  # type: ignore[union-attr]


def test_sigterm_finishes_in_flight_requests(runs):
    import threading

    import httpx

    # A long batching window keeps the request in flight when SIGTERM arrives.
    server = ServerProcess(f"emo={runs['emo-full']}", "--precision", "fp32", "--max-wait-ms", "1500")
    try:
        result = {}

        def call():
            result["r"] = httpx.post(server.url + "/v1/predict", json={"texts": TEXTS}, timeout=60)

        t = threading.Thread(target=call)
        t.start()
        server.wait_for(lambda: httpx.get(server.url + "/health", timeout=5).json()["pending"] == 1)  # in flight
        code = server.stop()
        t.join(60)
    finally:
        server.stop()
    assert result["r"].status_code == 200 and len(result["r"].json()["predictions"]) == len(TEXTS)
    assert code in (0, -15), server.output()  # uvicorn re-raises SIGTERM once it has shut down cleanly
