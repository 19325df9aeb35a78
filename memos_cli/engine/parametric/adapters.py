"""Adapters in a cube: stored as peft folders under ``lora/<name>/``, checked (sha256, model fingerprint,
rank bounds, no regular expression from a cube evaluated) before peft reads a byte, loaded, combined."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from memos_cli.cube import io as cube_io
from memos_cli.cube import layout, records
from memos_cli.cube.bundle import Cube
from memos_cli.cube.io import sha256_bytes
from memos_cli.errors import (
    AdapterNotFound,
    IncompatibleModel,
    IntegrityError,
    InvalidCube,
    MemosError,
    UsageError,
    shorten,
)
from memos_cli.models.lm import LanguageModel

ADAPTER_FILES = layout.ADAPTER_FILES
REPORT_FILE = layout.ADAPTER_REPORT


def active_adapter(model: Any) -> str:
    active = model.active_adapter
    return active if isinstance(active, str) else active[0]


def save_peft_folder(model: Any, folder: Path, model_name: str) -> None:
    """``save_pretrained`` plus two fixes for a bundle: no absolute path of the base model in the config
    (it becomes the model's name) and no generated README."""
    model.save_pretrained(str(folder), safe_serialization=True)
    (folder / "README.md").unlink(missing_ok=True)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = model_name
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    unexpected = sorted(p.name for p in folder.iterdir() if p.name not in ADAPTER_FILES)
    if unexpected:
        raise MemosError(f"peft wrote unexpected files into the adapter folder: {', '.join(unexpected)}")


def verify_adapter(cube: Cube, name: str) -> Path:
    """The folder of adapter ``name`` once every file matches its recorded sha256 and nothing else is in
    it. Raises AdapterNotFound, InvalidCube or IntegrityError."""
    entry = cube.manifest.lora.get(name)
    if entry is None:
        raise AdapterNotFound(cube.path, name)
    rel = f"{layout.LORA_DIR}/{name}"  # the manifest may name no other place (cube/manifest.py)
    folder = cube.path / rel
    files = entry.files
    missing = [f for f in ADAPTER_FILES if f not in files]
    if missing:
        raise InvalidCube(cube.path, f"adapter {name} records no sha256 for {', '.join(missing)}")
    if cube_io.kind(cube.path, rel) != "dir":
        raise InvalidCube(cube.path, f"adapter folder {rel} is missing (or is not a plain folder)")
    present = set(cube_io.listdir(cube.path, rel))
    extra = sorted(present - set(files))
    if extra:
        raise InvalidCube(cube.path, f"adapter {name} holds files the manifest does not list: {', '.join(extra)}")
    for file, expected in sorted(files.items()):
        if file not in present:
            raise InvalidCube(cube.path, f"adapter {name} lacks {file}")
        found = cube_io.sha256(cube.path, f"{rel}/{file}")  # refuses links and special files
        if found != expected:
            raise IntegrityError(cube.path, f"{layout.LORA_DIR}/{name}/{file}", str(expected), found)
    return folder


MAX_LAYER_INDEX = 4096  # layers_to_transform: no model memos loads has more layers
_PLAIN_MODULE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
# The one pattern memos itself writes for --target-modules attention: ".*\.(parents)\.(leaves)".
_MEMOS_ATTENTION = re.compile(r"\.\*\\\.\(([A-Za-z0-9_|]+)\)\\\.\(([A-Za-z0-9_|]+)\)")


def safe_adapter_config(config: Any, where: str) -> dict[str, Any]:
    r"""An adapter config whose module patterns peft can apply without evaluating a regex from the cube.

    peft treats a string ``target_modules``/``exclude_modules`` (and the keys of ``rank_pattern``,
    ``alpha_pattern``, and ``layers_pattern``) as regular expressions: one from a stranger can backtrack
    for hours. Accepted: lists of plain module names, "all-linear", and the exact ``.*\.(a|b)\.(c|d)``
    shape memos writes, which is rewritten to the equivalent list of name suffixes. Anything else is
    refused (InvalidCube), before peft sees it."""

    def refuse(problem: str) -> InvalidCube:
        return InvalidCube(Path(where), f"adapter_config.json {problem}")

    if not isinstance(config, dict):
        raise refuse("is not a JSON object")
    if config.get("peft_type") != "LORA":
        raise refuse(f"is not a LoRA adapter (peft_type {str(config.get('peft_type'))[:40]!r})")
    config = dict(config)

    def names(key: str, value: Any) -> list[str] | None:
        if value is None:
            return None
        if isinstance(value, list) and all(isinstance(v, str) and _PLAIN_MODULE.fullmatch(v) for v in value):
            return value
        raise refuse(f"{key} must be a list of plain module names (memos evaluates no pattern from a cube)")

    target = config.get("target_modules")
    if isinstance(target, str):
        shape = _MEMOS_ATTENTION.fullmatch(target)
        if target == "all-linear":
            pass
        elif shape:
            config["target_modules"] = [f"{p}.{leaf}" for p in shape[1].split("|") for leaf in shape[2].split("|")]
        else:
            raise refuse("target_modules is a regular expression memos does not evaluate; list module names")
    else:
        config["target_modules"] = names("target_modules", target)
    for key in ("exclude_modules", "modules_to_save"):
        config[key] = names(key, config.get(key))
    layers = config.get("layers_pattern")
    if isinstance(layers, str):
        names("layers_pattern", [layers])
    else:
        names("layers_pattern", layers)
    indexes = config.get("layers_to_transform")
    if indexes is not None and not (
        (isinstance(indexes, int) and not isinstance(indexes, bool) and 0 <= indexes < MAX_LAYER_INDEX)
        or (
            isinstance(indexes, list)
            and len(indexes) <= MAX_LAYER_INDEX
            and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < MAX_LAYER_INDEX for i in indexes)
        )
    ):
        raise refuse(f"layers_to_transform must be a layer number or a list of them (under {MAX_LAYER_INDEX})")
    for key in ("rank_pattern", "alpha_pattern"):
        value = config.get(key) or {}
        if not isinstance(value, dict):
            raise refuse(f"{key} must be a mapping")
        names(key, list(value))
    checked: dict[str, Any] = config
    return checked


