from __future__ import annotations

import dataclasses
import logging

import pytest

from talkmesh.common.config import ConfigError, ServerConfig, load_config
from talkmesh.common.registry import NAMES, spec


@dataclasses.dataclass(frozen=True)
class Inner:
    size: int = 4
    names: list[str] = dataclasses.field(default_factory=lambda: ["a"])


@dataclasses.dataclass(frozen=True)
class Outer:
    server: ServerConfig = dataclasses.field(default_factory=ServerConfig)
    inner: Inner = dataclasses.field(default_factory=Inner)
    ratio: float = 0.5
    enabled: bool = False


def test_yaml_then_env_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  port: 7000\ninner:\n  size: 8\nratio: 0.25\n")
    env = {"TM__INNER__SIZE": "16", "TM__ENABLED": "yes", "TM__INNER__NAMES": "x, y", "OTHER": "1"}
    cfg = load_config(Outer, path, env_prefix="TM", env=env, overrides={"ratio": 2})
    assert cfg.server.port == 7000
    assert cfg.inner.size == 16
    assert cfg.inner.names == ["x", "y"]
    assert cfg.enabled is True
    assert cfg.ratio == 2.0


@dataclasses.dataclass(frozen=True)
class Tones:
    pitch: dict[str, float] = dataclasses.field(default_factory=dict)


def test_a_mapping_keys_values_have_its_types_and_a_bad_one_names_its_key(tmp_path):
    """A `dict[str, float]` key took YAML's and the environment's strings as they were, and the
    service failed later with a raw TypeError (a contributor's first backend)."""
    path = tmp_path / "c.yaml"
    path.write_text('pitch:\n  low: "220"\n  mid: 330\n')
    cfg = load_config(Tones, path, env_prefix="TM", env={"TM__PITCH__HIGH": "440.5"})
    assert cfg.pitch == {"low": 220.0, "mid": 330.0, "high": 440.5}
    assert all(type(v) is float for v in cfg.pitch.values())
    path.write_text("pitch:\n  low: loud\n")
    with pytest.raises(ConfigError, match=r"pitch\.low: expected float, got 'loud'"):
        load_config(Tones, path, env_prefix="TM", env={})


def test_replace_validates_the_sections_it_is_given():
    """A section built in code was not validated by replace() (a contributor's first backend: a
    test config with a bad value in its new section passed)."""
    from talkmesh.common.config import replace

    @dataclasses.dataclass(frozen=True)
    class Checked:
        size: int = 4

        def validate(self) -> None:
            if self.size < 1:
                raise ConfigError.at("size", "must be at least 1")

    @dataclasses.dataclass(frozen=True)
    class Parent:
        child: Checked = dataclasses.field(default_factory=Checked)

    assert replace(Parent(), child=Checked(2)).child.size == 2
    with pytest.raises(ConfigError, match=r"^child\.size: must be at least 1$"):
        replace(Parent(), child=Checked(0))


def test_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  sise: 8\n")
    with pytest.raises(ConfigError, match=r"inner: unknown key\(s\) sise"):
        load_config(Outer, path)


def test_bad_type_names_the_key():
    with pytest.raises(ConfigError, match=r"server.port: expected int"):
        load_config(Outer, env_prefix="TM", env={"TM__SERVER__PORT": "eighty"})


def test_validate_runs_at_load():
    with pytest.raises(ConfigError, match=r"server.port: 70000 is not a TCP port"):
        load_config(Outer, env_prefix="TM", env={"TM__SERVER__PORT": "70000"})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, bad)


@pytest.mark.parametrize("service", NAMES)
def test_every_service_default_config_is_its_dataclass_with_the_registry_ports(service):
    """Loading with no file and no environment gives exactly the dataclass defaults: no other layer."""
    import importlib

    main = importlib.import_module(spec(service).main_module)
    cfg = main.load_config(None, env={})
    assert cfg == type(cfg)()
    assert (cfg.server.port, cfg.server.metrics_port) == spec(service).ports()
    assert cfg.server.host == "127.0.0.1"


@pytest.mark.parametrize("service", NAMES)
def test_talkmesh_config_yaml_loads_back_to_the_same_config(service, tmp_path):
    """What `talkmesh config <service>` prints is a config file that reproduces the config."""
    import importlib

    from talkmesh.common.config_yaml import config_to_yaml

    main = importlib.import_module(spec(service).main_module)
    env = {f"{spec(service).env_prefix}__SERVER__GRACE_SECONDS": "7.5"}
    config = main.load_config(None, env=env)
    text = config_to_yaml(config, header="test")
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main.load_config(path, env={}) == config
    assert "# " in text.split("\n", 1)[1]  # field comments from the source


