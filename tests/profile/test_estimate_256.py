"""The estimate at the published 256^3 and 512^3: seconds on the CPU, no device needed."""

import time

import pytest

from medvol.profile.estimate import estimate
from profile_checks import MIB, check_consistent, published_case


def test_published_estimate_256_under_a_minute():
    start = time.perf_counter()
    for model in ("hagan", "crfgan"):
        for mode in ("reference", "optimized"):
            result = estimate(published_case(model, 256, 2, mode))
            check_consistent(result)
            print(model, mode, f"{result['peak_bytes'] / MIB:,.0f} MiB", f"{result['trace_s']:.1f} s")
    print(f"four 256^3 estimates in {time.perf_counter() - start:.1f} s")


@pytest.mark.slow
def test_published_estimate_512():
    for model in ("hagan", "crfgan"):
        result = estimate(published_case(model, 512, 1, "optimized"))
        check_consistent(result)
