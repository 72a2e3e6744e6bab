"""Synthetic Oklahoma-like local earthquakes and noise, generated offline and deterministically from a seed.

What is modelled (each choice is physics or a measured property of real records, never tuned to a picker):

* Geometry. Epicentres fall in central/north-central Oklahoma (35.3-36.9 N, 98.6-96.4 W, where most of the
  2010-2024 induced seismicity lies), depths 2-10 km (the Arbuckle group and the crystalline basement below it),
  magnitudes Gutenberg-Richter (b = 1) between 1.5 and 4.5. A fixed virtual network of ``N_STATIONS`` stations
  covers the region; each event is recorded by 1-8 of the stations at ``distance_km_min``-``distance_km_max``
  epicentral distance (obspy geodetics), so one event id appears on several traces and the writer's by-event split
  matters.
* Travel times. First arrivals in the 1-D layered model below: the direct (upgoing) ray, found by bisection on the
  take-off angle, and the head waves along every interface below the source; the earliest one wins (vectorised
  numpy, microseconds per ray; obspy.taup with a custom model would cost milliseconds per ray).
* Source. Brune (1970) omega-squared source: moment-rate function w_c^2 t exp(-w_c t), corner frequency
  f_c = 4.906e6 beta (stress_drop / M0)^(1/3) (beta km/s, stress drop bar, M0 dyne-cm; log10 M0 = 1.5 Mw + 16.1,
  Hanks & Kanamori 1979), stress drop log-uniform 10-100 bar; the S corner frequency is the P one / 1.5
  (Madariaga 1976). Far-field velocity is the derivative of the moment rate.
* Path. Anelastic attenuation exp(-pi f t*) with t* = T / Q + kappa (Q_P 500, Q_S 400, kappa 0.02-0.05 s), applied
  as a causal two-pole low-pass with the same 1/e frequency, so no energy ever precedes the labelled onset.
  All filters are built in the frequency domain (numpy FFT) and onsets are placed with sub-sample phase shifts.
* Scattering. Forward scattering moves energy from the coherent direct wave (its share decays with distance over a
  30-80 km scattering length) into a wave train that keeps the direct wave's polarisation, rises within
  0.05-0.15 s + 4 ms/km (envelope broadening) and lasts a second or two; multiple scattering makes a diffuse coda on
  all components (P coda strongest on Z, S coda on the horizontals) decaying with an e-folding time of 3-13 s
  (P) and 5-22 s (S), i.e. coda Q of a few hundred at 3-8 Hz. The P coda lasts under the S.
* Site. A soft surface layer: multiples with alternating sign every two-way time, i.e. a quarter-wavelength
  resonance, for S at 1.5-8 Hz (log-uniform) and for P at 1.7 times that, reflection coefficient 0.3-0.7.
* Polarisation. P: radial/vertical split by the incidence angle at the surface (ray parameter times a near-surface
  P velocity of 3 km/s), radial rotated into N/E by the back-azimuth. S: SV/SH split at random (radiation
  pattern), SV partly on Z by its incidence angle (near-surface S velocity 1.0 km/s). Polarities are random.
  The S/P peak amplitude ratio is log-uniform 1.5-8 (radiation pattern average and (Vp/Vs)^3 give ~5 in
  displacement, less in velocity since the S corner is lower).
* Noise. Per component, coloured in the frequency domain: a secondary-microseism peak (0.12-0.3 Hz, the dominant
  energy of a broadband velocity record), a weaker primary-microseism peak (0.05-0.1 Hz), cultural / wind noise at
  1-15 Hz of random level and an instrument floor; on some traces spikes (1-3 single-sample glitches, 8 %) and a
  gap (a zero-filled telemetry drop-out of 0.5-5 s on all three components, 3 %).
* SNR. ``trace_snr_db`` = 10 log10 (mean power of the noise-free earthquake signal over the three components in the
  window from the P onset to 4 s after the S onset / mean power of the noise, before spikes and gaps, over the
  three components and the whole trace). Both are broadband (no filter), so the microseism counts as noise. It is
  drawn as snr_min + (snr_max - snr_min) * Beta(4, 2.5): on [-5, 40] dB, median 23 dB, 5th percentile 8.6 dB,
  1.6 % below 5 dB, 7 % below 10 dB. For comparison, the same definition (noise from the pre-P window) measured
  on the 50 real STEAD traces of shared/datasets/stead50 gives median 27 dB, 5th percentile 8 dB, a quarter above
  39 dB: the synthetic set is somewhat noisier than that curated sample, as Oklahoma's small events are. The
  second event of a two-event trace draws its own SNR the same way and falls 5 s or more after the first P.

Checked against the real STEAD sample (shared/datasets/stead50, component energy in the 1.5 s after each onset,
quartiles): P energy Z / horizontals 1.8 / 2.3 / 3.3 real vs 2.1 / 2.9 / 3.7 synthetic; S energy Z / horizontals
0.16 / 0.27 / 0.37 vs 0.13 / 0.21 / 0.31; S peak (horizontals) / P peak (Z) 2.2 / 3.2 / 5.4 vs 2.1 / 3.2 / 4.5;
mean frequency of P on Z 6.2 vs 8.3 Hz, of S on N 5.1 vs 5.7 Hz.

Velocity model: CUS, the central United States model of Herrmann, Benz & Ammon (2011), "Monitoring the earthquake
source process in North America", BSSA 101(6), 2609-2625, which the Saint Louis University moment-tensor service
uses for Oklahoma earthquakes (layer thickness km, Vp, Vs km/s; half-space below 40 km).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import obspy
from obspy.geodetics import gps2dist_azimuth

from pipeline.config import DataConfig
from pipeline.errors import EdgepickError

# Herrmann, Benz & Ammon (2011) CUS: thickness (km), Vp, Vs (km/s); the last layer is the half-space.
CUS_MODEL = np.array(
    [
        (1.0, 5.00, 2.89),
        (9.0, 6.10, 3.52),
        (10.0, 6.40, 3.70),
        (20.0, 6.70, 3.87),
        (np.inf, 8.15, 4.70),
    ]
)
NEAR_SURFACE_VP = 3.0  # sediment velocities for the incidence angle at the free surface
NEAR_SURFACE_VS = 1.0
Q_P, Q_S = 500.0, 400.0
REGION = (35.3, 36.9, -98.6, -96.4)  # lat min, lat max, lon min, lon max
N_STATIONS = 60
DEPTH_KM = (2.0, 10.0)
MAGNITUDE = (1.5, 4.5)  # Gutenberg-Richter, b = 1
GAP_PROBABILITY = 0.03
SPIKE_PROBABILITY = 0.08
P_ONSET_S = (4.0, 30.0)  # where the (first) P onset falls in the trace
NETWORK = "SY"


# ----------------------------------------------------------------------------------------------- travel times
def first_arrivals(depth_km: np.ndarray, distance_km: np.ndarray, wave: str) -> tuple[np.ndarray, np.ndarray]:
    """First-arrival time (s) and ray parameter (s/km) for sources at ``depth_km`` and epicentral ``distance_km``.

    Direct upgoing ray (bisection on the take-off angle) and head waves along each interface below the source in the
    flat layered CUS model; vectorised over the inputs.
    """
    depth = np.atleast_1d(np.asarray(depth_km, dtype=float))
    x = np.atleast_1d(np.asarray(distance_km, dtype=float))
    depth, x = np.broadcast_arrays(depth, x)
    column = {"P": 1, "S": 2}[wave]
    h = CUS_MODEL[:, 0]
    v = CUS_MODEL[:, column]
    tops = np.concatenate([[0.0], np.cumsum(h[:-1])])
    if (depth >= tops[-1]).any() or (depth <= 0).any():
        raise EdgepickError(f"source depths must lie in (0, {tops[-1]}) km for the CUS model")
    # thickness of each layer above the source (upgoing leg)
    above = np.clip(depth[..., None] - tops[None, :], 0.0, h[None, :])  # (n, layers)
    v_src = v[np.searchsorted(tops, depth, side="right") - 1]
    # direct ray: p = sin(theta) / v_src, theta in [0, pi/2)
    lo = np.zeros_like(x)
    hi = np.full_like(x, math.pi / 2 - 1e-9)
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        p = np.sin(mid) / v_src
        s = np.clip(p[..., None] * v[None, :], 0.0, 1 - 1e-12)
        offset = (above * s / np.sqrt(1 - s**2)).sum(-1)
        too_far = offset > x
        hi = np.where(too_far, mid, hi)
        lo = np.where(too_far, lo, mid)
    p_direct = np.sin(0.5 * (lo + hi)) / v_src
    s = np.clip(p_direct[..., None] * v[None, :], 0.0, 1 - 1e-12)
    t_direct = (above / (v[None, :] * np.sqrt(1 - s**2))).sum(-1)
    # the remaining horizontal distance (bisection residue) at the source velocity
    offset = (above * s / np.sqrt(1 - s**2)).sum(-1)
    t_direct = t_direct + np.abs(x - offset) / v_src
    best_t, best_p = t_direct, p_direct
    # head waves along the top of every deeper, faster layer
    for n in range(1, len(h)):
        vn = v[n]
        faster = (v[:n] < vn).all()
        if not faster:
            continue
        bottoms = tops[:n] + h[:n]
        below_src = np.clip(bottoms[None, :] - np.maximum(depth[..., None], tops[None, :n]), 0.0, h[None, :n])
        # upgoing leg through every layer above the refractor, downgoing leg below the source
        legs = h[None, :n] + below_src
        cos = np.sqrt(1 - (v[:n] / vn) ** 2)
        t_head = x / vn + (legs * cos / v[:n]).sum(-1)
        critical = (legs * (v[:n] / vn) / cos).sum(-1)
        valid = (depth < tops[n]) & (x >= critical)
        better = valid & (t_head < best_t)
        best_t = np.where(better, t_head, best_t)
        best_p = np.where(better, 1.0 / vn, best_p)
    return best_t, best_p


# ----------------------------------------------------------------------------------------------- spectra
def brune_corner_hz(magnitude: float, stress_drop_bar: float, beta_km_s: float = 3.5) -> float:
    moment = 10 ** (1.5 * magnitude + 16.1)
    return 4.906e6 * beta_km_s * (stress_drop_bar / moment) ** (1.0 / 3.0)


def pulse_spectrum(freqs: np.ndarray, corner_hz: float, t_star: float) -> np.ndarray:
    """Causal spectrum of a far-field velocity pulse: Brune source derivative times a causal attenuation low-pass."""
    w = 2 * np.pi * freqs
    wc = 2 * np.pi * corner_hz
    source = 1j * w * wc**2 / (wc + 1j * w) ** 2  # d/dt of the Brune moment rate wc^2 t exp(-wc t)
    fa = 1.0 / (math.sqrt(math.e - 1) * math.pi * max(t_star, 1e-4))  # |H| = 1/e where exp(-pi f t*) = 1/e
    attenuation = 1.0 / (1 + 1j * freqs / fa) ** 2
    return source * attenuation


def noise_spectrum(freqs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Amplitude spectrum (sqrt of the PSD) of one station's background noise, in relative velocity units."""
    f = np.maximum(freqs, 1e-3)
    logf = np.log10(f)

    def bump(centre_hz, width_decades, level):
        return level * np.exp(-0.5 * ((logf - math.log10(centre_hz)) / width_decades) ** 2)

    secondary = bump(rng.uniform(0.12, 0.3), rng.uniform(0.12, 0.2), 1.0)
    primary = bump(rng.uniform(0.05, 0.1), 0.1, 10 ** rng.uniform(-1.5, -0.5))
    cultural = bump(10 ** rng.uniform(0.0, 1.2), rng.uniform(0.2, 0.45), 10 ** rng.uniform(-3.0, -1.0))
    floor = 10 ** rng.uniform(-4.0, -2.5)
    psd = secondary + primary + cultural + floor
    psd = psd * (f > 0.03)  # below the sensor's corner
    return np.sqrt(psd)


