"""The server under faults and load: a model that fails on one text, non-finite outputs, a full queue, a slow
model, unexpected errors, foreign Host headers and paths that must not leak; on a tiny random BERT run with
faults injected into its served model."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from pathlib import Path

import pytest
import torch

from emotune import api

from .conftest import EMOTIONS, tiny_config, write_emotion_folder

OK_TEXTS = ["i feel happy today", "i am so scared right now"]


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    data = write_emotion_folder(root / "data", n_train=48, n_eval=12)
    cfg = tiny_config(tiny_model, data, "full", max_steps=4)
    api.train(cfg, root / "emo-run", progress=False)
    return root / "emo-run"


@pytest.fixture(scope="module")
def registry(run_dir):
    from emotune.inference.engines import ModelRegistry

    return ModelRegistry.load([f"emo={run_dir}"], precision="fp32")


class Injected:
    """Stands in for a served model's ``probabilities``: fails on "BOOM", gives NaN for "NAN" and infinity for
    "INF", and holds "SLOW" until ``gate`` is set; every call is recorded."""

    def __init__(self, real):
        self.real = real
        self.calls: list[list[str]] = []
        self.gate, self.entered = threading.Event(), threading.Event()

    def __call__(self, texts):
        self.calls.append(list(texts))
        if "BOOM" in texts:
            raise RuntimeError("the model broke on /srv/secret/weights")
        if "SLOW" in texts:
            self.entered.set()
            assert self.gate.wait(120), "the test never opened the gate"
        probs = self.real(texts).clone()
        for i, t in enumerate(texts):
            if t == "NAN":
                probs[i] = float("nan")
            elif t == "INF":
                probs[i, 0] = float("inf")
        return probs


@pytest.fixture()
def faulty(registry, monkeypatch):
    served = registry["emo"]
    injected = Injected(served.probabilities)
    monkeypatch.setattr(served, "probabilities", injected)
    yield injected
    injected.gate.set()


def make_client(registry, **options):
    from fastapi.testclient import TestClient

    from emotune.serve import BatchConfig, Limits, create_app

    app = create_app(registry, limits=options.pop("limits", Limits()), batching=options.pop("batching", BatchConfig()),
                     **options)
    return TestClient(app, raise_server_exceptions=False)


def strict_json(text: str):
    """JSON as a strict parser reads it: NaN and Infinity are not JSON."""
    def refuse(name):
        raise AssertionError(f"{name} in a response")

    return json.loads(text, parse_constant=refuse)


def wait_until(condition, timeout: float = 60) -> None:
    """Poll ``condition()`` until it holds; the timeout only bounds a failure."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for a condition")
        time.sleep(0.005)


# ---- a failing model -------------------------------------------------------------------------------
def test_a_text_that_breaks_the_model_fails_only_its_own_request(registry, faulty):
    from emotune.serve.batcher import MicroBatcher

    async def main():
        batcher = MicroBatcher(registry, max_batch=16, max_wait_ms=200)
        await batcher.start()
        try:
            return await asyncio.gather(batcher.submit("emo", [OK_TEXTS[0]]), batcher.submit("emo", ["BOOM"]),
                                        batcher.submit("emo", [OK_TEXTS[1]]), return_exceptions=True)
        finally:
            await batcher.close()

    good1, bad, good2 = asyncio.run(main())
    assert isinstance(bad, RuntimeError)
    assert faulty.calls[0] == [OK_TEXTS[0], "BOOM", OK_TEXTS[1]]  # they were one micro-batch...
    assert sorted(faulty.calls[1:]) == sorted([[OK_TEXTS[0]], ["BOOM"], [OK_TEXTS[1]]])  # ...run again one by one
    assert torch.allclose(good1, faulty.real([OK_TEXTS[0]]), atol=1e-6)
    assert torch.allclose(good2, faulty.real([OK_TEXTS[1]]), atol=1e-6)


def test_a_model_failure_is_a_json_500_and_the_server_goes_on(registry, faulty):
    with make_client(registry) as client:
        r = client.post("/v1/predict", json={"texts": ["i feel fine", "BOOM"]})
        assert r.status_code == 500 and r.json()["error"]["type"] == "inference_failed"
        assert "/srv/secret" not in r.text  # the cause goes to the log, not to the client
        r = client.post("/v1/predict", json={"texts": OK_TEXTS})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 2
        assert client.get("/health").status_code == 200


