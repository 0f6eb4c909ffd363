"""Which launches may start before their predecessor ends (programmatic dependent launch)."""
import pytest
import torch

from sonic.errors import SonicError
from sonic.kernels.triton import pdl


def test_long_streams_launch_after_their_predecessor(monkeypatch):
    monkeypatch.setattr(pdl, "pdl_enabled", lambda t: True)
    monkeypatch.delenv("SONIC_PDL_MAX_MB", raising=False)
    monkeypatch.setenv("SONIC_PDL", "1")
    t = torch.zeros(1)
    assert pdl.launch_options(t) == {"USE_PDL": True, "launch_pdl": True}
    assert pdl.launch_options(t, 100_000_000) == {"USE_PDL": True, "launch_pdl": True}
    assert pdl.launch_options(t, 100_000_001) == {"USE_PDL": False}
    monkeypatch.setenv("SONIC_PDL_MAX_MB", "500")
    assert pdl.launch_options(t, 400_000_000)["USE_PDL"]
    assert not pdl.launch_options(t, 600_000_000)["USE_PDL"]


def test_off_on_the_cpu_and_when_switched_off(monkeypatch):
    assert pdl.launch_options(torch.zeros(1)) == {"USE_PDL": False}
    monkeypatch.setenv("SONIC_PDL", "0")
    assert not pdl.pdl_enabled(torch.zeros(1))


def test_early_lets_the_next_launch_before_the_wait(monkeypatch):
    monkeypatch.setattr(pdl, "_supported", lambda index: True)
    monkeypatch.setattr(torch.Tensor, "device", property(lambda t: torch.device("cuda", 0)))
    monkeypatch.delenv("SONIC_PDL", raising=False)  # the default
    assert pdl.launch_options(torch.zeros(1)) == {"USE_PDL": pdl.EARLY, "launch_pdl": True}
    monkeypatch.setenv("SONIC_PDL", "early")
    assert pdl.launch_options(torch.zeros(1)) == {"USE_PDL": pdl.EARLY, "launch_pdl": True}
    assert pdl.launch_options(torch.zeros(1), 10**9) == {"USE_PDL": False}
    monkeypatch.setenv("SONIC_PDL", "1")
    assert pdl.launch_options(torch.zeros(1)) == {"USE_PDL": True, "launch_pdl": True}
    monkeypatch.setenv("SONIC_PDL", "yes")
    with pytest.raises(SonicError, match="SONIC_PDL='yes' is not a setting: use early"):
        pdl.launch_options(torch.zeros(1))


@pytest.mark.parametrize("value", ["lots", "-5", "nan"])
def test_a_bad_limit_names_the_setting(monkeypatch, value):
    monkeypatch.setenv("SONIC_PDL_MAX_MB", value)
    with pytest.raises(SonicError, match="SONIC_PDL_MAX_MB"):
        pdl.launch_options(torch.zeros(1), 1)
