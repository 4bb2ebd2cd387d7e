"""Adding objects (TAXII 2.1 section 5.5, POST) and deleting one (section 5.7).

A POST to an inbox is read and validated object by object (taxii_server/envelope.py); the
status resource says which were accepted and why the others were not
(taxii_server/status_body.py). Accepted objects are routed like any notification, with the
posting user's partner recorded as their source.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from connector.feedback import apply_objects
from connector.store import VersionFilter
from connector.submission import Outcome, SubmissionResult, Submissions
from taxii_server.auth import Principal
from taxii_server.context import principal, state
from taxii_server.envelope import envelope_objects
from taxii_server.errors import TaxiiError, not_found
from taxii_server.media import taxii_response
from taxii_server.routes.collections import visible_collection
from taxii_server.routes.objects import ObjectQuery, object_query
from taxii_server.status_body import status_body

router = APIRouter()


def _check_content_type(value: str | None) -> None:
    parts = [p.strip().lower() for p in (value or "").split(";")]
    params = dict(p.partition("=")[::2] for p in parts[1:])
    if parts[0] != "application/taxii+json" or params.get("version", "2.1").strip('"') != "2.1":
        raise TaxiiError(
            415, "Unsupported media type", "POST a TAXII envelope as application/taxii+json;version=2.1."
        )


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TaxiiError(413, "Request too large", f"The body exceeds max_content_length ({limit} bytes).")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TaxiiError(
                413, "Request too large", f"The body exceeds max_content_length ({limit} bytes)."
            )
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/{api_root}/collections/{collection_id}/objects/")
async def add_objects(
    request: Request, api_root: str, collection_id: str, who: Principal = Depends(principal)
) -> Response:
    visible_collection(request, api_root, collection_id, who)
    feedback_post = collection_id in who.feedback
    if not feedback_post and (collection_id not in who.writable or who.partner is None):
        raise TaxiiError(403, "Forbidden", "This user may not write to this collection.")
    s = state(request)
    _check_content_type(request.headers.get("content-type"))
    received = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = await _read_body(request, s.config.server.max_content_length)
    if feedback_post:
        # A recipient's opinions and notes on its own notifications (connector/feedback.py);
        # the envelope is read whole first, so a malformed one (400, 413) writes nothing.
        objects = list(envelope_objects(body, s.config.server.max_objects_per_post))
        said = await run_in_threadpool(apply_objects, s.store, str(who.recipient), who.username, objects)
        result = SubmissionResult(outcomes=[Outcome(o.index, o.id, o.version, o.message) for o in said])
    else:
        submissions = Submissions(s.config, s.store, router=s.router)
        # Objects are read and validated one at a time, the valid ones kept; a malformed envelope
        # (400) or one over max_objects_per_post (413) raises before anything is written.
        result = await run_in_threadpool(
            submissions.submit,
            partner=who.partner,
            objects=envelope_objects(body, s.config.server.max_objects_per_post),
            username=who.username,
            inbox_collection=collection_id,
        )
    status = status_body(result, received)
    await run_in_threadpool(s.store.save_status, status, username=who.username, collection_id=collection_id)
    await run_in_threadpool(
        s.store.audit,
        username=who.username,
        action="feedback" if feedback_post else "add-objects",
        collection_id=collection_id,
        objects=status["success_count"],
        status=202,
    )
    return taxii_response(status, status=202)


@router.delete("/{api_root}/collections/{collection_id}/objects/{object_id}/")
def delete_object(
    request: Request,
    api_root: str,
    collection_id: str,
    object_id: str,
    who: Principal = Depends(principal),
    q: ObjectQuery = Depends(object_query),
) -> Response:
    visible_collection(request, api_root, collection_id, who)
    if not who.operator:
        raise TaxiiError(403, "Forbidden", "Only operators may delete objects.")
    versions = q.versions or VersionFilter(all=True)  # spec: without match[version], every version
    # match[spec_version] selects too (5.7); ignoring it would delete every version.
    removed = 0
    if q.spec_version_matches:
        removed = state(request).view.remove(collection_id, object_id, versions)
    if not removed:
        raise not_found("object")
    state(request).store.audit(
        username=who.username,
        action="delete-object",
        collection_id=collection_id,
        objects=removed,
        status=200,
    )
    return Response(status_code=200)
