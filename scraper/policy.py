"""What a crawl may fetch and keep: the address guard, AI opt-outs and the URL aliases.

* :class:`AddressGuard` (a downloader middleware) lets only ``http(s)`` requests
  through and refuses any whose host resolves to a loopback, private, link-local
  or otherwise non-public address, unless its ``host:port`` is allowed. Redirects
  come back through the scheduler as new requests, so every hop is checked. The
  name is resolved through Scrapy's caching resolver, which the connection then
  uses too, so a name cannot answer public here and private a moment later.
* :func:`opted_out` reads ``X-Robots-Tag`` (and a page's robots meta tags) for
  directives such as ``noai``/``noimageai``, and the W3C TDMRep header
  ``tdm-reservation: 1``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
from collections.abc import Iterable
from urllib.parse import urlsplit

from scrapy import Request, Spider
from scrapy.crawler import Crawler
from scrapy.downloadermiddlewares.redirect import RedirectMiddleware
from scrapy.downloadermiddlewares.robotstxt import RobotsTxtMiddleware
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Response, TextResponse
from scrapy.robotstxt import RobotParser
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.httpobj import urlparse_cached
from scrapy.utils.request import RequestFingerprinter
from twisted.internet.defer import Deferred

from pipeline.contracts import crawl as stat

logger = logging.getLogger(__name__)

SCHEMES = ("http", "https")
LABEL_META = "happysad_label"


class RefusedAddressError(IgnoreRequest):
    """A request to a non-public address, or not over http(s)."""


class RedirectLoopError(IgnoreRequest):
    """A redirect back to a URL already on the request's chain of redirects."""


class TooManyRedirectsError(IgnoreRequest):
    """More redirects than ``REDIRECT_MAX_TIMES`` (Scrapy's own limit)."""


class Redirects(RedirectMiddleware):
    """Scrapy's redirects, with the two ways they fail said as errors. Left to Scrapy, a loop
    (A -> B -> A) ends silently in the duplicate filter, and a long chain as a plain
    IgnoreRequest, indistinguishable from robots.txt's refusals; the spider records these as
    ``redirect_loop`` and ``too_many_redirects``."""

    def process_response(self, request: Request, response: Response) -> Request | Response:
        try:
            result = super().process_response(request, response)
        except IgnoreRequest as err:
            hops = len(request.meta.get("redirect_urls", [])) + 1
            raise TooManyRedirectsError(f"gave up after {hops} redirects") from err
        if isinstance(result, Request):
            chain = [*request.meta.get("redirect_urls", []), request.url]
            if result.url in chain:
                raise RedirectLoopError(f"redirected back to an earlier URL after {len(chain)} "
                                        "redirects")
        return result


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def host_port(url: str) -> tuple[str, str]:
    """(host, "host:port") of a URL, the port filled in from the scheme."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    shown = f"[{host}]" if ":" in host else host
    return host, f"{shown}:{port}"


class AddressGuard:
    """Refuse non-http(s) URLs and hosts that resolve to non-public addresses."""

    def __init__(self, crawler: Crawler, allowed: Iterable[str]) -> None:
        self.crawler = crawler
        self.allowed = {a.lower() for a in allowed}

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> AddressGuard:
        return cls(crawler, crawler.settings.getlist("HAPPYSAD_ALLOW_PRIVATE_HOSTS"))

    def _refuse(self, request: Request, why: str) -> None:
        self.crawler.stats.inc_value(stat.REFUSED_ADDRESS)
        logger.warning("refused %s: %s", request.url, why)
        raise RefusedAddressError(f"refused: {why}")

    async def process_request(self, request: Request, spider: Spider | None = None) -> None:
        scheme = urlsplit(request.url).scheme.lower()
        if scheme not in SCHEMES:
            self._refuse(request, f"only http(s) URLs are fetched, not {scheme or 'no scheme'}:")
        host, where = host_port(request.url)
        if where.lower() in self.allowed:
            return
        try:
            address = str(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            from twisted.internet import reactor

            try:
                address = await maybe_deferred_to_future(reactor.resolve(host))  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - the download reports the DNS failure itself
                return
        if not is_public(address):
            self._refuse(request, f"{host} resolves to the non-public address {address} "
                                  "(allow it in scrape.crawl.allow_private_hosts if you mean it)")


class LabelledFingerprinter(RequestFingerprinter):
    """Scrapy's request fingerprint, with the class label mixed in for image requests: the
    same URL found under two classes is fetched for both (clean sees the conflict). The
    duplicate filter (and anything else keyed by fingerprint) uses it."""

    def fingerprint(self, request: Request) -> bytes:
        fingerprint = super().fingerprint(request)
        label = request.meta.get(LABEL_META)
        if not label:
            return fingerprint
        return hashlib.sha1(fingerprint + b":" + label.encode(), usedforsecurity=False).digest()


def _directives(values: Iterable[str], bot: str) -> set[str]:
    """Directives of X-Robots-Tag or robots meta values that apply to every bot or to ``bot``.

    ``X-Robots-Tag: otherbot: noai`` does not apply to us; ``happysad: noai`` does.
    """
    found: set[str] = set()
    for value in values:
        scope = None
        for part in value.split(","):
            part = part.strip().lower()
            if ":" in part:
                name, _, rest = part.partition(":")
                if " " not in name.strip() and name.strip() not in ("unavailable_after",):
                    scope, part = name.strip(), rest.strip()
            if part and (scope is None or scope == bot):
                found.add(part)
    return found


def opted_out(response: Response, directives: Iterable[str], bot: str) -> str | None:
    """The opt-out that keeps this response's images out of the dataset, or None."""
    wanted = {d.lower() for d in directives}
    headers = [v.decode("latin-1") for v in response.headers.getlist(b"X-Robots-Tag")]
    hit = wanted & _directives(headers, bot)
    if hit:
        return f"X-Robots-Tag: {', '.join(sorted(hit))}"
    if response.headers.get(b"tdm-reservation", b"").strip() == b"1":
        return "tdm-reservation: 1"
    if isinstance(response, TextResponse):  # an HTML page: <meta name="robots|<bot>" content="...">
        names = ("robots", bot)
        metas = [m.attrib.get("content", "") for m in response.xpath("//meta[@name]")
                 if m.attrib.get("name", "").lower() in names]
        hit = wanted & _directives(metas, bot)
        if hit:
            return f"robots meta: {', '.join(sorted(hit))}"
        tdm = response.xpath("//meta[@name='tdm-reservation']/@content").get()
        if tdm and tdm.strip() == "1":
            return "tdm-reservation meta: 1"
    return None


