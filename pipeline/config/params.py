"""The whole of params.yaml as one typed model: what the flow, the tools and the tests check
before anything runs. A stage loads only its own sections (``pipeline.config.loader``)."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import model_validator

from pipeline.config.clean import CleanParams
from pipeline.config.crossval import CrossvalParams
from pipeline.config.evaluate import EvaluateParams
from pipeline.config.faces import FacesParams
from pipeline.config.flow import FlowParams
from pipeline.config.loader import Section, read_yaml, validate
from pipeline.config.pretrain import PretrainParams
from pipeline.config.promote import PromoteParams
from pipeline.config.scrape import DemoSiteParams, ScrapeParams
from pipeline.config.serve_model import ServeModelParams
from pipeline.config.split import SplitParams
from pipeline.config.suspects import SuspectsParams
from pipeline.config.tfrecords import TfrecordsParams
from pipeline.config.train import TrainParams, check_depth
from pipeline.config.tune import TuneParams
from pipeline.runtime.project import DEFAULT_PARAMS


class Params(Section):
    seed: int
    demo_site: DemoSiteParams
    scrape: ScrapeParams
    clean: CleanParams
    split: SplitParams
    tfrecords: TfrecordsParams
    train: TrainParams
    pretrain: PretrainParams
    crossval: CrossvalParams
    faces: FacesParams
    suspects: SuspectsParams
    evaluate: EvaluateParams
    promote: PromoteParams
    serve_model: ServeModelParams
    flow: FlowParams
    tune: TuneParams

    @model_validator(mode="after")
    def _deep_enough_images(self) -> Self:
        check_depth(self.tfrecords.image_size, self.train)
        return self


def load_params(path: Path = DEFAULT_PARAMS) -> Params:
    """Read and validate the whole params file, or raise a one-line ``UserError``."""
    return validate(Path(path), Params, read_yaml(Path(path)))
