"""oasst1 builders: IFT/EFT/split on the real shared file, hand-made tables, EFT modes, bad input."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from srl.data.oasst import Message, embedded_seed_source, first_turns, load_local, message_from_row, rank_score, split_trees
from srl.data.records import EFTExample, RankedPrompt, RecordError
from srl.judging.eft import balance_scores, eft_paper, eft_ranked
from srl.judging.templates import JudgeTemplate, load_judge_template
from srl.training.sft_data import BuildSettings, build

SHARED = SHARED_DATA
OASST_FILE = SHARED / "oasst1" / "en_validation.jsonl"


def _require_shared() -> Path:
    if not OASST_FILE.is_file():
        pytest.skip(f"shared oasst1 data not found at {OASST_FILE}")
    return OASST_FILE


# --------------------------------------------------------------------------- independent reference


def _usable(r: dict) -> bool:
    return not r["deleted"] and not r["synthetic"] and r["review_result"] is True


class RawIndex:
    """Plain-Python view of the raw oasst1 rows, written independently of srl.data.oasst."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.children: dict[str, list[dict]] = collections.defaultdict(list)
        for r in rows:
            if r["parent_id"] is not None:
                self.children[r["parent_id"]].append(r)
        self.first_turns = [
            r for r in rows if r["parent_id"] is None and r["role"] == "prompter" and r["lang"] == "en" and _usable(r)
        ]
        self.by_tree = {r["message_tree_id"]: r for r in self.first_turns}

    def ranked_usable(self, root: dict) -> list[dict]:
        kids = [c for c in self.children[root["message_id"]] if c["role"] == "assistant" and c["rank"] is not None and _usable(c)]
        return sorted(kids, key=lambda c: c["rank"])

    def rank0(self, root: dict) -> dict | None:
        best = [c for c in self.ranked_usable(root) if c["rank"] == 0]
        return best[0] if best else None

    def groups(self) -> list[dict]:
        return [r for r in self.first_turns if len(self.ranked_usable(r)) >= 2]


@pytest.fixture(scope="module")
def raw_rows() -> list[dict]:
    path = _require_shared()
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="module")
def raw(raw_rows) -> RawIndex:
    return RawIndex(raw_rows)


@pytest.fixture(scope="module")
def messages() -> list[Message]:
    return load_local(_require_shared())


@pytest.fixture(scope="module")
def template() -> JudgeTemplate:
    return load_judge_template()


@pytest.fixture(scope="module")
def built(messages, template):
    return build(messages, BuildSettings(), template)


# --------------------------------------------------------------------------- real shared file


def test_readme_counts_on_shared_file(raw):
    # Independent count (RawIndex above) agrees with the shared data README / brief:
    # 188 usable English root prompts; 2 of them lack a usable rank-0 reply; 186 have >= 2 usable ranked replies.
    assert len(raw.first_turns) == 188
    assert sum(raw.rank0(r) is not None for r in raw.first_turns) == 186
    assert len(raw.groups()) == 186


def test_builder_counts_match_independent_count(raw, built):
    n_ift = sum(raw.rank0(r) is not None for r in raw.first_turns)
    assert len(built.ift_train) + len(built.ift_heldout) == n_ift == 186
    assert built.counts["first_turn_prompts"] == len(raw.first_turns) == 188
    assert len(built.ift_train) + len(built.ift_heldout) + built.counts["ift_skipped_no_usable_rank0"] + built.counts[
        "ift_heldout_skipped_no_usable_rank0"
    ] == 188
    assert built.counts["ranked_groups_train"] + built.counts["ranked_groups_heldout"] == len(raw.groups()) == 186


def test_eft_count_is_sum_of_train_group_sizes(raw, built):
    heldout = set(built.heldout_tree_ids)
    train_groups = [r for r in raw.groups() if r["message_tree_id"] not in heldout]
    expected = sum(len(raw.ranked_usable(r)) for r in train_groups)
    assert len(built.eft_train) == expected
    assert built.counts["eft_train"] == expected
    # one EFT example per (group, reply): group sizes per tree match too
    per_tree = collections.Counter(e.tree_id for e in built.eft_train)
    assert per_tree == {r["message_tree_id"]: len(raw.ranked_usable(r)) for r in train_groups}


