"""An STA/LTA gate in front of the live picker (issue 30): the network runs only while the gate is open. How long
it is open on real continuous data (its duty, and so the live mode's instructions per second of data) and which
picks fall outside every open span (missed).

    SEISBENCH_CACHE_ROOT=../shared/seisbench python -m pipeline study gate \
        [--continuous data/transfer:test] [--teacher phasenet:okla] [--sets stead50,deepdenoiser99,obst_obs37,ncsc100] \
        [--pre-roll-s 25] [--hold-s 30] [--max-streams 0] [--max-traces 0] [--json out.json]

The gate: obspy's ``recursive_sta_lta`` on the vertical alone (a horizontal where the vertical is flat), demeaned
and band-passed causally (4-pole Butterworth, 1-20 Hz, as a field trigger), ``trigger_onset`` at the on / off ratios.
Each trigger opens the gate from its on time minus ``--pre-roll-s`` (the live window covers the past 30 s, so the
first window after opening can still give picks that far back) to its off time plus ``--hold-s``; a pick is kept if
it lies in an open span, missed otherwise. The network runs from the on time to off + hold only (the pre-roll is
recovered from the first window's past): that running duty is what the instructions are estimated from; the duty
with the pre-roll is printed beside it.

Continuous data: the windows of ``--continuous`` (60 s windows 30 s apart, each demeaned on its own) stitched back
into their station streams, the offsets at the seams undone; the reference picks are the teacher's on those
streams, by its own rule (0.3, first maximum), as the agreement study takes them. Labelled sets: the analyst's P
and S on each test trace. These are short event windows: the LTA is warmed with the trace's own pre-event noise
(the samples before the first arrival less 0.5 s, repeated ahead of the trace to one LTA length plus
``--pre-roll-s``); a trace with under 1 s of pre-event noise is "short" and run as it is (the LTA starts cold;
obspy holds the ratio at 0 for the first LTA length), counted in the table.

Instructions per second of data are an estimate: duty x today's live mode (32.0 M per second of data, issue 30),
plus the gate's own cost (~20 instructions a sample for the recursive STA/LTA and ~20 for the band-pass, at the
data's rate).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import EdgepickError, run_script

LIVE_INSTR_PER_S = 32.0e6  # today's live mode: the 30 s student window every 1 s (issue 30, make firmware-sim)
GATE_INSTR_PER_SAMPLE = 40.0  # estimate: recursive STA/LTA ~20 + a 2-biquad band-pass ~20
BAND_HZ = (1.0, 20.0)
PHASES = ("P", "S")
SETS = ("stead50", "deepdenoiser99", "obst_obs37", "ncsc100")
NOISE_MARGIN_S = 0.5
MIN_NOISE_S = 1.0
STRONG = 0.7  # a teacher pick at least this probable: a clear arrival


@dataclass(frozen=True)
class Setting:
    sta_s: float
    lta_s: float
    on: float
    off: float

    @property
    def name(self) -> str:
        return f"STA {self.sta_s:g}/LTA {self.lta_s:g} s, on {self.on:g}/off {self.off:g}"


SETTINGS = (Setting(0.5, 10.0, 3.0, 1.5), Setting(1.0, 30.0, 3.0, 1.5), Setting(0.5, 20.0, 4.0, 1.0),
            Setting(1.0, 30.0, 2.5, 1.0))


def prepare(z: np.ndarray, rate: float) -> np.ndarray:
    """The trigger's input: the vertical demeaned and band-passed causally (as a sensor's trigger filters)."""
    from scipy.signal import butter, sosfilt

    z = np.asarray(z, dtype=np.float64)
    z = np.nan_to_num(z - np.nanmean(z)) if z.size else z
    high = min(BAND_HZ[1], 0.45 * rate)
    sos = butter(2, (BAND_HZ[0], high), btype="bandpass", fs=rate, output="sos")
    return sosfilt(sos, z)


def open_spans(z: np.ndarray, rate: float, setting: Setting, pre_roll_s: float, hold_s: float,
               warm: int = 0) -> np.ndarray:
    """(n, 2) sample spans [start, end) where the gate is open on ``z`` (the raw channel), merged and clipped to
    the data; the first ``warm`` samples of ``z`` are a warm-up prefix: spans are given in samples after it."""
    from obspy.signal.trigger import recursive_sta_lta, trigger_onset

    n = len(z)
    nsta, nlta = int(round(setting.sta_s * rate)), int(round(setting.lta_s * rate))
    if n <= nlta:
        return np.zeros((0, 2), dtype=np.int64)
    ratio = recursive_sta_lta(prepare(z, rate), nsta, nlta)
    triggers = trigger_onset(ratio, setting.on, setting.off)
    if len(triggers) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    triggers = np.asarray(triggers, dtype=np.int64)
    starts = np.maximum(triggers[:, 0] - int(round(pre_roll_s * rate)), warm) - warm
    ends = np.minimum(triggers[:, 1] + int(round(hold_s * rate)) + 1, n) - warm
    keep = ends > starts
    return merge(np.stack([starts[keep], ends[keep]], axis=1))


def merge(spans: np.ndarray) -> np.ndarray:
    """Overlapping or touching [start, end) spans merged, sorted."""
    if len(spans) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    spans = spans[np.argsort(spans[:, 0])]
    out = [list(spans[0])]
    for a, b in spans[1:]:
        if a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return np.asarray(out, dtype=np.int64)


def duty(spans: np.ndarray, n: int) -> float:
    """The fraction of ``n`` samples inside the (merged) spans."""
    return float(np.clip(spans[:, 1], 0, n).sum() - np.clip(spans[:, 0], 0, n).sum()) / n if n else 0.0


def kept(spans: np.ndarray, samples) -> np.ndarray:
    """Per pick sample: inside an open span?"""
    samples = np.asarray(samples, dtype=np.float64)
    if len(spans) == 0:
        return np.zeros(samples.shape, dtype=bool)
    return ((samples[:, None] >= spans[None, :, 0]) & (samples[:, None] < spans[None, :, 1])).any(axis=1)


def gate_channel(w: np.ndarray, order: str) -> tuple[np.ndarray, bool]:
    """(the channel the gate runs on, not the vertical?): the vertical, or where it is flat (a dead channel) the
    first live horizontal, as a station with a dead vertical would be configured."""
    z = w[order.index("Z")]
    if np.nanstd(z) > 0:
        return z, False
    for k in range(len(order)):
        if order[k] != "Z" and np.nanstd(w[k]) > 0:
            return w[k], True
    return z, False


def warmed(z: np.ndarray, first: float, rate: float, lta_s: float, pre_roll_s: float) -> tuple[np.ndarray, int, bool]:
    """(the vertical with its pre-event noise repeated ahead of it, the prefix length, short?): the noise is the
    samples before ``first`` (the first arrival) less a margin; under MIN_NOISE_S of it the trace is short and
    returned as it is."""
    end = int(first - NOISE_MARGIN_S * rate) if np.isfinite(first) else len(z)
    if end < MIN_NOISE_S * rate:
        return z, 0, True
    noise = z[:end]
    need = int((lta_s + pre_roll_s) * rate)
    prefix = np.tile(noise, need // len(noise) + 1)[-need:]
    return np.concatenate([prefix, z]), need, False


def stitch(folder: Path, split: str, max_streams: int) -> tuple[list[np.ndarray], float, str]:
    """The windows of a continuous-data folder (SeisBench format, overlapping windows 30 s apart) put back together
    into (3, samples) arrays per station stream (source_id; a new one where windows stop overlapping), in time order,
    each window's own demeaning undone over the overlap (else every seam is a step the trigger fires on);
    ``max_streams`` > 0: the first that many."""
    from pipeline.data.traces import load_labelled

    waveforms, metadata, rate, order = load_labelled(folder, split)
    starts = np.array([np.datetime64(t.rstrip("Z")) for t in metadata["trace_start_time"]])
    streams = []
    for source in sorted(metadata["source_id"].unique()):
        rows = np.flatnonzero(metadata["source_id"].to_numpy() == source)
        rows = rows[np.argsort(starts[rows])]
        pieces, offset = [], np.zeros((3, 1))
        for k, i in enumerate(rows):
            window = waveforms[i].astype(np.float64) + offset
            step = 0
            if k + 1 < len(rows):
                step = int(round((starts[rows[k + 1]] - starts[i]) / np.timedelta64(1, "ms") * rate / 1000))
            if 0 < step < window.shape[1]:
                pieces.append(window[:, :step])
                # each window was demeaned on its own: carry the next one's constant offset over their overlap
                following = waveforms[rows[k + 1]][:, : window.shape[1] - step]
                offset = (window[:, step:] - following).mean(axis=1, keepdims=True)
            else:  # the last window, or the next does not overlap: a stream ends here
                streams.append(np.concatenate(pieces + [window], axis=1))
                pieces, offset = [], np.zeros((3, 1))
        if max_streams and len(streams) >= max_streams:
            return streams[:max_streams], rate, order
    return streams, rate, order


def teacher_picks(spec: str, streams: list[np.ndarray], rate: float, order: str) -> dict[str, list[np.ndarray]]:
    """Per phase, per stream: (sample, peak probability) rows of the teacher's picks (its own rule)."""
    from pipeline.model import runners
    from pipeline.model.annotation import dataset_curves

    teacher = runners.load_teacher(spec)
    curves = dataset_curves(teacher, streams, rate, order)
    rows = curves.pick_rows()
    return {p: [r * np.array([rate, 1.0]) if len(r) else np.zeros((0, 2)) for r in rows[p]] for p in PHASES}


