"""Typed, validated view of params.yaml: each stage gets its own frozen section."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import UserError

DEFAULT_PARAMS = Path("params.yaml")

Positive = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


def _takes_bool(annotation: Any) -> bool:
    """Whether a field's type admits a boolean (``bool``, or a union or alias holding it)."""
    return annotation is bool or any(_takes_bool(arg) for arg in get_args(annotation))


class _Section(BaseModel):
    # inf and nan are refused everywhere: a learning rate of .inf trains a NaN model
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        # pydantic reads `epochs: true` as 1; YAML's true/yes/on are never meant as numbers
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                value = data.get(name)
                if isinstance(value, bool) and not _takes_bool(field.annotation):
                    raise ValueError(f"{name}: {str(value).lower()} is a boolean, where a "
                                     "number or name is due")
        return data


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    pass


class _AliasError(yaml.constructor.ConstructorError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (the last would win), and
    anchors and aliases (``&name``, ``*name``): DVC reads params.yaml too, with a loader of
    its own, and a few nested aliases expand to billions of nodes (an "alias bomb") there."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            kind = "alias *" if isinstance(event, yaml.AliasEvent) else "anchor &"
            raise _AliasError(None, None, f"YAML {kind}{event.anchor} is not allowed",
                              event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKeyError(None, None, f"key {key!r} is given twice",
                                         key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


class DemoSiteParams(_Section):
    seed: int
    images_per_class: Annotated[int, Field(ge=8)]
    min_side: Annotated[int, Field(ge=32)]
    max_side: Positive
    jpeg_quality: tuple[Annotated[int, Field(ge=1, le=100)], Annotated[int, Field(ge=1, le=100)]]
    png_fraction: Fraction
    results_per_page: Positive
    slow_response_s: Annotated[float, Field(ge=0.0)]
    copies_per_class: Annotated[int, Field(ge=1)]  # planted sets of four copies, per class
    mislabelled_fraction: Annotated[float, Field(ge=0.0, le=0.2)]  # faces served under the other class

    @model_validator(mode="after")
    def _ranges(self) -> Self:
        if self.images_per_class < 6 + 4 * self.copies_per_class:
            raise ValueError(f"images_per_class must be at least 6 + 4 x copies_per_class "
                             f"({6 + 4 * self.copies_per_class}): each copy needs its original")
        if self.images_per_class - round(self.mislabelled_fraction * self.images_per_class) < \
                6 + 4 * self.copies_per_class:
            raise ValueError("mislabelled_fraction leaves too few faces for the planted copies' "
                             "originals; lower it or raise images_per_class")
        if self.min_side > self.max_side:
            raise ValueError("min_side must not exceed max_side")
        if self.jpeg_quality[0] > self.jpeg_quality[1]:
            raise ValueError("jpeg_quality must be [low, high]")
        return self


DEMO_PLACEHOLDER = "{demo}"


def is_xpath(selector: str) -> bool:
    return selector.lstrip().startswith(("/", "(", "./"))


def _check_selector(selector: str | None) -> str | None:
    if selector:
        from parsel import Selector  # here, not at the top: stage workers import this module
        from parsel.csstranslator import css2xpath

        try:
            if is_xpath(selector):
                Selector(text="<html></html>").xpath(selector)
            else:
                css2xpath(selector)
        except Exception as err:  # noqa: BLE001 - parsel raises several types
            raise ValueError(f"cannot parse selector {selector!r} ({err})") from None
    return selector


class ClassParams(_Section):
    queries: list[Annotated[str, Field(min_length=1)]] = []


class _Source(_Section):
    enabled: bool = True
    max_images: Positive  # per class


class GallerySource(_Source):
    """Any image-search or gallery site, described by URLs and selectors."""

    kind: Literal["gallery"]
    start_urls: dict[str, list[str]] = {}
    search_url: str | None = None  # a template with {query}, used for each of a class's queries
    image_selector: str
    detail_selector: str | None = None
    detail_image_selector: str | None = None
    next_page_selector: str | None = None
    max_pages: Positive  # per class
    licence: str | None = None
    attribution: str | None = None
    allowed_domains: list[str] = []

    _selectors = field_validator("image_selector", "detail_selector", "detail_image_selector",
                                 "next_page_selector")(_check_selector)

    @model_validator(mode="after")
    def _has_urls(self) -> Self:
        if not self.start_urls and not self.search_url:
            raise ValueError("give start_urls (per class) or a search_url template")
        if self.search_url and "{query}" not in self.search_url:
            raise ValueError(f"search_url {self.search_url!r} has no {{query}} placeholder")
        return self


class OpenverseSource(_Source):
    """Openly licensed images through the Openverse API (api.openverse.org)."""

    kind: Literal["openverse"]
    api_url: str
    licences: list[str] = []          # Openverse `license` codes (cc0, pdm, by, by-sa...); [] = any
    licence_types: list[Literal["commercial", "modification"]] = []
    page_size: Annotated[int, Field(ge=1, le=500)]
    max_pages: Positive               # per query
    mature: bool = False
    token_env: str | None = None      # the environment variable that may hold a bearer token


class WikimediaSource(_Source):
    """Files of Wikimedia Commons (or any MediaWiki) by category and by search."""

    kind: Literal["wikimedia"]
    api_url: str
    categories: dict[str, list[str]] = {}  # per class: "Category:..." titles
    search: bool = True                    # also search the File namespace for the class's queries
    batch_size: Annotated[int, Field(ge=1, le=500)]
    max_batches: Positive                  # per category or query
    thumb_width: Annotated[int, Field(ge=0)]  # fetch a thumbnail this wide; 0 = the original file


class FolderSource(_Source):
    """Images a user already has: ``<path>/<class>/*``, imported as if scraped."""

    kind: Literal["folder"]
    path: str
    licence: str | None = None
    attribution: str | None = None


Source = Annotated[GallerySource | OpenverseSource | WikimediaSource | FolderSource,
                   Field(discriminator="kind")]


class DomainLimit(_Section):
    concurrency: Positive
    delay_s: Annotated[float, Field(ge=0.0)] = 0.0


class CrawlParams(_Section):
    obey_robots: bool
    autothrottle: bool
    autothrottle_start_delay_s: Annotated[float, Field(ge=0.0)]
    autothrottle_max_delay_s: Annotated[float, Field(gt=0.0)]
    autothrottle_target_concurrency: Annotated[float, Field(gt=0.0)]
    concurrent_requests: Positive
    concurrent_requests_per_domain: Positive
    domain_limits: dict[str, DomainLimit] = {}
    download_delay_s: Annotated[float, Field(ge=0.0)]
    download_timeout_s: Annotated[float, Field(gt=0.0)]
    max_bytes: Positive
    max_page_elements: Positive  # per selector per page: parsing stays short
    retries: Annotated[int, Field(ge=0)]
    user_agent: Annotated[str, Field(min_length=1)]
    contact: str = ""
    opt_out: list[str]
    allow_private_hosts: list[str] = []
    job_dir: str | None = None
    progress_every_s: Annotated[float, Field(gt=0.0)]

    @field_validator("allow_private_hosts")
    @classmethod
    def _host_ports(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if not re.fullmatch(r"[^\s/:]+:\d+|\[[0-9a-fA-F:.]+\]:\d+", host):
                raise ValueError(f"{host!r} is not host:port (e.g. 127.0.0.1:8000)")
        return hosts


CLASS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class ScrapeParams(_Section):
    demo_site: bool
    classes: dict[str, ClassParams]
    sources: Annotated[dict[str, Source], Field(min_length=1)]
    crawl: CrawlParams

    @field_validator("classes")
    @classmethod
    def _two_simple_names(cls, classes: dict[str, ClassParams]) -> dict[str, ClassParams]:
        # The CNN has one sigmoid output: it tells exactly two classes apart.
        if len(classes) != 2:
            raise ValueError(f"the model is binary: give exactly two classes, not {len(classes)} "
                             f"({', '.join(classes) or 'none'})")
        for name in classes:  # a class name becomes a folder under data/raw
            if not CLASS_NAME.fullmatch(name):
                raise ValueError(f"class name {name!r} is not a simple name (letters, digits, "
                                 "'_' or '-', starting with a letter or digit)")
        return classes

    def enabled_sources(self) -> dict[str, Source]:
        return {name: source for name, source in self.sources.items() if source.enabled}

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not self.enabled_sources():
            raise ValueError("every source is disabled; enable one under scrape.sources")
        for name, source in self.enabled_sources().items():
            per_class = {"gallery": "start_urls", "wikimedia": "categories"}.get(source.kind)
            unknown = set(getattr(source, per_class)) - set(self.classes) if per_class else set()
            if unknown:
                raise ValueError(f"sources.{name}.{per_class} names {', '.join(sorted(unknown))}, "
                                 f"which is not a class; classes are {', '.join(self.classes)}")
            urls = [u for urls in getattr(source, "start_urls", {}).values() for u in urls]
            urls += [getattr(source, "search_url", None) or ""]
            if not self.demo_site and any(DEMO_PLACEHOLDER in u for u in urls):
                raise ValueError(f"sources.{name} uses {DEMO_PLACEHOLDER} but demo_site is off; "
                                 f"turn it on or set sources.{name}.enabled to false")
        return self


class CleanParams(_Section):
    formats: Annotated[list[str], Field(min_length=1)]
    min_side: Positive
    max_pixels: Positive
    aspect_ratio: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]]
    min_std: Annotated[float, Field(ge=0.0)]
    near_duplicate_bits: Annotated[int, Field(ge=0, le=32)]
    near_duplicate_similarity: Annotated[float, Field(gt=0.0, le=1.0)]
    near_duplicate_block_residual: Annotated[float, Field(gt=0.0)]
    workers: Annotated[int, Field(ge=0)]

    @model_validator(mode="after")
    def _aspect(self) -> Self:
        if self.aspect_ratio[0] > self.aspect_ratio[1]:
            raise ValueError("aspect_ratio must be [min, max]")
        return self


SPLITS = ("train", "val", "test")


class SplitParams(_Section):
    seed: int
    fractions: dict[str, Annotated[float, Field(gt=0.0, lt=1.0)]]

    @model_validator(mode="after")
    def _fractions(self) -> Self:
        if set(self.fractions) != set(SPLITS):
            raise ValueError(f"fractions must name exactly {', '.join(SPLITS)}")
        if abs(sum(self.fractions.values()) - 1.0) > 1e-6:
            raise ValueError("fractions must add up to 1")
        return self


class TfrecordsParams(_Section):
    image_size: Annotated[int, Field(ge=8, le=2048)]
    resize: Literal["pad", "crop", "stretch"]
    encoding: Literal["jpeg", "png"]
    jpeg_quality: Annotated[int, Field(ge=1, le=100)]
    shard_size: Positive
    workers: Annotated[int, Field(ge=0)]
    crop: Literal["none", "face"]  # face: the largest face found (the faces section's detector)
    face_margin: Annotated[float, Field(ge=0.0, le=2.0)]  # added on each side, in face sides


class AugmentParams(_Section):
    rotation: Annotated[float, Field(ge=0.0, le=0.5)]
    flip: bool
    zoom: Annotated[float, Field(ge=0.0, lt=1.0)]


# The networks train.backbone can name: this project's own CNN, or a Keras application.
BACKBONES = ("seed_cnn", "mobilenet_v3_small", "efficientnet_b0")


class FineTuneParams(_Section):
    frozen_epochs: Annotated[int, Field(ge=0)]  # first epochs with the body frozen; 0 = none
    from_layer: str  # then the body trains from this layer on ("" = all of it)
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)]  # the rate after the frozen epochs