def test_ift_response_is_rank0_reply(raw, built):
    for ex in built.ift_train + built.ift_heldout:
        root = raw.by_tree[ex.tree_id]
        best = raw.rank0(root)
        assert best is not None
        assert ex.prompt == root["text"]
        assert ex.response == best["text"]
        assert ex.message_id == best["message_id"]


def test_ranked_groups_match_raw(raw, built):
    for g in built.ranked_heldout:
        root = raw.by_tree[g.tree_id]
        replies = raw.ranked_usable(root)
        assert g.prompt == root["text"] and g.message_id == root["message_id"]
        assert g.replies == tuple(c["text"] for c in replies)
        assert g.ranks == tuple(c["rank"] for c in replies)
        assert list(g.ranks) == sorted(g.ranks)


def test_split_is_disjoint_and_sized(raw, built):
    trees = {r["message_tree_id"] for r in raw.first_turns}
    heldout = set(built.heldout_tree_ids)
    train = {e.tree_id for e in built.ift_train} | {e.tree_id for e in built.eft_train}
    held_seen = {e.tree_id for e in built.ift_heldout} | {g.tree_id for g in built.ranked_heldout}
    assert not train & heldout
    assert not train & held_seen
    assert heldout <= trees
    # 188 first-turn trees (the other 3 trees of the file have no usable English root):
    # round(0.2 * 188) = round(37.6) = 38
    assert len(trees) == 188
    assert len(heldout) == round(0.2 * len(trees)) == 38
    assert built.counts["trees_heldout"] == 38 and built.counts["trees_train"] == 150
    assert built.heldout_tree_ids == sorted(built.heldout_tree_ids)
    # every held-out tree that has an IFT example or a ranked group appears in the held-out files,
    # and nothing else does
    expected_seen = {t for t in heldout if raw.rank0(raw.by_tree[t]) is not None or len(raw.ranked_usable(raw.by_tree[t])) >= 2}
    assert held_seen == expected_seen


def test_split_same_seed_same_split_other_seed_differs(messages, template, built):
    again = build(list(reversed(messages)), BuildSettings(), template)  # input order must not matter
    assert again.heldout_tree_ids == built.heldout_tree_ids
    assert sorted(e.message_id for e in again.ift_train) == sorted(e.message_id for e in built.ift_train)
    other = build(messages, BuildSettings(seed=1), template)
    assert len(other.heldout_tree_ids) == len(built.heldout_tree_ids) == 38
    assert other.heldout_tree_ids != built.heldout_tree_ids


def test_split_trees_unit():
    ids = [f"t{i:02d}" for i in range(10)]
    train, held = split_trees(ids, 0.3, seed=7)
    assert len(held) == 3 and len(train) == 7 and not train & held and train | held == set(ids)
    # duplicates and order do not change the split
    assert split_trees(list(reversed(ids)) + ids, 0.3, seed=7) == (train, held)
    assert split_trees(ids, 0.0, seed=7) == (set(ids), set())
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError):
            split_trees(ids, bad, seed=0)


# --------------------------------------------------------------------------- hand-made tables


def row(mid: str, parent: str | None, tree: str, role: str = "assistant", **over) -> dict:
    r = {
        "message_id": mid,
        "parent_id": parent,
        "message_tree_id": tree,
        "role": role,
        "text": f"text of {mid}",
        "lang": "en",
        "rank": None,
        "review_result": True,
        "deleted": False,
        "synthetic": False,
    }
    r.update(over)
    return r


def root(mid: str, **over) -> dict:
    return row(mid, None, mid, role="prompter", **over)


def _msgs(rows: list[dict]) -> list[Message]:
    return [message_from_row(r, f"table:{i + 1}") for i, r in enumerate(rows)]


