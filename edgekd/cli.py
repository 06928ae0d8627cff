"""`edgekd` command line: a thin layer over the Python API.

Exit codes: 0 success, 2 bad input (recipe, data, model, profile — one-paragraph message, no
traceback), 1 internal error (traceback with --debug).
"""
from __future__ import annotations

import functools
import json
import sys
import traceback
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import EdgekdError, Interrupted

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Distill, prune, quantize and export models for edge devices, with measured numbers.")
profiles_app = typer.Typer(add_completion=False, invoke_without_command=True, help="List or show device profiles.")
app.add_typer(profiles_app, name="profiles")
out = Console()
err = Console(stderr=True)
STATE = {"debug": False}
# One option object shared by every command that reads device profiles.
PROFILES_DIR = typer.Option(
    None, "--profiles-dir", exists=True, file_okay=False,
    help="folder of your own <name>.yaml device profiles, searched before the shipped ones (a profile named "
         "like a shipped one replaces it); default: $EDGEKD_PROFILES_DIR")


# Options of the commands that write a starter recipe (init, compress).
TARGET = typer.Option("host-cpu", "--profile", help="the device to build for")
STUDENT = typer.Option(None, "--student", help="layers (default) | layers:I,J,… | pretrained:PATH-OR-HUB-ID | cnn | bilstm")
TEXT_COLUMN = typer.Option(None, "--text-column", help="default: the usual names (sentence, text, review, …)")
LABEL_COLUMN = typer.Option(None, "--label-column", help="default: the usual names (label, class, verdict, …)")


def use_profiles_dir(folder: Optional[Path]) -> None:
    if folder is not None:
        from .devices.profile_folders import use_user_dir

        use_user_dir(folder.resolve())


def handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Interrupted as e:  # Ctrl-C during training: a checkpoint was saved
            err.print(f"[yellow]{e}[/]", highlight=False, soft_wrap=True)
            raise typer.Exit(130)
        except EdgekdError as e:
            if STATE["debug"]:
                traceback.print_exc()
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as e:  # noqa: BLE001 — the CLI's last line of defence: report, exit 1
            if STATE["debug"]:
                traceback.print_exc()
            err.print(f"[bold red]internal error:[/] {type(e).__name__}: {e}\n"
                      "Run again with --debug for the traceback, and please report it.", highlight=False)
            raise typer.Exit(1)

    return wrapper


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="show tracebacks")):
    STATE["debug"] = debug
    if not debug:
        warnings.showwarning = _show_warning


_PACKAGE = str(Path(__file__).resolve().parent)
_python_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """edgekd's own warnings (texts longer than data.max_length) as one line for the user, without the file and
    source line Python prints; other libraries' warnings as Python prints them."""
    if str(Path(filename).resolve()).startswith(_PACKAGE):
        err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


@app.command()
@handle_errors
def run(recipe: Path = typer.Argument(..., help="YAML recipe"),
        out_dir: Optional[Path] = typer.Option(None, "--out", help="run folder (default: the recipe's output)"),
        set_: list[str] = typer.Option([], "--set", help="override a recipe field: key.path=value"),
        profiles_dir: Optional[Path] = PROFILES_DIR):
    """Run a whole recipe: teacher -> distill -> prune -> qat -> export -> profile -> report."""
    from .pipeline import Pipeline

    use_profiles_dir(profiles_dir)

    _run_to_end(Pipeline.from_yaml(recipe, set_, out_dir))


def _run_to_end(pipe, done: str = "report.md") -> None:
    """Run every stage, close the runtime whatever happens, and (rank 0 only) say where the results are."""
    try:
        result = pipe.run()
    finally:
        if pipe.ctx is not None:
            pipe.ctx.runtime.close()
    if not pipe.ctx.runtime.is_main:  # under torchrun: rank 0 reports
        return
    s = result["summary"]
    out.print(f"\n[bold green]done[/] — {pipe.run_dir}/{done}")
    if s.get("accuracy") is not None:
        out.print(f"final ONNX accuracy {100 * s['accuracy']:.2f}% vs teacher {100 * s['teacher_accuracy']:.2f}%")