def canonical(url: str, aliases: dict[str, str]) -> str:
    """The URL as recorded: a server with no fixed address (the demo site on a free
    port) is written under its alias, so re-crawls recognise what they stored."""
    for base, alias in aliases.items():
        if url == base or url.startswith(base + "/"):
            return alias + url[len(base):]
    return url


AUTH_ENV_META = "happysad_auth_env"    # the variable naming a source's API token
AUTH_HOST_META = "happysad_auth_host"  # the API's host: the only one the token goes to


class ApiToken:
    """Adds ``Authorization: Bearer <token>`` to API requests whose source names a token
    variable that is set, and only while the request is for the API's own host.

    The header exists only between download and answer: it is added as the request goes
    out and taken off again before the retry and redirect middlewares (which run after
    this one on the way back) copy the request. So a retried or redirected request that a
    paused crawl queues to disk does not hold the token, and a redirect to another host
    never gets it. Its place in DOWNLOADER_MIDDLEWARES is after RedirectMiddleware (600).
    """

    def process_request(self, request: Request, spider: Spider | None = None) -> None:
        name = request.meta.get(AUTH_ENV_META)
        token = os.environ.get(name, "").strip() if name else ""
        if token and urlparse_cached(request).netloc == request.meta.get(AUTH_HOST_META):
            request.headers[b"Authorization"] = f"Bearer {token}".encode()

    def _take_off(self, request: Request) -> None:
        if request.meta.get(AUTH_ENV_META):
            request.headers.pop(b"Authorization", None)

    def process_response(self, request: Request, response: Response,
                         spider: Spider | None = None) -> Response:
        self._take_off(request)
        return response

    def process_exception(self, request: Request, exception: Exception,
                          spider: Spider | None = None) -> None:
        self._take_off(request)


def user_agent(base: str, contact: str) -> str:
    """The user agent with the operator's contact in its comment, as Wikimedia asks."""
    if not contact:
        return base
    if base.endswith(")"):
        return f"{base[:-1]}; {contact})"
    return f"{base} ({contact})"


class RobotsTxt(RobotsTxtMiddleware):
    """Scrapy's robots.txt middleware, with its wait for a robots.txt in flight fixed.

    Scrapy 2.19 has every request that arrives while a host's robots.txt is being
    fetched await the same Deferred through ``maybe_deferred_to_future``; that adapter's
    callback passes None down the chain, so all waiters but the first get no parser and
    are let through unchecked (scrapy/scrapy#6802 noted the path had no test). Here each
    waiter gets its own Deferred and the parser stays in the chain for the next one.
    """

    async def robot_parser(self, request: Request) -> RobotParser | None:
        parser = self._parsers.get(urlparse_cached(request).netloc)
        if isinstance(parser, Deferred):
            waiter: Deferred[RobotParser | None] = Deferred()

            def relay(result: RobotParser | None) -> RobotParser | None:
                waiter.callback(result)
                return result

            parser.addCallback(relay)
            return await maybe_deferred_to_future(waiter)
        return await super().robot_parser(request)