def hand_table() -> list[dict]:
    return [
        # P1: one usable rank-0 reply, unusable ranked siblings of every kind, an unranked reply,
        # and a second turn below A0 that must not count as a first turn
        root("P1"),
        row("A0", "P1", "P1", rank=0),
        row("A1", "P1", "P1", rank=1, deleted=True),
        row("A2", "P1", "P1", rank=2, synthetic=True),
        row("A3", "P1", "P1", rank=3, review_result=False),
        row("A4", "P1", "P1", rank=4, review_result=None),
        row("A5", "P1", "P1", rank=5),
        row("A6", "P1", "P1", rank=None),
        row("Q2", "A0", "P1", role="prompter"),
        row("B0", "Q2", "P1", rank=0),
        row("B1", "Q2", "P1", rank=1),
        # roots that are skipped
        root("PDE", lang="de"),
        row("PDE-a", "PDE", "PDE", rank=0, lang="de"),
        row("PDE-b", "PDE", "PDE", rank=1, lang="de"),
        root("PDEL", deleted=True),
        row("PDEL-a", "PDEL", "PDEL", rank=0),
        row("PDEL-b", "PDEL", "PDEL", rank=1),
        root("PSYN", synthetic=True),
        root("PREJ", review_result=False),
        root("PNONE", review_result=None),
        row("ROOTA", None, "ROOTA", role="assistant"),
        # P8: ranks with a gap, children listed worst first with ids that sort the other way
        root("P8"),
        row("z-first-id", "P8", "P8", rank=2),
        row("a-last-id", "P8", "P8", rank=0),
        # P9: rank 0 deleted, so no IFT example, but still a ranked group (1, 2)
        root("P9"),
        row("C0", "P9", "P9", rank=0, deleted=True),
        row("C2", "P9", "P9", rank=2),
        row("C1", "P9", "P9", rank=1),
    ]


def test_first_turns_skip_unusable_and_non_first(template):
    counts = collections.Counter()
    turns = first_turns(_msgs(hand_table()), "en", counts)
    # only P1, P8, P9 survive, in input order
    assert [t.prompt.message_id for t in turns] == ["P1", "P8", "P9"]
    by = {t.prompt.message_id: t for t in turns}
    # P1: A1 deleted, A2 synthetic, A3 failed review, A4 no review, A6 unranked -> A0, A5
    assert [r.message_id for r in by["P1"].replies] == ["A0", "A5"]
    # P8: ranks (2, 0) in the input come out as (0, 2)
    assert [(r.message_id, r.rank) for r in by["P8"].replies] == [("a-last-id", 0), ("z-first-id", 2)]
    assert [r.rank for r in by["P9"].replies] == [1, 2]
    # roots: P1, PDE, PDEL, PSYN, PREJ, PNONE, ROOTA, P8, P9 = 9;
    # unusable = PDEL, PSYN, PREJ, PNONE, ROOTA (not a prompter) = 5; other language = PDE
    assert counts["roots"] == 9
    assert counts["roots_unusable"] == 5
    assert counts["roots_other_language"] == 1
    # ranked but unusable among kept roots: A1..A4 (P1) + C0 (P9) = 5
    assert counts["replies_ranked_skipped_unusable"] == 5
    assert counts["messages"] == len(hand_table()) == 28


def test_build_on_hand_table(template):
    res = build(_msgs(hand_table()), BuildSettings(heldout_fraction=0.0), template)
    assert res.heldout_tree_ids == [] and res.ift_heldout == [] and res.ranked_heldout == []
    # IFT: P1 -> A0, P8 -> a-last-id (rank 0), P9 has no usable rank 0
    assert [(e.tree_id, e.message_id, e.response) for e in res.ift_train] == [
        ("P1", "A0", "text of A0"),
        ("P8", "a-last-id", "text of a-last-id"),
    ]
    assert res.counts["ift_skipped_no_usable_rank0"] == 1
    # groups of 2 each -> scores (5, 1) per group, 6 EFT examples
    assert len(res.eft_train) == 6
    assert [(e.tree_id, e.human_rank, e.score) for e in res.eft_train] == [
        ("P1", 0, 5), ("P1", 5, 1),
        ("P8", 0, 5), ("P8", 2, 1),
        ("P9", 1, 5), ("P9", 2, 1),
    ]
    assert all(e.num_siblings == 2 and e.mode == "ranked" for e in res.eft_train)
    # the second-turn replies B0/B1 never show up
    assert not any("B0" in e.response or "B1" in e.response for e in res.eft_train)