@contextlib.contextmanager
def private_adapters(folders: Sequence[Path], expected: Sequence[dict[str, str]] | None = None) -> Any:
    """Private copies of adapter folders for peft to read: each file read once through the confined
    primitives (no link, no special file), checked against ``expected`` sha256 where given, and the
    config rewritten by ``safe_adapter_config``. Nothing of the cube is read by peft itself."""
    with tempfile.TemporaryDirectory(prefix="memos-adapter-") as tmp:
        copies = []
        for i, folder in enumerate(folders):
            out = Path(tmp) / str(i)
            out.mkdir()
            for file in ADAPTER_FILES:
                limit = layout.MAX_ADAPTER_CONFIG_BYTES if file == "adapter_config.json" else None
                data = cube_io.read_bytes(folder, file, limit=limit)
                assert data is not None
                if expected is not None and sha256_bytes(data) != expected[i].get(file):
                    raise IntegrityError(
                        folder.parent.parent,
                        f"{folder.parent.name}/{folder.name}/{file}",
                        str(expected[i].get(file)),
                        sha256_bytes(data),
                    )
                if file == "adapter_config.json":
                    try:
                        config = json.loads(data.decode("utf-8"))
                    except (ValueError, UnicodeDecodeError):
                        raise InvalidCube(folder, "adapter_config.json is not JSON") from None
                    data = json.dumps(safe_adapter_config(config, str(folder))).encode("utf-8")
                (out / file).write_bytes(data)
            copies.append(out)
        yield copies


def adapter_digests(cube: Cube, names: Sequence[str]) -> dict[str, str]:
    """{name: sha256 of its adapter_model.safetensors}, in the given order, as the manifest records it."""
    out = {}
    for name in dict.fromkeys(names):
        entry = cube.manifest.lora.get(name)
        if entry is None:
            raise AdapterNotFound(cube.path, name)
        out[name] = str(entry.weights_sha256)
    return out


