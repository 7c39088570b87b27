"""Generative vision-language models on multiple-choice questions (lifebench.vlm).

An OpenAI-compatible chat server runs on 127.0.0.1 in the test (real HTTP). On cue it answers, refuses a key,
rate-limits, fails, stalls past the timeout or sends malformed bodies. Its answers follow a fixed policy of the image
bytes, so each stored prediction can be recomputed here. The local Hugging Face back-end is tested with a tiny
random-init LLaVA built offline.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score

from lifebench.cli import main
from lifebench.errors import ConfigError, DataError
from lifebench.store import Store
from lifebench.tasks import resolve_task
from lifebench.tasks.base import UNKNOWN
from lifebench.tasks.microscopy import ubench
from lifebench.vlm import Request, build_prompt, parse_answer
from lifebench.vlm.openai import OpenAICompatible

OPTIONS = ["neutrophil", "basophil", "eosinophil", "none of the above"]

# Replies seen from real chat models to a lettered question, and the option each names (None: names none).
REPLIES = [
    ("B", 1), ("B)", 1), ("(B) basophil", 1), ("The answer is B", 1), ("b.", 1), ("basophil", 1), ("Basophil.", 1),
    ("**B**", 1), ("B basophil", 1), ("  b  ", 1), ("[A]", 0), ("A.", 0), ("Answer: (C)", 2), ("Answer: C", 2),
    ("The correct answer is (D) none of the above.", 3), ("none of the above", 3), ("Option B is correct", 1),
    ("I think it's C", 2), ("It is B.", 1), ("B.\nExplanation: the bilobed nucleus and dark granules.", 1),
    ("C) eosinophil", 2), ("The image shows an eosinophil.", 2), ("A basophil", 1), ("answer is a basophil", 1),
    ("The cell is a basophil, not a neutrophil", None), ("neutrophil or basophil", None), ("E", None),
    ("I cannot determine this from the image.", None), ("I'm not sure", None), ("", None), (None, None),
    ("**Answer:** B", 1), ("My final answer: d", 3), ("'C'", 2),
]


@pytest.mark.parametrize(("reply", "expected"), REPLIES)
def test_parse_answer_on_real_world_replies(reply, expected):
    assert parse_answer(reply, OPTIONS) == expected


def test_parse_answer_respects_the_number_of_options_and_option_text_overlaps():
    assert parse_answer("C", ["yes", "no"]) is None
    assert parse_answer("light microscopy", ["light microscopy", "fluorescence microscopy"]) == 0
    # "microscopy" alone is part of both; the longer matched option wins over its own substring
    assert parse_answer("It is fluorescence microscopy.", ["microscopy", "fluorescence microscopy"]) == 1


# ------------------------------------------------- answer scoring: strict vs μ-Bench's check_prediction (defect 6)

ORGANELLES = ["nucleus", "mitochondria", "golgi apparatus", "none of the above"]
GOLD = 1  # "B) mitochondria"
ECHO = "A) nucleus\nB) mitochondria\nC) golgi apparatus\nD) none of the above"

# reply -> (strict parse: the option it names, None = unparsed; eVLLM's check_prediction for gold B). The same table
# is in docs/microscopy.md ("Answer scoring").
SCORING = [
    ("B", 1, True),
    ("(B)", 1, False),
    ("Answer: B", 1, False),
    ("The answer is B", 1, False),
    ("B. mitochondria", 1, True),
    ("B) mitochondria", 1, True),
    ("mitochondria", 1, False),
    ("Mitochondria.", 1, False),
    ("b", 1, False),
    ("B.", 1, True),
    ("B!", 1, True),
    (" B", 1, False),
    ("**B**", 1, False),
    ("B, because of the cristae", 1, True),
    ("C", 2, False),
    ("B or C", None, True),
    ("Either A or D", None, False),
    ("A, B", None, False),
    (ECHO, None, True),
    ("B or C, most likely B", None, True),
    ("The organelle is mitochondria, not the nucleus", None, False),
    ("I cannot determine the organelle from this image.", None, False),
    ("I'm sorry, I can't help with that.", None, False),
    ("", None, False),
    (None, None, False),
]


def _add_alphabet(options: list[str], answer: str) -> tuple[list[str], str]:
    """eVLLM ``src/evlm/inference/utils.py`` L87-92 @ c6108d4 (``add_alphabet``), re-implemented: eVLLM is not a
    package that can be installed."""
    idx_to_option = {0: "A) ", 1: "B) ", 2: "C) ", 3: "D) ", 4: "E) ", 5: "F) ", 6: "G) ", 7: "H) "}
    index = options.index(answer)
    lettered = [idx_to_option[i] + o for i, o in enumerate(options)]
    return lettered, idx_to_option[index] + answer


def _check_prediction(row: dict) -> bool:
    """eVLLM ``src/evlm/eval/eval_utils.py`` L328-338 @ c6108d4 (``check_prediction``), re-implemented."""
    abcd = ["A", "B", "C", "D", "E", "F", "G"]
    correct_letter = abcd[row["correct_idx"]]
    return row["correct_answer"] in row["prediction"] or correct_letter in row["prediction"][0:1]


@pytest.mark.parametrize(("reply", "strict", "evllm"), SCORING)
def test_strict_parse_and_evllm_scoring_of_realistic_replies(reply, strict, evllm):
    from lifebench.vlm.choice import score_reply

    assert parse_answer(reply, ORGANELLES) == strict
    assert score_reply(reply, ORGANELLES, GOLD, "strict") == (strict, strict == GOLD)
    # the row eVLLM's generative_inference.py L64-66 writes: correct_answer from add_alphabet, correct_idx the position
    _, correct_answer = _add_alphabet(list(ORGANELLES), ORGANELLES[GOLD])
    row = {"correct_idx": ORGANELLES.index(ORGANELLES[GOLD]), "correct_answer": correct_answer,
           "prediction": "" if reply is None else reply}
    assert _check_prediction(row) == evllm
    assert score_reply(reply, ORGANELLES, GOLD, "evllm") == (strict, evllm)


def test_the_two_scorings_differ_on_hedges_and_on_option_text_without_a_letter():
    differ = [r for r, strict, evllm in SCORING if (strict == GOLD) != evllm]
    assert len(SCORING) >= 20 and len(differ) == 11
    assert {"B or C", ECHO, "B or C, most likely B", "mitochondria", "(B)", "Answer: B"} <= set(differ)
    for hedge in ("B or C", "Either A or D", "A, B", ECHO):  # each named in the issue as credited before the fix
        assert parse_answer(hedge, ORGANELLES) is None
    with pytest.raises(ConfigError, match="unknown answer scoring 'loose'; use strict .* or evllm"):
        from lifebench.vlm.choice import score_reply

        score_reply("B", ORGANELLES, GOLD, "loose")


def test_build_prompt_is_the_mubench_format_and_rejects_a_question_without_options():
    assert build_prompt("What stain is used?", ["H&E", "Giemsa"]) == (
        "Answer with a single letter, no extra details.\nQuestion:What stain is used?\nA) H&E\nB) Giemsa")
    with pytest.raises(DataError, match="has no options"):
        build_prompt("What stain is used?", [])
    with pytest.raises(DataError, match="at most 26 can be lettered"):
        build_prompt("Which?", [str(i) for i in range(27)])


# ------------------------------------------------------------------------------------ the fake chat server

def policy(prompt: str, image: bytes) -> str:
    """The server's reply: an option chosen by the image bytes, written in one of five styles (one unparseable)."""
    options = re.findall(r"^([A-Z])\) (.*)$", prompt, flags=re.M)
    h = hashlib.sha256(image + prompt.encode()).digest()
    letter, text = options[h[0] % len(options)]
    return [letter, f"{letter}) {text}", f"The answer is {letter}", text, "I am not sure."][h[1] % 5]


