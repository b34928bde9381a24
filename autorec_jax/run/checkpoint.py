"""Checkpoints and run folders on disk: a thin wrapper over Orbax (v1 API) with integrity checks.

Layout of a run folder (only process 0 writes; one writer per run folder):
  run.json                 {"config": to_dict(config), "data_fingerprint": str[,
                            "split_files": {part: {"path", "sha256"}}]}
  ids.json, summary.json   written by the training loop
  checkpoints/<epoch>/     state/ (Orbax: the TrainState), loop.json (host state),
                           manifest.json (SHA-256 of every other file, written last)
  model/                   params/ (Orbax: the final params), manifest.json

A folder is written under a hidden temp name and renamed into place once its manifest is
written, so a crash at any moment leaves only complete folders under their real names; the
hidden leftovers (.partial-*, .replaced-*, .deleting-*) are cleaned up by `latest`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
from orbax.checkpoint import v1 as ocp

from autorec_jax.run import reporting
from autorec_jax.config import config_from_dict, flatten, to_dict
from autorec_jax.errors import CheckpointError, ConfigError
from autorec_jax.fileio import WRITE_LOCK

PyTree = Any
MANIFEST = "manifest.json"
# Config fields that may change between a run and its resumption: they change neither the
# training trajectory nor the data (the fingerprint guards the data itself). All others
# must match. Raising train.epochs continues a finished run for longer.
MAY_DIFFER_ON_RESUME = ("train.epochs", "train.eval_every", "train.eval_batch_size",
                        "train.checkpoint_every", "train.keep_checkpoints",
                        "train.divergence_factor", "data.data_dir", "train.allow_cpu")
_PARTIAL, _REPLACED, _DELETING = ".partial-", ".replaced-", ".deleting-"


def abstract(tree: PyTree) -> PyTree:
    """The restore target of a live tree: shapes, dtypes and shardings of its leaves."""
    return jax.tree.map(ocp.arrays.to_shape_dtype_struct, tree)


def save(run_dir: str | Path, epoch: int, state: PyTree, loop: dict, *, keep: int = 2,
         best_epoch: int | None = None) -> Path:
    """Writes run_dir/checkpoints/<epoch>/ atomically and returns it; then prunes the others.

    Args:
      epoch: epochs completed; must equal loop["epoch"] when that is present.
      state: the TrainState, with any sharding (replicated arrays are written once).
      loop: JSON-able host state; Python ints (a Generator's state) round-trip exactly.
      keep: how many of the newest checkpoints to keep, >= 1.
      best_epoch: a checkpoint also kept, whatever its age (None: none).

    A previous checkpoint of the same epoch is replaced, and those of later epochs (an
    abandoned future after resuming from an older one) are deleted.
    """
    if keep < 1 or loop.get("epoch", epoch) != epoch:
        raise ValueError(f"need keep >= 1 and loop['epoch'] == {epoch}")
    root = Path(run_dir) / "checkpoints"
    folder = _write_folder(root / str(int(epoch)), "state", state,
                           {"loop.json": json.dumps(loop, sort_keys=True)})
    if not _primary():
        return folder
    epochs = _complete_epochs(root)
    kept = set([e for e in epochs if e <= epoch][-keep:]) | {best_epoch}
    for old in epochs:
        if old not in kept:
            _delete(root / str(old))
    return folder


def latest(run_dir: str | Path) -> int | None:
    """The newest complete checkpoint's epoch, or None; removes leftovers of crashed saves."""
    root = Path(run_dir) / "checkpoints"
    _recover(root)
    epochs = _complete_epochs(root)
    return epochs[-1] if epochs else None


def restore(run_dir: str | Path, epoch: int, abstract_state: PyTree) -> tuple[PyTree, dict]:
    """Reads checkpoints/<epoch>/ after verifying every file against its manifest.

    Args:
      abstract_state: `jax.tree.map(ocp.arrays.to_shape_dtype_struct, state)` of a state
        built like the saved one; leaves come back with its shardings and types (a fresh
        state's Python-int step gives an int; an array step gives a non-weak int32).

    Returns:
      (state, loop) as saved.

    Raises:
      CheckpointError: a missing, incomplete or corrupt checkpoint, or one that does not fit
        `abstract_state`.
    """
    folder = Path(run_dir) / "checkpoints" / str(int(epoch))
    _verify(folder)
    loop = json.loads((folder / "loop.json").read_text())
    return _load(folder / "state", abstract_state), loop


def save_params(path: str | Path, params: PyTree) -> Path:
    """Writes the final params (no optimizer state) atomically to `path` (run_dir/model)."""
    return _write_folder(Path(path), "params", params, {})


def load_params(path: str | Path, abstract_params: PyTree | None = None) -> PyTree:
    """Reads params written by `save_params`, verified against their manifest.

    Args:
      abstract_params: shapes, dtypes and shardings to restore into; None: the stored shapes
        and dtypes, on the first local device.
    """
    path = Path(path)
    _recover(path.parent, path.name)
    _verify(path)
    if abstract_params is None:
        stored = ocp.metadata((path / "params").absolute()).metadata
        abstract_params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), stored)
    return _load(path / "params", _on_first_device(abstract_params))


