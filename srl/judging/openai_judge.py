"""An OpenAI-compatible chat-completions endpoint as the judge (``external_judge=openai``).

Any server that speaks ``POST {base_url}/chat/completions``: a hosted API (GPT-4 as the paper's
head-to-head judge), or a vLLM / SGLang server of an open model (``vllm serve MODEL`` gives
``http://HOST:8000/v1``). The judge prompt is the run's template rendered exactly as for the
self-judge, sent as one user message; the reply goes through the same parser.

- **Key** from the environment variable ``api_key_env`` (never from the config, so it never reaches
  W&B or the run dir); none needed for a local server.
- **Concurrency**: up to ``concurrency`` requests in flight (threads; the work is waiting).
- **Retries**: HTTP 429 and 5xx, refused connections and timeouts are retried ``max_retries`` times
  with exponential backoff (``backoff_s * 2**attempt``, capped at 60 s); any other HTTP error (401
  bad key, 404 unknown model) stops at once with the server's message. When every attempt fails the
  stage stops with an error naming the endpoint; what was already judged is kept.
- **Malformed replies** (a body that is not JSON, or has no ``choices[0].message.content``) are
  counted (``stats()["malformed"]``), logged, and judged unparsable (``""``); they are not cached.
- **Cache**: every good reply is appended to ``cache_dir/<endpoint hash>.jsonl`` under the SHA-256
  of its request (URL, model, messages, sampling, seed), so a resumed stage, a rerun evaluation or
  a second model judged on the same replies sends nothing twice.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Sequence

from srl.generation.sampling import SamplingSettings

log = logging.getLogger(__name__)

RETRIED_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class JudgeServerError(RuntimeError):
    """The endpoint refused or failed every attempt; the message names it and the last error."""


@dataclasses.dataclass
class OpenAIJudge:
    """``conf/external_judge/openai.yaml``; ``complete`` is the text-judge call of ``srl.judging.backends``."""

    model: str
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str | None = "OPENAI_API_KEY"
    concurrency: int = 8
    max_retries: int = 4
    backoff_s: float = 1.0
    timeout_s: float = 120.0
    cache_dir: str | None = None
    system_prompt: str | None = None
    send_seed: bool = True  # OpenAI and vLLM accept a per-request seed; turn off for servers that reject it
    kind: str = dataclasses.field(default="text", init=False)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("external_judge.model: the served model's name is required (e.g. gpt-4o, or vLLM's --served-model-name)")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"external_judge.base_url must be an http(s) URL, got {self.base_url!r}")
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0:
            raise ValueError("external_judge: concurrency >= 1, max_retries >= 0 and timeout_s > 0 are required")
        self.url = self.base_url.rstrip("/") + "/chat/completions"
        self._counts = {"requests": 0, "cached": 0, "retries": 0, "malformed": 0}
        self._lock = threading.Lock()
        self._cache: dict[str, str] | None = None

    def describe(self) -> str:
        return f"openai:{self.model}@{self.base_url}"

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    # -- the text-judge call ------------------------------------------------------------------
    def complete(self, prompts: Sequence[str], seeds: Sequence[int], sampling: SamplingSettings) -> list[str]:
        """One reply per prompt, in order; cached replies are not asked again."""
        bodies = [self.request_body(p, s, sampling) for p, s in zip(prompts, seeds)]
        keys = [request_key(self.url, b) for b in bodies]
        cache = self._load_cache()
        out: list[str | None] = [cache.get(k) for k in keys]
        with self._lock:
            self._counts["cached"] += sum(t is not None for t in out)
        todo = [i for i, t in enumerate(out) if t is None]
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(todo)))) as pool:
            for i, text in zip(todo, pool.map(lambda i: self._ask(bodies[i], keys[i]), todo)):
                out[i] = text
        return [t if t is not None else "" for t in out]

    def request_body(self, prompt: str, seed: int, sampling: SamplingSettings) -> dict[str, Any]:
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + [{"role": "user", "content": prompt}]
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": sampling.temperature,
                                "top_p": sampling.top_p, "max_tokens": sampling.max_new_tokens}
        if self.send_seed:
            body["seed"] = int(seed) % (2**31)
        return body

    def _ask(self, body: dict[str, Any], key: str) -> str:
        raw = self._post(body)
        text = reply_text(raw)
        if text is None:
            with self._lock:
                self._counts["malformed"] += 1
            log.warning("judge %s: malformed reply (judged unparsable): %r", self.url, raw[:200])
            return ""
        self._store(key, text)
        return text

    def _post(self, body: dict[str, Any]) -> bytes:
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self._counts["retries"] += 1
                time.sleep(min(60.0, self.backoff_s * 2 ** (attempt - 1)))
            with self._lock:
                self._counts["requests"] += 1
            try:
                with urllib.request.urlopen(urllib.request.Request(self.url, data=data, headers=headers), timeout=self.timeout_s) as resp:
                    return resp.read()
            except urllib.error.HTTPError as err:
                detail = err.read()[:300].decode("utf-8", "replace")
                if err.code not in RETRIED_STATUS:
                    raise JudgeServerError(f"judge endpoint {self.url} (model {self.model}) answered HTTP {err.code}: {detail}") from err
                last = f"HTTP {err.code}: {detail}"
            except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError) as err:
                last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            log.info("judge %s: attempt %d failed (%s)", self.url, attempt + 1, last)
        raise JudgeServerError(f"judge endpoint {self.url} (model {self.model}): {self.max_retries + 1} attempts failed, last: {last}")

    # -- the cache ----------------------------------------------------------------------------
    def _cache_file(self) -> Path | None:
        if not self.cache_dir:
            return None
        name = hashlib.sha256(f"{self.url}\n{self.model}".encode()).hexdigest()[:16]
        return Path(self.cache_dir) / f"openai_{name}.jsonl"

    def _load_cache(self) -> dict[str, str]:
        if self._cache is None:
            self._cache = {}
            path = self._cache_file()
            if path is not None and path.is_file():
                for line in path.read_text(encoding="utf-8").splitlines():
                    try:
                        row = json.loads(line)
                        self._cache[row["key"]] = row["text"]
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut short by a crash: that request is asked again
        return self._cache

    def _store(self, key: str, text: str) -> None:
        with self._lock:
            assert self._cache is not None
            self._cache[key] = text
            path = self._cache_file()
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"key": key, "text": text}) + "\n")


def request_key(url: str, body: dict[str, Any]) -> str:
    """SHA-256 of the endpoint and the whole request body (canonical JSON): the cache key."""
    return hashlib.sha256(json.dumps({"url": url, **body}, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def reply_text(raw: bytes) -> str | None:
    """``choices[0].message.content`` of a chat-completions body; None when the body is not that."""
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None
