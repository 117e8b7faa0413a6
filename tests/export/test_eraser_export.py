"""Exporting erasers from the files people have: LaMa's release folder, its best.ckpt, IOPaint's TorchScript
big-lama.pt, MI-GAN's generator .pt; the manifest and hashes; and the bad sources, which leave nothing."""
import json
import os
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from eraser_models import MIGAN_RES, save_lightning_checkpoint, tiny_lama, tiny_migan  # noqa: E402

from inpaintrt import Engine  # noqa: E402
from inpaintrt.cli import export_main  # noqa: E402
from inpaintrt.engine.manifest import read_manifest  # noqa: E402
from inpaintrt.export.eraser import EraserSourceError, export_eraser, load_eraser, read_checkpoint  # noqa: E402
from inpaintrt.export.eraser_lama import LamaGraph  # noqa: E402

QUIET = dict(log=lambda *_: None)


def test_release_folder_export_is_a_complete_engine(erasers):
    manifest = read_manifest(erasers["lama"])
    assert manifest["model"] == {"family": "lama", "kind": "eraser", "size_multiple": 8, "resolution": None,
                                 "parameters": sum(p.numel() for p in tiny_lama().parameters())}
    component = manifest["components"]["eraser"]
    assert component["parity"]["max_rel_error"] <= 1e-4
    assert component["fp16"]["max_rel_error"] <= 3e-2 and "cuda" in component
    assert {"eraser.onnx", "fp16/eraser.onnx", "cuda/eraser.onnx"} <= set(manifest["files"])
    migan = read_manifest(erasers["migan"])["model"]
    assert (migan["family"], migan["resolution"], migan["size_multiple"]) == ("migan", MIGAN_RES, None)


def test_the_stored_graph_holds_no_dft(erasers):
    import onnx

    from inpaintrt.export.eraser_lama import dft_ops

    assert dft_ops(onnx.load(str(erasers["lama"] / "eraser.onnx"))) == []
    assert dft_ops(onnx.load(str(erasers["lama"] / "cuda" / "eraser.onnx"))) == []


def test_torchscript_big_lama_and_state_dicts_load_the_same_weights(erasers, tmp_path):
    """IOPaint's big-lama.pt is the traced generator; its weights are the same as best.ckpt's."""
    lama = tiny_lama()
    traced = torch.jit.trace(LamaGraph(lama), (torch.rand(1, 3, 32, 40), torch.zeros(1, 1, 32, 40)))
    traced.save(str(tmp_path / "big-lama.pt"))
    reference = {k: v for k, v in lama.state_dict().items()}
    for source in (tmp_path / "big-lama.pt", erasers["lama_ckpt"], erasers["lama_ckpt"].parent.parent):
        kind, loaded = load_eraser(source)
        assert kind == "lama"
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in reference.items()), source


def test_migan_checkpoint_resolution_is_read(erasers):
    kind, generator = load_eraser(erasers["migan_pt"])
    assert (kind, generator.resolution) == ("migan", MIGAN_RES)


def test_cli_export_and_refusals(erasers, tmp_path, capsys):
    assert export_main(["--model", str(erasers["migan_pt"]), "--output", str(tmp_path / "out")]) == 0
    assert Engine.load(tmp_path / "out").family == "migan"
    assert export_main(["--model", str(erasers["migan_pt"]), "--output", str(tmp_path / "out")]) == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert export_main(["--model", str(erasers["migan_pt"]), "--output", str(tmp_path / "o2"), "--lora", "x"]) == 2
    assert "--lora does not apply to an eraser" in capsys.readouterr().err


def nothing_left(parent):
    return [p.name for p in parent.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("case", ["other_architecture", "wrong_kind", "truncated", "no_config", "no_ckpt"])
def test_bad_sources_say_what_is_wrong_and_write_nothing(erasers, tmp_path, case):
    source, forced = tmp_path / "source.pt", None
    if case == "other_architecture":
        torch.save({"conv_in.weight": torch.zeros(4, 4, 3, 3), "time_embedding.linear_1.weight": torch.zeros(8, 4)},
                   source)
        message = r"neither LaMa's generator \(model\.\*\) nor MI-GAN's.*conv_in\.weight"
    elif case == "wrong_kind":
        source, forced = erasers["migan_pt"], "lama"
        message = r"do not fit LaMa's generator: missing keys: 1 \(model\.1\.ffc\.convl2l\.weight\)"
    elif case == "truncated":
        source = tmp_path / "best.ckpt"
        source.write_bytes(erasers["lama_ckpt"].read_bytes()[:5000])
        message = "truncated or not a checkpoint"
    elif case == "no_config":
        source = tmp_path / "big-lama"
        (source / "models").mkdir(parents=True)
        message = "has no config.yaml: a LaMa release folder holds config.yaml and models/best.ckpt"
    else:
        source = tmp_path / "big-lama"
        source.mkdir()
        (source / "config.yaml").write_text("generator: {}\n")
        message = "has config.yaml but no models/best.ckpt"
    out = tmp_path / "engines" / "eraser"
    out.parent.mkdir()
    with pytest.raises((EraserSourceError, ValueError), match=message):
        export_eraser(source, out, kind=forced, **QUIET)
    assert not out.exists() and nothing_left(out.parent) == []


def test_a_wrong_shape_is_named(tmp_path):
    weights = tiny_lama().state_dict()
    weights["model.5.conv1.ffc.convg2g.conv2.weight"] = torch.zeros(3, 3, 1, 1)
    torch.save(weights, tmp_path / "big-lama.pt")
    with pytest.raises(ValueError, match=r"wrong shapes: 1 \(model\.5\.conv1\.ffc\.convg2g\.conv2\.weight"):
        load_eraser(tmp_path / "big-lama.pt")


class _Trap:
    def __reduce__(self):
        return (os.system, ("touch TRAPPED",))


def test_reading_a_checkpoint_never_runs_its_code(tmp_path, monkeypatch):
    """A Lightning checkpoint may pickle any class; reading keeps the tensors and runs nothing."""
    monkeypatch.chdir(tmp_path)
    path = save_lightning_checkpoint(tiny_lama(), tmp_path / "best.ckpt")
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["callbacks"] = {"trap": _Trap()}
    torch.save(checkpoint, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    found = read_checkpoint(path)
    assert not (tmp_path / "TRAPPED").exists()
    assert torch.equal(found["state_dict"]["generator.model.1.ffc.convl2l.weight"],
                       tiny_lama().state_dict()["model.1.ffc.convl2l.weight"])
    kind, _ = load_eraser(path)
    assert kind == "lama" and not (tmp_path / "TRAPPED").exists()


def test_manifest_tampering_is_refused(erasers, tmp_path):
    import shutil

    from inpaintrt.engine.manifest import EngineDirectoryError

    copy = tmp_path / "eraser"
    shutil.copytree(erasers["migan"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["model"]["resolution"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineDirectoryError, match="lacks model.resolution"):
        Engine.load(copy)
    data = bytearray((erasers["migan"] / "eraser.onnx").read_bytes())
    data[-10] ^= 1
    shutil.copytree(erasers["migan"], tmp_path / "altered")
    (tmp_path / "altered" / "eraser.onnx").write_bytes(bytes(data))
    with pytest.raises(EngineDirectoryError, match="does not match its hash"):
        Engine.load(tmp_path / "altered")
    assert np.isfinite(Engine.load(erasers["migan"]).erase(np.zeros((8, 8, 3), np.float32),
                                                           np.ones((8, 8), bool))).all()
