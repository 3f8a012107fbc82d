"""What the model has seen (core/signature.py): the score, its file, and the alert's streak. The real measurement,
a model trained on casting photos against foreign inputs, is in tests/test_belt.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core import signature
from edge.alerts import Streak


def features(n: int, seed: int, *, shift: float = 0.0) -> np.ndarray:
    """Feature vectors that vary along 4 directions of 64, as a network's pooled features of one kind of part do."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(0).normal(size=(4, 64))
    return (rng.normal(size=(n, 4)) * [3, 2, 1, 0.5]) @ basis + rng.normal(0, 0.05, (n, 64)) + 5.0 + shift


def test_training_inputs_score_about_one_and_others_far_above() -> None:
    sig = signature.fit(features(400, 1))
    held_out = sig.score(features(400, 2))
    limit = signature.threshold(held_out)
    assert 0.7 < float(np.median(held_out)) < 1.3 and limit < 3
    assert (sig.score(features(400, 3)) <= limit).mean() >= 0.98, "other inputs of the same kind stay below"
    assert (sig.score(features(100, 4, shift=0.5)) > limit).all(), "a shifted kind of input is far above"
    odd = np.random.default_rng(5).normal(5, 1, (100, 64))  # nothing like the 4 directions
    assert (sig.score(odd) > 5 * limit).all()
    assert sig.score(features(1, 6)[0]).shape == (1,), "one vector scores as one row"
    rows = np.concatenate([features(5, 7), features(5, 8, shift=0.5), odd[:5]]).astype(np.float32)
    assert [sig.score_one(r) for r in rows] == pytest.approx(sig.score(rows).tolist(), rel=1e-3), \
        "the unit's per-frame form gives the batch form's scores (float32 sums in another order)"


def test_the_file_round_trips_and_a_bad_one_is_one_clear_line(tmp_path: Path) -> None:
    sig = signature.fit(features(50, 1), components=8)
    path = tmp_path / "m.signature.npz"
    path.write_bytes(signature.to_bytes(sig))
    again = signature.load(path)
    assert np.array_equal(again.components, sig.components) and again.residual == pytest.approx(sig.residual)
    (tmp_path / "bad.npz").write_bytes(b"not a signature")
    with pytest.raises(signature.SignatureError, match=r"bad.npz: signature unreadable"):
        signature.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "odd.npz", mean=np.zeros(3), components=np.zeros((2, 4)), variances=np.ones(2), residual=1.0)
    with pytest.raises(signature.SignatureError, match=r"odd.npz: signature malformed"):
        signature.load(tmp_path / "odd.npz")
    with pytest.raises(ValueError, match="at least 8"):
        signature.fit(features(3, 1))


def test_a_streak_alerts_once_and_rearms_after_as_many_familiar_inputs() -> None:
    streak = Streak(3)
    said = [streak.add(x) for x in (True, True, False, True, True, True, True, True)]
    assert said == [False, False, False, False, False, True, False, False], "one odd input is no streak"
    assert [streak.add(x) for x in (False, False, True, True, True)] == [False] * 5, "not re-armed after 2 familiar"
    assert [streak.add(x) for x in (False, False, False, True, True, True)] == [False] * 5 + [True]
    assert streak.unfamiliar == 13


def test_a_model_whose_signature_is_missing_or_corrupt_is_refused_in_one_line(tmp_path: Path) -> None:
    """A manifest that names a signature is a promise: without the file, or with another one, the unit refuses the
    model (cmd/model keeps the one it runs) and says which file, as for a .tflite that does not match."""
    import shutil

    from core import manifest as mf
    from edge.cli import main
    from harness import REPO

    models = tmp_path / "models"
    shutil.copytree(REPO / "models", models, ignore=shutil.ignore_patterns("*.h5", "efficientnetb0*", "cnn*"))
    npz = models / "mobilenetv2.signature.npz"
    npz.unlink()
    assert main(["verify-model", "mobilenetv2", "--models-dir", str(models)]) == 2
    shutil.copy(REPO / "models" / "mobilenetv2.signature.npz", npz)
    with npz.open("ab") as f:
        f.write(b"\0")
    from core.classifier import Classifier, ModelMismatchError

    with pytest.raises(ModelMismatchError, match=r"signature file mobilenetv2.signature.npz is missing or not the one"):
        Classifier(models / "mobilenetv2.json")
    assert mf.load(models / "mobilenetv2.json").signature is not None


def test_the_score_is_left_to_its_first_reader_and_is_the_inputs_own(
        casting: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """classify() keeps a copy of the features and leaves the sums to whoever first reads ``ood`` (on the unit,
    the publisher, with the signature warm in the cache): none on the inference loop. The copy is the input's own:
    the next classify() does not change the last one's score."""
    from core.classifier import Classifier
    from core.images import read_rgb
    from harness import REPO
    from harness.data import casting_sample

    clf = Classifier(REPO / "models" / "mobilenetv2.json", num_threads=1)
    assert clf.signature is not None
    one, other = (read_rgb(p) for p in casting_sample(2))
    clf.classify(one)
    own_one = clf.signature.score_one(clf.features())  # type: ignore[arg-type]
    clf.classify(other)
    own_other = clf.signature.score_one(clf.features())  # type: ignore[arg-type]
    scored: list[float] = []
    score_one = signature.Signature.score_one
    monkeypatch.setattr(signature.Signature, "score_one", lambda s, f: scored.append(1) or score_one(s, f))
    first, second = clf.classify(one), clf.classify(other)
    assert scored == [], "classify() scores nothing"
    assert first.ood == pytest.approx(own_one, rel=1e-6) and second.ood == pytest.approx(own_other, rel=1e-6)
    assert own_one != pytest.approx(own_other), "two photos, two scores: the test can tell them apart"
    assert first.ood == first.ood and len(scored) == 2, "each scored once, then remembered"


def test_a_batch_is_scored_in_one_pass_each_input_its_own(
        casting: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The publisher scores its batch with :func:`signature.score_all`: one pass over the stacked features per
    signature (none one by one), each prediction its own score, and what was scored already is left as it was."""
    from core.classifier import Classifier
    from core.images import read_rgb
    from harness import REPO
    from harness.data import casting_sample

    clf = Classifier(REPO / "models" / "mobilenetv2.json", num_threads=1)
    assert clf.signature is not None
    own: list[float] = []
    predictions = []
    for path in casting_sample(6):
        predictions.append(clf.classify(read_rgb(path)))
        own.append(clf.signature.score_one(clf.features()))  # type: ignore[arg-type]
    early = predictions[0].ood  # read before the batch: scored on its own, and kept
    passes: list[int] = []
    score = signature.Signature.score
    monkeypatch.setattr(signature.Signature, "score", lambda s, f: passes.append(len(f)) or score(s, f))
    monkeypatch.setattr(signature.Signature, "score_one", lambda s, f: pytest.fail("scored one by one"))
    signature.score_all(p.familiarity for p in predictions if p.familiarity is not None)
    assert passes == [5], "one pass, over the five not scored yet"
    assert [p.ood for p in predictions] == pytest.approx(own, rel=1e-4), "float32 sums in another order"
    assert predictions[0].ood == early and len(set(own)) == 6, "six photos, six scores: the test tells them apart"
    signature.score_all(p.familiarity for p in predictions if p.familiarity is not None)
    assert passes == [5], "nothing is scored twice"
