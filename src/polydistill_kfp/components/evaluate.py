"""Component ``evaluate``: an agent (teacher, student or the random policy) played in the real games
(:func:`polydistill.evaluate.evaluate`)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from .image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    label: str,
    games: list,
    config: dict,
    tracking_uri: str,
    parent_run_id: str,
    experiment: str,
    scores: Output[Artifact],
    metrics: Output[Metrics],
    agent: Input[Model] = None,
):
    """Score ``agent`` (the random policy when no agent is given) on ``games``; ``scores`` is the results JSON
    (docs/CONTRACTS.md) under ``label`` (``teacher``, ``student_subset``, ``student_latent``, ``random``)."""
    from polydistill import stages as S
    from polydistill.evaluate import evaluate as play
    from polydistill_kfp.components import runtime as rt

    # Child run names: evaluate/teacher-Pong (one per teacher), evaluate/student_subset, evaluate/random.
    name = f"{label}-{'-'.join(games)}" if label == "teacher" else label
    with rt.stage_task(S.EVALUATE, name, config, tracking_uri=tracking_uri, parent_run_id=parent_run_id,
                       experiment=experiment, in_loop=False, log_config={"agent": label, "games": ",".join(games)},
                       ) as task:
        results = play(agent.path if agent is not None else "random", games, task.cfg, label=label)
        values = {}
        for game, r in results["games"].items():
            values[f"score_mean/{game}"] = r["mean"]
            values[f"score_std/{game}"] = r["std"]
        task.run.log_metrics(values, 0)
    rt.write_json(scores.path, results)
    rt.log_scalars(metrics, {k.replace("/", "_"): v for k, v in values.items()})
    scores.metadata.update({"label": label, "games": list(results["games"])})