def test_build_writes_all_files(tmp_path, template):
    res = build(_msgs(hand_table()), BuildSettings(heldout_fraction=0.4, seed=3), template)
    res.write(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(res.FILES)
    assert json.loads((tmp_path / "heldout_tree_ids.json").read_text()) == res.heldout_tree_ids
    # 3 first-turn trees: round(0.4 * 3) = round(1.2) = 1 held out
    assert len(res.heldout_tree_ids) == 1


def test_duplicate_message_ids_rejected():
    rows = [root("P"), row("X", "P", "P", rank=0), row("X", "P", "P", rank=1)]
    with pytest.raises(RecordError, match="table:3: field .message_id. .X. repeats the one at table:2"):
        first_turns(_msgs(rows))


def test_build_bad_mode(template):
    msgs = _msgs(hand_table())
    with pytest.raises(ValueError, match="judge"):
        build(msgs, BuildSettings(eft_mode="paper"), template)
    with pytest.raises(ValueError, match="unknown EFT mode"):
        build(msgs, BuildSettings(eft_mode="nope"), template)


# --------------------------------------------------------------------------- rank_score / EFT ranked


@pytest.mark.parametrize(
    "n, expected",
    [
        (2, [5, 1]),  # 1 + 4*1/1 = 5, 1 + 0 = 1
        (3, [5, 3, 1]),  # 1 + 4*2/2 = 5, 1 + 4*1/2 = 3, 1
        (4, [5, 4, 2, 1]),  # 5, 1 + 8/3 = 3.67 -> 4, 1 + 4/3 = 2.33 -> 2, 1
        (5, [5, 4, 3, 2, 1]),  # 1 + 4*k/4 = 1 + k
    ],
)
def test_rank_score(n, expected):
    assert [rank_score(i, n) for i in range(n)] == expected


@pytest.mark.parametrize("position, n", [(0, 1), (0, 0), (-1, 3), (3, 3), (5, 2)])
def test_rank_score_bad_args(position, n):
    with pytest.raises(ValueError):
        rank_score(position, n)


def test_eft_ranked_targets_and_prompts(template):
    g = RankedPrompt(
        prompt="  How tall is Everest?\n",
        replies=("About 8,849 metres.", "Very tall.", "I don't know."),
        ranks=(0, 1, 3),
        tree_id="T",
        message_id="M",
    )
    out = eft_ranked([g], template)
    assert [e.score for e in out] == [5, 3, 1]
    assert [e.human_rank for e in out] == [0, 1, 3]
    for e, reply in zip(out, g.replies):
        assert e.target.endswith(f"\nScore: {e.score}")
        assert e.target.startswith(e.justification)
        assert "How tall is Everest?" in e.judge_prompt and reply in e.judge_prompt
        assert e.judge_prompt == template.render(g.prompt, reply)
        assert e.response == reply and e.num_siblings == 3 and e.mode == "ranked"
    # score 5 -> nothing missing; lower scores name the first criterion missed
    assert "but it" not in out[0].justification
    assert out[1].justification.endswith("but it is not a clear, direct, well-organised answer.")
    assert out[2].justification.endswith("but it does not cover a substantial part of it.")


def test_eft_ranked_needs_0_to_5_template():
    t = JudgeTemplate("{prompt} {response}", min_score=1, max_score=10)
    g = RankedPrompt("p", ("a", "b"), (0, 1), "t", "m")
    with pytest.raises(ValueError):
        eft_ranked([g], t)


# --------------------------------------------------------------------------- EFT paper mode


def _group(tag: str, n: int) -> RankedPrompt:
    return RankedPrompt(
        prompt=f"prompt {tag}",
        replies=tuple(f"<<{tag}-r{i}>>" for i in range(n)),
        ranks=tuple(range(n)),
        tree_id=f"tree-{tag}",
        message_id=f"msg-{tag}",
    )


def _reply_key(judge_prompt: str) -> str:
    start = judge_prompt.index("<<") + 2
    return judge_prompt[start : judge_prompt.index(">>", start)]


def make_judge(table: dict[str, str], calls: list | None = None):
    """A fake judge: looks up the reply marker inside the judge prompt."""

    def judge(prompts: list[str], seeds: list[int]) -> list[str]:
        assert len(prompts) == len(seeds)
        if calls is not None:
            calls.append(list(prompts))
        return [table[_reply_key(p)] for p in prompts]

    return judge


def J(score) -> str:
    return f"Good.\nScore: {score}"


def test_eft_paper_keeps_agreeing_drops_others(template):
    groups = [_group("ok", 3), _group("tie", 2), _group("inv", 2), _group("bad", 2)]
    table = {
        "ok-r0": J(5), "ok-r1": J(3), "ok-r2": J(1),
        "tie-r0": J(4), "tie-r1": J(4),
        "inv-r0": J(2), "inv-r1": J(4),
        "bad-r0": J(4), "bad-r1": "I cannot decide.",
    }
    counts = collections.Counter()
    out = eft_paper(groups, template, make_judge(table), seed=0, attempts=1, counts=counts)
    # only "ok" survives: 3 examples with scores 5, 3, 1 (one of each, so balancing removes nothing)
    assert [(e.tree_id, e.score) for e in out] == [("tree-ok", 5), ("tree-ok", 3), ("tree-ok", 1)]
    assert counts["eft_paper_groups_kept"] == 1
    assert counts["eft_paper_groups_dropped"] == 3
    assert counts["eft_paper_disagrees_with_humans"] == 2  # tie + inversion
    assert counts["eft_paper_unparsable"] == 1
    e = out[1]
    assert e.mode == "paper" and e.target == "Good.\nScore: 3" and e.justification == "Good."
    assert e.response == "<<ok-r1>>" and e.human_rank == 1 and e.num_siblings == 3
    assert e.judge_prompt == template.render("prompt ok", "<<ok-r1>>")


def test_eft_paper_second_attempt_rescues(template):
    groups = [_group("g", 2), _group("h", 2)]
    first = {"g-r0": J(5), "g-r1": J(2), "h-r0": J(3), "h-r1": J(3)}  # h ties on the first attempt
    second = {"g-r0": J(0), "g-r1": J(0), "h-r0": J(4), "h-r1": J(1)}
    calls: list = []

    def judge(prompts, seeds):
        calls.append(list(prompts))
        return [(first if len(calls) == 1 else second)[_reply_key(p)] for p in prompts]

    counts = collections.Counter()
    out = eft_paper(groups, template, judge, seed=0, attempts=2, counts=counts)
    # attempt 1 judges 4 replies; attempt 2 only re-judges h's 2 replies
    assert [len(c) for c in calls] == [4, 2]
    assert all("<<h-" in p for p in calls[1])
    # g keeps its first-attempt scores (5, 2); h its second-attempt scores (4, 1)
    assert sorted((e.tree_id, e.score) for e in out) == [("tree-g", 2), ("tree-g", 5), ("tree-h", 1), ("tree-h", 4)]
    assert counts["eft_paper_groups_kept"] == 2 and counts["eft_paper_groups_dropped"] == 0
    assert counts["eft_paper_disagrees_with_humans"] == 1

    # with a single attempt h is dropped
    calls.clear()
    counts1 = collections.Counter()
    out1 = eft_paper(groups, template, judge, seed=0, attempts=1, counts=counts1)
    assert {e.tree_id for e in out1} == {"tree-g"} and counts1["eft_paper_groups_dropped"] == 1


def test_eft_paper_seeds_differ_per_attempt_and_reply(template):
    groups = [_group("s", 2)]
    seen: list[list[int]] = []

    def judge(prompts, seeds):
        seen.append(list(seeds))
        return ["no score"] * len(prompts)

    eft_paper(groups, template, judge, seed=0, attempts=3)
    flat = [s for batch in seen for s in batch]
    assert len(seen) == 3 and len(flat) == 6 and len(set(flat)) == 6
    # the same run seed gives the same judge seeds
    seen_first = seen[:]
    seen.clear()
    eft_paper(groups, template, judge, seed=0, attempts=3)
    assert seen == seen_first


def _ex(score: int, i: int) -> EFTExample:
    return EFTExample("p", f"r{i}", "j", score, "jp", f"j\nScore: {score}", f"t{i}", f"m{i}", 0, 2, "paper")


def test_balance_scores_downsamples_most_frequent():
    scores = [4, 4, 4, 4, 4, 2, 2, 5]
    examples = [_ex(s, i) for i, s in enumerate(scores)]
    counts = collections.Counter()
    out = balance_scores(examples, seed=0, counts=counts)
    # most frequent 4 (x5) cut to the second most frequent's count, 2 (x2): 2 + 2 + 1 = 5 kept
    assert collections.Counter(e.score for e in out) == {4: 2, 2: 2, 5: 1}
    assert counts["eft_downsampled"] == 3
    # kept examples stay in input order
    idx = [examples.index(e) for e in out]
    assert idx == sorted(idx)
    # deterministic for a seed; other seeds pick other subsets
    assert balance_scores(examples, seed=0, counts=collections.Counter()) == out
    picks = {tuple(e.message_id for e in balance_scores(examples, seed=s, counts=collections.Counter())) for s in range(20)}
    assert len(picks) > 1


def test_balance_scores_no_change_cases():
    single = [_ex(3, i) for i in range(4)]
    assert balance_scores(single, 0, collections.Counter()) == single
    tied = [_ex(5, 0), _ex(1, 1), _ex(5, 2), _ex(1, 3)]  # top and second both 2 -> nothing removed
    c = collections.Counter()
    assert balance_scores(tied, 0, c) == tied and c["eft_downsampled"] == 0


def test_eft_paper_balances_output(template):
    # three agreeing groups: scores (5,1), (5,1), (5,3) -> 5 x3, 1 x2, 3 x1 -> 5s cut to 2
    groups = [_group("a", 2), _group("b", 2), _group("c", 2)]
    table = {"a-r0": J(5), "a-r1": J(1), "b-r0": J(5), "b-r1": J(1), "c-r0": J(5), "c-r1": J(3)}
    counts = collections.Counter()
    out = eft_paper(groups, template, make_judge(table), seed=0, attempts=1, counts=counts)
    assert collections.Counter(e.score for e in out) == {5: 2, 1: 2, 3: 1}
    assert counts["eft_downsampled"] == 1


def test_build_paper_mode_uses_judge(template):
    # hand table, no held-out: groups P1 (A0, A5), P8, P9; a judge that always prefers the better rank
    def judge(prompts, seeds):
        return ["Fine.\nScore: 4" if i % 2 == 0 else "Meh.\nScore: 2" for i in range(len(prompts))]

    res = build(_msgs(hand_table()), BuildSettings(heldout_fraction=0.0, eft_mode="paper"), template, judge_fn=judge)
    # 3 groups of 2, all agree: scores 4,2 x3 -> tie 3/3 -> nothing down-sampled
    assert len(res.eft_train) == 6
    assert [e.score for e in res.eft_train] == [4, 2, 4, 2, 4, 2]
    assert res.counts["eft_paper_groups_kept"] == 3


# --------------------------------------------------------------------------- malformed input


def _copy_rows(raw_rows, path: Path, n: int = 12, replace: dict[int, str] | None = None) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in raw_rows[:n]]
    for lineno, text in (replace or {}).items():
        lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_broken_json_line_5(tmp_path, raw_rows):
    p = _copy_rows(raw_rows, tmp_path / "oasst.jsonl", replace={5: '{"message_id": "x", "text": "unterminated'})
    with pytest.raises(RecordError) as exc:
        load_local(p)
    assert f"{p}:5:" in str(exc.value)