def load_adapters(lm: LanguageModel, cube: Cube, names: Sequence[str]) -> LanguageModel:
    """``lm`` with the named adapters merged into a private copy of its weights (``lm`` is unchanged).

    Each adapter is refused, before peft reads a byte of it, if it was made for another model
    (IncompatibleModel) or any of its files differs from the manifest's sha256 (IntegrityError). Several
    adapters combine by adding their weight updates. The result's ``fingerprint`` is the base model's
    plus the adapters', so that a KV snapshot made with the bare model is refused for it (its cache was
    computed with other weights).
    """
    from peft import PeftModel

    names = list(dict.fromkeys(names))
    if not names:
        raise UsageError("name at least one adapter")
    folders = []
    for name in names:
        entry = cube.manifest.lora.get(name)
        if entry is None:
            raise AdapterNotFound(cube.path, name)
        expected = str(entry.base_model_fingerprint)
        if expected != lm.fingerprint:
            raise IncompatibleModel(f"adapter {name}", expected, lm.fingerprint)
        folder = verify_adapter(cube, name)
        check_adapter_bounds(cube, name, folder)
        folders.append(folder)
    digest = hashlib.sha256(
        "\n".join(f"{n}:{cube.manifest.lora[n].weights_sha256}" for n in names).encode()
    ).hexdigest()
    expected_files = [cube.manifest.lora[n].files for n in names]
    with warnings.catch_warnings(), private_adapters(folders, expected_files) as copies:
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(copy.deepcopy(lm.model), str(copies[0]), adapter_name=names[0])
        for name, folder in zip(names[1:], copies[1:], strict=True):
            model.load_adapter(str(folder), adapter_name=name)
        merged = model.merge_and_unload(adapter_names=names)
    merged.eval()
    return replace(
        lm,
        name=f"{lm.name}+{'+'.join(names)}",
        model=merged,
        fingerprint=f"{lm.fingerprint}+lora-{digest[:12]}",
        _kv_shapes=None,
    )


MAX_LORA_RANK = 256  # peft allocates rank x (in + out) per target module before reading a weight


def check_adapter_bounds(cube: Cube, name: str, folder: Path) -> None:
    """Refuse an adapter whose config would make peft allocate unbounded memory (``r: 200000``), or whose
    tensors disagree with its rank, before peft reads a byte of it. Raises InvalidCube."""
    from safetensors import safe_open

    def bad(problem: str) -> InvalidCube:
        return InvalidCube(cube.path, f"adapter {shorten(name)}: {problem}")

    try:
        config = records.loads(
            cube_io.read_bytes(folder, "adapter_config.json", limit=layout.MAX_ADAPTER_CONFIG_BYTES) or b""
        )
    except ValueError as exc:
        raise bad(f"adapter_config.json is not valid ({exc})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        found = config.get("peft_type") if isinstance(config, dict) else None
        raise bad(f"not a LoRA adapter (peft_type {shorten(repr(found))})")
    rank_pattern = config.get("rank_pattern") or {}
    if not isinstance(rank_pattern, dict):
        raise bad("rank_pattern is not a mapping")
    ranks = [config.get("r"), *rank_pattern.values()]
    for rank in ranks:
        if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= MAX_LORA_RANK:
            raise bad(f"rank {shorten(repr(rank))} is not an integer from 1 to {MAX_LORA_RANK}")
    largest = max(ranks)
    try:
        with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as handle:
            for key in handle.keys():
                shape = handle.get_slice(key).get_shape()
                if "lora_A" in key and (len(shape) != 2 or shape[0] > largest):
                    raise bad(f"tensor {shorten(key)} has shape {shape}, not rank <= {largest}")
                if "lora_B" in key and (len(shape) != 2 or shape[1] > largest):
                    raise bad(f"tensor {shorten(key)} has shape {shape}, not rank <= {largest}")
    except InvalidCube:
        raise
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError: an unreadable file, named
        raise bad(f"adapter_model.safetensors is unreadable ({shorten(str(exc))})") from None


def stale_adapters(cube: Cube) -> dict[str, list[str]]:
    """Adapters whose memories changed since they were trained: {name: [id@version no longer current]}."""
    from memos_cli.engine.ops import stale_entries

    return stale_entries(cube, cube.read_state())["lora"]


def combine_adapters(
    lm: LanguageModel,
    folders: Sequence[Path],
    *,
    method: str = "cat",
    weights: Sequence[float] | None = None,
    **options: Any,
) -> Any:
    """A peft model over a private copy of ``lm.model`` whose one active adapter, ``fused``, is peft's
    weighted combination (``add_weighted_adapter``) of the adapters in ``folders``.

    ``cat`` concatenates the LoRA factors (ranks add up), so the fused update is exactly the weighted sum
    of the parents' updates; ``linear`` averages the factors, the ``svd`` family refactors the summed
    update to ``svd_rank``, ``ties``/``dare``/``magnitude_prune`` prune by ``density``. ``options`` go to
    peft as they are. bench/fuse_lora_bench.py compares them.
    """
    from peft import PeftModel

    if len(folders) < 2:
        raise UsageError("combining adapters needs at least two")
    names = [f"parent{i}" for i in range(len(folders))]
    weights = list(weights) if weights is not None else [1.0] * len(names)
    with warnings.catch_warnings(), private_adapters(folders) as copies:
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(copy.deepcopy(lm.model), str(copies[0]), adapter_name=names[0])
        for name, folder in zip(names[1:], copies[1:], strict=True):
            model.load_adapter(str(folder), adapter_name=name)
        # peft builds the combination with the first parent's config: its layers must be every parent's
        # (an adapter of the upper layers combined with one of all layers keeps the latter's lower layers)
        configs: list[Any] = [model.peft_config[n] for n in names]  # LoraConfig, typed by peft as PeftConfig
        configs[0].layers_to_transform = _union_layers(configs)
        try:
            model.add_weighted_adapter(names, weights, adapter_name="fused", combination_type=method, **options)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"peft cannot combine these adapters with {method!r}: {exc}") from exc
        model.set_adapter("fused")
        for name in names:
            model.delete_adapter(name)
    model.eval()
    return model


