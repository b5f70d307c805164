"""happysad's stage logic: plain functions over files, free of Prefect, DVC and Scrapy.

A map of the package. **Stages**, one module each, in DAG order (``dvc.yaml`` runs
``python -m pipeline <stage>``): ``scrape`` (with its parts ``scrape_config``,
``scrape_process``, ``scrape_job``, ``scrape_report`` and the ``folder`` import),
``clean``, ``split``, ``tfrecords``, ``train``, ``evaluate``, ``save``. **Commands**
around them: ``predict``, ``promote`` (run by the Prefect flow) and ``tune`` (one
trial of the tune flow); ``cli`` dispatches every command from its ``COMMANDS``
table. **Helpers** the stages share: ``params`` (the typed loader of params.yaml and
the owner of shared names), ``raw`` (the data/raw store and manifest),
``crawl_contract`` (what the scrape stage and its crawler agree on), ``images`` and
``near_duplicates`` (decoding and hashing), ``features`` and ``model`` (TFRecords and
the Keras model), ``curves`` (ROC and precision-recall, exact AUC), ``plots``,
``stage_io`` (atomic outputs, worker pools), ``log`` and ``errors``.
"""
