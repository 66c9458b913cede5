"""A node URL is one published pattern: whatever it admits splits into an http(s) scheme and a
host, so the REST API's document and `NodeStore` accept one and the same set."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geosync.errors import ValidationError
from geosync.nodes import URL_PATTERN, normalize_url


@settings(max_examples=300, deadline=None)
@given(st.from_regex(URL_PATTERN, fullmatch=True))
def test_every_url_the_pattern_admits_is_stored_with_a_trailing_slash(url: str) -> None:
    parts = urlsplit(url)

    assert parts.scheme.lower() in ("http", "https") and parts.netloc
    assert normalize_url(url) == (url if url.endswith("/") else url + "/")


@pytest.mark.parametrize(
    "url",
    ["ftp://geo.example/", "http://", "http://a b/", "http://[::1/", "http://[zz]/", "http://é/"],
)
def test_a_url_outside_the_pattern_is_refused(url: str) -> None:
    assert not re.fullmatch(URL_PATTERN, url)
    with pytest.raises(ValidationError, match="must be an http:// or https:// URL"):
        normalize_url(url)