def _union_layers(configs: Sequence[Any]) -> list[int] | None:
    """The layers any of the peft ``configs`` adapts (None: all)."""
    out: set[int] = set()
    for config in configs:
        indexes = config.layers_to_transform
        if indexes is None:
            return None
        out.update([indexes] if isinstance(indexes, int) else indexes)
    return sorted(out)


def save_combined(model: Any, out: Path, model_name: str) -> None:
    """Write the active adapter of ``model`` (from ``combine_adapters``) as a plain peft folder."""
    active = active_adapter(model)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft: "could not find a config file" for a model loaded from a folder
        model.save_pretrained(tmp, selected_adapters=[active], safe_serialization=True)
        found = [p.parent for p in Path(tmp).rglob("adapter_config.json")]
        if len(found) != 1:
            raise MemosError("peft did not write one combined adapter")
        out.mkdir(parents=True, exist_ok=True)
        for name in ADAPTER_FILES:
            shutil.copy2(found[0] / name, out / name)
    config_path = out / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = model_name
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def check_adapters(
    cube: Cube, active_refs: set[str], problem: Callable[[str], None], note: Callable[[str], None]
) -> set[str]:
    """verify's parametric part: each adapter the manifest names is a folder holding its files, each of
    its recorded sha256; a stale one is noted. Returns the folders it covered."""
    referenced: set[str] = set()
    for name, adapter in cube.manifest.lora.items():
        folder = f"{layout.LORA_DIR}/{name}"
        referenced.add(folder)
        try:
            base = cube.committed_rel(folder)
        except InvalidCube as exc:
            problem(f"lora {name}: {exc.problem}")
            continue
        if cube_io.kind(cube.path, base) != "dir":
            problem(
                f"lora {name}: {folder}/ is missing (restore it from version control, or drop it: "
                f"memos distill {cube.path} --drop {name})"
            )
            continue
        for rel, digest in adapter.files.items():
            if cube_io.kind(cube.path, f"{base}/{rel}") != "file":
                problem(f"lora {name}: {folder}/{rel} is missing")
            elif cube_io.sha256(cube.path, f"{base}/{rel}") != digest:
                problem(f"lora {name}: {folder}/{rel} does not match its recorded sha256")
        stale = [m for m in adapter.memories if m not in active_refs]
        if stale:
            note(f"lora {name} is stale: {len(stale)} of its memories changed")
    return referenced
