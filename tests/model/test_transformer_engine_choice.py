"""Which layer spec a run gets: a missing or broken Transformer Engine on a GPU is a loud error.

The decision is a pure function of (CUDA GPU present, TE import result, ``model.transformer_impl``), so
every case runs here on the CPU; the import result comes from really importing a package.
"""

from __future__ import annotations

import itertools
import sys

import pytest

from megatron_polar.config import load_config
from megatron_polar.model import builder
from megatron_polar.model.builder import (
    TransformerEngineProbe,
    choose_transformer_engine,
    probe_transformer_engine,
    resolve_use_te,
)
from megatron_polar.utils.errors import ConfigError

BROKEN = TransformerEngineProbe(
    error="ImportError: transformer_engine_torch.so: undefined symbol: _ZN3c104cuda9SetDeviceEi"
)
WORKING = TransformerEngineProbe()


@pytest.mark.parametrize(
    "impl, gpu, te, expected",
    [
        ("auto", True, WORKING, True),
        ("transformer_engine", True, WORKING, True),
        ("local", True, WORKING, False),
        ("local", True, BROKEN, False),  # the user chose to run without TE: no error
        ("auto", False, WORKING, False),  # CPU runs use the local spec even where TE imports
        ("auto", False, BROKEN, False),
        ("local", False, BROKEN, False),
    ],
)
def test_choice_without_error(impl, gpu, te, expected):
    assert choose_transformer_engine(impl, gpu, te) is expected


@pytest.mark.parametrize("impl", ["auto", "transformer_engine"])
def test_broken_te_on_a_gpu_is_an_error_that_shows_the_import_failure(impl):
    with pytest.raises(ConfigError) as err:
        choose_transformer_engine(impl, True, BROKEN)
    message = str(err.value)
    assert f"model.transformer_impl={impl}" in message
    assert BROKEN.error in message  # the user sees why TE did not import
    assert "model.transformer_impl=local" in message  # and how to run without it on purpose


@pytest.mark.parametrize("te", [WORKING, BROKEN])
def test_transformer_engine_without_a_gpu_is_an_error(te):
    with pytest.raises(ConfigError, match="transformer_impl=transformer_engine.*CUDA GPU"):
        choose_transformer_engine("transformer_engine", False, te)


def test_only_local_escapes_the_error_on_a_gpu():
    """Over the whole table, the local spec on a GPU happens only when the user asked for it."""
    for impl, te in itertools.product(["auto", "transformer_engine", "local"], [WORKING, BROKEN]):
        try:
            use_te = choose_transformer_engine(impl, True, te)
        except ConfigError:
            assert impl != "local" and not te.usable
            continue
        assert use_te == (impl != "local")


def test_probe_reports_the_real_import_failure(tmp_path, monkeypatch):
    """A TE build that raises on import (here a package whose import fails the way a TE built against
    another torch does) yields the exception text, which the error above then prints."""
    package = tmp_path / "transformer_engine"
    (package / "pytorch").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "pytorch" / "__init__.py").write_text(
        "raise ImportError('transformer_engine_torch.so: undefined symbol: _ZN3c10probe')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.split(".")[0] == "transformer_engine"]:
        monkeypatch.delitem(sys.modules, name)
    try:
        probe = probe_transformer_engine.__wrapped__()
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "transformer_engine"]:
            del sys.modules[name]
    assert not probe.usable
    assert probe.error == "ImportError: transformer_engine_torch.so: undefined symbol: _ZN3c10probe"


def test_cpu_run_resolves_to_the_local_spec_without_importing_te(monkeypatch):
    """On this CPU machine ``auto`` and ``local`` give the local spec and never import TE, and
    ``transformer_engine`` is refused with the key named."""
    probed = []
    monkeypatch.setattr(builder, "probe_transformer_engine", lambda: probed.append(1) or WORKING)
    monkeypatch.setattr(builder.torch.cuda, "is_available", lambda: False)
    assert resolve_use_te(load_config(["model=tiny"])) is False
    assert resolve_use_te(load_config(["model=tiny", "model.transformer_impl=local"])) is False
    with pytest.raises(ConfigError, match="model.transformer_impl=transformer_engine"):
        resolve_use_te(load_config(["model=tiny", "model.transformer_impl=transformer_engine"]))
    assert probed == []


def test_gpu_run_with_broken_te_stops(monkeypatch):
    """The same configuration on a (pretended) GPU host whose TE import fails stops with that failure
    instead of silently training on the local spec."""
    monkeypatch.setattr(builder, "probe_transformer_engine", lambda: BROKEN)
    monkeypatch.setattr(builder.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(builder.cpu_backend, "is_enabled", lambda: False)
    with pytest.raises(ConfigError, match="undefined symbol"):
        resolve_use_te(load_config(["model=tiny"]))
    assert resolve_use_te(load_config(["model=tiny", "model.transformer_impl=local"])) is False
