"""The DIMSE peer administration API: the `medaiflow peers` commands over HTTP.

A peer acts with a role's rights on every association it opens, so only an
admin user may register or remove one (as only one may add users); reading
the list needs an authenticated identity, as the model list does.
"""

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from server.auth.access import Principal
from server.auth.scopes import Role
from server.errors import error_response
from server.services import services

router = APIRouter()


class NewPeer(BaseModel):
    aeTitle: str
    host: str
    role: Literal["admin", "modality", "clinician", "ai-operator", "auditor"]


def _unless_admin_user(request: Request, what: str) -> Response | None:
    principal: Principal = request.state.principal
    if principal.client or principal.role != Role.ADMIN.value:
        return error_response(403, f"{principal.name} may not {what}: a peer acts with a role's rights, "
                                   "which only an admin user may confer")
    return None


@router.get("/dicom-peers")
def list_peers(request: Request) -> JSONResponse:
    return JSONResponse([peer.to_json() for peer in services(request).peers.all()])


@router.post("/dicom-peers", status_code=201)
def add_peer(request: Request, body: NewPeer) -> Response:
    refused = _unless_admin_user(request, "register a DICOM peer")
    if refused is not None:
        return refused
    peer = services(request).peers.add(body.aeTitle, body.host, Role(body.role))
    return JSONResponse(peer.to_json(), status_code=201)


@router.delete("/dicom-peers/{ae_title}", status_code=204)
def remove_peer(request: Request, ae_title: str) -> Response:
    refused = _unless_admin_user(request, "remove a DICOM peer")
    if refused is not None:
        return refused
    services(request).peers.remove(ae_title)
    return Response(status_code=204)