class TrainParams(_Section):
    backbone: Literal[BACKBONES]  # type: ignore[valid-type]
    weights: str  # a Keras application's start: imagenet | none (random) | a weights file
    init_from: str  # "" or a model.keras of this pipeline whose matching layers start training
    fine_tune: FineTuneParams
    distribute: Literal["none", "mirrored"]
    filters: Annotated[list[Positive], Field(min_length=1, max_length=8)]
    convs_per_block: Annotated[int, Field(ge=1, le=4)]
    first_stride: Annotated[int, Field(ge=1, le=4)]
    kernel_size: Annotated[int, Field(ge=1, le=11)]
    batchnorm_momentum: Annotated[float, Field(gt=0.0, lt=1.0)]
    head: Literal["global_average", "flatten"]
    dense_units: Annotated[int, Field(ge=0)]
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)]
    l2: Annotated[float, Field(ge=0.0)]
    label_smoothing: Annotated[float, Field(ge=0.0, lt=0.5)]  # training targets 0/1 -> s/2, 1 - s/2
    augment: AugmentParams
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)]
    batch_size: Annotated[int, Field(gt=0, le=4096)]
    epochs: Annotated[int, Field(gt=0, le=10_000)]
    early_stopping_patience: Positive
    min_epochs: Annotated[int, Field(ge=0)]  # early stopping may not end training before this
    val_loss_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)]  # EMA weight of the past; 0 = raw
    reduce_lr_patience: Positive
    reduce_lr_factor: Annotated[float, Field(gt=0.0, lt=1.0)]
    min_learning_rate: Annotated[float, Field(ge=0.0)]
    class_weight: Literal["balanced", "none"]
    shuffle_buffer: Positive
    cache_max_mb: Annotated[int, Field(ge=0)]

    @model_validator(mode="after")
    def _phases_fit(self) -> Self:
        if self.fine_tune.frozen_epochs >= self.epochs:
            raise ValueError(f"fine_tune.frozen_epochs ({self.fine_tune.frozen_epochs}) must be "
                             f"fewer than epochs ({self.epochs}): the rest are the fine-tuning")
        if self.backbone == "seed_cnn" and self.weights not in ("imagenet", "none"):
            raise ValueError("weights names a file, which only a Keras application backbone "
                             "loads; to start the seed CNN from a model, set init_from")
        return self


