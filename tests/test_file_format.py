"""Model files written by earlier versions still load, and give the same codes.

``tests/data/format1_*.npz`` were written by ``Autoencoder.save`` in file format 1
(the first release's layout: weights plus a JSON config in one ``.npz``), with the
codes they gave for a fixed input in ``format1_codes.json``.  Every later version
must read them and reproduce those codes.
"""
import json
import os

import numpy as np
import pytest

import autoencoders
from autoencoders import Autoencoder

DATA = os.path.join(os.path.dirname(__file__), "data")
FLAVORS = ("vanilla", "variational", "denoising", "sparse", "contractive")


@pytest.fixture(scope="module")
def expected():
    with open(os.path.join(DATA, "format1_codes.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_format1_files_load_and_give_the_same_codes(flavor, expected):
    model = Autoencoder.load(os.path.join(DATA, f"format1_{flavor}.npz"))
    assert type(model) is autoencoders.FLAVORS[flavor]
    assert model.sizes == [6, 4, 2]
    codes = model.transform(np.asarray(expected["x"], dtype="float32"))
    np.testing.assert_allclose(codes, np.asarray(expected[flavor]), rtol=1e-6, atol=1e-6)


def test_format1_hyper_parameters_survive(expected):
    vae = Autoencoder.load(os.path.join(DATA, "format1_variational.npz"))
    assert vae.beta == 0.5
    dae = Autoencoder.load(os.path.join(DATA, "format1_denoising.npz"))
    assert dae.noise_level == 0.2
