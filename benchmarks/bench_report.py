"""bench_cpu.py's report as a markdown table and a bar chart (PNG, with matplotlib: `inpaintrt[bench]`)."""
from __future__ import annotations

from pathlib import Path


def table(report: dict) -> str:
    variants, ratios = list(report["median"]), report["ratios"]
    rows = [f"{report['model']} model, {report['pixels']}x{report['pixels']}, {report['steps']} steps, guidance "
            f"7.5, processes {report['processes']}, {report['machine']['cores']} cores ({report['machine']['cpu']})",
            "", "| measure | " + " | ".join(variants + list(ratios)) + " |", "|---" * (1 + len(variants) + len(ratios)) + "|"]
    for m in ("end_to_end_s", "text_encoder_s", "unet_step_s", "vae_encode_s", "vae_decode_s", "load_s",
              "cold_start_first_s", "cold_start_s", "peak_rss_first_mb", "peak_rss_mb"):
        values = [f"{report['median'][who][m]:.3f}" for who in variants] + [f"{r[m]:.2f}x" for r in ratios.values()]
        rows.append(f"| {m} | " + " | ".join(values) + " |")
    psnr = report["psnr_vs_diffusers_fp32_db"]
    rows.append("| PSNR vs diffusers fp32, dB | " + " | ".join(
        "ref" if who == "diffusers" else f"{psnr[who]:.1f}" if who in psnr else "-" for who in variants)
        + " |" + " |" * len(ratios))
    sizes = report["install_mb"]
    rows.append(f"\ninstalled size, MB: inpaintrt {sizes['inpaintrt']:.0f}, diffusers {sizes['diffusers']:.0f} "
                f"({report['install_ratio']:.1f}x; extras such as openvino not counted)")
    return "\n".join(rows)


CHART = (("end_to_end_s", "end to end, s"), ("unet_step_s", "UNet step (batch 2), s"), ("vae_decode_s", "VAE decode, s"),
         ("cold_start_first_s", "cold start, first load, s"), ("cold_start_s", "cold start, second load, s"),
         ("peak_rss_mb", "peak RSS, MB"))


def chart(report: dict, path: Path) -> str:
    """A bar chart of the table's main measures, one panel per measure, one bar per variant."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart: not written (matplotlib is not installed: `pip install 'inpaintrt[bench]'`)"
    variants = list(report["median"])
    colours = {"inpaintrt": "#1f77b4", "inpaintrt-bf16": "#6baed6", "diffusers": "#d62728", "diffusers-bf16": "#fc9272",
               "optimum-intel-bf16": "#2ca02c"}
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, (m, title) in zip(axes.flat, CHART):
        values = [report["median"][who][m] for who in variants]
        bars = ax.bar(range(len(variants)), values, color=[colours[v] for v in variants])
        ax.bar_label(bars, labels=[f"{v:.3g}" if v < 1000 else f"{v:.0f}" for v in values], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(variants)), variants, rotation=20, fontsize=8)
        ax.margins(y=0.15)
    fig.suptitle(f"inpaintrt vs diffusers on the CPU: {report['model']} model, {report['pixels']}x{report['pixels']}, "
                 f"{report['steps']} steps ({report['machine']['cores']} cores, {report['machine']['cpu']}); lower is better",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"chart: {path}"
