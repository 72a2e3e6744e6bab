"""Picks in the formats seismic networks ingest: the firmware's JSON pick lines (``{"type": "pick", "phase": "P",
"time": <epoch s>, "prob": ..., "fwhm": ..., "unc": ...}``, docs/firmware.md) of one station as an obspy
``Catalog``, written as QuakeML, SeisComP XML or NonLinLoc phase lines by obspy's own writers, and as Earthworm
``TYPE_PICK_SCNL`` messages (obspy has no writer for them), written here as pick_ew writes them.

A live pick the firmware later retracts (a ``{"type": "retract"}`` line; the pick dict's "retracted" is then not
None) stays in QuakeML and SeisComP XML with evaluation status "rejected", as a network keeps a withdrawn automatic
pick, and is left out of NonLinLoc phase lines and of Earthworm files written at once (a locator would use it).

A station is named by a waveform id ``NET.STA.LOC.CHA``: SEED codes, the location may be empty, CHA the band and
instrument codes of its channels with or without a component (``HH`` or ``HHZ``). The student reads Z, N and E: a P
pick is placed on the vertical (``HHZ``), an S pick on the north component (``HHN``), the first horizontal the
firmware reads (an S pick is seen on both horizontals; networks expect one channel per pick).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from pipeline.artifacts import atomic_file
from pipeline.errors import EdgepickError

# The namespace of the pick's probability in QuakeML (obspy writes and reads a pick's ``extra`` there).
EDGEPICK_NAMESPACE = "urn:edgepick:pick:1.0"
EDGEPICK_PREFIX = "edgepick"

# obspy's format name of each output, and the file suffix written for it.
CATALOG_FORMATS = {"quakeml": ("QUAKEML", ".quakeml.xml"), "sc3ml": ("SCML", ".sc3ml.xml"),
                   "nlloc": ("NLLOC_OBS", ".nlloc.obs")}
EARTHWORM_SUFFIX = ".pick_scnl"
FORMATS = (*CATALOG_FORMATS, "earthworm")

# Earthworm's message type of TYPE_PICK_SCNL (earthworm_global.d) and the ids a pick message carries by default:
# INST_UNKNOWN (earthworm_global.d) and module 0; set yours from earthworm.d.
TYPE_PICK_SCNL = 8
EARTHWORM_INSTALLATION = 255
EARTHWORM_MODULE = 0
# Hypoinverse weight 0 (best) ... 4 (unused) from the pick's one-sigma uncertainty: weight k while unc <= bin k.
EARTHWORM_WEIGHT_BINS_S = (0.05, 0.1, 0.2, 0.4)
EARTHWORM_MAX_SEQUENCE = 999999  # pick_ew's pick index wraps to 0 after this
PHASES = ("P", "S")  # the phases the student picks
# A pick "time" is a UTC epoch second from 1970 (a device never sent "#t0" counts from 0) to 2100: later is no
# station clock (1e20 s ended obspy in an OverflowError)
LAST_PICK_TIME = 4102444800.0


class WaveformId(NamedTuple):
    network: str
    station: str
    location: str
    channel: str  # band + instrument codes (HH), the component added per phase

    def __str__(self) -> str:
        return f"{self.network}.{self.station}.{self.location}.{self.channel}"

    def channel_for(self, phase: str) -> str:
        """The channel a pick of ``phase`` is placed on: Z for P (and any other phase), N for S."""
        return self.channel + ("N" if phase == "S" else "Z")

    def station_id(self) -> str:
        return f"{self.network}.{self.station}.{self.location}"


_WAVEFORM_ID = re.compile(r"^([A-Za-z0-9]{1,2})\.([A-Za-z0-9]{1,5})\.([A-Za-z0-9]{0,2}|--)\.([A-Za-z0-9]{2})([A-Za-z0-9]?)$")


def parse_waveform_id(text: str) -> WaveformId:
    """``NET.STA.LOC.CHA`` (SEED codes: network 1-2, station 1-5, location 0-2 letters or digits, "--" for none;
    CHA 2 or 3: its component is replaced per phase) as a :class:`WaveformId`; a malformed one is refused."""
    match = _WAVEFORM_ID.match(str(text).strip())
    if not match:
        raise EdgepickError(f"station id {text!r} is not NET.STA.LOC.CHA (SEED codes, e.g. OK.X34..HH or "
                            f"OK.X34.00.HHZ)")
    network, station, location, channel, _component = match.groups()
    return WaveformId(network, station, "" if location == "--" else location, channel)


def pick_uncertainty(pick: dict) -> float:
    """The pick's one-sigma time uncertainty in seconds: the firmware's "unc", or pipeline.model.picking's
    "uncertainty_s"."""
    value = pick.get("unc", pick.get("uncertainty_s"))
    if value is None:
        raise EdgepickError(f"pick at {pick.get('time')} has no uncertainty (a firmware older than its fwhm field?)")
    return float(value)


def _shown(value) -> str:
    """A JSON value as the device wrote it (NaN, Infinity, "abc", ["P"]), cut to a readable length."""
    import json

    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number_problem(pick: dict, key: str, low: float, high: float, meaning: str) -> str | None:
    value = pick.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and low <= value <= high):
        return f'"{key}" {_shown(value)} is not {meaning}'
    return None


def pick_problem(pick: dict) -> str | None:
    """Why a firmware JSON pick cannot be kept (None when it can): a phase other than P or S, a time that is not an
    epoch second of 1970 ... 2100, a probability outside 0 ... 1, an uncertainty missing, negative or not finite, a
    sample that is not an index. Each of these ended the writers in a traceback, wrote QuakeML that fails its schema
    (NaN, a list as phase hint) or an Earthworm weight that lies (a negative unc was weight 0, the best), so a line
    like that is skipped and named, never written (issue 31)."""
    if pick.get("phase") not in PHASES:
        return f'"phase" {_shown(pick.get("phase"))} is not P or S'
    key = "unc" if "unc" in pick or "uncertainty_s" not in pick else "uncertainty_s"
    if pick.get(key) is None:
        return '"unc" is missing (a firmware older than its fwhm field?)'
    if "sample" in pick and (isinstance(pick["sample"], bool) or not isinstance(pick["sample"], int)
                             or pick["sample"] < 0):
        return f'"sample" {_shown(pick["sample"])} is not a sample index'
    return (_number_problem(pick, "time", 0.0, LAST_PICK_TIME, "an epoch second of 1970 ... 2100")
            or _number_problem(pick, "prob", 0.0, 1.0, "a probability (0 ... 1)")
            or _number_problem(pick, key, 0.0, math.inf, "an uncertainty in seconds (>= 0)"))


def _resource_text(text: str) -> str:
    """``text`` in the characters a QuakeML resource id allows after its authority."""
    return re.sub(r"[^\w\-.*()+?~'=,;#]", "_", str(text)) or "_"


def _compact_time(time) -> str:
    return time.strftime("%Y%m%dT%H%M%S.%f")


def method_id(model: str):
    """The resource id of the picker: edgepick and the model it ran."""
    from obspy.core.event import ResourceIdentifier

    return ResourceIdentifier(f"smi:edgepick/picker/{_resource_text(model)}")


def is_retracted(pick: dict) -> bool:
    """Whether the firmware withdrew this pick by a later "retract" line."""
    return pick.get("retracted") is not None


def pick_key(pick: dict) -> tuple[str, str]:
    """What tells a station's picks apart: the phase and the time to the microsecond, of which its publicID is made
    (three identical pick lines made three picks of one publicID)."""
    from obspy import UTCDateTime

    return str(pick["phase"]), _compact_time(UTCDateTime(float(pick["time"])))


def pick_id(pick: dict, waveform_id: WaveformId) -> str:
    """The pick's publicID, made from the pick, so that rewriting a file keeps it."""
    phase, time = pick_key(pick)
    channel = waveform_id.station_id() + "." + waveform_id.channel_for(phase)
    return f"smi:edgepick/pick/{_resource_text(channel)}/{phase}/{time}"


