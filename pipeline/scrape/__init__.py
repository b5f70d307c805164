"""The scrape stage's parts: the crawl's config and child processes, a paused crawl, the
report, the folder source."""
