"""What the scrape stage and its crawler subprocess agree on: exit statuses and stat names.

The crawler (``python -m scraper.crawl``) counts into Scrapy's stats under these
names and writes them to a JSON file; the stage reads that file for its report.
A name used with a suffix (``PAGES + label``) is a prefix and ends with ``/``.
"""

from __future__ import annotations

FINISHED_EXIT = 0
PAUSED_EXIT = 3  # Ctrl-C or one SIGTERM: Scrapy finished what was in flight and stopped

PAGES = "happysad/pages/"  # + class: result pages and API answers parsed
PAGES_BY_SOURCE = "happysad/pages_by_source/"  # + source
IMAGES_STORED = "happysad/images_stored"
IMAGES_STORED_BY_SOURCE = "happysad/images_stored_by_source/"  # + source
FILES_NEW = "happysad/files_new"  # stored images whose bytes data/raw did not have
FILES_EXISTING = "happysad/files_existing"
IMAGES_KNOWN = "happysad/images_known"  # found again: the manifest already has (class, URL)
OVER_IMAGE_LIMIT = "happysad/over_image_limit/"  # + class: not fetched, a source's max_images
BLOCKED = "happysad/blocked"  # robots.txt, the address guard, or off-site
OFFSITE = "happysad/offsite"
REFUSED_ADDRESS = "happysad/refused_address"  # the address guard (loopback, private, not http)
OPTED_OUT = "happysad/opted_out"  # an image whose headers opt out
OPTED_OUT_PAGES = "happysad/opted_out_pages"  # a page whose markup or headers opt out
ERRORS = "happysad/errors"
ERRORS_BY_KIND = "happysad/errors/"  # + kind: http_404, too_large, TimeoutError, ...
PEAK_RSS_MB = "happysad/peak_rss_mb"  # the crawl process's peak resident memory


def suffixed(stats: dict[str, object], prefix: str) -> dict[str, int]:
    """The counts under one prefix, by suffix, sorted: ``{"happy": 12, "sad": 9}``."""
    return {k.removeprefix(prefix): int(v) for k, v in sorted(stats.items())  # type: ignore[call-overload]
            if k.startswith(prefix)}
IMAGES_HANDED_OFF = "happysad/images_handed_off"  # a shared crawl's worker: sent to the stage
REQUESTS_RETURNED = "happysad/requests_returned"  # a dead worker's leased requests, queued again
BAD_SHARED_STATE = "bad_shared_state"  # an error kind: a value in Redis this crawl did not write

# A crawl shared by several crawler processes (scrapy-redis): the Redis server named by this
# environment variable holds the queue, the seen-requests filter, the limits' counters and the
# fetched images on their way to the scrape stage, the one writer of data/raw.
REDIS_ENV = "HAPPYSAD_CRAWL_REDIS"
REDIS_PREFIX = "happysad:crawl:"  # every key of a shared crawl starts with this
CONFIG_KEY = REDIS_PREFIX + "config"  # the crawl's config (JSON), as the stage wrote it
OWNER_KEY = REDIS_PREFIX + "owner"  # the stage that runs the crawl; expires if it dies
QUEUE_KEY = REDIS_PREFIX + "queue"  # scrapy-redis's priority queue of requests
SEEN_KEY = REDIS_PREFIX + "seen"  # scrapy-redis's filter: the fingerprints of scheduled requests
COUNTS_KEY = REDIS_PREFIX + "counts"  # pages and images per (source, class), for the limits
KNOWN_KEY = REDIS_PREFIX + "known"  # "class<TAB>url" of every image data/raw already has
SEEDED_KEY = REDIS_PREFIX + "seeded"  # set by the worker that asked for the start pages
# At-least-once delivery: a worker takes a request off the queue and leases it in one step
# (POP_AND_LEASE), and drops the lease once the request is done (fetched, its items handed
# over, its follow-up requests queued). A worker renews ALIVE_KEY while it runs; the stage
# puts the leases of a worker that stopped renewing (or whose process died) back on the
# queue (RETURN_LEASE), so a dead worker's requests are fetched by another, never lost.
ALIVE_KEY = REDIS_PREFIX + "alive"  # worker -> the time (epoch s) its leases lapse unless renewed
LEASES_KEY = REDIS_PREFIX + "leases"  # "worker<TAB>n" -> "score\nrequest": a request in hand
ITEMS_KEY = REDIS_PREFIX + "items"  # fetched images (JSON), from the workers to the stage
ERRORS_KEY = REDIS_PREFIX + "errors"  # error lines (JSON), from the workers to the stage
STATS_KEY = REDIS_PREFIX + "stats"  # each worker's final stats (JSON), as it closes
SHARED_KEYS = (CONFIG_KEY, QUEUE_KEY, SEEN_KEY, COUNTS_KEY, KNOWN_KEY, SEEDED_KEY, ALIVE_KEY,
               LEASES_KEY, ITEMS_KEY, ERRORS_KEY, STATS_KEY)
# The fields of a fetched image as a worker hands it to the stage ("body" in base64).
ITEM_FIELDS = ("url", "final_url", "page_url", "source", "query", "label", "content_type",
               "licence", "licence_url", "creator", "attribution")
ITEM_OPTIONAL_FIELDS = ("licence", "licence_url", "creator", "attribution")  # text or null
# The fields of an error line a worker hands to the stage for reports/scrape/errors.jsonl.
ERROR_FIELDS = ("url", "page_url", "label", "error", "detail")

# KEYS: queue, leases; ARGV: the lease's name. The request with the best score leaves the
# queue and enters the leases as "score\nrequest", at once; the request, or false if none.
POP_AND_LEASE = r"""
local popped = redis.call('zrange', KEYS[1], 0, 0, 'WITHSCORES')
if #popped == 0 then return false end
redis.call('zrem', KEYS[1], popped[1])
redis.call('hset', KEYS[2], ARGV[1], popped[2] .. '\n' .. popped[1])
return popped[1]
"""
# KEYS: leases, queue; ARGV: the lease's name, its value as read, the score, the request.
# The lease goes back on the queue only if it is still the one that was read; 1 if it did.
RETURN_LEASE = r"""
if redis.call('hget', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('hdel', KEYS[1], ARGV[1])
redis.call('zadd', KEYS[2], ARGV[3], ARGV[4])
return 1
"""


def lease_name(worker: str, number: int) -> str:
    return f"{worker}\t{number}"


def lease_worker(name: bytes) -> str:
    """The worker that holds a lease, from the lease's name."""
    return name.split(b"\t", 1)[0].decode("utf-8", errors="replace")
