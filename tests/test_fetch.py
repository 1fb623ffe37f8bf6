"""``transfer.weights fetch`` against a loopback HTTP server (127.0.0.1 only, stops with the test): download,
resume after an interrupted transfer, checksum mismatch refused with nothing left behind, torchvision's hash
prefix, ``check``, the offline error, the Hugging Face path (a loopback hub stating each file's sha256), the lab's
lock file and fetch-on-first-use in a run."""

import hashlib
import os
import http.server
import threading

import pytest
import torch
import yaml

from transfer.weights import fetch as fetch_mod
from transfer.weights import WeightsError, load_registry, resolve

PAYLOAD = b"weights!" * 40000  # 320 kB


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    cut_after: dict[str, int] = {}  # path -> bytes sent before the connection drops (once)
    requests: list[tuple[str, str | None]] = []

    def do_GET(self):  # noqa: N802
        self.requests.append((self.path, self.headers.get("Range")))
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        cut = self.cut_after.pop(self.path, None)
        self.wfile.write(body[:cut] if cut is not None else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.files, _Handler.cut_after, _Handler.requests = {}, {}, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _registry(tmp_path, base, **fields):
    entry = {"file": "torchvision/tiny-" + hashlib.sha256(PAYLOAD).hexdigest()[:8] + ".pth",
             "url": f"{base}/models/tiny.pth", "source": "a loopback test server", **fields}
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"tiny": entry}))
    return load_registry(path)


def test_fetch_downloads_verifies_and_renames(tmp_path, server):
    base, handler = server
    handler.files["/models/tiny.pth"] = PAYLOAD
    reg = _registry(tmp_path, base, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    path = fetch_mod.fetch("tiny", reg, tmp_path / "w", progress=False)
    assert path.read_bytes() == PAYLOAD and path.parent.name == "torchvision"
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, f".{path.name}.lock",
                                                                     f".{path.name}.origin.json"])  # no .part
    assert fetch_mod.fetch("tiny", reg, tmp_path / "w", progress=False) == path  # present: nothing fetched again
    assert len(handler.requests) == 1


def test_interrupted_transfer_resumes_with_a_range_request(tmp_path, server):
    base, handler = server
    handler.files["/models/tiny.pth"] = PAYLOAD
    handler.cut_after["/models/tiny.pth"] = 100000
    reg = _registry(tmp_path, base, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    with pytest.raises(WeightsError, match="transfer ended at 100000 of 320000 bytes; run fetch again"):
        fetch_mod.fetch("tiny", reg, tmp_path / "w", progress=False)
    part = tmp_path / "w" / "torchvision" / f".{reg['tiny'].file.split('/')[1]}.part"
    assert part.stat().st_size == 100000
    path = fetch_mod.fetch("tiny", reg, tmp_path / "w", progress=False)
    assert path.read_bytes() == PAYLOAD and not part.exists()
    assert handler.requests[-1] == ("/models/tiny.pth", "bytes=100000-")


def test_checksum_mismatch_is_refused_and_nothing_is_left(tmp_path, server):
    base, handler = server
    handler.files["/models/tiny.pth"] = PAYLOAD[:-1] + b"?"
    reg = _registry(tmp_path, base, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    with pytest.raises(WeightsError, match=r"sha256 [0-9a-f]{64} does not match the registered "
                                           + hashlib.sha256(PAYLOAD).hexdigest()):
        fetch_mod.fetch("tiny", reg, tmp_path / "w", progress=False)
    assert [p.name for p in (tmp_path / "w" / "torchvision").iterdir() if not p.name.endswith(".lock")] == []


def test_torchvision_prefix_is_checked(tmp_path, server):
    base, handler = server
    handler.files["/models/tiny.pth"] = PAYLOAD
    good = _registry(tmp_path, base, sha256_prefix=hashlib.sha256(PAYLOAD).hexdigest()[:8])
    assert fetch_mod.fetch("tiny", good, tmp_path / "a", progress=False).exists()
    bad = _registry(tmp_path, base, sha256_prefix="00000000")
    with pytest.raises(WeightsError, match="does not start with the published prefix 00000000"):
        fetch_mod.fetch("tiny", bad, tmp_path / "b", progress=False)


def test_mirror_replaces_the_origin(tmp_path, server, monkeypatch):
    base, handler = server
    reg = _registry(tmp_path, "http://192.0.2.1:9", sha256=hashlib.sha256(PAYLOAD).hexdigest())
    handler.files["/site/" + reg["tiny"].file] = PAYLOAD
    monkeypatch.setenv("TRANSFER_WEIGHTS_MIRROR", f"{base}/site")
    assert fetch_mod.fetch("tiny", reg, tmp_path / "w", progress=False).read_bytes() == PAYLOAD


def test_offline_error_names_the_url_and_the_way_out(tmp_path):
    reg = _registry(tmp_path, "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(WeightsError, match=r"http://127.0.0.1:9/models/tiny.pth: cannot connect .*TRANSFER_WEIGHTS_MIRROR"):
        fetch_mod.fetch("tiny", reg, tmp_path / "w", progress=False)


class _Hub(http.server.BaseHTTPRequestHandler):
    """The Hugging Face hub's file endpoint as huggingface_hub reads it: ``/{repo}/resolve/{revision}/{file}`` with
    the commit in ``X-Repo-Commit`` and, for an LFS file, its sha256 as the ETag."""

    body: bytes = PAYLOAD
    stated: str = hashlib.sha256(PAYLOAD).hexdigest()

    def _headers(self):
        if "/resolve/" not in self.path:
            self.send_error(404)
            return False
        self.send_response(200)
        self.send_header("ETag", f'"{self.stated}"')
        self.send_header("X-Repo-Commit", "c0ffee" * 6 + "abcd")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        return True

    def do_HEAD(self):  # noqa: N802
        self._headers()

    def do_GET(self):  # noqa: N802
        if self._headers():
            self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(monkeypatch, tmp_path):
    _Hub.body, _Hub.stated = PAYLOAD, hashlib.sha256(PAYLOAD).hexdigest()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True, raising=False)
    yield _Hub
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _hub_registry(tmp_path):
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"r": {"file": "timm/r.safetensors", "hf_repo": "timm/resnet50.tv_in1k",
                                          "hf_file": "model.safetensors", "verify": "hub"}}))
    return load_registry(path)