# ----------------------------------------------------------------------------------------------- the records
def _stations(rng: np.random.Generator) -> list[tuple[str, float, float]]:
    lat0, lat1, lon0, lon1 = REGION
    lats = rng.uniform(lat0 - 0.3, lat1 + 0.3, N_STATIONS)
    lons = rng.uniform(lon0 - 0.3, lon1 + 0.3, N_STATIONS)
    return [(f"S{i:03d}", float(a), float(o)) for i, (a, o) in enumerate(zip(lats, lons))]


def _magnitude(rng: np.random.Generator) -> float:
    lo, hi = MAGNITUDE
    u = rng.uniform()
    return float(lo - math.log10(1 - u * (1 - 10 ** -(hi - lo))))  # truncated Gutenberg-Richter, b = 1


def _snr_db(rng: np.random.Generator, cfg) -> float:
    return float(cfg.snr_db_min + (cfg.snr_db_max - cfg.snr_db_min) * rng.beta(4.0, 2.5))


def _event(rng: np.random.Generator, index: int) -> dict:
    lat0, lat1, lon0, lon1 = REGION
    origin = obspy.UTCDateTime(2015, 1, 1) + rng.uniform(0, 5 * 365.25 * 86400)
    return {
        "source_id": f"synth{index:06d}",
        "source_origin_time": origin,
        "source_latitude": float(rng.uniform(lat0, lat1)),
        "source_longitude": float(rng.uniform(lon0, lon1)),
        "source_depth_km": float(rng.uniform(*DEPTH_KM)),
        "source_magnitude": round(_magnitude(rng), 2),
        "stress_drop_bar": float(10 ** rng.uniform(1.0, 2.0)),
    }


