"""serving/proxy_guard.py reaches into Ray Serve's proxy (uvicorn's server and connections), which no
public setting covers: like distributed/private_api.py it names the versions it was read on, and an
upgrade of either library fails here, by name, before it can quietly turn the guards off."""

import logging

import pytest

pytest.importorskip("ray.serve")

from dimerec_dist.serving import proxy_guard  # noqa: E402


def test_the_proxy_guard_was_read_on_the_installed_ray_and_uvicorn():
    moved = proxy_guard.versions_moved()
    assert not moved, f"re-check serving/proxy_guard.py against these versions (checked, installed): {moved}"


def test_other_versions_are_a_warning_naming_the_module(monkeypatch, caplog):
    monkeypatch.setitem(proxy_guard.CHECKED_AGAINST, "uvicorn", "0.0.1")
    with caplog.at_level(logging.WARNING, logger="dimerec.serve"):
        proxy_guard.warn_if_versions_moved()
    assert "serving/proxy_guard.py reaches into Ray Serve's proxy as read on uvicorn 0.0.1" in caplog.text