def test_hub_entries_are_checked_against_the_sha256_the_hub_states(tmp_path, hub):
    out = fetch_mod.fetch("r", _hub_registry(tmp_path), tmp_path / "w", progress=False)
    assert out.read_bytes() == PAYLOAD
    origin = yaml.safe_load(fetch_mod.origin_file(out).read_text())
    assert origin["revision"] == "c0ffee" * 6 + "abcd" and origin["hub_sha256"] == hub.stated
    hub.body = PAYLOAD[:-1] + b"?"  # the hub serves other bytes than the sha256 it states (into a fresh cache)
    import huggingface_hub.constants as hf_constants

    hf_constants.HF_HUB_CACHE = str(tmp_path / "hf-cache-2")  # restored by the fixture's monkeypatch
    with pytest.raises(WeightsError, match=rf"downloaded bytes have sha256 {hashlib.sha256(hub.body).hexdigest()}, "
                                           rf"the hub states {hub.stated}.*the download was deleted"):
        fetch_mod.fetch("r", _hub_registry(tmp_path), tmp_path / "w2", progress=False)
    assert [p.name for p in (tmp_path / "w2").rglob("*") if p.is_file() and not p.name.endswith(".lock")] == []


def test_lock_is_written_then_enforced(tmp_path, server, capsys):
    from transfer.weights.__main__ import main

    base, handler = server
    handler.files["/models/tiny.pth"] = PAYLOAD
    reg = tmp_path / "registry.yaml"
    reg.write_text(yaml.safe_dump({"tiny": {"file": "fairseq/tiny.pt", "url": f"{base}/models/tiny.pth",
                                            "verify": "lock"}}))
    w = tmp_path / "w"
    common = ["--registry", str(reg), "--root", str(w)]
    assert main(["lock", "tiny", *common]) == 1 and "fetch first" in capsys.readouterr().err
    assert main(["fetch", "tiny", *common]) == 0
    assert main(["lock", *common]) == 0
    lock = yaml.safe_load((w / "lock.yaml").read_text())
    good = hashlib.sha256(PAYLOAD).hexdigest()
    assert lock == {"tiny": {"file": "fairseq/tiny.pt", "size": len(PAYLOAD), "sha256": good,
                             "url": f"{base}/models/tiny.pth"}}
    (w / "fairseq" / "tiny.pt").write_bytes(b"swapped")  # another file under the same name
    bad = hashlib.sha256(b"swapped").hexdigest()
    assert main(["check", *common]) == 1 and "checksum MISMATCH" in capsys.readouterr().out
    with pytest.raises(WeightsError, match=rf"sha256 {bad} differs from {good} in the lock file for 'tiny'"):
        resolve("tiny", load_registry(reg), w)
    (w / "fairseq" / "tiny.pt").unlink()
    handler.files["/models/tiny.pth"] = b"a new release under the old url"
    with pytest.raises(WeightsError, match="differs from .* in the lock file.*the download was deleted"):
        fetch_mod.fetch("tiny", load_registry(reg), w, progress=False)
    assert not (w / "fairseq" / "tiny.pt").exists()


