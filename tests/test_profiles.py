"""Device profiles (every shipped YAML loads; bad ones fail with a useful message) and latency measurement."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgekd.errors import ProfileError
from edgekd.devices.feeds import image_feeds, model_input_names, text_feeds
from edgekd.devices import latency
from edgekd.devices.latency import combine_rounds, measure_latency
from edgekd.devices.profile_folders import shipped_dir, user_dir
from edgekd.devices.profiles import DeviceProfile, detect_host, list_profiles, load_profile

SHIPPED = sorted(Path(str(shipped_dir())).glob("*.yaml"))

VALID = {
    "name": "toy",
    "description": "a test device",
    "measured": True,
    "threads": [1],
    "seq_lens": [16],
    "quantization": {"activation_dtype": "uint8"},
    "peak_int8_gops": None,
    "peak_fp32_gflops": None,
    "memory_bandwidth_gbs": None,
    "memory_budget_mb": None,
}


def write_profile(directory: Path, stem: str, data) -> Path:
    path = directory / f"{stem}.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def pdir(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_PROFILES_DIR", str(tmp_path))
    return tmp_path


def test_host_cpu_is_shipped():
    assert "host-cpu" in [p.stem for p in SHIPPED]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_profile_loads_and_round_trips(path):
    profile = load_profile(str(path))
    assert profile == load_profile(path.stem)
    assert DeviceProfile.model_validate(profile.model_dump()) == profile
    assert DeviceProfile.model_validate(yaml.safe_load(yaml.safe_dump(profile.model_dump()))) == profile


def test_host_cpu_scheme():
    p = load_profile("host-cpu")
    assert p.measured and p.threads == [1, 2] and p.seq_lens == [128]
    assert (p.quantization.activation_dtype, p.quantization.weight_granularity, p.quantization.scope) == (
        "uint8", "per-channel", "linear")
    assert "uint8" in p.quantization.reason


def test_list_profiles_sorted(pdir):
    write_profile(pdir, "zeta", {**VALID, "name": "zeta"})
    write_profile(pdir, "alpha", {**VALID, "name": "alpha"})
    names = [p.name for p in list_profiles()]
    assert names == sorted(["alpha", "zeta", *(p.stem for p in SHIPPED)])  # the user's next to the shipped ones
    assert user_dir() == pdir


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"treads": [1]}, ["treads", "unknown key"]),
        ({"quantization": {"activation_dtype": "fp8"}}, ["quantization.activation_dtype", "'fp8'"]),
        ({"threads": [1, 0]}, ["threads[1]", "0"]),
        ({"measured": "sometimes"}, ["measured", "'sometimes'"]),
        # strict: no "yes" for true, no booleans or quoted numbers for numbers
        ({"measured": "yes"}, ["measured", "valid boolean", "true or false", "'yes'"]),
        ({"static_shapes": 1}, ["static_shapes", "valid boolean", "(got 1)"]),
        ({"threads": [True]}, ["threads[0]", "valid integer", "(got True)"]),
        ({"seq_lens": ["128"]}, ["seq_lens[0]", "unquoted", "(got '128')"]),
        ({"memory_budget_mb": True}, ["memory_budget_mb", "valid number", "(got True)"]),
        ({"peak_int8_gops": "1000"}, ["peak_int8_gops", "valid number", "(got '1000')"]),
        ({"measured": False}, ["peak_int8_gops"]),
    ],
)
def test_bad_field_named(pdir, change, expected):
    path = write_profile(pdir, "toy", {**VALID, **change})
    with pytest.raises(ProfileError) as err:
        load_profile("toy")
    message = str(err.value)
    assert str(path) in message
    for part in expected:
        assert part in message


def test_missing_field_named(pdir):
    data = {k: v for k, v in VALID.items() if k != "seq_lens"}
    write_profile(pdir, "toy", data)
    with pytest.raises(ProfileError, match=r"toy\.yaml.*seq_lens: Field required"):
        load_profile("toy")


def test_name_must_match_file(pdir):
    write_profile(pdir, "toy", {**VALID, "name": "other"})
    with pytest.raises(ProfileError, match=r"toy\.yaml.*'other'.*'toy'"):
        load_profile("toy")


def test_unknown_name_lists_available(pdir):
    write_profile(pdir, "toy", VALID)
    with pytest.raises(ProfileError, match=r"Unknown device profile 'nope'.*Available profiles: .*\btoy\b"):
        load_profile("nope")


@pytest.mark.parametrize("text", ["name: [unclosed", "- just\n- a list\n", ""])
def test_bad_yaml(pdir, text):
    write_profile(pdir, "toy", text)
    with pytest.raises(ProfileError, match="toy.yaml"):
        load_profile("toy")


def test_not_utf8(pdir):
    (pdir / "toy.yaml").write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ProfileError, match="not UTF-8"):
        load_profile("toy")


# ------------------------------------------------------------------ user folders next to the shipped profiles
def test_user_profile_overrides_shipped_via_env(pdir):
    shipped = load_profile("host-cpu")
    write_profile(pdir, "host-cpu", {**shipped.model_dump(mode="json"), "threads": [3]})
    write_profile(pdir, "toy", VALID)
    assert load_profile("host-cpu").threads == [3]  # the user's file wins
    assert load_profile("toy").name == "toy" and load_profile("hexagon-npu").name == "hexagon-npu"
    assert [p.threads for p in list_profiles() if p.name == "host-cpu"] == [[3]]


def test_env_folder_that_is_missing_fails_loudly(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_PROFILES_DIR", str(tmp_path / "nope"))
    with pytest.raises(ProfileError, match=r"EDGEKD_PROFILES_DIR=.*nope.*is not a folder"):
        load_profile("host-cpu")


def _cli(args, env=None):
    from typer.testing import CliRunner

    from edgekd.cli import app

    return CliRunner().invoke(app, args, env={"COLUMNS": "40", **(env or {})})


def test_cli_profiles_dir_option_overrides_shipped(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEKD_PROFILES_DIR", raising=False)  # restored after: the option sets it
    shipped = load_profile("host-cpu")
    write_profile(tmp_path, "host-cpu", {**shipped.model_dump(mode="json"), "threads": [3]})
    write_profile(tmp_path, "toy", VALID)
    shown = _cli(["profiles", "show", "host-cpu", "--profiles-dir", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert yaml.safe_load(shown.output.split("# detected host:")[0])["threads"] == [3]
    listed = _cli(["profiles", "--profiles-dir", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    rows = {line.split("\t")[0]: line.split("\t") for line in listed.output.splitlines()}
    assert rows["host-cpu"][3] == "3" and rows["host-cpu"][-1] == f"{tmp_path.resolve()} (overrides shipped)"
    assert rows["toy"][-1] == str(tmp_path.resolve()) and rows["hexagon-npu"][-1] == "shipped"


@pytest.mark.parametrize("command", [["run"], ["export"], ["profile"], ["report"], ["profiles"], ["profiles", "show"]])
def test_every_command_reading_profiles_takes_profiles_dir(command):
    result = _cli([*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--profiles-dir" in result.output


def test_cli_profiles_piped_keeps_every_cell_whole(monkeypatch):
    """Not a terminal and 40 columns: rich used to cut names to `phone-big-…`."""
    monkeypatch.delenv("EDGEKD_PROFILES_DIR", raising=False)
    result = _cli(["profiles"])
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    lines = result.output.splitlines()
    assert lines[0].split("\t")[0] == "name"
    for p in list_profiles():
        row = f"{p.name}\t{'measured' if p.measured else 'estimated'}\t{p.execution_provider}\t"
        assert any(line.startswith(row) for line in lines), (row, result.output)


def test_detect_host():
    host = detect_host()
    assert set(host) == {"cpu", "cores", "physical_cores", "isa", "arch", "memory_gb"}
    assert set(host["isa"]) == {"avx2", "avx512", "vnni", "amx", "neon"}
    assert host["memory_gb"] > 0


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = 64
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def test_measure_latency(tiny_onnx):
    assert model_input_names(tiny_onnx) == ["x"]
    feeds = image_feeds(np.ones((3, 64), dtype=np.float64), input_name="x")
    stats = measure_latency(tiny_onnx, feeds, threads=1, warmup=2, runs=20)
    assert 0 < stats["p50"] <= stats["p90"] <= stats["p99"]
    assert stats["mean"] > 0 and stats["session_create_ms"] > 0
    assert isinstance(stats["peak_memory_mb"], float) and stats["peak_memory_mb"] >= 0
    assert stats["runs"] == 20 and stats["threads"] == 1 and stats["spread"] >= 0


def test_combine_rounds_takes_the_quiet_round_and_pools_the_tail():
    quiet = {"p50": 5.0, "times_ms": [4.9, 5.0, 5.1, 5.0], "threads": 1, "session_create_ms": 10.0, "peak_memory_mb": 3.0}
    busy = {"p50": 8.0, "times_ms": [7.0, 8.0, 9.0, 8.0], "threads": 1, "session_create_ms": 30.0, "peak_memory_mb": 4.0}
    noisy = {"p50": 6.0, "times_ms": [6.0, 6.0, 6.0, 6.0], "threads": 1, "session_create_ms": 20.0, "peak_memory_mb": 2.0}
    c = combine_rounds([busy, quiet, noisy])
    assert c["p50"] == 5.0 and c["round_p50s"] == [8.0, 5.0, 6.0] and c["rounds"] == 3 and c["runs"] == 12
    assert c["round_spread"] == pytest.approx(6.0 / 5.0 - 1)  # median round over the quietest
    pooled = np.array(quiet["times_ms"] + busy["times_ms"] + noisy["times_ms"])
    assert c["p90"] == pytest.approx(np.percentile(pooled, 90)) and c["p99"] == pytest.approx(np.percentile(pooled, 99))
    assert c["session_create_ms"] == 20.0 and c["peak_memory_mb"] == 4.0  # median cold start, worst memory


def test_measure_models_rounds_and_throughput(tiny_onnx, monkeypatch):
    """Rounds alternate their order over models and cases; batch sizes > 1 give items per second."""
    from edgekd.data.batching import Encoded
    from edgekd.profile import measure

    calls = []
    real = measure.measure_latency

    def spy(path, feeds, threads, warmup, runs):
        calls.append((str(path), threads, feeds[0]["x"].shape[0]))
        return real(path, feeds, threads, warmup, runs)

    monkeypatch.setattr(measure, "measure_latency", spy)
    profile = load_profile("host-cpu").model_copy(update={"threads": [1], "batch_sizes": [1, 4]})
    data = Encoded(np.zeros(5, dtype=np.int64), images=np.ones((5, 64), dtype=np.float32))
    latency, throughput = measure.measure_models({"a": tiny_onnx}, data, profile, warmup=1, runs=8, rounds=2,
                                                 natural=False, natural_max=5)
    assert [c[2] for c in calls] == [1, 4, 4, 1]  # round 2 runs the cases in reverse order
    assert latency["a"]["t1"]["rounds"] == 2
    b = throughput["a"]["b4_t1"]
    assert b["batch_size"] == 4 and b["items_per_s"] == pytest.approx(4000 / b["p50"]) and b["runs"] == 2 * 5


@pytest.mark.parametrize("fork", ["1", "0"], ids=["forked", "new-interpreter"])
def test_measure_latency_child_error_is_raised(tiny_onnx, fork, monkeypatch):
    monkeypatch.setenv("EDGEKD_LATENCY_FORK", fork)
    with pytest.raises(RuntimeError, match=r"child process \(exit 1\):\n(.|\n)*wrong_name"):
        measure_latency(tiny_onnx, [{"wrong_name": np.ones((1, 64), np.float32)}], threads=1, warmup=0, runs=1)
    assert measure_latency(tiny_onnx, [{"x": np.ones((1, 64), np.float32)}], threads=1, warmup=0, runs=2)["runs"] == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="measurements are forked from a parent on Linux only")
def test_measurements_fork_from_one_parent_without_onnxruntime_that_is_replaced_when_it_dies(tiny_onnx):
    feeds = [{"x": np.ones((1, 64), np.float32)}]
    measure_latency(tiny_onnx, feeds, threads=1, warmup=0, runs=1)
    parent = latency._MeasuringParent._current
    measure_latency(tiny_onnx, feeds, threads=1, warmup=0, runs=1)
    assert latency._MeasuringParent._current is parent and parent.proc.poll() is None  # started once, reused
    # the runtime (and the thread it starts at import) is loaded in each child, never in the parent that forks them
    assert "onnxruntime" not in Path(f"/proc/{parent.proc.pid}/maps").read_text()
    parent.proc.kill()
    parent.proc.wait()
    assert measure_latency(tiny_onnx, feeds, threads=1, warmup=0, runs=3)["runs"] == 3
    assert latency._MeasuringParent._current is not parent


def test_a_relative_model_path_reads_from_the_callers_folder_of_the_moment(tiny_onnx, tmp_path, monkeypatch):
    feeds = [{"x": np.ones((1, 64), np.float32)}]
    monkeypatch.chdir(tmp_path)
    measure_latency(tiny_onnx, feeds, threads=1, warmup=0, runs=1)  # the measuring parent starts here
    monkeypatch.chdir(tiny_onnx.parent)
    assert measure_latency(Path(tiny_onnx.name), feeds, threads=1, warmup=0, runs=1)["runs"] == 1


def test_text_feeds():
    ids = [[101, 7, 8, 102], [101, 102]]
    padded = text_feeds(ids, ["input_ids", "attention_mask"], seq_len=3, pad_id=0)
    assert padded[0]["input_ids"].tolist() == [[101, 7, 8]] and padded[0]["attention_mask"].tolist() == [[1, 1, 1]]
    assert padded[1]["input_ids"].tolist() == [[101, 102, 0]] and padded[1]["attention_mask"].tolist() == [[1, 1, 0]]
    assert padded[0]["input_ids"].dtype == np.int64
    natural = text_feeds(ids, ["input_ids"], seq_len=None)
    assert [f["input_ids"].shape for f in natural] == [(1, 4), (1, 2)]
    assert set(natural[0]) == {"input_ids"}