def test_an_unexpected_error_anywhere_is_a_json_500(registry, monkeypatch):
    def broken():
        raise KeyError("/srv/secret/config.yaml")

    monkeypatch.setattr(registry["emo"], "describe", broken)
    with make_client(registry) as client:
        r = client.get("/v1/models")
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        assert r.json()["error"]["type"] == "internal_error" and "/srv/secret" not in r.text


# ---- non-finite numbers ----------------------------------------------------------------------------
@pytest.mark.parametrize("texts", [["NAN"], ["INF"], ["i feel happy", "NAN"]])
def test_non_finite_probabilities_are_a_json_500_never_nan_in_json(registry, faulty, texts):
    with make_client(registry) as client:
        r = client.post("/v1/predict", json={"texts": texts})
        body = strict_json(r.text)
        assert r.status_code == 500 and body["error"]["type"] == "non_finite_output", r.text
        assert client.post("/v1/predict", json={"texts": OK_TEXTS}).status_code == 200


def test_non_finite_metrics_are_sent_as_null(registry, monkeypatch):
    from emotune.inference import engines as served_models

    monkeypatch.setattr(served_models, "summary_metrics",
                        lambda run: {"validation": {"accuracy": math.nan, "loss": math.inf, "f1_macro": 0.5}})
    with make_client(registry) as client:
        r = client.get("/v1/models")
        assert r.status_code == 200, r.text
        metrics = strict_json(r.text)["models"][0]["metrics"]["validation"]
        assert metrics == {"accuracy": None, "loss": None, "f1_macro": 0.5}


def test_a_long_text_with_a_big_max_length_is_answered(registry, monkeypatch):
    # the run asks for 100,000 tokens; the tiny BERT holds 128 positions: the tokenizer stops there
    monkeypatch.setattr(registry["emo"].run.config.data, "max_length", 100_000)
    with make_client(registry) as client:
        r = client.post("/v1/predict", json={"texts": ["i feel happy " * 150, "ok"]})
        assert r.status_code == 200, r.text
        assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-5 for p in r.json()["predictions"])


# ---- load: a bounded queue and a timeout -----------------------------------------------------------
def test_a_full_queue_answers_503_with_retry_after(registry, faulty):
    from emotune.serve import BatchConfig

    with make_client(registry, batching=BatchConfig(max_queue=2, max_wait_ms=0, retry_after_s=3)) as client:
        answers: dict[str, object] = {}

        def post(key, texts):
            answers[key] = client.post("/v1/predict", json={"texts": texts})

        slow = threading.Thread(target=post, args=("slow", ["SLOW"]))
        slow.start()
        assert faulty.entered.wait(60)  # the first request holds the model
        queued = threading.Thread(target=post, args=("queued", OK_TEXTS))
        queued.start()
        wait_until(lambda: client.get("/health").json()["pending"] == 2)  # and the second waits behind it
        r = client.post("/v1/predict", json={"texts": OK_TEXTS})
        assert r.status_code == 503 and r.headers["retry-after"] == "3"
        assert r.json()["error"]["type"] == "overloaded"
        faulty.gate.set()
        slow.join(60)
        queued.join(60)
        assert answers["slow"].status_code == 200 and answers["queued"].status_code == 200  # type: ignore[union-attr]
        assert client.post("/v1/predict", json={"texts": OK_TEXTS}).status_code == 200
        assert 'status="503"' in client.get("/metrics").text


def test_a_request_over_the_timeout_answers_504(registry, faulty):
    from emotune.serve import Limits

    with make_client(registry, limits=Limits(timeout_s=0.5)) as client:
        r = client.post("/v1/predict", json={"texts": ["SLOW"]})
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
        assert client.get("/health").json()["pending"] == 0  # given up: no longer counted
        faulty.gate.set()  # the batch already running finishes; its result is dropped
        r = client.post("/v1/predict", json={"texts": OK_TEXTS})
        assert r.status_code == 200 and list(r.json()["predictions"][0]["probabilities"]) == EMOTIONS


