"""``python -m bench``: run every benchmark in turn."""

import sys

from bench import (
    bootstrap,
    crawl,
    crossval,
    dask_stages,
    data_stages,
    dedupe,
    faces,
    faults,
    flow,
    manifest_scale,
    model,
    predict,
    pretrain,
    real_photos,
    remote,
    serve,
    sources,
    speed,
    suspects,
    tune,
    two_views,
)

BENCHMARKS = (crawl, data_stages, dask_stages, manifest_scale, dedupe, bootstrap, crossval, suspects,
              faults, model, speed, flow, predict, serve, remote, pretrain, real_photos, faces,
              two_views, sources, tune)

sys.exit(next((code for code in (b.main([]) for b in BENCHMARKS) if code), 0))
