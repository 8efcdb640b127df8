"""Weights, trainer state and optimizer state checked before anything is loaded: one line, exit 2.

A truncated or overwritten file would otherwise fail minutes later, deep in from_pretrained or the
Trainer's resume, with a traceback. What is checked costs a fraction of loading:
- `*.safetensors`: the 8-byte header length, the JSON header, and that the tensors' data ends exactly
  at the file's end (a truncated file ends early; a damaged header does not parse).
- `*.pt`, `*.pth`, `*.bin` (torch.save's zip format): the zip's directory at the file's end (a truncated
  file has none), every member inside the file, and the members' CRC-32 for files up to CRC_LIMIT bytes
  (an optimizer state of a large model is only checked for its structure: reading it all is slow).
- `trainer_state.json`: a JSON object with an integer `global_step`; `config.json`: a JSON object.
Bit flips inside a large tensor's data are not found (safetensors has no checksum).
"""

import json
import struct
import zipfile
from pathlib import Path

from ..errors import UserError

CRC_LIMIT = 256 * 2**20
MAX_HEADER = 100 * 2**20  # safetensors' own limit on the header's size
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than a safetensors header"
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            return "its header length is past the file's end (truncated or not safetensors)"
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            return "its header is not valid JSON (damaged)"
    if not isinstance(header, dict):
        return "its header is not a JSON object (damaged)"
    ends = [
        t["data_offsets"][1]
        for key, t in header.items()
        if key != "__metadata__" and isinstance(t, dict) and isinstance(t.get("data_offsets"), list)
    ]
    data_size = size - 8 - n
    end = max(ends, default=0)
    if end > data_size:
        return f"truncated: its tensors need {end} bytes of data, the file holds {data_size}"
    if end < data_size:
        return f"{data_size - end} bytes past its last tensor (damaged)"
    return None


def torch_file_problem(path: Path) -> str | None:
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            for member in members:
                if member.header_offset + member.compress_size > size:
                    return f"truncated: member {member.filename} ends past the file's end"
            if size <= CRC_LIMIT:
                bad = archive.testzip()
                if bad is not None:
                    return f"damaged: member {bad} fails its CRC check"
    except zipfile.BadZipFile as e:
        with path.open("rb") as f:
            if f.read(2) == b"\x80\x02":  # a legacy (before torch 1.6) torch.save pickle: not checked
                return None
        return f"truncated or not a torch.save file ({e})"
    except (OSError, EOFError, zipfile.LargeZipFile) as e:
        return f"unreadable ({e})"
    return None


def json_problem(path: Path, need_step: bool) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        return f"not valid JSON ({e})"
    if not isinstance(data, dict):
        return "not a JSON object"
    if need_step and not isinstance(data.get("global_step"), int):
        return "no integer global_step"
    return None


def file_problem(path: Path) -> str | None:
    """What is wrong with one file of a checkpoint or model folder, or None."""
    if path.name.endswith(".safetensors"):
        return safetensors_problem(path)
    if path.suffix in TORCH_SUFFIXES:
        return torch_file_problem(path)
    if path.name == "trainer_state.json":
        return json_problem(path, need_step=True)
    if path.name in ("config.json", "adapter_config.json"):
        return json_problem(path, need_step=False)
    return None


def check_folder(folder: Path, flag: str, advice: str) -> None:
    """Every weight, state and config file in folder; the first problem as a UserError."""
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        problem = file_problem(path)
        if problem is not None:
            raise UserError(f"{flag}: {path}: {problem}; {advice}")


def check_checkpoint(checkpoint: Path, flag: str, earlier: list[Path]) -> None:
    """A checkpoint about to be resumed; the message names the checkpoint before it, if any."""
    before = [p for p in earlier if p != checkpoint]
    advice = f"resume from {before[-1]} instead" if before else "no earlier checkpoint to resume"
    check_folder(checkpoint, flag, advice)


def check_model_folder(folder: str) -> None:
    """--model_name a local folder: its config and weights whole."""
    check_folder(Path(folder), f"--model_name {folder}", "the model cannot be loaded")
