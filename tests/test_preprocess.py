"""The one preprocessing function: every plan computes the same input, fast paths do no float work."""

from __future__ import annotations

import numpy as np
import pytest

from core.manifest import InputSpec
from core.preprocess import FrameError, Preprocessor, Roi, scale_pixels


def spec(**kw: object) -> InputSpec:
    base: dict[str, object] = {"height": 32, "width": 48, "dtype": "float32"}
    base.update(kw)
    return InputSpec.model_validate(base)


@pytest.fixture
def frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)


def test_plans_are_chosen_from_quantization() -> None:
    assert Preprocessor(spec()).plan == "float"
    assert Preprocessor(spec(dtype="uint8", scale=1 / 255, zero_point=0)).plan == "copy"
    assert Preprocessor(spec(dtype="int8", scale=1 / 255, zero_point=-128)).plan == "flip_sign_bit"
    assert Preprocessor(spec(dtype="uint8", scale=0.0045, zero_point=3)).plan == "quantize"
    assert Preprocessor(spec(dtype="int8", scale=1 / 127.5, zero_point=0, pixel_scaling="symmetric")).plan \
        == "quantize"


def test_float_path_is_pixels_over_255(frame: np.ndarray) -> None:
    pre = Preprocessor(spec())
    x = pre(frame)
    assert x.dtype == np.float32 and x.shape == (32, 48, 3)
    np.testing.assert_allclose(x, pre.pixels(frame) / np.float32(255), rtol=1e-6)
    np.testing.assert_allclose(x, scale_pixels(pre.pixels(frame), "unit"), rtol=1e-6)


def test_symmetric_scaling(frame: np.ndarray) -> None:
    x = Preprocessor(spec(pixel_scaling="symmetric"))(frame)
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.min() < -0.9


@pytest.mark.parametrize(("dtype", "zp"), [("uint8", 0), ("int8", -128)])
def test_fast_paths_equal_the_general_quantization_formula(frame: np.ndarray, dtype: str, zp: int) -> None:
    fast = Preprocessor(spec(dtype=dtype, scale=1 / 255, zero_point=zp))
    x = fast(frame)
    expected = np.rint(fast.pixels(frame) / 255 / (1 / 255)) + zp
    assert x.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(x.astype(np.int32), expected.astype(np.int32))


def test_general_quantization_clips_to_the_dtype(frame: np.ndarray) -> None:
    x = Preprocessor(spec(dtype="int8", scale=0.002, zero_point=-100))(frame)
    assert x.dtype == np.int8 and x.max() == 127  # 255/255/0.002 - 100 = 400 -> clipped


def test_writes_into_the_given_buffer(frame: np.ndarray) -> None:
    buf = np.zeros((1, 32, 48, 3), np.uint8)
    out = Preprocessor(spec(dtype="uint8", scale=1 / 255))(frame, out=buf[0])
    assert np.shares_memory(out, buf) and buf.any()


def test_grey_and_four_channel_frames(frame: np.ndarray) -> None:
    pre = Preprocessor(spec(dtype="uint8", scale=1 / 255))
    grey = pre(frame[:, :, 0].copy())
    assert np.array_equal(grey[..., 0], grey[..., 2])
    rgba = np.dstack([frame, np.full(frame.shape[:2], 255, np.uint8)])
    assert np.array_equal(pre(rgba), pre(frame))


def test_bgr_camera_is_swapped_once(frame: np.ndarray) -> None:
    rgb = Preprocessor(spec(dtype="uint8", scale=1 / 255))(frame)
    from_bgr = Preprocessor(spec(dtype="uint8", scale=1 / 255), frame_order="BGR")(frame[:, :, ::-1].copy())
    assert np.array_equal(rgb, from_bgr)


def test_roi_crops_before_resizing(frame: np.ndarray) -> None:
    pre = Preprocessor(spec(dtype="uint8", scale=1 / 255, height=20, width=30), roi=Roi(10, 5, 30, 20))
    assert np.array_equal(pre(frame), frame[5:25, 10:40])


def test_bad_frames_are_named() -> None:
    pre = Preprocessor(spec(), roi=Roi(0, 0, 100, 100))
    with pytest.raises(FrameError, match="ROI 0,0 100x100 does not fit a 90x60 frame"):
        pre(np.zeros((60, 90, 3), np.uint8))
    with pytest.raises(FrameError, match="dtype is float32"):
        Preprocessor(spec())(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(FrameError, match="not H x W x 3"):
        Preprocessor(spec())(np.zeros((10, 10, 5), np.uint8))
