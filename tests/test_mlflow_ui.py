"""What the MLflow UI shows for a pipeline run, asserted through a real ``mlflow server``'s REST API (the UI
reads the same endpoints): the experiment is a model-training one (the UI opens on its runs, not on GenAI
traces), the parent run has its children, the students' runs name their datasets (the Dataset column), and
the registered model carries its aliases and lineage tags. docs/RETRAINING.md has the screenshot."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
import uuid
from typing import Any

import numpy as np
import torch

from polydistill import tracking as T
from polydistill.networks import DuelingQNetwork
from polydistill.tracking.lineage import DatasetRef

GAMES = ["Breakout", "Pong"]


def _get(base: str, path: str, **query: Any) -> Any:
    url = f"{base}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _post(base: str, path: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_the_ui_sees_parent_children_datasets_and_aliases(mlflow_server: Any) -> None:
    uri = mlflow_server.uri
    experiment = f"ui-{uuid.uuid4().hex[:8]}"
    model = f"student-{uuid.uuid4().hex[:8]}"
    parent = T.start_pipeline_run(uri, experiment, "polydistill-smoke-1", {"kfp.run_id": "1", "games": GAMES},
                                  {"profile": "smoke"})
    torch.manual_seed(0)
    net = DuelingQNetwork([4, 6], width=0.25).eval()
    sha = {g: f"{i:x}" * 64 for i, g in enumerate(GAMES, 1)}
    with T.StageRun(uri, parent, "distill", "subset", experiment) as run:
        run.log_inputs([DatasetRef(f"buffer/{g}", f"file:///store/runs/1/buffers/{g}", sha[g], g, 1500)
                        for g in GAMES])
        run.log_model(net, "student", {"kind": "student", "games": GAMES},
                      np.zeros((2, 4, 84, 84), dtype=np.uint8))
    T.end_pipeline_run(uri, parent)
    assert T.register_student(uri, run.run_id, model, GAMES, 50.0, mean_hns=0.1,
                              lineage={"polydistill.pipeline_run_id": parent}) == 1

    exp = _get(uri, "experiments/get-by-name", experiment_name=experiment)["experiment"]
    assert {t["key"]: t["value"] for t in exp["tags"]}["mlflow.experimentKind"] == "custom_model_development"
    runs = _post(uri, "runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    by_name = {r["info"]["run_name"]: r for r in runs}
    assert set(by_name) == {"polydistill-smoke-1", "distill/subset"}
    child_tags = {t["key"]: t["value"] for t in by_name["distill/subset"]["data"]["tags"]}
    assert child_tags["mlflow.parentRunId"] == parent  # the UI nests the child under its parent
    inputs = by_name["distill/subset"]["inputs"]["dataset_inputs"]
    assert sorted(d["dataset"]["name"] for d in inputs) == ["buffer/Breakout", "buffer/Pong"]
    pong = next(d["dataset"] for d in inputs if d["dataset"]["name"] == "buffer/Pong")
    assert pong["digest"] == sha["Pong"][:32] and json.loads(pong["profile"])["sha256"] == sha["Pong"]
    assert json.loads(pong["source"])["uri"] == "file:///store/runs/1/buffers/Pong"
    assert {t["key"]: t["value"] for t in inputs[0]["tags"]}["mlflow.data.context"] == "training"

    registered = _get(uri, "registered-models/get", name=model)["registered_model"]
    assert sorted(a["alias"] for a in registered["aliases"]) == ["candidate", "champion"]
    version = _get(uri, "model-versions/get", name=model, version="1")["model_version"]
    tags = {t["key"]: t["value"] for t in version["tags"]}
    assert tags["polydistill.pipeline_run_id"] == parent and float(tags["polydistill.mean_hns"]) == 0.1
    assert version["run_id"] == run.run_id