@pytest.mark.parametrize(
    ("service", "variable", "hint"),
    [
        ("audio_features", "TALKMESH_AUDIO_FEATURES__VOICED_THRESHOLD_DBFS", "is now activity.min_voiced_dbfs"),
        ("renderer", "TALKMESH_RENDERER__AVATARS__MAX_VIDEO_SIDE", "max_video_side is now max_side"),
    ],
)
def test_a_key_of_an_earlier_release_says_where_it_went(service: str, variable: str, hint: str) -> None:
    import importlib

    from talkmesh.common.config import ConfigError
    from talkmesh.common.registry import spec

    main = importlib.import_module(spec(service).main_module)
    with pytest.raises(ConfigError, match=hint):
        main.load_config(None, env={variable: "1"})


@pytest.mark.parametrize("service", NAMES)
def test_a_section_given_in_part_keeps_the_services_own_defaults(service: str, tmp_path) -> None:
    """Setting one key of a section (in a file or the environment) changes that key only: the rest
    stays what the service's config makes it (``server`` is ``ServerConfig.for_service``: the
    service's port and stream limit, not ``ServerConfig``'s)."""
    import importlib

    import yaml

    main = importlib.import_module(spec(service).main_module)
    defaults = main.load_config(None, env={})
    sections = [f.name for f in dataclasses.fields(defaults) if dataclasses.is_dataclass(getattr(defaults, f.name))]
    assert "server" in sections
    # each section with its first key set to the value it already has
    data = {}
    for name in sections:
        section = getattr(defaults, name)
        first = dataclasses.fields(section)[0].name
        value = getattr(section, first)
        data[name] = {first: dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main.load_config(path, env={}) == defaults
    # one key from the environment
    env = {f"{spec(service).env_prefix}__SERVER__LOG_LEVEL": "DEBUG"}
    changed = main.load_config(None, env=env)
    assert changed.server == dataclasses.replace(defaults.server, log_level="DEBUG")
    assert changed.server.max_concurrent_streams == spec(service).max_streams
    for callee in spec(service).calls:  # an endpoint's timeout keeps its target
        env = {f"{spec(service).env_prefix}__{callee.upper()}__TIMEOUT_SECONDS": "5"}
        endpoint = getattr(main.load_config(None, env=env), callee)
        assert endpoint == dataclasses.replace(getattr(defaults, callee), timeout_seconds=5.0)


def test_an_unknown_key_from_the_environment_names_the_variable_and_the_key_meant() -> None:
    """`TALKMESH_RENDERER__BACKEND=...` (backends meant): the variable and a suggestion, no class name."""
    from services.renderer.main import load_config as load_renderer

    with pytest.raises(ConfigError) as err:
        load_renderer(None, env={"TALKMESH_RENDERER__BACKEND": "wav2lip"})
    assert str(err.value) == "unknown key(s) backend (set by TALKMESH_RENDERER__BACKEND; did you mean backends?)"
    with pytest.raises(ConfigError) as err:
        load_renderer(None, env={"TALKMESH_RENDERER__WAV2LIP__PAHT": "w.onnx"})
    assert str(err.value) == (
        "wav2lip: unknown key(s) paht (set by TALKMESH_RENDERER__WAV2LIP__PAHT; did you mean path?)"
    )


def test_an_unknown_key_in_a_file_names_the_file_and_gets_the_suggestion(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  sise: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    assert str(err.value) == f"inner: unknown key(s) sise (in {path}; did you mean size?)"


def test_a_bad_value_names_the_variable_or_the_file_that_set_it(tmp_path) -> None:
    """`TALKMESH_RENDERER__BATCH__MAX_SIZE=0` said `batch.max_size: must be at least 1`, naming
    neither the variable nor, for a file's value, the file (README, "Configuration": they do)."""
    from services.renderer.main import load_config as load_renderer

    def error(path=None, env=None, **overrides) -> str:
        with pytest.raises(ConfigError) as err:
            load_config(Outer, path, env_prefix="TM", env=env or {}, overrides=overrides or None)
        return str(err.value)

    # a value a validate() refuses, and one that is not of the key's type
    assert error(env={"TM__SERVER__PORT": "99999"}) == "server.port: 99999 is not a TCP port (set by TM__SERVER__PORT)"
    assert error(env={"TM__INNER__SIZE": "big"}) == "inner.size: expected int, got 'big' (set by TM__INNER__SIZE)"
    assert error(env={"TM__ENABLED": "maybe"}) == "enabled: expected a boolean, got 'maybe' (set by TM__ENABLED)"
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  port: 99999\n")
    assert error(path) == f"server.port: 99999 is not a TCP port (in {path})"
    path.write_text("inner:\n  size: [8]\n")
    assert error(path) == f"inner.size: expected int, got [8] (in {path})"
    path.write_text("inner: 8\n")
    assert error(path) == f"inner: expected a mapping, got int (in {path})"
    # the last layer that set the key is named: the environment over the file; code names none
    path.write_text("server:\n  port: 99999\n")
    assert error(path, env={"TM__SERVER__PORT": "70000"}).endswith("(set by TM__SERVER__PORT)")
    assert error(path, server={"port": 80000}) == "server.port: 80000 is not a TCP port"
    # a key left at its default names nothing (the file set another one)
    path.write_text("server:\n  tls:\n    cert_file: c.pem\n")
    assert error(path) == "server.tls.key_file: cert_file and key_file go together"
    # a service's own config, as `talkmesh serve` loads it
    with pytest.raises(ConfigError) as err:
        load_renderer(None, env={"TALKMESH_RENDERER__BATCH__MAX_SIZE": "0"})
    assert str(err.value) == "batch.max_size: must be at least 1 (set by TALKMESH_RENDERER__BATCH__MAX_SIZE)"
    path.write_text("batch:\n  max_size: 0\n")
    with pytest.raises(ConfigError) as err:
        load_renderer(path, env={})
    assert str(err.value) == f"batch.max_size: must be at least 1 (in {path})"


def test_a_misspelt_service_prefix_is_named_with_the_service_meant() -> None:
    from talkmesh.common.config import stray_overrides

    env = {
        "TALKMESH_RENDRER__BACKENDS": "wav2lip",  # misspelt: warned
        "TALKMESH_RENDERER__BACKENDS": "viseme",  # a service's: read by its config
        "TALKMESH_AUDIO_FEATURES__MUSETALK__VERSION": "1.0",
        "TALKMESH_PORT_BASE": "6000",  # not config overrides (single underscore)
        "TALKMESH_MALLOC_TUNING": "0",
        "TALKMESH_TLS_CA_FILE": "ca.pem",
        "OTHER__THING": "x",
    }
    assert stray_overrides(env) == [
        "TALKMESH_RENDRER__BACKENDS is ignored: RENDRER is not a service; did you mean TALKMESH_RENDERER__BACKENDS?"
    ]
    assert stray_overrides({"TALKMESH_AUDIOFEATURES__CACHE__MAX_BYTES": "0"}) == [
        "TALKMESH_AUDIOFEATURES__CACHE__MAX_BYTES is ignored: AUDIOFEATURES is not a service; "
        "did you mean TALKMESH_AUDIO_FEATURES__CACHE__MAX_BYTES?"
    ]


def test_serve_warns_of_a_misspelt_service_prefix_in_one_line(monkeypatch, capsys) -> None:
    """At start-up, before anything is served (the service itself is not started here)."""
    from talkmesh import cli

    monkeypatch.setenv("TALKMESH_RENDRER__BACKENDS", "wav2lip")
    monkeypatch.delenv("TALKMESH_SERVE_PARENT_PIPE", raising=False)
    monkeypatch.setattr(cli.asyncio, "run", lambda coro: coro.close())
    monkeypatch.setattr("talkmesh.launcher.stop_with_parent", lambda: None)
    monkeypatch.setattr("prometheus_client.disable_created_metrics", lambda: None)  # (process-wide)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # serve's logging set-up, undone after
    monkeypatch.setattr(root, "level", root.level)
    assert cli.main(["serve", "tts"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "TALKMESH_RENDRER" in line]
    assert len(err) == 1 and "WARNING tts" in err[0] and "did you mean TALKMESH_RENDERER__BACKENDS?" in err[0]


def test_config_warns_of_a_misspelt_service_prefix_as_serve_does(monkeypatch, capsys) -> None:
    """`talkmesh config renderer` printed the config without TALKMESH_RENDRER__BACKENDS' warning."""
    from talkmesh import cli

    monkeypatch.setenv("TALKMESH_RENDRER__BACKENDS", "wav2lip")
    assert cli.main(["config", "renderer"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        "warning: TALKMESH_RENDRER__BACKENDS is ignored: RENDRER is not a service; "
        "did you mean TALKMESH_RENDERER__BACKENDS?"
    ]
    assert out.startswith("# talkmesh renderer: effective configuration")
    assert cli.main(["config", "renderer", "--defaults"]) == 0  # (the environment is not read)
    assert capsys.readouterr().err == ""


def test_a_yaml_syntax_error_names_the_file(tmp_path) -> None:
    bad = tmp_path / "my-renderer.yaml"
    bad.write_text("server:\n  port: 1\n  host: [oops\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, bad)
    assert f'in "{bad}", line' in str(err.value) and "<unicode string>" not in str(err.value)


def test_the_client_refuses_a_certificate_without_its_key(monkeypatch) -> None:
    """It made a channel that failed only at the first call; ClientTLS.validate, which says why,
    needs the config module, which the client wheel does not ship."""
    from talkmesh.client import TalkmeshClient, default_tls
    from talkmesh.common.channel import ClientTLS

    monkeypatch.setenv("TALKMESH_TLS_CERT_FILE", "client.pem")
    with pytest.raises(ValueError, match=r"^TALKMESH_TLS_KEY_FILE: not set; TALKMESH_TLS_CERT_FILE and"):
        default_tls()
    with pytest.raises(ValueError, match=r"^tls\.cert_file: cert_file and key_file go together"):
        TalkmeshClient("127.0.0.1:1", tls=ClientTLS(key_file="client.key"))
