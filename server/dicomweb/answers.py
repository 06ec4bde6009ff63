"""Data sets answered in the model the client negotiated (PS3.18 §8.7.3.2):
DICOM JSON as one array, or the Native DICOM Model as multipart/related
with one XML document per data set."""

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from dicom.multipart import iter_multipart, multipart_related_type, new_boundary
from dicom.native_xml import native_xml
from server.dicomweb.context import DICOM_JSON, DICOM_XML


def _xml_parts(data_sets: list[dict[str, Any]]) -> tuple[str, bytes]:
    boundary = new_boundary()
    body = b"".join(iter_multipart(boundary, ((DICOM_XML, (native_xml(data_set),)) for data_set in data_sets)))
    return multipart_related_type(boundary, DICOM_XML), body


async def data_sets_response(
    data_sets: list[dict[str, Any]], model: str, headers: Mapping[str, str] | None = None
) -> Response:
    if model == DICOM_JSON:
        return Response(orjson.dumps(data_sets), media_type=DICOM_JSON, headers=headers)
    if not data_sets:
        # A multipart body needs at least one part (RFC 2046 §5.1.1): no match is 204.
        return Response(status_code=204, headers=headers)
    media_type, body = await run_in_threadpool(_xml_parts, data_sets)
    return Response(body, media_type=media_type, headers=headers)
