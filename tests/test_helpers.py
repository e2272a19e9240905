"""The suite's comparison helpers: bounds scale with what is compared, and the messages state the numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import Float32Reference, assert_close_to_scale, assert_matches_float32_reference
from torch import nn


def test_bound_is_relative_to_each_references_scale():
    big, small = torch.full((2, 3), 100.0), torch.full((2, 3), 0.01)
    assert_close_to_scale([big + 0.005, small], [big, small], rel=1e-4)  # 0.005 <= 1e-4 * 100
    with pytest.raises(AssertionError) as e:
        assert_close_to_scale([big, small + 0.005], [big, small], rel=1e-4, what="maps")
    message = str(e.value)  # the small map is judged against its own scale, not the big one's
    assert "maps[1]" in message and "0.005" in message and "1e-06" in message and "0.01" in message


def test_nan_shape_and_near_zero_reference_fail():
    ref = torch.ones(4)
    with pytest.raises(AssertionError, match="exceeds the bound"):
        assert_close_to_scale(torch.tensor([1.0, float("nan"), 1.0, 1.0]), ref, rel=1e-3)
    with pytest.raises(AssertionError, match="shape"):
        assert_close_to_scale(torch.ones(5), ref, rel=1e-3)
    with pytest.raises(AssertionError, match="nothing to compare"):
        assert_close_to_scale(torch.zeros(4), torch.zeros(4), rel=1e-3, min_scale=0.1)


def test_export_bound_follows_float32_noise():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    xs = [torch.randn(1, 3, 16, 16) for _ in range(3)]
    ref = Float32Reference(model, xs, pick=lambda out: out)
    assert ref.noise.max() > 0 and len(ref.outputs) == 3
    same = [model(x).detach() for x in xs]
    assert "99.9th percentile" in assert_matches_float32_reference(same, ref)
    ulp = np.spacing(np.float32(ref.scale))
    jittered = [o + ulp * np.sign(np.random.default_rng(0).standard_normal(o.shape)) for o in ref.outputs]
    assert_matches_float32_reference(jittered, ref)  # one ulp everywhere is rounding, not a mistake
    shifted = [o + 1e-3 * ref.scale for o in ref.outputs]
    with pytest.raises(AssertionError, match="percentile"):
        assert_matches_float32_reference(shifted, ref)