@app.command()
@handle_errors
def init(model: Optional[str] = typer.Option(None, "--model", help="your fine-tuned classifier: a Hugging Face folder "
                                             "or hub id"),
         data: Optional[Path] = typer.Option(None, "--data", help="data folder: train/dev/test .tsv, .csv or .jsonl"),
         profile: str = TARGET, student: Optional[str] = STUDENT, text_column: Optional[str] = TEXT_COLUMN,
         label_column: Optional[str] = LABEL_COLUMN,
         out_file: Path = typer.Option(Path("recipe.yaml"), "--out", help="where to write the recipe"),
         profiles_dir: Optional[Path] = PROFILES_DIR):
    """Write a commented starter recipe for your model and data (edit it, then `edgekd run` it)."""
    from .starter import starter_recipe

    use_profiles_dir(profiles_dir)
    if out_file.exists():
        raise EdgekdError(f"{str(out_file)!r} exists; edgekd init does not overwrite a recipe. Give another --out.")
    text = starter_recipe(model or "models/my-classifier", data or Path("data/my-task"), profile, student=student,
                          text_column=text_column, label_column=label_column, check=model is not None and data is not None)
    out_file.write_text(text, encoding="utf-8")
    out.print(f"wrote {out_file}: edit it, then  edgekd run {out_file}")


@app.command()
@handle_errors
def compress(model: str = typer.Argument(..., help="your fine-tuned classifier: a Hugging Face folder or hub id"),
             data: Path = typer.Option(..., "--data", help="data folder: train/dev/test .tsv, .csv or .jsonl"),
             profile: str = TARGET, student: Optional[str] = STUDENT, text_column: Optional[str] = TEXT_COLUMN,
             label_column: Optional[str] = LABEL_COLUMN,
             out_dir: Optional[Path] = typer.Option(None, "--out", help="run folder (default: runs/<model name>)"),
             set_: list[str] = typer.Option([], "--set", help="change a field of the recipe: key.path=value"),
             profiles_dir: Optional[Path] = PROFILES_DIR):
    """One command from a model and a data folder to a device build: writes OUT/recipe.yaml, then runs it."""
    from .pipeline import Pipeline
    from .recipe import validate_recipe
    from .starter import starter_recipe, with_overrides
    from .yamlio import safe_load

    use_profiles_dir(profiles_dir)
    text = with_overrides(starter_recipe(model, data, profile, student=student, out=out_dir, text_column=text_column,
                                         label_column=label_column), set_)
    pipe = Pipeline(validate_recipe(safe_load(text), "the starter recipe"))
    pipe.run_dir.mkdir(parents=True, exist_ok=True)
    (pipe.run_dir / "recipe.yaml").write_text(text, encoding="utf-8")
    out.print(f"recipe: {pipe.run_dir / 'recipe.yaml'} (edit it and run it again with edgekd run)")
    _run_to_end(pipe, "model.onnx and report.md")


@app.command()
@handle_errors
def export(artifact: Path = typer.Argument(..., help="a stage artifact folder (with model.safetensors)"),
           profile: str = typer.Option(..., "--profile", help="device profile name or YAML path"),
           out_dir: Optional[Path] = typer.Option(None, "--out", help="output folder (default: exports/<name>)"),
           opset: int = typer.Option(17, "--opset"),
           min_agreement: float = typer.Option(0.99, "--min-agreement", min=0.0, max=1.0,
                                               help="fail below this ONNX-vs-PyTorch argmax agreement"),
           profiles_dir: Optional[Path] = PROFILES_DIR):
    """Export a stage artifact to ONNX the way a device profile needs it, validated against PyTorch."""
    from .standalone import export_artifact

    use_profiles_dir(profiles_dir)

    path = export_artifact(artifact, profile, out_dir, opset, min_agreement)
    out.print(f"[bold green]exported[/] {path}/model.onnx")


