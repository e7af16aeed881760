import pytest

from vlmoe.config import ConfigError, MoEConfig


def test_round_trip_and_overrides(tmp_path):
    cfg = MoEConfig(num_experts=8, top_k=2)
    path = tmp_path / "moe.yaml"
    cfg.to_yaml(path)
    assert MoEConfig.from_yaml(path) == cfg
    new = cfg.with_overrides(["top_k=1", "capacity_factor=1.25", "drop_policy=position"])
    assert (new.top_k, new.capacity_factor, new.drop_policy) == (1, 1.25, "position")
    assert cfg.with_overrides({"capacity_factor": None}).capacity_factor is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["top_k=9"], "top_k=9 must be <= moe.num_experts=8"),
        (["topk=2"], "unknown key 'topk'"),
        (["top_k=two"], "top_k: expected an integer, got 'two'"),
        (["router=dense"], "router: 'dense' is not one of"),
        (["capacity_factor=-1"], "capacity_factor must be > 0"),
        (["top_k"], "not of the form key=value"),
        (["expert_groups=modality", "num_experts=7"], "split evenly"),
    ],
)
def test_bad_values_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        MoEConfig(num_experts=8).with_overrides(overrides)


def test_unknown_yaml_key_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("num_experts: 4\nnum_expert: 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: .*unknown key\(s\) \['num_expert'\]"):
        MoEConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="not found"):
        MoEConfig.from_yaml(tmp_path / "missing.yaml")


def test_duplicate_yaml_key_names_the_key_and_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("num_experts: 4\ntop_k: 1\nnum_experts: 8\n")
    with pytest.raises(
        ConfigError, match=r"dup.yaml: duplicate key 'num_experts' at line 3 \(first at line 1\)"
    ):
        MoEConfig.from_yaml(path)
    nested = tmp_path / "nested.yaml"
    nested.write_text("a:\n  b: 1\n  c: 2\n  b: 3\n")
    with pytest.raises(ConfigError, match="duplicate key 'b' at line 4"):
        MoEConfig.from_yaml(nested)
    with pytest.raises(ConfigError, match="duplicate key 'x'"):
        MoEConfig().with_overrides(["num_experts={x: 1, x: 2}"])


def test_yaml_merge_keys_may_override(tmp_path):
    from vlmoe.config import load_yaml

    text = "base: &b {top_k: 1, dim: 8}\nmoe:\n  <<: *b\n  top_k: 2\n"
    assert load_yaml(text)["moe"] == {"top_k": 2, "dim": 8}


def test_nested_optional_errors_keep_their_detail():
    import dataclasses

    from vlmoe.config import Config

    @dataclasses.dataclass
    class Outer(Config):
        moe: MoEConfig | None = None

    with pytest.raises(ConfigError, match=r"moe.top_k: expected an integer, got 'x'"):
        Outer.from_dict({"moe": {"top_k": "x"}})
    assert Outer.from_dict({"moe": None}).moe is None


def test_fixed_tuples_and_exponent_floats():
    import dataclasses

    from vlmoe.config import Config

    @dataclasses.dataclass
    class Opt(Config):
        betas: tuple[float, float] = (0.9, 0.95)
        lr: float = 1e-3
        name: str = "adamw"

    opt = Opt().with_overrides(["betas=[0.8, 0.99]", "lr=3e-4", "name=sgd"])
    assert opt.betas == (0.8, 0.99) and opt.lr == 3e-4 and opt.name == "sgd"
    with pytest.raises(ConfigError, match="expected 2 items"):
        Opt.from_dict({"betas": [0.9]})


def test_to_yaml_writes_atomically_with_the_umask_mode(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        MoEConfig(num_experts=4).to_yaml(tmp_path / "c.yaml")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "c.yaml").stat().st_mode) == 0o644
    assert MoEConfig.from_yaml(tmp_path / "c.yaml").num_experts == 4
    assert [p.name for p in tmp_path.iterdir()] == ["c.yaml"]
