"""params.yaml through its loaders: every bad value is one line naming the file and the key, a
stage's loader reads only its own sections, and the whole-file loader checks across them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.config.clean import CleanParams
from pipeline.config.loader import load_sections
from pipeline.config.params import load_params
from pipeline.config.train import TrainParams
from pipeline.runtime.errors import UserError
from testing.project import REPO


@pytest.mark.parametrize(("edit", "message"), [
    (lambda p: p.replace('image_selector: "figure.result img:not(.thumb)"',
                         'image_selector: "figure[[["', 1),
     "scrape.sources.demo.gallery.image_selector: cannot parse selector 'figure[[['"),
    (lambda p: p.replace("max_pages: 100", "max_pages: -1", 1),
     "scrape.sources.demo.gallery.max_pages: Input should be greater than 0"),
    (lambda p: p.replace("demo_site: true", "demo_site: false", 1),
     "scrape: sources.demo uses {demo} but demo_site is off; turn it on or set "
     "sources.demo.enabled to false"),
    (lambda p: p.replace("kind: openverse", "kind: flickr", 1),
     "scrape.sources.openverse: Input tag 'flickr' found using 'kind' does not match"),
    (lambda p: p.replace("happy: [\"{demo}", "hapy: [\"{demo}", 1),
     "scrape: sources.demo.start_urls names hapy, which is not a class"),
    (lambda p: p + "\n  : [", "is not valid YAML"),
    (lambda p: p.replace("    sad:\n      queries: [sad person]",
                         "    sad:\n      queries: [sad person]\n    angry:\n      queries: [angry]", 1),
     "scrape.classes: the model is binary: give exactly two classes, not 3"),
    (lambda p: p.replace("    sad:\n      queries: [sad person]",
                         "    ../sad:\n      queries: [sad person]", 1),
     "scrape.classes: class name '../sad' is not a simple name"),
    (lambda p: p.replace("learning_rate: 0.001", "learning_rate: .inf", 1),
     "train.learning_rate: Input should be a finite number"),
    (lambda p: p.replace("epochs: 30", "epochs: true", 1),
     "train: epochs: true is a boolean, where a number or name is due"),
    (lambda p: p.replace("  epochs: 30", "  epochs: 30\n  epochs: 5", 1),
     "key 'epochs' is given twice; keep one of them"),
    (lambda p: re.sub(r"schedule: \"[^\"]*\"", 'schedule: "61 99 * * 9"', p, count=1),
     "flow.schedule: '61 99 * * 9' is not a valid cron expression"),
    (lambda p: re.sub(r"timezone: \S+", "timezone: Mars/Olympus", p, count=1),
     "flow.timezone: 'Mars/Olympus' is not a time zone name"),
    (lambda p: re.sub(r"image_size: \d+", "image_size: 8", p, count=1),
     "tfrecords.image_size 8 is too small for train.filters' 5 pooling blocks"),
])
def test_bad_params_give_one_line_errors(tmp_path: Path, edit, message: str) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(edit((REPO / "params.yaml").read_text()))
    with pytest.raises(UserError) as caught:
        load_params(params)
    assert len(str(caught.value).splitlines()) == 1
    assert message in str(caught.value) and str(params) in str(caught.value)


def test_the_repository_params_and_every_section_load() -> None:
    params = load_params(REPO / "params.yaml")
    sections = load_sections(REPO / "params.yaml", seed=int, clean=CleanParams, train=TrainParams)
    assert sections.clean == params.clean and sections.train == params.train
    assert sections.seed == params.seed


def test_a_stage_loads_only_its_sections(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(re.sub(r"schedule: \"[^\"]*\"", 'schedule: "61 99 * * 9"',
                             (REPO / "params.yaml").read_text(), count=1))
    with pytest.raises(UserError, match="flow.schedule"):
        load_params(params)
    assert load_sections(params, clean=CleanParams).clean.min_side > 0  # not clean's business
    params.write_text((REPO / "params.yaml").read_text().replace("  min_side: 64 ", "  min_sid: 64 ", 1))
    with pytest.raises(UserError, match=r"clean\.min_side: Field required"):
        load_sections(params, clean=CleanParams)


def test_a_missing_folder_or_non_utf8_params_file_is_one_line(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes((REPO / "params.yaml").read_bytes() + "# caf\xe9\n".encode("latin-1"))
    for path, message in ((tmp_path / "none.yaml", "not found; run from the repository root"),
                          (tmp_path, "is a folder, not a params file"),
                          (latin1, "is not UTF-8 text; save the file as UTF-8")):
        with pytest.raises(UserError, match=re.escape(message)):
            load_sections(path, clean=CleanParams)


# A measurement in a comment goes stale the day the code or data changes: figures belong in
# docs/ beside the command that measured them. What a figure looks like in a comment:
FIGURE = re.compile(r"\d\s*%|\bimg/s\b|\d\s*(?:min|minutes|hours?)\b|\b0\.[5-9]\d\d|"
                    r"\d(?:\.\d+)?x (?:faster|slower|the)|\bmeasured\b|\bon the dev\b",
                    re.IGNORECASE)
# Paths a comment may name, which must exist in the repository
NAMED_PATH = re.compile(r"\b((?:pipeline|flows|docs|bench|presets|scraper|demo|testing|tests)/"
                        r"[\w./-]*\w)")
CONFIG_FILES = [REPO / "params.yaml", *sorted((REPO / "presets").glob("*.yaml"))]


def _comments(path: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        code, hash_, comment = line.partition("#")
        if hash_ and code.count('"') % 2 == 0 and code.count("'") % 2 == 0:
            found.append((number, comment.strip()))
    return found


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_config_comments_say_what_a_key_means_not_what_was_measured(path: Path) -> None:
    quoted = [f"{path.name}:{n}: {text}" for n, text in _comments(path) if FIGURE.search(text)]
    assert not quoted, "\n".join(quoted)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_file_a_config_comment_names_exists(path: Path) -> None:
    missing = [f"{path.name}:{n}: {name}" for n, text in _comments(path)
               for name in NAMED_PATH.findall(text) if not (REPO / name).exists()]
    assert not missing, "\n".join(missing)


def _keys(model: type, prefix: str = "") -> set[str]:
    """Every dotted key a section's schema knows, nested sections included."""
    from pydantic import BaseModel

    keys = set()
    for name, field in model.model_fields.items():
        keys.add(prefix + name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= _keys(annotation, f"{prefix}{name}.")
    return keys


def _given(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, value in data.items():
        keys.add(prefix + name)
        if isinstance(value, dict) and name not in ("classes", "sources", "space", "stage_timeout_s",
                                                    "domain_limits", "weights", "fractions"):
            keys |= _given(value, f"{prefix}{name}.")
    return keys


def test_every_key_the_schema_knows_is_in_params_yaml() -> None:
    """A key left to a schema default is a number nobody sees: each is written out."""
    import yaml

    from pipeline.config.params import Params

    given = _given(yaml.safe_load((REPO / "params.yaml").read_text()))
    known = {k for k in _keys(Params) if not k.startswith("scrape.sources")}
    assert not known - given, sorted(known - given)
