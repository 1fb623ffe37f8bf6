"""Weights registry/resolver, safe state-dict loading, pretrained backbones, atomic result records."""

import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import save_file

from transfer.models.backbones import create_classifier
from transfer.records import append_jsonl, git_commit, read_jsonl
from transfer.weights import WeightsEntry, WeightsError, load_registry, resolve, sha256sum
from transfer.safeload import load_state_dict
from transfer.statedict import StateDictMismatchError


def test_missing_weights_name_the_file_to_place_and_checksum(tmp_path):
    reg = {"net": WeightsEntry("net", "timm/net.safetensors", sha256="ab" * 32, hub="timm/net")}
    with pytest.raises(WeightsError, match=r"place the file at .*timm/net\.safetensors \(sha256 abab.*timm/net"):
        resolve("net", reg, root=tmp_path)


def test_unknown_name_suggests_close_ones(tmp_path):
    reg = {"resnet50.tv_in1k": WeightsEntry("resnet50.tv_in1k", "r50.safetensors")}
    with pytest.raises(WeightsError, match="Close names: resnet50.tv_in1k"):
        resolve("resnet50.tv_in1", reg, root=tmp_path)


def test_checksum_is_verified(tmp_path):
    f = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(2)}, str(f))
    good = {"w": WeightsEntry("w", "w.safetensors", sha256=sha256sum(f))}
    assert resolve("w", good, root=tmp_path) == f
    bad = {"w": WeightsEntry("w", "w.safetensors", sha256="0" * 64)}
    with pytest.raises(WeightsError, match="does not match the registered"):
        resolve("w", bad, root=tmp_path)


def test_shipped_registry_parses():
    reg = load_registry()
    assert "resnet50.tv_in1k" in reg and reg["resnet50.tv_in1k"].hub


def test_torch_files_load_with_weights_only(tmp_path, capfd):
    f = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {"a": torch.zeros(3)}}, f)
    assert list(load_state_dict(f)) == ["a"]

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"a": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match=r"evil.pt: 1 entries of its state dict are not tensors \(e.g. 'a': a pickled "
                                        r"builtins.print, not loaded\)") as err:
        load_state_dict(tmp_path / "evil.pt")  # an inert stand-in, never called: nothing printed "pwned"
    assert "weights_only=False" not in str(err.value) and "pwned" not in capfd.readouterr().out


def test_pretrained_backbone_from_file_skips_a_head_of_other_size(tmp_path):
    src = create_classifier("test_resnet", num_classes=10)
    f = tmp_path / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(f))
    model = create_classifier("test_resnet", num_classes=5, pretrained=str(f))
    stem = next(k for k in model.state_dict() if k.endswith("weight"))
    assert torch.equal(model.state_dict()[stem], src.state_dict()[stem])
    assert model.get_classifier().out_features == 5
    with pytest.raises(StateDictMismatchError, match="does not fit"):
        create_classifier("test_efficientnet", num_classes=5, pretrained=str(f))


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone 'resnet_typo'"):
        create_classifier("resnet_typo", 3)


def test_jsonl_append_is_atomic(tmp_path):
    f = tmp_path / "results.jsonl"
    append_jsonl(f, [{"a": 1}])
    append_jsonl(f, [{"a": torch.tensor(2.0)}])
    assert read_jsonl(f) == [{"a": 1}, {"a": 2.0}]
    before = f.read_bytes()
    with pytest.raises(TypeError):
        append_jsonl(f, [{"a": 3}, {"b": object()}])  # fails half-way through the rows
    assert f.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".results.jsonl.lock", "results.jsonl"]  # no temp file
    assert json.loads(before.splitlines()[0]) == {"a": 1}


def _git(*args, cwd):
    identity = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, **identity, "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1"})


def test_git_commit_is_the_checkouts_not_an_enclosing_repositorys(tmp_path):
    # a source checkout: <repo>/transfer is the package, <repo> the git top level
    checkout = tmp_path / "checkout"
    (checkout / "transfer").mkdir(parents=True)
    (checkout / "setup.cfg").write_text("[metadata]\n")
    _git("init", "-q", cwd=checkout)
    _git("add", "setup.cfg", cwd=checkout)
    _git("commit", "-qm", "x", cwd=checkout)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True).stdout.strip()
    assert git_commit(checkout / "transfer") == head
    # an installed copy inside some other repository (site-packages of a pyenv clone) has no commit of ours
    installed = checkout / "versions" / "lib" / "site-packages" / "transfer"
    installed.mkdir(parents=True)
    assert git_commit(installed) is None
    assert git_commit(tmp_path / "elsewhere" / "transfer") is None