def write_run_identity(run_dir: str | Path, config_dict: dict, fingerprint: str,
                       split_files: dict | None = None, *, model: dict | None = None) -> None:
    """Records the run's config and data fingerprint in run_dir/run.json (atomically), for a
    split read from files each file's path and SHA-256, and the model's identity
    (`networks.identity`)."""
    reporting.write_json(Path(run_dir) / "run.json",
                         {"config": config_dict, "data_fingerprint": fingerprint,
                          **({"split_files": split_files} if split_files else {}),
                          **({"model": model} if model is not None else {})})


def check_run_identity(run_dir: str | Path, config_dict: dict, fingerprint: str,
                       split_files: dict | None = None) -> None:
    """Refuses to resume a run with another config, other split files or other data.

    Fields in `MAY_DIFFER_ON_RESUME` are exempt; call `write_run_identity` afterwards to
    record their new values.

    Raises:
      CheckpointError: run.json missing or unreadable, naming the first differing config
        field ("group.field"), the first changed split file, or saying that the data
        differ.
    """
    stored = read_json(Path(run_dir) / "run.json")
    stored_config = stored.get("config", {})
    try:
        # A run recorded before a field existed ran with what is now its default.
        stored_config = json.loads(json.dumps(to_dict(config_from_dict(stored_config))))
    except (ConfigError, TypeError):
        pass  # a field that no longer exists: compared as recorded, and named below
    old, new = flatten(stored_config), flatten(json.loads(json.dumps(config_dict)))
    for field in dict.fromkeys([*old, *new]):
        was, now = old.get(field, "<absent>"), new.get(field, "<absent>")
        if was != now and field not in MAY_DIFFER_ON_RESUME:
            raise CheckpointError(f"{run_dir}: cannot resume with a different config: {field} "
                                  f"was {was!r}, now {now!r}")
    from autorec_jax.data.split_files import changed_file
    # A run recorded before split files were recorded: the fingerprint alone guards it.
    changed = ("split_files" in stored
               and changed_file(stored["split_files"], split_files or {}))
    if changed:
        raise CheckpointError(f"{run_dir}: cannot resume: {changed}; restore the file, or "
                              "start a new run (another --out, or --overwrite)")
    if stored.get("data_fingerprint") != fingerprint:
        raise CheckpointError(f"{run_dir}: cannot resume: the data differ from the run's "
                              "(data fingerprint mismatch)")


def _holding_write_lock(fn):
    """Runs `fn` holding `fileio.WRITE_LOCK`: a Ctrl-C exit waits for it, none starts during."""
    @functools.wraps(fn)
    def locked(*args, **kwargs):
        with WRITE_LOCK:
            return fn(*args, **kwargs)
    return locked


@_holding_write_lock
def _write_folder(final: Path, name: str, tree: PyTree, texts: dict[str, str]) -> Path:
    """Orbax tree under final/name plus text files, manifest last, renamed into place."""
    if _primary():
        final.parent.mkdir(parents=True, exist_ok=True)
        _recover(final.parent, final.name)
    _barrier(f"save {final}")
    partial = final.parent / f"{_PARTIAL}{final.name}"
    # Several processes: every one calls this (Orbax saves collectively, and writes each
    # replicated value once, from process 0); only process 0 touches the files around it.
    ocp.save((partial / name).absolute(), tree)  # Orbax refuses relative paths
    if not _primary():
        _barrier(f"saved {final}")
        return final
    for filename, text in texts.items():
        (partial / filename).write_text(text)
    # fsync everything before the rename, so that even a power cut cannot publish a folder
    # whose files are not yet on disk.
    manifest = json.dumps({"sha256": _checksums(partial, sync=True)}, indent=1, sort_keys=True)
    with open(partial / MANIFEST, "w") as f:
        f.write(manifest)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(partial)
    if final.exists():  # replaced only once the new copy sits in place (see _recover)
        os.rename(final, final.parent / f"{_REPLACED}{final.name}")
    os.rename(partial, final)
    _fsync_dir(final.parent)
    shutil.rmtree(final.parent / f"{_REPLACED}{final.name}", ignore_errors=True)
    _barrier(f"saved {final}")
    return final