class FacesParams(_Section):
    max_side: Annotated[int, Field(ge=64, le=4096)]  # px of the grey copy searched
    min_face: Annotated[float, Field(gt=0.0, le=1.0)]  # of the shorter side
    scale_factor: Annotated[float, Field(gt=1.0, le=2.0)]
    min_neighbors: Annotated[int, Field(ge=0, le=50)]


# The suspects stage's flags by name, in one place: its weights, its report and the review page.
SUSPECT_FLAGS = ("label_issue", "confident_mistake", "no_face", "near_duplicates")


class SuspectsParams(_Section):
    confident_mistake: Annotated[float, Field(gt=0.5, lt=1.0)]  # p(the wrong class), test images
    weights: dict[Literal[SUSPECT_FLAGS], Annotated[float, Field(ge=0.0)]]  # type: ignore[valid-type]
    workers: Annotated[int, Field(ge=0)]

    @field_validator("weights")
    @classmethod
    def _every_flag(cls, weights: dict[str, float]) -> dict[str, float]:
        missing = set(SUSPECT_FLAGS) - set(weights)
        if missing:
            raise ValueError(f"give a weight for {', '.join(sorted(missing))}")
        return weights


class CrossvalParams(_Section):
    folds: Annotated[int, Field(ge=0, le=20)]  # 0 = off

    @field_validator("folds")
    @classmethod
    def _two_or_off(cls, value: int) -> int:
        if value == 1:
            raise ValueError("1 fold holds nothing out; use 0 (off) or 2 and up (5 is usual)")
        return value


