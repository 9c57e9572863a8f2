"""Foreground-aware patch sampling: the pure parts (pure numpy, no I/O).

Light-sheet volumes are often > 90 % dark background, so uniformly placed training patches mostly
show nothing. The rule here, used by ``data.PatchBatches`` through ``sampling.foreground_plan``:

- **Threshold.** From the voxels of the randomly sampled storage chunks (the ones normalisation
  reads): the background level ``b`` is their median, the noise ``sigma`` the robust standard
  deviation of neighbour differences along the last axis (``1.4826 * MAD / sqrt(2)``, insensitive
  to structure), and the foreground threshold ``T = b + K_SIGMA * sigma``. A user may give ``T``
  directly (``--foreground THRESHOLD``, raw intensity after ``--remove-background``).
- **auto.** On only when the sampled chunks say the volume is mostly background: at least
  ``MOSTLY_BACKGROUND`` (85 %) of their voxels lie at the background level (``|x - b| <= BAND_SIGMA *
  sigma``; 95 % of a Gaussian background's voxels do, so 85 % means about 90 % of the volume is
  background) *and* at least ``MIN_FOREGROUND`` (0.5 %) lie above ``T``. Uniform noise, smooth or
  textured images fail the first or the second test and keep plain uniform sampling. 85 %, not
  less: on a 99 %-background light-sheet-like volume (94.6 % of sampled voxels at the level)
  N2V gains +8.8 dB on the foreground (``benchmarks/foreground.py``), while on sCMOS TIRF cells
  (76.5 % at the level), where uniform patches already show cells, the same sampling lost 0.16 dB.
- **A method's own rule** (:class:`Rule`, ``Method.foreground``). COSDD also turns it on for a
  *clipped* background: a level with no noise at all (more than half of the neighbour differences
  exactly 0, e.g. an 8-bit conversion that clipped the dark background to 0) holding at least
  ``clipped_background`` (50 %) of the sampled voxels. Such voxels teach its noise model and its
  latents nothing, and each of its steps is dear. It also wants more per patch (``full_content``
  30 %). On the whole Hagen mito-confocal image (78 % clipped zeros) that turned COSDD's cells from
  0.33 dB under struct-N2V to 0.16 dB above it (``benchmarks/RESULTS.md``, quality-cosdd-hagen-fg-cli).
- **Sampling.** A patch's content ``c`` is the fraction of its voxels above ``T``. With probability
  ``UNIFORM_SHARE`` (the floor, 10 %) a patch is the plain uniform draw, whatever it holds: that
  keeps background in training. Otherwise candidate boxes are drawn one after the other (the first
  is the uniform draw) and each is accepted with probability ``min(1, c / full_content)`` (a patch
  with >= ``FULL_CONTENT``, 2 %, foreground voxels always, unless the method's rule asks more);
  after ``MAX_TRIES`` (16) rejections the candidate with the most content is taken. So at most 16
  candidate boxes, each reading only the chunks it overlaps, are read per patch, and the choice
  is a pure function of ``(seed, stream, index)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

K_SIGMA = 4.0
BAND_SIGMA = 2.0
MOSTLY_BACKGROUND = 0.85
MIN_FOREGROUND = 0.005
FULL_CONTENT = 0.02
UNIFORM_SHARE = 0.1
MAX_TRIES = 16
MAX_VOXELS = 2_000_000


@dataclass(frozen=True)
class Rule:
    """How ``auto`` decides and what a patch must hold; the shared one unless a method prefers its own.

    Attributes
    ----------
    mostly_background : on from this share of sampled voxels at the background level.
    clipped_background : also on from this share when the level has no noise (a clipped background);
        None: no such clause.
    min_foreground : and only when at least this share lies above the threshold.
    full_content : a candidate with at least this share of foreground voxels is always accepted.
    """

    mostly_background: float = MOSTLY_BACKGROUND
    clipped_background: float | None = None
    min_foreground: float = MIN_FOREGROUND
    full_content: float = FULL_CONTENT


@dataclass(frozen=True)
class Foreground:
    """The decision of one run (recorded in the model's info).

    Attributes
    ----------
    setting : the configuration's ``"auto"``, ``"off"`` or a threshold (as given).
    on : whether patches are drawn foreground-aware.
    threshold : ``T`` in raw intensity units (None when not estimated: ``off``).
    level, noise : background level ``b`` and noise ``sigma`` of the sampled chunks (None when not estimated).
    background_fraction, foreground_fraction : shares of sampled voxels at the background level and above ``T``.
    reason : one line saying why it is on or off.
    """

    setting: str
    on: bool
    threshold: float | None = None
    level: float | None = None
    noise: float | None = None
    background_fraction: float | None = None
    foreground_fraction: float | None = None
    reason: str = ""
    uniform_share: float = UNIFORM_SHARE
    full_content: float = FULL_CONTENT
    max_tries: int = MAX_TRIES

    def to_dict(self) -> dict:
        return asdict(self)


def _subsample(values: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return values if values.size <= n else rng.choice(values, n, replace=False)


def sample_statistics(samples: list[np.ndarray], seed: int = 0,
                      max_voxels: int = MAX_VOXELS) -> tuple[float, float, np.ndarray]:
    """Background level, noise and a bounded random subset of the finite values of ``samples``.

    Parameters
    ----------
    samples : arrays of any shape (sampled chunk boxes), at least 2 long along their last axis
        for a noise estimate.

    Returns
    -------
    ``(level, noise, values)``: the median, the robust neighbour-difference sigma (0 when the
    samples have no neighbours) and up to ``max_voxels`` float64 values.
    """
    rng = np.random.default_rng(seed)
    per = max(1, max_voxels // max(1, len(samples)))
    values, diffs = [], []
    for s in samples:
        x = np.asarray(s, dtype=np.float64)
        v = x[np.isfinite(x)]
        values.append(_subsample(v, per, rng))
        if x.ndim and x.shape[-1] > 1:
            d = np.diff(x, axis=-1).ravel()
            diffs.append(_subsample(d[np.isfinite(d)], per, rng))
    all_values = np.concatenate(values) if values else np.empty(0)
    if all_values.size == 0:
        raise ValueError("no finite values to estimate the background level from")
    d = np.concatenate(diffs) if diffs else np.empty(0)
    noise = float(1.4826 * np.median(np.abs(d)) / np.sqrt(2)) if d.size else 0.0
    return float(np.median(all_values)), noise, all_values


def decide(setting: str | float, samples: list[np.ndarray], seed: int = 0, rule: Rule = Rule()) -> Foreground:
    """The run's :class:`Foreground` from the configuration's ``setting`` and the sampled chunks.

    ``"off"`` reads nothing; a number is the threshold (always on); ``"auto"`` applies the test of
    the module docstring with ``rule``'s shares.
    """
    if setting == "off":
        return Foreground("off", False, reason="--foreground off")
    level, noise, values = sample_statistics(samples, seed)
    band = BAND_SIGMA * noise
    bg = float(np.mean(np.abs(values - level) <= band))
    if setting != "auto":
        threshold = float(setting)
        fg = float(np.mean(values > threshold))
        return Foreground(str(setting), True, threshold, level, noise, bg, fg, reason="threshold given",
                          full_content=rule.full_content)
    threshold = level + K_SIGMA * noise
    fg = float(np.mean(values > threshold))
    clipped = noise == 0 and rule.clipped_background is not None
    needed = rule.clipped_background if clipped else rule.mostly_background
    on = bg >= needed and fg >= rule.min_foreground
    level_text = f"the clipped background level {level:.4g} (no noise)" if clipped else \
        f"the background level {level:.4g} +- {band:.4g}"
    reason = (f"{bg:.1%} of sampled voxels at {level_text} (on from {needed:.0%}), "
              f"{fg:.2%} above {threshold:.4g} (on from {rule.min_foreground:.1%})")
    return Foreground("auto", on, threshold, level, noise, bg, fg, reason=reason, full_content=rule.full_content)


def content(patch: np.ndarray, threshold: float) -> float:
    """The fraction of the voxels of ``patch`` (any shape) above ``threshold``."""
    return float(np.mean(np.asarray(patch) > threshold)) if np.size(patch) else 0.0


def acceptance(c: float, full_content: float = FULL_CONTENT) -> float:
    """The probability that a candidate with content ``c`` is accepted: ``min(1, c / full_content)``."""
    return min(1.0, c / full_content)


def foreground_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator of sample ``index``'s accept/reject draws: independent of ``sampling.sample_rng``
    (masking and augmentation draw the same with foreground sampling on or off)."""
    return np.random.default_rng([seed, stream, index, 7_000_003])


def choose_attempt(contents: Callable[[int], float], rng: np.random.Generator, rule: Foreground) -> int:
    """Which candidate box (0 = the uniform draw) sample ``index`` uses.

    ``contents(t)`` is the content of candidate ``t``; it is called for ``t = 0, 1, ...`` only as far
    as needed (at most ``rule.max_tries`` times, never in the uniform share).
    """
    if rng.random() < rule.uniform_share:
        return 0
    best, best_c = 0, -1.0
    for t in range(rule.max_tries):
        c = contents(t)
        if rng.random() < acceptance(c, rule.full_content):
            return t
        if c > best_c:
            best, best_c = t, c
    return best