def _phase_signal(
    rng, freqs, n, rate, onset_s, corner_hz, t_star, amplitude, polarisation, coda_weights, coda_decay_s, coda_level,
    site, rise_s, direct_share,
):
    """One phase on three components, built in the frequency domain.

    Green's function: the coherent direct arrival (weight ``direct_share``, polarised) plus forward- and
    back-scattered energy (Gaussian noise under an envelope rising in ``rise_s`` and decaying in ``coda_decay_s``),
    times the source pulse (Brune + attenuation) and the site response ``site``.
    """
    spectrum = pulse_spectrum(freqs, corner_hz, t_star) * site
    pulse = np.fft.irfft(spectrum, n)
    peak = np.abs(pulse).max()
    spectrum = spectrum / peak
    norm2 = math.sqrt(float(((pulse / peak) ** 2).sum()))
    lag = np.arange(n) / rate - onset_s
    positive = np.maximum(lag, 0.0)
    onset = np.where(lag > 0, 1 - np.exp(-positive / rise_s), 0.0)
    # forward-scattered energy keeps the direct wave's polarisation and arrives within a second or two of it;
    # the diffuse coda (multiple scattering, mode conversions) is spread over all components and decays slowly
    forward = rng.uniform(0.5, 0.85)
    forward_decay = rng.uniform(0.5, 1.5) + 2 * rise_s
    polarised = np.asarray(polarisation)[:, None] * rng.standard_normal((1, n)) * np.exp(-positive / forward_decay)
    isotropic = np.asarray(coda_weights)[:, None] * rng.standard_normal((3, n)) / np.linalg.norm(coda_weights)
    isotropic = isotropic * np.exp(-positive / coda_decay_s)
    coda = (forward * polarised + math.sqrt(1 - forward**2) * isotropic) * onset[None, :] * (coda_level / norm2)
    green = np.fft.rfft(coda, axis=-1)
    direct = direct_share * np.exp(-2j * np.pi * freqs * onset_s)
    green += np.asarray(polarisation)[:, None] * direct[None, :]
    return amplitude * np.fft.irfft(green * spectrum[None, :], n)