def kept_picks(picks: Iterable[dict]) -> tuple[list[dict], list[str]]:
    """The picks that can be written (:func:`pick_problem`), each once (:func:`pick_key`), and why each other one
    was left out."""
    kept, problems, seen = [], [], set()
    for pick in picks:
        problem = pick_problem(pick)
        if problem is None and pick_key(pick) in seen:
            problem = f"{pick['phase']} at {pick['time']} repeats a pick kept already"
        if problem is not None:
            problems.append(f"pick at sample {_shown(pick.get('sample'))}: {problem}")
            continue
        seen.add(pick_key(pick))
        kept.append(pick)
    return kept, problems


def obspy_pick(pick: dict, waveform_id: WaveformId, model: str, agency: str = "", author: str = "edgepick"):
    """One firmware JSON pick as an obspy ``Pick``: time, one-sigma time uncertainty, phase hint, automatic,
    waveform id (the phase's channel), method id, creation info; its peak probability in ``extra`` (namespace
    :data:`EDGEPICK_NAMESPACE`) and as a comment; evaluation status "rejected" when it was retracted. Resource ids
    are made from the pick, so that rewriting a file keeps them."""
    from obspy import UTCDateTime
    from obspy.core.event import Comment, CreationInfo, Pick, QuantityError, ResourceIdentifier, WaveformStreamID
    from obspy.core.util import AttribDict

    time = UTCDateTime(float(pick["time"]))
    phase = str(pick["phase"])
    channel = waveform_id.channel_for(phase)
    stream = WaveformStreamID(network_code=waveform_id.network, station_code=waveform_id.station,
                              location_code=waveform_id.location, channel_code=channel)
    probability = float(pick["prob"])
    rid = pick_id(pick, waveform_id)
    out = Pick(resource_id=ResourceIdentifier(rid), time=time,
               time_errors=QuantityError(uncertainty=pick_uncertainty(pick)), waveform_id=stream,
               method_id=method_id(model), phase_hint=phase, evaluation_mode="automatic",
               creation_info=CreationInfo(agency_id=agency or None, author=author or None),
               comments=[Comment(text=f"edgepick peak probability {probability:.6f}",
                                 resource_id=ResourceIdentifier(rid + "/probability"))])
    if is_retracted(pick):
        out.evaluation_status = "rejected"
        out.comments.append(Comment(text="retracted by edgepick: not confirmed at the longer look-ahead",
                                    resource_id=ResourceIdentifier(rid + "/retracted")))
    out.extra = AttribDict({"probability": AttribDict({"value": f"{probability:.6f}",
                                                       "namespace": EDGEPICK_NAMESPACE})})
    return out


