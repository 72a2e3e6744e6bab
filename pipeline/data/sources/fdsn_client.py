"""The FDSN web services as the ``fdsn`` source uses them: one obspy client per data centre, made on first use,
every raw response cached on disk (written atomically, HTTP 204 "no data" included, so a killed run re-run asks
only for what it lacks), requests spaced by one rate limit, transient failures retried, and a service that
cannot be reached at all one :class:`EdgepickError`."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
import warnings
from pathlib import Path

from pipeline.artifacts import atomic_write_bytes
from pipeline.errors import EdgepickError

log = logging.getLogger(__name__)

RETRIES = 2  # extra attempts after a timeout, 429, 500, 502 or 503


CONNECTION_FAILURES_FATAL = 5  # consecutive "cannot connect" failures that make a service unreachable


class RequestFailed(Exception):
    """One request failed after its retries; ``error`` is obspy's exception."""

    def __init__(self, message: str, error: Exception):
        super().__init__(message)
        self.error = error


class RateLimiter:
    """Spaces calls to at most ``per_second`` a second (no limit when it is not positive)."""

    def __init__(self, per_second: float, clock=time.monotonic, sleep=time.sleep):
        self.interval = 1.0 / per_second if per_second and per_second > 0 else 0.0
        self._clock, self._sleep = clock, sleep
        self._next = -math.inf

    def wait(self) -> None:
        now = self._clock()
        if now < self._next:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + self.interval


def client_url(name: str) -> str:
    """What ``obspy.clients.fdsn.Client`` accepts: a known short name (IRIS is EarthScope now) or a base URL."""
    name = name.strip()
    if not name:
        raise EdgepickError("data.fdsn.event_client / waveform_client must name an FDSN service or a base URL")
    if name.upper() in ("IRIS", "IRISDMC"):
        return "EARTHSCOPE"
    return name


class Service:
    """One FDSN data centre: an obspy client made on first use, a disk cache of raw responses, a rate limit."""

    METHODS = {"event": "get_events", "station": "get_stations", "dataselect": "get_waveforms"}

    def __init__(self, name: str, role: str, cache_dir: Path, limiter: RateLimiter, timeout: float):
        self.name, self.role = client_url(name), role
        self.cache_dir, self.limiter, self.timeout = Path(cache_dir), limiter, timeout
        self._client = None
        self.requests = 0  # requests sent (not cache hits)
        self.cache_hits = 0
        self.successes = 0
        self._connection_failures = 0

    def client(self):
        if self._client is None:
            from obspy.clients.fdsn import Client

            self.limiter.wait()
            try:
                self._client = Client(self.name, timeout=self.timeout)
            except Exception as error:  # obspy raises FDSNException, ValueError, URLError, socket errors
                raise EdgepickError(
                    f"FDSN {self.role} service {self.name} is unreachable or not an FDSN service "
                    f"({type(error).__name__}: {one_line(error)})"
                ) from error
        return self._client

    def cache_path(self, service: str, params: dict) -> Path:
        text = json.dumps([self.name, service, sorted((k, str(v)) for k, v in params.items())])
        return self.cache_dir / service / hashlib.sha256(text.encode()).hexdigest()[:32]

    def fetch(self, service: str, params: dict) -> bytes | None:
        """The raw response (QuakeML, StationXML, miniSEED), or ``None`` for "no data"; cached on disk."""
        from obspy.clients.fdsn.header import (
            FDSNBadGatewayException,
            FDSNException,
            FDSNInternalServerException,
            FDSNNoDataException,
            FDSNNoServiceException,
            FDSNServiceUnavailableException,
            FDSNTimeoutException,
            FDSNTooManyRequestsException,
        )

        path = self.cache_path(service, params)
        nodata = path.with_suffix(".nodata")
        data_path = path.with_suffix(".bin")
        if data_path.is_file():
            self.cache_hits += 1
            return data_path.read_bytes()
        if nodata.is_file():
            self.cache_hits += 1
            return None
        method = getattr(self.client(), self.METHODS[service])
        retryable = (
            FDSNTimeoutException,
            FDSNTooManyRequestsException,
            FDSNServiceUnavailableException,
            FDSNBadGatewayException,
            FDSNInternalServerException,
        )
        error: Exception | None = None
        for attempt in range(RETRIES + 1):
            if attempt:
                time.sleep(min(2.0**attempt, 8.0) * 0.5)
            self.limiter.wait()
            self.requests += 1
            buffer = io.BytesIO()
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="The standard parameter")
                    method(filename=buffer, **params)
            except FDSNNoDataException:
                self._connection_failures = 0
                self.successes += 1
                atomic_write_bytes(nodata, b"")
                return None
            except FDSNNoServiceException as caught:
                raise EdgepickError(f"FDSN {self.role} service {self.name} offers no {service} service") from caught
            except retryable as caught:
                error = caught
                self._note_connection(caught)
                continue
            except (FDSNException, TypeError, ValueError, OSError) as caught:
                error = caught
                self._note_connection(caught)
                break
            self._connection_failures = 0
            self.successes += 1
            data = buffer.getvalue()
            atomic_write_bytes(data_path, data)
            return data
        raise RequestFailed(f"{service} request failed ({type(error).__name__})", error)

    def _note_connection(self, error: Exception) -> None:
        text = str(error)
        if "URLError" in text or "Connection" in text or "timed out" in text.lower() or "Timed Out" in text:
            self._connection_failures += 1
        else:
            self._connection_failures = 0
        if self._connection_failures >= CONNECTION_FAILURES_FATAL:
            raise EdgepickError(
                f"FDSN {self.role} service {self.name} is unreachable ({self._connection_failures} requests in a row "
                f"failed: {one_line(error)}); re-run to resume from the cache"
            )


def one_line(error: object) -> str:
    text = " ".join(str(error).split())
    return text[:300]
