"""What a request may hold, read entirely in memory (nothing from a request reaches the
filesystem): a body up to ``serve_model.max_body_bytes``, at most ``serve_model.max_instances`` images, as
TF Serving's JSON (``{"instances": [{"b64": ...}]}``, or columnar ``{"inputs": ...}``), a
multipart form of files, or one image as the raw body. Anything else is a :class:`RequestError`:
an HTTP status and a one-line message, answered as ``{"error": message}``."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import HeaderParser
from email.policy import HTTP

from starlette.requests import Request

INPUT_NAME = "image_bytes"  # the signature's one input: TF Serving's convention for images


class RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Upload:
    """One image of a request: its bytes and what to call it in answers and errors."""

    name: str
    data: bytes


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body is {int(declared)} bytes, over serve_model.max_body_bytes "
                              f"({limit}); send fewer or smaller images per request")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body is over serve_model.max_body_bytes ({limit} bytes); send "
                                  "fewer or smaller images per request")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_count(count: int, limit: int) -> None:
    if count > limit:
        raise RequestError(413, f"{count} images in one request, over serve_model.max_instances "
                                f"({limit}); split them into several requests")


def _counted(uploads: list[Upload], limit: int) -> list[Upload]:
    if not uploads:
        raise RequestError(400, "no image in the request")
    _check_count(len(uploads), limit)
    return uploads


def _b64(value: object, where: str) -> bytes:
    if isinstance(value, dict) and INPUT_NAME in value and len(value) == 1:
        value = value[INPUT_NAME]  # the input named, as for a model with several
    if not (isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str)):
        raise RequestError(400, f'{where}: expected {{"b64": "<base64 of an image file>"}} '
                              f'(or {{"{INPUT_NAME}": {{"b64": ...}}}})')
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{where}: b64 is not valid base64") from None


def tf_serving_instances(body: bytes, limit: int) -> tuple[list[Upload], bool]:
    """The images of a TF Serving predict request, and whether it was columnar (``inputs``,
    answered as ``outputs``) rather than row format (``instances``, answered as
    ``predictions``)."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(400, f"the body is not JSON ({err})") from None
    except RecursionError:  # "[[[[..." nested past the parser's stack
        raise RequestError(400, "the body is JSON nested too deeply") from None
    if not isinstance(request, dict):
        raise RequestError(400, 'the body must be a JSON object with "instances" or "inputs"')
    signature = request.get("signature_name", "serving_default")
    if signature != "serving_default":
        raise RequestError(400, f"signature_name {signature!r}: this model has serving_default only")
    unknown = set(request) - {"instances", "inputs", "signature_name"}
    if unknown or ("instances" in request) == ("inputs" in request):
        raise RequestError(400, 'the body must have one of "instances" (row format) or "inputs" '
                              f'(columnar){"; unknown: " + ", ".join(sorted(unknown)) if unknown else ""}')
    columnar = "inputs" in request
    values = request["inputs"] if columnar else request["instances"]
    if columnar and isinstance(values, dict):
        if set(values) != {INPUT_NAME}:
            raise RequestError(400, f'inputs: the one input is "{INPUT_NAME}"')
        values = values[INPUT_NAME]
    if not isinstance(values, list):
        raise RequestError(400, f'{"inputs" if columnar else "instances"} must be a list')
    key = "inputs" if columnar else "instances"
    _check_count(len(values), limit)  # before decoding any of them
    uploads = [Upload(f"{key}[{i}]", _b64(v, f"{key}[{i}]")) for i, v in enumerate(values)]
    return _counted(uploads, limit), columnar


MAX_PART_HEADER_BYTES = 8192


def form_images(body: bytes, content_type: str, limit: int) -> list[Upload]:
    """The files of a ``multipart/form-data`` body, or the body itself for an ``image/*`` one.

    The form is read in one pass that stops at the first part past ``limit`` files or the
    first part that is not a file, so a body of a million tiny parts costs no more than
    ``limit`` of them (the email module's parser took 56 s on 19 MB of them). Run it off the
    event loop: it is still work on up to ``max_body_bytes``."""
    kind = content_type.split(";")[0].strip().lower()
    if kind.startswith("image/") or kind == "application/octet-stream":
        return _counted([Upload("body", body)] if body else [], limit)
    if kind != "multipart/form-data":
        raise RequestError(415, f"Content-Type {kind or 'missing'}: send images as multipart/form-data "
                              "(curl -F image=@photo.jpg) or one image as the body")
    if "\r" in content_type or "\n" in content_type:
        raise RequestError(400, "malformed Content-Type")
    header = HeaderParser(policy=HTTP).parsestr(f"Content-Type: {content_type}\r\n\r\n")
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not 0 < len(boundary) <= 70:
        raise RequestError(400, "the multipart body is malformed (its boundary or parts)")
    uploads = [Upload(name, data) for name, data in _parts(body, boundary.encode("latin-1"), limit)]
    return _counted(uploads, limit)


def _malformed() -> RequestError:
    return RequestError(400, "the multipart body is malformed (its boundary or parts)")


def _parts(body: bytes, boundary: bytes, limit: int) -> Iterator[tuple[str, bytes]]:
    """Each file part's name and bytes (RFC 7578), refusing a part that is not a file, and
    the part past ``limit``, as soon as it is reached."""
    delimiter = b"--" + boundary
    if not body.startswith(delimiter):
        first = body.find(b"\r\n" + delimiter)  # after a preamble
        if first < 0:
            raise _malformed()
        body = body[first + 2:]
    position, index = len(delimiter), 0
    while not body.startswith(b"--", position):  # the closing delimiter ends the form
        line_end = body.find(b"\r\n", position)
        if line_end < 0 or body[position:line_end].strip(b" \t"):
            raise _malformed()
        head_end = body.find(b"\r\n\r\n", line_end, line_end + MAX_PART_HEADER_BYTES)
        if head_end < 0:
            raise _malformed()
        data_end = body.find(b"\r\n" + delimiter, head_end + 4)
        if data_end < 0:
            raise _malformed()
        index += 1
        _check_count(index, limit)
        yield _file_part(body[line_end + 2:head_end + 2], index), body[head_end + 4:data_end]
        position = data_end + 2 + len(delimiter)


def _file_part(headers: bytes, index: int) -> str:
    """A part's file name, or a RequestError for a part that is not a file."""
    part = HeaderParser(policy=HTTP).parsestr(headers.decode("utf-8", errors="replace") + "\r\n")
    field = part.get_param("name", header="content-disposition") or f"part {index}"
    filename = part.get_filename()
    if filename is None:
        raise RequestError(400, f"form field {field!r} is not a file; send each image as a file "
                              "(curl -F image=@photo.jpg)")
    if part.get("content-transfer-encoding", "binary").strip().lower() not in (
            "binary", "8bit", "7bit"):
        raise RequestError(400, f"form file {filename!r}: send it as binary, not "
                              f"{part['content-transfer-encoding']}")
    return filename
