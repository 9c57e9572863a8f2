"""The test harness's own rules: shared data skips on a clone but fails in CI, and the exactness
rule (relative to the output's spread) with its negative control."""

import numpy as np
import pytest

import conftest
from conftest import EXACT_REL, INEXACT_MARGIN, assert_exact, assert_not_exact, shared_data


def test_missing_shared_data_skips_on_a_clone_and_fails_in_ci(tmp_path, monkeypatch):
    (tmp_path / "present").mkdir()
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path)
    monkeypatch.delenv(conftest.REQUIRE_DATA_ENV, raising=False)
    assert shared_data("present") == tmp_path / "present"
    with pytest.raises(pytest.skip.Exception, match="absent"):
        shared_data("absent", what="a data set")
    for value in ("", "0"):
        monkeypatch.setenv(conftest.REQUIRE_DATA_ENV, value)
        with pytest.raises(pytest.skip.Exception):
            shared_data("absent")
    monkeypatch.setenv(conftest.REQUIRE_DATA_ENV, "1")
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception)) as raised:  # a skip here must not pass
        shared_data("absent", what="a data set")
    assert raised.type is pytest.fail.Exception, "a missing data set skipped although CI requires it"
    assert f"{conftest.REQUIRE_DATA_ENV} is set" in str(raised.value) and "absent" in str(raised.value)
    assert shared_data("present") == tmp_path / "present"


def test_exactness_rule_is_relative_to_the_output_spread():
    ref = np.linspace(0, 1000, 101, dtype=np.float32)  # spread 1000: tolerance 0.1
    assert_exact(ref + 0.9 * EXACT_REL * 1000, ref)
    with pytest.raises(AssertionError, match="spread"):
        assert_exact(ref + 1.1 * EXACT_REL * 1000, ref)
    with pytest.raises(AssertionError, match="nearly flat"):
        assert_exact(ref, ref, data=ref * 11)
    level = np.linspace(3232, 3234, 101, dtype=np.float32)  # spread 2: one float32 step is 1.2e-4 of it
    step = np.spacing(np.float32(3234))
    assert_exact(level + step, level)
    with pytest.raises(AssertionError, match="spread"):
        assert_exact(level + 3 * step, level)
    assert_not_exact(ref + 1.1 * INEXACT_MARGIN * EXACT_REL * 1000, ref)
    with pytest.raises(AssertionError, match="could not see a wrong halo"):
        assert_not_exact(ref + 0.9 * INEXACT_MARGIN * EXACT_REL * 1000, ref)
