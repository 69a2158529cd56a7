"""Hostile but fair inputs and faults (issue #23), kept as regression tests.

Real parts throughout: the ``minio`` client against moto's S3 server on 127.0.0.1 (a separate
``moto_server`` process where it must be frozen with SIGSTOP), real subprocesses killed with SIGKILL, real
MLflow on SQLite. Each group names the numbered failure of the issue it guards.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from minio import Minio

from polydistill import config as C
from polydistill.buffer import MANIFEST, DatasetError, DatasetWriter, ExperienceDataset, Manifest
from polydistill.envs import action_meanings, observation_spec
from polydistill.store import LocalStore, StoreConfigError, StoreError, open_store

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "polydistill.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "POLYDISTILL_PROGRESS": "off", **(env or {})},
        timeout=timeout,
    )


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    """The error of a refused command: non-zero exit, no traceback, one error line (click's usage error
    'Error: ...' or a PolydistillError's 'polydistill: error: ...')."""
    assert r.returncode != 0, r.stdout[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith(("Error:", "polydistill: error:"))]
    assert len(errors) == 1, r.stderr[-3000:]
    return errors[0]


def _rows(n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` synthetic but well-formed steps (random frames, episodes of 50 steps)."""
    rng = np.random.default_rng(seed)
    first = np.zeros(n, dtype=bool)
    first[::50] = True
    return {
        "frames": rng.integers(0, 255, size=(n, 84, 84), dtype=np.uint8),
        "actions": rng.integers(0, 4, size=n),
        "rewards": rng.random(n).astype(np.float32),
        "terminated": np.roll(first, -1),
        "truncated": np.zeros(n, dtype=bool),
        "first": first,
        "valid": np.ones(n, dtype=bool),
    }


def _manifest() -> Manifest:
    return Manifest(
        game="Breakout",
        num_actions=4,
        action_meanings=action_meanings("Breakout"),
        observation=observation_spec(C.EnvConfig()),
        codec="raw",
    )


def _write(uri: str, seed: int, n: int = 120, shard_steps: int = 20) -> Manifest:
    w = DatasetWriter(open_store(uri, create_bucket=True), _manifest(), shard_steps=shard_steps)
    w.add(**_rows(n, seed))
    return w.close()


# ----------------------------------------------------------------------------------------------------------
# 1. Names are data, never paths


HOSTILE_NAMES = st.one_of(
    st.sampled_from(
        [
            "/etc/passwd",
            "../outside.npz",
            "../../victim.txt",
            "a/../../x",
            "./x",
            "a//b",
            "a\\..\\x",
            "..\\x",
            "x\x00y",
            "C:\\x",
            "\u202e/..",
            "\ud800",
            "a" * 300,
            "b" * 240,
            "/".join(["d"] * 600),
            "shard-000000.npz/..",
            "v-0123456789abcdef/../../x",
        ]
    ),
    st.lists(
        st.sampled_from([*"./\\a\x00\n\u00e9\u202e\U0001f600", "..", "shard-000000.npz"]), min_size=1, max_size=40
    ).map("".join),
    st.text(min_size=1, max_size=300),
)


def _outside_untouched(base: Path, root: Path, before: set[str]) -> None:
    """Nothing appeared, vanished or changed outside ``root`` under ``base``."""
    now = {str(p.relative_to(base)) for p in base.rglob("*") if root not in (p, *p.parents)}
    assert now == before, sorted(now ^ before)


def _probe_store(store, key: str, download: Path) -> None:
    """Every operation with a hostile key: refused with a StoreConfigError, or done inside the store."""
    ops = [
        lambda: store.put_bytes(key, b"x"),
        lambda: store.get_bytes(key),
        lambda: store.exists(key),
        lambda: store.size(key),
        lambda: store.get_file(key, download),
        lambda: store.delete(key),
        lambda: store.list(key),
        lambda: store.child(key),
    ]
    for op in ops:
        try:
            op()
        except StoreConfigError as e:
            assert "\n" not in str(e)
        except (FileNotFoundError, StoreError):
            pass  # not found inside the store: fine


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=HOSTILE_NAMES)
def test_hostile_keys_never_leave_a_local_store(tmp_path: Path, key: str) -> None:
    base = tmp_path / "base"
    root = base / "store" / "inner"
    root.mkdir(parents=True, exist_ok=True)
    (base / "victim.txt").write_text("precious")
    (base / "store" / "outside.npz").write_text("precious")
    before = {str(p.relative_to(base)) for p in base.rglob("*") if root not in (p, *p.parents)}
    _probe_store(LocalStore(root), key, root / "dl")
    _outside_untouched(base, root, before)
    for p in root.rglob("*"):
        assert root in p.resolve().parents or p.resolve() == root


@pytest.fixture
def s3_prefix(s3_env: str, s3_server: dict[str, str]) -> tuple[str, Minio]:
    host = s3_server["endpoint"].split("://", 1)[1]
    client = Minio(host, access_key=s3_server["access_key"], secret_key=s3_server["secret_key"], secure=False)
    return s3_env, client


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=HOSTILE_NAMES)
def test_hostile_keys_never_leave_an_s3_prefix(s3_prefix, s3_server, tmp_path: Path, key: str) -> None:
    uri, client = s3_prefix
    prefix = uri.split("/", 3)[3]
    store = open_store(uri)
    _probe_store(store, key, tmp_path / "dl")
    for obj in client.list_objects(s3_server["bucket"], recursive=True):
        name = obj.object_name
        assert name.startswith("t-"), name  # every test's objects live under its own t-<hex> prefix
        if name.startswith(prefix.split("/")[0]):
            assert name.startswith(prefix + "/"), name


def _good_manifest_dict(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "ds"
    _write(str(root), seed=0, n=60)
    return root, json.loads((root / MANIFEST).read_text())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=HOSTILE_NAMES, index=st.integers(0, 2))
def test_manifest_reader_refuses_hostile_shard_names(tmp_path_factory, name: str, index: int) -> None:
    tmp = tmp_path_factory.mktemp("m")
    root, d = _good_manifest_dict(tmp)
    d["shards"][index]["name"] = name
    (root / MANIFEST).write_text(json.dumps(d))
    with pytest.raises(DatasetError) as e:
        ExperienceDataset(str(root))
    assert f"shards[{index}].name" in str(e.value) and "\n" not in str(e.value)


def test_s3_cache_never_deletes_outside_itself(s3_env: str, tmp_path: Path) -> None:
    # Issue #23.1: a shard named like a local path made the cache delete that file when its checksum failed.
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    cache = tmp_path / "cache"
    m = _write(s3_env, seed=0, n=60)
    store = open_store(s3_env)
    d = json.loads(store.get_bytes(MANIFEST))
    for hostile in (str(victim), os.path.relpath(victim, cache / "x")):
        d["shards"][0]["name"] = hostile
        d["shards"][0]["sha256"] = "0" * 64
        d["shards"][0]["bytes"] = victim.stat().st_size  # the right size: the cache takes it as its copy
        store.put_bytes(MANIFEST, json.dumps(d).encode())
        refused = None
        try:
            ExperienceDataset(s3_env, cache_dir=cache).verify_all()
        except DatasetError as e:
            refused = str(e)
        assert victim.exists(), f"the cache deleted {victim} (shard named {hostile!r})"
        assert refused and "shards[0].name" in refused
    assert m.shards


def test_file_dataset_cannot_read_outside_its_prefix(tmp_path: Path) -> None:
    # Issue #23.1: on file://, a shard named ../outside.npz was read and verified, /etc/passwd opened.
    root, d = _good_manifest_dict(tmp_path)
    outside = tmp_path / "outside.npz"
    shard0 = root / d["shards"][0]["name"]
    outside.write_bytes(shard0.read_bytes())
    for name in ("../outside.npz", "/etc/passwd"):
        d["shards"][0]["name"] = name
        (root / MANIFEST).write_text(json.dumps(d))
        with pytest.raises(DatasetError, match="shard names are data"):
            ExperienceDataset(root.as_uri()).verify_all()


def test_file_uri_with_dot_dot_is_refused_not_collapsed(tmp_path: Path) -> None:
    # Issue #23.1: file:///a/b/../../esc was collapsed and written to (/esc).
    uri = f"file://{tmp_path}/a/b/../../esc"
    with pytest.raises(StoreConfigError, match=r"'\.\.' segment"):
        open_store(uri)
    err = _one_line_error(_cli("buffer-info", uri))
    assert "'..' segment" in err
    assert not (tmp_path / "esc").exists() and not (tmp_path / "a").exists()
    from polydistill.store import check_store_uri  # the function submit calls before sending anything

    for bad in ("s3://b/../x", "s3://bucket/a/../x", f"{tmp_path}/x/../y", "file:///a/./b"):
        with pytest.raises(StoreConfigError):
            check_store_uri(bad)
    assert check_store_uri("s3://bucket/a/b") == "s3://bucket/a/b"


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: [], "JSON object"),
        (lambda d: {**d, "shards": [{**d["shards"][0], "evil": 1}, *d["shards"][1:]]}, "shards[0].evil"),
        (lambda d: {**d, "shards": [{k: v for k, v in d["shards"][0].items() if k != "bytes"}]}, "shards[0].bytes"),
        (lambda d: {**d, "shards": [{**d["shards"][0], "bytes": "12"}, *d["shards"][1:]]}, "shards[0].bytes"),
        (lambda d: {**d, "shards": [{**d["shards"][0], "start": True}, *d["shards"][1:]]}, "shards[0].start"),
        (lambda d: {**d, "shards": "shard-000000.npz"}, "shards"),
        (lambda d: {**d, "extra": 1}, "extra"),
        (lambda d: {k: v for k, v in d.items() if k != "game"}, "game"),
        (lambda d: {**d, "num_actions": "4"}, "num_actions"),
        (lambda d: {**d, "version": "../x"}, "version"),
        (lambda d: {**d, "codec": "pickle"}, "codec"),
    ],
)
def test_malformed_manifests_give_one_line_errors(tmp_path: Path, mutate, field: str) -> None:
    # Issue #23.6: a manifest that is [] or has an extra shard key gave a traceback.
    root, d = _good_manifest_dict(tmp_path)
    (root / MANIFEST).write_text(json.dumps(mutate(d)))
    with pytest.raises(DatasetError) as e:
        ExperienceDataset(str(root))
    assert field in str(e.value) and str(root) in str(e.value) and "\n" not in str(e.value)
    err = _one_line_error(_cli("buffer-info", str(root), "--verify"))
    assert field in err


# ----------------------------------------------------------------------------------------------------------
# 2. Replacing a dataset is atomic

_EXPORTER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from polydistill import store as S
    from tests.test_hostile import _write

    def announce(name):
        real = getattr(S.{cls}, name)
        def wrapped(self, key, *args, **kwargs):
            print(name, key, flush=True)  # the parent kills us after one of these lines, at random
            return real(self, key, *args, **kwargs)
        setattr(S.{cls}, name, wrapped)

    for op in ("put_file", "put_bytes", "delete", "get_bytes", "exists"):
        announce(op)
    _write(sys.argv[1], seed=int(sys.argv[2]), n=int(sys.argv[3]))
    print("done", flush=True)
    """
)


def _export_killed_after(uri: str, cls: str, seed: int, n: int, after_lines: int, tmp: Path) -> bool:
    """Run an export in a real subprocess and SIGKILL it right after its ``after_lines``-th store call;
    returns whether it finished first."""
    script = tmp / "exporter.py"
    script.write_text(_EXPORTER.format(repo=str(REPO), cls=cls))
    proc = subprocess.Popen(
        [sys.executable, str(script), uri, str(seed), str(n)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert proc.stdout is not None
    for seen, line in enumerate(proc.stdout, start=1):
        if line.startswith("done"):
            proc.wait(timeout=60)
            return True
        if seen >= after_lines:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    return False


def _dataset_is(uri: str, expected: Manifest, cache: Path) -> bool:
    ds = ExperienceDataset(uri, cache_dir=cache)
    return ds.manifest.to_json() == expected.to_json() and not ds.verify_all()


@pytest.mark.parametrize("where", ["file", "s3"])
def test_killed_reexport_leaves_the_previous_dataset_whole(where: str, request, tmp_path: Path) -> None:
    # Issue #23.2: kill -9 during an export over an existing prefix left "no dataset".
    uri = request.getfixturevalue("s3_env") if where == "s3" else (tmp_path / "ds").as_uri()
    cls = "S3Store" if where == "s3" else "LocalStore"
    old = _write(uri, seed=0, n=120)
    new_data = Manifest.from_json(old.to_json(), uri)  # same settings, other rows: the export we kill
    seeds = [1, 2, 3, 4] if where == "file" else [1, 2, 3]
    outcomes = []
    for seed in seeds:
        # An export of 6 shards makes about 12 store calls: kill after 1..13 of them (13: it may finish).
        after = random.Random(seed).randint(1, 13)
        finished = _export_killed_after(uri, cls, seed=100 + seed, n=120, after_lines=after, tmp=tmp_path)
        ds = ExperienceDataset(uri, cache_dir=tmp_path / f"cache{seed}")
        problems = ds.verify_all()
        assert not problems, (seed, after, problems)
        is_old = ds.manifest.to_json() == old.to_json()
        outcomes.append((after, finished, is_old))
        assert is_old or finished or after >= 10, (seed, after)  # the new one only once its manifest landed
        if not is_old:
            old = ds.manifest  # the next kill must leave this one whole
    assert any(o[2] for o in outcomes), outcomes  # at least one kill landed before the switch
    assert new_data.game == "Breakout"


def test_reexporting_identical_data_changes_nothing(s3_env: str) -> None:
    first = _write(s3_env, seed=5)
    store = open_store(s3_env)
    keys = store.list()
    stamps = {k: store._client.stat_object(store.bucket, f"{store.prefix}/{k}").last_modified for k in keys}
    second = _write(s3_env, seed=5)
    assert first.to_json() == second.to_json() and store.list() == keys
    assert {k: store._client.stat_object(store.bucket, f"{store.prefix}/{k}").last_modified for k in keys} == stamps
    third = _write(s3_env, seed=6)  # different data: a new version, the old one removed after the switch
    assert third.version != first.version
    assert all(k == MANIFEST or k.startswith(third.version + "/") for k in store.list())


def test_concurrent_writers_never_publish_foreign_shards(tmp_path: Path) -> None:
    # Issue #23.2: a reader polling during two concurrent exports saw a manifest whose shards all failed.
    uri = (tmp_path / "ds").as_uri()
    _write(uri, seed=0)
    script = tmp_path / "writer.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(REPO)!r})\nfrom tests.test_hostile import _write\n"
        "for i in range(3):\n    _write(sys.argv[1], seed=int(sys.argv[2]) + i)\n"
    )
    writers = [subprocess.Popen([sys.executable, str(script), uri, str(s)], cwd=REPO) for s in (10, 20)]
    corrupt: list[str] = []
    reads = 0
    while any(w.poll() is None for w in writers):
        try:
            ds = ExperienceDataset(uri)
        except DatasetError as e:
            corrupt.append(str(e))
            continue
        reads += 1
        # A shard can vanish if a newer manifest replaced this one meanwhile; it must never be foreign.
        corrupt += [p for p in ds.verify_all() if "corrupt" in p]
    assert all(w.wait() == 0 for w in writers)
    assert not corrupt, corrupt[:3]
    assert not ExperienceDataset(uri).verify_all()
    assert reads > 0


# ----------------------------------------------------------------------------------------------------------
# 3. Bounded waits


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_frozen_server_gives_a_one_line_error_within_the_deadline(tmp_path: Path, monkeypatch) -> None:
    # Issue #23.3: with the server stopped by SIGSTOP the export hung for minutes.
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = Minio(f"127.0.0.1:{port}", access_key="frozen-test-access", secret_key="frozen-secret", secure=False)
        for _ in range(600):  # waiting for the server to accept connections, not for time
            try:
                client.make_bucket("frozen")
                break
            except Exception:
                time.sleep(0.05)
        env = {
            "MINIO_ENDPOINT": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "frozen-test-access",
            "AWS_SECRET_ACCESS_KEY": "frozen-secret",
            # the documented settings, short so the test is quick
            "POLYDISTILL_STORE_CONNECT_TIMEOUT": "1",
            "POLYDISTILL_STORE_READ_TIMEOUT": "2",
            "POLYDISTILL_STORE_DEADLINE": "5",
        }
        src = tmp_path / "src"
        _write(str(src), seed=0, n=40)
        server.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        r = _cli("export-buffer", "--dataset", str(src), "--to", "s3://frozen/x", "--q-dtype", "none",
                 "--profile", "smoke", env=env, timeout=60)
        elapsed = time.monotonic() - started
        err = _one_line_error(r)
        assert "127.0.0.1" in err and "POLYDISTILL_STORE_DEADLINE" in err, err
        assert elapsed < 45, elapsed  # 5 s deadline plus interpreter start-up on a loaded machine
    finally:
        server.send_signal(signal.SIGCONT)
        server.kill()
        server.wait()


# ----------------------------------------------------------------------------------------------------------
# 4. Secrets never leave


def test_redact_uri_removes_every_form_of_credential() -> None:
    from polydistill.redaction import redact_uri

    cases = {
        "http://user:TOKEN1234@host:80/p": "http://user:***@host:80/p",
        "https://TOKEN1234@host/p": "https://***@host/p",
        "see s3://a:b@c and http://x:TOKEN1234@y?token=TOKEN1234&n=1": "see s3://a:***@c and http://x:***@y?token=***&n=1",
        "https://h/p?X-Amz-Signature=abcd1234&X-Amz-Credential=AKIA%2F": "https://h/p?X-Amz-Signature=***&X-Amz-Credential=***",
    }
    for raw, want in cases.items():
        assert redact_uri(raw) == want
    assert redact_uri("plain text mentions SECRETVALUE", ["SECRETVALUE"]) == "plain text mentions ***"


def test_store_and_cli_errors_hide_uri_credentials(tmp_path: Path) -> None:
    for uri in ("s3://user:TOPSECRET99@bucket/x", "file://user:TOPSECRET99@host/x"):
        with pytest.raises(StoreConfigError) as e:
            open_store(uri)
        assert "TOPSECRET99" not in str(e.value)
    r = _cli("buffer-info", "http://user:TOPSECRET99@host/x")
    assert "TOPSECRET99" not in r.stderr + r.stdout and r.returncode != 0


def test_artifact_redaction_sniffs_text_whatever_the_suffix(tmp_path: Path, monkeypatch) -> None:
    # Issue #23.4: a log file named stderr.txt.1 escaped the redaction (only some suffixes were scanned).
    from polydistill.tracking.stage_run import _redacted_copy

    secret = "artifact-secret-" + hashlib.sha256(b"x").hexdigest()[:10]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "stderr.txt.1").write_text(f"line one\nusing {secret}\n")
    (logs / "noext").write_text(f"{secret}")
    (logs / "weights.bin").write_bytes(b"\x00\x01" + secret.encode() + b"\xff")  # binary: left alone
    out = _redacted_copy(logs, tmp_path / "copy")
    assert out != logs
    assert secret not in (out / "stderr.txt.1").read_text() and "line one" in (out / "stderr.txt.1").read_text()
    assert secret not in (out / "noext").read_text()
    assert (out / "weights.bin").read_bytes() == (logs / "weights.bin").read_bytes()


def _grep(root: Path, secrets: list[str]) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            hits += [f"{p}: {s[:6]}..." for s in secrets if s.encode() in data]
    return hits


def test_nothing_a_run_leaves_holds_its_secrets(s3_env: str, s3_server, tmp_path: Path, monkeypatch) -> None:
    # Everything a small run leaves: a dataset in the store (with its manifest), a tracked stage with params,
    # tags, a dict and a log directory as artifacts, and the CLI's error output; grepped for the secrets.
    from polydistill import tracking as T

    token = "tracking-token-" + hashlib.sha256(b"t").hexdigest()[:12]
    secrets = [s3_server["secret_key"], token]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    logs = tmp_path / "task-logs"  # the task's own logs (input); what MLflow keeps of them lies in run_dir
    logs.mkdir()
    (logs / "stderr.txt.1").write_text(f"endpoint http://u:{token}@mlflow/ key={s3_server['secret_key']}\n")
    w = DatasetWriter(open_store(s3_env), _manifest(), shard_steps=30)
    w.manifest.source["exported_from"] = open_store(s3_env).uri
    w.add(**_rows(60, 0))
    w.close()
    with T.StageRun(uri, None, "export-buffer", "Breakout", "hostile") as run:
        run.log_config({"store": f"http://user:{token}@minio:9000", "secret_key": s3_server["secret_key"]})
        run.set_tags({"note": f"token {token}"})
        run.log_dict({"endpoint": f"http://x:{token}@y"}, "info.json")
        run.log_artifact(logs, "logs")
    r = _cli("buffer-info", f"http://user:{token}@host/x")
    (run_dir / "cli.txt").write_text(r.stdout + r.stderr)
    store_dump = run_dir / "store-dump"
    store = open_store(s3_env)
    for key in store.list():
        store.get_file(key, store_dump / key)
    assert (run_dir / "mlflow.db").exists() and list(store_dump.rglob("*.npz"))
    assert not _grep(run_dir, secrets)
    arts = list((run_dir / "mlartifacts").rglob("stderr.txt.1"))
    assert len(arts) == 1 and "***" in arts[0].read_text()  # uploaded, redacted


# ----------------------------------------------------------------------------------------------------------
# 6. One-line errors before any work or file is written


def test_bad_teacher_inputs_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    binary = tmp_path / "config.yaml"
    binary.write_bytes(b"\x00\x01\xff\xfe\x80binary")
    cases = [
        (["--config", str(binary)], "not UTF-8"),
        (["--device", "bogus"], "device 'bogus'"),
        (["--buffer-size", "10000000000000"], "GB available"),
        (["--batch-size", "100000"], "batch_size=100000 must be smaller than buffer_size=2000"),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "no usable CUDA device"))
    for i, (args, want) in enumerate(cases):
        out = tmp_path / f"out{i}"
        err = _one_line_error(_cli("train-teacher", "--game", "Pong", "--profile", "smoke", "--out", str(out), *args))
        assert want in err, err
        assert not out.exists(), args  # no run.json that would then block the corrected command


def test_distill_with_an_escaping_dataset_uri(tmp_path: Path) -> None:
    from polydistill.checkpoint import save_checkpoint
    from polydistill.networks import DuelingQNetwork

    teacher = tmp_path / "teacher"
    save_checkpoint(teacher, DuelingQNetwork(6), {"kind": "teacher", "game": "Pong", "games": ["Pong"]})
    err = _one_line_error(
        _cli("distill", "--teacher", str(teacher), "--dataset", "s3://b/../x", "--out",
             str(tmp_path / "s"), "--profile", "smoke")
    )
    assert "'..'" in err or ".." in err
    assert not (tmp_path / "s").exists()


def test_buffer_info_on_a_missing_path_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dataset"
    err = _one_line_error(_cli("buffer-info", str(missing)))
    assert "no dataset" in err
    assert not (tmp_path / "no").exists()


def test_pipeline_parameters_keep_only_exact_sentinels() -> None:
    # Issue #23.6: submit --teacher-steps -5 was sent to the cluster (any negative meant "the profile's").
    resolved = C.resolve_pipeline("smoke", {"teacher_steps": -1, "tau": -1.0, "student_init": ""})
    assert resolved["teacher"]["total_steps"] == 2_000
    for params in ({"teacher_steps": -5}, {"tau": -0.5}, {"eval_episodes": -2}):
        with pytest.raises(C.ConfigError) as e:
            C.resolve_pipeline("smoke", params)
        assert next(iter(params)) in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------------------
# 5. Resume means the same run

# Smoke-sized and then some: 700 agent steps, a resume point every 200, about 70 learner updates.
RESUME_TEACHER = {
    "total_steps": 700,
    "num_envs": 4,
    "buffer_size": 1_000,
    "learning_starts": 100,
    "batch_size": 16,
    "train_frequency": 8,
    "target_network_frequency": 200,
    "exploration_fraction": 0.5,
    "record_steps": 500,
    "checkpoint_every": 200,
}


def _latest(out: Path) -> str | None:
    try:
        return (out / "resume" / "LATEST").read_text().strip() or None
    except OSError:
        return None


def test_teacher_killed_twice_ends_as_the_unbroken_run(tmp_path: Path) -> None:
    # Issue #23.5: killed at step 2,000 and again later, the resumed teacher ended with another dataset and
    # learning curve. Here: SIGKILL right after its first resume point, again after a later one, then done.
    from polydistill.teacher import train_teacher

    cfg_file = tmp_path / "teacher.yaml"
    cfg_file.write_text(json.dumps(RESUME_TEACHER))  # JSON is YAML
    unbroken = tmp_path / "unbroken"
    train_teacher("Breakout", C.resolve("teacher", "smoke", cfg_file), unbroken)

    out = tmp_path / "resumed"
    args = [sys.executable, "-m", "polydistill.cli", "train-teacher", "--game", "Breakout", "--out", str(out),
            "--profile", "smoke", "--config", str(cfg_file)]
    env = {**os.environ, "POLYDISTILL_PROGRESS": "off"}
    kills = []
    for _ in range(2):
        before = _latest(out)
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 400
        while _latest(out) in (None, before) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # waiting for a condition (a new resume point), not for time
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append(_latest(out))
        assert kills[-1] not in (None, before), kills
    assert json.loads((out / "run.json").read_text()).get("status") != "finished"
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming Breakout teacher from step" in done.stderr
    assert kills[0] < kills[1]  # two different points (step-000000000200 < step-000000000400 ...)
    for name in ("dataset/manifest.json", "curve.csv"):
        assert (out / name).read_bytes() == (unbroken / name).read_bytes(), name  # sha256s and curve alike
    assert not ExperienceDataset(str(out / "dataset")).verify_all()


# ----------------------------------------------------------------------------------------------------------
# 7. Second round (issue #36)


def _cli_here(*args: str) -> subprocess.CompletedProcess:
    """:func:`_cli` in this process (click's runner): the same one-line errors without an interpreter's start."""
    from click.testing import CliRunner

    from polydistill.cli import main

    r = CliRunner().invoke(main, list(args))
    return subprocess.CompletedProcess(list(args), r.exit_code, r.stdout, r.stderr)


def test_retention_deletes_nothing_an_edited_run_index_points_outside_the_store(
        s3_env: str, tmp_path: Path, caplog) -> None:
    # Issue #36: index entries naming file:///.../victimdir and s3://probe/victim were deleted with --keep-runs 1.
    import logging

    from polydistill import retention
    from polydistill.store import join_uri

    store = s3_env
    victim_s3 = f"{s3_env}-victim"  # the same bucket, outside the store's prefix
    teacher = open_store(join_uri(victim_s3, "teachers", "Pong"), create_bucket=True)
    teacher.put_bytes("model.pt", b"precious weights")
    teacher.put_bytes("polydistill-index.json", json.dumps({"keys": ["model.pt"]}).encode())
    victim_dir = tmp_path / "victimdir"
    (victim_dir / "teachers" / "Pong").mkdir(parents=True)
    (victim_dir / "precious.txt").write_text("keep me")
    retention.record_run(store, "good", join_uri(store, "runs", "good"), ["Pong"], started=10.0)
    runs = open_store(join_uri(store, "runs"))
    index = json.loads(runs.get_bytes(retention.RUN_INDEX))
    index["runs"] += [
        {"run_id": "evil-local", "run_root": victim_dir.as_uri(), "games": ["Pong"], "started": 1.0},
        {"run_id": "evil-s3", "run_root": victim_s3, "games": ["Pong"], "started": 2.0},
        {"run_id": "evil-games", "run_root": join_uri(store, "runs", "evil-games"), "games": ["../../x"],
         "started": 3.0},
        {"run_id": "..", "run_root": join_uri(store, "runs"), "games": [], "started": 4.0},
    ]
    runs.put_bytes(retention.RUN_INDEX, json.dumps(index).encode())
    with caplog.at_level(logging.WARNING, logger="polydistill.retention"):
        assert retention.apply(store, 1, set()) == []
    assert (victim_dir / "precious.txt").read_text() == "keep me" and (victim_dir / "teachers" / "Pong").is_dir()
    assert teacher.get_bytes("model.pt") == b"precious weights"
    assert runs.get_bytes(retention.RUN_INDEX)  # the index itself (STORE/runs, named by run "..") stays
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 4 and all("\n" not in m for m in refusals), refusals
    assert any(victim_dir.as_uri() in m for m in refusals) and any(victim_s3 in m for m in refusals)
    with pytest.raises(retention.RetentionRefused):  # and start-run never records such an entry
        retention.record_run(store, "x", victim_dir.as_uri(), ["Pong"])


_HOST = ("--host", "http://127.0.0.1:9", "--profile", "smoke")
SECOND_ROUND_CLI = [
    # /proc stands for a read-only location: even root cannot create a directory there.
    (("run", "--profile", "smoke", "--run-dir", "/proc/polydistill-hostile/run"), "--run-dir"),
    (("compile", "--out", "/proc/polydistill-hostile"), "--out /proc/polydistill-hostile"),
    (("compile", "--check", ""), "--check"),
    (("submit", *_HOST, "--token-file", "BINARY"), "not a text file"),
    (("submit", *_HOST, "--games", ""), "'' names no game"),
    (("submit", *_HOST, "--games", ",,,"), "',,,' names no game"),
    (("run", "--profile", "smoke", "--games", ",", "--run-dir", "RUN"), "names no game"),
    (("submit", *_HOST, "--teacher-steps", "-1"), "--teacher-steps -1"),
    (("submit", *_HOST, "--teacher-steps", "-5"), "teacher_steps"),
    (("submit", *_HOST, "--tau", "-1"), "--tau -1.0"),
]


@pytest.mark.parametrize(("args", "want"), SECOND_ROUND_CLI, ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_cli_inputs_of_the_second_round_get_one_line_errors(tmp_path: Path, monkeypatch, args: tuple,
                                                           want: str) -> None:
    # Issue #36: each was a traceback (OSError, FileNotFoundError, UnicodeDecodeError) or a silent accept.
    from polydistill.cli import run_display

    monkeypatch.setattr(run_display, "RunDisplay", _OnlyStartAndEnd)  # a run that was accepted stops early
    binary = tmp_path / "token.bin"
    binary.write_bytes(b"\x00\xff\xfe\x80 not a token")
    args = tuple(str(binary) if a == "BINARY" else str(tmp_path / "r") if a == "RUN" else a for a in args)
    r = _cli_here(*args)
    err = _one_line_error(r)
    assert want in err, (args, err)
    assert not (tmp_path / "r").exists()


def test_a_token_file_is_read_only_up_to_a_cap() -> None:
    # Issue #36: --token-file /dev/zero read until memory ran out. In a process capped at 4 GiB of data, so a
    # reader without a cap fails here (MemoryError) instead of taking the machine's memory.
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (4 << 30, 4 << 30))

    r = subprocess.run([sys.executable, "-m", "polydistill.cli", "submit", *_HOST, "--token-file", "/dev/zero"],
                       capture_output=True, text=True, timeout=120, preexec_fn=cap,
                       env={**os.environ, "POLYDISTILL_PROGRESS": "off"})
    assert "larger than 64 KiB" in _one_line_error(r)


def test_a_token_with_control_characters_is_refused_and_never_printed(tmp_path: Path) -> None:
    token = "tok-" + hashlib.sha256(b"ctl").hexdigest()[:12]
    for value in (f"{token}\r\nX-Evil: 1", f"{token}\x7f", f"{token}\x1b[2J"):
        r = _cli("submit", "--host", "http://127.0.0.1:9", "--profile", "smoke", "--token", value,
                 env={"TMPDIR": str(tmp_path)})
        err = _one_line_error(r)
        assert "--token" in err and "control" in err, err
        assert token not in r.stdout + r.stderr
    assert not _grep(tmp_path, [token])  # no traceback file holds it either


def _checkpoint(path: Path, num_actions: int, meta: dict) -> Path:
    from polydistill.checkpoint import save_checkpoint
    from polydistill.networks import DuelingQNetwork

    save_checkpoint(path, DuelingQNetwork(num_actions), meta)
    return path


_PONG = {"kind": "teacher", "game": "Pong", "games": ["Pong"]}
MANGLED_TEACHERS = {  # name: (metadata over Pong's, what the error names); each network has Pong's 6 actions
    "renamed-key": ({"game": None, "gmae": "Pong"}, "'game'"),
    "mangled-meanings": ({"action_meanings": "NOOP"}, "'action_meanings'"),
    "a-json-list": (None, "JSON list"),
    "pong-labelled-breakout": ({"game": "Breakout", "games": ["Breakout"]}, "has 6"),
    "pong-with-breakout-meanings": ({"game": "Breakout", "games": ["Breakout"], "action_meanings": "BREAKOUT"},
                                    "has 6"),
}


@pytest.mark.parametrize("name", MANGLED_TEACHERS)
def test_mangled_teacher_metadata_is_refused_before_scoring(tmp_path: Path, name: str) -> None:
    # Issue #36: a renamed key (KeyError), `[]` (AttributeError), and a Pong network labelled Breakout, which
    # was scored on Breakout with Pong's six actions.
    change, want = MANGLED_TEACHERS[name]
    meta = {**_PONG, "action_meanings": [action_meanings("Pong")], **(change or {})}
    if meta["action_meanings"] == "BREAKOUT":
        meta["action_meanings"] = [action_meanings("Breakout")]
    ckpt = _checkpoint(tmp_path / name, 6, {k: v for k, v in meta.items() if v is not None})
    if change is None:
        (ckpt / "metadata.json").write_text("[]")
    out = tmp_path / "eval"
    err = _one_line_error(_cli_here("evaluate", "--agent", str(ckpt), "--game", "Breakout", "--out", str(out),
                                    "--profile", "smoke", "--episodes", "1"))
    assert str(ckpt) in err and want in err, err
    assert not out.exists()


@pytest.mark.parametrize(("label", "want"), [("bogus", "no report column"), ("student_subset", "for student agents")])
def test_evaluate_refuses_an_unknown_or_foreign_label(tmp_path: Path, label: str, want: str) -> None:
    out = tmp_path / label
    err = _one_line_error(_cli_here("evaluate", "--agent", "random", "--game", "Pong", "--label", label,
                                    "--out", str(out), "--profile", "smoke", "--episodes", "1"))
    assert f"--label {label!r}" in err and want in err, err
    assert not out.exists()


class _OnlyStartAndEnd:
    """A run display that stops a local run after start-run: a per-game task (train-teacher) fails at its start,
    which fails the loop; the random baseline's evaluation and the exit task (end-run) run. (A top-level task
    failing this way would skip the exit handler: the exception leaves kfp's DAG in the main thread.)"""

    def __init__(self, stream, live: bool) -> None:
        self.started: list[str] = []

    def task_started(self, task) -> None:
        self.started.append(task.name)
        if task.name not in ("start-run", "evaluate", "end-run"):
            raise RuntimeError(f"stopped by the test before {task.name}")

    def task_finished(self, task, ok: bool, seconds: float) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_tracking_password_reaches_no_log_output_or_traceback(mlflow_server, tmp_path: Path,
                                                                  monkeypatch) -> None:
    # Issue #36: `run --tracking-uri http://u:PASSWORD@host` left the password in all 13 RUN_DIR/logs/*.log and
    # in start-run's executor_output.json. The real CLI and pipeline, stopped after start-run; its exit task
    # (end-run) still runs, and the stopped run's traceback goes to RUN_DIR/logs/polydistill.log.
    from polydistill.cli import run_display

    monkeypatch.setattr(run_display, "RunDisplay", _OnlyStartAndEnd)
    password = "pw-" + hashlib.sha256(b"tracking").hexdigest()[:16]
    uri = mlflow_server.uri.replace("http://", f"http://polyuser:{password}@")
    run_dir = tmp_path / "run"
    r = _cli_here("run", "--profile", "smoke", "--games", "Pong", "--run-dir", str(run_dir), "--tracking-uri", uri,
                  "--experiment", f"hostile-{os.getpid()}", "--eval-protocol", "episodes", "--eval-episodes", "1")
    err = _one_line_error(r)
    assert "polydistill.log" in err and password not in r.stdout + r.stderr, err
    logs = sorted(p.name for p in (run_dir / "logs").glob("*.log"))
    assert {"start-run.log", "end-run.log", "polydistill.log"} <= set(logs), logs
    outputs = list((run_dir / "kfp").rglob("executor_output.json"))
    assert outputs and any(mlflow_server.uri in p.read_text() for p in outputs)  # the URI is there, bare
    import re

    end = (run_dir / "logs" / "end-run.log").read_text()
    assert re.search(r"MLflow parent run [0-9a-f]{32} FAILED", end), end[-2000:]  # tracked: the password worked
    assert not _grep(run_dir, [password])
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ  # given to the tasks, not left behind


def test_a_damaged_or_unreachable_tracking_store_stops_the_run_before_any_task(
        mlflow_sqlite_uri: str, tmp_path: Path, monkeypatch) -> None:
    # Issue #36: a corrupt or half-truncated MLflow database gave a run that exited 0 with nothing tracked (the
    # warnings only in task logs). The display stops a run that got past the check, so a miss fails fast.
    from mlflow import MlflowClient

    from polydistill.cli import run_display

    monkeypatch.setattr(run_display, "RunDisplay", _OnlyStartAndEnd)
    MlflowClient(mlflow_sqlite_uri).search_experiments()  # MLflow's tables exist
    real = Path(mlflow_sqlite_uri.removeprefix("sqlite:///"))
    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(random.Random(0).randbytes(64 * 1024))
    cases = [(f"sqlite:///{truncated}", "truncated.db is damaged"), (f"sqlite:///{corrupt}", "not an SQLite"),
             (f"http://127.0.0.1:{_free_port()}", "cannot connect")]
    for i, (uri, want) in enumerate(cases):
        run_dir = tmp_path / f"run{i}"
        err = _one_line_error(_cli_here("run", "--profile", "smoke", "--games", "Pong", "--run-dir", str(run_dir),
                                        "--tracking-uri", uri))
        assert want in err and "--tracking-uri" in err, err
        assert not list((run_dir / "logs").glob("*-run.log")) and not (run_dir / "kfp").exists(), uri


def test_end_run_gives_up_on_a_killed_tracking_server_at_once_saying_what_is_lost(tmp_path: Path) -> None:
    # Issue #36: with the MLflow server killed mid-run, end-run retried for more than 280 s (MLflow's own
    # retries: 7 with backoff factor 2). In a fresh process, as the exit task runs, without the tracking
    # layer's bounded settings already in its environment.
    script = textwrap.dedent(f"""
        import logging, sys
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        from polydistill_kfp.components import runtime as rt
        from polydistill.tracking import end_pipeline_run
        uri = "http://127.0.0.1:{_free_port()}"  # where the killed server listened: nothing does now
        parent = rt.find_pipeline_run(uri, "polydistill", "run-1")
        print(repr(parent), end_pipeline_run(uri, parent, "FAILED"))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=90)
    assert r.returncode == 0 and r.stdout.strip() == "'' {}", r.stderr[-2000:]
    assert time.monotonic() - started < 60
    lost = [line for line in r.stderr.splitlines() if "run-1" in line]
    assert len(lost) == 1 and "lost" in lost[0] and "RUNNING" in lost[0], r.stderr[-2000:]