class ChatState:
    def __init__(self) -> None:
        self.key: str | None = None
        self.rate_limit_after: int | None = None
        self.fail_first: list[int] = []
        self.retry_after: str | None = None
        self.delay = 0.0
        self.malformed: bytes | None = None
        self.posts: list[dict] = []
        self.auth: list[str | None] = []
        self.answered = 0
        self.lock = threading.Lock()


class ChatHandler(http.server.BaseHTTPRequestHandler):
    state: ChatState

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        s = self.state
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with s.lock:
            s.posts.append(body)
            s.auth.append(self.headers.get("Authorization"))
            fail = s.fail_first.pop(0) if s.fail_first else None
            limited = s.rate_limit_after is not None and s.answered >= s.rate_limit_after
        if self.path != "/v1/chat/completions":
            return self._send(404, b'{"error": {"message": "no such route"}}')
        if s.key is not None and self.headers.get("Authorization") != f"Bearer {s.key}":
            return self._send(401, b'{"error": {"message": "Incorrect API key provided"}}')
        if fail or limited:
            code = fail or 429
            extra = {"Retry-After": s.retry_after} if s.retry_after is not None else {}
            return self._send(code, json.dumps({"error": {"message": f"status {code}"}}).encode(), extra)
        if s.delay:
            time.sleep(s.delay)
        if s.malformed is not None:
            return self._send(200, s.malformed)
        content = body["messages"][0]["content"]
        prompt = next(c["text"] for c in content if c["type"] == "text")
        url = next(c["image_url"]["url"] for c in content if c["type"] == "image_url")
        image = base64.b64decode(url.split(",", 1)[1])
        with s.lock:
            s.answered += 1
        reply = {"id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": policy(prompt, image)},
                              "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 100, "completion_tokens": 2, "total_tokens": 102}}
        return self._send(200, json.dumps(reply).encode())


