"""Scrapy settings shared by every crawl; params.yaml's `scrape.crawl` section overrides them."""

BOT_NAME = "happysad"
SPIDER_MODULES = ["scraper.spiders"]
NEWSPIDER_MODULE = "scraper.spiders"

# Polite by default: robots.txt, AutoThrottle, bounded concurrency and sizes.
ROBOTSTXT_OBEY = True
AUTOTHROTTLE_ENABLED = True
CONCURRENT_REQUESTS = 16
CONCURRENT_REQUESTS_PER_DOMAIN = 8
DOWNLOAD_TIMEOUT = 15
DOWNLOAD_MAXSIZE = 25 * 1024 * 1024
DOWNLOAD_WARNSIZE = 10 * 1024 * 1024
RETRY_TIMES = 2
USER_AGENT = "happysad/0.1 (image dataset builder)"
COOKIES_ENABLED = False
# Neither would open a port nobody asked for.
TELNETCONSOLE_ENABLED = False
REMOTE_CONTROL_ENABLED = False

ITEM_PIPELINES = {"scraper.pipelines.RawImagePipeline": 300}
DOWNLOADER_MIDDLEWARES = {
    # After Retry (550) and Redirect (600): on the way back it takes the token off first.
    "scraper.policy.ApiToken": 650,
    "scrapy.downloadermiddlewares.robotstxt.RobotsTxtMiddleware": None,
    "scrapy.downloadermiddlewares.redirect.RedirectMiddleware": None,
    "scraper.policy.Redirects": 600,  # the same, with loops and long chains recorded as errors
    "scraper.policy.RobotsTxt": 100,  # the same, with concurrent waiters fixed
    # Last before the download: every request, redirects and retries included, passes it.
    "scraper.policy.AddressGuard": 990,
}
REQUEST_FINGERPRINTER_CLASS = "scraper.policy.LabelledFingerprinter"
EXTENSIONS = {"scraper.extensions.CrawlProgress": 500}
LOGSTATS_INTERVAL = 0  # CrawlProgress reports pages, images and errors instead

LOG_LEVEL = "INFO"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
STATS_DUMP = False  # CrawlProgress logs the summary that matters
