"""lookalike.crop: the box of a region to search by, parsed from the text form every transport uses."""
from __future__ import annotations

import pytest

from lookalike.crop import parse_crop


@pytest.mark.parametrize("text", ["0,0,0,1", "0.6,0,0.5,1", "0,0.9,1,0.2", "-0.1,0,0.5,0.5", "1,1,1", "a,b,c,d"])
def test_bad_boxes_are_refused(text):
    with pytest.raises(ValueError):
        parse_crop(text)
