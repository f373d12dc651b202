"""The automatic mode's post-processing: small islands dropped, small holes filled."""

from __future__ import annotations

import numpy as np
import pytest

from grounded_seg.segmenters.sam_auto import AutoMaskConfig, remove_small_regions


def test_small_islands_go_small_holes_fill_and_the_largest_region_stays():
    mask = np.zeros((40, 40), bool)
    mask[5:25, 5:25] = True  # the object, 400 px
    mask[12:14, 12:14] = False  # a 4-px hole inside it
    mask[35:37, 35:38] = True  # a 6-px stray island far away
    cleaned, changed = remove_small_regions(mask, 10)
    assert changed
    expected = np.zeros((40, 40), bool)
    expected[5:25, 5:25] = True
    np.testing.assert_array_equal(cleaned, expected)

    again, changed = remove_small_regions(cleaned, 10)
    assert not changed and np.array_equal(again, cleaned)
    untouched, changed = remove_small_regions(mask, 0)
    assert not changed and untouched is mask

    tiny = np.zeros((40, 40), bool)
    tiny[1:3, 1:3] = True  # smaller than the threshold, but the mask's only region
    np.testing.assert_array_equal(remove_small_regions(tiny, 10)[0], tiny)


def test_holes_open_to_the_border_are_not_holes():
    mask = np.ones((20, 20), bool)
    mask[0:2, 8:10] = False  # a notch touching the image border
    np.testing.assert_array_equal(remove_small_regions(mask, 10)[0], mask)


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_min_mask_region_area_must_be_a_count(bad):
    with pytest.raises(ValueError, match="min_mask_region_area"):
        AutoMaskConfig(min_mask_region_area=bad)
