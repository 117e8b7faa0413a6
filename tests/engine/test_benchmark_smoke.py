"""The benchmarks run end to end and report every measure (no timing is asserted)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_cpu.py"


@pytest.mark.parametrize("family,name", [("sd", "tiny"), ("sdxl", "sdxl-tiny")])
def test_tiny_benchmark_reports_every_measure(tmp_path, family, name):
    # --optimum-python "": the default set without the optimum-intel peer, whether or not .venv-optimum exists
    result = subprocess.run([sys.executable, str(BENCH), "--tiny", "--family", family, "--out", str(tmp_path),
                             "--optimum-python", ""], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| end_to_end_s |" in result.stdout
    report = json.loads((tmp_path / f"bench-cpu-{name}.json").read_text())
    measures = {"cold_start_s", "end_to_end_s", "text_encoder_s", "unet_step_s", "vae_encode_s", "vae_decode_s",
                "peak_rss_mb", "load_s", "cold_start_first_s", "peak_rss_first_mb"}
    for side in ("inpaintrt", "diffusers"):
        assert set(report["median"][side]) == measures
        assert all(value > 0 for value in report["median"][side].values())
    assert set(report["ratio_diffusers_over_ours"]) == measures
    assert report["install_mb"]["inpaintrt"] < report["install_mb"]["diffusers"]
    assert report["psnr_vs_diffusers_fp32_db"]["inpaintrt"] > 80  # the fp32 engine, same numpy noise
    assert "optimum-intel-bf16" not in report["median"]


def test_tiny_benchmark_bf16_variants_and_chart(tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed: `pip install 'inpaintrt[openvino]'`")
    pytest.importorskip("matplotlib", reason="matplotlib is not installed: `pip install 'inpaintrt[bench]'`")
    from inpaintrt.engine.openvino_backend import cpu_has_bf16, load_openvino

    if not cpu_has_bf16(load_openvino().Core()):  # the bf16 variants refuse to emulate it (slower than fp32)
        pytest.skip("this CPU has no native bf16 (AVX-512 BF16 or AMX)")
    variants = "inpaintrt,inpaintrt-bf16,diffusers-bf16"
    result = subprocess.run([sys.executable, str(BENCH), "--tiny", "--variants", variants, "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "bench-cpu-tiny.json").read_text())
    assert report["processes"] == {"inpaintrt": 1, "inpaintrt-bf16": 2, "diffusers-bf16": 1}  # + a cached load
    assert list(report["ratios"]) == ["diffusers-bf16 / ours-bf16"]  # only ratios whose two sides ran
    assert set(report["psnr_vs_diffusers_fp32_db"]) == set()  # no diffusers fp32 reference: no PSNR
    assert (tmp_path / "bench-cpu-tiny.png").stat().st_size > 10_000
    # the bf16 processes cached the engine's IR: the OpenVINO profiler reads it and names the node kinds
    profile = subprocess.run([sys.executable, str(BENCH.parent / "profile_openvino.py"), str(tmp_path / "tiny-engine"),
                              "16"], capture_output=True, text=True, timeout=300)
    assert profile.returncode == 0, profile.stderr[-2000:]
    assert "UNet step, batch 2, 16x16 latents" in profile.stdout and "Convolution" in profile.stdout


def test_accuracy_only_compares_one_image_per_variant(tmp_path):
    result = subprocess.run([sys.executable, str(BENCH), "--tiny", "--accuracy-only", "--variants", "inpaintrt,diffusers",
                             "--steps", "3", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "bench-cpu-tiny-3steps-accuracy.json").read_text())
    assert report["steps"] == 3 and set(report["runs"]) == {"inpaintrt", "diffusers"}
    assert all(len(runs) == 1 and "end_to_end_s" not in runs[0] for runs in report["runs"].values())  # no timing
    assert report["psnr_vs_diffusers_fp32_db"]["inpaintrt"] > 80  # our fp32 engine, the same numpy noise
    assert report["max_abs_vs_diffusers_fp32"]["inpaintrt"] < 1e-3


def test_optimum_peer_without_its_python_is_a_clear_error(tmp_path):
    """The optimum-intel peer runs under another venv's python; without one, asking for it says how to get one
    (before anything is built)."""
    result = subprocess.run([sys.executable, str(BENCH), "--tiny", "--variants", "inpaintrt,optimum-intel-bf16",
                             "--optimum-python", str(tmp_path / "no-such-python"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--optimum-python" in result.stderr and "benchmarks/optimum_venv.sh" in result.stderr
    assert not (tmp_path / "tiny-model").exists()


def test_lcm_path_tiny_matches_diffusers_with_the_same_lora(tmp_path):
    """Ours (LCM-LoRA fused at load, lcm, 4 steps) and diffusers with the same LoRA draw the same numpy noise:
    the same picture, so their times compare equal work; the LoRA has LCM-LoRA's targets."""
    report_path = tmp_path / "report.json"
    result = subprocess.run([sys.executable, str(BENCH.parent / "lcm_path.py"), "--folder", str(tmp_path), "--tiny",
                             "--variants", "ours,diffusers-lcm", "--json", str(report_path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(report_path.read_text())
    assert report["max_abs_ours_vs_diffusers_lcm"] < 1e-4
    assert set(report["ratios"]) == {f"diffusers-lcm / ours {figure}" for figure in
                                     ("end_to_end_s", "first_image_s", "load_s")}
    for run in report["runs"].values():  # a first image and a second (warm) one, each timed
        assert run["first_image_s"] > 0 and run["end_to_end_s"] > 0 and run["load_s"] > 0
    assert report["lora"]["lora_rank"] == 4 and report["lora"]["lora_parameters"] > 0
    from safetensors.numpy import load_file

    keys = load_file(str(tmp_path / "tiny-lcm-lora.safetensors"))
    assert all(key.startswith("unet.") for key in keys)  # UNet only, as the real LCM-LoRA
    for target in ("attn1.to_q", "ff.net.0.proj", "resnets.0.conv1", "conv_shortcut", "downsamplers.0.conv",
                   "time_emb_proj", "proj_in"):
        assert any(f"{target}.lora_A" in key for key in keys), target


def test_lcm_path_refuses_an_unknown_variant(tmp_path):
    result = subprocess.run([sys.executable, str(BENCH.parent / "lcm_path.py"), "--folder", str(tmp_path),
                             "--variants", "ours,diffuser"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--variants: choose from ours, diffusers, diffusers-lcm" in result.stderr
    assert not list(tmp_path.iterdir())  # refused before anything is built


def test_bench_serve_repeats_alternating_and_counts_shared_loops(tmp_path):
    report_path = tmp_path / "serve.json"
    result = subprocess.run([sys.executable, str(BENCH.parent / "bench_serve.py"), "--model-size", "tiny",
                             "--max-batch", "1,4", "--clients", "4", "--requests", "1", "--steps", "2", "--size",
                             "64", "--repeat", "2", "--window-ms", "200", "--json", str(report_path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(report_path.read_text())
    assert [(r["round"], r["max_batch"]) for r in report["runs"]] == [(1, 1), (1, 4), (2, 4), (2, 1)]
    for row in report["runs"]:
        assert row["images"] == 4 and row["images_per_s"] > 0
        # alone: every loop one request; at 4, with a long window, some requests shared a loop
        assert row["requests_per_loop"] == 1.0 if row["max_batch"] == 1 else row["requests_per_loop"] > 1
    assert [s["rows"] for s in report["unet_scaling"].values()] == [2, 8]
    assert report["settings"]["repeat"] == 2 and report["machine"]["cores"] > 0


def test_lora_load_tiny_reports_both_loads_and_steps(tmp_path):
    result = subprocess.run([sys.executable, str(BENCH.parent / "lora_load.py"), "--runs", "1", "--json",
                             str(tmp_path / "lora.json")], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "lora.json").read_text())
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {k: v for k, v in report.items()
                                                                   if k not in ("machine", "versions")}
    for measure in ("load_s", "load_with_lora_s", "unet_step_s", "unet_step_with_lora_s"):
        assert report[measure] > 0
    assert report["versions"]["onnxruntime"] and report["machine"]["cores"] > 0


def test_sam_decoder_benchmark_times_both_graphs_on_the_same_mask():
    result = subprocess.run([sys.executable, str(BENCH.parent / "bench_sam_decoder.py"), "--sizes", "48x64",
                             "--reps", "1", "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("| 64x48 |"))
    every, one, ratio, differs = (cell.strip() for cell in row.strip("|").split("|")[1:])
    assert every.endswith(" ms") and one.endswith(" ms") and float(ratio) > 0
    assert float(differs) < 1e-5  # the one-token graph answers the engine's token 0