def site_response(freqs: np.ndarray, two_way_s: float, reflection: float, terms: int = 8) -> np.ndarray:
    """A soft surface layer: multiples every two-way time with alternating sign (free surface above, stiffer rock
    below), i.e. the quarter-wavelength resonance at 1 / (2 two_way_s)."""
    return sum((-reflection) ** k * np.exp(-2j * np.pi * freqs * k * two_way_s) for k in range(terms))


def _earthquake(rng, freqs, n, rate, event, distance_km, back_azimuth_deg, p_onset_s):
    """Noise-free three-component (Z, N, E) velocity of one event at one station, plus its P and S onsets (s)."""
    depth = event["source_depth_km"]
    (tp,), (pp,) = first_arrivals(np.array([depth]), np.array([distance_km]), "P")
    (ts,), (ps,) = first_arrivals(np.array([depth]), np.array([distance_km]), "S")
    s_onset = p_onset_s + (ts - tp)
    baz = math.radians(back_azimuth_deg)
    # radial (away from the source) = -(direction to the source); back-azimuth points to the source
    rn, re = -math.cos(baz), -math.sin(baz)
    tn, te = -re, rn  # transverse
    sin_p = min(pp * NEAR_SURFACE_VP, 0.95)
    cos_p = math.sqrt(1 - sin_p**2)
    sign_p = rng.choice([-1.0, 1.0])
    pol_p = sign_p * np.array([cos_p, sin_p * rn, sin_p * re])
    sin_s = min(ps * NEAR_SURFACE_VS, 0.95)
    cos_s = math.sqrt(1 - sin_s**2)
    sv_share = rng.uniform(0.0, 1.0)
    sv, sh = math.sqrt(sv_share), math.sqrt(1 - sv_share)
    sign_s = rng.choice([-1.0, 1.0])
    # SV particle motion: horizontal part radial (cos), vertical part (sin) of the incidence angle
    pol_s = sign_s * np.array([sv * sin_s, sv * cos_s * rn + sh * tn, sv * cos_s * re + sh * te])
    mag = event["source_magnitude"]
    fc_p = brune_corner_hz(mag, event["stress_drop_bar"])
    fc_s = fc_p / 1.5
    kappa = rng.uniform(0.02, 0.05)
    tstar_p = tp / Q_P + kappa
    tstar_s = ts / Q_S + kappa
    s_to_p = 10 ** rng.uniform(math.log10(1.5), math.log10(8.0))
    # coda amplitude e-folding time tau = Qc / (pi f): with coda Q of a few hundred at 3-8 Hz, 5-30 s; the P coda
    # lasts until (and under) the S
    p_decay = rng.uniform(3.0, 8.0) + 0.05 * distance_km
    s_decay = rng.uniform(5.0, 12.0) + 0.1 * distance_km
    p_coda = [1.0, rng.uniform(0.4, 0.9), rng.uniform(0.4, 0.9)]
    s_coda = [rng.uniform(0.3, 0.7), 1.0, 1.0]
    # forward scattering: the coherent direct wave loses energy with distance (scattering length 30-80 km) and the
    # scattered energy's envelope broadens (rise time growing with distance)
    direct_share = math.exp(-distance_km / rng.uniform(30.0, 80.0))
    rise = rng.uniform(0.05, 0.15) + 0.004 * distance_km
    # soft surface layer: S-wave site resonance f0 = Vs / 4H log-uniform 1.5-8 Hz (two-way time 1 / (2 f0));
    # P waves cross it Vp/Vs ~ 1.7 times faster; impedance contrast gives a reflection coefficient 0.3-0.7
    f0_s = 10 ** rng.uniform(math.log10(1.5), math.log10(8.0))
    reflection = rng.uniform(0.3, 0.7)
    s_delay = 1.0 / (2 * f0_s)
    p_delay = s_delay / 1.7
    signal = _phase_signal(
        rng, freqs, n, rate, p_onset_s, fc_p, tstar_p, 1.0, pol_p, p_coda, p_decay, rng.uniform(0.3, 0.6),
        site_response(freqs, p_delay, reflection), rise, direct_share,
    )
    signal += _phase_signal(
        rng, freqs, n, rate, s_onset, fc_s, tstar_s, s_to_p, pol_s, s_coda, s_decay, rng.uniform(0.3, 0.6),
        site_response(freqs, s_delay, reflection), rise, direct_share,
    )
    return signal, p_onset_s, s_onset


