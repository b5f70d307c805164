"""The flow's fast checks: it runs exactly dvc.yaml's stages, dependencies first (the DAG
cannot drift from the flow), and a plot is inlined small enough for Prefect to publish."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.stages import stage_order
from testing.project import REPO


def test_the_flow_runs_exactly_the_stages_of_dvc_yaml() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    order = stage_order(REPO)
    assert sorted(order) == sorted(stages)
    produced_by = {Path(next(iter(out)) if isinstance(out, dict) else out): name
                   for name, stage in stages.items() for out in stage.get("outs", [])}
    for position, name in enumerate(order):  # every dependency runs first
        for dep in stages[name].get("deps", []):
            producer = next((s for path, s in produced_by.items()
                             if Path(dep) == path or path in Path(dep).parents), None)
            assert producer is None or order.index(producer) < position, (name, dep)


def test_a_large_plot_is_inlined_small_enough_for_prefect_to_publish(tmp_path: Path) -> None:
    import base64
    import io

    import numpy as np
    from PIL import Image

    from flows.artifacts import INLINE_MAX_BYTES, image_markdown

    noisy = np.random.default_rng(0).integers(0, 256, (900, 900, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / "big.png")
    assert (tmp_path / "big.png").stat().st_size > 2 * INLINE_MAX_BYTES
    markdown = image_markdown(tmp_path / "big.png", "Big")
    head, data = markdown.split("data:image/jpeg;base64,")
    data = base64.b64decode(data.rstrip(")\n"))
    assert head.startswith("### Big") and len(data) <= INLINE_MAX_BYTES
    with Image.open(io.BytesIO(data)) as shown:
        assert shown.format == "JPEG" and shown.width / shown.height == pytest.approx(1.0, abs=0.01)
    Image.fromarray(noisy[:40, :40]).save(tmp_path / "small.png")
    small = image_markdown(tmp_path / "small.png", "Small")
    assert base64.b64decode(small.split("data:image/png;base64,")[1].rstrip(")\n")) == (
        tmp_path / "small.png").read_bytes()  # a small plot goes as it is
