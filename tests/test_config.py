import pytest

from pipeline.cli import main
from pipeline.config import Config
from pipeline.errors import EdgepickError


def test_overrides_are_typed(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("data:\n  seed: 7\n  synthetic:\n    n_traces: 12\n")
    config = Config.load(yaml_file, ["data.synthetic.snr_db_min=3", "data.split_fractions=0.8,0.1,0.1"])
    assert config.data.seed == 7
    assert config.data.synthetic.n_traces == 12
    assert config.data.synthetic.snr_db_min == 3.0 and isinstance(config.data.synthetic.snr_db_min, float)
    assert config.data.split_fractions == (0.8, 0.1, 0.1)
    one = Config.load(None, ["sweep.base_channels=8", "sweep.temperatures=2"])  # one-item lists
    assert one.sweep.base_channels == (8,) and one.sweep.temperatures == (2.0,)


@pytest.mark.parametrize("override", ["data.nope=1", "data.synthetic.n_traces=abc", "data=1", "no-equals-sign"])
def test_bad_overrides_are_one_clear_error(override):
    with pytest.raises(EdgepickError):
        Config.load(None, [override])


def test_cli_exits_nonzero_with_one_line(capsys):
    assert main(["data", "--set", "data.source=nowhere"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown data source" in err[0]
