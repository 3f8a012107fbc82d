"""The conventions a model was trained with, which its file does not say: pixel scaling and which class is defective.

A model trained on raw 0-255 pixels and fed pixels divided by 255 (or the reverse), or one whose sigmoid means
P(good), converts without a single error and then calls every part wrong on the unit; the parity proof cannot see
it, because Keras and TFLite get the same wrong input. The labelled evaluation folder can: the Keras model is run
under each plausible pixel scaling, and each is scored with both polarities (p and 1 - p; for a 2-class softmax the
other column is exactly 1 - p), against the folder's labels.

What the user gave is used as given. What they did not is *detected* when the data says so clearly, else left at
the default. The measure is the log-loss, how far the probabilities are from the labels: it sees both the ranking
and where p falls against the threshold. Neither alone will do. ROC AUC, used before, is blind to the shift of p a
wrong scaling causes (a model trained on x / 127.5 - 1 and read as / 255 kept its ranking, so its AUC, while its
calls agreed with Keras' on 75 % of parts). The accuracy at the threshold is fooled the other way: the tiny test
model, read as it was trained, separates the synthetic parts perfectly (AUC 1.00) but is miscalibrated at 0.5 on
them (balanced accuracy 0.63), and read wrongly as raw pixels it scored 0.75 by accident, with a log-loss of 3.55
against 0.61. "Clearly" means an AUC of at least :data:`CLEAR_AUC` and a log-loss :data:`LOSS_MARGIN` below the
assumed reading's, or, for a model that reads well either way, two thirds of it at most and :data:`LOSS_FLOOR`
below: a model whose features ignore the pixels' offset and scale with their contrast (no biases, ReLUs, the image's
mean taken out) keeps its ranking exactly under the wrong scaling (AUC 0.997 both ways) and only its calibration
tells (log-loss 0.146 read as / 255 against 0.088 as trained, ``tests/test_own_models.py``). Every reading's
balanced accuracy, log-loss and AUC are reported. Either way, a reading the data clearly contradicts is reported in
one line with the figures and the option that fixes it, given options included (every scaling is read for that),
and a model below chance on its own evaluation set (AUC under
0.5 by more than two standard errors of chance, so an untrained model's noise is not "below") is refused unless
forced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from converter.metrics import balanced_accuracy, log_loss, roc_auc
from core.manifest import PixelScaling

Decided = Literal["given", "detected", "default"]
SCALINGS: tuple[PixelScaling, ...] = ("unit", "raw", "symmetric")  # the default first
DEFAULT_DEFECT_CLASS = 1  # the original app's models: one sigmoid, p = P(defective)
CLEAR_AUC = 0.75
LOSS_MARGIN = 0.1  # nats of log-loss
LOSS_RATIO = 1.5  # or this many times lower...
LOSS_FLOOR = 0.02  # ...and at least this much lower (a reading this close to 0 cannot be beaten)
MEANING = {"unit": "pixels / 255", "raw": "raw 0-255 pixels", "symmetric": "pixels / 127.5 - 1"}


@dataclass(frozen=True)
class Reading:
    """One way of reading the model: its pixel scaling and which output class is defective, with its figures."""

    pixel_scaling: PixelScaling
    defect_class: int  # the output class the model calls defective: 1 = p as it is, 0 = 1 - p
    balanced_accuracy: float  # of the calls at the threshold
    auc: float
    log_loss: float

    def describe(self) -> str:
        return (f"balanced accuracy {self.balanced_accuracy:.2f} at the threshold, log-loss {self.log_loss:.2f}, "
                f"ROC AUC {self.auc:.2f}")

    def beats(self, other: Reading) -> bool:
        """Clearly better than ``other`` on this evaluation set."""
        gain = other.log_loss - self.log_loss
        return self.auc >= CLEAR_AUC and (gain >= LOSS_MARGIN
                                          or (gain >= LOSS_FLOOR and self.log_loss * LOSS_RATIO <= other.log_loss))


@dataclass(frozen=True)
class Choice:
    """The conventions used, how each was decided, every reading tried, and what to tell the user."""

    pixel_scaling: PixelScaling
    defect_class: int
    decided: dict[str, Decided]
    readings: tuple[Reading, ...]
    chosen: Reading
    notes: tuple[str, ...]  # one line each: a detection applied, or a given option the data contradicts
    chance_auc: float  # below this, the chosen reading is worse than chance beyond chance's own spread

    @property
    def below_chance(self) -> bool:
        return self.chosen.auc < self.chance_auc


def chance_floor(labels: np.ndarray) -> float:
    """0.5 minus two standard errors of a chance classifier's AUC (Hanley and McNeil) for these class counts."""
    n1 = int(labels.astype(bool).sum())
    n0 = len(labels) - n1
    return 0.5 - 2 * float(np.sqrt((n0 + n1 + 1) / (12 * n0 * n1))) if n0 and n1 else 0.0


