import numpy as np
import pytest

from toolchain.metrics import mcnemar_exact, pack_correct, paired, unpack_correct, wilson


def test_wilson_matches_the_published_interval():
    # Newcombe (1998), table I: 81/263 -> 0.2553-0.3662; and the edge cases stay inside [0, 1].
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    lo, hi = wilson(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson(10, 10)[1] == pytest.approx(1.0) and wilson(10, 10)[1] <= 1.0


def test_wilson_is_about_two_standard_errors_at_rotten_tomatoes_size():
    lo, hi = wilson(870, 1066)  # accuracy 0.816 on the 1,066-example test set
    se = np.sqrt(0.816 * 0.184 / 1066)
    assert se == pytest.approx(0.0119, abs=1e-4) and (hi - lo) / 2 == pytest.approx(1.96 * se, abs=1e-3)


def test_mcnemar_exact_is_a_two_sided_binomial_test_on_the_discordant_examples():
    assert mcnemar_exact(2, 10) == pytest.approx(2 * 79 / 4096)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact(3, 9) == mcnemar_exact(9, 3)


def test_paired_says_within_noise_only_when_the_discordant_split_could_be_chance():
    a = np.array([True] * 80 + [False] * 20)
    b = a.copy()
    b[:3] = False  # b loses 3 examples a gets right, wins 1
    b[90] = True
    near = paired(b, a)
    assert near["diff"] == pytest.approx(-0.02) and (near["only_a"], near["only_b"]) == (1, 3)
    assert near["within_noise"] and near["p"] == pytest.approx(0.625)
    worse = a.copy()
    worse[:15] = False
    assert not paired(worse, a)["within_noise"]


def test_correctness_packs_into_bits_and_back():
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 9, 1066):
        bits = rng.random(n) < 0.8
        assert (unpack_correct(pack_correct(bits), n) == bits).all()
    assert len(pack_correct(np.ones(1066, bool))) == 180
    with pytest.raises(ValueError):
        unpack_correct(pack_correct(np.ones(16, bool)), 40)  # not the n it claims
    with pytest.raises(ValueError):
        unpack_correct("not base64!", 8)