# ---- hosts, content types, paths -------------------------------------------------------------------
def test_default_allowed_hosts():
    from emotune.errors import ConfigError
    from emotune.serve.cli import check_hosts, default_allowed_hosts

    assert default_allowed_hosts("127.0.0.1") == ["127.0.0.1", "localhost", "::1"]
    assert set(default_allowed_hosts("localhost")) == {"localhost", "127.0.0.1", "::1"}
    assert set(default_allowed_hosts("::1")) == {"localhost", "127.0.0.1", "::1"}
    assert default_allowed_hosts("192.168.1.5") == ["192.168.1.5"]
    assert default_allowed_hosts("0.0.0.0") == ["*"] and default_allowed_hosts("::") == ["*"]
    assert check_hosts(["Example.com", "*.example.org", "[::1]", "*"]) == ["example.com", "*.example.org", "::1", "*"]
    for bad in ("http://x.com", "x.com:80", "a.*.com", "*x.com", ""):
        with pytest.raises(ConfigError, match="allowed-host"):
            check_hosts([bad])


def test_a_foreign_host_header_is_refused(registry):
    from emotune.serve.cli import default_allowed_hosts

    with make_client(registry, allowed_hosts=default_allowed_hosts("127.0.0.1")) as client:
        for host in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000"):
            assert client.get("/health", headers={"host": host}).status_code == 200, host
        for host in ("attacker.example", "attacker.example:8000", "127.0.0.1.attacker.example", ""):
            r = client.post("/v1/predict", json={"texts": OK_TEXTS}, headers={"host": host})
            assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_host", host
        assert 'status="400"' in client.get("/metrics", headers={"host": "localhost"}).text


def test_models_never_show_local_paths(registry, run_dir, monkeypatch):
    cfg = registry["emo"].run.config
    monkeypatch.setattr(cfg.model, "name", "/srv/secret/models/tiny-bert")
    monkeypatch.setattr(cfg.data, "name", "/srv/secret/data/reviews.csv")
    monkeypatch.setattr(cfg.data, "data_dir", "/srv/secret/data")
    with make_client(registry) as client:
        body = client.get("/v1/models").json()
    text = json.dumps(body)
    assert "/srv/secret" not in text and str(run_dir) not in text and str(run_dir.parent) not in text
    model = body["models"][0]
    assert model["base_model"] == "tiny-bert" and model["data"] == "reviews.csv"

    def strings(x):
        if isinstance(x, str):
            yield x
        elif isinstance(x, dict):
            for k, v in x.items():
                yield k
                yield from strings(v)
        elif isinstance(x, list):
            for v in x:
                yield from strings(v)

    assert not [s for s in strings(body) if s.startswith(("/", "~", ".")) or "\\" in s or "/srv" in s]


def test_docs_page_is_offline_and_complete(registry):
    with make_client(registry) as client:
        page = client.get("/docs").text
        spec = client.get("/openapi.json").json()
    for path in spec["paths"]:
        assert path in page
    for status in ("415", "503", "504"):
        assert f"<code>{status}</code>" in page
    assert "<script" not in page and "<link" not in page and 'src="' not in page  # no resource from anywhere
    assert client.get("/redoc").status_code == 404  # ReDoc's page loads from a CDN too: not served


# ---- a real server process -------------------------------------------------------------------------
def test_a_served_process_refuses_foreign_hosts_and_non_json(run_dir):
    import httpx

    from .test_serve import ServerProcess

    server = ServerProcess(f"emo={run_dir}", "--precision", "fp32")
    try:
        r = httpx.get(server.url + "/health", headers={"host": "rebound.attacker.example"}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_host"
        r = httpx.post(server.url + "/v1/predict", content=b'{"texts": ["hi"]}', timeout=30,
                       headers={"content-type": "text/plain"})  # what a cross-site form or fetch can send
        assert r.status_code == 415 and r.json()["error"]["type"] == "unsupported_media_type"
        r = httpx.post(f"http://localhost:{server.port}/v1/predict", json={"texts": OK_TEXTS}, timeout=30)
        assert r.status_code == 200
    finally:
        server.stop()