@app.command()
@handle_errors
def shadow(export_dir: Path = typer.Argument(..., help="an export artifact with teacher.onnx, or its run folder"),
           inputs: Path = typer.Argument(..., help="new, unlabelled inputs: .txt (one per line) or .tsv/.csv/.jsonl"),
           out_dir: Path = typer.Option(Path("shadow"), "--out", help="where the results go"),
           text_column: str = typer.Option("sentence", "--text-column"),
           hard_confidence: float = typer.Option(0.6, "--hard-confidence", min=0.0, max=1.0,
                                                 help="inputs the teacher is less sure of are written as hard")):
    """Run the shipped student beside its teacher on new inputs: agreement, disagreements, input drift."""
    from .shadow import shadow as run_shadow

    s = run_shadow(export_dir, inputs, out_dir, text_column, hard_confidence)
    out.print(f"[bold]{s['examples']}[/] inputs: student and teacher agree on {100 * s['agreement']:.2f}% "
              f"({s['disagreements']} disagreements in {out_dir}/shadow-disagreements.jsonl)")
    for name, d in (s["drift"] or {}).items():
        out.print(f"drift of {name.replace('_', ' ')}: PSI {d['psi']:.3f} ({d['reading']}); mean {d['mean']:.3g} "
                  f"against {d['reference_mean']:.3g} in training")
    out.print(f"{s['hard_inputs']} hard inputs in {out_dir}/shadow-hard.txt: {s['redistil']}")


@app.command()
@handle_errors
def profile(model: Path = typer.Argument(..., help="an .onnx file"),
            profile: str = typer.Option("host-cpu", "--profile", help="device profile name or YAML path"),
            data: Optional[Path] = typer.Option(None, "--data", help="labelled data folder for accuracy (test split)"),
            split: str = typer.Option("test", "--split"),
            text_column: str = typer.Option("sentence", "--text-column"),
            label_column: str = typer.Option("label", "--label-column"),
            runs: int = typer.Option(50, "--runs", min=5, help="timed runs per round"),
            rounds: int = typer.Option(3, "--rounds", min=1,
                                       help="rounds per case, each in a fresh process; p50 = the lowest round median"),
            json_out: Optional[Path] = typer.Option(None, "--json", help="write the results as JSON here"),
            profiles_dir: Optional[Path] = PROFILES_DIR):
    """Measure an ONNX model on a device profile: latency p50/p90/p99, memory, size (and accuracy with --data)."""
    from .standalone import profile_onnx

    use_profiles_dir(profiles_dir)

    result = profile_onnx(model, profile, data, split, text_column, label_column, runs, rounds)
    table = Table(title=f"{model} on {profile}")
    for col in ("case", "p50 ms", "p90 ms", "p99 ms", "round spread", "items/s", "peak MB", "cold start ms"):
        table.add_column(col)
    for case, x in {**result["latency_ms"], **result.get("throughput", {})}.items():
        items = x.get("items_per_s", 1000 / x["p50"])
        table.add_row(case, f"{x['p50']:.2f}", f"{x['p90']:.2f}", f"{x['p99']:.2f}", f"{x['round_spread']:.1%}",
                      f"{items:.1f}", f"{x['peak_memory_mb']:.1f}", f"{x['session_create_ms']:.0f}")
    out.print(table)
    out.print("p50: the lowest round median (quiet machine); p90/p99 over every run; round spread: median round "
              "p50 / lowest - 1 (how noisy the machine was).")
    out.print(f"size {result['size_mb']:.2f} MB" + (f", accuracy {100 * result['accuracy']:.2f}% on "
                                                     f"{result['examples']} examples" if "accuracy" in result else ""))
    if json_out:
        json_out.write_text(json.dumps(result, indent=2))


