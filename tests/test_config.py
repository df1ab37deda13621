"""The training config: YAML + base: includes + overrides, validated with errors that name the key."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from orderdp_dali.config import Config, ConfigError, load_config, parse_override

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# bench_*.yaml are the benchmark harness's own format (orderdp-dali bench), not train configs.
TRAIN_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("bench_"))


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path, ["data.root=/datasets/x"])
    assert cfg.data.root == "/datasets/x"
    json.dumps(cfg.to_dict())  # plain data


def test_recipes_follow_the_reference():
    r50 = load_config(CONFIGS / "imagenet_r50_orderdp.yaml", ["data.root=/d"])
    assert (r50.model.name, r50.optim.name, r50.optim.lr, r50.optim.weight_decay) == ("resnet50", "lars", 6.4, 1e-5)
    assert (r50.train.batch_size, r50.train.epochs, r50.train.label_smoothing) == (128, 90, 0.1)
    assert r50.schedule.name == "onecycle"
    assert r50.policy.params == {"random_len_ratio": 0.75, "top_q_ratio": 0.8}
    r18 = load_config(CONFIGS / "imagenet_r18_orderdp.yaml", ["data.root=/d"])
    assert (r18.model.name, r18.optim.lr, r18.train.batch_size) == ("resnet18", 1.98, 64)
    assert r18.policy.params == {"random_len_ratio": 0.8, "top_q_ratio": 0.9}
    ib = load_config(CONFIGS / "imagenet_r50_infobatch.yaml", ["data.root=/d"])
    assert ib.policy.params == {"prune_ratio": 0.5, "anneal_delta": 0.875}
    c100 = load_config(CONFIGS / "cifar100_r50_orderdp.yaml", ["data.root=/d"])
    c100_recipe = (c100.data.dataset, c100.model.name, c100.optim.name, c100.optim.lr)
    assert c100_recipe == ("cifar100", "cifar_resnet50", "sgd", 0.03)
    assert (c100.train.batch_size, c100.train.epochs, c100.train.label_smoothing) == (128, 200, 0.1)
    assert c100.policy.params == {"random_len_ratio": 0.8, "top_q_ratio": 0.375}
    c10 = load_config(CONFIGS / "cifar10_r50_full.yaml", ["data.root=/d"])
    assert (c10.data.dataset, c10.train.label_smoothing) == ("cifar10", 0.1)


def test_base_chain_and_overrides(tmp_path):
    write(tmp_path / "a.yaml", "train: {epochs: 7, seed: 3}\noptim: {lr: 0.2}\ndata: {root: /r}\n")
    write(
        tmp_path / "b.yaml",
        "base: a.yaml\ntrain: {epochs: 9}\npolicy: {name: orderdp, params: {top_q_ratio: 0.5}}\n",
    )
    cfg = load_config(tmp_path / "b.yaml", ["optim.weight_decay=1e-5", "policy.params.random_len_ratio=0.9"])
    assert (cfg.train.epochs, cfg.train.seed, cfg.optim.lr) == (9, 3, 0.2)
    assert cfg.optim.weight_decay == 1e-5  # "1e-5" is a string to YAML 1.1; floats accept it
    assert cfg.policy.params == {"top_q_ratio": 0.5, "random_len_ratio": 0.9}


def test_round_trip_frozen_and_override():
    cfg = load_config(None, ["data.root=/r", "schedule.milestones=[10, 20]"])
    again = Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.schedule.milestones == (10.0, 20.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 3
    other = cfg.override("train.epochs=3")
    assert other.train.epochs == 3 and cfg.train.epochs == 90


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=5", "train.epoch: unknown key; did you mean train.epochs?"),
        ("trian.epochs=5", "trian: unknown key"),
        ("train.epochs=0", "train.epochs: 0 out of range"),
        ("train.epochs=2.5", "train.epochs: expected an integer"),
        ("train.epochs=true", "train.epochs: expected an integer"),
        ("optim.lr=fast", "optim.lr: expected a finite number"),
        ("optim.lr=0", "optim.lr: 0.0 out of range"),
        ("optim.momentum=1", "optim.momentum: 1.0 out of range"),
        ("optim.name=adam", "optim.name: invalid value 'adam'"),
        ("train.amp=fp8", "train.amp: invalid value"),
        ("data.augment=maybe", "data.augment: expected true or false"),
        ("model.name=resnet5O", "model.name: unknown model 'resnet5O'"),
        ("policy.name=topk", "policy.name: unknown policy 'topk'"),
        ("policy.params.top_q=0.5", "policy.params.top_q: unknown parameter of policy 'full'"),
        ("policy.params.seed=3", "policy.params.seed: set by train.seed"),
        ("schedule.milestones=[60,30]", "schedule.milestones: need non-negative epochs in increasing order"),
        ("data.val_resize=100", "data.val_resize: 100 is smaller than data.crop=224"),
        ("data.root=", "data.root: required"),
        ("optim.nesterov=true optim.name=lars", "optim.nesterov: needs optim.name=sgd"),
        ("policy.name=orderdp policy.params.random_len_ratio=true",
         "policy.params.random_len_ratio: expected a number, got true"),
        ("policy.name=infobatch policy.params.prune_ratio=false", "policy.params.prune_ratio: expected a number"),
        ("policy.name=orderdp policy.params.initial_score=true", "policy.params.initial_score: expected a number"),
        ("train.seed=4294967296", "train.seed: 4294967296 out of range (need <= 4294967295)"),
        ("train.seed=-1", "train.seed: -1 out of range"),
    ],
)
def test_bad_values_name_the_key(override, message):
    items = ["data.root=/r", *override.split()]
    with pytest.raises(ConfigError) as err:
        load_config(None, items)
    assert message in str(err.value)


def test_policy_values_are_checked_by_the_policy():
    with pytest.raises(ConfigError, match=r"^policy\.params\.top_q_ratio: 1\.5 \(need a number in \(0, 1\]\)$"):
        load_config(None, ["data.root=/r", "policy.name=orderdp", "policy.params.top_q_ratio=1.5"])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write(tmp_path / "bad.yaml", "train: {epochs: [\n"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    write(tmp_path / "x.yaml", "base: y.yaml\n")
    write(tmp_path / "y.yaml", "base: x.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "x.yaml")


def test_parse_override():
    assert parse_override("a.b=1") == ("a.b", 1)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a.b=x=y") == ("a.b", "x=y")
    for bad in ("novalue", "=3", "a..b=1"):
        with pytest.raises(ConfigError, match="Invalid override"):
            parse_override(bad)
    with pytest.raises(ConfigError, match="train: is a value"):
        load_config(None, ["data.root=/r", "train=1", "train.epochs=2"])


@pytest.mark.parametrize("key, replaced_by", [
    ("data.py_workers=2", "DALI's own threads"),
    ("data.reseed_every_epoch=true", "resumed exactly from the checkpoint's pipeline state"),
])
def test_removed_keys_say_what_replaced_them(key, replaced_by):
    with pytest.raises(ConfigError, match=rf"^{key.split('=')[0]}: no longer a setting: .*{re.escape(replaced_by)}"):
        load_config(None, [key])


def test_a_seed_of_32_bits_is_the_largest_and_seeds_every_rank():
    """2**32 - 1 passes validation and seeds numpy's global RNG on every rank (seed + rank wraps)."""
    import random

    import numpy as np
    import torch

    from orderdp_dali.config import MAX_SEED
    from orderdp_dali.train import seed_everything

    assert load_config(None, ["data.root=/r", f"train.seed={MAX_SEED}"]).train.seed == MAX_SEED == 2**32 - 1
    states = np.random.get_state(), random.getstate(), torch.random.get_rng_state()
    try:
        seed_everything(MAX_SEED, rank=3, deterministic=False)  # np.random.seed(2**32 + 2) would raise
        first = np.random.random()
        seed_everything(2, rank=0, deterministic=False)
        assert np.random.random() == first
    finally:
        np.random.set_state(states[0])
        random.setstate(states[1])
        torch.random.set_rng_state(states[2])