class EvaluateParams(_Section):
    threshold: Annotated[float, Field(gt=0.0, lt=1.0)]
    worst_mistakes: Annotated[int, Field(ge=0, le=100)]
    batch_size: Positive
    bootstrap_resamples: Annotated[int, Field(ge=100, le=100_000)]
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)]  # of the intervals


# The test metrics by name, in one place: evaluate's headline file, the model card, promotion
# and the Prefect artifacts all take them from here.
HEADLINE = ("accuracy", "precision", "recall", "f1", "roc_auc", "loss")
LOWER_IS_BETTER = frozenset({"loss"})  # of these and of train's figures (val_loss in tune)


class PromoteParams(_Section):
    metric: Literal[HEADLINE]  # type: ignore[valid-type]
    margin: Annotated[float, Field(ge=0.0)]
    confidence: Annotated[float, Field(ge=0.5, lt=1.0)]  # P(challenger better) to promote


class FlowParams(_Section):
    schedule: str
    timezone: str
    force_scrape: bool
    scrape_retries: Annotated[int, Field(ge=0)]
    retry_delay_s: Annotated[float, Field(ge=0.0)]
    stage_timeout_s: dict[str, Annotated[float, Field(gt=0.0)]]
    default_timeout_s: Annotated[float, Field(gt=0.0)]

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        import datetime

        from cronsim import CronSim, CronSimError  # the parser Prefect's own Cron schedule uses

        if len(value.split()) != 5:
            raise ValueError(f"{value!r} is not a five-field cron expression (e.g. '0 3 * * 1')")
        try:
            next(CronSim(value, datetime.datetime(2000, 1, 1)))
        except (CronSimError, StopIteration) as err:
            raise ValueError(f"{value!r} is not a valid cron expression ({err}); e.g. '0 3 * * 1' "
                             "is Mondays at 03:00") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone name (IANA, e.g. UTC or "
                             "Europe/Berlin)") from None
        return value