def test_missing_rank(tmp_path, raw_rows):
    bad = dict(raw_rows[2])
    del bad["rank"]
    p = _copy_rows(raw_rows, tmp_path / "oasst.jsonl", replace={3: json.dumps(bad)})
    with pytest.raises(RecordError) as exc:
        load_local(p)
    assert f"{p}:3:" in str(exc.value) and "'rank'" in str(exc.value)


@pytest.mark.parametrize(
    "field, value",
    [("deleted", "false"), ("deleted", 0), ("deleted", None), ("rank", True), ("rank", 1.0), ("review_result", 1), ("text", None)],
)
def test_wrong_types(tmp_path, raw_rows, field, value):
    bad = dict(raw_rows[1])
    bad[field] = value
    p = _copy_rows(raw_rows, tmp_path / "oasst.jsonl", replace={2: json.dumps(bad)})
    with pytest.raises(RecordError) as exc:
        load_local(p)
    assert f"{p}:2:" in str(exc.value) and f"'{field}'" in str(exc.value)


@pytest.mark.parametrize("role", ["user", "system", "Assistant"])
def test_bad_role(tmp_path, raw_rows, role):
    bad = dict(raw_rows[0], role=role)
    p = _copy_rows(raw_rows, tmp_path / "oasst.jsonl", replace={1: json.dumps(bad)})
    with pytest.raises(RecordError) as exc:
        load_local(p)
    assert f"{p}:1:" in str(exc.value) and "role" in str(exc.value) and role in str(exc.value)


