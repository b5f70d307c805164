"""``make push`` and ``make pull``: ``dvc push``/``dvc pull`` to the default remote, with what
went wrong said in one line.

DVC prints a storage error as the library's raw text ("unexpected error - Forbidden: An error
occurred (403) when calling the HeadObject operation"), then its support footer. Here DVC's
progress and results pass through as they come; its footer and Python's warnings do not; and
when it fails, its error is read for what a user can act on: the remote's keys, its bucket,
its address. ``pull`` then says which stages are up to date (``dvc status``).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from flows.stages import StageFailedError, run_command
from pipeline.runtime.errors import UserError

# DVC's lines that a user gains nothing from: its support footer, and the warnings asyncio
# prints when DVC's S3 filesystem is torn down after an error.
_NOISE = re.compile(r"^(?:Having any troubles\?|.*RuntimeWarning: |RuntimeWarning: Enable tracemalloc|"
                    r"\s*(?:await |self\.|return |warnings\.warn|result = |_warn\())")


@dataclass(frozen=True)
class Remote:
    name: str
    url: str
    endpoint: str | None  # an S3-API server's address, when it is not AWS's

    def where(self) -> str:
        return f"DVC remote {self.name!r} ({self.url}{' at ' + self.endpoint if self.endpoint else ''})"


def default_remote(project: Path) -> Remote:
    """The project's default DVC remote, or a one-line ``UserError`` saying how to add one."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        config = repo.config
        name = config["core"].get("remote")
        if not name:
            raise UserError("this clone has no default DVC remote; add one (uv run dvc remote add "
                            "-d storage PATH-OR-URL: a folder, s3://, gs://, ssh://) and commit "
                            ".dvc/config, or `git pull` the one the team committed")
        settings = config["remote"].get(name)
        if settings is None:
            raise UserError(f"the default DVC remote {name!r} is not defined in .dvc/config; "
                            "uv run dvc remote list shows those that are")
        return Remote(name, settings["url"], settings.get("endpointurl"))


_CAUSES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"NoCredentials|Unable to locate credentials|config file \(.*\) could not be found|"
                r"partial credentials", re.I),
     "found no S3 keys: export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) "
     "in this shell, not in .dvc/config (docs/operations.md, 'An S3 bucket, or any S3-compatible store')"),
    (re.compile(r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|Forbidden|\b403\b|"
                r"ExpiredToken|InvalidToken", re.I),
     "refused the S3 keys in this shell (403): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
     "(or AWS_PROFILE), and that they may read and write this bucket"),
    (re.compile(r"NoSuchBucket|bucket does not exist", re.I),
     "has no such bucket: create it, or correct the remote's URL (uv run dvc remote modify)"),
    (re.compile(r"Could not connect to the endpoint URL|Connection refused|Name or service not "
                r"known|timed out|Temporary failure in name resolution", re.I),
     "did not answer: check its address (uv run dvc remote modify {name} endpointurl URL, "
     "or url) and the network"),
]


def cause(errors: list[str], remote: Remote) -> str:
    """One line for DVC's ``errors``: what the remote did and what to do, or DVC's own last
    error when it is none of the known ones."""
    text = "\n".join(errors)
    for pattern, what in _CAUSES:
        if pattern.search(text):
            return f"{remote.where()} {what.format(name=remote.name)}"
    last = errors[-1].removeprefix("ERROR: ").removeprefix("unexpected error - ") if errors else ""
    return f"{remote.where()}: {last or 'DVC failed without saying why (run with -v)'}"


def share(direction: str, project: Path, verbose: bool = False) -> None:
    """``dvc push`` or ``dvc pull`` in ``project``; a ``UserError`` with the cause on failure."""
    remote = default_remote(project)
    command = [sys.executable, "-m", "dvc", direction] + (["-v"] if verbose else [])
    shown = _Shown()
    try:
        run_command(command, project, shown)  # type: ignore[arg-type]
    except StageFailedError:
        errors = [line for line in shown.lines if line.startswith("ERROR")]
        raise UserError(cause(errors or shown.lines, remote)) from None
    if direction == "pull":
        run_command([sys.executable, "-m", "dvc", "status"], project, shown)  # type: ignore[arg-type]


class _Shown:
    """Where ``run_command`` logs DVC's lines: those a user reads go to stdout as DVC printed
    them, the noise and the errors (said once, as the cause) do not; all are kept."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, _level: int, line: str) -> None:
        self.lines.append(line)
        if not _NOISE.match(line) and not line.startswith("ERROR"):
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.share", description=__doc__.splitlines()[0])
    parser.add_argument("direction", choices=["push", "pull"])
    parser.add_argument("--project", type=Path, default=Path("."))
    parser.add_argument("-v", "--verbose", action="store_true", help="DVC's own debug output")
    args = parser.parse_args(argv)
    try:
        share(args.direction, args.project.resolve(), args.verbose)
    except UserError as err:
        sys.stderr.write(f"make {args.direction}: error: {err}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