def continuous_rows(streams, rate, order, picks, settings, pre_roll_s, hold_s, progress=True) -> list[dict]:
    from tqdm import tqdm

    out = []
    for setting in settings:
        open_n = run_n = trigger_n = total_n = triggers = 0
        found = {p: 0 for p in PHASES}
        strong = {p: 0 for p in PHASES}
        for i, stream in enumerate(tqdm(streams, desc=f"continuous {setting.name}", disable=not progress, leave=False)):
            n_i = stream.shape[1]
            channel = gate_channel(stream, order)[0]
            spans = open_spans(channel, rate, setting, pre_roll_s, hold_s)
            running = open_spans(channel, rate, setting, 0.0, hold_s)
            bare = open_spans(channel, rate, setting, 0.0, 0.0)
            open_n += duty(spans, n_i) * n_i
            run_n += duty(running, n_i) * n_i
            trigger_n += duty(bare, n_i) * n_i
            triggers += len(bare)
            total_n += n_i
            for p in PHASES:
                inside = kept(spans, picks[p][i][:, 0])
                found[p] += int(inside.sum())
                strong[p] += int(inside[picks[p][i][:, 1] >= STRONG].sum())
        n = {p: int(sum(len(x) for x in picks[p])) for p in PHASES}
        n_strong = {p: int(sum((x[:, 1] >= STRONG).sum() for x in picks[p])) for p in PHASES}
        out.append({"duty": run_n / total_n, "duty_with_pre_roll": open_n / total_n,
                    "duty_triggers_only": trigger_n / total_n, "triggers_per_hour": triggers / (total_n / rate / 3600),
                    "hours": total_n / rate / 3600,
                    **{f"{p}_missed": 1 - found[p] / n[p] if n[p] else None for p in PHASES},
                    **{f"{p}_n": n[p] for p in PHASES},
                    **{f"{p}_missed_strong": 1 - strong[p] / n_strong[p] if n_strong[p] else None for p in PHASES},
                    **{f"{p}_n_strong": n_strong[p] for p in PHASES}})
    return out