def test_message_from_row_not_a_dict():
    with pytest.raises(RecordError, match="here"):
        message_from_row(["a", "b"], "here")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_local(tmp_path / "nope.jsonl")


def test_json_list_file(tmp_path, raw_rows):
    p = tmp_path / "oasst.json"
    p.write_text(json.dumps(raw_rows[:30]), encoding="utf-8")
    j = tmp_path / "oasst.jsonl"
    _copy_rows(raw_rows, j, n=30)
    assert load_local(p) == load_local(j)
    p.write_text(json.dumps({"not": "a list"}), encoding="utf-8")
    with pytest.raises(RecordError):
        load_local(p)


# --------------------------------------------------------------------------- Parquet


def test_parquet_matches_jsonl(tmp_path, raw_rows):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = raw_rows[:200]
    # the nested columns are not read by the builders; drop them to keep the Arrow schema simple
    flat = [{k: v for k, v in r.items() if k not in ("detoxify", "emojis", "labels")} for r in rows]
    pq_path = tmp_path / "oasst.parquet"
    pq.write_table(pa.Table.from_pylist(flat), pq_path)
    jl_path = _copy_rows(raw_rows, tmp_path / "oasst.jsonl", n=200)
    from_pq = load_local(pq_path)
    from_jl = load_local(jl_path)
    assert len(from_pq) == 200
    assert from_pq == from_jl
    # some ranked and some null ranks, so the nullable int column was exercised
    assert any(m.rank is None for m in from_pq) and any(m.rank == 0 for m in from_pq)