@pytest.mark.parametrize("text, key, lines", [
    ("data: {root: /r}\ntrain:\n  epochs: 1\n  batch_size: 4\n  epochs: 3\n", "train.epochs", (5, 3)),
    ("data: {root: /r}\noptim: {lr: 0.1}\ntrain: {epochs: 2}\noptim:\n  lr: 0.2\n", "optim", (4, 2)),
    ("data: {root: /r}\npolicy:\n  name: orderdp\n  params: {top_q_ratio: 0.5, top_q_ratio: 0.9}\n",
     "policy.params.top_q_ratio", (4, 4)),
])
def test_a_key_or_section_given_twice_is_refused_with_both_lines(tmp_path, text, key, lines):
    path = write(tmp_path / "twice.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    second, first = lines
    assert str(err.value).startswith(f"invalid YAML in {path} at line {second}, column ")
    assert f"duplicate key '{key}' (first at line {first})" in str(err.value)


def test_a_key_given_twice_in_a_base_file_names_that_file(tmp_path):
    base = write(tmp_path / "base.yaml", "train:\n  epochs: 1\n  epochs: 3\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\ndata: {root: /r}\n")
    with pytest.raises(ConfigError, match=rf"invalid YAML in {re.escape(str(base))} at line 3.*'train.epochs'"):
        load_config(child)


def test_merge_keys_and_overrides_still_replace_values(tmp_path):
    """Strictness is about a key written twice in one mapping: a ``<<`` merge may be overridden,
    and so may a base file's key by the file that includes it, or a file's key by an override."""
    path = write(tmp_path / "m.yaml", "defaults: &d {lr: 0.1, momentum: 0.8}\ndata: {root: /r}\n"
                                       "optim:\n  <<: *d\n  lr: 0.2\n")
    from orderdp_dali.config import read_yaml_file

    assert read_yaml_file(path)["optim"] == {"lr": 0.2, "momentum": 0.8}
    write(tmp_path / "a.yaml", "train: {epochs: 7}\ndata: {root: /r}\n")
    b = write(tmp_path / "b.yaml", "base: a.yaml\ntrain: {epochs: 9}\n")
    assert load_config(b, ["train.epochs=11"]).train.epochs == 11
    with pytest.raises(ConfigError, match=r"^policy.params: cannot parse value .*duplicate key 'a'"):
        parse_override("policy.params={a: 1, a: 2}")


def test_a_config_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("data: {root: /r}\n# caf\u00e9\ntrain: {epochs: 2}\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"config file {path} is not UTF-8 text: byte 0xe9 at line 2; save the file as UTF-8"


@pytest.mark.parametrize("params, message", [
    ("{random_len_ratio: 1.5}", r"^policy\.params\.random_len_ratio: 1\.5 \(need a number in \(0, 1\]\)$"),
    ("{score_lag: -1}", r"^policy\.params\.score_lag: -1 \(need an int >= 0"),
    ("{initial_score: .nan}", r"^policy\.params\.initial_score: nan \(need a finite number\)$"),
])
def test_a_bad_policy_value_names_its_full_key(params, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["data.root=x", "policy.name=orderdp", f"policy.params={params}"])
