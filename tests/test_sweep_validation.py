"""Typed validation of sweep files and ``run --config`` files (issue 15, item 3) and property tests of their reader.

Every bad file must stop ``lifebench sweep``, ``lifebench status`` and ``lifebench run --config`` before anything
runs: exit 2, one line on stderr naming the file, the key path and the type expected, no traceback, nothing
written. Before the schema, ``executor = 5`` and ``[executor] slurm = 5`` raised TypeError, a non-UTF-8 file raised
UnicodeDecodeError, and ``store = ["r.sqlite"]`` made a store file named "['r.sqlite']".
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import tempfile
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lifebench.cli import build_parser, main
from lifebench.errors import LifebenchError
from lifebench.runner import sweep

GOOD = 'models = ["pixels"]\ntasks = ["data/a"]\nstore = "out/results.sqlite"\n'

# (case id, file contents, what the one error line must say after "FILE: " / "FILE ")
BAD: list[tuple[str, str | bytes, str]] = [
    ("not utf-8", GOOD.encode() + b'device = "\xff"\n', "is not UTF-8 text (byte 0xff at offset 78, line 4); save it as UTF-8"),
    ("not toml", GOOD + "device = cpu\nseeds = [0]\n", "is not valid TOML: Invalid value (at line 4, column 10)"),
    ("not toml at the end", GOOD + "seeds = [", "is not valid TOML: Invalid value (at the end of the file, line 4)"),
    ("key twice", GOOD + 'models = ["b"]\n', "is not valid TOML: Cannot overwrite a value (at line 4"),
    ("executor scalar", "executor = 5\n" + GOOD,
     ": executor must be a table ([executor] with keys kind, processes, slurm), got 5 (an integer)"),
    ("processes list", GOOD + "[executor]\nkind = 'local'\nprocesses = [2]\n",
     ': executor.processes must be an integer ≥ 1 or "gpus", got [2] (a list)'),
    ("processes zero", GOOD + "[executor]\nprocesses = 0\n",
     ': executor.processes must be an integer ≥ 1 or "gpus", got 0 (an integer)'),
    ("slurm scalar", GOOD + "[executor]\nslurm = 5\n", ": executor.slurm must be a table ([executor.slurm] with keys "
     "partition, gpus_per_node, cpus_per_task, mem_gb, timeout_min, array_parallelism, folder, account, qos, "
     "constraint, additional_parameters), got 5 (an integer)"),
    ("slurm wrong type", GOOD + "[executor.slurm]\ntimeout_min = '4h'\n",
     ": executor.slurm.timeout_min must be an integer ≥ 1, got '4h' (a string)"),
    ("slurm unknown key", GOOD + "[executor.slurm]\ntime = 60\n",
     ": unknown key 'executor.slurm.time'; did you mean 'executor.slurm.timeout_min'? (valid keys in "
     "[executor.slurm]: "),
    ("sbatch option table", GOOD + "[executor.slurm]\nadditional_parameters = { nodelist = ['a'] }\n",
     ": executor.slurm.additional_parameters.nodelist must be a string, number or boolean, got ['a'] (a list)"),
    ("store list", GOOD.replace('"out/results.sqlite"', '["r.sqlite"]'),
     ": store must be a path (a non-empty string), got ['r.sqlite'] (a list)"),
    ("store empty", GOOD.replace('"out/results.sqlite"', '""'), ": store must be a path (a non-empty string), got ''"),
    ("store date", GOOD.replace('"out/results.sqlite"', "2024-01-01"),
     ": store must be a path (a non-empty string), got 2024-01-01 (a date)"),
    ("models number", GOOD.replace('["pixels"]', "5"), ": models must be a string or a list of strings, got 5 "
     "(an integer)"),
    ("models item", GOOD.replace('["pixels"]', '["pixels", 3]'), ": models[1] must be a non-empty string, got 3"),
    ("seed string", GOOD + 'seeds = [0, "1"]\n', ": seeds[1] must be an integer ≥ 0, got '1' (a string)"),
    ("seed negative", GOOD + "seeds = -1\n", ": seeds must be an integer ≥ 0 or a list of them, got -1"),
    ("batch size float", GOOD + "batch_size = 2.5\n", ": batch_size must be an integer ≥ 1, got 2.5 (a float)"),
    ("workers bool", GOOD + "workers = true\n", ": workers must be an integer ≥ 0, got True (a boolean)"),
    ("test size text", GOOD + 'test_size = "0.2"\n', ": test_size must be a number, got '0.2' (a string)"),
    ("shots text", GOOD + 'shots = "1,5"\n', ": shots must be an integer ≥ 1 or a list of them, got '1,5'"),
    ("params scalar", GOOD + "params = 5\n", ": params must be a table of protocol parameters"),
    ("params nested", GOOD + "[params]\nC = { a = 1 }\n",
     ": params.C must be a string, number, boolean or a list of them, got {'a': 1} (a table)"),
    ("force string", GOOD + 'force = "yes"\n', ": force = 'yes'; write force = true or force = false"),
    ("executor kind", GOOD + "[executor]\nkind = 'cloud'\n", ": executor.kind = 'cloud'; use inprocess, local or slurm"),
    ("nul in a name", GOOD.replace('"pixels"', '"pix\\u0000els"'), ": models[0] holds a NUL character"),
    ("unknown key", GOOD + "model = ['x']\n", ": unknown key 'model'; did you mean 'models'?"),
    ("key in the wrong table", GOOD + "[executor]\nkind = 'local'\nseeds = [0]\n",
     ": unknown key 'executor.seeds'; seeds belongs at the top level, above the first [table] header"),
    ("slurm key at top", GOOD + "partition = 'gpu'\n", ": unknown key 'partition'; partition belongs in "
     "[executor.slurm]"),
    ("slurm table at top", GOOD + "[slurm]\npartition = 'gpu'\n", ": unknown key 'slurm'; slurm belongs in "
     "[executor]"),
    ("alias and key", GOOD + "workers = 0\nloader_workers = 0\n", ": loader_workers and workers are the same setting"),
]


def _one_line_error(capsys, rc: int) -> str:
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert rc == 2, out.err
    assert len(lines) == 1 and "Traceback" not in out.err + out.out, out.err
    return lines[0]


@pytest.mark.parametrize("command", ["sweep", "status", "run --config"])
@pytest.mark.parametrize(("body", "expected"), [pytest.param(b, e, id=i) for i, b, e in BAD])
def test_a_bad_file_is_one_line_naming_key_and_type_and_nothing_is_written(tmp_path, capsys, monkeypatch, command,
                                                                          body, expected):
    monkeypatch.chdir(tmp_path)
    for var, sub in (("LIFEBENCH_CACHE", "cache"), ("LIFEBENCH_STORE", "store.sqlite"), ("LIFEBENCH_DATA", "data")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    path = tmp_path / "sweep.toml"
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    argv = {"sweep": ["sweep", str(path), "--dry-run"], "status": ["status", str(path)],
            "run --config": ["run", "--config", str(path), "--dry-run"]}[command]
    line = _one_line_error(capsys, main(argv))
    what = "config file" if command == "run --config" else "sweep file"
    assert line.startswith(f"lifebench: error: {what} {path}") and expected in line, line
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.toml"]  # no store, no cache, no "['r.sqlite']"


def test_the_messages_of_the_issue_word_for_word(tmp_path):
    """The three tracebacks and the silent acceptance of issue 15, as the one line each now gives."""
    path = tmp_path / "s.toml"
    for body, message in [
        ("executor = 5\n", "executor must be a table ([executor] with keys kind, processes, slurm), got 5 (an integer)"),
        ("[executor]\nprocesses = [2]\n", 'executor.processes must be an integer ≥ 1 or "gpus", got [2] (a list)'),
        ('store = ["r.sqlite"]\n', "store must be a path (a non-empty string), got ['r.sqlite'] (a list)"),
    ]:
        path.write_text(body)
        with pytest.raises(LifebenchError) as err:
            sweep.load(path)
        assert str(err.value) == f"sweep file {path}: {message}"
    path.write_bytes(b"store = 'r.sqlite'\n# caf\xe9\n")  # Latin-1, as an old editor saves it
    with pytest.raises(LifebenchError, match=r"is not UTF-8 text \(byte 0xe9 at offset \d+, line 2\); save it as UTF-8"):
        sweep.load(path)


def _docs_examples() -> list[str]:
    text = (Path(__file__).parents[1] / "docs" / "sweeps.md").read_text()
    return re.findall(r"```toml\n(.*?)```", text, flags=re.S)


def test_every_key_of_a_valid_file_still_reads_and_parses_as_run_options(tmp_path):
    """A file with every key: the same run arguments as before the schema, and argparse accepts them."""
    (tmp_path / "data" / "a").mkdir(parents=True)
    path = tmp_path / "sweep.toml"
    path.write_text("\ufeff" + '''models = "pixels"
tasks = ["data/a", "herbarium19"]
suites = ["ecology"]
protocols = ["logreg", "knn"]
seeds = [0, 1]
n_train = 100
shots = [1, 5]
params = { C = 0.5, class_weight = "balanced", hidden = [256, 128], fit_intercept = false }
text_type = "sci"
templates = "t.txt"
data_root = "/data/lifebench"
store = "out/r.sqlite"
cache_dir = "~/cache"
device = "cpu"
batch_size = 8
loader_workers = 0
test_size = 0.5
split_seed = 3
resamples = 2000
bootstrap_seed = 7
endpoint = "http://localhost:8000/v1"
skip_bad_images = true
force = false
decode = "reference"
answer_scoring = "evllm"
[executor]
kind = "local"
processes = "gpus"
[executor.slurm]
partition = "gpu"
gpus_per_node = 1
cpus_per_task = 16
mem_gb = 64
timeout_min = 240
array_parallelism = 8
folder = "logs/%j"
account = "bio"
qos = "normal"
constraint = "a100"
additional_parameters = { nodelist = "node7", exclusive = true }
''', encoding="utf-8")  # with a byte-order mark, as some Windows editors save
    spec = sweep.load(path)
    assert spec.executor["processes"] == "gpus" and spec.executor["slurm"]["additional_parameters"]["nodelist"] == "node7"
    args = build_parser().parse_args(["run", *spec.run_argv])
    assert args.model == ["pixels"] and args.task == [str(tmp_path / "data" / "a"), "herbarium19"]
    assert args.seed == [0, 1] and args.n_train == [100] and args.shots == "1,5" and args.workers == 0
    assert args.param == ["C=0.5", "class_weight=balanced", "hidden=[256, 128]", "fit_intercept=false"]
    assert args.store == tmp_path / "out" / "r.sqlite" and args.cache_dir == Path("~/cache").expanduser()
    assert (args.skip_bad_images, args.force, args.test_size, args.decode) == (True, False, 0.5, "reference")
    for example in _docs_examples():  # the examples in docs/sweeps.md are valid sweep files
        path.write_text(example if "store" in example else 'store = "r.sqlite"\n' + example)
        sweep.load(path)
    assert len(_docs_examples()) >= 2


# ------------------------------------------------------------------------------------------- property tests

KEYS = sorted({*sweep.SCHEMA, *sweep.EXECUTOR_SCHEMA, *sweep.SLURM_SCHEMA, *sweep.KEY_ALIASES, "executor.slurm"})
KEY = st.one_of(st.sampled_from(KEYS), st.text(max_size=6))
SCALAR = st.one_of(st.booleans(), st.integers(), st.floats(), st.text(max_size=8), st.datetimes(), st.dates(),
                   st.sampled_from(["gpus", "local", "slurm", "inprocess", "pixels", "cpu", "r.sqlite", "", "-x", "~"]))
VALUE = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEY, inner, max_size=3),
                     max_leaves=6)
POOL = [0, 1, 2, 5, -1, 2.5, True, False, "gpus", "local", "inprocess", "slurm", "cpu", "x", "", "r.sqlite"]


def _fitting(spec) -> st.SearchStrategy:
    """Values that mostly fit ``spec``, sometimes not: reaches deep into the schema, not only its first check."""
    if isinstance(spec, dict):
        return st.fixed_dictionaries({}, optional={k: _fitting(v) for k, v in spec.items()})
    if isinstance(spec, sweep.OneOrList):
        return _fitting(spec.item) | st.lists(_fitting(spec.item), max_size=3)
    if isinstance(spec, sweep.TableOf):
        return st.dictionaries(st.text(min_size=1, max_size=5), _fitting(spec.value), max_size=3)
    fits = st.sampled_from([v for v in POOL if spec.ok(v)] or [None])
    return st.one_of(fits, fits, fits, fits, fits, fits, st.sampled_from(POOL), VALUE).filter(lambda v: v is not None)


NEAR_VALID = st.fixed_dictionaries({"store": st.just("r.sqlite"), "models": st.just(["pixels"])},
                                   optional={k: _fitting(v) for k, v in sweep.SCHEMA.items()
                                             if k not in ("store", "models")})
DOCS = st.one_of(st.dictionaries(KEY, VALUE, max_size=5), NEAR_VALID, NEAR_VALID)


def _toml(value) -> str:
    """A TOML rendering of a value (tomli_w is not a dependency): JSON strings are TOML basic strings once DEL is
    escaped too; tables are inline."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return value.isoformat()


