"""Self-instruction helpers: ROUGE-L, task parsing, filters and few-shot prompts, by hand."""

from __future__ import annotations

import random

import pytest

from srl.data.prompt_filters import PromptFilters, few_shot_prompt, lcs_length, parse_task, reject_reason, rouge_l, words


def test_lcs_by_hand():
    # a b c d e vs a c e: LCS = a c e (3); vs e d c b a: any single letter (1).
    assert lcs_length(list("abcde"), list("ace")) == 3
    assert lcs_length(list("abcde"), list("edcba")) == 1
    assert lcs_length([], list("abc")) == 0


def test_rouge_l_by_hand():
    # "the cat sat on the mat" (6) vs "the cat lay on a mat" (6): LCS the cat on mat = 4, P = R = 4/6, F1 = 2/3.
    assert rouge_l("The cat sat on the mat", "the cat lay on a mat") == pytest.approx(2 / 3)
    # 4 words vs 2 words with LCS 2: R = 2/4, P = 2/2, F1 = 2 * 0.5 * 1 / 1.5 = 2/3.
    assert rouge_l("write a short poem", "short poem") == pytest.approx(2 / 3)
    assert rouge_l("", "anything") == 0.0
    assert rouge_l("alpha beta", "gamma delta") == 0.0


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Task 9: Explain how tides work.", "Explain how tides work."),
        ("task 3 - List three uses of vinegar.", "List three uses of vinegar."),
        ("New task: Write a limerick about tea.\n\nHere is the limerick...", "Write a limerick about tea."),
        ("How do I fix a sink?\nTask 2: What is 15% of 80?", "How do I fix a sink?"),
        ('"Describe a sunrise in two sentences."', "Describe a sunrise in two sentences."),
        ("4. Name the largest ocean.", "Name the largest ocean."),
        ("   \n  ", ""),
    ],
)
def test_parse_task(raw, expected):
    assert parse_task(raw) == expected


FILTERS = PromptFilters(min_words=3, max_words=12, max_similarity=0.7)
EXISTING = [words("How do I boil an egg?"), words("Write a haiku about autumn leaves.")]


@pytest.mark.parametrize(
    "task, reason",
    [
        ("", "empty"),
        ("Hi there", "too_short"),
        ("one two three four five six seven eight nine ten eleven twelve thirteen", "too_long"),
        ("- Explain what a leap year is.", "bad_start"),
        ("Draw a picture of a cat for me.", "unsupported_media"),
        ("Summarise the attached file in one line.", "unsupported_media"),
        ("how do i boil an egg", "duplicate"),
        ("How do I boil an egg quickly?", "near_duplicate"),  # LCS 6 of 7 and 6: F1 = 12/13 > 0.7
        ("Explain why the sky looks blue.", None),
    ],
)
def test_reject_reasons(task, reason):
    assert reject_reason(task, EXISTING, FILTERS) == reason


def test_mapping_is_not_media():
    # Whole-word match: "mapping" and "profile" must not trip the 'map' / 'file' filters.
    assert reject_reason("Explain what a mapping in Python is.", [], FILTERS) is None
    assert reject_reason("Write a short profile of a chef.", [], FILTERS) is None


def test_few_shot_prompt_mixes_human_and_model_demos():
    human = [f"human task {i}" for i in range(10)]
    model = ["model task A", "model task B", "model task C"]
    text = few_shot_prompt(human, model, random.Random(0), num_human=6, num_model=2)
    lines = text.splitlines()
    demos = [line for line in lines if line.startswith("Task ") and ": " in line]
    assert len(demos) == 8
    assert sum("human task" in d for d in demos) == 6 and sum("model task" in d for d in demos) == 2
    assert [d.split(":")[0] for d in demos] == [f"Task {i}" for i in range(1, 9)]
    assert lines[-1] == "Task 9:"
    # Fewer model-written prompts than asked (first iteration): only human demos.
    text = few_shot_prompt(human, [], random.Random(0), num_human=6, num_model=2)
    assert text.splitlines()[-1] == "Task 7:"
    # Same rng seed, same prompt.
    assert few_shot_prompt(human, model, random.Random(5), 6, 2) == few_shot_prompt(human, model, random.Random(5), 6, 2)