def _noise(rng, freqs, n):
    amp = np.stack([noise_spectrum(freqs, rng) for _ in range(3)]) if rng.uniform() < 0.3 else None
    if amp is None:  # usually the three components share the station's spectrum shape
        amp = noise_spectrum(freqs, rng)[None, :] * 10 ** rng.uniform(-0.1, 0.1, (3, 1))
    white = np.fft.rfft(rng.standard_normal((3, n)), axis=-1)
    noise = np.fft.irfft(white * amp, n, axis=-1)
    return noise / noise.std()


def _glitches(rng, waveform, rate, level):
    meta = {"trace_spikes": 0, "trace_gap_seconds": 0.0}
    n = waveform.shape[1]
    if rng.uniform() < SPIKE_PROBABILITY:
        k = int(rng.integers(1, 4))
        for _ in range(k):
            i = int(rng.integers(0, n))
            c = int(rng.integers(0, 3))
            waveform[c, i] += rng.choice([-1, 1]) * level * 10 ** rng.uniform(0.5, 1.5)
        meta["trace_spikes"] = k
    if rng.uniform() < GAP_PROBABILITY:
        length = int(rng.uniform(0.5, 5.0) * rate)
        start = int(rng.integers(0, n - length))
        waveform[:, start : start + length] = 0.0
        meta["trace_gap_seconds"] = length / rate
    return meta


