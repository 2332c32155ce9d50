"""Temporal Cloud or a TLS cluster through the SDK's environment variables, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from warmpool.temporal import connect_options


def test_no_variable_gives_a_plain_connection() -> None:
    assert connect_options({"TEMPORAL_ADDRESS": "elsewhere:7233"}) == {}


def test_an_api_key_turns_tls_on_as_temporal_cloud_needs() -> None:
    assert connect_options({"TEMPORAL_API_KEY": "k-123"}) == {"api_key": "k-123", "tls": True}


def test_client_certificates_are_read_from_their_files(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_bytes(b"CERT")
    (tmp_path / "k.pem").write_bytes(b"KEY")
    options = connect_options(
        {
            "TEMPORAL_TLS_CLIENT_CERT_PATH": str(tmp_path / "c.pem"),
            "TEMPORAL_TLS_CLIENT_KEY_PATH": str(tmp_path / "k.pem"),
        }
    )
    tls = options["tls"]
    assert (tls.client_cert, tls.client_private_key) == (b"CERT", b"KEY")
    with pytest.raises(FileNotFoundError):
        connect_options({"TEMPORAL_TLS_CLIENT_CERT_PATH": str(tmp_path / "missing.pem")})
