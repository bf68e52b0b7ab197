import os

import numpy as np
import pytest

# sessions' graph rewrites may not fall back silently to the graph as written under test
os.environ.setdefault("ONNX2SNN_REWRITE", "strict")

from tools.fixtures import digits as models


@pytest.fixture(scope="session")
def digits_data():
    return models.digits_split(0)


@pytest.fixture(scope="session")
def digits_npz(tmp_path_factory, digits_data):
    x_train, y_train, x_test, y_test = digits_data
    folder = tmp_path_factory.mktemp("digits")
    np.savez(folder / "calib.npz", input=x_train, y=y_train)
    np.savez(folder / "test.npz", input=x_test, y=y_test)
    return folder / "calib.npz", folder / "test.npz"


def _export(tmp_path_factory, name, builder):
    net, x = builder()
    path = tmp_path_factory.mktemp(name) / f"{name}.onnx"
    path.write_bytes(models.export(net, x))
    return path


@pytest.fixture(scope="session")
def cnn_path(tmp_path_factory):
    return _export(tmp_path_factory, "cnn", models.digits_cnn)


@pytest.fixture(scope="session")
def resnet_path(tmp_path_factory):
    return _export(tmp_path_factory, "resnet", models.digits_resnet)


@pytest.fixture(scope="session")
def pool_resnet_path(tmp_path_factory):
    return _export(tmp_path_factory, "pool_resnet", models.digits_pool_resnet)


@pytest.fixture(scope="session")
def mlp_path(tmp_path_factory):
    return _export(tmp_path_factory, "mlp", models.digits_mlp)


@pytest.fixture(scope="session")
def mobilenet_path(tmp_path_factory):
    return _export(tmp_path_factory, "mobilenet", models.digits_mobilenet)


@pytest.fixture(scope="session")
def silu_se_path(tmp_path_factory):
    return _export(tmp_path_factory, "silu_se", models.digits_silu_se)


@pytest.fixture(scope="session")
def vit_path(tmp_path_factory):
    return _export(tmp_path_factory, "vit", models.digits_vit)


# Two tiers: `pytest -m "not slow"` runs the unit tests (hand-built graphs, the C++ op, analysis,
# builder, energy, every form) in well under a minute; the end-to-end tests train and export models,
# spawn the command line or run exporters, and are marked slow. CI runs both tiers.
_SLOW_FIXTURES = {"cnn_path", "resnet_path", "pool_resnet_path", "mlp_path", "mobilenet_path", "digits_npz", "digits_data",
                  "silu_se_path", "vit_path"}
_SLOW_MODULES = {"test_cli", "test_exporters", "test_readme", "test_runtimes"}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end test (trains/exports models or runs the CLI)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module in _SLOW_MODULES or _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