def _signal_power(signal, rate, p_onset, s_onset):
    a = max(int(p_onset * rate), 0)
    b = min(int((s_onset + 4.0) * rate), signal.shape[1])
    return float((signal[:, a:b] ** 2).mean()) if b > a else 0.0


def records(config: DataConfig) -> Iterator[tuple[dict, np.ndarray]]:
    """Yield ``config.synthetic.n_traces`` (metadata, waveform) pairs; the same seed gives the same traces."""
    cfg = config.synthetic
    if cfg.n_traces < 0:
        raise EdgepickError(f"synthetic.n_traces must be >= 0, got {cfg.n_traces}")
    if not cfg.trace_seconds >= 20:
        raise EdgepickError(f"synthetic.trace_seconds must be >= 20 s, got {cfg.trace_seconds}")
    if not (0 <= cfg.noise_fraction <= 1 and 0 <= cfg.double_event_fraction <= 1):
        raise EdgepickError("synthetic.noise_fraction and double_event_fraction must lie in [0, 1]")
    if not 0 < cfg.distance_km_min < cfg.distance_km_max <= 300:
        raise EdgepickError(f"synthetic distances must satisfy 0 < min < max <= 300 km, got "
                            f"{cfg.distance_km_min}-{cfg.distance_km_max}")
    if not cfg.snr_db_min < cfg.snr_db_max:
        raise EdgepickError(f"synthetic.snr_db_min must be below snr_db_max, got {cfg.snr_db_min}, {cfg.snr_db_max}")
    if sorted(config.component_order.upper()) != sorted("ZNE"):
        raise EdgepickError(f"the synthetic source writes Z, N and E; component_order {config.component_order!r}")
    rate = float(config.sampling_rate)
    n = int(round(cfg.trace_seconds * rate))
    nfft = 1 << int(math.ceil(math.log2(n + 20 * rate)))  # room for pulse tails: no wrap-around before an onset
    freqs = np.fft.rfftfreq(nfft, 1.0 / rate)
    rng = np.random.default_rng(config.seed)
    stations = _stations(np.random.default_rng([config.seed, 1]))
    order = [("ZNE").index(c) for c in config.component_order.upper()]
    produced = 0
    event_index = 0
    pending: list[tuple[dict, tuple[str, float, float], float, float]] = []
    while produced < cfg.n_traces:
        if rng.uniform() < cfg.noise_fraction:
            station = stations[int(rng.integers(len(stations)))]
            start = obspy.UTCDateTime(2015, 1, 1) + rng.uniform(0, 5 * 365.25 * 86400)
            noise = _noise(rng, freqs, nfft)[:, :n] * 10 ** rng.uniform(1.5, 3.0)
            meta = _metadata_noise(station, start, rate, produced)
            meta.update(_glitches(rng, noise, rate, float(noise.std())))
            produced += 1
            yield meta, noise[order].astype(np.float32)
            continue
        if not pending:
            event = _event(rng, event_index)
            event_index += 1
            pending = _recordings(rng, event, stations, cfg)
            if not pending:
                continue
        event, station, distance, baz = pending.pop(0)
        meta, waveform = _earthquake_trace(rng, freqs, nfft, n, rate, event, station, distance, baz, cfg, produced)
        produced += 1
        yield meta, waveform[order].astype(np.float32)


def _recordings(rng, event, stations, cfg) -> list:
    """The stations (with distance and back-azimuth) that record ``event``: 1-8 of those in the distance range."""
    found = []
    for code, lat, lon in stations:
        dist_m, az, baz = gps2dist_azimuth(event["source_latitude"], event["source_longitude"], lat, lon)
        d = dist_m / 1000.0
        if cfg.distance_km_min <= d <= cfg.distance_km_max:
            found.append(((code, lat, lon), d, baz))
    if not found:
        return []
    k = min(len(found), int(rng.integers(1, 9)))
    picked = rng.choice(len(found), size=k, replace=False)
    return [(event, found[i][0], found[i][1], found[i][2]) for i in sorted(picked)]