def readings(labels: np.ndarray, p_by_scaling: Mapping[PixelScaling, np.ndarray], threshold: float
             ) -> tuple[Reading, ...]:
    """Score every (scaling, defective class) reading; ``p_by_scaling`` holds p as the output column gives it."""
    y = labels.astype(bool)
    out = []
    for scaling, p in p_by_scaling.items():
        for cls, q in ((1, p), (0, 1.0 - p)):
            out.append(Reading(scaling, cls, balanced_accuracy(y, q > threshold), roc_auc(y, q), log_loss(y, q)))
    return tuple(out)


def _rank(r: Reading) -> tuple[float, float]:
    return (-r.log_loss, r.balanced_accuracy)


def settled(found: tuple[Reading, ...], scaling: PixelScaling) -> bool:
    """True when no other scaling could clearly beat ``scaling``'s better polarity: its log-loss is under the
    floor (no log-loss is below 0), so reading the model under the other scalings (a Keras pass each) can change
    nothing."""
    return min(r.log_loss for r in found if r.pixel_scaling == scaling) < LOSS_FLOOR


def _option(scaling: PixelScaling | None, defect_class: int | None) -> str:
    parts = []
    if scaling is not None:
        parts.append(f"--pixel-scaling {scaling}")
    if defect_class is not None:
        parts.append(f"--defect-class {defect_class}")
    return " ".join(parts)


def choose(found: tuple[Reading, ...], *, scaling: PixelScaling | None, defect_class: int | None,
           evidence: str, chance_auc: float) -> Choice:
    """Decide the conventions from what was given (None: not given) and the readings; ``evidence`` names the set."""
    by_key = {(r.pixel_scaling, r.defect_class): r for r in found}
    assumed = by_key[(scaling or SCALINGS[0], DEFAULT_DEFECT_CLASS if defect_class is None else defect_class)]
    free = [r for r in found if (scaling is None or r.pixel_scaling == scaling)
            and (defect_class is None or r.defect_class == defect_class)]
    best_any = max(found, key=_rank)
    decided: dict[str, Decided] = {"pixel_scaling": "given" if scaling else "default",
                                   "defect_class": "default" if defect_class is None else "given"}
    notes = []
    # The assumed scaling with its better polarity, then another scaling only if it clearly beats that: two
    # scalings that both read well (0.97 and 0.98) are no evidence against the default.
    chosen = max((r for r in free if r.pixel_scaling == assumed.pixel_scaling), key=_rank)
    chosen = chosen if chosen.beats(assumed) else assumed
    other = max(free, key=_rank)
    chosen = other if other.pixel_scaling != chosen.pixel_scaling and other.beats(chosen) else chosen
    if chosen != assumed:
        changed = []
        if chosen.pixel_scaling != assumed.pixel_scaling:
            decided["pixel_scaling"] = "detected"
            changed.append(f"it expects {MEANING[chosen.pixel_scaling]}, not {MEANING[assumed.pixel_scaling]}")
        if chosen.defect_class != assumed.defect_class:
            decided["defect_class"] = "detected"
            changed.append(_polarity(chosen.defect_class))
        option = _option(chosen.pixel_scaling if decided["pixel_scaling"] == "detected" else None,
                         chosen.defect_class if decided["defect_class"] == "detected" else None)
        notes.append(f"detected on {evidence}: {'; '.join(changed)} ({chosen.describe()}, against "
                     f"{assumed.describe()} as assumed); using {option}")
    if best_any != chosen and best_any.beats(chosen):
        notes.append(f"warning: the options given contradict {evidence}: it reads best with "
                     f"{_option(best_any.pixel_scaling, best_any.defect_class)} ({best_any.describe()}), against "
                     f"{chosen.describe()} as given; pass those options to fix it")
    return Choice(pixel_scaling=chosen.pixel_scaling, defect_class=chosen.defect_class, decided=decided,
                  readings=found, chosen=chosen, notes=tuple(notes), chance_auc=chance_auc)


def _polarity(defect_class: int) -> str:
    if defect_class == 0:
        return ("its defective class is output class 0 (a sigmoid's p is P(good): Keras orders class folders by "
                "name, def_front/ before ok_front/)")
    return "its defective class is output class 1"
