"""Whether a freshly started Corrosion node answers on its API yet."""

from __future__ import annotations

import http.client
import json
import urllib.request


def api_answers(address: str, timeout: float = 2) -> bool:
    """True when Corrosion's API at HOST:PORT runs a query; any failure is "not yet"."""
    request = urllib.request.Request(
        f"http://{address}/v1/queries",
        data=json.dumps("SELECT 1").encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except (OSError, ValueError, http.client.HTTPException):
        # Something else on the port (an HTTP error, a banner that is not HTTP) is "not yet" too.
        return False
    return True