def picks_catalog(picks: Iterable[dict], waveform_id: WaveformId, model: str = "student", agency: str = "",
                  author: str = "edgepick"):
    """An obspy ``Catalog`` of one ``Event`` holding the picks (in time order) of one station: picks not yet
    associated with an origin, as an automatic picker hands them to a locator."""
    from obspy.core.event import Catalog, Event, ResourceIdentifier

    obspy_picks = sorted((obspy_pick(p, waveform_id, model, agency, author) for p in picks), key=lambda p: p.time)
    start = _compact_time(obspy_picks[0].time) if obspy_picks else "none"
    name = _resource_text(waveform_id.station_id())
    event = Event(resource_id=ResourceIdentifier(f"smi:edgepick/picks/{name}/{start}"), picks=obspy_picks)
    return Catalog(events=[event], resource_id=ResourceIdentifier(f"smi:edgepick/catalog/{name}/{start}"))


def write_catalog(catalog, path: str | Path, fmt: str) -> Path:
    """Write ``catalog`` to ``path`` atomically in ``fmt`` (a key of :data:`CATALOG_FORMATS`) with obspy's writer."""
    if fmt not in CATALOG_FORMATS:
        raise EdgepickError(f"unknown pick format {fmt!r}; known: {', '.join(FORMATS)}")
    obspy_format = CATALOG_FORMATS[fmt][0]
    kwargs = {"nsmap": {EDGEPICK_PREFIX: EDGEPICK_NAMESPACE}} if obspy_format == "QUAKEML" else {}
    if fmt == "nlloc":  # phase lines carry no status: a rejected pick would be located with
        catalog = catalog.copy()
        for event in catalog:
            event.picks = [p for p in event.picks if p.evaluation_status != "rejected"]
    with atomic_file(path, "wb") as handle:
        catalog.write(handle, format=obspy_format, **kwargs)
    return Path(path)


def write_quakeml(catalog, path: str | Path) -> Path:
    return write_catalog(catalog, path, "quakeml")


def write_sc3ml(catalog, path: str | Path) -> Path:
    """SeisComP XML (obspy's "SCML", which "SC3ML" names since obspy 1.5)."""
    return write_catalog(catalog, path, "sc3ml")


def write_nlloc_obs(catalog, path: str | Path) -> Path:
    return write_catalog(catalog, path, "nlloc")


# ---------------------------------------------------------------------------------------------------------------
# Earthworm TYPE_PICK_SCNL, as pick_ew's ReportPick (report.c) prints it:
#   "%d %d %d %d %s.%s.%s.%s %c%d %4d%02d%02d%02d%02d%02d.%02d0 %d %d %d"
#   type module installation index STA.CHA.NET.LOC <first motion><weight> YYYYMMDDhhmmss.hh0 amp amp amp
# e.g. "8 6 3 7226 PCC.SHZ.NC.01 U2 20040430210553.360 161 200 137" (Earthworm's rdpickcoda.c)
# ---------------------------------------------------------------------------------------------------------------
def earthworm_weight(uncertainty_s: float) -> int:
    """Hypoinverse weight 0 ... 4 of a one-sigma uncertainty (:data:`EARTHWORM_WEIGHT_BINS_S`)."""
    for weight, limit in enumerate(EARTHWORM_WEIGHT_BINS_S):
        if uncertainty_s <= limit:
            return weight
    return len(EARTHWORM_WEIGHT_BINS_S)


