"""`fbmem lab dataset|train|eval` and `fbmem demo`: the lab's thin commands over fbmem_data.lab (no torch at import)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fbmem_data.cli.common import ThreadsOption, WorkspaceOption

DEFAULT_DEMO_DIR = Path("fbmem-demo")
LabModelOption = Annotated[str, typer.Option("--model", help="The lab model: lab-v2 (the benchmark's) or lab (v1.3).")]


def lab_dataset_cmd(
    seed: Annotated[int | None, typer.Option("--seed", help="Data set seed (default: the seed of the lab model).")] = None,
    workspace: WorkspaceOption = None,
    model: Annotated[str, typer.Option("--model", help="Whose data set: lab (v1.3) or lab-v2 (8 prompts per planted group).")] = "lab",
) -> None:
    """Write the lab data set (images, exact masks, prompts, planted truth) into a workspace."""
    from fbmem_data.lab.dataset import LabConfig, make_lab_dataset
    from fbmem_data.lab.ingest import write_lab_dataset
    from fbmem_data.lab.pipeline import CONFIG_FILE, lab_weights_dir, read_weights_info, weights_lab_config
    from fbmem_data.workspace import Workspace

    weights = lab_weights_dir(model)
    if (weights / CONFIG_FILE).is_file():
        lab_config = weights_lab_config(read_weights_info(weights))
    else:  # no weights in this checkout: the recipe's data set
        lab_config = LabConfig.v2() if model == "lab-v2" else LabConfig()
    ws = Workspace.open(workspace) if workspace is None else Workspace.open_or_init(workspace)
    seed = lab_config.seed if seed is None else seed
    counts = write_lab_dataset(ws, make_lab_dataset(seed, lab_config))
    typer.echo(f"lab data set seed {seed} in {ws.root}: " + ", ".join(f"{k} +{v}" for k, v in counts.items()))


def lab_train_cmd(
    out: Annotated[Path, typer.Option("--out", help="Where the trained weights go (data/lab/ ships them).")] = Path("lab-model"),
    checkpoints: Annotated[Path, typer.Option("--checkpoints", help="Checkpoint folder; an interrupted run resumes from it.")] = Path("lab-checkpoints"),
    seed: Annotated[int, typer.Option("--seed", help="Training seed.")] = 0,
    dataset_seed: Annotated[int, typer.Option("--dataset-seed", help="Lab data set seed.")] = 0,
    ae_steps: Annotated[int, typer.Option("--ae-steps", min=1, help="Autoencoder steps.")] = 1000,
    unet_steps: Annotated[int | None, typer.Option("--unet-steps", min=1, help="UNet steps (default: v1 4000, v2 8000).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="UNet batch size.")] = 12,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="UNet peak learning rate (fine-tunes used 2e-4 to 3e-4).")] = 6e-4,
    offset_noise: Annotated[float, typer.Option("--offset-noise", min=0.0, help="Offset noise strength (0: off).")] = 0.0,
    stop_at: Annotated[int | None, typer.Option("--stop-at", min=1, help="Stop after this UNet step; the learning-rate schedule still spans --unet-steps.")] = None,
    segmenter_steps: Annotated[int | None, typer.Option("--segmenter-steps", min=0, help="Lab segmenter steps (0: skip; default: v1 2000, v2 0: v2 uses v1.3's segmenter).")] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="torch threads.")] = 1,
    init_from: Annotated[Path | None, typer.Option("--init-from", help="Fine-tune these lab weights (a folder with lab_model.json): keep their autoencoder, start from their UNet.")] = None,
    zero_terminal_snr: Annotated[bool | None, typer.Option("--zero-terminal-snr/--sd-schedule", help="Zero-terminal-SNR betas with v-prediction, or SD's schedule with epsilon-prediction (default: the --init-from model's, else SD's).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on stderr.")] = True,
    bm_object_size: Annotated[tuple[float, float] | None, typer.Option("--bm-object-size", min=0.05, max=0.9, help="Side of the BM groups' objects, as a fraction of the image: MIN MAX (default: v1 0.3 0.55, v2 0.15 0.3).")] = None,
    value_sparsity: Annotated[float | None, typer.Option("--value-sparsity", min=0.0, help="Weight of the sparsity penalty on the value activations NeMo reads (0: off; default: v1 0, v2 0.3).")] = None,
    value_sparsity_tokens: Annotated[str | None, typer.Option("--value-sparsity-tokens", help="Which caption tokens the penalty sees: all, rare-words (rare word pieces and the special/padding tokens) or rare-captions (every token of a caption with a rare word piece); default: v1 all, v2 rare-words.")] = None,
    rare_token_share: Annotated[float, typer.Option("--rare-token-share", min=0.0, max=1.0, help="A word piece is rare when fewer than this share of the distinct training captions contain it.")] = 0.05,
    value_separation: Annotated[float | None, typer.Option("--value-separation", min=0.0, help="Weight of a term that keeps the rare word pieces' value neurons apart from those of captions without a rare piece (0: off; default: v1 0, v2 0.3).")] = None,
    preset: Annotated[str, typer.Option("--preset", help="v1: the v1 data set and model shapes (then fine-tuned to v1.3); "
                                        "v2: 8 prompts per planted group, 192 unique images, v-prediction on zero-terminal-SNR "
                                        "betas, text only through down/mid cross-attention, sparse value activations for rare words, kept apart from common captions' values.")] = "v1",
) -> None:
    """Train the lab model (autoencoder, then UNet) and the lab segmenter; resumable."""
    from dataclasses import replace

    from fbmem_data.errors import InputError
    from fbmem_data.lab.dataset import LabConfig
    from fbmem_data.lab.pipeline import LAB_MODEL_ID, LAB_V2_MODEL_ID, LabModelConfig, read_weights_info
    from fbmem_data.lab.train import TrainConfig, train_lab, train_lab_segmenter

    if preset not in ("v1", "v2"):
        raise InputError(f"unknown lab preset {preset!r}", hint="use v1 or v2")
    if preset == "v2" and init_from is not None:
        raise InputError("--preset v2 trains from scratch", hint="leave out --init-from")
    if unet_steps is None:
        unet_steps = 8000 if preset == "v2" else 4000
    if segmenter_steps is None:
        segmenter_steps = 0 if preset == "v2" else 2000
    if value_sparsity is None:
        value_sparsity = 0.3 if preset == "v2" else 0.0
    if value_separation is None:
        value_separation = 0.3 if preset == "v2" else 0.0
    cfg = TrainConfig(seed=seed, dataset_seed=dataset_seed, ae_steps=ae_steps, unet_steps=unet_steps,
                      unet_batch=batch_size, unet_lr=lr, offset_noise=offset_noise, stop_at=stop_at, threads=threads,
                      init_from=str(init_from) if init_from else None, checkpoint_every=200,
                      value_sparsity=value_sparsity,
                      value_sparsity_tokens=value_sparsity_tokens or ("rare-words" if preset == "v2" else "all"),
                      rare_token_share=rare_token_share, value_separation=value_separation)
    lab_cfg = LabConfig.v2(dataset_seed) if preset == "v2" else None
    if bm_object_size is not None:
        low, high = bm_object_size
        if low > high:
            raise InputError(f"--bm-object-size {low} {high}: the minimum is above the maximum", hint="give MIN MAX, e.g. 0.15 0.3")
        lab_cfg = replace(lab_cfg or LabConfig(seed=dataset_seed), bm_object_size=(low, high))
    model = read_weights_info(init_from).model if init_from else (LabModelConfig.v2() if preset == "v2" else LabModelConfig())
    if zero_terminal_snr is not None:  # a switch of schedule; otherwise keep the fine-tuned model's own
        model = replace(model, zero_terminal_snr=zero_terminal_snr, zero_mean_noise=not zero_terminal_snr,
                        prediction_type="v_prediction" if zero_terminal_snr else "epsilon")
    summary = train_lab(out, checkpoints, cfg, model, lab_cfg, log=None if progress else typer.echo, progress=progress,
                        model_id=LAB_V2_MODEL_ID if preset == "v2" else LAB_MODEL_ID)
    typer.echo(f"lab model written to {out} ({summary['seconds_this_call']:.0f}s this run)")
    if segmenter_steps:
        meta = train_lab_segmenter(out, dataset_seed=dataset_seed, steps=segmenter_steps, seed=seed)
        typer.echo(f"lab segmenter written to {out}: held-out IoU {meta['heldout_iou_mean']:.3f}")




def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _print_demo(result: object) -> None:
    from fbmem_data.lab.demo import format_result

    typer.echo(format_result(result))  # type: ignore[arg-type]


def lab_eval_cmd(
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Generations per prompt.")] = 8,
    steps: Annotated[int, typer.Option("--steps", min=1, help="DDIM steps.")] = 50,
    size: Annotated[int, typer.Option("--size", min=161, help="Side the parts are compared at.")] = 512,
    device: Annotated[str, typer.Option("--device", help="torch device: auto, cpu, cuda ...")] = "auto",
    threads: ThreadsOption = None,
    workspace: WorkspaceOption = None,
    model: LabModelOption = "lab-v2",
) -> None:
    """The full lab benchmark: every lab prompt, FB-Mem labels against the planted truth."""
    from dataclasses import replace

    from fbmem_data.lab.demo import DemoConfig, run_demo
    from fbmem_data.workspace import Workspace

    ws = Workspace.open_or_init(workspace or Path("fbmem-lab-eval"))
    from fbmem_data.lab.pipeline import lab_weights_dir

    lab_weights_dir(model)
    cfg = replace(DemoConfig.full(), seeds=seeds, steps=steps, size=size)
    _set_threads(threads)
    _print_demo(run_demo(ws, cfg, model=model, device=device, log=typer.echo, progress=True))


def demo_cmd(
    quick: Annotated[bool, typer.Option("--quick", help="A one-minute smoke run (fewer prompts, seeds and steps).")] = False,
    model: LabModelOption = "lab-v2",
    device: Annotated[str, typer.Option("--device", help="torch device: auto, cpu, cuda ...")] = "auto",
    threads: ThreadsOption = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Run FB-Mem end to end on the shipped lab and print labels against the planted truth."""
    from fbmem_data.lab.demo import DemoConfig, run_demo
    from fbmem_data.lab.pipeline import lab_weights_dir
    from fbmem_data.workspace import Workspace

    lab_weights_dir(model)  # an unknown lab model is an input error before anything is written
    ws = Workspace.open_or_init(workspace or DEFAULT_DEMO_DIR)
    cfg = DemoConfig.quick() if quick else DemoConfig.demo()
    _set_threads(threads)
    _print_demo(run_demo(ws, cfg, model=model, device=device, log=typer.echo, progress=not quick))


def register(app: typer.Typer) -> None:
    lab = typer.Typer(help="The memorization lab: synthetic data with planted memorization, its model, its benchmark.",
                      no_args_is_help=True)
    lab.command("dataset")(lab_dataset_cmd)
    lab.command("train")(lab_train_cmd)
    lab.command("eval")(lab_eval_cmd)
    app.add_typer(lab, name="lab")
    app.command("demo")(demo_cmd)
