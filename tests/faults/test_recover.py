"""A lost registry is not the end of its models: `predserve-server recover` records the orphan artifacts again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.baseline import CLASSIFIER, FOREST, Baseline, Launch
from tests.support import IRIS_PROBES, PROJECT_ROOT

pytestmark = [pytest.mark.faults]


def recover(workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "predserve.server", "recover", "--db", str(workdir / "predictions.db")]
        + ["--models-dir", str(workdir / "models")],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def answers(server: object, model_type: str) -> list[str]:
    with server.client() as client:  # type: ignore[attr-defined]
        return [str(p.value) for p in client.predict(model_type, IRIS_PROBES).predictions]


def test_recover_records_the_artifacts_of_a_lost_registry(baseline: Baseline, tmp_path: Path, launch: Launch) -> None:
    """The database deleted beside 3 artifacts and a damaged file: recover records the 3, leaves the damaged one."""
    workdir = baseline.copy(tmp_path)
    server = launch(workdir).start()
    before = {model_type: answers(server, model_type) for model_type in (FOREST, CLASSIFIER)}
    assert server.stop() == 0
    for leftover in workdir.glob("predictions.db*"):
        leftover.unlink()
    damaged = workdir / "models" / f"{FOREST}-20260101T000000Z-0123456789ab.joblib"
    damaged.write_bytes(b"not a pickle")
    stored = sorted(p.name for p in (workdir / "models").glob("*.joblib"))

    result = recover(workdir)
    assert result.returncode == 1, result.stdout + result.stderr  # one orphan could not be recovered
    lines = result.stdout.splitlines()
    assert sum(line.startswith("recovered ") for line in lines) == 3
    assert [line for line in lines if line.startswith("left ")] == [
        line for line in lines if line.startswith(f"left {damaged.name}: ")
    ]
    assert lines[-1] == "3 of 4 orphan artifact(s) recovered"
    assert damaged.exists()
    assert "Traceback" not in result.stderr

    # Nothing is served until an operator promotes; then each type answers as it did before the loss.
    server = launch(workdir).start()
    with server.client() as client:
        assert {m.model_type: m.loaded for m in client.list_models().models} == {FOREST: False, CLASSIFIER: False}
        recovered = {t: [s.id for s in client.list_prediction_sets(t).prediction_sets] for t in (FOREST, CLASSIFIER)}
    assert len(recovered[FOREST]) == 2 and len(recovered[CLASSIFIER]) == 1
    for model_type, set_ids in recovered.items():
        seen = []
        for set_id in set_ids:
            with server.client() as client:
                client.promote(set_id)
            seen.append(answers(server, model_type))
        assert before[model_type] in seen
    # The recovered sets hold copies under new names; the originals are gone, the damaged file stays.
    remaining = sorted(p.name for p in (workdir / "models").glob("*.joblib"))
    assert damaged.name in remaining and len(remaining) == 4
    assert not set(stored) - {damaged.name} & set(remaining)