def labelled_rows(waveforms, metadata, rate, order, settings, pre_roll_s, hold_s, name="", progress=True) -> list[dict]:
    from tqdm import tqdm

    arrivals = {p: metadata[f"trace_{p.lower()}_arrival_sample"].to_numpy(dtype=float) for p in PHASES}
    out = []
    for setting in settings:
        found = {p: 0 for p in PHASES}
        n = {p: 0 for p in PHASES}
        short = horizontal = 0
        for i, w in enumerate(tqdm(waveforms, desc=f"{name} {setting.name}", disable=not progress, leave=False)):
            present = [arrivals[p][i] for p in PHASES if np.isfinite(arrivals[p][i])]
            first = min(present) if present else np.nan
            channel, fell_back = gate_channel(w, order)
            trace, prefix, is_short = warmed(channel, first, rate, setting.lta_s, pre_roll_s)
            short += is_short
            horizontal += fell_back
            spans = open_spans(trace, rate, setting, pre_roll_s, hold_s, warm=prefix)
            for p in PHASES:
                if np.isfinite(arrivals[p][i]):
                    n[p] += 1
                    found[p] += int(kept(spans, [arrivals[p][i]])[0])
        out.append({**{f"{p}_missed": 1 - found[p] / n[p] if n[p] else None for p in PHASES},
                    **{f"{p}_n": n[p] for p in PHASES}, "traces": len(waveforms), "short": short,
                    "flat_vertical": horizontal})
    return out