def _read_or_refuse(body: bytes) -> sweep.SweepSpec | None:
    """The property: the reader gives a sweep whose arguments argparse takes or refuses (exit 2), or one
    LifebenchError of one line that names the file; never anything else."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.toml"
        path.write_bytes(body)
        try:
            spec = sweep.load(path)
        except LifebenchError as e:
            assert str(e).startswith(f"sweep file {path}") and len(str(e).splitlines()) == 1, str(e)
            return None
        assert all(isinstance(a, str) and "\x00" not in a for a in spec.run_argv)
        with contextlib.redirect_stderr(io.StringIO()):
            try:
                build_parser().parse_args(["run", *spec.run_argv, "--dry-run"])
            except SystemExit as e:
                assert e.code == 2
        return spec


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCS)
def test_any_toml_document_is_a_valid_sweep_or_one_lifebench_error(doc):
    text = "\n".join(f"{_toml(k)} = {_toml(v)}" for k, v in doc.items()) + "\n"
    tomllib.loads(text)  # the rendering is TOML: the reader's validation is what is under test
    spec = _read_or_refuse(text.encode())
    event("accepted" if spec is not None else "refused")
    if spec is not None:  # accepted: every key was one of the schema's, with its type
        assert set(doc) <= set(sweep.SCHEMA) | set(sweep.KEY_ALIASES)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.tuples(st.integers(0, len(GOOD)), st.binary(min_size=1, max_size=8)).map(
                     lambda t: GOOD.encode()[:t[0]] + t[1] + GOOD.encode()[t[0]:])))
def test_any_bytes_are_a_valid_sweep_or_one_lifebench_error(body):
    _read_or_refuse(body)