pytestmark = pytest.mark.usefixtures("fresh_logging")


@pytest.fixture
def chat(monkeypatch):
    """A chat server on 127.0.0.1; yields (base URL ending in /v1, its state)."""
    state = ChatState()
    handler = type("Handler", (ChatHandler,), {"state": state})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    for name in ("LIFEBENCH_ENDPOINT", "OPENAI_BASE_URL", "LIFEBENCH_API_KEY", "OPENAI_API_KEY", "LIFEBENCH_VLM_PRICE",
                 "LIFEBENCH_VLM_CONCURRENCY", "LIFEBENCH_VLM_RETRIES", "LIFEBENCH_VLM_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LIFEBENCH_VLM_BACKOFF", "0.001")
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", state
    httpd.shutdown()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """The μ-Bench fixture unpacked as lifebench download leaves it."""
    root = tmp_path_factory.mktemp("vlm-data")
    folder = root / "ubench"
    shards = []
    for key, data in ubench.make_fixture().items():
        p = folder / ".downloads" / Path(key).name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        shards.append(p)
    ubench._unpack(folder, shards, show_progress=False)
    return root


def _requests(data_root: Path, task: str = "ubench-fine") -> tuple:
    t = resolve_task(task, data_root=data_root)
    qs = [t.questions[i] for i in t.test_idx]
    return t, [Request(str(t.examples.paths[i]), build_prompt(q.text, q.options)) for i, q in zip(t.test_idx, qs, strict=True)]


def _expected(task, i: int) -> str:
    q = task.questions[i]
    reply = policy(build_prompt(q.text, q.options), Path(task.examples.paths[i]).read_bytes())
    pick = parse_answer(reply, q.options)
    return UNKNOWN if pick is None else q.options[pick]


# ------------------------------------------------------------------------------------ end to end

