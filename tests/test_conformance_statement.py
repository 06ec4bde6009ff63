"""conformance/DICOM_CONFORMANCE_STATEMENT.md stays true: its tables are read
and held against the server's routes, codecs, rendered media types,
character sets and default limits."""

from pathlib import Path

import pydicom.charset
from pydicom.uid import UID

from dicom import transfer_syntax
from dicom.rendering import RENDERED_MEDIA_TYPES
from dicom.workitems import MODEL_SCHEME, UPS_PUSH_SOP_CLASS
from server.dicomweb.routes import router
from server.settings import Settings

STATEMENT = Path(__file__).resolve().parent.parent / "conformance" / "DICOM_CONFORMANCE_STATEMENT.md"


def _table(name: str) -> list[list[str]]:
    """The rows of the table between <!-- name --> and <!-- /name -->, header left out."""
    text = STATEMENT.read_text()
    block = text.split(f"<!-- {name} -->", 1)[1].split(f"<!-- /{name} -->", 1)[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in block.strip().splitlines() if line.startswith("|")]
    return rows[2:]


def test_the_services_are_the_servers_dicomweb_routes():
    declared = {(method, path) for method, path, _ in _table("services")}
    # A WebSocket route opens with a GET handshake.
    served = {(method, route.path) for route in router.routes
              for method in getattr(route, "methods", {"GET"}) if method != "HEAD"}
    assert declared == served


def test_the_transfer_syntax_table_matches_the_codecs_here():
    rows = _table("transfer-syntaxes")
    listed = {uid for _, uid, *_ in rows}
    known = {value for name, value in vars(transfer_syntax).items()
             if name.isupper() and isinstance(value, str) and value.startswith("1.2.840.10008.1.2")}
    assert listed == known
    for _, uid, stored, decompressed, media_type in rows:
        assert stored == "yes"
        assert decompressed == ("yes" if transfer_syntax.can_decompress(uid) else "no"), uid
        assert media_type == transfer_syntax.bulk_data_media_type(uid), uid


def test_the_video_table_is_what_video_bulk_data_is_sent_as():
    assert {uid: media_type for _, uid, media_type in _table("video")} == transfer_syntax.VIDEO_MEDIA_TYPES


def test_the_rendered_media_types_are_those_served():
    assert {row[0] for row in _table("rendered")} == set(RENDERED_MEDIA_TYPES)


def test_every_listed_character_set_is_decoded():
    for (term,) in _table("character-sets"):
        assert term in pydicom.charset.python_encoding, term


def test_the_limits_are_the_default_settings():
    limits = {setting: default.split()[0] for _, default, setting in _table("limits")}
    defaults = Settings()
    assert limits == {"MEDAIFLOW_MAX_STOW_BYTES": str(defaults.max_stow_bytes),
                      "MEDAIFLOW_QIDO_MAX_LIMIT": str(defaults.qido_max_limit)}


def test_the_ups_sop_classes_are_named_by_their_uids_and_push_is_the_workitems_class():
    rows = _table("ups-sop-classes")
    for name, uid, _ in rows:
        assert UID(uid).name == f"Unified Procedure Step - {name} SOP Class", uid
    supported = {uid for _, uid, role in rows if role.startswith("SCP")}
    assert UPS_PUSH_SOP_CLASS in supported
    assert f"CodingSchemeDesignator `{MODEL_SCHEME}`" in STATEMENT.read_text()


def test_the_dimse_sop_classes_are_those_the_gateway_supports():
    from pynetdicom.presentation import StoragePresentationContexts

    from server.dimse.query import FIND_MODELS, GET_MODELS

    rows = _table("dimse-sop-classes")
    named = {uid: name for name, uid, _, _ in rows if uid != "(many)"}
    for uid, name in named.items():
        assert UID(uid).name == name, uid
    assert set(named) == {"1.2.840.10008.1.1", *FIND_MODELS, *GET_MODELS}
    assert {role for _, _, role, _ in rows} == {"SCP"}
    assert len(StoragePresentationContexts) > 100  # "every Storage SOP class" is no handful