def fraction(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline study gate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--continuous", default="data/transfer:test", help="folder[:split] of continuous windows")
    parser.add_argument("--teacher", default="phasenet:okla", help="the reference picks on continuous data")
    parser.add_argument("--sets", default=",".join(SETS), help="labelled sets under --labelled, each at :test")
    parser.add_argument("--labelled", default="data/labelled")
    parser.add_argument("--pre-roll-s", type=float, default=25.0)
    parser.add_argument("--hold-s", type=float, default=30.0)
    parser.add_argument("--max-streams", type=int, default=0, help="the first this many station streams (0: all)")
    parser.add_argument("--max-traces", type=int, default=0, help="a seeded subset of each labelled set (0: all)")
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args(argv)
    if args.pre_roll_s < 0 or args.hold_s < 0:
        raise EdgepickError("--pre-roll-s and --hold-s must be at least 0")
    import torch

    from pipeline.data.traces import load_labelled

    torch.set_num_threads(1)
    folder, _, split = args.continuous.partition(":")
    streams, rate, order = stitch(Path(folder), split, args.max_streams)
    picks = teacher_picks(args.teacher, streams, rate, order)
    rows = [{"setting": asdict(s), "name": s.name, "continuous": r}
            for s, r in zip(SETTINGS, continuous_rows(streams, rate, order, picks, SETTINGS, args.pre_roll_s,
                                                       args.hold_s))]
    sets = [s for s in args.sets.split(",") if s]
    for name in sets:
        waveforms, metadata, set_rate, set_order = load_labelled(Path(args.labelled) / name, "test", args.max_traces)
        for row, r in zip(rows, labelled_rows(waveforms, metadata, set_rate, set_order, SETTINGS, args.pre_roll_s,
                                              args.hold_s, name)):
            row[name] = r
    gate_cost = GATE_INSTR_PER_SAMPLE * rate
    for row in rows:
        row["instructions_per_s_estimate"] = row["continuous"]["duty"] * LIVE_INSTR_PER_S + gate_cost

    c = rows[0]["continuous"]
    print(f"STA/LTA gate (recursive, vertical, band-pass {BAND_HZ[0]:g}-{BAND_HZ[1]:g} Hz), open from on - "
          f"{args.pre_roll_s:g} s to off + {args.hold_s:g} s; continuous: {args.continuous}, {len(streams)} station "
          f"streams, {c['hours']:.2f} station-hours, {args.teacher} picks P {c['P_n']} / S {c['S_n']} "
          f"(peak >= {STRONG:g}: P {c['P_n_strong']} / S {c['S_n_strong']})")
    print(f"instructions per second of data (estimate) = duty x {LIVE_INSTR_PER_S / 1e6:.1f} M + the gate's "
          f"{gate_cost / 1e3:.0f} k ({GATE_INSTR_PER_SAMPLE:g} a sample x {rate:g} Hz); the target is <= 2 M")
    print("duty: the fraction of time the network runs (on to off + hold; the pre-roll costs nothing, the first "
          "window reaches back 30 s); +pre: the span picks are kept in (on - pre-roll to off + hold); trig: on to off")
    head = f"{'setting':34} {'trig/h':>6} {'trig':>5} {'duty':>5} {'+pre':>5} {'M instr/s':>9} "
    head += f"{'cont P/S missed':>15} {'>=0.7 P/S':>13}"
    head += "".join(f" {name[:14] + ' P/S missed':>25}" for name in sets)
    print(head)
    for row in rows:
        c = row["continuous"]
        line = (f"{row['name']:34} {c['triggers_per_hour']:6.1f} {c['duty_triggers_only']:5.3f} {c['duty']:5.3f} "
                f"{c['duty_with_pre_roll']:5.3f} {row['instructions_per_s_estimate'] / 1e6:9.2f} ")
        line += f"{fraction(c['P_missed']) + ' / ' + fraction(c['S_missed']):>15}"
        line += f" {fraction(c['P_missed_strong']) + ' / ' + fraction(c['S_missed_strong']):>13}"
        line += "".join(f" {fraction(row[n]['P_missed']) + ' / ' + fraction(row[n]['S_missed']):>25}" for n in sets)
        print(line)
    print("labelled test picks P / S (of the traces: short, < 1 s of pre-event noise, the LTA cold; flat vertical, "
          "gated on a horizontal): " + "; ".join(
              f"{n} {rows[0][n]['P_n']} / {rows[0][n]['S_n']} ({rows[0][n]['traces']}: {rows[0][n]['short']} short, "
              f"{rows[0][n]['flat_vertical']} flat Z)" for n in sets))
    if args.json:
        from pipeline.artifacts import atomic_write_text

        atomic_write_text(args.json, json.dumps({"continuous": args.continuous, "teacher": args.teacher,
                                                 "pre_roll_s": args.pre_roll_s, "hold_s": args.hold_s,
                                                 "live_instructions_per_s": LIVE_INSTR_PER_S,
                                                 "gate_instructions_per_s": gate_cost, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    run_script(main)