class Dimension(_Section):
    """One knob of the search: a range (``low``..``high``, ``log`` for a log scale) or ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("give either low and high, or choices")
        if self.choices is not None and not self.choices:
            raise ValueError("choices is empty")
        if self.low is not None and self.high is not None:
            if self.low > self.high:
                raise ValueError("low must not exceed high")
            if self.log and self.low <= 0:
                raise ValueError("a log scale needs low > 0")
        return self


class TuneParams(_Section):
    trials: Positive                  # the budget: trials in all, counting a resumed search's
    parallel: Positive                # trials at once (each its own process)
    random_trials: Annotated[int, Field(ge=0)] = 4  # after trial 0, before TPE takes over
    metric: Literal["val_loss", "val_accuracy", "val_auc"]
    # > 1: score each trial by grouped k-fold cross-validation of the train and val images
    # (pooled out-of-fold figures) instead of the one val split; k times the work
    cv_folds: Annotated[int, Field(ge=0, le=20)]
    dask_address: str = ""            # tcp://host:8786: trials run on that Dask cluster
    experiment: bool                  # run the best params through the DAG as a DVC experiment
    space: Annotated[dict[str, Dimension], Field(min_length=1)]

    @field_validator("cv_folds")
    @classmethod
    def _folds(cls, value: int) -> int:
        return CrossvalParams._two_or_off(value)

    @field_validator("space")
    @classmethod
    def _train_keys(cls, space: dict[str, Dimension]) -> dict[str, Dimension]:
        for key in space:
            head, _, rest = key.partition(".")
            model = TrainParams.model_fields.get(head)
            if model is None or (rest and rest not in AugmentParams.model_fields) or (
                    head == "augment" and not rest):
                raise ValueError(f"{key!r} is not a train key (e.g. dropout, augment.zoom)")
        return space


class Params(_Section):
    seed: int
    demo_site: DemoSiteParams
    scrape: ScrapeParams
    clean: CleanParams
    split: SplitParams
    tfrecords: TfrecordsParams
    train: TrainParams
    crossval: CrossvalParams
    faces: FacesParams
    suspects: SuspectsParams
    evaluate: EvaluateParams
    promote: PromoteParams
    flow: FlowParams
    tune: TuneParams

    @model_validator(mode="after")
    def _deep_enough_images(self) -> Self:
        # Each block's MaxPooling2D halves the side (after the first convolution's stride):
        # too small an image runs out of pixels, which Keras only says at train time.
        side = -(-self.tfrecords.image_size // self.train.first_stride)
        for block in range(1, len(self.train.filters) + 1):
            side //= 2
            if side < 1:
                raise ValueError(
                    f"tfrecords.image_size {self.tfrecords.image_size} is too small for "
                    f"train.filters' {len(self.train.filters)} pooling blocks (first_stride "
                    f"{self.train.first_stride}): nothing is left after block {block}; use at "
                    f"least {self.train.first_stride * 2 ** len(self.train.filters)} px or fewer blocks")
        return self


def _where(error: dict) -> str:
    return ".".join(str(part) for part in error["loc"]) or "(top level)"


def load_params(path: Path = DEFAULT_PARAMS) -> Params:
    """Read and validate the whole params file, or raise a one-line ``UserError``."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run from the repository root or pass --params") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a params file; pass --params params.yaml") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: byte {err.start} is not UTF-8 text; save the file as UTF-8") from None
    except _DuplicateKeyError as err:
        mark = err.problem_mark
        raise UserError(f"{path}: line {mark.line + 1 if mark else '?'}: {err.problem}; keep "
                        "one of them") from None
    except _AliasError as err:
        mark = err.problem_mark
        raise UserError(f"{path}: line {mark.line + 1 if mark else '?'}: {err.problem} (DVC "
                        "reads this file too, and aliases can expand without bound); write the "
                        "values out") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} is not valid YAML; fix the syntax there") from None
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        first = err.errors()[0]
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        message = first["msg"].removeprefix("Value error, ")
        raise UserError(f"{path}: {_where(first)}: {message}{more}; fix that key") from None