# --------------------------------------------------------------------------- embedded seed data


def test_embedded_seed_data(template):
    source = embedded_seed_source()
    assert Path(source.path).is_file()
    msgs = source.load()
    turns = first_turns(msgs, "en")
    assert len(turns) >= 40
    assert len({t.prompt.tree_id for t in turns}) == len(turns)
    for t in turns:
        assert t.prompt.lang == "en" and t.prompt.usable
        assert 2 <= len(t.replies) <= 4, t.prompt.message_id
        assert all(r.usable and r.role == "assistant" for r in t.replies)
        ranks = [r.rank for r in t.replies]
        assert ranks == sorted(set(ranks)), t.prompt.message_id  # strictly increasing
        texts = [r.text.strip() for r in t.replies]
        assert len(set(texts)) == len(texts), t.prompt.message_id
        assert all(texts)
    prompts = [t.prompt.text for t in turns]
    assert len(set(prompts)) == len(prompts)
    res = build(msgs, BuildSettings(), template)
    # IFT for every turn whose best usable reply has rank 0; one EFT example per train reply
    heldout = set(res.heldout_tree_ids)
    assert len(res.ift_train) + len(res.ift_heldout) == sum(t.replies[0].rank == 0 for t in turns)
    assert len(res.eft_train) == sum(len(t.replies) for t in turns if t.prompt.tree_id not in heldout)
    assert len(heldout) == round(0.2 * len(turns))


# --------------------------------------------------------------------------- bad input (issue 14)


def _write_table(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_not_utf8_names_file_line_and_offset(tmp_path):
    rows = hand_table()[:4]
    p = _write_table(tmp_path / "oasst.jsonl", rows)
    lines = p.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"text of A1", b"text of A\xe91")  # cp1252 'é' on line 3
    p.write_bytes(b"\n".join(lines))
    offset = len(lines[0]) + len(lines[1]) + 2 + lines[2].index(b"\xe9")
    with pytest.raises(RecordError) as exc:
        load_local(p)
    assert str(exc.value).startswith(f"{p}:3: not UTF-8") and f"byte offset {offset} " in str(exc.value)
    j = tmp_path / "oasst.json"
    j.write_bytes(b"[\n" + json.dumps(rows[0]).encode() + b",\n" + lines[2] + b"\n]\n")
    with pytest.raises(RecordError, match=rf"{j}:3: not UTF-8"):
        load_local(j)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_source_is_an_error(tmp_path, content):
    p = tmp_path / "oasst.jsonl"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(RecordError, match=rf"{p}: no rows \(an empty oasst1 source\)"):
        load_local(p)
    j = tmp_path / "oasst.json"
    j.write_text("[]", encoding="utf-8")
    with pytest.raises(RecordError, match=rf"{j}: no rows"):
        load_local(j)


def test_source_without_usable_rows_is_an_error(tmp_path):
    rows = [dict(r, deleted=True) if i % 2 else dict(r, review_result=None) for i, r in enumerate(hand_table())]
    p = _write_table(tmp_path / "oasst.jsonl", rows)
    with pytest.raises(RecordError, match=rf"{p}: no usable rows \(all 28 messages are deleted, synthetic or did not pass review\)"):
        load_local(p)


