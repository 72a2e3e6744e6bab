import re
from pathlib import Path

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


def test_config_files_layer_in_order_and_a_missing_one_is_one_error(tmp_path):
    (tmp_path / "a.yaml").write_text("data:\n  seed: 7\n  synthetic:\n    n_traces: 12\n")
    (tmp_path / "b.yaml").write_text("data:\n  seed: 9\n")
    config = Config.load(f"{tmp_path / 'a.yaml'}, {tmp_path / 'b.yaml'}", ["data.synthetic.n_traces=5"])
    assert (config.data.seed, config.data.synthetic.n_traces) == (9, 5)
    assert Config.load(f"{tmp_path / 'b.yaml'},{tmp_path / 'a.yaml'}").data.seed == 7
    with pytest.raises(EdgepickError, match="cannot read config .*nope.yaml"):
        Config.load(f"{tmp_path / 'a.yaml'},{tmp_path / 'nope.yaml'}")


@pytest.mark.parametrize("override", ["data.nope=1", "data.synthetic.n_traces=abc", "data=1", "no-equals-sign"])
def test_bad_overrides_are_one_clear_error(override):
    with pytest.raises(EdgepickError):
        Config.load(None, [override])


def test_cli_exits_nonzero_with_one_line(capsys):
    assert main(["data", "--set", "data.source=nowhere"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown data source" in err[0]


def test_every_default_and_preset_passes_its_declaration():
    Config().check()
    for preset in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        Config.load(preset).check()
    configs = Path(__file__).resolve().parents[1] / "configs"
    stream = Config.load(f"{configs / 'real-data.yaml'},{configs / 'streaming.yaml'}")  # make recipe RECIPE=...
    assert stream.student.causal and stream.student.s_needs_horizontals  # the streaming settings over the recipe's
    assert stream.distill.phase_weight == 10 and stream.quantize.student == stream.qat.out != "models/student_qat"


@pytest.mark.parametrize("override,message", [
    # issue 31, item 7: each was a traceback in its stage
    ("quantize.heldout_windows=0", "quantize.heldout_windows must be >= 1, got 0"),
    ("data.sampling_rate=0", "data.sampling_rate must be > 0, got 0"),
    ("distill.batch_size=0", "distill.batch_size must be >= 1, got 0"),
    ("teacher.batch_size=0", "teacher.batch_size must be >= 1"),
    ("benchmark.latency_repeats=0", "benchmark.latency_repeats must be >= 1"),
    ("data.miniseed.hop_seconds=0", "data.miniseed.hop_seconds must be > 0"),
    ("data.sampling_rate=nan", "data.sampling_rate must be a finite number"),
    # item 8: each was accepted, changed or misread
    ("distill.epochs=0", "distill.epochs must be >= 1, got 0"),
    ("distill.epochs=1.7", "distill.epochs must be a whole number, got '1.7'"),
    ("distill.resume=ture", "distill.resume must be true or false"),
    ("distill.resume=on", "distill.resume must be true or false"),
    ("data.vertical_only=maybe", "data.vertical_only must be true or false"),
    ("distill.out=", "distill.out must not be empty"),
    ("listen.max_picks=-1", "listen.max_picks must be >= 0, got -1"),
    ("data.split_fractions=1,1", "data.split_fractions must hold 3 values, got 2"),
    ("data.split_fractions=1,1,0", "data.split_fractions must add up to 1"),
    ("data.split_fractions=1.5,-0.25,-0.25", "data.split_fractions: each value must lie in [0, 1]"),
    ("board.name=esp64", "unknown board 'esp64'; known: esp32, esp32-psram2, esp32-psram4, esp32s3-psram8, esp32c3"),
    ("listen.formats=quakeml,kml", "unknown format 'kml'"),
    ("sweep.alphas=", "sweep.alphas must not be empty"),
    ("student.channel_multipliers=1,2,4", "student.channel_multipliers must hold 4 values"),
])
def test_a_bad_value_is_refused_where_it_is_declared(override, message):
    with pytest.raises(EdgepickError, match=re.escape(message)):
        Config.load(None, [override])


def test_a_value_is_read_as_its_settings_type_not_as_yaml(tmp_path):
    """`--set` texts: `-` (stdin, YAML's list [None]) stays `-`; booleans are true/false/yes/no/1/0 only; a whole
    float is a whole number; none is None where None is allowed; a YAML file's list is no text."""
    config = Config.load(None, ["listen.port=-", "distill.resume=yes", "data.vertical_only=0", "distill.epochs=3.0",
                                "benchmark.threshold=none", "distill.dataset_weights=", "data.split_fractions=[0,0.5,0.5]",
                                "listen.station=OK.X34..HH"])
    assert config.listen.port == "-" and config.distill.resume is True and config.data.vertical_only is False
    assert config.distill.epochs == 3 and isinstance(config.distill.epochs, int)
    assert config.benchmark.threshold is None and config.distill.dataset_weights == ()
    assert config.data.split_fractions == (0.0, 0.5, 0.5) and config.listen.station == "OK.X34..HH"
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("listen:\n  port:\n    - /dev/ttyUSB0\n")
    with pytest.raises(EdgepickError, match="listen.port must be a text"):
        Config.load(yaml_file)
    yaml_file.write_text("listen:\n  port: -\n")  # not YAML: one line all the same
    with pytest.raises(EdgepickError, match="^cannot read config [^\n]*: sequence entries are not allowed here [^\n]*$"):
        Config.load(yaml_file)
    yaml_file.write_text("listen:\n  port: '-'\ndistill:\n  resume: on\n  epochs: 2\n")  # YAML's own booleans
    loaded = Config.load(yaml_file)
    assert loaded.listen.port == "-" and loaded.distill.resume is True and loaded.distill.epochs == 2


def test_the_command_line_refuses_in_one_line_and_keeps_what_was_there(tmp_path, capsys):
    """distill.epochs=0 used to exit 0 and replace the student's saved configuration with its own."""
    student = tmp_path / "student"
    student.mkdir()
    (student / "edgepick_config.yaml").write_text("kept\n")
    for override in ("distill.epochs=0", "distill.epochs=1.7", "distill.resume=ture", "distill.batch_size=0"):
        assert main(["distill", "--set", f"distill.out={student}", "--set", override]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("edgepick distill: error: config "), err
    assert [p.name for p in student.iterdir()] == ["edgepick_config.yaml"]
    assert (student / "edgepick_config.yaml").read_text() == "kept\n"


@pytest.mark.slow
def test_listen_port_dash_reads_stdin(tmp_path):
    """listen.port=- is stdin, as documented (YAML read it as the list [None]: "cannot open [None]")."""
    import json
    import subprocess
    import sys

    lines = [json.dumps({"type": "pick", "phase": "P", "sample": 1234, "time": 1600000012.34, "prob": 0.8,
                         "fwhm": 24, "unc": 0.1, "on": 1229, "off": 1239}),
             '{"type":"info","msg":"end: 3000 samples, 5 windows, 1 picks, 0 bad lines, 0 gap samples"}']
    result = subprocess.run([sys.executable, "-m", "pipeline", "listen", "--set", "listen.port=-",
                             "--set", "listen.station=XX.SIM..HH", "--set", f"listen.out={tmp_path}",
                             "--set", "listen.formats=quakeml"], input="\n".join(lines) + "\n", capture_output=True,
                            text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.glob("XX.SIM..HH_*.quakeml.xml"))) == 1
