"""The OpenAI-compatible judge against a real HTTP server on 127.0.0.1 speaking the chat-completions
protocol: good replies, retries after HTTP 500 and timeouts, errors that stop at once, malformed
bodies judged unparsable, the concurrency limit, and the reply cache that makes a resumed stage
send nothing twice (counted on the server)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from srl.data.partial import PartialJsonl
from srl.data.records import Candidate, Judgement, read_jsonl
from srl.evaluation.head_to_head import Comparison
from srl.generation.sampling import SamplingSettings
from srl.judging.openai_judge import JudgeServerError, OpenAIJudge, request_key
from srl.judging.pointwise import judge_candidates, judgement_metrics
from srl.judging.settings import JudgeSettings
from srl.judging.templates import load_judge_template, load_pairwise_template


class FakeServer:
    """``POST /v1/chat/completions``. ``script``: behaviours for the next requests, in order
    (``ok``, ``500``, ``401``, ``slow``, ``malformed``, ``no_choices``); ``ok`` after the script ends.
    An ``ok`` reply scores the prompt by its length (``Score: len % 6``) or, for a pairwise prompt,
    answers ``Winner: A``."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.script: list[str] = []
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.delay_s = delay_s
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    action = server.script.pop(0) if server.script else "ok"
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if server.delay_s:
                        time.sleep(server.delay_s)
                    if self.path != "/v1/chat/completions":
                        return self.reply(404, b'{"error": "no such route"}')
                    if action in ("500", "401"):
                        return self.reply(int(action), b'{"error": {"message": "scripted failure"}}')
                    if action == "slow":
                        time.sleep(1.0)
                    if action == "malformed":
                        return self.reply(200, b"<html>upstream proxy error</html>")
                    if action == "no_choices":
                        return self.reply(200, b'{"choices": []}')
                    prompt = body["messages"][-1]["content"]
                    text = "Winner: A" if "Winner:" in prompt else f"Reasonable. Score: {len(prompt) % 6}"
                    self.reply(200, json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}).encode())
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def reply(self, code: int, data: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def judge_for(server: FakeServer, tmp_path=None, **kw) -> OpenAIJudge:
    defaults = {"model": "judge-model", "base_url": server.url, "api_key_env": "SRL_TEST_KEY", "backoff_s": 0.01, "timeout_s": 5.0,
                "cache_dir": str(tmp_path / "cache") if tmp_path is not None else None}
    return OpenAIJudge(**{**defaults, **kw})


SAMPLING = SamplingSettings(temperature=0.7, top_p=0.9, max_new_tokens=64, batch_size=4)


def candidates(n: int) -> list[Candidate]:
    return [Candidate(f"p{i // 2}", i % 2, f"question {i // 2}", "an answer " * (i + 1), i + 1, True) for i in range(n)]


def expected_score(template, c: Candidate) -> int:
    return len(template.render(c.prompt, c.response)) % 6


def test_good_replies_are_parsed_like_the_self_judges_and_the_request_is_the_protocols(server, monkeypatch):
    monkeypatch.setenv("SRL_TEST_KEY", "sk-test")
    judge = judge_for(server)
    texts = judge.complete(["one", "three"], [7, 8], SAMPLING)
    assert texts == ["Reasonable. Score: 3", "Reasonable. Score: 5"]
    body = next(b for b in server.requests if b["messages"][0]["content"] == "one")
    assert body == {"model": "judge-model", "messages": [{"role": "user", "content": "one"}], "temperature": 0.7, "top_p": 0.9,
                    "max_tokens": 64, "seed": 7}
    assert all(h["Authorization"] == "Bearer sk-test" for h in server.headers)
    assert judge.stats() == {"requests": 2, "cached": 0, "retries": 0, "malformed": 0}


def test_http_500_then_success_is_retried(server):
    server.script = ["500", "500"]
    judge = judge_for(server)
    assert judge.complete(["hello"], [0], SAMPLING) == ["Reasonable. Score: 5"]
    assert len(server.requests) == 3 and judge.stats()["retries"] == 2


def test_a_timeout_is_retried(server):
    server.script = ["slow"]
    judge = judge_for(server, timeout_s=0.3)
    assert judge.complete(["hello"], [0], SAMPLING) == ["Reasonable. Score: 5"]
    assert judge.stats()["retries"] == 1 and len(server.requests) == 2


def test_every_attempt_failing_stops_with_the_endpoint_named(server):
    server.script = ["500"] * 10
    judge = judge_for(server, max_retries=2)
    with pytest.raises(JudgeServerError, match=r"127\.0\.0\.1.*3 attempts failed, last: HTTP 500"):
        judge.complete(["hello"], [0], SAMPLING)
    assert len(server.requests) == 3


def test_a_refused_key_stops_at_once(server):
    server.script = ["401"]
    with pytest.raises(JudgeServerError, match="HTTP 401"):
        judge_for(server).complete(["hello"], [0], SAMPLING)
    assert len(server.requests) == 1


def test_an_unreachable_server_is_retried_then_named(server):
    url = server.url
    server.close()
    judge = OpenAIJudge(model="m", base_url=url, api_key_env=None, max_retries=1, backoff_s=0.01, timeout_s=1.0)
    with pytest.raises(JudgeServerError, match="2 attempts failed"):
        judge.complete(["hello"], [0], SAMPLING)


def test_malformed_bodies_are_counted_unparsable_not_scored_and_not_cached(server, tmp_path):
    server.script = ["malformed", "no_choices"]
    template = load_judge_template()
    judge = judge_for(server, tmp_path)
    settings = JudgeSettings(template, num_samples=1, sampling=SAMPLING, external=judge)
    cands = candidates(4)
    store = PartialJsonl(tmp_path / "judgements.jsonl", Judgement)
    judge_candidates(None, None, cands, settings, 0, 1, store)
    records = read_jsonl(store.finish(), Judgement)
    assert sum(r.score is None for r in records) == 2 and judge.stats()["malformed"] == 2
    assert sorted(r.score for r in records if r.score is not None) == sorted(
        expected_score(template, c) for c, r in zip(cands, records) if r.score is not None)
    assert judgement_metrics(records, template)["parse_fail_rate"] == 0.5
    cached = (tmp_path / "cache").glob("*.jsonl")
    assert sum(len(p.read_text().splitlines()) for p in cached) == 2  # only the good replies


def test_concurrency_limit_holds(tmp_path):
    slow = FakeServer(delay_s=0.2)
    try:
        judge = judge_for(slow, concurrency=2)
        judge.complete([f"prompt {i}" for i in range(6)], list(range(6)), SAMPLING)
        assert slow.max_in_flight == 2 and len(slow.requests) == 6
    finally:
        slow.close()


class Stop(Exception):
    pass


def test_resumed_judging_sends_nothing_twice(server, tmp_path):
    """A stage killed after its first chunk resumes from the store; a chunk lost with the process is
    answered from the cache. Every (prompt, reply, sample) reaches the server exactly once."""
    template = load_judge_template()
    cands = candidates(8)  # 2 chunks of 4 candidates x K=2 samples
    settings = JudgeSettings(template, num_samples=2, sampling=SAMPLING, external=judge_for(server, tmp_path))
    path = tmp_path / "judgements.jsonl"

    def stop_after_first(stage, done):
        if done == 4:
            raise Stop

    with pytest.raises(Stop):
        judge_candidates(None, None, cands, settings, 0, 1, PartialJsonl(path, Judgement), stop_after_first)
    assert len(server.requests) == 8
    # the same requests from a new process (as for a chunk the store lost with a killed process) come from the cache
    judge_candidates(None, None, cands[:4], JudgeSettings(template, 2, SAMPLING, external=judge_for(server, tmp_path)), 0, 1,
                     PartialJsonl(tmp_path / "again.jsonl", Judgement))
    assert len(server.requests) == 8
    resumed = JudgeSettings(template, num_samples=2, sampling=SAMPLING, external=judge_for(server, tmp_path))
    judge_candidates(None, None, cands, resumed, 0, 1, PartialJsonl(path, Judgement))
    records = read_jsonl(PartialJsonl(path, Judgement).finish(), Judgement)
    assert len(server.requests) == 16  # 8 candidates x 2 samples, each once
    assert len({request_key(server.url + "/chat/completions", b) for b in server.requests}) == 16
    assert [r.score for r in records] == [expected_score(template, c) for c in cands]


def test_head_to_head_referee_through_the_endpoint(server, tmp_path):
    from srl.evaluation import head_to_head as h2h
    from srl.data.prompt_sets import PromptSetSettings

    settings = h2h.H2HSettings(load_pairwise_template(), PromptSetSettings(), judge="external", judge_sampling=SAMPLING)
    mine = {"p": Candidate("p", 0, "q", "mine", 1, True)}
    theirs = {"p": Candidate("p", 0, "q", "theirs", 1, True)}
    store = PartialJsonl(tmp_path / "cmp.jsonl", Comparison)
    h2h.compare(None, None, mine, theirs, settings, store, judge_for(server))
    verdicts = read_jsonl(store.finish(), Comparison)
    # "Winner: A" in both orders: position A is the model first, then the baseline -> one win each, a tie overall
    assert sorted((c.order, c.verdict) for c in verdicts) == [("ab", "model"), ("ba", "baseline")]
    assert len(server.requests) == 2


def test_config_builds_one_shared_judge_for_the_loop_and_the_referee(server, tmp_path):
    from conftest import compose
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from srl.config.judges import judges
    from srl.config.validation import validate_config

    cfg = compose(["external_judge=openai", "external_judge.model=judge-model", f"external_judge.base_url={server.url}",
                   "judge.by=external", "eval.h2h.judge=external"])
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    validate_config(cfg)
    judge, evaluation = judges(cfg)
    assert judge.external is evaluation.h2h.external and judge.external.describe() == f"openai:judge-model@{server.url}"
    assert judge.external.cache_dir == str(tmp_path / "judge_cache")
