"""Self-instruction creation: new prompts by few-shot prompting (paper Sec. 3.2, App. A.1).

A fixed model sees ``num_human_shots`` IFT prompts and ``num_model_shots`` prompts it wrote
earlier (paper: 6 + 2, 8-shot) and writes one new task. Parsed tasks pass Self-Instruct-style
filters: length in words, a start that is a letter or digit, no request for media a language model
cannot produce (images, files, links, ...), and ROUGE-L F1 below ``max_similarity`` against every
IFT prompt and every prompt accepted so far.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Sequence

DEMO_HEADER = (
    "You write tasks for an AI assistant. Below are example tasks written by people. Write one new task "
    "that is different from all of them: a question or request a user might send, answerable in text. "
    "Reply with the task only, without a number, title or answer.\n"
)


# Self-Instruct's filter for things a text model cannot do, by whole word.
UNSUPPORTED_MEDIA = ("image", "images", "picture", "pictures", "photo", "photos", "graph", "graphs", "draw", "drawing",
                     "plot", "video", "videos", "audio", "music", "map", "maps", "flowchart", "diagram", "file",
                     "files", "link", "links", "url", "http", "https", "attached", "attachment")


_MEDIA_RE = re.compile(r"\b(" + "|".join(UNSUPPORTED_MEDIA) + r")\b", re.IGNORECASE)


_WORD_RE = re.compile(r"\w+")


_PREFIX_RE = re.compile(r"^\s*(?:(?:new\s+)?task\s*\d*\s*[:.)-]|\d+\s*[:.)])\s*", re.IGNORECASE)


@dataclasses.dataclass
class PromptFilters:
    min_words: int = 3
    max_words: int = 150
    max_similarity: float = 0.7  # ROUGE-L F1, Self-Instruct's threshold


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming, O(len a * len b))."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(a: str | Sequence[str], b: str | Sequence[str]) -> float:
    """ROUGE-L F1 between two texts over lower-cased word tokens: 2PR/(P+R), P = LCS/len(b), R = LCS/len(a)."""
    ta = words(a) if isinstance(a, str) else list(a)
    tb = words(b) if isinstance(b, str) else list(b)
    if not ta or not tb:
        return 0.0
    lcs = lcs_length(ta, tb)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(tb), lcs / len(ta)
    return 2 * precision * recall / (precision + recall)


def parse_task(text: str) -> str:
    """The first line of the model's reply, without a 'Task 9:' style prefix or quotes.

    Demonstrations are one task a line, so a second line is the model listing more tasks.
    """
    paragraph = text.strip().split("\n")[0].strip()
    paragraph = _PREFIX_RE.sub("", paragraph).strip()
    if len(paragraph) >= 2 and paragraph[0] == paragraph[-1] and paragraph[0] in "\"'":
        paragraph = paragraph[1:-1].strip()
    return paragraph


def reject_reason(task: str, existing: Sequence[list[str]], filters: PromptFilters) -> str | None:
    """Why ``task`` is rejected (None: accepted); ``existing`` are word lists of prompts to stay away from."""
    if not task:
        return "empty"
    tokens = words(task)
    if len(tokens) < filters.min_words:
        return "too_short"
    if len(tokens) > filters.max_words:
        return "too_long"
    if not task[0].isalnum():
        return "bad_start"
    if _MEDIA_RE.search(task):
        return "unsupported_media"
    for other in existing:
        if tokens == other:
            return "duplicate"
        if rouge_l(tokens, other) > filters.max_similarity:
            return "near_duplicate"
    return None


def few_shot_prompt(human: Sequence[str], model_written: Sequence[str], rng: random.Random, num_human: int, num_model: int) -> str:
    """The instruction and numbered demonstrations; the model writes task number len(demos) + 1."""
    demos = rng.sample(list(human), min(num_human, len(human)))
    demos += rng.sample(list(model_written), min(num_model, len(model_written)))
    rng.shuffle(demos)
    lines = [DEMO_HEADER] + [f"Task {i}: {' '.join(d.split())}" for i, d in enumerate(demos, start=1)]
    lines.append(f"Task {len(demos) + 1}:")
    return "\n".join(lines)