def _earthquake_trace(rng, freqs, nfft, n, rate, event, station, distance, baz, cfg, trace_index):
    p_onset = rng.uniform(*P_ONSET_S)
    signal, p_on, s_on = _earthquake(rng, freqs, nfft, rate, event, distance, baz, p_onset)
    signal = signal[:, :n]
    noise = _noise(rng, freqs, nfft)[:, :n]
    snr = _snr_db(rng, cfg)
    power = _signal_power(signal, rate, p_on, s_on)
    signal = signal * math.sqrt(10 ** (snr / 10) / power)
    meta2 = {}
    if rng.uniform() < cfg.double_event_fraction:
        second = _event(rng, 0)
        second["source_id"] = f"synth_second{trace_index:06d}"
        d2 = rng.uniform(cfg.distance_km_min, cfg.distance_km_max)
        latest = cfg.trace_seconds - 5.0
        p2 = rng.uniform(min(p_on + 5.0, latest), latest)
        signal2, p2_on, s2_on = _earthquake(rng, freqs, nfft, rate, second, d2, rng.uniform(0, 360), p2)
        signal2 = signal2[:, :n]
        snr2 = _snr_db(rng, cfg)
        power2 = _signal_power(signal2, rate, p2_on, min(s2_on, cfg.trace_seconds - 4.0))
        signal = signal + signal2 * math.sqrt(10 ** (snr2 / 10) / power2)
        meta2 = {
            "source_id_2": second["source_id"],
            "source_magnitude_2": second["source_magnitude"],
            "source_distance_km_2": round(d2, 2),
            "trace_p2_arrival_sample": p2_on * rate,
            "trace_s2_arrival_sample": s2_on * rate if s2_on * rate < n else np.nan,
            "trace_snr_db_2": round(snr2, 2),
        }
    level = 10 ** rng.uniform(1.5, 3.0)  # noise RMS in counts
    waveform = (signal + noise) * level
    code, lat, lon = station
    (tp,), _ = first_arrivals(np.array([event["source_depth_km"]]), np.array([distance]), "P")
    start = event["source_origin_time"] + float(tp) - p_on
    meta = {
        "trace_name": f"{NETWORK}.{code}_{event['source_id']}",
        "source_id": event["source_id"],
        "source_origin_time": str(event["source_origin_time"]),
        "source_latitude": round(event["source_latitude"], 4),
        "source_longitude": round(event["source_longitude"], 4),
        "source_depth_km": round(event["source_depth_km"], 2),
        "source_magnitude": event["source_magnitude"],
        "source_magnitude_type": "mw",
        "source_distance_km": round(distance, 2),
        "source_back_azimuth_deg": round(baz, 1),
        "station_network_code": NETWORK,
        "station_code": code,
        "station_latitude": round(lat, 4),
        "station_longitude": round(lon, 4),
        "trace_start_time": str(start),
        "trace_sampling_rate_hz": rate,
        "trace_p_arrival_sample": p_on * rate,
        "trace_s_arrival_sample": s_on * rate,
        "trace_p_status": "synthetic",
        "trace_s_status": "synthetic",
        "trace_category": "earthquake_local",
        "trace_snr_db": round(snr, 2),
        "trace_p2_arrival_sample": np.nan,
        "trace_s2_arrival_sample": np.nan,
    }
    meta.update(meta2)
    meta.update(_glitches(rng, waveform, rate, level))
    return meta, waveform


def _metadata_noise(station, start, rate, index) -> dict:
    code, lat, lon = station
    return {
        "trace_name": f"{NETWORK}.{code}_noise{index:06d}",
        "source_id": np.nan,
        "station_network_code": NETWORK,
        "station_code": code,
        "station_latitude": round(lat, 4),
        "station_longitude": round(lon, 4),
        "trace_start_time": str(start),
        "trace_sampling_rate_hz": rate,
        "trace_p_arrival_sample": np.nan,
        "trace_s_arrival_sample": np.nan,
        "trace_p2_arrival_sample": np.nan,
        "trace_s2_arrival_sample": np.nan,
        "trace_p_status": "",
        "trace_s_status": "",
        "trace_category": "noise",
        "trace_snr_db": np.nan,
    }
