"""edge.toml: validated at start, every error in one message naming its key, the example documents every key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge import config
from harness import REPO
from relay import config as relay_config

EXAMPLE = REPO / "examples" / "edge.toml"


def undocumented(model: type, example: Path) -> set[str]:
    """Keys of ``model`` (a settings model, sections included) that the example file does not show."""
    documented = set(re.findall(r"^#?\s*\[*([a-z_0-9.]+)\]*\s*=?", example.read_text(), re.MULTILINE))
    documented = {k.rsplit(".", 1)[-1] for k in documented}
    every: set[str] = set()

    def keys(m: type) -> None:
        for name, field in m.model_fields.items():  # type: ignore[attr-defined]
            every.add(field.alias or name)
            for sub in getattr(field.annotation, "__args__", (field.annotation,)):
                if isinstance(sub, type) and hasattr(sub, "model_fields"):
                    keys(sub)

    keys(model)
    return every - documented


def test_example_is_valid_and_documents_every_key() -> None:
    cfg = config.load(EXAMPLE, check_files=False)
    assert cfg.device.id == "station2" and cfg.base_topic == "defect-edge/station2"
    assert not undocumented(config.EdgeConfig, EXAMPLE)


def test_relay_example_is_valid_and_documents_every_key() -> None:
    example = REPO / "examples" / "relay.toml"
    assert relay_config.load(example).smtp.port
    assert not undocumented(relay_config.RelayConfig, example)


def test_all_errors_in_one_message_naming_each_key(tmp_path: Path) -> None:
    p = tmp_path / "edge.toml"
    p.write_text('[device]\nid = "bad/id"\n[mqtt]\nport = 70000\nprotocl = "5"\n[camera]\nfps = -1\n'
                 '[model]\nthreshold = 2\nmemory_budget_mb = -5\n[releases]\nurl = "mqtt://a/+/b"\n')
    with pytest.raises(config.ConfigError) as e:
        config.load(p)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{p}: ")
    for part in ("device.id: must be 1-64 characters", "mqtt.port: Input should be less than or equal to 65535",
                 "mqtt.protocl: unknown key", "camera.source: required key missing",
                 "camera.fps: Input should be greater than or equal to 0",
                 "model.threshold: Input should be less than or equal to 1",
                 "model.memory_budget_mb: Input should be greater than or equal to 0",
                 "releases.url: mqtt:// must name the console's MQTT prefix"):
        assert part in msg, msg
    p.write_text('[device]\nid = "u1"\n[camera]\nsource = "0"\n[releases]\nurl = "mqtt://plant/defect-console/"\n')
    assert config.load(p, check_files=False).releases.url == "mqtt://plant/defect-console"


def test_missing_files_and_bad_toml(tmp_path: Path) -> None:
    p = tmp_path / "edge.toml"
    p.write_text(f'[device]\nid = "u"\n[camera]\nsource = "0"\n[model]\nmodels_dir = "{tmp_path}/none"\n'
                 f'[mqtt.tls]\nca_file = "{tmp_path}/ca.crt"\ncert_file = "{tmp_path}/c.crt"\n')
    with pytest.raises(config.ConfigError) as e:
        config.load(p)
    assert "mqtt.tls.ca_file: " in str(e.value) and "cert_file and key_file go together" in str(e.value)
    assert "model.models_dir: " in str(e.value)
    p.write_text("[device\n")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(p)
    with pytest.raises(config.ConfigError, match="configuration file not found"):
        config.load(tmp_path / "x.toml")


def test_password_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"device": {"id": "u"}, "camera": {"source": "0"}}
    monkeypatch.delenv(config.PASSWORD_ENV, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert config.parse({**base, "mqtt": {"password": "inline"}}, check_files=False).mqtt_password() == "inline"
    (tmp_path / "mqtt_password").write_text("")  # as `make install` leaves it
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert config.parse({**base, "mqtt": {"password": "inline"}}, check_files=False).mqtt_password() == "inline"
    (tmp_path / "mqtt_password").write_text("from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert config.parse(base, check_files=False).mqtt_password() == "from-credential"
    monkeypatch.setenv(config.PASSWORD_ENV, "from-env")
    assert config.parse(base, check_files=False).mqtt_password() == "from-env"
    f = tmp_path / "pw"
    f.write_text("from-file\n")
    cfg = config.parse({**base, "mqtt": {"password_file": str(f)}}, check_files=False)
    assert cfg.mqtt_password() == "from-file"


def test_state_dir_defaults_to_systemds_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each defect-edge@ instance gets its own StateDirectory=, the only place it may write."""
    base = {"device": {"id": "u"}, "camera": {"source": "0"}}
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert config.parse(base, check_files=False).state.dir == Path("/var/lib/defect-edge")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/defect-edge/station2:/var/lib/other")
    assert config.parse(base, check_files=False).state.dir == Path("/var/lib/defect-edge/station2")
    assert config.parse({**base, "state": {"dir": "/srv/x"}}, check_files=False).state.dir == Path("/srv/x")


def test_check_config_reads_and_classifies_one_frame(models_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """What a plant engineer runs before starting the unit: config, model, and one real frame through both."""
    import cv2

    from converter import synth
    from edge.cli import main

    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "part.png"), synth.render(3, 0, size=200, defect="crack").image[:, :, ::-1])
    cfg = tmp_path / "edge.toml"

    def write(source: str, roi: str = "") -> None:
        cfg.write_text(f'[device]\nid = "u"\n[camera]\nsource = "{source}"\nstall_timeout_s = 2\n{roi}'
                       f'[model]\nname = "tiny"\nmodels_dir = "{models_dir}"\n')

    write(str(frames))
    assert main(["check-config", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"{cfg}: OK: device u" in out and "model tiny (int8)" in out
    assert re.search(r"a 200x200 frame in \d+\.\d s, called (good|defective) \(p_defect 0\.\d{3}\)", out), out

    write("/dev/video99")  # no such camera: the configuration is fine, the camera is not
    assert main(["check-config", "--config", str(cfg)]) == 1
    assert "cannot open" in capsys.readouterr().err
    assert main(["check-config", "--config", str(cfg), "--no-camera"]) == 0

    write(str(frames), "[camera.roi]\nx = 100\ny = 100\nwidth = 150\nheight = 150\n")
    assert main(["check-config", "--config", str(cfg)]) == 1
    assert "does not fit a 200x200 frame" in capsys.readouterr().err


def test_console_example_is_valid_and_documents_every_key() -> None:
    from console import config as console_config

    example = REPO / "examples" / "console.toml"
    assert console_config.load(example, check_files=False).web.port == 8080
    assert not undocumented(console_config.ConsoleConfig, example)


def test_settings_that_will_hurt_at_the_line_are_warned() -> None:
    data = {"device": {"id": "u1"}, "camera": {"source": "0", "fps": 12}, "inference": {"mode": "on_demand"},
            "parts": {"max_frame_delay_ms": 100}}
    warned = config.parse(data, check_files=False).warnings()
    assert len(warned) == 1 and "under 1.5 frame periods" in warned[0] and "125 ms" in warned[0]
    data["parts"] = {"max_frame_delay_ms": 130}
    assert config.parse(data, check_files=False).warnings() == []