def test_generative_run_on_the_suite_scores_stores_and_a_rerun_sends_nothing(chat, data_root, tmp_path, capsys,
                                                                              monkeypatch):
    url, state = chat
    state.key = "sk-test"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("LIFEBENCH_VLM_PRICE", "2.5,10")
    store_path, cache = tmp_path / "results.sqlite", tmp_path / "cache"
    argv = ["run", "--suite", "microscopy", "--data-root", str(data_root), "--model", "openai-compatible:fake-vlm",
            "--endpoint", url, "--store", str(store_path), "--cache-dir", str(cache)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    tasks = {name: resolve_task(name, data_root=data_root) for name in ubench.TASKS}
    n_questions = sum(len(t.test_idx) for t in tasks.values())
    assert n_questions == 12 * 5 + 9
    assert len(state.posts) == n_questions and set(state.auth) == {"Bearer sk-test"}
    assert {p["model"] for p in state.posts} == {"fake-vlm"}
    assert all(p["temperature"] == 0 and p["max_tokens"] == 64 for p in state.posts)
    for name, task in tasks.items():
        assert re.search(rf"{name} \(accuracy, n={len(task.test_idx)}\)", out)
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", out)

    with Store(store_path) as store:
        for name, task in tasks.items():
            (exp,) = store.experiments(task=name)
            preds = store.predictions(exp.id)
            by_id = dict(zip(preds.ids.tolist(), preds.y_pred.tolist(), strict=True))
            want = {task.examples.ids[i]: _expected(task, i) for i in task.test_idx}
            assert by_id == want
            n_unknown = sum(v == UNKNOWN for v in want.values())
            assert exp.fit_info["n_unparsed"] == n_unknown == int(preds.extra["unparsed"].sum())
            assert exp.fit_info["unparsed_rate"] == pytest.approx(n_unknown / len(want))
            req = exp.fit_info["requests"]
            assert (req["sent"], req["cached"], req["prompt_tokens"], req["completion_tokens"]) == (
                len(want), 0, 100 * len(want), 2 * len(want))
            assert req["cost_usd"] == pytest.approx(len(want) * (100 * 2.5 + 2 * 10) / 1e6)
            assert exp.fit_info["settings"]["endpoint"] == url and exp.protocol == "zero-shot"
    assert any(v["n_unparsed"] for v in [e.fit_info for e in Store(store_path).experiments()])

    from lifebench.report import build_leaderboard

    board = build_leaderboard(store_path, tasks=["ubench-modality"])
    (cell,) = board.cells
    with Store(store_path) as store:
        (exp,) = store.experiments(task="ubench-modality")
        p = store.predictions(exp.id)
    assert cell.point == pytest.approx(accuracy_score(p.y_true, p.y_pred))
    assert cell.low <= cell.point <= cell.high

    state.posts.clear()
    assert main(argv) == 0  # done experiments are skipped
    assert "6 already in the store" in capsys.readouterr().out and state.posts == []
    assert main([*argv, "--force"]) == 0  # recomputed, but every reply comes from the response cache
    assert state.posts == []
    with Store(store_path) as store:
        (exp,) = store.experiments(task="ubench-fine")
        assert exp.fit_info["requests"]["sent"] == 0 and exp.fit_info["requests"]["cached"] == 12
    assert len(list((cache / "vlm-responses").rglob("*.json"))) == n_questions

    # The reply length decides the answers: changing it is a new experiment, asked anew without --force.
    monkeypatch.setenv("LIFEBENCH_VLM_MAX_TOKENS", "16")
    assert main(argv) == 0
    assert "6 experiments run, 0 already in the store" in capsys.readouterr().out
    assert len(state.posts) == n_questions and {p["max_tokens"] for p in state.posts} == {16}
    with Store(store_path) as store:
        stored = store.experiments(task="ubench-fine")
        assert sorted(e.config["generation"]["max_tokens"] for e in stored) == [16, 64]
        assert len({e.config_hash for e in stored}) == 2


def test_answer_scoring_evllm_reproduces_check_prediction_and_is_its_own_experiment(chat, data_root, tmp_path,
                                                                                     capsys, monkeypatch):
    url, _ = chat
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    store_path = tmp_path / "results.sqlite"
    argv = ["run", "--task", "ubench-modality", "--data-root", str(data_root), "--model", "openai-compatible:fake-vlm",
            "--endpoint", url, "--store", str(store_path), "--cache-dir", str(tmp_path / "cache"), "--no-report"]
    assert main(argv) == 0
    assert main([*argv, "--answer-scoring", "evllm"]) == 0
    assert "1 experiments run, 0 already in the store" in capsys.readouterr().out
    task = resolve_task("ubench-modality", data_root=data_root)
    with Store(store_path) as store:
        exps = {e.config["generation"]["answer_scoring"]: e for e in store.experiments(task="ubench-modality")}
        preds = {k: store.predictions(e.id) for k, e in exps.items()}
    assert set(exps) == {"strict", "evllm"} and exps["evllm"].fit_info["answer_scoring"] == "evllm"
    n_differ = 0
    for i in task.test_idx:
        q, gold = task.questions[i], task.examples.labels[i]
        reply = policy(build_prompt(q.text, q.options), Path(task.examples.paths[i]).read_bytes())
        _, lettered_gold = _add_alphabet(list(q.options), gold)
        ok = _check_prediction({"correct_idx": list(q.options).index(gold), "correct_answer": lettered_gold,
                                "prediction": reply})
        at = {k: list(p.ids).index(task.examples.ids[i]) for k, p in preds.items()}
        assert (preds["evllm"].y_pred[at["evllm"]] == gold) == ok
        assert preds["strict"].y_pred[at["strict"]] == _expected(task, i)
        n_differ += ok != (preds["strict"].y_pred[at["strict"]] == gold)
    assert n_differ > 0 and exps["evllm"].fit_info["n_scored_unlike_strict"] == n_differ


def test_transient_errors_are_retried_and_counted(chat, data_root, tmp_path, monkeypatch):
    url, state = chat
    monkeypatch.setenv("LIFEBENCH_VLM_CONCURRENCY", "1")
    state.fail_first = [429, 500, 503]
    state.retry_after = "0"
    task, reqs = _requests(data_root)
    replies, tally = OpenAICompatible("m", id="openai-compatible:m").answer(reqs[:2], cache_dir=tmp_path,
                                                                             endpoint=url, show_progress=False)
    assert len(state.posts) == 5 and tally.retries == 3 and tally.sent == 2
    assert [r.text for r in replies] == [policy(r.prompt, Path(r.image).read_bytes()) for r in reqs[:2]]


def test_a_429_storm_stops_after_bounded_retries_and_keeps_the_answers_received(chat, data_root, tmp_path,
                                                                                 monkeypatch):
    url, state = chat
    monkeypatch.setenv("LIFEBENCH_VLM_CONCURRENCY", "1")
    monkeypatch.setenv("LIFEBENCH_VLM_RETRIES", "2")
    state.rate_limit_after = 5
    task, reqs = _requests(data_root)
    model = OpenAICompatible("m", id="openai-compatible:m")
    with pytest.raises(DataError, match=r"HTTP 429 \(rate limited\): status 429 after 3 tries.*5 of 12 answers were "
                                        r"received and are kept in the cache"):
        model.answer(reqs, cache_dir=tmp_path, endpoint=url, show_progress=False)
    assert len(state.posts) == 5 + 3  # five answered, then one request tried three times, then nothing more
    assert len(list((tmp_path / "vlm-responses").rglob("*.json"))) == 5
    state.rate_limit_after, state.posts = None, []
    replies, tally = model.answer(reqs, cache_dir=tmp_path, endpoint=url, show_progress=False)
    assert (tally.sent, tally.cached, len(state.posts), len(replies)) == (7, 5, 7, 12)


def test_an_invalid_key_is_one_clear_error_without_retries(chat, data_root, tmp_path, monkeypatch, capsys):
    url, state = chat
    state.key = "sk-right"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    monkeypatch.setenv("LIFEBENCH_VLM_CONCURRENCY", "1")
    _, reqs = _requests(data_root)
    with pytest.raises(ConfigError, match=r"refused the API key \(HTTP 401: Incorrect API key provided\); set "
                                          "LIFEBENCH_API_KEY or OPENAI_API_KEY"):
        OpenAICompatible("m", id="openai-compatible:m").answer(reqs, cache_dir=tmp_path, endpoint=url,
                                                                show_progress=False)
    assert len(state.posts) == 1
    code = main(["-q", "run", "--task", "ubench-stain", "--data-root", str(data_root), "--model",
                 "openai-compatible:m", "--endpoint", url, "--store", str(tmp_path / "r.sqlite"), "--cache-dir",
                 str(tmp_path / "c")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "refused the API key (HTTP 401" in err[0]


def test_an_unreachable_endpoint_fails_after_bounded_retries(data_root, tmp_path, monkeypatch, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("LIFEBENCH_VLM_RETRIES", "1")
    monkeypatch.setenv("LIFEBENCH_VLM_BACKOFF", "0.001")
    code = main(["-q", "run", "--task", "ubench-fine", "--data-root", str(data_root), "--model",
                 "openai-compatible:m", "--endpoint", f"http://127.0.0.1:{port}/v1", "--store",
                 str(tmp_path / "r.sqlite"), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert re.search(rf"cannot reach http://127.0.0.1:{port}/v1 \(.*refused.*\) after 2 tries", err[0], re.I)
    assert "0 of 12 answers were received" in err[0]


def test_a_stalled_server_times_out(chat, data_root, tmp_path, monkeypatch):
    url, state = chat
    state.delay = 1.0
    monkeypatch.setenv("LIFEBENCH_VLM_TIMEOUT", "0.2")
    monkeypatch.setenv("LIFEBENCH_VLM_RETRIES", "1")
    monkeypatch.setenv("LIFEBENCH_VLM_CONCURRENCY", "1")
    _, reqs = _requests(data_root)
    with pytest.raises(DataError, match=r"no reply within 0.2 s \(timeout\) after 2 tries"):
        OpenAICompatible("m", id="openai-compatible:m").answer(reqs[:1], cache_dir=tmp_path, endpoint=url,
                                                                show_progress=False)


@pytest.mark.parametrize(("body", "what"), [(b"<html>Bad gateway</html>", "not JSON"), (b'{"choices": []}',
                                                                                          "no choices"),
                                            (b'{"choices": [{"index": 0}]}', "choices\\[0\\] has no message")])
def test_a_malformed_response_is_a_clear_error(chat, data_root, tmp_path, body, what):
    url, state = chat
    state.malformed = body
    _, reqs = _requests(data_root)
    with pytest.raises(DataError, match=rf"sent a malformed chat completion \({what}.*OpenAI-compatible /v1"):
        OpenAICompatible("m", id="openai-compatible:m").answer(reqs[:1], cache_dir=tmp_path, endpoint=url,
                                                                show_progress=False)
    assert not (tmp_path / "vlm-responses").exists()  # nothing cached from a bad reply


def test_settings_errors_fail_before_anything_runs(data_root, tmp_path, monkeypatch, capsys):
    for name in ("LIFEBENCH_ENDPOINT", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    code = main(["-q", "run", "--task", "ubench-fine", "--data-root", str(data_root), "--model",
                 "openai-compatible:gpt-4o", "--store", str(tmp_path / "r.sqlite")])
    assert code == 2 and "need an endpoint: pass --endpoint URL" in capsys.readouterr().err
    monkeypatch.setenv("LIFEBENCH_VLM_CONCURRENCY", "many")
    with pytest.raises(ConfigError, match=r"\$LIFEBENCH_VLM_CONCURRENCY='many' is not a whole number"):
        OpenAICompatible("m", id="openai-compatible:m").answer([], endpoint="http://x/v1")
    with pytest.raises(ConfigError, match="is not an http"):
        OpenAICompatible("m", id="openai-compatible:m").answer([], endpoint="localhost:8000")


def test_a_generative_model_refuses_a_task_without_questions(chat, image_folder, tmp_path, capsys):
    url, _ = chat
    code = main(["-q", "run", "--task", str(image_folder), "--model", "openai-compatible:m", "--endpoint", url,
                 "--store", str(tmp_path / "r.sqlite"), "--protocol", "zero-shot"])
    assert code == 2 and "has no multiple-choice questions" in capsys.readouterr().err


def test_a_question_with_no_options_is_refused(data_root):
    task = resolve_task("ubench-fine", data_root=data_root)
    import dataclasses

    from lifebench.tasks.base import Question

    broken = task.questions.copy()
    broken[task.test_idx[0]] = Question("Which?", ())
    with pytest.raises(DataError, match=rf"the question of example {task.examples.ids[task.test_idx[0]]} has no "
                                        "options"):
        dataclasses.replace(task, questions=broken)


# ------------------------------------------------------------------------------------ local Hugging Face model

@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> Path:
    """A random-init LLaVA (1-layer CLIP vision tower, 1-layer Llama) with a word-level tokenizer, built offline."""
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<image>": 3, "<pad>": 4}
    for w in "USER ASSISTANT A B C D E F G H ) ( . : ? , none of the above Answer with a single letter".split():
        vocab.setdefault(w, len(vocab))
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = tr.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                      pad_token="<pad>", additional_special_tokens=["<image>"])
    template = ("{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}{% if c['type'] == "
                "'image' %}<image> {% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
                "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    processor = tr.LlavaProcessor(
        image_processor=tr.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        tokenizer=fast, patch_size=8, vision_feature_select_strategy="default", chat_template=template,
        num_additional_image_tokens=1)
    config = tr.LlavaConfig(
        vision_config=tr.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, image_size=16, patch_size=8),
        text_config=tr.LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512),
        image_token_index=3, vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llava")
    tr.LlavaForConditionalGeneration(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_local_hf_model_answers_like_a_direct_generate_and_caches(tiny_llava, data_root, tmp_path, monkeypatch):
    import torch
    import transformers as tr
    from PIL import Image

    from lifebench.backbones import load_backbone

    monkeypatch.setenv("LIFEBENCH_VLM_MAX_TOKENS", "3")
    model = load_backbone(f"hf-vlm:{tiny_llava}")
    assert model.id == f"hf-vlm:{tiny_llava}" and model.generative
    _, reqs = _requests(data_root)
    replies, tally = model.answer(reqs[:3], cache_dir=tmp_path, show_progress=False)
    assert (tally.sent, tally.cached) == (3, 0)
    proc = tr.AutoProcessor.from_pretrained(tiny_llava)
    ref = tr.AutoModelForImageTextToText.from_pretrained(tiny_llava).eval()
    for req, reply in zip(reqs[:3], replies, strict=True):
        text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                                          "text": req.prompt}]}],
                                        add_generation_prompt=True)
        inputs = proc(images=[Image.open(req.image).convert("RGB")], text=[text], return_tensors="pt")
        with torch.inference_mode():
            out = ref.generate(**inputs, max_new_tokens=3, do_sample=False)
        want = proc.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()
        assert reply.text == want and reply.completion_tokens == out.shape[1] - inputs["input_ids"].shape[1]
    again, tally = model.answer(reqs[:3], cache_dir=tmp_path, show_progress=False)
    assert [r.text for r in again] == [r.text for r in replies] and (tally.sent, tally.cached) == (0, 3)


def test_local_hf_model_runs_a_task_end_to_end(tiny_llava, data_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LIFEBENCH_VLM_MAX_TOKENS", "2")
    store_path = tmp_path / "r.sqlite"
    assert main(["run", "--task", "ubench-modality", "--data-root", str(data_root), "--model",
                 f"hf-vlm:{tiny_llava}", "--store", str(store_path), "--cache-dir", str(tmp_path / "c"),
                 "--device", "cpu"]) == 0
    assert "ubench-modality (accuracy, n=12)" in capsys.readouterr().out
    with Store(store_path) as store:
        (exp,) = store.experiments()
        preds = store.predictions(exp.id)
    assert len(preds) == 12 and exp.fit_info["n_questions"] == 12
    task = resolve_task("ubench-modality", data_root=data_root)
    allowed = {task.examples.ids[i]: set(task.questions[i].options) | {UNKNOWN} for i in task.test_idx}
    assert all(p in allowed[i] for i, p in zip(preds.ids, preds.y_pred, strict=True))
    assert exp.fit_info["n_unparsed"] == int(np.sum(preds.y_pred == UNKNOWN))