@app.command()
@handle_errors
def report(run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR",
                                                  help="one or more run folders written by `edgekd run`"),
           html_out: Optional[Path] = typer.Option(
               None, "--out", help="device report HTML file (default: RUN_DIR/report.html for one run, "
                                   "./report.html for several); report-devices.md and .json are written next to it"),
           max_latency_ms: Optional[float] = typer.Option(None, "--max-latency-ms",
                                                          help="latency limit (p50, ms) for the recommendation"),
           min_accuracy: Optional[float] = typer.Option(None, "--min-accuracy",
                                                        help="accuracy minimum for the recommendation: 0.9 or 90"),
           profiles_dir: Optional[Path] = PROFILES_DIR):
    """Rebuild each run's manifest.json and report.md, then write the device report (HTML, MD, JSON) across the runs.

    The device report compares every model on every device profile (Pareto plots) and recommends the cheapest device and model meeting --max-latency-ms and --min-accuracy.
    """  # one line per paragraph: the help renderer keeps the line breaks
    from .report.html import check_constraints, write_reports
    from .report.run_summary import load_run, write_run_outputs

    check_constraints(max_latency_ms, min_accuracy)  # before the slow part: fail fast on a typo
    use_profiles_dir(profiles_dir)
    for run_dir in run_dirs:
        recipe, artifacts = load_run(run_dir)
        write_run_outputs(run_dir, recipe, artifacts)
        out.print(f"[bold green]wrote[/] {run_dir}/report.md and {run_dir}/manifest.json")
    html_out = html_out or (run_dirs[0] / "report.html" if len(run_dirs) == 1 else Path("report.html"))
    res = write_reports(run_dirs, html_out, max_latency_ms, min_accuracy)
    out.print(f"[bold green]wrote[/] {res['html']}, {res['markdown']} and {res['json']}")
    out.print(res["recommendation"]["text"], highlight=False, soft_wrap=True)


@profiles_app.callback()
@handle_errors
def profiles_list(ctx: typer.Context, profiles_dir: Optional[Path] = PROFILES_DIR):
    """List the device profiles and the folder each comes from."""
    use_profiles_dir(profiles_dir)
    if ctx.invoked_subcommand:
        return
    from .devices.profiles import list_profile_files

    header = ("name", "latency", "execution provider", "threads", "seq lens", "activations", "static shapes", "from")
    rows = [(p.name, "measured" if p.measured else "estimated", p.execution_provider, ",".join(map(str, p.threads)),
             ",".join(map(str, p.seq_lens)), p.quantization.activation_dtype, "yes" if p.static_shapes else "no",
             f.origin + (" (overrides shipped)" if f.overrides else ""))
            for p, f in list_profile_files()]
    if not sys.stdout.isatty():
        # Piped or redirected, rich would fit the table into 80 columns (or $COLUMNS) and cut cells
        # to "phone-big-…". Tab-separated lines keep every cell whole and suit cut, grep and awk.
        for row in (header, *rows):
            typer.echo("\t".join(row))
        return
    table = Table(title="device profiles")
    for col in header:
        table.add_column(col, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    out.print(table)
    out.print("`edgekd profiles show NAME` prints one profile with its sources.")


@profiles_app.command("show")
@handle_errors
def profiles_show(name: str = typer.Argument(..., help="profile name or YAML path"),
                  profiles_dir: Optional[Path] = PROFILES_DIR):
    """Print one profile (and, for the host, what was detected)."""
    import yaml

    from .devices.profiles import detect_host, load_profile

    use_profiles_dir(profiles_dir)
    p = load_profile(name)
    # soft_wrap, no markup: the YAML stays valid (a starting point for a profile of one's own)
    # however narrow the terminal or pipe.
    out.print(yaml.safe_dump(p.model_dump(mode="json"), sort_keys=False).rstrip(), soft_wrap=True, markup=False)
    if p.measured:
        out.print("# detected host:")
        out.print(yaml.safe_dump(detect_host(), sort_keys=False).rstrip(), soft_wrap=True, markup=False)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