def test_no_usable_first_turn_in_language_is_an_error(tmp_path, template):
    # usable rows, but every first-turn prompt is German: nothing to build, said before any model work
    p = _write_table(tmp_path / "oasst.jsonl", [root("D", lang="de"), row("D0", "D", "D", rank=0, lang="de")])
    with pytest.raises(RecordError) as exc:
        build(load_local(p), BuildSettings(), template)
    assert "no usable first-turn prompt in language 'en'" in str(exc.value) and f"{p}:1" in str(exc.value)
    assert "'roots_other_language': 1" in str(exc.value)


@pytest.mark.parametrize("rank", [-1, -7])
def test_negative_rank_names_file_line_field(tmp_path, rank):
    p = _write_table(tmp_path / "oasst.jsonl", [root("P"), row("A", "P", "P", rank=0), row("B", "P", "P", rank=rank)])
    with pytest.raises(RecordError) as exc:
        load_local(p)
    assert str(exc.value).startswith(f"{p}:3: field 'rank' is {rank}")


def test_tied_ranks_skip_the_prompt_counted_and_logged(tmp_path, template, caplog):
    rows = hand_table() + [
        root("PT"),  # line 29: rank 0 shared by two usable replies -> no IFT best reply, no order
        row("T0", "PT", "PT", rank=0), row("T0b", "PT", "PT", rank=0), row("T1", "PT", "PT", rank=1),
        root("PU"),  # a tie at rank 1 between a usable and a deleted reply orders the usable ones: kept
        row("U0", "PU", "PU", rank=0), row("U1", "PU", "PU", rank=1), row("U1d", "PU", "PU", rank=1, deleted=True),
    ]
    p = _write_table(tmp_path / "oasst.jsonl", rows)
    with caplog.at_level("WARNING", logger="srl.data.oasst"):
        res = build(load_local(p), BuildSettings(heldout_fraction=0.0), template)
    assert res.counts["prompts_skipped_tied_ranks"] == 1
    assert "PT" not in {e.tree_id for e in res.ift_train} | {e.tree_id for e in res.eft_train}
    assert [e.message_id for e in res.ift_train if e.tree_id == "PU"] == ["U0"]
    assert [e.human_rank for e in res.eft_train if e.tree_id == "PU"] == [0, 1]
    assert res.counts["first_turn_prompts"] == 4  # P1, P8, P9, PU
    assert any("share a rank" in r.getMessage() and f"{p}:29" in r.getMessage() for r in caplog.records)


def test_empty_texts_are_counted_skips(tmp_path, template, caplog):
    rows = hand_table() + [
        root("PE"),  # line 29; its rank-0 reply (line 30) is blank: no IFT example, one reply left: no group
        row("E0", "PE", "PE", rank=0, text=" \n\t"), row("E1", "PE", "PE", rank=1),
        root("PB", text="   "),  # line 32: a blank prompt gives nothing
        row("G0", "PB", "PB", rank=0), row("G1", "PB", "PB", rank=1),
        root("PF"),  # a blank reply in the middle of a group: the group keeps the other two
        row("F0", "PF", "PF", rank=0), row("F1", "PF", "PF", rank=1, text=""), row("F2", "PF", "PF", rank=2),
    ]
    p = _write_table(tmp_path / "oasst.jsonl", rows)
    with caplog.at_level("WARNING", logger="srl.data.oasst"):
        res = build(load_local(p), BuildSettings(heldout_fraction=0.0), template)
    assert res.counts["replies_skipped_empty_text"] == 2 and res.counts["roots_empty_text"] == 1
    assert all(e.response.strip() and e.prompt.strip() for e in res.ift_train + res.eft_train)
    assert not {"PE", "PB"} & {e.tree_id for e in res.ift_train + res.eft_train}
    assert [e.human_rank for e in res.eft_train if e.tree_id == "PF"] == [0, 2]
    assert res.counts["ift_skipped_no_usable_rank0"] == 2  # P9 (deleted rank 0) and PE (blank rank 0)
    message = next(r.getMessage() for r in caplog.records if "empty" in r.getMessage())
    assert "skipped 3 empty" in message and f"{p}:30" in message and f"{p}:32" in message