def test_every_registry_entry_is_pinned_or_verified_at_download():
    for name, e in load_registry().items():
        assert e.verify in ("sha256", "hub"), name  # lock is for a lab's own entries; every shipped one is verified
        if e.verify == "sha256":
            assert len(e.sha256) == 64 and int(e.sha256, 16) >= 0 and e.pin_source, name
            assert not e.sha256_prefix or e.sha256.startswith(e.sha256_prefix), name
            assert e.sha256[:8] in e.file, name  # torchvision's file name carries the digest's first 8 hex digits
        else:
            assert e.hf_repo and e.hf_file and not e.sha256, name


def test_check_reports_each_entry(tmp_path, server, capsys):
    from transfer.weights.__main__ import main

    base, handler = server
    handler.files["/models/tiny.pth"] = PAYLOAD
    reg_file = tmp_path / "registry.yaml"
    reg_file.write_text(yaml.safe_dump({
        "ok": {"file": "a.bin", "sha256": hashlib.sha256(b"a").hexdigest()},
        "bad": {"file": "b.bin", "sha256": "0" * 64},
        "loose": {"file": "c.bin"},
        "gone": {"file": "d.bin", "url": f"{base}/d.bin"}}))
    w = tmp_path / "w"
    w.mkdir()
    (w / "a.bin").write_bytes(b"a")
    (w / "b.bin").write_bytes(b"b")
    (w / "c.bin").write_bytes(b"c")
    assert main(["check", "--registry", str(reg_file), "--root", str(w)]) == 1  # a mismatch and a missing file
    out = capsys.readouterr().out
    for line in ("ok  checksum ok", "bad  checksum MISMATCH", "loose  present (no checksum pinned or locked)",
                 "gone  missing"):
        assert line.split("  ")[0] in out and line.split("  ")[1] in out
    assert "python -m transfer.weights fetch gone" in out


def test_missing_weights_error_names_the_fetch_command(tmp_path):
    reg_file = tmp_path / "registry.yaml"
    reg_file.write_text(yaml.safe_dump({"tiny": {"file": "t.pth", "url": "http://127.0.0.1:9/t.pth"}}))
    with pytest.raises(WeightsError, match="python -m transfer.weights fetch tiny"):
        resolve("tiny", load_registry(reg_file), tmp_path)


def test_fetch_on_first_use_in_a_run(tmp_path, server, monkeypatch, make_cfg):
    """weights.fetch=true: a toy-sized run whose backbone weights are missing fetches them and trains."""
    import timm
    from safetensors.torch import save_file

    from transfer.runner import run

    base, handler = server
    src = tmp_path / "src.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=5).state_dict(), src)
    handler.files["/test_resnet.safetensors"] = src.read_bytes()
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "registry.yaml").write_text(yaml.safe_dump({"test_resnet.toy": {
        "file": "timm/test_resnet.safetensors", "url": f"{base}/test_resnet.safetensors",
        "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}}))
    monkeypatch.setenv("TRANSFER_WEIGHTS_DIR", str(weights))
    from conftest import TINY

    args = ["experiment=source_only_toy", *TINY, "trainer.max_epochs=1", "model.pretrained=test_resnet.toy"]
    with pytest.raises(Exception, match="python -m transfer.weights fetch test_resnet.toy"):
        run(make_cfg(*args))
    rows = run(make_cfg(*args, "weights.fetch=true"))
    assert (weights / "timm" / "test_resnet.safetensors").exists() and rows
    assert "TRANSFER_FETCH_WEIGHTS" not in os.environ  # only that run fetched
    assert torch.isfinite(torch.tensor(rows[0]["metrics"]["acc"]))


def test_fetch_experiment_lists_every_weight_it_needs():
    from transfer.weights.__main__ import names_in_experiment

    assert set(names_in_experiment("modtr_flir")) == {"fcos_resnet50_fpn.coco", "resnet34.tv_in1k"}
    assert names_in_experiment("moelora_asvspoof") == ["wav2vec2_xlsr_300m.s3prl"]
    assert names_in_experiment("source_only_toy") == []
