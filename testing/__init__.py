"""What the tests and the benchmarks share: a copy of the project to run in, loopback web sites
to crawl, a headless browser, and the import graph the layer checks read. Never imported by
``pipeline/``, ``flows/`` or ``scraper/``."""