def _primary() -> bool:
    return jax.process_index() == 0


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def _recover(parent: Path, name: str | None = None) -> None:
    """Removes leftovers of interrupted writes; a folder caught mid-replacement comes back."""
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        prefix = next((p for p in (_PARTIAL, _REPLACED, _DELETING)
                       if entry.name.startswith(p)), None)
        target = entry.name[len(prefix or ""):]
        if prefix is None or name not in (None, target):
            continue
        if prefix == _REPLACED and not (parent / target).exists():
            os.rename(entry, parent / target)  # complete: it is removed only after replacement
        else:
            shutil.rmtree(entry, ignore_errors=True)


def _complete_epochs(root: Path) -> list[int]:
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir()
                  if p.name.isdigit() and (p / MANIFEST).is_file())


@_holding_write_lock
def _delete(folder: Path) -> None:
    # Renamed first, so that a crash mid-deletion leaves no partial folder under its real name.
    hidden = folder.parent / f"{_DELETING}{folder.name}"
    shutil.rmtree(hidden, ignore_errors=True)
    os.rename(folder, hidden)
    shutil.rmtree(hidden)


def _checksums(folder: Path, *, sync: bool = False) -> dict[str, str]:
    sums = {}
    for path in sorted(folder.rglob("*")):
        if path.is_dir():
            if sync:
                _fsync_dir(path)
        elif path.name != MANIFEST or path.parent != folder:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
                if sync:
                    os.fsync(f.fileno())
            sums[path.relative_to(folder).as_posix()] = digest.hexdigest()
    return sums


def _verify(folder: Path) -> None:
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    try:
        expected = json.loads((folder / MANIFEST).read_text())["sha256"]
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: incomplete, {MANIFEST} is missing") from None
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{folder}: {MANIFEST} is unreadable") from None
    found = _checksums(folder)
    for rel, digest in expected.items():
        if rel not in found:
            raise CheckpointError(f"{folder}: {rel} is missing")
        if found[rel] != digest:
            raise CheckpointError(f"{folder}: {rel} does not match its checksum "
                                  "(corrupt or truncated)")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise CheckpointError(f"{folder}: unexpected file {extra[0]} (not in {MANIFEST})")


def _load(path: Path, abstract: PyTree) -> PyTree:
    # Names, shapes and dtypes are compared first: Orbax would cast dtypes silently, and its
    # shape errors are long and leave coroutines unawaited.
    path = path.absolute()  # Orbax refuses relative paths
    stored, wanted = _leaf_table(ocp.metadata(path).metadata), _leaf_table(abstract)
    for name in sorted(stored.keys() | wanted.keys()):
        have, want = stored.get(name), wanted.get(name)
        if have is None or want is None or have[0] != want[0] or (
                None not in (have[1], want[1]) and have[1] != want[1]):
            raise CheckpointError(f"{path}: {name} is {_describe(have)} in the checkpoint "
                                  f"but {_describe(want)} in the target")
    try:
        return ocp.load(path, abstract)
    except Exception as error:  # noqa: BLE001 -- any Orbax failure becomes one clear line
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise CheckpointError(f"{path.parent}: Orbax cannot restore {path.name}/ into the "
                              f"given target ({type(error).__name__}: {first})") from None


def _leaf_table(tree: PyTree) -> dict[str, tuple]:
    """{"params.output.bias": (shape, dtype name, or None for a Python scalar)}."""
    return {jax.tree_util.keystr(path, simple=True, separator="."): (
        tuple(getattr(leaf, "shape", ())), str(leaf.dtype) if hasattr(leaf, "dtype") else None)
        for path, leaf in jax.tree.leaves_with_path(tree)}


def _describe(leaf: tuple | None) -> str:
    return "absent" if leaf is None else f"{leaf[1] or 'scalar'}{list(leaf[0])}"


def _on_first_device(abstract: PyTree) -> PyTree:
    """Abstract leaves without a sharding get the first local device (Orbax warns otherwise)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda a: a if getattr(a, "sharding", None) is not None else
                        jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return data


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