def earthworm_time(epoch_s: float) -> str:
    """pick_ew's pick time: UTC rounded to the nearest hundredth of a second, milliseconds' last digit 0.
    Rounded in whole hundredths (pick_ew rounds the seconds alone and can print second 60)."""
    from obspy import UTCDateTime

    hundredths = int(math.floor(float(epoch_s) * 100.0 + 0.5))
    seconds, fraction = divmod(hundredths, 100)
    return f"{UTCDateTime(seconds).strftime('%Y%m%d%H%M%S')}.{fraction:02d}0"


def earthworm_line(pick: dict, waveform_id: WaveformId, sequence: int, installation: int = EARTHWORM_INSTALLATION,
                   module: int = EARTHWORM_MODULE) -> str:
    """One TYPE_PICK_SCNL message (with its newline) for a firmware JSON pick: first motion "?" (the picker
    gives none), weight from the uncertainty, amplitudes 0 (pick_ew's three first half-cycle amplitudes, which
    the student does not measure), an empty location as Earthworm's "--"."""
    for name, value in (("installation", installation), ("module", module)):
        if not 0 <= int(value) <= 255:
            raise EdgepickError(f"Earthworm {name} id must lie in 0 ... 255, got {value}")
    scnl = (f"{waveform_id.station}.{waveform_id.channel_for(str(pick['phase']))}.{waveform_id.network}."
            f"{waveform_id.location or '--'}")
    weight = earthworm_weight(pick_uncertainty(pick))
    return (f"{TYPE_PICK_SCNL} {int(module)} {int(installation)} {int(sequence) % (EARTHWORM_MAX_SEQUENCE + 1)} "
            f"{scnl} ?{weight} {earthworm_time(pick['time'])} 0 0 0\n")


def write_earthworm(picks: Sequence[dict], waveform_id: WaveformId, path: str | Path, first_sequence: int = 1,
                    installation: int = EARTHWORM_INSTALLATION, module: int = EARTHWORM_MODULE) -> Path:
    """The picks (in time order; retracted ones left out) as TYPE_PICK_SCNL lines, numbered from ``first_sequence``,
    written atomically."""
    ordered = sorted((p for p in picks if not is_retracted(p)), key=lambda p: float(p["time"]))
    text = "".join(earthworm_line(p, waveform_id, first_sequence + k, installation, module)
                   for k, p in enumerate(ordered))
    with atomic_file(path, "w") as handle:
        handle.write(text)
    return Path(path)


def last_earthworm_sequence(path: str | Path) -> int | None:
    """The pick index of the last TYPE_PICK_SCNL line of an Earthworm pick file (None: no file, or no such line in
    its last 4 KB), read from its end, so that a long file costs nothing; bytes that are not UTF-8 (an editor's, a
    disk's) are no pick index and are passed over."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - 4096))
            tail = handle.read()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise EdgepickError(f"cannot read {path}: {error.strerror or error}") from None
    for line in reversed(tail.split(b"\n")):
        fields = line.split()
        if len(fields) >= 4 and fields[3].isdigit():
            return int(fields[3])
    return None


def next_earthworm_sequence(path: str | Path) -> int:
    """The pick index after the last line of an Earthworm pick file (1 for a new one), as pick_ew carries its
    index over restarts in its .ndx file."""
    last = last_earthworm_sequence(path)
    return 1 if last is None else (last + 1) % (EARTHWORM_MAX_SEQUENCE + 1)


def write_picks(picks: Sequence[dict], waveform_id: WaveformId, paths: dict[str, str | Path], model: str = "student",
                agency: str = "", author: str = "edgepick") -> list[Path]:
    """Each format of ``paths`` (format -> file: keys of :data:`FORMATS`) written from the same picks."""
    unknown = sorted(set(paths) - set(FORMATS))
    if unknown:
        raise EdgepickError(f"unknown pick format {unknown[0]!r}; known: {', '.join(FORMATS)}")
    written = []
    catalog = picks_catalog(picks, waveform_id, model, agency, author) if set(paths) & set(CATALOG_FORMATS) else None
    for fmt, path in paths.items():
        written.append(write_earthworm(picks, waveform_id, path) if fmt == "earthworm"
                       else write_catalog(catalog, path, fmt))
    return written
